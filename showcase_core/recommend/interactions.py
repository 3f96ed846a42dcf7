"""Interactions from the reviews table and their split (MMRec's protocol, leave-one-out per user).

- One interaction per (user, business): a user's reviews of one business collapse into the latest one.
- Cold items: a stable ``cold_fraction`` of the businesses (BLAKE2b of the id with the seed, not a draw that depends
  on the table's order); all their interactions are test, none of them is seen in training.
- Per user, over the user's warm interactions ordered by time (ties and unknown times in a seeded random order that
  depends only on the ids): the last is test, the one before it val, the rest train. A user with fewer than 3 warm
  interactions keeps them all in train.

Memory: the interactions as numpy index arrays (three int arrays and one float array per interaction) plus the id
lists; training a recommender holds them, as every collaborative filter does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TRAIN, VAL, TEST = 0, 1, 2
SPLITS = {"train": TRAIN, "val": VAL, "test": TEST}


@dataclass
class Interactions:
    users: list[str]  # index -> user_id (sorted)
    items: list[str]  # index -> business_id (sorted)
    user: np.ndarray  # [N] int64 user index
    item: np.ndarray  # [N] int64 item index
    rating: np.ndarray  # [N] float32
    split: np.ndarray  # [N] int8: TRAIN, VAL or TEST
    cold: np.ndarray  # [items] bool: a held-out business (all its interactions are test)

    def pairs(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        keep = self.split == split
        return self.user[keep], self.item[keep]

    def by_user(self, split: int) -> list[np.ndarray]:
        """Per user index, the item indices of that split (sorted)."""
        u, i = self.pairs(split)
        order = np.lexsort((i, u))
        bounds = np.searchsorted(u[order], np.arange(len(self.users) + 1))
        items = i[order]
        return [items[bounds[k]:bounds[k + 1]] for k in range(len(self.users))]


def stable_fraction(ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """True for a stable ``fraction`` of ``ids``: BLAKE2b(seed, id) below the fraction of the hash range."""
    cut = int(fraction * 2**64)
    return np.fromiter((int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little")
                        < cut for i in ids), bool, len(ids))


def _tiebreak(users: list[str], items: list[str], user: np.ndarray, item: np.ndarray, seed: int) -> np.ndarray:
    """A seeded random number per interaction that depends only on its ids (the order of unknown times)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(f"{seed}:{users[u]}:{items[i]}".encode(), digest_size=8)
                                       .digest(), "little") for u, i in zip(user, item)), np.uint64, len(user))


def build_interactions(reviews: pa.Table, cold_fraction: float = 0.1, seed: int = 0) -> Interactions:
    """``reviews``: user_id, business_id, rating, time_ms (null where unknown). Raises ValueError on empty ids."""
    for name in ("user_id", "business_id"):
        empty = pc.sum(pc.or_kleene(pc.is_null(reviews.column(name)), pc.equal(reviews.column(name), ""))).as_py()
        if empty:
            raise ValueError(f"reviews: {empty} rows with an empty {name}")
    users_col, items_col = (pc.unique(reviews.column(c)).sort() for c in ("user_id", "business_id"))
    users, items = users_col.to_pylist(), items_col.to_pylist()
    user = np.asarray(pc.index_in(reviews.column("user_id"), value_set=users_col), np.int64)
    item = np.asarray(pc.index_in(reviews.column("business_id"), value_set=items_col), np.int64)
    rating = np.asarray(pc.fill_null(reviews.column("rating").cast(pa.float32()), 0.0), np.float32)
    times = reviews.column("time_ms")
    known = np.asarray(pc.is_valid(times))
    time = np.where(known, np.asarray(pc.fill_null(times.cast(pa.int64()), 0)), np.iinfo(np.int64).min)
    tie = _tiebreak(users, items, user, item, seed)
    # one interaction per (user, item): the latest review; then per user in time order (ties by the seeded number)
    order = np.lexsort((tie, time, item, user))
    last = np.r_[(user[order][1:] != user[order][:-1]) | (item[order][1:] != item[order][:-1]), True]
    keep = order[last]
    user, item, rating, time, tie = user[keep], item[keep], rating[keep], time[keep], tie[keep]
    order = np.lexsort((tie, time, user))
    user, item, rating = user[order], item[order], rating[order]
    cold = stable_fraction(items, cold_fraction, seed)
    split = np.full(len(user), TRAIN, np.int8)
    warm = ~cold[item]
    split[~warm] = TEST
    warm_index = np.flatnonzero(warm)  # in (user, time) order
    wu = user[warm_index]
    starts = np.searchsorted(wu, wu, side="left")
    ends = np.searchsorted(wu, wu, side="right")
    position_from_end = ends - 1 - np.arange(len(wu))
    enough = (ends - starts) >= 3
    split[warm_index[enough & (position_from_end == 0)]] = TEST
    split[warm_index[enough & (position_from_end == 1)]] = VAL
    return Interactions(users, items, user, item, rating, split, cold)

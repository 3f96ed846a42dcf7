"""THE definition of what a (user, business) pair's showcase reads: the user's profile and the business's ground set.

Training (selection.data, generation.data, hence train_dpp, train_pc2l and evaluate), the nightly and Serve all build
their inputs with the functions here, so what a model saw in training is what it sees in production.

**A user's entries.** Photo entries: every embedded photo of the user's reviews (the images table), keyed by the
reviewed business. Text entries: ``review:<review_id>`` of each of the user's reviews, plus the Gest-s2 history items
of any of their reviews (``review:<user>_<business>``: Gest's review key names the business), each embedded text
once (an entry that is also a review keeps that review's time).

**The profile for a pair (user, b)** never contains b: the mean image feature of the photo entries of every business
but b, the mean text feature of the text entries of every business but b (zeros when none: ``has_history`` False),
and the generator's history: the text entries of businesses other than b in the stated order, the newest first (by
``time_ms``; entries without a time after those with one; ties by text id), at most ``max_history``.

**A business's ground set**: its embedded photos, the newest first (the time of the review they came with; photos
of undated reviews after dated ones; ties by image id), at most ``max_ground_set``. A business with reviews but no
embedded photo has an empty ground set (reason ``no_photos``); one with no review is unknown.

**Feature tables** (made by ``jobs.features`` with Ray Data, read by key here), Delta tables under
``ROOT/features/<encoder_id>/``, partitioned by ``bucket`` (``bucket_of(id, buckets)``, a stable hash), each file
sorted by id in small row groups so a lookup of one id reads one row group:

    users/         what the leave-one-business-out profile needs exactly: per reviewed business the float32 sums and
                   counts of its photo and text vectors, and the ordered text entries of the newest
                   ``max_history + 1`` businesses (excluding any one business leaves ``max_history`` of them)
    businesses/    the capped ground set: image ids, URIs, vectors
    _FEATURES.json the versions of both tables, their bucket counts and the settings (written last)

Sums are accumulated in float64 in id order and stored as float32; a profile adds the stored sums in business order.
The training loader computes the same sums from the raw tables with the same functions, so both paths give the
same numbers (tests/integration/test_features_job.py checks every pair of the tiny world).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

MAX_HISTORY = 10  # the generator's default max_history (showcase_core.generation.model)
MAX_GROUND_SET = 128
META = "_FEATURES.json"

VECTORS = pa.list_(pa.list_(pa.float32()))
USERS = pa.schema([
    ("user_id", pa.string()),
    ("businesses", pa.list_(pa.string())),  # every business the user has an entry for, sorted
    ("photo_sums", VECTORS), ("photo_counts", pa.list_(pa.int32())),  # per business: sum and count of photo vectors
    ("text_sums", VECTORS), ("text_counts", pa.list_(pa.int32())),
    ("recent_text_ids", pa.list_(pa.string())),  # text entries of the newest max_history + 1 businesses, in order
    ("recent_businesses", pa.list_(pa.string())),
    ("recent_vectors", VECTORS),
    ("bucket", pa.int32()),
])
BUSINESSES = pa.schema([
    ("business_id", pa.string()),
    ("image_ids", pa.list_(pa.string())),  # the ground set, newest first, at most max_ground_set
    ("image_uris", pa.list_(pa.string())),
    ("vectors", VECTORS),
    ("photos", pa.int32()),  # embedded photos before the cap
    ("bucket", pa.int32()),
])


def features_dir(encoder_id: str, kind: str = "") -> str:
    return f"features/{encoder_id}/{kind}".rstrip("/")


def bucket_of(ids, buckets: int) -> np.ndarray:
    """Stable bucket of each id in [0, buckets): the same in every process, run and machine (BLAKE2b of the id)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") % buckets
                        for i in ids), np.int64)


def buckets_for(rows: int, per_bucket: int) -> int:
    return max(1, -(-int(rows) // max(1, per_bucket)))


def history_item_business(user_id: str, review_id: str) -> str:
    """The business a Gest-s2 history item is about: its review key is ``<user_id>_<business_id>``; "" if not."""
    prefix = f"{user_id}_"
    return review_id[len(prefix):] if review_id.startswith(prefix) else ""


def text_entries(user_id: str, review_id: str, business_id: str, time_ms, history) -> list[tuple]:
    """A review's text entries: (text_id, business_id, time_ms) of the review and of its Gest-s2 history items."""
    out = [(f"review:{review_id}", business_id, time_ms)]
    out += [(f"review:{h['review_id']}", history_item_business(user_id, h["review_id"]), None) for h in history or []]
    return out


def _recency(time_ms, key: str):
    return (time_ms is None, -(time_ms or 0), key)


def _sums(vectors: list[np.ndarray], dim: int) -> np.ndarray:
    """The float32 sum of vectors, accumulated in float64 in the given order."""
    total = np.zeros(dim, np.float64)
    for v in vectors:
        total += v
    return total.astype(np.float32)


def user_row(user_id: str, photos: list[tuple], texts: list[tuple], dim: int, max_history: int = MAX_HISTORY) -> dict:
    """The users-table row of one user from their entries: photos (business_id, image_id, vector), texts (text_id,
    business_id, time_ms, vector). Duplicates count once: an image id once, a text id once (with a time if any)."""
    photo_of: dict[str, tuple] = {}
    for business, image_id, vec in photos:
        photo_of.setdefault(image_id, (business, vec))
    text_of: dict[str, tuple] = {}
    for text_id, business, time_ms, vec in texts:
        if text_id not in text_of or (text_of[text_id][1] is None and time_ms is not None):
            text_of[text_id] = (business, time_ms, vec)
    per_business: dict[str, tuple[list, list]] = {}
    for image_id in sorted(photo_of):
        business, vec = photo_of[image_id]
        per_business.setdefault(business, ([], []))[0].append(vec)
    for text_id in sorted(text_of):
        business, _, vec = text_of[text_id]
        per_business.setdefault(business, ([], []))[1].append(vec)
    businesses = sorted(per_business)
    ordered = sorted(text_of, key=lambda t: _recency(text_of[t][1], t))
    recent, covered = [], []
    for text_id in ordered:
        business = text_of[text_id][0]
        if business not in covered:
            if len(covered) == max_history + 1:
                break
            covered.append(business)
        recent.append(text_id)
    return {"user_id": user_id, "businesses": businesses,
            "photo_sums": [_sums(per_business[b][0], dim) for b in businesses],
            "photo_counts": [len(per_business[b][0]) for b in businesses],
            "text_sums": [_sums(per_business[b][1], dim) for b in businesses],
            "text_counts": [len(per_business[b][1]) for b in businesses],
            "recent_text_ids": recent, "recent_businesses": [text_of[t][0] for t in recent],
            "recent_vectors": [text_of[t][2] for t in recent]}


def business_row(business_id: str, photos: list[tuple], max_ground_set: int = MAX_GROUND_SET) -> dict:
    """The businesses-table row from its photos (image_id, uri, time_ms, vector); an image id counts once."""
    seen: dict[str, tuple] = {}
    for image_id, uri, time_ms, vec in photos:
        if image_id is not None and image_id not in seen:
            seen[image_id] = (uri, time_ms, vec)
    ground = sorted(seen, key=lambda i: _recency(seen[i][1], i))[:max_ground_set]
    return {"business_id": business_id, "image_ids": ground, "image_uris": [seen[i][0] for i in ground],
            "vectors": [seen[i][2] for i in ground], "photos": len(seen)}


@dataclass
class Profile:
    photo: np.ndarray  # float32 [D]: mean photo feature of the user's other businesses
    text: np.ndarray  # float32 [D]: mean text feature of the user's other businesses
    history: np.ndarray  # float32 [H, D], H <= max_history: the generator's history, newest first
    history_ids: list[str]
    has_history: bool


def matrix(vectors, dim: int) -> np.ndarray:
    if isinstance(vectors, np.ndarray):
        return vectors.astype(np.float32, copy=False).reshape(-1, dim)
    return np.asarray(list(vectors), np.float32).reshape(-1, dim)


def profile(row: dict | None, business_id: str, dim: int, max_history: int = MAX_HISTORY) -> Profile:
    """The profile of the pair (row's user, business_id) from a users-table row (None: an unknown user)."""
    if row is None:
        return Profile(np.zeros(dim, np.float32), np.zeros(dim, np.float32), np.zeros((0, dim), np.float32), [], False)
    others = [i for i, b in enumerate(row["businesses"]) if b != business_id]

    def mean(sums: str, counts: str) -> tuple[np.ndarray, int]:
        n = sum(row[counts][i] for i in others)
        total = np.zeros(dim, np.float64)
        for i in others:
            total += np.asarray(row[sums][i], np.float32)
        return (total / n).astype(np.float32) if n else np.zeros(dim, np.float32), n

    photo, photos = mean("photo_sums", "photo_counts")
    text, texts = mean("text_sums", "text_counts")
    keep = [i for i, b in enumerate(row["recent_businesses"]) if b != business_id][:max_history]
    history = matrix([row["recent_vectors"][i] for i in keep], dim)
    return Profile(photo, text, history, [row["recent_text_ids"][i] for i in keep], bool(photos or texts))


@dataclass
class GroundSet:
    image_ids: list[str]
    image_uris: list[str]
    vectors: np.ndarray  # float32 [M, D]


def ground_set(row: dict | None, dim: int) -> GroundSet:
    if row is None:
        return GroundSet([], [], np.zeros((0, dim), np.float32))
    return GroundSet(list(row["image_ids"]), list(row["image_uris"]), matrix(row["vectors"], dim))


# -- from the raw tables (the training loaders) --------------------------------------------------------------------
def _vectors(table: pa.Table) -> dict[str, np.ndarray]:
    from .selection.data import embedding_matrix

    ids, vectors = embedding_matrix(table)
    return dict(zip(ids, vectors))


def rows_from_tables(reviews: pa.Table, images: pa.Table | None, image_emb: pa.Table, text_emb: pa.Table,
                     max_history: int = MAX_HISTORY, max_ground_set: int = MAX_GROUND_SET) -> tuple[dict, dict]:
    """({user_id: users row}, {business_id: businesses row}) built in memory from the raw tables (training holds
    its split in memory; the nightly and Serve read the feature tables instead). ``images`` None: text entries only
    (what the generator's history needs)."""
    photo_vec, text_vec = _vectors(image_emb), _vectors(text_emb)
    dim = image_emb.schema.field("embedding").type.list_size
    time_of = dict(zip(reviews.column("review_id").to_pylist(), reviews.column("time_ms").to_pylist()))
    user_photos: dict[str, list] = {}
    business_photos: dict[str, list] = {b: [] for b in reviews.column("business_id").to_pylist()}
    columns = ("image_id", "review_id", "user_id", "business_id", "uri")
    for image_id, review_id, user, business, uri in zip(*(images.column(c).to_pylist() if images is not None
                                                          else [] for c in columns)):
        if image_id in photo_vec:
            user_photos.setdefault(user, []).append((business, image_id, photo_vec[image_id]))
            business_photos.setdefault(business, []).append((image_id, uri, time_of.get(review_id),
                                                             photo_vec[image_id]))
    user_texts: dict[str, list] = {}
    for r in reviews.select(["review_id", "user_id", "business_id", "time_ms", "history"]).to_pylist():
        entries = user_texts.setdefault(r["user_id"], [])
        for text_id, business, time_ms in text_entries(r["user_id"], r["review_id"], r["business_id"], r["time_ms"],
                                                       r["history"]):
            if text_id in text_vec:
                entries.append((text_id, business, time_ms, text_vec[text_id]))
    users = {u: user_row(u, user_photos.get(u, []), user_texts.get(u, []), dim, max_history)
             for u in sorted(set(user_photos) | set(user_texts))}
    businesses = {b: business_row(b, photos, max_ground_set) for b, photos in business_photos.items()}
    return users, businesses


# -- the feature tables: metadata and lookups by key -----------------------------------------------------------------
class FeaturesError(Exception):
    """No feature tables for the encoder, or they were built with settings that do not fit. One line."""


def write_meta(store, encoder_id: str, meta: dict) -> None:
    """Written last, after both tables are committed: readers trust the versions it names."""
    store.write_json(f"{features_dir(encoder_id)}/{META}", meta)


def read_meta(store, encoder_id: str) -> dict:
    rel = f"{features_dir(encoder_id)}/{META}"
    if not store.exists(rel):
        raise FeaturesError(f"no feature tables for encoder {encoder_id} under {store.root} "
                            f"(run `showcase features --root {store.root} --encoder {encoder_id}`)")
    return store.read_json(rel)


def meta_for_training(store, encoder_id: str, dim: int, limit: str, wanted: int, flag: str, per: str) -> dict:
    """The feature tables' metadata for a job that trains on them: FeaturesError (one line) when there are none, when
    their vectors are not ``dim`` wide (the encoder's embeddings), or when they keep fewer than ``wanted`` of ``limit``
    (``max_ground_set`` per business, ``max_history`` per user), which the job's ``flag`` asks for."""
    meta = read_meta(store, encoder_id)
    if int(meta["dim"]) != dim:
        raise FeaturesError(f"the feature tables of encoder {encoder_id} hold {meta['dim']}-d vectors but its "
                            f"embeddings {dim}-d: rerun `showcase features --root {store.root} --encoder {encoder_id}`")
    if int(meta[limit]) < wanted:
        raise FeaturesError(f"{flag} {wanted} is more than the feature tables keep per {per} ({meta[limit]}): lower "
                            f"it or rerun `showcase features --{limit.replace('_', '-')} {wanted}`")
    return meta


def meta_for(store, encoder_id: str, generator_uri: str | None) -> dict:
    """The feature tables' metadata, checked against the generator (its history must fit in the tables')."""
    import json
    import posixpath

    from .store import filesystem_for, read_text

    meta = read_meta(store, encoder_id)
    if generator_uri:
        fs, base = filesystem_for(generator_uri)
        config = json.loads(read_text(fs, posixpath.join(base, "config.json")))
        wanted = config.get("model", config).get("max_history", 0)
        if wanted > meta["max_history"]:
            raise FeaturesError(f"the generator reads {wanted} history reviews but the feature tables keep "
                                f"{meta['max_history']}: rerun `showcase features --max-history {wanted}`")
    return meta


def _as_rows(table: pa.Table, key: str, dim: int) -> dict[str, dict]:
    """{id: row}; list<list<float32>> columns become one float32 [n, dim] array per row (views of one buffer),
    never Python floats."""
    table = table.combine_chunks()
    vector_columns = [f.name for f in table.schema if f.type == VECTORS]
    rows = table.drop_columns(vector_columns).to_pylist()
    for name in vector_columns:
        column = table.column(name)
        outer = column.chunk(0) if column.num_chunks else pa.array([], VECTORS)
        offsets = outer.offsets.to_numpy() - outer.offsets[0].as_py() if len(outer) else np.zeros(1, np.int64)
        values = outer.flatten().flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        values = values.reshape(-1, dim)
        for i, row in enumerate(rows):
            row[name] = values[offsets[i]:offsets[i + 1]]
    return {r[key]: r for r in rows}


class FeatureLookup:
    """Users and businesses rows by key from the committed feature tables, with a bounded LRU cache in front
    (``cache_rows`` rows of each; 0 = no cache). A lookup reads the one bucket partition of its ids, and in each
    file only the row groups whose id range holds them. Memory: the cache plus one row group per file read."""

    def __init__(self, store, encoder_id: str, meta: dict | None = None, cache_rows: int = 0):
        from collections import OrderedDict

        self.store, self.encoder_id = store, encoder_id
        self.meta = meta or read_meta(store, encoder_id)
        self.dim = int(self.meta["dim"])
        self.cache_rows = cache_rows
        self._cache = {"users": OrderedDict(), "businesses": OrderedDict()}
        self._datasets: dict[str, object] = {}

    def _dataset(self, kind: str):
        if kind not in self._datasets:
            from . import tables as delta

            version = self.meta["tables"][kind]["version"]
            self._datasets[kind] = delta.dataset(self.store, features_dir(self.encoder_id, kind), version)
        return self._datasets[kind]

    def rows(self, kind: str, ids) -> dict[str, dict]:
        """{id: row} for the ids that have a row (users or businesses)."""
        import pyarrow.compute as pc

        key = "user_id" if kind == "users" else "business_id"
        cache, out = self._cache[kind], {}
        wanted = []
        for i in dict.fromkeys(ids):
            if i in cache:
                cache.move_to_end(i)
                out[i] = cache[i]
            else:
                wanted.append(i)
        if wanted:
            buckets = int(self.meta["tables"][kind]["buckets"])
            by_bucket: dict[int, list] = {}
            for i, b in zip(wanted, bucket_of(wanted, buckets)):
                by_bucket.setdefault(int(b), []).append(i)
            for b, members in by_bucket.items():
                table = self._dataset(kind).to_table(
                    filter=(pc.field("bucket") == b) & pc.field(key).isin(members))
                for i, row in _as_rows(table, key, self.dim).items():
                    out[i] = row
                    if self.cache_rows:
                        cache[i] = row
                        if len(cache) > self.cache_rows:
                            cache.popitem(last=False)
        return out

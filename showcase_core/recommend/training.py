"""Training any of the recommenders, and ranking with them.

- ``sample_negatives``: for each (user, positive) a uniformly drawn warm item the user has no train interaction
  with (redrawn where it hit one; cold items are never drawn: nothing about them is known at training time).
- ``train_epoch``: one pass over the train interactions in shuffled mini-batches; ``step(loss)`` does backward +
  update (the harness's optimizer step). Returns the mean of each loss part.
- ``top_n``: exact top-N of users × all items by matrix product and ``torch.topk``, with a mask of items to
  exclude per user; one block of users at a time (``top_scores``: the same from a block's score matrix).
"""

from __future__ import annotations

import numpy as np
import torch


def train_sets(user: np.ndarray, item: np.ndarray, items: int) -> np.ndarray:
    """Sorted codes user * items + item of the train interactions (membership by binary search)."""
    return np.unique(user.astype(np.int64) * items + item)


def sample_negatives(user: np.ndarray, codes: np.ndarray, items: int, warm: np.ndarray, rng: np.random.Generator,
                     tries: int = 10) -> np.ndarray:
    candidates = np.flatnonzero(warm)
    negative = candidates[rng.integers(0, len(candidates), len(user))]
    for _ in range(tries):
        code = user.astype(np.int64) * items + negative
        hit = codes[np.minimum(np.searchsorted(codes, code), len(codes) - 1)] == code
        if not hit.any():
            break
        negative[hit] = candidates[rng.integers(0, len(candidates), int(hit.sum()))]
    return negative


def train_epoch(model, step, user: np.ndarray, item: np.ndarray, codes: np.ndarray, warm: np.ndarray,
                batch_size: int, epoch: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(user))
    items = len(warm)
    model.train()
    totals: dict[str, float] = {}
    batches = 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        negatives = sample_negatives(user[idx], codes, items, warm, rng)
        loss, parts = model(torch.as_tensor(user[idx]), torch.as_tensor(item[idx]), torch.as_tensor(negatives))
        step(loss)
        for name, value in {"loss": float(loss.detach()), **parts}.items():
            totals[name] = totals.get(name, 0.0) + value
        batches += 1
    return {name: value / max(batches, 1) for name, value in totals.items()}


@torch.no_grad()
def top_n(user_vectors: torch.Tensor, item_vectors: torch.Tensor, n: int,
          exclude: list[np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [B, n], item indices [B, n]) for a block of users; ``exclude[b]`` item indices never returned.
    Where fewer than n items are allowed (or there are fewer than n), the rest are index -1 with score -inf."""
    return top_scores(user_vectors.float() @ item_vectors.float().T, n, exclude)


@torch.no_grad()
def top_scores(scores: torch.Tensor, n: int, exclude: list[np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``top_n`` of a block's score matrix [B, items] (changed in place where ``exclude`` masks)."""
    if exclude is not None:
        rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
        cols = np.concatenate(exclude) if len(rows) else np.zeros(0, np.int64)
        scores[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = -float("inf")
    top = scores.topk(min(n, scores.shape[1]), dim=1)
    values, indices = top.values, torch.where(torch.isneginf(top.values), -1, top.indices)
    if indices.shape[1] < n:
        pad = n - indices.shape[1]
        values = torch.cat([values, torch.full((len(values), pad), -float("inf"))], dim=1)
        indices = torch.cat([indices, torch.full((len(indices), pad), -1, dtype=indices.dtype)], dim=1)
    return values, indices


@torch.no_grad()
def rank(model, x, scorable: np.ndarray, n: int, block: int = 4096) -> np.ndarray:
    """[users, n] item indices: MMRec's full ranking, every item the model can score (``scorable``) ranked for every
    user, the user's train items masked (-1 where fewer than n are left); users in blocks of ``block`` (the score
    matrix of one block at a time)."""
    model.eval()
    users, items = model.representations()
    train = x.by_user(0)
    never = np.flatnonzero(~scorable)
    tops = []
    for start in range(0, len(x.users), block):
        stop = min(start + block, len(x.users))
        _, top = top_n(users[start:stop], items, n, [np.union1d(t, never) for t in train[start:stop]])
        tops.append(top.cpu().numpy())
    return np.concatenate(tops)


def evaluate(model, x, split: int, scorable: np.ndarray, ks=(10, 20)) -> dict:
    """Recall, NDCG and Precision @ks on ``split`` (VAL or TEST) of ``rank``'s ranking. A held-out item the model
    cannot score counts as a miss."""
    from ..metrics.recommend import ranking_metrics

    return ranking_metrics(rank(model, x, scorable, max(ks)), x.by_user(split), ks)

"""Recommendation metrics under full ranking (MMRec's protocol): every item is ranked for a user, the items of the
user's train interactions are masked, and Recall@K, NDCG@K and Precision@K are averaged over the users that have at
least one held-out item.

- Recall@K = |top-K ∩ held-out| / |held-out|; Precision@K = |top-K ∩ held-out| / K;
- NDCG@K = Σ_{r ≤ K, hit at rank r} 1 / log2(r + 1), divided by the ideal Σ_{r ≤ min(K, |held-out|)} 1 / log2(r + 1).
"""

from __future__ import annotations

import numpy as np


def ranking_metrics(top: np.ndarray, held_out: list[np.ndarray], ks=(10, 20)) -> dict:
    """top [users, >= max(ks)] ranked item indices (-1 = none); held_out per user the relevant items (a user with
    none is skipped). Returns {"recall@10": ..., "ndcg@10": ..., "precision@10": ..., ..., "users": n}."""
    if len(top) != len(held_out):
        raise ValueError(f"{len(top)} rankings for {len(held_out)} users")
    keep = [u for u, h in enumerate(held_out) if len(h)]
    out = {"users": len(keep)}
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    for k in ks:
        if top.shape[1] < k:
            raise ValueError(f"rankings of {top.shape[1]} items cannot give @{k}")
        recall, precision, ndcg = [], [], []
        for u in keep:
            truth = set(int(i) for i in held_out[u])
            hits = np.array([int(i) in truth for i in top[u, :k]], dtype=float)
            recall.append(hits.sum() / len(truth))
            precision.append(hits.sum() / k)
            ndcg.append((hits * discounts[:k]).sum() / discounts[:min(k, len(truth))].sum())
        for name, values in (("recall", recall), ("ndcg", ndcg), ("precision", precision)):
            out[f"{name}@{k}"] = float(np.mean(values)) if values else 0.0
    return out

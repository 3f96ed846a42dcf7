"""Ranking and visual-diversity metrics of the image selection (the paper's Table 3).

- ``precision_recall_f1_at_k``: per example P@K = |picked ∩ relevant| / K and R@K = |picked ∩ relevant| / |relevant|,
  averaged over examples; F1@K is the harmonic mean of the two averages. That is how the paper's numbers relate
  (img+text: 2 * 25.21 * 34.37 / (25.21 + 34.37) = 29.09), so F1 here is comparable with Table 3. Padding (-1) in
  the picks counts as a miss (P divides by K even when fewer than K items could be picked).
- ``div_at_k``: the paper's eq. (13), the mean over picked pairs of dis(i_m, i_n) = 1 - cos(f_m, f_n) of the photos'
  CLIP image features, averaged over examples with at least two picks.
"""

from __future__ import annotations

import numpy as np


def precision_recall_f1_at_k(picks, relevant, k: int) -> dict:
    """picks: per example a sequence of item ids (-1 = nothing picked); relevant: per example a set of item ids."""
    if len(picks) != len(relevant):
        raise ValueError(f"{len(picks)} pick lists for {len(relevant)} relevant sets")
    if not picks:
        raise ValueError("no examples")
    precision, recall = [], []
    for chosen, truth in zip(picks, relevant):
        chosen = [c for c in list(chosen)[:k] if c != -1]
        hits = len(set(chosen) & set(truth))
        precision.append(hits / k)
        recall.append(hits / len(truth) if truth else 0.0)
    p, r = float(np.mean(precision)), float(np.mean(recall))
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "examples": len(picks)}


def div_at_k(features: list[np.ndarray]) -> float:
    """features: per example the [n_picked, D] CLIP features of the picked photos (any scale)."""
    scores = []
    for f in features:
        f = np.asarray(f, dtype=np.float64)
        if len(f) < 2:
            continue
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        cos = f @ f.T
        upper = np.triu_indices(len(f), k=1)
        scores.append(float(np.mean(1.0 - cos[upper])))
    return float(np.mean(scores)) if scores else float("nan")

"""The paper's visual diversity in three levels (§3.2, Appendix B, eqs. 14-16) over CLIP image features.

dis(i_m, i_n) = 1 - cos(f_m, f_n). Each level is a pooled mean: the sum of dis over all its pairs divided by the
number of pairs (the paper's Z):
- Intra-Business: all pairs of photos of the same business;
- Inter-User: pairs of photos of the same business posted by different users;
- Intra-User: pairs of photos one user posted for one business.

Pair sums are computed in O(photos) per group from Σ_{m<n} f_m·f_n = (|Σ f|² - Σ |f|²) / 2, so a business with
thousands of photos costs no pairwise matrix. Inter-User = Intra-Business pairs minus Intra-User pairs.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def _pair_stats(vectors: np.ndarray) -> tuple[float, int]:
    """(Σ over pairs of dis, number of pairs) for one group of unit vectors."""
    n = len(vectors)
    pairs = n * (n - 1) // 2
    if pairs == 0:
        return 0.0, 0
    total = vectors.sum(axis=0)
    cos_sum = (float(total @ total) - float(np.sum(vectors * vectors))) / 2.0
    return pairs - cos_sum, pairs


def visual_diversity(features: np.ndarray, business_ids, user_ids) -> dict:
    """features [N, D] (normalised here), with each photo's business and user. Returns the three levels, their pair
    counts, and per-group means (per business / per (user, business)) for plotting."""
    features = np.asarray(features, dtype=np.float64)
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    by_business, by_pair = defaultdict(list), defaultdict(list)
    for i, (b, u) in enumerate(zip(business_ids, user_ids)):
        by_business[b].append(i)
        by_pair[(u, b)].append(i)
    business_stats = {b: _pair_stats(features[idx]) for b, idx in by_business.items()}
    pair_stats = {k: _pair_stats(features[idx]) for k, idx in by_pair.items()}
    inter = defaultdict(lambda: [0.0, 0])
    for b, (s, n) in business_stats.items():
        inter[b][0] += s
        inter[b][1] += n
    for (_, b), (s, n) in pair_stats.items():
        inter[b][0] -= s
        inter[b][1] -= n

    def pooled(stats) -> tuple[float, int]:
        s = sum(v[0] for v in stats)
        n = sum(v[1] for v in stats)
        return (s / n if n else float("nan")), n

    out = {}
    for level, stats in (("intra_business", business_stats.values()), ("inter_user", inter.values()),
                         ("intra_user", pair_stats.values())):
        stats = list(stats)
        value, pairs = pooled(stats)
        out[level] = {"div": value, "pairs": pairs, "groups": [s / n for s, n in stats if n > 0]}
    return out

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


LEVELS = ("intra_business", "inter_user", "intra_user")


def business_diversity(features: np.ndarray, user_ids) -> dict[str, list[tuple[float, int]]]:
    """One business's photos [n, D] (normalised here) with each photo's user: per level its groups' (Σ over pairs of
    dis, pairs): the business itself for Intra-Business and Inter-User, each of its users for Intra-User."""
    features = np.asarray(features, dtype=np.float64)
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    by_user = defaultdict(list)
    for i, u in enumerate(user_ids):
        by_user[u].append(i)
    business = _pair_stats(features)
    users = [_pair_stats(features[idx]) for idx in by_user.values()]
    inter = (business[0] - sum(s for s, _ in users), business[1] - sum(n for _, n in users))
    return {"intra_business": [business], "inter_user": [inter], "intra_user": users}


class DiversityTotals:
    """The three levels pooled over businesses added one at a time (``add``, ``business_diversity``'s output): per
    level two sums and each group's mean dis (float32, for histograms), so memory is 4 bytes a group."""

    def __init__(self) -> None:
        self.sums = {level: [0.0, 0] for level in LEVELS}
        self.means: dict[str, list[np.ndarray]] = {level: [] for level in LEVELS}

    def add(self, level: str, dis_sums, pairs) -> None:
        dis_sums, pairs = np.asarray(dis_sums, dtype=np.float64), np.asarray(pairs, dtype=np.int64)
        self.sums[level][0] += float(dis_sums.sum())
        self.sums[level][1] += int(pairs.sum())
        grouped = pairs > 0
        self.means[level].append((dis_sums[grouped] / pairs[grouped]).astype(np.float32))

    def result(self) -> dict:
        """Per level the pooled div (NaN without pairs), its pairs and its groups' means."""
        out = {}
        for level, (total, pairs) in self.sums.items():
            means = np.concatenate(self.means[level]) if self.means[level] else np.zeros(0, np.float32)
            out[level] = {"div": total / pairs if pairs else float("nan"), "pairs": pairs, "groups": means}
        return out


def visual_diversity(features: np.ndarray, business_ids, user_ids) -> dict:
    """features [N, D] (normalised here), with each photo's business and user, all in memory (jobs.evaluate pools
    ``business_diversity`` over a Ray Data group-by instead). Returns the three levels, their pair counts, and
    per-group means (per business / per (user, business)) for plotting."""
    by_business = defaultdict(list)
    for i, b in enumerate(business_ids):
        by_business[b].append(i)
    totals = DiversityTotals()
    for idx in by_business.values():
        for level, stats in business_diversity(np.asarray(features)[idx], [user_ids[i] for i in idx]).items():
            totals.add(level, [s for s, _ in stats], [n for _, n in stats])
    return totals.result()

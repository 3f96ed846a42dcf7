"""Greedy MAP inference for DPPs, batched over many ground sets at once.

Fast greedy MAP of Chen, Zhang & Zhou (NeurIPS 2018): keep, for every candidate i, the row c_i of the incremental
Cholesky factor of L restricted to the picked set, and d_i^2 = L_ii - ||c_i||^2, the Schur complement, which equals
det(L_{S+i}) / det(L_S). Each step picks argmax d_i^2 (the argmax of log det(L_{S+i})), then updates every c_i and
d_i^2 with one rank-one step. Cost O(M k) per step and ground set, all B ground sets in parallel on one device.
"""

from __future__ import annotations

import torch

EPS = 1e-10  # a pick must raise det(L_S) by at least this factor over zero: below it, the set is (numerically) full


def greedy_map(L: torch.Tensor, k: int, mask: torch.Tensor | None = None, eps: float = EPS) -> torch.Tensor:
    """Pick up to k items per ground set, greedily maximising log det(L_S).

    Args:
        L: float [B, M, M], symmetric positive semi-definite kernels (padding rows/cols are ignored via ``mask``).
        k: how many items to pick.
        mask: bool [B, M], True where an item is present; None means all present.
        eps: stop a ground set early when no item adds a factor > eps to det(L_S) (fewer present items than k,
            duplicate photos, or a kernel of lower rank).
    Returns:
        long [B, k]: item indices in pick order, padded with -1 where fewer than k items could be picked.
    """
    if L.dim() != 3 or L.shape[1] != L.shape[2]:
        raise ValueError(f"L must be [B, M, M], got {tuple(L.shape)}")
    B, M, _ = L.shape
    device = L.device
    if mask is not None and mask.shape != (B, M):
        raise ValueError(f"mask must be [B, M] = {(B, M)}, got {tuple(mask.shape)}")
    picks = torch.full((B, k), -1, dtype=torch.long, device=device)
    if k == 0 or M == 0:
        return picks
    # Rows are gathered from flat views with index_select: much faster than advanced indexing L[rows, best] on CPU.
    kernel_rows = L.contiguous().view(B * M, M)
    row_offsets = torch.arange(B, device=device) * M
    d2 = kernel_rows.view(B, M * M)[:, :: M + 1].clone()  # the diagonals, [B, M]
    if mask is not None:
        d2.masked_fill_(~mask, float("-inf"))  # absent items can never win
    cholesky: list[torch.Tensor] = []  # per step, [B, M]: that step's entry of c_i for every item i
    active = torch.ones(B, dtype=torch.bool, device=device)
    for step in range(k):
        best_d2, best = d2.max(dim=1)  # first index among ties
        active &= best_d2 > eps
        if not bool(active.any()):
            break
        everyone_active = bool(active.all())
        picks[:, step] = best if everyone_active else best.masked_fill(~active, -1)
        # rank-one update: e_i = (L_{j,i} - <c_j, c_i>) / d_j for every i
        e = kernel_rows.index_select(0, row_offsets + best)  # [B, M]
        for column in cholesky:
            e -= column * column.gather(1, best.unsqueeze(1))
        e *= torch.rsqrt(torch.clamp(best_d2, min=eps)).unsqueeze(1)
        if not everyone_active:
            e.masked_fill_(~active.unsqueeze(1), 0.0)
        cholesky.append(e)
        d2 -= e * e
        d2.scatter_(1, best.unsqueeze(1), float("-inf"))  # picked (for inactive rows too: they stay inactive)
    return picks


def naive_greedy(L: torch.Tensor, k: int, mask: torch.Tensor | None = None, eps: float = EPS) -> list[list[int]]:
    """Reference: at each step the item whose addition gives the largest det(L_S); for tests and benchmarks."""
    B, M, _ = L.shape
    mask = torch.ones(B, M, dtype=torch.bool) if mask is None else mask
    out = []
    for b in range(B):
        chosen: list[int] = []
        det_s = 1.0
        for _ in range(k):
            best, best_det = -1, None
            for i in range(M):
                if not mask[b, i] or i in chosen:
                    continue
                idx = chosen + [i]
                det = float(torch.linalg.det(L[b][idx][:, idx]))
                if best_det is None or det > best_det:
                    best, best_det = i, det
            if best < 0 or best_det / det_s <= eps:
                break
            chosen.append(best)
            det_s = best_det
        out.append(chosen + [-1] * (k - len(chosen)))
    return out

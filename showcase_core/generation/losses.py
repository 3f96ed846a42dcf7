"""PC²L's contrastive losses (paper §4.3, eqs. 7-10).

s_ij = cos(H̃^X_i, H̃^Y_j) / τ between the pooled, projected source modality X of example i and the target
explanation Y of example j in the mini-batch; the other examples' targets are the negatives K. With several ranks the
mini-batch is the global one: ``pc2l_loss`` gathers every rank's rows (showcase_core.distributed) before these.

- ``info_nce``: eq. 7, -log exp(s_ii) / (exp(s_ii) + Σ_{j∈K} w_ij exp(s_ij) + exp(s_i,ent)), averaged over the
  rows that take part. Computed as a log-sum-exp for stability.
- CCL (eq. 8): X = photos, plus one hard negative per row: the target with its entities swapped (Y^ent).
- PCL (eq. 9-10): X = history reviews, negatives re-weighted by f(i, j) = α^(1 - cos(R̃_i, R̃_j)), R̃ = the mean of
  the user's input history features. The paper prints f outside the sum, but it depends on j, so it weighs each
  negative term. Rows without history take no part (they have no H^R).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def info_nce(source: torch.Tensor, target: torch.Tensor, tau: float, weights: torch.Tensor | None = None,
             extra: torch.Tensor | None = None, extra_mask: torch.Tensor | None = None,
             row_mask: torch.Tensor | None = None) -> torch.Tensor:
    """source, target [B, P]; weights [B, B] on negatives (diagonal ignored); extra [B, P] one more negative per row
    where extra_mask [B] is True; row_mask [B] picks the rows whose loss is averaged. Returns a scalar."""
    b = source.shape[0]
    src, tgt = F.normalize(source, dim=-1), F.normalize(target, dim=-1)
    s = src @ tgt.T / tau  # [B, B]
    eye = torch.eye(b, dtype=torch.bool, device=s.device)
    log_w = torch.zeros_like(s) if weights is None else torch.log(weights.clamp_min(1e-12))
    terms = torch.where(eye, s, s + log_w)  # positive on the diagonal, weighted negatives elsewhere
    if extra is not None:
        s_ent = (src * F.normalize(extra, dim=-1)).sum(-1, keepdim=True) / tau
        if extra_mask is not None:
            s_ent = s_ent.masked_fill(~extra_mask[:, None], float("-inf"))
        terms = torch.cat([terms, s_ent], dim=1)
    per_row = torch.logsumexp(terms, dim=1) - s.diagonal()
    if row_mask is None:
        return per_row.mean()
    if not row_mask.any():
        return per_row.sum() * 0.0  # keeps the graph; nothing to learn from this batch
    return per_row[row_mask].mean()


def personality_weights(history_mean: torch.Tensor, alpha: float = math.e) -> torch.Tensor:
    """f(i, j) = α^(1 - cos(R̃_i, R̃_j)) for every pair of the batch ([B, D] -> [B, B]); a zero R̃ has cos 0."""
    r = F.normalize(history_mean, dim=-1)
    return alpha ** (1.0 - r @ r.T)

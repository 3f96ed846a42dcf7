"""The recommenders' losses.

- ``bpr_loss``: Bayesian personalised ranking, mean over the batch of -log σ(score(u, i) - score(u, j)) for a
  user's train item i and a sampled item j the user has not interacted with (softplus form, stable).
- ``l2_penalty``: λ · Σ ||e||² / B over the batch's ego (layer-0) embeddings, as LightGCN regularises.
- ``info_nce``: in-batch InfoNCE with cosine similarity and temperature τ: PC²L's (showcase_core.generation.losses),
  reused for AlignRec's alignments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..generation.losses import info_nce

__all__ = ["bpr_loss", "l2_penalty", "info_nce"]


def bpr_loss(user: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """user, positive, negative [B, d] representations."""
    margin = (user * positive).sum(-1) - (user * negative).sum(-1)
    return F.softplus(-margin).mean()


def l2_penalty(weight: float, *embeddings: torch.Tensor) -> torch.Tensor:
    batch = embeddings[0].shape[0]
    return weight * sum(e.pow(2).sum() for e in embeddings) / max(batch, 1)

"""BPR-MF: a user and an item embedding, the score their dot product, trained with BPR (Rendle et al., 2009)."""

from __future__ import annotations

import torch
from torch import nn

from .losses import bpr_loss, l2_penalty


class BPRMF(nn.Module):
    trainable = True

    def __init__(self, users: int, items: int, dim: int = 64, reg: float = 1e-4):
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.item = nn.Embedding(items, dim)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        self.reg = reg

    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user.weight, self.item.weight

    def forward(self, users: torch.Tensor, positives: torch.Tensor,
                negatives: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The training loss of a batch of (user, positive, negative) and its parts."""
        u, p, n = self.user(users), self.item(positives), self.item(negatives)
        bpr = bpr_loss(u, p, n)
        return bpr + l2_penalty(self.reg, u, p, n), {"bpr": float(bpr.detach())}

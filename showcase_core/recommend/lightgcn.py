"""LightGCN (He et al., SIGIR 2020): ID embeddings propagated over the normalised user-item graph, no weights or
non-linearities between layers; the representation is the mean of the layer-0..L embeddings; BPR + L2 on layer 0."""

from __future__ import annotations

import torch
from torch import nn

from .losses import bpr_loss, l2_penalty


class LightGCN(nn.Module):
    trainable = True

    def __init__(self, users: int, items: int, adjacency: torch.Tensor, dim: int = 64, layers: int = 2,
                 reg: float = 1e-4):
        super().__init__()
        self.users, self.items, self.layers, self.reg = users, items, layers, reg
        self.embedding = nn.Embedding(users + items, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.register_buffer("adjacency", adjacency, persistent=False)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [U, d], items [I, d]) after L layers, averaged over layers."""
        layer, total = self.embedding.weight, self.embedding.weight
        for _ in range(self.layers):
            layer = torch.sparse.mm(self.adjacency, layer)
            total = total + layer
        total = total / (self.layers + 1)
        return total[:self.users], total[self.users:]

    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate()

    def forward(self, users: torch.Tensor, positives: torch.Tensor,
                negatives: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The training loss of a batch of (user, positive, negative) and its parts."""
        u_all, i_all = self.propagate()
        bpr = bpr_loss(u_all[users], i_all[positives], i_all[negatives])
        ego = self.embedding.weight
        reg = l2_penalty(self.reg, ego[users], ego[self.users + positives], ego[self.users + negatives])
        return bpr + reg, {"bpr": float(bpr.detach())}

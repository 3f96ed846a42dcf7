"""Popularity: every user gets the businesses with the most train interactions (the baseline every recommender
must beat, and the fallback for a user with no train interactions)."""

from __future__ import annotations

import numpy as np
import torch


class Popularity(torch.nn.Module):
    trainable = False

    def __init__(self, users: int, items: int, train_item: np.ndarray):
        super().__init__()
        counts = np.bincount(train_item, minlength=items).astype(np.float32)
        self.register_buffer("counts", torch.as_tensor(counts), persistent=False)
        self.users = users

    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [U, 1], items [I, 1]): a user's score of an item is its train count."""
        return torch.ones(self.users, 1), self.counts[:, None]

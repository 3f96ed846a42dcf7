"""The graphs the recommenders propagate over (torch sparse tensors, built from index arrays).

- ``user_item_adjacency``: LightGCN's symmetric normalised adjacency D^-1/2 A D^-1/2 of the bipartite graph over
  users + items (users first), from the train interactions only.
- ``item_knn_graph``: the item-item graph from content similarity as in MMRec's multimodal models: each item keeps
  its top-k most cosine-similar items (itself excluded), the graph is normalised D^-1/2 S D^-1/2.

Memory: O(interactions + items * k).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _normalised(rows: torch.Tensor, cols: torch.Tensor, n: int) -> torch.Tensor:
    values = torch.ones(len(rows))
    degree = torch.zeros(n).index_add_(0, rows, values)
    inv_sqrt = degree.clamp_min(1).pow(-0.5)
    values = inv_sqrt[rows] * inv_sqrt[cols]
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=False).coalesce()


def user_item_adjacency(user: np.ndarray, item: np.ndarray, users: int, items: int) -> torch.Tensor:
    """[(U + I), (U + I)] sparse, from train (user, item) index pairs."""
    u = torch.as_tensor(user, dtype=torch.long)
    i = torch.as_tensor(item, dtype=torch.long) + users
    rows, cols = torch.cat([u, i]), torch.cat([i, u])
    return _normalised(rows, cols, users + items)


def item_knn_graph(content: torch.Tensor, k: int = 10, chunk: int = 4096) -> torch.Tensor:
    """[I, I] sparse from content [I, D] (rows of zeros have no neighbours); computed in row chunks: O(chunk * I)."""
    n = content.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (n, n),
                                       check_invariants=False).coalesce()
    unit = F.normalize(content.float(), dim=-1)
    rows, cols = [], []
    for start in range(0, n, chunk):
        sim = unit[start:start + chunk] @ unit.T
        sim[torch.arange(sim.shape[0]), torch.arange(start, start + sim.shape[0])] = -float("inf")  # not itself
        top = sim.topk(k, dim=1).indices
        rows.append(torch.arange(start, start + sim.shape[0]).repeat_interleave(k))
        cols.append(top.reshape(-1))
    rows, cols = torch.cat(rows), torch.cat(cols)
    has_content = unit.abs().sum(-1) > 0
    keep = has_content[rows] & has_content[cols]
    return _normalised(rows[keep], cols[keep], n)

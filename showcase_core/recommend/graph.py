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


EARTH_RADIUS_KM = 6371.0


def place_similarity(a: torch.Tensor, b: torch.Tensor, scale_km: float) -> torch.Tensor:
    """[n, m] exp(-d² / 2ℓ²) between coordinates a [n, 2] and b [m, 2] (latitude, longitude in degrees), d the
    great-circle distance in km (haversine) and ℓ = ``scale_km``: 1 at the same place, near 0 a few ℓ away. In
    float32 (an angle's rounding is under a metre on Earth): a few [n, m] temporaries."""
    lat_a, lon_a = torch.deg2rad(a[:, :1].float()), torch.deg2rad(a[:, 1:].float())
    lat_b, lon_b = torch.deg2rad(b[:, 0].float()), torch.deg2rad(b[:, 1].float())
    h = torch.sin((lat_b - lat_a) / 2).square_()
    h += torch.cos(lat_a) * torch.cos(lat_b) * torch.sin((lon_b - lon_a) / 2).square_()
    distance_in_scales = h.clamp_(0, 1).sqrt_().asin_().mul_(2 * EARTH_RADIUS_KM / scale_km)  # d / ℓ
    return distance_in_scales.square_().mul_(-0.5).exp_()


def item_knn_graph(views: list[torch.Tensor], k: int = 10, chunk: int = 4096, place: torch.Tensor | None = None,
                   place_scale_km: float = 2.0) -> torch.Tensor:
    """[I, I] sparse from content views (each [I, D_v]): the similarity of two items is the mean over the views of
    their cosine, and, with ``place`` ([I, 2] latitude, longitude; NaN where unknown), one more term of the same
    weight, ``place_similarity`` (0 where a place is unknown). An item with no content in any view has no
    neighbours. Computed in row chunks: O(chunk * I)."""
    n = views[0].shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (n, n),
                                       check_invariants=False).coalesce()
    units = [F.normalize(view.float(), dim=-1) for view in views]
    terms = len(units) + (place is not None)
    rows, cols = [], []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sim = sum(unit[start:stop] @ unit.T for unit in units)
        if place is not None:  # NaN where either place is unknown: no term
            sim += place_similarity(place[start:stop], place, place_scale_km).nan_to_num_(0.0)
        sim = sim / terms
        sim[torch.arange(stop - start), torch.arange(start, stop)] = -float("inf")  # not itself
        top = sim.topk(k, dim=1).indices
        rows.append(torch.arange(start, stop).repeat_interleave(k))
        cols.append(top.reshape(-1))
    rows, cols = torch.cat(rows), torch.cat(cols)
    has_content = sum(unit.abs().sum(-1) for unit in units) > 0
    keep = has_content[rows] & has_content[cols]
    return _normalised(rows[keep], cols[keep], n)

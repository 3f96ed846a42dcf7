"""AlignRec (Liu et al., CIKM 2024) on CLIP content: LightGCN over IDs plus content over an item-item graph,
trained with BPR and three alignments.

Item content is two vectors per business in CLIP space: ``image`` (mean of its photos) and ``text`` (mean of its
reviews), from train interactions (and owner photos) only. Here, as in the paper's notation:

- p_I = MLP_I(image), p_T = MLP_T(text): the projected modalities.
- h_u, h_i: LightGCN over the train user-item graph (the ID side); e_i the item's own (layer-0) ID embedding.
- The content view of modality m, as the released code builds it: g^m = e_i ⊙ σ(p_m) (the content decides which
  parts of the item's ID embedding count), then c̃^m = g^m + S g^m, with S the item-item kNN graph (k = 10) from all
  of the item's content: the mean of the cosines of review photos, review text and owner photos, and, where the
  businesses' places are known, a fourth term of the same weight, exp(-d²/2ℓ²) of their distance
  (``graph.item_knn_graph``, ℓ = ``place_scale_km``); c̃ = (c̃^I + c̃^T) / 2. The place term is this project's
  addition: where reviews follow place (the large world), photos and words alone found neighbours that shared the
  business's area 7-17% of the time (chance 3.4%), and AlignRec stayed below LightGCN; with places, 87%, and above
  it (README, evaluate's recommend report). Content enters as a gate on IDs, so it cannot outweigh them. A first
  version added the projected content itself (user = h_u + mean c̃, item = h_i + c̃_i); on a world whose reviews
  follow place, with a content that carried taste only, it ranked by content alone (Recall@20 1.0 where LightGCN
  had 9.9).
- A cold item has no ID to learn (no train interaction): its e_i and h_i are the mean of its k warm neighbours'
  (``impute``), so its score is on the warm items' scale and comes from the items it resembles. The neighbours are
  found by owner photos (and place), which every business publishes (``owner``, ``place``); a cold item's review
  content is owner photos alone, which no warm item's mean of review photos resembles. Without owner photos, by S.
- user = h_u + mean of c̃ over the user's train items; item = h_i + c̃_i; score = user · item.
- loss = BPR(user, item+, item-) + λ_reg L2(ego) + w_ICA · InfoNCE(p_I, p_T) (inter-content: an item's image and
  text agree, in-batch negatives) + w_CCA · InfoNCE(c̃, h) (content ↔ ID, τ = 0.2 as the released code's default)
  + w_UIA · InfoNCE(user, item+) (user ↔ item).

The paper's pretrained BEiT-3 content encoder is replaced by the project's CLIP towers (their image and text
already share one space, so ICA acts on the projections). The weights w_* and τ_ICA, τ_UIA are settings; the
defaults are this project's (the paper tunes them per dataset).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .graph import item_knn_graph
from .lightgcn import LightGCN
from .losses import bpr_loss, info_nce, l2_penalty

DEFAULTS = {"dim": 64, "layers": 2, "reg": 1e-4, "knn": 10, "ica_weight": 0.1, "cca_weight": 0.1, "uia_weight": 0.1,
            "ica_tau": 0.2, "cca_tau": 0.2, "uia_tau": 0.2, "place_scale_km": 2.0}


def projector(inputs: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, dim), nn.LeakyReLU(), nn.Linear(dim, dim))


def user_item_mean(user: np.ndarray, item: np.ndarray, users: int, items: int) -> torch.Tensor:
    """[U, I] sparse: row u averages u's train items."""
    u, i = torch.as_tensor(user, dtype=torch.long), torch.as_tensor(item, dtype=torch.long)
    counts = torch.zeros(users).index_add_(0, u, torch.ones(len(u))).clamp_min(1)
    return torch.sparse_coo_tensor(torch.stack([u, i]), 1.0 / counts[u], (users, items),
                                   check_invariants=False).coalesce()


def warm_neighbour_mean(item_graph: torch.Tensor, warm: torch.Tensor) -> torch.Tensor:
    """[I, I] sparse: row i averages i's warm neighbours in the item graph (an empty row where it has none)."""
    rows, cols = item_graph.indices()
    keep = warm[cols]
    rows, cols = rows[keep], cols[keep]
    counts = torch.zeros(item_graph.shape[0]).index_add_(0, rows, torch.ones(len(rows))).clamp_min(1)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), 1.0 / counts[rows], item_graph.shape,
                                   check_invariants=False).coalesce()


class AlignRec(nn.Module):
    trainable = True

    def __init__(self, users: int, items: int, adjacency: torch.Tensor, train_user: np.ndarray,
                 train_item: np.ndarray, image: torch.Tensor, text: torch.Tensor, cold: torch.Tensor,
                 owner: torch.Tensor | None = None, place: torch.Tensor | None = None, **settings):
        super().__init__()
        cfg = {**DEFAULTS, **settings}
        self.cfg = cfg
        self.ids = LightGCN(users, items, adjacency, cfg["dim"], cfg["layers"], cfg["reg"])
        self.project_image = projector(image.shape[1], cfg["dim"])
        self.project_text = projector(text.shape[1], cfg["dim"])
        self.register_buffer("image", image.float(), persistent=False)
        self.register_buffer("text", text.float(), persistent=False)
        self.register_buffer("warm", ~cold.bool(), persistent=False)
        near = {"place": place, "place_scale_km": cfg["place_scale_km"]}
        views = [image, text] + ([] if owner is None else [owner])
        self.register_buffer("item_graph", item_knn_graph(views, cfg["knn"], **near), persistent=False)
        # a cold item's neighbours by owner photos (and place), which warm and cold items both have (its review
        # content is owner photos alone, unlike any warm item's); the content graph where no owner photos were
        # published
        imputation = self.item_graph if owner is None else item_knn_graph([owner], cfg["knn"], **near)
        self.register_buffer("warm_neighbours", warm_neighbour_mean(imputation, self.warm), persistent=False)
        self.register_buffer("user_items", user_item_mean(train_user, train_item, users, items), persistent=False)

    def parts(self) -> dict:
        """Every user's and item's parts: h (IDs), p_I, p_T (projected modalities), c̃_I, c̃_T (each modality's gate
        on the item ID, propagated over the item graph; c̃ is their mean) and the user representation."""
        h_user, h_item = self.ids.propagate()
        h_item = self.impute(h_item)
        ego_item = self.impute(self.ids.embedding.weight[self.ids.users:])
        p_image, p_text = self.project_image(self.image), self.project_text(self.text)
        c_image = self.content_view(ego_item, p_image)
        c_text = self.content_view(ego_item, p_text)
        c_tilde = (c_image + c_text) / 2
        user = h_user + torch.sparse.mm(self.user_items, c_tilde)
        return {"user": user, "h_user": h_user, "h_item": h_item, "ego_item": ego_item, "p_image": p_image,
                "p_text": p_text, "c_image": c_image, "c_text": c_text, "c_tilde": c_tilde}

    def impute(self, item_vectors: torch.Tensor) -> torch.Tensor:
        """A warm item keeps its vector; a cold one (no ID learnt) takes the mean of its warm neighbours' (found by
        owner photos where there are any)."""
        return torch.where(self.warm[:, None], item_vectors, torch.sparse.mm(self.warm_neighbours, item_vectors))

    def content_view(self, ego_item: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """g + S g with g = e_i ⊙ σ(p): the content decides which parts of the item's ID embedding count, and the
        item graph mixes in its content neighbours'."""
        gated = ego_item * torch.sigmoid(projected)
        return gated + torch.sparse.mm(self.item_graph, gated)

    def items(self, out: dict, index: torch.Tensor | None = None) -> torch.Tensor:
        """The item representation h_i + c̃_i of ``index`` (all items when None)."""
        item = out["h_item"] + out["c_tilde"]
        return item if index is None else item[index]

    @torch.no_grad()
    def representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.parts()
        return out["user"], self.items(out)

    def forward(self, users: torch.Tensor, positives: torch.Tensor,
                negatives: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The training loss of a batch of (user, positive, negative) and its parts."""
        cfg, out = self.cfg, self.parts()
        user, positive, negative = out["user"][users], self.items(out, positives), self.items(out, negatives)
        bpr = bpr_loss(user, positive, negative)
        ego = self.ids.embedding.weight
        reg = l2_penalty(cfg["reg"], ego[users], ego[self.ids.users + positives], ego[self.ids.users + negatives])
        batch_items = torch.unique(positives)
        ica = info_nce(out["p_image"][batch_items], out["p_text"][batch_items], cfg["ica_tau"])
        cca = info_nce(out["c_tilde"][batch_items], out["h_item"][batch_items], cfg["cca_tau"])
        uia = info_nce(user, positive, cfg["uia_tau"])
        total = bpr + reg + cfg["ica_weight"] * ica + cfg["cca_weight"] * cca + cfg["uia_weight"] * uia
        extra, parts = self.extra_loss(out, users, positives, negatives)
        parts = {"bpr": bpr, "ica": ica, "cca": cca, "uia": uia, **parts}
        return total + extra, {name: float(value.detach()) if torch.is_tensor(value) else value
                               for name, value in parts.items()}

    def extra_loss(self, out: dict, users: torch.Tensor, positives: torch.Tensor,
                   negatives: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return torch.zeros(()), {}

"""What a recommender trains on and how each model is built from it (train_recommender's workers and evaluate).

``load_recommender_data`` reads the reviews' (user_id, business_id, rating, time_ms) columns, splits them
(``interactions``), sums each item's train content from the users feature table and reads each business's place
from the businesses table when ingest published one (``content``). The split is a
pure function of the reviews and the seed, so every Ray Train worker rebuilds the same one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..features import read_meta
from .alignrec import AlignRec
from .bprmf import BPRMF
from .content import business_places, item_content
from .graph import user_item_adjacency
from .interactions import TRAIN, Interactions, build_interactions
from .lightgcn import LightGCN
from .popularity import Popularity
from .r2mr import R2MR

MODELS = ("popularity", "bprmf", "lightgcn", "alignrec", "r2mr")
CONTENT_MODELS = ("alignrec", "r2mr")


@dataclass
class RecommenderData:
    interactions: Interactions
    image: np.ndarray  # [I, D] mean photo vector of the item's train interactions (zeros: none)
    text: np.ndarray  # [I, D] mean text vector
    dim: int
    owner: np.ndarray | None = None  # [I, D] mean owner-photo vector of every item (None: no owner photos)
    place: np.ndarray | None = None  # [I, 2] latitude, longitude in degrees, NaN where unknown (None: no places)

    def scorable(self, model_name: str) -> np.ndarray:
        """[I] bool: items the model can score. A warm item always; a cold item (no train interaction, so no
        learned ID) only by a content model, and only when it has content."""
        has_content = (np.abs(self.image).sum(1) + np.abs(self.text).sum(1)) > 0
        return ~self.interactions.cold | (has_content if model_name in CONTENT_MODELS else False)

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.interactions.pairs(TRAIN)


def load_recommender_data(store, encoder_id: str, cold_fraction: float, seed: int) -> RecommenderData:
    reviews = store.read_table("reviews", columns=["user_id", "business_id", "rating", "time_ms"])
    x = build_interactions(reviews, cold_fraction, seed)
    dim = int(read_meta(store, encoder_id)["dim"])  # FeaturesError (run jobs.features) when there are none
    content = item_content(store, encoder_id, x, dim)
    owner = content["owner"] if content["owner"].any() else None
    return RecommenderData(x, content["image"], content["text"], dim, owner, business_places(store, x.items))


def build_model(name: str, data: RecommenderData, settings: dict) -> torch.nn.Module:
    """One of MODELS with the given settings (dim, layers, reg and, for the content models, theirs)."""
    x = data.interactions
    users, items = len(x.users), len(x.items)
    tu, ti = data.train
    if name == "popularity":
        return Popularity(users, items, ti)
    if name == "bprmf":
        return BPRMF(users, items, settings["dim"], settings["reg"])
    adjacency = user_item_adjacency(tu, ti, users, items)
    if name == "lightgcn":
        return LightGCN(users, items, adjacency, settings["dim"], settings["layers"], settings["reg"])
    content = (torch.as_tensor(data.image), torch.as_tensor(data.text), torch.as_tensor(x.cold))
    extra = {"owner": None if data.owner is None else torch.as_tensor(data.owner),
             "place": None if data.place is None else torch.as_tensor(data.place)}
    if name == "alignrec":
        return AlignRec(users, items, adjacency, tu, ti, *content, **extra, **settings)
    if name == "r2mr":
        return R2MR(users, items, adjacency, tu, ti, *content, **extra, **settings)
    raise ValueError(f"unknown recommender {name!r} (choose from {', '.join(MODELS)})")


def export_vectors(model: torch.nn.Module, data: RecommenderData, uri: str, scorable: np.ndarray) -> dict:
    """Write what ranking needs, beside the model: ``users.parquet`` (user_id, vector, seen: every item the user
    reviewed in any split, train_items) and ``items.parquet`` (business_id, vector, popularity: train interactions,
    cold, scorable). Returns their row counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..store import filesystem_for

    x = data.interactions
    model.eval()
    with torch.no_grad():
        users, items = (t.detach().float().cpu().numpy() for t in model.representations())
    tu, ti = data.train
    seen = [np.unique(np.concatenate(parts)) for parts in zip(*(x.by_user(s) for s in (0, 1, 2)))]
    vectors = lambda m: pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1), pa.float32()), m.shape[1])  # noqa
    user_table = pa.table({"user_id": x.users, "vector": vectors(users),
                           "seen": pa.array([s.astype(np.int32) for s in seen], pa.list_(pa.int32())),
                           "train_items": np.bincount(tu, minlength=len(x.users)).astype(np.int32)})
    item_table = pa.table({"business_id": x.items, "vector": vectors(items),
                           "popularity": np.bincount(ti, minlength=len(x.items)).astype(np.int64),
                           "cold": x.cold, "scorable": scorable})
    fs, path = filesystem_for(uri)
    fs.create_dir(path, recursive=True)
    for name, table in (("users", user_table), ("items", item_table)):
        pq.write_table(table, f"{path}/{name}.parquet", filesystem=fs, row_group_size=4096)
    return {"users": user_table.num_rows, "items": item_table.num_rows}

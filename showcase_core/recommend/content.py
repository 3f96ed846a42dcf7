"""Item content for the multimodal recommenders: per business, the mean CLIP photo vector and the mean CLIP text
vector of its train interactions only (a val or test user's photos and words never reach an item's content). A
business with no train photo (a cold item) takes the mean of its owner photos (``tables/owner_photos``, embedded
with the reviews' photos) as its photo vector; with neither, its content is zero and no model can score it.

It is read from the users feature table (``features/<encoder_id>/users``, showcase_core.features): each user row
holds, per business the user reviewed, the sum and count of their photo and text vectors, which is exactly one
interaction's content. The table is streamed in batches and summed per item.

``business_places``: each business's coordinates from the businesses table (ingest's ``--businesses``), which the
content models' item graph also weighs (``graph.item_knn_graph``).

Memory: the train interactions' codes (O(interactions)), two [items, dim] sums and the owner photos' ids (a few per
business); never a table of the reviews' photos.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import tables as delta
from ..encoders.embed import embeddings_dir
from ..features import features_dir
from ..store import StoreError
from .interactions import TRAIN, Interactions

COLUMNS = ["user_id", "businesses", "photo_sums", "photo_counts", "text_sums", "text_counts"]


def _entries(batch: pa.RecordBatch, users: pa.Array, items: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(user index, item index) of every (user, business) entry of the batch, in the order of the flattened lists;
    -1 where the id is not among ``users`` / ``items`` (the interactions' ids)."""
    businesses = batch.column("businesses")
    parents = np.asarray(pc.list_parent_indices(businesses))
    user = np.asarray(pc.fill_null(pc.index_in(batch.column("user_id"), value_set=users), -1))[parents]
    item = np.asarray(pc.fill_null(pc.index_in(pc.list_flatten(businesses), value_set=items), -1))
    return user, item


def _sums(column: pa.Array, dim: int) -> np.ndarray:
    values = pc.list_flatten(pc.list_flatten(column))
    return np.asarray(values, np.float32).reshape(-1, dim)


def owner_photo_sums(store, encoder_id: str, item_ids: pa.Array, dim: int,
                     batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """([I, dim] sum, [I] count) of each item's embedded owner photos (zeros when ingest published none)."""
    sums, counts = np.zeros((len(item_ids), dim)), np.zeros(len(item_ids))
    try:
        owners = store.read_table("owner_photos", ["image_id", "business_id"])
    except StoreError:
        return sums, counts
    item = np.asarray(pc.fill_null(pc.index_in(owners.column("business_id"), value_set=item_ids), -1))
    photo_ids = owners.column("image_id").combine_chunks()
    for batch in delta.iter_batches(store, embeddings_dir(encoder_id, "images"), columns=["id", "embedding"],
                                    batch_size=batch_size, filter=pc.field("id").isin(photo_ids)):
        owner = np.asarray(pc.index_in(batch.column("id"), value_set=photo_ids))
        vectors = np.asarray(pc.list_flatten(batch.column("embedding")), np.float32).reshape(-1, dim)
        known = item[owner] >= 0
        np.add.at(sums, item[owner][known], vectors[known])
        np.add.at(counts, item[owner][known], 1)
    return sums, counts


def business_places(store, item_ids: list[str]) -> np.ndarray | None:
    """[I, 2] each item's (latitude, longitude) from the businesses table, NaN where it has none; None when ingest
    published no businesses table (the recommenders then find neighbours by content alone)."""
    try:
        table = store.read_table("businesses", ["business_id", "latitude", "longitude"])
    except StoreError:
        return None
    places = np.full((len(item_ids), 2), np.nan)
    row = np.asarray(pc.fill_null(pc.index_in(table.column("business_id"), value_set=pa.array(item_ids, pa.string())),
                                  -1))
    known = row >= 0
    places[row[known], 0] = np.asarray(table.column("latitude"))[known]
    places[row[known], 1] = np.asarray(table.column("longitude"))[known]
    return places


def item_content(store, encoder_id: str, x: Interactions, dim: int, batch_size: int = 8192) -> dict:
    """{"image": [I, dim], "text": [I, dim], "owner": [I, dim], "photos": [I], "texts": [I], "owner_photos": [I]}:
    mean vectors (zeros where an item has none) and the counts they average (``owner_photos``: those an item without
    train photos used). ``owner`` is every item's owner-photo mean, warm or cold: the one content a cold item and a
    warm one both have, drawn alike (what a cold item's neighbours are found by)."""
    items = len(x.items)
    tu, ti = x.pairs(TRAIN)
    train = np.unique(tu.astype(np.int64) * items + ti)
    sums = {"image": np.zeros((items, dim)), "text": np.zeros((items, dim))}
    counts = {"image": np.zeros(items), "text": np.zeros(items)}
    user_ids, item_ids = pa.array(x.users, pa.string()), pa.array(x.items, pa.string())  # once, not per batch
    for batch in delta.iter_batches(store, features_dir(encoder_id, "users"), columns=COLUMNS,
                                    batch_size=batch_size):
        user, item = _entries(batch, user_ids, item_ids)
        code = user.astype(np.int64) * items + item
        known = (user >= 0) & (item >= 0)
        at = np.minimum(np.searchsorted(train, code), max(len(train) - 1, 0))
        keep = known & (train[at] == code) if len(train) else np.zeros(len(code), bool)
        for kind, prefix in (("image", "photo"), ("text", "text")):
            vectors = _sums(batch.column(f"{prefix}_sums"), dim)
            n = np.asarray(pc.list_flatten(batch.column(f"{prefix}_counts")), np.float64)
            np.add.at(sums[kind], item[keep], vectors[keep])
            np.add.at(counts[kind], item[keep], n[keep])
    owner_sums, owner_counts = owner_photo_sums(store, encoder_id, item_ids, dim, batch_size)
    owner = (owner_sums / np.maximum(owner_counts, 1)[:, None]).astype(np.float32)
    use_owner = counts["image"] == 0
    owner_counts = np.where(use_owner, owner_counts, 0)
    sums["image"][use_owner] = owner_sums[use_owner]
    out = {kind: (sums[kind] / np.maximum(counts[kind] + (owner_counts if kind == "image" else 0), 1)[:, None]
                  ).astype(np.float32) for kind in sums}
    return {**out, "owner": owner, "photos": counts["image"].astype(np.int64), "texts": counts["text"].astype(np.int64),
            "owner_photos": owner_counts.astype(np.int64)}

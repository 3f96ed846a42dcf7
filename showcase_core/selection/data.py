"""Training and evaluation examples for the DPP: one per (user, business) review.

- ground set: the business's ground set as showcase_core.features defines it (the newest ``max_ground`` photos),
  with the review's own photos put first when the cap left one of them out (the likelihood needs Y inside it);
- Y: the photos the user posted with that review;
- profile: showcase_core.features.profile of the pair: the mean CLIP image and text features of the user's entries
  of every *other* business, so the profile never contains the answer (the nightly and Serve read the same numbers
  from the feature tables). Users with no other entry have ``has_history`` False and zero profiles.

Two sources give the same examples: ``build_selection_data`` from the raw tables, held in memory (the tests'
reference), and ``feature_examples`` from the feature tables' rows a batch of reviews at a time, as Arrow rows with
their ground sets' photo ids and vectors inline (``examples_of_reviews``, run by train_dpp's and evaluate's Ray Data
tasks; ``arrow_batch`` turns a batch of them into the kernel's tensors). Both end in an ``ExampleBatch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import torch


@dataclass
class Examples:
    ground: np.ndarray  # int32 [N, M] rows of SelectionData.photo_vecs, -1 = padding
    y_pos: np.ndarray  # int32 [N, K] positions in the ground set, -1 = padding
    profile_img: np.ndarray  # float32 [N, D]
    profile_text: np.ndarray  # float32 [N, D]
    has_history: np.ndarray  # bool [N]
    user_ids: list[str]
    business_ids: list[str]

    def __len__(self) -> int:
        return len(self.user_ids)

    def take(self, idx: np.ndarray) -> "Examples":
        return Examples(self.ground[idx], self.y_pos[idx], self.profile_img[idx], self.profile_text[idx],
                        self.has_history[idx], [self.user_ids[i] for i in idx], [self.business_ids[i] for i in idx])


@dataclass
class SelectionData:
    photo_ids: list[str]
    photo_vecs: np.ndarray  # float32 [P, D]
    splits: dict[str, Examples] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def embedding_matrix(table: pa.Table) -> tuple[list[str], np.ndarray]:
    ids = table.column("id").to_pylist()
    dim = table.schema.field("embedding").type.list_size
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return ids, flat.astype(np.float32, copy=False).reshape(len(ids), dim)


def build_selection_data(reviews: pa.Table, images: pa.Table, image_emb: pa.Table, text_emb: pa.Table,
                         splits=("train", "val", "test"), max_ground: int = 128) -> SelectionData:
    from .. import features

    photo_ids, photo_vecs = embedding_matrix(image_emb)
    row_of_photo = {p: i for i, p in enumerate(photo_ids)}
    dim = photo_vecs.shape[1]
    users, businesses = features.rows_from_tables(reviews, images, image_emb, text_emb, max_ground_set=max_ground)
    rows = reviews.select(["user_id", "business_id", "split", "pic_ids"]).to_pylist()

    data = SelectionData(photo_ids, photo_vecs)
    for split in splits:
        built = {"ground": [], "y": [], "img": [], "text": [], "hist": [], "users": [], "businesses": []}
        skipped = 0
        for r in rows:
            if r["split"] != split:
                continue
            ground = businesses[r["business_id"]]["image_ids"]
            targets = [p for p in dict.fromkeys(r["pic_ids"] or []) if p in row_of_photo]
            if not ground or not targets:
                skipped += 1
                continue
            if not set(targets) <= set(ground):
                ground = (targets + [p for p in ground if p not in targets])[:max(max_ground, len(targets))]
            position = {p: i for i, p in enumerate(ground)}
            prof = features.profile(users.get(r["user_id"]), r["business_id"], dim)
            built["ground"].append([row_of_photo[p] for p in ground])
            built["y"].append([position[p] for p in targets])
            built["img"].append(prof.photo)
            built["text"].append(prof.text)
            built["hist"].append(prof.has_history)
            built["users"].append(r["user_id"])
            built["businesses"].append(r["business_id"])
        data.skipped[split] = skipped
        data.splits[split] = Examples(_pad(built["ground"]), _pad(built["y"]),
                                      np.array(built["img"], np.float32).reshape(-1, dim),
                                      np.array(built["text"], np.float32).reshape(-1, dim),
                                      np.array(built["hist"], bool), built["users"], built["businesses"])
    return data


def _pad(lists: list[list[int]]) -> np.ndarray:
    width = max((len(x) for x in lists), default=0)
    out = np.full((len(lists), max(width, 1)), -1, np.int32)
    for i, x in enumerate(lists):
        out[i, :len(x)] = x
    return out


@dataclass
class ExampleBatch:
    """One batch of examples as the kernel takes them, whichever source built it: the ground sets' vectors
    [B, M, D] (zeros where padded), their mask [B, M], the targets' positions [B, K] (-1 = padding) and mask, and
    the two profiles [B, D]."""

    photos: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor
    y_mask: torch.Tensor
    profile_img: torch.Tensor
    profile_text: torch.Tensor

    def __len__(self) -> int:
        return len(self.photos)

    def profile(self, modality: str):
        from .kernel import profile_input

        return profile_input(self.profile_img, self.profile_text, modality)

    @classmethod
    def of(cls, photos: np.ndarray, mask: np.ndarray, y: np.ndarray, profile_img: np.ndarray,
           profile_text: np.ndarray, device="cpu") -> "ExampleBatch":
        import torch

        t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
        return cls(t(photos), t(mask, torch.bool), t(y, torch.long), t(y >= 0, torch.bool), t(profile_img),
                   t(profile_text))


def batch_tensors(data: SelectionData, ex: Examples, idx: np.ndarray, device="cpu") -> ExampleBatch:
    """The batch of examples ``idx`` of in-memory examples (ground sets as rows of data.photo_vecs)."""
    ground = ex.ground[idx]
    width = int((ground >= 0).sum(1).max())
    ground = ground[:, :width]
    mask = ground >= 0
    photos = data.photo_vecs[np.where(mask, ground, 0)] * mask[:, :, None]
    y = ex.y_pos[idx]
    y = y[:, :int((y >= 0).sum(1).max())]
    return ExampleBatch.of(photos, mask, y, ex.profile_img[idx], ex.profile_text[idx], device)


# -- streamed examples: built a batch of reviews at a time from the feature tables, moved as Arrow rows ------------
def examples_schema(dim: int) -> pa.Schema:
    """An example as a row: its ground set's vectors inline, so whoever trains on it needs no photo table."""
    return pa.schema([("user_id", pa.string()), ("business_id", pa.string()),
                      ("photo_ids", pa.list_(pa.string())),  # the ground set, in order
                      ("photos", pa.list_(pa.list_(pa.float32(), dim))),  # its vectors, in that order
                      ("targets", pa.list_(pa.int32())),  # positions of the user's photos in the ground set
                      ("profile_img", pa.list_(pa.float32(), dim)), ("profile_text", pa.list_(pa.float32(), dim)),
                      ("has_history", pa.bool_()),
                      ("reason", pa.string())])  # null: an example; else why the review gives none


def feature_examples(reviews: pa.Table, users: dict, businesses: dict, dim: int, max_ground: int,
                     vectors_of) -> pa.Table:
    """Reviews (user_id, business_id, pic_ids) -> their examples (``examples_schema``), in order, from the feature
    tables' rows of their users and businesses (``showcase_core.features.FeatureLookup``): the same examples
    ``build_selection_data`` makes from the raw tables. A review whose business has no embedded photo gets reason
    ``no_photos``, one none of whose photos is embedded ``no_embedded_photo``. ``vectors_of(ids)`` -> {id: vector}
    of those ids that are embedded: asked only for a review's photos the business row's capped ground set left out."""
    from .. import features

    rows = reviews.select(["user_id", "business_id", "pic_ids"]).to_pylist()
    capped_out = set()
    for r in rows:  # photos outside a business's stored ground set (it kept its newest photos only)
        business = businesses.get(r["business_id"])
        if business is not None and business["photos"] > len(business["image_ids"]):
            capped_out.update(p for p in r["pic_ids"] or [] if p not in business["image_ids"])
    extra = vectors_of(sorted(capped_out)) if capped_out else {}
    out = {name: [] for name in examples_schema(dim).names}
    stored_of: dict[str, dict] = {}  # per business: its stored ground set, {image id: vector}, newest first
    for r in rows:
        if r["business_id"] not in stored_of:
            business = businesses.get(r["business_id"])
            stored_of[r["business_id"]] = {} if business is None else dict(zip(business["image_ids"],
                                                                                 business["vectors"]))
        stored = stored_of[r["business_id"]]
        vector = lambda p: stored[p] if p in stored else extra[p]  # noqa: E731
        ground = list(stored)[:max_ground]
        targets = [p for p in dict.fromkeys(r["pic_ids"] or []) if p in stored or p in extra]
        reason = "no_photos" if not ground else "no_embedded_photo" if not targets else None
        if reason is None and not set(targets) <= set(ground):
            ground = (targets + [p for p in ground if p not in targets])[:max(max_ground, len(targets))]
        position = {p: i for i, p in enumerate(ground)}
        prof = features.profile(users.get(r["user_id"]), r["business_id"], dim, 0)
        out["user_id"].append(r["user_id"])
        out["business_id"].append(r["business_id"])
        out["photo_ids"].append(ground if reason is None else [])
        out["photos"].append(np.asarray([vector(p) for p in ground], np.float32).reshape(-1, dim) if reason is None
                             else np.zeros((0, dim), np.float32))
        out["targets"].append([position[p] for p in targets] if reason is None else [])
        out["profile_img"].append(prof.photo)
        out["profile_text"].append(prof.text)
        out["has_history"].append(prof.has_history)
        out["reason"].append(reason)
    return _examples_table(out, dim)


def examples_of_reviews(reviews: pa.Table, root: str, encoder_id: str, meta: dict, max_ground: int,
                        split: str) -> pa.Table:
    """Ray Data step: a batch of reviews (user_id, business_id, split, pic_ids) -> the examples of those of one split
    (``examples_schema`` less the reason; the reviews that give none left out), their users and businesses looked up
    by key in encoder ``encoder_id``'s feature tables (``meta``: showcase_core.features.read_meta's). Memory: the
    batch's examples."""
    import pyarrow.compute as pc

    from .. import features
    from ..encoders.embed import read_embeddings
    from ..store import Store

    reviews = reviews.filter(pc.equal(reviews.column("split"), split))
    store = Store.open(root)
    lookup = features.FeatureLookup(store, encoder_id, meta)

    def vectors_of(ids: list[str]) -> dict:
        return dict(zip(*embedding_matrix(read_embeddings(store, encoder_id, "images", ids=ids))))

    users = lookup.rows("users", pc.unique(reviews.column("user_id")).to_pylist())
    businesses = lookup.rows("businesses", pc.unique(reviews.column("business_id")).to_pylist())
    examples = feature_examples(reviews, users, businesses, lookup.dim, max_ground, vectors_of)
    return examples.filter(pc.is_null(examples.column("reason"))).drop_columns(["reason"])


def vector_lists(matrices: list[np.ndarray], dim: int) -> pa.ListArray:
    """Per row a float32 [n, dim] matrix (n may be 0) -> one list<fixed_size_list<float32, dim>> array."""
    counts = np.array([len(m) for m in matrices], np.int32)
    flat = np.concatenate([np.asarray(m, np.float32).reshape(-1) for m in matrices]) if matrices else \
        np.zeros(0, np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32()), vectors)


def padded_vectors(column, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A list<fixed_size_list<float32, dim>> column -> (float32 [rows, width, dim] zero-padded, bool mask [rows,
    width]); ``width``: the longest row's when None (at least 1), else each row's first ``width`` vectors."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = column.type.value_type.list_size
    counts = column.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    flat = column.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    if width is None:
        width = max(int(counts.max(initial=0)), 1)
    positions = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = np.repeat(np.arange(len(counts)), counts)
    kept = positions < width
    out = np.zeros((len(counts), width, dim), np.float32)
    mask = np.zeros((len(counts), width), bool)
    out[rows[kept], positions[kept]] = flat[kept]
    mask[rows[kept], positions[kept]] = True
    return out, mask


def _examples_table(columns: dict, dim: int) -> pa.Table:
    schema = examples_schema(dim)
    arrays = {"photos": vector_lists(columns.pop("photos"), dim)}
    for name in ("profile_img", "profile_text"):
        flat = np.asarray(columns.pop(name), np.float32).reshape(-1)
        arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    return pa.table({name: arrays[name] if name in arrays else pa.array(columns[name], schema.field(name).type)
                     for name in schema.names}, schema=schema)


def arrow_batch(batch: pa.Table, device="cpu") -> ExampleBatch:
    """Examples rows (``examples_schema``, every one usable) -> the kernel's batch."""
    padded, mask = padded_vectors(batch.column("photos"))
    dim = padded.shape[2]
    targets = batch.column("targets").combine_chunks()
    lengths = targets.value_lengths().to_numpy(zero_copy_only=False)
    y = np.full((len(lengths), max(int(lengths.max(initial=0)), 1)), -1, np.int64)
    y[np.arange(y.shape[1])[None, :] < lengths[:, None]] = targets.flatten().to_numpy(zero_copy_only=False)

    def matrix(name: str) -> np.ndarray:  # a copy: Arrow's buffers are read-only, torch wants to own its tensors
        return np.array(batch.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim))

    return ExampleBatch.of(padded, mask, y, matrix("profile_img"), matrix("profile_text"), device)


def load_selection_data(store, encoder_id: str, max_ground: int, splits=("train", "val", "test")) -> SelectionData:
    """``build_selection_data`` over ROOT's tables and an encoder's embeddings, read whole: the in-memory reference
    the tests hold the streamed builder (``examples_of_reviews``) to. No job reads it."""
    from ..encoders.embed import read_embeddings

    return build_selection_data(store.read_table("reviews"), store.read_table("images"),
                                read_embeddings(store, encoder_id, "images"), read_embeddings(store, encoder_id, "texts"),
                                splits=splits, max_ground=max_ground)

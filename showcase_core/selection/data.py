"""Training and evaluation examples for the DPP: one per (user, business) review.

- ground set: the business's ground set as showcase_core.features defines it (the newest ``max_ground`` photos),
  with the review's own photos put first when the cap left one of them out (the likelihood needs Y inside it);
- Y: the photos the user posted with that review;
- profile: showcase_core.features.profile of the pair: the mean CLIP image and text features of the user's entries
  of every *other* business, so the profile never contains the answer (the nightly and Serve read the same numbers
  from the feature tables). Users with no other entry have ``has_history`` False and zero profiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa


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


def batch_tensors(data: SelectionData, ex: Examples, idx: np.ndarray, modality: str, device="cpu"):
    """Tensors for one batch: (profile [B, P], photos [B, M, D], mask [B, M], y_index [B, K], y_mask [B, K])."""
    import torch

    from .kernel import profile_input

    ground = ex.ground[idx]
    width = int((ground >= 0).sum(1).max())
    ground = ground[:, :width]
    mask = ground >= 0
    photos = data.photo_vecs[np.where(mask, ground, 0)] * mask[:, :, None]
    y = ex.y_pos[idx]
    y = y[:, :int((y >= 0).sum(1).max())]
    t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    profile = profile_input(t(ex.profile_img[idx]), t(ex.profile_text[idx]), modality)
    return profile, t(photos), t(mask, torch.bool), t(y, torch.long), t(y >= 0, torch.bool)


def load_selection_data(store, encoder_id: str, max_ground: int, splits=("train", "val", "test")) -> SelectionData:
    """``build_selection_data`` over ROOT's tables and an encoder's embeddings (what train_dpp and evaluate read)."""
    from ..encoders.embed import read_embeddings

    return build_selection_data(store.read_table("reviews"), store.read_table("images"),
                                read_embeddings(store, encoder_id, "images"), read_embeddings(store, encoder_id, "texts"),
                                splits=splits, max_ground=max_ground)

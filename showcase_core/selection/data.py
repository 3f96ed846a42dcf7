"""Training and evaluation examples for the DPP: one per (user, business) review.

- ground set: every photo of the business that has an embedding (capped at ``max_ground`` for training by keeping the
  targets and a seeded sample of the rest);
- Y: the photos the user posted with that review;
- profile: the mean CLIP image feature of the user's photos in their *other* reviews and the mean CLIP text feature of
  their other reviews (the reviews table plus Gest-s2 history items), always excluding the target business, so the
  profile never contains the answer. Users with no other review have ``has_history`` False and zero profiles.
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


def history_text_keys(review: dict, other_reviews: list[dict]) -> list[str]:
    """Text-embedding ids of a user's history for one review: their reviews of other businesses plus the Gest-s2
    history items of the review that are not about its business; sorted, so the same inputs give the same order."""
    keys = {f"review:{o['review_id']}" for o in other_reviews if o["business_id"] != review["business_id"]}
    suffix = f"_{review['business_id']}"
    keys |= {f"review:{h['review_id']}" for h in review.get("history") or [] if not h["review_id"].endswith(suffix)}
    return sorted(keys)


def _mean(vectors: list[np.ndarray], dim: int) -> np.ndarray:
    return np.mean(vectors, axis=0).astype(np.float32) if vectors else np.zeros(dim, np.float32)


def build_selection_data(reviews: pa.Table, images: pa.Table, image_emb: pa.Table, text_emb: pa.Table,
                         splits=("train", "val", "test"), max_ground: int = 128, seed: int = 0) -> SelectionData:
    photo_ids, photo_vecs = embedding_matrix(image_emb)
    row_of_photo = {p: i for i, p in enumerate(photo_ids)}
    text_ids, text_vecs = embedding_matrix(text_emb)
    row_of_text = {t: i for i, t in enumerate(text_ids)}
    dim = photo_vecs.shape[1]

    business_photos: dict[str, list[str]] = {}
    for image_id, business in zip(images.column("image_id").to_pylist(), images.column("business_id").to_pylist()):
        if image_id in row_of_photo:
            photos = business_photos.setdefault(business, [])
            if image_id not in photos:
                photos.append(image_id)

    rows = reviews.select(["review_id", "user_id", "business_id", "split", "pic_ids", "history"]).to_pylist()
    by_user: dict[str, list[dict]] = {}
    for r in rows:
        by_user.setdefault(r["user_id"], []).append(r)

    data = SelectionData(photo_ids, photo_vecs)
    rng = np.random.default_rng(seed)
    for split in splits:
        built = {"ground": [], "y": [], "img": [], "text": [], "hist": [], "users": [], "businesses": []}
        skipped = 0
        for r in rows:
            if r["split"] != split:
                continue
            ground = business_photos.get(r["business_id"], [])
            targets = [p for p in dict.fromkeys(r["pic_ids"]) if p in row_of_photo]
            if not ground or not targets:
                skipped += 1
                continue
            if len(ground) > max_ground:
                others = [p for p in ground if p not in targets]
                keep = rng.choice(len(others), size=max_ground - len(targets), replace=False)
                ground = targets + [others[i] for i in sorted(keep)]
            position = {p: i for i, p in enumerate(ground)}
            other = [o for o in by_user[r["user_id"]] if o["business_id"] != r["business_id"]]
            img = [photo_vecs[row_of_photo[p]] for o in other for p in o["pic_ids"] if p in row_of_photo]
            txt = [text_vecs[row_of_text[k]] for k in history_text_keys(r, other) if k in row_of_text]
            built["ground"].append([row_of_photo[p] for p in ground])
            built["y"].append([position[p] for p in targets])
            built["img"].append(_mean(img, dim))
            built["text"].append(_mean(txt, dim))
            built["hist"].append(bool(img or txt))
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

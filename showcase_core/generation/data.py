"""PC²L examples: one per review that has an explanation (Gest-s2 style); a review kept without its text is none.

- target: the review's sentences that describe at least one of its photos (the ``sentences`` table: the world's
  sidecar; or ``distilled``: Φ's picks on real data), in review order, joined by spaces;
- photos: the user's ground-truth photos for training (the described ones first, then the review's others), at most
  ``max_photos``, as CLIP image features; at inference the DPP's picks take their place;
- history: the generator's history of showcase_core.features.profile: CLIP text features of the user's reviews of
  other businesses (never the target business), the newest first, at most ``max_history`` (the nightly and Serve
  read the same vectors from the feature tables).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .. import features
from ..selection.data import embedding_matrix


@dataclass
class GenerationExamples:
    review_ids: list[str]
    user_ids: list[str]
    business_ids: list[str]
    photo_ids: list[list[str]]
    photos: np.ndarray  # float32 [N, P, C]
    photo_mask: np.ndarray  # bool [N, P]
    history: np.ndarray  # float32 [N, H, C]
    history_mask: np.ndarray  # bool [N, H]
    targets: list[str]

    def __len__(self) -> int:
        return len(self.review_ids)

    def take(self, idx) -> "GenerationExamples":
        idx = list(idx)
        return GenerationExamples([self.review_ids[i] for i in idx], [self.user_ids[i] for i in idx],
                                  [self.business_ids[i] for i in idx], [self.photo_ids[i] for i in idx],
                                  self.photos[idx], self.photo_mask[idx], self.history[idx], self.history_mask[idx],
                                  [self.targets[i] for i in idx])


def pack(vector_lists: list[list[np.ndarray]], width: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Lists of feature vectors -> (padded [N, width, dim] float32, mask [N, width])."""
    out = np.zeros((len(vector_lists), width, dim), np.float32)
    mask = np.zeros((len(vector_lists), width), bool)
    for i, vectors in enumerate(vector_lists):
        vectors = vectors[:width]
        if vectors:
            out[i, :len(vectors)] = np.stack(vectors)
            mask[i, :len(vectors)] = True
    return out, mask


def build_generation_examples(reviews: pa.Table, sentences: pa.Table, image_emb: pa.Table, text_emb: pa.Table,
                              splits=("train", "val", "test"), max_photos: int = 5,
                              max_history: int = 10) -> tuple[dict[str, GenerationExamples], dict]:
    """Examples per split and, per split, how many reviews were skipped and why."""
    photo_ids, photo_vecs = embedding_matrix(image_emb)
    row_of_photo = {p: i for i, p in enumerate(photo_ids)}
    dim = photo_vecs.shape[1]
    users, _ = features.rows_from_tables(reviews, None, image_emb, text_emb, max_history=max_history)

    explained: dict[str, list[tuple[int, str, list[str]]]] = {}
    for rid, index, text, pics in zip(*(sentences.column(c).to_pylist()
                                        for c in ("review_id", "sentence_index", "text", "pic_ids"))):
        if pics:
            explained.setdefault(rid, []).append((index, text, pics))
    rows = reviews.select(["review_id", "user_id", "business_id", "split", "pic_ids", "review_text"]).to_pylist()

    out, skipped = {}, {}
    for split in splits:
        built = {k: [] for k in ("review_ids", "user_ids", "business_ids", "photo_ids", "photos", "history", "targets")}
        skipped[split] = {"no_text": 0, "no_explanation": 0, "no_embedded_photo": 0}
        for r in rows:
            if r["split"] != split:
                continue
            if r["review_text"] is None:  # kept for its photos (Gest-raw, Google Local): never a text target
                skipped[split]["no_text"] += 1
                continue
            parts = sorted(explained.get(r["review_id"], []))
            if not parts:
                skipped[split]["no_explanation"] += 1
                continue
            described = [p for _, _, pics in parts for p in pics]
            photos = [p for p in dict.fromkeys(described + list(r["pic_ids"] or [])) if p in row_of_photo][:max_photos]
            if not photos:
                skipped[split]["no_embedded_photo"] += 1
                continue
            history = features.profile(users.get(r["user_id"]), r["business_id"], dim, max_history).history
            for key, value in (("review_ids", r["review_id"]), ("user_ids", r["user_id"]),
                               ("business_ids", r["business_id"]), ("photo_ids", photos),
                               ("photos", [photo_vecs[row_of_photo[p]] for p in photos]),
                               ("history", list(history)),
                               ("targets", " ".join(t for _, t, _ in parts))):
                built[key].append(value)
        photo_arr, photo_mask = pack(built["photos"], max_photos, dim)
        hist_arr, hist_mask = pack(built["history"], max_history, dim)
        out[split] = GenerationExamples(built["review_ids"], built["user_ids"], built["business_ids"],
                                        built["photo_ids"], photo_arr, photo_mask, hist_arr, hist_mask,
                                        built["targets"])
    return out, skipped


def encode_targets(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, cut to max_length - 1 so the end token always fits."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [x[:max_length - 1] for x in ids]


def collate(examples: GenerationExamples, idx, target_ids: list[list[int]], tokenizer,
            swapped_ids: list[list[int] | None] | None = None) -> dict:
    """A training batch: [BOS] target [EOS] padded, labels -100 on padding (GPT-2 shifts them itself)."""
    import torch

    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id

    def sequences(lists):
        seqs = [[bos] + list(x) + [eos] for x in lists]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        return ids, mask

    idx = list(idx)
    input_ids, attention_mask = sequences([target_ids[i] for i in idx])
    batch = {"photos": torch.from_numpy(examples.photos[idx]), "photo_mask": torch.from_numpy(examples.photo_mask[idx]),
             "history": torch.from_numpy(examples.history[idx]),
             "history_mask": torch.from_numpy(examples.history_mask[idx]),
             "input_ids": input_ids, "attention_mask": attention_mask,
             "labels": input_ids.masked_fill(attention_mask == 0, -100)}
    if swapped_ids is not None:
        has = [swapped_ids[i] is not None for i in idx]
        batch["swapped_ids"], batch["swapped_mask"] = sequences([swapped_ids[i] or [] for i in idx])
        batch["has_swap"] = torch.tensor(has)
    return batch


def load_generation_examples(store, encoder_id: str, targets: str, splits, max_photos: int, max_history: int):
    """``build_generation_examples`` over ROOT's tables and an encoder's embeddings (train_pc2l and evaluate)."""
    from ..encoders.embed import read_embeddings

    return build_generation_examples(store.read_table("reviews"), store.read_table(targets),
                                     read_embeddings(store, encoder_id, "images"),
                                     read_embeddings(store, encoder_id, "texts"), splits, max_photos, max_history)

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
from ..selection.data import embedding_matrix, padded_vectors, vector_lists


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


REVIEW_COLUMNS = ["review_id", "user_id", "business_id", "split", "pic_ids"]


def text_flags(reviews: pa.Table | pa.RecordBatch) -> pa.Table:
    """The reviews' ``REVIEW_COLUMNS`` and ``has_text`` instead of their texts."""
    import pyarrow.compute as pc

    return pa.table({**{c: reviews.column(c) for c in REVIEW_COLUMNS},
                     "has_text": pc.is_valid(reviews.column("review_text"))})


def example_reviews(reviews: pa.Table, sentences: pa.Table, embedded, splits=("train", "val", "test"),
                    max_photos: int = 5) -> tuple[dict[str, list[dict]], dict]:
    """Which reviews are examples, per split in the reviews' order, and per split how many were skipped and why. An
    example is {"review_id", "user_id", "business_id", "photo_ids", "target"}; ``reviews``: ``REVIEW_COLUMNS`` and
    ``has_text`` (``text_flags``), ``embedded``: the embedded photos' ids (anything ``in`` answers). No vectors:
    ``build_generation_examples`` adds them; train_pc2l's driver needs only this (the tokenizer, the token ids and the
    swapped negatives come from the targets)."""
    explained: dict[str, list[tuple[int, str, list[str]]]] = {}
    for rid, index, text, pics in zip(*(sentences.column(c).to_pylist()
                                        for c in ("review_id", "sentence_index", "text", "pic_ids"))):
        if pics:
            explained.setdefault(rid, []).append((index, text, pics))
    rows = reviews.select([*REVIEW_COLUMNS, "has_text"]).to_pylist()

    chosen, skipped = {}, {}
    for split in splits:
        chosen[split] = []
        skipped[split] = {"no_text": 0, "no_explanation": 0, "no_embedded_photo": 0}
        for r in rows:
            if r["split"] != split:
                continue
            if not r["has_text"]:  # kept for its photos (Gest-raw, Google Local): never a text target
                skipped[split]["no_text"] += 1
                continue
            parts = sorted(explained.get(r["review_id"], []))
            if not parts:
                skipped[split]["no_explanation"] += 1
                continue
            described = [p for _, _, pics in parts for p in pics]
            photos = [p for p in dict.fromkeys(described + list(r["pic_ids"] or [])) if p in embedded][:max_photos]
            if not photos:
                skipped[split]["no_embedded_photo"] += 1
                continue
            chosen[split].append({"review_id": r["review_id"], "user_id": r["user_id"],
                                  "business_id": r["business_id"], "photo_ids": photos,
                                  "target": " ".join(t for _, t, _ in parts)})
    return chosen, skipped


def build_generation_examples(reviews: pa.Table, sentences: pa.Table, image_emb: pa.Table, text_emb: pa.Table,
                              splits=("train", "val", "test"), max_photos: int = 5,
                              max_history: int = 10) -> tuple[dict[str, GenerationExamples], dict]:
    """Examples per split (``example_reviews`` with their photos' and history's vectors) and, per split, how many
    reviews were skipped and why."""
    photo_ids, photo_vecs = embedding_matrix(image_emb)
    row_of_photo = {p: i for i, p in enumerate(photo_ids)}
    dim = photo_vecs.shape[1]
    users, _ = features.rows_from_tables(reviews, None, image_emb, text_emb, max_history=max_history)
    chosen, skipped = example_reviews(text_flags(reviews), sentences, row_of_photo, splits, max_photos)
    out = {}
    for split, examples in chosen.items():
        photo_arr, photo_mask = pack([[photo_vecs[row_of_photo[p]] for p in e["photo_ids"]] for e in examples],
                                     max_photos, dim)
        hist_arr, hist_mask = pack([list(features.profile(users.get(e["user_id"]), e["business_id"], dim,
                                                          max_history).history) for e in examples], max_history, dim)
        out[split] = GenerationExamples([e["review_id"] for e in examples], [e["user_id"] for e in examples],
                                        [e["business_id"] for e in examples], [e["photo_ids"] for e in examples],
                                        photo_arr, photo_mask, hist_arr, hist_mask, [e["target"] for e in examples])
    return out, skipped


def encode_targets(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, cut to max_length - 1 so the end token always fits. ``tokenizer``: transformers' fast
    tokenizer or the ``tokenizers`` library's own (what it wraps; a Ray task needs no transformers import)."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    return [e.ids[:max_length - 1] for e in backend.encode_batch(list(texts), add_special_tokens=False)]


def encoded_rows(rows: pa.Table, tokenizer_json: str, max_length: int, vocabulary: list[str] | None = None,
                 seed: int = 0) -> pa.Table:
    """Ray Data step: chosen examples (``chosen_table``'s columns; with ``spans`` when ``vocabulary`` is given) ->
    the same with ``target_ids`` and, given the training ``vocabulary``, ``swapped_ids``: the tokens of each target's
    entity-swapped negative (``entities.negatives_of``; null without one). ``spans`` are dropped. Memory: the block."""
    from tokenizers import Tokenizer

    from .entities import negatives_of

    tokenizer = Tokenizer.from_str(tokenizer_json)
    ids = encode_targets(tokenizer, rows.column("target").to_pylist(), max_length)
    rows = rows.set_column(rows.schema.get_field_index("target_ids"), "target_ids", pa.array(ids, pa.list_(pa.int32())))
    if vocabulary is None:
        return rows
    negatives = negatives_of(rows, vocabulary, seed)
    encoded = iter(encode_targets(tokenizer, [n for n in negatives if n], max_length))
    swapped = [next(encoded) if n else None for n in negatives]
    rows = rows.set_column(rows.schema.get_field_index("swapped_ids"), "swapped_ids",
                           pa.array(swapped, pa.list_(pa.int32())))
    return rows.drop_columns(["spans"])


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


def generation_rows_schema(dim: int) -> pa.Schema:
    """An example as a row, its vectors inline (whoever trains on it needs no other table): the chosen example
    (``example_reviews``), its target's token ids and those of its entity-swapped negative (null: none), its photos'
    and its history's CLIP vectors."""
    vectors = pa.list_(pa.list_(pa.float32(), dim))
    return pa.schema([("review_id", pa.string()), ("user_id", pa.string()), ("business_id", pa.string()),
                      ("photo_ids", pa.list_(pa.string())), ("target", pa.string()),
                      ("target_ids", pa.list_(pa.int32())), ("swapped_ids", pa.list_(pa.int32())),
                      ("photos", vectors), ("history", vectors)])


def generation_rows(chosen: pa.Table, users: dict, dim: int, max_history: int, vectors_of) -> pa.Table:
    """Chosen examples (``generation_rows_schema``'s first seven columns) -> their rows with the vectors: the photos'
    from ``vectors_of(ids)`` -> {id: vector}, the history from the users' feature-table rows
    (``showcase_core.features.FeatureLookup``; the profile the nightly and Serve read), so the same as
    ``build_generation_examples`` gives. Memory: the batch's rows."""
    photo_ids = chosen.column("photo_ids").to_pylist()
    wanted = sorted({p for ids in photo_ids for p in ids})
    vectors = vectors_of(wanted) if wanted else {}
    missing = sorted(set(wanted) - set(vectors))
    if missing:
        raise ValueError(f"{len(missing)} photos chosen as examples are no longer embedded (e.g. {missing[0]}): the "
                         "embeddings changed since the examples were chosen")
    history = [features.profile(users.get(u), b, dim, max_history).history
               for u, b in zip(chosen.column("user_id").to_pylist(), chosen.column("business_id").to_pylist())]
    schema = generation_rows_schema(dim)
    columns = {name: chosen.column(name).cast(schema.field(name).type) for name in schema.names[:7]}
    columns["photos"] = vector_lists([np.asarray([vectors[p] for p in ids], np.float32).reshape(-1, dim)
                                      for ids in photo_ids], dim)
    columns["history"] = vector_lists(history, dim)
    return pa.table(columns, schema=schema)


def chosen_table(chosen: list[dict], target_ids: list | None = None, swapped_ids: list | None = None) -> pa.Table:
    """Chosen examples (``example_reviews``' dicts) -> ``generation_rows_schema``'s first seven columns, the token ids
    null where not given (what ``rows_of_chosen`` takes)."""
    none = [None] * len(chosen)
    return pa.table({"review_id": pa.array([e["review_id"] for e in chosen], pa.string()),
                     "user_id": pa.array([e["user_id"] for e in chosen], pa.string()),
                     "business_id": pa.array([e["business_id"] for e in chosen], pa.string()),
                     "photo_ids": pa.array([e["photo_ids"] for e in chosen], pa.list_(pa.string())),
                     "target": pa.array([e["target"] for e in chosen], pa.string()),
                     "target_ids": pa.array(none if target_ids is None else target_ids, pa.list_(pa.int32())),
                     "swapped_ids": pa.array(none if swapped_ids is None else swapped_ids, pa.list_(pa.int32()))})


def rows_of_chosen(chosen: pa.Table, root: str, encoder_id: str, meta: dict, max_history: int) -> pa.Table:
    """Ray Data step: a block of chosen examples (``chosen_table``) -> their rows with the vectors
    (``generation_rows``), the photos' read by id from encoder ``encoder_id``'s embeddings, the users' history looked
    up by key in its feature tables (``meta``: showcase_core.features.read_meta's). Memory: the block's rows."""
    import pyarrow.compute as pc

    from ..encoders.embed import read_embeddings
    from ..selection.data import embedding_matrix
    from ..store import Store

    store = Store.open(root)
    lookup = features.FeatureLookup(store, encoder_id, meta)

    def vectors_of(ids: list[str]) -> dict:
        return dict(zip(*embedding_matrix(read_embeddings(store, encoder_id, "images", ids=ids))))

    users = lookup.rows("users", pc.unique(chosen.column("user_id")).to_pylist())
    return generation_rows(chosen, users, lookup.dim, max_history, vectors_of)


def examples_of_rows(rows: pa.Table, max_photos: int, max_history: int) -> tuple[GenerationExamples, list, list]:
    """Rows (``generation_rows_schema``) -> (the examples, their target token ids, their swapped negatives' ids)."""
    photos, photo_mask = padded_vectors(rows.column("photos"), max_photos)
    history, history_mask = padded_vectors(rows.column("history"), max_history)
    columns = {name: rows.column(name).to_pylist() for name in ("review_id", "user_id", "business_id", "photo_ids",
                                                                "target", "target_ids", "swapped_ids")}
    examples = GenerationExamples(columns["review_id"], columns["user_id"], columns["business_id"],
                                  columns["photo_ids"], photos, photo_mask, history, history_mask, columns["target"])
    return examples, columns["target_ids"], columns["swapped_ids"]


def sample_of_split(store, split: str, n: int) -> tuple[pa.Array | None, int]:
    """(``showcase_core.buckets.sample_of_ids``' ``n`` review ids of the split, or None when the split has at most
    ``n`` reviews; the split's reviews). The reviews' ids stream by a batch at a time."""
    import pyarrow.compute as pc

    from ..buckets import sample_of_ids

    ids = (batch.column("review_id").filter(pc.equal(batch.column("split"), split))
           for batch in store.iter_table_batches("reviews", ["review_id", "split"]))
    sample, reviews = sample_of_ids(ids, n)
    return (sample if reviews > n else None), reviews


def choose_generation_examples(store, encoder_id: str, targets: str, splits, max_photos: int,
                               review_ids: pa.Array | None = None, bucket: int = 0, buckets: int = 1):
    """(``example_reviews``'s chosen examples per split, in the order ``load_generation_examples`` builds them, the
    skipped counts, the embedding size) with no vector but one: the photo embeddings' ids stream by a batch at a time
    and only the examples' candidate photos are kept (memory: the ids and photo ids of the ``splits``' reviews and the
    texts of their targets, one batch of ids; the reviews and the targets stream by a batch at a time). With
    ``review_ids``, of those reviews only (``sample_of_split``'s: memory then bounded by the sample); with ``buckets``,
    of the reviews whose id hashes to ``bucket`` (``showcase_core.buckets.in_bucket``: a pass of train_pc2l's driver,
    memory one bucket's). The embedding size is 0 when no candidate photo is embedded (then there is no example)."""
    import pyarrow.compute as pc

    from ..buckets import in_bucket
    from ..encoders.embed import embedded_among, embeddings_dir, read_embeddings
    from ..store import StoreError
    from ..tables import exists

    if not exists(store, embeddings_dir(encoder_id, "images")):
        raise StoreError(f"no images embeddings for encoder {encoder_id} under {store.root} (run `showcase embed`)")
    key, values = ("split", pa.array(list(splits), pa.string())) if review_ids is None else ("review_id", review_ids)

    def kept(name: str, columns: list[str], shape=lambda rows: rows) -> pa.Table:
        """The asked rows of table ``name`` in the bucket, ``shape``d, streamed a batch at a time."""
        parts = []
        for batch in store.iter_table_batches(name, columns):
            rows = pa.Table.from_batches([batch])
            parts.append(in_bucket(shape(rows).filter(pc.is_in(rows.column(key), value_set=values)), bucket, buckets,
                                   "review_id"))
        return pa.concat_tables(parts) if parts else shape(store.read_table(name, columns))  # (empty)

    reviews = kept("reviews", [*REVIEW_COLUMNS, "review_text"], text_flags)  # a batch's texts at most
    sentences = kept(targets, ["review_id", "sentence_index", "text", "pic_ids", "split"])  # split: the review's
    explained = reviews.filter(pc.is_in(reviews.column("review_id"), value_set=pc.unique(sentences.column("review_id"))))
    candidates = pc.unique(pa.concat_arrays([pc.list_flatten(table.column("pic_ids")).combine_chunks()
                                             for table in (sentences, explained)]).drop_null())
    embedded: set[str] = set()
    for found in embedded_among(store, encoder_id, "images", candidates):
        embedded.update(found.to_pylist())
    chosen, skipped = example_reviews(reviews, sentences, embedded, splits, max_photos)
    one = next((e["photo_ids"][0] for examples in chosen.values() for e in examples), None)
    dim = read_embeddings(store, encoder_id, "images", ids=[one]).schema.field("embedding").type.list_size if one else 0
    return chosen, skipped, dim


def load_generation_targets(store, encoder_id: str, targets: str, splits, max_photos: int) -> tuple[dict, dict, int]:
    """``choose_generation_examples`` with each example's target only: ({split: [text]}, skipped, embedding size)."""
    chosen, skipped, dim = choose_generation_examples(store, encoder_id, targets, splits, max_photos)
    return {split: [e["target"] for e in examples] for split, examples in chosen.items()}, skipped, dim


def load_generation_examples(store, encoder_id: str, targets: str, splits, max_photos: int, max_history: int):
    """``build_generation_examples`` over ROOT's tables and an encoder's embeddings, read whole: the in-memory
    reference the tests hold the streamed builders (``rows_of_chosen``) to, and the perf scripts' small exports. No
    job reads it."""
    from ..encoders.embed import read_embeddings

    return build_generation_examples(store.read_table("reviews"), store.read_table(targets),
                                     read_embeddings(store, encoder_id, "images"),
                                     read_embeddings(store, encoder_id, "texts"), splits, max_photos, max_history)

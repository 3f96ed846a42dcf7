"""Contrastive (CLIP) training on (photo, sentence) pairs, and held-out retrieval recall.

Pairs come from the ``sentences`` table (a sentence and each photo it describes) joined to ``images``. The loss is
open_clip's symmetric InfoNCE (``open_clip.loss.ClipLoss``) over the batch; with several ranks, over the global batch
(every rank's features gathered with their gradients, ``clip_loss``). The pretrained towers (``towers.py``) train
through the same ``train_epoch``: their frozen features stand in for the photos and tokens, and only their
projections learn.

Held-out image->text Recall@1 (``retrieval_recall``) ranks every held-out sentence for every held-out photo:
- ``exact``: a hit when the top sentence is one labelled as describing that photo; random = mean share of such
  sentences among all candidates (about 1/N);
- ``entity``: a hit when the top sentence names an entity that the photo's own sentences name (sentences about the
  same dish are interchangeable in the synthetic world, where sentences differ only in style); its random baseline
  is measured the same way. Only computed when the sentences carry entities.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..distributed import common_length, rank_and_world
from ..torch_compat import ensure_torchvision

ensure_torchvision()

import open_clip  # noqa: E402
import torch  # noqa: E402


def clip_pairs(sentences: pa.Table, images: pa.Table, splits: tuple[str, ...]) -> pa.Table:
    """(image_id, uri, sentence_id, text, entities) for every photo a sentence of the given splits describes."""
    return _with_uris(_sentence_pairs(sentences, splits), images)


def sharded_clip_pairs(store, splits: tuple[str, ...], rank: int = 0, world: int = 1,
                       batch_size: int = 65536, image_ids: pa.Array | None = None) -> pa.Table:
    """``clip_pairs`` of the store's tables for one rank of ``world``: the sentences table streams by a batch at a
    time, the k-th of its pairs in the table's order is rank k % world's, and only the images rows of those pairs'
    photos are read (``Store.read_rows_where``). With ``image_ids``, the pairs of those photos only. Memory: the rank's
    pairs and one batch of ``batch_size`` sentences (world 1: every pair of the splits or of ``image_ids``). Every
    rank reads the sentences table."""
    columns = ["sentence_id", "text", "pic_ids", "entities", "split"]
    kept, seen = [], 0
    for batch in store.iter_table_batches("sentences", columns, batch_size):
        pairs = _sentence_pairs(pa.Table.from_batches([batch]), splits)
        if image_ids is not None:
            pairs = pairs.filter(pc.is_in(pairs.column("image_id"), value_set=image_ids))
        kept.append(pairs.filter(pa.array(np.arange(seen, seen + pairs.num_rows) % world == rank)))
        seen += pairs.num_rows
    pairs = pa.concat_tables(kept) if kept else _sentence_pairs(store.read_table("sentences", columns), splits)
    images = store.read_rows_where("images", ["image_id", "uri"], "image_id", pc.unique(pairs.column("image_id")))
    return _with_uris(pairs, images)


HELD_OUT = ("val", "test")  # the splits of train_clip's held-out Recall@1


def held_out_pairs(store, photos: int) -> pa.Table:
    """The held-out pairs (``HELD_OUT``'s ``clip_pairs``) of at most ``photos`` of the photos their sentences describe:
    those of smallest hash of photo id (``showcase_core.buckets.sample_of_ids``, the same in every run), or of every
    photo with 0. Memory: the sample's pairs and one batch; the sentences stream twice."""
    from ..buckets import sample_of_ids

    if not photos:
        return sharded_clip_pairs(store, HELD_OUT)
    held = pa.array(HELD_OUT, pa.string())
    ids = (pc.list_flatten(batch.column("pic_ids").filter(pc.is_in(batch.column("split"), value_set=held))).drop_null()
           for batch in store.iter_table_batches("sentences", ["pic_ids", "split"]))
    return sharded_clip_pairs(store, HELD_OUT, image_ids=sample_of_ids(ids, photos)[0])


def _sentence_pairs(sentences: pa.Table, splits: tuple[str, ...]) -> pa.Table:
    """(image_id, sentence_id, text, entities): a row per photo a sentence of the given splits describes."""
    s = sentences.filter(pc.is_in(sentences.column("split"), value_set=pa.array(list(splits), pa.string())))
    pics = s.column("pic_ids").combine_chunks()
    parents = pc.list_parent_indices(pics)
    return pa.table({
        "image_id": pc.list_flatten(pics),
        "sentence_id": pc.take(s.column("sentence_id"), parents),
        "text": pc.take(s.column("text"), parents),
        "entities": pc.take(s.column("entities"), parents),
    })


def _with_uris(pairs: pa.Table, images: pa.Table) -> pa.Table:
    """Pairs with the first uri of each photo in ``images``; pairs whose photo is not there are left out. Sorted by
    sentence, then photo."""
    first = pc.index_in(pairs.column("image_id"), value_set=images.column("image_id"))
    pairs = pairs.append_column("uri", pc.take(images.column("uri"), first)).filter(pc.is_valid(first))
    return pairs.sort_by([("sentence_id", "ascending"), ("image_id", "ascending")])


PHOTO_CHUNK = 256  # photos read and decoded at once by ``scan_photos``


def scan_photos(uris: list[str], size: int, keep=None, chunk: int = PHOTO_CHUNK) -> tuple[list[int], list[str], list]:
    """Read and decode ``uris`` ``chunk`` at a time, holding one chunk's pixels: (the indices of the readable ones,
    "uri: detail" of the others, ``keep(pixels)`` of each chunk's readable photos when ``keep`` is given: their
    features, say)."""
    from .photos import read_photos

    readable, errors, kept = [], [], []
    for start in range(0, len(uris), chunk):
        pixels, ok, failed = read_photos(uris[start:start + chunk], size)
        readable += [start + i for i in ok]
        errors += failed
        if keep is not None and ok:
            kept.append(keep(pixels))
    return readable, errors, kept


class DecodedPerBatch:
    """Pair i's photo is ``uris[rows[i]]``, read and decoded when a batch asks for it: what ``train_epoch`` batches for
    a CLIP's photos, so a worker holds one batch of photos however many pairs it trains on (150 KB a photo at 224 px)
    at the cost of decoding each photo again every epoch."""

    def __init__(self, uris: list[str], rows: np.ndarray, size: int):
        self.uris, self.rows, self.size = uris, rows, size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        from .photos import read_photos

        pixels, ok, errors = read_photos([self.uris[r] for r in self.rows[idx]], self.size)
        if len(ok) < len(idx):  # each was read before training: the photo changed or storage failed since
            raise RuntimeError(f"a training photo can no longer be read: {errors[0]}")
        return pixels


class KeptPerPhoto:
    """Pair i's photo input is ``values[rows[i]]``: the pretrained towers' features, kept once a photo, not once a
    pair."""

    def __init__(self, values: torch.Tensor, rows: np.ndarray):
        self.values, self.rows = values, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: np.ndarray) -> torch.Tensor:
        return self.values[torch.from_numpy(self.rows[idx])]


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def clip_loss(across_ranks: bool = True) -> open_clip.loss.ClipLoss:
    """ClipLoss over the global batch: every rank gathers all ranks' features with gradients and computes the same
    loss, so the data-parallel average of the ranks' gradients is the global batch's gradient (see
    showcase_core.distributed). With one process, or ``across_ranks=False``, the plain in-batch loss."""
    rank, world = rank_and_world() if across_ranks else (0, 1)
    return open_clip.loss.ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world)


def train_epoch(model: torch.nn.Module, step, pixels, tokens: torch.Tensor, batch_size: int, epoch: int,
                seed: int, global_step: int, total_steps: int, base_lr: float, warmup_steps: int,
                device: torch.device, loss_fn=None, image_batch=None) -> tuple[float, int]:
    """One pass over the (pixels[i], tokens[i]) pairs in a seeded shuffle; ``step(loss, lr)`` does backward + update
    at the schedule's lr. Every rank takes as many pairs as the rank with the fewest. Returns (mean loss, next
    global step). ``pixels[idx]`` gives a batch of photos as the encoder trains on them (uint8 photos for a CLIP,
    e.g. ``DecodedPerBatch``; the frozen towers' ``training_photos`` features, e.g. ``KeptPerPhoto``), ``tokens`` its
    ``training_texts``, ``image_batch(pixels[idx], device)`` the encoder's (default: a CLIP's normalisation)."""
    from .clip import pixels_to_tensor

    loss_fn = loss_fn or clip_loss()
    image_batch = image_batch or pixels_to_tensor
    order = np.random.default_rng([seed, epoch]).permutation(len(pixels))[:common_length(len(pixels), device)]
    model.train()
    losses = []
    for start in range(0, len(order) - 1, batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < 2:
            break
        images = image_batch(pixels[idx], device)
        image_features, text_features, logit_scale = model(images, tokens[torch.from_numpy(idx)].to(device))[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        step(loss, lr_at(global_step, total_steps, base_lr, warmup_steps))
        unwrapped = model.module if hasattr(model, "module") else model
        with torch.no_grad():  # CLIP keeps the temperature at most 100
            unwrapped.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        global_step += 1
    return (float(np.mean(losses)) if losses else float("nan")), global_step


RECALL_PHOTO_BLOCK = 1024  # held-out photos scored against every sentence at once


def retrieval_recall(image_emb: np.ndarray, image_ids: list[str], text_emb: np.ndarray, sentence_ids: list[str],
                     pairs: pa.Table, block: int = RECALL_PHOTO_BLOCK) -> dict:
    """Held-out image->text Recall@1 (see module docstring) over unique photos and unique sentences, ``block``
    photos at a time: memory ``block`` x sentences similarities, never a photos x sentences matrix; the entity
    baseline counts, per photo, the sentences naming one of its entities from each entity's sentence list."""
    photo_index = {p: i for i, p in enumerate(image_ids)}
    sentence_index = {s: j for j, s in enumerate(sentence_ids)}
    relevant: list[set[int]] = [set() for _ in image_ids]
    entities_of_photo: list[set] = [set() for _ in image_ids]
    entities_of_sentence: list[set] = [set() for _ in sentence_ids]
    for image_id, sentence_id, entities in zip(*(pairs.column(c).to_pylist() for c in
                                                 ("image_id", "sentence_id", "entities"))):
        i, j = photo_index[image_id], sentence_index[sentence_id]
        relevant[i].add(j)
        entities_of_photo[i].update(entities or [])
        entities_of_sentence[j].update(entities or [])
    naming: dict[str, list[int]] = {}  # entity -> the sentences that name it
    for j, entities in enumerate(entities_of_sentence):
        for entity in entities:
            naming.setdefault(entity, []).append(j)
    hits_exact = hits_entity = sharing = 0
    shared = np.zeros(len(sentence_ids), bool)
    for start in range(0, len(image_ids), block):
        top = np.argmax(image_emb[start:start + block] @ text_emb.T, axis=1)
        for i, t in zip(range(start, start + len(top)), top.tolist()):
            hits_exact += t in relevant[i]
            hits_entity += bool(entities_of_photo[i] & entities_of_sentence[t])
            named = [j for entity in entities_of_photo[i] for j in naming.get(entity, ())]
            shared[named] = True  # the sentences sharing an entity with photo i
            sharing += int(shared.sum())
            shared[named] = False
    photos, sentences = len(image_ids), len(sentence_ids)
    mean = lambda total: total / photos if photos else float("nan")  # noqa: E731  (no readable held-out photo)
    result = {"photos": photos, "sentences": sentences, "recall_at_1_exact": mean(hits_exact),
              "random_exact": mean(sum(len(r) for r in relevant) / max(sentences, 1))}
    if naming:
        result["recall_at_1_entity"] = mean(hits_entity)
        result["random_entity"] = mean(sharing / sentences)
    return result

"""Batch embedding steps (plain functions and classes; jobs.embed runs them on Ray Data).

Delta tables under ``ROOT/embeddings/<encoder_id>/``::

    images/       id, embedding (fixed-size list of float32, L2-normalised)
    texts/        id, embedding      (ids: review:<review_id>, sentence:<sentence_id>)
    quarantine/   id, uri, reason, detail   (photos that could not be embedded)
    _ENCODER.json how to load the encoder that made them

Each batch writes its data files under a name derived from the ids it holds, in one atomic write, and returns
their add records; the driver commits them (showcase_core.tables). A batch that is retried (a killed actor) writes
the same name again, and only files the driver received are committed, so nothing is lost or duplicated. A rerun
skips every id that already has a committed row (``new_rows``).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa

from .. import tables as delta
from ..buckets import buckets_for, distinct_counts, in_bucket
from ..store import Store, StoreError
from ..tables import write_file
from .photos import MAX_PHOTO_BYTES, MAX_PHOTO_PIXELS

EMBED_QUARANTINE = pa.schema([("id", pa.string()), ("uri", pa.string()), ("reason", pa.string()),
                              ("detail", pa.string())])
EMBED_REASONS = {
    "photo_missing": "no file at the photo's uri",
    "read_error": "the photo could not be read (I/O error)",
    "too_large": "the file is larger than --max-photo-bytes",
    "not_an_image": "no image format reads the bytes (a text file named .jpg; a signature followed by garbage)",
    "too_many_pixels": "width x height is over --max-photo-pixels (a decompression bomb), read from the header",
    "truncated": "the image file ends before its pixels do",
    "undecodable": "the image could not be decoded (corrupt data, an unsupported variant)",
}


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])


def embeddings_dir(encoder_id: str, kind: str) -> str:
    return f"embeddings/{encoder_id}/{kind}"


def part_name(ids) -> str:
    h = hashlib.sha1()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\0")
    return f"part-{h.hexdigest()[:20]}.parquet"


def write_part(store: Store, rel_dir: str, table: pa.Table, ids) -> dict:
    """One data file of the Delta table at ``rel_dir``, named by its ids; returns its add record."""
    return write_file(store, rel_dir, table, part_name(ids))


PLAN_BUCKET_ROWS = 1_000_000  # distinct rows a planning pass holds at once (jobs.embed's --plan-bucket-rows)


FILES_PER_ACTOR = 8  # todo files each actor gets at least, when the list is short
MIN_TODO_FILE_ROWS = 256  # a model batch at --batch-size's default: a tiny list stays one file, one actor


def todo_file_rows(todo: int, actors: int, most: int) -> int:
    """Rows per todo file for about ``todo`` rows on ``actors`` actors: at most ``most`` (jobs.embed's
    ``--todo-file-rows``), and fewer for a short list, so that each actor gets FILES_PER_ACTOR files (at least
    MIN_TODO_FILE_ROWS rows each). Ray Data hands a file to whichever actor is free, so the run ends about one
    file's time after the first actor runs out: 2,532 photos in files of 2,048 and 484 left one of two ViT-B-32
    actors idle for most of the run."""
    return min(most, max(MIN_TODO_FILE_ROWS, -(-max(0, todo) // (max(1, actors) * FILES_PER_ACTOR))))


class BucketOverflow(Exception):
    """A bucket of ids holds more distinct rows than a planning pass may: plan again with more buckets."""


def committed_id_tables(store: Store, encoder_id: str, kinds: tuple[str, ...]):
    """The committed ids of the encoder's tables of these kinds (one column ``id``), batch by batch."""
    for kind in kinds:
        rel = embeddings_dir(encoder_id, kind)
        if delta.exists(store, rel):
            for batch in delta.iter_batches(store, rel, columns=["id"]):
                yield pa.Table.from_batches([batch])


def embedded_among(store: Store, encoder_id: str, kind: str, ids: pa.Array):
    """The ids among ``ids`` the encoder has committed embeddings of, a batch of the table's ids at a time (memory:
    ``ids`` and one batch; no vector read)."""
    import pyarrow.compute as pc

    for table in committed_id_tables(store, encoder_id, (kind,)):
        column = table.column("id")
        yield column.filter(pc.is_in(column, value_set=ids))


def committed_rows(store: Store, encoder_id: str, kinds: tuple[str, ...]) -> int:
    """Rows committed in the encoder's tables of these kinds, from the Delta log (no data read)."""
    rels = [embeddings_dir(encoder_id, kind) for kind in kinds]
    return sum(delta.rows(store, rel) for rel in rels if delta.exists(store, rel))


def new_rows(candidates, committed, buckets: int = 1, bucket_rows: int = PLAN_BUCKET_ROWS):
    """The rows to do, as Arrow tables, one per bucket of ids: the candidate rows (Arrow tables with an ``id`` column
    first, from ``candidates()``, in order) whose id has no committed row (tables from ``committed()``), each id once
    (its first row). Each bucket reads both sources again and keeps only its ids, so memory is one bucket: at most
    ``bucket_rows`` committed ids and distinct candidate rows together (plus one source table), however many there
    are in all. Raises BucketOverflow when a bucket needs more: plan again with more buckets."""
    import polars as pl

    def frame(tables: list[pa.Table]) -> pl.DataFrame:
        return pl.from_arrow(pa.concat_tables(tables, promote_options="permissive"))

    def distinct(tables: list[pa.Table]) -> pl.DataFrame:
        return frame(tables).unique(subset="id", keep="first", maintain_order=True)

    for bucket in range(buckets):
        done = [in_bucket(t, bucket, buckets) for t in committed()]
        held = sum(len(t) for t in done)
        rows = []
        for table in candidates():
            rows.append(in_bucket(table, bucket, buckets))
            held += len(rows[-1])
            if held > bucket_rows:  # duplicates count until they are dropped: drop them, then judge
                rows = [distinct(rows).to_arrow(compat_level=pl.CompatLevel.oldest())]
                held = len(rows[0]) + sum(len(t) for t in done)
                if held > bucket_rows:
                    raise BucketOverflow(f"over {bucket_rows:,} ids in bucket {bucket} of {buckets}")
        if rows:
            done = frame(done) if done else pl.DataFrame(schema={"id": pl.String})
            new = distinct(rows).join(done.select("id"), on="id", how="anti", maintain_order="left")
            yield new.to_arrow(compat_level=pl.CompatLevel.oldest())


def duplicate_ids(store: Store, encoder_id: str, kind: str, bucket_rows: int = PLAN_BUCKET_ROWS) -> int:
    """Committed rows of one of the encoder's tables whose id another row has too (0 when each id is committed
    once): its rows less its distinct ids, counted bucket by bucket of ids as ``new_rows`` plans (memory about
    ``bucket_rows`` ids)."""
    rel = embeddings_dir(encoder_id, kind)
    if not delta.exists(store, rel):
        return 0
    rows = delta.rows(store, rel)
    ids = distinct_counts(lambda: committed_id_tables(store, encoder_id, (kind,)), ["id"],
                          buckets_for(rows, bucket_rows))["id"]
    return rows - ids


def read_embeddings(store: Store, encoder_id: str, kind: str, ids=None) -> pa.Table:
    """The committed embeddings of one kind (images or texts) of an encoder, as one table (id, embedding): all of
    them, or given ``ids`` (a list of strings) only theirs, filtered as the table streams by (memory: those rows and
    the batches read ahead)."""
    import pyarrow.compute as pc

    rel = embeddings_dir(encoder_id, kind)
    if not delta.exists(store, rel):
        raise StoreError(f"no {kind} embeddings for encoder {encoder_id} under {store.root} (run `showcase embed`)")
    if ids is None:
        table = delta.read(store, rel, columns=["id", "embedding"])
    else:
        wanted = pc.field("id").isin(pa.array(list(ids), pa.string()))
        table = delta.dataset(store, rel).to_table(columns=["id", "embedding"], filter=wanted)
    if not table.num_rows:
        return table
    # Delta has no fixed-size list type: restore the contract's fixed-size list<float32>
    return table.cast(embeddings_schema(pc.list_value_length(table["embedding"])[0].as_py()))  # (chunks may be empty)


def decode_photos(batch: dict, size: int, threads: int = 2, max_bytes: int = MAX_PHOTO_BYTES,
                  max_pixels: int = MAX_PHOTO_PIXELS) -> dict:
    """CPU step: {"id", "uri"} -> {"id", "uri", "pixels" uint8 [n, size, size, 3], "reason", "detail"}.

    Reading and decoding run on ``threads`` threads (PIL and pyarrow release the GIL; 0: one per CPU this process may
    use); with one, inline (a pool of one thread handed each photo across threads: 5% of the embed actor's samples).
    A photo that cannot be read or decoded, or is over the byte or pixel limit, keeps its row (zero pixels) with a
    reason, so it reaches quarantine.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .photos import read_photo

    n = len(batch["id"])
    pixels = np.zeros((n, size, size, 3), np.uint8)
    reasons = np.array([""] * n, dtype=object)
    details = np.array([""] * n, dtype=object)
    filesystems: dict = {}
    uris = [str(u) for u in batch["uri"]]
    threads = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    read = lambda u: read_photo(u, size, filesystems, max_bytes, max_pixels)  # noqa: E731
    with ThreadPoolExecutor(threads) as pool:  # no thread starts before the pool's first submit
        for i, (px, reason, detail) in enumerate(pool.map(read, uris) if threads > 1 else map(read, uris)):
            if px is None:
                reasons[i], details[i] = reason, detail
            else:
                pixels[i] = px
    return {"id": np.asarray(batch["id"], dtype=object), "uri": np.asarray(batch["uri"], dtype=object),
            "pixels": pixels, "reason": reasons, "detail": details}


class _Embedder:
    """Holds the encoder. Calls may run on several threads at once (jobs.embed's ``--calls-per-actor``): decoding
    and writing overlap, and ``_model_lock`` lets one batch at a time into the model, whose own threads
    use the actor's CPUs (or its GPU)."""

    def __init__(self, root: str, encoder_spec: dict, encoder_id: str, threads: int = 0):
        import threading

        import torch

        from .clip import load_encoder

        if threads:
            torch.set_num_threads(threads)
        self.store = Store.open(root)
        self.encoder = load_encoder(**encoder_spec)
        if self.encoder.encoder_id != encoder_id:
            raise RuntimeError(f"encoder loaded as {self.encoder.encoder_id}, expected {encoder_id}")
        self.encoder_id = encoder_id
        self.schema = None
        self._model_lock = threading.Lock()

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        with self._model_lock:
            return self.encoder.encode_pixels(pixels)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        with self._model_lock:
            return self.encoder.encode_texts(texts)

    def _write(self, kind: str, ids: list[str], vectors: np.ndarray) -> dict:
        """Write one embeddings data file; returns its add record with the table kind."""
        if self.schema is None:
            self.schema = embeddings_schema(vectors.shape[1])
        flat = pa.array(vectors.astype(np.float32, copy=False).reshape(-1), pa.float32())
        table = pa.table({"id": pa.array(ids, pa.string()),
                          "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}, schema=self.schema)
        return {"kind": kind, **write_part(self.store, embeddings_dir(self.encoder_id, kind), table, ids)}


def file_rows(files: list[dict]) -> dict:
    """One output row per data file written: its add record and the table it belongs to (what the driver commits)."""
    return delta.record_columns(files, kind=np.array([f["kind"] for f in files], dtype=object))


class ImageEmbedder(_Embedder):
    """Batch of decoded photos -> an embeddings data file (+ a quarantine file); one output row per file."""

    def __call__(self, batch: dict) -> dict:
        ids = [str(i) for i in batch["id"]]
        bad = np.array([bool(r) for r in batch["reason"]], bool)
        good_ids = [i for i, b in zip(ids, bad) if not b]
        files = []
        if good_ids:
            files.append(self._write("images", good_ids, self.encode_pixels(batch["pixels"][~bad])))
        if bad.any():
            rows = [{"id": i, "uri": str(u), "reason": str(r), "detail": str(d)}
                    for i, u, r, d, b in zip(ids, batch["uri"], batch["reason"], batch["detail"], bad) if b]
            files.append({"kind": "quarantine", **write_part(self.store, embeddings_dir(self.encoder_id, "quarantine"),
                                                             pa.Table.from_pylist(rows, schema=EMBED_QUARANTINE),
                                                             [r["id"] for r in rows])})
        return file_rows(files)


class TextEmbedder(_Embedder):
    """Batch of {"id", "text"} -> an embeddings data file; one output row for it."""

    def __call__(self, batch: dict) -> dict:
        ids = [str(i) for i in batch["id"]]
        return file_rows([self._write("texts", ids, self.encode_texts([str(t) for t in batch["text"]]))])

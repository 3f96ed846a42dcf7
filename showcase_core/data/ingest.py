"""Ingest in two passes that any scheduler can run in parallel (jobs.ingest runs them as Ray tasks).

1. ``stage_chunk``: stream one byte range of a JSON-lines file (or a whole Gest-s2 file), validate every
   record, look its photos up under the images root (``PhotoLookup``: a stat or HEAD per photo, a thousand records
   at a time), and write the accepted reviews and the quarantine rows of that chunk to a staging Parquet file.
   Memory: one write batch, whatever the size of the input or of the images root.
2. ``plan_duplicates`` and, for Gest-raw, ``plan_single_users``: from the staged (review_id, user_id, order) columns
   alone, find the duplicate reviews and the Gest-s1 single-review users, bucket by bucket of ids (one task a
   bucket: memory about PLAN_BUCKET_ROWS reviews' keys), into drop files that ``chunk_drops`` reads back per chunk.
3. ``finalize_chunk``: rewrite one staging file into data files of the reviews/images/quarantine Delta tables
   (committed together by the caller), with the
   seeded user-disjoint split for Gest-raw and Google Local (a hash of seed and user id: no global state).
"""

from __future__ import annotations

import hashlib
import itertools
import posixpath
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..buckets import in_bucket
from ..store import Store, filesystem_for, join_uri, open_binary, retrying
from ..tables import commit, write_file
from . import schema
from .gest import iter_jsonl, iter_s2, quarantine_row

WRITE_BATCH = 20_000
LOOKUP_RECORDS = 1_000  # records whose photos are looked up together (PhotoLookup)
NAME_MAX = 255  # bytes of a file name on ext4, XFS, APFS, NTFS: a longer <pic_id>.jpg names no file
ORDER = "_order"  # global record order: (chunk index << 40) + position within the chunk

STAGED = pa.schema(list(schema.REVIEWS) + [pa.field(ORDER, pa.int64())])


def plan_chunks(source_uri: str, fmt: str, chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of the source, one per parallel task. Gest-s2 is one JSON object: one chunk."""
    fs, path = filesystem_for(source_uri)
    size = fs.get_file_info(path).size
    if fmt == "s2" or size <= chunk_bytes:
        return [(0, size)]
    bounds = list(range(0, size, chunk_bytes)) + [size]
    return list(zip(bounds[:-1], bounds[1:]))


class PhotoLookup:
    """Which photos are under an images root (``<pic_id>.jpg``), asked a batch at a time: a stat per photo (a HEAD on
    S3, ``threads`` at a time), so a process holds one batch of ids, however many photos the root has. A listing
    would hold every photo id in one process (and a copy in each task that checks against it).

    ``pic in lookup`` asks for one photo; ``lookup.present(ids)`` for a batch. An id no file can be named after (its
    ``<pic_id>.jpg`` over NAME_MAX bytes, or holding a NUL) is not asked: it is absent (stat would fail on it)."""

    def __init__(self, images_uri: str, threads: int = 16):
        self.fs, self.root = filesystem_for(images_uri)
        self.threads = 1 if isinstance(self.fs, pafs.LocalFileSystem) else threads  # a local stat takes microseconds

    def present(self, pic_ids) -> set[str]:
        """The ids of ``pic_ids`` whose photo is a file under the root."""
        ids = [p for p in dict.fromkeys(pic_ids) if len(f"{p}.jpg".encode()) <= NAME_MAX and "\x00" not in p]
        paths = [posixpath.join(self.root, f"{p}.jpg") for p in ids]
        step = max(1, -(-len(paths) // self.threads))
        slices = [paths[i:i + step] for i in range(0, len(paths), step)]

        def infos_of(part: list[str]) -> list:
            return retrying(lambda: self.fs.get_file_info(part))

        if len(slices) > 1:
            with ThreadPoolExecutor(len(slices)) as pool:
                infos = [info for part in pool.map(infos_of, slices) for info in part]
        else:
            infos = infos_of(paths) if paths else []
        return {p for p, info in zip(ids, infos) if info.type == pafs.FileType.File}

    def __contains__(self, pic_id: str) -> bool:
        return bool(self.present([pic_id]))


def user_split(user_id: str, seed: int, fractions=(0.8, 0.1, 0.1)) -> str:
    """A seeded, user-disjoint split: a stable hash of (seed, user) picks the split."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{user_id}".encode(), digest_size=8).digest(), "big") / 2**64
    if h < fractions[0]:
        return "train"
    return "val" if h < fractions[0] + fractions[1] else "test"


class _Writer:
    """Buffered writer of one Parquet file (opened lazily; always produces a file, maybe empty)."""

    def __init__(self, store: Store, rel: str, arrow_schema: pa.Schema):
        self.store, self.rel, self.schema = store, rel, arrow_schema
        self.rows: list[dict] = []
        self.writer: pq.ParquetWriter | None = None
        self.count = 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.writer is None:
            path = self.store.path(self.rel)
            self.store.fs.create_dir(posixpath.dirname(path), recursive=True)
            self.writer = pq.ParquetWriter(path, self.schema, filesystem=self.store.fs, compression="zstd")
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.count += len(self.rows)
            self.rows = []

    def close(self) -> dict:
        self.flush()
        self.writer.close()
        return {"path": self.rel, "rows": self.count,
                "bytes": self.store.fs.get_file_info(self.store.path(self.rel)).size}


def stage_chunk(store: Store, staging: str, index: int, source_uri: str, fmt: str, start: int, end: int,
                images_uri: str) -> dict:
    """Parse + validate one chunk into ``staging/reviews-<index>.parquet`` and ``quarantine-<index>``. The photos of
    LOOKUP_RECORDS records at a time are looked up under ``images_uri`` (PhotoLookup)."""
    photos = PhotoLookup(images_uri)
    reviews = _Writer(store, f"{staging}/reviews-{index:05d}.parquet", STAGED)
    bad = _Writer(store, f"{staging}/quarantine-{index:05d}.parquet", schema.QUARANTINE)
    seen = 0
    with open_binary(source_uri) as stream:
        records = enumerate(iter_s2(stream, source_uri) if fmt == "s2"
                            else iter_jsonl(stream, source_uri, fmt, start, end))
        while batch := list(itertools.islice(records, LOOKUP_RECORDS)):
            present = photos.present(p for _, item in batch if item.bad is None for p in item.review["pic_ids"])
            for n, item in batch:
                seen += 1
                if item.bad is not None:
                    bad.add(item.bad)
                    continue
                review = item.review
                kept = [p for p in review["pic_ids"] if p in present]
                missing = [p for p in review["pic_ids"] if p not in present]
                if not kept:
                    bad.add(quarantine_row(source_uri, item.position, "all_photos_missing", "pics",
                                           f"none of {len(missing)} photo(s) is under {images_uri}: "
                                           + ", ".join(missing[:5]), _record_of(review)))
                    continue
                for p in missing:
                    bad.add(quarantine_row(source_uri, item.position, "photo_missing", "pics",
                                           f"photo {p} of review {review['review_id']} is not under {images_uri}",
                                           p))
                review["pic_ids"] = kept
                review[ORDER] = (index << 40) + n
                reviews.add(review)
    r, q = reviews.close(), bad.close()
    return {"index": index, "records": seen, "staged": r["rows"], "quarantined": q["rows"]}


def _record_of(review: dict) -> dict:
    return {k: review[k] for k in ("user_id", "business_id", "rating", "review_text", "pic_ids")}


DROPS = pa.schema([(ORDER, pa.int64()), ("reason", pa.string())])
KEYS = ["review_id", "user_id", ORDER]  # the staged columns the plan reads
PLAN_BUCKET_ROWS = 2_000_000  # staged reviews a planning task holds at once (jobs.ingest's --plan-bucket-rows)


def plan_drops(keys: pa.Table, fmt: str) -> pa.Table:
    """Global decisions from the staged key columns (review_id, user_id, _order) of every review: a table of drops
    (``duplicate_drops``, then for Gest-raw ``single_user_drops``). ``plan_duplicates`` and ``plan_single_users`` make
    the same decisions bucket by bucket of ids."""
    duplicates = duplicate_drops(keys)
    if fmt != "raw":
        return duplicates
    return pa.concat_tables([duplicates, single_user_drops(keys, [duplicates.column(ORDER)])]).combine_chunks()


def duplicate_drops(keys: pa.Table) -> pa.Table:
    """Duplicates: of the rows of one review id, the first in file order is kept; the others are dropped, as
    ``duplicate_review`` when of the same user (so of the same business: the id is ``<user_id>_<business_id>``), else
    as ``ambiguous_review_id`` (user "a_b" and business "c", user "a" and business "b_c"). ``keys`` holds every row of
    its review ids."""
    first = keys.group_by("review_id").aggregate([(ORDER, "min")]).column(f"{ORDER}_min")
    is_first = pc.is_in(keys.column(ORDER), value_set=first)
    kept = keys.filter(is_first).select(["review_id", "user_id"]).rename_columns(["review_id", "kept_user"])
    dropped = keys.filter(pc.invert(is_first)).join(kept, "review_id")
    reason = pc.if_else(pc.equal(dropped.column("user_id"), dropped.column("kept_user")), "duplicate_review",
                        "ambiguous_review_id")
    return pa.table({ORDER: dropped.column(ORDER), "reason": reason.cast(pa.string())}, schema=DROPS)


def single_user_drops(keys: pa.Table, duplicates) -> pa.Table:
    """Gest-raw -> Gest-s1: the reviews of users left with a single review once duplicates are dropped (the paper's
    rule). ``keys`` holds every row of its user ids; ``duplicates`` are arrays of the dropped duplicates' orders (any
    number of them: only those of ``keys`` are kept)."""
    dropped = [d.filter(pc.is_in(d, value_set=keys.column(ORDER))) for d in duplicates]
    dropped = pa.chunked_array(dropped, pa.int64()).combine_chunks() if dropped else pa.array([], pa.int64())
    kept = keys.filter(pc.invert(pc.is_in(keys.column(ORDER), value_set=dropped)))
    counts = kept.group_by("user_id").aggregate([("user_id", "count")])
    single = counts.filter(pc.less(counts.column("user_id_count"), 2)).column("user_id")
    singles = kept.filter(pc.is_in(kept.column("user_id"), value_set=single)).column(ORDER)
    return pa.table({ORDER: singles, "reason": pa.array(["single_review_user"] * len(singles), pa.string())},
                    schema=DROPS)


def staged_keys(store: Store, staging: str, chunks: int, column: str, bucket: int, buckets: int) -> pa.Table:
    """The staged key columns (KEYS) of the rows whose ``column`` falls in ``bucket`` of ``buckets``, read one
    chunk's file at a time: memory one bucket (about PLAN_BUCKET_ROWS rows) plus one chunk's keys."""
    parts = [in_bucket(pq.read_table(store.path(f"{staging}/reviews-{i:05d}.parquet"), filesystem=store.fs,
                                     columns=KEYS), bucket, buckets, column)
             for i in range(chunks)]
    return pa.concat_tables(parts).combine_chunks() if parts else STAGED.empty_table().select(KEYS)


def plan_duplicates(store: Store, staging: str, chunks: int, bucket: int, buckets: int) -> str:
    """Pass 1 of the plan, one bucket of review ids: their ``duplicate_drops``, written to the staging folder (the
    file's path)."""
    keys = staged_keys(store, staging, chunks, "review_id", bucket, buckets)
    return _write_drops(store, f"{staging}/drops-duplicate-{bucket:05d}.parquet", duplicate_drops(keys))


def plan_single_users(store: Store, staging: str, chunks: int, bucket: int, buckets: int,
                      duplicate_files: list[str]) -> str:
    """Pass 2 of the plan (Gest-raw), one bucket of user ids: their ``single_user_drops`` given every duplicate
    (pass 1's files, read one at a time), written to the staging folder (the file's path)."""
    keys = staged_keys(store, staging, chunks, "user_id", bucket, buckets)
    duplicates = (_read_drops(store, path).column(ORDER) for path in duplicate_files)
    return _write_drops(store, f"{staging}/drops-single-{bucket:05d}.parquet", single_user_drops(keys, duplicates))


def chunk_drops(store: Store, drop_files: list[str], index: int) -> pa.Table:
    """The drops of one chunk from the plan's files, read one at a time."""
    return pa.concat_tables([drops_of_chunk(_read_drops(store, path), index) for path in drop_files]
                            or [DROPS.empty_table()]).combine_chunks()


def _write_drops(store: Store, rel: str, drops: pa.Table) -> str:
    pq.write_table(drops, store.path(rel), filesystem=store.fs)
    return rel


def _read_drops(store: Store, rel: str) -> pa.Table:
    return pq.read_table(store.path(rel), filesystem=store.fs, schema=DROPS)


def drops_of_chunk(drops: pa.Table, index: int) -> pa.Table:
    return drops.filter(pc.equal(pc.shift_right(drops.column(ORDER), 40), index))


def finalize_chunk(store: Store, staging: str, index: int, run_id: str, drops: pa.Table, fmt: str,
                   seed: int, images_uri: str) -> dict:
    """Rewrite one staged chunk into data files of the reviews / images / quarantine tables (run ``run_id``).

    ``drops`` holds this chunk's rows of ``plan_drops``. Gest-raw and Google Local get the seeded
    user-disjoint split; Gest-s2 keeps the split of the file.
    """
    staged = pq.read_table(store.path(f"{staging}/reviews-{index:05d}.parquet"), filesystem=store.fs)
    quarantined = pq.read_table(store.path(f"{staging}/quarantine-{index:05d}.parquet"), filesystem=store.fs)
    reason_of = dict(zip(drops.column(ORDER).to_pylist(), drops.column("reason").to_pylist()))
    keep = pc.invert(pc.is_in(staged.column(ORDER), value_set=drops.column(ORDER)))
    extra = [
        quarantine_row(r["source"], r["position"], reason_of[r[ORDER]], None,
                       _drop_detail(reason_of[r[ORDER]], r), _record_of(r))
        for r in staged.filter(pc.invert(keep)).to_pylist()
    ]
    if extra:
        quarantined = pa.concat_tables([quarantined, pa.Table.from_pylist(extra, schema=schema.QUARANTINE)])
    reviews = staged.filter(keep).drop_columns([ORDER])
    if fmt != "s2":
        users = reviews.column("user_id").combine_chunks().dictionary_encode()
        split_of_user = pa.array([user_split(u, seed) for u in users.dictionary.to_pylist()], pa.string())
        splits = pc.take(split_of_user, users.indices)
        reviews = reviews.set_column(reviews.schema.get_field_index("split"), "split", splits)
    reviews = reviews.cast(schema.REVIEWS)
    images = _images_of(reviews, images_uri)
    name = f"part-{run_id}-{index:05d}.parquet"
    return {
        "reviews": write_file(store, "tables/reviews", reviews, name),
        "images": write_file(store, "tables/images", images, name),
        "quarantine": write_file(store, "tables/quarantine", quarantined, name),
    }


TABLE_SCHEMAS = {"reviews": schema.REVIEWS, "images": schema.IMAGES, "quarantine": schema.QUARANTINE,
                 "sentences": schema.SENTENCES, "owner_photos": schema.OWNER_PHOTOS,
                 "businesses": schema.BUSINESSES}


def commit_ingest(store: Store, run_id: str, files: dict[str, list[dict]], details: dict) -> dict:
    """Commit each table's data files in one transaction (replacing the previous ingest; a retried commit of the
    same run is a no-op), then write the run record that pins these versions for every reader."""
    versions = {name: commit(store, f"tables/{name}", table_files, TABLE_SCHEMAS[name], run_id=run_id, stage="ingest",
                             app_id=f"ingest/{run_id}", overwrite=True, metadata={"source": details.get("source")}
                             ).version
                for name, table_files in files.items()}
    return store.record_run("ingest", run_id, versions, details)


def _drop_detail(reason: str, row: dict) -> str:
    if reason == "duplicate_review":
        return f"review {row['review_id']} appeared earlier in the input; the first one is kept"
    if reason == "ambiguous_review_id":
        return (f"review id {row['review_id']} (user {row['user_id']}, business {row['business_id']}) is the id of an "
                "earlier review of another user and business; the first one is kept")
    return f"user {row['user_id']} has a single usable review (Gest-s1 keeps users with two or more)"


def _images_of(reviews: pa.Table, images_uri: str) -> pa.Table:
    """One row per (review, photo), built column-wise (no per-row Python objects)."""
    pics = reviews.column("pic_ids").combine_chunks()
    parents = pc.list_parent_indices(pics)
    image_ids = pc.list_flatten(pics)
    prefix = join_uri(images_uri, "")
    uris = pc.binary_join_element_wise(pa.scalar(prefix), image_ids, pa.scalar(".jpg"), "")
    columns = {"image_id": image_ids}
    for name in ("review_id", "user_id", "business_id", "split"):
        columns[name] = pc.take(reviews.column(name), parents)
    columns["uri"] = uris
    return pa.table(columns, schema=schema.IMAGES)

"""Ingest in two passes that any scheduler can run in parallel (jobs.ingest runs them as Ray tasks).

1. ``stage_chunk``: stream one byte range of a JSON-lines file (or a whole Gest-s2 file), validate every
   record, check its photos against the images listing, and write the accepted reviews and the quarantine
   rows of that chunk to a staging Parquet file. Memory: one write batch.
2. ``plan_drops`` (small, global): from the staged (review_id, user_id, order) columns alone, find the
   duplicate reviews and, for Gest-raw, the Gest-s1 single-review users.
3. ``finalize_chunk``: rewrite one staging file into data files of the reviews/images/quarantine Delta tables
   (committed together by the caller), with the
   seeded user-disjoint split for Gest-raw and Google Local (a hash of seed and user id: no global state).
"""

from __future__ import annotations

import hashlib
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..store import Store, filesystem_for, join_uri, open_binary
from ..tables import commit, write_file
from . import schema
from .gest import iter_jsonl, iter_s2, quarantine_row

WRITE_BATCH = 20_000
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


def list_photo_ids(images_uri: str) -> set[str]:
    """Ids of the photos present under the images root (``<pic_id>.jpg``), from one listing."""
    fs, path = filesystem_for(images_uri)
    ids = set()
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        name = posixpath.basename(info.path)
        if info.type == pafs.FileType.File and name.endswith(".jpg"):
            ids.add(name[:-4])
    return ids


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
                images_uri: str, present_photos: set[str]) -> dict:
    """Parse + validate one chunk into ``staging/reviews-<index>.parquet`` and ``quarantine-<index>``."""
    reviews = _Writer(store, f"{staging}/reviews-{index:05d}.parquet", STAGED)
    bad = _Writer(store, f"{staging}/quarantine-{index:05d}.parquet", schema.QUARANTINE)
    seen = 0
    with open_binary(source_uri) as stream:
        records = iter_s2(stream, source_uri) if fmt == "s2" else iter_jsonl(stream, source_uri, fmt, start, end)
        for n, item in enumerate(records):
            seen += 1
            if item.bad is not None:
                bad.add(item.bad)
                continue
            review = item.review
            kept = [p for p in review["pic_ids"] if p in present_photos]
            missing = [p for p in review["pic_ids"] if p not in present_photos]
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


def plan_drops(keys: pa.Table, fmt: str) -> pa.Table:
    """Global decisions from the staged key columns (review_id, user_id, _order): a table of drops.

    Duplicates: the first review (in file order) of a (user, business) pair is kept.
    Gest-raw -> Gest-s1: users left with a single review are dropped (the paper's rule).
    """
    first = keys.group_by("review_id").aggregate([(ORDER, "min")]).column(f"{ORDER}_min")
    is_first = pc.is_in(keys.column(ORDER), value_set=first)
    duplicates = keys.filter(pc.invert(is_first)).column(ORDER)
    drops = [pa.table({ORDER: duplicates, "reason": pa.array(["duplicate_review"] * len(duplicates))},
                      schema=DROPS)]
    if fmt == "raw":
        kept = keys.filter(is_first)
        counts = kept.group_by("user_id").aggregate([("user_id", "count")])
        single = counts.filter(pc.less(counts.column("user_id_count"), 2)).column("user_id")
        singles = kept.filter(pc.is_in(kept.column("user_id"), value_set=single)).column(ORDER)
        drops.append(pa.table({ORDER: singles, "reason": pa.array(["single_review_user"] * len(singles))},
                              schema=DROPS))
    return pa.concat_tables(drops).combine_chunks()


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

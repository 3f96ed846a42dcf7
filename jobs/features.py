"""Feature tables: ``python -m jobs.features --root ROOT [--encoder latest|ENCODER_ID] [--max-history 10]``.

Reads the published reviews and images tables and the encoder's embeddings, and writes the Delta tables the nightly
and Serve look pairs up in (showcase_core.features says what they hold and why):

    ROOT/features/<encoder_id>/users        one row per user: what the leave-one-business-out profile needs
    ROOT/features/<encoder_id>/businesses   one row per reviewed business: its ground set, at most --max-ground-set
    ROOT/features/<encoder_id>/_FEATURES.json  both versions, the bucket counts and the settings (written last)

All of it runs on Ray Data, never on the driver: photo rows are joined with their embeddings and review times,
text entries (reviews and Gest-s2 history items) with theirs, joins on ids; the entries are grouped by a stable hash
bucket of the user (of the business) and each group becomes one data file, sorted by id. The bucket count comes from
the row counts (``--users-per-bucket``, ``--photos-per-bucket``), so a group — the memory of one task — stays the
same size as the data grows. The driver commits the files of each table in one transaction (replacing the table)
and writes _FEATURES.json; a run killed before that leaves the previous features in place.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa

from showcase_core import features as F
from showcase_core import registry
from showcase_core import tables as delta
from showcase_core.store import new_run_id, utc_now

from .common import (RUN_ID, JobSettings, Timer, exit_process, new_report, open_store, parse_args, read_table_dataset,
                     run, setting, start_ray, versions)


class Settings(JobSettings):
    """Build the feature tables (users' profiles, businesses' ground sets) of one encoder's embeddings."""

    encoder: str = setting("latest", "whose embeddings: latest (the latest trained CLIP's) or an encoder id")
    max_history: int = setting(F.MAX_HISTORY, "history reviews kept per user and pair (at least the generator's "
                                              "max_history)", ge=1)
    max_ground_set: int = setting(F.MAX_GROUND_SET, "photos of a business the DPP chooses from, the newest first",
                                  ge=1)
    users_per_bucket: int = setting(4096, "reviews per users-table bucket (a task's group, a lookup's partition)",
                                    ge=1)
    photos_per_bucket: int = setting(65536, "photos per businesses-table bucket", ge=1)
    run_id: str = setting("", "this run's id (empty: a new one)", pattern=RUN_ID)
ENTRY = pa.schema([("key", pa.string()), ("business_id", pa.string()), ("entry_id", pa.string()),
                   ("uri", pa.string()), ("time_ms", pa.int64()), ("kind", pa.string()),
                   ("embedding", pa.list_(pa.float32())), ("table", pa.string()), ("bucket", pa.int64())])


def _entries(batch: pa.Table, key: str, kind: str, table: str, buckets: int) -> pa.Table:
    """Joined rows -> the ENTRY layout, for ``table``'s bucket of ``key``."""
    n = batch.num_rows

    def column(name: str):
        return batch.column(name) if name in batch.column_names else pa.nulls(n)

    return pa.table({"key": column(key).cast(pa.string()), "business_id": column("business_id").cast(pa.string()),
                     "entry_id": column("entry_id").cast(pa.string()), "uri": column("uri").cast(pa.string()),
                     "time_ms": column("time_ms").cast(pa.int64()), "kind": pa.array([kind] * n, pa.string()),
                     "embedding": column("embedding").cast(pa.list_(pa.float32())),
                     "table": pa.array([table] * n, pa.string()), "bucket": pa.array(F.bucket_of(column(key).to_pylist(), buckets))}, schema=ENTRY)


def _photo_entries(batch: pa.Table, buckets: dict) -> pa.Table:
    """Joined photo rows -> their entries in the users table (by user) and in the businesses table (by business)."""
    return pa.concat_tables([_entries(batch, "user_id", "photo", "users", buckets["users"]),
                             _entries(batch, "business_id", "photo", "businesses", buckets["businesses"])])


def _review_texts(batch: pa.Table) -> pa.Table:
    """Reviews -> one row per text entry (the review and its Gest-s2 history items)."""
    rows = [(user, text_id, business, time_ms)
            for r in batch.to_pylist() for user in [r["user_id"]]
            for text_id, business, time_ms in F.text_entries(user, r["review_id"], r["business_id"], r["time_ms"],
                                                              r["history"])]
    return pa.table({"user_id": [r[0] for r in rows], "entry_id": [r[1] for r in rows],
                     "business_id": [r[2] for r in rows], "time_ms": pa.array([r[3] for r in rows], pa.int64())})


def _vectors(column: pa.ChunkedArray, dim: int) -> list[np.ndarray]:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return list(flat.reshape(-1, dim)) if len(flat) else []


def write_bucket(group: pa.Table, root: str, encoder_id: str, run_id: str, dim: int, limits: dict) -> pa.Table:
    """One bucket's entries -> one data file of the users or businesses table, sorted by id; returns its record.
    A Ray task per group: an actor pool would hold a CPU from the start while the joins before it wait for CPUs."""
    from showcase_core.store import Store

    bucket, kind = int(group.column("bucket")[0].as_py()), group.column("table")[0].as_py()
    rows_by_key: dict[str, list] = {}
    vectors = _vectors(group.column("embedding"), dim)  # null lists (review markers) have no values
    has_vector = group.column("embedding").is_valid().to_pylist()
    vec_iter = iter(vectors)
    for r, valid in zip(group.drop_columns(["embedding"]).to_pylist(), has_vector):
        rows_by_key.setdefault(r["key"], []).append((r, next(vec_iter) if valid else None))
    out = []
    for key in sorted(rows_by_key):
        entries = rows_by_key[key]
        if kind == "users":
            photos = [(r["business_id"], r["entry_id"], v) for r, v in entries if r["kind"] == "photo"]
            texts = [(r["entry_id"], r["business_id"], r["time_ms"], v) for r, v in entries if r["kind"] == "text"]
            row = F.user_row(key, photos, texts, dim, limits[kind])
        else:
            photos = [(r["entry_id"], r["uri"], r["time_ms"], v) for r, v in entries if v is not None]
            row = F.business_row(key, photos, limits[kind])
        out.append({**row, "bucket": bucket})
    table = pa.Table.from_pylist(out, schema=F.USERS if kind == "users" else F.BUSINESSES)
    # row groups of 64 rows, sorted by id: a lookup of one id decodes one of them
    record = delta.write_file(Store.open(root), F.features_dir(encoder_id, kind), table,
                              f"part-{run_id}-{bucket:05d}.parquet", {"bucket": str(bucket)}, row_group_size=64)
    return pa.table({**{k: [v] for k, v in record.items()}, "table": [kind]})


def plan(store, encoder_id: str, cfg: Settings) -> dict:
    """The table versions this run reads (pinned), the embedding width and each table's bucket count."""
    pinned = {name: delta.current_version(store, f"tables/{name}", store.table_version(name)["version"])
              for name in ("reviews", "images")}
    embedded = {kind: delta.open_table(store, f"embeddings/{encoder_id}/{kind}").version() for kind in ("images", "texts")}
    review_rows, image_rows = (delta.rows(store, f"tables/{n}", pinned[n]) for n in ("reviews", "images"))
    buckets = {"users": F.buckets_for(review_rows, cfg.users_per_bucket),
               "businesses": F.buckets_for(image_rows, cfg.photos_per_bucket)}
    print(f"[features] encoder {encoder_id}: {review_rows:,} reviews, {image_rows:,} photos -> "
          f"{buckets['users']} user buckets, {buckets['businesses']} business buckets", file=sys.stderr, flush=True)
    return {"pinned": pinned, "embedded": embedded, "dim": _dim_of(store, encoder_id), "buckets": buckets,
            "photos": image_rows}


def write_buckets(store, encoder_id: str, run_id: str, cfg: Settings, inputs: dict) -> list[dict]:
    """Ray Data: join entries with their vectors, shuffle by (table, bucket), one data file per bucket."""
    import ray

    pinned, embedded, buckets = inputs["pinned"], inputs["embedded"], inputs["buckets"]
    # hash partitions per shuffle: one per CPU, fewer on small data (each partition is an aggregator actor)
    parts = max(1, min(int(ray.cluster_resources().get("CPU", 2)), F.buckets_for(inputs["photos"], 100_000)))

    def reviews(columns):
        return read_table_dataset(store, "tables/reviews", pinned["reviews"], columns)

    def entries(ds, key: str, kind: str, table: str):
        return ds.map_batches(_entries, batch_format="pyarrow",
                              fn_kwargs={"key": key, "kind": kind, "table": table, "buckets": buckets[table]})

    images = read_table_dataset(store, "tables/images", pinned["images"],
                                ["image_id", "review_id", "user_id", "business_id", "uri"])
    image_vectors = read_table_dataset(store, f"embeddings/{encoder_id}/images", embedded["images"])
    text_vectors = read_table_dataset(store, f"embeddings/{encoder_id}/texts", embedded["texts"])
    photos = (images.join(reviews(["review_id", "time_ms"]), "inner", parts, on=("review_id",))
              .join(image_vectors, "inner", parts, on=("image_id",), right_on=("id",))
              .rename_columns({"image_id": "entry_id"}))
    texts = (reviews(["review_id", "user_id", "business_id", "time_ms", "history"])
             .map_batches(_review_texts, batch_format="pyarrow")
             .join(text_vectors, "inner", parts, on=("entry_id",), right_on=("id",)))
    # one shuffle for both tables: each (table, bucket) group becomes one data file; the photos (the largest join)
    # are joined once and give both tables their entries
    plan_ds = photos.map_batches(_photo_entries, batch_format="pyarrow", fn_kwargs={"buckets": buckets}).union(
        entries(texts, "user_id", "text", "users"),
        entries(reviews(["business_id"]), "business_id", "review", "businesses"))
    return plan_ds.groupby(["table", "bucket"], num_partitions=parts).map_groups(
        write_bucket, batch_format="pyarrow",
        fn_kwargs={"root": store.root, "encoder_id": encoder_id, "run_id": run_id, "dim": inputs["dim"],
                   "limits": {"users": cfg.max_history, "businesses": cfg.max_ground_set}}
    ).take_all()


def commit_tables(store, encoder_id: str, run_id: str, records: list[dict], inputs: dict, timer: Timer) -> dict:
    """Commit each table once (overwrite), reading the pinned versions; {table: version, buckets, rows, files}."""
    committed_tables = {}
    for kind in ("users", "businesses"):
        rel = F.features_dir(encoder_id, kind)
        files = [{k: r[k] for k in delta.RECORD_KEYS} for r in records if r["table"] == kind]
        with timer(f"commit_{kind}"):
            committed = delta.commit(store, rel, files, F.USERS if kind == "users" else F.BUSINESSES,
                                     run_id=run_id, stage="features", app_id=f"{rel}/{run_id}", app_version=1,
                                     partition_by=["bucket"], overwrite=True,
                                     reads={**{f"tables/{n}": v for n, v in inputs["pinned"].items()},
                                            **{f"embeddings/{encoder_id}/{k}": v
                                               for k, v in inputs["embedded"].items()}})
        committed_tables[kind] = {"version": committed.version, "buckets": inputs["buckets"][kind],
                                  "rows": sum(int(r["rows"]) for r in files), "files": len(files)}
        print(f"[features] {kind}: {committed_tables[kind]['rows']:,} rows in {len(files)} files, {store.uri(rel)} "
              f"version {committed.version}", file=sys.stderr, flush=True)
    return committed_tables


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("features", Settings, argv)
    store = open_store(cfg.root)
    encoder_id = registry.resolve_encoder_id(store, cfg.encoder)
    registry.encoder(store, encoder_id)  # its embeddings are there
    run_id = cfg.run_id or new_run_id()
    report, timer = new_report("features", cfg, run_id), Timer()
    inputs = plan(store, encoder_id, cfg)
    start_ray()
    with timer("tables"):
        records = write_buckets(store, encoder_id, run_id, cfg, inputs)
    committed = commit_tables(store, encoder_id, run_id, records, inputs, timer)
    meta = {"encoder_id": encoder_id, "dim": int(inputs["dim"]), "run_id": run_id, "completed_at": utc_now(),
            "max_history": cfg.max_history, "max_ground_set": cfg.max_ground_set, "tables": committed,
            "reads": {**inputs["pinned"], **{f"embeddings/{k}": v for k, v in inputs["embedded"].items()}}}
    F.write_meta(store, encoder_id, meta)
    counts = {kind: t["rows"] for kind, t in committed.items()}
    report.update(status="published", counts=counts, features=meta, timings_s=timer.timings, versions=versions(),
                  finished_at=utc_now())
    print(f"[features] {counts['users']:,} users, {counts['businesses']:,} businesses for encoder {encoder_id}; "
          f"report: {store.write_report('features', run_id, report)}", flush=True)
    return 0


def _dim_of(store, encoder_id: str) -> int:
    """The embedding width from the first data file's schema (the table stores lists)."""
    import pyarrow.parquet as pq

    from showcase_core.store import filesystem_for

    uri = delta.file_uris(store, f"embeddings/{encoder_id}/images")[0]
    first = pq.ParquetFile(filesystem_for(uri)[1], filesystem=store.fs).read_row_group(0, columns=["embedding"])
    return len(first.column("embedding")[0])


if __name__ == "__main__":
    exit_process(run("features", main))

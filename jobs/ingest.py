"""Validate Gest files into ROOT/tables:
``python -m jobs.ingest --root ROOT --gest PATH [--format s2|raw|googlelocal] [--images URI]``.

Ray tasks stage byte ranges of the input in parallel (looking photos up under --images); planning tasks find
duplicates (and, for Gest-raw, the Gest-s1 single-review users) bucket by bucket of ids; more tasks write the data
files; the driver commits each Delta table once (replacing the previous ingest) and writes the run record
``runs/ingest.json`` last, which pins the versions readers use.
"""

from __future__ import annotations

import math
import posixpath
from collections import Counter
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from showcase_core.buckets import buckets_for
from showcase_core.data.businesses import read_businesses
from showcase_core.data.gest import FORMATS, REASONS, detect_format
from showcase_core.data.owner_photos import photos_present, read_owner_photos
from showcase_core.data.schema import QUARANTINE
from showcase_core.data.sentences import partition_of, read_sentences
from showcase_core.data.ingest import (PLAN_BUCKET_ROWS, PhotoLookup, chunk_drops, commit_ingest, finalize_chunk,
                                       plan_chunks, plan_duplicates, plan_single_users, stage_chunk)
from showcase_core.data.summary import dataset_summary, summary_markdown
from showcase_core.store import Store, StoreError, filesystem_for, join_uri, new_run_id, open_binary, utc_now
from showcase_core.tables import write_file

from .common import (JobSettings, Progress, Timer, UserError, exit_process, new_report, open_store, parse_args, run,
                     setting, start_ray, versions)

class Settings(JobSettings):
    """Validate Gest files into ROOT/tables (replacing the previous ingest)."""

    gest: str = setting("", "the Gest file: filter_all_t.json (s2), image_review_all.json (raw) or Google Local "
                            "JSON lines; local or s3://")
    format: Literal["auto", "s2", "raw", "googlelocal"] = setting("auto", "the file's format (auto: from its name "
                                                                          "and first bytes)")
    images: str = setting("", "where photos live as <pic_id>.jpg (empty: images/ beside the Gest file)")
    sentences: str = setting("auto", "the aligned-sentences JSONL (auto: sentences.jsonl beside the Gest file if "
                                     "there; none: no sentences table)")
    owner_photos: str = setting("auto", "the owner-photos JSONL (business_id, pic_id; photos under --images) "
                                        "(auto: owner_photos.jsonl beside the Gest file if there; none: no "
                                        "owner_photos table)")
    businesses: str = setting("auto", "the businesses JSONL (business_id, latitude, longitude in degrees) "
                                      "(auto: businesses.jsonl beside the Gest file if there; none: no businesses "
                                      "table)")
    sentence_task_reviews: int = setting(250_000, "reviews per sentence-validation task: each holds one hash "
                                                  "partition of the reviews and reads the sentences file", ge=1)
    sidecar_task_mb: float = setting(256.0, "MiB of an owner-photos or businesses file per validation task: each "
                                            "reads the file and holds one hash partition of its rows",
                                     ge=1e-6, le=2**20)  # a byte to a TiB
    seed: int = setting(0, "seed of the train/val/test split of reviews")
    chunk_mb: float = setting(64.0, "MiB of the input per parallel validation task", ge=1e-6, le=2**20)
    plan_bucket_rows: int = setting(PLAN_BUCKET_ROWS, "staged reviews one planning task holds at once: duplicates "
                                                      "(and Gest-raw's single-review users) are found bucket by "
                                                      "bucket of ids, a task each", ge=1)


def _check_inputs(cfg: Settings) -> tuple[str, str, str, str | None, dict[str, str]]:
    """Resolve (source, format, images, sentences, {table: URI} of the business sidecars present) or fail with one
    line; touches only metadata.

    Local paths come back absolute: Ray tasks and later jobs open them from other working directories.
    """
    source = cfg.gest
    if not source:
        raise UserError("--gest is required: the Gest file (filter_all_t.json, image_review_all.json or Google Local JSON lines)")
    try:
        fs, path = filesystem_for(source, fail_fast=True)
        info = fs.get_file_info(path)
    except (StoreError, OSError) as e:
        raise UserError(f"--gest {source}: {str(e).splitlines()[0]}") from None
    if info.type == pafs.FileType.Directory:
        raise UserError(f"--gest {source} is a directory; name the file inside it")
    if info.type != pafs.FileType.File:
        raise UserError(f"--gest {source}: no such file")
    if not source.startswith("s3://"):
        source = path
    fmt = cfg.format
    if fmt == "auto":
        with fs.open_input_stream(path) as f:
            head = f.read(4096)
        fmt = detect_format(head, posixpath.basename(path))
        if fmt is None:
            raise UserError(f"--gest {source}: cannot tell its format; pass --format one of {', '.join(FORMATS)}")
    images = cfg.images or join_uri(source.rsplit("/", 1)[0] if "/" in source else ".", "images")
    try:
        ifs, ipath = filesystem_for(images, fail_fast=True)
        itype = ifs.get_file_info(ipath).type
    except (StoreError, OSError) as e:
        raise UserError(f"--images {images}: {str(e).splitlines()[0]}") from None
    if itype != pafs.FileType.Directory:
        raise UserError(f"--images {images}: no such directory (photos are read from <images>/<pic_id>.jpg)")
    if not images.startswith("s3://"):
        images = ipath  # absolute: the tables are read by other processes, from other directories
    folder = source.rsplit("/", 1)[0] if "/" in source else "."
    sentences = _sidecar(fs, "--sentences", cfg.sentences, join_uri(folder, "sentences.jsonl"))
    sidecars = {name: _sidecar(fs, f"--{name.replace('_', '-')}", getattr(cfg, name),
                               join_uri(folder, f"{name}.jsonl")) for name in ("owner_photos", "businesses")}
    return source, fmt, images, sentences, {name: uri for name, uri in sidecars.items() if uri}


def _sidecar(fs, flag: str, value: str, beside: str) -> str | None:
    """A sidecar file's URI: ``auto`` the one beside the Gest file when there, ``none`` (or empty) none."""
    if value == "auto":
        return beside if fs.get_file_info(filesystem_for(beside)[1]).type == pafs.FileType.File else None
    if value in ("", "none"):
        return None
    sfs, spath = filesystem_for(value)
    if sfs.get_file_info(spath).type != pafs.FileType.File:
        raise UserError(f"{flag} {value}: no such file")
    return value if value.startswith("s3://") else spath


def _ingest_sentences(store: Store, run_id: str, uri: str, parts: dict, reviews_per_task: int) -> dict:
    """Validate the aligned-sentences file against the reviews just written; add its data files.

    One Ray task per hash partition of the review ids (a partition per ``reviews_per_task`` reviews): each reads the
    reviews' id columns a data file at a time and keeps its partition's, then reads the file and validates its
    partition's sentences. A task holds 1/n of the reviews' ids and photo ids and of the sentences (the file is read n
    times, in parallel); the driver holds the files' records and the counts."""
    import ray

    root, review_paths = store.root, [p["path"] for p in parts["reviews"]]
    partitions = max(1, -(-sum(int(p["rows"]) for p in parts["reviews"]) // reviews_per_task))

    @ray.remote
    def validate(mine: int) -> dict:
        task_store, accepted, text_less = Store.open(root), {}, set()
        for path in review_paths:
            table = pq.read_table(task_store.path("tables/reviews", path), filesystem=task_store.fs,
                                  columns=["review_id", "split", "pic_ids", "review_text"])
            for review_id, split, pics, has_text in zip(*(table.column(c).to_pylist()
                                                          for c in ("review_id", "split", "pic_ids")),
                                                        table.column("review_text").is_valid().to_pylist()):
                if partitions > 1 and partition_of(review_id, partitions) != mine:
                    continue
                if has_text:
                    accepted[review_id] = (split, set(pics))
                else:
                    text_less.add(review_id)
        with open_binary(uri) as stream:
            result = read_sentences(stream, uri, accepted, text_less, partition=(mine, partitions))
        files = {"sentences": write_file(task_store, "tables/sentences", result["table"],
                                         f"part-{run_id}-{mine:05d}.parquet"), "quarantine": None}
        if result["quarantine"]:
            files["quarantine"] = write_file(task_store, "tables/quarantine",
                                             pa.Table.from_pylist(result["quarantine"], schema=QUARANTINE),
                                             f"part-{run_id}-sentences-{mine:05d}.parquet")
        return {"files": files, "out": result["table"].num_rows, "quarantined": len(result["quarantine"]),
                "photo_refs_removed": result["photo_refs_removed"]}

    done = ray.get([validate.remote(k) for k in range(partitions)])
    parts["sentences"] = [d["files"]["sentences"] for d in done]
    parts["quarantine"].extend(d["files"]["quarantine"] for d in done if d["files"]["quarantine"])
    return {"sentences_out": sum(d["out"] for d in done), "sentences_quarantined": sum(d["quarantined"] for d in done),
            "sentence_photo_refs_removed": sum(d["photo_refs_removed"] for d in done)}


def _ingest_business_sidecars(store: Store, run_id: str, sidecars: dict[str, str], parts: dict, images: str,
                              task_mb: float) -> dict:
    """Validate the owner-photos and businesses files (``sidecars``: table name -> URI) against the businesses of the
    reviews just written (owner photos also against the photos under ``images``, looked up a thousand at a time in a
    first pass over the file); add their data files. One Ray task per hash partition of a file's rows (a partition per
    ``task_mb`` MiB of the file): each reads the file and keeps its partition's rows, by photo id for the owner
    photos (a task holds every business id and its share of the photos) and by business id for the businesses (its
    share of both). The driver holds only the counts."""
    import ray

    root, review_paths = store.root, [p["path"] for p in parts["reviews"]]

    @ray.remote
    def validate(name: str, uri: str, mine: int, partitions: int) -> dict:
        task_store, keep = Store.open(root), (0, 1) if partitions == 1 else (mine, partitions)
        by_business = name == "businesses" and partitions > 1  # the owner photos' partitions need every business
        businesses: set[str] = set()
        for path in review_paths:  # one data file's business_id column at a time
            table = pq.read_table(task_store.path("tables/reviews", path), filesystem=task_store.fs,
                                  columns=["business_id"])
            businesses.update(b for b in pc.unique(table.column("business_id")).to_pylist()
                              if not by_business or partition_of(b, partitions) == mine)
        if name == "owner_photos":
            with open_binary(uri) as first_pass:  # which of its photos are there, a thousand lookups at a time
                present = photos_present(first_pass, businesses, PhotoLookup(images), partition=keep)
            with open_binary(uri) as stream:
                result = read_owner_photos(stream, uri, businesses, present, images, partition=keep)
        else:
            with open_binary(uri) as stream:
                result = read_businesses(stream, uri, businesses, partition=keep)
        files = {"table": write_file(task_store, f"tables/{name}", result["table"], f"part-{run_id}-{mine:05d}.parquet"),
                 "quarantine": None}
        if result["quarantine"]:
            files["quarantine"] = write_file(task_store, "tables/quarantine",
                                             pa.Table.from_pylist(result["quarantine"], schema=QUARANTINE),
                                             f"part-{run_id}-{name.replace('_', '-')}-{mine:05d}.parquet")
        return {"files": files, "out": result["table"].num_rows, "quarantined": len(result["quarantine"])}

    counts, tasks = {}, {}
    for name, uri in sidecars.items():
        fs, path = filesystem_for(uri)
        partitions = max(1, math.ceil(fs.get_file_info(path).size / (task_mb * 2**20)))
        tasks[name] = [validate.remote(name, uri, k, partitions) for k in range(partitions)]
    for name, pending in tasks.items():
        done = ray.get(pending)
        parts[name] = [d["files"]["table"] for d in done]
        parts["quarantine"].extend(d["files"]["quarantine"] for d in done if d["files"]["quarantine"])
        counts.update({f"{name}_out": sum(d["out"] for d in done),
                       f"{name}_quarantined": sum(d["quarantined"] for d in done)})
    return counts


def stage_chunks(store, staging: str, run_id: str, cfg: Settings, inputs: dict, timer: Timer) -> dict:
    """Ray tasks: validate byte ranges of the input into staging files, find duplicates, write the data files."""
    import ray

    root, source, fmt, images = store.root, inputs["gest"], inputs["format"], inputs["images"]

    @ray.remote
    def stage(index, start, end):
        return stage_chunk(Store.open(root), staging, index, source, fmt, start, end, images)

    @ray.remote
    def duplicates(bucket, buckets):
        return plan_duplicates(Store.open(root), staging, len(chunks), bucket, buckets)

    @ray.remote
    def single_users(bucket, buckets, duplicate_files):
        return plan_single_users(Store.open(root), staging, len(chunks), bucket, buckets, duplicate_files)

    @ray.remote
    def finalize(index, drop_files):
        task_store = Store.open(root)
        return finalize_chunk(task_store, staging, index, run_id, chunk_drops(task_store, drop_files, index), fmt,
                              cfg.seed, images)

    chunks = plan_chunks(source, fmt, int(cfg.chunk_mb * (1 << 20)))
    with timer("stage"):
        progress = Progress("ingest", "chunks validated", len(chunks))
        pending = [stage.remote(i, s, e) for i, (s, e) in enumerate(chunks)]
        staged, records, rows = 0, 0, 0
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            result = ray.get(done[0])
            records, rows, staged = records + result["records"], rows + result["staged"], staged + 1
            progress.update(staged, f"{records:,} records")
    with timer("plan"):  # bucket by bucket of ids, a task each: no process holds every review's keys
        buckets = buckets_for(rows, cfg.plan_bucket_rows)
        drop_files = ray.get([duplicates.remote(b, buckets) for b in range(buckets)])
        if fmt == "raw":
            drop_files += ray.get([single_users.remote(b, buckets, drop_files) for b in range(buckets)])
    with timer("finalize"):
        parts = {"reviews": [], "images": [], "quarantine": []}
        for result in ray.get([finalize.remote(i, drop_files) for i in range(len(chunks))]):
            for name in parts:  # in chunk order, so parts keep the input's order
                parts[name].append(result[name])
    return {"parts": parts, "records": records}


def quarantine_reasons(store, files: list[dict]) -> Counter:
    """The quarantine rows' reasons and counts, from the staged files' ``reason`` column one file at a time."""
    reasons: Counter = Counter()
    for f in files:
        column = pq.read_table(store.path("tables", "quarantine", f["path"]), filesystem=store.fs, columns=["reason"])
        for counted in pc.value_counts(column.column("reason")).to_pylist():
            reasons[counted["values"]] += counted["counts"]
    return reasons


def ingest_counts(store, record: dict, records_in: int, sidecar_counts: dict) -> tuple[dict, dict]:
    """The report's counts (every input record is a review out or a quarantined record) and the reasons."""
    quarantined: dict[str, int] = {}
    for batch in store.iter_table_batches("quarantine", ["reason"]):
        for reason in batch.column("reason").to_pylist():
            quarantined[reason] = quarantined.get(reason, 0) + 1
    tables = record["tables"]
    counts = {"records_in": records_in, "reviews_out": tables["reviews"]["rows"], "images_out": tables["images"]["rows"],
              "quarantined": tables["quarantine"]["rows"],
              # photo_missing rows are photos, not records
              "records_quarantined": tables["quarantine"]["rows"] - quarantined.get("photo_missing", 0)
              - sum(sidecar_counts.get(f"{name}_quarantined", 0)
                    for name in ("sentences", "owner_photos", "businesses")),
              "quarantined_by_reason": dict(sorted(quarantined.items())), **sidecar_counts}
    return counts, quarantined


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("ingest", Settings, argv)
    source, fmt, images, sentences, business_sidecars = _check_inputs(cfg)
    store = open_store(cfg.root, new_root=True)
    run_id, timer = new_run_id(), Timer()
    report = new_report("ingest", cfg, run_id)
    report["inputs"] = {"gest": source, "format": fmt, "images": images, "sentences": sentences,
                        "owner_photos": business_sidecars.get("owner_photos"),
                        "businesses": business_sidecars.get("businesses")}
    staging = f"tables/_staging/{run_id}"
    start_ray()
    staged = stage_chunks(store, staging, run_id, cfg, report["inputs"], timer)
    if not sum(f["rows"] for f in staged["parts"]["reviews"]):
        reasons = quarantine_reasons(store, staged["parts"]["quarantine"])
        for name, files in staged["parts"].items():  # this run's files, never committed
            for f in files:
                store.fs.delete_file(store.path("tables", name, f["path"]))
        store.delete_dir(staging)
        raise UserError(f"--gest {source}: no review accepted of {staged['records']:,} records (quarantined: "
                        + (", ".join(f"{r} {n:,}" for r, n in reasons.most_common(3)) or "none")
                        + f"; --format {fmt}); nothing published: the tables under ROOT stay as they were")
    sidecar_counts = {}
    if sentences:
        with timer("sentences"):
            sidecar_counts.update(_ingest_sentences(store, run_id, sentences, staged["parts"],
                                                    cfg.sentence_task_reviews))
    if business_sidecars:
        with timer("business_sidecars"):
            sidecar_counts.update(_ingest_business_sidecars(store, run_id, business_sidecars, staged["parts"], images,
                                                            cfg.sidecar_task_mb))
    with timer("publish"):
        record = commit_ingest(store, run_id, staged["parts"], {"source": source, "format": fmt, "images": images})
        store.delete_dir(staging)
    counts, quarantined = ingest_counts(store, record, staged["records"], sidecar_counts)
    summary = dataset_summary(store)
    counts["reviews_without_text"] = summary["reviews_without_text"]  # kept for their photos; no text target
    report.update(counts=counts, summary=summary, reason_codes={k: REASONS[k] for k in quarantined},
                  outputs={name: {"uri": store.uri("tables", name), **t} for name, t in record["tables"].items()},
                  timings_s=timer.timings, versions=versions(), finished_at=utc_now())
    print(summary_markdown(summary, quarantined))
    print(f"tables: {store.uri('tables')} (run {run_id}: "
          + ", ".join(f"{k} v{t['version']}" for k, t in record["tables"].items())
          + f"); report: {store.write_report('ingest', run_id, report)}")
    return 0


if __name__ == "__main__":
    exit_process(run("ingest", main))

"""Embed every photo and text with CLIP: ``python -m jobs.embed --root ROOT [--encoder latest|URI] [--clip-model NAME]``.

Ray Data: todo lists (ids not embedded yet) -> read + decode + resize photos (in the CLIP actors on a CPU cluster, one
per CPU; in CPU tasks beside GPU actors) -> a CLIP actor pool that writes Parquet parts under
``ROOT/embeddings/<encoder_id>/``. Photos are the reviews' and the businesses' owner photos (``tables/owner_photos``,
when ingest published one), into one table. Texts (review texts, history reviews, aligned sentences) go straight to a
text actor pool. The driver commits the data files the actors return into the Delta tables
``embeddings/<encoder_id>/{images,texts,quarantine}`` every ``--commit-every-files`` files or ``--commit-every-s``
seconds, so progress is visible; rerunning skips what is committed. The encoder is published in the registry once its
embeddings are committed.
"""

from __future__ import annotations

import dataclasses
import posixpath
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import field_validator

from showcase_core import registry
from showcase_core import tables as delta
from showcase_core.encoders.embed import PLAN_BUCKET_ROWS
from showcase_core.encoders.photos import MAX_PHOTO_BYTES, MAX_PHOTO_PIXELS
from showcase_core.settings import comma_list
from showcase_core.store import Store, StoreError, new_run_id, utc_now
from showcase_core.tables import IncrementalCommit

from .common import (JobSettings, Progress, Timer, UserError, actor_plan, exit_process, new_report, open_store,
                     parse_args, run, setting, start_ray, versions)

KINDS = ("images", "texts")
TABLES = ("images", "texts", "quarantine")  # the encoder's Delta tables


class Settings(JobSettings):
    """Embed every photo and text with CLIP (a Ray Data actor pool); a rerun skips what is committed."""

    encoder: str = setting("latest", "the CLIP to embed with: latest (the latest trained CLIP) or a checkpoint URI")
    clip_model: str = setting("", "an open_clip model name (or a small named config, or pretrained-towers with "
                                  "untrained projections) instead of a trained checkpoint")
    clip_pretrained: str = setting("", "the open_clip pretrained tag or weights file (local or s3://) of --clip-model "
                                       "(empty: random weights)")
    kinds: str = setting(",".join(KINDS), f"what to embed, comma-separated: some of {', '.join(KINDS)}")
    batch_size: int = setting(256, "photos or texts per CLIP forward", ge=1)
    decode_batch_size: int = setting(256, "photos per decode batch", ge=1)
    decode_threads: int = setting(0, "threads per decode call (PIL releases the GIL; 0: a CPU actor's torch threads, "
                                     "1 in a decode task beside GPU actors)", ge=0)
    calls_per_actor: int = setting(0, "batches an actor works on at once (0: 2 on a GPU, one read and decoded while "
                                      "another is in the model; 1 on CPUs, which decode and embed in turn)", ge=0)
    max_photo_bytes: int = setting(MAX_PHOTO_BYTES, "a photo file over this size is quarantined (too_large), by "
                                                    "its size, unread", ge=1)
    max_photo_pixels: int = setting(MAX_PHOTO_PIXELS, "a photo of more pixels (width x height, from its header) is "
                                                      "quarantined (too_many_pixels) undecoded", ge=1)
    decode_cpus: float = setting(1.0, "CPUs per decode task beside GPU actors (on a CPU cluster, decoding runs in the "
                                      "CLIP actors)", ge=0.0001, le=1024)  # Ray's smallest share of a CPU
    todo_file_rows: int = setting(2048, "ids per todo file at most: the unit of work an actor takes (a short list "
                                        "is cut finer, so that each actor gets 8 files)", ge=1)
    plan_bucket_rows: int = setting(PLAN_BUCKET_ROWS, "ids the driver holds at once while it plans the todo lists "
                                                      "and checks for duplicates (more: fewer passes over the "
                                                      "tables)", ge=1)
    actors: int = setting(0, "CLIP actors (0: one per GPU, or one per CPU on a CPU-only cluster)", ge=0)
    use_gpu: bool = setting(False, "a GPU per actor even when none is up yet (a cluster autoscaling from zero)")
    threads_per_actor: int = setting(0, "torch threads in a CPU actor (0: the cluster's CPUs per actor, at least 1)",
                                     ge=0)
    commit_every_files: int = setting(64, "commit the data files written so far every this many files ...", ge=1)
    commit_every_s: float = setting(60.0, "... or every this many seconds, whichever comes first", gt=0)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, value: str) -> str:
        return ",".join(comma_list("kinds", value, KINDS))


@dataclasses.dataclass
class Plan:
    """What every kind's pipeline shares: the encoder, the actor pool and the committers of this run."""

    store: Store
    cfg: Settings
    encoder_id: str
    image_size: int
    worker_spec: dict
    actors: int
    resources: dict
    calls_per_actor: int
    cpus: int  # the cluster's, when the run started
    staging: str
    committers: dict
    peak_rss: int = 0

    def note_memory(self) -> None:
        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)

    def pool(self, todo_files: int) -> tuple[int, int, int]:
        """(actors, torch threads per actor, decode threads per call) for a kind of this many todo files: no more
        actors than files (an actor without one would only load the model). On CPUs, an actor per CPU with one torch
        thread, decoding and embedding in turn, so one actor's decoding never idles a core: decoding small photos
        holds the GIL, and one actor on two threads left its second core idle while it decoded. Decoding on a thread
        beside the model's stalled them instead. The model alone embeds about as many photos either way
        (tests/perf/embed.py --size large). A short list (under FILES_PER_ACTOR files an actor: ``todo_file_rows``
        cuts it finer first) gets fewer CPU actors with more threads each: starting an actor costs seconds, more than
        such a list's decoding. A GPU actor keeps torch's threads and decodes on one."""
        from showcase_core.encoders.embed import FILES_PER_ACTOR

        actors = max(1, min(self.actors, todo_files))
        if "num_gpus" in self.resources:
            return actors, self.cfg.threads_per_actor, self.cfg.decode_threads or 1
        actors = max(1, min(actors, -(-todo_files // FILES_PER_ACTOR)))
        threads = self.cfg.threads_per_actor or max(1, self.cpus // actors)
        return actors, threads, self.cfg.decode_threads or threads


def check_tables(store: Store, kinds: list[str]) -> None:
    """The ingested table the first kind reads is there."""
    try:
        store.table_version("images" if "images" in kinds else "reviews")
    except StoreError as e:
        raise UserError(str(e)) from None


def encoder_spec(store: Store, cfg: Settings) -> dict:
    """How to load the encoder: an open_clip name, the latest trained CLIP, or a checkpoint URI."""
    if cfg.clip_model:
        return {"model": cfg.clip_model, "pretrained": cfg.clip_pretrained or None}
    if cfg.encoder != "latest":
        return {"checkpoint": cfg.encoder}
    try:
        return {"checkpoint": registry.latest(store, "clip").uri}
    except registry.RegistryError:
        raise UserError(f"no trained CLIP under {store.root}/models/clip (run `showcase train_clip`, "
                        "or pass --encoder URI or --clip-model NAME)") from None


def identify_encoder(spec: dict) -> tuple[str, int]:
    """(encoder_id, image size) of the encoder, loaded once on the driver's CPU."""
    from showcase_core.encoders.clip import EncoderError, load_encoder

    try:
        encoder = load_encoder(**spec, device="cpu")
    except EncoderError as e:
        raise UserError(str(e)) from None
    return encoder.encoder_id, encoder.image_size


def make_plan(store: Store, cfg: Settings, spec: dict, encoder_id: str, image_size: int, run_id: str) -> Plan:
    import ray

    from showcase_core.encoders.embed import embeddings_dir

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    actors, resources, device = actor_plan(cfg.use_gpu, cfg.actors, cpus)
    reads = {name: store.table_version(name)["version"] for name in ("images", "reviews")}
    committers = {kind: IncrementalCommit(store, embeddings_dir(encoder_id, kind), run_id=run_id, stage="embed",
                                          app_id=f"embed/{run_id}/{kind}", every_files=cfg.commit_every_files,
                                          every_s=cfg.commit_every_s, reads=reads)
                  for kind in TABLES}
    calls = cfg.calls_per_actor or (2 if device != "cpu" else 1)
    return Plan(store, cfg, encoder_id, image_size, {**spec, "device": device}, actors, resources, calls, cpus,
                f"embeddings/{encoder_id}/_staging/{run_id}", committers,
                psutil.Process().memory_info().rss)


def write_todo(store: Store, rel_dir: str, tables, rows_per_file: int) -> tuple[int, list[str]]:
    """Stream Arrow tables of rows (string columns) into todo files of ``rows_per_file`` rows (the last one fewer);
    returns the row count and the files."""
    count, files, pending = 0, [], None

    def write(table: pa.Table) -> None:
        files.append(posixpath.join(rel_dir, f"todo-{len(files):05d}.parquet"))
        store.write_parquet(files[-1], table.cast(pa.schema([(n, pa.string()) for n in table.column_names])))

    for table in tables:
        count += len(table)
        pending = table if pending is None else pa.concat_tables([pending, table], promote_options="permissive")
        while len(pending) >= rows_per_file:
            write(pending.slice(0, rows_per_file))
            pending = pending.slice(rows_per_file)
    if pending is not None and len(pending):
        write(pending)
    return count, files


def read_todo_files(batch: pa.Table, root: str) -> pa.Table:
    """The rows of a batch of todo files (a Ray Data step whose input rows are todo file names)."""
    import pyarrow.parquet as pq

    from showcase_core.store import read_bytes

    store = Store.open(root)  # read_bytes rides a short S3 outage, as Ray's Parquet reads did
    return pa.concat_tables([pq.read_table(pa.BufferReader(read_bytes(store.fs, store.path(f))))
                             for f in batch.column("todo_file").to_pylist()])


def image_tables(store: Store):
    """(id, uri) Arrow tables, batch by batch: the reviews' photos, then the businesses' owner photos (when ingest
    published them)."""
    for table in ("images", "owner_photos"):
        try:
            for batch in store.iter_table_batches(table, ["image_id", "uri"]):
                yield pa.Table.from_batches([batch]).rename_columns(["id", "uri"])
        except StoreError:
            if table == "images":
                raise


def text_tables(store: Store):
    """(id, text) Arrow tables, batch by batch: each review's text, then its history reviews' (ids
    ``review:<review_id>``, empty texts left out), then the aligned sentences (``sentence:<sentence_id>``)."""
    import polars as pl

    for batch in store.iter_table_batches("reviews", ["review_id", "review_text", "history"]):
        reviews = pl.from_arrow(batch)
        history = reviews.select(pl.col("history").explode()).unnest("history")
        texts = pl.concat([reviews.select(id="review:" + pl.col("review_id"), text=pl.col("review_text")),
                           history.select(id="review:" + pl.col("review_id"), text=pl.col("text"))])
        yield texts.filter(pl.col("text") != "").to_arrow(compat_level=pl.CompatLevel.oldest())  # nulls too
    try:
        for batch in store.iter_table_batches("sentences", ["sentence_id", "text"]):
            yield pa.table({"id": pc.binary_join_element_wise("sentence:", batch.column("sentence_id"), ""),
                            "text": batch.column("text")})
    except StoreError:
        return  # no sentences table (e.g. Gest-raw before distillation)


def table_rows(store: Store, names: tuple[str, ...]) -> int:
    """Rows of the published tables that exist, from their Delta logs."""
    total = 0
    for name in names:
        try:
            total += delta.rows(store, f"tables/{name}", store.table_version(name)["version"])
        except StoreError:
            continue
    return total


def write_kind_todo(plan: Plan, kind: str) -> tuple[dict, list[str]]:
    """The ids of one kind not embedded yet, as todo files under the run's staging folder: the kind's counts.
    The driver plans bucket by bucket of ids (``new_rows``), holding at most ``--plan-bucket-rows`` of them; a
    bucket that would hold more makes it plan again with twice the buckets."""
    from showcase_core.buckets import buckets_for
    from showcase_core.encoders.embed import (BucketOverflow, committed_id_tables, committed_rows, new_rows,
                                              todo_file_rows)

    store, cfg, staging = plan.store, plan.cfg, f"{plan.staging}/{kind}"
    tables = ("images", "quarantine") if kind == "images" else ("texts",)
    already = committed_rows(store, plan.encoder_id, tables)
    candidates = (lambda: image_tables(store)) if kind == "images" else (lambda: text_tables(store))
    sources = ("images", "owner_photos") if kind == "images" else ("reviews", "sentences")  # texts: history too
    candidate_rows = table_rows(store, sources)
    buckets = buckets_for(already + candidate_rows, cfg.plan_bucket_rows)
    file_rows = todo_file_rows(candidate_rows - already, plan.actors, cfg.todo_file_rows)
    while True:
        try:
            rows = new_rows(candidates, lambda: committed_id_tables(store, plan.encoder_id, tables), buckets,
                            cfg.plan_bucket_rows)
            todo, files = write_todo(store, staging, rows, file_rows)
            break
        except BucketOverflow:
            store.delete_dir(staging)
            buckets *= 2
    actors, threads, _ = plan.pool(len(files))
    device = "a GPU" if "num_gpus" in plan.resources else f"a CPU, {threads} torch thread(s)"
    passes = f" (planned in {buckets} passes of at most {cfg.plan_bucket_rows:,} ids)" if buckets > 1 else ""
    print(f"[embed] {kind}: {todo:,} to embed with {plan.encoder_id} on {actors} actor(s) ({device} each){passes}",
          file=sys.stderr, flush=True)
    return {"already_done": already, "todo": todo, "embedded": 0, "quarantined": 0}, files


def kind_pipeline(plan: Plan, kind: str, todo_files: list[str]):
    """The Ray Data pipeline of one kind: todo files -> (decode ->) the CLIP actor pool -> one row per data file."""
    import ray

    from showcase_core.encoders.embed import ImageEmbedder, TextEmbedder, decode_photos
    from showcase_core.malloc import KEEP_FREED_MEMORY_ENV

    cfg = plan.cfg
    actors, torch_threads, decode_threads = plan.pool(len(todo_files))
    # one block per todo file, so the work spreads over every actor. The driver names the files it wrote: a Parquet
    # read would first list them and read their footers in a pool of helper actors (5 s of start-up on 2 cores,
    # beside the CLIP actor's own), and a repartition after it waits for the whole read. The reading step reserves no
    # CPU (CPU actors hold them all), reads one file at a time (a 2,048-row file takes milliseconds), and, as its
    # resources differ, Ray never fuses it into the batched steps after it (which would bundle files into one call)
    ds = ray.data.from_items([{"todo_file": f} for f in todo_files], override_num_blocks=len(todo_files))
    ds = ds.map_batches(read_todo_files, fn_kwargs={"root": plan.store.root}, batch_size=1, batch_format="pyarrow",
                        num_cpus=0, concurrency=1)
    # batch after batch, the actors reuse the memory a batch frees (showcase_core.malloc)
    actor_args = {"runtime_env": {"env_vars": KEEP_FREED_MEMORY_ENV}, **plan.resources}
    if kind == "images":
        # on CPUs decoding runs in the actors (the same resources: Ray fuses it into them). Unfused, a decode task
        # would wait forever for a CPU, since the actors hold them all
        decode_args = actor_args if "num_gpus" not in plan.resources else {"num_cpus": cfg.decode_cpus}
        ds = ds.map_batches(decode_photos, fn_kwargs={"size": plan.image_size, "threads": decode_threads,
                                                      "max_bytes": cfg.max_photo_bytes,
                                                      "max_pixels": cfg.max_photo_pixels},
                            batch_size=cfg.decode_batch_size, **decode_args)
    embedder_args = {"root": plan.store.root, "encoder_spec": plan.worker_spec, "encoder_id": plan.encoder_id,
                     "threads": torch_threads}
    return ds.map_batches(ImageEmbedder if kind == "images" else TextEmbedder, fn_constructor_kwargs=embedder_args,
                          batch_size=cfg.batch_size,
                          compute=ray.data.ActorPoolStrategy(size=actors,
                                                             max_concurrent_calls_per_actor=plan.calls_per_actor,
                                                             enable_true_multi_threading=plan.calls_per_actor > 1),
                          **actor_args)


def embed_kind(plan: Plan, kind: str, timer: Timer) -> dict:
    """Embed every id of one kind not committed yet, committing the data files as they come; the kind's counts."""
    with timer(f"{kind}_todo"):
        counts, todo_files = write_kind_todo(plan, kind)
    if not counts["todo"]:
        return counts
    progress, started = Progress("embed", kind, counts["todo"]), time.monotonic()
    with timer(kind):
        for files in kind_pipeline(plan, kind, todo_files).iter_batches(batch_size=None, batch_format="pandas"):
            for record in files.to_dict("records"):
                plan.committers[record["kind"]].add(record)
                counts["quarantined" if record["kind"] == "quarantine" else "embedded"] += int(record["rows"])
            progress.update(counts["embedded"] + counts["quarantined"])
            plan.note_memory()
        for committer in plan.committers.values():
            committer.flush()
    counts["per_second"] = round((counts["embedded"] + counts["quarantined"]) / (time.monotonic() - started), 1)
    return counts


def stored_totals(plan: Plan) -> tuple[dict, dict]:
    """What is committed now per table (rows, ids committed more than once: bucket by bucket of ids, memory about
    ``--plan-bucket-rows`` ids), and the quarantine's reasons."""
    from showcase_core.encoders.embed import duplicate_ids, embeddings_dir

    totals, reasons = {}, {}
    for kind in TABLES:
        rel = embeddings_dir(plan.encoder_id, kind)
        if not delta.exists(plan.store, rel):
            totals[kind] = {"rows": 0, "duplicate_ids": 0}
            continue
        totals[kind] = {"rows": delta.rows(plan.store, rel),
                        "duplicate_ids": duplicate_ids(plan.store, plan.encoder_id, kind, plan.cfg.plan_bucket_rows),
                        "version": delta.open_table(plan.store, rel).version(),
                        "commits_this_run": plan.committers[kind].commits}
        if kind == "quarantine":
            for batch in delta.iter_batches(plan.store, rel, columns=["reason"]):
                for r in pc.value_counts(batch.column("reason")).to_pylist():
                    reasons[r["values"]] = reasons.get(r["values"], 0) + r["counts"]
    if any(t["duplicate_ids"] for t in totals.values()):
        raise RuntimeError(f"duplicate ids under {plan.store.uri('embeddings', plan.encoder_id)}: {totals}")
    return totals, reasons


def print_summary(store: Store, encoder_id: str, counts: dict, totals: dict, reasons: dict, report_uri: str) -> None:
    for kind, c in counts.items():
        print(f"{kind}: {c['embedded']:,} embedded, {c['quarantined']:,} quarantined this run "
              f"({c.get('per_second', 0)}/s); stored {totals[kind]['rows']:,}")
    if reasons:
        print("quarantined photos: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    print(f"embeddings: {store.uri('embeddings', encoder_id)}; report: {report_uri}")


def main(argv: list[str] | None = None) -> int:
    from showcase_core.encoders.embed import EMBED_REASONS, embeddings_dir

    cfg = parse_args("embed", Settings, argv)
    kinds = cfg.kinds.split(",")
    store = open_store(cfg.root)
    check_tables(store, kinds)
    spec = encoder_spec(store, cfg)
    run_id, timer = new_run_id(), Timer()
    report = new_report("embed", cfg, run_id)
    with ThreadPoolExecutor(1) as pool:  # the driver's torch import and load, while Ray starts (2 s less on 2 CPUs)
        identified = pool.submit(identify_encoder, spec)
        start_ray()
        encoder_id, image_size = identified.result()
    plan = make_plan(store, cfg, spec, encoder_id, image_size, run_id)
    counts = {kind: embed_kind(plan, kind, timer) for kind in kinds}
    store.delete_dir(plan.staging)
    totals, reasons = stored_totals(plan)

    registry.publish_encoder(store, encoder_id, spec, image_size=image_size)

    report.update(counts={"this_run": counts, "stored": totals, "quarantined_by_reason": reasons},
                  reason_codes={k: EMBED_REASONS[k] for k in reasons}, encoder_id=encoder_id, encoder_spec=spec,
                  outputs={k: store.uri(embeddings_dir(encoder_id, k)) for k in TABLES},
                  peak_driver_rss_mb=round(plan.peak_rss / 2**20, 1), timings_s=timer.timings, versions=versions(),
                  finished_at=utc_now())
    print_summary(store, encoder_id, counts, totals, reasons, store.write_report("embed", run_id, report))
    return 0


if __name__ == "__main__":
    exit_process(run("embed", main))

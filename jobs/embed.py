"""Embed every photo and text with CLIP: ``python -m jobs.embed --root ROOT [--encoder latest|URI] [--clip-model NAME]``.

Ray Data: todo lists (ids not embedded yet) -> read + decode + resize photos in CPU tasks -> a CLIP actor pool (one
GPU per actor when the cluster has GPUs) that writes Parquet parts under ``ROOT/embeddings/<encoder_id>/``. Photos are
the reviews' and the businesses' owner photos (``tables/owner_photos``, when ingest published one), into one table.
Texts (review texts, history reviews, aligned sentences) go straight to a text actor pool. The driver commits the
data files the actors return into the Delta tables ``embeddings/<encoder_id>/{images,texts,quarantine}`` every
``--commit-every-files`` files or ``--commit-every-s`` seconds, so progress is visible; rerunning skips what is
committed. The encoder is published in the registry once its embeddings are committed.
"""

from __future__ import annotations

import dataclasses
import posixpath
import sys
import time

import psutil
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import field_validator

from showcase_core import registry
from showcase_core import tables as delta
from showcase_core.encoders.photos import MAX_PHOTO_BYTES, MAX_PHOTO_PIXELS
from showcase_core.settings import comma_list
from showcase_core.store import Store, StoreError, new_run_id, utc_now
from showcase_core.tables import IncrementalCommit

from .common import (JobSettings, Progress, Timer, UserError, actor_plan, new_report, open_store, parse_args, run,
                     setting, start_ray, versions)

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
    decode_threads: int = setting(0, "threads per decode call (PIL releases the GIL; 0: the machine's CPUs in a CPU "
                                     "actor, 1 in a decode task beside GPU actors)", ge=0)
    calls_per_actor: int = setting(0, "batches an actor works on at once (0: 2 on a GPU, one read and decoded while "
                                      "another is in the model; 1 on CPUs, where Ray's fused pipeline already decodes "
                                      "the next batch while the model embeds one)", ge=0)
    max_photo_bytes: int = setting(MAX_PHOTO_BYTES, "a photo file over this size is quarantined (too_large), by "
                                                    "its size, unread", ge=1)
    max_photo_pixels: int = setting(MAX_PHOTO_PIXELS, "a photo of more pixels (width x height, from its header) is "
                                                      "quarantined (too_many_pixels) undecoded", ge=1)
    decode_cpus: float = setting(1.0, "CPUs per decode task (equal to a CPU actor's one CPU, Ray fuses decoding into "
                                      "the actor; GPU actors never fuse)", gt=0)
    todo_file_rows: int = setting(2048, "ids per todo file: the unit of parallel decoding", ge=1)
    actors: int = setting(0, "CLIP actors (0: one per GPU, or 1 on a CPU-only cluster)", ge=0)
    use_gpu: bool = setting(False, "a GPU per actor even when none is up yet (a cluster autoscaling from zero)")
    threads_per_actor: int = setting(0, "torch threads in a CPU actor (0: torch's default)", ge=0)
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
    decode_threads: int  # 0: every CPU of the machine it runs on
    staging: str
    committers: dict
    peak_rss: int = 0

    def note_memory(self) -> None:
        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)


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
    from showcase_core.encoders.embed import embeddings_dir

    actors, resources, device = actor_plan(cfg.use_gpu, cfg.actors)
    reads = {name: store.table_version(name)["version"] for name in ("images", "reviews")}
    committers = {kind: IncrementalCommit(store, embeddings_dir(encoder_id, kind), run_id=run_id, stage="embed",
                                          app_id=f"embed/{run_id}/{kind}", every_files=cfg.commit_every_files,
                                          every_s=cfg.commit_every_s, reads=reads)
                  for kind in TABLES}
    # on CPUs one call at a time: Ray's fused pipeline decodes the next batch (a thread per core) while the model
    # embeds the current one. Two calls at once, each decoding on one thread, made the whole job 0.72-0.75x the model
    # alone on 2 cores; this, 0.76-0.86x (tests/perf/embed.py --size large)
    on_gpu = device != "cpu"
    calls = cfg.calls_per_actor or (2 if on_gpu else 1)
    decode_threads = cfg.decode_threads or (1 if on_gpu else 0)
    return Plan(store, cfg, encoder_id, image_size, {**spec, "device": device}, actors, resources, calls,
                decode_threads, f"embeddings/{encoder_id}/_staging/{run_id}", committers,
                psutil.Process().memory_info().rss)


def write_todo(store: Store, rel_dir: str, rows_iter, rows_per_file: int) -> int:
    """Stream (id, value) rows into todo files of at most rows_per_file rows; returns the row count."""
    count, file_index, buffer = 0, 0, []

    def flush():
        nonlocal file_index, buffer
        if buffer:
            names = list(buffer[0].keys())
            table = pa.table({n: pa.array([r[n] for r in buffer], pa.string()) for n in names})
            store.write_parquet(posixpath.join(rel_dir, f"todo-{file_index:05d}.parquet"), table)
            file_index += 1
            buffer = []

    for row in rows_iter:
        buffer.append(row)
        count += 1
        if len(buffer) >= rows_per_file:
            flush()
    flush()
    return count


def image_rows(store: Store, skip: set[str]):
    """The reviews' photos, then the businesses' owner photos (when ingest published them)."""
    seen = set(skip)
    for table in ("images", "owner_photos"):
        try:
            for batch in store.iter_table_batches(table, ["image_id", "uri"]):
                for image_id, uri in zip(batch.column("image_id").to_pylist(), batch.column("uri").to_pylist()):
                    if image_id not in seen:
                        seen.add(image_id)
                        yield {"id": image_id, "uri": uri}
        except StoreError:
            if table == "images":
                raise


def text_rows(store: Store, skip: set[str]):
    seen = set(skip)
    for batch in store.iter_table_batches("reviews", ["review_id", "review_text", "history"]):
        for review_id, text, history in zip(*(batch.column(c).to_pylist() for c in ("review_id", "review_text",
                                                                                  "history"))):
            for key, value in [(review_id, text)] + [(h["review_id"], h["text"]) for h in history or []]:
                key = f"review:{key}"
                if key not in seen and value:
                    seen.add(key)
                    yield {"id": key, "text": value}
    try:
        batches = store.iter_table_batches("sentences", ["sentence_id", "text"])
        for batch in batches:
            for sentence_id, text in zip(batch.column("sentence_id").to_pylist(), batch.column("text").to_pylist()):
                key = f"sentence:{sentence_id}"
                if key not in seen:
                    seen.add(key)
                    yield {"id": key, "text": text}
    except StoreError:
        return  # no sentences table (e.g. Gest-raw before distillation)


def write_kind_todo(plan: Plan, kind: str) -> dict:
    """The ids of one kind not embedded yet, as todo files under the run's staging folder: the kind's counts."""
    from showcase_core.encoders.embed import done_ids

    skip = done_ids(plan.store, plan.encoder_id, ("images", "quarantine") if kind == "images" else ("texts",))
    rows = image_rows(plan.store, skip) if kind == "images" else text_rows(plan.store, skip)
    todo = write_todo(plan.store, f"{plan.staging}/{kind}", rows, plan.cfg.todo_file_rows)
    print(f"[embed] {kind}: {todo:,} to embed with {plan.encoder_id}", file=sys.stderr, flush=True)
    return {"already_done": len(skip), "todo": todo, "embedded": 0, "quarantined": 0}


def kind_pipeline(plan: Plan, kind: str, todo: int):
    """The Ray Data pipeline of one kind: todo files -> (decode ->) the CLIP actor pool -> one row per data file."""
    import ray

    from showcase_core.encoders.embed import ImageEmbedder, TextEmbedder, decode_photos

    cfg = plan.cfg
    # one block per todo file, so the work spreads over every actor (Ray would merge small files into one block)
    ds = ray.data.read_parquet(plan.store.path(f"{plan.staging}/{kind}"),
                               filesystem=plan.store.fs).repartition(-(-todo // cfg.todo_file_rows))
    if kind == "images":
        ds = ds.map_batches(decode_photos, fn_kwargs={"size": plan.image_size, "threads": plan.decode_threads,
                                                      "max_bytes": cfg.max_photo_bytes,
                                                      "max_pixels": cfg.max_photo_pixels},
                            batch_size=cfg.decode_batch_size, num_cpus=cfg.decode_cpus)
    embedder_args = {"root": plan.store.root, "encoder_spec": plan.worker_spec, "encoder_id": plan.encoder_id,
                     "threads": cfg.threads_per_actor}
    return ds.map_batches(ImageEmbedder if kind == "images" else TextEmbedder, fn_constructor_kwargs=embedder_args,
                          batch_size=cfg.batch_size,
                          compute=ray.data.ActorPoolStrategy(size=plan.actors,
                                                             max_concurrent_calls_per_actor=plan.calls_per_actor,
                                                             enable_true_multi_threading=plan.calls_per_actor > 1),
                          **plan.resources)


def embed_kind(plan: Plan, kind: str, timer: Timer) -> dict:
    """Embed every id of one kind not committed yet, committing the data files as they come; the kind's counts."""
    with timer(f"{kind}_todo"):
        counts = write_kind_todo(plan, kind)
    if not counts["todo"]:
        return counts
    progress, started = Progress("embed", kind, counts["todo"]), time.monotonic()
    with timer(kind):
        for files in kind_pipeline(plan, kind, counts["todo"]).iter_batches(batch_size=None, batch_format="pandas"):
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
    """What is committed now per table (rows, ids committed twice: memory of one id column), and the quarantine's
    reasons."""
    from showcase_core.encoders.embed import embeddings_dir

    totals, reasons = {}, {}
    for kind in TABLES:
        rel = embeddings_dir(plan.encoder_id, kind)
        if not delta.exists(plan.store, rel):
            totals[kind] = {"rows": 0, "duplicate_ids": 0}
            continue
        table = delta.read(plan.store, rel, columns=["id", "reason"] if kind == "quarantine" else ["id"])
        totals[kind] = {"rows": table.num_rows, "duplicate_ids": table.num_rows - pc.count_distinct(table["id"]).as_py(),
                        "version": delta.open_table(plan.store, rel).version(),
                        "commits_this_run": plan.committers[kind].commits}
        if kind == "quarantine":
            reasons = {r["values"]: r["counts"] for r in pc.value_counts(table["reason"]).to_pylist()}
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
    encoder_id, image_size = identify_encoder(spec)

    run_id, timer = new_run_id(), Timer()
    report = new_report("embed", cfg, run_id)
    start_ray()
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
    sys.exit(run("embed", main))

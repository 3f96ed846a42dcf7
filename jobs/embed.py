"""Embed every photo and text with CLIP: ``python -m jobs.embed --root ROOT [--encoder latest|URI] [--clip-model NAME]``.

Ray Data: todo lists (ids not embedded yet) -> read + decode + resize photos in CPU tasks -> a CLIP actor pool (one
GPU per actor when the cluster has GPUs) that writes Parquet parts under ``ROOT/embeddings/<encoder_id>/``. Texts
(review texts, history reviews, aligned sentences) go straight to a text actor pool. The driver commits the data files
the actors return into the Delta tables ``embeddings/<encoder_id>/{images,texts,quarantine}`` every
``--commit-every-files`` files or ``--commit-every-s`` seconds, so progress is visible; rerunning skips what is
committed.
"""

from __future__ import annotations

import posixpath
import sys
import time

import psutil
import pyarrow as pa
import pyarrow.compute as pc

from showcase_core import tables as delta
from showcase_core.store import Store, StoreError, new_run_id, utc_now
from showcase_core.tables import IncrementalCommit

from .common import (Progress, Timer, UserError, actor_plan, new_report, open_store, parse_args, run, start_ray,
                     versions)

DEFAULTS = {
    "root": None,
    "encoder": "latest",  # latest trained CLIP (models/clip/_LATEST.json) or a checkpoint URI
    "clip_model": "",  # or an open_clip model name (with clip_pretrained) instead of a trained checkpoint
    "clip_pretrained": "",
    "kinds": "images,texts",
    "batch_size": 256,  # per CLIP forward
    "decode_batch_size": 256,
    "decode_threads": 2,  # threads per decode task (PIL releases the GIL)
    # CPUs per decode task. Equal to a CPU actor's one CPU, Ray fuses decoding into the actor (faster on small CPU
    # nodes: measured 389 vs 296 images/s on 2 cores); GPU actors never fuse, so there decoding runs in CPU tasks.
    "decode_cpus": 1.0,
    "todo_file_rows": 2048,  # rows per todo file = the unit of parallel decoding
    "actors": 0,  # CLIP actors; 0 = one per GPU, or 1 on a CPU-only cluster
    "use_gpu": False,  # ask for a GPU per actor even when none is up yet (autoscaling from zero)
    "threads_per_actor": 0,  # torch threads in a CPU actor; 0 = torch's default
    "commit_every_files": 64,  # commit the data files written so far every this many files ...
    "commit_every_s": 60.0,  # ... or every this many seconds, whichever comes first
}


def resolve_encoder(store: Store, cfg: dict) -> dict:
    if cfg["clip_model"]:
        return {"model": cfg["clip_model"], "pretrained": cfg["clip_pretrained"] or None}
    if cfg["encoder"] == "latest":
        try:
            latest = store.read_json("models/clip/_LATEST.json")
        except StoreError:
            raise UserError(f"no trained CLIP under {store.root}/models/clip (run `showcase train_clip`, "
                            "or pass --encoder URI or --clip-model NAME)") from None
        return {"checkpoint": latest["uri"]}
    return {"checkpoint": cfg["encoder"]}


def _write_todo(store: Store, rel_dir: str, rows_iter, rows_per_file: int) -> int:
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


def _image_rows(store: Store, skip: set[str]):
    seen = set(skip)
    for batch in store.iter_table_batches("images", ["image_id", "uri"]):
        for image_id, uri in zip(batch.column("image_id").to_pylist(), batch.column("uri").to_pylist()):
            if image_id not in seen:
                seen.add(image_id)
                yield {"id": image_id, "uri": uri}


def _text_rows(store: Store, skip: set[str]):
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


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("embed", DEFAULTS, argv)
    kinds = [k.strip() for k in cfg["kinds"].split(",") if k.strip()]
    if not kinds or set(kinds) - {"images", "texts"}:
        raise UserError(f"--kinds must list images and/or texts, got {cfg['kinds']!r}")
    if cfg["batch_size"] < 1 or cfg["decode_batch_size"] < 1 or cfg["todo_file_rows"] < 1:
        raise UserError("--batch-size, --decode-batch-size and --todo-file-rows must be positive")
    store = open_store(cfg["root"])
    try:
        store.table_version("images" if "images" in kinds else "reviews")
    except StoreError as e:
        raise UserError(str(e)) from None
    spec = resolve_encoder(store, cfg)
    from showcase_core.encoders.clip import EncoderError, load_encoder
    from showcase_core.encoders.embed import (EMBED_REASONS, ImageEmbedder, TextEmbedder, decode_photos, done_ids,
                                              embeddings_dir)

    try:
        encoder = load_encoder(**spec, device="cpu")
    except EncoderError as e:
        raise UserError(str(e)) from None
    encoder_id, image_size = encoder.encoder_id, encoder.image_size
    del encoder

    import ray

    run_id = new_run_id()
    report = new_report("embed", cfg, run_id)
    timer = Timer()
    start_ray()
    store.write_json(f"embeddings/{encoder_id}/_ENCODER.json", {"encoder_id": encoder_id, "spec": spec,
                                                                "image_size": image_size})
    actors, actor_resources, device = actor_plan(cfg["use_gpu"], cfg["actors"])
    spec_for_workers = {**spec, "device": device}
    staging = f"embeddings/{encoder_id}/_staging/{run_id}"
    counts: dict = {}
    peak_rss = psutil.Process().memory_info().rss
    reads = {name: store.table_version(name)["version"] for name in ("images", "reviews")}
    committers = {kind: IncrementalCommit(store, embeddings_dir(encoder_id, kind), run_id=run_id, stage="embed",
                                          app_id=f"embed/{run_id}/{kind}", every_files=cfg["commit_every_files"],
                                          every_s=cfg["commit_every_s"], reads=reads)
                  for kind in ("images", "texts", "quarantine")}

    for kind in kinds:
        with timer(f"{kind}_todo"):
            skip = done_ids(store, encoder_id, ("images", "quarantine") if kind == "images" else ("texts",))
            already_done = len(skip)
            rows = _image_rows(store, skip) if kind == "images" else _text_rows(store, skip)
            todo = _write_todo(store, f"{staging}/{kind}", rows, cfg["todo_file_rows"])
            del skip
        counts[kind] = {"already_done": already_done, "todo": todo, "embedded": 0, "quarantined": 0}
        print(f"[embed] {kind}: {todo:,} to embed with {encoder_id}", file=sys.stderr, flush=True)
        if not todo:
            continue
        files = -(-todo // cfg["todo_file_rows"])
        # one block per todo file, so the work spreads over every actor (Ray would merge small files into one block)
        ds = ray.data.read_parquet(store.path(f"{staging}/{kind}"), filesystem=store.fs).repartition(files)
        embedder_args = {"root": store.root, "encoder_spec": spec_for_workers, "encoder_id": encoder_id,
                         "threads": cfg["threads_per_actor"]}
        if kind == "images":
            ds = ds.map_batches(decode_photos, fn_kwargs={"size": image_size, "threads": cfg["decode_threads"]},
                                batch_size=cfg["decode_batch_size"],
                                num_cpus=cfg["decode_cpus"])
            ds = ds.map_batches(ImageEmbedder, fn_constructor_kwargs=embedder_args, batch_size=cfg["batch_size"],
                                compute=ray.data.ActorPoolStrategy(size=actors), **actor_resources)
        else:
            ds = ds.map_batches(TextEmbedder, fn_constructor_kwargs=embedder_args, batch_size=cfg["batch_size"],
                                compute=ray.data.ActorPoolStrategy(size=actors), **actor_resources)
        progress = Progress("embed", kind, todo)
        started = time.monotonic()
        with timer(kind):
            for files in ds.iter_batches(batch_size=None, batch_format="pandas"):
                for record in files.to_dict("records"):
                    committers[record["kind"]].add(record)
                    counts[kind]["quarantined" if record["kind"] == "quarantine" else "embedded"] += int(record["rows"])
                progress.update(counts[kind]["embedded"] + counts[kind]["quarantined"])
                peak_rss = max(peak_rss, psutil.Process().memory_info().rss)
            for committer in committers.values():
                committer.flush()
        seconds = time.monotonic() - started
        counts[kind]["per_second"] = round((counts[kind]["embedded"] + counts[kind]["quarantined"]) / seconds, 1)

    store.delete_dir(staging)
    # what is committed now, and a check that no id was committed twice (memory: one id column)
    totals, reasons = {}, {}
    for kind in ("images", "texts", "quarantine"):
        rel = embeddings_dir(encoder_id, kind)
        if not delta.exists(store, rel):
            totals[kind] = {"rows": 0, "duplicate_ids": 0}
            continue
        table = delta.read(store, rel, columns=["id", "reason"] if kind == "quarantine" else ["id"])
        totals[kind] = {"rows": table.num_rows, "duplicate_ids": table.num_rows - pc.count_distinct(table["id"]).as_py(),
                        "version": delta.open_table(store, rel).version(),
                        "commits_this_run": committers[kind].commits}
        if kind == "quarantine":
            reasons = {r["values"]: r["counts"] for r in pc.value_counts(table["reason"]).to_pylist()}
    report.update(counts={"this_run": counts, "stored": totals, "quarantined_by_reason": reasons},
                  reason_codes={k: EMBED_REASONS[k] for k in reasons}, encoder_id=encoder_id, encoder_spec=spec,
                  outputs={k: store.uri(embeddings_dir(encoder_id, k)) for k in ("images", "texts", "quarantine")},
                  peak_driver_rss_mb=round(peak_rss / 2**20, 1), timings_s=timer.timings, versions=versions(),
                  finished_at=utc_now())
    report_uri = store.write_report("embed", run_id, report)
    if any(t["duplicate_ids"] for t in totals.values()):
        raise RuntimeError(f"duplicate ids under {store.uri('embeddings', encoder_id)}: {totals}")
    for kind, c in counts.items():
        print(f"{kind}: {c['embedded']:,} embedded, {c['quarantined']:,} quarantined this run "
              f"({c.get('per_second', 0)}/s); stored {totals[kind]['rows']:,}")
    if reasons:
        print("quarantined photos: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    print(f"embeddings: {store.uri('embeddings', encoder_id)}; report: {report_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(run("embed", main))

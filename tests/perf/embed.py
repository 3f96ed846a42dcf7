"""Embedding throughput: the whole embed job vs model-only forward, same model, same machine, same run.

    .venv/bin/python tests/perf/embed.py [--size mini|large] [--workdir DIR] [--clip-model showcase-tiny]
                                         [--threads 2] [--batch-size 256] [--runs 1]

1. Makes (or reuses) a world of the given size in --workdir and ingests it.
2. Model-only: the same CLIP on photos decoded beforehand (uint8 arrays in memory), batches of --batch-size, for 20 s,
   keeping freed memory as the job's actors do (showcase_core.malloc), in both ways of using ``--threads`` cores: one
   process with ``--threads`` torch threads, and ``--threads`` processes with one torch thread each, side by side
   (their images/s summed). The better of the two is the model's rate on these cores.
3. Whole job: ``python -m jobs.embed --kinds images`` with its defaults (on a CPU-only machine, one actor per CPU with
   one torch thread) on every photo from scratch (reading JPEGs, decoding and resizing, the CLIP actor pool, Parquet
   writes, commits), timed from process start to exit, with the driver's RSS sampled every 0.5 s. Also prints the
   job's own embedding-stage rate (without Ray start-up and the todo listing).
Prints the rates and the ratio of the whole job to the model's rate (goal on a 2-core machine: >= 0.8), against each
arrangement, and the driver's peak RSS; with ``--runs N``, N such runs (the model measured again before each job) and
the ratios' min / median / max.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import prepare, run_sampled  # noqa: E402

MODEL_SECONDS = 20.0


def model_only(root: str, clip_model: str, threads: int, batch_size: int, photos: int = 2048,
               start_at: float = 0.0) -> tuple[float, str]:
    """images/s of the model alone in this process, on ``threads`` torch threads, for MODEL_SECONDS (from
    ``start_at``, a time.time(), when given: processes side by side start together)."""
    import torch

    from showcase_core.encoders.clip import load_encoder
    from showcase_core.encoders.photos import decode_and_resize
    from showcase_core.malloc import keep_freed_memory
    from showcase_core.store import Store

    keep_freed_memory()  # as embed's actors do
    torch.set_num_threads(threads)
    encoder = load_encoder(model=clip_model, device="cpu")
    uris = Store.open(root).read_table("images").column("uri").to_pylist()[:photos]
    pixels = np.stack([decode_and_resize(open(u, "rb").read(), encoder.image_size) for u in uris])
    encoder.encode_pixels(pixels[:batch_size])  # warm-up
    time.sleep(max(0.0, start_at - time.time()))
    done, started = 0, time.monotonic()
    while time.monotonic() - started < MODEL_SECONDS:
        batch = pixels[(done % len(pixels)):(done % len(pixels)) + batch_size]
        encoder.encode_pixels(batch)
        done += len(batch)
    return done / (time.monotonic() - started), encoder.encoder_id


def model_only_processes(root: str, clip_model: str, processes: int, batch_size: int) -> float:
    """images/s of ``processes`` single-threaded model processes side by side, summed."""
    start_at = time.time() + 20  # after every process has loaded the model and decoded its photos
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--model-only-process", root,
                               "--clip-model", clip_model, "--batch-size", str(batch_size),
                               "--start-at", str(start_at)], stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    rates = [float(p.communicate()[0].split()[-1]) for p in procs]
    if any(p.returncode for p in procs) or time.time() < start_at:
        raise SystemExit("a model-only process failed or did not wait for the common start")
    return sum(rates)


def whole_job(root: str, clip_model: str, encoder_id: str, batch_size: int) -> dict:
    for table in ("images", "quarantine"):  # the photos' tables only: other benchmarks in the workdir use the texts
        shutil.rmtree(os.path.join(root, "embeddings", encoder_id, table), ignore_errors=True)
    result = run_sampled(["jobs.embed", "--root", root, "--clip-model", clip_model, "--kinds", "images",
                          "--batch-size", str(batch_size)], every=0.5, tree=False)
    if result["returncode"]:
        raise SystemExit("embed failed:\n" + "".join(result["lines"][-40:]))
    wall, peak = result["wall"], result["driver"]
    report_path = sorted(glob.glob(os.path.join(root, "reports", "embed", "*.json")))[-1]
    with open(report_path) as f:
        report = json.load(f)
    counts = report["counts"]["this_run"]["images"]
    pool = next((line.split(" on ", 1)[1].strip() for line in result["lines"] if "to embed with" in line), "?")
    return {"wall": wall, "images": counts["embedded"] + counts["quarantined"], "stage_rate": counts["per_second"],
            "pool": pool,
            "peak_rss": peak, "report_peak_rss_mb": report["peak_driver_rss_mb"]}


def measure_once(root: str, args) -> tuple[float, float]:
    """One run: the model alone (both arrangements), then the whole job; prints the figures and returns the ratios
    (whole job / model, stage / model)."""
    threaded_rate, encoder_id = model_only(root, args.clip_model, args.threads, args.batch_size)
    processes_rate = model_only_processes(root, args.clip_model, args.threads, args.batch_size)
    model_rate = max(threaded_rate, processes_rate)
    job = whole_job(root, args.clip_model, encoder_id, args.batch_size)
    job_rate = job["images"] / job["wall"]
    print(f"model:                    {args.clip_model} ({encoder_id}), batch {args.batch_size}")
    print(f"model-only forward:       {threaded_rate:8.1f} images/s in 1 process x {args.threads} torch threads "
          f"(photos decoded beforehand)")
    print(f"                          {processes_rate:8.1f} images/s in {args.threads} processes x 1 torch thread")
    print(f"whole embed job:          {job_rate:8.1f} images/s ({job['images']:,} photos in {job['wall']:.1f}s, "
          f"Ray start-up included; {job['pool']})")
    print(f"embed stage of the job:   {job['stage_rate']:8.1f} images/s (the job's own timing of the Ray Data pipeline)")
    print(f"ratio whole job / model:  {job_rate / model_rate:.2f}   (goal >= 0.8; the model's better arrangement)")
    print(f"  per arrangement:        {job_rate / threaded_rate:.2f} (1 x {args.threads} threads), "
          f"{job_rate / processes_rate:.2f} ({args.threads} x 1 thread)")
    print(f"ratio stage / model:      {job['stage_rate'] / model_rate:.2f}")
    print(f"driver peak RSS:          {job['peak_rss'] / 2**20:.0f} MiB sampled, {job['report_peak_rss_mb']:.0f} MiB "
          f"seen by the job itself, for {job['images']:,} photos", flush=True)
    return job_rate / model_rate, job["stage_rate"] / model_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mini", choices=["mini", "large"])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--clip-model", default="showcase-tiny")
    parser.add_argument("--threads", type=int, default=2, help="the cores the model-only figures use")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=1, help="measure this many times (each run: model, then job)")
    parser.add_argument("--model-only-process", metavar="ROOT", help=argparse.SUPPRESS)  # one single-threaded process
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model_only_process:
        print(model_only(args.model_only_process, args.clip_model, 1, args.batch_size, start_at=args.start_at)[0])
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="embed-perf-")
    root = prepare(workdir, args.size)
    ratios, stage_ratios = [], []
    for number in range(1, args.runs + 1):
        if args.runs > 1:
            print(f"-- run {number} of {args.runs}", flush=True)
        job_ratio, stage_ratio = measure_once(root, args)
        ratios.append(job_ratio)
        stage_ratios.append(stage_ratio)
    if args.runs > 1:
        print(f"over {args.runs} runs, min / median / max: whole job / model {min(ratios):.2f} / "
              f"{statistics.median(ratios):.2f} / {max(ratios):.2f}; stage / model {min(stage_ratios):.2f} / "
              f"{statistics.median(stage_ratios):.2f} / {max(stage_ratios):.2f}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

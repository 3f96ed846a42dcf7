"""Embedding throughput: the whole embed job vs model-only forward, same model, same machine, same run.

    .venv/bin/python tests/perf/embed.py [--size mini|large] [--workdir DIR] [--clip-model showcase-tiny]
                                         [--threads 2] [--batch-size 256]

1. Makes (or reuses) a world of the given size in --workdir and ingests it.
2. Model-only: the same CLIP, ``--threads`` torch threads, forward passes over photos decoded beforehand
   (uint8 arrays in memory), batches of --batch-size: images/s.
3. Whole job: ``python -m jobs.embed --kinds images`` on every photo from scratch (reading JPEGs, decoding and
   resizing in Ray tasks, the CLIP actor pool, Parquet writes), timed from process start to exit, with the driver's
   RSS sampled every 0.2 s. Also prints the job's own embedding-stage rate (without Ray start-up and todo listing).
Prints both rates and their ratio (goal on a 2-core machine: >= 0.8), and the driver's peak RSS.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import prepare, run_sampled  # noqa: E402


def model_only(root: str, clip_model: str, threads: int, batch_size: int, photos: int = 2048) -> tuple[float, str]:
    import torch

    from showcase_core.encoders.clip import load_encoder
    from showcase_core.encoders.photos import decode_and_resize
    from showcase_core.store import Store

    torch.set_num_threads(threads)
    encoder = load_encoder(model=clip_model, device="cpu")
    uris = Store.open(root).read_table("images").column("uri").to_pylist()[:photos]
    pixels = np.stack([decode_and_resize(open(u, "rb").read(), encoder.image_size) for u in uris])
    encoder.encode_pixels(pixels[:batch_size])  # warm-up
    done, started = 0, time.monotonic()
    while time.monotonic() - started < 20 or done < len(pixels):
        for i in range(0, len(pixels), batch_size):
            encoder.encode_pixels(pixels[i:i + batch_size])
            done += len(pixels[i:i + batch_size])
    return done / (time.monotonic() - started), encoder.encoder_id


def whole_job(root: str, clip_model: str, encoder_id: str, threads: int, batch_size: int) -> dict:
    shutil.rmtree(os.path.join(root, "embeddings", encoder_id), ignore_errors=True)
    result = run_sampled(["jobs.embed", "--root", root, "--clip-model", clip_model, "--kinds", "images",
                          "--threads-per-actor", str(threads), "--batch-size", str(batch_size)], every=0.5, tree=False)
    if result["returncode"]:
        raise SystemExit("embed failed:\n" + "".join(result["lines"][-40:]))
    wall, peak = result["wall"], result["driver"]
    report_path = sorted(glob.glob(os.path.join(root, "reports", "embed", "*.json")))[-1]
    with open(report_path) as f:
        report = json.load(f)
    counts = report["counts"]["this_run"]["images"]
    return {"wall": wall, "images": counts["embedded"] + counts["quarantined"], "stage_rate": counts["per_second"],
            "peak_rss": peak, "report_peak_rss_mb": report["peak_driver_rss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mini", choices=["mini", "large"])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--clip-model", default="showcase-tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="embed-perf-")
    root = prepare(workdir, args.size)

    model_rate, encoder_id = model_only(root, args.clip_model, args.threads, args.batch_size)
    job = whole_job(root, args.clip_model, encoder_id, args.threads, args.batch_size)
    job_rate = job["images"] / job["wall"]
    print(f"model:                    {args.clip_model} ({encoder_id}), batch {args.batch_size}, {args.threads} torch threads")
    print(f"model-only forward:       {model_rate:8.1f} images/s (photos decoded beforehand)")
    print(f"whole embed job:          {job_rate:8.1f} images/s ({job['images']:,} photos in {job['wall']:.1f}s, "
          f"Ray start-up included)")
    print(f"embed stage of the job:   {job['stage_rate']:8.1f} images/s (the job's own timing of the Ray Data pipeline)")
    print(f"ratio whole job / model:  {job_rate / model_rate:.2f}   (goal >= 0.8)")
    print(f"ratio stage / model:      {job['stage_rate'] / model_rate:.2f}")
    print(f"driver peak RSS:          {job['peak_rss'] / 2**20:.0f} MiB sampled, {job['report_peak_rss_mb']:.0f} MiB "
          f"seen by the job itself, for {job['images']:,} photos")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

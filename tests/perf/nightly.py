"""Nightly throughput and memory: the job vs a naive one-pair-at-a-time loop with the same models, same run.

    .venv/bin/python tests/perf/nightly.py [--workdir DIR] [--sizes 10000,100000] [--naive-pairs 200]

1. Makes (or reuses) the large world in --workdir, ingests it, embeds photos and texts with ``showcase-tiny`` and
   trains a DPP (img+text) for one epoch and a default-size PC²L generator for ten epochs on the mini world (same
   showcase-tiny features). Both sides of the comparison use them. Their quality matters only in that the
   generator writes explanations of a sentence or two, as a trained one does: generation's cost grows with their
   length, which the job prints (words an explanation) with the writers' time by phase.
2. Naive loop: the same feature rows and models in this process, ``ShowcaseAssembler.assemble([pair])`` one pair at
   a time over --naive-pairs random pairs (their inputs looked up before the clock starts): pairs/s.
3. Job: ``python -m jobs.nightly`` over N distinct random (user, business) pairs for each N in --sizes, timed from
   process start to exit, the driver's RSS sampled every 0.2 s; also the job's own showcase-stage rate.
Prints the rates, the ratio job/naive (goal >= 10x) and the driver's peak RSS at each size with their ratio (goal:
the largest within 1.25x of the smallest).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import prepare  # noqa: E402
from measure import run_sampled  # noqa: E402

from showcase_core import registry  # noqa: E402


def job(*args: str) -> None:
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"  {args[0]}: {time.monotonic() - t:.0f}s", flush=True)


def trained_root(workdir: str) -> tuple[str, str]:
    from showcase_core.encoders.clip import load_encoder
    from showcase_core.store import Store

    root = prepare(workdir, "large")
    encoder_id = load_encoder(model="showcase-tiny").encoder_id
    store = Store.open(root)
    job("jobs.embed", "--root", root, "--clip-model", "showcase-tiny", "--threads-per-actor", "2")
    if not store.exists(f"features/{encoder_id}/_FEATURES.json"):
        job("jobs.features", "--root", root, "--encoder", encoder_id)
    if not registry.is_published(store, "dpp"):
        job("jobs.train_dpp", "--root", root, "--encoder", encoder_id, "--epochs", "1", "--modalities", "img+text",
            "--batch-size", "256")
    if not registry.is_published(store, "pc2l"):
        # the generator is trained on the mini world (one epoch of the large one is ~3k steps on 2 cores); it reads
        # the same showcase-tiny features, so the large ROOT's registry points at it
        mini = prepare(workdir, "mini")
        job("jobs.embed", "--root", mini, "--clip-model", "showcase-tiny", "--threads-per-actor", "2")
        job("jobs.features", "--root", mini, "--encoder", encoder_id)  # train_pc2l reads the history from them
        # 10 epochs: the generator writes sentences like the world's reviews (about 7 words). After 2 it wrote "..."
        # or "!!! and!!" (2 words), its beam search ended after a few tokens, and the ratio measured little generation
        job("jobs.train_pc2l", "--root", mini, "--encoder", encoder_id, "--epochs", "10", "--variants", "pc2l",
            "--eval-every", "100")
        trained = registry.latest(Store.open(mini), "pc2l")
        registry.publish(store, "pc2l", trained.version, trained.uri, trained.encoder_id, variants=trained.variants)
    return root, encoder_id


def random_pairs(root: str, n: int, seed: int) -> list[dict]:
    from showcase_core.store import Store

    reviews = Store.open(root).read_table("reviews", ["user_id", "business_id"])
    users = sorted(set(reviews.column("user_id").to_pylist()))
    businesses = sorted(set(reviews.column("business_id").to_pylist()))
    if n > len(users) * len(businesses):
        raise SystemExit(f"only {len(users) * len(businesses):,} distinct pairs in this world")
    rng = np.random.default_rng(seed)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < n:
        need = n - len(chosen)
        chosen.update(zip(rng.integers(len(users), size=need).tolist(), rng.integers(len(businesses), size=need).tolist()))
    return [{"user_id": users[u], "business_id": businesses[b], "score": 1.0} for u, b in sorted(chosen)][:n]


def naive_rate(root: str, pairs: list[dict]) -> float:
    from showcase_core.features import FeatureLookup
    from showcase_core.showcase import ShowcaseAssembler, check_pairs
    from showcase_core.store import Store

    store = Store.open(root)
    dpp, pc2l = registry.latest(store, "dpp"), registry.latest(store, "pc2l")
    lookup = FeatureLookup(store, dpp.encoder_id)
    import torch

    torch.set_num_threads(2)
    assembler = ShowcaseAssembler(dpp.variant("img+text"), pc2l.variant("pc2l"))
    good, _ = check_pairs(pairs, lookup.rows("users", [p["user_id"] for p in pairs]),
                          lookup.rows("businesses", [p["business_id"] for p in pairs]), lookup.dim,
                          assembler.max_history)
    started = time.monotonic()
    for p in good:
        assembler.assemble([p], "naive", "now")
    return len(good) / (time.monotonic() - started)


def explanation_words(root: str, i: int) -> float:
    """Mean words of the explanations the job wrote for its i-th size (how much the generator generated)."""
    from showcase_core import tables as delta
    from showcase_core.store import Store

    texts = delta.read(Store.open(root), "showcases", columns=["explanation"],
                       filters=[("dt", "=", f"2030-01-{i + 1:02d}")]).column("explanation").to_pylist()
    return float(np.mean([len((t or "").split()) for t in texts])) if texts else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=None, help="reuse a folder (its world, ROOT and models) across runs")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--naive-pairs", type=int, default=200)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="nightly-perf-")
    os.makedirs(workdir, exist_ok=True)
    root, _ = trained_root(workdir)
    sizes = [int(s) for s in args.sizes.split(",")]

    naive = naive_rate(root, random_pairs(root, args.naive_pairs, seed=99))
    print(f"naive loop (one pair at a time, same models): {naive:.1f} pairs/s over {args.naive_pairs} pairs", flush=True)
    results = {}
    for i, n in enumerate(sizes):
        path = os.path.join(workdir, f"candidates-{n}.parquet")
        pq.write_table(pa.Table.from_pylist(random_pairs(root, n, seed=i)), path)
        sampled = run_sampled(["jobs.nightly", "--root", root, "--candidates", path, "--date", f"2030-01-{i + 1:02d}",
                               "--force", "true"], tree=False)
        if sampled["returncode"]:
            raise SystemExit("".join(sampled["lines"][-40:]))
        stage = re.search(r"\(([\d.]+) pairs/s\)", "".join(sampled["lines"]))
        writers = re.search(r"writers' time: (.*)", "".join(sampled["lines"]))
        results[n] = {"wall_rate": n / sampled["wall"], "stage_rate": float(stage.group(1)) if stage else float("nan"),
                      "driver_mb": sampled["driver"] / 2**20, "wall": sampled["wall"]}
        r = results[n]
        print(f"job, {n:,} pairs: {r['wall']:.0f}s wall -> {r['wall_rate']:.1f} pairs/s (start-up included), "
              f"showcase stage {r['stage_rate']:.1f} pairs/s; driver peak RSS {r['driver_mb']:.0f} MiB; writers' "
              f"time: {writers.group(1).strip() if writers else '?'}; {explanation_words(root, i):.1f} words an "
              "explanation", flush=True)
    largest = results[max(sizes)]
    print(f"\nratio job/naive: {largest['wall_rate'] / naive:.1f}x wall, {largest['stage_rate'] / naive:.1f}x stage "
          f"(goal >= 10x); driver RSS {max(sizes):,} vs {min(sizes):,} pairs: "
          f"{largest['driver_mb'] / results[min(sizes)]['driver_mb']:.2f}x (goal <= 1.25x)")


if __name__ == "__main__":
    main()

"""A local Ray instance's idle workers kept (``jobs.common.local_ray_env``) vs Ray's defaults, on the fixed costs of
small jobs.

    .venv/bin/python tests/perf/local_workers.py [--workdir DIR] [--rounds 2]

On the tiny world (made, ingested, embedded with features and given small DPP and PC²L models once in --workdir, a
new temporary folder unless given), each round runs, in one process per setting (a Ray instance of 2 CPUs each, one
after the other): features, a nightly of the world's candidate pairs, train_dpp and train_pc2l, twice each, and
prints every job's seconds and their sum. Ray's defaults: as many idle workers kept as CPUs, the others killed after
1 s idle (``RAY_num_workers_soft_limit=-1``, ``RAY_idle_worker_killing_time_threshold_ms=1000``). Prints the kept /
defaults ratio of the sums per round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

RAY_DEFAULTS = {"RAY_num_workers_soft_limit": "-1", "RAY_idle_worker_killing_time_threshold_ms": "1000"}


def prepare(workdir: str) -> tuple[str, str]:
    """(ROOT, encoder id) of the tiny world with small models, made once in ``workdir``."""
    import ray

    from jobs import ingest
    from jobs.common import local_ray_env, run
    from showcase_core.data.world import make_world
    from showcase_core.encoders.clip import load_encoder
    from tests.conftest import embed_with_features, train_models

    root, encoder_id = os.path.join(workdir, "root-workers"), load_encoder(model="showcase-tiny").encoder_id
    if os.path.exists(os.path.join(root, "models", "pc2l")):
        return root, encoder_id
    world = os.path.join(workdir, "world-workers")
    make_world(world, "tiny", seed=11)
    local_ray_env()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"]) == 0
    embed_with_features(root)
    train_models(root, encoder_id)
    ray.shutdown()
    return root, encoder_id


def jobs_once(root: str, encoder_id: str, dates: str) -> dict:
    """Child side: the four jobs twice each in this process's Ray instance; {job: [seconds, seconds]}."""
    import ray

    from jobs import features, nightly, train_dpp, train_pc2l
    from jobs.common import local_ray_env, run
    from tests.conftest import SMALL_BUCKETS, SMALL_PC2L
    from tests.integration.test_nightly import candidate_pairs, write_candidates

    local_ray_env()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    pairs, _, _ = candidate_pairs(root, cross=4)
    candidates = write_candidates(os.path.join(os.path.dirname(root), "workers-candidates.parquet"), pairs)
    seconds: dict = {}

    def timed(name, main, args):
        started = time.monotonic()
        if run(name, main, args) != 0:
            raise SystemExit(f"{name} failed")
        seconds.setdefault(name, []).append(round(time.monotonic() - started, 2))

    for i in range(2):
        timed("features", features.main, ["--root", root, "--encoder", encoder_id, *SMALL_BUCKETS])
        timed("nightly", nightly.main, ["--root", root, "--candidates", candidates, "--date", f"{dates}-{i + 1:02d}"])
        timed("train_dpp", train_dpp.main, ["--root", root, "--encoder", encoder_id, "--epochs", "1", "--modalities",
                                            "img+text", "--cpus-per-worker", "1"])
        timed("train_pc2l", train_pc2l.main, ["--root", root, "--encoder", encoder_id, *SMALL_PC2L])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="reused between runs when given (default: a new one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "ENCODER", "DATES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("SECONDS " + json.dumps(jobs_once(*args.child)), flush=True)
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="workers-perf-")
    os.makedirs(workdir, exist_ok=True)
    root, encoder_id = prepare(workdir)
    month = int(time.time()) % 600  # a fresh year-month per run of this script: every nightly has a date to publish
    for round_ in range(args.rounds):
        sums = {}
        for setting, env in (("defaults", RAY_DEFAULTS), ("kept", {})):
            month += 1
            dates = f"{2000 + month // 12:04d}-{month % 12 + 1:02d}"
            child = subprocess.run([sys.executable, __file__, "--child", root, encoder_id, dates], cwd=REPO,
                                   env={**os.environ, **env}, capture_output=True, text=True)
            line = [x for x in child.stdout.splitlines() if x.startswith("SECONDS ")]
            if child.returncode or not line:
                raise SystemExit(child.stdout[-2000:] + child.stderr[-3000:])
            seconds = json.loads(line[0].split(" ", 1)[1])
            sums[setting] = sum(sum(v) for v in seconds.values())
            print(f"round {round_ + 1} {setting}: {json.dumps(seconds)}; sum {sums[setting]:.1f} s", flush=True)
        print(f"round {round_ + 1}: kept / defaults = {sums['kept'] / sums['defaults']:.2f}", flush=True)


if __name__ == "__main__":
    main()

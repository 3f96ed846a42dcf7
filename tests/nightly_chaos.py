"""The nightly on a three-node local Ray cluster (``ray.cluster_utils.Cluster``) that loses a worker node mid-run
while its ShowcaseWriter actors are killed at random times; prints one JSON line of what happened.

``python tests/nightly_chaos.py ROOT CANDIDATES DATE RUN_ID [--kills N] [--seed S]``. A script of its own, since a
process holds one Ray instance and the test session's is a single node. The job runs as ``python -m jobs.nightly``
with RAY_ADDRESS set to the cluster's head, as a submitted job would. The head node (the driver's) stays and has no
CPU for work, as on a production cluster, so every task and writer runs on the two worker nodes, one of which goes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

import psutil

PAIRS_PER_PART = 2  # many small parts: the kills land between parts of one run
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def writers(pids_of_node: set[int] | None = None) -> list[int]:
    """The pids of live ShowcaseWriter actor processes (of any node, or of the given node's processes)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if "ShowcaseWriter" in " ".join(p.info["cmdline"] or []):
            if pids_of_node is None or p.info["pid"] in pids_of_node:
                found.append(p.info["pid"])
    return found


def node_processes(node) -> set[int]:
    """Every process of a cluster_utils node: its raylet and the workers the raylet started."""
    pids = set()
    for info in node.all_processes.get("raylet", []):
        try:
            raylet = psutil.Process(info.process.pid)
            pids |= {raylet.pid} | {c.pid for c in raylet.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    return pids


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("root", "candidates", "date", "run_id"):
        parser.add_argument(name)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=400)
    parser.add_argument("--log", help="a file for the job's whole output (the JSON line holds its tail)")
    args = parser.parse_args()
    from ray.cluster_utils import Cluster
    from showcase_core.store import Store
    from jobs.nightly import list_run_parts

    rng = random.Random(args.seed)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    job = subprocess.Popen([sys.executable, "-m", "jobs.nightly", "--root", args.root, "--candidates", args.candidates,
                            "--date", args.date, "--run-id", args.run_id, "--pairs-per-part", str(PAIRS_PER_PART),
                            "--batch-size", "2"],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    store, events, started = Store.open(args.root), [], time.monotonic()

    def parts_written() -> int:
        return len(list_run_parts(store, args.date, args.run_id))

    try:
        deadline = started + args.timeout
        # the lost node: a worker node as soon as it holds a writer (mid-run: the writers load their models, then
        # write parts; on this tiny input the parts all follow within seconds, so nothing waits for a part)
        hosting, counts = started + 120, [0] * len(workers)
        while job.poll() is None and time.monotonic() < hosting and not any(counts):
            time.sleep(0.05)
            counts = [len(writers(node_processes(n))) for n in workers]
        victim, had = max(zip(workers, counts), key=lambda pair: pair[1])
        cluster.remove_node(victim, allow_graceful=False)
        events.append({"at_s": round(time.monotonic() - started, 1), "event": "node_removed", "writers_on_it": had,
                       "parts_written": parts_written()})
        # then each kill a random 0.1-1 s later, of whichever writer is alive then (a killed writer is restarted)
        kills = 0
        while kills < args.kills and job.poll() is None and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.1, 1.0))
            live = writers()
            if live:
                pid = rng.choice(live)
                os.kill(pid, signal.SIGKILL)
                kills += 1
                events.append({"at_s": round(time.monotonic() - started, 1), "event": "writer_killed", "pid": pid,
                               "parts_written": parts_written()})
        try:
            out, _ = job.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            job.kill()
            out, _ = job.communicate()
    finally:
        cluster.shutdown()
    if args.log:
        with open(args.log, "w") as f:
            f.write(out)
    print(json.dumps({"returncode": job.returncode, "events": events, "wall_s": round(time.monotonic() - started, 1),
                      "output_tail": out[-3000:]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

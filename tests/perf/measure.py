"""Run a job as its own process and sample its memory: shared by the benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_sampled(args: list[str], every: float = 0.2, tree: bool = True) -> dict:
    """``python -m <args>`` in the repo; returns rc, output lines, wall seconds and peak RSS (bytes) of the driver,
    the largest Ray worker and the whole process tree (``tree=False``: the driver alone, a cheaper sample that steals
    less CPU from a throughput measurement)."""
    started = time.monotonic()
    proc = psutil.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    peaks = {"driver": 0, "largest_worker": 0, "tree": 0}
    while proc.poll() is None:
        try:
            driver = proc.memory_info().rss
            children = proc.children(recursive=True) if tree else []
        except psutil.NoSuchProcess:
            break
        total, worker = driver, 0
        for child in children:
            try:
                rss, cmd = child.memory_info().rss, " ".join(child.cmdline())
            except psutil.NoSuchProcess:
                continue
            total += rss
            if "default_worker.py" in cmd or cmd.startswith("ray::"):
                worker = max(worker, rss)
        peaks = {"driver": max(peaks["driver"], driver), "largest_worker": max(peaks["largest_worker"], worker),
                 "tree": max(peaks["tree"], total)}
        time.sleep(every)
    reader.join(5)
    return {"returncode": proc.returncode, "lines": lines, "wall": time.monotonic() - started, **peaks}


def prepare(workdir: str, size: str) -> str:
    """A world of ``size`` in ``workdir``, ingested (each reused when already there); returns ROOT."""
    world, root = os.path.join(workdir, f"world-{size}"), os.path.join(workdir, f"root-{size}")
    if not os.path.exists(os.path.join(world, "world.json")):
        made = run_sampled(["jobs.make_world", "--out", world, "--size", size], tree=False)
        if made["returncode"]:
            raise SystemExit("".join(made["lines"][-20:]))
        print(f"world {size}: made in {made['wall']:.0f}s", flush=True)
    if not os.path.exists(os.path.join(root, "runs", "ingest.json")):
        ingested = run_sampled(["jobs.ingest", "--root", root, "--gest", os.path.join(world, "filter_all_t.json")],
                               tree=False)
        if ingested["returncode"]:
            raise SystemExit("".join(ingested["lines"][-20:]))
    return root

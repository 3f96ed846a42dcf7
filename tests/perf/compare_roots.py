"""Do two runs agree? ``python tests/perf/compare_roots.py ROOT_A ROOT_B`` compares every value of every stage's
reports (``ROOT/reports/<stage>/*.json``, in run order) of two ROOTs that ran the same jobs, e.g. two
``python -m jobs.demo --root A --world WA`` runs: metrics, counts, settings, encoder ids, versions of tables. It
leaves out what differs between any two runs: times, speeds, memory, run ids, paths, package versions. Prints how many
values it compared and each one that differs; exit status 1 when any does.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

# keys whose values differ between any two runs of the same jobs
RUN_SPECIFIC = re.compile(r"time|seconds|_at$|_s$|run_id|per_second|rss|^root$|uri|path|file|dir|log|versions",
                          re.IGNORECASE)
RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def comparable(value, root: str):
    """``value`` without its run-specific keys, with ``root`` and run ids in strings replaced by placeholders."""
    if isinstance(value, dict):
        return {k: comparable(v, root) for k, v in value.items() if not RUN_SPECIFIC.search(k)}
    if isinstance(value, list):
        return [comparable(v, root) for v in value]
    if isinstance(value, str):
        return RUN_ID.sub("RUN", value.replace(root, "ROOT"))
    return value


def flattened(value, prefix: str = ""):
    """(dotted path, leaf value) of every leaf."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from flattened(v, f"{prefix}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from flattened(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def report_values(root: str) -> dict:
    """{path: value} of the ROOT's reports, each stage's in the order its runs started (their file names)."""
    root = root.rstrip("/")
    stages = sorted(glob.glob(os.path.join(root, "reports", "*")))
    if not stages:
        raise SystemExit(f"compare_roots: no reports under {root}/reports (is it a local ROOT that ran jobs?)")
    reports = {os.path.basename(stage): [comparable(json.load(open(f)), root)
                                         for f in sorted(glob.glob(os.path.join(stage, "*.json")))]
               for stage in stages}
    return dict(flattened(reports))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs=2, metavar="ROOT")
    args = parser.parse_args(argv)
    a, b = (report_values(root) for root in args.roots)
    differing = [key for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    print(f"{len(set(a) | set(b)):,} values compared, {len(differing):,} differ")
    for key in differing:
        print(f"{key}: {a.get(key, '(absent)')!r} vs {b.get(key, '(absent)')!r}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())

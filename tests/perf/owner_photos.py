"""Owner photos on S3: checking each row's photo with one HEAD at a time vs a thousand ids at a time, same run.

    .venv/bin/python tests/perf/owner_photos.py [--rows 3000]

Starts a SeaweedFS S3 server (as the tests do), uploads a photo for every other row of an owner-photos file of
--rows rows, and validates the file as ingest does, twice: ``read_owner_photos`` asking a ``PhotoLookup`` one row at
a time (ingest before), and ``photos_present`` + ``read_owner_photos`` (ingest now). Prints both times, their ratio,
and whether the two gave the same table and quarantine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from showcase_core.data.ingest import PhotoLookup  # noqa: E402
from showcase_core.data.owner_photos import photos_present, read_owner_photos  # noqa: E402
from tests import seaweed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="owner-photos-perf-")
    server = seaweed.start(workdir)
    try:
        os.environ.update(server.env)
        fs = server.filesystem()
        server.create_bucket("perf")
        with ThreadPoolExecutor(16) as pool:  # the photos of the even rows
            list(pool.map(lambda i: fs.open_output_stream(f"perf/images/p{i}.jpg").close(), range(0, args.rows, 2)))
        data = "\n".join(json.dumps({"business_id": "b", "pic_id": f"p{i}"}) for i in range(args.rows)).encode()
        images = "s3://perf/images"

        started = time.monotonic()
        one_a_row = read_owner_photos(io.BytesIO(data), "o.jsonl", {"b"}, PhotoLookup(images), images)
        one_a_row_s = time.monotonic() - started
        started = time.monotonic()
        present = photos_present(io.BytesIO(data), {"b"}, PhotoLookup(images))
        batched = read_owner_photos(io.BytesIO(data), "o.jsonl", {"b"}, present, images)
        batched_s = time.monotonic() - started
        same = batched["table"].equals(one_a_row["table"]) and batched["quarantine"] == one_a_row["quarantine"]
        print(f"{args.rows:,} owner-photo rows, {batched['table'].num_rows:,} photos there, "
              f"{len(batched['quarantine']):,} quarantined (owner_photo_missing)")
        print(f"one HEAD a row:          {one_a_row_s:7.2f} s ({args.rows / one_a_row_s:8.0f} rows/s)")
        print(f"a thousand ids at once:  {batched_s:7.2f} s ({args.rows / batched_s:8.0f} rows/s)")
        print(f"speed-up: {one_a_row_s / batched_s:.1f}x; same table and quarantine: {same}")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

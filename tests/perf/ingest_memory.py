"""Peak memory of ingesting a ~1 GB Gest-raw JSON-lines file (prints figures; not a pass/fail test).

    .venv/bin/python tests/perf/ingest_memory.py [--gb 1.0] [--photos 2000] [--workdir DIR] [--plan-bucket-rows N]

Generates a raw-format file of the requested size (users with several reviews, 0.1% bad lines, photos from a pool
of ``--photos`` small JPEGs that exist on disk, and one reference in a thousand to a photo that does not), runs
``python -m jobs.ingest`` on it as its own process (with ``--plan-bucket-rows`` when given), and samples the RSS of
that process tree every 0.2 s: the driver, the largest single Ray worker, and the whole tree (Ray's own daemons too).
Goal from the foundation issue: under 2 GiB peak. A workdir that already holds the file and the photos is reused.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import run_sampled  # noqa: E402
WORDS = ("the ramen was rich and the service was quick we will come back for the gyoza and the tacos "
         "parking was easy staff were friendly prices are fair great place overall").split()


def write_world(path: str, images: str, target_bytes: int, photos: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    os.makedirs(images, exist_ok=True)
    pics = [f"pic{i:07d}" for i in range(photos)]
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 80, 40)).save(buf, "JPEG")
    for p in pics:
        with open(os.path.join(images, f"{p}.jpg"), "wb") as f:
            f.write(buf.getvalue())
    pics += [f"gone{i:07d}" for i in range(photos // 1000 + 1)]  # referenced, never written
    n = 0
    written = 0
    with open(path, "w") as f:
        while written < target_bytes:
            if n % 1000 == 999:
                line = '{"user_id": "broken", "rating": 5, "review_text": "cut'
            else:
                text = " ".join(rng.choices(WORDS, k=rng.randint(20, 60)))
                urls = ", ".join(f'{{"url": ["https://h.invalid/p/{p}=w150-h150"]}}'
                                 for p in rng.sample(pics, rng.randint(1, 3)))
                line = (f'{{"business_id": "b{rng.randrange(50000)}", "user_id": "u{rng.randrange(400000)}", '
                        f'"rating": {rng.randint(1, 5)}, "review_text": {json.dumps(text)}, "pics": [{urls}]}}')
            f.write(line + "\n")
            written += len(line) + 1
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--plan-bucket-rows", type=int, default=0)
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="ingest-perf-")
    source, images, root = (os.path.join(work, n) for n in ("image_review_all.json", "images", "root"))
    t0 = time.monotonic()
    if not os.path.exists(source):
        lines = write_world(source, images, int(args.gb * (1 << 30)), args.photos)
        print(f"generated {os.path.getsize(source) / (1 << 30):.2f} GiB, {lines:,} lines, {args.photos:,} photos in "
              f"{time.monotonic() - t0:.0f}s", flush=True)
    size = os.path.getsize(source)
    shutil.rmtree(root, ignore_errors=True)
    extra = ["--plan-bucket-rows", str(args.plan_bucket_rows)] if args.plan_bucket_rows else []
    result = run_sampled(["jobs.ingest", "--root", root, "--gest", source, *extra])
    wall, peaks = result["wall"], result
    if result["returncode"] != 0:
        print("".join(result["lines"][-40:]))
        raise SystemExit(f"ingest failed with exit code {result['returncode']}")
    reports = os.listdir(os.path.join(root, "reports", "ingest"))
    with open(os.path.join(root, "reports", "ingest", reports[0])) as f:
        counts = json.load(f)["counts"]
    gib = 1 << 30
    print(f"input:                 {size / gib:.2f} GiB, {counts['records_in']:,} records")
    print(f"output:                {counts['reviews_out']:,} reviews, {counts['images_out']:,} images, "
          f"quarantined {counts['quarantined_by_reason']}")
    print(f"wall time:             {wall:.1f} s ({counts['records_in'] / wall:,.0f} records/s, "
          f"{size / wall / (1 << 20):.1f} MiB/s)")
    print(f"peak RSS driver:       {peaks['driver'] / gib:.3f} GiB")
    print(f"peak RSS one worker:   {peaks['largest_worker'] / gib:.3f} GiB")
    print(f"peak RSS whole tree:   {peaks['tree'] / gib:.3f} GiB (driver + Ray daemons + all workers)")
    print(f"goal (< 2 GiB peak for the job's processes): driver {'OK' if peaks['driver'] < 2 * gib else 'MISSED'}, "
          f"largest worker {'OK' if peaks['largest_worker'] < 2 * gib else 'MISSED'}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

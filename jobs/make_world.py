"""Write a synthetic world in Gest format: ``python -m jobs.make_world --out DIR --size tiny|mini|large --seed N``.

Local output only (the photos are drawn here); copy it to S3 with any tool to ingest from there.
"""

from __future__ import annotations

import json
import sys
import time

from showcase_core.data.world import SIZES, make_world

from .common import Progress, UserError, parse_args, run

DEFAULTS = {"root": "-", "out": None, "size": "mini", "seed": 0, "plant_bad": True, "workers": 0}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("make_world", DEFAULTS, argv)
    if not cfg["out"]:
        raise UserError("--out DIR is required")
    if "://" in cfg["out"] and not cfg["out"].startswith("file://"):
        raise UserError(f"--out must be a local directory, got {cfg['out']}")
    if cfg["size"] not in SIZES:
        raise UserError(f"--size must be one of {', '.join(SIZES)}, got {cfg['size']!r}")
    out = cfg["out"].removeprefix("file://")
    progress = Progress("make_world", "photos drawn", 0)
    t0 = time.monotonic()

    def report(done: int, total: int) -> None:
        progress.total = total
        progress.update(done)

    summary = make_world(out, cfg["size"], cfg["seed"], plant_bad=cfg["plant_bad"],
                         workers=cfg["workers"] or None, progress=report)
    summary["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(summary))
    print(f"world written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run("make_world", main))

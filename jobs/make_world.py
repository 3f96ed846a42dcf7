"""Write a synthetic world in Gest format: ``python -m jobs.make_world --out DIR --size tiny|mini|large --seed N``.

Local output only (the photos are drawn here); copy it to S3 with any tool to ingest from there.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Literal

from pydantic import field_validator

from showcase_core.data.world import SIZES, make_world

from .common import Progress, SettingsBase, exit_process, parse_args, run, setting


class Settings(SettingsBase):
    """Write a synthetic world in Gest format (Gest-s2 JSON, aligned sentences, JPEG photos) to a local directory."""

    out: str = setting("", "the local directory to write the world to")
    size: Literal[tuple(SIZES)] = setting("mini", "how many businesses, users and reviews (showcase_core.data.world)")
    seed: int = setting(0, "seed of everything drawn")
    plant_bad: bool = setting(True, "add malformed records of every kind ingest quarantines")
    workers: int = setting(0, "processes drawing photos (0: one per CPU)", ge=0)
    low_quality: float = setting(0.1, "share of businesses with noise-only photos, and another with filler-only "
                                      "reviews (listed in world.json)", ge=0, le=0.5)

    @field_validator("out")
    @classmethod
    def _local_directory(cls, value: str) -> str:
        if not value:
            raise ValueError("--out DIR is required")
        if "://" in value and not value.startswith("file://"):
            raise ValueError(f"--out must be a local directory, got {value}")
        return value


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("make_world", Settings, argv)
    out = cfg.out.removeprefix("file://")
    progress = Progress("make_world", "photos drawn", 0)
    started = time.monotonic()

    def report(done: int, total: int) -> None:
        progress.total = total
        progress.update(done)

    summary = make_world(out, cfg.size, cfg.seed, plant_bad=cfg.plant_bad, workers=cfg.workers or None,
                         progress=report, low_quality=cfg.low_quality)
    summary["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(summary))
    print(f"world written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    exit_process(run("make_world", main))

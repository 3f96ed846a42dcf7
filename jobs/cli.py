"""``showcase <stage> ...``: one entry point for every job (each is also ``python -m jobs.<stage>``).

``showcase`` alone lists the stages; ``showcase <stage> --help`` is the stage's own: every setting with its meaning,
default and range.
"""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

STAGES = {
    "make_world": "write a synthetic world in Gest format",
    "ingest": "validate Gest files into the Delta tables ROOT/tables/{reviews,images,quarantine,sentences,...}",
    "train_clip": "train or fine-tune the CLIP encoder on (photo, sentence) pairs (Ray Train)",
    "embed": "embed photos and texts with CLIP (Ray Data actor pool), resumable",
    "features": "the feature tables (users' profile inputs, businesses' ground sets) on Ray Data, committed once",
    "train_dpp": "train the DPP kernel models (img / text / img+text) for image-set selection (Ray Train)",
    "distill": "train the explanation classifier Φ; optionally distill explanation sentences from reviews",
    "train_pc2l": "train the PC²L explanation generator and its ablations (Ray Train, DeepSpeed optional)",
    "train_recommender": "train the candidate recommenders (popularity, BPR-MF, LightGCN, AlignRec, R2MR; Ray Train)",
    "recommend": "each user's top-N businesses by a trained recommender: the candidates table ROOT/candidates",
    "evaluate": "evaluation reports: dataset (Table 1, visual diversity), selection (Table 3), generation (Table 2/4)",
    "nightly": "showcases for every candidate pair of a date, committed once to the Delta table ROOT/showcases",
    "serve": "a Ray Serve HTTP endpoint for fresh showcases (and the newest date's precomputed ones)",
    "vacuum": "Delta maintenance of every table under ROOT: checkpoints, optional compaction, old and orphaned files",
    "gallery": "a static HTML page of a date's showcases (photos + explanations)",
    "demo": "the embedded default end to end on a synthetic world",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: showcase <stage> --root ROOT [--config FILE.yaml] [--key value ...]\n\nstages:")
        for name, what in STAGES.items():
            print(f"  {name:<12} {what}")
        print("\n`showcase <stage> --help` lists a stage's settings.")
        return 0 if argv else 2
    stage = argv[0].replace("-", "_")
    if stage not in STAGES:
        print(f"showcase: error: unknown stage {argv[0]!r} (known: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    module = importlib.import_module(f"jobs.{stage}")
    from .common import run

    return run(stage, module.main, argv[1:])


def command() -> NoReturn:
    """The ``showcase`` command: ``main``, then the job's process ends as ``python -m jobs.<stage>``'s does."""
    from .common import exit_process

    exit_process(main())


if __name__ == "__main__":
    command()

"""Held-out image->text Recall@1 of the from-scratch CLIP vs the pretrained towers, both trained by jobs.train_clip.

    .venv/bin/python tests/perf/encoders.py [--size mini] [--workdir DIR] [--encoders showcase-tiny,pretrained-towers]

1. Makes (or reuses) a world of --size in --workdir and ingests it.
2. Runs ``python -m jobs.train_clip --root ROOT --clip-model <encoder>`` once per encoder with the demo's settings (the
   job's defaults: 10 epochs of batch 32, lr 1e-3, one worker of 2 CPUs), each run timed from process start to exit.
3. Prints one Markdown table from each run's report: the held-out Recall@1 (entity match and exact sentence, each
   with its random baseline; see showcase_core.encoders.training), the parameters trained, the run's seconds (and of
   them, the first epoch's: for the towers, after their features are computed once) and the encoder id.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import prepare, run_sampled  # noqa: E402


def trained_parameters(encoder: str) -> int:
    from showcase_core.encoders.clip import load_encoder

    module = load_encoder(model=encoder, device="cpu").trainable_module
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def train(root: str, encoder: str) -> dict:
    """One train_clip run; its report (the newest under ROOT/reports/train_clip) and wall seconds."""
    result = run_sampled(["jobs.train_clip", "--root", root, "--clip-model", encoder], tree=False)
    if result["returncode"]:
        raise SystemExit(f"train_clip --clip-model {encoder} failed:\n" + "".join(result["lines"][-30:]))
    reports = os.path.join(root, "reports", "train_clip")
    with open(os.path.join(reports, sorted(os.listdir(reports))[-1])) as f:
        return {**json.load(f), "wall_s": result["wall"]}


def row(encoder: str, report: dict, parameters: int) -> str:
    m, first = report["metrics"], report["history"][0]
    return (f"| `{encoder}` | {m['heldout_recall_at_1_entity']:.3f} ({m['heldout_random_entity']:.3f}) | "
            f"{m['heldout_recall_at_1_exact']:.3f} ({m['heldout_random_exact']:.4f}) | {parameters:,} | "
            f"{report['wall_s']:.0f} ({first['seconds']:.1f}) | `{report['outputs']['encoder_id']}` |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mini", choices=["tiny", "mini", "large"])
    parser.add_argument("--workdir", default="")
    parser.add_argument("--encoders", default="showcase-tiny,pretrained-towers")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="perf-encoders-")
    started = time.monotonic()
    root = prepare(workdir, args.size)
    rows = []
    for encoder in args.encoders.split(","):
        report = train(root, encoder)
        print(f"{encoder}: {report['wall_s']:.0f}s", flush=True)
        rows.append(row(encoder, report, trained_parameters(encoder)))
    held_out = report["metrics"]
    print(f"\n{args.size} world, train_clip with the demo's settings; held-out image->text Recall@1 over "
          f"{held_out['heldout_photos']} val+test photos x {held_out['heldout_sentences']} sentences "
          f"(random baseline in brackets)\n")
    print("| encoder | Recall@1 entity | Recall@1 exact | parameters trained | train_clip s (1st epoch) | encoder id |")
    print("|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))
    print(f"\n(whole benchmark {time.monotonic() - started:.0f}s, workdir {workdir})")


if __name__ == "__main__":
    main()

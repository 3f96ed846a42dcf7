"""The generation table of issue 20 on a demo ROOT: the small from-scratch decoder over several seeds, the pretrained
SmolLM2-135M decoder, and the small decoder on the pretrained towers' features, all in one table scored by one ruler
(the from-scratch CLIP and Φ of the demo), through the real jobs.

``python tests/perf/generation_compare.py --root ROOT`` where ROOT is what ``make demo`` left (its train_pc2l is
seed 0 of the small decoder). It trains, in this order (the last one trained is the table's base, so it is a small
decoder on the demo's CLIP):

1. the pretrained towers (train_clip, embed, features) and the small decoder on their features (ce and pc2l);
2. the SmolLM2 decoder, frozen, gated cross-attention before its top 4 layers, max length 32 (ce and pc2l);
3. the small decoder with each of ``--seeds`` (ce and pc2l, the demo's settings);

then ``evaluate --stage generation --compare`` over all of them, and prints each stage's seconds and the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jobs import embed, evaluate, features, train_clip, train_pc2l  # noqa: E402
from jobs.common import run  # noqa: E402
from jobs.demo import PC2L_ARGS  # noqa: E402
from showcase_core import registry  # noqa: E402
from showcase_core.store import Store  # noqa: E402


def stage(timings: dict, name: str, main, argv: list[str]) -> None:
    started = time.monotonic()
    print(f"\n== {name}: showcase {main.__module__.split('.')[-1]} {' '.join(argv)}", flush=True)
    if run(name, main, argv) != 0:
        raise SystemExit(f"{name} failed")
    timings[name] = round(time.monotonic() - started, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="a ROOT that make demo built")
    parser.add_argument("--seeds", default="1,2", help="more seeds of the small decoder (the demo's is seed 0)")
    parser.add_argument("--smollm-epochs", type=int, default=16, help="epochs of the SmolLM2 decoder (each variant; "
                                                                        "about a minute each on 2 cores)")
    parser.add_argument("--smollm-lr", default="1e-3", help="its learning rate (only the new parts learn)")
    parser.add_argument("--smollm-args", default="", help="more train_pc2l flags for the SmolLM2 decoder")
    parser.add_argument("--skip", default="", help="comma-separated: towers, smollm, seeds (already trained)")
    parser.add_argument("--versions", default="", help="PC²L versions trained by a skipped step, to compare too")
    parser.add_argument("--ruler", default="", help="the encoder of the small decoder's seeds and SmolLM2 (default: "
                                                    "the latest PC²L's, the demo's CLIP)")
    parser.add_argument("--smollm-encoder", default="", help="the SmolLM2 decoder's encoder (default: the ruler)")
    args = parser.parse_args()
    store, timings, skip = Store.open(args.root), {}, set(filter(None, args.skip.split(",")))
    demo = registry.latest(store, "pc2l")  # the demo's: its encoder, the from-scratch CLIP, is the ruler
    ruler = args.ruler or demo.encoder_id  # (train_clip's towers become the latest CLIP: never ask the registry's)
    versions = [demo.version] + [v for v in args.versions.split(",") if v]
    if "towers" not in skip:
        stage(timings, "train_clip towers", train_clip.main, ["--root", args.root, "--clip-model", "pretrained-towers"])
        towers = registry.latest(store, "clip")
        stage(timings, "embed towers", embed.main, ["--root", args.root, "--encoder", towers.uri,
                                                    "--threads-per-actor", "2"])
        stage(timings, "features towers", features.main, ["--root", args.root, "--encoder", towers.encoder_id])
        stage(timings, "train_pc2l towers", train_pc2l.main, ["--root", args.root, "--encoder", towers.encoder_id,
                                                              *PC2L_ARGS])
        versions.append(registry.latest(store, "pc2l").version)
    if "smollm" not in skip:
        stage(timings, "train_pc2l smollm2", train_pc2l.main, [
            "--root", args.root, "--encoder", args.smollm_encoder or ruler, "--variants", "ce,pc2l",
            "--decoder", "smollm2-135m", "--epochs", str(args.smollm_epochs), "--max-length", "32",
            "--lr", args.smollm_lr, "--cross-attention-layers", "4", "--checkpoint-every", "2",
            "--eval-every", str(args.smollm_epochs), *args.smollm_args.split()])
        versions.append(registry.latest(store, "pc2l").version)
    for seed in ([] if "seeds" in skip else [s for s in args.seeds.split(",") if s]):
        stage(timings, f"train_pc2l seed {seed}", train_pc2l.main, ["--root", args.root, "--encoder", ruler,
                                                                    *PC2L_ARGS, "--seed", seed])
        versions.append(registry.latest(store, "pc2l").version)
    latest = registry.latest(store, "pc2l")
    compare = [v for v in versions if v != latest.version]
    stage(timings, "evaluate", evaluate.main, ["--root", args.root, "--stage", "generation",
                                               "--compare", ",".join(compare)])
    print("\nseconds per stage: " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    print(f"versions: latest {latest.version} (the base), compared {','.join(compare)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

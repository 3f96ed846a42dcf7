"""The paper's real architectures through the configuration path a user takes, on CPU:
``python tests/perf/realsize.py [--work DIR] [--pairs 20]``.

Not part of ``make perf`` (a few minutes here). It makes the tiny world, ingests it, then:

1. writes a ViT-B-32 checkpoint file with open_clip (random weights: no download) and embeds every photo and text with
   ``jobs.embed --clip-model ViT-B-32 --clip-pretrained FILE``;
2. writes a GPT-2 small directory with transformers (``GPT2Config``: 12 layers, width 768, 12 heads, vocabulary 50,257,
   random weights) with a byte-level BPE tokenizer trained on the world's reviews saved beside it (asked for 50,257
   tokens; a small world has fewer distinct merges, and the size it reached is printed);
3. trains the smallest DPP (``jobs.train_dpp``, needed by the nightly) and two PC²L steps with that decoder
   (``jobs.train_pc2l --gpt2-path DIR --epochs 1``, a batch of half the training examples);
4. runs ``jobs.nightly`` with that PC²L on ``--pairs`` test pairs.

It checks what came out (512-d ViT-B-32 embeddings of every photo, a PC²L whose decoder is the directory's GPT-2
small, an explanation for every pair) and prints one line per job: photos/s, step time, pairs/s, and the peak RSS of
the job's driver and of its largest Ray worker. With ``--json FILE`` it also writes them as JSON.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from measure import run_sampled  # noqa: E402

from tests.realsize_models import write_gpt2_small, write_vit_b_32  # noqa: E402


def job(name: str, args: list[str], figures: dict, **extra) -> dict:
    out = run_sampled([f"jobs.{name}", *args])
    if out["returncode"] != 0:
        raise SystemExit(f"jobs.{name} failed ({out['returncode']}):\n{''.join(out['lines'])[-4000:]}")
    figures[name] = {"wall_s": round(out["wall"], 1), "driver_peak_mib": round(out["driver"] / 2**20),
                     "largest_worker_peak_mib": round(out["largest_worker"] / 2**20), **extra}
    return out


def report_of(root: str, stage: str) -> dict:
    [path] = sorted(glob.glob(os.path.join(root, "reports", stage, "*.json")))[-1:]
    with open(path) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="", help="working folder (default: a new temporary one)")
    parser.add_argument("--pairs", type=int, default=20, help="candidate pairs of the nightly")
    parser.add_argument("--max-length", type=int, default=32, help="PC²L target tokens at most")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args(argv)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from showcase_core.data.world import make_world
    from showcase_core.encoders.embed import read_embeddings
    from showcase_core.showcase import read_showcases
    from showcase_core.store import Store

    work = args.work or tempfile.mkdtemp(prefix="realsize-")
    world, root = os.path.join(work, "world"), os.path.join(work, "root")
    summary = make_world(world, "tiny", seed=11)
    figures: dict = {"world": {k: summary[k] for k in ("photos", "owner_photos", "reviews", "users", "businesses")}}
    job("ingest", ["--root", root, "--gest", f"{world}/filter_all_t.json"], figures)

    weights = write_vit_b_32(os.path.join(work, "vit-b-32-random.pt"))
    job("embed", ["--root", root, "--clip-model", "ViT-B-32", "--clip-pretrained", weights], figures)
    embed = report_of(root, "embed")
    encoder_id = embed["encoder_id"]
    images = embed["counts"]["this_run"]["images"]
    figures["embed"].update(encoder_id=encoder_id, photos=images["embedded"], photos_per_s=images["per_second"])
    job("features", ["--root", root, "--encoder", encoder_id], figures)

    reviews = Store.open(root).read_table("reviews", ["review_text", "split", "user_id", "business_id"])
    gpt2 = os.path.join(work, "gpt2-small")
    figures["gpt2_small"] = write_gpt2_small(gpt2, reviews.column("review_text").to_pylist())
    job("train_dpp", ["--root", root, "--encoder", encoder_id, "--epochs", "1", "--modalities", "img+text",
                      "--cpus-per-worker", "1"], figures)
    train_examples = count_train_examples(root, encoder_id)
    batch = max(2, math.ceil(train_examples / 2))  # two optimizer steps
    job("train_pc2l", ["--root", root, "--encoder", encoder_id, "--gpt2-path", gpt2, "--variants", "pc2l",
                       "--epochs", "1", "--batch-size", str(batch), "--max-length", str(args.max_length),
                       "--eval-examples", "4", "--cpus-per-worker", "1"], figures)
    card = pc2l_card(root)
    epoch = card["history"][0]
    steps = math.ceil(epoch["examples"] / batch)
    figures["train_pc2l"].update(parameters=card["parameters"], batch=batch, steps=steps,
                                 step_s=round(epoch["seconds"] / steps, 2), decoder=card["decoder"])
    shape = {k: card["decoder"][k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")}
    assert shape == {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "vocab_size": 50257}, \
        card["decoder"]
    assert card["training"]["model"]["gpt2_path"] == gpt2

    # candidates: each user with each business, users in turn, up to --pairs (the nightly explains any known pair)
    users, businesses = sorted(set(reviews.column("user_id").to_pylist())), sorted(set(reviews.column("business_id")
                                                                                        .to_pylist()))
    pairs = [(u, b) for i in range(len(businesses)) for u in users for b in businesses[i:i + 1]][:args.pairs]
    candidates = os.path.join(work, "candidates.parquet")
    pq.write_table(pa.table({"user_id": [u for u, _ in pairs], "business_id": [b for _, b in pairs]}), candidates)
    out = job("nightly", ["--root", root, "--candidates", candidates, "--date", "2026-01-01"], figures)
    said = "".join(out["lines"])
    rate = re.search(r"published ([\d,]+) showcases for \S+ \(([\d.]+) pairs/s\)", said)
    figures["nightly"].update(pairs=len(pairs), showcases=int(rate[1].replace(",", "")) if rate else None,
                              pairs_per_s=float(rate[2]) if rate else None)
    published = read_showcases(root, "2026-01-01", columns=["explanation"])
    assert published.num_rows == figures["nightly"]["showcases"] == len(pairs), (published.num_rows, len(pairs))
    assert all(published.column("explanation").to_pylist()), "a showcase without an explanation"
    images = read_embeddings(Store.open(root), encoder_id, "images")
    assert images.num_rows == images_expected(summary) and len(images.column("embedding")[0]) == 512  # ViT-B-32's
    for name, values in figures.items():
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in values.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


def images_expected(summary: dict) -> int:
    return summary["photos"] + summary["owner_photos"]


def count_train_examples(root: str, encoder_id: str) -> int:
    from showcase_core.generation.data import load_generation_examples
    from showcase_core.generation.model import DEFAULT_CONFIG
    from showcase_core.store import Store

    splits, _ = load_generation_examples(Store.open(root), encoder_id, "sentences", ("train",),
                                         DEFAULT_CONFIG["max_photos"], DEFAULT_CONFIG["max_history"])
    return len(splits["train"])


def pc2l_card(root: str) -> dict:
    [path] = glob.glob(os.path.join(root, "models", "pc2l", "*", "pc2l", "card.json"))
    with open(path) as f:
        return json.load(f)


if __name__ == "__main__":
    sys.exit(main())

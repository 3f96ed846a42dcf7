"""Train the PC²L explanation generator: ``python -m jobs.train_pc2l --root ROOT [--variants pc2l] [...]``.

Driver: builds the examples (``showcase_core.generation.data``) from the tables and CLIP embeddings, trains the
tokenizer (or takes GPT-2's from ``--gpt2-path``), and computes the entity-swapped negatives with spaCy once. Then,
per variant (the paper's ablation: ce, ce+ccl, ce+pcl, pc2l), the shared harness trains on Ray Train workers: DeepSpeed
with ``--deepspeed-config`` (ZeRO stage and bf16 from that file; gloo on CPU), DDP otherwise; a checkpoint per epoch
(local or S3), resume after a failure. Per-epoch loss components, validation cross-entropy, and every
``eval_every`` epochs greedy-decoded validation explanations scored for grounding and BLEU-4.
Models: ``ROOT/models/pc2l/<version>/<variant>/`` and ``ROOT/models/pc2l/_LATEST.json``.
"""

from __future__ import annotations

import math
import sys
import time

from showcase_core.store import Store, StoreError, new_run_id, utc_now

from . import harness
from .common import Timer, UserError, new_report, open_store, parse_args, resolve_encoder_id, run, start_ray, versions

DEFAULTS = {
    "root": None,
    "encoder": "latest",
    "targets": "sentences",  # the explanation table: sentences (aligned sidecar) or distilled (jobs.distill)
    "variants": "ce,ce+ccl,ce+pcl,pc2l",
    "epochs": 30,
    "batch_size": 32,  # the paper's
    "lr": 0.001,  # the paper's 1e-4 is for fine-tuning GPT-2 small; the small default decoder starts from scratch
    "weight_decay": 0.01,
    "lambda_ccl": 0.2,
    "lambda_pcl": 0.2,
    "alpha": math.e,
    "tau": 0.1,
    "contrastive_warmup": 0,  # epochs over which λ1, λ2 ramp up linearly from 0 (0 = the paper: full weight from the start)
    "d_model": 128,
    "heads": 4,
    "encoder_layers": 3,
    "decoder_layers": 3,
    "gpt2_path": "",  # a local GPT-2 directory (e.g. GPT-2 small, as the paper); its tokenizer comes with it
    "vocab_size": 2000,  # of the tokenizer trained on the targets when no gpt2_path
    "max_length": 64,
    "max_photos": 5,
    "max_history": 10,
    "dropout": 0.1,
    "eval_every": 10,
    "eval_examples": 128,
    "seed": 0,
    **{**harness.TRAINING_DEFAULTS, "cpus_per_worker": 2},
}
MODEL_KEYS = ("d_model", "heads", "encoder_layers", "decoder_layers", "gpt2_path", "max_length", "max_photos",
              "max_history", "dropout")


def load_examples(root: str, encoder_id: str, targets: str, splits, max_photos: int, max_history: int):
    from showcase_core.encoders.embed import read_embeddings
    from showcase_core.generation.data import build_generation_examples

    store = Store.open(root)
    return build_generation_examples(store.read_table("reviews"), store.read_table(targets),
                                     read_embeddings(store, encoder_id, "images"),
                                     read_embeddings(store, encoder_id, "texts"), splits, max_photos, max_history)


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import numpy as np
    import ray.train
    import torch

    from showcase_core.generation.decode import generate
    from showcase_core.generation.model import PC2L
    from showcase_core.generation.tokenizer import tokenizer_from_json
    from showcase_core.generation.training import train_epoch, validation_loss
    from showcase_core.metrics.grounding import grounding_rate, photo_entities
    from showcase_core.metrics.text import bleu

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    splits, _ = load_examples(config["root"], config["encoder_id"], config["targets"], ("train", "val"),
                              config["model"]["max_photos"], config["model"]["max_history"])
    shard = np.arange(rank, len(splits["train"]), world)
    train = splits["train"].take(shard)
    train_ids = [config["train_ids"][i] for i in shard]
    swapped_ids = [config["swapped_ids"][i] for i in shard]
    val = splits["val"]
    tokenizer = tokenizer_from_json(config["tokenizer_json"])
    torch.manual_seed(config["seed"])
    model = PC2L(config["model"])
    trained = harness.prepare(model, lambda params: torch.optim.AdamW(params, lr=config["lr"],
                                                                    weight_decay=config["weight_decay"]), config)
    device = ray.train.torch.get_device()
    step = harness.optimizer_step(trained)
    shown = None
    state = harness.restore(trained) or {"epoch": -1, "history": []}
    for epoch in range(state["epoch"] + 1, config["epochs"]):
        t0 = time.monotonic()
        trained.model.train()
        ramp = min(1.0, epoch / config["contrastive_warmup"]) if config["contrastive_warmup"] else 1.0
        weights = tuple(ramp * w for w in config["weights"])
        metrics = train_epoch(trained.model, step, train, train_ids, swapped_ids, tokenizer, config["batch_size"],
                              epoch, config["seed"], weights, config["tau"], config["alpha"], device)
        metrics = {"epoch": epoch, **metrics, "seconds": round(time.monotonic() - t0, 3), "examples": len(train)}
        last = epoch == config["epochs"] - 1
        if rank == 0 and len(val):
            metrics.update(validation_loss(trained.module, val, config["val_ids"], tokenizer, 64, device))
            if last or (epoch + 1) % config["eval_every"] == 0:
                if shown is None:
                    from showcase_core.store import Store

                    sentences = Store.open(config["root"]).read_table(config["targets"], ["pic_ids", "entities"])
                    entities = photo_entities(sentences.column("pic_ids").to_pylist(),
                                              sentences.column("entities").to_pylist())
                    subset = val.take(range(min(len(val), config["eval_examples"])))
                    shown = [set().union(*(entities.get(p, set()) for p in pics)) for pics in subset.photo_ids]
                texts = generate(trained.module, tokenizer, subset.photos, subset.photo_mask, subset.history,
                                 subset.history_mask, num_beams=1)
                metrics["val_grounding"] = grounding_rate(texts, shown)["rate"]
                metrics["val_bleu4"] = bleu(texts, subset.targets, 4)
                trained.model.train()
        state = {**state, "epoch": epoch, "history": state["history"] + [metrics]}
        harness.progress(f"train_pc2l {config['variant']}", epoch, config["epochs"], metrics)
        harness.report_epoch(trained, metrics, state, config)


def main(argv: list[str] | None = None) -> int:
    from showcase_core.generation.entities import swapped_negatives
    from showcase_core.generation.model import save_pc2l
    from showcase_core.generation.data import encode_targets
    from showcase_core.generation.tokenizer import load_pretrained_tokenizer, tokenizer_json, train_tokenizer
    from showcase_core.generation.training import VARIANTS, loss_weights

    cfg = parse_args("train_pc2l", DEFAULTS, argv)
    harness.check_training_settings(cfg)
    variants = [v.strip() for v in cfg["variants"].split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        raise UserError(f"--variants must list some of {', '.join(VARIANTS)}, got {cfg['variants']!r}")
    if cfg["epochs"] < 1 or cfg["batch_size"] < 2 or cfg["max_length"] < 8 or cfg["d_model"] % cfg["heads"]:
        raise UserError("--epochs >= 1, --batch-size >= 2 (contrastive losses need in-batch negatives), "
                        "--max-length >= 8, and --d-model divisible by --heads")
    if cfg["targets"] not in ("sentences", "distilled"):
        raise UserError(f"--targets must be sentences or distilled, got {cfg['targets']!r}")
    store = open_store(cfg["root"])
    encoder_id = resolve_encoder_id(store, cfg["encoder"])
    run_id = new_run_id()
    report = new_report("train_pc2l", cfg, run_id)
    timer = Timer()
    with timer("prepare"):
        try:
            splits, skipped = load_examples(store.root, encoder_id, cfg["targets"], ("train", "val"),
                                            cfg["max_photos"], cfg["max_history"])
        except StoreError as e:
            raise UserError(f"{e}; train_pc2l needs ingested tables, embeddings and the {cfg['targets']} table") from None
        if len(splits["train"]) < cfg["batch_size"]:
            raise UserError(f"{len(splits['train'])} training examples, fewer than one batch of {cfg['batch_size']}")
        if cfg["gpt2_path"]:
            try:
                tokenizer = load_pretrained_tokenizer(cfg["gpt2_path"])
            except OSError as e:
                raise UserError(f"--gpt2-path {cfg['gpt2_path']}: {str(e).splitlines()[0]}") from None
        else:
            tokenizer = train_tokenizer(splits["train"].targets, cfg["vocab_size"])
        train_ids = encode_targets(tokenizer, splits["train"].targets, cfg["max_length"])
        val_ids = encode_targets(tokenizer, splits["val"].targets, cfg["max_length"])
        negatives, vocabulary = swapped_negatives(splits["train"].targets, seed=cfg["seed"])
        swapped_ids = [encode_targets(tokenizer, [n], cfg["max_length"])[0] if n else None for n in negatives]
    print(f"[train_pc2l] {len(splits['train']):,} train / {len(splits['val']):,} val examples; "
          f"{len(vocabulary):,} entities for swapped negatives ({sum(n is not None for n in negatives):,} targets "
          f"have one); prepared in {timer.timings['prepare']:.1f}s", file=sys.stderr, flush=True)
    dim = int(splits["train"].photos.shape[2])
    model_config = {**{k: cfg[k] for k in MODEL_KEYS}, "clip_dim": dim, "vocab_size": len(tokenizer),
                    "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                    "pad_token_id": tokenizer.pad_token_id}
    start_ray()
    models = {}
    for variant in variants:
        run_name = f"{cfg['run_name'] or 'train_pc2l-' + run_id}-{variant.replace('+', '_')}"
        loop_config = {k: cfg[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "tau", "alpha", "eval_every",
                                           "eval_examples", "seed", "contrastive_warmup")}
        loop_config.update(root=store.root, encoder_id=encoder_id, targets=cfg["targets"], variant=variant,
                           weights=loss_weights(variant, cfg["lambda_ccl"], cfg["lambda_pcl"]), model=model_config,
                           tokenizer_json=tokenizer_json(tokenizer), train_ids=train_ids, val_ids=val_ids,
                           swapped_ids=swapped_ids)
        with timer(f"fit_{variant}"):
            result = harness.fit("train_pc2l", store, run_name, train_loop, loop_config, cfg)
        if result.error is not None:
            raise RuntimeError(f"training the {variant} generator failed: {result.error}")
        state_dict, extra = harness.load_checkpoint_state(result.checkpoint)
        from showcase_core.generation.model import PC2L

        model = PC2L(model_config)
        model.load_state_dict(state_dict)
        history = extra["history"]
        final = {k: v for k, v in history[-1].items() if k.startswith("val_")}
        card = {"name": "pc2l", "version": run_id, "variant": variant, "created_at": utc_now(), "run_name": run_name,
                "encoder_id": encoder_id, "targets": cfg["targets"],
                "training": {k: v for k, v in loop_config.items() if k not in ("train_ids", "val_ids", "swapped_ids",
                                                                               "tokenizer_json")},
                "examples": {"train": len(splits["train"]), "val": len(splits["val"]), "skipped": skipped},
                "metrics": final, "history": history, "resumed_after_epochs": extra.get("resumed_after_epochs", []),
                "parameters": sum(p.numel() for p in model.parameters()), "versions": versions()}
        uri = store.uri("models", "pc2l", run_id, variant.replace("+", "_"))
        save_pc2l(model, tokenizer, uri, card)
        models[variant] = {"uri": uri, "metrics": final, "seconds": timer.timings[f"fit_{variant}"]}
        print(f"[train_pc2l] {variant}: " + " ".join(f"{k}={v:.4g}" for k, v in final.items()), flush=True)
    store.write_json("models/pc2l/_LATEST.json", {"version": run_id, "encoder_id": encoder_id,
                                                  "models": {v: m["uri"] for v, m in models.items()},
                                                  "published_at": utc_now()})
    report.update(counts={"train_examples": len(splits["train"]), "val_examples": len(splits["val"]),
                          "skipped": skipped, "entity_vocabulary": len(vocabulary)},
                  models=models, encoder_id=encoder_id, timings_s=timer.timings, versions=versions(),
                  finished_at=utc_now())
    print(f"models: {store.uri('models', 'pc2l', run_id)}; report: {store.write_report('train_pc2l', run_id, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(run("train_pc2l", main))

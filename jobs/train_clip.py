"""Train (or fine-tune) the CLIP encoder on (photo, sentence) pairs: ``python -m jobs.train_clip --root ROOT``.

Pairs: every aligned sentence of a train-split review with each photo it describes (``tables/sentences`` joined to
``tables/images``); val+test pairs are held out for image->text Recall@1. The model is saved to
``ROOT/models/clip/<version>/`` (weights, config, model card) and ``ROOT/models/clip/_LATEST.json`` points at it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

from showcase_core.store import Store, new_run_id, utc_now

from . import harness
from .common import Timer, UserError, new_report, open_store, parse_args, run, start_ray, versions

DEFAULTS = {
    "root": None,
    "clip_model": "showcase-tiny",  # an open_clip name (ViT-B-32, ...) or a named small config
    "clip_pretrained": "",  # open_clip pretrained tag or local weights file; empty = from scratch
    "clip_checkpoint": "",  # start from a saved model instead (ROOT/models/clip/<version>)
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.1,
    "warmup_fraction": 0.05,
    "eval_every": 10,  # held-out recall every N epochs (and after the last)
    "seed": 0,
    **harness.TRAINING_DEFAULTS,
}


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import numpy as np
    import ray.train
    import torch

    from showcase_core.encoders.clip import load_encoder, read_photos
    from showcase_core.encoders.training import clip_pairs, train_epoch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    store = Store.open(config["root"])
    sentences, images = store.read_table("sentences"), store.read_table("images")
    pairs = clip_pairs(sentences, images, ("train",))
    pairs = pairs.take(np.arange(rank, pairs.num_rows, world))  # this worker's shard
    encoder = load_encoder(model=config["clip_model"] or None, pretrained=config["clip_pretrained"] or None,
                           checkpoint=config["clip_checkpoint"] or None, device="cpu")
    pixels, ok, errors = read_photos(pairs.column("uri").to_pylist(), encoder.image_size)
    if pairs.num_rows and not ok:
        raise RuntimeError(f"none of {pairs.num_rows} training photos could be read, e.g. {errors[0]}")
    all_texts = pairs.column("text").to_pylist()
    tokens = encoder.tokenizer([all_texts[i] for i in ok])  # pairs whose photo is unreadable are left out

    trained = harness.prepare(encoder.model, lambda params: torch.optim.AdamW(
        params, lr=config["lr"], weight_decay=config["weight_decay"]), config)
    device = ray.train.torch.get_device()
    steps_per_epoch = max(1, len(pixels) // config["batch_size"] + 1)
    total = steps_per_epoch * config["epochs"]
    state = harness.restore(trained) or {"epoch": -1, "step": 0, "history": []}

    held_out = clip_pairs(sentences, images, ("val", "test")) if rank == 0 else None
    for epoch in range(state["epoch"] + 1, config["epochs"]):
        t0 = time.monotonic()
        loss, step = train_epoch(trained.model, pixels, tokens, trained.optimizer, config["batch_size"], epoch,
                                 config["seed"], state["step"], total, config["lr"],
                                 int(total * config["warmup_fraction"]), device)
        metrics = {"epoch": epoch, "loss": loss, "seconds": round(time.monotonic() - t0, 2),
                   "pairs": len(pixels), "unreadable_photos": len(errors)}
        last = epoch == config["epochs"] - 1
        if rank == 0 and held_out is not None and held_out.num_rows and (last or (epoch + 1) % config["eval_every"] == 0):
            metrics.update(_held_out_recall(encoder, trained.module, held_out))
        state = {**state, "epoch": epoch, "step": step, "history": state["history"] + [metrics]}
        harness.progress("train_clip", epoch, config["epochs"], metrics)
        harness.report_epoch(trained, metrics, state, config)


def _held_out_recall(encoder, module, held_out) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    from showcase_core.encoders.clip import read_photos
    from showcase_core.encoders.training import retrieval_recall

    encoder.model = module
    photo_ids = sorted(set(held_out.column("image_id").to_pylist()))
    sentence_ids = sorted(set(held_out.column("sentence_id").to_pylist()))
    uri_of = dict(zip(held_out.column("image_id").to_pylist(), held_out.column("uri").to_pylist()))
    text_of = dict(zip(held_out.column("sentence_id").to_pylist(), held_out.column("text").to_pylist()))
    pixels, ok, _ = read_photos([uri_of[p] for p in photo_ids], encoder.image_size)
    photo_ids = [photo_ids[i] for i in ok]
    recall = retrieval_recall(encoder.encode_pixels(pixels), photo_ids,
                              encoder.encode_texts([text_of[s] for s in sentence_ids]), sentence_ids,
                              held_out.filter(pc.is_in(held_out.column("image_id"), value_set=pa.array(photo_ids))))
    return {f"heldout_{k}": v for k, v in recall.items()}


def data_fingerprint(store: Store) -> dict:
    tables = {name: store.table_version(name) for name in ("sentences", "images")}
    digest = hashlib.sha256(json.dumps({k: [v["version"], v["rows"]] for k, v in tables.items()},
                                       sort_keys=True).encode()).hexdigest()[:16]
    return {"tables": {k: {"version": v["version"], "rows": v["rows"]} for k, v in tables.items()}, "sha256": digest}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("train_clip", DEFAULTS, argv)
    harness.check_training_settings(cfg)
    if cfg["epochs"] < 1 or cfg["batch_size"] < 2:
        raise UserError("--epochs must be >= 1 and --batch-size >= 2")
    store = open_store(cfg["root"])
    try:
        fingerprint = data_fingerprint(store)
    except Exception as e:  # StoreError: no tables yet
        raise UserError(f"{e}; train_clip needs the sentences and images tables (run ingest)") from None
    if fingerprint["tables"]["sentences"]["rows"] == 0:
        raise UserError("tables/sentences is empty: no (photo, sentence) pairs to train on")
    from showcase_core.encoders.clip import EncoderError, load_encoder

    try:  # fail fast on a bad model name, tag or checkpoint, before any worker starts; reused for saving
        encoder = load_encoder(model=cfg["clip_model"] or None, pretrained=cfg["clip_pretrained"] or None,
                               checkpoint=cfg["clip_checkpoint"] or None, device="cpu")
    except EncoderError as e:
        raise UserError(str(e)) from None

    run_id = new_run_id()
    run_name = cfg["run_name"] or f"train_clip-{run_id}"
    report = new_report("train_clip", cfg, run_id)
    timer = Timer()
    start_ray()
    loop_config = {k: cfg[k] for k in ("clip_model", "clip_pretrained", "clip_checkpoint", "epochs", "batch_size",
                                       "lr", "weight_decay", "warmup_fraction", "eval_every", "seed")}
    loop_config["root"] = store.root
    with timer("fit"):
        result = harness.fit("train_clip", store, run_name, train_loop, loop_config, cfg)
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    from showcase_core.encoders.clip import save_encoder

    model_state, extra = harness.load_checkpoint_state(result.checkpoint)
    encoder.model.load_state_dict(model_state)
    history = extra["history"]
    resumed = extra.get("resumed_after_epochs", [])
    encoder.refresh_id()
    final = {k: v for k, v in history[-1].items() if k.startswith("heldout_")}
    card = {
        "name": "clip", "version": run_id, "created_at": utc_now(), "run_name": run_name,
        "data": fingerprint, "training": loop_config | {k: cfg[k] for k in harness.TRAINING_DEFAULTS},
        "metrics": final, "history": history, "versions": versions(),
    }
    model_uri = store.uri("models", "clip", run_id)
    card = save_encoder(encoder, model_uri, card)
    store.write_json("models/clip/_LATEST.json", {"version": run_id, "uri": model_uri,
                                                  "encoder_id": encoder.encoder_id, "published_at": utc_now()})
    report.update(counts={"pairs": history[-1]["pairs"], "unreadable_photos": history[-1]["unreadable_photos"]},
                  metrics=final, history=history, resumed_after_epochs=resumed,
                  outputs={"model": model_uri, "encoder_id": encoder.encoder_id},
                  timings_s=timer.timings, versions=versions(), finished_at=utc_now())
    report_uri = store.write_report("train_clip", run_id, report)
    print(f"held-out image->text Recall@1: {final.get('heldout_recall_at_1_entity', float('nan')):.3f} "
          f"(entity match; random {final.get('heldout_random_entity', float('nan')):.3f}), "
          f"{final['heldout_recall_at_1_exact']:.3f} (exact sentence; random {final['heldout_random_exact']:.4f}) "
          f"over {final['heldout_photos']} photos x {final['heldout_sentences']} sentences")
    print(f"model: {model_uri} (encoder {encoder.encoder_id}); report: {report_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(run("train_clip", main))

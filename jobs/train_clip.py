"""Train (or fine-tune) the CLIP encoder on (photo, sentence) pairs: ``python -m jobs.train_clip --root ROOT``.

Pairs: every aligned sentence of a train-split review with each photo it describes (``tables/sentences`` joined to
``tables/images``); val+test pairs are held out for image->text Recall@1. The model is saved to
``ROOT/models/clip/<version>/`` (weights, config, model card) and published in the registry.
"""

from __future__ import annotations

import hashlib
import json
import time

from showcase_core import registry
from showcase_core.store import Store, new_run_id, utc_now

from . import harness
from .common import (Timer, UserError, exit_process, new_report, open_store, parse_args, run, setting, start_ray,
                     versions)


class Settings(harness.TrainingSettings):
    """Train (or fine-tune) the CLIP encoder on (photo, sentence) pairs through the Ray Train harness."""

    clip_model: str = setting("showcase-tiny", "an open_clip model name (ViT-B-32, ...), a named small config, or "
                                               "pretrained-towers (frozen EfficientNet-Lite0 + MiniLM, trained "
                                               "projections)")
    clip_pretrained: str = setting("", "open_clip pretrained tag or a weights file (local or s3://); empty = from "
                                       "scratch")
    clip_checkpoint: str = setting("", "start from a saved model instead (ROOT/models/clip/<version>)")
    epochs: int = setting(10, "passes over the training pairs", ge=1)
    batch_size: int = setting(32, "pairs per step and rank (in-batch negatives: at least 2)", ge=2)
    lr: float = setting(1e-3, "AdamW peak learning rate (cosine decay after warm-up)", gt=0)
    weight_decay: float = setting(0.1, "AdamW decoupled weight decay", ge=0)
    warmup_fraction: float = setting(0.05, "share of the steps with a linear learning-rate warm-up", ge=0, le=1)
    eval_every: int = setting(10, "epochs between held-out Recall@1 checks (and after the last)", ge=1)
    heldout_photos: int = setting(20_000, "the held-out Recall@1's photos: at most this many of the photos val and "
                                          "test sentences describe, those of smallest hash of photo id (BLAKE2b, the "
                                          "same in every run), with their sentences; 0: every one", ge=0)
    seed: int = setting(0, "seed of the initialisation and the batch order")


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import numpy as np
    import ray.train
    import torch

    from showcase_core.encoders.clip import load_encoder
    from showcase_core.encoders.training import (DecodedPerBatch, KeptPerPhoto, held_out_pairs, scan_photos,
                                                 sharded_clip_pairs, train_epoch)

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    store = Store.open(config["root"])
    pairs = sharded_clip_pairs(store, ("train",), rank, world)  # this worker's share, the tables streamed
    device = ray.train.torch.get_device()
    # on the training device from the start: the pretrained towers compute their features there
    encoder = load_encoder(model=config["clip_model"] or None, pretrained=config["clip_pretrained"] or None,
                           checkpoint=config["clip_checkpoint"] or None, device=str(device))
    uris, all_texts = pairs.column("uri").to_pylist(), pairs.column("text").to_pylist()
    # each photo read once before training, a chunk at a time, however many pairs it is in: the unreadable ones are
    # left out with their pairs; the towers keep each photo's features, a CLIP reads its photos again batch by batch
    photos = sorted(set(uris))
    ok, errors, kept = scan_photos(photos, encoder.image_size,
                                   encoder.training_photos if encoder.keeps_training_photos else None)
    if pairs.num_rows and not ok:
        raise RuntimeError(f"none of {len(photos)} training photos could be read, e.g. {errors[0]}")
    photos = [photos[i] for i in ok]
    row_of = {photo: row for row, photo in enumerate(photos)}
    keep = [j for j, uri in enumerate(uris) if uri in row_of]
    rows = np.array([row_of[uris[j]] for j in keep], dtype=np.int64)  # each pair's photo
    text_inputs = encoder.training_texts([all_texts[j] for j in keep])
    image_inputs = (KeptPerPhoto(torch.cat(kept) if kept else torch.zeros((0, 1)), rows)
                    if encoder.keeps_training_photos else DecodedPerBatch(photos, rows, encoder.image_size))

    trained = harness.prepare(encoder.trainable_module, lambda params: torch.optim.AdamW(
        params, lr=config["lr"], weight_decay=config["weight_decay"]), config)
    steps_per_epoch = max(1, len(image_inputs) // config["batch_size"] + 1)
    total = steps_per_epoch * config["epochs"]
    step = harness.optimizer_step(trained)
    state = harness.restore(trained) or {"epoch": -1, "step": 0, "history": []}

    held_out = held_out_pairs(store, config["heldout_photos"]) if rank == 0 else None
    for epoch in range(state["epoch"] + 1, config["epochs"]):
        t0 = time.monotonic()
        loss, global_step = train_epoch(trained.model, step, image_inputs, text_inputs, config["batch_size"], epoch,
                                        config["seed"], state["step"], total, config["lr"],
                                        int(total * config["warmup_fraction"]), device,
                                        image_batch=encoder.image_batch)
        metrics = {"epoch": epoch, "loss": loss, "seconds": round(time.monotonic() - t0, 2),
                   "pairs": len(image_inputs), "unreadable_photos": len(errors)}
        last = epoch == config["epochs"] - 1
        if rank == 0 and held_out is not None and held_out.num_rows and (last or (epoch + 1) % config["eval_every"] == 0):
            metrics.update(_held_out_recall(encoder, trained.module, held_out))
        state = {**state, "epoch": epoch, "step": global_step, "history": state["history"] + [metrics]}
        harness.progress("train_clip", epoch, config["epochs"], metrics, every=config["log_every"])
        harness.report_epoch(trained, metrics, state, config)


def _held_out_recall(encoder, module, held_out) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from showcase_core.encoders.training import retrieval_recall, scan_photos

    encoder.trainable_module = module
    photo_ids = sorted(set(held_out.column("image_id").to_pylist()))
    sentence_ids = sorted(set(held_out.column("sentence_id").to_pylist()))
    uri_of = dict(zip(held_out.column("image_id").to_pylist(), held_out.column("uri").to_pylist()))
    text_of = dict(zip(held_out.column("sentence_id").to_pylist(), held_out.column("text").to_pylist()))
    ok, _, embedded = scan_photos([uri_of[p] for p in photo_ids], encoder.image_size, encoder.encode_pixels)
    photo_ids = [photo_ids[i] for i in ok]
    size = encoder.image_size
    recall = retrieval_recall(np.concatenate(embedded) if embedded else
                              encoder.encode_pixels(np.zeros((0, size, size, 3), np.uint8)), photo_ids,
                              encoder.encode_texts([text_of[s] for s in sentence_ids]), sentence_ids,
                              held_out.filter(pc.is_in(held_out.column("image_id"), value_set=pa.array(photo_ids))))
    return {f"heldout_{k}": v for k, v in recall.items()}


def data_fingerprint(store: Store) -> dict:
    tables = {name: store.table_version(name) for name in ("sentences", "images")}
    digest = hashlib.sha256(json.dumps({k: [v["version"], v["rows"]] for k, v in tables.items()},
                                       sort_keys=True).encode()).hexdigest()[:16]
    return {"tables": {k: {"version": v["version"], "rows": v["rows"]} for k, v in tables.items()}, "sha256": digest}


def check_inputs(store, cfg: Settings):
    """(data fingerprint, encoder) or one line: the tables have pairs, the model name or checkpoint loads."""
    from showcase_core.encoders.clip import EncoderError, load_encoder

    try:
        fingerprint = data_fingerprint(store)
    except Exception as e:  # StoreError: no tables yet
        raise UserError(f"{e}; train_clip needs the sentences and images tables (run ingest)") from None
    if fingerprint["tables"]["sentences"]["rows"] == 0:
        raise UserError("tables/sentences is empty: no (photo, sentence) pairs to train on")
    try:  # fail fast on a bad model name, tag or checkpoint, before any worker starts; reused for saving
        encoder = load_encoder(model=cfg.clip_model or None, pretrained=cfg.clip_pretrained or None,
                               checkpoint=cfg.clip_checkpoint or None, device="cpu")
    except EncoderError as e:
        raise UserError(str(e)) from None
    return fingerprint, encoder


def fit(store, cfg: Settings, run_id: str, encoder, fingerprint: dict, timer: Timer) -> dict:
    """Train on Ray Train workers; save the final weights into ``encoder`` and under models/clip/<run_id>."""
    from showcase_core.encoders.clip import save_encoder

    run_name = cfg.run_name or f"train_clip-{run_id}"
    loop_config = {**cfg.pick("clip_model", "clip_pretrained", "clip_checkpoint", "epochs", "batch_size", "lr",
                              "weight_decay", "warmup_fraction", "eval_every", "heldout_photos", "seed"), "root": store.root}
    with timer("fit"):
        result = harness.fit("train_clip", store, run_name, train_loop, loop_config, cfg)
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    model_state, extra = harness.load_checkpoint_state(result.checkpoint)
    harness.load_trained_state(encoder.trainable_module, model_state)
    encoder.refresh_id()
    history = extra["history"]
    final = {k: v for k, v in history[-1].items() if k.startswith("heldout_")}
    card = {"name": "clip", "version": run_id, "created_at": utc_now(), "run_name": run_name, "data": fingerprint,
            "training": loop_config | cfg.pick(*harness.TrainingSettings.model_fields), "metrics": final,
            "history": history, "versions": versions()}
    uri = store.uri("models", "clip", run_id)
    save_encoder(encoder, uri, card)
    return {"uri": uri, "metrics": final, "history": history, "resumed_after_epochs": extra.get("resumed_after_epochs", [])}


def print_summary(final: dict) -> None:
    print(f"held-out image->text Recall@1: {final.get('heldout_recall_at_1_entity', float('nan')):.3f} "
          f"(entity match; random {final.get('heldout_random_entity', float('nan')):.3f}), "
          f"{final['heldout_recall_at_1_exact']:.3f} (exact sentence; random {final['heldout_random_exact']:.4f}) "
          f"over {final['heldout_photos']} photos x {final['heldout_sentences']} sentences")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("train_clip", Settings, argv)
    store = open_store(cfg.root)
    fingerprint, encoder = check_inputs(store, cfg)
    run_id, timer = new_run_id(), Timer()
    report = new_report("train_clip", cfg, run_id)
    start_ray(state_api=True)
    model = fit(store, cfg, run_id, encoder, fingerprint, timer)
    registry.publish(store, "clip", run_id, model["uri"], encoder.encoder_id, data_fingerprint=fingerprint,
                     metrics=model["metrics"])
    last = model["history"][-1]
    report.update(counts={"pairs": last["pairs"], "unreadable_photos": last["unreadable_photos"]},
                  metrics=model["metrics"], history=model["history"],
                  resumed_after_epochs=model["resumed_after_epochs"],
                  outputs={"model": model["uri"], "encoder_id": encoder.encoder_id},
                  timings_s=timer.timings, versions=versions(), finished_at=utc_now())
    print_summary(model["metrics"])
    print(f"model: {model['uri']} (encoder {encoder.encoder_id}); "
          f"report: {store.write_report('train_clip', run_id, report)}")
    return 0


if __name__ == "__main__":
    exit_process(run("train_clip", main))

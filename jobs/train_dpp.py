"""Train the DPP kernel model: ``python -m jobs.train_dpp --root ROOT [--modalities img,text,img+text]``.

One model per modality through the shared Ray Train harness (the paper's Adam 1e-3, batch 512). Each is saved under
``ROOT/models/dpp/<version>/<modality>/`` (weights, config, model card with validation metrics), and
``ROOT/models/dpp/_LATEST.json`` points at the version. Examples, profiles and ground sets: showcase_core.selection.data.
"""

from __future__ import annotations

import sys
import time

from showcase_core.store import Store, StoreError, new_run_id, utc_now

from . import harness
from .common import Timer, UserError, new_report, open_store, parse_args, resolve_encoder_id, run, start_ray, versions

DEFAULTS = {
    "root": None,
    "encoder": "latest",  # whose embeddings to use: latest trained CLIP, or an encoder id under ROOT/embeddings
    "modalities": "img,text,img+text",
    # The paper: Adam, lr 1e-3, batch 512. On the mini world (~750 training pairs) batch 512 is two steps an epoch;
    # batch 32 with decoupled weight decay 0.1 (AdamW) learns, and the job keeps the epoch with the best val F1@3.
    "epochs": 100,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.1,
    "delta": 1e-2,
    "max_ground": 128,
    "eval_every": 10,  # val F1@3 every this many epochs; the best of these epochs is the model saved
    "seed": 0,
    # an epoch takes under a second on the mini world: a checkpoint per epoch would cost more than the training
    **{**harness.TRAINING_DEFAULTS, "cpus_per_worker": 2, "checkpoint_every": 10},
}


def load_selection_data(root: str, encoder_id: str, max_ground: int, splits=("train", "val", "test")):
    from showcase_core.encoders.embed import read_embeddings
    from showcase_core.selection.data import build_selection_data

    store = Store.open(root)
    return build_selection_data(store.read_table("reviews"), store.read_table("images"),
                                read_embeddings(store, encoder_id, "images"), read_embeddings(store, encoder_id, "texts"),
                                splits=splits, max_ground=max_ground)


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import numpy as np
    import ray.train
    import torch

    from showcase_core.selection.kernel import DPPKernel
    from showcase_core.selection.training import evaluate_picks, select, train_epoch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    data = load_selection_data(config["root"], config["encoder_id"], config["max_ground"],
                               ("train", "val"))
    train = data.splits["train"]
    train = train.take(np.arange(rank, len(train), world))
    torch.manual_seed(config["seed"])
    model = DPPKernel(data.photo_vecs.shape[1], config["modality"], config["delta"])
    trained = harness.prepare(model, lambda params: torch.optim.AdamW(params, lr=config["lr"],
                                                                    weight_decay=config["weight_decay"]), config)
    device = ray.train.torch.get_device()
    state = harness.restore(trained) or {"epoch": -1, "history": []}
    for epoch in range(state["epoch"] + 1, config["epochs"]):
        t0 = time.monotonic()
        nll = train_epoch(trained.model, data, train, trained.optimizer, config["batch_size"], epoch, config["seed"],
                          device)
        metrics = {"epoch": epoch, "nll": nll, "seconds": round(time.monotonic() - t0, 3), "examples": len(train)}
        last = epoch == config["epochs"] - 1
        if rank == 0 and len(data.splits["val"]) and (last or (epoch + 1) % config["eval_every"] == 0):
            picks = select(trained.module, data, data.splits["val"], 3, device=device)
            scores = evaluate_picks(data, data.splits["val"], picks)
            metrics.update({f"val_{k}": v for k, v in scores.items()})
            if scores["f1"] > state.get("best", {}).get("val_f1", -1.0):
                weights = {k: v.detach().cpu().clone() for k, v in trained.module.state_dict().items()}
                state["best"] = {"epoch": epoch, "val_f1": scores["f1"], "model": weights}
        state = {**state, "epoch": epoch, "history": state["history"] + [metrics]}
        harness.progress(f"train_dpp {config['modality']}", epoch, config["epochs"], metrics)
        harness.report_epoch(trained, metrics, state, config)


def main(argv: list[str] | None = None) -> int:
    from showcase_core.selection.kernel import MODALITIES, save_dpp

    cfg = parse_args("train_dpp", DEFAULTS, argv)
    harness.check_training_settings(cfg)
    modalities = [m.strip() for m in cfg["modalities"].split(",") if m.strip()]
    if not modalities or set(modalities) - set(MODALITIES):
        raise UserError(f"--modalities must list some of {', '.join(MODALITIES)}, got {cfg['modalities']!r}")
    if cfg["epochs"] < 1 or cfg["batch_size"] < 1 or cfg["max_ground"] < 3:
        raise UserError("--epochs and --batch-size must be >= 1 and --max-ground >= 3")
    store = open_store(cfg["root"])
    encoder_id = resolve_encoder_id(store, cfg["encoder"])
    try:
        data = load_selection_data(store.root, encoder_id, cfg["max_ground"], ("train",))
    except StoreError as e:
        raise UserError(f"{e}; train_dpp needs ingested tables and embeddings (run ingest and embed)") from None
    if not len(data.splits["train"]):
        raise UserError("no training examples: no train-split review has embedded photos")

    run_id = new_run_id()
    report = new_report("train_dpp", cfg, run_id)
    timer = Timer()
    start_ray()
    models = {}
    for modality in modalities:
        run_name = f"{cfg['run_name'] or 'train_dpp-' + run_id}-{modality.replace('+', '_')}"
        loop_config = {k: cfg[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "delta", "max_ground",
                                           "eval_every", "seed")}
        loop_config.update(root=store.root, encoder_id=encoder_id, modality=modality)
        with timer(f"fit_{modality}"):
            result = harness.fit("train_dpp", store, run_name, train_loop, loop_config, cfg)
        if result.error is not None:
            raise RuntimeError(f"training the {modality} DPP failed: {result.error}")
        state_dict, extra = harness.load_checkpoint_state(result.checkpoint)
        history = extra["history"]
        best = extra.get("best")  # the epoch with the best val F1@3 (none without a val split: the last epoch)
        if best is not None:
            state_dict = best["model"]
        selected = next(h for h in history if h["epoch"] == best["epoch"]) if best is not None else history[-1]
        model_config = {"embed_dim": int(data.photo_vecs.shape[1]), "modality": modality, "delta": cfg["delta"],
                        "encoder_id": encoder_id}
        final = {k: v for k, v in selected.items() if k.startswith("val_")}
        card = {"name": "dpp", "version": run_id, "modality": modality, "created_at": utc_now(), "run_name": run_name,
                "encoder_id": encoder_id, "training": loop_config, "metrics": final, "history": history,
                "selected_epoch": selected["epoch"] + 1,
                "resumed_after_epochs": extra.get("resumed_after_epochs", []), "versions": versions()}
        uri = store.uri("models", "dpp", run_id, modality)
        save_dpp(state_dict, model_config, uri, card)
        models[modality] = {"uri": uri,
                            "metrics": final, "examples": history[-1]["examples"]}
        print(f"[train_dpp] {modality}: val F1@3 {final.get('val_f1', float('nan')):.4f} "
              f"(P {final.get('val_precision', float('nan')):.4f}, R {final.get('val_recall', float('nan')):.4f}) "
              f"at epoch {selected['epoch'] + 1} of {len(history)}", flush=True)
    store.write_json("models/dpp/_LATEST.json", {"version": run_id, "encoder_id": encoder_id,
                                                 "models": {m: v["uri"] for m, v in models.items()},
                                                 "published_at": utc_now()})
    report.update(counts={"train_examples": len(data.splits["train"]), "skipped": data.skipped}, models=models,
                  encoder_id=encoder_id, timings_s=timer.timings, versions=versions(), finished_at=utc_now())
    print(f"models: {store.uri('models', 'dpp', run_id)}; report: {store.write_report('train_dpp', run_id, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(run("train_dpp", main))

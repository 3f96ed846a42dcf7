"""Train the candidate recommenders: ``python -m jobs.train_recommender --root ROOT [--models ...]``.

Each model of ``--models`` (popularity, BPR-MF, LightGCN, AlignRec, R2MR: showcase_core.recommend) trains through
the shared Ray Train harness on the reviews' interactions (leave-one-out split per user, a held-out share of cold
businesses) and the items' train content (the users feature table). The epoch with the best val Recall@20 is kept;
its val and test metrics (full ranking, train items masked) go into the model card and the registry. Rank 0 writes
the model's ``users.parquet`` and ``items.parquet`` vectors beside it (what ``jobs.recommend`` ranks with) under
``ROOT/models/recommender/<version>/<model>/``; the version is published as ``recommender``.
"""

from __future__ import annotations

import os
import tempfile
import time

from pydantic import field_validator

from showcase_core import registry
from showcase_core.recommend.data import MODELS
from showcase_core.settings import comma_list
from showcase_core.store import Store, new_run_id, utc_now

from . import harness
from .common import Timer, exit_process, new_report, open_store, parse_args, run, setting, start_ray, versions


class Settings(harness.TrainingSettings):
    """Train the recommenders that write the nightly's candidates, through the Ray Train harness."""

    encoder: str = setting("latest", "whose embeddings: latest (the latest trained CLIP's) or an encoder id")
    models: str = setting(",".join(MODELS), f"comma-separated, some of {', '.join(MODELS)}")
    # MMRec's defaults: embedding 64, Adam lr 1e-3, batch 2048, L2 1e-4; LightGCN 2 layers; kNN k = 10
    epochs: int = setting(60, "passes over the train interactions", ge=1)
    batch_size: int = setting(2048, "interactions per step", ge=1)
    lr: float = setting(1e-3, "Adam learning rate", gt=0)
    dim: int = setting(64, "embedding size", ge=1)
    layers: int = setting(2, "LightGCN propagation layers", ge=0)
    reg: float = setting(1e-4, "L2 weight on the batch's layer-0 embeddings", ge=0)
    knn: int = setting(10, "item-item graph neighbours per item (AlignRec, R2MR)", ge=1)
    place_scale_km: float = setting(2.0, "AlignRec, R2MR: the distance scale ℓ of the item graph's place term "
                                         "exp(-d²/2ℓ²), when ingest published the businesses' places", gt=0)
    ica_weight: float = setting(0.1, "AlignRec inter-content alignment weight (photos <-> reviews)", ge=0)
    cca_weight: float = setting(0.1, "AlignRec content <-> ID alignment weight", ge=0)
    uia_weight: float = setting(0.1, "AlignRec user <-> item alignment weight", ge=0)
    cca_tau: float = setting(0.2, "content <-> ID InfoNCE temperature (the paper's code: 0.2)", gt=0)
    ica_tau: float = setting(0.2, "inter-content InfoNCE temperature", gt=0)
    uia_tau: float = setting(0.2, "user <-> item InfoNCE temperature", gt=0)
    factors: int = setting(4, "R2MR: user factors K", ge=1)
    eta: float = setting(0.5, "R2MR: quality threshold η", gt=0, lt=1)
    sampled_users: int = setting(8, "R2MR: users per item a training step reviews it with", ge=1)
    review_weight: float = setting(0.1, "R2MR: weight of the reviewer's loss (each modality alone tells a user's "
                                   "item from a random one)", ge=0)
    cold_fraction: float = setting(0.1, "share of businesses held out as cold items (all their interactions test)",
                                   ge=0, lt=1)
    eval_every: int = setting(5, "epochs between val Recall@20 checks; the best checked epoch is kept", ge=1)
    seed: int = setting(0, "seed of the split, the initialisation and the batch order")
    checkpoint_every: int = setting(5, "epochs between checkpoints (the last epoch always has one)", ge=1)

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: str) -> str:
        return ",".join(comma_list("models", value, MODELS))

    def model_settings(self) -> dict:
        return self.pick("dim", "layers", "reg", "knn", "place_scale_km", "ica_weight", "cca_weight", "uia_weight",
                         "cca_tau", "ica_tau", "uia_tau", "factors", "eta", "sampled_users", "review_weight")


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: train one model; rank 0 evaluates, keeps the best epoch and exports it."""
    import numpy as np
    import ray.train
    import torch

    from showcase_core.distributed import common_length
    from showcase_core.recommend import training
    from showcase_core.recommend.data import build_model, export_vectors, load_recommender_data
    from showcase_core.recommend.interactions import TEST, VAL

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    data = load_recommender_data(Store.open(config["root"]), config["encoder_id"], config["cold_fraction"],
                                 config["seed"])
    torch.manual_seed(config["seed"])
    model = build_model(config["model"], data, config["settings"])
    x, (tu, ti) = data.interactions, data.train
    scorable = data.scorable(config["model"])
    if not getattr(model, "trainable", True):  # popularity: nothing to train, one report with its metrics
        metrics = {"epoch": 0, **{f"val_{k}": v for k, v in training.evaluate(model, x, VAL, scorable).items()},
                   **{f"test_{k}": v for k, v in training.evaluate(model, x, TEST, scorable).items()}}
        state = {"epoch": 0, "history": [metrics], "best": {"epoch": 0}}
        if rank == 0:
            state["exported"] = export_vectors(model, data, config["uri"], scorable)
        with tempfile.TemporaryDirectory() as d:  # a checkpoint of its metrics: the driver reads it like the others
            torch.save({"model": {}, "extra": state}, os.path.join(d, "state.pt"))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None)
        return
    codes, warm = training.train_sets(tu, ti, len(x.items)), ~x.cold
    device = ray.train.torch.get_device()
    shard = np.arange(rank, len(tu), world)[:common_length(len(range(rank, len(tu), world)), device)]
    trained = harness.prepare(model, lambda params: torch.optim.Adam(params, lr=config["lr"]), config)
    step = harness.optimizer_step(trained)
    state = harness.restore(trained) or {"epoch": -1, "history": []}
    epochs = config["epochs"]
    for epoch in range(state["epoch"] + 1, epochs):
        t0 = time.monotonic()
        parts = training.train_epoch(trained.model, step, tu[shard], ti[shard], codes, warm, config["batch_size"],
                                     epoch, config["seed"])
        metrics = {"epoch": epoch, **parts, "seconds": round(time.monotonic() - t0, 3)}
        last = epoch == epochs - 1
        if rank == 0 and (last or (epoch + 1) % config["eval_every"] == 0):
            scores = training.evaluate(trained.module, x, VAL, scorable)
            metrics.update({f"val_{k}": v for k, v in scores.items()})
            if scores["recall@20"] > state.get("best", {}).get("val_recall@20", -1.0):
                weights = {k: v.detach().cpu().clone() for k, v in trained.module.state_dict().items()}
                state["best"] = {"epoch": epoch, "val_recall@20": scores["recall@20"], "model": weights}
        if rank == 0 and last:  # the kept epoch: its test metrics and its vectors for ranking
            trained.module.load_state_dict(state["best"]["model"])
            metrics.update({f"test_{k}": v for k, v in training.evaluate(trained.module, x, TEST, scorable).items()})
            state["exported"] = export_vectors(trained.module, data, config["uri"], scorable)
        state = {**state, "epoch": epoch, "history": state["history"] + [metrics]}
        harness.progress(f"train_recommender {config['model']}", epoch, epochs, metrics, every=config["log_every"])
        harness.report_epoch(trained, metrics, state, config)


def fit_model(store, cfg: Settings, run_id: str, encoder_id: str, name: str, timer: Timer) -> dict:
    """Train one model; its card holds the kept epoch's val and test metrics."""
    run_name = f"{cfg.run_name or 'train_recommender-' + run_id}-{name}"
    uri = store.uri("models", "recommender", run_id, name)
    loop_config = {**cfg.pick("epochs", "batch_size", "lr", "eval_every", "seed", "cold_fraction"),
                   "settings": cfg.model_settings(), "root": store.root, "encoder_id": encoder_id, "model": name,
                   "uri": uri}
    with timer(f"fit_{name}"):
        result = harness.fit("train_recommender", store, run_name, train_loop, loop_config, cfg)
    if result.error is not None:
        raise RuntimeError(f"training {name} failed: {result.error}")
    _, extra = harness.load_checkpoint_state(result.checkpoint)
    history = extra["history"]
    best = next(h for h in history if h["epoch"] == extra["best"]["epoch"])
    final = {**{k: v for k, v in best.items() if k.startswith("val_")},  # the kept epoch's val metrics, and its
             **{k: v for k, v in history[-1].items() if k.startswith("test_")}}  # test ones (in the last report)
    card = {"name": "recommender", "model": name, "version": run_id, "created_at": utc_now(), "run_name": run_name,
            "encoder_id": encoder_id, "training": loop_config, "metrics": final, "history": history,
            "versions": versions()}
    store.write_json(f"models/recommender/{run_id}/{name}/card.json", card)
    print(f"[train_recommender] {name}: val Recall@20 {final.get('val_recall@20', float('nan')):.4f}, test "
          f"Recall@20 {final.get('test_recall@20', float('nan')):.4f}, NDCG@20 "
          f"{final.get('test_ndcg@20', float('nan')):.4f}", flush=True)
    return {"uri": uri, "metrics": final}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("train_recommender", Settings, argv)
    store = open_store(cfg.root)
    encoder_id = registry.resolve_encoder_id(store, cfg.encoder)
    run_id, timer = new_run_id(), Timer()
    report = new_report("train_recommender", cfg, run_id)
    start_ray(state_api=True)
    models = {name: fit_model(store, cfg, run_id, encoder_id, name, timer) for name in cfg.models.split(",")}
    registry.publish(store, "recommender", run_id, store.uri("models", "recommender", run_id), encoder_id,
                     variants={m: v["uri"] for m, v in models.items()},
                     metrics={m: v["metrics"] for m, v in models.items()},
                     extra={"cold_fraction": cfg.cold_fraction, "seed": cfg.seed})
    report.update(models=models, encoder_id=encoder_id, timings_s=timer.timings, versions=versions(),
                  finished_at=utc_now())
    print(f"models: {store.uri('models', 'recommender', run_id)}; report: "
          f"{store.write_report('train_recommender', run_id, report)}")
    return 0


if __name__ == "__main__":
    exit_process(run("train_recommender", main))

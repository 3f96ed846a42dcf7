"""Train the DPP kernel model: ``python -m jobs.train_dpp --root ROOT [--modalities img,text,img+text]``.

One model per modality, all trained side by side in one run of the shared Ray Train harness (one worker group, the
same batches; their parameters are disjoint, so each learns as if trained alone). Each is saved under
``ROOT/models/dpp/<version>/<modality>/`` (weights, config, model card with validation metrics) and published in the
registry.

The examples (one per train or val review: its business's ground set, the user's photos in it, the user's profile;
showcase_core.selection.data) are built from the feature tables ``jobs.features`` wrote, the ones the nightly and
Serve read: Ray Data tasks look a batch of reviews' users and businesses up by key and write each example with its
ground set's vectors inline, and the examples stay in Ray's object store (spilled to disk when large). Each worker
streams its share of the train examples every epoch, in batches drawn from a seeded shuffle buffer; rank 0 streams the
val examples to score them. Memory of a worker: the model, the shuffle buffer and a batch; of the driver: counts.
"""

from __future__ import annotations

import time

from pydantic import field_validator

from showcase_core import features as F
from showcase_core import registry
from showcase_core.features import MAX_GROUND_SET
from showcase_core.selection.kernel import MODALITIES
from showcase_core.settings import comma_list
from showcase_core.store import StoreError, new_run_id, utc_now

from . import harness
from .common import (Timer, UserError, exit_process, new_report, open_store, parse_args, run,
                     selection_example_datasets, setting, start_ray, versions)


class Settings(harness.TrainingSettings):
    """Train the DPP kernel model, one per modality, through the Ray Train harness."""

    encoder: str = setting("latest", "whose embeddings: latest (the latest trained CLIP's) or an encoder id")
    modalities: str = setting(",".join(MODALITIES), f"comma-separated, some of {', '.join(MODALITIES)}")
    # the paper: Adam, lr 1e-3, batch 512; on the mini world (~750 pairs) batch 512 is two steps an epoch, while
    # batch 32 with decoupled weight decay 0.1 learns, and the job keeps the epoch with the best val F1@3
    epochs: int = setting(100, "passes over the training examples", ge=1)
    batch_size: int = setting(32, "examples per step", ge=1)
    lr: float = setting(1e-3, "AdamW learning rate", gt=0)
    weight_decay: float = setting(0.1, "AdamW decoupled weight decay", ge=0)
    delta: float = setting(1e-2, "the kernel's diagonal jitter δ (keeps L positive definite)", gt=0)
    max_ground: int = setting(MAX_GROUND_SET, "photos per ground set at most (the newest); at most the feature "
                                              "tables' --max-ground-set", ge=3)
    shuffle_buffer: int = setting(2048, "train examples a worker shuffles its batches from (memory: this many "
                                        "examples with their ground sets)", ge=1)
    eval_every: int = setting(10, "epochs between val F1@3 checks; the best checked epoch is the model saved", ge=1)
    seed: int = setting(0, "seed of the initialisation and the batch order")
    checkpoint_every: int = setting(10, "epochs between checkpoints (an epoch is short: a checkpoint each would "
                                        "cost more than training); the last epoch always has one", ge=1)

    @field_validator("modalities")
    @classmethod
    def _known_modalities(cls, value: str) -> str:
        return ",".join(comma_list("modalities", value, MODALITIES))


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: every modality's kernel in one worker group, on the same batches."""
    import ray.train
    import torch

    from showcase_core.selection.data import arrow_batch
    from showcase_core.selection.kernel import DPPKernel, KernelSet
    from showcase_core.selection.training import PickScores, pick_positions, train_epoch

    rank = ray.train.get_context().get_world_rank()
    train, val = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    kernels = {}
    for modality in config["modalities"]:  # each initialised as if trained alone
        torch.manual_seed(config["seed"])
        kernels[modality] = DPPKernel(config["dim"], modality, config["delta"])
    trained = harness.prepare(KernelSet(kernels), lambda params: torch.optim.AdamW(
        params, lr=config["lr"], weight_decay=config["weight_decay"]), config)
    device = ray.train.torch.get_device()
    step = harness.optimizer_step(trained)
    state = harness.restore(trained) or {"epoch": -1, "history": [], "best": {}}
    for epoch in range(state["epoch"] + 1, config["epochs"]):
        t0 = time.monotonic()
        batches = train.iter_batches(batch_size=config["batch_size"], batch_format="pyarrow",
                                     local_shuffle_buffer_size=config["shuffle_buffer"],
                                     local_shuffle_seed=config["seed"] * 1_000_003 + epoch)
        nll, seen = train_epoch(trained.model, step, (arrow_batch(b, device) for b in batches))
        per_modality = {m: {"nll": v} for m, v in nll.items()}
        last = epoch == config["epochs"] - 1
        if rank == 0 and config["val_examples"] and (last or (epoch + 1) % config["eval_every"] == 0):
            scores = {m: PickScores(3) for m in trained.module.kernels}
            for rows in val.iter_batches(batch_size=VAL_BATCH, batch_format="pyarrow"):
                batch = arrow_batch(rows, device)
                for modality, kernel in trained.module.kernels.items():
                    scores[modality].add(batch, pick_positions(kernel, batch, 3))
            for modality, kernel in trained.module.kernels.items():
                found = scores[modality].scores()
                per_modality[modality].update({f"val_{k}": v for k, v in found.items()})
                if found["f1"] > state["best"].get(modality, {}).get("val_f1", -1.0):
                    weights = {k: v.detach().cpu().clone() for k, v in kernel.state_dict().items()}
                    state["best"] = {**state["best"], modality: {"epoch": epoch, "val_f1": found["f1"],
                                                                 "model": weights}}
        seconds = round(time.monotonic() - t0, 3)
        entry = {"epoch": epoch, "seconds": seconds, "examples": seen, "modalities": per_modality}
        state = {**state, "epoch": epoch, "history": state["history"] + [entry]}
        metrics = {"epoch": epoch, "seconds": seconds, "examples": seen,
                   **{f"{m}/{k}": v for m, values in per_modality.items() for k, v in values.items()}}
        shown = {k: v for k, v in metrics.items() if not k.endswith(("_precision", "_recall", "_examples", "_div"))}
        harness.progress("train_dpp", epoch, config["epochs"], shown, every=config["log_every"])
        harness.report_epoch(trained, metrics, state, config)


VAL_BATCH = 256  # val examples scored at once


def feature_meta(store, encoder_id: str, max_ground: int, dim: int) -> dict:
    """The feature tables' metadata, or one line on why they cannot give the examples."""
    try:
        return F.meta_for_training(store, encoder_id, dim, "max_ground_set", max_ground, "--max-ground", "business")
    except F.FeaturesError as e:
        raise UserError(str(e)) from None


def example_datasets(store, encoder_id: str, meta: dict, max_ground: int) -> tuple[dict, dict]:
    """The train and val examples as Ray Data datasets (``common.selection_example_datasets``), built once and kept
    in the object store; and their counts: train_examples, val_examples, the reviews skipped per split (no ground
    set, or none of their photos embedded). The driver holds the counts only."""
    built, totals = selection_example_datasets(store, encoder_id, meta, max_ground, ("train", "val"))
    datasets = {split: ds.materialize() for split, ds in built.items()}
    for ds in datasets.values():  # each epoch's split reports its progress as info records (start_ray keeps Ray
        ds.context.use_ray_tqdm = False  # Data's out of the terminal), not as bars; the epochs print their own lines
    counts = {f"{split}_examples": ds.count() for split, ds in datasets.items()}  # from the blocks' metadata
    counts["skipped"] = {split: totals[split] - counts[f"{split}_examples"] for split in datasets}
    return datasets, counts


def check_data(store, encoder_id: str) -> int:
    """Fail fast with one line unless some train-split review has an embedded photo and the encoder's text embeddings
    are there; returns the embedding size. The examples themselves are built by Ray Data tasks
    (``example_datasets``): the driver reads the reviews' split and photo ids a batch at a time and looks for each
    batch's train photos among the embedded ids, a batch of ids at a time, until one is found (memory: a batch of
    each; no vector but the one found)."""
    import pyarrow.compute as pc

    from showcase_core.encoders.embed import embedded_among, embeddings_dir, read_embeddings
    from showcase_core.tables import exists

    needs = "train_dpp needs ingested tables and embeddings (run ingest and embed)"
    for kind in ("images", "texts"):
        if not exists(store, embeddings_dir(encoder_id, kind)):
            raise UserError(f"no {kind} embeddings for encoder {encoder_id} under {store.root}; {needs}")
    try:
        for batch in store.iter_table_batches("reviews", ["split", "pic_ids"]):
            train = batch.filter(pc.equal(batch.column("split"), "train"))
            photos = pc.unique(pc.list_flatten(train.column("pic_ids"))).drop_null()
            if not len(photos):
                continue
            for found in embedded_among(store, encoder_id, "images", photos):
                if len(found):
                    one = read_embeddings(store, encoder_id, "images", ids=[found[0].as_py()])
                    return int(one.schema.field("embedding").type.list_size)
    except StoreError as e:
        raise UserError(f"{e}; {needs}") from None
    raise UserError("no training examples: no train-split review has embedded photos")


def fit_kernels(store, cfg: Settings, run_id: str, encoder_id: str, meta: dict, dim: int,
                timer: Timer) -> tuple[dict, dict]:
    """Build the examples, then train every modality's kernel in one Ray Train run; save each with its card (the
    epoch with its best val F1@3, else the last). Returns ({modality: {"uri", "metrics", "examples"}}, the examples'
    counts: train_examples, val_examples and the reviews skipped per split)."""
    modalities = cfg.modalities.split(",")
    run_name = cfg.run_name or f"train_dpp-{run_id}"
    with timer("examples"):
        datasets, counts = example_datasets(store, encoder_id, meta, cfg.max_ground)
    if not counts["train_examples"]:
        raise UserError("no training examples: no train-split review has a photo in its business's ground set in "
                        "the feature tables (rerun `showcase features` after embed)")
    print(f"[train_dpp] {counts['train_examples']:,} train and {counts['val_examples']:,} val examples; reviews "
          f"skipped: {counts['skipped']}", flush=True)
    loop_config = {**cfg.pick("epochs", "batch_size", "lr", "weight_decay", "delta", "max_ground", "eval_every",
                              "seed", "shuffle_buffer"), "root": store.root, "encoder_id": encoder_id,
                   "modalities": modalities, "dim": dim, "val_examples": counts["val_examples"]}
    with timer("fit"):
        result = harness.fit("train_dpp", store, run_name, train_loop, loop_config, cfg, datasets, split=("train",))
    if result.error is not None:
        raise RuntimeError(f"training the DPP kernels ({', '.join(modalities)}) failed: {result.error}")
    state_dict, extra = harness.load_checkpoint_state(result.checkpoint)
    return {m: save_kernel(store, run_id, run_name, encoder_id, dim, m, cfg.delta, state_dict, extra, loop_config)
            for m in modalities}, counts


def save_kernel(store, run_id: str, run_name: str, encoder_id: str, dim: int, modality: str, delta: float,
                state_dict: dict, extra: dict, loop_config: dict) -> dict:
    """One modality's kernel out of the trained set: its best checked epoch's weights (else the last's) and its card."""
    from showcase_core.selection.kernel import save_dpp

    prefix = f"kernels.{modality}."
    history = [{"epoch": h["epoch"], "seconds": h["seconds"], "examples": h["examples"], **h["modalities"][modality]}
               for h in extra["history"]]
    best = extra["best"].get(modality)
    if best is not None:
        weights = best["model"]
        selected = next(h for h in history if h["epoch"] == best["epoch"])
    else:
        weights = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        selected = history[-1]
    final = {k: v for k, v in selected.items() if k.startswith("val_")}
    card = {"name": "dpp", "version": run_id, "modality": modality, "created_at": utc_now(), "run_name": run_name,
            "encoder_id": encoder_id, "training": {**loop_config, "modality": modality}, "metrics": final,
            "history": history, "selected_epoch": selected["epoch"] + 1,
            "resumed_after_epochs": extra.get("resumed_after_epochs", []), "versions": versions()}
    uri = store.uri("models", "dpp", run_id, modality)
    save_dpp(weights, {"embed_dim": dim, "modality": modality, "delta": delta, "encoder_id": encoder_id}, uri, card)
    print(f"[train_dpp] {modality}: val F1@3 {final.get('val_f1', float('nan')):.4f} "
          f"(P {final.get('val_precision', float('nan')):.4f}, R {final.get('val_recall', float('nan')):.4f}) "
          f"at epoch {selected['epoch'] + 1} of {len(history)}", flush=True)
    return {"uri": uri, "metrics": final, "examples": history[-1]["examples"]}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("train_dpp", Settings, argv)
    store = open_store(cfg.root)
    encoder_id = registry.resolve_encoder_id(store, cfg.encoder)
    dim = check_data(store, encoder_id)
    meta = feature_meta(store, encoder_id, cfg.max_ground, dim)
    run_id, timer = new_run_id(), Timer()
    report = new_report("train_dpp", cfg, run_id)
    start_ray(state_api=True)
    models, counts = fit_kernels(store, cfg, run_id, encoder_id, meta, dim, timer)
    registry.publish(store, "dpp", run_id, store.uri("models", "dpp", run_id), encoder_id,
                     variants={m: v["uri"] for m, v in models.items()},
                     metrics={m: v["metrics"] for m, v in models.items()})
    report.update(counts=counts, models=models,
                  encoder_id=encoder_id, timings_s=timer.timings, versions=versions(), finished_at=utc_now())
    print(f"models: {store.uri('models', 'dpp', run_id)}; report: {store.write_report('train_dpp', run_id, report)}")
    return 0


if __name__ == "__main__":
    exit_process(run("train_dpp", main))

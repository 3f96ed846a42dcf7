"""Evaluation reports: ``python -m jobs.evaluate --root ROOT --stage dataset|selection|generation|recommend|all``.

- ``dataset``: Table 1 counts of the published tables, the explanation classifier Φ's held-out AUC/F1 when
  ``jobs.distill`` has trained one, and the paper's visual diversity in three levels over the CLIP image embeddings,
  with a histogram per level (PNG): Ray Data joins the photos with their embeddings and groups them by business, so no
  process holds every photo.
- ``selection``: the paper's Table 3: random / img / text / img+text (the latest DPP models), Prec/Recall/F1/Div@K.
- ``generation``: Table 2/4: every variant of the latest PC²L explaining the DPP's K picks, with Figure 6's plots.
- ``recommend``: the candidate recommenders (showcase_core.recommend.evaluation): every model of the latest published
  ``recommender`` retrained here for each of ``--recommender-seeds`` with that version's settings, MMRec's full
  ranking (train items masked), Recall/NDCG/Precision @10 and @20 on val and test as mean ± sd over the seeds, the
  long tail and the cold items, and, given the synthetic world (``--world``), Recall@20 on the businesses with a
  planted poor modality and R2MR's reviewer AUC against the planted flags; a bar plot.

The procedures are ``showcase_core.evaluation``'s; this job reads the store and the registry, and writes each stage's
Markdown (+ PNG) under ``ROOT/reports/evaluate/<run>/``; the run's JSON report holds every number.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Literal

import pyarrow as pa
import pyarrow.fs as pafs

from pydantic import field_validator

from showcase_core import evaluation, registry
from showcase_core.data.schema import SPLITS
from showcase_core.evaluation import GENERATION_COLUMNS, PAPER_PHI
from showcase_core.store import Store, StoreError, filesystem_for, new_run_id, read_text, utc_now, write_bytes_atomic

from .common import (DecodingSettings, UserError, exit_process, new_report, open_store, parse_args, read_table_dataset,
                     run, selection_example_datasets, setting, start_ray, versions)

STAGES = ("dataset", "selection", "generation", "recommend")
RECOMMENDER_ORDER = ["alignrec", "lightgcn", "bprmf", "popularity"]  # the expected test Recall@20 order
GENERATION_BUILD_BATCH = 1024  # generation examples one Ray Data task gives their vectors


class Settings(DecodingSettings):
    """Evaluation reports: dataset (Table 1, visual diversity), selection (Table 3), generation (Table 2/4),
    recommend (the candidate recommenders)."""

    stage: Literal[("all", *STAGES)] = setting("all", "which report (all: every one)")
    split: Literal[SPLITS] = setting("test", "the split evaluated")
    k: int = setting(3, "photos picked per (user, business): @K of Table 3 and the generator's input", ge=1)
    seed: int = setting(0, "seed of the random baseline's picks")
    encoder: str = setting("latest", "the dataset report's image embeddings: latest (the latest trained CLIP's) or "
                                     "an encoder id")
    recommender_seeds: str = setting("0,1,2", "the recommend report's seeds: each model is retrained once per seed "
                                              "(the split's cold items and the initialisation follow the seed)")
    world: str = setting("", "the synthetic world's directory (make_world --out): its world.json's planted "
                             "low-quality businesses give the recommend report's reviewer AUC (empty: none)")
    compare: str = setting("", "the generation report: more PC²L versions (ROOT/models/pc2l/<version>, comma-"
                               "separated) scored in the same table on the same photos, by the latest's CLIP and Φ; "
                               "rows that differ only in their seed are summarised as mean ± sd")
    sample_reviews: int = setting(20_000, "the generation report's reviews: at most this many of the split's, the "
                                          "ones of smallest hash of review id (BLAKE2b, the same in every run); 0: "
                                          "every review. Bounds the report's memory and decoding time", ge=0)

    @field_validator("recommender_seeds")
    @classmethod
    def _seeds(cls, value: str) -> str:
        seeds = [s.strip() for s in value.split(",") if s.strip()]
        if not seeds or not all(s.lstrip("-").isdigit() for s in seeds):
            raise ValueError(f"--recommender-seeds must be comma-separated integers, got {value!r}")
        return ",".join(seeds)


# -- dataset: Table 1 and visual diversity ----------------------------------------------------------------------

def phi_metrics(store: Store) -> dict | None:
    """Φ's held-out test metrics when distill has published one."""
    if not registry.is_published(store, "alignment"):
        return None
    entry = registry.latest(store, "alignment")
    return {"uri": entry.uri, **entry.metrics["test"], "paper": PAPER_PHI}


def dataset_table(store: Store, cfg: Settings) -> dict:
    from showcase_core.data.summary import dataset_summary

    encoder_id = registry.resolve_encoder_id(store, cfg.encoder)
    try:
        summary = dataset_summary(store)
        diversity = evaluation.dataset_diversity(business_diversity_batches(store, encoder_id))
    except StoreError as e:
        raise UserError(f"{e}; the dataset report needs ingested tables and image embeddings") from None
    return {"summary": summary, "encoder_id": encoder_id, "photos_embedded": diversity["photos_embedded"],
            "alignment_classifier": phi_metrics(store), "diversity": diversity["diversity"],
            "_groups": diversity["groups"]}


def business_diversity_batches(store: Store, encoder_id: str):
    """Ray Data: each photo (tables/images) joined with its image embedding, grouped by business, each business's
    diversity groups (``evaluation.business_diversity_rows``); yields their Arrow batches. A worker holds one
    business's photos, the driver 4 bytes a group (showcase_core.metrics.diversity.DiversityTotals)."""
    import ray

    from showcase_core import tables as delta
    from showcase_core.buckets import buckets_for
    from showcase_core.encoders.embed import embeddings_dir

    rel = embeddings_dir(encoder_id, "images")
    if not delta.exists(store, rel):
        raise StoreError(f"no images embeddings for encoder {encoder_id} under {store.root} (run `showcase embed`)")
    version = delta.current_version(store, "tables/images", store.table_version("images")["version"])
    photos = delta.rows(store, "tables/images", version)
    if not photos or not delta.rows(store, rel):
        return
    start_ray()
    # hash partitions per shuffle: one per CPU, fewer on small data (each partition is an aggregator actor)
    parts = max(1, min(int(ray.cluster_resources().get("CPU", 1)), buckets_for(photos, 100_000)))
    images = read_table_dataset(store, "tables/images", version, ["image_id", "user_id", "business_id"])
    vectors = read_table_dataset(store, rel, None, ["id", "embedding"])
    groups = (images.join(vectors, "inner", parts, on=("image_id",), right_on=("id",))
              .groupby("business_id", num_partitions=parts)
              .map_groups(evaluation.business_diversity_rows, batch_format="pyarrow"))
    yield from groups.iter_batches(batch_size=None, batch_format="pyarrow")


def dataset_report(store: Store, cfg: Settings) -> tuple[dict, str, dict]:
    table = dataset_table(store, cfg)
    files = diversity_plots(table)
    del table["_groups"]
    return table, dataset_markdown(table), files


def dataset_markdown(table: dict) -> str:
    from showcase_core.data.summary import summary_markdown

    lines = ["Table 1: the published dataset.", "", summary_markdown(table["summary"]), "",
             f"Visual diversity (mean 1 - cos of CLIP image features over photo pairs; encoder {table['encoder_id']}, "
             f"{table['photos_embedded']:,} photos):", "", "| level | div | pairs | groups | paper (Gest) |",
             "|---|---:|---:|---:|---:|"]
    for level, d in table["diversity"].items():
        paper = f"{d['paper']:.2f}" if d["paper"] is not None else "-"
        lines.append(f"| {level.replace('_', '-')} | {d['div']:.4f} | {d['pairs']:,} | {d['groups']:,} | {paper} |")
    phi = table["alignment_classifier"]
    if phi:
        lines += ["", f"Explanation classifier Φ on {phi['pairs']:,} held-out test pairs: AUC {phi['auc']:.3f}, "
                      f"F1 {phi['f1']:.3f} (paper: AUC {phi['paper']['auc']}, F1 {phi['paper']['f1']})."]
    else:
        lines += ["", "Explanation classifier Φ: not trained yet (run `showcase distill`)."]
    return "\n".join(lines)


def diversity_plots(table: dict) -> dict[str, bytes]:
    """One histogram per diversity level: the per-group mean dissimilarity, with the pooled mean marked."""
    plt = _pyplot()
    titles = {"intra_business": "Intra-Business (per business)", "inter_user": "Inter-User (per business)",
              "intra_user": "Intra-User (per user and business)"}
    out = {}
    for level, groups in table["_groups"].items():
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.hist(groups, bins=30, color="#4c72b0")
        ax.axvline(table["diversity"][level]["div"], color="#c44e52", label="pooled mean (eq. 14-16)")
        ax.set(title=f"Visual diversity: {titles[level]}", xlabel="mean 1 - cos over photo pairs", ylabel="groups")
        ax.legend(fontsize=8)
        out[f"diversity-{level.replace('_', '-')}.png"] = _png(fig)
    return out


# -- selection: Table 3 ---------------------------------------------------------------------------------------

def selection_table(store: Store, cfg: Settings) -> dict:
    """Table 3 on the split's examples as train_dpp builds them (``common.selection_example_datasets``: a ground set
    is the business's photos the feature tables keep, the newest ``max_ground_set``, with the user's own put in),
    scored block by block by Ray Data tasks (``evaluation.selection_sums``); the driver adds up a row per method and
    block."""
    from showcase_core import features as F
    from showcase_core.selection.kernel import load_dpp

    entry = registry.latest(store, "dpp")
    registry.check_files(*entry.variants.values())
    _, config = load_dpp(next(iter(entry.variants.values())))
    meta = F.meta_for_training(store, entry.encoder_id, config["embed_dim"], "max_ground_set", cfg.k, "--k",
                               "business")
    start_ray()
    datasets, totals = selection_example_datasets(store, entry.encoder_id, meta, meta["max_ground_set"],
                                                  (cfg.split,))
    sums = datasets[cfg.split].map_batches(evaluation.selection_sums, batch_size=None, batch_format="pyarrow",
                                           fn_kwargs={"dpp_uris": dict(entry.variants), "k": cfg.k,
                                                      "seed": cfg.seed})
    blocks = list(sums.iter_batches(batch_size=None, batch_format="pyarrow"))
    examples = sum(row["examples"] for block in blocks for row in block.to_pylist() if row["method"] == "random")
    if not examples:
        raise UserError(f"no {cfg.split}-split examples with embedded photos in the feature tables")
    return {"split": cfg.split, "k": cfg.k, "examples": examples, "skipped": totals[cfg.split] - examples,
            "max_ground_set": meta["max_ground_set"], "encoder_id": entry.encoder_id, "dpp_version": entry.version,
            "rows": evaluation.selection_rows(blocks, cfg.k)}


def selection_report(store: Store, cfg: Settings) -> tuple[dict, str, dict]:
    table = selection_table(store, cfg)
    return table, selection_markdown(table), {}


def selection_markdown(table: dict) -> str:
    k = table["k"]
    lines = [f"Table 3: personalized image selection on the {table['split']} split "
             f"({table['examples']:,} (user, business) pairs; a ground set is the business's newest "
             f"{table['max_ground_set']} photos, with the user's own), in %. Paper's numbers in brackets.", "",
             f"| method | Prec@{k} | Recall@{k} | F1@{k} | Div@{k} |", "|---|---:|---:|---:|---:|"]
    for row in table["rows"]:
        name, paper = row["method"], row["paper"] or {}
        cells = [f"{100 * row[m]:.2f} ({paper[m]:.2f})" if m in paper else f"{100 * row[m]:.2f}"
                 for m in ("precision", "recall", "f1", "div")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    f1 = {r["method"]: r["f1"] for r in table["rows"]}
    order = " > ".join(sorted(f1, key=f1.get, reverse=True))
    lines += ["", f"F1 order here: {order}; in the paper: img+text > img > text > random."]
    if "img+text" in f1 and f1["random"] > 0:
        lines.append(f"img+text F1@{k} is {f1['img+text'] / f1['random']:.2f}x random (paper: 5.36x).")
    return "\n".join(lines)


# -- generation: Table 2/4 and Figure 6 --------------------------------------------------------------------------

def generation_inputs(store: Store, cfg: Settings) -> dict:
    """What the generation report decodes from and scores with, for the latest PC²L: its encoder's ``cfg.split``
    examples (``split_generation_examples``), the latest DPP's K picks for each (``photo_lists``: ``dpp_picks``, or
    the example's own photos when the DPP has no example of its pair), those photos' feature vectors (``data``: theirs
    only, read by id), the scorer (that encoder, Φ) and the photos' entities; of the split's reviews, or of a sample of
    ``cfg.sample_reviews`` of them when it has more (``sample``: the review ids, or None; ``reviews``: the split's).
    The driver holds the sample's examples with their vectors, never a whole table. tests/perf/gpu_ablation.py exports
    and scores with the same."""
    from showcase_core.data.alignment import load_classifier
    from showcase_core.encoders.clip import load_encoder
    from showcase_core.encoders.embed import read_embeddings
    from showcase_core.generation.data import sample_of_split
    from showcase_core.metrics.grounding import wanted_photo_entities
    from showcase_core.model_files import load_model_config
    from showcase_core.selection.data import SelectionData, embedding_matrix

    pc2l, dpp, phi = (registry.latest(store, name) for name in ("pc2l", "dpp", "alignment"))
    registry.check_files(*pc2l.variants.values(), *dpp.variants.values(), phi.uri)
    config = load_model_config(next(iter(pc2l.variants.values())), "PC2L model")
    targets = pc2l.extra.get("targets", "sentences")
    sample, reviews = sample_of_split(store, cfg.split, cfg.sample_reviews) if cfg.sample_reviews else (None, 0)
    start_ray()
    try:
        examples = split_generation_examples(store, pc2l.encoder_id, targets, cfg.split, config, sample)
    except StoreError as e:
        raise UserError(f"{e}; the generation report needs ingested tables, embeddings and the {targets} table") \
            from None
    if not len(examples):
        raise UserError(f"no {cfg.split}-split examples with an explanation and embedded photos")
    modality = evaluation.best_modality(dpp.variants)
    picks = dpp_picks(store, dpp, modality, cfg.split, cfg.k, sample)
    photo_lists = [picks.get((u, b)) or pics for u, b, pics in zip(examples.user_ids, examples.business_ids,
                                                                   examples.photo_ids)]
    wanted = sorted({p for pics in photo_lists for p in pics})
    return {"pc2l": pc2l, "config": config, "targets": targets, "sample": sample, "reviews": reviews,
            "examples": examples, "photo_lists": photo_lists,
            "data": SelectionData(*embedding_matrix(read_embeddings(store, dpp.encoder_id, "images", ids=wanted))),
            "modality": modality,
            "encoder": load_encoder(**registry.encoder(store, pc2l.encoder_id).extra["spec"], device="cpu"),
            "phi": load_classifier(phi.uri)[0],
            "entities": wanted_photo_entities(store.iter_table_batches(targets, ["pic_ids", "entities"]), set(wanted))}


def split_generation_examples(store: Store, encoder_id: str, targets: str, split: str, config: dict,
                              review_ids: pa.Array | None = None):
    """The split's generation examples (of ``review_ids`` only, when given) of encoder ``encoder_id``
    (GenerationExamples, in the reviews' order) for a PC²L of ``config`` (its max_photos and max_history): the driver
    chooses them (ids and targets,
    ``choose_generation_examples``), Ray Data tasks add their photos' vectors by id and their history from the
    feature tables (``rows_of_chosen``, a block of GENERATION_BUILD_BATCH examples each), the same examples
    ``load_generation_examples`` builds from the whole tables."""
    import ray.data

    from showcase_core import features as F
    from showcase_core.generation.data import (choose_generation_examples, chosen_table, examples_of_rows,
                                               rows_of_chosen)

    chosen, _, dim = choose_generation_examples(store, encoder_id, targets, (split,), config["max_photos"], review_ids)
    table = chosen_table(chosen[split])
    if chosen[split]:
        meta = F.meta_for_training(store, encoder_id, dim, "max_history", config["max_history"],
                                   "the PC2L model's max_history", "user")
        built = ray.data.from_arrow(table).repartition(max(1, -(-table.num_rows // GENERATION_BUILD_BATCH))
                                                       ).map_batches(rows_of_chosen, batch_size=None,
                                                                     batch_format="pyarrow", fn_kwargs={
            "root": store.root, "encoder_id": encoder_id, "meta": meta, "max_history": config["max_history"]})
        rows = pa.concat_tables(built.iter_batches(batch_size=None, batch_format="pyarrow"))
        position = {r: i for i, r in enumerate(rows.column("review_id").to_pylist())}
        table = rows.take([position[r] for r in table.column("review_id").to_pylist()])  # the reviews' order
    return examples_of_rows(table, config["max_photos"], config["max_history"])[0]


def dpp_picks(store: Store, dpp, modality: str, split: str, k: int,
              review_ids: pa.Array | None = None) -> dict[tuple[str, str], list[str]]:
    """{(user id, business id): the DPP ``modality``'s K picks} for the split's selection examples (of ``review_ids``
    only, when given), built and picked block by block by Ray Data tasks (the selection stage's examples;
    ``evaluation.picked_photos``). The driver holds K photo ids per pair."""
    from showcase_core import features as F
    from showcase_core.selection.kernel import load_dpp

    _, config = load_dpp(dpp.variant(modality))
    meta = F.meta_for_training(store, dpp.encoder_id, config["embed_dim"], "max_ground_set", k, "--k", "business")
    datasets, _ = selection_example_datasets(store, dpp.encoder_id, meta, meta["max_ground_set"], (split,),
                                             review_ids)
    picked = datasets[split].map_batches(evaluation.picked_photos, batch_size=None, batch_format="pyarrow",
                                         fn_kwargs={"dpp_uri": dpp.variant(modality), "k": k})
    out = {}
    for batch in picked.iter_batches(batch_size=None, batch_format="pyarrow"):
        out.update(zip(zip(batch.column("user_id").to_pylist(), batch.column("business_id").to_pylist()),
                       batch.column("photo_ids").to_pylist()))
    return out


def generation_table(store: Store, cfg: Settings) -> dict:
    """The latest PC²L's variants explaining the latest DPP's K picks of the split's examples."""
    from showcase_core.model_files import load_model_config

    given = generation_inputs(store, cfg)
    pc2l, examples, photo_lists = given["pc2l"], given["examples"], given["photo_lists"]
    generators, inputs, groups = dict(pc2l.variants), {}, {}
    if cfg.compare:
        generators, groups = compared_generators(store, pc2l, cfg.compare.split(","))
        for name, uri in generators.items():
            config = load_model_config(uri, "PC2L model")
            other = json.loads(read_text(*filesystem_for(posixpath.join(uri, "card.json"))))["encoder_id"]
            if other != pc2l.encoder_id:  # the same photos and history, as that encoder's features
                inputs[name] = other_encoder_inputs(store, other, given["targets"], cfg.split, examples, photo_lists,
                                                    config, given["sample"])
    table = evaluation.generation_table(examples, photo_lists, given["data"], generators, given["encoder"],
                                        given["phi"], given["entities"], cfg.beams, cfg.decoding(), inputs)
    for row in table["rows"]:
        row["group"] = groups.get(row["method"], row["method"])
    sampled = None if given["sample"] is None else {"reviews": len(given["sample"]), "of": given["reviews"]}
    return {"split": cfg.split, "beams": cfg.beams, "k": cfg.k, "photos_from": f"DPP {given['modality']} picks "
            f"(K={cfg.k})", "pc2l_version": pc2l.version, "scorer": pc2l.encoder_id, "sampled": sampled, **table}


def compared_generators(store: Store, latest, versions: list[str]) -> tuple[dict, dict]:
    """{row name: model URI} of every variant of the latest PC²L and of ``versions``, named by variant, decoder,
    encoder (when not the latest's) and seed; and {row name: its group, the name without the seed}."""
    generators, groups = {}, {}
    for version in [latest.version] + [v.strip() for v in versions if v.strip() and v.strip() != latest.version]:
        base = store.uri("models", "pc2l", version)
        fs, path = filesystem_for(base)
        variants = sorted(posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
                          if i.type == pafs.FileType.Directory)
        if not variants:
            raise UserError(f"--compare {version}: no PC2L model at {base}")
        for variant in variants:
            uri = posixpath.join(base, variant)
            card = json.loads(read_text(*filesystem_for(posixpath.join(uri, "card.json"))))
            decoder = card["training"]["model"].get("decoder", "gpt2")
            group = f"{card['variant']} · {decoder}" + ("" if card["encoder_id"] == latest.encoder_id
                                                         else f" · {card['encoder_id'].rsplit('-', 1)[0]}")
            name = f"{group} · seed {card['training']['seed']}"
            if name in generators:
                name = f"{name} ({version})"
            generators[name], groups[name] = uri, group
    return generators, groups


def other_encoder_inputs(store: Store, encoder_id: str, targets: str, split: str, examples, photo_lists, config,
                         review_ids: pa.Array | None = None):
    """The examples' photos (``photo_lists``) and history as encoder ``encoder_id``'s features: (photo vector lists,
    history [N, H, C], history mask [N, H]); ``review_ids``: the examples' sample of reviews, if any."""
    from showcase_core.encoders.embed import read_embeddings
    from showcase_core.selection.data import embedding_matrix

    own = split_generation_examples(store, encoder_id, targets, split, config, review_ids)
    at = {r: i for i, r in enumerate(own.review_ids)}
    missing = [r for r in examples.review_ids if r not in at]
    if missing:
        raise UserError(f"encoder {encoder_id} has no {split} example of review {missing[0]} (and "
                        f"{len(missing) - 1} more): embed with it first")
    rows = [at[r] for r in examples.review_ids]
    wanted = sorted({p for pics in photo_lists for p in pics})
    ids, matrix = embedding_matrix(read_embeddings(store, encoder_id, "images", ids=wanted))
    row_of = {p: i for i, p in enumerate(ids)}
    vectors = [[matrix[row_of[p]] for p in pics if p in row_of] for pics in photo_lists]
    if not all(vectors):
        raise UserError(f"encoder {encoder_id} has embedded none of the photos of some {split} examples: embed with it")
    return vectors, own.history[rows], own.history_mask[rows]


def generation_report(store: Store, cfg: Settings) -> tuple[dict, str, dict]:
    table = generation_table(store, cfg)
    return table, generation_markdown(table), generation_plots(table)


def generation_markdown(table: dict) -> str:
    sampled = table.get("sampled")
    sample = "" if not sampled else (f" of a sample of {sampled['reviews']:,} of its {sampled['of']:,} reviews, "
                                     "those of smallest hash of review id")
    lines = [f"Table 2/4: explanations on the {table['split']} split ({table['examples']:,} pairs{sample}; photos: "
             f"{table['photos_from']}; beam {table['beams']}). Metrics in %; grounding and \"repeats a sentence\" "
             "(two equal sentences in one explanation) as shares, sentences as a mean per explanation; paper's Table 4 "
             "in brackets where it has the row.", "",
             "| method | " + " | ".join(name for _, name in GENERATION_COLUMNS) + " |",
             "|---|" + "---:|" * len(GENERATION_COLUMNS)]
    for row in table["rows"]:
        paper = row.get("paper") or {}
        cells = []
        for key, _ in GENERATION_COLUMNS:
            if key not in row or row[key] is None:
                cells.append("-")
            else:
                value = f"{row[key]:.3f}" if key in ("grounding", "repeats") else f"{row[key]:.2f}"
                cells.append(f"{value} ({paper[key]:.2f})" if key in paper else value)
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    models = [r for r in table["rows"] if r["method"] != "ground truth"]
    lines += seed_summary(models)
    for key, name in (("bleu1", "BLEU-1"), ("clip_align", "CLIP-Align"), ("grounding", "grounding")):
        order = " > ".join(r["method"] for r in sorted(models, key=lambda r: r[key], reverse=True))
        lines.append(f"\n{name} order here: {order}.")
    lines.append("\nIn the paper PC²L is best on every metric of Table 4. METEOR here has no WordNet synonym stage "
                 "(a lower bound); BERTScore uses all-MiniLM-L6-v2, not the paper's RoBERTa-large.")
    return "\n".join(lines)


def seed_summary(rows: list[dict]) -> list[str]:
    """Markdown lines: mean ± sd (over seeds) of every column, for each group of rows that differ only in the seed."""
    import numpy as np

    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row.get("group", row["method"]), []).append(row)
    if all(len(members) < 2 for members in groups.values()):
        return []
    lines = ["", "Over seeds (mean ± sd; n rows):", "",
             "| method | n | " + " | ".join(name for _, name in GENERATION_COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(GENERATION_COLUMNS)]
    for group, members in groups.items():
        cells = []
        for key, _ in GENERATION_COLUMNS:
            values = np.array([m[key] for m in members if m.get(key) is not None], float)
            digits = 3 if key in ("grounding", "repeats") else 2
            cells.append("-" if not len(values) else f"{values.mean():.{digits}f} ± "
                         f"{values.std(ddof=1) if len(values) > 1 else 0.0:.{digits}f}")
        lines.append(f"| {group} | {len(members)} | " + " | ".join(cells) + " |")
    return lines


# -- recommend: the candidate recommenders ------------------------------------------------------------------------

def load_world(world: str) -> dict | None:
    """A synthetic world's world.json (None without --world): its entities, users' tastes, menus and planted
    low-quality businesses."""
    if not world:
        return None
    path = world if world.endswith(".json") else os.path.join(world, "world.json")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"--world {world}: cannot read {path}: {e}") from None
    missing = [k for k in ("low_quality", "entities", "users", "businesses") if k not in meta]
    if missing:
        raise UserError(f"--world {world}: {path} has no {', '.join(missing)} (drawn by an older make_world; redraw "
                        "it)")
    return meta


def recommend_table(store: Store, cfg: Settings) -> dict:
    from showcase_core.recommend.data import load_recommender_data
    from showcase_core.recommend.evaluation import evaluate_seed, order_met, summarize

    entry = registry.latest(store, "recommender")
    models = list(entry.variants)
    try:
        training = store.read_json(f"models/recommender/{entry.version}/{models[0]}/card.json")["training"]
    except (StoreError, KeyError) as e:
        raise UserError(f"recommender {entry.version}: no model card with its training settings ({e})") from None
    world = load_world(cfg.world)
    seeds = [int(s) for s in cfg.recommender_seeds.split(",")]
    per_seed = []
    for seed in seeds:
        try:
            data = load_recommender_data(store, entry.encoder_id, training["cold_fraction"], seed)
        except StoreError as e:
            raise UserError(f"{e}; the recommend report needs the reviews table and the users feature table") from None

        def progress(name, seed, metrics):
            print(f"[evaluate] recommend seed {seed}: {name} test Recall@20 {metrics['test']['recall@20']:.4f}",
                  flush=True)

        if world is not None and not per_seed:
            check_world_describes(world, data.interactions, cfg.world)
        per_seed.append(evaluate_seed(data, models, training, seed, world, progress))
    summary = summarize(per_seed)
    order = [m for m in RECOMMENDER_ORDER if m in summary]
    return {"recommender_version": entry.version, "encoder_id": entry.encoder_id, "seeds": seeds,
            "training": {k: training[k] for k in ("epochs", "batch_size", "lr", "eval_every", "cold_fraction")},
            "planted": {k: len(v) for k, v in world["low_quality"].items()} if world else None,
            "models": summary, "per_seed": per_seed, "order": order_met(summary, order)}


def check_world_describes(world: dict, interactions, path: str) -> None:
    """UserError unless the world knows every user and business the reviews have (the oracle ranks by their taste,
    menu and area): a --world that is not the one the ROOT was ingested from."""
    for kind, ids, known in (("user", interactions.users, world["users"]),
                             ("business", interactions.items, world["businesses"])):
        unknown = sorted(set(ids) - {entry[f"{kind}_id"] for entry in known})
        if unknown:
            raise UserError(f"--world {path}: it does not describe {len(unknown)} {kind}(s) of the reviews, e.g. "
                            f"{unknown[0]!r} (is it the world this ROOT was ingested from?)")


def recommend_report(store: Store, cfg: Settings) -> tuple[dict, str, dict]:
    table = recommend_table(store, cfg)
    return table, recommend_markdown(table), recommend_plots(table)


def _mean_sd(cell: dict, scale: float = 100.0) -> str:
    if cell["mean"] is None:
        return "-"
    return f"{scale * cell['mean']:.2f} ± {scale * cell['sd']:.2f}"


def recommend_markdown(table: dict) -> str:
    models, seeds = table["models"], table["seeds"]
    metrics = [f"{name}@{k}" for k in (10, 20) for name in ("recall", "ndcg", "precision")]
    lines = [f"Candidate recommenders: full ranking of every business, train items masked (MMRec's protocol); in %, "
             f"mean ± sd over seeds {', '.join(map(str, seeds))} (each model retrained per seed with recommender "
             f"{table['recommender_version']}'s settings: {table['training']['epochs']} epochs, batch "
             f"{table['training']['batch_size']}, the best val Recall@20 of every {table['training']['eval_every']} "
             "epochs kept). random: the exact expectation of a uniformly random ranking; oracle (with --world): the "
             "ranking by the world's own taste × menu affinity, the ceiling of what the data can teach."]
    for split in ("val", "test"):
        lines += ["", f"{split}:", "", "| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
        for name, m in models.items():
            lines.append(f"| {name} | " + " | ".join(_mean_sd(m[split][k]) for k in metrics) + " |")
    subsets = [("test_long_tail", "long tail"), ("test_cold", "cold items"), ("test_planted", "planted poor modality")]
    subsets = [(k, n) for k, n in subsets if all(k in m for m in models.values())]
    lines += ["", "test Recall@20 on subsets of the held-out items (users with one there; counts from seed "
                  f"{seeds[0]}):", "", "| model | " + " | ".join(n for _, n in subsets) + " |",
              "|---|" + "---:|" * len(subsets)]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(_mean_sd(m[k]["recall@20"]) for k, _ in subsets) + " |")
    first = next(iter(table["per_seed"][0].values()))
    lines.append("\nusers: " + ", ".join(f"{n} {first[k]['users']:,}" for k, n in [("test", "test")] + subsets) + ".")
    for name, m in models.items():
        if "reviewer" in m:
            r = m["reviewer"]
            auc = lambda key: f"{r[key]['mean']:.3f} ± {r[key]['sd']:.3f}" if key in r else "-"  # noqa: E731
            share = lambda key: "-" if r.get(key, {}).get("mean") is None else f"{100 * r[key]['mean']:.0f}%"  # noqa: E731
            lines.append(f"\n{name}'s modality reviewer against the planted flags ({table['planted']}): AUC photos "
                         f"{auc('auc_image')}, reviews {auc('auc_text')} (1 - quality score of the content as given "
                         f"vs poor modality, warm items); planted modalities rewritten: photos "
                         f"{share('poor_rewritten_image')}, reviews {share('poor_rewritten_text')}.")
    if table["order"]:
        checks = [f"{o['better']} > {o['worse']} by {100 * o['gap']:.2f} (sd {100 * o['sd']:.2f}): "
                  f"{'met' if o['met'] else 'NOT met'}" for o in table["order"]]
        lines.append("\nExpected order of test Recall@20, each by more than one sd: " + "; ".join(checks) + ".")
    return "\n".join(lines)


def recommend_plots(table: dict) -> dict[str, bytes]:
    """Test Recall@20 and NDCG@20 per model, mean with sd error bars."""
    import numpy as np

    plt = _pyplot()
    models = table["models"]
    names = list(models)
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    width = 0.38
    for i, key in enumerate(("recall@20", "ndcg@20")):
        means = [100 * models[n]["test"][key]["mean"] for n in names]
        sds = [100 * models[n]["test"][key]["sd"] for n in names]
        ax.bar(np.arange(len(names)) + i * width, means, width, yerr=sds, capsize=3, label=key)
    ax.set(xticks=np.arange(len(names)) + width / 2, xticklabels=names, ylabel="%",
           title=f"Recommenders on test (mean ± sd, {len(table['seeds'])} seeds)")
    ax.legend(fontsize=8)
    return {"recommenders.png": _png(fig)}


# -- plots ------------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    import io

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return buf.getvalue()


def _grouped_bars(ax, series: dict[str, list[float]], labels: list[str]) -> None:
    import numpy as np

    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(len(labels)) + i * width, values, width, label=name)
    ax.set(xticks=np.arange(len(labels)) + 0.4 - width / 2, xticklabels=labels)
    ax.legend(fontsize=7)


def generation_plots(table: dict) -> dict[str, bytes]:
    """Figure 6: (a) length distributions of generated vs ground-truth texts, (b) keyword coverage."""
    plt = _pyplot()
    bins = list(next(iter(table["lengths"].values())))
    shares = {name: [counts[b] / max(sum(counts.values()), 1) for b in bins] for name, counts in table["lengths"].items()}
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    _grouped_bars(ax, shares, bins)
    ax.set(xlabel="words", ylabel="share of texts", title="Length distribution (Figure 6a)")
    out = {"lengths.png": _png(fig)}
    kinds = list(next(iter(table["keyword_coverage"].values())))
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    _grouped_bars(ax, {name: [100 * cov[k] for k in kinds] for name, cov in table["keyword_coverage"].items()}, kinds)
    ax.set(ylabel="coverage (%)", title="Keyword coverage (Figure 6b)")
    out["keyword-coverage.png"] = _png(fig)
    return out


REPORTS = {"dataset": dataset_report, "selection": selection_report, "generation": generation_report,
           "recommend": recommend_report}


def write_outputs(store: Store, run_id: str, stage: str, markdown: str, files: dict[str, bytes]) -> dict[str, str]:
    """The stage's Markdown and plots under reports/evaluate/<run>/: name -> URI."""
    out = {}
    for name, data in {f"{stage}.md": (markdown + "\n").encode(), **files}.items():
        rel = f"reports/evaluate/{run_id}/{name}"
        write_bytes_atomic(store.fs, store.path(rel), data)
        out[name] = store.uri(rel)
    return out


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("evaluate", Settings, argv)
    store = open_store(cfg.root)
    run_id = new_run_id()
    report = new_report("evaluate", cfg, run_id)

    outputs = {}
    for stage in STAGES if cfg.stage == "all" else (cfg.stage,):
        table, markdown, files = REPORTS[stage](store, cfg)
        report[stage] = table
        outputs[stage] = write_outputs(store, run_id, stage, markdown, files)
        print(markdown + "\n")

    report.update(outputs=outputs, versions=versions(), finished_at=utc_now())
    print(f"\nreport: {store.write_json(f'reports/evaluate/{run_id}.json', report)}")
    return 0


if __name__ == "__main__":
    exit_process(run("evaluate", main))

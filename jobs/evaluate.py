"""Evaluation tables: ``python -m jobs.evaluate --root ROOT --stage selection|dataset|all``.

- ``selection``: the paper's Table 3 on the test split: rows random / img / text / img+text (the latest DPP models),
  columns Prec@3, Recall@3, F1@3, Div@3 (in %), next to the paper's numbers.
- ``dataset``: Table 1 counts of the published tables, the explanation classifier Φ's held-out AUC/F1 when
  ``jobs.distill`` has trained one, and the paper's visual diversity in three levels (Intra-Business, Inter-User,
  Intra-User; Appendix B) over the CLIP image embeddings, with a histogram per level (PNG).

Each stage writes Markdown (+ PNG) under ``ROOT/reports/evaluate/``; the run's JSON report holds every number.
"""

from __future__ import annotations

import json
import sys

from showcase_core.generation import DECODING
from showcase_core.store import StoreError, filesystem_for, new_run_id, read_text, utc_now, write_bytes_atomic

from .common import UserError, new_report, open_store, parse_args, resolve_encoder_id, run, versions

DEFAULTS = {"root": None, "stage": "all", "split": "test", "k": 3, "seed": 0, "beams": 2, **DECODING,
            "encoder": "latest"}  # the dataset stage's image embeddings: latest trained CLIP, or an encoder_id
STAGES = ("dataset", "selection", "generation")
PAPER_TABLE4 = {  # Table 4 of the paper (%): its baseline is CE only; its CCL / PCL rows add vanilla CL for the other
    "ce": {"bleu1": 7.96, "distinct2": 25.90, "clip_align": 82.50},  # modality, which ours leave out
    "pc2l": {"bleu1": 10.40, "distinct2": 28.58, "clip_align": 85.31},
}
GENERATION_ORDER = ("ce", "ce+ccl", "ce+pcl", "pc2l")
PAPER_DIVERSITY = {"intra_business": 0.39}  # Gest's, the one figure the paper's text gives (§3.2)
PAPER_TABLE3 = {  # Table 3 of the paper, in %
    "random": {"precision": 4.87, "recall": 6.14, "f1": 5.43, "div": 30.24},
    "img": {"precision": 25.21, "recall": 34.05, "f1": 28.97, "div": 17.12},
    "text": {"precision": 15.28, "recall": 20.58, "f1": 17.54, "div": 18.68},
    "img+text": {"precision": 25.21, "recall": 34.37, "f1": 29.09, "div": 17.07},
}


def selection_table(store, split: str, k: int, seed: int) -> dict:
    from showcase_core.selection.kernel import load_dpp
    from showcase_core.selection.training import evaluate_picks, random_baseline, select

    from .train_dpp import load_selection_data

    try:
        latest = store.read_json("models/dpp/_LATEST.json")
    except StoreError:
        raise UserError(f"no trained DPP under {store.root}/models/dpp (run `showcase train_dpp`)") from None
    data = load_selection_data(store.root, latest["encoder_id"], max_ground=10**9, splits=(split,))
    examples = data.splits[split]
    if not len(examples):
        raise UserError(f"no {split}-split examples with embedded photos")
    rows = {"random": random_baseline(data, examples, k, seed)}
    for modality in sorted(latest["models"], key=lambda m: list(PAPER_TABLE3).index(m) if m in PAPER_TABLE3 else 99):
        model, _ = load_dpp(latest["models"][modality])
        rows[modality] = evaluate_picks(data, examples, select(model, data, examples, k), k)
    return {"split": split, "k": k, "examples": len(examples), "skipped": data.skipped[split],
            "encoder_id": latest["encoder_id"], "dpp_version": latest["version"],
            "rows": [{"method": name, **row, "paper": PAPER_TABLE3.get(name)} for name, row in rows.items()]}


def selection_markdown(table: dict) -> str:
    k = table["k"]
    lines = [f"Table 3: personalized image selection on the {table['split']} split "
             f"({table['examples']:,} (user, business) pairs), in %. Paper's numbers in brackets.", "",
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


def dataset_table(store, cfg: dict) -> dict:
    from showcase_core.data.summary import dataset_summary
    from showcase_core.encoders.embed import read_embeddings
    from showcase_core.metrics.diversity import visual_diversity

    
    encoder_id = resolve_encoder_id(store, cfg["encoder"])
    try:
        summary = dataset_summary(store)
        images = store.read_table("images", ["image_id", "user_id", "business_id"])
        embeddings = read_embeddings(store, encoder_id, "images")
    except StoreError as e:
        raise UserError(f"{e}; the dataset report needs ingested tables and image embeddings") from None
    row_of = {i: n for n, i in enumerate(embeddings.column("id").to_pylist())}
    keep = [(row_of[i], u, b) for i, u, b in zip(*(images.column(c).to_pylist()
                                                  for c in ("image_id", "user_id", "business_id"))) if i in row_of]
    matrix = embeddings.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(row_of), -1)
    diversity = visual_diversity(matrix[[k[0] for k in keep]], [k[2] for k in keep], [k[1] for k in keep])
    phi = None
    if store.exists("models/alignment/_LATEST.json"):
        latest = store.read_json("models/alignment/_LATEST.json")
        card = json.loads(read_text(*filesystem_for(latest["uri"].rstrip("/") + "/card.json")))
        phi = {"uri": latest["uri"], **card["metrics"]["test"], "paper": card["paper"]}
    return {"summary": summary, "encoder_id": encoder_id, "photos_embedded": len(keep), "alignment_classifier": phi,
            "diversity": {level: {"div": d["div"], "pairs": d["pairs"], "groups": len(d["groups"]),
                                  "paper": PAPER_DIVERSITY.get(level)} for level, d in diversity.items()},
            "_groups": {level: d["groups"] for level, d in diversity.items()}}


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


def generation_table(store, cfg: dict) -> dict:
    """Table 2/4-style rows on the test split: each trained PC²L variant decoding (beam 2) from the DPP's K picks and
    the user's history, scored against the ground-truth explanations; ground truth itself for diversity."""
    import numpy as np

    from showcase_core.data.alignment import load_classifier, split_sentences
    from showcase_core.encoders.clip import load_encoder
    from showcase_core.generation.decode import generate
    from showcase_core.generation.model import load_pc2l
    from showcase_core.metrics.embedding import clip_align, clip_score
    from showcase_core.metrics.grounding import grounding_rate, photo_entities
    from showcase_core.metrics.keywords import keyword_coverage, length_histogram
    from showcase_core.metrics.text import bertscore, distinct_n, repetition, text_metrics
    from showcase_core.selection.kernel import load_dpp
    from showcase_core.selection.training import select

    from .distill import encoder_spec
    from .train_dpp import load_selection_data
    from .train_pc2l import load_examples

    latest = {}
    for name, hint in (("pc2l", "train_pc2l"), ("dpp", "train_dpp"), ("alignment", "distill")):
        try:
            latest[name] = store.read_json(f"models/{name}/_LATEST.json")
        except StoreError:
            raise UserError(f"no trained {name} model under {store.root}/models/{name} (run `showcase {hint}`)") from None
    encoder_id = latest["pc2l"]["encoder_id"]
    _, first_config = load_model_config(next(iter(latest["pc2l"]["models"].values())))
    targets = first_config.get("targets", "sentences")
    splits, _ = load_examples(store.root, encoder_id, targets, (cfg["split"],), first_config["max_photos"],
                              first_config["max_history"])
    examples = splits[cfg["split"]]
    if not len(examples):
        raise UserError(f"no {cfg['split']}-split examples with an explanation and embedded photos")
    # the photos at inference: the DPP's K picks for each (user, business), best available modality
    data = load_selection_data(store.root, latest["dpp"]["encoder_id"], 10**9, (cfg["split"],))
    modality = next(m for m in ("img+text", "img", "text") if m in latest["dpp"]["models"])
    dpp, _ = load_dpp(latest["dpp"]["models"][modality])
    sel = data.splits[cfg["split"]]
    picks = select(dpp, data, sel, cfg["k"])
    picked = {(u, b): [data.photo_ids[p] for p in row if p >= 0] for u, b, row in zip(sel.user_ids, sel.business_ids,
                                                                                     picks)}
    row_of = {p: i for i, p in enumerate(data.photo_ids)}
    photo_lists = [picked.get((u, b)) or pics for u, b, pics in zip(examples.user_ids, examples.business_ids,
                                                                   examples.photo_ids)]
    photos, photo_mask = pack_photos([[data.photo_vecs[row_of[p]] for p in pics] for pics in photo_lists],
                                     first_config["max_photos"])
    sentences = store.read_table(targets, ["pic_ids", "entities"])
    entities = photo_entities(sentences.column("pic_ids").to_pylist(), sentences.column("entities").to_pylist())
    shown = [set().union(*(entities.get(p, set()) for p in pics)) for pics in photo_lists]
    encoder = load_encoder(**encoder_spec(store, encoder_id), device="cpu")
    phi, _ = load_classifier(latest["alignment"]["uri"])
    image_sets = [np.stack([data.photo_vecs[row_of[p]] for p in pics]) for pics in photo_lists]
    refs = examples.targets

    rows, outputs = [], {}
    for variant in sorted(latest["pc2l"]["models"], key=lambda v: GENERATION_ORDER.index(v)
                          if v in GENERATION_ORDER else 99):
        model, tokenizer, _ = load_pc2l(latest["pc2l"]["models"][variant])
        hyps = []
        for start in range(0, len(examples), 64):
            sl = slice(start, start + 64)
            hyps += generate(model, tokenizer, photos[sl], photo_mask[sl], examples.history[sl],
                             examples.history_mask[sl], num_beams=cfg["beams"], **{k: cfg[k] for k in DECODING})
        sentence_sets = [encoder.encode_texts(split_sentences(h)) if split_sentences(h) else np.zeros((0, 1))
                         for h in hyps]
        scores = text_metrics(hyps, refs)
        row = {"method": variant, **{key: scores[name] for key, name in GENERATION_COLUMNS if name in scores},
               "meteor_mode": scores["meteor_mode"]}
        row.update(clip_align=100 * clip_align(image_sets, sentence_sets, phi)["score"],
                   clip_score=100 * clip_score(image_sets, sentence_sets)["score"],
                   bertscore=100 * bertscore(hyps, refs)["f1"], grounding=grounding_rate(hyps, shown)["rate"],
                   **repetition(hyps), paper=PAPER_TABLE4.get(variant))
        rows.append(row)
        outputs[variant] = hyps
    rows.append({"method": "ground truth", "distinct1": 100 * distinct_n(refs, 1), "distinct2": 100 * distinct_n(refs, 2),
                 "grounding": grounding_rate(refs, shown)["rate"], **repetition(refs)})
    compare = "pc2l" if "pc2l" in outputs else next(iter(outputs))
    baseline = "ce" if "ce" in outputs else None
    samples = [{"review_id": r, "photos": p, "reference": ref, **{v: outputs[v][i] for v in outputs}}
               for i, (r, p, ref) in enumerate(zip(examples.review_ids, photo_lists, refs)) if i < 10]
    return {"split": cfg["split"], "examples": len(examples), "beams": cfg["beams"], "k": cfg["k"],
            "photos_from": f"DPP {modality} picks (K={cfg['k']})", "pc2l_version": latest["pc2l"]["version"],
            "rows": rows, "samples": samples,
            "lengths": {"ground truth": length_histogram(refs), **{v: length_histogram(h) for v, h in outputs.items()}},
            "keyword_coverage": {v: keyword_coverage(outputs[v], refs) for v in {compare, baseline} - {None}}}


def load_model_config(uri: str) -> tuple[dict, dict]:
    from showcase_core.store import filesystem_for as _fs

    fs, base = _fs(uri)
    config = json.loads(read_text(fs, base.rstrip("/") + "/config.json"))
    card = json.loads(read_text(fs, base.rstrip("/") + "/card.json"))
    return card, {**config, "targets": card.get("targets", "sentences")}


def pack_photos(vector_lists, width: int):
    from showcase_core.generation.data import pack

    return pack(vector_lists, width, len(vector_lists[0][0]))


GENERATION_COLUMNS = [("bleu1", "BLEU-1"), ("bleu4", "BLEU-4"), ("meteor", "METEOR"), ("nist", "NIST"),
                      ("distinct1", "Distinct-1"), ("distinct2", "Distinct-2"), ("clip_align", "CLIP-Align"),
                      ("clip_score", "CLIP-Score"), ("bertscore", "BERTScore"), ("grounding", "grounding"),
                      ("repeats", "repeats a sentence"), ("sentences", "sentences")]


def generation_markdown(table: dict) -> str:
    lines = [f"Table 2/4: explanations on the {table['split']} split ({table['examples']:,} pairs; photos: "
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
    for key, name in (("bleu1", "BLEU-1"), ("clip_align", "CLIP-Align"), ("grounding", "grounding")):
        order = " > ".join(r["method"] for r in sorted(models, key=lambda r: r[key], reverse=True))
        lines.append(f"\n{name} order here: {order}.")
    lines.append("\nIn the paper PC²L is best on every metric of Table 4. METEOR here has no WordNet synonym stage "
                 "(a lower bound); BERTScore uses all-MiniLM-L6-v2, not the paper's RoBERTa-large.")
    return "\n".join(lines)


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


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("evaluate", DEFAULTS, argv)
    stages = STAGES if cfg["stage"] == "all" else (cfg["stage"],)
    if set(stages) - set(STAGES):
        raise UserError(f"--stage must be one of {', '.join(STAGES)} or all, got {cfg['stage']!r}")
    store = open_store(cfg["root"])
    run_id = new_run_id()
    report = new_report("evaluate", cfg, run_id)
    outputs = {}
    for stage in stages:
        files = {}
        if stage == "selection":
            table = selection_table(store, cfg["split"], cfg["k"], cfg["seed"])
            markdown = selection_markdown(table)
        elif stage == "generation":
            table = generation_table(store, cfg)
            markdown = generation_markdown(table)
            files = generation_plots(table)
        else:
            table = dataset_table(store, cfg)
            markdown = dataset_markdown(table)
            files = diversity_plots(table)
            del table["_groups"]
        report[stage] = table
        outputs[stage] = {}
        for name, data in {f"{stage}.md": (markdown + "\n").encode(), **files}.items():
            rel = f"reports/evaluate/{run_id}/{name}"
            write_bytes_atomic(store.fs, store.path(rel), data)
            outputs[stage][name] = store.uri(rel)
        print(markdown + "\n")
    report.update(outputs=outputs, versions=versions(), finished_at=utc_now())
    uri = store.write_json(f"reports/evaluate/{run_id}.json", report)
    print(f"\nreport: {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(run("evaluate", main))

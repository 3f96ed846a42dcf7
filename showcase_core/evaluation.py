"""The paper's evaluation procedures on loaded data, and the paper's numbers each is shown next to.

- ``selection_sums`` + ``selection_rows``: Table 3, personalized image selection: the random baseline and each DPP
  modality's K picks, Prec/Recall/F1/Div@K, summed block by block of examples;
- ``business_diversity_rows`` + ``dataset_diversity``: Table 1's visual diversity in three levels (Intra-Business,
  Inter-User, Intra-User; Appendix B) over the CLIP image embeddings of the photos, business by business;
- ``picked_photos`` + ``generation_table``: Table 2/4, explanations: each PC²L variant decoding from the DPP's K
  picks and the user's history, scored against the ground-truth explanations, and ground truth itself for the
  reference-free metrics; with Figure 6's length histograms and keyword coverage. ``score_generations`` is its
  scoring half, for explanations written elsewhere (tests/perf/gpu_ablation.py's GPU runs).

Reading the store and the registry is the caller's (jobs.evaluate); this module neither reads ROOT nor uses Ray.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

PAPER_TABLE3 = {  # Table 3 of the paper, in %
    "random": {"precision": 4.87, "recall": 6.14, "f1": 5.43, "div": 30.24},
    "img": {"precision": 25.21, "recall": 34.05, "f1": 28.97, "div": 17.12},
    "text": {"precision": 15.28, "recall": 20.58, "f1": 17.54, "div": 18.68},
    "img+text": {"precision": 25.21, "recall": 34.37, "f1": 29.09, "div": 17.07},
}
PAPER_TABLE4 = {  # Table 4 of the paper (%): its baseline is CE only; its CCL / PCL rows add vanilla CL for the other
    "ce": {"bleu1": 7.96, "distinct2": 25.90, "clip_align": 82.50},  # modality, which ours leave out
    "pc2l": {"bleu1": 10.40, "distinct2": 28.58, "clip_align": 85.31},
}
PAPER_DIVERSITY = {"intra_business": 0.39}  # Gest's, the one figure the paper's text gives (§3.2)
PAPER_PHI = {"auc": 0.97, "f1": 0.71}  # the explanation classifier Φ on held-out pairs (§3.3)

GENERATION_ORDER = ("ce", "ce+ccl", "ce+pcl", "pc2l")
# (row key, metric name) of every column of the generation table, in order
GENERATION_COLUMNS = [("bleu1", "BLEU-1"), ("bleu4", "BLEU-4"), ("meteor", "METEOR"), ("nist", "NIST"),
                      ("distinct1", "Distinct-1"), ("distinct2", "Distinct-2"), ("clip_align", "CLIP-Align"),
                      ("clip_score", "CLIP-Score"), ("bertscore", "BERTScore"), ("grounding", "grounding"),
                      ("repeats", "repeats a sentence"), ("sentences", "sentences")]
DECODE_BATCH = 64  # examples decoded together
SCORED_AT_ONCE = 256  # selection examples whose kernels are built together
RANDOM_DRAWS = 20  # random draws of each example the random baseline's Div@K is pooled over
SELECTION_SUMS = pa.schema([("method", pa.string()), ("examples", pa.int64()), ("precision", pa.float64()),
                            ("recall", pa.float64()), ("div", pa.float64()), ("divs", pa.int64())])


def _in_order(names, order) -> list[str]:
    """Names in the paper's order, unknown ones last."""
    order = list(order)
    return sorted(names, key=lambda n: order.index(n) if n in order else len(order))


def selection_sums(rows: pa.Table, dpp_uris: dict[str, str], k: int, seed: int) -> pa.Table:
    """Ray Data step (jobs.evaluate's selection stage): a block of examples (showcase_core.selection.data's
    ``examples_schema`` rows less the reason) -> Table 3's sums over them, a row per method (``PickScores.sums``):
    the random baseline (``random_scores``, RANDOM_DRAWS draws of each example) and each DPP modality (its saved
    model at ``dpp_uris[modality]``) picking K of each ground set, scored against the user's photos. Memory: the
    block and SCORED_AT_ONCE examples' kernels."""
    from .selection.data import arrow_batch
    from .selection.kernel import load_dpp
    from .selection.training import PickScores, pick_positions, random_scores

    models = {modality: load_dpp(uri)[0] for modality, uri in dpp_uris.items()}
    scores, drawn = {modality: PickScores(k) for modality in models}, []
    for start in range(0, rows.num_rows, SCORED_AT_ONCE):
        part = rows.slice(start, SCORED_AT_ONCE)
        batch = arrow_batch(part)
        keys = [f"{u}\t{b}" for u, b in zip(part.column("user_id").to_pylist(), part.column("business_id").to_pylist())]
        drawn.append(random_scores(batch, keys, k, seed, RANDOM_DRAWS).sums())
        for modality, model in models.items():
            scores[modality].add(batch, pick_positions(model, batch, k))
    sums = {"random": PickScores.of_sums(drawn, k).sums(), **{m: s.sums() for m, s in scores.items()}}
    return pa.Table.from_pylist([{"method": name, **row} for name, row in sums.items()], schema=SELECTION_SUMS)


def selection_rows(sums, k: int) -> list[dict]:
    """Table 3 from ``selection_sums``' tables (an iterable, e.g. a Ray Data dataset's batches): the random baseline,
    then each DPP modality in the paper's order, each with the paper's numbers. Memory: a row per method and block."""
    from .selection.training import PickScores

    parts: dict[str, list[dict]] = {}
    for table in sums:
        for row in table.to_pylist():
            parts.setdefault(row.pop("method"), []).append(row)
    rows = []
    for name in ["random", *_in_order(set(parts) - {"random"}, PAPER_TABLE3)]:
        extra = {"draws": RANDOM_DRAWS} if name == "random" else {}
        rows.append({"method": name, **PickScores.of_sums(parts[name], k).scores(), **extra,
                     "paper": PAPER_TABLE3.get(name)})
    return rows


def business_diversity_rows(photos: pa.Table) -> pa.Table:
    """One business's embedded photos (user_id, embedding) -> its groups of the three diversity levels, a row each
    (level, dis_sum, pairs, photos: the business's photo count on its intra_business row, else 0). jobs.evaluate
    runs it on each business of a Ray Data group-by, so memory is one business's photos."""
    import pyarrow.compute as pc

    from .metrics.diversity import business_diversity

    flat = pc.list_flatten(photos.column("embedding")).to_numpy(zero_copy_only=False)
    levels = business_diversity(flat.reshape(photos.num_rows, -1), photos.column("user_id").to_pylist())
    rows = [(level, s, n) for level, stats in levels.items() for s, n in stats]
    return pa.table({"level": [r[0] for r in rows], "dis_sum": pa.array([r[1] for r in rows], pa.float64()),
                     "pairs": pa.array([r[2] for r in rows], pa.int64()),
                     "photos": pa.array([photos.num_rows if r[0] == "intra_business" else 0 for r in rows],
                                        pa.int64())})


def dataset_diversity(group_rows) -> dict:
    """Visual diversity of the embedded photos pooled from ``business_diversity_rows``' tables (an iterable, e.g. a
    Ray Data dataset's batches): per level the pooled div, its photo pairs and groups with the paper's figure, the
    per-group values (``groups``, for histograms) and the number of photos embedded. Memory: 4 bytes a group."""
    import pyarrow.compute as pc

    from .metrics.diversity import LEVELS, DiversityTotals

    totals, photos = DiversityTotals(), 0
    for table in group_rows:
        photos += int(pc.sum(table.column("photos")).as_py() or 0)
        for level in LEVELS:
            rows = table.filter(pc.equal(table.column("level"), level))
            totals.add(level, rows.column("dis_sum").to_numpy(), rows.column("pairs").to_numpy())
    levels = totals.result()
    return {"photos_embedded": photos,
            "diversity": {level: {"div": d["div"], "pairs": d["pairs"], "groups": len(d["groups"]),
                                  "paper": PAPER_DIVERSITY.get(level)} for level, d in levels.items()},
            "groups": {level: d["groups"] for level, d in levels.items()}}


def best_modality(modalities) -> str:
    """The DPP modality the generator's photos come from: img+text, else img, else text."""
    return next(m for m in ("img+text", "img", "text") if m in modalities)


def picked_photos(rows: pa.Table, dpp_uri: str, k: int) -> pa.Table:
    """Ray Data step (jobs.evaluate's generation stage): a block of selection examples (``examples_schema`` rows less
    the reason) -> (user_id, business_id, photo_ids): the DPP's (its saved model at ``dpp_uri``) K picks of each
    ground set, the photos each pair is explained from at inference. Memory: the block and SCORED_AT_ONCE examples'
    kernels."""
    from .selection.data import arrow_batch
    from .selection.kernel import load_dpp
    from .selection.training import pick_positions

    model, _ = load_dpp(dpp_uri)
    picked = []
    for start in range(0, rows.num_rows, SCORED_AT_ONCE):
        part = rows.slice(start, SCORED_AT_ONCE)
        positions = pick_positions(model, arrow_batch(part), k).cpu().numpy()
        picked += [[ground[p] for p in row if p >= 0]
                   for ground, row in zip(part.column("photo_ids").to_pylist(), positions)]
    return pa.table({"user_id": rows.column("user_id"), "business_id": rows.column("business_id"),
                     "photo_ids": pa.array(picked, pa.list_(pa.string()))})


def generation_table(examples, photo_lists: list[list[str]], data, generators: dict[str, str], encoder, phi,
                     entities: dict[str, set[str]], beams: int, decoding: dict, inputs: dict | None = None) -> dict:
    """Table 2/4: each PC²L variant (its saved model at ``generators[variant]``) decoding (beam search, ``decoding``
    as showcase_core.generation.decode.generate takes it) from ``photo_lists`` (feature vectors from ``data``) and
    the examples' history, scored by ``score_generations``. A generator of another encoder reads the same photos and
    history as that encoder's features: ``inputs[name]`` = (photo vector lists, history, history mask), the scorer
    stays one."""
    from .generation.data import pack
    from .generation.model import load_pc2l

    vectors = photo_vectors(data, photo_lists)
    outputs = {}
    for variant in _in_order(generators, GENERATION_ORDER):
        model, tokenizer, config = load_pc2l(generators[variant])
        own, history, history_mask = (inputs or {}).get(variant, (vectors, examples.history, examples.history_mask))
        photos, photo_mask = pack(own, config["max_photos"], own[0][0].shape[0])
        hyps = []
        for start in range(0, len(examples), DECODE_BATCH):
            sl = slice(start, start + DECODE_BATCH)
            hyps += _generate(model, tokenizer, photos[sl], photo_mask[sl], history[sl], history_mask[sl], beams,
                              decoding)
        outputs[variant] = hyps
    return score_generations(outputs, examples, photo_lists, data, encoder, phi, entities)


def photo_vectors(data, photo_lists: list[list[str]]) -> list[list[np.ndarray]]:
    """Each example's photos as feature vectors of ``data`` (selection Examples' photo matrix)."""
    row_of = {p: i for i, p in enumerate(data.photo_ids)}
    return [[data.photo_vecs[row_of[p]] for p in pics] for pics in photo_lists]


def score_generations(outputs: dict[str, list[str]], examples, photo_lists: list[list[str]], data, encoder, phi,
                      entities: dict[str, set[str]]) -> dict:
    """Table 2/4's rows for explanations already written (``outputs``: row name -> one text per example, in the
    examples' order), scored against the examples' targets with text, CLIP (``encoder``, ``phi``, over the photos of
    ``photo_lists``) and grounding metrics; ``entities`` tells the entities each photo shows (photo id -> entities of
    the aligned sentences that describe it, showcase_core.metrics.grounding).
    Returns rows (a last one of ground truth), ten samples, the length histograms and the keyword coverage of pc2l
    and ce."""
    from .data.alignment import split_sentences
    from .metrics.keywords import keyword_coverage, length_histogram
    from .metrics.text import distinct_n, repetition

    refs = examples.targets
    wrong = [name for name, hyps in outputs.items() if len(hyps) != len(refs)]
    if wrong:
        raise ValueError(f"{wrong[0]}: {len(outputs[wrong[0]])} explanations for {len(refs)} examples")
    context = {"shown": [set().union(*(entities.get(p, set()) for p in pics)) for pics in photo_lists],
               "image_sets": [np.stack(v) for v in photo_vectors(data, photo_lists)], "encoder": encoder, "phi": phi}
    rows = [{"method": name, **_generation_scores(hyps, refs, context, split_sentences),
             "paper": PAPER_TABLE4.get(name)} for name, hyps in outputs.items()]
    rows.append({"method": "ground truth", "distinct1": 100 * distinct_n(refs, 1), "distinct2": 100 * distinct_n(refs, 2),
                 "grounding": _grounding(refs, context["shown"]), **repetition(refs)})
    compared = {"pc2l" if "pc2l" in outputs else next(iter(outputs)), "ce" if "ce" in outputs else None} - {None}
    samples = [{"review_id": r, "photos": p, "reference": ref, **{v: outputs[v][i] for v in outputs}}
               for i, (r, p, ref) in enumerate(zip(examples.review_ids, photo_lists, refs)) if i < 10]
    return {"examples": len(examples), "rows": rows, "samples": samples,
            "lengths": {"ground truth": length_histogram(refs), **{v: length_histogram(h) for v, h in outputs.items()}},
            "keyword_coverage": {v: keyword_coverage(outputs[v], refs) for v in compared}}


def _generate(model, tokenizer, photos, photo_mask, history, history_mask, beams: int, decoding: dict) -> list[str]:
    from .generation.decode import generate

    return generate(model, tokenizer, photos, photo_mask, history, history_mask, num_beams=beams, **decoding)


def _grounding(texts: list[str], shown: list[set]) -> float:
    from .metrics.grounding import grounding_rate

    return grounding_rate(texts, shown)["rate"]


def _generation_scores(hyps: list[str], refs: list[str], context: dict, split_sentences) -> dict:
    """Every metric of one variant's explanations (%, except the shares grounding and repeats)."""
    from .metrics.embedding import clip_align, clip_score
    from .metrics.text import bertscore, repetition, text_metrics

    sentence_sets = [context["encoder"].encode_texts(split_sentences(h)) if split_sentences(h) else np.zeros((0, 1))
                     for h in hyps]
    scores = text_metrics(hyps, refs)
    return {**{key: scores[name] for key, name in GENERATION_COLUMNS if name in scores},
            "meteor_mode": scores["meteor_mode"],
            "clip_align": 100 * clip_align(context["image_sets"], sentence_sets, context["phi"])["score"],
            "clip_score": 100 * clip_score(context["image_sets"], sentence_sets)["score"],
            "bertscore": 100 * bertscore(hyps, refs)["f1"], "grounding": _grounding(hyps, context["shown"]),
            **repetition(hyps)}

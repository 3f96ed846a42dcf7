"""Explanation distillation (paper §3.3): ``python -m jobs.distill --root ROOT [--labels URI] [--extract true]``.

1. Labelled (sentence, photo, label) pairs: the published ``sentences`` table (the world's sidecar: a sentence
   describes the photos in its pic_ids, not the other photos of its review), or ``--labels``: an annotation file
   (Parquet or JSON lines) of rows ``review_id, sentence, pic_id, label`` (0/1), optionally ``split``; without a
   split column a pair takes its review's split. Rows naming an unknown review or photo, or with a label that is
   not 0/1, are quarantined with a reason and counted.
2. Φ (``showcase_core.data.alignment``) trains on the train pairs, picks the F1-best threshold on val, reports ROC
   AUC and F1 on test, and is saved to ``ROOT/models/alignment/<version>/`` (+ ``_LATEST.json``).
3. With ``--extract true``: Ray Data over every review, an actor pool holding CLIP + Φ splits each review into
   sentences and keeps those Φ says describe at least one of its photos, with those photos: the ``distilled`` table
   (the SENTENCES schema), published like every table. PC²L can train on it (Gest-s2-style targets from Gest-raw/s1).
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from showcase_core.store import StoreError, new_run_id, read_text, utc_now
from showcase_core.tables import RECORD_KEYS, commit

from .common import (Progress, Timer, UserError, actor_plan, new_report, open_store, parse_args, resolve_encoder_id,
                     run, start_ray, versions)

DEFAULTS = {
    "root": None,
    "encoder": "latest",  # the encoder_id whose embeddings to use; latest = the latest trained CLIP
    "labels": "",  # annotation file URI; empty = the published sentences table
    "threshold": 0.0,  # decision threshold of Φ; 0 = the F1-best threshold on the validation pairs
    "epochs": 30,
    "lr": 0.01,
    "seed": 0,
    "extract": False,
    "batch_size": 256,  # reviews per actor batch
    "actors": 0,  # 0 = one per GPU, or 1 on a CPU-only cluster
    "use_gpu": False,  # ask for a GPU per actor even when none is up yet (autoscaling from zero)
}
LABEL_COLUMNS = ("review_id", "sentence", "pic_id", "label")


def encoder_spec(store, encoder_id: str) -> dict:
    try:
        return store.read_json(f"embeddings/{encoder_id}/_ENCODER.json")["spec"]
    except StoreError:
        raise UserError(f"no embeddings of encoder {encoder_id} under {store.root} (run `showcase embed`)") from None


def read_labels(uri: str, reviews: pa.Table, images: pa.Table) -> tuple[pa.Table, list[dict]]:
    """An annotation file -> (pairs with sentence_id/text/image_id/label/split, quarantine rows)."""
    import json

    import pyarrow.parquet as pq

    from showcase_core.data.gest import quarantine_row
    from showcase_core.store import filesystem_for

    fs, path = filesystem_for(uri)
    try:
        if path.endswith(".parquet"):
            rows = pq.read_table(path, filesystem=fs).to_pylist()
        else:
            rows = [json.loads(line) for line in read_text(fs, path).splitlines() if line.strip()]
    except FileNotFoundError:
        raise UserError(f"--labels {uri}: no such file") from None
    except (json.JSONDecodeError, pa.ArrowInvalid) as e:
        raise UserError(f"--labels {uri}: cannot be read ({str(e).splitlines()[0]})") from None
    split_of = dict(zip(reviews.column("review_id").to_pylist(), reviews.column("split").to_pylist()))
    photos = set(zip(images.column("image_id").to_pylist(), images.column("review_id").to_pylist()))
    out, bad = {"sentence_id": [], "text": [], "image_id": [], "label": [], "split": []}, []
    for n, row in enumerate(rows):
        missing = [c for c in LABEL_COLUMNS if row.get(c) is None]
        if missing:
            bad.append(quarantine_row(uri, f"row {n}", "missing_field", missing[0], f"field {missing[0]!r} is missing",
                                      json.dumps(row, default=str)))
        elif row["review_id"] not in split_of:
            bad.append(quarantine_row(uri, f"row {n}", "unknown_review", "review_id",
                                      f"review {row['review_id']} is not among the accepted reviews", json.dumps(row)))
        elif (row["pic_id"], row["review_id"]) not in photos:
            bad.append(quarantine_row(uri, f"row {n}", "photo_missing", "pic_id",
                                      f"photo {row['pic_id']} is not a photo of review {row['review_id']}",
                                      json.dumps(row)))
        elif row["label"] not in (0, 1, True, False):
            bad.append(quarantine_row(uri, f"row {n}", "out_of_range", "label", "label must be 0 or 1", json.dumps(row)))
        else:
            for key, value in (("sentence_id", f"{row['review_id']}#{row['sentence']}"), ("text", row["sentence"]),
                               ("image_id", row["pic_id"]), ("label", int(row["label"])),
                               ("split", row.get("split") or split_of[row["review_id"]])):
                out[key].append(value)
    return pa.table({**out, "label": pa.array(out["label"], pa.int8())}), bad


class Distiller:
    """Ray Data actor: a batch of reviews -> a data file of their explanation sentences (named by the run and the
    batch's review ids, so a retried batch overwrites its file); returns one row: counts and the file's add record."""

    def __init__(self, root: str, out_dir: str, run_id: str, spec: dict, classifier_uri: str, threshold: float,
                 photo_index: list):
        import ray

        from showcase_core.data.alignment import load_classifier
        from showcase_core.encoders.clip import load_encoder
        from showcase_core.store import Store

        self.store, self.out_dir, self.run_id = Store.open(root), out_dir, run_id
        self.encoder = load_encoder(**spec)
        self.classifier, _ = load_classifier(classifier_uri)
        self.threshold = threshold
        ids, self.vectors = ray.get(photo_index[0])
        self.row_of = {p: i for i, p in enumerate(ids)}

    def photo_vector(self, pic_id: str):
        i = self.row_of.get(pic_id)
        return None if i is None else self.vectors[i]

    def __call__(self, batch: dict) -> dict:
        from showcase_core.data import schema
        from showcase_core.data.alignment import distill_reviews
        from showcase_core.encoders.embed import part_name
        from showcase_core.tables import record_columns, write_file

        reviews = [{"review_id": r, "review_text": t, "pic_ids": list(p), "split": s}
                   for r, t, p, s in zip(batch["review_id"], batch["review_text"], batch["pic_ids"], batch["split"])]
        rows = distill_reviews(reviews, self.photo_vector, self.encoder.encode_texts, self.classifier, self.threshold)
        name = f"part-{self.run_id}-{part_name([r['review_id'] for r in reviews])[len('part-'):]}"
        part = write_file(self.store, self.out_dir, pa.Table.from_pylist(rows, schema=schema.SENTENCES), name) \
            if rows else {"path": "", "size": 0, "rows": 0, "partition": "{}", "stats": "", "modified_ms": 0}
        return record_columns([part], reviews=[len(reviews)], sentences=[len(rows)],
                              reviews_with_explanation=[len({r["review_id"] for r in rows})])


def main(argv: list[str] | None = None) -> int:
    from showcase_core.data import alignment, schema
    from showcase_core.encoders.clip import EncoderError, load_encoder
    from showcase_core.encoders.embed import read_embeddings
    from showcase_core.selection.data import embedding_matrix

    cfg = parse_args("distill", DEFAULTS, argv)
    if cfg["epochs"] < 1 or cfg["batch_size"] < 1 or not 0.0 <= cfg["threshold"] < 1.0:
        raise UserError("--epochs and --batch-size must be >= 1 and --threshold in [0, 1)")
    store = open_store(cfg["root"])
    encoder_id = resolve_encoder_id(store, cfg["encoder"])
    spec = encoder_spec(store, encoder_id)
    try:
        reviews = store.read_table("reviews", ["review_id", "review_text", "pic_ids", "split"])
        images = store.read_table("images", ["image_id", "review_id"])
        photo_ids, photo_matrix = embedding_matrix(read_embeddings(store, encoder_id, "images"))
        if cfg["labels"]:
            pairs, quarantined = read_labels(cfg["labels"], reviews, images)
        else:
            pairs, quarantined = alignment.sidecar_pairs(store.read_table("sentences"), images), []
    except StoreError as e:
        raise UserError(f"{e}; distill needs ingested tables, image embeddings and labelled pairs "
                        "(the sentences table or --labels)") from None
    run_id = new_run_id()
    report = new_report("distill", cfg, run_id)
    timer = Timer()
    try:
        encoder = load_encoder(**spec, device="cpu")
    except EncoderError as e:
        raise UserError(str(e)) from None

    with timer("features"):
        row_of = {p: i for i, p in enumerate(photo_ids)}
        keep = np.array([i in row_of for i in pairs.column("image_id").to_pylist()], bool)
        not_embedded = int((~keep).sum())
        pairs = pairs.filter(pa.array(keep))
        texts = sorted(set(pairs.column("text").to_pylist()))
        text_matrix = np.concatenate([encoder.encode_texts(texts[i:i + 256]) for i in range(0, len(texts), 256)]) \
            if texts else np.zeros((0, photo_matrix.shape[1]), np.float32)
        text_row = {t: i for i, t in enumerate(texts)}
    features = {}
    for split in ("train", "val", "test"):
        part = pairs.filter(pc.equal(pairs.column("split"), split))
        features[split] = (text_matrix[[text_row[t] for t in part.column("text").to_pylist()]],
                           photo_matrix[[row_of[i] for i in part.column("image_id").to_pylist()]],
                           part.column("label").to_numpy().astype(np.int64))
    counts = {split: {"pairs": len(f[2]), "positives": int(f[2].sum())} for split, f in features.items()}
    for split in ("train", "val", "test"):
        if counts[split]["positives"] in (0, counts[split]["pairs"]):
            raise UserError(f"the {split} split has {counts[split]['pairs']} labelled pairs, "
                            f"{counts[split]['positives']} positive: Φ needs both labels in train, val and test")
    print(f"[distill] training Φ on {counts['train']['pairs']:,} pairs ({counts['train']['positives']:,} positive)",
          file=sys.stderr, flush=True)
    with timer("train"):
        model = alignment.train_classifier(*features["train"], epochs=cfg["epochs"], lr=cfg["lr"], seed=cfg["seed"])
    scores = {s: model.confidence(features[s][0], features[s][1]) for s in ("val", "test")}
    threshold = cfg["threshold"] or alignment.best_f1_threshold(scores["val"], features["val"][2])
    metrics = {s: alignment.classification_metrics(scores[s], features[s][2], threshold) for s in ("val", "test")}
    uri = store.uri("models", "alignment", run_id)
    card = {"name": "alignment", "version": run_id, "created_at": utc_now(), "encoder_id": encoder_id,
            "labels": cfg["labels"] or "sentences table", "pairs": counts, "metrics": metrics,
            "paper": {"auc": 0.97, "f1": 0.71}, "versions": versions()}
    alignment.save_classifier(model, uri, threshold, card)
    store.write_json("models/alignment/_LATEST.json", {"version": run_id, "uri": uri, "encoder_id": encoder_id,
                                                       "threshold": threshold, "published_at": utc_now()})
    test = metrics["test"]
    print(f"[distill] Φ on held-out test pairs: AUC {test['auc']:.3f}, F1 {test['f1']:.3f} "
          f"(threshold {threshold:.3f} from val; paper: AUC 0.97, F1 0.71)", flush=True)
    report["counts"] = {"labelled_pairs": counts, "pairs_photo_not_embedded": not_embedded,
                        "labels_quarantined": len(quarantined)}
    if quarantined:
        store.write_parquet(f"reports/distill/{run_id}-quarantine.parquet",
                            pa.Table.from_pylist(quarantined, schema=schema.QUARANTINE))

    if cfg["extract"]:
        import ray

        start_ray()
        actors, resources, device = actor_plan(cfg["use_gpu"], cfg["actors"])
        out_dir = "tables/distilled"
        chunk = cfg["batch_size"] * 8  # blocks of a few batches, so every actor of the pool gets work
        ds = ray.data.from_arrow([reviews.slice(i, chunk) for i in range(0, reviews.num_rows, chunk)]).map_batches(
            Distiller, fn_constructor_kwargs={"root": store.root, "out_dir": out_dir, "run_id": run_id,
                                              "classifier_uri": uri,
                                              "spec": {**spec, "device": device},
                                              "threshold": threshold,
                                              "photo_index": [ray.put((photo_ids, photo_matrix))]},
            batch_size=cfg["batch_size"], compute=ray.data.ActorPoolStrategy(size=actors), **resources)
        progress, parts = Progress("distill", "reviews", reviews.num_rows), []
        done = {"reviews": 0, "sentences": 0, "reviews_with_explanation": 0}
        with timer("extract"):
            for stats in ds.iter_batches(batch_size=None, batch_format="pandas"):
                for key in done:
                    done[key] += int(stats[key].sum())
                parts += [r for r in stats[list(RECORD_KEYS)].to_dict("records") if r["path"]]
                progress.update(done["reviews"])
        if done["reviews"] != reviews.num_rows:
            raise RuntimeError(f"distilled {done['reviews']} of {reviews.num_rows} reviews")
        reads = {name: store.table_version(name)["version"] for name in ("reviews", "images")}
        committed = commit(store, out_dir, parts, schema.SENTENCES, run_id=run_id, stage="distill",
                           app_id=f"distill/{run_id}", overwrite=True, reads=reads)
        store.record_run("distill", run_id, {"distilled": committed.version}, {"reads": reads})
        report["counts"].update(done)
        print(f"[distill] {done['sentences']:,} explanation sentences from {done['reviews_with_explanation']:,} of "
              f"{done['reviews']:,} reviews -> {store.uri(out_dir)}", flush=True)
    report.update(model=uri, metrics=metrics, threshold=threshold, encoder_id=encoder_id, timings_s=timer.timings,
                  versions=versions(), finished_at=utc_now())
    print(f"model: {uri}; report: {store.write_report('distill', run_id, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(run("distill", main))

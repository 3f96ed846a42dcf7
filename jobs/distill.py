"""Explanation distillation (paper §3.3): ``python -m jobs.distill --root ROOT [--labels URI] [--extract true]``.

1. Labelled (sentence, photo, label) pairs: the published ``sentences`` table (the world's sidecar: a sentence
   describes the photos in its pic_ids, not the other photos of its review), or ``--labels``: an annotation file
   (``showcase_core.data.gest.read_labels``); its bad rows are quarantined with a reason and counted.
2. Φ (``showcase_core.data.alignment``) trains on the train pairs, picks the F1-best threshold on val, reports ROC
   AUC and F1 on test, is saved to ``ROOT/models/alignment/<version>/`` and published in the registry.
3. With ``--extract true``: Ray Data groups every review with its photos' embeddings in buckets of reviews; an
   actor pool holding CLIP + Φ splits each review into sentences and keeps those Φ says describe at least one of its
   photos, with those photos: the ``distilled`` table (the SENTENCES schema), published like every table. PC²L can
   train on it (Gest-s2-style targets from Gest-raw/s1).
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from showcase_core import registry
from showcase_core.data import schema
from showcase_core.data.schema import SPLITS
from showcase_core.evaluation import PAPER_PHI
from showcase_core.store import Store, StoreError, new_run_id, utc_now
from showcase_core.tables import RECORD_KEYS, commit

from .common import (JobSettings, Progress, Timer, UserError, actor_plan, exit_process, new_report, open_store,
                     parse_args, read_table_dataset, run, setting, start_ray, versions)


class Settings(JobSettings):
    """Train the explanation classifier Φ; optionally distill explanation sentences from every review."""

    encoder: str = setting("latest", "whose embeddings: latest (the latest trained CLIP's) or an encoder id")
    labels: str = setting("", "an annotation file (Parquet or JSON lines of review_id, sentence, pic_id, label and "
                              "optionally split); empty: the published sentences table")
    threshold: float = setting(0.0, "Φ's decision threshold (0: the F1-best threshold on the validation pairs)",
                               ge=0, lt=1)
    epochs: int = setting(30, "passes over the training pairs", ge=1)
    lr: float = setting(0.01, "learning rate of Φ", gt=0)
    seed: int = setting(0, "seed of Φ's initialisation and batch order")
    max_labelled_sentences: int = setting(100_000, "sentences of the sentences table Φ's pairs come from at most "
                                                   "(beyond it, those of a hash sample of reviews: the driver holds "
                                                   "their pairs)", ge=1)
    extract: bool = setting(False, "also write the distilled table: Φ's explanation sentences of every review")
    batch_size: int = setting(256, "reviews an actor explains at once (about: a hash bucket of reviews)", ge=1)
    actors: int = setting(0, "CLIP + Φ actors (0: one per GPU, or 1 on a CPU-only cluster)", ge=0)
    use_gpu: bool = setting(False, "a GPU per actor even when none is up yet (a cluster autoscaling from zero)")


@dataclasses.dataclass
class Inputs:
    """What Φ trains on: the labelled pairs, the embeddings of their photos, and the labels file's bad rows."""

    photo_ids: list[str]
    photo_matrix: np.ndarray
    pairs: pa.Table
    quarantined: list[dict]


def read_inputs(store: Store, encoder_id: str, labels: str, most_sentences: int) -> Inputs:
    """The labelled pairs and the embeddings of their photos only (read as the embeddings table streams by). From
    the sentences table, the sentences of a hash sample of reviews when it holds more than ``most_sentences``, and
    only those reviews' photos: memory is about that many sentences' pairs, not the tables' (an annotation file is
    read whole, and the reviews and photos of the reviews it names, streamed from their tables)."""
    from showcase_core.data import alignment
    from showcase_core.data.gest import AnnotationError, read_labels
    from showcase_core.encoders.embed import read_embeddings
    from showcase_core.selection.data import embedding_matrix

    try:
        if labels:
            pairs, quarantined = read_labels(labels, lambda named: (
                store.read_rows_where("reviews", ["review_id", "split"], "review_id", named),
                store.read_rows_where("images", ["image_id", "review_id"], "review_id", named)))
        else:
            pairs, quarantined = alignment.sidecar_pairs(*sampled_sentences(store, most_sentences)), []
        vectors = read_embeddings(store, encoder_id, "images", ids=pc.unique(pairs.column("image_id")).to_pylist())
        if not vectors.num_rows:
            raise UserError(f"none of the {pairs.num_rows:,} labelled pairs' photos has an embedding of encoder "
                            f"{encoder_id} (run `showcase embed` with it)")
        photo_ids, photo_matrix = embedding_matrix(vectors)
    except AnnotationError as e:
        raise UserError(f"--labels {e}") from None
    except StoreError as e:
        raise UserError(f"{e}; distill needs ingested tables, image embeddings and labelled pairs "
                        "(the sentences table or --labels)") from None
    return Inputs(photo_ids, photo_matrix, pairs, quarantined)


def sampled_sentences(store: Store, most_sentences: int) -> tuple[pa.Table, pa.Table]:
    """(sentences, their reviews' photos (image_id, review_id)): every sentence, or those of the reviews in one hash
    bucket of about ``most_sentences`` sentences (a review's sentences stay together; splits keep their shares)."""
    from showcase_core import tables as delta
    from showcase_core.buckets import buckets_for, in_bucket

    total = delta.rows(store, "tables/sentences", store.table_version("sentences")["version"])
    buckets = buckets_for(total, most_sentences)
    kept = [in_bucket(pa.Table.from_batches([b]), 0, buckets, "review_id")
            for b in store.iter_table_batches("sentences")]
    sentences = pa.concat_tables(kept) if kept else store.read_table("sentences")  # no batches: the empty table
    reviews = pc.unique(sentences.column("review_id"))
    images = store.read_rows_where("images", ["image_id", "review_id"], "review_id", reviews)
    if buckets > 1:
        print(f"[distill] Φ's pairs from the {sentences.num_rows:,} sentences of a hash sample of reviews, of "
              f"{total:,} (--max-labelled-sentences {most_sentences:,})", file=sys.stderr, flush=True)
    return sentences, images


def load_text_encoder(spec: dict):
    from showcase_core.encoders.clip import EncoderError, load_encoder

    try:
        return load_encoder(**spec, device="cpu")
    except EncoderError as e:
        raise UserError(str(e)) from None


def pair_features(inputs: Inputs, encoder) -> tuple[dict, dict]:
    """Per split (text features, photo features, labels) of the pairs whose photo is embedded, and the counts."""
    row_of = {p: i for i, p in enumerate(inputs.photo_ids)}
    keep = np.array([i in row_of for i in inputs.pairs.column("image_id").to_pylist()], bool)
    pairs = inputs.pairs.filter(pa.array(keep))
    texts = sorted(set(pairs.column("text").to_pylist()))
    text_matrix = np.concatenate([encoder.encode_texts(texts[i:i + 256]) for i in range(0, len(texts), 256)]) \
        if texts else np.zeros((0, inputs.photo_matrix.shape[1]), np.float32)
    text_row = {t: i for i, t in enumerate(texts)}
    features = {}
    for split in SPLITS:
        part = pairs.filter(pc.equal(pairs.column("split"), split))
        features[split] = (text_matrix[[text_row[t] for t in part.column("text").to_pylist()]],
                           inputs.photo_matrix[[row_of[i] for i in part.column("image_id").to_pylist()]],
                           part.column("label").to_numpy().astype(np.int64))
    counts = {split: {"pairs": len(f[2]), "positives": int(f[2].sum())} for split, f in features.items()}
    for split in SPLITS:
        if counts[split]["positives"] in (0, counts[split]["pairs"]):
            raise UserError(f"the {split} split has {counts[split]['pairs']} labelled pairs, "
                            f"{counts[split]['positives']} positive: Φ needs both labels in train, val and test")
    return features, {"labelled_pairs": counts, "pairs_photo_not_embedded": int((~keep).sum()),
                      "labels_quarantined": len(inputs.quarantined)}


def train_phi(cfg: Settings, features: dict, timer: Timer):
    """Φ trained on the train pairs, its threshold (given, or the F1-best on val) and its val/test metrics."""
    from showcase_core.data import alignment

    print(f"[distill] training Φ on {len(features['train'][2]):,} pairs ({int(features['train'][2].sum()):,} "
          "positive)", file=sys.stderr, flush=True)
    with timer("train"):
        model = alignment.train_classifier(*features["train"], epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed)
    scores = {s: model.confidence(features[s][0], features[s][1]) for s in ("val", "test")}
    threshold = cfg.threshold or alignment.best_f1_threshold(scores["val"], features["val"][2])
    metrics = {s: alignment.classification_metrics(scores[s], features[s][2], threshold) for s in ("val", "test")}
    test = metrics["test"]
    print(f"[distill] Φ on held-out test pairs: AUC {test['auc']:.3f}, F1 {test['f1']:.3f} (threshold "
          f"{threshold:.3f} from val; paper: AUC {PAPER_PHI['auc']}, F1 {PAPER_PHI['f1']})", flush=True)
    return model, threshold, metrics


def save_phi(store: Store, cfg: Settings, run_id: str, encoder_id: str, model, threshold: float, metrics: dict,
             counts: dict) -> str:
    from showcase_core.data import alignment

    uri = store.uri("models", "alignment", run_id)
    card = {"name": "alignment", "version": run_id, "created_at": utc_now(), "encoder_id": encoder_id,
            "labels": cfg.labels or "sentences table", "pairs": counts["labelled_pairs"], "metrics": metrics,
            "paper": PAPER_PHI, "versions": versions()}
    alignment.save_classifier(model, uri, threshold, card)
    return uri


def write_quarantine(store: Store, run_id: str, quarantined: list[dict]) -> None:
    if quarantined:
        store.write_parquet(f"reports/distill/{run_id}-quarantine.parquet",
                            pa.Table.from_pylist(quarantined, schema=schema.QUARANTINE))


# the rows of the group-by: a review (no image_id) or an embedded photo of it (no text), with its review's bucket
BUCKET_ROWS = pa.schema([("bucket", pa.uint64()), ("review_id", pa.string()), ("review_text", pa.string()),
                         ("pic_ids", pa.list_(pa.string())), ("split", pa.string()), ("image_id", pa.string()),
                         ("embedding", pa.list_(pa.float32()))])


def bucket_rows(batch: pa.Table, buckets: int) -> pa.Table:
    """A batch of reviews, or of photos with their embeddings, as BUCKET_ROWS (the other kind's columns null)."""
    from showcase_core.buckets import bucket_column

    columns = [bucket_column(batch, buckets, "review_id")]
    for field in list(BUCKET_ROWS)[1:]:
        columns.append(batch.column(field.name).cast(field.type) if field.name in batch.column_names
                       else pa.nulls(batch.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=BUCKET_ROWS)


class Distiller:
    """Ray Data actor: one bucket's rows (BUCKET_ROWS: its reviews and their embedded photos) -> a data file of their
    explanation sentences (named by the run and the bucket's review ids, so a retried bucket overwrites its file);
    returns one row: counts and the file's add record."""

    def __init__(self, root: str, out_dir: str, run_id: str, spec: dict, classifier_uri: str, threshold: float):
        from showcase_core.data.alignment import load_classifier
        from showcase_core.encoders.clip import load_encoder

        self.store, self.out_dir, self.run_id = Store.open(root), out_dir, run_id
        self.encoder = load_encoder(**spec)
        self.classifier, _ = load_classifier(classifier_uri)
        self.threshold = threshold

    def __call__(self, bucket: pa.Table) -> dict:
        from showcase_core.data.alignment import distill_reviews
        from showcase_core.encoders.embed import part_name
        from showcase_core.tables import record_columns, write_file

        is_photo = pc.is_valid(bucket.column("image_id"))
        photos, reviews = bucket.filter(is_photo), bucket.filter(pc.invert(is_photo))
        matrix = pc.list_flatten(photos.column("embedding")).to_numpy(zero_copy_only=False).reshape(photos.num_rows,
                                                                                                    -1)
        vectors = dict(zip(photos.column("image_id").to_pylist(), matrix))
        reviews = sorted(({"review_id": r, "review_text": t or "", "pic_ids": p or [], "split": s}
                          for r, t, p, s in zip(*(reviews.column(c).to_pylist()
                                                  for c in ("review_id", "review_text", "pic_ids", "split")))),
                         key=lambda r: r["review_id"])
        rows = distill_reviews(reviews, vectors.get, self.encoder.encode_texts, self.classifier, self.threshold)
        name = f"part-{self.run_id}-{part_name([r['review_id'] for r in reviews])[len('part-'):]}"
        part = write_file(self.store, self.out_dir, pa.Table.from_pylist(rows, schema=schema.SENTENCES), name) \
            if rows else {"path": "", "size": 0, "rows": 0, "partition": "{}", "stats": "", "modified_ms": 0}
        return record_columns([part], reviews=[len(reviews)], sentences=[len(rows)],
                              reviews_with_explanation=[len({r["review_id"] for r in rows})])


def extract_explanations(store: Store, cfg: Settings, run_id: str, encoder_id: str, spec: dict, phi_uri: str,
                         threshold: float, timer: Timer) -> dict:
    """Run Φ over every review on an actor pool and commit the distilled table once; the counts.

    Ray Data joins the photos with their embeddings and groups them with their reviews by a hash bucket of about
    ``--batch-size`` reviews (two shuffles; the reviews' texts go through one): an actor holds one bucket, a
    shuffle's aggregator one partition of its rows over the cluster's CPUs, the driver the data files' records."""
    import ray

    from showcase_core import tables as delta
    from showcase_core.buckets import buckets_for
    from showcase_core.encoders.embed import embeddings_dir

    start_ray()
    actors, resources, device = actor_plan(cfg.use_gpu, cfg.actors)
    reads = {name: delta.current_version(store, f"tables/{name}", store.table_version(name)["version"])
             for name in ("reviews", "images")}
    total = delta.rows(store, "tables/reviews", reads["reviews"])
    parts = max(1, min(int(ray.cluster_resources().get("CPU", 1)), buckets_for(total, 100_000)))
    buckets = {"fn_kwargs": {"buckets": buckets_for(total, cfg.batch_size)}, "batch_format": "pyarrow"}
    photos = (read_table_dataset(store, "tables/images", reads["images"], ["image_id", "review_id"])
              .join(read_table_dataset(store, embeddings_dir(encoder_id, "images"), None, ["id", "embedding"]),
                    "inner", parts, on=("image_id",), right_on=("id",))
              .map_batches(bucket_rows, **buckets))
    reviews = read_table_dataset(store, "tables/reviews", reads["reviews"],
                                 ["review_id", "review_text", "pic_ids", "split"]).map_batches(bucket_rows, **buckets)
    ds = reviews.union(photos).groupby("bucket", num_partitions=parts).map_groups(
        Distiller, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"root": store.root, "out_dir": "tables/distilled", "run_id": run_id,
                               "classifier_uri": phi_uri, "spec": {**spec, "device": device}, "threshold": threshold},
        **resources)
    progress, parts_written = Progress("distill", "reviews", total), []
    done = {"reviews": 0, "sentences": 0, "reviews_with_explanation": 0}
    with timer("extract"):
        for stats in ds.iter_batches(batch_size=None, batch_format="pandas"):
            for key in done:
                done[key] += int(stats[key].sum())
            parts_written += [r for r in stats[list(RECORD_KEYS)].to_dict("records") if r["path"]]
            progress.update(done["reviews"])
    if done["reviews"] != total:
        raise RuntimeError(f"distilled {done['reviews']} of {total} reviews")
    committed = commit(store, "tables/distilled", parts_written, schema.SENTENCES, run_id=run_id, stage="distill",
                       app_id=f"distill/{run_id}", overwrite=True, reads=reads)
    store.record_run("distill", run_id, {"distilled": committed.version}, {"reads": reads})
    print(f"[distill] {done['sentences']:,} explanation sentences from {done['reviews_with_explanation']:,} of "
          f"{done['reviews']:,} reviews -> {store.uri('tables/distilled')}", flush=True)
    return done


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("distill", Settings, argv)
    store = open_store(cfg.root)
    encoder_id = registry.resolve_encoder_id(store, cfg.encoder)
    spec = registry.encoder(store, encoder_id).extra["spec"]
    inputs = read_inputs(store, encoder_id, cfg.labels, cfg.max_labelled_sentences)
    run_id, timer = new_run_id(), Timer()
    report = new_report("distill", cfg, run_id)

    with timer("features"):
        features, counts = pair_features(inputs, load_text_encoder(spec))
    model, threshold, metrics = train_phi(cfg, features, timer)
    uri = save_phi(store, cfg, run_id, encoder_id, model, threshold, metrics, counts)
    registry.publish(store, "alignment", run_id, uri, encoder_id, metrics=metrics, extra={"threshold": threshold})
    write_quarantine(store, run_id, inputs.quarantined)
    if cfg.extract:
        counts.update(extract_explanations(store, cfg, run_id, encoder_id, spec, uri, threshold, timer))

    report.update(counts=counts, model=uri, metrics=metrics, threshold=threshold, encoder_id=encoder_id,
                  timings_s=timer.timings, versions=versions(), finished_at=utc_now())
    print(f"model: {uri}; report: {store.write_report('distill', run_id, report)}")
    return 0


if __name__ == "__main__":
    exit_process(run("distill", main))

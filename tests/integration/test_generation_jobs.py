"""jobs.distill (Φ + extraction), jobs.train_pc2l (shared harness: DDP locally; DeepSpeed on CPU with gloo, a killed
worker and S3 checkpoints on SeaweedFS) and jobs.evaluate --stage generation|dataset, on the tiny world."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from jobs import distill, evaluate, harness, train_pc2l
from jobs.common import parse_args, run
from showcase_core import features as F
from showcase_core import registry
from showcase_core.buckets import buckets_for, in_bucket, sample_of_ids
from showcase_core.data import schema
from showcase_core.data.alignment import distill_reviews, load_classifier, sidecar_pairs
from showcase_core.encoders.clip import load_encoder
from showcase_core.encoders.embed import read_embeddings
from showcase_core.generation import smollm
from showcase_core.generation.data import (choose_generation_examples, chosen_table, examples_of_rows,
                                           load_generation_examples, load_generation_targets, rows_of_chosen)
from showcase_core.generation.decode import generate
from showcase_core.generation.entities import swapped_negatives
from showcase_core.generation.model import load_pc2l
from showcase_core.metrics.diversity import visual_diversity
from showcase_core.metrics.grounding import photo_entities, wanted_photo_entities
from showcase_core.selection.data import embedding_matrix, load_selection_data
from showcase_core.selection.kernel import load_dpp
from showcase_core.selection.training import select
from showcase_core.store import Store, filesystem_for, read_text
from showcase_core.weights import cache_root
from tests.conftest import copy_root, copy_s3_root, stage_reports

SMALL_MODEL = ["--d-model", "32", "--heads", "2", "--encoder-layers", "1", "--decoder-layers", "1", "--vocab-size",
               "400", "--batch-size", "16", "--cpus-per-worker", "1"]


@pytest.fixture(scope="module")
def embedded_root(tiny_embedded, trained_template, tmp_path_factory):
    """A copy of the trained template: the tiny world embedded, with the small DPP (the generation stage's photo
    picker) and a small PC²L; the tests here add Φ and their own PC²L versions."""
    return copy_root(trained_template, tmp_path_factory, "gen"), tiny_embedded[1]


def test_distill_trains_phi_and_extracts_explanations(embedded_root, tmp_path):
    root, encoder_id = embedded_root
    assert run("distill", distill.main, ["--root", root, "--encoder", encoder_id, "--epochs", "10",
                                         "--extract", "true"]) == 0
    store = Store.open(root)
    report = stage_reports(store, "distill")[-1]
    test = report["metrics"]["test"]
    assert 0.0 <= test["auc"] <= 1.0 and 0.0 <= test["f1"] <= 1.0 and test["pairs"] > 0
    assert report["counts"]["reviews"] == store.read_table("reviews").num_rows  # every review went through Φ
    distilled = store.read_table("distilled")
    assert distilled.schema.equals(schema.SENTENCES)
    assert distilled.num_rows == report["counts"]["sentences"] > 0
    assert all(row["pic_ids"] for row in distilled.to_pylist())
    photos = {(i, r) for i, r in zip(*(store.read_table("images").column(c).to_pylist() for c in ("image_id",
                                                                                                   "review_id")))}
    assert all((p, row["review_id"]) in photos for row in distilled.to_pylist() for p in row["pic_ids"])
    # the buckets of the Ray Data group-by give what one process gives over every review with every photo's vector
    phi = registry.latest(store, "alignment")
    classifier, threshold = load_classifier(phi.uri)[0], phi.extra["threshold"]
    encoder = load_encoder(**registry.encoder(store, encoder_id).extra["spec"], device="cpu")
    ids, matrix = embedding_matrix(read_embeddings(store, encoder_id, "images"))
    vectors = dict(zip(ids, matrix))
    some = read_embeddings(store, encoder_id, "images", ids=[ids[5], ids[0], "not-a-photo"])  # as distill's Φ reads
    assert sorted(some.column("id").to_pylist()) == sorted([ids[0], ids[5]])
    assert embedding_matrix(some)[1].tolist() == [vectors[i].tolist() for i in some.column("id").to_pylist()]
    whole = distill_reviews(store.read_table("reviews", ["review_id", "review_text", "pic_ids", "split"]).to_pylist(),
                            vectors.get, encoder.encode_texts, classifier, threshold)
    assert sorted((r["sentence_id"], sorted(r["pic_ids"])) for r in distilled.to_pylist()) == \
        sorted((r["sentence_id"], sorted(r["pic_ids"])) for r in whole)

    # over --max-labelled-sentences, Φ's pairs come from the sentences of one hash bucket of reviews and their
    # photos only
    sentences, images = store.read_table("sentences"), store.read_table("images", ["image_id", "review_id"])
    assert run("distill", distill.main, ["--root", root, "--encoder", encoder_id, "--epochs", "2",
                                         "--max-labelled-sentences", str(sentences.num_rows // 2)]) == 0
    counts = stage_reports(store, "distill")[-1]["counts"]
    expected = sidecar_pairs(in_bucket(sentences, 0, buckets_for(sentences.num_rows, sentences.num_rows // 2),
                                       "review_id"), images).num_rows
    assert 0 < sum(c["pairs"] for c in counts["labelled_pairs"].values()) + counts["pairs_photo_not_embedded"] \
        == expected < sidecar_pairs(sentences, images).num_rows

    # an annotation file with one bad row of each kind: the good rows train, the bad ones are quarantined
    reviews = store.read_table("reviews").to_pylist()
    rows = []
    for r in reviews:
        for i, pic in enumerate(r["pic_ids"]):
            rows.append({"review_id": r["review_id"], "sentence": r["review_text"][:60], "pic_id": pic,
                         "label": int(i == 0)})
    rows += [{"review_id": "nobody_nowhere", "sentence": "x", "pic_id": "p", "label": 1},
             {"review_id": reviews[0]["review_id"], "sentence": "x", "pic_id": "not-its-photo", "label": 0},
             {"review_id": reviews[0]["review_id"], "sentence": "x", "pic_id": reviews[0]["pic_ids"][0], "label": 7},
             {"review_id": reviews[0]["review_id"], "pic_id": reviews[0]["pic_ids"][0], "label": 1}]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(r) for r in rows))
    assert run("distill", distill.main, ["--root", root, "--encoder", encoder_id, "--labels", str(labels),
                                         "--epochs", "2"]) == 0
    report = stage_reports(store, "distill")[-1]
    assert report["counts"]["labels_quarantined"] == 4
    assert sum(c["pairs"] for c in report["counts"]["labelled_pairs"].values()) == len(rows) - 4
    assert run("distill", distill.main, ["--root", root, "--encoder", encoder_id, "--labels",
                                         str(tmp_path / "missing.jsonl")]) == 2


def test_train_pc2l_ablation_and_evaluate_generation(embedded_root):
    root, encoder_id = embedded_root
    store = Store.open(root)
    if not registry.is_published(store, "alignment"):
        assert run("distill", distill.main, ["--root", root, "--encoder", encoder_id, "--epochs", "2"]) == 0
    assert run("train_pc2l", train_pc2l.main, ["--root", root, "--encoder", encoder_id, "--epochs", "2",
                                               "--variants", "ce,pc2l", "--eval-every", "2", "--choose-reviews", "20",
                                               *SMALL_MODEL]) == 0
    latest = registry.latest(store, "pc2l")
    assert sorted(latest.variants) == ["ce", "pc2l"] and latest.encoder_id == encoder_id
    for variant, uri in latest.variants.items():
        card = json.loads(read_text(*filesystem_for(uri + "/card.json")))
        history = card["history"]
        assert [h["epoch"] for h in history] == [0, 1]
        # per-epoch loss components; the CE-only variant has no contrastive terms
        assert all(h["ce"] > 0 for h in history)
        assert (history[-1]["ccl"] > 0 and history[-1]["pcl"] > 0) if variant == "pc2l" else \
            (history[-1]["ccl"] == 0 and history[-1]["pcl"] == 0)
        assert {"val_ce", "val_perplexity", "val_grounding", "val_bleu4"} <= set(card["metrics"])
        model, tokenizer, config = load_pc2l(uri)
        assert config["decoder_layers"] == 1 and config["d_model"] == 32
    # the negatives Ray Data tasks drew (spaCy per block, the vocabulary summed by a group-by) are one process's
    # (chosen in passes of 20 reviews)
    counts = stage_reports(store, "train_pc2l")[-1]["counts"]
    splits, skipped = load_generation_examples(store, encoder_id, "sentences", ("train", "val"), config["max_photos"],
                                               config["max_history"])
    train = splits["train"]
    assert counts["choose_passes"] > 2 and counts["skipped"] == skipped
    assert (counts["train_examples"], counts["val_examples"]) == (len(train), len(splits["val"]))
    negatives, vocabulary = swapped_negatives(train.targets, seed=0, keys=train.review_ids)
    assert counts["entity_vocabulary"] == len(vocabulary) > 1
    assert counts["targets_with_negative"] == sum(n is not None for n in negatives) > 0
    assert run("evaluate", evaluate.main, ["--root", root, "--stage", "generation", "--beams", "2"]) == 0
    table = stage_reports(store, "evaluate")[-1]["generation"]
    assert [r["method"] for r in table["rows"]] == ["ce", "pc2l", "ground truth"]
    for row in table["rows"][:2]:
        assert {"bleu1", "bleu4", "meteor", "nist", "distinct1", "distinct2", "clip_align", "clip_score",
                "bertscore", "grounding"} <= set(row)
        assert 0 <= row["grounding"] <= 1 and 0 <= row["clip_align"] <= 100
    assert set(table["rows"][2]) >= {"distinct1", "distinct2"} and "bleu1" not in table["rows"][2]
    assert set(table["lengths"]) == {"ground truth", "ce", "pc2l"}
    outputs = stage_reports(store, "evaluate")[-1]["outputs"]["generation"]
    for name in ("generation.md", "lengths.png", "keyword-coverage.png"):
        data = store.fs.open_input_stream(store.path(outputs[name].split(store.base + "/", 1)[1])).read() \
            if not outputs[name].startswith("/") else open(outputs[name], "rb").read()
        assert data[:4] == b"\x89PNG" if name.endswith(".png") else b"| pc2l |" in data
    # what it decoded from, built by Ray Data tasks (examples, the DPP's picks) and read by id (vectors, entities),
    # is what one process builds from the whole tables (no business here has more photos than the features keep)
    cfg = parse_args("evaluate", evaluate.Settings, ["--root", root, "--stage", "generation"])
    given = evaluate.generation_inputs(store, cfg)
    widths = given["config"]["max_photos"], given["config"]["max_history"]
    whole = load_generation_examples(store, encoder_id, "sentences", ("test",), *widths)[0]["test"]
    test = given["examples"]
    assert test.review_ids == whole.review_ids and test.photo_ids == whole.photo_ids and test.targets == whole.targets
    for name in ("photos", "photo_mask", "history", "history_mask"):
        assert np.array_equal(getattr(test, name), getattr(whole, name)), name
    held = load_selection_data(store, encoder_id, 10**9, ("test",))
    dpp, _ = load_dpp(registry.latest(store, "dpp").variant("img+text"))
    picks = select(dpp, held, held.splits["test"], 3)
    picked = {(u, b): [held.photo_ids[p] for p in row if p >= 0] for u, b, row in
              zip(held.splits["test"].user_ids, held.splits["test"].business_ids, picks)}
    assert given["photo_lists"] == [picked.get((u, b)) or pics for u, b, pics in
                                    zip(whole.user_ids, whole.business_ids, whole.photo_ids)]
    shown = {p for pics in given["photo_lists"] for p in pics}
    assert sorted(given["data"].photo_ids) == sorted(shown)
    sentences = store.read_table("sentences", ["pic_ids", "entities"])
    every = photo_entities(sentences.column("pic_ids").to_pylist(), sentences.column("entities").to_pylist())
    assert given["entities"] == {p: every[p] for p in shown if p in every} and given["entities"]

    # another seed, compared in one table with the first version's variants: same photos, one scorer, mean ± sd
    first = latest.version
    assert run("train_pc2l", train_pc2l.main, ["--root", root, "--encoder", encoder_id, "--epochs", "1",
                                               "--variants", "pc2l", "--seed", "1", *SMALL_MODEL]) == 0
    # (on a sample of the split's reviews: the examples of the sample's reviews, the same photos as unsampled)
    reviews = store.read_table("reviews", ["review_id", "split"]).to_pylist()
    test_reviews = [r["review_id"] for r in reviews if r["split"] == "test"]
    sample = set(sample_of_ids([pa.array(test_reviews)], 4)[0].to_pylist())
    kept = [(r, pics) for r, pics in zip(test.review_ids, given["photo_lists"]) if r in sample]
    assert 0 < len(kept) < 4 < len(test_reviews)
    assert run("evaluate", evaluate.main, ["--root", root, "--stage", "generation", "--compare", first,
                                           "--sample-reviews", "4"]) == 0
    report = stage_reports(store, "evaluate")[-1]
    assert report["generation"]["sampled"] == {"reviews": 4, "of": len(test_reviews)}
    assert report["generation"]["examples"] == len(kept)
    assert [(s["review_id"], s["photos"]) for s in report["generation"]["samples"]] == kept
    rows = report["generation"]["rows"]
    assert [r["method"] for r in rows] == ["pc2l · gpt2 · seed 1", "ce · gpt2 · seed 0", "pc2l · gpt2 · seed 0",
                                           "ground truth"], [r["method"] for r in rows]
    assert [r["group"] for r in rows[:3]] == ["pc2l · gpt2", "ce · gpt2", "pc2l · gpt2"]
    assert report["generation"]["scorer"] == encoder_id
    markdown = open(report["outputs"]["generation"]["generation.md"]).read()
    assert f"({len(kept)} pairs of a sample of 4 of its {len(test_reviews)} reviews," in markdown
    summary = markdown.split("Over seeds")[1]
    assert "| pc2l · gpt2 | 2 |" in summary and "| ce · gpt2 | 1 |" in summary
    assert run("evaluate", evaluate.main, ["--root", root, "--stage", "generation", "--compare", "nope"]) == 2


def test_evaluate_dataset_report_with_diversity_plots(embedded_root):
    root, encoder_id = embedded_root
    assert run("evaluate", evaluate.main, ["--root", root, "--stage", "dataset", "--encoder", encoder_id]) == 0
    store = Store.open(root)
    report = stage_reports(store, "evaluate")[-1]
    table = report["dataset"]
    assert table["summary"]["photos"] == store.read_table("images").num_rows
    levels = table["diversity"]
    assert set(levels) == {"intra_business", "inter_user", "intra_user"}
    assert all(0 < d["div"] < 2 and d["pairs"] > 0 for d in levels.values())
    assert levels["intra_business"]["pairs"] == levels["inter_user"]["pairs"] + levels["intra_user"]["pairs"]
    # the Ray Data join + group-by gives what one process computes from both tables read whole
    images = store.read_table("images", ["image_id", "user_id", "business_id"])
    ids, matrix = embedding_matrix(read_embeddings(store, encoder_id, "images"))
    row_of = {i: n for n, i in enumerate(ids)}
    embedded = [(row_of[i], u, b) for i, u, b in zip(*(images.column(c).to_pylist() for c in images.column_names))
                if i in row_of]
    whole = visual_diversity(matrix[[r for r, _, _ in embedded]], [b for _, _, b in embedded],
                             [u for _, u, _ in embedded])
    assert table["photos_embedded"] == len(embedded) > 0
    for level, d in whole.items():
        assert (levels[level]["pairs"], levels[level]["groups"]) == (d["pairs"], len(d["groups"]))
        assert levels[level]["div"] == pytest.approx(d["div"], rel=1e-9)
    for level in ("intra-business", "inter-user", "intra-user"):
        assert open(report["outputs"]["dataset"][f"diversity-{level}.png"], "rb").read(4) == b"\x89PNG"


def test_the_drivers_targets_are_the_workers_examples_in_their_order(embedded_root, tmp_path):
    """train_pc2l's driver reads no vector: its targets, skip counts and embedding size are those of the examples one
    process builds from every vector, in the same order, and the rows its Ray Data tasks build (each chosen example's
    photos read by id, its history from the feature tables) are those examples; also with half the photos not
    embedded (reviews lose some photos or all of them)."""

    from deltalake import write_deltalake

    from showcase_core import tables as delta
    from showcase_core.encoders.embed import embeddings_dir

    template, encoder_id = embedded_root
    root = str(tmp_path / "root")
    shutil.copytree(template, root)
    store = Store.open(root)
    meta = F.read_meta(store, encoder_id)
    splits = ("train", "val", "test")
    for half in (False, True):
        if half:
            images = embeddings_dir(encoder_id, "images")
            embedded = delta.read(store, images)
            write_deltalake(store.path(images), embedded.take(list(range(0, embedded.num_rows, 2))), mode="overwrite")
            assert 0 < delta.rows(store, images) < embedded.num_rows
        for max_photos in (1, 5):
            examples, skipped = load_generation_examples(store, encoder_id, "sentences", splits, max_photos, 10)
            targets, driver_skipped, dim = load_generation_targets(store, encoder_id, "sentences", splits, max_photos)
            assert driver_skipped == skipped and dim == examples["train"].photos.shape[2] > 0
            assert targets == {split: examples[split].targets for split in splits} and targets["train"]
            # the rows Ray Data tasks build from the chosen examples, their photos' vectors by id and the feature
            # tables' history, are those examples (the workers stream them)
            chosen, _, _ = choose_generation_examples(store, encoder_id, "sentences", splits, max_photos)
            for split in splits:
                table = chosen_table(chosen[split], [[i, i + 1] for i in range(len(chosen[split]))],
                                     [None if i % 3 else [i] for i in range(len(chosen[split]))])
                rows = pa.concat_tables([rows_of_chosen(table.slice(start, 7), root, encoder_id, meta, 10)
                                         for start in range(0, table.num_rows, 7)])
                streamed, target_ids, swapped_ids = examples_of_rows(rows, max_photos, 10)
                whole = examples[split]
                assert streamed.review_ids == whole.review_ids and streamed.photo_ids == whole.photo_ids
                assert streamed.targets == whole.targets and streamed.user_ids == whole.user_ids
                for name in ("photos", "photo_mask", "history", "history_mask"):
                    assert np.array_equal(getattr(streamed, name), getattr(whole, name)), (split, name)
                assert target_ids == table.column("target_ids").to_pylist()
                assert swapped_ids == table.column("swapped_ids").to_pylist()
            assert examples["train"].history_mask.any()
    assert sum(counts["no_embedded_photo"] for counts in skipped.values()) > 0
    # train_pc2l's driver chooses in passes, a hash bucket of review ids each: together the examples of one pass
    whole, whole_skipped, _ = choose_generation_examples(store, encoder_id, "sentences", splits, 5)
    passes = [choose_generation_examples(store, encoder_id, "sentences", splits, 5, bucket=b, buckets=3)
              for b in range(3)]
    by_review = lambda e: e["review_id"]  # noqa: E731
    for split in splits:
        assert sorted((e for p in passes for e in p[0][split]), key=by_review) == sorted(whole[split], key=by_review)
        assert {k: sum(p[1][split][k] for p in passes) for k in whole_skipped[split]} == whole_skipped[split]
    assert all(p[0]["train"] for p in passes) and len(passes[0][0]["train"]) < len(whole["train"])

    # rank 0's grounding check streams the targets table for the entities of the photos it decodes
    sentences = store.read_table("sentences", ["pic_ids", "entities"])
    every = photo_entities(sentences.column("pic_ids").to_pylist(), sentences.column("entities").to_pylist())
    named = sorted(p for p, e in every.items() if e)
    assert len(named) > 3
    wanted = set(named[1:4]) | {"no-such-photo"}
    batches = store.iter_table_batches("sentences", ["pic_ids", "entities"], batch_size=5)
    assert wanted_photo_entities(batches, wanted) == {p: every[p] for p in wanted if p in every}


def test_train_pc2l_bad_settings_exit_2(embedded_root, tmp_path):
    root, encoder_id = embedded_root
    assert run("train_pc2l", train_pc2l.main, ["--root", root, "--encoder", encoder_id, "--variants", "gan"]) == 2
    assert run("train_pc2l", train_pc2l.main, ["--root", root, "--encoder", encoder_id, "--targets", "tweets"]) == 2
    assert run("train_pc2l", train_pc2l.main, ["--root", root, "--encoder", encoder_id, "--d-model", "30",
                                               "--heads", "4"]) == 2
    assert run("train_pc2l", train_pc2l.main, ["--root", str(tmp_path / "empty"), "--encoder", encoder_id]) == 2
    # the history comes from the feature tables: they must keep at least --max-history reviews per user, and exist
    assert F.read_meta(Store.open(root), encoder_id)["max_history"] == 10
    assert run("train_pc2l", train_pc2l.main, ["--root", root, "--encoder", encoder_id, "--max-history", "11"]) == 2
    bare = str(tmp_path / "bare")
    shutil.copytree(root, bare, ignore=shutil.ignore_patterns("features"))
    assert run("train_pc2l", train_pc2l.main, ["--root", bare, "--encoder", encoder_id, *SMALL_MODEL]) == 2


def test_train_pc2l_deepspeed_on_cpu_resumes_with_checkpoints_on_s3(seaweed, s3_trained_root, monkeypatch):
    """DeepSpeed (ZeRO-1, gloo on CPU), the worker hard-exits after epoch 1's checkpoint, the run resumes from it;
    ROOT (checkpoints and model) on the SeaweedFS S3 server (a copy of the nightly tests' embedded ROOT there)."""
    root = copy_s3_root(seaweed, s3_trained_root, "pc2l")
    encoder_id = load_encoder(model="showcase-tiny").encoder_id  # the embeddings of s3_trained_root
    args = ["--root", root, "--encoder", encoder_id, "--epochs", "3", "--variants", "pc2l", "--eval-every", "3",
            "--deepspeed-config", "cluster/deepspeed/cpu_zero1.json", "--run-name", "pc2l-ds-crash", *SMALL_MODEL]
    monkeypatch.setenv(harness.FAULT_ENV, "1")
    assert run("train_pc2l", train_pc2l.main, args) == 0
    monkeypatch.delenv(harness.FAULT_ENV)
    store = Store.open(root)
    uri = registry.latest(store, "pc2l").variant("pc2l")
    assert uri.startswith("s3://")
    card = json.loads(read_text(*filesystem_for(uri + "/card.json")))
    # one restart, from the last checkpoint Ray Train had registered when the worker died (epoch 1's, or epoch 0's
    # when the crash beat the asynchronous registration of epoch 1's)
    assert len(card["resumed_after_epochs"]) == 1 and card["resumed_after_epochs"][0] in (0, 1)
    assert [h["epoch"] for h in card["history"]] == [0, 1, 2]
    infos = store.fs.get_file_info(pafs.FileSelector(store.path("checkpoints/train_pc2l"), recursive=True))
    assert any("pc2l-ds-crash" in i.path and i.path.endswith(".pt") for i in infos)  # DeepSpeed's files, on S3
    model, tokenizer, _ = load_pc2l(uri)
    photos = np.random.default_rng(0).normal(size=(2, 5, model.config["clip_dim"])).astype(np.float32)
    mask = np.zeros((2, 5), bool)
    mask[:, 0] = True
    out = generate(model, tokenizer, photos, mask, np.zeros((2, 10, model.config["clip_dim"]), np.float32),
                   np.zeros((2, 10), bool), num_beams=2, max_new_tokens=8)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_gpu_ablation_script_prepared_here_runs_as_the_lent_machine_and_is_scored_here(embedded_root, tmp_path):
    """tests/perf/gpu_ablation.py end to end on the tiny world: --prepare here; the dry run as the lent machine
    (tests/lent_machine.py: no Ray, deltalake or spaCy; gguf only from the carry folder), the GGUF's two halves joined
    and converted into an empty weights cache; --score here in one table with the ROOT's own PC²L."""
    import subprocess
    import sys

    from tests.lent_machine import REPO, run_as_lent_machine

    root, encoder_id = embedded_root
    store = Store.open(root)
    if not registry.is_published(store, "alignment"):  # (the DPP and a PC²L come with the template)
        assert run("distill", distill.main, ["--root", root, "--encoder", encoder_id, "--epochs", "2"]) == 0
    script, folder = "tests/perf/gpu_ablation.py", tmp_path / "ablation"
    prepared = subprocess.run([sys.executable, script, "--prepare", str(folder), "--root", root], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-3000:]

    def mib(path):
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20

    assert mib(folder / "weights-1") < 60 and mib(folder / "weights-2") + mib(folder / "carry") < 60  # a run: 64
    meta = json.loads((folder / "carry" / "bundle" / "meta.json").read_text())
    assert len(meta["negatives"]) == len(meta["targets"]["train"]) and any(meta["negatives"])
    assert len(meta["test_review_ids"]) == len(meta["targets"]["test"]) > 0

    joined, swapped = tmp_path / "smollm2.gguf", tmp_path / "swapped.gguf"
    first, second = (folder / "weights-1" / "part").read_bytes(), (folder / "weights-2" / "part").read_bytes()
    joined.write_bytes(first + second)
    swapped.write_bytes(second + first)
    bundle, out = str(folder / "carry" / "bundle"), tmp_path / "out"
    args = ["--bundle", bundle, "--out", str(out), "--dry-run"]
    wrong = run_as_lent_machine(folder / "carry", {"gguf"}, script, args, {"SHOWCASE_SMOLLM2_GGUF": str(swapped)})
    assert wrong.returncode != 0 and "join weights-1 and weights-2 in that order" in wrong.stderr.splitlines()[-1]
    # a weights cache without SmolLM2 in it, which the run converts the carried GGUF into: this session's cache when
    # nothing converted it there yet (test_pretrained_nightly then finds it: one conversion per make test), else a new one
    converted = f"{smollm.NAME}-{joined.stat().st_size}"
    cache = Path(cache_root())
    if (cache / converted).exists():
        cache = tmp_path / "w"
    ran = run_as_lent_machine(folder / "carry", {"gguf"}, script, args,
                              {"SHOWCASE_SMOLLM2_GGUF": str(joined), "SHOWCASE_WEIGHTS_CACHE": str(cache)})
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-4000:]
    lines = [line for line in ran.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and json.loads(lines[0])["dry_run"] is True, ran.stdout
    assert (cache / converted / "config.json").is_file()  # converted from the carried GGUF here
    done = json.loads((out / "generations.json").read_text())
    assert [r["variant"] for r in done["runs"]] == ["ce", "ce+ccl", "ce+pcl", "pc2l"]
    for r in done["runs"]:
        last = r["history"][-1]
        assert len(r["texts"]) == done["examples"]["test"] == 4 and math.isfinite(last["val_ce"])
        assert (last["ccl"] > 0) == ("ccl" in r["variant"] or r["variant"] == "pc2l")
        assert (last["pcl"] > 0) == ("pcl" in r["variant"] or r["variant"] == "pc2l")
        assert 0 < r["trainable_params"] < r["params"] / 5  # the LM is frozen: blocks, LoRA, MMA, heads learn

    scored = subprocess.run([sys.executable, script, "--score", str(out), "--root", root, "--report",
                             str(tmp_path / "table.json")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-3000:]
    table = json.loads((tmp_path / "table.json").read_text())
    methods = [r["method"] for r in table["rows"]]
    own = [m for m in methods if m.endswith("(here)")]
    assert own and methods[len(own):] == [f"{v} · smollm2-135m · seed 0" for v in ("ce", "ce+ccl", "ce+pcl", "pc2l")] \
        + ["ground truth"], methods
    assert table["examples"] == 4 and table["scorer"] == encoder_id
    for row in table["rows"][:-1]:
        assert 0 <= row["clip_align"] <= 100 and 0 <= row["grounding"] <= 1 and "bleu1" in row
    assert "| ce+pcl · smollm2-135m · seed 0 |" in scored.stdout

"""Embedding metrics (CLIP-Score, CLIP-Align), visual diversity, grounding rate and the distillation classifier Φ,
each against a brute-force or hand-computed reference."""

import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch

from showcase_core.data import alignment
from showcase_core.evaluation import business_diversity_rows, dataset_diversity
from showcase_core.metrics.diversity import visual_diversity
from showcase_core.metrics.embedding import clip_align, clip_score
from showcase_core.metrics.grounding import grounding_rate, names_entity


def _unit(rng, n, d=8):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_clip_score_is_mean_over_photos_of_best_sentence_cosine():
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    sentences = np.array([[1.0, 0.0], [0.6, 0.8]])
    # photo 1: best of cos 1.0, 0.6 -> 1.0; photo 2: best of 0.0, 0.8 -> 0.8
    assert clip_score([images], [sentences])["score"] == pytest.approx(0.9)
    # averaged over showcases; a showcase without sentences is left out and not counted
    out = clip_score([images, images, images], [sentences, sentences[:1], np.zeros((0, 2))])
    assert out["showcases"] == 2
    assert out["score"] == pytest.approx((0.9 + 0.5) / 2)


def test_clip_align_follows_eq_12_with_the_classifier_confidence():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    phi = alignment.AlignmentClassifier(8)
    image_sets = [_unit(rng, 3), _unit(rng, 2)]
    sentence_sets = [_unit(rng, 4), _unit(rng, 1)]
    expected = []
    for images, sentences in zip(image_sets, sentence_sets):
        per_image = []
        for v in images:
            with torch.no_grad():
                cs = [torch.sigmoid(phi(torch.tensor(s), torch.tensor(v))).item() for s in sentences]
            per_image.append(max(cs))
        expected.append(np.mean(per_image))
    assert clip_align(image_sets, sentence_sets, phi)["score"] == pytest.approx(np.mean(expected), rel=1e-5)


def _brute_force_diversity(x, businesses, users):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    levels = {"intra_business": [], "inter_user": [], "intra_user": []}
    for m, n in itertools.combinations(range(len(x)), 2):
        if businesses[m] != businesses[n]:
            continue
        dis = 1.0 - float(x[m] @ x[n])
        levels["intra_business"].append(dis)
        levels["intra_user" if users[m] == users[n] else "inter_user"].append(dis)
    return {k: (np.mean(v), len(v)) for k, v in levels.items()}


def test_visual_diversity_equals_brute_force_over_pairs():
    rng = np.random.default_rng(1)
    n = 120
    x = rng.normal(size=(n, 16)) * rng.uniform(0.5, 3, size=(n, 1))  # unnormalised on purpose
    businesses = [f"b{i}" for i in rng.integers(0, 7, n)]
    users = [f"u{i}" for i in rng.integers(0, 15, n)]
    got = visual_diversity(x, businesses, users)
    for level, (value, pairs) in _brute_force_diversity(x, businesses, users).items():
        assert got[level]["pairs"] == pairs
        assert got[level]["div"] == pytest.approx(value, rel=1e-9)


def test_diversity_pooled_business_by_business_from_arrow_rows_equals_brute_force():
    # jobs.evaluate's path: one business's photos at a time (a Ray Data group) -> rows -> pooled in several batches
    rng = np.random.default_rng(2)
    n = 90
    x = rng.normal(size=(n, 8)).astype(np.float32)
    businesses = [f"b{i}" for i in rng.integers(0, 6, n)]
    users = [f"u{i}" for i in rng.integers(0, 9, n)]
    tables = []
    for b in sorted(set(businesses)):
        idx = [i for i in range(n) if businesses[i] == b]
        photos = pa.table({"user_id": [users[i] for i in idx],
                           "embedding": pa.array([x[i].tolist() for i in idx], pa.list_(pa.float32()))})
        tables.append(business_diversity_rows(photos))
    got = dataset_diversity([pa.concat_tables(tables[:2]), *tables[2:]])
    assert got["photos_embedded"] == n
    reference = visual_diversity(x, businesses, users)
    for level, (value, pairs) in _brute_force_diversity(x, businesses, users).items():
        assert got["diversity"][level]["pairs"] == pairs
        assert got["diversity"][level]["div"] == pytest.approx(value, rel=1e-6)
        assert got["diversity"][level]["groups"] == len(reference[level]["groups"])
        assert sorted(got["groups"][level]) == pytest.approx(sorted(reference[level]["groups"]), rel=1e-6)
    assert len(got["groups"]["intra_business"]) == len(set(businesses))
    assert dataset_diversity([])["diversity"]["intra_user"]["pairs"] == 0


def test_visual_diversity_of_identical_photos_is_zero_and_orthogonal_is_one():
    same = visual_diversity(np.ones((4, 3)), ["b"] * 4, ["u1", "u1", "u2", "u2"])
    assert same["intra_business"]["div"] == pytest.approx(0.0, abs=1e-12)
    eye = visual_diversity(np.eye(4), ["b"] * 4, ["u1", "u1", "u2", "u2"])
    assert [eye[k]["div"] for k in eye] == pytest.approx([1.0, 1.0, 1.0])
    assert (eye["intra_business"]["pairs"], eye["inter_user"]["pairs"], eye["intra_user"]["pairs"]) == (6, 4, 2)


def test_grounding_rate_needs_a_shown_entity_named_as_whole_words():
    assert names_entity("The Pad  Thai was great!", {"pad thai"})
    assert not names_entity("the padded thai chairs", {"pad thai"})
    out = grounding_rate(["Loved the ramen.", "Great tacos here.", "Nice place.", "Cozy."],
                         [{"ramen"}, {"ramen", "pho"}, {"candle"}, set()])
    assert out == {"rate": pytest.approx(1 / 3), "grounded": 1, "scored": 3, "without_entities": 1}


def test_split_sentences():
    assert alignment.split_sentences("Great pho! The broth was rich. Would come back?  ok") == [
        "Great pho!", "The broth was rich.", "Would come back?", "ok"]
    assert alignment.split_sentences("") == []


def test_sidecar_pairs_label_described_photos_of_the_same_review():
    sentences = pa.table({"sentence_id": ["r1#0", "r1#1"], "review_id": ["r1", "r1"], "text": ["the ramen", "nice"],
                          "pic_ids": [["p1"], []], "split": ["train", "train"]})
    images = pa.table({"image_id": ["p1", "p2", "p3"], "review_id": ["r1", "r1", "r2"]})
    pairs = alignment.sidecar_pairs(sentences, images).to_pylist()
    assert [(p["sentence_id"], p["image_id"], p["label"]) for p in pairs] == [
        ("r1#0", "p1", 1), ("r1#0", "p2", 0), ("r1#1", "p1", 0), ("r1#1", "p2", 0)]


def test_classifier_learns_agreement_and_reports_auc_f1():
    """Positives: the sentence feature is a noisy copy of the photo's; negatives: an unrelated sentence. Neither
    side alone says which is which, so only the agreement term can separate them."""
    rng = np.random.default_rng(2)
    n, d = 3000, 16
    images = _unit(rng, n, d)
    labels = rng.integers(0, 2, n)
    texts = np.where(labels[:, None] == 1, images + 0.3 * _unit(rng, n, d), _unit(rng, n, d))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    train, val, test = slice(0, 2000), slice(2000, 2500), slice(2500, n)
    model = alignment.train_classifier(texts[train], images[train], labels[train], epochs=20, seed=0)
    threshold = alignment.best_f1_threshold(model.confidence(texts[val], images[val]), labels[val])
    metrics = alignment.classification_metrics(model.confidence(texts[test], images[test]), labels[test], threshold)
    assert metrics["auc"] > 0.95 and metrics["f1"] > 0.85
    # against scikit-learn directly
    from sklearn.metrics import roc_auc_score
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels[test], model.confidence(texts[test], images[test])))
    with pytest.raises(ValueError, match="both positive and negative"):
        alignment.train_classifier(texts[:10], images[:10], np.ones(10, int))


def test_classifier_round_trips_through_model_files(tmp_path):
    torch.manual_seed(0)
    model = alignment.AlignmentClassifier(4)
    alignment.save_classifier(model, str(tmp_path / "phi"), 0.42, {"name": "alignment"})
    loaded, config = alignment.load_classifier(str(tmp_path / "phi"))
    x = np.eye(4, dtype=np.float32)
    assert config["threshold"] == 0.42
    np.testing.assert_allclose(loaded.confidence(x, x), model.confidence(x, x))


def test_distill_reviews_keeps_sentences_describing_a_photo():
    torch.manual_seed(0)
    phi = alignment.AlignmentClassifier(2)
    with torch.no_grad():  # confidence high exactly when text and photo agree (t·v term)
        phi.fc.weight.zero_()
        phi.fc.weight[0, 4:6] = 20.0
        phi.fc.bias.fill_(-10.0)
    vectors = {"p1": np.array([1.0, 0.0]), "p2": np.array([0.0, 1.0])}
    encode = {"The soup was hot.": [1.0, 0.0], "Parking was hard.": [-1.0, 0.0], "Lovely cake!": [0.0, 1.0]}
    rows = alignment.distill_reviews(
        [{"review_id": "r1", "review_text": "The soup was hot. Parking was hard. Lovely cake!",
          "pic_ids": ["p1", "p2", "p_gone"], "split": "test"}],
        vectors.get, lambda texts: np.array([encode[t] for t in texts]), phi, threshold=0.5)
    assert [(r["sentence_id"], r["text"], r["pic_ids"]) for r in rows] == [
        ("r1#0", "The soup was hot.", ["p1"]), ("r1#2", "Lovely cake!", ["p2"])]


def test_keyword_coverage_counts_reference_keywords_found_in_the_output():
    from showcase_core.metrics.keywords import keyword_coverage

    cov = keyword_coverage(["the soup was hot", "nothing here"], ["The soup was very hot.", "Great noodles."])
    # reference keywords: soup (noun), hot (adj), very (adv); noodles (noun), great (adj)
    assert cov["nouns"] == pytest.approx(1 / 2)
    assert cov["adjectives"] == pytest.approx(1 / 2)
    assert cov["adverbs"] == pytest.approx(0.0)


def test_length_histogram_bins_words_by_ten():
    from showcase_core.metrics.keywords import length_histogram

    hist = length_histogram(["a " * 3, "a " * 10, "a " * 59, "a " * 60, "a " * 200, ""])
    assert hist == {"0-9": 2, "10-19": 1, "20-29": 0, "30-39": 0, "40-49": 0, "50-59": 1, "60+": 2}

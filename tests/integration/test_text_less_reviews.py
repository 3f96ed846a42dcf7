"""Google Local reviews with photos and no text (common in that data) are kept: their photos reach the images table,
the businesses' ground sets and the users' photo profiles; they have no text embedding and are never a text target."""

import json
import os

import numpy as np

from jobs import ingest
from jobs.common import run
from showcase_core import features as F
from showcase_core.encoders.embed import read_embeddings
from showcase_core.generation.data import build_generation_examples
from showcase_core.store import Store
from tests.conftest import embed_with_features
from tests.integration.test_features_job import check_training_equals_serving
from tests.integration.test_ingest_job import report_of


def google_local_file(world: str, path: str) -> tuple[set[str], list[str]]:
    """The tiny world's reviews as Google Local lines, every fourth one without text (null, empty or blank), plus one
    review with neither text nor photos. Returns the text-less review ids and their photo ids."""
    s2 = json.load(open(f"{world}/filter_all_t.json"))
    records, seen = [], set()
    for r in (r for split in ("train", "val", "test") for r in s2[split]):  # the world's good reviews, once each
        key = f"{r.get('user_id')}_{r.get('business_id')}"
        if key not in seen and r.get("user_id") and isinstance(r.get("rating"), int) and r.get("pics") \
                and r.get("review_text", "").strip() and all(os.path.exists(f"{world}/images/{p}.jpg") for p in r["pics"]):
            records.append(r)
        seen.add(key)
    text_less, photos = set(), []
    with open(path, "w") as f:
        for i, r in enumerate(records):
            text = r["review_text"]
            if i % 4 == 1:
                text = (None, "", "  ")[i % 3]
                text_less.add(f"{r['user_id']}_{r['business_id']}")
                photos += r["pics"]
            f.write(json.dumps({"user_id": r["user_id"], "name": "A", "time": 1_600_000_000_000 + i, "rating": r["rating"],
                                "text": text, "resp": None, "gmap_id": r["business_id"],
                                "pics": [{"url": [f"https://lh5.googleusercontent.com/p/{p}=w150-h150-k-no-p"]}
                                         for p in r["pics"]]}) + "\n")
        f.write(json.dumps({"user_id": "u00000", "name": "A", "time": 1, "rating": 5, "text": None, "resp": None,
                            "gmap_id": "b00000", "pics": None}) + "\n")
    return text_less, photos


def test_text_less_reviews_with_photos_reach_ground_sets_and_profiles(ray_local, tiny_world, tmp_path):
    world, _ = tiny_world
    source, root = str(tmp_path / "reviews.json"), str(tmp_path / "root")
    text_less, their_photos = google_local_file(world, source)
    assert len(text_less) >= 10
    assert run("ingest", ingest.main, ["--root", root, "--gest", source, "--images", f"{world}/images",
                                       "--sentences", f"{world}/sentences.jsonl", "--owner-photos", "none"]) == 0
    store = Store.open(root)
    reviews = store.read_table("reviews")
    kept = {r["review_id"]: r["review_text"] for r in reviews.select(["review_id", "review_text"]).to_pylist()}
    assert {k for k, text in kept.items() if text is None} == text_less
    report = report_of(store)
    assert report["counts"]["reviews_without_text"] == len(text_less)
    reasons = report["counts"]["quarantined_by_reason"]
    assert reasons["no_text_or_photos"] == 1 and reasons["text_less_review"] >= len(text_less)
    sentences = store.read_table("sentences")
    assert not set(sentences.column("review_id").to_pylist()) & text_less
    assert set(their_photos) <= set(store.read_table("images").column("image_id").to_pylist())

    encoder_id = embed_with_features(root)
    texts = set(read_embeddings(store, encoder_id, "texts").column("id").to_pylist())
    assert not {f"review:{k}" for k in text_less} & texts and {f"review:{k}" for k in kept if kept[k]} <= texts
    assert set(their_photos) <= set(read_embeddings(store, encoder_id, "images").column("id").to_pylist())

    # their photos are in the businesses' ground sets and in their users' photo profiles, with no text entry
    lookup = F.FeatureLookup(store, encoder_id)
    by_review = {r["review_id"]: r for r in reviews.select(["review_id", "user_id", "business_id", "pic_ids"])
                 .to_pylist() if r["review_id"] in text_less}
    grounds = lookup.rows("businesses", sorted({r["business_id"] for r in by_review.values()}))
    users = lookup.rows("users", sorted({r["user_id"] for r in by_review.values()}))
    for r in by_review.values():
        assert set(r["pic_ids"]) <= set(grounds[r["business_id"]]["image_ids"])
        user = users[r["user_id"]]
        at = user["businesses"].index(r["business_id"])
        assert user["photo_counts"][at] == len(r["pic_ids"]) and user["text_counts"][at] == 0
        assert np.linalg.norm(np.asarray(user["photo_sums"][at])) > 0
    # never a text target; and serving reads exactly what training computes, text-less reviews included
    examples, skipped = build_generation_examples(reviews, sentences, read_embeddings(store, encoder_id, "images"),
                                                  read_embeddings(store, encoder_id, "texts"))
    assert sum(s["no_text"] for s in skipped.values()) == len(text_less)
    assert not {rid for split in examples.values() for rid in split.review_ids} & text_less
    check_training_equals_serving(root, encoder_id)

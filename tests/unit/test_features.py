"""The one definition of a pair's inputs (showcase_core.features): leave-one-business-out profiles, the generator's
history in its stated order, the capped ground set, and the stable buckets the tables are partitioned by."""

import os
import subprocess
import sys

import numpy as np

from showcase_core import features as F

DIM = 3


def vec(*xs) -> np.ndarray:
    return np.array(xs, np.float32)


def test_profile_never_holds_the_target_business():
    photos = [("b1", "p1", vec(1, 0, 0)), ("b1", "p2", vec(0, 1, 0)), ("b2", "p3", vec(0, 0, 1))]
    texts = [("review:u_b1", "b1", 10, vec(1, 1, 0)), ("review:u_b2", "b2", 20, vec(0, 1, 1))]
    row = F.user_row("u", photos, texts, DIM)
    p = F.profile(row, "b1", DIM)
    assert np.array_equal(p.photo, vec(0, 0, 1)) and np.array_equal(p.text, vec(0, 1, 1))
    assert p.history_ids == ["review:u_b2"] and p.has_history
    q = F.profile(row, "b9", DIM)  # a business the user never reviewed: everything counts
    assert np.allclose(q.photo, vec(1, 1, 1) / 3) and np.allclose(q.text, vec(0.5, 1, 0.5))
    assert q.history_ids == ["review:u_b2", "review:u_b1"]  # the newest first
    only = F.user_row("v", [("b1", "p1", vec(1, 0, 0))], [("review:v_b1", "b1", None, vec(1, 0, 0))], DIM)
    cold = F.profile(only, "b1", DIM)
    assert not cold.has_history and not cold.photo.any() and not cold.text.any() and cold.history.shape == (0, DIM)
    assert not F.profile(None, "b1", DIM).has_history


def test_history_keeps_enough_businesses_to_drop_any_one_and_counts_each_text_once():
    # 6 businesses, newest b5; a Gest-s2 history item duplicates the review of b0 (counted once, with its time)
    texts = [(f"review:u_b{i}", f"b{i}", 100 + i, vec(i, 0, 0)) for i in range(6)]
    texts.append(("review:u_b0", "b0", None, vec(0, 0, 0)))
    texts.append(("review:u_old", "", None, vec(0, 0, 9)))  # an undated item about an unknown business: last
    row = F.user_row("u", [], texts, DIM, max_history=3)
    assert row["recent_text_ids"] == ["review:u_b5", "review:u_b4", "review:u_b3", "review:u_b2"]  # 3 + 1 businesses
    assert sum(row["text_counts"]) == 7
    for target in ("b5", "b3", "b0", "b9"):
        full = F.user_row("u", [], texts, DIM, max_history=100)
        assert F.profile(row, target, DIM, 3).history_ids == F.profile(full, target, DIM, 3).history_ids
        assert np.array_equal(F.profile(row, target, DIM, 3).text, F.profile(full, target, DIM, 3).text)
    assert F.profile(row, "b5", DIM, 3).history_ids == ["review:u_b4", "review:u_b3", "review:u_b2"]


def test_ground_set_is_the_newest_photos_capped_once_each():
    photos = [("p1", "/1", 5, vec(1, 0, 0)), ("p2", "/2", None, vec(0, 1, 0)), ("p3", "/3", 9, vec(0, 0, 1)),
              ("p1", "/1", 5, vec(1, 0, 0)), ("p0", "/0", 9, vec(1, 1, 1))]
    row = F.business_row("b", photos, max_ground_set=3)
    assert row["image_ids"] == ["p0", "p3", "p1"] and row["photos"] == 4  # newest, ties by id; undated last
    ground = F.ground_set(row, DIM)
    assert ground.image_uris == ["/0", "/3", "/1"] and np.array_equal(ground.vectors[1], vec(0, 0, 1))
    assert F.business_row("b", [])["image_ids"] == []


def test_history_items_name_their_business_by_review_key():
    entries = F.text_entries("u1", "u1_b2", "b2", 7, [{"review_id": "u1_b3", "text": "x"},
                                                       {"review_id": "other", "text": "y"}])
    assert entries == [("review:u1_b2", "b2", 7), ("review:u1_b3", "b3", None), ("review:other", "", None)]


def test_buckets_are_stable_across_processes_and_spread():
    ids = [f"u{i}" for i in range(2000)]
    here = F.bucket_of(ids, 16)
    code = "import sys; from showcase_core.features import bucket_of; print(bucket_of([f'u{i}' for i in range(2000)], 16).tolist())"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}).stdout
    assert [int(x) for x in out.strip()[1:-1].split(",")] == here.tolist()
    counts = np.bincount(here, minlength=16)
    assert counts.min() > 2000 / 16 * 0.7 and counts.max() < 2000 / 16 * 1.3
    # a multiple of a bucket count refines it: unit % buckets == bucket (the nightly relies on this)
    assert np.array_equal(F.bucket_of(ids, 64) % 16, here)

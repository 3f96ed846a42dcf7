"""jobs.features on local Ray, and the parity of training and serving: for every pair of the tiny world, the inputs
the nightly builds from the committed feature tables equal, number for number, the ones the training loaders build
from the raw tables."""

import numpy as np
import pyarrow as pa

from jobs import features as features_job
from jobs import nightly
from jobs.common import run
from showcase_core import features as F
from showcase_core import tables as delta
from showcase_core.encoders.embed import read_embeddings
from showcase_core.generation.data import build_generation_examples
from showcase_core.selection.data import build_selection_data
from showcase_core.store import Store


def nightly_inputs(store, encoder_id, pairs):
    """What the nightly's profile stage attaches to each pair, from the committed tables (one group: every pair)."""
    meta = F.read_meta(store, encoder_id)
    group = pa.table({"user_id": [u for u, _ in pairs], "business_id": [b for _, b in pairs],
                      "score": pa.nulls(len(pairs), pa.float64()), "rank": pa.nulls(len(pairs), pa.int64()),
                      "unit": [0] * len(pairs), "group": [0] * len(pairs)})
    out = nightly.attach_profiles(group, store.root, encoder_id, meta, with_history=True).to_pylist()
    return {(r["user_id"], r["business_id"]): r for r in out}, meta


def test_the_nightly_reads_exactly_what_training_computes(tiny_embedded):
    check_training_equals_serving(*tiny_embedded)


def check_training_equals_serving(root: str, encoder_id: str) -> None:
    """Every pair's profile, history and ground set from the feature tables equal the training loaders' numbers."""
    store = Store.open(root)
    reviews, images = store.read_table("reviews"), store.read_table("images")
    image_emb, text_emb = read_embeddings(store, encoder_id, "images"), read_embeddings(store, encoder_id, "texts")
    users = sorted(set(reviews.column("user_id").to_pylist()))
    businesses = sorted(set(reviews.column("business_id").to_pylist()))
    every_pair = [(u, b) for u in users for b in businesses]
    got, meta = nightly_inputs(store, encoder_id, every_pair)
    assert len(got) == len(every_pair) and not any(r["reason"] for r in got.values())
    dim = meta["dim"]

    # 1. the DPP's training examples (one per review): the same profile vectors, bit for bit
    selection = build_selection_data(reviews, images, image_emb, text_emb, splits=("train", "val", "test"))
    checked = 0
    for split in selection.splits.values():
        for i, key in enumerate(zip(split.user_ids, split.business_ids)):
            assert np.array_equal(np.asarray(got[key]["profile_photo"], np.float32), split.profile_img[i]), key
            assert np.array_equal(np.asarray(got[key]["profile_text"], np.float32), split.profile_text[i]), key
            assert got[key]["has_history"] == bool(split.has_history[i])
            checked += 1
    assert checked >= 40
    # 2. the generator's training examples: the same history vectors, in the same order
    sentences = store.read_table("sentences")
    examples, _ = build_generation_examples(reviews, sentences, image_emb, text_emb, max_history=meta["max_history"])
    for split in examples.values():
        for i, key in enumerate(zip(split.user_ids, split.business_ids)):
            history = np.asarray(got[key]["history"] or [], np.float32).reshape(-1, dim)
            assert np.array_equal(history, split.history[i][split.history_mask[i]]), key
    # 3. every user x business pair, from the raw tables with the training loaders' function
    raw_users, raw_businesses = F.rows_from_tables(reviews, images, image_emb, text_emb)
    target_in_recent = 0
    for (user, business), row in got.items():
        want = F.profile(raw_users[user], business, dim, meta["max_history"])
        assert np.array_equal(np.asarray(row["profile_photo"], np.float32), want.photo)
        assert np.array_equal(np.asarray(row["profile_text"], np.float32), want.text)
        assert np.array_equal(np.asarray(row["history"] or [], np.float32).reshape(-1, dim), want.history)
        recent = raw_users[user]["recent_businesses"][:meta["max_history"]]
        target_in_recent += business in recent and len(set(recent)) > 1
    assert target_in_recent >= 20  # the hard case: the target is among the user's last reviews
    # and the ground sets the nightly reads by key are the ones training draws from
    lookup = F.FeatureLookup(store, encoder_id)
    tables = lookup.rows("businesses", businesses)
    for business in businesses:
        a, b = F.ground_set(tables[business], dim), F.ground_set(raw_businesses[business], dim)
        assert a.image_ids == b.image_ids and a.image_uris == b.image_uris and np.array_equal(a.vectors, b.vectors)


def test_features_job_commits_bucketed_tables_and_a_meta_written_last(tiny_embedded, capsys):
    root, encoder_id = tiny_embedded  # built by the session fixture with small buckets (tests/conftest.py)
    store = Store.open(root)
    meta = F.read_meta(store, encoder_id)
    assert meta["tables"]["users"]["buckets"] > 1 and meta["tables"]["businesses"]["buckets"] > 1
    reads = store.read_json("runs/ingest.json")["tables"]
    for kind, key in (("users", "user_id"), ("businesses", "business_id")):
        rel = F.features_dir(encoder_id, kind)
        table = delta.read(store, rel, meta["tables"][kind]["version"])
        ids = table.column(key).to_pylist()
        assert len(ids) == len(set(ids)) == meta["tables"][kind]["rows"] > 0
        # each row sits in the partition of its id's bucket, one file per non-empty bucket
        assert table.column("bucket").to_pylist() == F.bucket_of(ids, meta["tables"][kind]["buckets"]).tolist()
        assert meta["tables"][kind]["files"] == len(set(table.column("bucket").to_pylist()))
        lineage = delta.open_table(store, rel).history(1)[0]
        assert lineage["showcase.run_id"] == meta["run_id"]
        assert f'"tables/reviews": {reads["reviews"]["version"]}' in lineage["showcase.reads"]
    assert meta["tables"]["businesses"]["rows"] == len(set(store.read_table("reviews", ["business_id"])
                                                           .column("business_id").to_pylist()))
    assert run("features", features_job.main, ["--root", root, "--encoder", "nope"]) == 2
    assert "no embeddings of encoder nope" in capsys.readouterr().err

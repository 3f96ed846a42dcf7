"""The ingest passes without Ray: what jobs.ingest runs as tasks, called in order here."""

import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from showcase_core.data.ingest import ORDER, commit_ingest, drops_of_chunk, finalize_chunk, list_photo_ids, plan_chunks, \
    plan_drops, stage_chunk, user_split
from showcase_core.data.world import make_world
from showcase_core.store import Store


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("world"))
    summary = make_world(out, "tiny", seed=5)
    return out, summary


def ingest_without_ray(root: str, source: str, fmt: str, images: str, chunk_bytes: int, seed: int = 0):
    store = Store.open(root)
    present = list_photo_ids(images)
    chunks = plan_chunks(source, fmt, chunk_bytes)
    for i, (s, e) in enumerate(chunks):
        stage_chunk(store, "stage", i, source, fmt, s, e, images, present)
    import pyarrow.parquet as pq
    keys = pa.concat_tables(pq.read_table(store.path(f"stage/reviews-{i:05d}.parquet"), columns=["review_id", "user_id", ORDER])
                            for i in range(len(chunks)))
    drops = plan_drops(keys, fmt)
    parts = {"reviews": [], "images": [], "quarantine": []}
    for i in range(len(chunks)):
        result = finalize_chunk(store, "stage", i, "v1", drops_of_chunk(drops, i), fmt, seed, images)
        for k in parts:
            parts[k].append(result[k])
    commit_ingest(store, "v1", parts, {"source": source})
    return store, len(chunks)


def test_s2_world_gives_the_expected_counts_and_reasons(tiny, tmp_path):
    world, summary = tiny
    store, _ = ingest_without_ray(str(tmp_path), f"{world}/filter_all_t.json", "s2", f"{world}/images", 1 << 20)
    reviews = store.read_table("reviews")
    assert reviews.num_rows == summary["reviews"]
    assert store.read_table("images").num_rows == summary["photos"]
    splits = dict(zip(*[c.to_pylist() for c in pc.value_counts(reviews.column("split")).flatten()]))
    assert splits == {k: v for k, v in summary["splits"].items() if v}
    reasons = sorted(store.read_table("quarantine").column("reason").to_pylist())
    assert reasons == sorted(e["reason"] for e in summary["planted_bad"])
    # the first copy of the duplicated review is the one kept
    dup = store.read_table("quarantine").filter(pc.equal(pc.field("reason"), "duplicate_review")).to_pylist()[0]
    kept = reviews.filter(pc.equal(reviews.column("review_id"), json.loads(dup["record"])["user_id"] + "_" +
                                   json.loads(dup["record"])["business_id"])).to_pylist()[0]
    assert kept["review_text"] != "the same review again."


def test_raw_world_in_many_chunks_equals_one_chunk_and_applies_gest_s1(tiny, tmp_path):
    world, summary = tiny
    src = f"{world}/image_review_all.json"
    one_store, n1 = ingest_without_ray(str(tmp_path / "one"), src, "raw", f"{world}/images", 1 << 30)
    many_store, n_many = ingest_without_ray(str(tmp_path / "many"), src, "raw", f"{world}/images", 997)
    assert n1 == 1 and n_many > 10
    for name in ("reviews", "images"):
        a, b = one_store.read_table(name), many_store.read_table(name)
        assert a.drop_columns(["position"] if name == "reviews" else []).equals(
            b.drop_columns(["position"] if name == "reviews" else []))
    q1 = sorted(one_store.read_table("quarantine").column("reason").to_pylist())
    q2 = sorted(many_store.read_table("quarantine").column("reason").to_pylist())
    assert q1 == q2
    assert "unparseable" in q1 and "single_review_user" in q1
    reviews = one_store.read_table("reviews")
    users = reviews.column("user_id").to_pylist()
    assert min(users.count(u) for u in set(users)) >= 2  # Gest-s1: no single-review users
    split_of = {}
    for u, s in zip(users, reviews.column("split").to_pylist()):
        assert split_of.setdefault(u, s) == s  # user-disjoint
    records = sum(1 for line in open(src) if line.strip())
    quarantined_records = len([r for r in q1 if r != "photo_missing"])
    assert reviews.num_rows + quarantined_records == records  # nothing dropped silently


def test_missing_photo_files_are_quarantined_per_photo(tiny, tmp_path):
    world, _ = tiny
    import shutil
    images = tmp_path / "images"
    shutil.copytree(f"{world}/images", images)
    removed = sorted(n for n in os.listdir(images) if n.startswith("p"))[:3]  # the reviews' photos
    for name in removed:
        os.remove(images / name)
    store, _ = ingest_without_ray(str(tmp_path / "root"), f"{world}/filter_all_t.json", "s2", str(images), 1 << 20)
    q = store.read_table("quarantine").to_pylist()
    missing = {r["record"] for r in q if r["reason"] == "photo_missing"}
    lost_reviews = [r for r in q if r["reason"] == "all_photos_missing"]
    gone = {n[:-4] for n in removed}
    assert missing | {p for r in lost_reviews for p in json.loads(r["record"])["pic_ids"]} >= gone
    assert not gone & set(store.read_table("images").column("image_id").to_pylist())


def test_user_split_is_seeded_and_roughly_80_10_10():
    users = [f"user{i}" for i in range(5000)]
    a = [user_split(u, 0) for u in users]
    assert a == [user_split(u, 0) for u in users]
    assert a != [user_split(u, 1) for u in users]
    share = {s: a.count(s) / len(a) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["val"] - 0.1) < 0.02


def test_plan_drops_keeps_the_first_duplicate_and_drops_single_users():
    keys = pa.table({"review_id": ["a_1", "b_1", "a_1", "a_2", "c_1"], "user_id": ["a", "b", "a", "a", "c"],
                     ORDER: pa.array([5, 1, 9, 3, (1 << 40) + 2], pa.int64())})
    drops = plan_drops(keys, "raw")
    got = dict(zip(drops.column(ORDER).to_pylist(), drops.column("reason").to_pylist()))
    assert got == {9: "duplicate_review", 1: "single_review_user", (1 << 40) + 2: "single_review_user"}
    assert drops_of_chunk(drops, 1).column(ORDER).to_pylist() == [(1 << 40) + 2]
    assert dict(zip(*[c.to_pylist() for c in plan_drops(keys, "s2").columns])) == {9: "duplicate_review"}


def test_a_google_local_text_with_a_lone_surrogate_is_ingested_not_a_crash(tiny, tmp_path):
    world, _ = tiny
    pics = sorted(f[:-4] for f in os.listdir(f"{world}/images") if f.endswith(".jpg"))[:3]
    lines = [{"user_id": "u1", "gmap_id": f"g{i}", "rating": 4, "time": 1000 + i,
              "text": "the broth \ud83d was rich" if i == 0 else "good noodles",
              "pics": [{"url": [f"https://lh5.googleusercontent.com/p/{pics[i]}=w150-h150"]}]} for i in range(2)]
    lines.append({**lines[1], "user_id": "u\udbff", "gmap_id": "g9", "pics": [{"url": [f"https://h/p/{pics[2]}=w1"]}]})
    source = tmp_path / "review-local.json"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))  # ASCII-escaped, as the real files
    store, _ = ingest_without_ray(str(tmp_path / "root"), str(source), "googlelocal", f"{world}/images", 1 << 20)
    texts = sorted(store.read_table("reviews").column("review_text").to_pylist())
    assert texts == ["good noodles", "the broth \ufffd was rich"]
    quarantine = store.read_table("quarantine").to_pylist()
    assert [(q["reason"], q["field"]) for q in quarantine] == [("invalid_unicode", "user_id")]

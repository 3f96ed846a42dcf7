"""The ingest passes without Ray: what jobs.ingest runs as tasks, called in order here."""

import io
import json
import os
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from showcase_core.data.ingest import (ORDER, PhotoLookup, chunk_drops, commit_ingest, drops_of_chunk, finalize_chunk,
                                       plan_chunks, plan_drops, plan_duplicates, plan_single_users, stage_chunk,
                                       user_split)
from showcase_core.data import schema
from showcase_core.data.owner_photos import photos_present, read_owner_photos
from showcase_core.data.summary import dataset_summary
from showcase_core.data.world import make_world
from showcase_core.store import Store

KEY_SCHEMA = pa.schema([("review_id", pa.string()), ("user_id", pa.string()), (ORDER, pa.int64())])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("world"))
    summary = make_world(out, "tiny", seed=5)
    return out, summary


def ingest_without_ray(root: str, source: str, fmt: str, images: str, chunk_bytes: int, seed: int = 0,
                       buckets: int = 1):
    """jobs.ingest's steps in one process: stage the chunks, plan in ``buckets`` buckets of ids, finalize, commit."""
    store = Store.open(root)
    chunks = plan_chunks(source, fmt, chunk_bytes)
    for i, (s, e) in enumerate(chunks):
        stage_chunk(store, "stage", i, source, fmt, s, e, images)
    drop_files = [plan_duplicates(store, "stage", len(chunks), b, buckets) for b in range(buckets)]
    if fmt == "raw":
        drop_files += [plan_single_users(store, "stage", len(chunks), b, buckets, drop_files) for b in range(buckets)]
    parts = {"reviews": [], "images": [], "quarantine": []}
    for i in range(len(chunks)):
        result = finalize_chunk(store, "stage", i, "v1", chunk_drops(store, drop_files, i), fmt, seed, images)
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
    many_store, n_many = ingest_without_ray(str(tmp_path / "many"), src, "raw", f"{world}/images", 997, buckets=5)
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


def test_photo_lookup_finds_the_jpg_files_directly_under_the_root(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "d.jpg").mkdir()  # a folder is no photo
    (tmp_path / "d.jpg" / "e.jpg").write_bytes(b"x")
    lookup = PhotoLookup(str(tmp_path))
    assert lookup.present(["a", "b", "a", "c", "d", "e", "nope"]) == {"a", "b"}
    assert lookup.present([]) == set()
    assert "a" in lookup and "nope" not in lookup
    lookup.threads = 3  # as on S3: the same answer from slices of the batch on three threads
    assert lookup.present([*"abcdez", "a"]) == {"a", "b"}


def test_a_photo_id_no_file_can_be_named_after_is_absent_not_a_crash(tmp_path):
    longest = "l" * 251  # l...l.jpg: 255 bytes, the longest file name
    for name in ("a", longest):
        (tmp_path / f"{name}.jpg").write_bytes(b"x")
    lookup = PhotoLookup(str(tmp_path))
    assert lookup.present(["a", "a" * 300, "é" * 130, longest, "a\x00b"]) == {"a", longest}
    assert "a" * 300 not in lookup


def test_a_review_of_an_over_long_photo_id_is_quarantined_not_a_crash(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "p1.jpg").write_bytes(b"x")
    rows = [{"user_id": "u1", "business_id": f"b{i}", "rating": 4, "review_text": "ok", "pics": pics}
            for i, pics in enumerate([["p1", "a" * 300], ["a" * 300], ["p1"]])]
    source = tmp_path / "image_review_all.json"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store, _ = ingest_without_ray(str(tmp_path / "root"), str(source), "raw", str(tmp_path / "images"), 1 << 20)
    assert store.read_table("reviews").column("pic_ids").to_pylist() == [["p1"], ["p1"]]
    assert sorted(store.read_table("quarantine").column("reason").to_pylist()) == ["all_photos_missing",
                                                                                   "photo_missing"]


def test_owner_photo_rows_with_a_lone_surrogate_are_invalid_unicode_in_any_partition(tmp_path):
    (tmp_path / "p1.jpg").write_bytes(b"x")
    data = (b'{"business_id": "b1", "pic_id": "p1"}\n{"business_id": "b1", "pic_id": "p\\ud83d"}\n'
            b'{"business_id": "b\\udc00", "pic_id": "p2"}\n')
    for partitions in (1, 2, 3):
        rows, bad = [], []
        for k in range(partitions):
            present = photos_present(io.BytesIO(data), {"b1"}, PhotoLookup(str(tmp_path)), partition=(k, partitions))
            result = read_owner_photos(io.BytesIO(data), "o.jsonl", {"b1"}, present, str(tmp_path), (k, partitions))
            rows += result["table"].column("image_id").to_pylist()
            bad += result["quarantine"]
        assert rows == ["p1"]
        assert sorted((q["reason"], q["field"]) for q in bad) == [("invalid_unicode", "business_id"),
                                                                  ("invalid_unicode", "pic_id")]
        pa.Table.from_pylist(bad, schema=schema.QUARANTINE)


def test_owner_photos_are_looked_up_a_batch_at_a_time_with_the_answers_of_one_lookup_a_row(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(0, 25, 2):
        (images / f"p{i}.jpg").write_bytes(b"x")
    lines = [json.dumps({"business_id": "b1", "pic_id": f"p{i}"}) for i in range(25)]
    lines += ["not json", "[1]", "", json.dumps({"business_id": "b2", "pic_id": "p1"}),
              json.dumps({"business_id": "b1", "pic_id": "../p2"}), json.dumps({"business_id": ["x"], "pic_id": "p4"}),
              json.dumps({"business_id": "b1", "pic_id": 7}), json.dumps({"business_id": "b1", "pic_id": "p2"})]
    data = "\n".join(lines).encode()

    class CountingLookup(PhotoLookup):
        def present(self, pic_ids):
            self.asked = [*getattr(self, "asked", []), len(pic_ids)]
            return super().present(pic_ids)

    lookup = CountingLookup(str(images))
    present = photos_present(io.BytesIO(data), {"b1"}, lookup, batch=10)
    assert present == {f"p{i}" for i in range(0, 25, 2)}
    assert lookup.asked == [10, 10, 6]  # the unknown business's, unreadable and unsafe rows are not asked
    batched = read_owner_photos(io.BytesIO(data), "o.jsonl", {"b1"}, present, str(images))
    one_a_row = read_owner_photos(io.BytesIO(data), "o.jsonl", {"b1"}, PhotoLookup(str(images)), str(images))
    assert batched["table"].equals(one_a_row["table"]) and batched["table"].num_rows == 13
    assert batched["quarantine"] == one_a_row["quarantine"]
    assert sorted(r["reason"] for r in batched["quarantine"]).count("owner_photo_missing") == 12


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


def test_two_reviews_whose_ids_collide_are_not_duplicates_but_the_second_is_ambiguous():
    """User "a_b" of business "c" and user "a" of business "b_c" both get review id "a_b_c": the second is no second
    review of the same pair (duplicate_review) but a different review whose id is taken (ambiguous_review_id)."""
    keys = pa.table({"review_id": ["a_b_c", "a_b_c", "a_b_c", "a_b_c", "x_y"], "user_id": ["a_b", "a", "a_b", "a", "x"],
                     ORDER: pa.array([4, 7, 8, 2, 5], pa.int64())})
    got = dict(zip(*[c.to_pylist() for c in plan_drops(keys, "s2").columns]))
    assert got == {4: "ambiguous_review_id", 7: "duplicate_review", 8: "ambiguous_review_id"}  # order 2 (user a) kept


def test_colliding_review_ids_end_to_end(tiny, tmp_path):
    world, _ = tiny
    pics = sorted(f[:-4] for f in os.listdir(f"{world}/images") if f.endswith(".jpg"))[:4]
    rows = [("a_b", "c", pics[0]), ("a", "b_c", pics[1]), ("a_b", "c", pics[2]), ("a", "d", pics[3])]
    source = tmp_path / "review-local.json"
    source.write_text("".join(json.dumps({"user_id": u, "gmap_id": b, "rating": 4, "text": "ok", "time": 1,
                                          "pics": [p]}) + "\n" for u, b, p in rows))
    store, _ = ingest_without_ray(str(tmp_path / "root"), str(source), "googlelocal", f"{world}/images", 1 << 20)
    reviews = store.read_table("reviews")
    assert sorted(zip(reviews.column("user_id").to_pylist(), reviews.column("business_id").to_pylist())) == [
        ("a", "d"), ("a_b", "c")]
    quarantine = store.read_table("quarantine").to_pylist()
    assert sorted((q["reason"], json.loads(q["record"])["user_id"]) for q in quarantine) == [
        ("ambiguous_review_id", "a"), ("duplicate_review", "a_b")]
    detail = next(q["detail"] for q in quarantine if q["reason"] == "ambiguous_review_id")
    assert "user a, business b_c" in detail


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(0, 2), st.sampled_from("abcdefgh"), st.sampled_from("uvwxyz")),
                     max_size=40),
       buckets=st.integers(1, 6))
def test_the_plan_bucket_by_bucket_drops_what_the_one_table_plan_drops(tmp_path, rows, buckets):
    """Any staged rows over three chunks (review ids that repeat, within a user or across users), any number of
    buckets: the drop files hold the very drops of plan_drops over every row, each once."""
    store, staging = Store.open(str(tmp_path)), f"stage-{uuid.uuid4().hex}"
    chunks = [[], [], []]
    for chunk, review, user in rows:
        chunks[chunk].append({"review_id": f"{user}_{review}" if review < "e" else review, "user_id": user,
                              ORDER: (chunk << 40) + len(chunks[chunk])})
    os.makedirs(store.path(staging))
    for i, chunk in enumerate(chunks):
        pq.write_table(pa.Table.from_pylist(chunk, schema=KEY_SCHEMA), store.path(f"{staging}/reviews-{i:05d}.parquet"))
    keys = pa.Table.from_pylist([r for chunk in chunks for r in chunk], schema=KEY_SCHEMA)
    for fmt in ("raw", "s2"):
        files = [plan_duplicates(store, staging, 3, b, buckets) for b in range(buckets)]
        if fmt == "raw":
            files += [plan_single_users(store, staging, 3, b, buckets, files) for b in range(buckets)]
        got = [(o, r) for i in range(3) for o, r in zip(*[c.to_pylist() for c in chunk_drops(store, files, i).columns])]
        expected = plan_drops(keys, fmt)
        assert sorted(got) == sorted(zip(*[c.to_pylist() for c in expected.columns]))
        assert len({o for o, _ in got}) == len(got)


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


def test_the_dataset_summary_counts_users_and_businesses_alike_in_any_number_of_buckets(tiny, tmp_path):
    world, _ = tiny
    store, _ = ingest_without_ray(str(tmp_path / "root"), f"{world}/filter_all_t.json", "s2", f"{world}/images",
                                  1 << 20)
    reviews = store.read_table("reviews")
    one, many = dataset_summary(store), dataset_summary(store, bucket_rows=3)
    assert one == many
    assert one["users"] == len(set(reviews.column("user_id").to_pylist())) > 3
    assert one["businesses"] == len(set(reviews.column("business_id").to_pylist())) > 3
    assert one["reviews"] == reviews.num_rows and one["photos"] == store.read_table("images").num_rows
    words = sum(len(t.split()) for t in reviews.column("review_text").to_pylist() if t is not None)
    assert one["avg_review_words"] == round(words / (reviews.num_rows - one["reviews_without_text"]), 2)

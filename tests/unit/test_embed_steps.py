import io
import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from showcase_core.encoders.clip import load_encoder
from showcase_core import tables as delta
from showcase_core.encoders.embed import (BucketOverflow, ImageEmbedder, TextEmbedder, committed_id_tables,
                                          committed_rows, decode_photos, duplicate_ids, new_rows, read_embeddings)
from showcase_core.store import Store


def write_jpeg(path, color):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "JPEG")
    path.write_bytes(buf.getvalue())


def test_decode_photos_marks_missing_and_corrupt_photos(tmp_path):
    write_jpeg(tmp_path / "a.jpg", (10, 200, 10))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 garbage")
    batch = {"id": np.array(["a", "bad", "gone"], object),
             "uri": np.array([str(tmp_path / "a.jpg"), str(tmp_path / "bad.jpg"), str(tmp_path / "gone.jpg")], object)}
    out = decode_photos(batch, 16)
    assert out["pixels"].shape == (3, 16, 16, 3)
    assert list(out["reason"]) == ["", "not_an_image", "photo_missing"]  # a JPEG signature, then no JPEG
    assert out["pixels"][0].mean() > 20 and out["pixels"][1].max() == 0


def done_ids(store, enc_id, kinds) -> set:
    return {i for t in committed_id_tables(store, enc_id, kinds) for i in t.column("id").to_pylist()}


def commit_files(store, enc_id, out) -> None:
    """What jobs.embed's driver does with the records an embedder returns."""
    for kind in set(out["kind"]):
        files = [{k: out[k][i] for k in delta.RECORD_KEYS} for i in range(len(out["kind"])) if out["kind"][i] == kind]
        delta.commit(store, f"embeddings/{enc_id}/{kind}", files, None, run_id="r", stage="test")


def test_embedders_write_idempotent_parts_and_quarantine(tmp_path):
    root = str(tmp_path / "root")
    enc_id = load_encoder(model="showcase-tiny").encoder_id
    write_jpeg(tmp_path / "a.jpg", (200, 10, 10))
    write_jpeg(tmp_path / "b.jpg", (10, 10, 200))
    batch = decode_photos({"id": np.array(["a", "b", "x"], object),
                           "uri": np.array([str(tmp_path / n) for n in ("a.jpg", "b.jpg", "x.jpg")], object)}, 64)
    images = ImageEmbedder(root, {"model": "showcase-tiny", "device": "cpu"}, enc_id)
    out = images(batch)
    assert dict(zip(out["kind"], out["rows"])) == {"images": 2, "quarantine": 1}
    again = images(batch)  # a retried batch rewrites the same data files
    assert list(again["path"]) == list(out["path"])
    store = Store.open(root)
    assert done_ids(store, enc_id, ("images",)) == set()  # written is not committed
    commit_files(store, enc_id, out)
    assert len(os.listdir(tmp_path / "root" / "embeddings" / enc_id / "images")) == 2  # one file + _delta_log
    table = read_embeddings(store, enc_id, "images")
    assert table.column("id").to_pylist() == ["a", "b"]
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    q = delta.read(store, f"embeddings/{enc_id}/quarantine").to_pylist()
    assert q == [{"id": "x", "uri": str(tmp_path / "x.jpg"), "reason": "photo_missing",
                  "detail": f"no file at {tmp_path / 'x.jpg'}"}]
    commit_files(store, enc_id, TextEmbedder(root, {"model": "showcase-tiny", "device": "cpu"}, enc_id)(
        {"id": np.array(["review:r1"], object), "text": np.array(["great ramen"], object)}))
    assert done_ids(store, enc_id, ("images", "quarantine")) == {"a", "b", "x"}
    assert done_ids(store, enc_id, ("texts",)) == {"review:r1"}
    assert committed_rows(store, enc_id, ("images", "quarantine")) == 3 and committed_rows(store, enc_id, ("x",)) == 0
    assert duplicate_ids(store, enc_id, "images") == 0
    commit_files(store, enc_id, again)  # the retried batch's file is the same file: committed once
    assert duplicate_ids(store, enc_id, "images") == 0
    rel = f"embeddings/{enc_id}/images"  # the same ids in another file (what exactly-once rules out)
    again_as_other_file = delta.write_file(store, rel, delta.read(store, rel), "part-other.parquet")
    delta.commit(store, rel, [again_as_other_file], None, run_id="r2", stage="test")
    assert duplicate_ids(store, enc_id, "images") == 2 and duplicate_ids(store, enc_id, "images", bucket_rows=1) == 2
    assert not [n for n in os.listdir(tmp_path / "root" / "embeddings" / enc_id / "images") if ".tmp" in n]


def test_concurrent_calls_enter_the_model_one_at_a_time_and_match_sequential_calls(tmp_path):
    """jobs.embed runs --calls-per-actor batches on one embedder at once: decoding overlaps, the model does not."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    enc_id = load_encoder(model="showcase-tiny").encoder_id
    images = ImageEmbedder(str(tmp_path / "root"), {"model": "showcase-tiny", "device": "cpu"}, enc_id)
    inside, most, guard = [0], [0], threading.Lock()
    forward = images.encoder.encode_pixels

    def counted(pixels):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            threading.Event().wait(0.02)  # hold the model long enough for another call to try to enter it
            return forward(pixels)
        finally:
            with guard:
                inside[0] -= 1

    images.encoder.encode_pixels = counted
    rng = np.random.default_rng(0)
    batches = [{"id": np.array([f"p{b}-{i}" for i in range(4)], object), "uri": np.array(["u"] * 4, object),
                "pixels": rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8), "reason": np.array([""] * 4, object),
                "detail": np.array([""] * 4, object)} for b in range(6)]
    sequential = [images(b) for b in batches]
    with ThreadPoolExecutor(3) as pool:
        concurrent = list(pool.map(images, batches))
    assert most[0] == 1
    assert [list(c["path"]) for c in concurrent] == [list(s["path"]) for s in sequential]
    assert [forward(b["pixels"]).tobytes() for b in batches] == [
        np.stack(read_parquet_vectors(tmp_path / "root" / "embeddings" / enc_id / "images" / c["path"][0])).tobytes()
        for c in concurrent]


def read_parquet_vectors(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).column("embedding").to_numpy(zero_copy_only=False)


def frames_of(ids: list[str], size: int):
    """A source of Arrow tables of ``size`` rows (an id and a value per row), read again at every call."""
    return lambda: (pa.table({"id": pa.array(ids[i:i + size], pa.string()),
                              "value": [f"v{i + j}" for j in range(len(ids[i:i + size]))]})
                    for i in range(0, len(ids), size))


@settings(max_examples=80, deadline=None)
@given(candidates=st.lists(st.sampled_from([f"p{i}" for i in range(40)]), max_size=120),
       committed=st.lists(st.sampled_from([f"p{i}" for i in range(60)]), max_size=30, unique=True),
       buckets=st.integers(1, 6), frame_size=st.integers(1, 50))
def test_new_rows_are_each_uncommitted_id_once_with_its_first_row_in_any_number_of_buckets(candidates, committed,
                                                                                         buckets, frame_size):
    first = {}
    for i, c in enumerate(candidates):
        first.setdefault(c, f"v{i}")
    expected = {c: v for c, v in first.items() if c not in committed}
    frames = list(new_rows(frames_of(candidates, frame_size), frames_of(committed, 7), buckets, bucket_rows=10**6))
    rows = [(r["id"], r["value"]) for f in frames for r in f.to_pylist()]
    assert dict(rows) == expected and len(rows) == len(expected)  # nothing dropped, nothing twice
    if buckets == 1:
        assert [i for i, _ in rows] == [c for c in first if c in expected]  # in the sources' order


def test_a_bucket_over_its_limit_asks_for_more_buckets_and_duplicates_do_not_count():
    ids = [f"p{i}" for i in range(100)]
    with pytest.raises(BucketOverflow):
        list(new_rows(frames_of(ids, 10), frames_of([], 1), 1, bucket_rows=60))
    assert sum(len(f) for f in new_rows(frames_of(ids, 10), frames_of([], 1), 4, bucket_rows=60)) == 100
    repeated = ids[:50] * 6  # 300 rows, 50 distinct: within the limit once the duplicates are dropped
    assert sum(len(f) for f in new_rows(frames_of(repeated, 10), frames_of([], 1), 1, bucket_rows=60)) == 50
    with pytest.raises(BucketOverflow):  # committed ids count towards the limit too
        list(new_rows(frames_of(ids[:10], 10), frames_of(ids[10:], 10), 1, bucket_rows=60))


def test_a_short_todo_list_is_cut_finer_so_every_actor_gets_several_files():
    from showcase_core.encoders.embed import todo_file_rows

    assert todo_file_rows(120_000, 2, 2048) == 2048  # a long list: files of the setting's size
    assert todo_file_rows(12_000, 2, 2048) == 750  # 16 files: 8 for each of two actors
    assert todo_file_rows(2_532, 2, 2048) == 256  # never under a model batch of rows ...
    assert todo_file_rows(5_000, 2, 16) == 16  # ... unless the setting says fewer
    assert todo_file_rows(0, 2, 2048) == todo_file_rows(-5, 0, 2048) == 256


def test_a_kind_named_twice_and_an_encoder_that_is_a_file_are_one_line_errors(tmp_path):
    """``--kinds images,images`` ran the images twice, the second pass reporting 0 embedded over the first's counts;
    ``--encoder world.json`` (a file, not a checkpoint folder) was a NotADirectoryError's stack trace."""
    from jobs import embed
    from jobs.common import UserError
    from showcase_core.settings import SettingsError, parse

    with pytest.raises(SettingsError, match=r"^--kinds lists images twice \(got 'images,texts,images'\)$"):
        parse("embed", embed.Settings, ["--root", "/r", "--kinds", "images,texts,images"])
    assert parse("embed", embed.Settings, ["--root", "/r", "--kinds", "texts,images"]).kinds == "texts,images"
    world = tmp_path / "world.json"
    world.write_text("{}")
    with pytest.raises(UserError, match=f"^no CLIP checkpoint at {world} \\(expected a folder with config.json"):
        embed.identify_encoder({"checkpoint": str(world)})

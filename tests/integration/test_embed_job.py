"""jobs.embed on local Ray: resume, quarantine of bad photos, a killed actor (S3 in/out, through an S3 outage: in
test_faults.py)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pyarrow.fs as pafs
import pytest

from jobs import embed, ingest
from jobs.common import run
from showcase_core.encoders.clip import load_encoder
from showcase_core import tables as delta
from showcase_core.encoders.embed import read_embeddings
from showcase_core.store import Store
from tests import photo_files

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--clip-model", "showcase-tiny"]


@pytest.fixture(scope="module")
def encoder_id():
    return load_encoder(model="showcase-tiny").encoder_id


def ingested(tmp_path, world, images=None) -> str:
    root = str(tmp_path / "root")
    args = ["--root", root, "--gest", f"{world}/filter_all_t.json"] + (["--images", images] if images else [])
    assert run("ingest", ingest.main, args) == 0
    return root


def last_report(store: Store) -> dict:
    infos = sorted(store.fs.get_file_info(pafs.FileSelector(store.path("reports/embed"))), key=lambda i: i.path)
    return json.loads(store.fs.open_input_stream(infos[-1].path).read())


def test_embed_everything_then_a_rerun_does_nothing(ray_local, tiny_world, tmp_path, encoder_id):
    world, summary = tiny_world
    root = ingested(tmp_path, world)
    assert run("embed", embed.main, ["--root", root, *TINY, "--batch-size", "16"]) == 0
    store = Store.open(root)
    images = read_embeddings(store, encoder_id, "images")
    photo_ids = [t.column("image_id").to_pylist() for t in (store.read_table("images"), store.read_table("owner_photos"))]
    assert sorted(images.column("id").to_pylist()) == sorted(photo_ids[0] + photo_ids[1])  # reviews' and owners'
    assert len(photo_ids[1]) == summary["owner_photos"] > 0
    texts = read_embeddings(store, encoder_id, "texts").column("id").to_pylist()
    reviews = store.read_table("reviews").column("review_id").to_pylist()
    assert {f"review:{r}" for r in reviews} <= set(texts)
    assert sum(t.startswith("sentence:") for t in texts) == store.read_table("sentences").num_rows
    assert len(texts) == len(set(texts))
    report = last_report(store)
    photos = summary["photos"] + summary["owner_photos"]
    assert report["counts"]["this_run"]["images"]["embedded"] == photos
    assert report["counts"]["stored"]["images"]["duplicate_ids"] == 0

    assert run("embed", embed.main, ["--root", root, *TINY, "--plan-bucket-rows", "50"]) == 0  # in buckets
    again = last_report(store)["counts"]["this_run"]
    assert again["images"]["todo"] == 0 and again["texts"]["todo"] == 0
    assert again["images"]["already_done"] == photos
    assert read_embeddings(store, encoder_id, "images").num_rows == photos


def committed_version(store: Store, rel: str) -> int:
    return delta.open_table(store, rel).version() if delta.exists(store, rel) else -1


def test_a_killed_driver_resumes_from_its_commits_without_doubling(ray_local, tiny_world, tmp_path, encoder_id):
    world, summary = tiny_world
    photos = summary["photos"] + summary["owner_photos"]
    root = ingested(tmp_path, world)
    store, images = Store.open(root), f"embeddings/{encoder_id}/images"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.embed", "--root", root, *TINY, "--kinds", "images",
                             "--batch-size", "2", "--decode-batch-size", "2", "--commit-every-files", "1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and committed_version(store, images) < 2:
        time.sleep(0.05)
    proc.kill()
    out, _ = proc.communicate(timeout=60)
    committed = read_embeddings(store, encoder_id, "images").num_rows  # progress is visible while it runs
    assert 0 < committed < photos, f"killed too late ({committed} committed):\n" + out[-2000:]
    # planned in buckets of at most 16 ids (and again with more, where a bucket gets more than 16)
    assert run("embed", embed.main, ["--root", root, *TINY, "--kinds", "images", "--batch-size", "8",
                                     "--plan-bucket-rows", "16"]) == 0
    counts = last_report(store)["counts"]["this_run"]["images"]
    assert counts["already_done"] == committed and counts["todo"] == photos - committed
    ids = read_embeddings(store, encoder_id, "images").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == photos


def test_hostile_and_missing_photos_go_to_quarantine_and_other_formats_are_embedded(ray_local, tiny_world, tmp_path,
                                                                                   encoder_id):
    world, summary = tiny_world
    images = tmp_path / "images"
    shutil.copytree(f"{world}/images", images)
    root = ingested(tmp_path, world, str(images))
    names = sorted(os.listdir(images))  # each a photo of a review, replaced after ingest
    planted = {"not_an_image": photo_files.text_file(), "too_many_pixels": photo_files.png_bomb(),
               "truncated": photo_files.truncated_jpeg(), "undecodable": photo_files.corrupt_png(),
               "too_large": photo_files.cmyk_jpeg() + b"\0" * 300_000}  # valid, but over the byte limit below
    valid = [photo_files.cmyk_jpeg(), photo_files.grey16_png(), photo_files.webp(), photo_files.animated_gif(),
             photo_files.transparent_png()]
    for name, data in zip(names, [*planted.values(), *valid]):
        (images / name).write_bytes(data)
    (images / names[len(planted) + len(valid)]).unlink()
    assert run("embed", embed.main, ["--root", root, *TINY, "--kinds", "images", "--max-photo-bytes", "200000"]) == 0
    store = Store.open(root)
    report = last_report(store)
    assert report["counts"]["quarantined_by_reason"] == {**dict.fromkeys(planted, 1), "photo_missing": 1}
    assert report["counts"]["this_run"]["images"]["embedded"] == summary["photos"] + summary["owner_photos"] - 6
    embedded = set(read_embeddings(store, encoder_id, "images").column("id").to_pylist())
    ids = [name[:-4] for name in names]
    assert not embedded & set(ids[:len(planted)] + [ids[len(planted) + len(valid)]])
    assert set(ids[len(planted):len(planted) + len(valid)]) <= embedded
    quarantine = {r["id"]: r["reason"] for r in delta.read(store, f"embeddings/{encoder_id}/quarantine").to_pylist()}
    assert quarantine == {**dict(zip(ids, planted)), ids[len(planted) + len(valid)]: "photo_missing"}


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory, ray_local):
    from showcase_core.data.world import make_world

    base = tmp_path_factory.mktemp("mini")
    make_world(str(base / "world"), "mini", seed=2)
    root = str(base / "root")
    assert run("ingest", ingest.main, ["--root", root, "--gest", str(base / "world" / "filter_all_t.json")]) == 0
    return root


def test_a_killed_actor_loses_and_duplicates_nothing(mini_root, encoder_id):
    store = Store.open(mini_root)
    expected = {i for t in ("images", "owner_photos") for i in store.read_table(t).column("image_id").to_pylist()}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.embed", "--root", mini_root, *TINY, "--kinds", "images",
                             "--batch-size", "16", "--decode-batch-size", "16", "--todo-file-rows", "256",
                             "--commit-every-files", "2"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.monotonic() + 240
    parts_dir = f"embeddings/{encoder_id}/images"
    while proc.poll() is None and time.monotonic() < deadline and killed is None:
        if committed_version(store, parts_dir) >= 2:
            for p in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "ImageEmbedder" in cmd and p.info["pid"] != proc.pid:
                    os.kill(p.info["pid"], signal.SIGKILL)
                    killed = p.info["pid"]
                    break
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=300)
    assert killed is not None, "never saw a running ImageEmbedder actor to kill:\n" + out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    parts_done = len(delta.file_uris(store, parts_dir))
    ids = read_embeddings(store, encoder_id, "images").column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    assert set(ids) == expected, f"lost {len(expected - set(ids))} photos"
    assert parts_done > 5


def test_embed_without_a_trained_clip_exits_2(tiny_world, tmp_path, ray_local):
    world, _ = tiny_world
    root = ingested(tmp_path, world)
    out = subprocess.run([sys.executable, "-m", "jobs.embed", "--root", root], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "no trained CLIP" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_cpu_cluster_gets_an_actor_per_cpu_with_one_thread_and_never_more_actors_than_todo_files():
    """On CPUs, no more actors than one for each FILES_PER_ACTOR todo files."""
    def pool(files, resources=None, actors=2, cpus=2, **settings):
        cfg = embed.Settings(root="unused", **settings)
        plan = embed.Plan(None, cfg, "enc", 64, {}, actors, resources or {"num_cpus": 1}, 1, cpus, "", {})
        return plan.pool(files)

    assert pool(59) == (2, 1, 1)  # (actors, torch threads, decode threads)
    assert pool(1) == (1, 2, 2)  # one todo file: one actor, on both CPUs
    assert pool(8) == (1, 2, 2) and pool(9) == (2, 1, 1)  # a short list: an actor for each 8 files
    assert pool(0) == (1, 2, 2)  # nothing to do (no actor starts)
    assert pool(59, actors=4, cpus=16) == (4, 4, 4)  # --actors 4 on 16 CPUs: the CPUs shared out
    assert pool(59, threads_per_actor=3, decode_threads=2) == (2, 3, 2)  # what the settings say wins
    assert pool(59, {"num_gpus": 1}, actors=4) == (4, 0, 1)  # GPU actors: torch's threads, one decoding thread

"""jobs.train_clip through the shared Ray Train harness: resume after a crashed worker, checkpoints on S3."""

import json

import pyarrow.fs as pafs

from jobs import harness, ingest, train_clip
from jobs.common import run
from showcase_core import registry
from showcase_core.encoders.clip import load_encoder
from showcase_core.store import Store
from tests.conftest import world_on_s3


def report(store: Store, stage: str) -> dict:
    infos = store.fs.get_file_info(pafs.FileSelector(store.path(f"reports/{stage}")))
    return json.loads(store.fs.open_input_stream(sorted(i.path for i in infos)[-1]).read())


def test_a_crashed_worker_resumes_from_its_checkpoint_and_the_model_is_saved(ray_local, tiny_world, tmp_path,
                                                                            monkeypatch):
    world, _ = tiny_world
    monkeypatch.setenv(harness.FAULT_ENV, "1")
    root = str(tmp_path / "root")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"]) == 0
    args = ["--root", root, "--epochs", "4", "--batch-size", "32", "--eval-every", "2",
            "--cpus-per-worker", "1", "--run-name", "crash-test"]
    assert run("train_clip", train_clip.main, args) == 0
    store = Store.open(root)
    r = report(store, "train_clip")
    # the worker died right after epoch 1's checkpoint; the restarted group went on from a checkpoint, not from
    # scratch (Ray Train may not have registered epoch 1's checkpoint before the crash, so it resumes after 0 or 1)
    assert len(r["resumed_after_epochs"]) == 1 and r["resumed_after_epochs"][0] in (0, 1)
    assert [h["epoch"] for h in r["history"]] == [0, 1, 2, 3]
    assert r["history"][-1]["loss"] < r["history"][0]["loss"]
    assert 0 <= r["metrics"]["heldout_recall_at_1_exact"] <= 1 and r["metrics"]["heldout_photos"] > 0
    assert "heldout_recall_at_1_entity" in r["metrics"]
    latest = registry.latest(store, "clip")
    card = json.loads(open(f"{latest.uri}/card.json").read())
    assert card["data"]["tables"]["sentences"]["rows"] > 0 and card["metrics"] == r["metrics"] == latest.metrics
    assert latest.data_fingerprint == card["data"] and latest.version == r["run_id"]
    assert load_encoder(checkpoint=latest.uri).encoder_id == latest.encoder_id == card["encoder_id"]
    # checkpoints of the run live under ROOT/checkpoints/train_clip/<run name>
    assert store.exists("checkpoints/train_clip/crash-test")


def test_checkpoints_and_model_on_s3(ray_local, seaweed, tiny_world):
    world, _ = tiny_world
    root = world_on_s3(seaweed, world, "clip")
    bucket = root.split("/")[2]
    assert run("train_clip", train_clip.main, ["--root", root, "--epochs", "2", "--cpus-per-worker", "1"]) == 0
    store = Store.open(root)
    latest = registry.latest(store, "clip")
    assert latest.uri.startswith(f"s3://{bucket}/root/models/clip/")
    assert load_encoder(checkpoint=latest.uri).encoder_id == latest.encoder_id
    runs = store.fs.get_file_info(pafs.FileSelector(store.path("checkpoints/train_clip")))
    assert runs and all(r.type == pafs.FileType.Directory for r in runs)


def test_bad_training_settings_exit_2(tiny_world, tmp_path, ray_local):
    world, _ = tiny_world
    root = str(tmp_path / "root")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"]) == 0
    assert run("train_clip", train_clip.main, ["--root", root, "--clip-model", "ViT-Nope"]) == 2
    assert run("train_clip", train_clip.main, ["--root", root, "--deepspeed-config", "/nope.json"]) == 2
    assert run("train_clip", train_clip.main, ["--root", str(tmp_path / "empty")]) == 2

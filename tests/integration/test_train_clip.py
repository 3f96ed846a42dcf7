"""jobs.train_clip through the shared Ray Train harness: resume after a crashed worker, with the checkpoints and the
model on S3."""

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from jobs import harness, ingest, train_clip
from jobs.common import run
from showcase_core import registry
from showcase_core.buckets import sample_of_ids
from showcase_core.encoders.clip import load_encoder
from showcase_core.encoders.training import HELD_OUT, clip_pairs, held_out_pairs, sharded_clip_pairs
from showcase_core.store import Store, filesystem_for, read_text
from tests.conftest import stage_reports, world_on_s3


def report(store: Store, stage: str) -> dict:
    return stage_reports(store, stage)[-1]


def test_a_crashed_worker_resumes_from_its_checkpoint_on_s3_and_the_model_is_saved(ray_local, seaweed, tiny_world,
                                                                                  monkeypatch):
    """ROOT (tables, checkpoints, model) on the SeaweedFS S3 server; the worker dies after epoch 1's checkpoint."""
    world, _ = tiny_world
    root = world_on_s3(seaweed, world, "clip")
    bucket = root.split("/")[2]
    monkeypatch.setenv(harness.FAULT_ENV, "1")
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
    assert latest.uri.startswith(f"s3://{bucket}/root/models/clip/")
    card = json.loads(read_text(*filesystem_for(f"{latest.uri}/card.json")))
    assert card["data"]["tables"]["sentences"]["rows"] > 0 and card["metrics"] == r["metrics"] == latest.metrics
    assert latest.data_fingerprint == card["data"] and latest.version == r["run_id"]
    assert load_encoder(checkpoint=latest.uri).encoder_id == latest.encoder_id == card["encoder_id"]
    # checkpoints of the run live under ROOT/checkpoints/train_clip/<run name>, on S3
    runs = store.fs.get_file_info(pafs.FileSelector(store.path("checkpoints/train_clip")))
    assert [r.base_name for r in runs] == ["crash-test"] and runs[0].type == pafs.FileType.Directory


def test_bad_training_settings_exit_2(tiny_world, tmp_path, ray_local):
    world, _ = tiny_world
    root = str(tmp_path / "root")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"]) == 0
    assert run("train_clip", train_clip.main, ["--root", root, "--clip-model", "ViT-Nope"]) == 2
    assert run("train_clip", train_clip.main, ["--root", root, "--deepspeed-config", "/nope.json"]) == 2
    assert run("train_clip", train_clip.main, ["--root", str(tmp_path / "empty")]) == 2


def test_each_rank_streams_its_share_of_the_pairs(tiny_world, tmp_path, ray_local):
    """A worker's pairs come from the tables streamed a batch at a time: the ranks' shares are disjoint, differ in
    size by at most one and together are the pairs of the tables read whole; one rank of one has them all. The
    held-out pairs are those of a sample of photos."""
    world, _ = tiny_world
    root = str(tmp_path / "root")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"]) == 0
    store = Store.open(root)
    sentences, images = store.read_table("sentences"), store.read_table("images")
    columns = ["image_id", "uri", "sentence_id", "text", "entities"]
    for splits in (("train",), ("val", "test")):
        whole = clip_pairs(sentences, images, splits).select(columns).to_pylist()
        assert len(whole) > 10
        assert sharded_clip_pairs(store, splits, batch_size=7).select(columns).to_pylist() == whole
        shares = [sharded_clip_pairs(store, splits, rank, 3, batch_size=7).select(columns).to_pylist()
                  for rank in range(3)]
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        key = lambda r: (r["sentence_id"], r["image_id"])  # noqa: E731
        assert sorted((r for share in shares for r in share), key=key) == whole
    # the held-out Recall@1's pairs: those of a sample of the photos held-out sentences describe (all with 0)
    whole = clip_pairs(sentences, images, HELD_OUT).select(columns).to_pylist()
    described = sentences.filter(pc.is_in(sentences.column("split"), value_set=pa.array(HELD_OUT)))
    sample = set(sample_of_ids([pc.list_flatten(described.column("pic_ids"))], 5)[0].to_pylist())
    assert len(sample) == 5 and len({r["image_id"] for r in whole}) > 5
    assert held_out_pairs(store, 5).select(columns).to_pylist() == [r for r in whole if r["image_id"] in sample]
    assert held_out_pairs(store, 0).select(columns).to_pylist() == whole == \
        held_out_pairs(store, 10**6).select(columns).to_pylist()

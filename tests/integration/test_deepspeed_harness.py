"""The harness's DeepSpeed path (ZeRO-1, fp32, gloo on CPU) through jobs.train_clip: two ranks, a worker killed after
an epoch, the run resumed from the DeepSpeed checkpoint, and the consolidated model saved.

DeepSpeed is an optional dependency (the ``[gpu]`` extra); ``make test`` installs it, so a missing DeepSpeed fails
here rather than skipping.
"""

import json
import os

import pyarrow.fs as pafs

from jobs import harness, ingest, train_clip
from jobs.common import run
from showcase_core import registry
from showcase_core.encoders.clip import load_encoder
from showcase_core.store import Store
from tests.conftest import stage_reports

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "cluster", "deepspeed", "cpu_zero1.json")


def report(store: Store, stage: str) -> dict:
    return stage_reports(store, stage)[-1]


def test_deepspeed_is_installed():
    import deepspeed  # the [gpu] extra: pip install -c constraints-cpu.txt --no-build-isolation -e '.[gpu]'

    assert tuple(int(x) for x in deepspeed.__version__.split(".")[:2]) >= (0, 19)
    # 0.19.8's engine broadcasts parameters as p.data.view(torch.uint8), which fails on 0-dim ones (CLIP's logit_scale)
    assert deepspeed.__version__ != "0.19.8", "DeepSpeed 0.19.8 cannot initialise CLIP: install 0.19.7"


def test_zero1_on_two_cpu_ranks_resumes_from_its_deepspeed_checkpoint(ray_local, tiny_world, tmp_path, monkeypatch):
    world, _ = tiny_world
    monkeypatch.setenv(harness.FAULT_ENV, "1")
    root = str(tmp_path / "root")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"]) == 0
    args = ["--root", root, "--epochs", "3", "--batch-size", "32", "--eval-every", "3",
            "--deepspeed-config", CONFIG, "--num-workers", "2", "--cpus-per-worker", "1",
            "--max-failures", "1", "--run-name", "ds-crash-test"]
    assert run("train_clip", train_clip.main, args) == 0
    store = Store.open(root)
    r = report(store, "train_clip")
    # rank 0 died right after epoch 1's checkpoint; the restarted group loaded a DeepSpeed checkpoint (after epoch 0
    # or 1, depending on whether Ray Train registered epoch 1's before the crash) instead of starting over
    assert len(r["resumed_after_epochs"]) == 1 and r["resumed_after_epochs"][0] in (0, 1)
    assert [h["epoch"] for h in r["history"]] == [0, 1, 2]
    assert all(h["pairs"] > 0 for h in r["history"])  # each rank trains on its half of the pairs
    assert 0 <= r["metrics"]["heldout_recall_at_1_exact"] <= 1 and r["metrics"]["heldout_photos"] > 0
    # the checkpoints are DeepSpeed's: the model states of rank 0 and one ZeRO optimizer shard per rank
    run_dir = store.path("checkpoints/train_clip/ds-crash-test")
    files = [os.path.basename(i.path) for i in store.fs.get_file_info(pafs.FileSelector(run_dir, recursive=True))
             if i.type == pafs.FileType.File]
    assert "mp_rank_00_model_states.pt" in files
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(files)
    assert not any(f == "state.pt" for f in files)
    # the final model: ZeRO shards consolidated into one state dict, saved, and loadable as an encoder
    latest = registry.latest(store, "clip")
    with open(f"{latest.uri}/card.json") as f:
        card = json.load(f)
    assert card["training"]["deepspeed_config"] == CONFIG and card["metrics"] == r["metrics"]
    assert load_encoder(checkpoint=latest.uri).encoder_id == latest.encoder_id == card["encoder_id"]


def test_deepspeed_configs_the_loops_cannot_drive_exit_2(tmp_path):
    stage3 = tmp_path / "zero3.json"
    stage3.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 3}}))
    assert run("train_clip", train_clip.main, ["--root", str(tmp_path), "--deepspeed-config", str(stage3)]) == 2
    gpu = os.path.join(os.path.dirname(CONFIG), "gpu_zero2_bf16.json")
    harness.check_deepspeed_config(gpu)  # valid as it stands

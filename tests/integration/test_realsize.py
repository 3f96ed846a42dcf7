"""The real architectures through the user's configuration path (tests/perf/realsize.py, on the tiny world): a
ViT-B-32 weights file through ``embed --clip-pretrained``, a GPT-2 small directory through ``train_pc2l
--gpt2-path`` (two steps), and the nightly with the PC²L that came out."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.compute as pc

from showcase_core.showcase import read_showcases
from showcase_core.store import Store

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_vit_b_32_and_gpt2_small_run_through_embed_train_pc2l_and_the_nightly(tmp_path):
    work, figures_path = tmp_path / "work", tmp_path / "figures.json"
    ran = subprocess.run([sys.executable, "tests/perf/realsize.py", "--work", str(work), "--pairs", "20",
                          "--json", str(figures_path)], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    figures = json.loads(figures_path.read_text())

    embed = figures["embed"]
    assert embed["encoder_id"].startswith("ViT-B-32.vit-b-32-random.pt-")  # the file's weights, fingerprinted
    assert embed["photos"] == figures["world"]["photos"] + figures["world"]["owner_photos"] and embed["photos_per_s"] > 0
    store = Store.open(str(work / "root"))
    images = store.read_table(f"embeddings/{embed['encoder_id']}/images")
    assert images.num_rows == embed["photos"] and len(images.column("embedding")[0].as_py()) == 512  # ViT-B-32's

    train = figures["train_pc2l"]
    assert train["steps"] == 2 and train["step_s"] > 0
    assert train["decoder"] == {"d_model": 768, "gpt2_path": str(work / "gpt2-small")}
    assert 150e6 < train["parameters"] < 200e6  # GPT-2 small, its new cross-attention, the MMA and the heads

    nightly = figures["nightly"]
    assert nightly["showcases"] == nightly["pairs"] >= 10 and nightly["pairs_per_s"] > 0  # the world's test pairs
    published = read_showcases(str(work / "root"), "2026-01-01")
    assert published.num_rows == nightly["pairs"]
    assert pc.min(pc.utf8_length(published.column("explanation"))).as_py() > 0  # every pair got an explanation
    for name in ("embed", "train_pc2l", "nightly"):
        assert figures[name]["driver_peak_mib"] > 0

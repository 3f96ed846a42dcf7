"""tests/perf/gpu.py --dry-run, as the lent GPU machine would run it (tests/lent_machine.py): the carry folder that
``--build-carry`` makes holds the only open_clip, ftfy and wcwidth the script may import, and Ray, deltalake,
DeepSpeed, pydantic, spaCy and polars (absent there) cannot be imported at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.lent_machine import REPO, run_as_lent_machine


def test_gpu_script_dry_run_works_from_the_carry_folder(tmp_path):
    carry = tmp_path / "carry"
    built = subprocess.run([sys.executable, "tests/perf/gpu.py", "--build-carry", str(carry)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr[-3000:]
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file())
    assert size < 64 * 2**20, f"the carry folder is {size / 2**20:.1f} MiB, over the device tool's 64 MiB"
    assert {"open_clip", "ftfy", "wcwidth"} <= {p.name for p in carry.iterdir()}

    ran = run_as_lent_machine(carry, {"open_clip", "ftfy", "wcwidth"}, "tests/perf/gpu.py", ["--dry-run"])
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-4000:]
    lines = [line for line in ran.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, ran.stdout  # one JSON line and nothing else on stdout
    figures = json.loads(lines[0])
    assert figures["dry_run"] is True and figures["precision"] == "fp32"
    for key in ("clip_model_only_photos_per_s", "clip_end_to_end_photos_per_s", "pc2l_beam2_pairs_per_s",
                "pc2l_train_step_s"):
        assert isinstance(figures[key], float) and figures[key] > 0, (key, figures)
    assert figures["clip_gpu_decode_photos_per_s"] is None and figures["clip_gpu_decode_error"]
    assert 150 < figures["pc2l_params_m"] < 200, figures  # GPT-2 small (124 M) + cross-attention + MMA + heads
    assert figures["jpeg_kib"] > 20  # real 640 x 480 JPEGs, not empty files


def test_gpu_script_without_a_gpu_and_without_dry_run_exits_2():
    ran = subprocess.run([sys.executable, "tests/perf/gpu.py"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert ran.returncode == 2, ran.stderr[-2000:]
    assert ran.stderr.strip().splitlines()[-1].startswith("gpu.py: no CUDA device here")

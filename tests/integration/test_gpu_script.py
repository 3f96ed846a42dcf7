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


def test_gpu_ablation_script_says_in_one_line_what_a_root_or_folder_lacks(tmp_path):
    """--prepare on a ROOT without the trained models names the missing one and writes no folder; --score on a
    folder no --bundle run wrote names the file it needs. One line each, no traceback."""
    empty, folder = tmp_path / "root", tmp_path / "ablation"
    empty.mkdir()
    for args, says in ((["--prepare", str(folder)], f"no trained pc2l model under {empty}/models/pc2l"),
                       (["--score", str(folder)], f"no {folder}/generations.json: --score reads the folder")):
        ran = subprocess.run([sys.executable, "tests/perf/gpu_ablation.py", *args, "--root", str(empty)], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr[-2000:]
        assert ran.stderr.strip().splitlines()[-1].startswith(f"gpu_ablation.py: {says}"), ran.stderr
    assert not folder.exists()

"""A readable run (issue 17): two training jobs against one ``ray start --head`` cluster on 127.0.0.1 leave no actor
of theirs alive, even the one whose driver is killed mid-training, and print no line more than 5 times.

Ray Train starts a detached PlacementGroupCleaner per training run. It asks the State API every second whether the
run's controller lives: without a reachable State API it warned at every ask (1,599 lines in one ``make demo``), and
with several Ray instances on the machine (pytest's own, this head) it could not tell which cluster to ask and stopped
watching, so a run whose driver died left it alive for good.
"""

import collections
import json
import os
import re
import subprocess
import sys
import time

from tests.conftest import copy_root
from tests.integration.test_cluster import REPO, head_node  # noqa: F401  (the fixture: `ray start --head`)

EPOCH_LINE = re.compile(r"\] epoch \d+/\d+ ")
WORKER_PREFIX = re.compile(r"^(\x1b\[\d+m)?\([^)]*pid=\d+[^)]*\)(\x1b\[0m)? ")

# every ALIVE actor of the cluster but the cluster-wide services, named and detached, that the first job creates
# (get_if_exists) and every later job uses: the AutoscalingCoordinator Ray Train and Ray Data share, and Ray Data's
# stats actor (train_dpp builds its examples with Ray Data)
ALIVE = r"""
import json, sys, time
from ray.util.state import list_actors
address, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while True:
    alive = [{k: a[k] for k in ("class_name", "name", "is_detached", "job_id")}
             for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
             if a["name"] not in ("AutoscalingCoordinator", "datasets_stats_actor")]
    if not alive or time.monotonic() > deadline:
        break
    time.sleep(1)
print(json.dumps(alive))
"""


def _train_dpp(root: str, encoder_id: str, out_path: str, env: dict, *extra: str) -> subprocess.Popen:
    with open(out_path, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.train_dpp", "--root", root, "--encoder", encoder_id, "--modalities", "img",
             "--cpus-per-worker", "1", *extra], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_two_training_jobs_leave_no_actor_alive_and_no_repeated_lines(head_node, tiny_embedded,  # noqa: F811
                                                                      tmp_path_factory, tmp_path):
    template, encoder_id = tiny_embedded
    root = copy_root(template, tmp_path_factory, "run-logs")
    with open(os.path.join(head_node.temp_dir, "ray_current_cluster")) as f:  # written by `ray start`
        gcs = f.read().strip()
    # RAY_DEDUP_LOGS=0: repeated worker lines are printed as they come (not folded into "[repeated Nx]")
    env = {**head_node.env, "RAY_ADDRESS": gcs, "RAY_DEDUP_LOGS": "0", "SHOWCASE_LOG_DIR": str(tmp_path / "logs")}
    outputs = {name: str(tmp_path / f"{name}.out") for name in ("finished", "killed")}
    started = time.monotonic()
    finished = _train_dpp(root, encoder_id, outputs["finished"], env, "--epochs", "12")
    killed = _train_dpp(root, encoder_id, outputs["killed"], env, "--epochs", "100000", "--eval-every", "100000",
                        "--checkpoint-every", "100000")
    try:
        deadline = time.monotonic() + 300
        while killed.poll() is None and "epoch 1/" not in open(outputs["killed"]).read():
            assert time.monotonic() < deadline, open(outputs["killed"]).read()[-3000:]
            time.sleep(0.5)
        killed.kill()  # a driver that dies mid-training: its controller goes with it, its cleaner must notice
        assert finished.wait(timeout=max(10.0, deadline - time.monotonic())) == 0, open(outputs["finished"]).read()
    finally:
        for proc in (finished, killed):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    jobs_s = time.monotonic() - started

    probe = subprocess.run([sys.executable, "-c", ALIVE, head_node.address, "60"], env=head_node.env,
                           capture_output=True, text=True, timeout=150)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == [], f"left alive after the jobs: {probe.stdout}"

    finished_text = open(outputs["finished"]).read()
    assert "val F1@3" in finished_text and "models: " in finished_text, finished_text
    for name, path in outputs.items():
        lines = [WORKER_PREFIX.sub("", line).rstrip() for line in open(path).read().splitlines()]
        text = "\n".join(lines)
        assert "Failed to query Ray Train Controller actor state" not in text, text[-3000:]
        assert "Exception in thread" not in text, text[-3000:]
        counts = collections.Counter(line for line in lines if line and not EPOCH_LINE.search(line))
        repeated = {line: n for line, n in counts.items() if n > 5}
        assert not repeated, f"{name}: lines repeated more than 5 times: {repeated}"
    # one finished 12-epoch run: epochs 1, 10 and 12 (log_every 10), the model line, the paths; little else
    epoch_lines = [line for line in finished_text.splitlines() if EPOCH_LINE.search(line)]
    assert len(epoch_lines) == 3, finished_text
    assert len(finished_text.splitlines()) <= 15, finished_text
    print(f"two jobs: {jobs_s:.0f} s; actors gone {time.monotonic() - started - jobs_s:.0f} s later")

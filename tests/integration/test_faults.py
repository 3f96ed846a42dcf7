"""Faults in the batch jobs: the S3 server (SeaweedFS) stopped for ~10 s and restarted on the same ports in the middle
of embed and of the nightly (the jobs retry with bounded backoff and finish: nothing lost, nothing doubled), and the
nightly on a three-node cluster that loses a worker node while its writers are killed at random times (every pair
exactly once). An unreachable S3 at start is exit 2 in one line (tests/integration/test_nightly.py)."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from showcase_core import read_showcases
from showcase_core import tables as delta
from showcase_core.encoders.clip import load_encoder
from showcase_core.encoders.embed import read_embeddings
from showcase_core.store import Store
from tests.conftest import copy_root, world_on_s3
from tests.integration.test_embed_job import committed_version
from tests.integration.test_nightly import (candidate_pairs, good_keys, keys_of, write_candidates,
                                            write_remote_candidates)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUTAGE_S = 10


def with_an_outage(seaweed, proc: subprocess.Popen, started, timeout: float = 300) -> tuple[str, dict]:
    """Once ``started()`` holds, stop the S3 server for OUTAGE_S and start it again on the same ports; then wait for
    the job. Returns its output and what happened when."""
    events, t0 = {}, time.monotonic()
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)
    reader.start()  # the job's output never fills its pipe while it waits on S3
    deadline = t0 + timeout
    while proc.poll() is None and time.monotonic() < deadline and not started():
        time.sleep(0.1)
    assert proc.poll() is None, "the job ended before the outage:\n" + "".join(output)[-3000:]
    events["stopped_at_s"] = round(time.monotonic() - t0, 1)
    seaweed.stop(grace_s=1)
    time.sleep(OUTAGE_S)
    seaweed.restart()
    events["back_at_s"] = round(time.monotonic() - t0, 1)
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    reader.join(10)
    events["job_done_at_s"] = round(time.monotonic() - t0, 1)
    return "".join(output), events


def test_an_s3_outage_mid_embed_is_retried_and_loses_or_doubles_nothing(ray_local, seaweed, tiny_world):
    world, summary = tiny_world
    root = world_on_s3(seaweed, world, "outage-emb")
    store, encoder_id = Store.open(root), load_encoder(model="showcase-tiny").encoder_id
    images = f"embeddings/{encoder_id}/images"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.embed", "--root", root, "--clip-model", "showcase-tiny",
                             "--batch-size", "8", "--decode-batch-size", "8", "--commit-every-files", "1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, events = with_an_outage(seaweed, proc, lambda: committed_version(store, images) >= 1)
    assert proc.returncode == 0, f"{events}\n" + out[-3000:]
    ids = read_embeddings(store, encoder_id, "images").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == summary["photos"] + summary["owner_photos"], events
    bucket = root.split("/")[2]  # photos read from S3, embeddings written there
    assert delta.file_uris(store, images)[0].startswith(f"s3://{bucket}/root/embeddings/")
    texts = read_embeddings(store, encoder_id, "texts").column("id").to_pylist()
    assert len(texts) == len(set(texts)) and {f"review:{r}" for r in store.read_table("reviews").column(
        "review_id").to_pylist()} <= set(texts)
    print("embed outage:", json.dumps(events))


def test_an_s3_outage_mid_nightly_is_retried_and_loses_or_doubles_nothing(seaweed, s3_trained_root):
    from jobs.nightly import list_run_parts

    root, date = s3_trained_root, "2026-11-27"
    store = Store.open(root)
    pairs, _, _ = candidate_pairs(root, cross=4)
    candidates = write_remote_candidates(store, pairs)
    proc = subprocess.Popen([sys.executable, "-m", "jobs.nightly", "--root", root, "--candidates", candidates,
                             "--date", date, "--run-id", "outage", "--pairs-per-part", "8", "--batch-size", "4"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, events = with_an_outage(seaweed, proc, lambda: len(list_run_parts(store, date, "outage")) >= 2)
    assert proc.returncode == 0, f"{events}\n" + out[-3000:]
    keys = keys_of(read_showcases(root, date=date))
    assert len(keys) == len(set(keys)) and set(keys) == good_keys(pairs), events
    print("nightly outage:", json.dumps(events))


def test_a_lost_node_and_randomly_killed_writers_still_yield_every_pair_once(trained_root, tmp_path,
                                                                            tmp_path_factory):
    trained_root = copy_root(trained_root, tmp_path_factory, "chaos")  # test_nightly reads the newest date of its own
    pairs, _, _ = candidate_pairs(trained_root, cross=4)
    candidates = write_candidates(tmp_path / "candidates.parquet", pairs)
    date = "2026-11-28"
    log = tmp_path / "nightly.log"
    proc = subprocess.run([sys.executable, "tests/nightly_chaos.py", trained_root, candidates, date, "chaos",
                           "--kills", "2", "--seed", "3", "--log", str(log)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["returncode"] == 0, json.dumps(result["events"]) + "\n" + result["output_tail"]
    told = json.dumps(result["events"]) + f" (job done at {result['wall_s']} s)\n" + result["output_tail"][-1500:]
    assert result["events"][0]["event"] == "node_removed" and result["events"][0]["writers_on_it"] >= 1, told
    # at least one more writer killed at a random time: a second often finds none alive before this small job ends
    assert [e["event"] for e in result["events"][1:]][:1] == ["writer_killed"], told
    keys = keys_of(read_showcases(trained_root, date=date))
    assert len(keys) == len(set(keys)) and set(keys) == good_keys(pairs), result["events"]
    # a pass that failed with the node (an actor of the pass Ray does not restart) ran again, and the report says so
    reruns = log.read_text().count("the pass lost a node or an actor")
    report = json.loads((Path(trained_root) / "reports" / "nightly" / "chaos.json").read_text())
    assert report["counts"]["passes_rerun"] == reruns, told
    print("chaos:", json.dumps(result["events"]), f"{result['wall_s']} s; passes run again: {reruns}")

"""jobs.nightly on local Ray: publish + read_showcases (and Polars / deltalake with no project code), quarantine and
cold start, rerun no-op and --force, a killed worker, a killed driver resumed with its run id, a killed driver never
resumed (invisible, then vacuumed), two nightlies racing on one date, ROOT on SeaweedFS S3, and the fail-fast checks."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import nightly, vacuum
from jobs.common import run
from showcase_core import read_showcases
from showcase_core.data.schema import SHOWCASES
from showcase_core import tables as delta
from showcase_core.showcase import publication, published_dates
from showcase_core.store import Store
from tests.conftest import copy_root  # the fixtures trained_root and s3_trained_root are in conftest too

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
def write_remote_candidates(store: Store, pairs) -> str:
    """Candidates next to ROOT (local or S3)."""
    import io
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(pairs, schema=pa.schema([("user_id", pa.string()), ("business_id", pa.string()),
                                                                 ("score", pa.float64())])), buf)
    from showcase_core.store import write_bytes_atomic
    write_bytes_atomic(store.fs, store.path("in", "candidates.parquet"), buf.getvalue())
    return store.uri("in", "candidates.parquet")


def mtime(store: Store, path: str):
    return store.fs.get_file_info(path).mtime_ns


def candidate_pairs(root: str, cross: int = 0) -> tuple[list[dict], list[tuple], dict]:
    """Every reviewed pair (+ `cross` users x other businesses), and the planted bad rows with their reasons."""
    reviews = Store.open(root).read_table("reviews", ["user_id", "business_id", "history"]).to_pylist()
    pairs = [{"user_id": r["user_id"], "business_id": r["business_id"], "score": 0.5} for r in reviews]
    users = sorted({r["user_id"] for r in reviews})
    businesses = sorted({r["business_id"] for r in reviews})
    reviewed = {(r["user_id"], r["business_id"]) for r in reviews}
    for u in users[:cross]:
        pairs += [{"user_id": u, "business_id": b, "score": None} for b in businesses if (u, b) not in reviewed]
    counts: dict = {}
    for r in reviews:
        counts[r["user_id"]] = counts.get(r["user_id"], 0) + 1
    cold = [(r["user_id"], r["business_id"]) for r in reviews if counts[r["user_id"]] == 1 and not r["history"]]
    bad = {"unknown_user": {"user_id": "u-nobody", "business_id": businesses[0], "score": 1.0},
           "unknown_business": {"user_id": users[0], "business_id": "b-nowhere", "score": 1.0},
           "missing_field": {"user_id": "", "business_id": businesses[0], "score": 1.0},
           "duplicate_pair": dict(pairs[0])}
    return pairs + list(bad.values()), cold, {k: 1 for k in bad}


def write_candidates(path, pairs) -> str:
    pq.write_table(pa.Table.from_pylist(pairs, schema=pa.schema([("user_id", pa.string()),
                                                                 ("business_id", pa.string()),
                                                                 ("score", pa.float64())])), str(path))
    return str(path)


def keys_of(table) -> list[tuple]:
    return list(zip(table.column("user_id").to_pylist(), table.column("business_id").to_pylist()))


def good_keys(pairs) -> set[tuple]:
    return {(p["user_id"], p["business_id"]) for p in pairs if p["user_id"] and p["user_id"] != "u-nobody"
            and p["business_id"] != "b-nowhere"}


def read_elsewhere(root: str, date: str) -> tuple[list, list]:
    """The date's (user, business) keys as Polars and deltalake read them: no project code in the read path."""
    import polars as pl
    from deltalake import DeltaTable

    store = Store.open(root)
    options = None
    if root.startswith("s3://"):  # what a user of another engine passes: the endpoint and credentials, nothing of ours
        options = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                              "AWS_REGION")}
        options["AWS_ALLOW_HTTP"] = "true"
    if not delta.exists(store, "showcases"):
        return [], []
    by_polars = pl.read_delta(store.uri("showcases"), storage_options=options).filter(pl.col("dt") == date)
    by_delta = DeltaTable(store.uri("showcases"), storage_options=options).to_pyarrow_table(
        filters=[("dt", "=", date)])
    return sorted(zip(by_polars["user_id"].to_list(), by_polars["business_id"].to_list())), sorted(keys_of(by_delta))


def test_nightly_publishes_quarantines_and_reruns(trained_root, tmp_path):
    pairs, cold, bad = candidate_pairs(trained_root, cross=2)
    candidates = write_candidates(tmp_path / "candidates.parquet", pairs)
    args = ["--root", trained_root, "--candidates", candidates, "--date", "2026-11-21", "--pairs-per-part", "16"]
    assert run("nightly", nightly.main, args) == 0
    store = Store.open(trained_root)
    published = publication(store, "2026-11-21")
    table = read_showcases(trained_root)
    assert table.schema.equals(SHOWCASES)
    keys = keys_of(table)
    assert len(keys) == len(set(keys)) and set(keys) == good_keys(pairs)
    assert read_elsewhere(trained_root, "2026-11-21") == (sorted(keys), sorted(keys))
    rows = table.to_pylist()
    for row in rows:
        assert 1 <= len(row["image_ids"]) <= 3 and len(row["image_uris"]) == len(row["image_scores"]) == \
            len(row["image_ids"])
        assert all(os.path.exists(u) for u in row["image_uris"])
        assert row["run_id"] == published["run_id"] and row["generator_model"] and row["dpp_model"]
        assert row["explanation"] is not None and not row["images_only"] and row["dt"] == "2026-11-21"
    by_key = {(r["user_id"], r["business_id"]): r for r in rows}
    assert cold and all(by_key[c]["cold_start"] for c in cold)
    assert sum(r["cold_start"] for r in rows) == len(cold)
    assert {r["candidate_score"] for r in rows} == {0.5, None}
    report = store.read_json(f"reports/nightly/{published['run_id']}.json")
    assert report["counts"]["quarantined_by_reason"] == bad
    assert report["counts"]["cold_start"] == len(cold)
    # where the writers' time went, every phase measured (generation and the DPP ran for every unit)
    assert set(report["writer_seconds"]) == {"inputs", "dpp", "generation", "write"}
    assert report["writer_seconds"]["generation"] > 0 and all(s >= 0 for s in report["writer_seconds"].values())
    quarantine = delta.read(store, "showcases_quarantine", filters=[("dt", "=", "2026-11-21")]).to_pylist()
    assert sorted(q["reason"] for q in quarantine) == sorted(bad)
    # every commit names its run and the table versions it read
    lineage = delta.open_table(store, "showcases").history(1)[0]
    assert lineage["showcase.run_id"] == published["run_id"] and "reviews" in lineage["showcase.reads"]

    # a rerun of a published date does nothing; --force replaces exactly that date
    version = delta.open_table(store, "showcases").version()
    assert run("nightly", nightly.main, args) == 0
    assert delta.open_table(store, "showcases").version() == version
    assert run("nightly", nightly.main, [*args[:4], "--date", "2026-11-01"]) == 0  # an older date, later
    assert run("nightly", nightly.main, args + ["--force", "true"]) == 0
    after = publication(store, "2026-11-21")
    assert after["run_id"] != published["run_id"] and after["generation"] == 2
    replaced = read_showcases(trained_root, date="2026-11-21")
    assert sorted(keys_of(replaced)) == sorted(keys) and set(replaced.column("run_id").to_pylist()) == {after["run_id"]}
    assert len(delta.read(store, "showcases_quarantine", filters=[("dt", "=", "2026-11-21")])) == len(bad)
    # the older date published later does not become the newest, and --force left it alone
    assert published_dates(store) == ["2026-11-01", "2026-11-21"]
    assert read_showcases(trained_root).column("dt")[0].as_py() == "2026-11-21"
    assert read_showcases(trained_root, date="2026-11-01").num_rows == len(keys)


def test_images_only_showcases_need_no_generator(trained_root, tmp_path):
    pairs, _, _ = candidate_pairs(trained_root)
    candidates = write_candidates(tmp_path / "candidates.parquet", pairs)
    assert run("nightly", nightly.main, ["--root", trained_root, "--candidates", candidates, "--date", "2026-10-01",
                                         "--generator", "none"]) == 0
    rows = read_showcases(trained_root, date="2026-10-01").to_pylist()
    assert {(r["user_id"], r["business_id"]) for r in rows} == good_keys(pairs)
    assert all(r["images_only"] and r["explanation"] is None and r["generator_model"] is None and r["image_ids"]
               for r in rows)


def _wait_for_parts(store, date, run_id, n, proc, deadline):
    while proc.poll() is None and time.monotonic() < deadline:
        if len(nightly.list_run_parts(store, date, run_id)) >= n:
            return True
        time.sleep(0.2)
    return False


def _settled_parts(store, date, run_id, quiet_s: float = 3.0, deadline_s: float = 90.0) -> dict:
    """The run's parts once no new one has appeared for ``quiet_s``: a killed driver's wave task (a Ray task it owns)
    may finish the part it is writing before Ray notices the owner is gone and stops it."""
    parts, quiet_since, deadline = nightly.list_run_parts(store, date, run_id), time.monotonic(), \
        time.monotonic() + deadline_s
    while time.monotonic() - quiet_since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.5)
        now = nightly.list_run_parts(store, date, run_id)
        if now != parts:
            parts, quiet_since = now, time.monotonic()
    return parts


def test_a_killed_worker_still_yields_every_pair_once(s3_trained_root):
    """On S3 (local ROOT: writers killed at random times, and a lost node, in test_faults.py)."""
    trained_root = s3_trained_root
    store = Store.open(trained_root)
    pairs, _, _ = candidate_pairs(trained_root, cross=4)
    candidates = write_remote_candidates(store, pairs)
    proc = subprocess.Popen([sys.executable, "-m", "jobs.nightly", "--root", trained_root, "--candidates", candidates,
                             "--date", "2026-11-22", "--run-id", "kill-worker", "--pairs-per-part", "8",
                             "--batch-size", "4"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    if _wait_for_parts(store, "2026-11-22", "kill-worker", 2, proc, time.monotonic() + 240):
        for p in psutil.process_iter(["pid", "cmdline"]):
            if "ShowcaseWriter" in " ".join(p.info["cmdline"] or []) and p.info["pid"] != proc.pid:
                os.kill(p.info["pid"], signal.SIGKILL)
                killed = p.info["pid"]
                break
    out, _ = proc.communicate(timeout=300)
    assert killed is not None, "never saw a ShowcaseWriter actor to kill:\n" + out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    table = read_showcases(trained_root, date="2026-11-22")
    keys = keys_of(table)
    assert len(keys) == len(set(keys)) and set(keys) == good_keys(pairs)


def test_a_killed_driver_resumes_without_recomputing_finished_parts(s3_trained_root, ray_local):
    # on S3 only: a local ROOT runs the same resume code through pyarrow's local filesystem (25 s saved)
    trained_root = s3_trained_root
    store = Store.open(trained_root)
    pairs, _, _ = candidate_pairs(trained_root, cross=4)
    candidates = write_remote_candidates(store, pairs)
    args = ["--root", trained_root, "--candidates", candidates, "--date", "2026-11-23", "--run-id", "kill-driver",
            "--pairs-per-part", "8", "--batch-size", "4"]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}  # the cluster outlives the driver
    proc = subprocess.Popen([sys.executable, "-m", "jobs.nightly", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reached = _wait_for_parts(store, "2026-11-23", "kill-driver", 2, proc, time.monotonic() + 240)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert reached, "the driver finished or failed before two parts were written:\n" + out[-3000:]
    assert "2026-11-23" not in published_dates(store)  # nothing published by the killed run
    time.sleep(1.0)
    finished = {i: mtime(store, p) for i, p in nightly.list_run_parts(store, "2026-11-23", "kill-driver").items()}
    assert run("nightly", nightly.main, args) == 0
    report = store.read_json("reports/nightly/kill-driver.json")
    assert report["counts"]["parts_resumed"] >= len(finished) >= 2
    after = nightly.list_run_parts(store, "2026-11-23", "kill-driver")
    assert all(mtime(store, after[i]) == before for i, before in finished.items())  # not written again
    table = read_showcases(trained_root, date="2026-11-23")
    keys = keys_of(table)
    assert len(keys) == len(set(keys)) == report["counts"]["showcases"] and set(keys) == good_keys(pairs)
    assert read_elsewhere(trained_root, "2026-11-23") == (sorted(keys), sorted(keys))


def test_a_killed_run_never_resumed_is_invisible_and_vacuum_removes_it(trained_root, ray_local, tmp_path):
    store = Store.open(trained_root)
    pairs, _, _ = candidate_pairs(trained_root, cross=4)
    candidates = write_remote_candidates(store, pairs)
    # a committed date of this test's own, which vacuum must leave as it is (whatever other tests ran before)
    assert run("nightly", nightly.main, ["--root", trained_root, "--candidates", candidates, "--date", "2026-11-19",
                                         "--generator", "none"]) == 0
    committed = sorted(keys_of(read_showcases(trained_root, date="2026-11-19")))
    # the run waits at its commit for a second party that never comes: without a generator its few parts are written
    # within 0.2 s, and it once committed between the test seeing two parts and its kill
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "SHOWCASE_TEST_COMMIT_BARRIER": str(tmp_path / "barrier")}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.nightly", "--root", trained_root, "--candidates", candidates,
                             "--date", "2026-11-25", "--run-id", "abandoned", "--pairs-per-part", "4",
                             "--generator", "none"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    reached = _wait_for_parts(store, "2026-11-25", "abandoned", 2, proc, time.monotonic() + 240)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert reached, "the driver finished or failed before two parts were written:\n" + out[-3000:]
    left = _settled_parts(store, "2026-11-25", "abandoned")
    assert len(left) >= 2 and "2026-11-25" not in published_dates(store)
    assert read_elsewhere(trained_root, "2026-11-25") == ([], [])  # the parts sit in dt=2026-11-25/, unseen
    assert run("vacuum", vacuum.main, ["--root", trained_root, "--keep-days", "1"]) == 0
    assert nightly.list_run_parts(store, "2026-11-25", "abandoned") == left  # young: a resume could still use them
    assert run("vacuum", vacuum.main, ["--root", trained_root, "--keep-days", "0"]) == 0
    assert nightly.list_run_parts(store, "2026-11-25", "abandoned") == {}
    assert committed and sorted(keys_of(read_showcases(trained_root, date="2026-11-19"))) == committed


def test_two_nightlies_racing_on_one_date_one_wins_the_other_exits_3(s3_trained_root, seaweed, ray_local, tmp_path):
    root = s3_trained_root
    store = Store.open(root)
    pairs, _, _ = candidate_pairs(root)
    candidates = write_remote_candidates(store, pairs)
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "SHOWCASE_TEST_COMMIT_BARRIER": str(tmp_path / "barrier")}  # both reach their commit before either commits
    procs = {run_id: subprocess.Popen([sys.executable, "-m", "jobs.nightly", "--root", root, "--candidates",
                                       candidates, "--date", "2026-11-26", "--run-id", run_id, "--generator", "none",
                                       "--pairs-per-part", "16"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
             for run_id in ("race-a", "race-b")}
    results = {run_id: (p.wait(300), *p.communicate()) for run_id, p in procs.items()}
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 3], {k: (c, o[-800:], e[-800:]) for k, (c, o, e) in results.items()}
    winner = next(k for k, (c, _, _) in results.items() if c == 0)
    loser_err = next(e for c, _, e in results.values() if c == 3)
    said = [line for line in loser_err.splitlines() if line.startswith("showcase nightly:")]  # Ray logs to stderr too
    assert len(said) == 1 and f"run {winner} committed" in said[0] and "Traceback" not in loser_err, loser_err[-2000:]
    table = read_showcases(root, date="2026-11-26")
    keys = keys_of(table)
    assert len(keys) == len(set(keys)) and set(keys) == good_keys(pairs)
    assert set(table.column("run_id").to_pylist()) == {winner}
    quarantine = delta.read(store, "showcases_quarantine", filters=[("dt", "=", "2026-11-26")])
    assert set(quarantine.column("run_id").to_pylist()) == {winner}
    assert publication(store, "2026-11-26")["run_id"] == winner


def test_a_resume_needs_its_first_candidates_and_a_date_committed_halfway_only_resumes(trained_root, ray_local,
                                                                                        tmp_path, monkeypatch,
                                                                                        capsys):
    """The two ways a run can stop before its date is whole, made in process: before its commit (its parts are
    written; a resume with other candidates or models is refused), and between its quarantine's commit and its
    showcases' (a commit that fails when it reaches the showcases table). Also: --force with the publisher's own run
    id, and a rerun of it leaving its report alone."""
    store = Store.open(trained_root)
    pairs, _, _ = candidate_pairs(trained_root, cross=2)
    candidates = write_candidates(tmp_path / "c.parquet", pairs)
    others = write_candidates(tmp_path / "others.parquet", pairs[1:] + [{**pairs[0], "business_id": "b-nowhere"}])
    args = ["--root", trained_root, "--date", "2026-10-11", "--generator", "none", "--pairs-per-part", "8"]

    def one_line() -> str:  # (a Ray worker's late log lines may reach stderr too)
        err = capsys.readouterr().err.strip().splitlines()
        said = [line for line in err if line.startswith("showcase nightly:")]
        assert len(said) == 1 and "Traceback" not in "".join(err), err
        return said[0]

    def stopped(*_args, **_kwargs):
        raise RuntimeError("stopped before its commit")

    with monkeypatch.context() as patch:
        patch.setattr(nightly, "publish", stopped)
        assert run("nightly", nightly.main, [*args, "--candidates", candidates, "--run-id", "first-try"]) == 1
    written = nightly.list_run_parts(store, "2026-10-11", "first-try")
    assert written and "2026-10-11" not in published_dates(store)
    capsys.readouterr()
    # other candidates of the same size: the run's parts hold pairs these do not, and miss some they hold
    assert run("nightly", nightly.main, [*args, "--candidates", others, "--run-id", "first-try"]) == 2
    assert "run first-try wrote its parts for other candidates" in one_line()
    # and with another model: a generator where the first attempt had none
    assert run("nightly", nightly.main, [*args, "--candidates", candidates, "--run-id", "first-try",
                                         "--generator", "pc2l"]) == 2
    assert "run first-try wrote its parts with other generator (None; now " in one_line()
    assert run("nightly", nightly.main, [*args, "--candidates", candidates, "--run-id", "first-try"]) == 0
    assert store.read_json("reports/nightly/first-try.json")["counts"]["parts_resumed"] == len(written)
    assert set(keys_of(read_showcases(trained_root, date="2026-10-11"))) == good_keys(pairs)
    # the publisher's run id again: a no-op that keeps its report, and --force needs a new run id
    assert run("nightly", nightly.main, [*args, "--candidates", candidates, "--run-id", "first-try"]) == 0
    assert store.read_json("reports/nightly/first-try.json")["status"] == "published"
    capsys.readouterr()
    assert run("nightly", nightly.main, [*args, "--candidates", candidates, "--run-id", "first-try",
                                         "--force", "true"]) == 2
    assert "--force replaces 2026-10-11 with a new run, and run first-try published it" in one_line()

    real_commit = delta.commit

    def showcases_commit_fails(store_, rel, *a, **kw):
        if rel == "showcases":
            raise OSError("the driver stopped here")
        return real_commit(store_, rel, *a, **kw)

    day = [*args[:2], "--date", "2026-10-12", *args[4:], "--candidates", candidates]
    with monkeypatch.context() as patch:
        patch.setattr(delta, "commit", showcases_commit_fails)
        assert run("nightly", nightly.main, [*day, "--run-id", "halfway"]) == 1
    assert "2026-10-12" not in published_dates(store)
    assert delta.read(store, "showcases_quarantine", filters=[("dt", "=", "2026-10-12")]).num_rows > 0
    capsys.readouterr()
    for extra in ([], ["--force", "true"]):  # before any work: only the run that committed halfway can finish it
        assert run("nightly", nightly.main, [*day, *extra]) == 2
        assert ("run halfway committed the quarantine of 2026-10-12 but not its showcases" in one_line())
    assert run("nightly", nightly.main, [*day, "--run-id", "halfway"]) == 0
    assert publication(store, "2026-10-12")["run_id"] == "halfway"
    assert set(keys_of(read_showcases(trained_root, date="2026-10-12"))) == good_keys(pairs)
    quarantine = delta.read(store, "showcases_quarantine", filters=[("dt", "=", "2026-10-12")])
    assert set(quarantine.column("run_id").to_pylist()) == {"halfway"}


def test_nightly_with_root_on_s3(seaweed, s3_trained_root):
    root = s3_trained_root
    pairs, _, _ = candidate_pairs(root)
    bucket = root.split("/")[2]
    with seaweed.filesystem().open_output_stream(f"{bucket}/in/candidates.parquet") as f:
        pq.write_table(pa.Table.from_pylist([p for p in pairs if p["user_id"]]), f)
    args = ["--root", root, "--candidates", f"s3://{bucket}/in/candidates.parquet", "--date", "2026-11-21"]
    assert run("nightly", nightly.main, args) == 0
    table = read_showcases(root, date="2026-11-21")  # test_faults publishes a later date on this ROOT
    assert table.num_rows == len(good_keys([p for p in pairs if p["user_id"]])) > 0
    assert all(u.startswith("s3://") for uris in table.column("image_uris").to_pylist() for u in uris)
    assert read_elsewhere(root, "2026-11-21") == (sorted(keys_of(table)), sorted(keys_of(table)))
    version = delta.open_table(Store.open(root), "showcases").version()
    assert run("nightly", nightly.main, args) == 0  # published: a no-op
    assert delta.open_table(Store.open(root), "showcases").version() == version


def test_fail_fast_with_one_line(trained_root, tmp_path, tmp_path_factory, capsys):
    candidates = write_candidates(tmp_path / "c.parquet", [{"user_id": "u", "business_id": "b", "score": 1.0}])
    good = ["--root", trained_root, "--candidates", candidates, "--date", "2026-11-24"]
    cases = [
        (["--root", trained_root, "--candidates", candidates, "--date", "24/11/2026"], "--date"),
        (["--root", trained_root, "--date", "2026-11-24"], "--candidates"),
        (good[:3] + [str(tmp_path / "nope.parquet"), *good[4:]], "no such file"),
        (["--root", str(tmp_path / "empty-root"), "--candidates", candidates, "--date", "2026-11-24"],
         "no trained dpp"),
        (good + ["--generator-variant", "gpt5"], "no 'gpt5' variant"),
        (good[:3] + ["gs://bucket/c.parquet", *good[4:]], "unsupported URI scheme"),
        (good + ["--run-id", "../elsewhere"], "--run-id"),
    ]
    os.mkdir(tmp_path / "empty-root")  # a ROOT, without models
    empty = tmp_path / "none.parquet"
    pq.write_table(pa.table({"user_id": pa.array([], pa.string()), "business_id": pa.array([], pa.string())}),
                   str(empty))
    cases.append((good[:3] + [str(empty), *good[4:]], "no candidate pairs in it (0 rows)"))
    float_rank = tmp_path / "float_rank.parquet"
    pq.write_table(pa.table({"user_id": ["u"], "business_id": ["b"], "rank": [1.0]}), str(float_rank))
    cases.append((good[:3] + [str(float_rank), *good[4:]], "column 'rank' must be an integer, got double"))
    unfeatured = copy_root(trained_root, tmp_path_factory, "unfeatured")  # models, but no feature tables
    import shutil
    shutil.rmtree(f"{unfeatured}/features")
    cases.append((["--root", unfeatured, *good[2:]], "no feature tables for encoder"))
    bad_columns = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user": ["u"], "business_id": ["b"]}), str(bad_columns))
    cases.append((good[:3] + [str(bad_columns), *good[4:]], "missing column 'user_id'"))
    for argv, words in cases:
        assert run("nightly", nightly.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    # an unreachable S3 endpoint: exit 2 with one line, before any model loads
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "jobs.nightly", "--root", "s3://nowhere/root", "--candidates",
                           candidates, "--date", "2026-11-24"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "s3://nowhere/root" in proc.stderr
    assert time.monotonic() - started < 60

"""The Delta table layer on local disk: commits once per application transaction, races, partition replacement,
run records that pin versions, time travel, vacuum of uncommitted files, and the old layout refused."""

import os
import threading
import time

import pyarrow as pa
import pytest

from showcase_core import tables as delta
from showcase_core.store import Store, StoreError

SCHEMA = pa.schema([("id", pa.string()), ("x", pa.int64()), ("dt", pa.string())])


def records(store, rel, ids, date="2026-01-01", name=None):
    table = pa.table({"id": ids, "x": list(range(len(ids))), "dt": [date] * len(ids)}, schema=SCHEMA)
    return delta.write_file(store, rel, table, name or f"part-{ids[0]}.parquet", {"dt": date})


def ids(store, rel, **kw):
    return sorted(delta.read(store, rel, **kw).column("id").to_pylist())


def test_write_file_records_statistics_and_leaves_partition_columns_to_the_log(tmp_path):
    store = Store.open(str(tmp_path))
    record = records(store, "t", ["b", "a"])
    assert record["path"] == "dt=2026-01-01/part-b.parquet" and record["rows"] == 2
    import json
    import pyarrow.parquet as pq
    stats = json.loads(record["stats"])
    assert stats["numRecords"] == 2 and stats["minValues"]["id"] == "a" and stats["maxValues"]["x"] == 1
    assert pq.read_schema(store.path("t", record["path"])).names == ["id", "x"]  # dt lives in the partition


def test_an_app_transaction_commits_once_and_a_second_run_loses(tmp_path):
    store = Store.open(str(tmp_path))
    first = records(store, "t", ["a"])
    kwargs = dict(stage="test", app_id="t/dt=2026-01-01", partition_by=["dt"], replace={"dt": "2026-01-01"})
    assert delta.commit(store, "t", [first], SCHEMA, run_id="A", **kwargs).new
    assert not delta.commit(store, "t", [first], SCHEMA, run_id="A", **kwargs).new  # a retried commit: no-op
    other = records(store, "t", ["b"])
    with pytest.raises(delta.LostRace, match="run A committed"):
        delta.commit(store, "t", [other], SCHEMA, run_id="B", **kwargs)
    assert ids(store, "t") == ["a"]
    # the next generation replaces exactly that date and leaves the others
    delta.commit(store, "t", [records(store, "t", ["z"], "2026-01-02")], SCHEMA, run_id="C", stage="test",
                 partition_by=["dt"], replace={"dt": "2026-01-02"})
    delta.commit(store, "t", [other], SCHEMA, run_id="B", **{**kwargs, "app_version": 2})
    assert ids(store, "t") == ["b", "z"]
    assert ids(store, "t", version=2) == ["a", "z"]  # time travel (version 0 is the empty table)
    lineage = delta.open_table(store, "t").history(1)[0]
    assert lineage["showcase.run_id"] == "B" and lineage["showcase.app_version"] == "2"


def test_two_writers_racing_on_one_app_id_serialise(tmp_path):
    store = Store.open(str(tmp_path))
    delta.commit(store, "t", [records(store, "t", ["seed"], "2026-01-09")], SCHEMA, run_id="S", stage="test",
                 partition_by=["dt"])
    files = {run: records(store, "t", [run * 3]) for run in "ABCD"}
    outcome, barrier = {}, threading.Barrier(len(files))

    def writer(run):
        barrier.wait()
        try:
            delta.commit(store, "t", [files[run]], SCHEMA, run_id=run, stage="test", app_id="t/dt=2026-01-01",
                         partition_by=["dt"], replace={"dt": "2026-01-01"})
            outcome[run] = "won"
        except delta.LostRace as e:
            outcome[run] = e.winner

    threads = [threading.Thread(target=writer, args=(r,)) for r in files]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [r for r, o in outcome.items() if o == "won"]
    assert len(winners) == 1 and all(o == winners[0] for r, o in outcome.items() if r not in winners), outcome
    assert ids(store, "t", filters=[("dt", "=", "2026-01-01")]) == [winners[0] * 3]


def test_run_record_pins_versions_and_maintenance_commits_are_followed(tmp_path):
    store = Store.open(str(tmp_path))
    schema = pa.schema([("id", pa.string())])
    for n in range(3):
        record = delta.write_file(store, "tables/reviews", pa.table({"id": [f"r{n}"]}, schema=schema), f"p{n}.parquet")
        delta.commit(store, "tables/reviews", [record], schema, run_id=f"run{n}", stage="test")
    with pytest.raises(StoreError, match="has not been published"):
        store.read_table("reviews")
    store.record_run("ingest", "run1", {"reviews": 2})  # version 0 is the empty table, then one per commit
    assert store.read_table("reviews").column("id").to_pylist() in (["r0", "r1"], ["r1", "r0"])
    assert store.table_version("reviews") == {"version": 2, "rows": 2, "run_id": "run1"}
    with pytest.raises(StoreError, match="was not published by the last ingest"):
        store.read_table("images")
    # a pinned version followed only by maintenance commits reads the newest (same rows, files that survive vacuum)
    store.record_run("ingest", "run2", {"reviews": 3})
    delta.maintain(store, "tables/reviews", keep_hours=0, optimize=True)
    table = delta.open_table(store, "tables/reviews")
    assert table.version() > 3 and delta.current_version(store, "tables/reviews", 3) == table.version()
    assert sorted(store.read_table("reviews").column("id").to_pylist()) == ["r0", "r1", "r2"]
    assert delta.current_version(store, "tables/reviews", 2) == 2  # a data commit after it: stay pinned


def test_vacuum_keeps_young_uncommitted_files_and_removes_them_past_the_retention(tmp_path):
    store = Store.open(str(tmp_path))
    delta.commit(store, "t", [records(store, "t", ["a"])], SCHEMA, run_id="A", stage="test", partition_by=["dt"])
    orphan = records(store, "t", ["killed"], name="part-killed-00000.parquet")  # a run that never committed
    assert delta.maintain(store, "t", keep_hours=1)["files_removed"] == 0
    assert os.path.exists(store.path("t", orphan["path"]))
    old = time.time() - 2 * 3600
    os.utime(store.path("t", orphan["path"]), (old, old))
    assert delta.maintain(store, "t", keep_hours=1)["files_removed"] == 1
    assert not os.path.exists(store.path("t", orphan["path"])) and ids(store, "t") == ["a"]
    # a resumed run whose files are gone is refused before its commit, in one line
    with pytest.raises(StoreError, match="gone before their commit"):
        delta.commit(store, "t", [orphan], SCHEMA, run_id="K", stage="test", partition_by=["dt"])
    assert delta.find_tables(store) == ["t"]


def test_vacuum_keeps_a_file_younger_than_a_retention_of_part_of_an_hour(tmp_path, capsys):
    from jobs import vacuum
    from jobs.common import run

    store = Store.open(str(tmp_path))
    delta.commit(store, "t", [records(store, "t", ["a"])], SCHEMA, run_id="A", stage="test", partition_by=["dt"])
    orphan = records(store, "t", ["killed"], name="part-killed-00000.parquet")
    old = time.time() - 20 * 60  # 20 minutes old: inside a retention of 0.02 days (28.8 minutes)
    os.utime(store.path("t", orphan["path"]), (old, old))
    assert run("vacuum", vacuum.main, ["--root", str(tmp_path), "--keep-days", "0.02"]) == 0
    assert os.path.exists(store.path("t", orphan["path"])), capsys.readouterr().out
    assert run("vacuum", vacuum.main, ["--root", str(tmp_path), "--keep-days", "100000"]) == 2
    assert "--keep-days" in capsys.readouterr().err


def test_vacuum_removes_the_old_files_of_a_table_whose_first_run_never_committed(tmp_path, capsys):
    from jobs import vacuum
    from jobs.common import run

    store = Store.open(str(tmp_path))
    killed = records(store, "showcases", ["killed"], name="part-killed-00000.parquet")  # the first nightly, killed
    young = records(store, "showcases", ["young"], name="part-young-00000.parquet")  # a first run still going
    others = {"tables/_staging": records(store, "tables/_staging", ["s"]),  # a job's staging
              "candidates": records(store, "candidates", ["c"])}  # a user's folder at the top of ROOT
    old = time.time() - 2 * 3600
    for rel, record in [("showcases", killed), *others.items()]:
        os.utime(store.path(rel, record["path"]), (old, old))
    assert delta.find_uncommitted_tables(store, ("showcases", "showcases_quarantine")) == ["showcases"]
    assert delta.find_tables(store) == []
    assert delta.remove_uncommitted(store, "showcases", keep_hours=1, dry_run=True)["files_removed"] == 1
    assert os.path.exists(store.path("showcases", killed["path"]))
    assert delta.remove_uncommitted(store, "showcases", keep_hours=1)["files_removed"] == 1
    assert not os.path.exists(store.path("showcases", killed["path"]))
    assert os.path.exists(store.path("showcases", young["path"]))
    assert run("vacuum", vacuum.main, ["--root", str(tmp_path), "--keep-days", "0"]) == 0
    assert "showcases: never committed, 1 uncommitted files removed" in capsys.readouterr().out
    assert not os.path.exists(store.path("showcases", young["path"]))
    assert all(os.path.exists(store.path(rel, record["path"])) for rel, record in others.items())


# every job but ingest, with the arguments it checks before ROOT
JOBS_ON_A_ROOT = {"embed": [], "features": [], "train_clip": [], "train_dpp": [], "train_pc2l": [], "evaluate": [],
                  "train_recommender": [], "distill": [], "gallery": [], "recommend": ["--date", "2026-12-01"],
                  "nightly": ["--date", "2026-12-01", "--candidates", "candidates.parquet"], "vacuum": []}


@pytest.mark.parametrize("job", sorted(JOBS_ON_A_ROOT))
def test_a_job_given_a_root_that_is_not_there_exits_2_and_creates_nothing(job, tmp_path, capsys):
    import importlib

    from jobs.common import run

    mistyped = tmp_path / "roto"
    assert run(job, importlib.import_module(f"jobs.{job}").main, ["--root", str(mistyped), *JOBS_ON_A_ROOT[job]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"showcase {job}: error: ROOT {mistyped} does not exist (`showcase ingest` starts one)"]
    assert not mistyped.exists()


def test_vacuum_of_a_root_with_no_table_yet_has_nothing_to_do(tmp_path, capsys):
    from jobs import vacuum
    from jobs.common import run

    assert run("vacuum", vacuum.main, ["--root", str(tmp_path)]) == 0
    assert "[vacuum] 0 tables" in capsys.readouterr().out


def test_a_root_of_the_previous_layout_is_refused_in_one_line(tmp_path):
    store = Store.open(str(tmp_path))
    store.write_json("tables/_CURRENT.json", {"tables": {}})
    with pytest.raises(StoreError, match="previous layout") as e:
        store.check_layout()
    assert "\n" not in str(e.value) and "showcase ingest" in str(e.value)

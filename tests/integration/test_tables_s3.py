"""The Delta table layer on the SeaweedFS S3 server: conditional-put commits, eight writers racing on one date
(exactly one wins, the rest are told who), concurrent appends each landing exactly once, readers from outside."""

import threading

import pyarrow as pa
import pytest

from showcase_core import tables as delta
from showcase_core.store import Store

SCHEMA = pa.schema([("id", pa.string()), ("dt", pa.string())])


@pytest.fixture()
def s3_store(seaweed):
    import uuid

    bucket = f"tables-{uuid.uuid4().hex[:8]}"
    seaweed.create_bucket(bucket)
    return Store.open(f"s3://{bucket}/root")


def record(store, name, date):
    return delta.write_file(store, "t", pa.table({"id": [name], "dt": [date]}, schema=SCHEMA), f"part-{name}.parquet",
                            {"dt": date})


def race(n, target):
    barrier, threads = threading.Barrier(n), []
    for i in range(n):
        threads.append(threading.Thread(target=lambda i=i: (barrier.wait(), target(i))))
    [t.start() for t in threads]
    [t.join() for t in threads]


def test_eight_writers_racing_on_one_app_id_have_exactly_one_winner(s3_store):
    store = s3_store
    for trial in range(3):  # the first trial races on creating the table too
        date, outcome = f"2026-03-0{trial + 1}", {}
        files = [record(store, f"w{i}-{trial}", date) for i in range(8)]

        def writer(i):
            try:
                delta.commit(store, "t", [files[i]], SCHEMA, run_id=f"w{i}", stage="test", app_id=f"t/dt={date}",
                             partition_by=["dt"], replace={"dt": date})
                outcome[i] = "won"
            except delta.LostRace as e:
                outcome[i] = e.winner
            except Exception as e:  # shown in the assertion below (a thread's exception is otherwise only printed)
                outcome[i] = f"{type(e).__name__}: {e}"

        race(8, writer)
        winners = [i for i, o in outcome.items() if o == "won"]
        assert len(outcome) == 8 and len(winners) == 1, outcome
        assert all(o == f"w{winners[0]}" for i, o in outcome.items() if i != winners[0])
        assert delta.read(store, "t", filters=[("dt", "=", date)]).column("id").to_pylist() == [f"w{winners[0]}-{trial}"]


def test_concurrent_appends_each_land_exactly_once_and_polars_reads_them(s3_store, seaweed):
    import polars as pl

    store = s3_store
    delta.commit(store, "t", [record(store, "seed", "2026-04-01")], SCHEMA, run_id="seed", stage="test",
                 partition_by=["dt"])
    files = [record(store, f"a{i}", "2026-04-02") for i in range(8)]
    race(8, lambda i: delta.commit(store, "t", [files[i]], SCHEMA, run_id=f"a{i}", stage="test", partition_by=["dt"],
                                   app_id=f"append/a{i}"))
    ids = sorted(delta.read(store, "t").column("id").to_pylist())
    assert ids == sorted(["seed"] + [f"a{i}" for i in range(8)])
    assert delta.open_table(store, "t").version() == 9  # created empty, the seed, eight appends
    options = {**{k: v for k, v in seaweed.env.items() if k != "AWS_ENDPOINT_URL"},
               "AWS_ENDPOINT_URL": seaweed.endpoint, "AWS_ALLOW_HTTP": "true"}
    assert sorted(pl.read_delta(store.uri("t"), storage_options=options)["id"].to_list()) == ids

"""The Delta table layer on the SeaweedFS S3 server: conditional-put commits, eight writers racing on one date
(exactly one wins, the rest are told who), concurrent appends each landing exactly once, readers from outside."""

import threading
import time

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


def test_ray_data_reads_a_table_version_block_by_block_from_s3(s3_store, ray_local, monkeypatch):
    # jobs read tables into Ray Data with their own reader (no footer-reading actor pool): every row of the version,
    # consecutive files in blocks of about READ_BLOCK_BYTES, the chosen columns; an empty table keeps its schema
    from jobs import common

    store, schema = s3_store, pa.schema([("id", pa.string()), ("n", pa.int64())])
    files = [delta.write_file(store, "flat", pa.table({"id": [f"r{i}-{j}" for j in range(i + 1)],
                                                       "n": list(range(i + 1))}, schema=schema), f"part-{i}.parquet")
             for i in range(7)]
    first = delta.commit(store, "flat", files[:5], schema, run_id="one", stage="test", app_id="flat/one")
    delta.commit(store, "flat", files[5:], schema, run_id="two", stage="test", app_id="flat/two")
    monkeypatch.setattr(common, "READ_BLOCK_BYTES", 2 * max(f["size"] for f in files))
    ds = common.read_table_dataset(store, "flat", columns=["id"])
    assert ds.materialize().num_blocks() == 4  # 7 files, two to a block
    assert sorted(ds.to_pandas()["id"]) == sorted(f"r{i}-{j}" for i in range(7) for j in range(i + 1))
    assert list(ds.to_pandas().columns) == ["id"]
    assert common.read_table_dataset(store, "flat", first.version, ["n"]).count() == sum(range(1, 6))

    delta.commit(store, "none", [], schema, run_id="e", stage="test", app_id="none/e")
    empty = common.read_table_dataset(store, "none")
    assert empty.count() == 0 and empty.schema().names == ["id", "n"]
    delta.commit(store, "t", [record(store, "a", "2026-04-01")], SCHEMA, run_id="p", stage="test", app_id="t/p",
                 partition_by=["dt"])
    with pytest.raises(ValueError, match="partitioned by"):
        common.read_table_dataset(store, "t")


def test_in_order_keeps_the_blocks_order_when_their_tasks_end_out_of_order(ray_local):
    # training's examples are built by tasks that end in any order: in_order makes the examples reach the model in
    # the order of their input, through a materialization (as selection_example_datasets and train_pc2l build them)
    import ray.data

    from jobs.common import in_order

    def first_blocks_slowest(batch: dict) -> dict:  # (defined here: Ray's workers cannot import a test module)
        time.sleep(0.3 * (5 - int(batch["id"][0])))  # the tasks of the first blocks end last
        return batch

    def built(ordered: bool) -> list[int]:
        ds = ray.data.range(6, override_num_blocks=6)
        ds = (in_order(ds) if ordered else ds).repartition(6).materialize()
        slow = ds.map_batches(first_blocks_slowest, batch_size=None, num_cpus=0.1)  # all six tasks at once
        return [row["id"] for row in slow.materialize().iter_rows()]

    assert built(False) != list(range(6))  # Ray Data's default: the blocks as their tasks end
    assert built(True) == list(range(6))


def test_embeddings_of_some_ids_read_from_a_table_of_many_files(s3_store):
    # distill's Φ reads only its pairs' photo vectors: files without any of them give empty chunks
    from showcase_core.encoders.embed import embeddings_dir, read_embeddings

    rel = embeddings_dir("enc", "images")
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32()))])
    # every file's id range spans the wanted ids, so none is skipped by its statistics
    files = [delta.write_file(s3_store, rel, pa.table({"id": [f"{c}{i}" for c in "amz"],
                                                       "embedding": [[float(i), float(j)] for j in range(3)]},
                                                      schema=schema), f"part-{i}.parquet") for i in range(3)]
    delta.commit(s3_store, rel, files, schema, run_id="e", stage="test", app_id="e")
    some = read_embeddings(s3_store, "enc", "images", ids=["m2", "a2", "nope"])
    assert sorted(zip(some.column("id").to_pylist(), some.column("embedding").to_pylist())) == \
        [("a2", [2.0, 0.0]), ("m2", [2.0, 1.0])]
    assert some.schema.field("embedding").type.list_size == 2  # the contract's fixed-size list
    assert read_embeddings(s3_store, "enc", "images", ids=["nope"]).num_rows == 0


def test_a_job_given_an_s3_root_with_no_object_exits_2(s3_store, capsys):
    from jobs import embed, vacuum
    from jobs.common import run

    for job, main in (("vacuum", vacuum.main), ("embed", embed.main)):  # S3 has no folders: a prefix without objects
        assert run(job, main, ["--root", s3_store.root]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"ROOT {s3_store.root} does not exist (nothing under it" in err[0], err
        assert not s3_store.exists("")
    s3_store.write_json("runs/ingest.json", {})
    assert run("vacuum", vacuum.main, ["--root", s3_store.root]) == 0

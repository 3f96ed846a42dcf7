"""Checking candidate pairs against what is published, and reading published dates from the showcases Delta table."""

import numpy as np
import pyarrow as pa
import pytest

from showcase_core import read_showcases
from showcase_core import tables as delta
from showcase_core.data.schema import SHOWCASES
from showcase_core import features
from showcase_core.showcase import app_id, check_pairs
from showcase_core.store import Store, StoreError


def test_check_pairs_gives_every_reason():
    eye = np.eye(2, dtype=np.float32)
    users = {"u1": features.user_row("u1", [("b1", "p1", eye[0])], [("review:u1_b1", "b1", None, eye[1])], 2)}
    businesses = {"b1": features.business_row("b1", [("p1", "/a", None, eye[0]), ("p2", "/b", None, eye[1])]),
                  "b2": features.business_row("b2", [])}
    pairs = [{"user_id": "u1", "business_id": "b1"}, {"user_id": "u1", "business_id": "b1"},
             {"user_id": "u9", "business_id": "b1"}, {"user_id": "u1", "business_id": "b9"},
             {"user_id": "u1", "business_id": "b2"}, {"user_id": None, "business_id": "b1"},
             {"user_id": "u1", "business_id": ""}]
    good, bad = check_pairs(pairs, users, businesses, 2, 10)
    assert [(g.user_id, g.business_id, g.ground.image_ids) for g in good] == [("u1", "b1", ["p1", "p2"])]
    assert not good[0].profile.has_history  # the user's only business is the target: nothing left
    assert [b["reason"] for b in bad] == ["duplicate_pair", "unknown_user", "unknown_business", "no_photos",
                                          "missing_field", "missing_field"]
    assert [b["index"] for b in bad] == [1, 2, 3, 4, 5, 6] and all(b["detail"] for b in bad)


def _publish(store: Store, date: str, rows: list[dict], run_id: str = "r1") -> None:
    """Publish a date the way jobs.nightly does: a data file in the date's partition, one commit under its app id."""
    table = pa.Table.from_pylist([{**r, "dt": date} for r in rows], schema=SHOWCASES)
    record = delta.write_file(store, "showcases", table, f"part-{run_id}-00000.parquet", {"dt": date})
    delta.commit(store, "showcases", [record], SHOWCASES, run_id=run_id, stage="test", app_id=app_id(date),
                 partition_by=["dt"], replace={"dt": date})


def test_read_showcases_reads_the_newest_date_and_any_engine_agrees(tmp_path):
    import polars as pl
    from deltalake import DeltaTable

    store = Store.open(str(tmp_path / "root"))
    with pytest.raises(StoreError, match="no showcases published"):
        read_showcases(store.root)
    row = {f.name: None for f in SHOWCASES}
    row.update(user_id="u1", business_id="b1", image_ids=["p1"], explanation="Great ramen.", cold_start=False,
               images_only=False)
    _publish(store, "2026-11-21", [row, {**row, "user_id": "u2"}])
    _publish(store, "2026-11-20", [row])  # an older date published later is not the newest
    newest = read_showcases(store.root)
    assert newest.schema.equals(SHOWCASES) and newest.num_rows == 2
    assert set(newest.column("dt").to_pylist()) == {"2026-11-21"}
    assert read_showcases(store.root, date="2026-11-20").column("user_id").to_pylist() == ["u1"]
    with pytest.raises(StoreError, match="not published"):
        read_showcases(store.root, date="2026-01-01")
    # readers with no project code in the read path see the same rows
    by_polars = pl.read_delta(store.uri("showcases")).filter(pl.col("dt") == "2026-11-21")
    assert sorted(by_polars["user_id"].to_list()) == sorted(newest.column("user_id").to_pylist())
    assert DeltaTable(store.uri("showcases")).to_pyarrow_table().num_rows == 3
    import duckdb

    dataset = DeltaTable(store.uri("showcases")).to_pyarrow_dataset()  # noqa: F841 (DuckDB finds it by name)
    by_duckdb = duckdb.sql("SELECT user_id FROM dataset WHERE dt = '2026-11-21' ORDER BY user_id").fetchall()
    assert [u for (u,) in by_duckdb] == sorted(newest.column("user_id").to_pylist())
    # time travel: version 1 (0 is the empty table) has only the first date
    assert read_showcases(store.root, date="2026-11-21", version=1).num_rows == 2
    with pytest.raises(StoreError, match="not published"):
        read_showcases(store.root, date="2026-11-20", version=1)


def test_a_process_that_read_showcases_exits_cleanly(tmp_path):
    """deltalake's own filesystem for pyarrow left threads that aborted about one reading process in two at exit."""
    import subprocess
    import sys

    store = Store.open(str(tmp_path / "root"))
    row = {f.name: None for f in SHOWCASES}
    row.update(user_id="u1", business_id="b1", image_ids=["p1"], explanation="Great ramen.", cold_start=False,
               images_only=False)
    _publish(store, "2026-11-21", [row])
    reader = f"from showcase_core import read_showcases; assert read_showcases({store.root!r}).num_rows == 1"
    for _ in range(6):
        proc = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "terminate called" not in proc.stderr, (proc.returncode, proc.stderr[-500:])


def test_published_rows_are_found_by_key_in_their_unit_and_a_new_date_is_noticed(tmp_path):
    from showcase_core.features import bucket_of
    from showcase_core.showcase import PublishedShowcases, part_name

    store = Store.open(str(tmp_path / "root"))
    base = {f.name: None for f in SHOWCASES}
    rows = [{**base, "user_id": f"u{i}", "business_id": f"b{i % 7}", "image_ids": [f"p{i}"], "cold_start": False,
             "images_only": True} for i in range(60)]

    def publish(date: str, rows: list[dict], units: int = 3) -> None:
        records = []
        for unit in range(units):
            mine = [{**r, "dt": date} for r in rows if bucket_of([r["business_id"]], units)[0] == unit]
            table = pa.Table.from_pylist(mine, schema=SHOWCASES)
            records.append(delta.write_file(store, "showcases", table, part_name("r", unit, units), {"dt": date},
                                            row_group_size=4))
        delta.commit(store, "showcases", records, SHOWCASES, run_id="r", stage="test", app_id=app_id(date),
                     partition_by=["dt"], replace={"dt": date})

    published = PublishedShowcases(store, refresh_s=0, cache_rows=5)
    assert published.get("u1", "b1") is None  # nothing published yet
    publish("2026-11-21", rows)
    for r in rows:
        got = published.get(r["user_id"], r["business_id"])
        assert got["image_ids"] == r["image_ids"] and got["dt"] == "2026-11-21"
    assert published.get("u1", "b2") is None and len(published.cache) == 5  # a pair not published; a bounded cache
    publish("2026-11-22", [{**rows[1], "image_ids": ["new"]}])
    assert published.get("u1", "b1")["image_ids"] == ["new"] and published.date == "2026-11-22"
    assert published.get("u2", "b2") is None  # the newest date does not have it

"""Checking candidate pairs against what is published, and reading published dates from the showcases Delta table."""

import numpy as np
import pyarrow as pa
import pytest

from showcase_core import read_showcases
from showcase_core import tables as delta
from showcase_core.data.schema import SHOWCASES
from showcase_core.showcase import ShowcaseContext, app_id, check_pairs
from showcase_core.store import Store, StoreError


def _context():
    return ShowcaseContext(photo_ids=["p1", "p2"], photo_vecs=np.eye(2, dtype=np.float32), photo_uris=["/a", "/b"],
                           business_photos={"b1": np.array([0, 1])},
                           user_reviews={"u1": [{"review_id": "u1_b1", "business_id": "b1", "pic_ids": ["p1"],
                                                 "history": []}]},
                           text_row={}, text_vecs=np.zeros((0, 2), np.float32), known_businesses={"b1", "b2"})


def test_check_pairs_gives_every_reason():
    pairs = [{"user_id": "u1", "business_id": "b1"}, {"user_id": "u1", "business_id": "b1"},
             {"user_id": "u9", "business_id": "b1"}, {"user_id": "u1", "business_id": "b9"},
             {"user_id": "u1", "business_id": "b2"}, {"user_id": None, "business_id": "b1"},
             {"user_id": "u1", "business_id": ""}]
    good, bad = check_pairs(pairs, _context())
    assert good == [pairs[0]]
    assert [b["reason"] for b in bad] == ["duplicate_pair", "unknown_user", "unknown_business", "no_photos",
                                          "missing_field", "missing_field"]
    assert all(b["detail"] for b in bad)


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

"""Checking candidate pairs against what is published, and reading a published date through its manifest."""

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from showcase_core import read_showcases
from showcase_core.data.schema import SHOWCASES
from showcase_core.showcase import ShowcaseContext, check_pairs
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


def _publish(store: Store, date: str, rows: list[dict], tamper: bool = False) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SHOWCASES), buf)
    data = buf.getvalue()
    path = f"showcases/dt={date}/run=r1/part-00000.parquet"
    store.fs.create_dir(store.path(f"showcases/dt={date}/run=r1"), recursive=True)
    with store.fs.open_output_stream(store.path(path)) as f:
        f.write(data + (b"x" if tamper else b""))
    store.write_json(f"showcases/dt={date}/_MANIFEST.json",
                     {"date": date, "run_id": "r1", "rows": len(rows),
                      "parts": [{"path": path, "rows": len(rows), "bytes": len(data),
                                 "sha256": hashlib.sha256(data).hexdigest()}]})
    store.write_json("showcases/LATEST", {"date": date, "manifest": f"showcases/dt={date}/_MANIFEST.json",
                                          "run_id": "r1"})


def test_read_showcases_follows_latest_and_checks_part_sizes(tmp_path):
    store = Store.open(str(tmp_path / "root"))
    with pytest.raises(StoreError, match="no showcases published"):
        read_showcases(store.root)
    row = {f.name: None for f in SHOWCASES}
    row.update(user_id="u1", business_id="b1", image_ids=["p1"], explanation="Great ramen.", cold_start=False)
    _publish(store, "2026-11-20", [row])
    _publish(store, "2026-11-21", [row, {**row, "user_id": "u2"}])
    assert read_showcases(store.root).num_rows == 2
    assert read_showcases(store.root, date="2026-11-20").column("user_id").to_pylist() == ["u1"]
    with pytest.raises(StoreError, match="not published"):
        read_showcases(store.root, date="2026-01-01")
    _publish(store, "2026-11-22", [row], tamper=True)
    with pytest.raises(StoreError, match="the manifest says"):
        read_showcases(store.root)

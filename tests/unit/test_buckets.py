"""Hash buckets of ids (showcase_core.buckets): a partition of the rows, distinct counts bucket by bucket, and samples."""

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from showcase_core.buckets import bucket_column, buckets_for, distinct_counts, in_bucket, sample_of_ids

VALUES = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "é", "", "a b", "x" * 40]), st.text(max_size=6))


@settings(max_examples=80, deadline=None)
@given(batches=st.lists(st.lists(st.tuples(VALUES, VALUES), max_size=12), max_size=5), buckets=st.integers(1, 7))
def test_distinct_counts_bucket_by_bucket_equal_the_sets_of_every_value(batches, buckets):
    arrow = [pa.record_batch({"user": pa.array([u for u, _ in rows], pa.string()),
                              "business": pa.array([b for _, b in rows], pa.string())}) for rows in batches]
    got = distinct_counts(lambda: iter(arrow), ["user", "business"], buckets)
    assert got == {"user": len({u for rows in batches for u, _ in rows if u is not None}),
                   "business": len({b for rows in batches for _, b in rows if b is not None})}


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.text(max_size=8), max_size=40), buckets=st.integers(1, 6))
def test_every_row_falls_in_exactly_one_bucket_and_an_id_always_in_the_same(ids, buckets):
    table = pa.table({"id": pa.array(ids, pa.string()), "row": pa.array(range(len(ids)), pa.int64())})
    parts = [in_bucket(table, b, buckets) for b in range(buckets)]
    assert sorted(r for p in parts for r in p.column("row").to_pylist()) == list(range(len(ids)))
    owner = {}
    for b, part in enumerate(parts):
        for i in part.column("id").to_pylist():
            assert owner.setdefault(i, b) == b
    # each row's bucket column names the bucket that holds it (distill groups reviews by it)
    assert [owner[i] for i in ids] == bucket_column(table, buckets).to_pylist()


def test_buckets_for_leaves_a_fifth_to_spare():
    assert buckets_for(0, 10) == 1 and buckets_for(8, 10) == 1 and buckets_for(9, 10) == 2
    assert buckets_for(4_000_000, 1_000_000) == 5


def test_distinct_counts_merge_many_batches_as_they_come():
    """Enough values that the batches' uniques are merged on the way (over 2 x 65,536 held), in 1 and 3 buckets."""
    batches = [pa.record_batch({"id": pa.array([f"id{(b * 3_000 + i) % 90_001}" for i in range(6_000)])})
               for b in range(60)]
    expected = len({v for batch in batches for v in batch.column("id").to_pylist()})
    assert expected > 2 * 65_536 // 3
    assert distinct_counts(lambda: iter(batches), ["id"], 1) == distinct_counts(lambda: iter(batches), ["id"], 3) \
        == {"id": expected}


def test_sample_of_ids_keeps_the_smallest_hashes_however_the_ids_stream():
    from showcase_core.features import bucket_of

    ids = [f"review-{i}" for i in range(200)]
    by_hash = [ids[i] for i in np.argsort(bucket_of(ids, 2**63), kind="stable")]
    for size in (1, 7, 200):
        batches = (pa.array(ids[start:start + size]) for start in range(0, len(ids), size))
        sample, seen = sample_of_ids(batches, 20)
        assert sample.to_pylist() == by_hash[:20] and seen == 200
    # a subset keeps the ids of the larger table's sample that it holds: a sample stays put as a split grows
    subset = ids[::3]
    kept = set(sample_of_ids([pa.array(subset)], 20)[0].to_pylist())
    assert {i for i in by_hash[:20] if i in set(subset)} <= kept
    assert sample_of_ids([pa.array(ids[:5])], 20)[0].to_pylist() == [i for i in by_hash if i in ids[:5]]
    assert sample_of_ids([], 3)[1] == 0
    # an id streamed again (a photo of several sentences) is kept once
    sample, seen = sample_of_ids([pa.array(ids[:50]), pa.array(ids[:80]), pa.array(ids[40:60] * 2)], 30)
    assert sample.to_pylist() == [i for i in by_hash if i in set(ids[:80])][:30] and seen == 170

"""Hash buckets of ids, for planning passes that must not hold every id at once (embed's todo lists, ingest's
duplicates; distill's groups of reviews): each pass reads its sources again and keeps the rows of one bucket.

polars' hash of a string is the same in every process of one polars version (all of a job's Ray workers run the
job's environment), which is all a plan made and used within one run needs. Stored partitions use
``showcase_core.features.bucket_of`` instead: stable across versions and machines, as does ``sample_of_ids`` (the
evaluation samples, which must be the same in every run).
"""

from __future__ import annotations

import pyarrow as pa


def buckets_for(rows: int, bucket_rows: int) -> int:
    """Buckets for ``rows`` ids of at most ``bucket_rows`` each, with a fifth to spare: a hash spreads ids a little
    unevenly (embed's planning makes twice the buckets when one is over its limit)."""
    return max(1, -(-rows * 5 // (4 * bucket_rows)))


def bucket_column(table: pa.Table, buckets: int, column: str = "id") -> pa.Array:
    """Each row's bucket (0 .. buckets - 1, uint64) by the hash of its ``column`` (polars', as ``in_bucket``)."""
    import polars as pl

    return (pl.from_arrow(table.column(column)).hash(seed=0) % buckets).to_arrow()


def in_bucket(table: pa.Table, bucket: int, buckets: int, column: str = "id") -> pa.Table:
    """The rows of an Arrow table whose ``column`` hashes to ``bucket`` of ``buckets`` (all of them with one bucket):
    a compact copy, so a bucket's rows never keep a whole source batch alive."""
    import pyarrow.compute as pc

    if buckets == 1:
        return table
    return table.filter(pc.equal(bucket_column(table, buckets, column), pa.scalar(bucket, pa.uint64())))


def distinct_counts(batches, columns: list[str], buckets: int) -> dict[str, int]:
    """How many distinct values each of ``columns`` holds over every Arrow batch of ``batches()`` (called once a
    bucket), bucket by bucket of values: memory about twice one bucket's distinct values of a column, plus a batch.
    Each batch's values are made unique on arrival and merged when they hold twice what the last merge kept, so
    many small batches cost a merge now and then, not one each."""
    import polars as pl

    counts = dict.fromkeys(columns, 0)
    for bucket in range(buckets):
        parts: dict[str, list] = {c: [] for c in columns}
        held, merged = dict.fromkeys(columns, 0), dict.fromkeys(columns, 0)
        for batch in batches():
            for c in columns:
                values = pl.from_arrow(in_bucket(pa.table({c: batch.column(c)}), bucket, buckets, c).column(c))
                parts[c].append(values.cast(pl.String).unique())
                held[c] += len(parts[c][-1])
                if held[c] > 2 * max(merged[c], 65_536):
                    parts[c] = [pl.concat(parts[c]).unique()]
                    held[c] = merged[c] = len(parts[c][0])
        for c in columns:
            if parts[c]:
                counts[c] += len(pl.concat(parts[c]).unique().drop_nulls())
    return counts


def sample_of_ids(batches, n: int) -> tuple[pa.Array, int]:
    """The ``n`` distinct ids of smallest hash (``features.bucket_of``'s BLAKE2b: the same in every run and on every
    machine; ties by id) among the string arrays ``batches`` streams, in the order of their hashes, and how many ids
    it streamed (repeats included). A uniform sample that a larger table keeps: an id kept from a table stays kept
    from any subset holding it. Memory: ``n`` ids and one batch."""
    from .features import bucket_of

    kept, seen = pa.table({"id": pa.array([], pa.string()), "hash": pa.array([], pa.int64())}), 0
    for ids in batches:
        ids = pa.chunked_array([ids]).combine_chunks().cast(pa.string())
        seen += len(ids)
        arriving = pa.table({"id": ids, "hash": bucket_of(ids.to_pylist(), 2**63)})
        distinct = pa.concat_tables([kept, arriving]).group_by("id", use_threads=False).aggregate([("hash", "min")])
        distinct = distinct.select(["id", "hash_min"]).rename_columns(["id", "hash"])
        kept = distinct.sort_by([("hash", "ascending"), ("id", "ascending")]).slice(0, n)
    return kept.column("id").combine_chunks(), seen

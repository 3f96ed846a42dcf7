"""jobs.recommend at scale: ``python tests/perf/recommend.py [--users 200000] [--businesses 30000] [--dim 64]``.

Not part of ``make test``. It writes a synthetic recommender straight into a fresh store's registry (random user and
item vectors, 5 reviewed businesses per user, 1% users with no train interaction, 10% cold businesses of which half
have no content), runs the real ``jobs.recommend`` on a tenth of the users and on all of them, and prints:

- the driver's peak RSS at both sizes and their ratio (goal: <= 1.25), the largest Ray worker's, users/s;
- a check that the top-N of 200 sampled users equals a brute-force numpy top-N (exclusions applied), and that no
  user is recommended a business they reviewed or one that cannot be scored.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from showcase_core import registry  # noqa: E402
from showcase_core.store import Store  # noqa: E402
from tests.perf.nightly_scale import run_job  # noqa: E402

TOP_N = 20


def vectors(matrix: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), matrix.shape[1])


def write_model(root: str, users: int, businesses: int, dim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    store = Store.open(root)
    uri = store.uri("models", "recommender", "synthetic", "r2mr")
    os.makedirs(uri, exist_ok=True)
    user_vectors = rng.standard_normal((users, dim), dtype=np.float32)
    item_vectors = rng.standard_normal((businesses, dim), dtype=np.float32)
    seen = np.sort(rng.integers(0, businesses, (users, 5)), axis=1).astype(np.int32)
    train_items = np.where(rng.random(users) < 0.01, 0, 4).astype(np.int32)
    cold = rng.random(businesses) < 0.1
    scorable = ~cold | (rng.random(businesses) < 0.5)
    popularity = rng.integers(0, 1000, businesses)
    chunk = 100_000
    with pq.ParquetWriter(f"{uri}/users.parquet", pa.schema([("user_id", pa.string()),
                                                               ("vector", pa.list_(pa.float32(), dim)),
                                                               ("seen", pa.list_(pa.int32())),
                                                               ("train_items", pa.int32())])) as writer:
        for start in range(0, users, chunk):
            idx = np.arange(start, min(start + chunk, users))
            writer.write_table(pa.table({
                "user_id": [f"u{i:07d}" for i in idx], "vector": vectors(user_vectors[idx]),
                "seen": pa.array(list(seen[idx]), pa.list_(pa.int32())), "train_items": train_items[idx]}),
                row_group_size=4096)
    pq.write_table(pa.table({"business_id": [f"b{i:06d}" for i in range(businesses)], "vector": vectors(item_vectors),
                             "popularity": popularity, "cold": cold, "scorable": scorable}), f"{uri}/items.parquet")
    registry.publish(store, "recommender", "synthetic", store.uri("models", "recommender", "synthetic"), "synthetic",
                     variants={"r2mr": uri})
    return {"users": user_vectors, "items": item_vectors, "seen": seen, "train_items": train_items,
            "scorable": scorable, "popularity": popularity}


def check(root: str, truth: dict, date: str, seed: int) -> str:
    import polars as pl
    from deltalake import DeltaTable

    got = pl.from_arrow(DeltaTable(f"{root}/candidates").to_pyarrow_table(filters=[("dt", "=", date)]))
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(truth["users"]), 200, replace=False)
    wrong = 0
    for u in sample:
        scores = truth["items"] @ truth["users"][u] if truth["train_items"][u] else truth["popularity"].astype(float)
        scores = scores.astype(np.float64)
        scores[truth["seen"][u]] = -np.inf
        scores[~truth["scorable"]] = -np.inf
        expected = [f"b{i:06d}" for i in np.argsort(-scores, kind="stable")[:TOP_N]]
        mine = got.filter(pl.col("user_id") == f"u{u:07d}").sort("rank")["business_id"].to_list()
        wrong += set(mine) != set(expected)
    ids = {f"b{i:06d}" for i in np.flatnonzero(~truth["scorable"])}
    unscorable = got.filter(pl.col("business_id").is_in(list(ids))).height
    ok = wrong == 0 and unscorable == 0 and got.height == len(truth["users"]) * TOP_N
    return (f"{'OK' if ok else 'FAILED'}: {got.height:,} candidates; top-{TOP_N} of 200 sampled users equal to numpy's "
            f"brute force for {200 - wrong}; unscorable businesses recommended: {unscorable}"), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--businesses", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    work = tempfile.mkdtemp(prefix="recommend-perf-")
    peaks, lines, ok_all = {}, [], True
    for users in (args.users // 10, args.users):
        root = f"{work}/{users}"
        truth = write_model(root, users, args.businesses, args.dim, 0)
        date = "2026-01-01"
        seconds, peak, _ = run_job(["jobs.recommend", "--root", root, "--date", date, "--top-n", str(TOP_N)],
                                   dict(os.environ))
        said, ok = check(root, truth, date, 1)
        ok_all &= ok
        peaks[users] = peak.driver
        lines.append(f"recommend, {users:,} users x {args.businesses:,} businesses (dim {args.dim}): {seconds:.0f} s "
                     f"({users / seconds:.0f} users/s end to end), driver peak RSS {peak.driver / 2**20:.0f} MiB, "
                     f"largest Ray worker {peak.workers / 2**20:.0f} MiB; {said}")
        print(lines[-1], flush=True)
    small, large = args.users // 10, args.users
    print(f"driver peak RSS, {large:,} vs {small:,} users: {peaks[large] / peaks[small]:.2f}x (goal <= 1.25)")
    ray.shutdown()
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())

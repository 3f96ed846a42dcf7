"""Candidate pairs from a trained recommender: ``python -m jobs.recommend --root ROOT --date YYYY-MM-DD [--top-n 20]``.

Ray Data over blocks of the model's ``users.parquet`` (showcase_core.recommend.data.export_vectors): an actor pool
holds the items' vectors (every business, one [I, d] matrix) and, for one block of users at a time, takes the exact
top-N by matrix product and ``torch.topk``, never returning a business the user already reviewed (any split) or one
the model cannot score (a cold business without content). A user with no train interaction gets the most popular
businesses (``cold_start_user``); a cold business is one scored from its content only (``cold_start_item``).
Each block's rows are written as one data file of the ``candidates`` Delta table; the driver commits the date's
partition once (``dt = DATE``, application transaction ``candidates/dt=DATE``; a committed date is a no-op without
``--force``). ``jobs.nightly --candidates latest --date DATE`` reads that partition.

Memory: the driver holds one add record per block; an actor the item matrix and one block of users.
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import field_validator

from showcase_core import registry
from showcase_core import tables as delta
from showcase_core.data.schema import CANDIDATES
from showcase_core.recommend.data import MODELS
from showcase_core.settings import iso_date
from showcase_core.store import filesystem_for, new_run_id, utc_now

from .common import (JobSettings, Progress, Timer, UserError, actor_plan, exit_process, new_report, open_store,
                     parse_args, run, setting, start_ray, versions)

TABLE = "candidates"


class Settings(JobSettings):
    """Write the candidates table's partition for one date: each user's top-N businesses by a trained recommender."""

    date: str = setting("", "the date partition to write, YYYY-MM-DD")
    top_n: int = setting(20, "candidates per user", ge=1)
    model: str = setting("r2mr", f"which trained recommender ranks: one of {', '.join(MODELS)}")
    users_per_block: int = setting(4096, "users per ranking block (an actor's batch)", ge=1)
    actors: int = setting(0, "ranking actors: 0 = one per GPU, or one on a CPU-only cluster", ge=0)
    use_gpu: bool = setting(False, "a GPU per actor even when none is up yet (autoscaling from zero)")
    force: bool = setting(False, "replace a date that is already written")

    @field_validator("date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        return iso_date("date", value)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {value!r}")
        return value


class TopN:
    """Ray Data actor: a block of users -> their top-N candidates, written as one data file; returns its record."""

    def __init__(self, root: str, items_uri: str, n: int, model: str, run_id: str, date: str, device: str):
        import numpy as np
        import pyarrow.parquet as pq
        import torch

        from showcase_core.store import Store

        fs, path = filesystem_for(items_uri)
        items = pq.read_table(path, filesystem=fs)
        self.ids = items.column("business_id").to_numpy(zero_copy_only=False)
        dim = items.schema.field("vector").type.list_size
        flat = items.column("vector").combine_chunks().flatten().to_numpy()
        self.vectors = torch.as_tensor(flat.reshape(-1, dim), device=device)
        self.popularity = torch.as_tensor(items.column("popularity").to_numpy().astype(np.float32), device=device)
        self.cold = items.column("cold").to_numpy(zero_copy_only=False)
        self.never = np.flatnonzero(~items.column("scorable").to_numpy(zero_copy_only=False))
        self.store, self.n, self.model, self.run_id, self.date, self.device = Store.open(root), n, model, run_id, \
            date, device

    def __call__(self, batch: pa.Table) -> dict:
        import numpy as np
        import torch

        from showcase_core.recommend.training import top_n

        dim = self.vectors.shape[1]
        users = batch.column("user_id").to_numpy(zero_copy_only=False)
        vectors = torch.as_tensor(batch.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dim),
                                  device=self.device)
        seen = batch.column("seen").to_pylist()
        exclude = [np.union1d(np.asarray(s, np.int64), self.never) for s in seen]
        no_train = batch.column("train_items").to_numpy() == 0
        scores, top = top_n(vectors, self.vectors, self.n, exclude)
        if no_train.any():  # no train interaction: the most popular businesses the user has not reviewed
            rows = np.flatnonzero(no_train)
            popular = self.popularity[None, :].expand(len(rows), -1)
            scores[rows], top[rows] = top_n(torch.eye(len(rows), device=self.device), popular.T,
                                            self.n, [exclude[r] for r in rows])
        scores, top = scores.cpu().numpy(), top.cpu().numpy()
        keep = top >= 0
        user_index, rank = np.nonzero(keep)
        items = top[keep]
        table = pa.table({"user_id": users[user_index], "business_id": self.ids[items],
                          "score": scores[keep].astype(np.float64), "rank": (rank + 1).astype(np.int64),
                          "model": np.where(no_train[user_index], "popularity", self.model).astype(object),
                          "cold_start_user": no_train[user_index], "cold_start_item": self.cold[items],
                          "dt": np.full(len(items), self.date, object)}, schema=CANDIDATES)
        name = f"part-{self.run_id}-{users[0]}.parquet"  # a block's first user names its file: a retry replaces it
        record = delta.write_file(self.store, TABLE, table, name, {"dt": self.date})
        return delta.record_columns([record], users=[len(users)])


def plan(store, cfg: Settings) -> dict:
    """The model's vectors, and the generation this run commits (0: the date is written and there is no --force)."""
    entry = registry.latest(store, "recommender")
    if cfg.model not in entry.variants:
        raise UserError(f"--model {cfg.model}: the latest recommender ({entry.version}) has "
                        f"{', '.join(entry.variants)}; train it with `showcase train_recommender --models {cfg.model}`")
    uri = entry.variants[cfg.model]
    current = delta.open_table(store, TABLE).transaction_version(app_id(cfg.date)) or 0 \
        if delta.exists(store, TABLE) else 0
    generation = 1 if not current else current + 1 if cfg.force else 0
    return {"users_uri": f"{uri}/users.parquet", "items_uri": f"{uri}/items.parquet", "version": entry.version,
            "generation": generation}


def app_id(date: str) -> str:
    return f"{TABLE}/dt={date}"


def rank_users(store, cfg: Settings, run_id: str, p: dict) -> list[dict]:
    """Ray Data: blocks of users -> ranking actors -> one data file per block; their add records."""
    import pyarrow.parquet as pq
    import ray

    start_ray()
    actors, resources, device = actor_plan(cfg.use_gpu, cfg.actors)
    fs, path = filesystem_for(p["users_uri"])
    total = pq.read_metadata(path, filesystem=fs).num_rows
    written = (ray.data.read_parquet(path, filesystem=fs)
               .map_batches(TopN, batch_size=cfg.users_per_block, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                            fn_constructor_kwargs={"root": store.root, "items_uri": p["items_uri"], "n": cfg.top_n,
                                                   "model": cfg.model, "run_id": run_id, "date": cfg.date,
                                                   "device": device}, **resources))
    records, progress, done = {}, Progress("recommend", "users", total), 0
    for batch in written.iter_batches(batch_size=None, batch_format="pyarrow"):
        for record in batch.to_pylist():
            records[record["path"]] = {k: record[k] for k in delta.RECORD_KEYS}
            done += int(record["users"])
        progress.update(done)
    return list(records.values())


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("recommend", Settings, argv)
    store = open_store(cfg.root)
    run_id, timer = new_run_id(), Timer()
    report = new_report("recommend", cfg, run_id)
    p = plan(store, cfg)
    if not p["generation"]:
        print(f"[recommend] {cfg.date} is already written; nothing to do (--force replaces it)", flush=True)
        return 0
    with timer("rank"):
        files = rank_users(store, cfg, run_id, p)
    with timer("commit"):
        committed = delta.commit(store, TABLE, files, CANDIDATES, run_id=run_id, stage="recommend",
                                 app_id=app_id(cfg.date), app_version=p["generation"], partition_by=["dt"],
                                 replace={"dt": cfg.date}, metadata={"model": cfg.model, "recommender": p["version"]})
    rows = sum(int(f["rows"]) for f in files)
    report.update(status="written", date=cfg.date, counts={"candidates": rows, "files": len(files)},
                  model=cfg.model, recommender=p["version"], table={"uri": store.uri(TABLE),
                                                                    "version": committed.version},
                  timings_s=timer.timings, versions=versions(), finished_at=utc_now())
    print(f"[recommend] {rows:,} candidates for {cfg.date} ({cfg.model} {p['version']}): {store.uri(TABLE)} version "
          f"{committed.version}; report: {store.write_report('recommend', run_id, report)}", flush=True)
    return 0


if __name__ == "__main__":
    exit_process(run("recommend", main))

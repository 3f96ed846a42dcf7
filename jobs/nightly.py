"""Nightly showcases: ``python -m jobs.nightly --root ROOT --candidates URI --date YYYY-MM-DD [--run-id ID] [--force]``.

A streaming pipeline on Ray Data; the driver plans and commits and never holds the candidates, users or photos:

1. Candidates (Parquet file or directory, or a Delta table, local or s3://: ``user_id``, ``business_id``, optional
   ``score`` and ``rank``; ``latest``: the date's partition of ``ROOT/candidates``, written by jobs.recommend) are
   read in blocks, once per wave of ``--units-per-wave`` units. Each pair gets its unit of work, a stable hash bucket
   of its business (``unit``, one of N = businesses buckets x a multiple sized so a unit holds about
   ``--pairs-per-part`` pairs), and a user group (the same for the user); only the pairs of the wave's units are kept,
   and those of units this run already wrote are dropped (resume).
2. Grouped by user group, each group reads its users' rows by key from the feature table
   ``features/<encoder_id>/users`` (one bucket partition) and attaches each pair's profile
   (showcase_core.features.profile: never the target business). Empty ids (``missing_field``), repeats of a pair
   (``duplicate_pair``: the best rank, then the highest score, is kept) and ``unknown_user`` are marked here.
3. Grouped by unit, an actor pool (one GPU per actor when the cluster has them) that holds only the DPP and PC²L
   models reads the unit's businesses' ground sets by key from ``features/<encoder_id>/businesses`` (once per
   business), marks ``unknown_business`` and ``no_photos``, picks photos and writes explanations in batches, and
   writes the unit's two data files atomically: ``showcases/dt=DATE/part-RUN-UNIT-of-N.parquet`` (rows sorted by
   business and user, small row groups: Serve reads one pair by key) and the same name under
   ``showcases_quarantine``.

Joins are on ids only: ground sets never travel with pairs (a business's is read once per unit), and the rows that
cross the shuffle carry a pair's two profile vectors and its history for the generator.

Memory: the driver holds one add record per unit (O(units)). Each wave's Ray Data pass runs in a worker process of
its own beside the driver (``run_wave``, a fresh process per wave), which holds that pass's executor state (Ray
Data's per-task and per-partition state grows with the partitions of a pass: about 85 KB of RSS per unit in one
pass, hence the waves; and the native memory a process running passes keeps, which grew the driver with the pairs
when the passes ran there); a shuffle aggregator holds a share of one wave's pairs; a profile task holds one user
group and the users rows it read; a writer actor holds the models, one unit's pairs and the ground sets of that
unit's businesses.

Exactly once: a unit's files are named by the run, the unit and N, so a retried unit (a killed worker) replaces its
own files, a wave whose pass lost a node (or a Ray Data actor it could not restart), or whose writer pool the cluster
no longer fits (it shrank under the pass), runs again for its units not yet written, and a rerun with the same
``--run-id`` (a killed driver) skips the units already written, once it finds them made from the same inputs (each
showcases file records the candidates' fingerprint, the models and the features' run). The driver checks that the
units' showcases and quarantined pairs add up to the candidate rows, then commits the date's quarantine and its
showcases, each in one Delta transaction that replaces the date's partition, under the application transaction
``<table>/dt=DATE`` with the publish generation (1, +1 per ``--force``). A committed date is a no-op without
``--force``; a run that finds its generation committed by another run exits 3; a date whose quarantine a run committed
without its showcases (stopped between the two) is refused to every other run.
"""

from __future__ import annotations

import json
import posixpath
import sys
import time
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import field_validator

from showcase_core import features as F
from showcase_core import tables as delta
from showcase_core.data.schema import SHOWCASES, SHOWCASES_QUARANTINE
from showcase_core.settings import iso_date
from showcase_core.showcase import PART, QUARANTINE_TABLE, TABLE, resolve_models
from showcase_core.store import StoreError, filesystem_for, new_run_id, utc_now

from .common import (RUN_ID, Progress, ShowcaseSettings, Timer, UserError, actor_plan, exit_process, new_report,
                     open_store, parse_args, read_parquet_files, run, setting, start_ray, test_barrier, versions)


class Settings(ShowcaseSettings):
    """Write the showcases of every candidate pair for one date, committed once (resumable, exactly once)."""

    candidates: str = setting("", "Parquet file or directory, or a Delta table, with user_id, business_id[, score, "
                                  "rank]; local or s3://; latest = the date's partition of ROOT/candidates "
                                  "(jobs.recommend)")
    date: str = setting("", "the date partition to write, YYYY-MM-DD")
    run_id: str = setting("", "reuse a run id to resume that run after a failure (empty: a new one)", pattern=RUN_ID)
    force: bool = setting(False, "replace a date that is already published")
    generator: Literal["pc2l", "none"] = setting("pc2l", "pc2l, or none: images-only showcases (the DPP's picks, "
                                                         "a null explanation)")
    pairs_per_part: int = setting(2048, "about this many pairs per unit of work (one output file, the unit of "
                                        "resuming)", ge=1)
    units_per_wave: int = setting(256, "units of work per Ray Data pass (bounds the executor's per-unit state and "
                                       "the pairs a pass's shuffles hold)", ge=1)
    batch_size: int = setting(256, "pairs per DPP and generation batch inside a writer", ge=1)
    actors: int = setting(0, "writers: 0 = one per GPU, or one per CPU on a CPU-only cluster", ge=0)
    use_gpu: bool = setting(False, "a GPU per writer even when none is up yet (autoscaling from zero)")

    @field_validator("candidates")
    @classmethod
    def _candidates_given(cls, value: str) -> str:
        if not value:
            raise ValueError("--candidates URI is required (Parquet or Delta with user_id, business_id[, score, rank])")
        return value

    @field_validator("date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        return iso_date("date", value)


PAIRS = pa.schema([("user_id", pa.string()), ("business_id", pa.string()), ("score", pa.float64()),
                   ("rank", pa.int64())])
PROFILED = pa.schema([*PAIRS, ("unit", pa.int64()), ("reason", pa.string()), ("has_history", pa.bool_()),
                      ("profile_photo", pa.list_(pa.float32())), ("profile_text", pa.list_(pa.float32())),
                      ("history", pa.list_(pa.list_(pa.float32())))])


def candidate_source(uri: str, date: str | None = None) -> tuple[list[str], object, int, pa.Schema, str]:
    """(file paths, filesystem, rows, schema, fingerprint) of the candidates, from Parquet footers or the Delta log
    only; of the ``dt = date`` partition only when ``date`` is given (the candidates table jobs.recommend writes).
    The fingerprint names the input's files (path, size and, for Parquet, modification time) and rows: a resumed run
    checks it against its first attempt's."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    try:
        fs, path = filesystem_for(uri)
    except StoreError as e:
        raise UserError(f"--candidates {uri}: {e}") from None
    info = fs.get_file_info(path)
    if info.type.name == "NotFound":
        raise UserError(f"--candidates {uri}: no such file or directory")
    try:
        if info.type.name == "Directory" and fs.get_file_info(posixpath.join(path, "_delta_log")).type.name \
                == "Directory":
            from deltalake import DeltaTable

            from showcase_core.tables import storage_options

            table = DeltaTable(uri, storage_options=storage_options(uri))
            filters = [("dt", "=", date)] if date else None
            paths = [filesystem_for(u)[1] for u in table.file_uris(file_pruning_predicate=filters)]
            schema = pa.schema(table.schema().to_arrow())
            actions = pa.table(table.get_add_actions(flatten=True))
            if date and actions.num_rows:
                actions = actions.filter(pc.equal(actions.column("partition.dt"), date))
            if date and not actions.num_rows:
                raise UserError(f"--candidates latest: no candidates for {date} in {uri} (run `showcase recommend "
                                f"--date {date}`)")
            rows = int(pc.sum(actions.column("num_records")).as_py() or 0) if actions.num_rows else 0
            files = zip(actions.column("path").to_pylist(), actions.column("size_bytes").to_pylist()) \
                if actions.num_rows else []
            return paths, fs, rows, schema, fingerprint(files, rows)
        dataset = ds.dataset(path, filesystem=fs, format="parquet", exclude_invalid_files=False)
        listed = [info] if info.type.name == "File" else fs.get_file_info(pafs.FileSelector(path, recursive=True))
        wanted, rows = set(dataset.files), dataset.count_rows()
        files = [(f.path, f.size, f.mtime_ns) for f in listed if f.path in wanted]
        return list(dataset.files), fs, rows, dataset.schema, fingerprint(files, rows)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"--candidates {uri}: not readable as Parquet ({str(e).splitlines()[0][:200]})") from None


def fingerprint(files, rows: int) -> str:
    """A short hash of an input's files (tuples of path, size, ...) and rows."""
    import hashlib

    return hashlib.sha256(json.dumps([sorted(list(f) for f in files), rows]).encode()).hexdigest()[:16]


def check_candidate_schema(uri: str, schema: pa.Schema) -> list[str]:
    missing = [c for c in ("user_id", "business_id") if c not in schema.names]
    if missing:
        raise UserError(f"--candidates {uri}: missing column {missing[0]!r} (need user_id, business_id[, score, rank])")
    for name, check in (("score", pa.types.is_floating), ("rank", pa.types.is_integer)):
        if name in schema.names and not (check(schema.field(name).type) or pa.types.is_integer(schema.field(name).type)
                                         or pa.types.is_null(schema.field(name).type)):
            kind = "a number" if name == "score" else "an integer"
            raise UserError(f"--candidates {uri}: column {name!r} must be {kind}, got {schema.field(name).type}")
    return [c for c in PAIRS.names if c in schema.names]


def key_pairs(batch: pa.Table, columns: list[str], units: int, groups: int, wave: tuple[int, int],
              done: list[int]) -> pa.Table:
    """Candidates in the PAIRS layout with their unit and user group: only those of the wave's units [lo, hi), and
    none of the units already written."""
    n = batch.num_rows
    out = {}
    for name, kind in zip(PAIRS.names, PAIRS.types):
        out[name] = batch.column(name).cast(kind) if name in columns else pa.nulls(n, kind)
    out["user_id"], out["business_id"] = (pc.fill_null(out[c], "") for c in ("user_id", "business_id"))
    unit = F.bucket_of(out["business_id"].to_pylist(), units)
    table = pa.table({**out, "unit": unit, "group": F.bucket_of(out["user_id"].to_pylist(), groups)})
    return table.filter(pa.array((unit >= wave[0]) & (unit < wave[1]) & ~np.isin(unit, done)))


def attach_profiles(group: pa.Table, root: str, encoder_id: str, meta: dict, with_history: bool) -> pa.Table:
    """One user group -> its pairs with their profiles (PROFILED), or the reason a pair gets none."""
    from showcase_core.store import Store

    order = pc.sort_indices(group, [("user_id", "ascending", "at_end"), ("business_id", "ascending", "at_end"),
                                    ("rank", "ascending", "at_end"), ("score", "descending", "at_end")])
    pairs = group.take(order).to_pylist()
    lookup = F.FeatureLookup(Store.open(root), encoder_id, meta)
    users = lookup.rows("users", [p["user_id"] for p in pairs if p["user_id"]])
    dim, max_history = lookup.dim, int(meta["max_history"])
    out, previous = {name: [] for name in PROFILED.names}, None
    for p in pairs:
        key = (p["user_id"], p["business_id"])
        reason = "missing_field" if not all(key) else "duplicate_pair" if key == previous else \
            "unknown_user" if key[0] not in users else None
        previous = key
        prof = None if reason else F.profile(users[key[0]], key[1], dim, max_history if with_history else 0)
        for name in PAIRS.names:
            out[name].append(p[name])
        out["unit"].append(p["unit"])
        out["reason"].append(reason)
        out["has_history"].append(bool(prof and prof.has_history))
        out["profile_photo"].append(None if prof is None else prof.photo)
        out["profile_text"].append(None if prof is None else prof.text)
        out["history"].append(None if prof is None else list(prof.history))
    return pa.table(out, schema=PROFILED)


class ShowcaseWriter:
    """Ray Data actor: one unit's profiled pairs -> its showcases and quarantine files; returns their add records."""

    def __init__(self, root: str, date: str, encoder_id: str, meta: dict, units: int, models: dict, k: int,
                 beams: int, batch_size: int, run_id: str, generated_at: str, run_inputs: dict, device: str,
                 decoding: dict):
        from showcase_core.showcase import ShowcaseAssembler
        from showcase_core.store import Store

        if device == "cpu":
            import torch

            torch.set_num_threads(1)  # one thread per writer: several share a node's cores with the data plane
        self.store, self.date, self.units = Store.open(root), date, units
        self.lookup = F.FeatureLookup(self.store, encoder_id, meta)
        self.assembler = ShowcaseAssembler(models["dpp"], models["generator"], k, beams, device, decoding)
        self.batch_size, self.run_id, self.generated_at = batch_size, run_id, generated_at
        self.schema = SHOWCASES.with_metadata({INPUTS_KEY: json.dumps(run_inputs)})  # what a resume checks

    def __call__(self, group: pa.Table) -> pa.Table:
        from showcase_core.showcase import QUARANTINE_TABLE, TABLE, PairInputs, part_name, quarantine_row

        started, before = time.perf_counter(), dict(self.assembler.seconds)
        unit = int(group.column("unit")[0].as_py())
        group = group.take(pc.sort_indices(group, [("business_id", "ascending"), ("user_id", "ascending")]))
        reasons = group.column("reason").to_pylist()
        pending = [i for i, r in enumerate(reasons) if r is None]
        businesses = self.lookup.rows("businesses", {group.column("business_id")[i].as_py() for i in pending})
        dim = self.lookup.dim
        inputs, quarantined, grounds = [], [], {}
        rows = group.drop_columns(["profile_photo", "profile_text", "history"]).to_pylist()
        for i, row in enumerate(rows):
            reason = reasons[i]
            if reason is None:
                found = businesses.get(row["business_id"])
                reason = "unknown_business" if found is None else "no_photos" if not found["image_ids"] else None
            if reason:
                quarantined.append(quarantine_row(row["user_id"], row["business_id"], reason))
                continue
            history = group.column("history")[i].values  # list<float32> of this pair's history vectors
            history = history.flatten().to_numpy(zero_copy_only=False) if history is not None else []
            profile = F.Profile(np.asarray(group.column("profile_photo")[i].values, np.float32),
                                np.asarray(group.column("profile_text")[i].values, np.float32),
                                F.matrix(np.asarray(history, np.float32), dim), [], row["has_history"])
            if row["business_id"] not in grounds:  # once per business of the unit
                grounds[row["business_id"]] = F.ground_set(businesses[row["business_id"]], dim)
            inputs.append(PairInputs(row["user_id"], row["business_id"], profile, grounds[row["business_id"]],
                                     row["score"], row["rank"]))
        if len({(p.user_id, p.business_id) for p in inputs}) != len(inputs):
            raise RuntimeError(f"unit {unit} of run {self.run_id} holds a pair twice")  # step 2 keeps one of each
        made, assembling = [], time.perf_counter()
        for start in range(0, len(inputs), self.batch_size):
            made += self.assembler.assemble(inputs[start:start + self.batch_size], self.run_id, self.generated_at)
        writing = time.perf_counter()
        name, partition = part_name(self.run_id, unit, self.units), {"dt": self.date}
        quarantine = pa.Table.from_pylist([{**q, "run_id": self.run_id, "dt": self.date} for q in quarantined],
                                          schema=SHOWCASES_QUARANTINE)
        records = [delta.write_file(self.store, QUARANTINE_TABLE, quarantine, name, partition)]  # first: see resume
        table = pa.Table.from_pylist([{**r, "dt": self.date} for r in made], schema=self.schema)
        records.append(delta.write_file(self.store, TABLE, table, name, partition, row_group_size=SHOWCASE_ROW_GROUP))
        by_reason: dict[str, int] = {}
        for q in quarantined:
            by_reason[q["reason"]] = by_reason.get(q["reason"], 0) + 1
        seconds = {"inputs": assembling - started, **{k: v - before[k] for k, v in self.assembler.seconds.items()},
                   "write": time.perf_counter() - writing}
        columns = delta.record_columns(records, unit=[unit, unit], table=[QUARANTINE_TABLE, TABLE])
        return pa.table({**columns, "cold_start": [0, sum(r["cold_start"] for r in made)],
                         "reasons": [json.dumps(by_reason), "{}"], "seconds": ["{}", json.dumps(seconds)]})


MAX_PARTITIONS = 4096  # shuffle partitions at most (beyond it a partition holds several groups or units)
POLL_S = 2.0  # how often a pass that has nothing to stream back checks that the cluster still fits it
WAVE_ATTEMPTS = 3  # passes over a wave lost to the cluster (a node, or a Ray Data actor that cannot restart) at most
SHOWCASE_ROW_GROUP = 256  # rows per row group of a showcases file: a lookup of one pair decodes one of them
INPUTS_KEY = b"showcase.inputs"  # a showcases file's metadata: the run's candidates (fingerprint), models, features


def list_run_parts(store, date: str, run_id: str) -> dict[int, str]:
    """{unit: path} of the showcases data files this run wrote for the date (committed or not)."""
    import pyarrow.fs as pafs

    from showcase_core.showcase import PART, TABLE

    folder = f"{TABLE}/dt={date}"
    if not store.exists(folder):
        return {}
    out = {}
    for info in store.fs.get_file_info(pafs.FileSelector(store.path(folder))):
        match = PART.match(posixpath.basename(info.path))
        if match and match["run"] == run_id:
            out[int(match["unit"])] = info.path
    return out


def plan_generation(store, date: str, run_id: str, force: bool) -> tuple[int, str | None]:
    """(the generation this run commits, or 0 when there is nothing to do; the run that published the date)."""
    from showcase_core.showcase import app_id

    def committed(table: str) -> int:
        return (delta.open_table(store, table).transaction_version(app_id(date, table)) or 0) \
            if delta.exists(store, table) else 0

    current, quarantined = committed(TABLE), committed(QUARANTINE_TABLE)
    publisher = delta.committed_by(store, TABLE, app_id(date), current) if current else None
    if quarantined > current:  # a run stopped between its two commits: only it can commit the showcases it wrote
        halfway = delta.committed_by(store, QUARANTINE_TABLE, app_id(date, QUARANTINE_TABLE), quarantined)
        if halfway != run_id:
            raise UserError(f"run {halfway} committed the quarantine of {date} but not its showcases (it stopped "
                            f"between the two commits): resume it with --run-id {halfway}")
        return quarantined, publisher
    if force and publisher == run_id:
        raise UserError(f"--force replaces {date} with a new run, and run {run_id} published it: pass a new "
                        "--run-id (or none)")
    if not current:
        return 1, None
    if not force:
        return 0, publisher
    return current + 1, publisher


def plan_units(store, cfg: Settings, run_id: str) -> dict:
    """Models, features, candidates and the units of work; the units an earlier attempt of this run wrote."""
    models = resolve_models(store, cfg.dpp_modality, cfg.generator_variant if cfg.generator == "pc2l" else None)
    meta = F.meta_for(store, models["encoder_id"], models["generator"])
    latest = cfg.candidates == "latest"  # the date's partition of the candidates table jobs.recommend writes
    candidates = store.uri("candidates") if latest else cfg.candidates
    if latest and not delta.exists(store, "candidates"):
        raise UserError(f"--candidates latest: no candidates table at {candidates} (run `showcase recommend`)")
    paths, candidates_fs, candidate_rows, schema, candidates_fp = candidate_source(candidates,
                                                                                  cfg.date if latest else None)
    columns = check_candidate_schema(cfg.candidates, schema)
    if not candidate_rows:
        raise UserError(f"--candidates {cfg.candidates}: no candidate pairs in it (0 rows): nothing to publish")
    user_buckets, business_buckets = (int(meta["tables"][k]["buckets"]) for k in ("users", "businesses"))
    units = business_buckets * F.buckets_for(candidate_rows, business_buckets * cfg.pairs_per_part)
    wave_rows = candidate_rows * min(units, cfg.units_per_wave) // units  # about a wave's pairs (units are balanced)
    groups = user_buckets * F.buckets_for(wave_rows, user_buckets * cfg.pairs_per_part)
    done_before = {unit: posixpath.basename(path) for unit, path in list_run_parts(store, cfg.date, run_id).items()}
    planned = {int(PART.match(name)["units"]) for name in done_before.values()}
    if planned - {units}:
        raise UserError(f"run {run_id} wrote its parts for {planned.pop()} units, this attempt plans {units} (the "
                        "candidates, --pairs-per-part or the features changed): use a new run id")
    generated_at = utc_now()
    inputs = {"candidates": candidates_fp, "dpp": models["dpp"], "generator": models["generator"],
              "features": meta["run_id"]}
    for name in done_before.values():  # resuming: the same inputs, and the first attempt's timestamp
        part = pq.ParquetFile(store.path(TABLE, f"dt={cfg.date}", name), filesystem=store.fs)
        written = json.loads((part.schema_arrow.metadata or {}).get(INPUTS_KEY, b"{}"))
        changed = next((k for k in inputs if written.get(k) != inputs[k]), None)
        if changed == "candidates":
            raise UserError(f"run {run_id} wrote its parts for other candidates than {cfg.candidates} holds now "
                            "(their files, sizes or rows changed): resume with the same candidates, or use a new "
                            "run id")
        if changed:
            raise UserError(f"run {run_id} wrote its parts with other {changed} ({written.get(changed)}; now "
                            f"{inputs[changed]}): resume before they change, or use a new run id")
        if part.metadata.num_rows:  # so every row of a run agrees (a unit of quarantined pairs only has none)
            generated_at = part.read_row_group(0, columns=["generated_at"]).column(0)[0].as_py()
            break
    waves = [(lo, min(lo + cfg.units_per_wave, units)) for lo in range(0, units, cfg.units_per_wave)]
    waves = [(lo, hi) for lo, hi in waves if any(u not in done_before for u in range(lo, hi))]
    print(f"[nightly] {cfg.date}: {candidate_rows:,} candidates in {units} units, {len(waves)} waves to run "
          f"({len(done_before)} units already written by run {run_id}); features {meta['run_id']}", file=sys.stderr,
          flush=True)
    return {"models": models, "meta": meta, "paths": paths, "fs": candidates_fs, "rows": candidate_rows,
            "columns": columns, "units": units, "groups": groups, "waves": waves, "done_before": done_before,
            "generated_at": generated_at, "inputs": inputs}


def write_units(store, cfg: Settings, run_id: str, plan: dict, records: dict, extras: dict) -> None:
    """One pass per wave of units, each run by ``run_wave`` in a Ray worker process of its own (beside the driver,
    one process per wave): the driver only collects the units' add records, streamed back as the units finish, so
    its memory is O(units) whatever the pairs, and a pass's executor state goes with the process that ran it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    models = plan["models"]
    start_ray()
    device = writer_pool(cfg)[2]
    writer_kwargs = {"root": store.root, "date": cfg.date, "encoder_id": models["encoder_id"], "meta": plan["meta"],
                     "units": plan["units"], "models": models, "k": cfg.k, "beams": cfg.beams,
                     "batch_size": cfg.batch_size, "run_id": run_id, "generated_at": plan["generated_at"],
                     "run_inputs": plan["inputs"], "device": device, "decoding": cfg.decoding()}
    source = {k: plan[k] for k in ("paths", "fs", "columns", "units", "groups")}
    # no CPU of its own (its passes' tasks take theirs), on the driver's node (an autoscaler's worker node may go),
    # a fresh process per wave (max_calls=1: the pass's native state goes with it), no retry by Ray: the loop below
    # runs a wave lost to the cluster again for its units not yet written; any other failure fails the run, which
    # resumes with its --run-id from the units written so far
    wave_task = ray.remote(num_cpus=0, max_calls=1, max_retries=0, num_returns="streaming")(run_wave).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True))
    progress, accounted = Progress("nightly", "pairs", plan["rows"]), sum(int(r["rows"]) for r in records.values())
    progress.update(accounted)
    for wave in plan["waves"]:
        for attempt in range(1, WAVE_ATTEMPTS + 1):
            finished = set(plan["done_before"]) | units_done(records)  # by an earlier run, or pass over this wave
            done = [unit for unit in range(*wave) if unit in finished]
            if attempt > 1 and len(done) == wave[1] - wave[0]:
                break  # the pass failed after its last unit came back
            actors, resources, _ = writer_pool(cfg)  # of the cluster as it is now (a lost node's CPUs are gone)
            try:
                stream = wave_task.remote(source | {"done": done}, wave, store.root, models, plan["meta"],
                                          writer_kwargs, actors, resources)
                for batch in watched_pass(stream, lambda: cluster_shrank(cfg, actors, resources)):
                    accounted += add_records(batch.to_pylist(), records, extras)
                    progress.update(accounted)
                break
            except Exception as err:  # a node, or a Ray Data actor a pass cannot restart, went away
                if attempt == WAVE_ATTEMPTS or not (isinstance(err, WaveLost) or lost_to_the_cluster(err)):
                    raise
                finished = set(plan["done_before"]) | units_done(records)
                left = sum(1 for unit in range(*wave) if unit not in finished)
                extras["passes_rerun"] += 1
                print(f"[nightly] units [{wave[0]}, {wave[1]}): the pass lost a node or an actor "
                      f"({str(err).strip().splitlines()[-1][:200]}); running its {left} units not yet written again "
                      f"(attempt {attempt + 1} of {WAVE_ATTEMPTS})", file=sys.stderr, flush=True)


def writer_pool(cfg: Settings) -> tuple[int, dict, str]:
    """(most writers, resources per writer, torch device) for the cluster's resources now."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    actors, resources, device = actor_plan(cfg.use_gpu, cfg.actors, cpus)
    if device == "cpu":  # half a CPU each: writers holding every CPU would starve the reads, profiles and shuffles
        # (of this run, or of another nightly on the same cluster) before them; on a single CPU the one writer
        # reserves none, since the pass's reads and shuffles take a whole CPU each and would wait for it forever
        resources = {"num_cpus": 0.5 if cpus >= 2 else 0}
    return actors, resources, device


def cluster_shrank(cfg: Settings, actors: int, resources: dict) -> str | None:
    """Why a pass's writer pool no longer fits the cluster as it is now, else None.

    A pass planned for more CPUs (or GPUs) than the cluster has left can wait forever: Ray retries a lost node's
    tasks, its writers keep their reservations, and when what is left of the CPUs cannot hold a whole CPU beside
    them, a retried read or shuffle task waits for one that only an autoscaler could bring."""
    now_actors, now_resources, _ = writer_pool(cfg)  # a pool planned for a cluster that grew since still fits it
    if now_actors < actors or resources.get("num_cpus", 0) > now_resources.get("num_cpus", 0):
        return (f"the cluster shrank: {actors} writers with {resources} each no longer fit it "
                f"({now_actors} with {now_resources} do)")
    return None


def watched_pass(stream, shrank, poll_s: float = POLL_S) -> Iterator:
    """The batches a pass streams back, as they come. While none is ready, every ``poll_s`` seconds ``shrank()`` says
    whether the cluster still fits the pass; when it does not, the pass is cancelled (force: its process goes, and
    with it the Ray Data actors it owns) and WaveLost is raised, so the wave runs again on a pool planned for the
    cluster as it is now."""
    import ray

    while True:
        ready, _ = ray.wait([stream], timeout=poll_s)
        if not ready:
            why = shrank()
            if why:
                ray.cancel(stream, force=True)
                raise WaveLost(why)
            continue
        try:
            ref = next(stream)
        except StopIteration:
            return
        yield ray.get(ref)


def units_done(records: dict) -> set[int]:
    """The units whose two files (showcases and quarantine) are written and accounted for."""
    return {unit for (table, unit) in records if table == TABLE and (QUARANTINE_TABLE, unit) in records}


def add_records(batch: list[dict], records: dict, extras: dict) -> int:
    """Keep the add records a wave streamed back (a unit's two files) and count their cold starts and reasons;
    returns the candidates they account for (a showcase or a quarantined pair each)."""
    for record in batch:
        records[(record["table"], int(record["unit"]))] = {k: record[k] for k in delta.RECORD_KEYS}
        extras["cold_start"] += int(record["cold_start"])
        for reason, n in json.loads(record["reasons"]).items():
            extras["reasons"][reason] = extras["reasons"].get(reason, 0) + n
        for phase, seconds in json.loads(record["seconds"]).items():
            extras["writer_seconds"][phase] = extras["writer_seconds"].get(phase, 0.0) + seconds
    return sum(int(record["rows"]) for record in batch)


def run_wave(source: dict, wave: tuple[int, int], root: str, models: dict, meta: dict, writer_kwargs: dict,
             actors: int, resources: dict):
    """One Ray Data pass over the candidates for the units [lo, hi) of a wave: key the pairs, attach profiles by
    user group, write each business unit's files; yields the units' add records as they finish. A pass's shuffles
    and executor state hold that wave's pairs and units only."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver prints the run's progress
    # the files the driver planned, by name, one block each: Ray's Parquet read would list them again and read
    # their footers in a pool of 32 helper actors (3 s of a 2-CPU machine before the first pair, for one file).
    # One shuffle partition per group and per unit: map_groups runs one task per partition and emits its output when
    # the task ends, so partitions of many units would write them all in one task, with no progress between
    files = ray.data.from_items([{"path": path} for path in source["paths"]],
                                override_num_blocks=max(1, len(source["paths"])))
    written = (files.map_batches(read_parquet_files, batch_size=1, batch_format="pyarrow",
                                 fn_kwargs={"fs": source["fs"], "columns": source["columns"]})
               .map_batches(key_pairs, batch_format="pyarrow",
                            fn_kwargs={"columns": source["columns"], "units": source["units"],
                                       "groups": source["groups"], "wave": wave, "done": source["done"]})
               .groupby("group", num_partitions=min(source["groups"], MAX_PARTITIONS)).map_groups(
                   attach_profiles, batch_format="pyarrow",
                   fn_kwargs={"root": root, "encoder_id": models["encoder_id"], "meta": meta,
                              "with_history": bool(models["generator"])})
               .groupby("unit", num_partitions=min(wave[1] - wave[0], MAX_PARTITIONS)).map_groups(
                   ShowcaseWriter, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                   fn_constructor_kwargs=writer_kwargs, **resources))
    try:
        yield from written.iter_batches(batch_size=None, batch_format="pyarrow")
    except Exception as err:  # Ray Data wraps its tasks' failures in an exception the caller cannot unpickle
        lost = lost_to_the_cluster(err)
        if lost:
            raise WaveLost(f"{lost} in the pass over units [{wave[0]}, {wave[1]})") from None
        raise


class WaveLost(RuntimeError):
    """A wave's pass failed because the cluster lost a node, or an actor of the pass that could not be restarted."""


def lost_to_the_cluster(err: BaseException | None) -> str | None:
    """The name of Ray's error for a lost node, actor, worker or object when an exception, or one it was raised
    from, is one; else None."""
    import ray.exceptions as rex

    lost, seen = (rex.ActorDiedError, rex.NodeDiedError, rex.WorkerCrashedError, rex.ObjectLostError), set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for kind in lost:
            # a Ray Data task's RayTaskError(ActorDiedError) may reach the pass unpickled: its text names the class
            if isinstance(err, kind) or isinstance(getattr(err, "cause", None), kind) or (
                    isinstance(err, rex.UnserializableException) and f"ray.exceptions.{kind.__name__}: " in str(err)):
                return kind.__name__
        err = err.__cause__ or err.__context__
    return None


def publish(store, cfg: Settings, run_id: str, generation: int, plan: dict, records: dict, report: dict,
            timer: Timer) -> dict:
    """Check that every candidate is accounted for, then commit the date (quarantine first, then showcases)."""
    from showcase_core.showcase import commit_date

    showcases = [r for (table, _), r in sorted(records.items()) if table == TABLE]
    quarantine = [r for (table, _), r in sorted(records.items()) if table == QUARANTINE_TABLE]
    rows, quarantined = sum(int(r["rows"]) for r in showcases), sum(int(r["rows"]) for r in quarantine)
    if rows + quarantined != plan["rows"] or len(showcases) != len(quarantine):
        raise RuntimeError(f"run {run_id}: {rows:,} showcases + {quarantined:,} quarantined != {plan['rows']:,} "
                           "candidates: a unit is missing or incomplete; rerun with the same --run-id")
    reads = {name: store.table_version(name)["version"] for name in ("reviews", "images")}
    reads.update({f"features/{k}": v["version"] for k, v in plan["meta"]["tables"].items()})
    test_barrier(run_id)
    with timer("commit"):
        try:
            committed = commit_date(store, cfg.date, run_id, generation, showcases, quarantine, reads,
                                    {"generation": generation, "candidates": cfg.candidates})
        except delta.LostRace as e:
            report.update(status="lost_race", winner_run_id=e.winner, finished_at=utc_now())
            store.write_report("nightly", run_id, report)
            raise
    return {"version": committed.version, "showcases": rows, "quarantined": quarantined, "parts": len(showcases)}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("nightly", Settings, argv)
    store = open_store(cfg.root)
    run_id = cfg.run_id or new_run_id()
    report, timer = new_report("nightly", cfg, run_id), Timer()
    generation, publisher = plan_generation(store, cfg.date, run_id, cfg.force)
    if not generation:
        print(f"[nightly] {cfg.date} is already published (run {publisher}); nothing to do"
              + ("" if publisher == run_id else " (--force replaces it)"), flush=True)
        if publisher != run_id:  # (the publisher's own report stays as it was)
            report.update(status="already_published", published_run_id=publisher, finished_at=utc_now())
            store.write_report("nightly", run_id, report)
        return 0
    plan = plan_units(store, cfg, run_id)
    records, extras = resume_records(store, cfg.date, plan["done_before"])
    with timer("showcases"):
        write_units(store, cfg, run_id, plan, records, extras)
    with timer("publish"):
        out = publish(store, cfg, run_id, generation, plan, records, report, timer)
    counts = {"candidates": plan["rows"], "showcases": out["showcases"], "quarantined": out["quarantined"],
              "quarantined_by_reason": extras["reasons"], "units": plan["units"], "parts": out["parts"],
              "parts_resumed": len(plan["done_before"]), "cold_start": extras["cold_start"],
              "passes_rerun": extras["passes_rerun"]}
    # the writers' own time by phase over this run's units (all writers together; the rest of a pass is reading,
    # profiles and shuffles in Ray Data tasks)
    writer_seconds = {phase: round(s, 3) for phase, s in extras["writer_seconds"].items()}
    report.update(status="published", date=cfg.date, counts=counts, models=plan["models"], generation=generation,
                  features=plan["meta"]["run_id"], table={"uri": store.uri(TABLE), "version": out["version"]},
                  replaced_run_id=publisher, timings_s=timer.timings, writer_seconds=writer_seconds,
                  versions=versions(), finished_at=utc_now())
    seconds = timer.timings.get("showcases")
    rate = f" ({out['showcases'] / seconds:.1f} pairs/s)" if seconds and not plan["done_before"] else ""
    print(f"[nightly] published {out['showcases']:,} showcases for {cfg.date}{rate}: {store.uri(TABLE)} version "
          f"{out['version']}; quarantined {out['quarantined']:,} {extras['reasons'] or ''}; "
          f"report: {store.write_report('nightly', run_id, report)}", flush=True)
    if writer_seconds:
        print("[nightly] writers' time: " + ", ".join(f"{phase} {s:,.1f}s" for phase, s in writer_seconds.items()),
              flush=True)
    return 0


def resume_records(store, date: str, done_before: dict) -> tuple[dict, dict]:
    """The add records and counts of the units an earlier attempt wrote: {(table, unit): record}, extras."""
    records, partition = {}, {"dt": date}
    extras = {"cold_start": 0, "reasons": {}, "passes_rerun": 0, "writer_seconds": {}}
    for unit, name in done_before.items():
        records[(TABLE, unit)] = delta.file_record(store, TABLE, name, partition)
        records[(QUARANTINE_TABLE, unit)] = delta.file_record(store, QUARANTINE_TABLE, name, partition)
        _count_done(store, name, date, extras)
    return records, extras


def _count_done(store, name: str, date: str, extras: dict) -> None:
    """Add a unit written by an earlier attempt to the run's counts (its cold starts and quarantine reasons)."""
    cold = pq.read_table(store.path(TABLE, f"dt={date}", name), filesystem=store.fs, columns=["cold_start"])
    extras["cold_start"] += int(pc.sum(cold.column("cold_start")).as_py() or 0)
    reasons = pq.read_table(store.path(QUARANTINE_TABLE, f"dt={date}", name), filesystem=store.fs, columns=["reason"])
    for reason in reasons.column("reason").to_pylist():
        extras["reasons"][reason] = extras["reasons"].get(reason, 0) + 1


if __name__ == "__main__":
    exit_process(run("nightly", main))

"""Nightly showcases: ``python -m jobs.nightly --root ROOT --candidates URI --date YYYY-MM-DD [--run-id ID] [--force]``.

Candidates (Parquet: ``user_id``, ``business_id``, optional ``score``) -> checked against the published tables
(unknown users/businesses, businesses without photos, empty ids and repeated pairs go to quarantine with a reason) ->
sorted by business and user and cut into parts of ``--pairs-per-part`` pairs -> Ray Data over the parts with an actor
pool (one GPU per actor when the cluster has them) whose actors load the DPP and PC²L models once and share the
lookups (photo features, users' history) through Ray's object store -> each part's showcase rows written atomically
as ``ROOT/showcases/dt=DATE/run=RUN_ID/part-NNNNN.parquet``.

Exactly once: a part is named by its index and written in one atomic write, so a retried part (a killed worker)
replaces itself; a rerun with the same ``--run-id`` (a killed driver) skips the parts already written. After every
part is there and the counts add up, ``dt=DATE/_MANIFEST.json`` is written, then ``showcases/LATEST`` (unless an
older date is being redone). A date already published is left alone unless ``--force``; then the new run replaces it
and the old run's files are deleted after the new manifest is in place.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import posixpath
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from showcase_core.store import StoreError, filesystem_for, new_run_id, utc_now

from .common import (Progress, Timer, UserError, actor_plan, new_report, open_store, parse_args, run, start_ray,
                     versions)

DEFAULTS = {
    "root": None,
    "candidates": "",  # Parquet file or directory of (user_id, business_id[, score]), local or s3://
    "date": "",  # YYYY-MM-DD, the partition to write
    "run_id": "",  # reuse a run id to resume that run after a failure
    "force": False,  # replace a date that is already published
    "k": 3,
    "beams": 2,
    "dpp_modality": "img+text",
    "generator_variant": "pc2l",
    "pairs_per_part": 2048,
    "batch_size": 256,  # pairs per DPP + generation batch inside an actor
    "actors": 0,  # 0 = one per GPU, or one per CPU on a CPU-only cluster (Ray gives a 1-CPU actor one torch thread)
    "use_gpu": False,  # ask for a GPU per actor even when none is up yet (autoscaling from zero)
}
QUARANTINE_SCHEMA = pa.schema([("user_id", pa.string()), ("business_id", pa.string()), ("reason", pa.string()),
                               ("detail", pa.string())])


def read_candidates(uri: str) -> list[dict]:
    fs, path = filesystem_for(uri)
    try:
        table = pq.read_table(path, filesystem=fs)
    except FileNotFoundError:
        raise UserError(f"--candidates {uri}: no such file or directory") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"--candidates {uri}: not readable as Parquet ({str(e).splitlines()[0][:200]})") from None
    missing = [c for c in ("user_id", "business_id") if c not in table.column_names]
    if missing:
        raise UserError(f"--candidates {uri}: missing column {missing[0]!r} (need user_id, business_id[, score])")
    columns = {c: table.column(c).cast(pa.string()).to_pylist() for c in ("user_id", "business_id")}
    if "score" in table.column_names:
        try:
            columns["score"] = table.column("score").cast(pa.float64()).to_pylist()
        except pa.ArrowInvalid:
            raise UserError(f"--candidates {uri}: column 'score' must be numeric") from None
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def resolve_models(store, cfg: dict) -> dict:
    """The DPP and PC²L models and their encoder, checked before anything loads."""
    found = {}
    for name, hint in (("dpp", "train_dpp"), ("pc2l", "train_pc2l")):
        try:
            found[name] = store.read_json(f"models/{name}/_LATEST.json")
        except StoreError:
            raise UserError(f"no trained {name} model under {store.root}/models/{name} (run `showcase {hint}`)") from None
    dpp = found["dpp"]["models"].get(cfg["dpp_modality"])
    generator = found["pc2l"]["models"].get(cfg["generator_variant"])
    if not dpp:
        raise UserError(f"the latest DPP has no {cfg['dpp_modality']!r} model (has {', '.join(found['dpp']['models'])})")
    if not generator:
        raise UserError(f"the latest PC2L has no {cfg['generator_variant']!r} variant "
                        f"(has {', '.join(found['pc2l']['models'])})")
    if found["dpp"]["encoder_id"] != found["pc2l"]["encoder_id"]:
        raise UserError(f"the DPP uses encoder {found['dpp']['encoder_id']} but PC2L uses {found['pc2l']['encoder_id']}: "
                        "retrain one on the same embeddings")
    encoder_id = found["dpp"]["encoder_id"]
    for uri in (dpp, generator):
        fs, base = filesystem_for(uri)
        if fs.get_file_info(posixpath.join(base, "card.json")).type.name == "NotFound":
            raise UserError(f"model files missing at {uri}")
    if not store.exists(f"embeddings/{encoder_id}/_ENCODER.json"):
        raise UserError(f"no embeddings of encoder {encoder_id} under {store.root} (run `showcase embed`)")
    return {"dpp": dpp, "generator": generator, "encoder_id": encoder_id}


class ShowcaseWriter:
    """Ray Data actor: parts of checked pairs -> showcase rows, one atomic Parquet file per part."""

    def __init__(self, root: str, run_dir: str, context: list, models: dict, k: int, beams: int, batch_size: int,
                 run_id: str, generated_at: str, device: str):
        import ray

        from showcase_core.showcase import ShowcaseAssembler
        from showcase_core.store import Store

        self.store, self.run_dir = Store.open(root), run_dir
        self.assembler = ShowcaseAssembler(ray.get(context[0]), models["dpp"], models["generator"], k, beams, device)
        self.batch_size, self.run_id, self.generated_at = batch_size, run_id, generated_at

    def __call__(self, batch: dict) -> dict:
        import io

        import numpy as np

        from showcase_core.data.schema import SHOWCASES
        from showcase_core.store import write_bytes_atomic

        written = []
        for unit, users, businesses, scores in zip(batch["unit"], batch["user_ids"], batch["business_ids"],
                                                   batch["scores"]):
            pairs = [{"user_id": u, "business_id": b, "score": None if s != s else s}  # NaN = no score
                     for u, b, s in zip(users, businesses, scores)]
            rows = []
            for start in range(0, len(pairs), self.batch_size):
                rows += self.assembler.assemble(pairs[start:start + self.batch_size], self.run_id, self.generated_at)
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows, schema=SHOWCASES), buf, compression="zstd")
            write_bytes_atomic(self.store.fs, self.store.path(self.run_dir, f"part-{int(unit):05d}.parquet"),
                               buf.getvalue())
            written.append(len(rows))
        return {"unit": np.asarray(batch["unit"]), "rows": np.asarray(written)}


def list_run_parts(store, run_dir: str) -> dict[int, str]:
    import pyarrow.fs as pafs

    if not store.exists(run_dir):
        return {}
    infos = store.fs.get_file_info(pafs.FileSelector(store.path(run_dir)))
    out = {}
    for info in infos:
        name = posixpath.basename(info.path)
        if name.startswith("part-") and name.endswith(".parquet"):
            out[int(name[5:-8])] = info.path
    return out


def main(argv: list[str] | None = None) -> int:
    from showcase_core.showcase import build_context, check_pairs, date_dir, latest_date, manifest_path

    cfg = parse_args("nightly", DEFAULTS, argv)
    if not cfg["candidates"]:
        raise UserError("--candidates URI is required (Parquet with user_id, business_id[, score])")
    try:
        date = dt.date.fromisoformat(cfg["date"]).isoformat()
    except ValueError:
        raise UserError(f"--date must be YYYY-MM-DD, got {cfg['date']!r}") from None
    if cfg["k"] < 1 or cfg["beams"] < 1 or cfg["pairs_per_part"] < 1 or cfg["batch_size"] < 1:
        raise UserError("--k, --beams, --pairs-per-part and --batch-size must be >= 1")
    store = open_store(cfg["root"])
    run_id = cfg["run_id"] or new_run_id()
    report = new_report("nightly", cfg, run_id)
    if store.exists(manifest_path(date)) and not cfg["force"]:
        published = store.read_json(manifest_path(date))
        print(f"[nightly] {date} is already published (run {published['run_id']}, {published['rows']:,} showcases); "
              "nothing to do (--force replaces it)", flush=True)
        report.update(status="already_published", published_run_id=published["run_id"], finished_at=utc_now())
        store.write_report("nightly", run_id, report)
        return 0
    models = resolve_models(store, cfg)
    candidates = read_candidates(cfg["candidates"])
    timer = Timer()
    run_dir = f"{date_dir(date)}/run={run_id}"
    state_path = f"{run_dir}/_RUN.json"
    if store.exists(state_path):  # resuming: keep the first attempt's timestamp, so every row of a run agrees
        state = store.read_json(state_path)
        if state["candidates"] != cfg["candidates"] or state["models"] != models:
            raise UserError(f"run {run_id} was started with other candidates or models; use a new --run-id")
    else:
        state = {"run_id": run_id, "date": date, "candidates": cfg["candidates"], "models": models,
                 "generated_at": utc_now()}
        store.write_json(state_path, state)

    with timer("context"):
        context = build_context(store, models["encoder_id"])
        good, quarantined = check_pairs(candidates, context)
    good.sort(key=lambda p: (p["business_id"], p["user_id"]))  # a part shares businesses: their ground sets
    units = [good[i:i + cfg["pairs_per_part"]] for i in range(0, len(good), cfg["pairs_per_part"])]
    done_before = list_run_parts(store, run_dir)
    todo = [i for i in range(len(units)) if i not in done_before]
    reasons: dict[str, int] = {}
    for q in quarantined:
        reasons[q["reason"]] = reasons.get(q["reason"], 0) + 1
    print(f"[nightly] {date}: {len(candidates):,} candidates, {len(good):,} to showcase in {len(units)} parts "
          f"({len(units) - len(todo)} already written by run {run_id}), {len(quarantined):,} quarantined "
          f"{reasons or ''}", file=sys.stderr, flush=True)
    store.write_parquet(f"{run_dir}/quarantine.parquet", pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA))

    if todo:
        import ray

        start_ray()
        actors, resources, device = actor_plan(cfg["use_gpu"], cfg["actors"],
                                               max(1, int(ray.cluster_resources().get("CPU", 1))))
        items = [{"unit": i, "user_ids": [p["user_id"] for p in units[i]],
                  "business_ids": [p["business_id"] for p in units[i]],
                  "scores": [float("nan") if p.get("score") is None else p["score"] for p in units[i]]} for i in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShowcaseWriter, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(actors, len(items))),
            fn_constructor_kwargs={"root": store.root, "run_dir": run_dir, "context": [ray.put(context)],
                                   "models": models, "k": cfg["k"], "beams": cfg["beams"],
                                   "batch_size": cfg["batch_size"], "run_id": run_id,
                                   "generated_at": state["generated_at"], "device": device},
            **resources)
        progress = Progress("nightly", "pairs", sum(len(units[i]) for i in todo))
        pairs_done = 0
        with timer("showcases"):
            for stats in ds.iter_batches(batch_size=None, batch_format="numpy"):
                pairs_done += int(stats["rows"].sum())
                progress.update(pairs_done)

    with timer("publish"):
        parts = list_run_parts(store, run_dir)
        missing = [i for i in range(len(units)) if i not in parts]
        if missing:
            raise RuntimeError(f"parts {missing[:5]} of run {run_id} were not written")
        entries, seen, rows, cold_start = [], set(), 0, 0
        for i in range(len(units)):
            with store.fs.open_input_file(parts[i]) as f:
                data = f.read()
            table = pq.read_table(pa.BufferReader(data), columns=["user_id", "business_id", "cold_start"])
            keys = set(zip(table.column("user_id").to_pylist(), table.column("business_id").to_pylist()))
            expected = {(p["user_id"], p["business_id"]) for p in units[i]}
            if keys != expected or table.num_rows != len(units[i]) or keys & seen:
                raise RuntimeError(f"part {i} of run {run_id} does not hold exactly its {len(units[i])} pairs")
            seen |= keys
            rows += table.num_rows
            cold_start += sum(table.column("cold_start").to_pylist())
            entries.append({"path": f"{run_dir}/part-{i:05d}.parquet", "rows": table.num_rows, "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
        manifest = {"date": date, "run_id": run_id, "rows": rows, "parts": entries, "models": models,
                    "quarantined": len(quarantined), "quarantine": f"{run_dir}/quarantine.parquet",
                    "generated_at": state["generated_at"], "published_at": utc_now()}
        previous = store.read_json(manifest_path(date)) if store.exists(manifest_path(date)) else None
        store.write_json(manifest_path(date), manifest)
        try:
            newest = latest_date(store)
        except StoreError:
            newest = ""
        if date >= newest:
            store.write_json("showcases/LATEST", {"date": date, "manifest": manifest_path(date), "run_id": run_id})
        if previous and previous["run_id"] != run_id:  # --force: the replaced run's files go once nothing points there
            store.delete_dir(f"{date_dir(date)}/run={previous['run_id']}")
    counts = {"candidates": len(candidates), "showcases": rows, "quarantined": len(quarantined),
              "quarantined_by_reason": reasons, "parts": len(units), "parts_resumed": len(units) - len(todo),
              "cold_start": cold_start}
    report.update(status="published", date=date, counts=counts, models=models, manifest=store.uri(manifest_path(date)),
                  timings_s=timer.timings, versions=versions(), finished_at=utc_now())
    seconds = timer.timings.get("showcases")
    rate = f" ({counts['showcases'] / seconds:.1f} pairs/s)" if seconds and not counts["parts_resumed"] else ""
    print(f"[nightly] published {rows:,} showcases for {date}{rate}: {store.uri(manifest_path(date))}; "
          f"quarantined {len(quarantined):,}; report: {store.write_report('nightly', run_id, report)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run("nightly", main))

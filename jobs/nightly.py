"""Nightly showcases: ``python -m jobs.nightly --root ROOT --candidates URI --date YYYY-MM-DD [--run-id ID] [--force]``.

Candidates (Parquet: ``user_id``, ``business_id``, optional ``score``) -> checked against the published tables
(unknown users/businesses, businesses without photos, empty ids and repeated pairs go to the
``showcases_quarantine`` table with a reason) -> sorted by business and user and cut into parts of
``--pairs-per-part`` pairs -> Ray Data over the parts with an actor pool (one GPU per actor when the cluster has
them) whose actors load the DPP and PC²L models once and share the lookups (photo features, users' history) through
Ray's object store -> each part's rows written atomically as a data file ``ROOT/showcases/dt=DATE/part-RUN-NNNNN``.

Exactly once: a part is named by the run and its index, so a retried part (a killed worker) replaces itself and a
rerun with the same ``--run-id`` (a killed driver) skips the parts already written. The driver then commits the
date's quarantine and its showcases, each in one Delta transaction that replaces the date's partition, under the
application transaction ``<table>/dt=DATE`` with the publish generation (1, +1 per ``--force``). A committed date
is a no-op without ``--force``; a run that finds its generation committed by another run exits 3.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from showcase_core import tables as delta
from showcase_core.data.schema import SHOWCASES, SHOWCASES_QUARANTINE
from showcase_core.generation import DECODING
from showcase_core.store import StoreError, filesystem_for, new_run_id, utc_now

from .common import (Progress, Timer, UserError, actor_plan, new_report, open_store, parse_args, run, start_ray,
                     test_barrier, versions)

DEFAULTS = {
    "root": None,
    "candidates": "",  # Parquet file or directory of (user_id, business_id[, score]), local or s3://
    "date": "",  # YYYY-MM-DD, the partition to write
    "run_id": "",  # reuse a run id to resume that run after a failure
    "force": False,  # replace a date that is already published
    "k": 3,
    "beams": 2,
    **DECODING,  # no_repeat_ngram_size, length_penalty, max_sentences: the explanation's repetition guards
    "dpp_modality": "img+text",
    "generator": "pc2l",  # pc2l, or none: images-only showcases (the DPP's picks, a null explanation)
    "generator_variant": "pc2l",
    "pairs_per_part": 2048,
    "batch_size": 256,  # pairs per DPP + generation batch inside an actor
    "actors": 0,  # 0 = one per GPU, or one per CPU on a CPU-only cluster (Ray gives a 1-CPU actor one torch thread)
    "use_gpu": False,  # ask for a GPU per actor even when none is up yet (autoscaling from zero)
}


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
    """The DPP and PC²L models and their encoder, checked before anything loads (no PC²L with --generator none)."""
    generator_kind = cfg.get("generator", "pc2l")  # serve shares this check and always generates
    if generator_kind not in ("pc2l", "none"):
        raise UserError(f"--generator must be pc2l or none, got {generator_kind!r}")
    found = {}
    for name, hint in (("dpp", "train_dpp"), ("pc2l", "train_pc2l"))[:1 if generator_kind == "none" else 2]:
        try:
            found[name] = store.read_json(f"models/{name}/_LATEST.json")
        except StoreError:
            raise UserError(f"no trained {name} model under {store.root}/models/{name} (run `showcase {hint}`)") from None
    dpp = found["dpp"]["models"].get(cfg["dpp_modality"])
    if not dpp:
        raise UserError(f"the latest DPP has no {cfg['dpp_modality']!r} model (has {', '.join(found['dpp']['models'])})")
    generator = None
    if "pc2l" in found:
        generator = found["pc2l"]["models"].get(cfg["generator_variant"])
        if not generator:
            raise UserError(f"the latest PC2L has no {cfg['generator_variant']!r} variant "
                            f"(has {', '.join(found['pc2l']['models'])})")
    if generator and found["dpp"]["encoder_id"] != found["pc2l"]["encoder_id"]:
        raise UserError(f"the DPP uses encoder {found['dpp']['encoder_id']} but PC2L uses {found['pc2l']['encoder_id']}: "
                        "retrain one on the same embeddings")
    encoder_id = found["dpp"]["encoder_id"]
    for uri in filter(None, (dpp, generator)):
        fs, base = filesystem_for(uri)
        if fs.get_file_info(posixpath.join(base, "card.json")).type.name == "NotFound":
            raise UserError(f"model files missing at {uri}")
    if not store.exists(f"embeddings/{encoder_id}/_ENCODER.json"):
        raise UserError(f"no embeddings of encoder {encoder_id} under {store.root} (run `showcase embed`)")
    return {"dpp": dpp, "generator": generator, "encoder_id": encoder_id}


class ShowcaseWriter:
    """Ray Data actor: parts of checked pairs -> showcase rows, one atomic data file per part; returns add records."""

    def __init__(self, root: str, date: str, context: list, models: dict, k: int, beams: int, batch_size: int,
                 run_id: str, generated_at: str, device: str, decoding: dict):
        import ray

        from showcase_core.showcase import ShowcaseAssembler
        from showcase_core.store import Store

        self.store, self.date = Store.open(root), date
        self.assembler = ShowcaseAssembler(ray.get(context[0]), models["dpp"], models["generator"], k, beams, device,
                                           decoding)
        self.batch_size, self.run_id, self.generated_at = batch_size, run_id, generated_at

    def __call__(self, batch: dict) -> dict:
        from showcase_core.showcase import TABLE

        written = []
        for unit, users, businesses, scores in zip(batch["unit"], batch["user_ids"], batch["business_ids"],
                                                   batch["scores"]):
            pairs = [{"user_id": u, "business_id": b, "score": None if s != s else s}  # NaN = no score
                     for u, b, s in zip(users, businesses, scores)]
            rows = []
            for start in range(0, len(pairs), self.batch_size):
                rows += self.assembler.assemble(pairs[start:start + self.batch_size], self.run_id, self.generated_at)
            table = pa.Table.from_pylist([{**r, "dt": self.date} for r in rows], schema=SHOWCASES)
            written.append(delta.write_file(self.store, TABLE, table, part_name(self.run_id, int(unit)),
                                            {"dt": self.date}))
        return delta.record_columns(written, unit=batch["unit"])


def part_name(run_id: str, unit: int) -> str:
    return f"part-{run_id}-{unit:05d}.parquet"


def list_run_parts(store, date: str, run_id: str) -> dict[int, str]:
    """{unit: path} of the data files this run has written for the date (committed or not)."""
    import pyarrow.fs as pafs

    from showcase_core.showcase import TABLE

    folder = f"{TABLE}/dt={date}"
    if not store.exists(folder):
        return {}
    prefix, out = f"part-{run_id}-", {}
    for info in store.fs.get_file_info(pafs.FileSelector(store.path(folder))):
        name = posixpath.basename(info.path)
        if name.startswith(prefix) and name.endswith(".parquet") and name[len(prefix):-8].isdigit():
            out[int(name[len(prefix):-8])] = info.path
    return out


def plan_generation(store, date: str, run_id: str, force: bool) -> tuple[int, str | None]:
    """(the generation this run commits, or 0 when there is nothing to do; the run that published the date)."""
    from showcase_core.showcase import TABLE, app_id

    current = delta.open_table(store, TABLE).transaction_version(app_id(date)) or 0 \
        if delta.exists(store, TABLE) else 0
    if not current:
        return 1, None
    publisher = delta.committed_by(store, TABLE, app_id(date), current)
    if publisher == run_id or not force:
        return 0, publisher
    return current + 1, publisher


def main(argv: list[str] | None = None) -> int:
    from showcase_core.showcase import QUARANTINE_TABLE, TABLE, build_context, check_pairs, commit_date

    cfg = parse_args("nightly", DEFAULTS, argv)
    if not cfg["candidates"]:
        raise UserError("--candidates URI is required (Parquet with user_id, business_id[, score])")
    try:
        date = dt.date.fromisoformat(cfg["date"]).isoformat()
    except ValueError:
        raise UserError(f"--date must be YYYY-MM-DD, got {cfg['date']!r}") from None
    if cfg["k"] < 1 or cfg["beams"] < 1 or cfg["pairs_per_part"] < 1 or cfg["batch_size"] < 1:
        raise UserError("--k, --beams, --pairs-per-part and --batch-size must be >= 1")
    if cfg["no_repeat_ngram_size"] < 0 or cfg["max_sentences"] < 0 or cfg["length_penalty"] <= 0:
        raise UserError("--no-repeat-ngram-size and --max-sentences must be >= 0 (0 = off), --length-penalty > 0")
    store = open_store(cfg["root"])
    run_id = cfg["run_id"] or new_run_id()
    report = new_report("nightly", cfg, run_id)
    generation, publisher = plan_generation(store, date, run_id, cfg["force"])
    if not generation:
        print(f"[nightly] {date} is already published (run {publisher}); nothing to do"
              + ("" if publisher == run_id else " (--force replaces it)"), flush=True)
        report.update(status="already_published", published_run_id=publisher, finished_at=utc_now())
        store.write_report("nightly", run_id, report)
        return 0
    models = resolve_models(store, cfg)
    candidates = read_candidates(cfg["candidates"])
    timer = Timer()
    done_before = list_run_parts(store, date, run_id)
    generated_at = utc_now()
    if done_before:  # resuming: keep the first attempt's timestamp, so every row of a run agrees
        first = pq.read_table(next(iter(done_before.values())), filesystem=store.fs, columns=["generated_at"])
        generated_at = first.column("generated_at")[0].as_py() if first.num_rows else generated_at

    with timer("context"):
        context = build_context(store, models["encoder_id"])
        good, quarantined = check_pairs(candidates, context)
    good.sort(key=lambda p: (p["business_id"], p["user_id"]))  # a part shares businesses: their ground sets
    units = [good[i:i + cfg["pairs_per_part"]] for i in range(0, len(good), cfg["pairs_per_part"])]
    todo = [i for i in range(len(units)) if i not in done_before]
    reasons: dict[str, int] = {}
    for q in quarantined:
        reasons[q["reason"]] = reasons.get(q["reason"], 0) + 1
    print(f"[nightly] {date}: {len(candidates):,} candidates, {len(good):,} to showcase in {len(units)} parts "
          f"({len(units) - len(todo)} already written by run {run_id}), {len(quarantined):,} quarantined "
          f"{reasons or ''}", file=sys.stderr, flush=True)
    quarantine_file = delta.write_file(
        store, QUARANTINE_TABLE, pa.Table.from_pylist([{**q, "run_id": run_id, "dt": date} for q in quarantined],
                                                      schema=SHOWCASES_QUARANTINE),
        f"part-{run_id}.parquet", {"dt": date})

    records = {i: delta.file_record(store, TABLE, posixpath.basename(path), {"dt": date})
               for i, path in done_before.items() if i < len(units)}
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
            fn_constructor_kwargs={"root": store.root, "date": date, "context": [ray.put(context)],
                                   "models": models, "k": cfg["k"], "beams": cfg["beams"],
                                   "batch_size": cfg["batch_size"], "run_id": run_id,
                                   "generated_at": generated_at, "device": device,
                                   "decoding": {key: cfg[key] for key in DECODING}},
            **resources)
        progress = Progress("nightly", "pairs", sum(len(units[i]) for i in todo))
        pairs_done = 0
        with timer("showcases"):
            for written in ds.iter_batches(batch_size=None, batch_format="pandas"):
                for record in written.to_dict("records"):
                    records[int(record["unit"])] = record
                    pairs_done += int(record["rows"])
                progress.update(pairs_done)

    with timer("publish"):
        rows, cold_start = _check_parts(store, run_id, units, records)
        reads = {name: store.table_version(name)["version"] for name in ("reviews", "images")}
        test_barrier(run_id)
        with timer("commit"):
            try:
                committed = commit_date(store, date, run_id, generation, [records[i] for i in range(len(units))],
                                        quarantine_file, reads, {"generation": generation,
                                                                 "candidates": cfg["candidates"]})
            except delta.LostRace as e:
                report.update(status="lost_race", winner_run_id=e.winner, finished_at=utc_now())
                store.write_report("nightly", run_id, report)
                raise
    counts = {"candidates": len(candidates), "showcases": rows, "quarantined": len(quarantined),
              "quarantined_by_reason": reasons, "parts": len(units), "parts_resumed": len(units) - len(todo),
              "cold_start": cold_start}
    report.update(status="published", date=date, counts=counts, models=models, generation=generation,
                  table={"uri": store.uri(TABLE), "version": committed.version}, replaced_run_id=publisher,
                  timings_s=timer.timings, versions=versions(), finished_at=utc_now())
    seconds = timer.timings.get("showcases")
    rate = f" ({counts['showcases'] / seconds:.1f} pairs/s)" if seconds and not counts["parts_resumed"] else ""
    print(f"[nightly] published {rows:,} showcases for {date}{rate}: {store.uri(TABLE)} version {committed.version}; "
          f"quarantined {len(quarantined):,}; report: {store.write_report('nightly', run_id, report)}", flush=True)
    return 0


def _check_parts(store, run_id: str, units: list[list[dict]], records: dict[int, dict]) -> tuple[int, int]:
    """Every part is there and holds exactly its pairs, no pair twice: (rows, cold-start rows)."""
    from showcase_core.showcase import TABLE

    missing = [i for i in range(len(units)) if i not in records]
    if missing:
        raise RuntimeError(f"parts {missing[:5]} of run {run_id} were not written")
    seen, rows, cold_start = set(), 0, 0
    for i, unit in enumerate(units):
        table = pq.read_table(store.path(TABLE, records[i]["path"]), filesystem=store.fs,
                              columns=["user_id", "business_id", "cold_start"])
        keys = set(zip(table.column("user_id").to_pylist(), table.column("business_id").to_pylist()))
        if keys != {(p["user_id"], p["business_id"]) for p in unit} or table.num_rows != len(unit) or keys & seen:
            raise RuntimeError(f"part {i} of run {run_id} does not hold exactly its {len(unit)} pairs")
        seen |= keys
        rows += table.num_rows
        cold_start += sum(table.column("cold_start").to_pylist())
    return rows, cold_start


if __name__ == "__main__":
    sys.exit(run("nightly", main))

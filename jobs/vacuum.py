"""Delta maintenance: ``python -m jobs.vacuum --root ROOT [--keep-days 7] [--optimize false] [--dry-run false]``.

For every Delta table under ROOT (tables/*, embeddings/<encoder>/*, showcases, showcases_quarantine): optionally
compact small files (a new version with the same rows), write a checkpoint, then remove the files that no version
younger than ``--keep-days`` needs and the files never committed (a killed, never resumed run) once they are older
than that. Uncommitted files younger than the retention stay, so a run can still resume; a reader pinned to a
version older than the retention may find its files gone.
"""

from __future__ import annotations

import sys

from showcase_core import tables as delta
from showcase_core.store import new_run_id, utc_now

from .common import Timer, UserError, new_report, open_store, parse_args, run, versions

DEFAULTS = {
    "root": None,
    "keep_days": 7.0,  # retention: versions and uncommitted files younger than this are kept
    "optimize": False,  # also compact small files (bin-packing) before vacuuming
    "dry_run": False,  # list what would be removed, change nothing
}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("vacuum", DEFAULTS, argv)
    if cfg["keep_days"] < 0:
        raise UserError(f"--keep-days must be >= 0, got {cfg['keep_days']}")
    store = open_store(cfg["root"])
    run_id = new_run_id()
    report, timer = new_report("vacuum", cfg, run_id), Timer()
    results = []
    for rel in delta.find_tables(store):
        with timer(rel):
            results.append(delta.maintain(store, rel, round(cfg["keep_days"] * 24), cfg["optimize"], cfg["dry_run"]))
        r = results[-1]
        print(f"[vacuum] {rel}: version {r['version_before']} -> {r['version_after']}, "
              f"{r['files_removed']} files {'would be ' if cfg['dry_run'] else ''}removed"
              + (f", compacted {r['compacted']}" if r["compacted"] else ""), flush=True)
    report.update(tables=results, counts={"tables": len(results), "files_removed": sum(r["files_removed"] for r in results)},
                  timings_s=timer.timings, versions=versions(), finished_at=utc_now())
    print(f"[vacuum] {len(results)} tables; report: {store.write_report('vacuum', run_id, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(run("vacuum", main))

"""Delta maintenance: ``python -m jobs.vacuum --root ROOT [--keep-days 7] [--optimize false] [--dry-run false]``.

For every Delta table under ROOT (tables/*, embeddings/<encoder>/*, features/<encoder>/*, and those at the top:
showcases, showcases_quarantine, candidates): optionally compact small files (a new version with the same rows), write
a checkpoint, then remove the files that no version younger than ``--keep-days`` needs and the files never committed
(a killed, never resumed run) once they are older than that, also in a table folder whose first run left no log
(``tables.find_uncommitted_tables``). Uncommitted files younger than the retention stay, so a run can still resume; a
reader pinned to a version older than the retention may find its files gone.
"""

from __future__ import annotations

import math

from showcase_core import showcase
from showcase_core import tables as delta
from showcase_core.store import Store, new_run_id, utc_now

from .common import JobSettings, Timer, exit_process, new_report, open_store, parse_args, run, setting, versions


class Settings(JobSettings):
    """Delta maintenance of every table under ROOT: checkpoints, optional compaction, old and orphaned files."""

    keep_days: float = setting(7.0, "retention in days: versions and uncommitted files younger than this are kept",
                               ge=0, le=36500)
    optimize: bool = setting(False, "also compact small files (bin-packing) before vacuuming")
    dry_run: bool = setting(False, "list what would be removed, change nothing")


def maintain_tables(store: Store, cfg: Settings, timer: Timer) -> list[dict]:
    """Maintain each table in turn; one line per table."""
    results, keep_hours = [], math.ceil(cfg.keep_days * 24)  # whole hours, never shorter than asked
    removed = "would be removed" if cfg.dry_run else "removed"
    for rel in delta.find_tables(store):
        with timer(rel):
            r = delta.maintain(store, rel, keep_hours, cfg.optimize, cfg.dry_run)
        results.append(r)
        print(f"[vacuum] {rel}: version {r['version_before']} -> {r['version_after']}, {r['files_removed']} files "
              f"{removed}" + (f", compacted {r['compacted']}" if r["compacted"] else ""), flush=True)
    # a first run killed before its commit, never resumed: no log to vacuum by
    for rel in delta.find_uncommitted_tables(store, (showcase.TABLE, showcase.QUARANTINE_TABLE)):
        with timer(rel):
            r = delta.remove_uncommitted(store, rel, keep_hours, cfg.dry_run)
        results.append(r)
        print(f"[vacuum] {rel}: never committed, {r['files_removed']} uncommitted files {removed}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("vacuum", Settings, argv)
    store = open_store(cfg.root)  # a ROOT with nothing under it is a mistyped path, not one with no tables
    run_id, timer = new_run_id(), Timer()
    report = new_report("vacuum", cfg, run_id)
    results = maintain_tables(store, cfg, timer)
    report.update(tables=results, counts={"tables": len(results), "files_removed": sum(r["files_removed"] for r in results)},
                  timings_s=timer.timings, versions=versions(), finished_at=utc_now())
    print(f"[vacuum] {len(results)} tables; report: {store.write_report('vacuum', run_id, report)}")
    return 0


if __name__ == "__main__":
    exit_process(run("vacuum", main))

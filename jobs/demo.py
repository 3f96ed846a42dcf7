"""The embedded default end to end: ``make demo`` (or ``showcase demo --root ROOT``).

Stages run in order, each through its own job entry point, and the first failure stops the chain:
make_world (mini, local) -> ingest (prints the Table-1 summary) -> where everything is.
"""

from __future__ import annotations

import sys

from showcase_core.store import Store

from . import ingest, make_world
from .common import UserError, parse_args, run

DEFAULTS = {"root": "./.demo", "world": "./.demo-world", "size": "mini", "seed": 0}


def _stage(name: str, main, argv: list[str]) -> None:
    print(f"\n== {name}: showcase {name} {' '.join(argv)}", flush=True)
    code = run(name, main, argv)
    if code != 0:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("demo", DEFAULTS, argv)
    if "://" in cfg["world"] and not cfg["world"].startswith("file://"):
        raise UserError("--world must be a local directory (the world's photos are drawn here)")
    world, root = cfg["world"], cfg["root"]
    _stage("make_world", make_world.main, ["--out", world, "--size", cfg["size"], "--seed", str(cfg["seed"])])
    _stage("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"])

    store = Store.open(root)
    print(f"\nROOT: {store.uri()}\n  tables:  {store.uri('tables')}\n  reports: {store.uri('reports')}")
    return 0


if __name__ == "__main__":
    sys.exit(run("demo", main))

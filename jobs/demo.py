"""The embedded default end to end: ``make demo`` (or ``showcase demo --root ROOT``).

Stages run in order, each through its own job entry point, and the first failure stops the chain:
make_world (mini, local) -> ingest (prints the Table-1 summary) -> train_clip (the small CLIP, from scratch; prints
held-out Recall@1) -> embed (every photo and text) -> features (the nightly's and Serve's lookups) -> train_dpp
(img, text, img+text) -> distill (the explanation classifier Φ, held-out AUC/F1) -> train_pc2l (ce and pc2l, 25
epochs) -> nightly (showcases for the test-split pairs, published under ROOT/showcases) -> gallery (an HTML page of
them) -> evaluate all (Table 1 + visual diversity, Table 3, Table 2/4 + Figure 6 plots) -> where everything is.
"""

from __future__ import annotations

import datetime as dt
import sys

import pyarrow.compute as pc

from showcase_core.store import Store

from . import distill, embed, evaluate, features, gallery, ingest, make_world, nightly, train_clip, train_dpp, train_pc2l
from .common import UserError, parse_args, run

DEFAULTS = {"root": "./.demo", "world": "./.demo-world", "size": "mini", "seed": 0, "threads": 2}


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
    _stage("train_clip", train_clip.main, ["--root", root])
    _stage("embed", embed.main, ["--root", root, "--threads-per-actor", str(cfg["threads"])])
    _stage("features", features.main, ["--root", root])
    _stage("train_dpp", train_dpp.main, ["--root", root])
    _stage("distill", distill.main, ["--root", root])
    # the baseline and the full method, 25 epochs, a checkpoint every 5: under 5 minutes on 2 cores; `showcase
    # train_pc2l` alone trains all four ablation variants for 30 epochs
    _stage("train_pc2l", train_pc2l.main, ["--root", root, "--variants", "ce,pc2l", "--epochs", "25",
                                           "--checkpoint-every", "5"])
    store = Store.open(root)
    reviews = store.read_table("reviews", ["user_id", "business_id", "split"])
    test_pairs = reviews.filter(pc.equal(reviews.column("split"), "test")).select(["user_id", "business_id"])
    candidates = store.uri("candidates", "demo-test-pairs.parquet")
    store.write_parquet("candidates/demo-test-pairs.parquet", test_pairs)
    date = dt.date.today().isoformat()
    _stage("nightly", nightly.main, ["--root", root, "--candidates", candidates, "--date", date, "--force", "true"])
    _stage("gallery", gallery.main, ["--root", root, "--date", date, "--n", "50"])
    _stage("evaluate", evaluate.main, ["--root", root, "--stage", "all"])

    latest = store.read_json("models/clip/_LATEST.json")
    print(f"\nROOT: {store.uri()}\n  tables:     {store.uri('tables')}\n  CLIP:       {latest['uri']}"
          f"\n  embeddings: {store.uri('embeddings', latest['encoder_id'])}"
          f"\n  DPP:        {store.read_json('models/dpp/_LATEST.json')['models']['img+text']}"
          f"\n  Φ:          {store.read_json('models/alignment/_LATEST.json')['uri']}"
          f"\n  PC²L:       {store.read_json('models/pc2l/_LATEST.json')['models']['pc2l']}"
          f"\n  showcases:  {store.uri('showcases')} (Delta, dt={date}; read with polars.read_delta or read_showcases)"
          f"\n  gallery:    {store.uri('reports', 'gallery', date, 'index.html')}"
          f"\n  reports:    {store.uri('reports')}")
    return 0


if __name__ == "__main__":
    sys.exit(run("demo", main))

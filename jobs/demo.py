"""The embedded default end to end: ``make demo`` (or ``showcase demo --root ROOT``).

Stages run in order, each through its own job entry point, and the first failure stops the chain: make_world (mini,
local) -> ingest (prints the Table-1 summary) -> train_clip (the small CLIP, from scratch; prints held-out Recall@1)
-> embed (every photo and text) -> features (the nightly's and Serve's lookups) -> train_dpp (img, text, img+text) ->
distill (the explanation classifier Φ, held-out AUC/F1) -> train_pc2l (ce and pc2l, 25 epochs; ``--decoder
smollm2-135m``: the pretrained decoder, 8 epochs) -> train_recommender (popularity, BPR-MF, LightGCN, AlignRec, R2MR)
-> recommend (each user's top 5, the candidates table) -> nightly (showcases for those candidates, published under
ROOT/showcases) -> gallery (an HTML page of them) -> evaluate all (Table 1 + visual diversity, Table 3, Table 2/4 +
Figure 6 plots, the recommenders over 3 seeds with the reviewer checked against the world's planted low-quality
businesses) -> where everything is.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import field_validator

from showcase_core import registry
from showcase_core.data.world import SIZES
from showcase_core.store import Store

from . import (distill, embed, evaluate, features, gallery, ingest, make_world, nightly, recommend, train_clip, train_dpp,
               train_pc2l, train_recommender)
from .common import JobSettings, exit_process, parse_args, run, setting, start_ray

# the baseline and the full method, a checkpoint every 5 epochs (`showcase train_pc2l` alone trains all four
# ablation variants)
PC2L_ARGS = ["--variants", "ce,pc2l", "--epochs", "25", "--checkpoint-every", "5"]
# the pretrained SmolLM2 decoder (frozen, gated cross-attention before its top 4 layers): a 135 M-parameter forward per
# step, so shorter targets on CPU (about a minute an epoch on 2 cores); only the new parts learn, from scratch, so the
# small decoder's learning rate (1e-4, the paper's for fine-tuning all of GPT-2, left val CE where it started)
SMOLLM2_ARGS = ["--variants", "ce,pc2l", "--decoder", "smollm2-135m", "--epochs", "8", "--max-length", "32",
                "--checkpoint-every", "4"]
# the mini world has ~1,000 train interactions: batches of 256 (MMRec's 2048 would be one step an epoch)
RECOMMENDER_ARGS = ["--epochs", "40", "--batch-size", "256", "--log-every", "20"]


class Settings(JobSettings):
    """The embedded default end to end on a synthetic world."""

    root: str = setting("./.demo", "the store every stage writes: a local path, file:// or s3:// URI")
    world: str = setting("./.demo-world", "the local directory the synthetic world is drawn into")
    size: Literal[tuple(SIZES)] = setting("mini", "the synthetic world's size (showcase_core.data.world)")
    seed: int = setting(0, "seed of the synthetic world")
    threads: int = setting(0, "torch threads per embedding actor (0: embed's default, one per CPU of an actor each)",
                           ge=0)
    decoder: Literal["gpt2", "smollm2-135m"] = setting("gpt2", "the explanation generator's decoder: the small GPT-2 "
                                                               "from scratch (fast), or the pretrained SmolLM2-135M")

    @field_validator("world")
    @classmethod
    def _local_world(cls, value: str) -> str:
        if "://" in value and not value.startswith("file://"):
            raise ValueError("--world must be a local directory (the world's photos are drawn here)")
        return value


def stage(name: str, main, argv: list[str]) -> None:
    """Run one stage through its job entry point; a failure ends the demo with the stage's exit code."""
    print(f"\n== {name}: showcase {name} {' '.join(argv)}", flush=True)
    code = run(name, main, argv)
    if code != 0:
        raise SystemExit(code)


def print_where(store: Store, date: str) -> None:
    """Where every output of the demo is."""
    clip = registry.latest(store, "clip")
    print(f"\nROOT: {store.uri()}\n  tables:     {store.uri('tables')}\n  CLIP:       {clip.uri}"
          f"\n  embeddings: {store.uri('embeddings', clip.encoder_id)}"
          f"\n  DPP:        {registry.latest(store, 'dpp').variant('img+text')}"
          f"\n  Φ:          {registry.latest(store, 'alignment').uri}"
          f"\n  PC²L:       {registry.latest(store, 'pc2l').variant('pc2l')}"
          f"\n  recommender: {registry.latest(store, 'recommender').uri} (candidates: {store.uri('candidates')})"
          f"\n  showcases:  {store.uri('showcases')} (Delta, dt={date}; read with polars.read_delta or read_showcases)"
          f"\n  gallery:    {store.uri('reports', 'gallery', date, 'index.html')}"
          f"\n  reports:    {store.uri('reports')}")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("demo", Settings, argv)
    world, root = cfg.world, cfg.root
    stage("make_world", make_world.main, ["--out", world, "--size", cfg.size, "--seed", str(cfg.seed)])
    # every stage runs on this process's one Ray instance, so it is started as the training stages need it: with the
    # State API (started by ingest, the first, it would have none, and each training run's placement-group cleaner
    # would warn every second for the rest of the demo)
    start_ray(state_api=True)
    stage("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"])
    stage("train_clip", train_clip.main, ["--root", root])
    stage("embed", embed.main, ["--root", root, "--threads-per-actor", str(cfg.threads)])
    stage("features", features.main, ["--root", root])
    stage("train_dpp", train_dpp.main, ["--root", root])
    stage("distill", distill.main, ["--root", root])
    stage("train_pc2l", train_pc2l.main, ["--root", root, *(SMOLLM2_ARGS if cfg.decoder == "smollm2-135m" else
                                                             PC2L_ARGS)])
    store, date = Store.open(root), dt.date.today().isoformat()
    stage("train_recommender", train_recommender.main, ["--root", root, *RECOMMENDER_ARGS])
    stage("recommend", recommend.main, ["--root", root, "--date", date, "--top-n", "5", "--force", "true"])
    stage("nightly", nightly.main, ["--root", root, "--candidates", "latest", "--date", date, "--force", "true"])
    stage("gallery", gallery.main, ["--root", root, "--date", date, "--n", "50"])
    stage("evaluate", evaluate.main, ["--root", root, "--stage", "all", "--world", world])
    print_where(store, date)
    return 0


if __name__ == "__main__":
    exit_process(run("demo", main))

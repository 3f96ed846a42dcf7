"""The paper's real-size architectures through the configuration path a user takes (the short version of
tests/perf/realsize.py, which measures them): a ViT-B-32 checkpoint file written by open_clip, loaded by
``embed --clip-model ViT-B-32 --clip-pretrained FILE``; a GPT-2 small directory (12 layers, width 768, 12 heads,
vocabulary 50,257, with a byte-level BPE tokenizer trained on the world beside it), loaded by
``train_pc2l --gpt2-path DIR`` for two optimizer steps, then by the nightly for 20 pairs. Random weights: the shapes
and the configuration path are what is checked here, not quality."""

import glob
import json
import math

from jobs import embed, nightly, train_pc2l
from jobs.common import run
from showcase_core import read_showcases, registry
from showcase_core.encoders.embed import read_embeddings
from showcase_core.generation.data import load_generation_examples
from showcase_core.generation.model import DEFAULT_CONFIG
from showcase_core.store import Store
from tests.conftest import copy_root
from tests.integration.test_nightly import candidate_pairs, good_keys, keys_of, write_candidates
from tests.realsize_models import write_gpt2_small, write_vit_b_32


def test_vit_b_32_embeds_and_gpt2_small_trains_and_writes_showcases(trained_root, tmp_path_factory, tmp_path):
    root = copy_root(trained_root, tmp_path_factory, "realsize")
    store = Store.open(root)
    photo_ids = [store.read_table(t).column("image_id").to_pylist() for t in ("images", "owner_photos")]

    weights = write_vit_b_32(str(tmp_path / "vit-b-32.pt"))
    assert run("embed", embed.main, ["--root", root, "--clip-model", "ViT-B-32", "--clip-pretrained", weights,
                                     "--kinds", "images", "--batch-size", "32"]) == 0
    [report] = sorted(glob.glob(f"{root}/reports/embed/*.json"))[-1:]
    encoder_id = json.loads(open(report).read())["encoder_id"]
    assert encoder_id.startswith("ViT-B-32.") and registry.encoder(store, encoder_id)
    images = read_embeddings(store, encoder_id, "images")
    assert sorted(images.column("id").to_pylist()) == sorted(photo_ids[0] + photo_ids[1])  # every photo, once
    assert images.schema.field("embedding").type.list_size == 512  # ViT-B-32's width

    # PC²L with GPT-2 small, on the features the DPP of this ROOT was trained on (the decoder does not depend on them)
    dpp = registry.latest(store, "dpp")
    reviews = store.read_table("reviews", ["review_text"]).column("review_text").to_pylist()
    gpt2 = str(tmp_path / "gpt2-small")
    written = write_gpt2_small(gpt2, [t for t in reviews if t])
    assert written["parameters"] == 124_439_808  # GPT-2 small's (tied embeddings)
    splits, _ = load_generation_examples(store, dpp.encoder_id, "sentences", ("train",), DEFAULT_CONFIG["max_photos"],
                                         DEFAULT_CONFIG["max_history"])
    batch = math.ceil(len(splits["train"]) / 2)  # two optimizer steps
    assert run("train_pc2l", train_pc2l.main, ["--root", root, "--encoder", dpp.encoder_id, "--gpt2-path", gpt2,
                                               "--variants", "pc2l", "--epochs", "1", "--batch-size", str(batch),
                                               "--max-length", "16", "--eval-examples", "2",
                                               "--cpus-per-worker", "1"]) == 0
    entry = registry.latest(store, "pc2l")
    card = json.loads(open(f"{entry.variant('pc2l')}/card.json").read())
    assert card["training"]["model"]["gpt2_path"] == gpt2
    assert {k: card["decoder"][k] for k in ("kind", "num_hidden_layers", "hidden_size", "num_attention_heads",
                                            "vocab_size")} == {"kind": "gpt2", "num_hidden_layers": 12,
                                                               "hidden_size": 768, "num_attention_heads": 12,
                                                               "vocab_size": 50257}
    assert math.ceil(card["history"][0]["examples"] / batch) == 2

    pairs, _, _ = candidate_pairs(root)
    known = good_keys(pairs)
    good = {(p["user_id"], p["business_id"]): p for p in pairs if (p["user_id"], p["business_id"]) in known}
    pairs = list(good.values())[:20]
    candidates = write_candidates(tmp_path / "c.parquet", pairs)
    assert run("nightly", nightly.main, ["--root", root, "--candidates", candidates, "--date", "2026-12-01"]) == 0
    table = read_showcases(root, date="2026-12-01")
    assert sorted(keys_of(table)) == sorted(good_keys(pairs)) and len(pairs) == 20
    assert set(table.column("generator_model").to_pylist()) == {entry.variant("pc2l")}
    assert all(isinstance(t, str) for t in table.column("explanation").to_pylist())

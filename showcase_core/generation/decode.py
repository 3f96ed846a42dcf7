"""Batched decoding: beam search (beam 2, as the paper) with the KV cache, for a whole batch at once.

The multi-modal encoder runs once per batch; ``beam_search`` then decodes every row together with cross-attention to
[H^V; H^R] and caches self- and cross-attention keys/values between steps. It finds what ``transformers``' ``generate``
finds (tested token for token) but drops a row from the batch, and from the cache, once the row is finished, so a
step costs what the unfinished rows need. ``num_beams=1`` is greedy decoding.

Degenerate repetition ("I keep coming back for the tender cappuccino!" three times) is blocked at its cause: beam
search may not produce a token n-gram twice (``no_repeat_ngram_size``), and an explanation ends at a sentence budget
(``max_sentences``: text after the budget's last sentence is dropped). ``DECODING`` (the package's) holds the defaults the
nightly, Serve and evaluate share.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from ..data.alignment import SENTENCE_END
from . import DECODING


def sentence_budget(text: str, max_sentences: int | None) -> str:
    """The text up to the end of its ``max_sentences``-th sentence (sentences end at ., ! or ? before a space)."""
    if not max_sentences:
        return text
    ends = [m.start() for m in SENTENCE_END.finditer(text)]
    return text[:ends[max_sentences - 1]].strip() if len(ends) >= max_sentences else text


@torch.no_grad()
def generate(model, tokenizer, photos, photo_mask, history, history_mask, num_beams: int = 2,
             max_new_tokens: int | None = None, no_repeat_ngram_size: int = DECODING["no_repeat_ngram_size"],
             length_penalty: float = DECODING["length_penalty"],
             max_sentences: int | None = DECODING["max_sentences"]) -> list[str]:
    """CLIP features (numpy or tensors, [B, P, C] / [B, H, C] with bool masks) -> one explanation per row.
    ``no_repeat_ngram_size`` 0 and ``max_sentences`` None turn the repetition guards off."""
    model.eval()
    device = next(model.parameters()).device

    def tensor(x, dtype):
        return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=dtype).to(device)

    memory, memory_mask = model.encode(tensor(photos, torch.float32), tensor(photo_mask, torch.bool),
                                       tensor(history, torch.float32), tensor(history_mask, torch.bool))
    best = beam_search(model.decoder, memory, memory_mask, tokenizer.bos_token_id, tokenizer.eos_token_id, num_beams,
                       max_new_tokens or model.config["max_length"], no_repeat_ngram_size, length_penalty)
    return [sentence_budget(t.strip(), max_sentences) for t in tokenizer.batch_decode(best, skip_special_tokens=True)]


def beam_search(decoder, memory: torch.Tensor, memory_mask: torch.Tensor, bos: int, eos: int, num_beams: int,
                max_new_tokens: int, no_repeat_ngram_size: int = 0, length_penalty: float = 1.0) -> list[list[int]]:
    """The token ids (BOS dropped, EOS kept when reached) of the best hypothesis of each row: ``transformers``' beam
    search with ``early_stopping=True`` (the same hypotheses and scores; ``num_beams=1`` is greedy), except that a
    row leaves the batch as soon as its ``num_beams`` hypotheses are finished, and its keys and values leave the cache.
    ``generate`` keeps every row until the last one ends, so one long explanation made a whole batch of short ones
    pay for its length; here a step costs what its unfinished rows need.

    Per row and step, as ``transformers``: the 2·beams best continuations of the running beams by summed log-prob;
    those of the first ``num_beams`` that end (EOS, or the last step) join the row's finished hypotheses, scored by
    sum / length ** length_penalty (the best ``num_beams`` kept); the best ``num_beams`` that do not end run on."""
    from transformers import EncoderDecoderCache, NoRepeatNGramLogitsProcessor

    rows, device = memory.shape[0], memory.device
    no_repeat = NoRepeatNGramLogitsProcessor(no_repeat_ngram_size) if no_repeat_ngram_size else None
    keep = 2 * num_beams  # continuations looked at per row: enough for num_beams that do not end
    first = torch.arange(keep, device=device) < num_beams  # only these may finish a hypothesis
    length = max_new_tokens + 1  # BOS + generated
    best: list[list[int]] = [[] for _ in range(rows)]
    active = torch.arange(rows, device=device)  # the rows still decoding, in the batch's order
    width = 1  # running beams per row: all beams start from BOS alike, so the first step runs one per row
    running = torch.full((rows, width, length), eos, dtype=torch.long, device=device)
    running[:, :, 0] = bos
    running_scores = torch.zeros(rows, width, device=device)
    finished = torch.full((rows, num_beams, length), eos, dtype=torch.long, device=device)
    finished_scores = torch.full((rows, num_beams), -1.0e9, device=device)
    is_finished = torch.zeros(rows, num_beams, dtype=torch.bool, device=device)
    cache, step_memory, step_mask, cache_name = None, memory, memory_mask.long(), cache_argument(decoder)
    for step in range(max_new_tokens):
        n, cur = active.numel(), step + 1
        ids = running[:, :, :cur].reshape(n * width, cur)
        out = decoder(input_ids=ids[:, -1:], attention_mask=torch.ones_like(ids), encoder_hidden_states=step_memory,
                      encoder_attention_mask=step_mask, use_cache=True, **{cache_name: cache})
        cache = out[cache_name]
        log_probs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        if no_repeat is not None:
            log_probs = no_repeat(ids, log_probs)
        vocab = log_probs.shape[-1]
        summed = (log_probs.view(n, width, vocab) + running_scores[:, :, None]).view(n, width * vocab)
        top_scores, top = torch.topk(summed, keep)
        source, token = top // vocab, top % vocab
        candidates = torch.gather(running, 1, source[:, :, None].expand(n, keep, length))  # a new tensor
        candidates[:, :, cur] = token
        ends = (token == eos) | (step == max_new_tokens - 1)
        # hypotheses that end here join the finished ones unless the row already has num_beams of them
        full = is_finished.all(dim=1, keepdim=True)
        ending = ends & first[None, :] & ~full
        ending_scores = top_scores / (cur ** length_penalty) - 1.0e9 * (~ending).float()
        merged_scores, order = torch.topk(torch.cat([finished_scores, ending_scores], 1), num_beams)
        finished = torch.gather(torch.cat([finished, candidates], 1), 1, order[:, :, None].expand(n, num_beams, length))
        is_finished = torch.gather(torch.cat([is_finished, ending], 1), 1, order)
        finished_scores = merged_scores
        # the best num_beams continuations that do not end run on
        running_scores, pick = torch.topk(top_scores - 1.0e9 * ends.float(), num_beams)
        running = torch.gather(candidates, 1, pick[:, :, None].expand(n, num_beams, length))
        beam_source = torch.gather(source, 1, pick)  # (n, num_beams): which running beam each continues
        done = is_finished.all(dim=1) | (step == max_new_tokens - 1)
        ended = done.nonzero().flatten()
        for i, row in zip(active[ended].tolist(), finished[ended, 0, 1:].tolist()):  # each row's best hypothesis
            best[i] = row[:row.index(eos) + 1] if eos in row else row
        if bool(done.all()):
            break
        stay = (~done).nonzero().flatten()
        # the cache follows the surviving rows' chosen beams; the memory (the same for every beam of a row) follows rows
        select = (stay[:, None] * width + beam_source[stay]).flatten()
        per_row = (stay * width).repeat_interleave(num_beams)
        if isinstance(cache, EncoderDecoderCache):
            cache.self_attention_cache.reorder_cache(select)
            if width != num_beams or stay.numel() != n:
                cache.cross_attention_cache.reorder_cache(per_row)
        else:
            cache.reorder_cache(select)
        if width != num_beams or stay.numel() != n:
            step_memory, step_mask = step_memory[per_row], step_mask[per_row]
        active, running, running_scores = active[stay], running[stay], running_scores[stay]
        finished, finished_scores, is_finished = finished[stay], finished_scores[stay], is_finished[stay]
        width = num_beams
    return best


def cache_argument(decoder) -> str:
    """The name the decoder's forward takes its KV cache by: ``cache`` in recent ``transformers`` 5 releases,
    ``past_key_values`` before (the older name still works there, with a deprecation warning)."""
    for cls in type(decoder).__mro__:
        params = inspect.signature(cls.forward).parameters if "forward" in vars(cls) else {}
        for name in ("cache", "past_key_values"):
            if name in params:
                return name
    return "past_key_values"

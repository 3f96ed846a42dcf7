"""Batched decoding: beam search (beam 2, as the paper) with the KV cache, for a whole batch at once.

The multi-modal encoder runs once per batch; ``transformers``' ``generate`` then decodes every row together with
cross-attention to [H^V; H^R] (repeated per beam) and caches self- and cross-attention keys/values between steps.
``num_beams=1`` is greedy decoding.

Degenerate repetition ("I keep coming back for the tender cappuccino!" three times) is blocked at its cause: beam
search may not produce a token n-gram twice (``no_repeat_ngram_size``), and an explanation ends at a sentence budget
(``max_sentences``: text after the budget's last sentence is dropped). ``DECODING`` (the package's) holds the defaults the
nightly, Serve and evaluate share.
"""

from __future__ import annotations

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
    start = torch.full((memory.shape[0], 1), tokenizer.bos_token_id, dtype=torch.long, device=device)
    beam = {"early_stopping": True, "length_penalty": length_penalty} if num_beams > 1 else {}  # beam-search flags only
    out = model.decoder.generate(
        input_ids=start, attention_mask=torch.ones_like(start), encoder_hidden_states=memory,
        encoder_attention_mask=memory_mask.long(), num_beams=num_beams, do_sample=False, use_cache=True,
        max_new_tokens=max_new_tokens or model.config["max_length"], eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, no_repeat_ngram_size=no_repeat_ngram_size or None, **beam)
    return [sentence_budget(t.strip(), max_sentences) for t in tokenizer.batch_decode(out[:, 1:],
                                                                                     skip_special_tokens=True)]

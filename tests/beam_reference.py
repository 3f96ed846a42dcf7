"""The reference the project's beam search is tested against: ``transformers``' own ``generate`` (beam search with
``early_stopping=True``; greedy for one beam), its token ids per row with BOS dropped and nothing after EOS."""

import torch


def transformers_beam_search(decoder, memory, memory_mask, bos: int, eos: int, num_beams: int, max_new_tokens: int,
                             no_repeat_ngram_size: int, length_penalty: float) -> list[list[int]]:
    start = torch.full((memory.shape[0], 1), bos, dtype=torch.long)
    beam = {"early_stopping": True, "length_penalty": length_penalty} if num_beams > 1 else {}
    with torch.no_grad():
        out = decoder.generate(input_ids=start, attention_mask=torch.ones_like(start), encoder_hidden_states=memory,
                               encoder_attention_mask=memory_mask.long(), num_beams=num_beams, do_sample=False,
                               use_cache=True, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos,
                               no_repeat_ngram_size=no_repeat_ngram_size or None, **beam)
    rows = [row[1:] for row in out.tolist()]
    return [row[:row.index(eos) + 1] if eos in row else row for row in rows]

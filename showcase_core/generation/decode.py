"""Batched decoding: beam search (beam 2, as the paper) with the KV cache, for a whole batch at once.

The multi-modal encoder runs once per batch; ``transformers``' ``generate`` then decodes every row together with
cross-attention to [H^V; H^R] (repeated per beam) and caches self- and cross-attention keys/values between steps.
``num_beams=1`` is greedy decoding.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def generate(model, tokenizer, photos, photo_mask, history, history_mask, num_beams: int = 2,
             max_new_tokens: int | None = None) -> list[str]:
    """CLIP features (numpy or tensors, [B, P, C] / [B, H, C] with bool masks) -> one explanation per row."""
    model.eval()
    device = next(model.parameters()).device

    def tensor(x, dtype):
        return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=dtype).to(device)

    memory, memory_mask = model.encode(tensor(photos, torch.float32), tensor(photo_mask, torch.bool),
                                       tensor(history, torch.float32), tensor(history_mask, torch.bool))
    start = torch.full((memory.shape[0], 1), tokenizer.bos_token_id, dtype=torch.long, device=device)
    out = model.decoder.generate(
        input_ids=start, attention_mask=torch.ones_like(start), encoder_hidden_states=memory,
        encoder_attention_mask=memory_mask.long(), num_beams=num_beams, do_sample=False, use_cache=True,
        max_new_tokens=max_new_tokens or model.config["max_length"], eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, early_stopping=True)
    return [t.strip() for t in tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)]

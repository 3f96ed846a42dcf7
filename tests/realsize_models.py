"""The paper's real architectures with random weights, written locally the way a user's own files would be (no
download): a ViT-B-32 checkpoint file by open_clip, and a GPT-2 small directory by transformers with a byte-level BPE
tokenizer trained on given texts beside it. Used by tests/perf/realsize.py and tests/integration/test_realsize.py."""

from __future__ import annotations

GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257}


def write_vit_b_32(path: str) -> str:
    from showcase_core.torch_compat import ensure_torchvision

    ensure_torchvision()
    import open_clip
    import torch

    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), path)
    return path


def write_gpt2_small(folder: str, texts: list[str]) -> dict:
    """A GPT-2 small directory (random weights) with a byte-level BPE tokenizer trained on ``texts`` beside it."""
    from showcase_core.generation.tokenizer import train_tokenizer
    from showcase_core.torch_compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_tokenizer(texts, vocab_size=GPT2_SMALL["vocab_size"])
    end = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**GPT2_SMALL, n_positions=1024, bos_token_id=end, eos_token_id=end))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"tokenizer_size": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters())}

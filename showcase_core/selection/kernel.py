"""The learned DPP kernel (deep DPP of Wilhelm et al., CIKM'18) and its log-likelihood.

    L_ij = q_i * <g(phi_i), g(phi_j)> * q_j + delta * [i == j]

- ``g(phi_i)``: a learned linear projection of the photo's CLIP image feature, L2-normalised, so <g_i, g_j> is a
  cosine similarity (diversity). Learning it matters: with raw CLIP cosine, the photos a user actually posts together
  (the same dishes, the same table) look like near-duplicates and no relevance q can make them likely;
- ``q_i = exp(<u, p_i> / sqrt(128))``: user-photo relevance, from the user-profile MLP ``u`` and the photo MLP
  ``p_i`` (both ReLU MLPs ending in 128 units, the paper's 1024->512->512->256->128 and 512->512->512->256->128 when
  CLIP features have 512 dimensions; the input width follows the CLIP in use);
- the profile is the mean CLIP text feature of the user's historical reviews (+) the mean CLIP image feature of their
  historical photos, or one of the two for the modality ablations ``text`` and ``img``.

Training maximises log det(L_Y) - log det(L + I) (Y = the photos the user posted for the business, the ground set = all
photos of the business). Ground sets of different sizes are padded and masked: a padded item becomes an identity
row/column, which leaves every determinant unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MODALITIES = ("img", "text", "img+text")
HIDDEN = (512, 512, 256, 128)
DIVERSITY_DIM = 128


def mlp(inputs: int, sizes=HIDDEN) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Linear(inputs, size), nn.ReLU()]
        inputs = size
    return nn.Sequential(*layers[:-1])  # no ReLU on the output


def profile_input(profile_img: torch.Tensor, profile_text: torch.Tensor, modality: str) -> torch.Tensor:
    if modality == "img":
        return profile_img
    if modality == "text":
        return profile_text
    if modality == "img+text":
        return torch.cat([profile_text, profile_img], dim=-1)
    raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")


class DPPKernel(nn.Module):
    def __init__(self, embed_dim: int, modality: str = "img+text", delta: float = 1e-2):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.embed_dim, self.modality, self.delta = embed_dim, modality, delta
        self.profile_mlp = mlp(embed_dim * (2 if modality == "img+text" else 1))
        self.photo_mlp = mlp(embed_dim)
        self.diversity = nn.Linear(embed_dim, DIVERSITY_DIM, bias=False)

    def config(self) -> dict:
        return {"embed_dim": self.embed_dim, "modality": self.modality, "delta": self.delta}

    def photo_terms(self, photos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(p, g) of photo features [..., D]: the photo MLP's output and the L2-normalised diversity projection, each
        [..., 128]. They depend on the photo alone, so a caller whose pairs share photos (the pairs of one business
        share its ground set) computes them once per photo and gathers them per pair."""
        return self.photo_mlp(photos), nn.functional.normalize(self.diversity(photos), dim=-1)

    def quality(self, profile: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """q [B, M] from the profile input [B, P] and the photos' p [B, M, 128] (``photo_terms``)."""
        u = self.profile_mlp(profile)  # [B, 128]
        score = torch.einsum("bmd,bd->bm", p, u) / math.sqrt(u.shape[-1])
        return torch.exp(torch.clamp(score, -15.0, 15.0))

    def kernel(self, quality: torch.Tensor, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L [B, M, M] from the photos' quality q [B, M] (``quality``'s; a caller that reports q computes it once) and
        their g [B, M, 128] (``photo_terms``); padded items (mask False) get zero rows/columns but the diagonal's
        delta."""
        q = quality * mask
        similarity = g @ g.transpose(1, 2)
        eye = torch.eye(g.shape[1], dtype=g.dtype, device=g.device)
        return q[:, :, None] * similarity * q[:, None, :] + self.delta * eye * mask[:, :, None]

    def forward(self, profile: torch.Tensor, photos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The kernel L [B, M, M] from the profile input [B, P] and photo features [B, M, D]; padded items (mask
        False) get zero rows/columns."""
        p, g = self.photo_terms(photos)
        return self.kernel(self.quality(profile, p), g, mask)


class KernelSet(nn.Module):
    """Several modalities' kernels trained side by side on the same batches (one worker group, one optimizer).

    Their parameters are disjoint, so the gradient of the summed loss is each kernel's own gradient, and AdamW updates
    each parameter from its own gradient alone: each kernel follows the same steps as when trained by itself.
    """

    def __init__(self, kernels: dict[str, DPPKernel]):
        super().__init__()
        self.kernels = nn.ModuleDict(kernels)

    def forward(self, profiles: dict[str, torch.Tensor], photos: torch.Tensor, mask: torch.Tensor) -> dict:
        """{modality: L [B, M, M]} for the profile inputs given, one per modality."""
        return {m: self.kernels[m](profile, photos, mask) for m, profile in profiles.items()}


def logdet_pd(matrix: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(matrix)
    if bool((info > 0).any()):  # not numerically PD: fall back to the slower, more forgiving route
        return torch.linalg.slogdet(matrix)[1]
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def dpp_log_likelihood(L: torch.Tensor, mask: torch.Tensor, y_index: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
    """log det(L_Y) - log det(L + I) per example [B].

    L [B, M, M] (zero rows/cols where mask is False), y_index [B, K] positions of Y in the ground set (any value where
    y_mask is False).
    """
    B, M, _ = L.shape
    eye_m = torch.eye(M, dtype=L.dtype, device=L.device)
    normaliser = logdet_pd(L + eye_m)  # padded items: L row/col zero -> an identity row/col of L + I
    idx = torch.where(y_mask, y_index, torch.zeros_like(y_index))
    rows = torch.arange(B, device=L.device)[:, None, None]
    L_y = L[rows, idx[:, :, None], idx[:, None, :]]  # [B, K, K]
    keep = (y_mask[:, :, None] & y_mask[:, None, :]).to(L.dtype)
    eye_k = torch.eye(idx.shape[1], dtype=L.dtype, device=L.device)
    L_y = L_y * keep + eye_k * (1 - y_mask.to(L.dtype))[:, None, :]
    return logdet_pd(L_y) - normaliser


def save_dpp(state_dict: dict, config: dict, uri: str, card: dict) -> None:
    """Weights, config and model card (written last) under ``uri`` (local or s3://)."""
    from ..model_files import save_model_files

    save_model_files(uri, state_dict, config, card)


def load_dpp(uri: str) -> tuple[DPPKernel, dict]:
    """A saved DPP kernel model and its config (which names the encoder whose embeddings it expects)."""
    from ..model_files import load_model_files

    config, state = load_model_files(uri, "DPP model")
    model = DPPKernel(config["embed_dim"], config["modality"], config["delta"])
    model.load_state_dict(state)
    model.eval()
    return model, config

"""DPP kernel training epochs and the selection evaluation (Table 3 rows)."""

from __future__ import annotations

import numpy as np
import torch

from ..distributed import common_length
from ..metrics.ranking import div_at_k, precision_recall_f1_at_k
from .data import Examples, SelectionData, batch_tensors
from .greedy import greedy_map
from .kernel import DPPKernel, KernelSet, dpp_log_likelihood


def train_epoch(model: KernelSet, step, data: SelectionData, ex: Examples, batch_size: int, epoch: int, seed: int,
                device="cpu") -> dict[str, float]:
    """One pass maximising the DPP log-likelihood of every kernel of the set, on the same batches; ``step(loss)`` does
    backward + update of their summed loss. Every rank takes as many examples as the rank with the fewest (the same
    batches on every rank). Returns each modality's mean negative log-likelihood per example."""
    module = model.module if hasattr(model, "module") else model
    modalities = list(module.kernels)
    order = np.random.default_rng([seed, epoch]).permutation(len(ex))[:common_length(len(ex), device)]
    model.train()
    totals, count = dict.fromkeys(modalities, 0.0), 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        profiles = {}
        for modality in modalities:  # the photos, mask and targets are the same for every modality
            profiles[modality], photos, mask, y, y_mask = batch_tensors(data, ex, idx, modality, device)
        kernels = model(profiles, photos, mask)
        losses = {m: -dpp_log_likelihood(L, mask, y, y_mask).mean() for m, L in kernels.items()}
        step(sum(losses.values()))
        for m, loss in losses.items():
            totals[m] += float(loss.detach()) * len(idx)
        count += len(idx)
    return {m: total / max(count, 1) for m, total in totals.items()}


@torch.no_grad()
def select(model: DPPKernel, data: SelectionData, ex: Examples, k: int = 3, batch_size: int = 1024,
           device="cpu") -> np.ndarray:
    """Greedy MAP picks [N, k] as rows of data.photo_vecs (-1 = nothing picked)."""
    module = model.module if hasattr(model, "module") else model
    model.eval()
    out = np.full((len(ex), k), -1, np.int64)
    for start in range(0, len(ex), batch_size):
        idx = np.arange(start, min(start + batch_size, len(ex)))
        profile, photos, mask, _, _ = batch_tensors(data, ex, idx, module.modality, device)
        L = model(profile, photos, mask).double()
        picks = greedy_map(L, k, mask).cpu().numpy()
        ground = ex.ground[idx]
        out[idx] = np.where(picks >= 0, np.take_along_axis(ground, np.maximum(picks, 0), axis=1), -1)
    return out


def random_picks(ex: Examples, k: int, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.full((len(ex), k), -1, np.int64)
    for i, ground in enumerate(ex.ground):
        present = ground[ground >= 0]
        chosen = rng.choice(present, size=min(k, len(present)), replace=False)
        out[i, :len(chosen)] = chosen
    return out


def random_baseline(data: SelectionData, ex: Examples, k: int, seed: int, draws: int = 20) -> dict:
    """The random row of Table 3 as an expectation. P and R are exact: k random picks out of |G| photos hit
    min(k, |G|)·|Y|/|G| of the user's |Y| on average (F1 from the averaged P and R, as ``evaluate_picks``); Div is
    averaged over ``draws`` random draws. One draw over a small test split moves F1 by +-10%."""
    ground, targets = (ex.ground >= 0).sum(1), (ex.y_pos >= 0).sum(1)
    hits = np.minimum(k, ground) * targets / ground
    p, r = float(np.mean(hits / k)), float(np.mean(hits / targets))
    div = [div_at_k([data.photo_vecs[row[row >= 0]] for row in random_picks(ex, k, [seed, draw])])
           for draw in range(draws)]
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "examples": len(ex),
            "div": float(np.nanmean(div)), "draws": draws}


def evaluate_picks(data: SelectionData, ex: Examples, picks: np.ndarray, k: int = 3) -> dict:
    """Prec/Recall/F1@k against the user's own photos, and div@k of the picked photos' CLIP features."""
    relevant = [set(ex.ground[i][ex.y_pos[i][ex.y_pos[i] >= 0]].tolist()) for i in range(len(ex))]
    scores = precision_recall_f1_at_k([p.tolist() for p in picks], relevant, k)
    scores["div"] = div_at_k([data.photo_vecs[p[p >= 0]] for p in picks])
    return scores

"""PC²L training and validation steps, independent of how the model is wrapped (DDP, DeepSpeed or none).

Variants (the paper's ablation, Table 4): ``ce`` (λ1 = λ2 = 0), ``ce+ccl``, ``ce+pcl`` and ``pc2l`` (both), with
λ1 = λ2 = 0.2, α = e and τ = 0.1 by default.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..distributed import common_length
from .data import GenerationExamples, collate
from .model import pc2l_loss

VARIANTS = {"ce": (False, False), "ce+ccl": (True, False), "ce+pcl": (False, True), "pc2l": (True, True)}


def loss_weights(variant: str, lambda_ccl: float, lambda_pcl: float) -> tuple[float, float]:
    use_ccl, use_pcl = VARIANTS[variant]
    return (lambda_ccl if use_ccl else 0.0), (lambda_pcl if use_pcl else 0.0)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def train_epoch(forward, step, examples: GenerationExamples, target_ids, swapped_ids, tokenizer, batch_size: int,
                epoch: int, seed: int, weights: tuple[float, float], tau: float, alpha: float, device="cpu") -> dict:
    """One pass in a seeded order. ``forward(batch)`` is the (wrapped) model; ``step(loss)`` does backward + update.
    Every rank takes as many examples as the rank with the fewest (the contrastive losses gather equal batches).
    Returns the mean of each loss component over the epoch's batches."""
    order = np.random.default_rng([seed, epoch]).permutation(len(examples))[:common_length(len(examples), device)]

    def batches():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield examples.take(idx), [target_ids[i] for i in idx], [swapped_ids[i] for i in idx]

    return train_batches(forward, step, batches(), tokenizer, weights, tau, alpha, device)


def train_batches(forward, step, batches, tokenizer, weights: tuple[float, float], tau: float, alpha: float,
                  device="cpu") -> dict:
    """A step on each batch of ``batches``, each (examples, their target token ids, their swapped negatives' ids);
    returns the mean of each loss component over the batches. Under data parallelism every rank's batches must have
    the same sizes (the contrastive losses gather them)."""
    totals = {"loss": 0.0, "ce": 0.0, "ccl": 0.0, "pcl": 0.0}
    count = 0
    for examples, target_ids, swapped_ids in batches:
        batch = _to(collate(examples, range(len(examples)), target_ids, tokenizer,
                            swapped_ids if weights[0] else None), device)
        losses = pc2l_loss(forward(batch), batch, weights[0], weights[1], tau, alpha)
        step(losses["loss"])
        for k in totals:
            totals[k] += float(losses[k].detach())
        count += 1
    return {k: v / max(count, 1) for k, v in totals.items()}


def validation_loss(model, examples: GenerationExamples, target_ids, tokenizer, batch_size: int, device="cpu") -> dict:
    """Mean token cross-entropy on held-out examples and its perplexity."""
    parts = ((examples.take(range(start, min(start + batch_size, len(examples)))),
              target_ids[start:start + batch_size]) for start in range(0, len(examples), batch_size))
    return validation_loss_of(model, parts, tokenizer, device)


@torch.no_grad()
def validation_loss_of(model, parts, tokenizer, device="cpu") -> dict:
    """``validation_loss`` over held-out examples that come a batch at a time: (examples, their target token ids)."""
    model.eval()
    total, tokens = 0.0, 0
    for examples, target_ids in parts:
        batch = _to(collate(examples, range(len(examples)), target_ids, tokenizer), device)
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(batch)["ce"]) * n
        tokens += n
    model.train()
    ce = total / max(tokens, 1)
    return {"val_ce": ce, "val_perplexity": math.exp(min(ce, 50.0))}

"""DPP kernel training epochs and the selection evaluation (Table 3 rows)."""

from __future__ import annotations

import numpy as np
import torch

from ..metrics.ranking import div_at_k, precision_recall_f1_at_k
from .data import ExampleBatch, Examples, SelectionData, batch_tensors
from .greedy import greedy_map
from .kernel import DPPKernel, KernelSet, dpp_log_likelihood


def train_epoch(model: KernelSet, step, batches) -> tuple[dict[str, float], int]:
    """One pass over ``batches`` (ExampleBatch, the same count on every rank) maximising the DPP log-likelihood of
    every kernel of the set, on the same batches; ``step(loss)`` does backward + update of their summed loss.
    Returns (each modality's mean negative log-likelihood per example, the examples seen)."""
    module = model.module if hasattr(model, "module") else model
    modalities = list(module.kernels)
    model.train()
    totals, count = dict.fromkeys(modalities, 0.0), 0
    for batch in batches:  # the photos, mask and targets are the same for every modality
        kernels = model({m: batch.profile(m) for m in modalities}, batch.photos, batch.mask)
        losses = {m: -dpp_log_likelihood(L, batch.mask, batch.y, batch.y_mask).mean() for m, L in kernels.items()}
        step(sum(losses.values()))
        for m, loss in losses.items():
            totals[m] += float(loss.detach()) * len(batch)
        count += len(batch)
    return {m: total / max(count, 1) for m, total in totals.items()}, count


@torch.no_grad()
def pick_positions(model: DPPKernel, batch: ExampleBatch, k: int = 3) -> torch.Tensor:
    """Greedy MAP picks [B, k] as positions in each ground set (-1 = nothing picked)."""
    module = model.module if hasattr(model, "module") else model
    model.eval()
    return greedy_map(model(batch.profile(module.modality), batch.photos, batch.mask).double(), k, batch.mask)


@torch.no_grad()
def select(model: DPPKernel, data: SelectionData, ex: Examples, k: int = 3, batch_size: int = 1024,
           device="cpu") -> np.ndarray:
    """Greedy MAP picks [N, k] as rows of data.photo_vecs (-1 = nothing picked)."""
    out = np.full((len(ex), k), -1, np.int64)
    for start in range(0, len(ex), batch_size):
        idx = np.arange(start, min(start + batch_size, len(ex)))
        picks = pick_positions(model, batch_tensors(data, ex, idx, device), k).cpu().numpy()
        ground = ex.ground[idx]
        out[idx] = np.where(picks >= 0, np.take_along_axis(ground, np.maximum(picks, 0), axis=1), -1)
    return out


class PickScores:
    """``evaluate_picks``'s scores over batches of examples, memory a batch: Prec/Recall/F1@k of the picks (positions
    in each ground set) against the targets, and div@k of the picked photos' vectors."""

    def __init__(self, k: int = 3):
        self.k, self.precision, self.recall, self.div, self.divs, self.examples = k, 0.0, 0.0, 0.0, 0, 0

    def add(self, batch: ExampleBatch, picks: torch.Tensor) -> None:
        picks, y = picks.cpu().numpy(), batch.y.cpu().numpy()
        relevant = [set(row[row >= 0].tolist()) for row in y]
        scores = precision_recall_f1_at_k([p.tolist() for p in picks], relevant, self.k)
        self.precision += scores["precision"] * len(picks)
        self.recall += scores["recall"] * len(picks)
        self.examples += len(picks)
        photos = batch.photos.cpu().numpy()
        picked = [photos[i, p[p >= 0]] for i, p in enumerate(picks)]
        with_pairs = sum(len(p) >= 2 for p in picked)
        if with_pairs:
            self.div += div_at_k(picked) * with_pairs
            self.divs += with_pairs

    def sums(self) -> dict:
        """What ``add`` accumulated: batches scored apart (Ray Data tasks) add up with ``of_sums``."""
        return {"examples": self.examples, "precision": self.precision, "recall": self.recall, "div": self.div,
                "divs": self.divs}

    @classmethod
    def of_sums(cls, sums, k: int = 3) -> "PickScores":
        """The scores of every batch whose ``sums()`` are given (an iterable of dicts)."""
        out = cls(k)
        for part in sums:
            out.examples += int(part["examples"])
            out.precision += float(part["precision"])
            out.recall += float(part["recall"])
            out.div += float(part["div"])
            out.divs += int(part["divs"])
        return out

    def scores(self) -> dict:
        if not self.examples:
            raise ValueError("no examples")
        p, r = self.precision / self.examples, self.recall / self.examples
        return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "examples": self.examples,
                "div": self.div / self.divs if self.divs else float("nan")}


def random_positions(mask: np.ndarray, k: int, rngs) -> np.ndarray:
    """Positions [B, k] of k photos drawn without replacement from each ground set (``mask`` [B, M], a prefix of
    each row), example i's with ``rngs[i]`` (-1 = nothing picked, a ground set under k)."""
    out = np.full((len(mask), k), -1, np.int64)
    for i, (row, rng) in enumerate(zip(mask, rngs)):
        chosen = rng.choice(int(row.sum()), size=min(k, int(row.sum())), replace=False)
        out[i, :len(chosen)] = chosen
    return out


def example_rngs(seed: int, keys) -> list[np.random.Generator]:
    """One generator per example, from ``seed`` and the example's key (its user and business ids): an example's
    random draws are the same whichever batch it comes in."""
    import zlib

    return [np.random.default_rng([seed, zlib.crc32(key.encode())]) for key in keys]


def random_scores(batch: ExampleBatch, keys, k: int, seed: int, draws: int = 20) -> "PickScores":
    """The random row of Table 3 on a batch, as an expectation (``PickScores``, so batches add up). P and R are
    exact: k random picks out of |G| photos hit min(k, |G|)·|Y|/|G| of the user's |Y| on average (F1 from the
    averaged P and R, as ``PickScores``); Div is pooled over ``draws`` random draws of each example (seeded by its
    ``keys`` entry, ``example_rngs``). One draw over a small test split moves F1 by +-10%."""
    ground = batch.mask.sum(1).cpu().numpy().astype(np.float64)
    targets = batch.y_mask.sum(1).cpu().numpy().astype(np.float64)
    hits = np.minimum(k, ground) * targets / ground
    drawn, rngs, mask = PickScores(k), example_rngs(seed, keys), batch.mask.cpu().numpy()
    for _ in range(draws):
        drawn.add(batch, torch.as_tensor(random_positions(mask, k, rngs)))
    out = PickScores(k)
    out.precision, out.recall, out.examples = float(np.sum(hits / k)), float(np.sum(hits / targets)), len(batch)
    out.div, out.divs = drawn.div, drawn.divs
    return out


def evaluate_picks(data: SelectionData, ex: Examples, picks: np.ndarray, k: int = 3) -> dict:
    """Prec/Recall/F1@k against the user's own photos, and div@k of the picked photos' CLIP features."""
    relevant = [set(ex.ground[i][ex.y_pos[i][ex.y_pos[i] >= 0]].tolist()) for i in range(len(ex))]
    scores = precision_recall_f1_at_k([p.tolist() for p in picks], relevant, k)
    scores["div"] = div_at_k([data.photo_vecs[p[p >= 0]] for p in picks])
    return scores

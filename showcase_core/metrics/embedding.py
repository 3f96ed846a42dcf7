"""Embedding-based alignment of photos and generated text (paper §4.4).

For one showcase, I = the photos' CLIP image features (n of them) and S = the CLIP text features of the sentences of
the generated explanation (m of them; sentences split by ``showcase_core.data.alignment.split_sentences``).

- ``clip_align``: eq. (12), (1/n) Σ_i max_j cs_{j,i}, with cs the confidence of the distillation classifier Φ that
  sentence j describes photo i. Averaged over showcases.
- ``clip_score``: the same with cs replaced by the cosine of the image and sentence features (as the paper says,
  similar to Hessel et al.'s CLIPScore, but without its 2.5 rescaling or clipping at 0). Averaged over showcases.

Showcases with no photo or no sentence are left out of the average; the count used is returned with the score.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _mean_best_per_image(image_sets, sentence_sets, score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> dict:
    if len(image_sets) != len(sentence_sets):
        raise ValueError(f"{len(image_sets)} photo sets for {len(sentence_sets)} sentence sets")
    values = []
    for images, sentences in zip(image_sets, sentence_sets):
        images, sentences = np.asarray(images, dtype=np.float32), np.asarray(sentences, dtype=np.float32)
        if len(images) == 0 or len(sentences) == 0:
            continue
        cs = score(sentences[:, None, :], images[None, :, :])  # [m, n]
        values.append(float(np.mean(np.max(cs, axis=0))))
    return {"score": float(np.mean(values)) if values else float("nan"), "showcases": len(values)}


def _cosine(sentences: np.ndarray, images: np.ndarray) -> np.ndarray:
    dot = np.sum(sentences * images, axis=-1)
    return dot / np.maximum(np.linalg.norm(sentences, axis=-1) * np.linalg.norm(images, axis=-1), 1e-12)


def clip_score(image_sets, sentence_sets) -> dict:
    """image_sets / sentence_sets: per showcase an [n, D] / [m, D] array of CLIP features."""
    return _mean_best_per_image(image_sets, sentence_sets, _cosine)


def clip_align(image_sets, sentence_sets, classifier) -> dict:
    """As ``clip_score`` with Φ's confidence; ``classifier.confidence(text, image)`` broadcasts like numpy."""
    return _mean_best_per_image(image_sets, sentence_sets, classifier.confidence)

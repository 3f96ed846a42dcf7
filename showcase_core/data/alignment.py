"""The explanation-distillation classifier Φ (paper §3.3): does this sentence describe this photo?

Input: a sentence's CLIP text feature t and a photo's CLIP image feature v (both L2-normalised). The paper feeds the
concatenation [t; v] to one fully connected layer. A single linear layer over [t; v] scores t and v separately and
cannot express whether the two *agree*, so the layer here reads [t; v; t ⊙ v]: still one fully connected layer,
with the element-wise product giving it the image-text agreement CLIP was trained for. Output: a logit; the
confidence score cs = sigmoid(logit) is what CLIP-Align (eq. 12) averages.

Labelled pairs come from the world's sidecar (a sentence describes the photos in its ``pic_ids``; every other photo
of the same review is a negative) or, for real Gest, from an annotation file of (review_id, sentence, pic_id, label)
rows. Metrics: ROC AUC and F1 on held-out pairs (paper: AUC 0.97, F1 0.71), with the decision threshold chosen
on the validation pairs.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import torch
from torch import nn

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Review text -> sentences: split after ., ! or ? followed by whitespace; empty pieces dropped."""
    return [s.strip() for s in SENTENCE_END.split(text or "") if s.strip()]


class AlignmentClassifier(nn.Module):
    def __init__(self, embed_dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.fc = nn.Linear(3 * embed_dim, 1)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """text [..., D], image [..., D] (broadcast against each other) -> logits [...]."""
        text, image = torch.broadcast_tensors(text, image)
        return self.fc(torch.cat([text, image, text * image], dim=-1)).squeeze(-1)

    @torch.no_grad()
    def confidence(self, text, image) -> np.ndarray:
        """cs = sigmoid(logit), as numpy; broadcasts like ``forward``."""
        t, v = (torch.tensor(np.asarray(x), dtype=torch.float32) for x in (text, image))
        return torch.sigmoid(self(t, v)).numpy()


def sidecar_pairs(sentences: pa.Table, images: pa.Table) -> pa.Table:
    """Every (sentence, photo of the same review) pair with label 1 when the sentence describes the photo.

    Columns: sentence_id, text, image_id, label (int8), split.
    """
    photos_of: dict[str, list[str]] = {}
    for review_id, image_id in zip(images.column("review_id").to_pylist(), images.column("image_id").to_pylist()):
        photos_of.setdefault(review_id, []).append(image_id)
    rows = {"sentence_id": [], "text": [], "image_id": [], "label": [], "split": []}
    for sid, rid, text, pics, split in zip(*(sentences.column(c).to_pylist()
                                             for c in ("sentence_id", "review_id", "text", "pic_ids", "split"))):
        described = set(pics or [])
        for image_id in photos_of.get(rid, []):
            for key, value in (("sentence_id", sid), ("text", text), ("image_id", image_id),
                               ("label", int(image_id in described)), ("split", split)):
                rows[key].append(value)
    return pa.table({**rows, "label": pa.array(rows["label"], pa.int8())})


def train_classifier(text: np.ndarray, image: np.ndarray, labels: np.ndarray, epochs: int = 30, lr: float = 1e-2,
                     weight_decay: float = 1e-4, batch_size: int = 512, seed: int = 0) -> AlignmentClassifier:
    """Binary cross-entropy with Adam over shuffled mini-batches; positives up-weighted to balance the classes."""
    if len(labels) == 0 or labels.min() == labels.max():
        raise ValueError("training pairs need both positive and negative labels")
    torch.manual_seed(seed)
    model = AlignmentClassifier(text.shape[1])
    t, v = torch.as_tensor(text, dtype=torch.float32), torch.as_tensor(image, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.float32)
    pos_weight = torch.tensor((len(y) - y.sum().item()) / y.sum().item())
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            optimizer.zero_grad()
            loss_fn(model(t[idx], v[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    return model


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold that maximises F1 on these (validation) pairs."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def classification_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """ROC AUC (threshold-free) and precision / recall / F1 of ``scores >= threshold`` (scikit-learn)."""
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    predicted = (scores >= threshold).astype(int)
    return {"auc": float(roc_auc_score(labels, scores)), "f1": float(f1_score(labels, predicted)),
            "precision": float(precision_score(labels, predicted, zero_division=0)),
            "recall": float(recall_score(labels, predicted)), "threshold": threshold,
            "pairs": int(len(labels)), "positives": int(labels.sum())}


def save_classifier(model: AlignmentClassifier, uri: str, threshold: float, card: dict) -> None:
    from ..model_files import save_model_files

    save_model_files(uri, model.state_dict(), {"embed_dim": model.embed_dim, "threshold": threshold}, card)


def load_classifier(uri: str) -> tuple[AlignmentClassifier, dict]:
    from ..model_files import load_model_files

    config, state = load_model_files(uri, "alignment classifier")
    model = AlignmentClassifier(config["embed_dim"])
    model.load_state_dict(state)
    model.eval()
    return model, config


def distill_reviews(reviews: list[dict], photo_vector, encode_texts, classifier: AlignmentClassifier,
                    threshold: float) -> list[dict]:
    """Explanation sentences of reviews: each sentence with the photos of its review that Φ says it describes.

    reviews: dicts with review_id, review_text, pic_ids, split; photo_vector(pic_id) -> feature or None (not
    embedded); encode_texts(list[str]) -> [n, D]. Returns SENTENCES rows (entities empty: Φ does not name them)
    for the sentences that describe at least one photo.
    """
    pieces = [(r, i, s) for r in reviews for i, s in enumerate(split_sentences(r["review_text"]))]
    if not pieces:
        return []
    text_features = encode_texts([s for _, _, s in pieces])
    rows = []
    for (review, index, sentence), t in zip(pieces, text_features):
        pics = [(p, photo_vector(p)) for p in review["pic_ids"] or []]
        pics = [(p, v) for p, v in pics if v is not None]
        if not pics:
            continue
        cs = classifier.confidence(np.broadcast_to(t, (len(pics), len(t))), np.stack([v for _, v in pics]))
        described = [p for (p, _), c in zip(pics, np.atleast_1d(cs)) if c >= threshold]
        if described:
            rows.append({"sentence_id": f"{review['review_id']}#{index}", "review_id": review["review_id"],
                         "sentence_index": index, "text": sentence, "pic_ids": described, "entities": [],
                         "split": review["split"]})
    return rows

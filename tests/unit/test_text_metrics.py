import socket

import pytest
from nltk.translate.bleu_score import corpus_bleu
from nltk.translate.nist_score import corpus_nist
from sacrebleu.metrics import BLEU

from showcase_core.metrics.text import bertscore, bleu, distinct_n, meteor, meteor_mode, nist, text_metrics, tokenize

HYPS = ["The food was very good, and the staff was friendly.", "We ordered the spring rolls with peanut sauce."]
REFS = ["the food was good and the staff was very friendly .", "we ordered spring rolls with a peanut sauce ."]


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("Don't STOP, it's good.") == ["don", "'", "t", "stop", ",", "it", "'", "s", "good", "."]


def test_bleu1_hand_computed():
    # hyp 1: the food was very good . (6) vs the food was good . -> 5 clipped matches
    # hyp 2: we ordered the spring rolls (5) vs we ordered spring rolls and noodles -> 4; lengths 11 vs 5+6: BP = 1
    hyps = ["The food was very good.", "We ordered the spring rolls"]
    refs = ["the food was good .", "we ordered spring rolls and noodles"]
    assert bleu(hyps, refs, 1) == pytest.approx(100 * 9 / 11)


@pytest.mark.parametrize("n", [1, 4])
def test_bleu_equals_nltk_and_sacrebleu_on_the_same_tokens(n):
    hyp_tok, ref_tok = [tokenize(h) for h in HYPS], [[tokenize(r)] for r in REFS]
    ours = bleu(HYPS, REFS, n)
    assert 0 < ours < 100
    assert ours == pytest.approx(100 * corpus_bleu(ref_tok, hyp_tok, weights=(1 / n,) * n))
    sacre = BLEU(tokenize="none", smooth_method="none", max_ngram_order=n).corpus_score(
        [" ".join(h) for h in hyp_tok], [[" ".join(r[0]) for r in ref_tok]]
    )
    assert ours == pytest.approx(sacre.score)


def test_bleu_perfect_disjoint_and_multi_reference():
    assert bleu(REFS, REFS, 4) == pytest.approx(100.0)
    assert bleu(["alpha beta gamma delta"], ["one two three four"], 4) < 1e-6
    assert bleu(["alpha beta gamma delta"], ["one two three four"], 1) == 0.0
    assert bleu([HYPS[0]], [[REFS[1], HYPS[0]]], 4) == pytest.approx(100.0)  # best reference is the exact one
    with pytest.raises(ValueError):
        bleu(HYPS, REFS[:1], 4)


def test_distinct_n_hand_computed():
    texts = ["The food was good.", "the food was bad"]
    # tokens: the food was good . | the food was bad -> 9 unigrams, 6 distinct; 7 bigrams, 5 distinct
    assert distinct_n(texts, 1) == pytest.approx(6 / 9)
    assert distinct_n(texts, 2) == pytest.approx(5 / 7)
    assert distinct_n(["same words here", "same words here"], 1) == pytest.approx(0.5)
    assert distinct_n(["one", ""], 2) == 0.0  # no bigram at all


def test_nist_equals_nltk_and_orders_hypotheses():
    hyp_tok, ref_tok = [tokenize(h) for h in HYPS], [[tokenize(r)] for r in REFS]
    assert nist(HYPS, REFS) == pytest.approx(corpus_nist(ref_tok, hyp_tok, n=4))
    refs = ["the pork spring rolls came with a peanut dipping sauce"]
    good = nist(["the spring rolls came with a peanut sauce"], refs)
    bad = nist(["the burger was fine"], refs)
    assert good > bad > 0
    assert nist(["alpha beta"], refs) == 0.0


def test_nist_hypotheses_shorter_than_n_do_not_crash():
    refs = ["the cat sat", "great food"]
    short = nist(["the cat", "great food"], refs, n=4)  # nltk's corpus_nist(n=4) divides by zero here
    assert short == pytest.approx(nist(["the cat", "great food"], refs, n=2)) and short > 0
    assert nist(["", ""], refs) == 0.0


def test_meteor_identical_stem_and_disjoint():
    # identical, 6 words, one chunk: 1 - 0.5 * (1/6)^3
    assert meteor(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1 - 0.5 / 216)
    # "cats"/"cat" aligned by the Porter-stem stage: same alignment as the identical 3-word sentence;
    # exact matching alone would give 2 matches in 2 chunks: 1/3
    assert meteor(["the cats sat"], ["The cat sat"]) == pytest.approx(1 - 0.5 / 27)
    assert meteor(["alpha beta"], ["the cat sat"]) == 0.0
    assert meteor(["the cat sat"], [["alpha beta", "the cat sat"]]) == pytest.approx(1 - 0.5 / 27)  # best reference
    assert meteor(["alpha beta", "the cat sat"], ["the cat sat", "the cat sat"]) == pytest.approx((1 - 0.5 / 27) / 2)  # mean


def test_meteor_mode_matches_wordnet_availability():
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
        expected = "wordnet"
    except LookupError:
        expected = "exact+stem"
    assert meteor_mode() == expected
    synonym = meteor(["large"], ["big"])
    assert synonym == 0.0 if expected == "exact+stem" else synonym > 0


def test_text_metrics_keys_and_percent_scale():
    m = text_metrics(HYPS, REFS)
    assert m["BLEU-1"] == pytest.approx(bleu(HYPS, REFS, 1))
    assert m["BLEU-4"] == pytest.approx(bleu(HYPS, REFS, 4))
    assert m["METEOR"] == pytest.approx(100 * meteor(HYPS, REFS))
    assert m["NIST"] == pytest.approx(100 * nist(HYPS, REFS))
    assert m["Distinct-1"] == pytest.approx(100 * distinct_n(HYPS, 1))
    assert m["Distinct-2"] == pytest.approx(100 * distinct_n(HYPS, 2))
    assert m["examples"] == 2 and m["meteor_mode"] == meteor_mode()


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)


def test_bertscore_offline_identical_paraphrase_unrelated(offline):
    ref = "the food was delicious and the staff were friendly"
    same = bertscore([ref], [ref])
    assert same["f1"] > 0.99 and same["precision"] > 0.99 and same["recall"] > 0.99
    paraphrase = bertscore(["the meal was tasty and the waiters were kind"], [ref])["f1"]
    unrelated = bertscore(["my car needs new tires before winter"], [ref])["f1"]
    assert paraphrase > unrelated + 0.1
    # an empty hypothesis scores 0 (bert_score's rule), so the mean over [identical, empty] is about 0.5
    assert bertscore([ref, ""], [ref, ref])["f1"] == pytest.approx(0.5, abs=0.01)


def test_repeats_a_sentence_compares_sentences_without_case_punctuation_or_spaces():
    from showcase_core.metrics.text import repeats_a_sentence, repetition

    assert repeats_a_sentence("I keep coming back! i keep  coming back.")
    assert not repeats_a_sentence("The ramen was great. The gyoza was great.")
    assert not repeats_a_sentence("") and not repeats_a_sentence("One sentence only.")
    assert repetition(["A. A.", "A. B.", "C."]) == {"repeats": 1 / 3, "sentences": 5 / 3}
    assert repetition([]) == {"repeats": 0.0, "sentences": 0.0}

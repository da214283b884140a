"""Corpus BLEU (jaxmod.metrics.corpus_bleu) on hand-computed cases; scale 0..1."""

from __future__ import annotations

import math

import pytest

from jaxmod.metrics import bleu_statistics, corpus_bleu


def test_perfect_match_is_one() -> None:
    refs = [["the", "cat", "sat", "on", "the", "mat"], ["a", "b", "c", "d"]]
    assert corpus_bleu(refs, refs) == pytest.approx(1.0)


def test_zero_overlap_is_zero() -> None:
    assert corpus_bleu([["a", "b", "c", "d"]], [["w", "x", "y", "z"]]) == 0.0


def test_clipping_of_repeated_unigrams_papineni_example() -> None:
    # Papineni et al.: candidate "the the the the the the the" against "the cat is on the mat": p1 = 2/7.
    ref = [["the", "cat", "is", "on", "the", "mat"]]
    hyp = [["the"] * 7]
    stats = bleu_statistics(ref, hyp, max_order=1)
    assert stats["matches"].tolist() == [2] and stats["totals"].tolist() == [7]
    assert corpus_bleu(ref, hyp, max_order=1) == pytest.approx(2 / 7)  # c = 7 > r = 6: no brevity penalty


def test_brevity_penalty() -> None:
    # Hypothesis is a correct prefix of length 4 of a 6-token reference: every precision is 1, BP = exp(1 - 6/4).
    ref = [["a", "b", "c", "d", "e", "f"]]
    hyp = [["a", "b", "c", "d"]]
    assert corpus_bleu(ref, hyp) == pytest.approx(math.exp(1 - 6 / 4))


def test_hand_computed_bleu_2_pooled_over_corpus() -> None:
    refs = [["a", "b", "c"], ["x", "y"]]
    hyps = [["a", "b", "d"], ["x", "z"]]
    # unigrams: a, b, x match -> 3/5; bigrams: (a b) matches -> 1/3; c = r = 5 -> BP 1.
    stats = bleu_statistics(refs, hyps, max_order=2)
    assert stats["matches"].tolist() == [3, 1] and stats["totals"].tolist() == [5, 3]
    assert corpus_bleu(refs, hyps, max_order=2) == pytest.approx(math.sqrt(3 / 5 * 1 / 3))


def test_ngrams_only_match_within_their_own_sentence() -> None:
    # "b c" appears in the other sentence's reference only: it must not count.
    refs = [["a", "b"], ["b", "c"]]
    hyps = [["b", "c"], ["a", "b"]]
    stats = bleu_statistics(refs, hyps, max_order=2)
    assert stats["matches"].tolist() == [2, 0]


def test_integer_tokens_and_exp_smoothing() -> None:
    refs = [[1, 2, 3, 4]]
    hyps = [[1, 2, 3, 9]]
    # p = 3/4, 2/3, 1/2, 0/1 -> unsmoothed 0; sacrebleu 'exp' smoothing replaces p4 by 1 / (2 * 1).
    assert corpus_bleu(refs, hyps) == 0.0
    expected = math.exp((math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2) + math.log(1 / 2)) / 4)
    assert corpus_bleu(refs, hyps, smooth="exp") == pytest.approx(expected)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="2 references but 1"):
        corpus_bleu([["a"], ["b"]], [["a"]])
    with pytest.raises(ValueError, match="at least one"):
        corpus_bleu([], [])
    with pytest.raises(TypeError, match="string"):
        corpus_bleu(["a b"], ["a b"])
    with pytest.raises(ValueError, match="max_order"):
        corpus_bleu([["a"]], [["a"]], max_order=0)
    with pytest.raises(ValueError, match="smooth"):
        corpus_bleu([["a"]], [["a"]], smooth="add-one")


def test_empty_hypothesis_scores_zero() -> None:
    assert corpus_bleu([["a", "b"]], [[]]) == 0.0

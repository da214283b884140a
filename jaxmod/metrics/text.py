"""BLEU (corpus n-gram statistics and the score) and the token preprocessing translation is scored with."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np


def _ngram_keys(codes: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sentence id, n-gram as an (K, n) row) of every n-gram of a flat, ragged corpus of integer codes."""
    starts = np.cumsum(lengths) - lengths
    sentence = np.repeat(np.arange(lengths.shape[0]), lengths)
    position = np.arange(codes.shape[0]) - np.repeat(starts, lengths)
    ok = position + n <= lengths[sentence]
    begin = np.flatnonzero(ok)
    grams = codes[begin[:, None] + np.arange(n)[None, :]] if begin.size else np.zeros((0, n), dtype=codes.dtype)
    return sentence[begin], grams


def bleu_statistics(
    references: Sequence[Sequence[Any]], hypotheses: Sequence[Sequence[Any]], max_order: int = 4
) -> dict[str, Any]:
    """Corpus n-gram statistics for BLEU: clipped matches and totals per order 1..max_order, and the hypothesis and
    reference lengths. One reference per hypothesis; tokens are any comparable hashables (strings or ints).

    Vectorised over the corpus: tokens are coded once with `np.unique`, each order's n-grams become rows that are
    counted per sentence with `np.unique(axis=0)`, and a hypothesis n-gram's count is clipped by the same n-gram's
    count in its own reference (Papineni et al.'s modified precision).
    """
    if isinstance(max_order, bool) or not isinstance(max_order, numbers.Integral) or max_order < 1:
        raise ValueError(f"max_order must be a positive integer, got {max_order!r}")
    if isinstance(references, (str, bytes)) or isinstance(hypotheses, (str, bytes)):
        raise TypeError("references and hypotheses must be sequences of token sequences, not strings")
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if len(hypotheses) == 0:
        raise ValueError("BLEU needs at least one hypothesis")
    for what, corpus in (("reference", references), ("hypothesis", hypotheses)):
        bad = next((i for i, s in enumerate(corpus) if isinstance(s, (str, bytes))), None)
        if bad is not None:
            raise TypeError(f"{what} {bad} is a string; pass a list of tokens (e.g. text.split())")
    ref_len = np.array([len(s) for s in references], dtype=np.int64)
    hyp_len = np.array([len(s) for s in hypotheses], dtype=np.int64)
    tokens = [t for s in references for t in s] + [t for s in hypotheses for t in s]
    flat = np.empty(len(tokens), dtype=object)
    flat[:] = tokens
    try:
        _, codes = np.unique(flat, return_inverse=True) if flat.size else (None, np.zeros(0, dtype=np.int64))
    except TypeError:
        raise TypeError("tokens must be mutually comparable (all strings or all integers)") from None
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    ref_codes, hyp_codes = codes[: ref_len.sum()], codes[ref_len.sum() :]
    matches = np.zeros(max_order, dtype=np.int64)
    totals = np.zeros(max_order, dtype=np.int64)
    for n in range(1, max_order + 1):  # loop over n-gram orders
        ref_sentence, ref_grams = _ngram_keys(ref_codes, ref_len, n)
        hyp_sentence, hyp_grams = _ngram_keys(hyp_codes, hyp_len, n)
        totals[n - 1] = hyp_sentence.shape[0]
        if hyp_sentence.size == 0 or ref_sentence.size == 0:
            continue
        rows = np.concatenate([np.column_stack([ref_sentence, ref_grams]), np.column_stack([hyp_sentence, hyp_grams])])
        _, key = np.unique(rows, axis=0, return_inverse=True)
        key = key.reshape(-1)
        ref_count = np.bincount(key[: ref_sentence.shape[0]], minlength=int(key.max()) + 1)
        hyp_count = np.bincount(key[ref_sentence.shape[0] :], minlength=int(key.max()) + 1)
        matches[n - 1] = int(np.minimum(ref_count, hyp_count).sum())
    return {
        "matches": matches,
        "totals": totals,
        "hyp_len": int(hyp_len.sum()),
        "ref_len": int(ref_len.sum()),
    }


def corpus_bleu(
    references: Sequence[Sequence[Any]],
    hypotheses: Sequence[Sequence[Any]],
    max_order: int = 4,
    smooth: str = "none",
) -> float:
    """Corpus BLEU (Papineni et al. 2002) on token lists, on the 0..1 scale (multiply by 100 for sacrebleu's scale).

    BLEU = BP * exp(mean over n = 1..max_order of log p_n), with p_n the clipped n-gram precision pooled over the
    corpus and BP = min(1, exp(1 - r / c)) the brevity penalty (c, r: total hypothesis and reference lengths). One
    reference per hypothesis, no tokenisation of its own (the caller's tokens are used as they are, as in the
    reference code's `nltk` `corpus_bleu` on word lists; `max_order` 1..4 gives its '1-grams' .. '1-4-grams').
    `smooth="none"` returns 0 when some order has no match; `smooth="exp"` is sacrebleu's default smoothing
    (the k-th order without a match counts as 1 / (2^k * total)).
    """
    if smooth not in ("none", "exp"):
        raise ValueError(f"smooth must be 'none' or 'exp', got {smooth!r}")
    stats = bleu_statistics(references, hypotheses, max_order)
    matches, totals = stats["matches"].astype(np.float64), stats["totals"].astype(np.float64)
    c, r = stats["hyp_len"], stats["ref_len"]
    if c == 0:
        return 0.0
    if smooth == "none":
        if np.any(matches == 0):
            return 0.0
        precisions = matches / totals
    else:
        zero = (matches == 0) & (totals > 0)
        k = np.cumsum(zero)
        safe_totals = np.maximum(totals, 1.0)
        precisions = np.where(zero, 1.0 / (2.0**k * safe_totals), matches / safe_totals)
        if np.any(totals == 0):
            return 0.0
    brevity = 1.0 if c > r else math.exp(1.0 - r / c)
    return float(brevity * math.exp(np.mean(np.log(precisions))))


EOS, PAD = 3, 0  # decoder-target vocabularies start <pad>, <unk>, <bos>, <eos> (jaxmod.data.text)


def token_lists(ids: np.ndarray) -> list[list[int]]:
    """Token ids up to the first <eos>, pads dropped: the strings BLEU compares."""
    out = []
    for row in np.asarray(ids):
        stop = np.flatnonzero(row == EOS)
        row = row[: stop[0]] if len(stop) else row
        out.append([int(t) for t in row if t != PAD])
    return out


def bleu_points(references: Sequence[Sequence[int]], hypotheses: Sequence[Sequence[int]], max_order: int = 4) -> float:
    """Corpus BLEU (n-grams up to ``max_order``; 4 = BLEU-4) in points, 0 to 100."""
    return 100.0 * float(corpus_bleu(references, hypotheses, max_order=max_order))


def bleu_by_group(pred: np.ndarray, target: np.ndarray, groups: np.ndarray, names: Sequence[str],
                  max_order: int = 4) -> dict[str, float]:
    """Corpus BLEU points over all sentences (``all``) and per group (target language) of token-id rows."""
    refs, hyps = token_lists(target), token_lists(pred)
    out = {"all": bleu_points(refs, hyps, max_order)}
    groups = np.asarray(groups)
    for g, name in enumerate(names):
        idx = np.flatnonzero(groups == g)
        out[name] = bleu_points([refs[i] for i in idx], [hyps[i] for i in idx], max_order)
    return out

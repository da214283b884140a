r"""Imtiaz et al.'s RQ2 (reuse) and RQ3 (replacement) and the two motivating examples, on our real data.

    python -m experiments.rnn_scenarios --scenario_output_dir=experiments/results/rnn

Writes ``scenarios.md`` (Table III and Table IV layout, then Table V) and ``scenarios.csv`` (one row per
composition) to the output folder; ``scenarios.jsonl`` keeps every finished job's rows, so a run resumes and
several runs (other parts or cells) add up, each command listed in the Markdown. Parts (``--scenario_parts``):

- ``intra`` (Tables III/IV, rows 1:1, M:1, 1:N, M:N): per shape and cell, a model with
  ``--scenario_layers`` layers (the deepest, as the paper's RNN-4) and a 1-layer model are trained and
  decomposed. *Reuse*: two modules of the deep model voted together on the test samples (steps) of their
  two labels, against a model of the same architecture trained from scratch on those two labels only.
  *Replace*: of the two models the one with the lower test accuracy is "faulty"; each of its modules in
  turn is replaced by the other model's module of the same label and the modules are voted together;
  the change is against the faulty model's own accuracy.
- ``inter`` (rows M:1-M:N): a many-to-one model (fortunes) and a many-to-many tagger (brown_tags) read the
  same input vocabulary (fortunes re-coded into Brown's words, 20 steps). *Reuse*: a tag module and a
  category module decide whether a text is a Brown sentence holding that tag or a fortune of that
  category (the tagger module scores by its best step); *replace*: the fortunes model's module of one
  category is replaced by a tag module (Brown sentences holding the tag take the category's label). Both
  against a many-to-one model trained from scratch on the same (under-sampled) data, as the authors' code.
- ``translation`` (rows Encoder-Decoder): English -> {fr, de, it}; reuse = two language modules against a
  model trained on those two languages (BLEU); replace = the lower-BLEU model's language module replaced by
  the other model's.
- ``motivating`` (Table V): add English -> Ukrainian to the {fr, de, it} model by (1) the uk module of
  another multilingual model ({uk, fr}) and (2) a small model trained on uk alone, against a model trained
  on all four; replace the faulty English -> Estonian module of a {et, de, it} model trained on partly
  wrong et pairs (``--scenario_fault_fraction`` of its et targets shuffled) by (1) the et module of a
  clean {et, fr} model and (2) a small model trained on clean et alone, against the faulty model.

Every translation model shares one vocabulary (``translation`` loaded with all five languages), so any
module composes with any other (``check_composable``). The inter-shape 1:1-1:N rows are not run: our one-to-one
data are bag-of-words features and our one-to-many data letters, so no module of one reads the other's inputs
(the paper's two datasets were both text). Translation scores are corpus BLEU-2 in points (n-grams up to 2, as
one of the authors' ``calculate_bleu`` variants): targets have at most 7 words (the short sentences a CPU
budget trains to a non-zero score), so BLEU-4 is 0 on most per-language test sets; it is kept per language.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import numpy as np
from absl import app, flags
from tqdm.auto import tqdm

from experiments.common import append_jsonl_rows, read_jsonl_rows, write_json_atomic
from experiments.pipeline_rnn import RnnRun, accuracy, build_model, fit_split, load, standard_probs
from jaxmod import metrics, models, reuse
from jaxmod.approaches.rnn import RnnDecomposition, vocab_fingerprint
from jaxmod.data.text import SequenceDataset, SequenceSplit, load_sequence_dataset, model_split, subset_split
from jaxmod.models.recurrent import CELLS, recurrent_module
from jaxmod.modules import ModuleSet
from jaxmod.running import module_outputs
from jaxmod.voting import voting_accuracy

FLAGS = flags.FLAGS
PARTS = ("intra", "inter", "translation", "motivating")
INTRA_SHAPES = ("one_to_one", "many_to_one", "one_to_many", "many_to_many")
LANGUAGES = ("fr", "de", "it", "uk", "et")  # one shared vocabulary for every translation model
flags.DEFINE_list("scenario_parts", list(PARTS), "Scenario parts to run.")
flags.DEFINE_list("scenario_cells", list(CELLS), "Cells for the intra, inter and translation rows.")
flags.DEFINE_list("scenario_shapes", list(INTRA_SHAPES), "Shapes of the intra rows.")
flags.DEFINE_list("scenario_translation_cells", ["lstm"], "Cells of the translation rows.")
flags.DEFINE_list("scenario_motivating_cells", ["lstm"], "Cells of the motivating examples (paper: LSTM).")
flags.DEFINE_integer("scenario_layers", 2, "Layers of the deep model (the paper's RNN-4); the other has 1.")
flags.DEFINE_integer("scenario_pairs", 3, "Label pairs per model for reuse (and tag/category pairs for inter).")
flags.DEFINE_integer("scenario_units", 24, "Hidden units per recurrent layer.")
flags.DEFINE_integer("scenario_seed", 0, "Seed.")
flags.DEFINE_float("scenario_fault_fraction", 1.0, "Share of the faulty model's et training targets shuffled "
                   "(1.0: every et pair wrong; at 0.5 the model still learned Estonian from the correct half).")
flags.DEFINE_integer("scenario_translation_epochs", 8, "Epochs of every translation model.")
flags.DEFINE_integer("scenario_translation_units", 48, "Hidden units of every translation model.")
flags.DEFINE_string("scenario_output_dir", "experiments/results/rnn", "Where scenarios.md/.csv/.json go.")
flags.DEFINE_bool("scenario_progress", True, "Progress bars.")

# Small real budgets (a shared 2-core CPU): the Table II settings, shorter translation sentences.
SETTINGS: dict[str, dict[str, Any]] = {
    "one_to_one": {"vocab_size": 500, "train_limit": 1500, "epochs": 6},
    "one_to_many": {"train_limit": 3000, "test_limit": 1000, "epochs": 4},
    "many_to_one": {"max_input_len": 20, "train_limit": 3000, "test_limit": 1000, "epochs": 4},
    "many_to_many": {"max_input_len": 20, "train_limit": 2000, "test_limit": 1000, "epochs": 3},
    "encoder_decoder": {"max_input_len": 6, "max_output_len": 8, "vocab_size": 3000},
}


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained, decomposed model: what a scenario composes."""

    model: nn.Module
    variables: Any
    modules: ModuleSet
    accuracy: float


# ---------------------------------------------------------------------------------------------------------
# Pieces


def rows_of(a: SequenceSplit, rows: np.ndarray) -> SequenceSplit:
    """The samples ``rows`` (indices or a boolean mask) of a split."""
    return SequenceSplit(a.x[rows], a.y[rows], a.y_valid[rows], None if a.group is None else a.group[rows])


def pair_arrays(a: SequenceSplit, pair: Sequence[int]) -> SequenceSplit:
    """A two-label problem: the samples (steps) labelled ``pair[0]`` or ``pair[1]``, relabelled 0 and 1;
    for per-step labels the other steps become invalid and samples with no such step are dropped."""
    chosen = np.isin(a.y, pair) & a.y_valid
    y = (a.y == pair[1]).astype(np.int32)
    rows = chosen if a.y.ndim == 1 else chosen.any(axis=1)
    return SequenceSplit(a.x[rows], y[rows], chosen[rows])


def undersample(y: np.ndarray, seed: int) -> np.ndarray:
    """Rows keeping ``min(count)`` samples of every label present (seeded, original order), as the authors'
    ``RandomUnderSampler``."""
    labels, counts = np.unique(y, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(y))
    rank = np.empty(len(y), np.int64)
    shuffled = y[order]
    sort = np.argsort(shuffled, kind="stable")
    starts = np.searchsorted(shuffled[sort], labels)
    position = np.arange(len(y)) - np.repeat(starts, counts)
    rank[order[sort]] = position
    return np.flatnonzero(rank < counts.min())


def decompose(model: nn.Module, variables: Any, data: SequenceSplit, approach: RnnDecomposition,
              num_modules: int, dataset: str, vocab: Sequence[str] | None, translation: bool = False) -> ModuleSet:
    """One module per label (per target language when ``translation``), as a module set whose metadata
    carries the input vocabulary's fingerprint (so composition sees what each module reads)."""
    labels, valid = (data.group, None) if translation else (data.y, data.y_valid)
    modules = approach.decompose(model, variables, data.x, labels, num_modules, valid).modules
    fingerprint = vocab_fingerprint(vocab, recurrent_module(model).vocab_size)
    modules = modules.with_meta(dataset=dataset, input_vocab=fingerprint)
    # translation: one module per target language, rows are languages, not output classes
    return modules.with_meta(extra={"module_labels": "target languages"}) if translation else modules


def train_decompose(model: nn.Module, cfg: RnnRun, arrays: dict[str, SequenceSplit],
                    approach: RnnDecomposition, num_classes: int, dataset: str, vocab: Sequence[str] | None) -> Trained:
    """Train a classifier, measure it on the test split and decompose it."""
    variables = fit_split(model, cfg, arrays["train"])
    modules = decompose(model, variables, arrays["train"], approach, num_classes, dataset, vocab)
    return Trained(model, variables, modules, accuracy(model, variables, arrays["test"]))


def row(table: str, kind: str, io: str, cell: str, case: str, composed: float, reference: float,
        metric: str = "accuracy", **extra: Any) -> dict[str, Any]:
    """One composition: its score, the reference's, and the change in points (accuracy x 100 or BLEU)."""
    scale = 100.0 if metric == "accuracy" else 1.0
    return {"table": table, "type": kind, "io": io, "cell": cell, "case": case, "metric": metric,
            "composed": composed, "reference": reference, "change_points": scale * (composed - reference), **extra}


# ---------------------------------------------------------------------------------------------------------
# Intra-shape reuse and replacement (Tables III and IV, rows 1:1, M:1, 1:N, M:N)


def two_label_model(model: nn.Module) -> nn.Module:
    """The same zoo recurrent model with a two-label output layer (a model trained from scratch on a pair)."""
    module = recurrent_module(model)
    return models.create_model(models.model_name(module), 2, **models.model_config(module))


def intra(shape: str, cell: str, deep_layers: int, pairs: int, units: int, seed: int, mode: str) -> list[dict]:
    """Reuse (two modules of the deep model vs a two-label model from scratch) and replacement (the weaker
    model's module replaced by the stronger's, vs the weaker model) for one shape and cell."""
    approach = RnnDecomposition.for_shape(shape, mode="rolled" if shape == "one_to_one" else mode)
    cfgs = {n: RnnRun(cell=cell, shape=shape, layers=n, units=units, seed=seed, **SETTINGS[shape])
            for n in sorted({1, deep_layers})}
    data = load(cfgs[deep_layers])
    ds, arrays = data.dataset, {"train": data.train, "val": data.val, "test": data.test}
    te = arrays["test"]
    trained = {n: train_decompose(build_model(cfg, ds, arrays["train"].x), cfg, arrays, approach,
                                  ds.num_classes, ds.name, ds.input_vocab) for n, cfg in cfgs.items()}
    deep = trained[deep_layers]
    out: list[dict] = []
    conf, _ = reuse.cross_model_confidences([deep.modules], [deep.variables], te.x)
    for pair in reuse.sample_subtasks(ds.num_classes, pairs, min_size=2, max_size=2, seed=seed):
        test_pair = pair_arrays(te, pair)
        train_pair = pair_arrays(arrays["train"], pair)
        if not test_pair.y_valid.any() or len(np.unique(train_pair.y[train_pair.y_valid])) < 2:
            continue
        chosen = np.isin(te.y, pair) & te.y_valid
        composed = voting_accuracy(conf[list(pair)], te.y, classes=pair, valid=chosen)
        scratch = two_label_model(deep.model)
        variables = fit_split(scratch, cfgs[deep_layers], train_pair)
        reference = accuracy(scratch, variables, test_pair)
        out.append(row("III", "intra", shape, cell, "-".join(ds.output_vocab[c] for c in pair), composed, reference,
                       dataset=ds.name, layers=deep_layers, reference_kind="two-label model from scratch"))
    if len(trained) > 1:
        faulty, best = sorted(trained.values(), key=lambda t: t.accuracy)
        both, _ = reuse.cross_model_confidences([faulty.modules, best.modules], [faulty.variables, best.variables],
                                                te.x)
        c = ds.num_classes
        base = voting_accuracy(both[:c], te.y, valid=te.y_valid)
        for label in range(c):
            chosen_rows = [c + k if k == label else k for k in range(c)]
            composed = voting_accuracy(both[chosen_rows], te.y, valid=te.y_valid)
            out.append(row("IV", "intra", shape, cell, f"replace {ds.output_vocab[label]}", composed, faulty.accuracy,
                           dataset=ds.name, faulty_layers=recurrent_module(faulty.model).num_layers,
                           best_layers=recurrent_module(best.model).num_layers, faulty_composed=base,
                           best_accuracy=best.accuracy,
                           reference_kind="faulty model"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Inter-shape reuse and replacement (rows M:1-M:N)


def recode(ds: SequenceDataset, vocab: Sequence[str]) -> SequenceDataset:
    """``ds`` with its token ids re-coded into ``vocab`` (unknown words -> ``<unk>`` = 1, padding stays 0)."""
    index = {w: i for i, w in enumerate(vocab)}
    table = np.array([index.get(w, 1) for w in ds.input_vocab], np.int32)
    table[0] = 0
    split = lambda s: dataclasses.replace(s, x=table[s.x])  # noqa: E731
    return dataclasses.replace(ds, train=split(ds.train), val=split(ds.val), test=split(ds.test),
                               input_vocab=tuple(vocab))


def tag_scores(probs: np.ndarray, x: np.ndarray, odds: bool) -> np.ndarray:
    """A per-step module's score for a whole input: its best valid step (probability or odds)."""
    score = probs / np.maximum(1 - probs, 1e-12) if odds else probs
    return np.max(np.where(x != 0, score, -np.inf), axis=1)


def inter(cell: str, pairs: int, units: int, seed: int, mode: str) -> list[dict]:
    """M:1-M:N reuse and replacement for one cell (tagger: brown_tags; classifier: fortunes, recoded)."""
    approach = RnnDecomposition.for_shape("many_to_one", mode=mode)
    cfg_t = RnnRun(cell=cell, shape="many_to_many", units=units, seed=seed, **SETTINGS["many_to_many"])
    cfg_c = RnnRun(cell=cell, shape="many_to_one", units=units, seed=seed, **SETTINGS["many_to_one"])
    data_t = load(cfg_t)
    ds_t, arr_t = data_t.dataset, {"train": data_t.train, "val": data_t.val, "test": data_t.test}
    ds_c = recode(load_sequence_dataset("fortunes", max_input_len=cfg_c.max_input_len, seed=seed), ds_t.input_vocab)
    arr_c = {s: model_split(ds_c, s) for s in ("train", "val", "test")}
    arr_c["train"] = subset_split(arr_c["train"], cfg_c.train_limit, seed)
    arr_c["test"] = subset_split(arr_c["test"], cfg_c.test_limit, seed)
    tagger = train_decompose(build_model(cfg_t, ds_t, arr_t["train"].x), cfg_t, arr_t, approach,
                             ds_t.num_classes, ds_t.name, ds_t.input_vocab)
    classifier = train_decompose(build_model(cfg_c, ds_c, arr_c["train"].x), cfg_c, arr_c, approach,
                                 ds_c.num_classes, ds_c.name, ds_c.input_vocab)
    reuse.check_same_inputs([tagger.modules.meta, classifier.modules.meta])
    tt, ct = arr_t["test"], arr_c["test"]
    tag_probs = module_outputs(tagger.model, tagger.variables, tagger.modules,
                               np.concatenate([tt.x, ct.x]))  # (tags, N_t + N_c, T)
    cls_probs = module_outputs(classifier.model, classifier.variables, classifier.modules,
                               np.concatenate([tt.x, ct.x]))  # (classes, N_t + N_c)
    has_tag = lambda a, t: np.any((a.y == t) & a.y_valid, axis=1)  # noqa: E731
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(ds_t.num_classes * ds_c.num_classes)[:pairs]
    out: list[dict] = []
    x_all = np.concatenate([tt.x, ct.x])
    for t, k in zip(chosen // ds_c.num_classes, chosen % ds_c.num_classes, strict=True):
        t, k = int(t), int(k)
        if not has_tag(arr_t["train"], t).any() or not has_tag(tt, t).any():
            continue  # a tag absent from a split has nothing to reuse or test
        names = f"{ds_t.output_vocab[t]} (M:N) / {ds_c.output_vocab[k]} (M:1)"
        # Reuse: a two-label problem, label 0 = a Brown sentence holding tag t, 1 = a fortune of category k.
        test_rows = np.concatenate([has_tag(tt, t), ct.y == k])
        y_test = np.concatenate([np.zeros(len(tt.x), np.int32), np.ones(len(ct.x), np.int32)])
        score_t = tag_scores(tag_probs[t], x_all, odds=True)
        score_k = cls_probs[k] / np.maximum(1 - cls_probs[k], 1e-12)
        composed = float(np.mean((score_k > score_t)[test_rows] == y_test[test_rows]))
        tr_t, tr_c = arr_t["train"], arr_c["train"]
        x_tr = np.concatenate([tr_t.x[has_tag(tr_t, t)], tr_c.x[tr_c.y == k]])
        y_tr = np.concatenate([np.zeros(int(has_tag(tr_t, t).sum()), np.int32),
                               np.ones(int((tr_c.y == k).sum()), np.int32)])
        keep = undersample(y_tr, seed)
        scratch = two_label_model(classifier.model)
        variables = fit_split(scratch, cfg_c, SequenceSplit(x_tr[keep], y_tr[keep], np.ones(len(keep), bool)))
        test = SequenceSplit(x_all[test_rows], y_test[test_rows], np.ones(int(test_rows.sum()), bool))
        out.append(row("III", "inter", "M:1-M:N", cell, names, composed, accuracy(scratch, variables, test),
                       reference_kind="two-label many-to-one model from scratch"))
        # Replace: category k's module is replaced by tag t's; Brown sentences holding t are labelled k.
        test_rows = np.concatenate([has_tag(tt, t), ct.y != k])
        y_test = np.concatenate([np.full(len(tt.x), k, np.int32), ct.y.astype(np.int32)])
        others = np.where((np.arange(ds_c.num_classes) == k)[:, None], -np.inf, cls_probs)
        pred = np.where(tag_scores(tag_probs[t], x_all, odds=False) >= others.max(axis=0), k, others.argmax(axis=0))
        composed = float(np.mean(pred[test_rows] == y_test[test_rows]))
        x_tr = np.concatenate([tr_t.x[has_tag(tr_t, t)], tr_c.x[tr_c.y != k]])
        y_tr = np.concatenate([np.full(int(has_tag(tr_t, t).sum()), k, np.int32), tr_c.y[tr_c.y != k]])
        keep = undersample(y_tr, seed)
        scratch = classifier.model.clone()
        variables = fit_split(scratch, cfg_c, SequenceSplit(x_tr[keep], y_tr[keep], np.ones(len(keep), bool)))
        test = SequenceSplit(x_all[test_rows], y_test[test_rows], np.ones(int(test_rows.sum()), bool))
        out.append(row("IV", "inter", "M:1-M:N", cell, f"{ds_c.output_vocab[k]} <- {ds_t.output_vocab[t]}", composed,
                       accuracy(scratch, variables, test), reference_kind="many-to-one model from scratch"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Translation (rows Encoder-Decoder) and the motivating examples (Table V)


@dataclasses.dataclass(frozen=True)
class Translation:
    """The shared translation data: every language's train/test arrays in one vocabulary."""

    ds: SequenceDataset
    train: SequenceSplit
    test: SequenceSplit

    def only(self, split: str, languages: Sequence[str]) -> SequenceSplit:
        a = getattr(self, split)
        return rows_of(a, np.isin(a.group, [LANGUAGES.index(lang) for lang in languages]))


def load_translation(seed: int) -> Translation:
    """English -> every language of ``LANGUAGES`` in one shared vocabulary (so every module composes)."""
    s = SETTINGS["encoder_decoder"]
    ds = load_sequence_dataset("translation", languages=LANGUAGES, max_input_len=s["max_input_len"],
                               max_output_len=s["max_output_len"], vocab_size=s["vocab_size"], seed=seed)
    return Translation(ds, model_split(ds, "train"), model_split(ds, "test"))


@dataclasses.dataclass(frozen=True)
class Translator:
    """A translation model over some languages and its modules (one per language, in that order)."""

    languages: tuple[str, ...]
    model: nn.Module
    variables: Any
    modules: ModuleSet | None


def translator(data: Translation, cell: str, layers: int, units: int, seed: int, epochs: int,
               languages: Sequence[str], train_data: SequenceSplit | None = None,
               decompose_it: bool = True) -> Translator:
    """Train an English -> ``languages`` model (on ``train_data`` if given) and decompose it per language."""
    positions = [LANGUAGES.index(lang) for lang in languages]
    if positions != sorted(set(positions)):
        raise ValueError(f"languages must follow the order of {LANGUAGES} without repeats, got {languages}")
    cfg = RnnRun(cell=cell, shape="encoder_decoder", layers=layers, units=units, seed=seed, epochs=epochs)
    tr = train_data if train_data is not None else data.only("train", languages)
    model = build_model(cfg, data.ds, tr.x)
    variables = fit_split(model, cfg, tr)
    modules = None
    if decompose_it:
        local = dataclasses.replace(tr, group=np.searchsorted(positions, tr.group).astype(np.int32))
        approach = RnnDecomposition.for_shape("encoder_decoder", mode="rolled")
        modules = decompose(model, variables, local, approach, len(languages), data.ds.name, data.ds.input_vocab,
                            translation=True)
    return Translator(tuple(languages), model, variables, modules)


def translate(t: Translator, language: str, x: np.ndarray, as_module: bool = True) -> np.ndarray:
    """``int[N, T]`` token ids: ``language``'s module of ``t`` (or the whole model) on ``x``."""
    if not as_module or t.modules is None:
        return np.argmax(standard_probs(t.model, t.variables, x, 256), axis=-1)
    module = t.modules.select([t.languages.index(language)])
    return np.argmax(module_outputs(t.model, t.variables, module, x, output="distribution")[0], axis=-1)


def average_bleu(data: Translation, sources: dict[str, tuple[Translator, bool]], max_order: int = 2
                 ) -> tuple[float, dict[str, float]]:
    """Mean over languages of each language's corpus BLEU (points, n-grams up to ``max_order``), each language
    translated by its source (a translator and whether its module, rather than the whole model, is used): the
    paper's "Avg. BLEU". Per-language BLEU-4 is added under ``"<lang>/bleu4"``."""
    used = [t.modules.meta for t, as_module in sources.values() if as_module and t.modules is not None]
    if used:
        reuse.check_same_inputs(used)
    per = {}
    for lang, (t, as_module) in sources.items():
        te = data.only("test", [lang])
        refs, hyps = metrics.token_lists(te.y), metrics.token_lists(translate(t, lang, te.x, as_module))
        per[lang] = metrics.bleu_points(refs, hyps, max_order)
        per[f"{lang}/bleu4"] = metrics.bleu_points(refs, hyps, 4)
    return float(np.mean([v for k, v in per.items() if "/" not in k])), per


def translation_rows(data: Translation, cell: str, deep_layers: int, units: int, seed: int, epochs: int
                     ) -> tuple[list[dict], Translator]:
    """Encoder-decoder reuse (two language modules vs a two-language model from scratch) and replacement
    (the lower-BLEU model's module replaced by the other's, vs the lower-BLEU model). Also returns the 1-layer
    {fr, de, it} model, the motivating examples' original."""
    base = ("fr", "de", "it")
    deep = translator(data, cell, deep_layers, units, seed, epochs, base)
    out: list[dict] = []
    for pair in itertools.combinations(base, 2):
        composed, per = average_bleu(data, {lang: (deep, True) for lang in pair})
        scratch = translator(data, cell, deep_layers, units, seed, epochs, pair, decompose_it=False)
        reference, per_ref = average_bleu(data, {lang: (scratch, False) for lang in pair})
        out.append(row("III", "intra", "Encoder-Decoder", cell, "-".join(pair), composed, reference, metric="BLEU",
                       per_language=per, reference_per_language=per_ref,
                       reference_kind="two-language model from scratch"))
    shallow = deep
    if deep_layers != 1:
        shallow = translator(data, cell, 1, units, seed, epochs, base)
        scored = [(average_bleu(data, {lang: (t, False) for lang in base})[0], t) for t in (deep, shallow)]
        (faulty_bleu, faulty), (best_bleu, best) = sorted(scored, key=lambda s: s[0])
        for lang in base:
            sources = {other: (best if other == lang else faulty, True) for other in base}
            composed, per = average_bleu(data, sources)
            out.append(row("IV", "intra", "Encoder-Decoder", cell, f"replace {lang}", composed, faulty_bleu,
                           metric="BLEU", per_language=per, faulty_layers=recurrent_module(faulty.model).num_layers,
                           best_bleu=best_bleu, reference_kind="faulty model"))
    return out, shallow


def corrupt(a: SequenceSplit, language: str, fraction: float, seed: int) -> SequenceSplit:
    """Faulty data: ``fraction`` of ``language``'s pairs get another pair's target (shuffled among them)."""
    rows = np.flatnonzero(a.group == LANGUAGES.index(language))
    rng = np.random.default_rng(seed)
    picked = rng.permutation(rows)[: int(round(fraction * len(rows)))]
    y, valid = a.y.copy(), a.y_valid.copy()
    shuffled = rng.permutation(picked)
    y[picked], valid[picked] = a.y[shuffled], a.y_valid[shuffled]
    return SequenceSplit(a.x, y, valid, a.group)


def motivating(data: Translation, cell: str, original: Translator, layers: int, units: int, seed: int, epochs: int,
               fault_fraction: float) -> list[dict]:
    """Table V: add English -> Ukrainian, replace the faulty English -> Estonian module (both ways each)."""
    out: list[dict] = []
    four = ("fr", "de", "it", "uk")
    trained = translator(data, cell, layers, units, seed, epochs, four, decompose_it=False)
    tma, per_t = average_bleu(data, {lang: (trained, False) for lang in four})
    other = translator(data, cell, layers, units, seed, epochs, ("fr", "uk"))
    alone = translator(data, cell, layers, units, seed, epochs, ("uk",), decompose_it=False)
    keep = {lang: (original, True) for lang in original.languages}
    ma1, per1 = average_bleu(data, {**keep, "uk": (other, True)})
    ma2, per2 = average_bleu(data, {**keep, "uk": (alone, False)})
    for name, value, per in (("1: uk module of a {fr, uk} model", ma1, per1), ("2: a small en-uk model", ma2, per2)):
        out.append(row("V", "add Ukrainian", "Encoder-Decoder", cell, name, value, tma, metric="BLEU", per_language=per,
                       reference_per_language=per_t, reference_kind="model trained on fr, de, it, uk"))
    three = ("de", "it", "et")
    faulty_data = corrupt(data.only("train", three), "et", fault_fraction, seed)
    faulty = translator(data, cell, layers, units, seed, epochs, three, train_data=faulty_data)
    tma, per_t = average_bleu(data, {lang: (faulty, False) for lang in three})
    clean = translator(data, cell, layers, units, seed, epochs, ("fr", "et"))
    small = translator(data, cell, layers, units, seed, epochs, ("et",), decompose_it=False)
    keep = {lang: (faulty, True) for lang in ("de", "it")}
    ma1, per1 = average_bleu(data, {**keep, "et": (clean, True)})
    ma2, per2 = average_bleu(data, {**keep, "et": (small, False)})
    for name, value, per in (("1: et module of a clean {fr, et} model", ma1, per1),
                             ("2: a small model on clean en-et", ma2, per2)):
        out.append(row("V", "replace Estonian", "Encoder-Decoder", cell, name, value, tma, metric="BLEU",
                       per_language=per, reference_per_language=per_t,
                       reference_kind=f"de, it, et model trained with {fault_fraction:.0%} of et targets wrong"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Tables


def summary_table(rows: list[dict], table: str, cells: Sequence[str]) -> list[str]:
    """Table III/IV layout: a row per (type, I/O), mean and median change per cell."""
    head = "| Type | I/O | " + " | ".join(f"{c.upper() if c != 'vanilla' else 'Vanilla'} mean | median | n"
                                        for c in cells) + " |"
    lines = [head, "| --- | --- | " + " | ".join("---: | ---: | ---:" for _ in cells) + " |"]
    chosen = [r for r in rows if r["table"] == table]
    for kind, io in dict.fromkeys((r["type"], r["io"]) for r in chosen):
        values = []
        for cell in cells:
            changes = [r["change_points"] for r in chosen if (r["type"], r["io"], r["cell"]) == (kind, io, cell)]
            values.append(f"{np.mean(changes):+.2f} | {np.median(changes):+.2f} | {len(changes)}" if changes
                          else " |  | 0")
        lines.append(f"| {kind} | {io} | " + " | ".join(values) + " |")
    return lines


def markdown(rows: list[dict], cells: Sequence[str], commands: Sequence[str]) -> str:
    """scenarios.md: the commands that produced the rows, Tables III and IV (mean/median change per cell),
    Table V (the motivating examples)."""
    lines = ["# RNN module reuse and replacement (Imtiaz et al., Tables III, IV and V layout)\n",
             "Commands (run in this order; each resumes from scenarios.jsonl and adds its jobs):\n",
             *[f"- `{c}`" for c in commands], "",
             "Values: change in points, composed modules minus the reference (accuracy x 100; for Encoder-Decoder "
             "and Table V corpus BLEU-2 points, mean over the target languages: targets have at most 7 words, so "
             "BLEU-4 is 0 on most per-language test sets; BLEU-4 per language is in scenarios.csv). Reuse "
             "reference: a model trained from scratch on the two labels "
             "(languages); intra replace reference: the faulty (lower-scoring) model; inter replace reference: a "
             "many-to-one model trained from scratch on the same data. n: compositions. Every composition is a "
             "row of scenarios.csv.\n", "## Table III: reuse\n"]
    lines += summary_table(rows, "III", cells)
    lines += ["", "## Table IV: replacement\n"]
    lines += summary_table(rows, "IV", cells)
    table_v = [r for r in rows if r["table"] == "V"]
    if table_v:
        lines += ["", "## Table V: motivating examples (average BLEU-2 over the target languages, points)\n",
                  "| scenario | cell | TMA (trained model) | way | MA | per language |",
                  "| --- | --- | ---: | --- | ---: | --- |"]
        for r in table_v:
            per = ", ".join(f"{k} {v:.2f}" for k, v in r["per_language"].items() if "/" not in k)
            lines.append(f"| {r['type']} | {r['cell']} | {r['reference']:.2f} | {r['case']} | {r['composed']:.2f} | "
                         f"{per} |")
    return "\n".join(lines) + "\n"


def check_flags() -> tuple[list[str], list[str], list[str]]:
    """``ValueError`` for unknown parts, cells or shapes and bad counts, before anything runs."""
    parts, shapes = list(FLAGS.scenario_parts), list(FLAGS.scenario_shapes)
    cells = list(dict.fromkeys(FLAGS.scenario_cells + FLAGS.scenario_translation_cells
                               + FLAGS.scenario_motivating_cells))
    bad = ([p for p in parts if p not in PARTS] + [c for c in cells if c not in CELLS]
           + [s for s in shapes if s not in INTRA_SHAPES])
    if bad:
        raise ValueError(f"unknown parts, cells or shapes: {bad} (parts {PARTS}, shapes {INTRA_SHAPES})")
    if not 1 <= FLAGS.scenario_layers <= 4:
        raise ValueError(f"--scenario_layers must be 1 to 4, got {FLAGS.scenario_layers}")
    if FLAGS.scenario_pairs < 1 or FLAGS.scenario_units < 1 or FLAGS.scenario_translation_epochs < 1:
        raise ValueError("--scenario_pairs, --scenario_units and --scenario_translation_epochs must be >= 1")
    if not 0.0 < FLAGS.scenario_fault_fraction <= 1.0:
        raise ValueError(f"--scenario_fault_fraction must be in (0, 1], got {FLAGS.scenario_fault_fraction}")
    return parts, shapes, cells


def jobs(parts: Sequence[str], shapes: Sequence[str]) -> list[tuple[str, Any]]:
    """``(key, job)`` for every scenario of ``parts``; a job returns its rows."""
    seed, units, layers, mode = FLAGS.scenario_seed, FLAGS.scenario_units, FLAGS.scenario_layers, FLAGS.mode
    out: list[tuple[str, Any]] = []
    if "intra" in parts:
        out += [(f"intra {s} {c}", lambda s=s, c=c: intra(s, c, layers, FLAGS.scenario_pairs, units, seed, mode))
                for s in shapes for c in FLAGS.scenario_cells]
    if "inter" in parts:
        out += [(f"inter {c}", lambda c=c: inter(c, FLAGS.scenario_pairs, units, seed, mode))
                for c in FLAGS.scenario_cells]
    table_cells = FLAGS.scenario_translation_cells if "translation" in parts else []
    story_cells = FLAGS.scenario_motivating_cells if "motivating" in parts else []
    data: list[Translation] = []  # loaded once, when the first translation job runs

    def translation_job(cell: str) -> list[dict]:
        if not data:
            data.append(load_translation(seed))
        t_units, epochs = FLAGS.scenario_translation_units, FLAGS.scenario_translation_epochs
        rows, original = [], None
        if cell in table_cells:
            rows, original = translation_rows(data[0], cell, layers, t_units, seed, epochs)
        if cell in story_cells:
            if original is None:
                original = translator(data[0], cell, 1, t_units, seed, epochs, ("fr", "de", "it"))
            rows += motivating(data[0], cell, original, 1, t_units, seed, epochs, FLAGS.scenario_fault_fraction)
        return rows

    for cell in dict.fromkeys(list(table_cells) + list(story_cells)):
        what = "+".join(p for p, cells in (("translation", table_cells), ("motivating", story_cells)) if cell in cells)
        out.append((f"{what} {cell}", lambda cell=cell: translation_job(cell)))
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        parts, shapes, _ = check_flags()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    out_dir = FLAGS.scenario_output_dir
    os.makedirs(out_dir, exist_ok=True)
    jsonl, summary = os.path.join(out_dir, "scenarios.jsonl"), os.path.join(out_dir, "scenarios.json")
    rows = read_jsonl_rows(jsonl)
    done = {r["job"] for r in rows}
    todo = [(key, job) for key, job in jobs(parts, shapes) if key not in done]
    command = ("python -m experiments.rnn_scenarios " + " ".join(sys.argv[1:])).strip()
    log = json.load(open(summary)) if os.path.exists(summary) else {"runs": []}
    start = time.perf_counter()
    for key, job in tqdm(todo, desc="scenarios", disable=not FLAGS.scenario_progress):
        begin = time.perf_counter()
        new = [{"job": key, **r} for r in job()]
        print(f"{key}: {len(new)} rows, {time.perf_counter() - begin:.0f} s", flush=True)
        append_jsonl_rows(jsonl, new)
        rows += new
    if todo:
        log["runs"].append({"command": command, "jobs": [k for k, _ in todo], "seconds": time.perf_counter() - start})
        write_json_atomic(summary, log)
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    with open(os.path.join(out_dir, "scenarios.md"), "w") as f:
        f.write(markdown(rows, cells, [run["command"] for run in log["runs"]]))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(out_dir, "scenarios.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows([{k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()} for r in rows])
    print(open(os.path.join(out_dir, "scenarios.md")).read())


if __name__ == "__main__":
    app.run(main)

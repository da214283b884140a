r"""Imtiaz et al.'s RNN decomposition end to end: train a recurrent model on real text, decompose it into one
module per output label (per target language for translation), compose the modules by voting (by routing
for translation) and measure the cost (accuracy or BLEU) and the module-model Jaccard index.

    python -m experiments.modularize --approach=rnn --shape=many_to_many --cell=lstm --layers=1 \
        --mode=unrolled --gates=hidden --epochs=3 --train_limit=3000 --workdir=runs/rnn_brown

Shapes and their default datasets: one_to_one ``bbc_news_bow``, one_to_many ``cmudict``, many_to_one
``fortunes``, many_to_many ``brown_tags``, encoder_decoder ``translation`` (English -> fr, de, it).
Training uses Adam (``--rnn_lr``), as the paper's Keras models; the shared ``--lr`` is MODA's SGD rate.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from tqdm.auto import tqdm

from experiments.common import option, write_json_atomic
from jaxmod import checkpoint, compose, metrics, models, train
from jaxmod.approaches.rnn import (
    RnnDecomposition,
    check_labels,
    module_model_jaccard,
    module_outputs,
    routed_predictions,
    vocab_fingerprint,
)
from jaxmod.data import batching
from jaxmod.data.text import SCORED_PADDING_SHAPES, SequenceDataset, load_sequence_dataset, with_scored_padding
from jaxmod.models.recurrent import CELLS, SHAPES, RecurrentClassifier, check_sequences
from jaxmod.modules import module_set
from jaxmod.voting import voting_accuracy

FLAGS = flags.FLAGS
DEFAULT_DATASETS = {"one_to_one": "bbc_news_bow", "one_to_many": "cmudict", "many_to_one": "fortunes",
                    "many_to_many": "brown_tags", "encoder_decoder": "translation"}
EOS, PAD = 3, 0  # decoder-target vocabularies start <pad>, <unk>, <bos>, <eos> (jaxmod.data.text)
PADDINGS = ("masked", "scored")

flags.DEFINE_enum("cell", "lstm", list(CELLS), "rnn: recurrent cell.")
flags.DEFINE_enum("shape", "many_to_one", list(SHAPES), "rnn: input-output shape.")
flags.DEFINE_integer("layers", 1, "rnn: recurrent layers (1-4; encoder_decoder: on each side).")
flags.DEFINE_enum("mode", "unrolled", ["rolled", "unrolled"], "rnn: rolled (one mask) or unrolled (per step).")
flags.DEFINE_enum("gates", "hidden", ["hidden", "own"], "rnn: cut gates by the hidden state or each by its own.")
flags.DEFINE_float("max_remove", 0.2, "rnn: removal cap per layer (fraction of units).")
flags.DEFINE_integer("rnn_units", 32, "rnn: hidden units per recurrent layer.")
flags.DEFINE_enum("rnn_activation", "tanh", ["tanh", "relu"], "rnn: cell activation (tanh or the ReLU variant).")
flags.DEFINE_float("rnn_lr", 0.01, "rnn: Adam learning rate.")
flags.DEFINE_integer("num_positive", None, "rnn: positive samples per label (per output step); default the "
                     "authors': 500, 1000 for translation modules.")
flags.DEFINE_integer("max_input_len", None, "rnn: input length cap (default: the dataset's).")
flags.DEFINE_integer("max_output_len", None, "rnn: output length cap (default: the dataset's).")
flags.DEFINE_integer("vocab_size", None, "rnn: vocabulary / feature cap (default: the dataset's).")
flags.DEFINE_enum("padding", "masked", list(PADDINGS), "rnn: masked (ours: padded steps are never trained, "
                  "sampled or scored) or scored (the authors' Keras protocol: padded at the front, padding a class "
                  "with its own module, every step scored; many-output token datasets only).")

SUMMARY_ROWS = (
    ("decomposition cost (composed - standard)", ("composed", "cost")),
    ("standard BLEU", ("standard", "bleu")),
    ("composed BLEU", ("composed", "bleu")),
    ("module-model Jaccard index", ("modules", "mean_jaccard")),
)


@dataclasses.dataclass(frozen=True)
class RnnRun:
    """One model of the Table II grid and how to train it."""

    cell: str = "lstm"
    shape: str = "many_to_one"
    layers: int = 1
    units: int = 32
    activation: str = "tanh"
    dataset: str | None = None
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.01
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    max_input_len: int | None = None
    max_output_len: int | None = None
    vocab_size: int | None = None
    eval_batch_size: int = 256
    padding: str = "masked"

    def __post_init__(self) -> None:
        if self.cell not in CELLS or self.shape not in SHAPES:
            raise ValueError(f"cell must be one of {CELLS} and shape one of {SHAPES}")
        if not 1 <= self.layers <= 4:
            raise ValueError(f"layers must be 1 to 4, got {self.layers}")
        for name in ("units", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.lr <= 0:
            raise ValueError("the learning rate must be > 0")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.padding == "scored" and self.shape not in SCORED_PADDING_SHAPES:
            raise ValueError(f"padding='scored' applies to the {SCORED_PADDING_SHAPES} shapes, not {self.shape}")

    @property
    def dataset_name(self) -> str:
        return self.dataset or DEFAULT_DATASETS[self.shape]


@dataclasses.dataclass(frozen=True)
class Arrays:
    """A split as the model sees it: inputs, labels (-1 on invalid steps is applied at training), validity,
    and the label each module is built for (the class, or the target language for translation)."""

    x: np.ndarray
    y: np.ndarray
    valid: np.ndarray
    module_label: np.ndarray


def split_arrays(ds: SequenceDataset, split: str) -> Arrays:
    """Translation: the target language becomes a last source token (``input vocab + language``) since our
    RepeatVector decoder has no decoder input; targets drop their start token."""
    s = getattr(ds, split)
    if ds.shape == "encoder_decoder":
        base = len(ds.input_vocab)
        x = np.concatenate([s.x, (base + s.group)[:, None]], axis=1).astype(np.int32)
        return Arrays(x, s.y[:, 1:], s.y_valid[:, 1:], s.group.astype(np.int32))
    return Arrays(s.x, s.y, s.y_valid, s.y)


def limit(a: Arrays, n: int | None, seed: int) -> Arrays:
    """A random subset of ``n`` samples (fixed by ``seed``), in their original order."""
    if n is None or n >= len(a.x):
        return a
    if n < 1:
        raise ValueError(f"a sample limit must be >= 1, got {n}")
    rows = np.sort(np.random.default_rng(seed).permutation(len(a.x))[:n])
    return Arrays(a.x[rows], a.y[rows], a.valid[rows], a.module_label[rows])


def load(cfg: RnnRun) -> tuple[SequenceDataset, dict[str, Arrays]]:
    """The dataset (checked against the shape) and its train/val/test arrays."""
    ds = load_sequence_dataset(cfg.dataset_name, max_input_len=cfg.max_input_len, max_output_len=cfg.max_output_len,
                               vocab_size=cfg.vocab_size, seed=cfg.seed)
    if ds.shape != cfg.shape:
        raise ValueError(f"dataset {ds.name!r} is {ds.shape}, not {cfg.shape}")
    if cfg.padding == "scored":
        ds = with_scored_padding(ds)
    arrays = {s: split_arrays(ds, s) for s in ("train", "val", "test")}
    arrays["train"] = limit(arrays["train"], cfg.train_limit, cfg.seed)
    arrays["test"] = limit(arrays["test"], cfg.test_limit, cfg.seed)
    return ds, arrays


def build_model(cfg: RnnRun, ds: SequenceDataset, train_x: np.ndarray) -> RecurrentClassifier:
    vocab = len(ds.input_vocab) + len(ds.groups) if ds.input_vocab is not None else 0
    return models.create_model(f"rnn_{cfg.cell}", ds.num_classes, shape=cfg.shape, num_layers=cfg.layers,
                               units=cfg.units, activation=cfg.activation, vocab_size=vocab,
                               input_len=int(train_x.shape[1]), output_len=int(max(1, ds.max_output_len - (
                                   1 if ds.shape == "encoder_decoder" else 0))))


def masked_cross_entropy():
    """Cross-entropy over valid steps; labels are -1 on padded steps."""

    def loss_fn(logits, activations, labels):
        del activations
        valid = labels >= 0
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
        loss = jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1)
        return loss, {}

    return loss_fn


def fit(model: RecurrentClassifier, cfg: RnnRun, data: Arrays, progress: bool = False) -> dict[str, Any]:
    """Adam on the masked cross-entropy, shuffled per epoch from (seed, epoch); returns the variables."""
    optimizer = optax.adam(cfg.lr)
    variables = model.init(jax.random.key(cfg.seed), jnp.asarray(data.x[:1]))
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"], batch_stats={},
                             opt_state=optimizer.init(variables["params"]),
                             key=jax.random.key_data(jax.random.key(cfg.seed)))
    step = train.make_train_step(model, optimizer, masked_cross_entropy())
    labels = np.where(data.valid, data.y, -1).astype(np.int32)
    batch_size = min(cfg.batch_size, len(data.x))
    for epoch in range(cfg.epochs):
        batches = batching.batch_iterator(data.x, labels, batch_size,
                                          shuffle_seed=batching.epoch_seed(cfg.seed, epoch), drop_remainder=True)
        for xb, yb in tqdm(batches, disable=not progress, leave=False, desc=f"train epoch {epoch + 1}"):
            state, _ = step(state, xb, yb)
    return state.variables()


def standard_outputs(model: RecurrentClassifier, variables, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The standard model's class probabilities (or output distributions per step)."""
    from jaxmod.activations import predict_logits  # noqa: PLC0415 - keeps the import graph light

    if not model.many_output:
        return np.asarray(jax.nn.softmax(predict_logits(model, variables, x, batch_size), -1))
    out = module_outputs(model, variables, {"unit_masks": {g: np.ones((1, model.units), bool)
                                                          for g in model.group_names()}}, None, x, batch_size)
    return out[0]


def masked_accuracy(pred: np.ndarray, y: np.ndarray, valid: np.ndarray) -> float:
    return float(np.sum((pred == y) & valid) / max(1, np.sum(valid)))


def corpus_bleu(references: Sequence[Sequence[int]], hypotheses: Sequence[Sequence[int]], max_order: int = 4
                ) -> float:
    """Corpus BLEU (n-grams up to ``max_order``, 4 = BLEU-4) in points (0-100), from the library's
    implementation (``jaxmod.metrics.corpus_bleu``)."""
    return 100.0 * float(metrics.corpus_bleu(references, hypotheses, max_order=max_order))


def token_lists(ids: np.ndarray, valid: np.ndarray | None = None) -> list[list[int]]:
    """Token ids up to the first <eos> (pads dropped): the strings BLEU compares."""
    out = []
    for row in np.asarray(ids):
        stop = np.flatnonzero(row == EOS)
        row = row[: stop[0]] if len(stop) else row
        out.append([int(t) for t in row if t != PAD])
    return out


def bleu_by_group(pred: np.ndarray, target: np.ndarray, groups: np.ndarray, names: Sequence[str],
                  max_order: int = 4) -> dict[str, float]:
    """Corpus BLEU over all pairs (``all``) and per target language."""
    refs, hyps = token_lists(target), token_lists(pred)
    out = {"all": corpus_bleu(refs, hyps, max_order)}
    for g, name in enumerate(names):
        idx = np.flatnonzero(groups == g)
        out[name] = corpus_bleu([refs[i] for i in idx], [hyps[i] for i in idx], max_order)
    return out


def decompose_and_measure(approach: RnnDecomposition, model: RecurrentClassifier, variables, ds: SequenceDataset,
                          arrays: dict[str, Arrays], batch_size: int) -> dict[str, Any]:
    """Decomposition (timed), composition on the test split, its cost and the Jaccard index."""
    tr, te = arrays["train"], arrays["test"]
    translation = ds.shape == "encoder_decoder"
    num_modules = len(ds.groups) if translation else ds.num_classes
    labels = tr.module_label if translation else tr.y
    valid = None if translation else tr.valid
    start = time.perf_counter()
    dec = approach.decompose(model, variables, tr.x, labels, num_modules, valid)
    seconds = time.perf_counter() - start
    outputs = module_outputs(model, variables, dec.masks, dec.heads, te.x, batch_size)
    jaccard = module_model_jaccard(model, variables, dec.masks, channeled=dec.heads is not None)
    out: dict[str, Any] = {"decompose_seconds": seconds, "jaccard": jaccard.tolist(),
                           "mean_jaccard": float(np.mean(jaccard)), "decomposition": dec}
    if translation:
        pred = routed_predictions(outputs, te.module_label)
        out["bleu"] = bleu_by_group(pred, te.y, te.module_label, ds.groups)
        out["bleu2"] = bleu_by_group(pred, te.y, te.module_label, ds.groups, max_order=2)
        out["accuracy"] = masked_accuracy(pred, te.y, te.valid)
    else:
        out["accuracy"] = voting_accuracy(outputs, te.y, valid=te.valid)
        out["confidences"] = outputs
    return out


def reuse_pairs(confidences: np.ndarray, std_probs: np.ndarray, te: Arrays, num_classes: int, count: int,
                seed: int) -> list[dict[str, Any]]:
    """Intra-model reuse: two modules voted together on the test samples (steps) of their two labels,
    beside the standard model restricted to the same two labels."""
    rows = []
    for pair in compose.sample_subtasks(num_classes, min(count, math.comb(num_classes, 2)), min_size=2,
                                        max_size=2, seed=seed):
        chosen = np.isin(te.y, pair) & te.valid
        if not chosen.any():
            continue
        acc = voting_accuracy(confidences[list(pair)], te.y, classes=pair, valid=chosen)
        std_pred = np.asarray(pair)[np.argmax(std_probs[..., list(pair)], axis=-1)]
        rows.append({"classes": list(pair), "accuracy": acc, "standard_accuracy": masked_accuracy(std_pred, te.y,
                                                                                                  chosen)})
    return rows


def train_and_measure(cfg: RnnRun, approaches: Sequence[RnnDecomposition], workdir: str | None = None,
                      progress: bool = False, num_subtasks: int = 10) -> dict[str, Any]:
    """Train one model and measure each decomposition of it; returns the pieces results.json is built from."""
    ds, arrays = load(cfg)
    model = build_model(cfg, ds, arrays["train"].x)
    tr = arrays["train"]
    translation = ds.shape == "encoder_decoder"
    for a in approaches:  # every input the decomposition will see is checked before training
        if a.channel == translation:
            raise ValueError("channeled modules are for classifiers; translation modules (one per language) are not")
    check_labels(model, tr.x, tr.module_label if translation else tr.y, None if translation else tr.valid,
                 len(ds.groups) if translation else ds.num_classes)
    check_sequences(model, arrays["test"].x)
    start = time.perf_counter()
    variables = fit(model, cfg, arrays["train"], progress)
    train_seconds = time.perf_counter() - start
    te = arrays["test"]
    probs = standard_outputs(model, variables, te.x, cfg.eval_batch_size)
    pred = np.argmax(probs, axis=-1)
    standard: dict[str, Any] = {"test_accuracy": masked_accuracy(pred, te.y, te.valid), "train_seconds": train_seconds}
    if ds.shape == "encoder_decoder":
        standard["bleu"] = bleu_by_group(pred, te.y, te.module_label, ds.groups)
        standard["bleu2"] = bleu_by_group(pred, te.y, te.module_label, ds.groups, max_order=2)
    measured = []
    for approach in approaches:
        m = decompose_and_measure(approach, model, variables, ds, arrays, cfg.eval_batch_size)
        if "confidences" in m:
            m["reuse"] = reuse_pairs(m.pop("confidences"), probs, te, ds.num_classes, num_subtasks, cfg.seed)
        measured.append(m)
    if workdir is not None:
        checkpoint.save_model(os.path.join(workdir, "model"), variables, model_name=f"rnn_{cfg.cell}",
                              model_config=models.model_config(model), dataset=ds.name,
                              input_shape=arrays["train"].x.shape[1:], num_classes=ds.num_classes, overwrite=True)
    return {"dataset": ds, "arrays": arrays, "model": model, "variables": variables, "standard": standard,
            "measured": measured}


def run_config_from_flags() -> tuple[RnnRun, RnnDecomposition]:
    cfg = RnnRun(cell=FLAGS.cell, shape=FLAGS.shape, layers=FLAGS.layers, units=FLAGS.rnn_units,
                 activation=FLAGS.rnn_activation, dataset=option(FLAGS.dataset, None), epochs=FLAGS.epochs,
                 batch_size=FLAGS.batch_size, lr=FLAGS.rnn_lr, seed=FLAGS.seed, train_limit=FLAGS.train_limit,
                 test_limit=FLAGS.test_limit, max_input_len=FLAGS.max_input_len, max_output_len=FLAGS.max_output_len,
                 vocab_size=FLAGS.vocab_size, eval_batch_size=FLAGS.eval_batch_size, padding=FLAGS.padding)
    approach = RnnDecomposition.for_shape(FLAGS.shape, mode=FLAGS.mode, gates=FLAGS.gates, max_remove=FLAGS.max_remove,
                                          num_positive=FLAGS.num_positive)
    if FLAGS.shape == "one_to_one" and FLAGS.mode == "unrolled":
        raise ValueError("a one_to_one model has one timestep: unrolled decomposition does not apply (use "
                         "--mode=rolled)")
    if FLAGS.optimizer != "sgd":
        raise ValueError(f"--optimizer={FLAGS.optimizer} does not apply to --approach=rnn (its models train with Adam "
                         "as the paper's Keras scripts do)")
    if FLAGS.model not in (None, f"rnn_{FLAGS.cell}"):
        raise ValueError(f"--approach=rnn builds its model from --cell; --model={FLAGS.model} does not apply")
    return cfg, approach


def run(workdir: str) -> dict[str, Any]:
    """Train, decompose, compose, measure; every flag is checked before training or writing."""
    cfg, approach = run_config_from_flags()
    os.makedirs(workdir, exist_ok=True)
    out = train_and_measure(cfg, [approach], workdir, progress=FLAGS.progress, num_subtasks=FLAGS.num_subtasks)
    ds, model, variables, m = out["dataset"], out["model"], out["variables"], out["measured"][0]
    dec = m["decomposition"]
    translation = ds.shape == "encoder_decoder"
    classes = ds.groups if translation else ds.output_vocab
    if not translation:  # translation modules are one per language, not per output class: results only
        modules = module_set(dec.masks, approach="rnn", model_name=f"rnn_{cfg.cell}", model=model, dataset=ds.name,
                             input_shape=out["arrays"]["train"].x.shape[1:], heads=dec.heads,
                             extra={**approach.config(), "input_vocab_hash": vocab_fingerprint(ds.input_vocab)})
        checkpoint.save_modules(os.path.join(workdir, "modules"), modules, variables, overwrite=True)
    std = out["standard"]
    composed = {"test_accuracy": m["accuracy"], "cost": m["accuracy"] - std["test_accuracy"]}
    if translation:
        composed["bleu"] = m["bleu"]
        composed["bleu_cost"] = m["bleu"]["all"] - std["bleu"]["all"]
        std["bleu_all"] = std["bleu"]["all"]
    reuse = m.get("reuse", [])
    results = {
        "approach": "rnn",
        "model": f"rnn_{cfg.cell}",
        "dataset": ds.name,
        "seed": cfg.seed,
        "num_classes": ds.num_classes,
        "config": {"run": dataclasses.asdict(cfg), "approach": approach.config(),
                   "model": models.model_config(model), "train_samples": len(out["arrays"]["train"].x),
                   "test_samples": len(out["arrays"]["test"].x), "module_labels": list(classes)},
        "standard": std,
        "modular": dict(std),
        "composed": composed,
        "modules": {"mean_size": m["mean_jaccard"], "mean_jaccard": m["mean_jaccard"], "jaccard": m["jaccard"],
                    "jaccard_kind": "module vs model (Imtiaz et al.)"},
        "reuse": {"subtasks": reuse,
                  "mean_accuracy": float(np.mean([r["accuracy"] for r in reuse])) if reuse else None,
                  "mean_standard_accuracy": float(np.mean([r["standard_accuracy"] for r in reuse])) if reuse
                  else None},
        "timing": {"decompose_seconds": m["decompose_seconds"], "train_seconds": std["train_seconds"]},
        "backend": jax.default_backend(),
    }
    if translation:
        results["bleu"] = {"standard": std["bleu"], "composed": m["bleu"]}
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    return results

r"""Imtiaz et al.'s RNN decomposition end to end: train a recurrent model on real text, decompose it into one
module per output label (per target language for translation), compose the modules by voting (by routing for
translation) and measure the cost (accuracy or BLEU) and the module-model Jaccard index.

    python -m experiments.modularize --config=experiments/configs/rnn.py:many_to_many --workdir=runs/rnn_brown \
        --config.rnn.units=24 --config.train_limit=3000

Shapes and their default datasets: one_to_one ``bbc_news_bow``, one_to_many ``cmudict``, many_to_one
``fortunes``, many_to_many ``brown_tags``, encoder_decoder ``translation`` (English -> fr, de, it). The library
does the work (sequence splits in :mod:`jaxmod.data.text`, training in :mod:`jaxmod.train` with the masked
cross-entropy, module outputs in :mod:`jaxmod.running`, BLEU in :mod:`jaxmod.metrics`); this file wires it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from experiments.common import write_json_atomic
from experiments.pipeline import check_workdir, finished, run_identity
from jaxmod import checkpoint, metrics, models, reuse, train
from jaxmod.activations import predict_logits
from jaxmod.approaches.rnn import (
    RnnDecomposition,
    check_labels,
    module_model_jaccard,
    routed_predictions,
    vocab_fingerprint,
)
from jaxmod.data.text import (
    SCORED_PADDING_SHAPES,
    SequenceDataset,
    SequenceSplit,
    load_sequence_dataset,
    model_split,
    module_labels,
    subset_split,
    with_scored_padding,
)
from jaxmod.losses import masked_cross_entropy_loss
from jaxmod.models.recurrent import CELLS, SHAPES, check_sequences, recurrent_module
from jaxmod.running import module_outputs
from jaxmod.voting import voting_accuracy

DEFAULT_DATASETS = {"one_to_one": "bbc_news_bow", "one_to_many": "cmudict", "many_to_one": "fortunes",
                    "many_to_many": "brown_tags", "encoder_decoder": "translation"}
PADDINGS = ("masked", "scored")


@dataclasses.dataclass(frozen=True)
class RnnRun:
    """One recurrent model of the Table II grid and how to train it."""

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
        for name in ("units", "epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError("the learning rate must be > 0")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.padding == "scored" and self.shape not in SCORED_PADDING_SHAPES:
            raise ValueError(f"padding='scored' applies to the {SCORED_PADDING_SHAPES} shapes, not {self.shape}")

    @property
    def dataset_name(self) -> str:
        return self.dataset or DEFAULT_DATASETS[self.shape]

    @classmethod
    def from_config(cls, config: Any) -> RnnRun:
        """The run a ``configs/rnn.py`` config describes; ``ValueError`` naming a setting that does not apply."""
        if config.train.optimizer != "adam" or config.train.schedule != "constant":
            raise ValueError("recurrent models train with Adam at a constant learning rate, as the paper's Keras "
                             "models (config.train.optimizer=adam, config.train.schedule=constant)")
        cell = config.model.removeprefix("rnn_")
        if config.model != f"rnn_{cell}" or cell not in CELLS:
            raise ValueError(f"config.model must be one of {[f'rnn_{c}' for c in CELLS]}, got {config.model!r}")
        return cls(cell=cell, shape=config.rnn.shape, layers=config.rnn.layers, units=config.rnn.units,
                   activation=config.rnn.activation, dataset=config.dataset, epochs=config.train.epochs,
                   batch_size=config.train.batch_size, lr=config.train.learning_rate, seed=config.seed,
                   train_limit=config.train_limit, test_limit=config.test_limit,
                   max_input_len=config.rnn.max_input_len, max_output_len=config.rnn.max_output_len,
                   vocab_size=config.rnn.vocab_size, eval_batch_size=config.eval_batch_size,
                   padding=config.rnn.padding)

    def train_config(self, train_samples: int) -> train.TrainConfig:
        return train.TrainConfig(epochs=self.epochs, batch_size=min(self.batch_size, train_samples),
                                 learning_rate=self.lr, seed=self.seed, optimizer="adam", schedule="constant")


@dataclasses.dataclass(frozen=True)
class SequenceData:
    """The dataset and its splits as the model reads them (limits applied)."""

    dataset: SequenceDataset
    train: SequenceSplit
    val: SequenceSplit
    test: SequenceSplit

    @property
    def translation(self) -> bool:
        return self.dataset.shape == "encoder_decoder"

    @property
    def num_modules(self) -> int:
        return len(self.dataset.groups) if self.translation else self.dataset.num_classes


def load(cfg: RnnRun) -> SequenceData:
    """The dataset (checked against the shape) and its train/val/test splits as the model reads them."""
    ds = load_sequence_dataset(cfg.dataset_name, max_input_len=cfg.max_input_len, max_output_len=cfg.max_output_len,
                               vocab_size=cfg.vocab_size, seed=cfg.seed)
    if ds.shape != cfg.shape:
        raise ValueError(f"dataset {ds.name!r} is {ds.shape}, not {cfg.shape}")
    if cfg.padding == "scored":
        ds = with_scored_padding(ds)
    return SequenceData(ds, subset_split(model_split(ds, "train"), cfg.train_limit, cfg.seed), model_split(ds, "val"),
                        subset_split(model_split(ds, "test"), cfg.test_limit, cfg.seed))


def build_model(cfg: RnnRun, ds: SequenceDataset, train_x: np.ndarray) -> nn.Module:
    """The recurrent classifier sized for the dataset (translation adds the target-language tokens)."""
    vocab = len(ds.input_vocab) + len(ds.groups) if ds.input_vocab is not None else 0
    return models.create_model(f"rnn_{cfg.cell}", ds.num_classes, shape=cfg.shape, num_layers=cfg.layers,
                               units=cfg.units, activation=cfg.activation, vocab_size=vocab,
                               input_len=int(train_x.shape[1]), output_len=int(max(1, ds.max_output_len - (
                                   1 if ds.shape == "encoder_decoder" else 0))))


def masked_accuracy(pred: np.ndarray, y: np.ndarray, valid: np.ndarray) -> float:
    return float(np.sum((pred == y) & valid) / max(1, np.sum(valid)))


def fit_split(model: nn.Module, cfg: RnnRun, split: SequenceSplit) -> Any:
    """``model`` trained on ``split`` as every model here trains (Adam, masked cross-entropy; no validation
    pass, no checkpoints): its variables."""
    config = cfg.train_config(len(split.x))
    optimizer = train.make_optimizer(config, len(split.x) // config.batch_size)
    task = train.ModelTask(model, masked_cross_entropy_loss(), optimizer, split.x[:1], cfg.seed, split_key=False)
    state, _ = train.fit_task(task, np.asarray(split.x), train.training_labels(split), config, progress=False)
    return state.variables()


def standard_probs(model: nn.Module, variables: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's class probabilities (per output step for many-output models)."""
    return np.asarray(jax.nn.softmax(predict_logits(model, variables, x, batch_size), axis=-1))


def accuracy(model: nn.Module, variables: Any, split: SequenceSplit, batch_size: int = 256) -> float:
    """Test accuracy over the valid samples (steps) of ``split``."""
    return masked_accuracy(np.argmax(standard_probs(model, variables, split.x, batch_size), axis=-1), split.y,
                           split.y_valid)


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained recurrent model with its data and standard figures."""

    data: SequenceData
    model: nn.Module
    variables: Any
    standard: dict[str, Any]
    probs: np.ndarray
    history: list


def train_model(cfg: RnnRun, approaches: Sequence[RnnDecomposition], workdir: str | None = None,
                progress: bool = False) -> Trained:
    """Load, check every input the decompositions will see, train (Adam, masked cross-entropy; resumable under
    ``workdir``) and measure the standard model on the test split."""
    d = load(cfg)
    model = build_model(cfg, d.dataset, d.train.x)
    for a in approaches:
        if a.channel == d.translation:
            raise ValueError("channeled modules are for classifiers; translation modules (one per language) are not")
    check_labels(model, d.train.x, module_labels(d.dataset, d.train), None if d.translation else d.train.y_valid,
                 d.num_modules)
    check_sequences(model, d.test.x)
    start = time.perf_counter()
    run_info = {"model": f"rnn_{cfg.cell}", "model_config": models.model_config(model), "dataset": d.dataset.name,
                "train_samples": len(d.train.x), "padding": cfg.padding, "loss": "masked_cross_entropy"}
    state, history = train.fit(model, d, masked_cross_entropy_loss(), cfg.train_config(len(d.train.x)),
                               None if workdir is None else os.path.join(workdir, "standard"), progress=progress,
                               description="train", run_info=run_info, split_key=False)
    variables = state.variables()
    train_seconds = time.perf_counter() - start
    te = d.test
    probs = standard_probs(model, variables, te.x, cfg.eval_batch_size)
    pred = np.argmax(probs, axis=-1)
    standard: dict[str, Any] = {"test_accuracy": masked_accuracy(pred, te.y, te.y_valid),
                                "train_seconds": train_seconds}
    if d.translation:
        standard["bleu"] = metrics.bleu_by_group(pred, te.y, te.group, d.dataset.groups)
        standard["bleu2"] = metrics.bleu_by_group(pred, te.y, te.group, d.dataset.groups, max_order=2)
    return Trained(d, model, variables, standard, probs, history)


def decompose_and_measure(approach: RnnDecomposition, t: Trained, batch_size: int, num_subtasks: int = 10,
                          seed: int = 0) -> dict[str, Any]:
    """Decomposition (timed), composition on the test split, its cost, the Jaccard index and pair reuse."""
    d, model, variables = t.data, t.model, t.variables
    tr, te = d.train, d.test
    start = time.perf_counter()
    dec = approach.decompose(model, variables, tr.x, module_labels(d.dataset, tr), d.num_modules,
                             None if d.translation else tr.y_valid)
    seconds = time.perf_counter() - start
    modules = dec.modules.with_meta(dataset=d.dataset.name, input_vocab=vocab_fingerprint(
        d.dataset.input_vocab, recurrent_module(model).vocab_size))
    output = "distribution" if d.translation else "confidence"
    outputs = module_outputs(model, variables, modules, te.x, batch_size=batch_size, output=output)
    jaccard = module_model_jaccard(model, variables, modules)
    out: dict[str, Any] = {"decompose_seconds": seconds, "jaccard": jaccard.tolist(),
                           "mean_jaccard": float(np.mean(jaccard)), "modules": modules, "statistics": dec.statistics}
    if d.translation:
        pred = routed_predictions(outputs, te.group)
        out["bleu"] = metrics.bleu_by_group(pred, te.y, te.group, d.dataset.groups)
        out["bleu2"] = metrics.bleu_by_group(pred, te.y, te.group, d.dataset.groups, max_order=2)
        out["accuracy"] = masked_accuracy(pred, te.y, te.y_valid)
    else:
        out["accuracy"] = voting_accuracy(outputs, te.y, valid=te.y_valid)
        out["reuse"] = reuse_pairs(outputs, t.probs, te, d.dataset.num_classes, num_subtasks, seed)
    return out


def reuse_pairs(confidences: np.ndarray, std_probs: np.ndarray, te: SequenceSplit, num_classes: int, count: int,
                seed: int) -> list[dict[str, Any]]:
    """Intra-model reuse: two modules voted together on the test samples (steps) of their two labels, beside the
    standard model restricted to the same two labels."""
    rows = []
    for pair in reuse.sample_subtasks(num_classes, min(count, math.comb(num_classes, 2)), min_size=2, max_size=2,
                                      seed=seed):
        chosen = np.isin(te.y, pair) & te.y_valid
        if not chosen.any():
            continue
        acc = voting_accuracy(confidences[list(pair)], te.y, classes=pair, valid=chosen)
        std_pred = np.asarray(pair)[np.argmax(std_probs[..., list(pair)], axis=-1)]
        rows.append({"classes": list(pair), "accuracy": acc, "standard_accuracy": masked_accuracy(std_pred, te.y,
                                                                                                  chosen)})
    return rows


def run(config: Any, workdir: str) -> dict[str, Any]:
    """Train, decompose, compose, measure; every setting is checked before training or writing. A rerun of a
    finished run returns its results at once; an interrupted one resumes its training."""
    check_workdir(workdir)
    done = finished(config, workdir)
    if done is not None:
        return done
    cfg = RnnRun.from_config(config)
    options = dict(config.options.to_dict())
    if cfg.shape == "one_to_one" and options.get("mode") == "unrolled":
        raise ValueError("a one_to_one model has one timestep: unrolled decomposition does not apply "
                         "(config.options.mode=rolled)")
    approach = RnnDecomposition(**options)
    os.makedirs(workdir, exist_ok=True)
    t = train_model(cfg, [approach], workdir, progress=bool(config.progress))
    m = decompose_and_measure(approach, t, cfg.eval_batch_size, config.reuse.num_subtasks, cfg.seed)
    d, model, variables = t.data, t.model, t.variables
    checkpoint.save_modules(os.path.join(workdir, "modules"), m["modules"], variables, overwrite=True)
    std = dict(t.standard)
    composed = {"test_accuracy": m["accuracy"], "cost": m["accuracy"] - std["test_accuracy"]}
    if d.translation:
        composed["bleu"] = m["bleu"]
        composed["bleu_cost"] = m["bleu"]["all"] - std["bleu"]["all"]
        std["bleu_all"] = std["bleu"]["all"]
    rows = m.get("reuse", [])
    mean = lambda key: float(np.mean([r[key] for r in rows])) if rows else None  # noqa: E731
    results = {
        "approach": "rnn", "model": f"rnn_{cfg.cell}", "dataset": d.dataset.name, "seed": cfg.seed,
        "num_classes": d.dataset.num_classes,
        "config": {"run": dataclasses.asdict(cfg), "approach": approach.config(), "model": models.model_config(model),
                   "train_samples": len(d.train.x), "test_samples": len(d.test.x),
                   "module_labels": list(d.dataset.groups if d.translation else d.dataset.output_vocab),
                   "identity": run_identity(config)},
        "standard": {**std, "history": t.history},
        "modular": dict(std),
        "composed": composed,
        "modules": {"mean_size": m["mean_jaccard"], "mean_jaccard": m["mean_jaccard"], "jaccard": m["jaccard"],
                    "jaccard_kind": "module vs model (Imtiaz et al.)"},
        "reuse": {"subtasks": rows, "mean_accuracy": mean("accuracy"), "mean_standard_accuracy":
                  mean("standard_accuracy")},
        "timing": {"decompose_seconds": m["decompose_seconds"], "train_seconds": std["train_seconds"]},
        "backend": jax.default_backend(),
    }
    if d.translation:
        results["bleu"] = {"standard": std["bleu"], "composed": m["bleu"]}
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    return results

"""The one modularization pipeline for image classifiers, every approach: train, decompose, save, compose,
reuse, measure, write ``results.json``.

    run(config, workdir)   # config: experiments/configs/<approach>.py

1. the standard model trains (cross-entropy) under ``WORKDIR/standard``; an approach with a modular
   objective (MODA, MwT) trains its model with it under ``WORKDIR/modular`` (same seed and budget); both
   resume when rerun;
2. the approach decomposes the model it works on over the (unaugmented) training samples, timed against
   one inference pass over the same samples; the random control draws modules the size of its reference's;
   the module set is saved under ``WORKDIR/modules`` (orbax);
3. all modules are composed back (merged and sliced, or voting) and random sub-tasks of 2..9 classes are
   composed without retraining, each measured beside the standard model restricted to the same classes;
4. module sizes, overlaps and Jaccard indices (:func:`jaxmod.metrics.module_statistics`), FLOPs of merged
   models, the approach's own figures (MwT's kernel metrics and fine-tuned reuse, the supermasks' RPs and
   co-training time), plots under ``WORKDIR/plots``, and ``results.json`` in the common schema.

Every setting is checked before anything is trained or written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from experiments.common import write_json_atomic
from jaxmod import checkpoint, data, metrics, models, report, reuse, sharding, train
from jaxmod.activations import predict_logits
from jaxmod.adapter import import_model, model_class
from jaxmod.approaches import create_approach
from jaxmod.approaches import mwt as mwt_lib
from jaxmod.approaches import supermask as sm
from jaxmod.approaches.concern import DENSE_VARIANTS, jaccard_figures, model_plan
from jaxmod.compose import VotingModel, compose
from jaxmod.data.registry import get_spec
from jaxmod.losses import cross_entropy_loss
from jaxmod.metrics import latency
from jaxmod.modules import as_hashable
from jaxmod.topology import SlicedModel, count_parameters
from jaxmod.voting import voting_accuracy

# Every approach's results.json has these top-level keys (post-training approaches repeat the standard model
# under "modular"); approach-specific figures go under the same sections as extra keys.
RESULTS_SCHEMA: dict[str, tuple[str, ...]] = {
    "approach": (), "model": (), "dataset": (), "seed": (), "num_classes": (), "config": (),
    "standard": ("test_accuracy",),
    "modular": ("test_accuracy",),
    "composed": ("test_accuracy",),
    "modules": ("mean_size", "mean_jaccard"),
    "reuse": ("subtasks", "mean_accuracy", "mean_standard_accuracy"),
    "timing": ("decompose_seconds",),
    "backend": (),
}


def check_results(results: Mapping[str, Any]) -> None:
    """``ValueError`` naming the first key of the common schema a results dict lacks."""
    for key, subkeys in RESULTS_SCHEMA.items():
        if key not in results:
            raise ValueError(f"results lack the common key {key!r}")
        for sub in subkeys:
            if sub not in results[key]:
                raise ValueError(f"results[{key!r}] lacks {sub!r}")


# ---------------------------------------------------------------------------------------------
# Setting up (every check before any training)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a run works with, built and checked from its config before anything is trained or written."""

    config: Any
    approach: Any
    reference: Any  # the approach whose model is trained and decomposed (itself, or the random control's)
    dataset: data.Dataset
    model: Any
    train_config: train.TrainConfig
    subtasks: list[tuple[int, ...]]

    @property
    def name(self) -> str:
        return self.approach.name

    def run_info(self, loss: str, model: Any = None, **extra: Any) -> dict[str, Any]:
        """The identity a resumable training run checks before it resumes."""
        return {"model": self.config.model, "model_config": models.model_config(model or self.model),
                "dataset": self.config.dataset, "train_samples": len(self.dataset.train.x),
                "val_fraction": self.config.val_fraction, "loss": loss, **extra}


def model_config_of(config: Any) -> dict[str, Any]:
    """The ``model_config`` setting (a JSON object) as keyword arguments for the zoo."""
    try:
        value = json.loads(config.model_config)
    except json.JSONDecodeError as err:
        raise ValueError(f"config.model_config is not JSON: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"config.model_config must be a JSON object, got {config.model_config!r}")
    return as_hashable(value)


def approach_options(options: Any) -> dict[str, Any]:
    """An approach's options (a ConfigDict) as keyword arguments."""
    return dict(options.to_dict()) if hasattr(options, "to_dict") else dict(options)


def setup(config: Any) -> Setup:
    """Approach, data, model, training settings and sub-tasks; ``ValueError`` naming the setting at fault."""
    approach = create_approach(config.approach, **approach_options(config.options))
    reference = approach
    if config.approach == "random":
        reference = create_approach(approach.reference, **approach_options(config.reference_options))
    if reference.name == "supermask":
        reference = dataclasses.replace(reference, progress=bool(config.progress))
    if config.approach == "rnn" or reference.name == "rnn":
        raise ValueError("recurrent models run through experiments.pipeline_rnn (config rnn.py)")
    train_config = train.TrainConfig(epochs=config.train.epochs, batch_size=config.train.batch_size,
                                     learning_rate=config.train.learning_rate, seed=config.seed,
                                     optimizer=config.train.optimizer, schedule=config.train.schedule,
                                     augment=resolve_augment(config.train.augment, config.dataset),
                                     compute_dtype=config.train.compute_dtype)
    if reference.training_loss() is not None and config.train.optimizer != "sgd":
        raise ValueError(f"config.train.optimizer={config.train.optimizer} would also train {reference.name}'s "
                         "modular model, which the paper trains with SGD; use sgd")
    if config.random_control and config.approach == "random":
        raise ValueError("config.random_control draws the control beside a method's modules; this run is the random "
                         "control itself (set config.random_control=False)")
    if config.reuse.num_subtasks < 1:
        raise ValueError(f"config.reuse.num_subtasks must be >= 1, got {config.reuse.num_subtasks}")
    if config.eval_batch_size < 1:
        raise ValueError(f"config.eval_batch_size must be >= 1, got {config.eval_batch_size}")
    if config.timing_repeats < 0:
        raise ValueError(f"config.timing_repeats must be >= 0, got {config.timing_repeats}")
    model_kwargs = model_config_of(config)
    if is_user_model(config.model):
        model_class(config.model)  # a user's model that does not import fails before data loads
    else:
        models.create_model(config.model, 2, **model_kwargs)  # a bad model or configuration fails before data loads
    dataset = data.load_dataset(config.dataset, val_fraction=config.val_fraction, seed=config.seed,
                                data_dir=config.data_dir, source=config.data_source,
                                train_limit=config.train_limit, test_limit=config.test_limit)
    model = create_model(config.model, dataset.num_classes, dataset.train.x[:1], config.seed, **model_kwargs)
    models.check_input_shape(model, dataset.input_shape)
    check_model(reference, model, config.model, dataset.input_shape)
    # decomposition and reuse need every class: find out before training rather than after
    for split in ("train", "val", "test"):
        data.check_every_class_present(dataset.split(split).y, dataset.num_classes,
                                       f"{split} samples (raise config.{'test' if split == 'test' else 'train'}_limit)")
    if len(dataset.train.x) < config.train.batch_size:
        raise ValueError(f"the training split has {len(dataset.train.x)} samples, fewer than one batch of "
                         f"{config.train.batch_size} (config.train.batch_size)")
    subtasks = draw_subtasks(config, dataset.num_classes)
    return Setup(config, approach, reference, dataset, model, train_config, subtasks)


def draw_subtasks(config: Any, num_classes: int) -> list[tuple[int, ...]]:
    """The run's reuse sub-tasks: ``num_subtasks`` of min..max classes, or of each size in ``reuse.sizes`` (as many
    as there are distinct ones where that is fewer: one of every class); the same for every approach with the
    same seed."""
    if not config.reuse.sizes:
        return reuse.sample_subtasks(num_classes, config.reuse.num_subtasks, min_size=config.reuse.min_classes,
                                     max_size=config.reuse.max_classes, seed=config.seed)
    try:
        sizes = [int(v) for v in str(config.reuse.sizes).split(",")]
    except ValueError as err:
        raise ValueError(f"config.reuse.sizes must be sizes separated by commas, got {config.reuse.sizes!r}") from err
    if any(not 2 <= v <= num_classes for v in sizes):
        raise ValueError(f"config.reuse.sizes {sizes}: each size must be in 2..{num_classes}")
    return [task for size in dict.fromkeys(sizes)
            for task in reuse.sample_subtasks(num_classes, min(config.reuse.num_subtasks, math.comb(num_classes, size)),
                                              min_size=size, max_size=size, seed=config.seed + size)]


def is_user_model(name: str) -> bool:
    """``config.model`` names a user's model class (``"package.module:ClassName"``), not a zoo model."""
    return ":" in str(name)


def create_model(name: str, num_classes: int, sample_x: np.ndarray, seed: int = 0, **config: Any) -> Any:
    """A zoo model by name, or a user's model class adapted (:func:`jaxmod.adapter.import_model`)."""
    if is_user_model(name):
        return import_model(name, num_classes, sample_x, seed, **config).model
    return models.create_model(name, num_classes, **config)


def composing_model(s: Setup, model: Any) -> Any:
    """What :func:`jaxmod.compose.compose` takes as ``model=``: a user's model (the zoo's rebuild themselves)."""
    return model if is_user_model(s.config.model) else None


def check_model(approach: Any, model: Any, model_name: str, input_shape: Sequence[int]) -> None:
    """``ValueError`` for a model the approach cannot modularize (before any training)."""
    if approach.name == "concern":
        plan = model_plan(model, input_shape)
        if approach.variant in DENSE_VARIANTS and (plan.flatten is not None or plan.conv_edges):
            raise ValueError(f"variant {approach.variant!r} is for dense models (fc1..fc4 or a user's chain of dense "
                             f"layers), not {model_name}")
    if approach.name == "mwt":
        mwt_lib.gate_names(mwt_lib.with_generators(model, False), tuple(input_shape))


# ---------------------------------------------------------------------------------------------
# Training and decomposition


def train_models(s: Setup, workdir: str) -> dict[str, Any]:
    """The standard model and, for approaches with a modular objective, the modular one (both resumable)."""
    progress = bool(s.config.progress)
    std_dir = s.config.shared_standard_dir or os.path.join(workdir, "standard")
    std_state, std_history = train.fit(s.model, s.dataset, cross_entropy_loss(), s.train_config,
                                       std_dir, progress=progress, description="standard",
                                       run_info=s.run_info("cross_entropy", **optimizer_identity(s.train_config)))
    out = {"standard": (s.model, std_state.variables(), std_history)}
    loss = s.reference.training_loss()
    if loss is None:  # post-training approach: it decomposes the standard model
        out["source"] = out["standard"]
        return out
    modular = s.reference.training_model(s.model)
    # only what changes the trained model is the modular run's identity: a decomposition setting reuses it
    identity = s.reference.training_config()
    state, history = train.fit(modular, s.dataset, loss, s.train_config, os.path.join(workdir, "modular"),
                               progress=progress, description="modular",
                               run_info=s.run_info(s.reference.name, model=modular, **identity))
    out["source"] = (modular, state.variables(), history)
    return out


def optimizer_identity(config: train.TrainConfig) -> dict[str, Any]:
    """The optimizer in a run's identity only where it is not the papers' SGD (so SGD runs resume as before)."""
    return {} if config.optimizer == "sgd" else {"optimizer": config.optimizer}


def timed_decompose(approach: Any, model: Any, variables: Any, x: np.ndarray, y: np.ndarray, num_classes: int,
                    **kwargs: Any) -> tuple[Any, float]:
    """Decompose twice (the first call compiles) and time the second."""
    approach.decompose(model, variables, x, y, num_classes, **kwargs)
    start = time.perf_counter()
    out = approach.decompose(model, variables, x, y, num_classes, **kwargs)
    jax.block_until_ready(jax.tree.leaves(out.modules))
    return out, time.perf_counter() - start


def decompose(s: Setup, source: tuple[Any, Any, Any], workdir: str) -> dict[str, Any]:
    """Decompose the source model (timed), draw the random control where asked, save the modules."""
    model, variables, _ = source
    x, y = s.dataset.train.x, s.dataset.train.y
    num_classes = s.dataset.num_classes
    if s.reference.name == "supermask":  # co-training is checkpointed per epoch: run once, resumable
        start = time.perf_counter()
        decomposition = s.reference.decompose(model, variables, x, y, num_classes,
                                              workdir=os.path.join(workdir, "cotrain"))
        seconds = time.perf_counter() - start
    else:
        decomposition, seconds = timed_decompose(s.reference, model, variables, x, y, num_classes)
    if s.approach.name == "random":
        decomposition, seconds = timed_decompose(s.approach, model, variables, x, y, num_classes,
                                                 reference=decomposition.modules)
    predict_logits(model, variables, x, s.config.eval_batch_size)  # compiled; the next call is timed
    start = time.perf_counter()
    predict_logits(model, variables, x, s.config.eval_batch_size)
    inference = time.perf_counter() - start
    # what the composed models' front door checks inputs against (jaxmod.composed.ComposedModel.check_input)
    inputs = {"input_normalization": {"mean": s.dataset.mean.tolist(), "std": s.dataset.std.tolist()}}
    modules = decomposition.modules.with_meta(dataset=s.config.dataset,
                                              extra={**decomposition.modules.meta.extra, **inputs})
    saved_variables = mwt_lib.strip_generators(variables) if s.reference.name == "mwt" else variables
    checkpoint.save_modules(os.path.join(workdir, "modules"), modules, saved_variables, overwrite=True)
    return {"modules": modules, "variables": saved_variables, "statistics": decomposition.statistics,
            "decompose_seconds": seconds, "inference_seconds": inference}


def step_times(s: Setup, trained: Mapping[str, Any]) -> dict[str, float]:
    """Median jitted train-step time (ms) of the standard and the modular objective on the same batch,
    interleaved in 5 rounds to share the machine's noise."""
    if not s.config.timing_repeats or s.reference.training_loss() is None:
        return {}
    steps_per_epoch = len(s.dataset.train.x) // s.train_config.batch_size
    optimizer = train.make_optimizer(s.train_config, steps_per_epoch)
    runs = {"standard": (s.model, cross_entropy_loss()),
            "modular": (trained["source"][0], s.reference.training_loss())}
    x, y = s.dataset.train.x[: s.train_config.batch_size], s.dataset.train.y[: s.train_config.batch_size]
    states = {k: train.init_state(m, x, optimizer, s.train_config.seed) for k, (m, _) in runs.items()}
    fns = {k: train.make_train_step(m, optimizer, loss) for k, (m, loss) in runs.items()}
    rounds: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(5):
        for k, fn in fns.items():
            rounds[k].append(train.benchmark_step(fn, states[k], x, y, repeats=max(1, s.config.timing_repeats // 5)))
    return {f"{k}_step_ms": statistics.median(v) for k, v in rounds.items()}


# ---------------------------------------------------------------------------------------------
# Composition and reuse


def composed_accuracy(composed: SlicedModel | VotingModel, x: np.ndarray, y: np.ndarray, batch_size: int,
                      confidences: np.ndarray | None = None) -> dict[str, float]:
    """Top-1 and top-5 of a composed model on the samples of its classes (labels renumbered to positions)."""
    index, labels = reuse.subtask_samples(y, composed.classes)
    if isinstance(composed, SlicedModel):
        scores = train.evaluate(composed.model, composed.variables, x[index], labels, batch_size)
        return {"top1": scores["top1"], "top5": scores["top5"]}
    conf = confidences[list(composed.classes)][:, index] if confidences is not None else \
        composed.confidences(x[index], batch_size)
    k5 = min(5, len(composed.classes))
    return {"top1": voting_accuracy(conf, labels), "top5": voting_accuracy(conf, labels, k=k5)}


def compose_and_reuse(s: Setup, d: Mapping[str, Any], source_model: Any, std: tuple[Any, Any, Any]) -> dict:
    """All modules composed back, then every sub-task, beside the standard model restricted to its classes."""
    modules, variables = d["modules"], d["variables"]
    test = s.dataset.test
    batch = s.config.eval_batch_size
    plain = mwt_lib.with_generators(source_model, False) if s.reference.name == "mwt" else source_model
    full_params = count_parameters(variables)
    full_flops = metrics.forward_flops(plain, variables, s.dataset.input_shape)
    every = tuple(range(s.dataset.num_classes))
    composed_all = compose(modules, variables, every, model=composing_model(s, plain))
    confidences = None
    if isinstance(composed_all, VotingModel):  # modules are independent: one scan serves every sub-task
        confidences = composed_all.confidences(test.x, batch)
    all_scores = composed_accuracy(composed_all, test.x, test.y, batch, confidences)
    std_logits = predict_logits(std[0], std[1], test.x, batch)
    rows = []
    for classes in tqdm(s.subtasks, desc="reuse sub-tasks", disable=None if s.config.progress else True, leave=False):
        composed = compose(modules, variables, classes, model=composing_model(s, plain))
        row = {"classes": list(classes),
               "accuracy": composed_accuracy(composed, test.x, test.y, batch, confidences)["top1"],
               "standard_accuracy": reuse.restricted_accuracy(std_logits, test.y, classes)}
        if isinstance(composed, SlicedModel):
            row["composed_size"] = count_parameters(composed.variables) / full_params
            row["composed_flops"] = metrics.forward_flops(composed.model, composed.variables,
                                                          s.dataset.input_shape) / full_flops
        else:
            row["composed_size"] = metrics.union_size(modules, classes)
        rows.append(row)
    composed_section = {"test_accuracy": all_scores["top1"], "test_top5": all_scores["top5"],
                        "method": "merged and sliced" if isinstance(composed_all, SlicedModel) else "voting"}
    composed_section["size"] = (count_parameters(composed_all.variables) / full_params
                                if isinstance(composed_all, SlicedModel) else metrics.union_size(modules, every))
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    reuse_section = {"subtasks": rows, "mean_accuracy": mean("accuracy"),
                     "mean_standard_accuracy": mean("standard_accuracy"), "mean_composed_size": mean("composed_size")}
    if "composed_flops" in rows[0]:
        reuse_section["mean_composed_flops"] = mean("composed_flops")
    return {"composed": composed_section, "reuse": reuse_section, "confidences": confidences,
            "std_logits": std_logits, "full_params": full_params, "full_flops": full_flops}


def random_control(s: Setup, d: Mapping[str, Any], source_model: Any, std: tuple[Any, Any, Any]) -> dict[str, Any]:
    """The random control at this run's own module sizes, measured like the modules (same sub-tasks)."""
    control = create_approach("random", reference=s.reference.name, seed=s.config.seed)
    drawn = control.decompose(source_model, d["variables"], s.dataset.train.x, s.dataset.train.y,
                              s.dataset.num_classes, reference=d["modules"]).modules
    plain = mwt_lib.with_generators(source_model, False) if s.reference.name == "mwt" else source_model
    sizes = metrics.module_statistics(drawn, d["variables"], plain)
    measured = compose_and_reuse(s, {**d, "modules": drawn}, source_model, std)
    return {"composed": measured["composed"], "reuse": measured["reuse"],
            "modules": {"mean_size": sizes["mean_size"], "mean_overlap": sizes["mean_overlap"],
                        "mean_jaccard": sizes["mean_jaccard"], "counted": sizes["counted"],
                        "weights": in_weights(drawn, d["variables"], plain)}}


def in_weights(modules: Any, variables: Any, model: Any) -> dict[str, float] | None:
    """Mean module size and Jaccard index counted in the model's weights, the unit every method shares
    (:func:`jaxmod.metrics.weight_statistics`); ``None`` for masks with a time axis (no single weight count)."""
    if modules.time_axis:
        return None
    stats = metrics.weight_statistics(modules, variables, model)
    return {"mean_size": stats["mean_size"], "mean_jaccard": stats["mean_jaccard"]}


LATENCY_CLASSES = (0, 1)  # the 2-class composed model every run times (the same pair for every approach)


def composed_latency(s: Setup, d: Mapping[str, Any], plain: Any, measured: Mapping[str, Any],
                     repeats: int) -> dict[str, Any]:
    """Measured forward latency of the 2-class composed model against the full model (batch 1 and 256), beside
    its FLOPs and parameter ratios where it is merged (a voting model runs the full model once per module)."""
    composed = compose(d["modules"], d["variables"], LATENCY_CLASSES, model=composing_model(s, plain))
    variables = d["variables"]
    out: dict[str, Any] = {"classes": list(LATENCY_CLASSES), "method": type(composed).__name__,
                           **latency.latency_comparison(lambda x: plain.apply(variables, x), composed.scores,
                                                        s.dataset.input_shape, repeats=repeats)}
    if isinstance(composed, SlicedModel):
        out["flops_ratio"] = metrics.forward_flops(composed.model, composed.variables, s.dataset.input_shape) / \
            measured["full_flops"]
        out["size_ratio"] = count_parameters(composed.variables) / measured["full_params"]
    return out


# ---------------------------------------------------------------------------------------------
# What some approaches add


def mwt_extras(s: Setup, d: Mapping[str, Any], trained: Mapping[str, Any], measured: dict, workdir: str) -> None:
    """MwT's kernel metrics (KRR, cohesion, coupling) and its reuse with a fine-tuned new head per sub-task."""
    gen_model, gen_vars, _ = trained["source"]
    modules, plain_vars = d["modules"], d["variables"]
    x, y = s.dataset.train.x, s.dataset.train.y
    approach = s.reference
    kern = mwt_lib.kernel_metrics(gen_model, gen_vars, modules.units, x, y, batch_size=s.config.eval_batch_size)
    groups = list(kern["gated_groups"])
    measured["modules"].update({k: kern[k] for k in ("krr", "cohesion", "coupling", "cohesion_per_module", "kernels")})
    measured["modules"]["gated_groups"] = groups
    if s.approach.name != "mwt":
        return
    test = s.dataset.test
    rows = measured["reuse"]["subtasks"]
    for row in tqdm(rows, desc="MwT fine-tuning", disable=None if s.config.progress else True, leave=False):
        classes = tuple(row["classes"])
        row["krr"] = float(mwt_lib.gated_kernels({g: m[None] for g, m in modules.union(classes).items()},
                                                 groups).mean())
        for key in ("accuracy", "composed_size", "composed_flops"):
            row[f"{key}_no_finetune"] = row[key]
        if not approach.finetune_epochs:
            continue
        mixed = mwt_lib.mixed_module(modules, plain_vars, classes)
        start = time.perf_counter()
        tuned = mwt_lib.finetune_subtask(mixed, s.dataset, classes, epochs=approach.finetune_epochs,
                                         batch_size=s.train_config.batch_size, learning_rate=approach.finetune_lr,
                                         seed=s.config.seed)
        row["finetune_seconds"] = time.perf_counter() - start
        index, labels = reuse.subtask_samples(test.y, classes)
        row["accuracy"] = train.evaluate(tuned.model, tuned.variables, test.x[index], labels)["top1"]
        row["best_epoch"] = tuned.best_epoch
        row["composed_size"] = count_parameters(tuned.variables) / measured["full_params"]
        row["composed_flops"] = metrics.forward_flops(tuned.model, tuned.variables,
                                                      s.dataset.input_shape) / measured["full_flops"]
        if s.config.extras.get("save_finetuned", False):
            mwt_lib.save_finetuned(os.path.join(workdir, "finetuned", "_".join(map(str, classes))), tuned, modules,
                                   overwrite=True)
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    measured["reuse"].update({
        "mean_accuracy": mean("accuracy"), "mean_accuracy_no_finetune": mean("accuracy_no_finetune"),
        "mean_composed_size": mean("composed_size"), "mean_composed_flops": mean("composed_flops"),
        "mean_composed_size_no_finetune": mean("composed_size_no_finetune"),
        "mean_composed_flops_no_finetune": mean("composed_flops_no_finetune"), "mean_krr": mean("krr"),
        "finetune_epochs": approach.finetune_epochs, "finetune_lr": approach.finetune_lr})
    measured["timing"]["finetune_seconds"] = float(sum(r.get("finetune_seconds", 0.0) for r in rows))
    measured["composed"]["fine_tuned"] = False


def supermask_extras(s: Setup, d: Mapping[str, Any], trained: Mapping[str, Any], measured: dict, workdir: str) -> None:
    """The paper's RPs (remaining-parameter ratios), each module as a binary classifier, and the co-training
    time against one module trained alone for the same epochs."""
    model, variables, _ = trained["source"]
    modules, approach = d["modules"], s.reference
    stats = d["statistics"]
    sizes = measured["modules_raw"]
    confidences = measured["confidences"]
    y = s.dataset.test.y
    target = y[None, :] == np.asarray(modules.classes)[:, None]
    said = confidences > 0.5
    tpr = np.sum(said & target, axis=1) / np.maximum(np.sum(target, axis=1), 1)
    tnr = np.sum(~said & ~target, axis=1) / np.maximum(np.sum(~target, axis=1), 1)
    balanced = (tpr + tnr) / 2
    measured["modules"].update({
        "rps": {"single_mean": sizes["mean_size"], "two_class_mean": sizes["two_class_union_mean"],
                "two_class_min": sizes["two_class_union_min"], "two_class_max": sizes["two_class_union_max"],
                "all_classes": measured["composed"]["size"],
                "two_class_per_epoch": np.asarray(stats.get("two_class_rps", [])).tolist()},
        "jaccard_per_epoch": np.asarray(stats["mean_jaccard"]).tolist(),
        "accuracy": np.mean(said == target, axis=1).tolist(), "balanced_accuracy": balanced.tolist(),
        "mean_balanced_accuracy": float(np.mean(balanced)),
        "train_cross_entropy_per_epoch": np.asarray(stats["cross_entropy"]).mean(axis=1).tolist(),
        "stemming_per_epoch": np.asarray(stats["stemming"]).mean(axis=1).tolist()})
    cotrain = float(stats["train_seconds"])
    timing = {"cotrain_seconds": cotrain, "cotrain_compile_seconds": float(stats["compile_seconds"]),
              "cotrain_modules": modules.num_modules, "module_epochs": approach.epochs}
    if s.config.extras.get("time_single_module", False):
        x, yt = s.dataset.train.x, s.dataset.train.y
        _, single = approach.train_modules(model, variables, x, yt, s.dataset.num_classes, classes=(0,))
        timing.update(single_module_seconds=single["train_seconds"], cotrain_ratio=cotrain / single["train_seconds"])
    measured["timing"].update(timing)
    measured["config"].update(maskable_weights=sm.masked_weight_count(variables["params"]),
                              base_fingerprint=modules.meta.source)
    epochs = list(range(1, len(stats["two_class_rps"]) + 1))
    report.line_plot_png(epochs, {"two-class RPs": stats["two_class_rps"], "mean Jaccard": stats["mean_jaccard"],
                                  "k (one module)": [approach.k] * len(epochs)},
                         os.path.join(workdir, "plots", "rps_per_epoch.png"), xlabel="module epoch",
                         ylabel="fraction of maskable weights",
                         title=f"supermask {s.config.model}/{s.config.dataset}: alpha {approach.alpha}, k {approach.k}")


def concern_extras(s: Setup, d: Mapping[str, Any], trained: Mapping[str, Any], measured: dict, workdir: str) -> None:
    """Pan and Rajan's Jaccard indices over nodes (and over weights for dense models)."""
    model, variables, _ = trained["source"]
    jac = jaccard_figures(model, variables, d["modules"])
    measured["modules"].update({"jaccard_module_model": jac["node_mean_module_model"], **jac})
    measured["config"].update(variant=s.reference.variant, backtracking={
        "ci_ti_mc_bln": "MC-BLN", "ci_ti_mc_bln_bi": "MC-BLN+MC-BI", "cm_rie": "RIE"}.get(s.reference.variant, "none"))


EXTRAS = {"mwt": mwt_extras, "supermask": supermask_extras, "concern": concern_extras}


# ---------------------------------------------------------------------------------------------
# The run


def run_identity(config: Any) -> dict[str, Any]:
    """Every setting of a run but the display ones: a finished run with the same identity is not redone."""
    return json.loads(json.dumps({k: v for k, v in config.to_dict().items() if k != "progress"}))


def finished(config: Any, workdir: str) -> dict[str, Any] | None:
    """The results of a finished run of exactly this config in ``workdir`` (and its modules on disk), else None."""
    path = os.path.join(workdir, "results.json")
    if not (os.path.isfile(path) and os.path.isdir(os.path.join(workdir, "modules"))):
        return None
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return results if results.get("config", {}).get("identity") == run_identity(config) else None


def check_workdir(workdir: str) -> None:
    """``ValueError`` before any work for a work directory that cannot be one."""
    if not isinstance(workdir, str) or not workdir:
        raise ValueError(f"the work directory must be a path, got {workdir!r}")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"the work directory {workdir} exists and is not a directory")


def say(config: Any, message: str) -> None:
    """A stage line between progress bars (only when progress is shown)."""
    if config.progress:
        tqdm.write(message)


def resolve_augment(name: str, dataset: str) -> str:
    """``"auto"``: the augmentation the papers' code uses for ``dataset``; any other name as it is."""
    return get_spec(dataset).augment if name == "auto" else name


def run_mesh(spec: str) -> contextlib.AbstractContextManager:
    """Data parallelism over ``spec`` (``""``: every local device on the data axis, nothing with one device)."""
    if not spec and jax.local_device_count() == 1:
        return contextlib.nullcontext()
    return sharding.data_parallel(sharding.parse_mesh(spec or None))  # parsed now: a bad spec fails before work


def run(config: Any, workdir: str) -> dict[str, Any]:
    """Train, decompose, compose, measure; writes ``WORKDIR/results.json`` and returns the results. A rerun of a
    finished run (same settings, results and modules on disk) returns its results at once. Per-sample work runs
    data-parallel on ``config.mesh`` (see :mod:`jaxmod.sharding`)."""
    check_workdir(workdir)
    done = finished(config, workdir)
    if done is not None:
        say(config, f"{workdir} holds this finished run: its results are read, nothing is redone")
        return done
    mesh = run_mesh(config.mesh)
    s = setup(config)
    with mesh:
        return run_setup(s, config, workdir)


def run_setup(s: Setup, config: Any, workdir: str) -> dict[str, Any]:
    """:func:`run` after the settings are checked: every stage, in order."""
    os.makedirs(workdir, exist_ok=True)
    trained = train_models(s, workdir)
    std_model, std_vars, std_history = trained["standard"]
    src_model, src_vars, src_history = trained["source"]
    batch = config.eval_batch_size
    std_eval = train.evaluate(std_model, std_vars, s.dataset.test.x, s.dataset.test.y, batch)
    src_eval = train.evaluate(src_model, src_vars, s.dataset.test.x, s.dataset.test.y, batch)
    say(config, "timing the train steps" if config.timing_repeats else "decomposing")
    times = step_times(s, trained)
    say(config, f"decomposing with {s.reference.name}" + (" and drawing the random control" if s.name == "random"
                                                           else ""))
    d = decompose(s, trained["source"], workdir)
    say(config, "composing all classes and the reuse sub-tasks")
    modules = d["modules"]
    plain = mwt_lib.with_generators(src_model, False) if s.reference.name == "mwt" else src_model
    sizes = metrics.module_statistics(modules, d["variables"], plain)
    measured = compose_and_reuse(s, d, src_model, trained["standard"])
    measured.update(
        modules={"mean_size": sizes["mean_size"], "mean_overlap": sizes["mean_overlap"],
                 "mean_jaccard": sizes["mean_jaccard"], "sizes": sizes["sizes"].tolist(), "counted": sizes["counted"],
                 "weights": in_weights(modules, d["variables"], plain)},
        modules_raw=sizes,
        timing={**times, "decompose_seconds": d["decompose_seconds"], "inference_seconds": d["inference_seconds"]},
        config={"train": {"epochs": s.train_config.epochs, "batch_size": s.train_config.batch_size,
                          "lr": s.train_config.learning_rate, "optimizer": s.train_config.optimizer,
                          "augment": s.train_config.augment, "compute_dtype": s.train_config.compute_dtype,
                          "devices": sharding.data_size(sharding.current_mesh()) if sharding.current_mesh() else 1},
                "approach": s.approach.config(), "train_samples": len(s.dataset.train.x),
                "test_samples": len(s.dataset.test.x), "source": modules.meta.source, "identity": run_identity(config)})
    if s.approach.name == "random":
        measured["config"]["reference"] = s.reference.config()
    if config.random_control:
        measured["random_control"] = random_control(s, d, src_model, trained["standard"])
    if config.latency_repeats:
        say(config, "timing the composed and the full model")
        measured["latency"] = composed_latency(s, d, plain, measured, config.latency_repeats)
    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    extras = EXTRAS.get(s.reference.name)
    if extras is not None:
        extras(s, d, trained, measured, workdir)
    write_plots(s, d, measured, workdir)
    results = {
        "approach": s.name, "model": config.model, "dataset": config.dataset, "seed": config.seed,
        "num_classes": s.dataset.num_classes, "config": measured["config"],
        "standard": {"test_accuracy": std_eval["top1"], "test_top5": std_eval["top5"], "history": std_history},
        "modular": {"test_accuracy": src_eval["top1"], "test_top5": src_eval["top5"], "history": src_history},
        "composed": measured["composed"], "modules": measured["modules"], "reuse": measured["reuse"],
        "timing": measured["timing"], "backend": jax.default_backend(),
    }
    for key in ("random_control", "latency"):
        if key in measured:
            results[key] = measured[key]
    check_results(results)
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    return results


def write_plots(s: Setup, d: Mapping[str, Any], measured: Mapping[str, Any], workdir: str) -> None:
    """Per-class activation (or kernel) frequency heatmaps and reuse accuracy against composed size."""
    stats = d["statistics"]
    rates = stats.get("activation_rate", stats.get("kernel_frequency"))
    if rates is not None:
        flat = {k: np.asarray(v).reshape(np.shape(v)[0], -1) for k, v in rates.items()}
        name = "kernel_frequency" if "kernel_frequency" in stats else "activation_frequency"
        report.activation_heatmap_png(flat, os.path.join(workdir, "plots", f"{name}.png"),
                                      class_names=s.dataset.class_names,
                                      title=f"{s.reference.name}: per-class {name.replace('_', ' ')} "
                                            f"({s.config.model}, {s.config.dataset})")
    rows = measured["reuse"]["subtasks"]
    series = {"composed": ([r["composed_size"] for r in rows], [r["accuracy"] for r in rows])}
    if "accuracy_no_finetune" in rows[0]:
        series["no fine-tuning"] = ([r["composed_size_no_finetune"] for r in rows],
                                    [r["accuracy_no_finetune"] for r in rows])
    series["standard (restricted)"] = ([1.0] * len(rows), [r["standard_accuracy"] for r in rows])
    report.scatter_plot_png(series, os.path.join(workdir, "plots", "reuse_accuracy_vs_size.png"),
                            xlabel=f"composed size (fraction of {measured['modules']['counted']})",
                            ylabel="sub-task test accuracy", title=f"{s.name}: reuse without retraining")


def dig(results: Mapping[str, Any], path: str | Sequence[str]) -> Any:
    """The value at a dotted path (``"reuse.mean_accuracy"``) of a results dict, or None where it has none."""
    for key in path.split(".") if isinstance(path, str) else path:
        if not isinstance(results, Mapping) or key not in results:
            return None
        results = results[key]
    return results


# label -> dotted path into results.json; rows whose value a run lacks are left out of the table.
SUMMARY_ROWS: dict[str, str] = {
    "standard test accuracy": "standard.test_accuracy",
    "modular test accuracy": "modular.test_accuracy",
    "composed (all classes) accuracy": "composed.test_accuracy",
    "composed (all classes) top-5": "composed.test_top5",
    "mean module size": "modules.mean_size",
    "mean module overlap": "modules.mean_overlap",
    "mean Jaccard index": "modules.mean_jaccard",
    "reuse accuracy": "reuse.mean_accuracy",
    "reuse accuracy without fine-tuning": "reuse.mean_accuracy_no_finetune",
    "standard accuracy, same sub-tasks": "reuse.mean_standard_accuracy",
    "mean composed size": "reuse.mean_composed_size",
    "mean composed FLOPs": "reuse.mean_composed_flops",
    "KRR (kernel retention rate)": "modules.krr",
    "cohesion (Jaccard)": "modules.cohesion",
    "coupling (Jaccard)": "modules.coupling",
    "module-model Jaccard (nodes)": "modules.jaccard_module_model",
    "two-class RPs (mean)": "modules.rps.two_class_mean",
    "RPs, all classes": "modules.rps.all_classes",
    "mean module balanced accuracy": "modules.mean_balanced_accuracy",
    "decomposition cost (composed - standard)": "composed.cost",
    "standard BLEU": "standard.bleu_all",
    "standard step (ms)": "timing.standard_step_ms",
    "modular step (ms)": "timing.modular_step_ms",
    "decompose (s)": "timing.decompose_seconds",
    "inference, same samples (s)": "timing.inference_seconds",
    "co-training (s)": "timing.cotrain_seconds",
    "co-training / one module": "timing.cotrain_ratio",
    "2-class composed / full latency, batch 1": "latency.ratio_batch_1",
    "2-class composed / full latency, batch 256": "latency.ratio_batch_256",
    "2-class composed / full FLOPs": "latency.flops_ratio",
}


def summary(results: Mapping[str, Any]) -> str:
    """The readable end-of-run table of the figures a run has."""
    rows = []
    for label, path in SUMMARY_ROWS.items():
        value = dig(results, path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append({"metric": label, "value": value})
    std, mod = dig(results, "timing.standard_step_ms"), dig(results, "timing.modular_step_ms")
    if std and mod:
        rows.append({"metric": "modular / standard step", "value": mod / std})
    return report.summary_table(rows)

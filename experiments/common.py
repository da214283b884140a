"""Pieces every experiment runner shares: flag parsing helpers, timing, atomic JSON, the results schema."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import app

from jaxmod import checkpoint, compose, data, metrics, models, train
from jaxmod.activations import predict_logits
from jaxmod.losses import cross_entropy_loss
from jaxmod.modules import ModuleSet, as_hashable, module_set

# Every approach's results.json has these top-level keys (post-training approaches repeat the
# standard model under "modular"); approach-specific figures go under the same sections as extra keys.
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


def parse_json_object(text: str, flag: str) -> dict[str, Any]:
    """A flag holding a JSON object, as a hashable mapping; ``ValueError`` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--{flag} is not JSON: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"--{flag} must be a JSON object, got {text!r}")
    return as_hashable(value)


def number_list_flag(values: Sequence[str], flag: str, allow_zero: bool = False) -> list[float]:
    """A list flag of numbers, each > 0 (>= 0 with ``allow_zero``), in the given order; ``app.UsageError``
    naming the flag otherwise (empty lists included)."""
    try:
        numbers = [float(v) for v in values]
    except ValueError as err:
        raise app.UsageError(f"--{flag} must be numbers: {list(values)}") from err
    if not numbers or min(numbers) < 0 or (min(numbers) == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise app.UsageError(f"--{flag} must be {kind} numbers, got {list(values)}")
    return numbers


def option(value: Any, default: Any) -> Any:
    """A shared flag left unset (``None``) takes the approach's own default."""
    return default if value is None else value


@dataclasses.dataclass(frozen=True)
class ImageRun:
    """What every image-classifier runner sets up from the shared flags, checked before any training."""

    model_name: str
    dataset_name: str
    config: train.TrainConfig
    dataset: data.Dataset
    model: Any
    subtasks: list[tuple[int, ...]]
    seed: int
    val_fraction: float
    optimizer: str = "sgd"

    def run_info(self, loss: str, **extra: Any) -> dict[str, Any]:
        """The identity a resumable training run checks before it resumes."""
        return {"model": self.model_name, "model_config": models.model_config(self.model),
                "dataset": self.dataset_name, "train_samples": len(self.dataset.train.x),
                "val_fraction": self.val_fraction, "loss": loss, **extra}

    def train_standard(self, workdir: str, progress: bool) -> tuple[train.TrainState, list[dict[str, Any]]]:
        """The cross-entropy model every approach starts from (resumes under ``WORKDIR/standard``)."""
        extra, opt = {}, None
        if self.optimizer != "sgd":  # named in the identity only then: SGD runs resume as before
            steps = data.num_batches(len(self.dataset.train.x), self.config.batch_size, drop_remainder=True)
            extra, opt = {"optimizer": self.optimizer}, train.make_optimizer(self.config, steps, self.optimizer)
        return train.fit(self.model, self.dataset, cross_entropy_loss(), self.config, os.path.join(workdir, "standard"),
                         progress=progress, description="standard", run_info=self.run_info("cross_entropy", **extra),
                         optimizer=opt)

    def decompose_and_save(self, approach: Any, variables: Mapping[str, Any], workdir: str, batch_size: int,
                           source: tuple[Any, Mapping[str, Any]] | None = None) -> tuple[Any, ModuleSet, float, float]:
        """Decompose over the training samples, timed against one forward pass over the same samples, and save
        the modules with ``variables`` under ``WORKDIR/modules``.

        ``source`` is the (model, variables) pair to decompose when it is not ``(self.model, variables)`` (MwT:
        the model with its mask generators). Returns (decomposition, modules, decompose_s, inference_s).
        """
        model, src_vars = source or (self.model, variables)
        x, y = self.dataset.train.x, self.dataset.train.y
        decomposition, decompose_s = timed_decompose(approach, model, src_vars, x, y, self.dataset.num_classes)
        _, inference_s = timed(predict_logits, model, src_vars, x, batch_size)
        modules = module_set(decomposition.masks, approach=approach.name, model_name=self.model_name,
                             model=self.model, dataset=self.dataset_name, input_shape=self.dataset.input_shape,
                             granularity=decomposition.granularity, extra=approach.config(),
                             heads=decomposition.heads)
        checkpoint.save_modules(os.path.join(workdir, "modules"), modules, variables, overwrite=True)
        return decomposition, modules, decompose_s, inference_s

    def results_header(self, approach: Any, **config: Any) -> dict[str, Any]:
        """The first keys of results.json; ``config`` adds approach-specific run settings."""
        return {
            "approach": approach.name, "model": self.model_name, "dataset": self.dataset_name, "seed": self.seed,
            "num_classes": self.dataset.num_classes,
            "config": {"train": {"epochs": self.config.epochs, "batch_size": self.config.batch_size,
                                 "lr": self.config.learning_rate},
                       "approach": approach.config(), "train_samples": len(self.dataset.train.x),
                       "test_samples": len(self.dataset.test.x), **config},
        }


def image_run_from_flags(flags: Any, defaults: Mapping[str, Any],
                         check_model: Callable[[Any], None] | None = None, allow_optimizer: bool = False) -> ImageRun:
    """Data, model and reuse sub-tasks from the shared flags; ``ValueError`` before any training.

    ``check_model`` lets an approach refuse a model it does not support once the model is built;
    ``allow_optimizer`` accepts ``--optimizer`` other than SGD (post-training approaches: the standard model).
    """
    model_name = option(flags.model, defaults["model"])
    dataset_name = option(flags.dataset, defaults["dataset"])
    config = train.TrainConfig(epochs=flags.epochs, batch_size=flags.batch_size, learning_rate=flags.lr,
                               seed=flags.seed)
    if flags.num_subtasks < 1:
        raise ValueError(f"--num_subtasks must be >= 1, got {flags.num_subtasks}")
    if flags.optimizer != "sgd" and not allow_optimizer:
        raise ValueError(f"--optimizer={flags.optimizer} trains only the standard model of a post-training approach; "
                         "this approach trains its modular model with the papers' SGD, so use --optimizer=sgd")
    dataset = data.load_dataset(dataset_name, val_fraction=flags.val_fraction, seed=flags.seed,
                                data_dir=flags.data_dir, source=flags.data_source, train_limit=flags.train_limit,
                                test_limit=flags.test_limit)
    model = models.create_model(model_name, dataset.num_classes,
                                **parse_json_object(flags.model_config, "model_config"))
    models.check_input_shape(model, dataset.input_shape)
    if check_model is not None:
        check_model(model)
    # Decomposition needs every class; find out before training rather than after.
    data.check_every_class_present(dataset.train.y, dataset.num_classes, "training samples (raise --train_limit)")
    subtasks = compose.sample_subtasks(dataset.num_classes, flags.num_subtasks, min_size=flags.min_subtask_classes,
                                       max_size=flags.max_subtask_classes, seed=flags.seed)
    return ImageRun(model_name, dataset_name, config, dataset, model, subtasks, flags.seed, flags.val_fraction,
                    flags.optimizer)


def step_times(model, data_: data.Dataset, loss_fns: Mapping[str, Any], config: train.TrainConfig,
               repeats: int, models: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Median jitted train-step time (ms) per loss on the same batch, interleaved to share noise.

    ``models`` (loss name -> model) times a loss on another model than ``model`` (e.g. MwT's modular
    loss on the model with its mask generators).
    """
    steps_per_epoch = data.num_batches(len(data_.train.x), config.batch_size, drop_remainder=True)
    optimizer = train.make_optimizer(config, steps_per_epoch)
    model_of = {k: (models or {}).get(k, model) for k in loss_fns}
    states = {k: train.init_state(m, data_.input_shape, optimizer, config.seed) for k, m in model_of.items()}
    x, y = data_.train.x[: config.batch_size], data_.train.y[: config.batch_size]
    fns = {k: train.make_train_step(model_of[k], optimizer, fn) for k, fn in loss_fns.items()}
    rounds = {k: [] for k in fns}
    for _ in range(5):
        for k, fn in fns.items():
            rounds[k].append(train.benchmark_step(fn, states[k], x, y, repeats=max(1, repeats // 5)))
    return {k: statistics.median(v) for k, v in rounds.items()}


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """(result, seconds) of a call whose jitted work is compiled already (second call timed)."""
    jax.block_until_ready(fn(*args, **kwargs))
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - start


def timed_decompose(approach: Any, model: Any, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                    num_classes: int) -> tuple[Any, float]:
    """Decompose twice (the first call compiles) and time the second."""
    approach.decompose(model, variables, x, y, num_classes)
    start = time.perf_counter()
    out = approach.decompose(model, variables, x, y, num_classes)
    jax.block_until_ready(jax.tree.leaves(out.masks))
    return out, time.perf_counter() - start


def write_rows_tables(stem: str, rows: Sequence[Mapping[str, Any]], title: str, notes: str, program: str) -> str:
    """``<stem>.csv`` and ``<stem>.md`` (title, the command that made it, the rows, notes); returns the Markdown path.

    ``program`` is the module name the command line is written with (``python -m <program> <this run's flags>``).
    """
    if not rows:
        raise ValueError("no rows to write")
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    cols = list(rows[0])
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    cmd = " ".join(shlex.quote(a) for a in ["python", "-m", program, *sys.argv[1:]])
    lines = [f"# {title}", "", "Made by:", "", "```", cmd, "```", "",
             "| " + " | ".join(cols) + " |", "| " + " | ".join("---:" for _ in cols) + " |"]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", notes, ""]
    with open(f"{stem}.md", "w") as f:
        f.write("\n".join(lines))
    return f"{stem}.md"


def read_jsonl_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows a resumable table program already wrote (one JSON object per line; a torn last line is ignored)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logging.warning("ignoring an unreadable line of %s", os.fspath(path))
    return rows


def append_jsonl_rows(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Append finished rows, one JSON object per line, so that an interrupted program resumes after them."""
    with open(path, "a") as f:
        f.writelines(json.dumps(dict(r)) + "\n" for r in rows)


def write_json_atomic(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Write JSON through a temporary file and a rename: a reader never sees half a file."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _dig(results: Mapping[str, Any], path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(results, Mapping) or key not in results:
            return None
        results = results[key]
    return results


# (label, path into results.json); rows whose value a run lacks are left out of the table.
SUMMARY_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("standard test accuracy", ("standard", "test_accuracy")),
    ("modular test accuracy", ("modular", "test_accuracy")),
    ("composed (all classes) accuracy", ("composed", "test_accuracy")),
    ("composed (all classes) top-5", ("composed", "test_top5")),
    ("mean module size", ("modules", "mean_size")),
    ("mean module overlap", ("modules", "mean_overlap")),
    ("mean Jaccard index", ("modules", "mean_jaccard")),
    ("reuse accuracy", ("reuse", "mean_accuracy")),
    ("standard accuracy, same sub-tasks", ("reuse", "mean_standard_accuracy")),
    ("mean composed size", ("reuse", "mean_composed_size")),
    ("mean composed FLOPs", ("reuse", "mean_composed_flops")),
    ("standard step (ms)", ("timing", "standard_step_ms")),
    ("modular step (ms)", ("timing", "modular_step_ms")),
    ("decompose (s)", ("timing", "decompose_seconds")),
    ("inference, same samples (s)", ("timing", "inference_seconds")),
)


def summary(results: Mapping[str, Any], extra_rows: Sequence[tuple[str, tuple[str, ...]]] = ()) -> str:
    """The readable end-of-run table: the common figures, then the approach's own."""
    rows = []
    for label, path in (*SUMMARY_ROWS, *extra_rows):
        value = _dig(results, path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append({"metric": label, "value": value})
    std, mod = _dig(results, ("timing", "standard_step_ms")), _dig(results, ("timing", "modular_step_ms"))
    if std and mod:
        rows.append({"metric": "modular / standard step", "value": mod / std})
    return metrics.summary_table(rows)

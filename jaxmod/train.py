"""Training: one loop for every model and objective, resumable, with explicit pytree state.

:func:`fit_task` is the one training loop. It trains a :class:`TrainTask` (pure functions over an
explicit state pytree: ``init``, ``run_epoch``, optionally ``evaluate``) for a number of epochs over
batches whose order depends only on (seed, epoch), checkpoints the state with orbax after every epoch
and, rerun on the same work directory, continues from the last complete epoch (so a resumed run ends
exactly where an uninterrupted one does). Standard and modular training of images and sequences
(:class:`ModelTask`, through :func:`fit`), MwT's reuse fine-tuning (best epoch on the validation split)
and supermask co-training (its own task in :mod:`jaxmod.approaches.supermask`) are configurations of it.

Labels below 0 are ignored by evaluation and by :func:`jaxmod.losses.masked_cross_entropy_loss`: padded
output steps of sequence data carry -1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from tqdm.auto import tqdm

from jaxmod import fastconv, sharding
from jaxmod.activations import scan_dataset
from jaxmod.checkpoint import RunCheckpointer
from jaxmod.checks import NonFiniteError, check_choice, check_finite
from jaxmod.data import epoch_seed
from jaxmod.data.augment import AUGMENTATIONS, augment_batch
from jaxmod.losses import LossFn
from jaxmod.metrics.accuracy import top_k_hits
from jaxmod.models import ACTIVATIONS
from jaxmod.modules import data_fingerprint, json_normal
from jaxmod.topology import flat_activations, model_label

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
SELECT = ("last", "best_val")
COMPUTE_DTYPES = ("float32", "bfloat16")
AUGMENT_STREAM = 0x61756700  # augmentation keys: fold_in(the step key, AUGMENT_STREAM), a stream apart from dropout
CHECK_EVERY = 25  # steps between host checks for a non-finite training loss


@struct.dataclass
class TrainState:
    """Everything model training carries from step to step; a checkpointable pytree."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array  # raw uint32 PRNG key data, so that orbax stores it as a plain array

    def variables(self) -> dict[str, Any]:
        """The model variables (params and, where the model has batch norm, batch_stats)."""
        return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; defaults follow the papers (SGD, Nesterov 0.9, cosine, lr 0.05).

    ``optimizer``: ``"sgd"`` (Nesterov momentum, the papers' recipe) or ``"adam"`` (the recurrent models, as
    the paper's Keras models; and models plain SGD does not train). ``schedule``: ``"cosine"`` decay over all
    steps or a ``"constant"`` learning rate. ``augment``: a :data:`jaxmod.data.augment.AUGMENTATIONS` name
    (``"crop_flip"``: the CIFAR/SVHN recipe). ``compute_dtype``: ``"bfloat16"`` runs the forward and backward
    pass in bfloat16 while parameters, optimizer state, batch statistics and the loss stay float32.
    """

    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    seed: int = 0
    optimizer: str = "sgd"
    schedule: str = "cosine"
    augment: str = "none"
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("augment", self.augment, AUGMENTATIONS)
        check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share (the later settings only where they differ from their defaults,
        so that runs written before they were settings resume)."""
        out = dataclasses.asdict(self)
        for name, default in (("optimizer", "sgd"), ("schedule", "cosine"), ("augment", "none"),
                              ("compute_dtype", "float32")):
            if out[name] == default:
                del out[name]
        return out


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optimizer ``config`` names, on its schedule over all ``config.epochs * steps_per_epoch`` steps."""
    if config.schedule == "cosine":
        rate = optax.cosine_decay_schedule(config.learning_rate, max(1, config.epochs * steps_per_epoch))
    else:
        rate = config.learning_rate
    if config.optimizer == "adam":
        opt = optax.adam(rate)
    else:
        opt = optax.sgd(rate, momentum=config.momentum or None, nesterov=config.nesterov and config.momentum > 0)
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    return opt


def cast_floats(tree: Any, dtype: Any) -> Any:
    """``tree`` with its floating-point leaves in ``dtype`` (integer and boolean leaves as they are; a no-op
    when they already are ``dtype``)."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def init_state(model: nn.Module, sample: Any, optimizer: optax.GradientTransformation, seed: int, *,
               split_key: bool = True, variables: Mapping[str, Any] | None = None) -> TrainState:
    """Fresh parameters (from ``seed``) and optimizer state; ``sample`` is one input batch or an input shape.

    ``split_key``: the parameters draw from the first half of ``key(seed)`` split in two and training from
    the second (False: both from ``key(seed)`` itself, the recurrent models' convention). ``variables``:
    start from these instead of an initialisation (e.g. fine-tuning).
    """
    if isinstance(sample, tuple) and all(isinstance(d, (int, np.integer)) for d in sample):
        sample = jnp.zeros((1, *sample), jnp.float32)
    key = jax.random.key(seed)
    init_key, train_key = jax.random.split(key) if split_key else (key, key)
    if variables is None:
        variables = model.init(init_key, jnp.asarray(sample[:1]), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                      opt_state=optimizer.init(params), key=jax.random.key_data(train_key))


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, loss_fn: LossFn,
                    constants: Mapping[str, Any] | None = None, *, augment: str = "none",
                    compute_dtype: str = "float32",
                    ) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """The jitted step: forward in train mode with activation taps, ``loss_fn``, optimizer update.

    ``constants`` are extra variable collections the model reads but never trains (e.g. the
    ``index_maps`` of a sliced model being fine-tuned). ``augment``: the batch is augmented with a key
    folded from the step (see :mod:`jaxmod.data.augment`). ``compute_dtype="bfloat16"``: the forward and backward
    pass run on bfloat16 copies of the parameters and inputs; logits and activations return to float32 for
    the loss, and gradients, updates and batch statistics stay float32.
    """
    constants = dict(constants or {})
    check_choice("augment", augment, AUGMENTATIONS)
    check_choice("compute_dtype", compute_dtype, COMPUTE_DTYPES)
    cast = functools.partial(cast_floats, dtype=jnp.dtype(compute_dtype))
    uncast = functools.partial(cast_floats, dtype=jnp.float32)

    def step(state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, dict]:
        dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        x = augment_batch(augment, jax.random.fold_in(dropout_key, AUGMENT_STREAM), x)

        def objective(params):
            variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {}),
                         **constants}
            logits, updates = model.apply(cast(variables), cast(x), train=True, mutable=["batch_stats", ACTIVATIONS],
                                          rngs={"dropout": dropout_key})
            logits, updates = uncast(logits), uncast(dict(updates))
            loss, aux = loss_fn(logits, flat_activations(updates.get(ACTIVATIONS, {})), y)
            return loss, (aux, updates.get("batch_stats", state.batch_stats), logits)

        (loss, (aux, batch_stats, logits)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  batch_stats=batch_stats, opt_state=opt_state)
        valid = y >= 0
        accuracy = jnp.sum((jnp.argmax(logits, -1) == y) & valid) / jnp.maximum(jnp.sum(valid), 1)
        return new_state, {"loss": loss, "accuracy": accuracy, **aux}

    return jax.jit(fastconv.fast_convs(step), donate_argnums=0)  # a user's plain nn.Conv takes the fast path too


# ---------------------------------------------------------------------------------------------
# Evaluation


@functools.lru_cache(maxsize=64)
def _eval_fn(model: nn.Module) -> Callable:
    def batch_fn(carry, xb, yb, valid, variables):
        logits = model.apply(variables, xb)
        scored = valid.reshape(valid.shape + (1,) * (yb.ndim - 1)) & (yb >= 0)
        weight = scored.astype(jnp.float32)
        top1 = jnp.sum(top_k_hits(logits, yb, 1) * weight)
        top5 = jnp.sum(top_k_hits(logits, yb, min(5, logits.shape[-1])) * weight)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(yb, 0))
        return carry + jnp.stack([top1, top5, jnp.sum(ce * weight), jnp.sum(weight)])

    return batch_fn


def evaluate(model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
             batch_size: int = 512) -> dict[str, float]:
    """Top-1, top-5 accuracy and mean cross-entropy of the eval-mode model, in one jitted scan.

    ``y`` is ``(N,)`` or, for many-output models, ``(N, T)``; labels below 0 (padded steps) are not scored.
    """
    from jaxmod.models import check_inputs  # noqa: PLC0415 - keeps the module's import graph at the top small

    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    if y.size and y.max() >= model.num_classes:
        raise ValueError(f"labels {sorted(set(y[y >= model.num_classes].tolist()))[:5]} lie outside the model's "
                         f"{model.num_classes} classes")
    check_inputs(model, variables, np.asarray(x))
    totals = scan_dataset(_eval_fn(model), jnp.zeros(4, jnp.float32), x, y.astype(np.int32), batch_size, variables)
    top1, top5, loss, n = (float(v) for v in totals)
    if n == 0:
        raise ValueError("no labelled samples to evaluate")
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss / n}


def benchmark_step(step_fn: Callable, state: TrainState, x: np.ndarray, y: np.ndarray,
                   repeats: int = 30, warmup: int = 3) -> float:
    """Median wall time (ms) of a jitted train step on one fixed batch, after warm-up."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    state = jax.tree.map(jnp.copy, state)  # the step donates its state
    for _ in range(warmup):
        state, out = step_fn(state, x, y)
    jax.block_until_ready((state, out))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, out = step_fn(state, x, y)
        jax.block_until_ready((state, out))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# The training loop


class TrainTask(Protocol):
    """What :func:`fit_task` trains: pure functions over an explicit state pytree."""

    def init(self) -> Any:
        """The state before the first epoch (also the structure a checkpoint restores into)."""

    def run_epoch(self, state: Any, x: np.ndarray, y: np.ndarray, order: np.ndarray, epoch: int,
                  bar: Any) -> tuple[Any, dict[str, Any]]:
        """One epoch over the batches ``order`` (``int[steps, batch]`` into ``x``): the new state and a
        JSON-able summary (e.g. mean training loss)."""

    def evaluate(self, state: Any, x: np.ndarray, y: np.ndarray) -> float:
        """Accuracy on the validation samples (used for the history and for ``select="best_val"``)."""


def batch_order(n: int, batch_size: int, seed: int) -> np.ndarray:
    """``int32[steps, batch]``: a shuffled epoch of ``n`` samples in full batches (the remainder dropped)."""
    steps = n // batch_size
    perm = np.random.default_rng(seed).permutation(n)
    return perm[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def fit_task(task: TrainTask, x: np.ndarray, y: np.ndarray, config: TrainConfig,
             workdir: str | os.PathLike | None = None, *, val: tuple[np.ndarray, np.ndarray] | None = None,
             run_info: Mapping[str, Any] | None = None, progress: bool = True, description: str = "train",
             stop_after: int | None = None, order_seed: Callable[[int], int] | None = None,
             select: str = "last") -> tuple[Any, list[dict[str, Any]]]:
    """Train ``task`` on ``(x, y)`` for ``config.epochs`` epochs; returns the final (or best) state and the history.

    Batches: epoch ``e`` shuffles with ``order_seed(e)`` (default ``epoch_seed(config.seed, e)``) and drops the
    last partial batch. ``workdir``: checkpoint after every epoch and resume from the last complete one; a
    directory holding a run with other settings or ``run_info`` raises ``ValueError`` naming both. ``val``:
    validation accuracy per epoch; ``select="best_val"`` returns the state of the first epoch with the best
    one (kept in memory). ``stop_after`` ends this call after that many epochs in total (resume later).
    A non-finite training loss stops the run with :class:`jaxmod.checks.NonFiniteError` (a ``ValueError``) naming
    the step and the loss terms; the checkpoints of the epochs before are kept.
    """
    check_choice("select", select, SELECT)
    if select == "best_val" and val is None:
        raise ValueError("select='best_val' needs validation samples (val=...)")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} training samples but {len(y)} labels")
    batch_size = sharding.local_batch_size(config.batch_size)  # this process's part of each global batch
    if len(x) < batch_size:
        raise ValueError(f"the training split has {len(x)} samples, fewer than one batch of {batch_size}")
    if stop_after is not None and not 1 <= stop_after <= config.epochs:
        raise ValueError(f"stop_after must be in [1, {config.epochs}], got {stop_after}")
    order_seed = order_seed or (lambda epoch: epoch_seed(config.seed, epoch))
    steps = len(x) // batch_size
    run = {"config": config.identity(), "run_info": json_normal(dict(run_info or {})),
           "data": sharding.global_data_identity(len(x), data_fingerprint(x, y))}
    state = task.init()
    history: list[dict[str, Any]] = []
    best = (-math.inf, state, 0)
    last = config.epochs if stop_after is None else stop_after
    with RunCheckpointer(os.fspath(workdir)) if workdir is not None else _no_checkpoints() as ckpt:
        start = (ckpt.latest_step() or 0) if ckpt is not None else 0
        if start:  # the identity first: a run with other settings may hold a state of other shapes
            _check_same_run(ckpt.metadata(start), run, description)
            state, meta = ckpt.restore(start, state)
            history = list(meta["history"])
        for epoch in range(start, last):
            order = batch_order(len(x), batch_size, order_seed(epoch))
            bar = tqdm(total=steps, disable=None if progress else True, leave=False, mininterval=2.0,
                       desc=f"{description} epoch {epoch + 1}/{config.epochs}")
            began = time.perf_counter()
            try:
                state, summary = task.run_epoch(state, x, y, order, epoch, bar)
            except NonFiniteError as err:
                raise NonFiniteError(f"{description}: {err}") from None
            finally:
                bar.close()
            entry = {"epoch": epoch + 1, **summary, "seconds": time.perf_counter() - began}
            loss = summary.get("train_loss")
            if loss is not None and not math.isfinite(loss):
                raise NonFiniteError(
                    f"{description}: the training loss became {loss} in epoch {epoch + 1} ({summary}); lower the "
                    "learning rate or check the inputs for non-finite values (the checkpoints of earlier epochs "
                    "are kept)")
            if val is not None:
                entry["val_accuracy"] = task.evaluate(state, *val)
                if select == "best_val" and entry["val_accuracy"] > best[0]:
                    best = (entry["val_accuracy"], jax.tree.map(jnp.copy, state), epoch + 1)
            history.append(entry)
            if progress:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if isinstance(v, float) and k != "seconds")
                tqdm.write(f"{description} epoch {epoch + 1}/{config.epochs}: {shown}")
            if ckpt is not None:
                ckpt.save(epoch + 1, state, {"history": history, **run})
    if select == "best_val" and best[2]:
        return best[1], history
    return state, history


class _no_checkpoints:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _check_same_run(meta: Mapping[str, Any], run: Mapping[str, Any], description: str) -> None:
    """``ValueError`` in one line naming each setting that differs between the saved run and this one."""
    diffs = []
    for part, now in run.items():
        saved = meta.get(part) or {}
        for key in sorted(set(saved) | set(now or {})):
            if saved.get(key) != (now or {}).get(key):
                diffs.append(f"{part}.{key} is {saved.get(key)!r} there, {(now or {}).get(key)!r} here")
    if diffs:
        raise ValueError(f"{description}: the work directory holds another run ({'; '.join(diffs)}); use another "
                         "work directory or the same settings")


@dataclasses.dataclass(frozen=True, eq=False)
class ModelTask:
    """Training a model's parameters (and batch statistics) with ``loss_fn``: standard and modular training,
    images and sequences, fine-tuning from given ``variables``.

    ``sample``: one input batch (or an image input shape) to initialise from; ``constants``: variable
    collections read but never trained; ``split_key``: see :func:`init_state`.
    """

    model: nn.Module
    loss_fn: LossFn
    optimizer: optax.GradientTransformation
    sample: Any
    seed: int = 0
    constants: Mapping[str, Any] | None = None
    variables: Mapping[str, Any] | None = None
    split_key: bool = True
    eval_batch_size: int = 512
    augment: str = "none"
    compute_dtype: str = "float32"

    @functools.cached_property
    def step(self) -> Callable:
        return make_train_step(self.model, self.optimizer, self.loss_fn, self.constants, augment=self.augment,
                               compute_dtype=self.compute_dtype)

    def init(self) -> TrainState:
        # copies: the train step donates its state, which must not delete the caller's arrays
        variables = None if self.variables is None else jax.tree.map(jnp.array, dict(self.variables))
        return sharding.replicate(init_state(self.model, self.sample, self.optimizer, self.seed,
                                             split_key=self.split_key, variables=variables))

    def run_epoch(self, state: TrainState, x: np.ndarray, y: np.ndarray, order: np.ndarray, epoch: int,
                  bar: Any) -> tuple[TrainState, dict[str, float]]:
        """One epoch: the mean loss, accuracy and loss terms (``train_<term>``: MODA's affinity, dispersion...);
        stops with :class:`jaxmod.checks.NonFiniteError` naming the step and the loss terms within
        ``CHECK_EVERY`` steps of the loss becoming NaN or infinite (the first bad step is tracked on the device)."""
        sums = None  # every scalar the step reports (loss, accuracy, the loss terms), summed on the device
        first_bad, bad_out = jnp.int32(-1), None
        for i, index in enumerate(order):
            state, out = self.step(state, sharding.shard_batch(x[index]), sharding.shard_batch(y[index]))
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
            newly = (first_bad < 0) & ~jnp.isfinite(out["loss"])
            first_bad = jnp.where(newly, i, first_bad)
            bad_out = out if bad_out is None else jax.tree.map(lambda o, b, n=newly: jnp.where(n, o, b), out, bad_out)
            bar.update(1)
            if i % 50 == 0 and not bar.disable:
                bar.set_postfix(loss=f"{float(out['loss']):.3f}", refresh=False)
            if (i + 1) % CHECK_EVERY == 0 or i + 1 == len(order):
                if int(first_bad) >= 0:
                    terms = ", ".join(f"{k} {float(v):.4g}" for k, v in bad_out.items())
                    raise NonFiniteError(
                        f"the training loss became non-finite at step {int(first_bad) + 1} of epoch {epoch + 1} "
                        f"({terms}); lower the learning rate or check the loss weights (the checkpoints of earlier "
                        "epochs are kept)")
        means = {k: float(v) / len(order) for k, v in sums.items() if np.ndim(v) == 0}
        terms = {f"train_{k}": v for k, v in means.items() if k not in ("loss", "accuracy")}
        return state, {"train_loss": means["loss"], "train_accuracy": means["accuracy"], **terms}

    def evaluate(self, state: TrainState, x: np.ndarray, y: np.ndarray) -> float:
        variables = {**state.variables(), **dict(self.constants or {})}
        return evaluate(self.model, variables, x, y, self.eval_batch_size)["top1"]


def training_labels(split: Any) -> np.ndarray:
    """A split's labels for training: ``y``, with -1 on the steps ``y_valid`` marks as padding (sequences)."""
    y = np.asarray(split.y)
    valid = getattr(split, "y_valid", None)
    return (y if valid is None else np.where(valid, y, -1)).astype(np.int32)


def fit(model: nn.Module, data: Any, loss_fn: LossFn, config: TrainConfig, workdir: str | os.PathLike | None, *,
        progress: bool = True, stop_after: int | None = None, description: str = "train",
        run_info: Mapping[str, Any] | None = None, split_key: bool = True,
        validate: bool = True) -> tuple[TrainState, list]:
    """Train ``model`` on ``data.train`` with ``loss_fn`` (:func:`fit_task` with a :class:`ModelTask`).

    ``data`` has ``train`` and ``val`` splits with ``x`` and ``y`` (an image :class:`jaxmod.data.Dataset`, or a
    sequence dataset whose splits' ``y_valid`` marks padded steps). ``validate``: validation accuracy per epoch.
    ``run_info`` (JSON-able: model, dataset, loss and its weights...) is stored with every checkpoint; resuming a
    directory whose run had other settings raises ``ValueError``.
    """
    from jaxmod.models import check_inputs  # noqa: PLC0415

    x = np.asarray(data.train.x)
    y = training_labels(data.train)
    check_finite(x, "the training samples")
    if validate:
        check_finite(data.val.x, "the validation samples")
    if y.size and y.max() >= model.num_classes:
        raise ValueError(f"training labels reach {int(y.max())}; the model has {model.num_classes} classes")
    if not isinstance(loss_fn, Callable):
        raise TypeError(f"loss_fn must be a loss function (logits, activations, labels) -> (loss, metrics), "
                        f"got {type(loss_fn).__name__}")
    init_sample = jnp.asarray(x[:1])
    try:
        probe = jax.eval_shape(lambda: model.init(jax.random.key(0), init_sample, train=False))
    except Exception as err:  # noqa: BLE001 - any failure to trace means the model does not take these inputs
        raise ValueError(f"{model_label(model)} does not take samples of shape {x.shape[1:]}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    check_inputs(model, probe, x[:1])
    local_batch = sharding.local_batch_size(config.batch_size)  # with several processes, x is this one's part
    optimizer = make_optimizer(config, max(1, len(x) // local_batch))
    task = ModelTask(model, loss_fn, optimizer, x[:1], config.seed, split_key=split_key, augment=config.augment,
                     compute_dtype=config.compute_dtype)
    val = (np.asarray(data.val.x), training_labels(data.val)) if validate else None
    return fit_task(task, x, y, config, workdir, val=val, run_info=run_info, progress=progress,
                    description=description, stop_after=stop_after)

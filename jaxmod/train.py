"""Training: one jitted train step built from a loss function, evaluation, resumable fitting.

State is an explicit pytree (:class:`TrainState`). :func:`fit` checkpoints it with orbax after
every epoch and, when rerun on the same work directory, continues from the last complete
checkpoint; shuffling depends only on (seed, epoch), so a resumed run ends with the same
parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from tqdm.auto import tqdm

from jaxmod import metrics
from jaxmod.activations import scan_dataset
from jaxmod.checkpoint import RunCheckpointer
from jaxmod.data import Dataset, batch_iterator, check_labels, epoch_seed, num_batches
from jaxmod.losses import LossFn
from jaxmod.models import ACTIVATIONS, check_input_shape, check_inputs
from jaxmod.modules import json_normal
from jaxmod.topology import flat_activations


@struct.dataclass
class TrainState:
    """Everything training carries from step to step; a checkpointable pytree."""

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
    """Optimisation settings; defaults follow the papers (SGD, Nesterov 0.9, cosine, lr 0.05)."""

    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(config: TrainConfig, steps_per_epoch: int, kind: str = "sgd") -> optax.GradientTransformation:
    """The optimizer, with a cosine schedule over all training steps.

    ``"sgd"``: SGD with Nesterov momentum (and ``config.weight_decay``), the papers' recipe. ``"adam"``:
    Adam on the same schedule, for models plain SGD does not train (ResNet20 without batch norm).
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
    schedule = optax.cosine_decay_schedule(config.learning_rate, max(1, config.epochs * steps_per_epoch))
    if kind == "adam":
        opt = optax.adam(schedule)
    else:
        opt = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov and config.momentum > 0)
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    return opt


def init_state(model: nn.Module, input_shape: tuple[int, ...], optimizer: optax.GradientTransformation,
               seed: int) -> TrainState:
    """Fresh parameters (from ``seed``) and optimizer state."""
    init_key, train_key = jax.random.split(jax.random.key(seed))
    variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=optimizer.init(params),
        key=jax.random.key_data(train_key),
    )


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, loss_fn: LossFn,
                    constants: Mapping[str, Any] | None = None,
                    ) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """The jitted step: forward in train mode with activation taps, ``loss_fn``, SGD update.

    ``constants`` are extra variable collections the model reads but never trains (e.g. the
    ``index_maps`` of a sliced model being fine-tuned).
    """
    constants = dict(constants or {})

    def step(state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, dict]:
        dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)

        def objective(params):
            variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {}),
                         **constants}
            logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats", ACTIVATIONS],
                                          rngs={"dropout": dropout_key})
            loss, aux = loss_fn(logits, flat_activations(updates.get(ACTIVATIONS, {})), y)
            return loss, (aux, updates.get("batch_stats", state.batch_stats), logits)

        (loss, (aux, batch_stats, logits)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  batch_stats=batch_stats, opt_state=opt_state)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return new_state, {"loss": loss, "accuracy": accuracy, **aux}

    return jax.jit(step, donate_argnums=0)


@functools.lru_cache(maxsize=64)
def _eval_fn(model: nn.Module) -> Callable:
    def batch_fn(carry, xb, yb, valid, variables):
        logits = model.apply(variables, xb)
        weight = valid.astype(jnp.float32)
        top1 = jnp.sum(metrics.top_k_hits(logits, yb, 1) * weight)
        top5 = jnp.sum(metrics.top_k_hits(logits, yb, min(5, logits.shape[-1])) * weight)
        loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, yb) * weight)
        return carry + jnp.stack([top1, top5, loss, jnp.sum(weight)])

    return batch_fn


def evaluate(model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
             batch_size: int = 512) -> dict[str, float]:
    """Top-1, top-5 accuracy and mean cross-entropy of the eval-mode model, in one jitted scan."""
    check_labels(np.asarray(y), model.num_classes)
    check_inputs(model, variables, np.asarray(x))
    totals = scan_dataset(_eval_fn(model), jnp.zeros(4, jnp.float32), x, np.asarray(y, np.int32), batch_size,
                          variables)
    top1, top5, loss, n = (float(v) for v in totals)
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


def fit(model: nn.Module, data: Dataset, loss_fn: LossFn, config: TrainConfig, workdir: str | os.PathLike,
        *, progress: bool = True, stop_after: int | None = None, description: str = "train",
        run_info: Mapping[str, Any] | None = None,
        optimizer: optax.GradientTransformation | None = None) -> tuple[TrainState, list]:
    """Train ``model`` on ``data.train`` with ``loss_fn``, checkpointing every epoch under ``workdir``.

    Rerunning with the same ``workdir`` resumes from the last complete epoch (a finished run
    returns at once). ``stop_after`` ends this call after that many epochs in total (the rest
    can be run later). ``run_info`` (JSON-able: model, dataset, loss and its weights...) is
    stored with every checkpoint; resuming a directory whose run had other settings or other
    ``run_info`` raises ``ValueError``. Returns the final state and the per-epoch history (train
    loss and accuracy, validation accuracy). ``optimizer`` replaces :func:`make_optimizer`'s SGD
    (name it in ``run_info`` so that resuming checks it).
    """
    check_input_shape(model, data.input_shape)
    check_labels(data.train.y, model.num_classes)
    check_labels(data.val.y, model.num_classes)
    if len(data.train.x) < config.batch_size:
        raise ValueError(
            f"the training split has {len(data.train.x)} samples, fewer than one batch of {config.batch_size}"
        )
    if stop_after is not None and not 1 <= stop_after <= config.epochs:
        raise ValueError(f"stop_after must be in [1, {config.epochs}], got {stop_after}")
    steps_per_epoch = num_batches(len(data.train.x), config.batch_size, drop_remainder=True)
    optimizer = make_optimizer(config, steps_per_epoch) if optimizer is None else optimizer
    state = init_state(model, data.input_shape, optimizer, config.seed)
    step_fn = make_train_step(model, optimizer, loss_fn)
    history: list[dict[str, float]] = []
    run = {"config": dataclasses.asdict(config), "run_info": json_normal(dict(run_info or {}))}
    with RunCheckpointer(os.fspath(workdir)) as ckpt:
        start = ckpt.latest_step() or 0
        if start:
            state, meta = ckpt.restore(start, state)
            _check_same_run(meta, run, description)
            history = list(meta["history"])
        last = config.epochs if stop_after is None else stop_after
        for epoch in range(start, last):
            batches = batch_iterator(data.train.x, data.train.y, config.batch_size,
                                     shuffle_seed=epoch_seed(config.seed, epoch), drop_remainder=True)
            bar = tqdm(batches, total=steps_per_epoch, disable=not progress, leave=False,
                       desc=f"{description} epoch {epoch + 1}/{config.epochs}")
            sums = jnp.zeros(2)  # summed on the device: no host sync per step
            for i, (xb, yb) in enumerate(bar):
                state, out = step_fn(state, xb, yb)
                sums = sums + jnp.stack([out["loss"], out["accuracy"]])
                if progress and i % 50 == 0:
                    bar.set_postfix(loss=f"{float(out['loss']):.3f}", acc=f"{float(out['accuracy']):.3f}",
                                    refresh=False)
            loss_sum, accuracy_sum = (float(v) for v in sums)
            val = evaluate(model, state.variables(), data.val.x, data.val.y)
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / steps_per_epoch,
                            "train_accuracy": accuracy_sum / steps_per_epoch, "val_accuracy": val["top1"]})
            if progress:
                tqdm.write(f"{description} epoch {epoch + 1}/{config.epochs}: loss {history[-1]['train_loss']:.4f} "
                           f"train acc {history[-1]['train_accuracy']:.4f} val acc {val['top1']:.4f}")
            ckpt.save(epoch + 1, state, {"history": history, **run})
    return state, history


def _check_same_run(meta: Mapping[str, Any], run: Mapping[str, Any], description: str) -> None:
    saved = {k: meta.get(k) for k in run}
    if saved != dict(run):
        raise ValueError(
            f"{description}: the work directory holds a run with a different configuration ({saved}); "
            f"use another work directory or the same settings ({dict(run)})"
        )

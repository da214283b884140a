"""Collecting activations and class-wise statistics in one jitted pass over a dataset.

Batches are stacked and scanned with ``lax.scan`` inside a single ``jit``; per-class statistics
are one-hot matrix products (a segment sum by label), so no Python loop touches samples or units.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmod import fastconv, sharding
from jaxmod.data import check_labels
from jaxmod.models import check_inputs
from jaxmod.taps import ACTIVATIONS
from jaxmod.topology import flat_activations, model_label


def forward(model: nn.Module, variables: Mapping[str, Any], x: jax.Array,
            extra: Mapping[str, Any] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Eval-mode logits and every tapped activation ``{group: (B, ..., units)}``."""
    logits, state = model.apply({**variables, **(extra or {})}, x, mutable=[ACTIVATIONS])
    if ACTIVATIONS not in state:
        raise ValueError(f"{model_label(model)} records no hidden activations: activation-based methods (MODA, MwT, "
                         "Pan and Rajan, the RNN method) read each hidden layer: adapt the model first "
                         "(jaxmod.adapt, or jaxmod.models.zoo_model for a plain linen classifier); supermask modules "
                         "need none")
    return logits, flat_activations(state[ACTIVATIONS])


def _stack_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad to a multiple of ``batch_size`` and reshape to (num_batches, batch_size, ...)."""
    n = len(x)
    if n == 0:
        raise ValueError("no samples to scan")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pad = (-n) % batch_size
    valid = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)]) if pad else y
    nb = len(x) // batch_size
    return (x.reshape(nb, batch_size, *x.shape[1:]), y.reshape(nb, batch_size, *y.shape[1:]),
            valid.reshape(nb, batch_size))


def scan_dataset(batch_fn: Callable, init: Any, x: np.ndarray, y: np.ndarray, batch_size: int,
                 *args: Any) -> Any:
    """Fold ``carry = batch_fn(carry, x_batch, y_batch, valid, *args)`` over all samples in one jit.

    ``batch_fn`` must be a pure, hashable (module-level or cached) function that ignores rows
    where ``valid`` is False; ``args`` are traced (e.g. variables), so repeated calls reuse the
    compiled scan.
    """
    xs, ys, valid = (sharding.shard_batch(a, axis=1) for a in _stack_batches(np.asarray(x), np.asarray(y),
                                                                             batch_size))
    return _scan(batch_fn, sharding.replicate(init), xs, ys, valid, *sharding.replicate(args))


@functools.partial(jax.jit, static_argnums=0)
@fastconv.fast_convs  # every scan (statistics, evaluation) gives a user's plain nn.Conv the fast path
def _scan(batch_fn, init, xs, ys, valid, *args):
    def body(carry, batch):
        return batch_fn(carry, *batch, *args), None

    carry, _ = jax.lax.scan(body, init, (xs, ys, valid))
    return carry


@functools.lru_cache(maxsize=64)
def _count_fn(model: nn.Module, num_classes: int) -> Callable:
    def batch_fn(carry, xb, yb, valid, variables):
        counts, totals = carry
        _, acts = forward(model, variables, xb)
        onehot = jax.nn.one_hot(yb, num_classes, dtype=jnp.float32) * valid[:, None]
        new = {k: counts[k] + class_sum(onehot, unit_activity(a) > 0) for k, a in acts.items()}
        return new, totals + jnp.round(jnp.sum(onehot, axis=0)).astype(jnp.int32)

    return batch_fn


def unit_activity(a: jax.Array) -> jax.Array:
    """Per-unit activity of one sample: the signed mean over positions (tokens, map positions).

    A unit counts as active when this is positive. For ReLU-family units (never negative) that is exactly
    MODA's rule, "non-zero anywhere" (mean |a| != 0); for GELU, which is never exactly zero, it means "its
    average over the sample's positions is positive" (GELU(x) > 0 iff x > 0), so a unit is not active merely
    for a slightly negative output. ``(B, ..., U) -> (B, U)``.
    """
    return a if a.ndim <= 2 else jnp.mean(a, axis=tuple(range(1, a.ndim - 1)))


def class_sum(onehot: jax.Array, values: jax.Array) -> jax.Array:
    """(C, U) integer per-class sums of 0/1 ``values``: a segment sum by label as one matmul."""
    return jnp.round(onehot.T @ values.astype(jnp.float32)).astype(jnp.int32)


def class_activation_counts(model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                            num_classes: int, batch_size: int = 512) -> tuple[dict[str, jax.Array], jax.Array]:
    """How often each unit is active (value != 0) on each class's samples.

    Returns ``({group: int32[num_classes, units]}, int32[num_classes] samples per class)``.
    Conv channels count as active when their spatial mean is positive (:func:`unit_activity`): for ReLU
    that is "any position fires", as in the MODA reference code.
    """
    x, y = np.asarray(x), np.asarray(y)
    check_inputs(model, variables, x)
    check_labels(y, num_classes)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} samples but {len(y)} labels")
    shapes = jax.eval_shape(lambda: forward(model, variables, jnp.zeros((1, *x.shape[1:]), jnp.float32))[1])
    init = ({k: jnp.zeros((num_classes, s.shape[-1]), jnp.int32) for k, s in shapes.items()},
            jnp.zeros(num_classes, jnp.int32))
    return scan_dataset(_count_fn(model, num_classes), init, x, y, batch_size, variables)


@functools.partial(jax.jit, static_argnums=0)
@fastconv.fast_convs
def _map_logits(model, variables, xs):
    return jax.lax.map(lambda xb: model.apply(variables, xb), xs)


def predict_logits(model: nn.Module, variables: Mapping[str, Any], x: np.ndarray,
                   batch_size: int = 512) -> np.ndarray:
    """Eval-mode logits ``[N, (T,) C]`` for every sample of ``x``, batched inside one jit (``lax.map``)."""
    x = np.asarray(x)
    check_inputs(model, variables, x)
    xs, _, _ = _stack_batches(x, np.zeros(len(x), np.int32), batch_size)
    out = np.asarray(_map_logits(model, sharding.replicate(variables), sharding.shard_batch(xs, axis=1)))
    return out.reshape(-1, *out.shape[2:])[: len(x)]


def activation_rates(counts: Mapping[str, jax.Array], totals: jax.Array) -> dict[str, np.ndarray]:
    """Per-class activation frequency in [0, 1]; ``ValueError`` if a class has no sample."""
    totals = np.asarray(totals)
    empty = np.flatnonzero(totals == 0).tolist()
    if empty:
        raise ValueError(f"classes {empty} have no samples; cannot compute their activation frequency")
    return {k: np.asarray(v) / totals[:, None] for k, v in counts.items()}

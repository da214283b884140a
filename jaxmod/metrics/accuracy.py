"""Top-k accuracy: jit-able hit counts with the tie-break of ``argmax`` and ``lax.top_k``."""

from __future__ import annotations

import math
import numbers
from functools import partial

import jax
import jax.numpy as jnp


def _check_topk_args(logits: jax.Array, labels: jax.Array, k: int) -> int:
    """Validate static shapes/k for the accuracy helpers; return num_classes."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be an int, got {k!r}")
    if jnp.ndim(logits) < 1:
        raise ValueError("logits must have a trailing class dimension")
    num_classes = int(jnp.shape(logits)[-1])
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must be in [1, {num_classes}] (num_classes), got {k}")
    if tuple(jnp.shape(labels)) != tuple(jnp.shape(logits)[:-1]):
        raise ValueError(
            f"labels shape {tuple(jnp.shape(labels))} must equal the leading dims of logits {tuple(jnp.shape(logits))}"
        )
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {jnp.result_type(labels)}")
    return num_classes


def top_k_hits(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Boolean mask (shape of labels): is the label among the top-k logits?

    The label's rank is the number of classes that beat it: classes with a
    strictly larger logit plus tied classes with a smaller index.  This is the
    same tie-break as ``jnp.argmax`` and ``lax.top_k`` (lower index wins), so
    top-1 accuracy equals ``mean(argmax(logits, -1) == labels)``.  Labels out
    of ``[0, num_classes)`` count as incorrect (range checks are the caller's
    job; this just keeps garbage labels from inflating accuracy).
    """
    num_classes = logits.shape[-1]
    valid = (labels >= 0) & (labels < num_classes)
    safe = jnp.where(valid, labels, 0)
    label_logit = jnp.take_along_axis(logits, safe[..., None], axis=-1)
    idx = jnp.arange(num_classes)
    beats = (logits > label_logit) | ((logits == label_logit) & (idx < safe[..., None]))
    rank = jnp.sum(beats, axis=-1)
    return valid & (rank < k)


@partial(jax.jit, static_argnames="k")
def _accuracy_counts_jit(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    return jnp.sum(top_k_hits(logits, labels, k), dtype=jnp.int32)


def accuracy_counts(logits: jax.Array, labels: jax.Array, k: int = 1) -> jax.Array:
    """Number of rows whose label is among the ``k`` largest logits (int32 scalar).

    Returning an exact integer count (rather than a mean) lets batched
    evaluation sum counts over batches of different sizes without rounding.
    ``logits`` has shape ``(..., num_classes)``, ``labels`` the leading shape.
    Ties are broken towards the lower class index (as ``argmax``/``top_k``).
    """
    _check_topk_args(logits, labels, k)
    return _accuracy_counts_jit(logits, labels, k=int(k))


def top_k_accuracy(logits: jax.Array, labels: jax.Array, k: int = 1) -> jax.Array:
    """Fraction of rows whose label is among the ``k`` largest logits (float32).

    ``k`` is static, so this is jit-able (use ``static_argnames='k'``).  Ties
    are broken towards the lower class index, exactly like ``jnp.argmax`` for
    ``k=1``.  Raises ValueError for ``k`` outside ``[1, num_classes]``,
    mismatched leading dims, non-integer labels, or an empty batch.
    """
    _check_topk_args(logits, labels, k)
    n = math.prod(jnp.shape(labels))
    if n == 0:
        raise ValueError("top_k_accuracy of an empty batch is undefined")
    return _accuracy_counts_jit(logits, labels, k=int(k)).astype(jnp.float32) / n

"""MwT's kernel metrics: KRR, cohesion and coupling by the Jaccard index (Eq. 1-3), exact pairwise."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@partial(jax.jit, static_argnames="block")
def _jaccard_pair_sum(x: jax.Array, valid: jax.Array, block: int) -> jax.Array:
    """Sum of JI(row i, row j) over ordered pairs i != j of valid rows, ``block`` rows at a time."""
    sizes = jnp.sum(x, axis=1)
    n = x.shape[0]

    def one_block(start):
        xb = jax.lax.dynamic_slice_in_dim(x, start, block)
        vb = jax.lax.dynamic_slice_in_dim(valid, start, block)
        sb = jax.lax.dynamic_slice_in_dim(sizes, start, block)
        inter = xb @ x.T
        union = sb[:, None] + sizes[None, :] - inter
        ji = jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)  # two empty sets are the same set
        rows = start + jnp.arange(block)
        pair = vb[:, None] & valid[None, :] & (rows[:, None] != jnp.arange(n)[None, :])
        return jnp.sum(jnp.where(pair, ji, 0.0))

    return jnp.sum(jax.lax.map(one_block, jnp.arange(0, n, block)))


def mean_pairwise_jaccard(sets: Any, block: int = 512) -> float:
    """Exact mean Jaccard index (Eq. 1) over all unordered pairs of rows of a 0/1 matrix ``(n, K)``.

    Every pair is computed (intersections as one matmul per block of rows, unions from the row
    sizes): no sampling. Two empty sets count as identical (JI 1). ``ValueError`` for fewer than two rows.
    """
    x = np.asarray(sets)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a (sets >= 2, elements) matrix, got shape {x.shape}")
    if not np.isin(x, (0, 1)).all():
        raise ValueError("sets must be 0/1 (or bool) membership rows")
    n = x.shape[0]
    block = max(1, min(block, n))
    pad = (-n) % block
    xp = np.concatenate([x.astype(np.float32), np.zeros((pad, x.shape[1]), np.float32)])
    valid = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
    total = float(_jaccard_pair_sum(jnp.asarray(xp), jnp.asarray(valid), block))
    return total / (n * (n - 1))


def kernel_retention_rate(module_kernels: Any) -> float:
    """KRR: mean over modules of the fraction of kernels a module keeps (``bool[modules, kernels]``)."""
    k = np.asarray(module_kernels, bool)
    if k.ndim != 2 or k.shape[1] == 0:
        raise ValueError(f"module kernels must be (modules, kernels), got shape {k.shape}")
    return float(np.mean(k.mean(axis=1)))


def kernel_cohesion(sample_kernels: Any, labels: Any, module_kernels: Any, *, filter_by_module: bool = True,
                    block: int = 512) -> np.ndarray:
    """Cohesion of each module (Eq. 2): mean JI over all pairs of its class's samples' kernel sets.

    ``sample_kernels`` is ``bool[samples, kernels]`` (the kernels relevant to each sample),
    ``module_kernels`` ``bool[classes, kernels]``. As the MwT reference code does, a sample's set is
    first restricted to its module's kernels (``filter_by_module``). A class with one sample has
    cohesion 1. Returns ``float[classes]``.
    """
    s = np.asarray(sample_kernels, bool)
    y = np.asarray(labels)
    k = np.asarray(module_kernels, bool)
    if s.ndim != 2 or k.ndim != 2 or s.shape[1] != k.shape[1]:
        raise ValueError(f"sample kernels {s.shape} and module kernels {k.shape} must be (n, K) and (C, K)")
    if y.shape != (s.shape[0],) or y.min() < 0 or y.max() >= k.shape[0]:
        raise ValueError(f"labels must be {s.shape[0]} integers in [0, {k.shape[0]})")
    out = np.ones(k.shape[0])
    for c in range(k.shape[0]):  # classes are configuration; the pairs inside are one matmul per block
        rows = s[y == c] & k[c] if filter_by_module else s[y == c]
        if len(rows) >= 2:
            out[c] = mean_pairwise_jaccard(rows, block)
    return out


def kernel_coupling(module_kernels: Any) -> float:
    """Coupling (Eq. 3) averaged over all pairs of modules: mean JI of their kernel sets."""
    return mean_pairwise_jaccard(np.asarray(module_kernels, bool))

"""Mask pytree algebra: union, intersection, counts, sizes, overlaps and Jaccard indices.

One implementation for every granularity: masks are pytrees of bool arrays (``None`` leaves
are unmasked, the jaxpruner convention). Statistics over many modules take a *stacked* mask
tree (leading module axis) and compute all pairwise intersections at once, as a sum over leaves
of ``M @ M.T`` (an integer matrix product), never a Python loop over pairs or elements.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MaskTree = Any


def _leaves(tree: MaskTree) -> list[jax.Array]:
    return [leaf for leaf in jax.tree.leaves(tree) if leaf is not None]


def intersection(a: MaskTree, b: MaskTree) -> MaskTree:
    """Elementwise AND of two mask trees of the same structure."""
    return jax.tree.map(jnp.logical_and, a, b)


def union(a: MaskTree, b: MaskTree) -> MaskTree:
    """Elementwise OR of two mask trees of the same structure."""
    return jax.tree.map(jnp.logical_or, a, b)


def union_rows(stacked: MaskTree, rows: Any) -> MaskTree:
    """OR over the chosen rows of a stacked mask tree (the modules of several classes)."""
    rows = jnp.asarray(rows)
    return jax.tree.map(lambda m: jnp.any(m[rows], axis=0), stacked)


def count(tree: MaskTree) -> jax.Array:
    """Number of True entries over all leaves (an int32 scalar; jit-able)."""
    return sum((jnp.sum(leaf, dtype=jnp.int32) for leaf in _leaves(tree)), jnp.zeros((), jnp.int32))


@jax.jit
def _gram(leaf: jax.Array) -> jax.Array:
    flat = leaf.reshape(leaf.shape[0], -1).astype(jnp.int8)
    return jnp.dot(flat, flat.T, preferred_element_type=jnp.int32)


def pairwise_intersections(stacked: MaskTree) -> np.ndarray:
    """``I[i, j]`` = entries kept by both module i and module j; the diagonal is each size. Host: sums the
    per-leaf Gram matrices in int64 NumPy, beyond int32's range for large models."""
    return np.sum([np.asarray(_gram(leaf), np.int64) for leaf in _leaves(stacked)], axis=0)


def module_statistics(stacked: MaskTree, total: int, always_kept: int = 0) -> dict[str, np.ndarray]:
    """Sizes, pairwise overlaps and Jaccard indices of stacked modules, as in the papers.

    ``total`` is the full model's weight count; ``always_kept`` counts weights that every module
    keeps but the masks do not list (leaves no unit indexes). Sizes and overlaps are fractions of
    ``total`` (MODA's module size and overlap); ``jaccard[i, j] = |A & B| / |A | B|``.
    """
    return statistics_from_intersections(pairwise_intersections(stacked) + always_kept, total)


def statistics_from_intersections(inter: np.ndarray, total: int) -> dict[str, np.ndarray]:
    """Sizes, overlaps (fractions of ``total``) and Jaccard indices from ``I[i, j] = |A_i & A_j|``."""
    if total <= 0:
        raise ValueError(f"total weight count must be positive, got {total}")
    inter = np.asarray(inter, np.int64)
    sizes = np.diag(inter)
    union_counts = sizes[:, None] + sizes[None, :] - inter
    return {
        "sizes": sizes / total,
        "overlap": inter / total,
        "jaccard": inter / np.maximum(union_counts, 1),
    }


def mean_off_diagonal(matrix: np.ndarray) -> float:
    """Mean over pairs i != j (the papers average overlap and Jaccard over module pairs)."""
    n = matrix.shape[0]
    if n < 2:
        return float("nan")
    return float((np.sum(matrix) - np.trace(matrix)) / (n * (n - 1)))

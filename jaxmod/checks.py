"""Checks at the boundaries where numbers enter: non-finite values are refused there, named, before any work."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


class NonFiniteError(ValueError):
    """A training run whose loss became NaN or infinite; raised at the step it happened (checks every few steps)."""


def check_finite(x: Any, name: str, hint: str = "clean or drop those samples first") -> None:
    """``ValueError`` naming ``name`` and how many of its values are NaN or infinite (integer arrays pass)."""
    array = np.asarray(x)
    if not np.issubdtype(array.dtype, np.inexact):
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        where = np.argwhere(~np.isfinite(array))[0].tolist()
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or inf) of {array.size}, the first at index "
                         f"{where}; {hint}")


def check_finite_tree(tree: Mapping[str, Any], name: str) -> None:
    """:func:`check_finite` on every leaf of a variable tree, naming the leaf (e.g. a diverged model's params)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, jax.ShapeDtypeStruct) or isinstance(leaf, jax.core.Tracer):
            continue
        check_finite(leaf, f"{name}{jax.tree_util.keystr(path)}",
                     hint="the model has diverged or was saved broken: retrain it or restore an earlier checkpoint")


def check_choice(name: str, value: Any, choices: Any) -> None:
    """``ValueError`` naming the setting, the choices and the value when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")

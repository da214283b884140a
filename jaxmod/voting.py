"""Composition by voting: binary modules see the same input and decide jointly.

Pan & Rajan, Imtiaz et al. and Kingetsu et al. compose one-class modules the same way: each module
gives its confidence that the input (or, for many-output RNNs, each output step) belongs to its
class, and the composed prediction is the class whose module is most confident. A module that says
"positive" has a confidence above every module that says "negative", so "the positive label with
the highest confidence" and "the highest confidence" pick the same class; when no module says
positive the most confident one still decides, as in the authors' code.

``confidences`` has the module axis first: ``float[modules, batch, ...]`` (trailing axes such as
timesteps are kept). ``classes[i]`` is the class of module ``i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _check(confidences: jax.Array, classes: Sequence[int] | None) -> jax.Array:
    if np.ndim(confidences) < 2:
        raise ValueError(f"confidences must be (modules, batch, ...), got shape {np.shape(confidences)}")
    num_modules = np.shape(confidences)[0]
    if classes is None:
        return jnp.arange(num_modules)
    classes = np.asarray(classes)
    if classes.shape != (num_modules,):
        raise ValueError(f"{num_modules} modules vote but {classes.shape[0] if classes.ndim else 0} classes were given")
    if len(set(classes.tolist())) != num_modules:
        raise ValueError(f"each module needs its own class, got {classes.tolist()}")
    return jnp.asarray(classes)


def vote(confidences: jax.Array, classes: Sequence[int] | None = None) -> jax.Array:
    """``int[batch, ...]``: the class of the most confident module (ties: the earlier module)."""
    classes = _check(confidences, classes)
    return classes[jnp.argmax(confidences, axis=0)]


def vote_top_k(confidences: jax.Array, k: int, classes: Sequence[int] | None = None) -> jax.Array:
    """``int[batch, ..., k]``: the classes of the ``k`` most confident modules, most confident first."""
    classes = _check(confidences, classes)
    num_modules = np.shape(confidences)[0]
    if not 1 <= k <= num_modules:
        raise ValueError(f"k must be in 1..{num_modules} (the number of modules), got {k}")
    _, order = jax.lax.top_k(jnp.moveaxis(confidences, 0, -1), k)
    return classes[order]


def voting_accuracy(confidences: jax.Array, labels: jax.Array, k: int = 1,
                    classes: Sequence[int] | None = None, valid: jax.Array | None = None) -> float:
    """Top-``k`` accuracy of the voted prediction; ``valid`` (bool, like ``labels``) drops padded steps."""
    labels = jnp.asarray(labels)
    if labels.shape != np.shape(confidences)[1:]:
        raise ValueError(f"labels have shape {labels.shape}, confidences give {np.shape(confidences)[1:]}")
    hits = jnp.any(vote_top_k(confidences, k, classes) == labels[..., None], axis=-1)
    if valid is None:
        return float(jnp.mean(hits))
    valid = jnp.asarray(valid, bool)
    return float(jnp.sum(hits & valid) / jnp.maximum(jnp.sum(valid), 1))

"""Running modules: one module's variables, its head, and every module over a dataset in one scan.

A module runs as the model it was decomposed from with the module's masks applied, whatever the
granularity (see :mod:`jaxmod.modules`): unit masks go into the model's ``unit_masks`` collection,
position masks into ``position_masks`` (both applied where the model taps its activations), weight
masks multiply ``params``, and per-module ``state`` replaces the model's collections. A module with a
head scores its class by the head's "my class" column; one without scores it by its own logit.
:func:`module_outputs` runs every module of a set on every sample in one jitted ``lax.map`` over
batches with a ``vmap`` over modules: the one scan behind voting, reuse and replacement.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxmod import fastconv
from jaxmod.checks import check_choice
from jaxmod.modules import POSITIVE, ModuleSet
from jaxmod.taps import POSITION_MASKS, UNIT_MASKS

OUTPUTS = ("confidence", "distribution")


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{'a/b': x}`` -> ``{'a': {'b': x}}``: masks keyed by group paths as the model's collections nest them."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def flat(tree: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`nest`."""
    return traverse_util.flatten_dict(dict(tree), sep="/")


def apply_weight_mask(params: Mapping[str, Any], mask: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with each masked leaf multiplied by its mask (one module's; ``None`` or absent: untouched)."""
    flat_mask = {k: v for k, v in traverse_util.flatten_dict(dict(mask)).items() if v is not None}
    flat_params = traverse_util.flatten_dict(dict(params))
    unknown = set(flat_mask) - set(flat_params)
    if unknown:
        raise ValueError(f"weight masks {sorted('/'.join(p) for p in unknown)} are not parameters")
    return traverse_util.unflatten_dict({
        path: leaf * flat_mask[path].astype(leaf.dtype) if path in flat_mask else leaf
        for path, leaf in flat_params.items()})


def module_variables(variables: Mapping[str, Any], module: Mapping[str, Any]) -> dict[str, Any]:
    """The variables that run one module (``module``: one row of a set's fields, as :func:`module_rows` gives)."""
    out = dict(variables)
    if module.get("units") is not None:
        out[UNIT_MASKS] = jax.tree.map(lambda m: m.astype(jnp.float32), nest(module["units"]))
    if module.get("positions") is not None:
        out[POSITION_MASKS] = jax.tree.map(lambda m: m.astype(jnp.float32), nest(module["positions"]))
    if module.get("weights") is not None:
        out["params"] = apply_weight_mask(variables["params"], module["weights"])
    if module.get("state") is not None:
        out.update(module["state"])
    return out


def module_rows(modules: ModuleSet) -> dict[str, Any]:
    """The set's stacked fields as a plain dict of device arrays (``vmap`` over its leading axis)."""
    fields = {"units": modules.units, "positions": modules.positions, "weights": modules.weights,
              "state": modules.state, "head": modules.head}
    return {k: None if v is None else jax.tree.map(jnp.asarray, v) for k, v in fields.items()}


def head_logits(head: Mapping[str, jax.Array], logits: jax.Array) -> jax.Array:
    """One module's head on the model's logits: ``[..., C] -> [..., 2]`` (column 1 scores "my class")."""
    return logits @ head["kernel"] + head["bias"]


def channel_head(num_classes: int, classes: Any) -> dict[str, np.ndarray]:
    """Channeling (Pan and Rajan; Imtiaz et al.) as heads: "my class" reads the class's own logit, "another
    class" the mean of the other logits. The output layer is linear, so this equals a binary output layer
    whose edges and bias are the class's and the mean of the others'."""
    own = np.eye(num_classes, dtype=np.float32)[np.asarray(classes)]  # [M, C]
    kernel = np.stack([(1.0 - own) / (num_classes - 1), own], axis=-1)
    return {"kernel": kernel, "bias": np.zeros((len(own), 2), np.float32)}


def one_module_output(model: nn.Module, variables: Mapping[str, Any], module: Mapping[str, Any], cls: jax.Array,
                      x: jax.Array, output: str = "confidence") -> jax.Array:
    """One module on a batch: its confidence in its class ``[B, ...]`` or its output distribution."""
    logits = model.apply(module_variables(variables, module), x)
    if module.get("head") is not None:
        logits = head_logits(module["head"], logits)
    probs = jax.nn.softmax(logits, axis=-1)
    if output == "distribution":
        return probs
    return probs[..., POSITIVE] if module.get("head") is not None else jnp.take(probs, cls, axis=-1)


@functools.lru_cache(maxsize=64)
def _outputs_fn(model: nn.Module, output: str):
    @jax.jit
    @fastconv.fast_convs
    def run(variables, rows, classes, xs):
        def batch(xb):
            return jax.vmap(lambda m, c: one_module_output(model, variables, m, c, xb, output))(rows, classes)

        return jax.lax.map(batch, xs)

    return run


def stack_batches(x: np.ndarray, batch_size: int) -> np.ndarray:
    """``x`` padded with zeros to a multiple of ``batch_size`` and reshaped to ``(batches, batch_size, ...)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) == 0:
        raise ValueError("no samples to run")
    pad = (-len(x)) % batch_size
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    return x.reshape(-1, batch_size, *x.shape[1:])


def module_outputs(model: nn.Module, variables: Mapping[str, Any], modules: ModuleSet, x: np.ndarray, *,
                   batch_size: int = 256, output: str = "confidence") -> np.ndarray:
    """Every module of ``modules`` on every sample of ``x``: ``float[M, N, ...]``.

    ``output="confidence"``: each module's probability that the sample (each output step, for a
    many-output model) is its class, from its head's "my class" column, or without a head from the
    model's softmax at its class. ``"distribution"``: each module's whole output distribution
    ``[M, N, ..., K]`` (translation modules, routed rather than voted).
    """
    check_choice("output", output, OUTPUTS)
    x = np.asarray(x)
    xs = stack_batches(x, batch_size)
    classes = jnp.asarray(modules.meta.classes, jnp.int32)
    out = np.asarray(_outputs_fn(model, output)(dict(variables), module_rows(modules), classes, jnp.asarray(xs)))
    out = np.moveaxis(out, 1, 0)  # (M, batches, batch, ...)
    return out.reshape(out.shape[0], -1, *out.shape[3:])[:, : len(x)]

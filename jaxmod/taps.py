"""What every zoo model shares: unit taps, width overrides and index maps.

A zoo model is a Flax linen module whose hidden layers all pass their post-activation output
through :func:`tap`. A tap does two things:

* it applies an optional *unit mask* (variable collection ``unit_masks``), which zeroes units as
  if they had been removed from the model: the "masked full model" that physical slicing must
  reproduce exactly;
* it applies an optional *position mask* (collection ``position_masks``, shaped like one sample's
  activation, e.g. ``(H, W, C)``): Pan & Rajan's maps of conv outputs that stay inactive for a
  concern act on activations, because conv weights are shared across positions;
* it sows the activation into the ``activations`` collection, so that losses and decomposition read
  every hidden layer without side effects outside ``apply``.

A model also takes ``widths`` (unit-group name -> width) so that the same class builds the
physically sliced model, and reads optional ``index_maps`` (int arrays) where a layer's input
must be re-indexed after slicing: identity residual adds and depthwise convolutions, whose
input and output channels are the same units.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmod.mask_generators import MaskGenerator

ACTIVATIONS = "activations"
UNIT_MASKS = "unit_masks"
POSITION_MASKS = "position_masks"
INDEX_MAPS = "index_maps"
GATE_PREFIX = "mask@"  # sown name of a mask generator's output: "mask@<group>" beside the taps


def _overwrite(_previous, value):
    return value


def tap(module: nn.Module, name: str, h: jax.Array) -> jax.Array:
    """Mask (if a unit or position mask is given) and sow the hidden activation ``h`` under ``name``.

    Units lie on the last axis of ``h``; a position mask covers ``h.shape[1:]``. Returns the
    masked activation, which the layer must use as its output.
    """
    if module.has_variable(UNIT_MASKS, name):
        mask = module.get_variable(UNIT_MASKS, name)
        h = h * mask.astype(h.dtype)
    if module.has_variable(POSITION_MASKS, name):
        mask = module.get_variable(POSITION_MASKS, name)
        if mask.shape != h.shape[1:]:
            raise ValueError(f"position mask for {name!r} has shape {mask.shape}, activation is {h.shape[1:]}")
        h = h * mask.astype(h.dtype)
    module.sow(ACTIVATIONS, name, h, init_fn=lambda: None, reduce_fn=_overwrite)
    return h


def gather_units(module: nn.Module, name: str, x: jax.Array) -> jax.Array:
    """Re-index the units on the last axis of ``x`` when the model is sliced.

    The full model has no index map and passes ``x`` through. A sliced model stores, for each
    unit the consuming layer keeps, its position in ``x`` or ``x.shape[-1]`` for a unit that the
    producer dropped, which reads as zero (the padding of the MODA and MwT papers).
    """
    if not module.has_variable(INDEX_MAPS, name):
        return x
    index = module.get_variable(INDEX_MAPS, name)
    padded = jnp.concatenate([x, jnp.zeros_like(x[..., :1])], axis=-1)
    return jnp.take(padded, index, axis=-1)


def gate(module: nn.Module, name: str, x_in: jax.Array, h: jax.Array) -> jax.Array:
    """MwT's hook at a maskable conv: ``h`` (the conv [+ BN] output, before the activation) times the
    per-sample channel mask a generator computes from the layer input ``x_in``.

    Does nothing unless ``module.mask_generators`` is true. Then it builds the generator
    ``<name>_generator`` (see :mod:`jaxmod.mask_generators`) and sows its mask ``(B, channels)`` into
    ``activations`` as ``mask@<name>``, ``name`` being the unit group the mask's channels belong to.
    """
    if not getattr(module, "mask_generators", False):
        return h
    mask = MaskGenerator(h.shape[-1], name=f"{name}_generator")(x_in)
    module.sow(ACTIVATIONS, f"{GATE_PREFIX}{name}", mask, init_fn=lambda: None, reduce_fn=_overwrite)
    return h * mask.reshape(mask.shape[:1] + (1,) * (h.ndim - 2) + mask.shape[-1:]).astype(h.dtype)


def mask_units(module: nn.Module, name: str, h: jax.Array) -> jax.Array:
    """``h`` times the unit mask ``name`` of collection ``unit_masks`` if there is one (else ``h``)."""
    if module.has_variable(UNIT_MASKS, name):
        h = h * module.get_variable(UNIT_MASKS, name).astype(h.dtype)
    return h


def is_gate_name(name: str) -> bool:
    """Whether a flat activation name (``a/b/mask@g``) is a generator mask rather than a tap."""
    return name.rsplit("/", 1)[-1].startswith(GATE_PREFIX)


def gate_group(name: str) -> str:
    """The unit group of a flat generator-mask name: ``a/mask@g`` -> ``a/g``."""
    head, _, last = name.rpartition("/")
    group = last[len(GATE_PREFIX):]
    return f"{head}/{group}" if head else group


def width_of(widths: tuple[tuple[str, int], ...], name: str, default: int) -> int:
    """The width a (possibly sliced) model gives unit group ``name``."""
    for key, value in widths:
        if key == name:
            return int(value)
    return int(default)


def freeze_widths(widths: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """A hashable, ordered form of a widths mapping, usable as a Flax module field."""
    return tuple(sorted((str(k), int(v)) for k, v in widths.items()))

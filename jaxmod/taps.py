"""The jaxmod collections, and taps for the models whose topology is declared rather than derived.

The zoo's feed-forward models are plain Flax (:mod:`jaxmod.models`, run through :mod:`jaxmod.adapter`, which
applies masks and sows activations at each derived read point). The recurrent models, whose ``lax.scan`` the
derivation does not follow, pass their hidden outputs through :func:`tap`, which does three things:

* it applies an optional *unit mask* (variable collection ``unit_masks``), which zeroes units as
  if they had been removed from the model: the "masked full model" that physical slicing must
  reproduce exactly;
* it applies an optional *position mask* (collection ``position_masks``, shaped like one sample's
  activation, e.g. ``(H, W, C)``): Pan & Rajan's maps of conv outputs that stay inactive for a
  concern act on activations, because conv weights are shared across positions;
* it sows the activation into the ``activations`` collection, so that losses and decomposition read
  every hidden layer without side effects outside ``apply``.

Such a model also takes ``widths`` (unit-group name -> width) so that the same class builds the physically
sliced model. ``index_maps`` (int arrays) re-index a layer's input after slicing where the producer's units
are read as another group's (identity residual adds, depthwise convolutions): the adapter applies them.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax

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

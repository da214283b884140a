"""The jaxmod collections: the variables the adapter (:mod:`jaxmod.adapter`) reads and writes beside a model's own.

Every model, the zoo's and a user's, is plain Flax run through the adapter, which at each derived read point:

* applies an optional *unit mask* (variable collection ``unit_masks``), which zeroes units as if they had been
  removed from the model: the "masked full model" that physical slicing must reproduce exactly (inside a loop, a
  recurrent layer's units are removed from its weights, :func:`jaxmod.adapter.loop_masks`);
* applies an optional *position mask* (collection ``position_masks``, shaped like one sample's activation, e.g.
  ``(H, W, C)``): Pan & Rajan's maps of conv outputs that stay inactive for a concern act on activations, because
  conv weights are shared across positions;
* sows the activation into the ``activations`` collection, so that losses and decomposition read every hidden
  layer without side effects outside ``apply``.

A sliced model takes ``widths`` (unit-group name -> width). ``index_maps`` (int arrays) re-index a layer's input
after slicing where the producer's units are read as another group's (identity residual adds, depthwise
convolutions).
"""

from __future__ import annotations

from collections.abc import Mapping

ACTIVATIONS = "activations"
UNIT_MASKS = "unit_masks"
POSITION_MASKS = "position_masks"
INDEX_MAPS = "index_maps"
GATE_PREFIX = "mask@"  # sown name of a mask generator's output: "mask@<group>" beside the taps


def is_gate_name(name: str) -> bool:
    """Whether a flat activation name (``a/b/mask@g``) is a generator mask rather than a tap."""
    return name.rsplit("/", 1)[-1].startswith(GATE_PREFIX)


def gate_group(name: str) -> str:
    """The unit group of a flat generator-mask name: ``a/mask@g`` -> ``a/g``."""
    head, _, last = name.rpartition("/")
    group = last[len(GATE_PREFIX):]
    return f"{head}/{group}" if head else group


def freeze_widths(widths: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """A hashable, ordered form of a widths mapping, usable as a Flax module field."""
    return tuple(sorted((str(k), int(v)) for k, v in widths.items()))

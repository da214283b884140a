"""The random control: modules of random units (or nodes, or weights) with the same per-layer kept counts as
another approach's modules, so that every comparison can show whether a method beats chance at equal size.

For each module and layer the control keeps exactly as many units as the reference module keeps there,
chosen uniformly at random (per timestep for unrolled recurrent modules, per gate block for gate masks;
over the whole activation for position masks and the whole kernel for weight masks). Heads and per-module
state are the reference's, so random modules compose (merge or vote) the way the reference's do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmod.modules import Decomposition, ModuleSet


def random_like(key: jax.Array, masks: Any, count_axes: str) -> Any:
    """Random masks with the kept counts of ``masks`` (a stacked mask tree, ``None`` leaves kept as ``None``).

    ``count_axes``: ``"last"`` keeps each row's count along the last axis (unit masks: per module, and per
    step or gate block where those axes exist); ``"all"`` keeps each module's count over all its axes
    (position and weight masks). Jit-able: one uniform draw and a rank per leaf.
    """
    if count_axes not in ("last", "all"):
        raise ValueError(f"count_axes must be 'last' or 'all', got {count_axes!r}")
    leaves, treedef = jax.tree.flatten(masks)

    def draw(i: int, leaf: jax.Array) -> jax.Array:
        leaf = jnp.asarray(leaf, bool)
        rows = leaf.reshape(-1, leaf.shape[-1]) if count_axes == "last" else leaf.reshape(leaf.shape[0], -1)
        noise = jax.random.uniform(jax.random.fold_in(key, i), rows.shape)
        rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
        return (rank < jnp.sum(rows, axis=1, keepdims=True)).reshape(leaf.shape)

    return jax.tree.unflatten(treedef, [draw(i, leaf) for i, leaf in enumerate(leaves)])


@dataclasses.dataclass(frozen=True)
class RandomControl:
    """Random modules the size of ``reference``'s (an approach name), drawn with ``seed``."""

    reference: str = "moda"
    seed: int = 0
    name: str = dataclasses.field(default="random", init=False)

    def __post_init__(self) -> None:
        from jaxmod.approaches import available_approaches  # the registry imports this module

        if self.reference not in available_approaches() or self.reference == "random":
            raise ValueError(f"reference must be another approach ({', '.join(available_approaches())}), "
                             f"got {self.reference!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    def training_loss(self) -> None:
        """The control trains nothing of its own: it is drawn on the reference's model."""
        return None

    def training_model(self, model: nn.Module) -> nn.Module:
        return model

    def config(self) -> dict[str, Any]:
        return {"reference": self.reference, "seed": self.seed}

    def decompose(self, model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                  num_classes: int, reference: ModuleSet | None = None) -> Decomposition:
        """Random modules with ``reference``'s kept counts (the reference approach's modules of the same model)."""
        del model, x, y
        if not isinstance(reference, ModuleSet):
            raise ValueError("the random control needs the reference approach's modules (reference=ModuleSet)")
        if reference.meta.approach != self.reference:
            raise ValueError(f"the reference modules are {reference.meta.approach!r} modules, the control was "
                             f"configured against {self.reference!r}")
        if reference.meta.num_classes != num_classes:
            raise ValueError(f"num_classes is {num_classes} but the reference modules have "
                             f"{reference.meta.num_classes}")
        kind = reference.granularity
        key = jax.random.key(self.seed)
        drawn = jax.tree.map(np.asarray, random_like(key, reference.masks, "last" if kind == "units" else "all"))
        meta = reference.meta.replace(approach=self.name, approach_config=self.config(),
                                      extra={**dict(reference.meta.extra), "reference_config":
                                             dict(reference.meta.approach_config)})
        modules = reference.replace(**{kind: drawn}, meta=meta).validate()
        del variables
        return Decomposition(modules, statistics={})

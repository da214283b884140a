"""MODA (Ngo et al.): activation-driven modular training and structured decomposition.

Training adds intra-class affinity, inter-class dispersion and compactness (see
:func:`jaxmod.losses.moda_loss`) on every tapped hidden layer. Decomposition keeps, for each
class, the units whose activation frequency on that class's training samples reaches ``tau``;
as in the newest reference code, a layer keeps at least ``max(1, floor(0.005 * units))`` units
per class (its top units by frequency) when fewer pass the threshold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmod.activations import activation_rates, class_activation_counts
from jaxmod.data import check_every_class_present, check_labels
from jaxmod.losses import LossFn, moda_loss
from jaxmod.modules import Decomposition, module_set


def threshold_with_floor(rates: jax.Array, tau: float, min_fraction: float = 0.005) -> jax.Array:
    """``bool[C, U]``: units with rate >= tau; a class with fewer than ``min_req`` gets its top-k. Jit-able.

    As the MODA reference code (``calculate_modular_layer_masks``): ``min_req = max(1,
    floor(min_fraction * U))`` and a deficient class keeps its ``k`` most frequent units, where
    ``k = max(min_req, the largest thresholded module in the layer)``. The reference raises
    classes one after another, but a raised class never exceeds that k, so every deficient class
    gets the same k and the rule is order-free. Ties are broken by the lower unit index.
    """
    rates = jnp.asarray(rates)
    if rates.ndim != 2:
        raise ValueError(f"rates must be (classes, units), got shape {rates.shape}")
    keep = rates >= tau
    counts = jnp.sum(keep, axis=1)
    min_req = max(1, math.floor(min_fraction * rates.shape[1]))
    k = jnp.maximum(min_req, jnp.max(counts))
    order = jnp.argsort(-rates, axis=1, stable=True)
    rank = jnp.argsort(order, axis=1, stable=True)  # each unit's position in its class's order
    return jnp.where((counts < min_req)[:, None], rank < k, keep)


@dataclasses.dataclass(frozen=True)
class Moda:
    """MODA with the paper's defaults: alpha 1.0, beta 1.0, gamma 0.3, tau 0.9."""

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 0.3
    tau: float = 0.9
    min_unit_fraction: float = 0.005
    batch_size: int = 512
    name: str = dataclasses.field(default="moda", init=False)

    def __post_init__(self) -> None:
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        for field in ("alpha", "beta", "gamma"):
            if not getattr(self, field) >= 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")
        if not 0 <= self.min_unit_fraction <= 1:
            raise ValueError(f"min_unit_fraction must be in [0, 1], got {self.min_unit_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def training_loss(self) -> LossFn:
        return moda_loss(self.alpha, self.beta, self.gamma)

    def training_model(self, model: nn.Module) -> nn.Module:
        return model

    def decompose(self, model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                  num_classes: int) -> Decomposition:
        """Per-class unit masks from activation frequency on the (unaugmented) training samples."""
        if num_classes != model.num_classes:
            raise ValueError(f"num_classes is {num_classes} but the model has {model.num_classes} classes")
        check_labels(np.asarray(y), num_classes)
        check_every_class_present(y, num_classes, "samples to decompose from")
        counts, totals = class_activation_counts(model, variables, x, y, num_classes, self.batch_size)
        rates = activation_rates(counts, totals)
        masks = {name: np.asarray(threshold_with_floor(r, self.tau, self.min_unit_fraction))
                 for name, r in rates.items()}
        modules = module_set(self, model, variables, x, units=masks)
        return Decomposition(modules, statistics={"activation_rate": rates})

    def training_config(self) -> dict[str, Any]:
        """The settings that change the trained model (a resumed training run must share them; tau does not)."""
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma}

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}

"""The small protocol every modularization approach implements."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

import flax.linen as nn
import numpy as np

from jaxmod.losses import LossFn


@dataclasses.dataclass(frozen=True)
class Decomposition:
    """Stacked per-class masks (row i = module of class i), module-specific parameters (``heads``,
    same leading axis; ``None`` for methods without them) and the statistics they came from."""

    masks: Mapping[str, Any]
    granularity: str
    statistics: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    heads: Mapping[str, Any] | None = None


class Approach(Protocol):
    """A modularization method: an optional modular training loss and a decomposition rule.

    ``training_loss`` returns ``None`` for post-training methods (they decompose the standard
    model). ``decompose`` reads a trained model and the training samples and returns one module
    per class.
    """

    name: str

    def training_loss(self) -> LossFn | None: ...

    def decompose(self, model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                  num_classes: int) -> Decomposition: ...

    def config(self) -> dict[str, Any]: ...

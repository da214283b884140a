"""The small protocol every modularization approach implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import flax.linen as nn
import numpy as np

from jaxmod.losses import LossFn
from jaxmod.modules import Decomposition


class Approach(Protocol):
    """A modularization method: a frozen config with an optional modular training loss and a decomposition rule.

    ``training_loss`` returns ``None`` for post-training methods (they decompose the standard model); an approach
    with a loss also gives ``training_config()``, the settings that change the trained model (its loss weights), so
    that changing a decomposition setting (tau, ...) reuses a trained model.
    ``training_model`` gives the model to train (MwT adds its mask generators; the others train the model as
    it is). ``decompose`` reads a trained model and the training samples and returns one module per class
    (a :class:`jaxmod.modules.Decomposition`); how the modules run (merge and slice, or vote) is read from
    the module set itself (:func:`jaxmod.compose.how_modules_compose`). Training, scanning, composing,
    voting, saving and measuring are shared.
    """

    name: str

    def training_loss(self) -> LossFn | None: ...

    def training_model(self, model: nn.Module) -> nn.Module: ...

    def decompose(self, model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                  num_classes: int) -> Decomposition: ...

    def config(self) -> dict[str, Any]: ...

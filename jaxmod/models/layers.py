"""Building blocks the zoo models share."""

from __future__ import annotations

import flax.linen as nn


def scaled(width: int, multiplier: float) -> int:
    """``width`` scaled by a width multiplier, at least one unit."""
    return max(1, int(width * multiplier))


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
    """Batch norm as the papers' PyTorch code has it (momentum 0.1 there is 0.9 here, eps 1e-5)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)

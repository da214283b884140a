"""FC1-FC4: fully connected classifiers with 49 ReLU units per hidden layer, as the papers use."""

from __future__ import annotations

import flax.linen as nn
import jax


class MLP(nn.Module):
    """``num_hidden`` dense ReLU layers of ``units`` units, then a dense output layer.

    Images are flattened (NHWC order). Hidden layers ``fc1`` .. ``fcN`` sow their post-ReLU output as
    ``fc1_relu`` .. ``fcN_relu`` (which names their unit groups).
    """

    num_classes: int = 10
    num_hidden: int = 1
    units: int = 49

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for i in range(1, self.num_hidden + 1):
            x = nn.relu(nn.Dense(self.units, name=f"fc{i}")(x))
            self.sow("intermediates", f"fc{i}_relu", x)
        return nn.Dense(self.num_classes, name="logits")(x)

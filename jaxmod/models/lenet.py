"""LeNet-5 (ReLU, max pooling), for 28x28 or 32x32 inputs."""

from __future__ import annotations

import flax.linen as nn
import jax


class LeNet5(nn.Module):
    """conv5x5(6, same) - pool - conv5x5(16, valid) - pool - fc120 - fc84 - logits.

    Sown (post-ReLU, channels before pooling), naming the unit groups: ``conv1_relu``, ``conv2_relu``,
    ``fc1_relu``, ``fc2_relu``. The flatten after the second pooling makes each ``conv2_relu`` channel feed
    ``fc1`` at every spatial position.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(nn.Conv(6, (5, 5), padding="SAME", name="conv1")(x))
        self.sow("intermediates", "conv1_relu", x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(16, (5, 5), padding="VALID", name="conv2")(x))
        self.sow("intermediates", "conv2_relu", x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(120, name="fc1")(x))
        self.sow("intermediates", "fc1_relu", x)
        x = nn.relu(nn.Dense(84, name="fc2")(x))
        self.sow("intermediates", "fc2_relu", x)
        return nn.Dense(self.num_classes, name="logits")(x)

"""LeNet-5 (ReLU, max pooling), for 28x28 or 32x32 inputs."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxmod.fastconv import Conv
from jaxmod.taps import gate, tap, width_of
from jaxmod.topology import TopologySpec, UnitGroup, conv_out, dense_out, kernel_in


class LeNet5(nn.Module):
    """conv5x5(6, same) - pool - conv5x5(16, valid) - pool - fc120 - fc84 - logits.

    Taps (post-ReLU, channels before pooling): ``conv1_relu``, ``conv2_relu``, ``fc1_relu``,
    ``fc2_relu``. The flatten after the second pooling makes each ``conv2_relu`` channel feed
    ``fc1`` at every spatial position.

    ``mask_generators=True`` adds MwT's mask generator to every conv but the first (here ``conv2``,
    mask ``mask@conv2_relu``), as MwT masks VGG.
    """

    num_classes: int = 10
    widths: tuple[tuple[str, int], ...] = ()
    mask_generators: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        w = lambda name, default: width_of(self.widths, name, default)  # noqa: E731
        x = tap(self, "conv1_relu", nn.relu(Conv(w("conv1_relu", 6), (5, 5), padding="SAME", name="conv1")(x)))
        x = nn.max_pool(x, (2, 2), (2, 2))
        h = Conv(w("conv2_relu", 16), (5, 5), padding="VALID", name="conv2")(x)
        x = tap(self, "conv2_relu", nn.relu(gate(self, "conv2_relu", x, h)))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = tap(self, "fc1_relu", nn.relu(nn.Dense(w("fc1_relu", 120), name="fc1")(x)))
        x = tap(self, "fc2_relu", nn.relu(nn.Dense(w("fc2_relu", 84), name="fc2")(x)))
        return nn.Dense(self.num_classes, name="logits")(x)

    def topology_spec(self) -> TopologySpec:
        return TopologySpec(
            groups=(
                UnitGroup("conv1_relu", conv_out("conv1"), kernel_in("conv2")),
                UnitGroup("conv2_relu", conv_out("conv2"), kernel_in("fc1")),  # tiled over 5x5 positions
                UnitGroup("fc1_relu", conv_out("fc1"), kernel_in("fc2")),
                UnitGroup("fc2_relu", conv_out("fc2"), kernel_in("logits")),
            ),
            output=dense_out("logits"),
        )

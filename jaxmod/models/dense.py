"""FC1-FC4: fully connected classifiers with 49 ReLU units per hidden layer, as the papers use."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxmod.taps import tap, width_of
from jaxmod.topology import TopologySpec, UnitGroup, conv_out, dense_out, kernel_in


class MLP(nn.Module):
    """``num_hidden`` dense ReLU layers of ``units`` units, then a dense output layer.

    Images are flattened (NHWC order). Hidden layers ``fc1`` .. ``fcN`` are tapped as ``fc1_relu`` .. ``fcN_relu``.
    """

    num_classes: int = 10
    num_hidden: int = 1
    units: int = 49
    widths: tuple[tuple[str, int], ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for i in range(1, self.num_hidden + 1):
            layer, group = f"fc{i}", f"fc{i}_relu"
            x = tap(self, group, nn.relu(nn.Dense(width_of(self.widths, group, self.units), name=layer)(x)))
        return nn.Dense(self.num_classes, name="logits")(x)

    def topology_spec(self) -> TopologySpec:
        layers = [f"fc{i}" for i in range(1, self.num_hidden + 1)]
        consumers = layers[1:] + ["logits"]
        pairs = zip(layers, consumers, strict=True)
        groups = tuple(UnitGroup(f"{n}_relu", conv_out(n), kernel_in(c)) for n, c in pairs)
        return TopologySpec(groups, dense_out("logits"))

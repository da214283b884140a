"""VGG-style plain convolutional classifiers: VGG16 for CIFAR and a narrow VGG for 28x28 images."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxmod.fastconv import Conv
from jaxmod.models.layers import batch_norm, scaled
from jaxmod.taps import gate, tap, width_of
from jaxmod.topology import TopologySpec, UnitGroup, conv_out, dense_out, kernel_in

VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG_NARROW_STAGES: tuple[tuple[int, ...], ...] = ((32, 32), (64, 64), (128, 128))


class VGG(nn.Module):
    """Stages of 3x3 convolutions (conv [+ BN] + ReLU), each stage followed by 2x2 max pooling, then a
    flatten and a dense classifier (hidden Dense + ReLU [+ Dropout] layers, then the logits layer).

    ``stages`` lists each stage's conv widths; ``classifier`` the hidden dense widths. Convs are
    numbered through all stages (``conv1`` .. ``convN``, batch norms ``bn1`` .. ``bnN``), hidden dense
    layers ``fc1`` .. ``fcM``; taps are ``conv<i>_relu`` (before pooling) and ``fc<j>_relu`` (before
    dropout). ``width_multiplier`` scales every hidden width (conv and dense, at least 1). Convs
    followed by batch norm have no bias.

    Every stage halves the spatial size (floor), so the input must keep at least 2x2 pixels before each
    pooling: the 5-stage VGG16 needs 32x32 inputs (28x28 would reach 1x1 before the last pooling, and
    tracing raises ``ValueError``); the 3-stage narrow VGG takes 28x28 (28 -> 14 -> 7 -> 3) and 32x32.

    ``mask_generators=True`` adds MwT's mask generator to every conv but the first (masks
    ``mask@conv<i>_relu``, applied to the conv [+ BN] output before the ReLU).
    """

    num_classes: int = 10
    widths: tuple[tuple[str, int], ...] = ()
    stages: tuple[tuple[int, ...], ...] = VGG16_STAGES
    classifier: tuple[int, ...] = (512, 512)
    use_bn: bool = True
    dropout: float = 0.5
    width_multiplier: float = 1.0
    mask_generators: bool = False

    def _conv_widths(self) -> list[int]:
        return [c for stage in self.stages for c in stage]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        i = 0
        for stage in self.stages:
            for default in stage:
                i += 1
                group = f"conv{i}_relu"
                width = width_of(self.widths, group, scaled(default, self.width_multiplier))
                h = Conv(width, (3, 3), padding=1, use_bias=not self.use_bn, name=f"conv{i}")(x)
                if self.use_bn:
                    h = batch_norm(train, f"bn{i}")(h)
                if i > 1:
                    h = gate(self, group, x, h)
                x = tap(self, group, nn.relu(h))
            if x.shape[1] < 2 or x.shape[2] < 2:
                raise ValueError(
                    f"VGG: spatial size {x.shape[1:3]} before pooling after conv{i} is below 2x2; the input "
                    f"is too small for {len(self.stages)} pooling stages"
                )
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        for j, default in enumerate(self.classifier, start=1):
            group = f"fc{j}_relu"
            width = width_of(self.widths, group, scaled(default, self.width_multiplier))
            x = tap(self, group, nn.relu(nn.Dense(width, name=f"fc{j}")(x)))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="logits")(x)

    def topology_spec(self) -> TopologySpec:
        convs = [f"conv{i}" for i in range(1, len(self._conv_widths()) + 1)]
        fcs = [f"fc{j}" for j in range(1, len(self.classifier) + 1)]
        layers = convs + fcs
        consumers = layers[1:] + ["logits"]  # the last conv feeds fc1 (or logits) through the flatten
        groups = []
        for k, (layer, consumer) in enumerate(zip(layers, consumers, strict=True)):
            if k < len(convs):
                bn = f"bn{k + 1}" if self.use_bn else None
                producers = conv_out(layer, bias=not self.use_bn, bn=bn)
            else:
                producers = conv_out(layer)
            groups.append(UnitGroup(f"{layer}_relu", producers, kernel_in(consumer)))
        return TopologySpec(tuple(groups), dense_out("logits"))

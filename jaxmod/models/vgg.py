"""VGG-style plain convolutional classifiers: VGG16 for CIFAR and a narrow VGG for 28x28 images."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxmod.models.layers import batch_norm, scaled

VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
VGG_NARROW_STAGES: tuple[tuple[int, ...], ...] = ((32, 32), (64, 64), (128, 128))


class VGG(nn.Module):
    """Stages of 3x3 convolutions (conv [+ BN] + ReLU), each stage followed by 2x2 max pooling, then a
    flatten and a dense classifier (hidden Dense + ReLU [+ Dropout] layers, then the logits layer).

    ``stages`` lists each stage's conv widths; ``classifier`` the hidden dense widths. Convs are
    numbered through all stages (``conv1`` .. ``convN``, batch norms ``bn1`` .. ``bnN``), hidden dense
    layers ``fc1`` .. ``fcM``; they sow ``conv<i>_relu`` (before pooling) and ``fc<j>_relu`` (before
    dropout), which name their unit groups. ``width_multiplier`` scales every hidden width (conv and dense,
    at least 1). Convs followed by batch norm have no bias.

    Every stage halves the spatial size (floor), so the input must keep at least 2x2 pixels before each
    pooling: the 5-stage VGG16 needs 32x32 inputs (28x28 would reach 1x1 before the last pooling, and
    tracing raises ``ValueError``); the 3-stage narrow VGG takes 28x28 (28 -> 14 -> 7 -> 3) and 32x32.
    """

    num_classes: int = 10
    stages: tuple[tuple[int, ...], ...] = VGG16_STAGES
    classifier: tuple[int, ...] = (512, 512)
    use_bn: bool = True
    dropout: float = 0.5
    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        i = 0
        for stage in self.stages:
            for default in stage:
                i += 1
                width = scaled(default, self.width_multiplier)
                h = nn.Conv(width, (3, 3), padding=1, use_bias=not self.use_bn, name=f"conv{i}")(x)
                if self.use_bn:
                    h = batch_norm(train, f"bn{i}")(h)
                x = nn.relu(h)
                self.sow("intermediates", f"conv{i}_relu", x)
            if x.shape[1] < 2 or x.shape[2] < 2:
                raise ValueError(
                    f"VGG: spatial size {x.shape[1:3]} before pooling after conv{i} is below 2x2; the input "
                    f"is too small for {len(self.stages)} pooling stages"
                )
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        for j, default in enumerate(self.classifier, start=1):
            x = nn.relu(nn.Dense(scaled(default, self.width_multiplier), name=f"fc{j}")(x))
            self.sow("intermediates", f"fc{j}_relu", x)
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="logits")(x)

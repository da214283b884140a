"""MobileNet (v1) for CIFAR-sized inputs: depthwise-separable convolutions."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmod.models.layers import batch_norm, scaled

# (pointwise width, depthwise stride) of the 13 blocks: the CIFAR variant of the ImageNet plan, whose
# stem and first block downsample less (the stem has stride 1, the ImageNet one 2).
MOBILENET_CIFAR_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class DepthwiseSeparable(nn.Module):
    """dw3x3-BN-ReLU (sown ``dw_relu``; its channels are the input's), then pw1x1-BN-ReLU (sown ``pw_relu``)."""

    pw_width: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        s = (self.stride, self.stride)
        channels = x.shape[-1]
        h = nn.Conv(channels, (3, 3), s, padding=1, feature_group_count=channels, use_bias=False, name="dw_conv")(x)
        h = nn.relu(batch_norm(train, "dw_bn")(h))
        self.sow("intermediates", "dw_relu", h)
        p = nn.relu(batch_norm(train, "pw_bn")(nn.Conv(self.pw_width, (1, 1), use_bias=False, name="pw_conv")(h)))
        self.sow("intermediates", "pw_relu", p)
        return p


class MobileNet(nn.Module):
    """MobileNet v1, CIFAR variant: conv3x3(32, stride 1)-BN-ReLU, 13 depthwise-separable blocks
    (pointwise widths 64, 128, 128, 256, 256, 512 x6, 1024, 1024; depthwise strides
    1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1), global average pooling, dense logits. 32x32 inputs end
    at 2x2 before pooling, 28x28 at 2x2 too (28 -> 14 -> 7 -> 4 -> 2).

    ``width_multiplier`` (alpha) scales every width (``int(width * alpha)``, at least 1). Batch norm
    follows every conv, which has no bias. Sown (naming the unit groups): ``stem_relu`` and, per block
    ``block<i>`` (from 1), ``block<i>/dw_relu`` and ``block<i>/pw_relu``. A block's depthwise group has the
    same full width as the group before it (the derivation ties them with an index map).
    """

    num_classes: int = 10
    stem_width: int = 32
    blocks: tuple[tuple[int, int], ...] = MOBILENET_CIFAR_BLOCKS
    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(scaled(self.stem_width, self.width_multiplier), (3, 3), padding=1, use_bias=False,
                    name="stem_conv")(x)
        x = nn.relu(batch_norm(train, "stem_bn")(x))
        self.sow("intermediates", "stem_relu", x)
        for i, (pw, stride) in enumerate(self.blocks, start=1):
            block = DepthwiseSeparable(pw_width=scaled(pw, self.width_multiplier), stride=stride, name=f"block{i}")
            x = block(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="logits")(x)

"""MobileNet (v1) for CIFAR-sized inputs: depthwise-separable convolutions."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmod.fastconv import Conv
from jaxmod.models.layers import batch_norm, scaled
from jaxmod.taps import gate, gather_units, tap, width_of
from jaxmod.topology import IndexMapSpec, TopologySpec, UnitGroup, conv_out, dense_out, kernel_in

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
    """dw3x3-BN-ReLU (tap ``dw_relu``), then pw1x1-BN-ReLU (tap ``pw_relu``).

    The depthwise channels are the input's units: the input is read through the index map
    ``dw_in`` (a sliced model keeps ``dw_width`` of them, zero for those the producer dropped).
    With ``mask_generators`` both convs are gated (MwT masks ``mask@dw_relu``, ``mask@pw_relu``).
    """

    dw_width: int
    pw_width: int
    stride: int = 1
    mask_generators: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = gather_units(self, "dw_in", x)
        s = (self.stride, self.stride)
        h = Conv(
            self.dw_width, (3, 3), s, padding=1, feature_group_count=self.dw_width, use_bias=False, name="dw_conv"
        )(x)
        h = tap(self, "dw_relu", nn.relu(gate(self, "dw_relu", x, batch_norm(train, "dw_bn")(h))))
        p = Conv(self.pw_width, (1, 1), use_bias=False, name="pw_conv")(h)
        return tap(self, "pw_relu", nn.relu(gate(self, "pw_relu", h, batch_norm(train, "pw_bn")(p))))


class MobileNet(nn.Module):
    """MobileNet v1, CIFAR variant: conv3x3(32, stride 1)-BN-ReLU, 13 depthwise-separable blocks
    (pointwise widths 64, 128, 128, 256, 256, 512 x6, 1024, 1024; depthwise strides
    1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1), global average pooling, dense logits. 32x32 inputs end
    at 2x2 before pooling, 28x28 at 2x2 too (28 -> 14 -> 7 -> 4 -> 2).

    ``width_multiplier`` (alpha) scales every width (``int(width * alpha)``, at least 1). Batch norm
    follows every conv, which has no bias. Taps: ``stem_relu`` and, per block ``block<i>`` (from 1),
    ``block<i>/dw_relu`` and ``block<i>/pw_relu``. A block's depthwise group has the same full width
    as the group before it and reads it through the index map ``block<i>/dw_in``.

    ``mask_generators=True`` adds MwT's mask generators to every conv but the stem (the paper leaves
    MobileNet open; this follows its rule for VGG: every conv but the first).
    """

    num_classes: int = 10
    widths: tuple[tuple[str, int], ...] = ()
    stem_width: int = 32
    blocks: tuple[tuple[int, int], ...] = MOBILENET_CIFAR_BLOCKS
    width_multiplier: float = 1.0
    mask_generators: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        w = lambda name, default: width_of(self.widths, name, default)  # noqa: E731
        full = scaled(self.stem_width, self.width_multiplier)
        x = Conv(w("stem_relu", full), (3, 3), padding=1, use_bias=False, name="stem_conv")(x)
        x = tap(self, "stem_relu", nn.relu(batch_norm(train, "stem_bn")(x)))
        for i, (pw, stride) in enumerate(self.blocks, start=1):
            name = f"block{i}"
            pw_full = scaled(pw, self.width_multiplier)
            x = DepthwiseSeparable(
                dw_width=w(f"{name}/dw_relu", full), pw_width=w(f"{name}/pw_relu", pw_full), stride=stride,
                mask_generators=self.mask_generators, name=name
            )(x, train)
            full = pw_full
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="logits")(x)

    def topology_spec(self) -> TopologySpec:
        groups = [UnitGroup("stem_relu", conv_out("stem_conv", bias=False, bn="stem_bn"))]
        index_maps = []
        previous = "stem_relu"
        n = len(self.blocks)
        for i in range(1, n + 1):
            name = f"block{i}"
            dw, pw = f"{name}/dw_relu", f"{name}/pw_relu"
            index_maps.append(IndexMapSpec(f"{name}/dw_in", source=previous, target=dw))
            groups.append(
                UnitGroup(dw, conv_out(f"{name}/dw_conv", bias=False, bn=f"{name}/dw_bn"), kernel_in(f"{name}/pw_conv"))
            )
            # the next block's depthwise conv reads this group through its index map, not a kernel axis
            consumers = kernel_in("logits") if i == n else ()
            groups.append(UnitGroup(pw, conv_out(f"{name}/pw_conv", bias=False, bn=f"{name}/pw_bn"), consumers))
            previous = pw
        return TopologySpec(tuple(groups), dense_out("logits"), tuple(index_maps))

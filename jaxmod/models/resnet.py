"""CIFAR-style residual networks with basic blocks: ResNet18 and ResNet20/32/56."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmod.models.layers import batch_norm, scaled


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU; sows ``relu1`` and ``relu2`` (the units of the
    residual sum).

    ``project`` selects a 1x1 conv (+ BN) shortcut ``proj_conv``/``proj_bn``; otherwise the shortcut is the
    identity. Without batch norm the convs have biases. ``zero_init_residual`` starts ``conv2`` (the residual
    branch's last conv) at zero, so every block begins as its shortcut (Fixup-style; the usual way to train a
    ResNet without batch norm).
    """

    width: int
    stride: int = 1
    project: bool = False
    use_bn: bool = True
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        s = (self.stride, self.stride)
        h = nn.Conv(self.width, (3, 3), s, padding=1, use_bias=not self.use_bn, name="conv1")(x)
        if self.use_bn:
            h = batch_norm(train, "bn1")(h)
        h = nn.relu(h)
        self.sow("intermediates", "relu1", h)
        init = {"kernel_init": nn.initializers.zeros} if self.zero_init_residual else {}
        h = nn.Conv(self.width, (3, 3), padding=1, use_bias=not self.use_bn, name="conv2", **init)(h)
        if self.use_bn:
            h = batch_norm(train, "bn2")(h)
        short = x
        if self.project:
            short = nn.Conv(self.width, (1, 1), s, padding=0, use_bias=not self.use_bn, name="proj_conv")(x)
            if self.use_bn:
                short = batch_norm(train, "proj_bn")(short)
        out = nn.relu(h + short)
        self.sow("intermediates", "relu2", out)
        return out


class ResNet(nn.Module):
    """A CIFAR-style ResNet of basic blocks: 3x3 stem conv (stride 1, no max pooling), stages of
    blocks (the first block of every stage but the first has stride 2), global average pooling,
    dense logits.

    ``stage_sizes`` gives the number of blocks per stage, ``stage_widths`` their channels and
    ``stem_width`` the stem's; ``width_multiplier`` scales all of them (at least 1). Shortcuts are
    the identity where a block keeps its (full-model) shape; where the shape changes (stride 2 or a
    new width) they are a 1x1 conv (+ BN) projection. For ResNet20/32/56 this is option B of He et
    al.: the paper's option A (strided identity with zero-padded channels) is replaced by a 1x1
    projection, which adds a few thousand weights (ResNet20: 0.27M -> 0.27M + 2.7k).

    Without batch norm (``use_bn=False``, as Pan & Rajan's ResNet20) every conv has a bias;
    ``zero_init_residual=True`` (default off) zero-initialises each block's ``conv2`` so that such a
    model trains with SGD (Fixup-style, see :class:`BasicBlock`).

    Sown (naming the unit groups): ``stem_relu``; per block ``stage<s>_block<b>/relu1`` and ``stage<s>_block<b>/relu2``
    (stages from 1, blocks from 0), ``relu2`` being the units of the residual sum after ReLU.
    Takes 32x32 and 28x28 inputs (3x3 convs with padding 1; 28 -> 14 -> 7 -> 4).
    """

    num_classes: int = 10
    stage_sizes: tuple[int, ...] = (3, 3, 3)
    stage_widths: tuple[int, ...] = (16, 32, 64)
    stem_width: int = 16
    use_bn: bool = True
    width_multiplier: float = 1.0
    zero_init_residual: bool = False

    def _plan(self) -> list[tuple[str, int, int, int, bool]]:
        """(block name, full input width, full output width, stride, projection) per block."""
        plan = []
        in_width = scaled(self.stem_width, self.width_multiplier)
        for s, (n, width) in enumerate(zip(self.stage_sizes, self.stage_widths, strict=True), start=1):
            out_width = scaled(width, self.width_multiplier)
            for b in range(n):
                stride = 2 if (b == 0 and s > 1) else 1
                plan.append((f"stage{s}_block{b}", in_width, out_width, stride, stride != 1 or in_width != out_width))
                in_width = out_width
        return plan

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if len(self.stage_sizes) != len(self.stage_widths):
            raise ValueError(f"ResNet: {len(self.stage_sizes)} stage sizes but {len(self.stage_widths)} stage widths")
        stem = scaled(self.stem_width, self.width_multiplier)
        x = nn.Conv(stem, (3, 3), padding=1, use_bias=not self.use_bn, name="stem_conv")(x)
        if self.use_bn:
            x = batch_norm(train, "stem_bn")(x)
        x = nn.relu(x)
        self.sow("intermediates", "stem_relu", x)
        for name, _, out_width, stride, project in self._plan():
            x = BasicBlock(width=out_width, stride=stride, project=project, use_bn=self.use_bn,
                           zero_init_residual=self.zero_init_residual, name=name)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="logits")(x)

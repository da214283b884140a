"""CIFAR-style residual networks with basic blocks: ResNet18 and ResNet20/32/56."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmod.fastconv import Conv
from jaxmod.models.layers import batch_norm, scaled
from jaxmod.taps import gate, gather_units, mask_units, tap, width_of
from jaxmod.topology import IndexMapSpec, LeafAxis, TopologySpec, UnitGroup, conv_out, dense_out, kernel_in


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    The parent owns the widths and passes this block's resolved ones: ``width1`` (the ``relu1``
    group) and ``width2`` (the ``relu2`` group: the units of the residual sum). ``project`` selects a
    1x1 conv (+ BN) shortcut ``proj_conv``/``proj_bn``; otherwise the shortcut is the identity,
    re-indexed through the index map ``shortcut`` in a sliced model. Without batch norm the convs
    have biases.

    ``zero_init_residual`` starts ``conv2`` (the residual branch's last conv) at zero, so every block
    begins as its shortcut (Fixup-style; the usual way to train a ResNet without batch norm).

    MwT (``mask_generators``): ``conv1``, ``conv2`` and ``proj_conv`` are gated (masks ``mask@relu1``,
    ``mask@conv2``, ``mask@proj_conv``). ``conv2`` and the projection then have kernel sets of their
    own inside the residual sum: ``conv2_width``/``proj_width`` (default ``width2``) size them in a
    sliced model, whose index maps ``conv2_pad``/``proj_conv_pad`` zero-pad them to the sum's units (the
    MwT padding); the unit masks ``conv2``/``proj_conv`` give the masked full model.
    """

    width1: int
    width2: int
    stride: int = 1
    project: bool = False
    use_bn: bool = True
    mask_generators: bool = False
    conv2_width: int | None = None
    proj_width: int | None = None
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        s = (self.stride, self.stride)
        h = Conv(self.width1, (3, 3), s, padding=1, use_bias=not self.use_bn, name="conv1")(x)
        if self.use_bn:
            h = batch_norm(train, "bn1")(h)
        h1 = tap(self, "relu1", nn.relu(gate(self, "relu1", x, h)))
        width = self.width2 if self.conv2_width is None else self.conv2_width
        init = {"kernel_init": nn.initializers.zeros} if self.zero_init_residual else {}
        h = Conv(width, (3, 3), padding=1, use_bias=not self.use_bn, name="conv2", **init)(h1)
        if self.use_bn:
            h = batch_norm(train, "bn2")(h)
        h = gather_units(self, "conv2_pad", mask_units(self, "conv2", gate(self, "conv2", h1, h)))
        if self.project:
            width = self.width2 if self.proj_width is None else self.proj_width
            short = Conv(width, (1, 1), s, padding=0, use_bias=not self.use_bn, name="proj_conv")(x)
            if self.use_bn:
                short = batch_norm(train, "proj_bn")(short)
            short = mask_units(self, "proj_conv", gate(self, "proj_conv", x, short))
            short = gather_units(self, "proj_conv_pad", short)
        else:
            short = gather_units(self, "shortcut", x)
        return tap(self, "relu2", nn.relu(h + short))


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

    Taps: ``stem_relu``; per block ``stage<s>_block<b>/relu1`` and ``stage<s>_block<b>/relu2``
    (stages from 1, blocks from 0), ``relu2`` being the units of the residual sum after ReLU.
    Takes 32x32 and 28x28 inputs (3x3 convs with padding 1; 28 -> 14 -> 7 -> 4).

    ``mask_generators=True`` adds MwT's mask generators to every block conv and projection (not
    the stem), as the MwT reference does for ResNet18; :meth:`residual_splits` names the kernel
    sets that then live inside each residual sum.
    """

    num_classes: int = 10
    widths: tuple[tuple[str, int], ...] = ()
    stage_sizes: tuple[int, ...] = (3, 3, 3)
    stage_widths: tuple[int, ...] = (16, 32, 64)
    stem_width: int = 16
    use_bn: bool = True
    width_multiplier: float = 1.0
    mask_generators: bool = False
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
        w = lambda name, default: width_of(self.widths, name, default)  # noqa: E731
        stem = scaled(self.stem_width, self.width_multiplier)
        x = Conv(w("stem_relu", stem), (3, 3), padding=1, use_bias=not self.use_bn, name="stem_conv")(x)
        if self.use_bn:
            x = batch_norm(train, "stem_bn")(x)
        x = tap(self, "stem_relu", nn.relu(x))
        for name, _, out_width, stride, project in self._plan():
            block = BasicBlock(
                width1=w(f"{name}/relu1", out_width),
                width2=w(f"{name}/relu2", out_width),
                stride=stride,
                project=project,
                use_bn=self.use_bn,
                mask_generators=self.mask_generators,
                zero_init_residual=self.zero_init_residual,
                conv2_width=w(f"{name}/conv2", w(f"{name}/relu2", out_width)),
                proj_width=w(f"{name}/proj_conv", w(f"{name}/relu2", out_width)) if project else None,
                name=name,
            )
            x = block(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="logits")(x)

    def residual_splits(self) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
        """MwT's kernel sets inside residual sums: (group, residual group, layers that produce it).

        ``conv2`` (with ``bn2``) and the projection (with ``proj_bn``) each get a group of their own,
        padded into the sum's group ``relu2`` by the index maps ``<group>_pad``
        (:func:`jaxmod.topology.split_residual_producers`).
        """
        out = []
        for name, _, _, _, project in self._plan():
            out.append((f"{name}/conv2", f"{name}/relu2", (f"{name}/conv2", f"{name}/bn2")))
            if project:
                out.append((f"{name}/proj_conv", f"{name}/relu2", (f"{name}/proj_conv", f"{name}/proj_bn")))
        return tuple(out)

    def topology_spec(self) -> TopologySpec:
        bias = not self.use_bn

        def out(path: str, bn: str) -> tuple[LeafAxis, ...]:
            return conv_out(path, bias=bias, bn=bn if self.use_bn else None)

        plan = self._plan()
        groups: list[UnitGroup] = []
        index_maps: list[IndexMapSpec] = []
        # consumers of each group: the next block's conv1 and, if it projects, its proj_conv
        consumers_of: dict[str, tuple[LeafAxis, ...]] = {}
        previous = "stem_relu"
        for name, _, _, _, project in plan:
            consumers = kernel_in(f"{name}/conv1") + (kernel_in(f"{name}/proj_conv") if project else ())
            consumers_of[previous] = consumers
            if not project:
                index_maps.append(IndexMapSpec(f"{name}/shortcut", source=previous, target=f"{name}/relu2"))
            previous = f"{name}/relu2"
        consumers_of[previous] = kernel_in("logits")

        groups.append(UnitGroup("stem_relu", out("stem_conv", "stem_bn"), consumers_of["stem_relu"]))
        for name, _, _, _, project in plan:
            groups.append(UnitGroup(f"{name}/relu1", out(f"{name}/conv1", f"{name}/bn1"), kernel_in(f"{name}/conv2")))
            producers = out(f"{name}/conv2", f"{name}/bn2")
            if project:
                producers += out(f"{name}/proj_conv", f"{name}/proj_bn")
            groups.append(UnitGroup(f"{name}/relu2", producers, consumers_of[f"{name}/relu2"]))
        return TopologySpec(tuple(groups), dense_out("logits"), tuple(index_maps))

"""The zoo's former hand-written unit topologies, kept to prove the derived ones equal them.

Before the zoo became plain Flax (its topology derived from the traced program, :mod:`jaxmod.graph`), every
zoo model declared its unit groups, index maps and MwT residual splits by hand. These are those declarations,
as functions of the plain module's fields; tests/test_graph.py checks the derivation against them.
"""

from __future__ import annotations

from jaxmod.models import MLP, VGG, LeNet5, MobileNet, RecurrentClassifier, ResNet
from jaxmod.models.layers import scaled
from jaxmod.topology import IndexMapSpec, LeafAxis, TopologySpec, UnitGroup, conv_out, dense_out, kernel_in


def mlp_spec(m: MLP) -> TopologySpec:
    layers = [f"fc{i}" for i in range(1, m.num_hidden + 1)]
    consumers = layers[1:] + ["logits"]
    groups = tuple(UnitGroup(f"{n}_relu", conv_out(n), kernel_in(c)) for n, c in zip(layers, consumers, strict=True))
    return TopologySpec(groups, dense_out("logits"))


def lenet_spec(m: LeNet5) -> TopologySpec:
    return TopologySpec(
        groups=(
            UnitGroup("conv1_relu", conv_out("conv1"), kernel_in("conv2")),
            UnitGroup("conv2_relu", conv_out("conv2"), kernel_in("fc1")),  # tiled over 5x5 positions
            UnitGroup("fc1_relu", conv_out("fc1"), kernel_in("fc2")),
            UnitGroup("fc2_relu", conv_out("fc2"), kernel_in("logits")),
        ),
        output=dense_out("logits"),
    )


def vgg_spec(m: VGG) -> TopologySpec:
    convs = [f"conv{i}" for i in range(1, sum(len(s) for s in m.stages) + 1)]
    fcs = [f"fc{j}" for j in range(1, len(m.classifier) + 1)]
    layers = convs + fcs
    consumers = layers[1:] + ["logits"]  # the last conv feeds fc1 (or logits) through the flatten
    groups = []
    for k, (layer, consumer) in enumerate(zip(layers, consumers, strict=True)):
        if k < len(convs):
            producers = conv_out(layer, bias=not m.use_bn, bn=f"bn{k + 1}" if m.use_bn else None)
        else:
            producers = conv_out(layer)
        groups.append(UnitGroup(f"{layer}_relu", producers, kernel_in(consumer)))
    return TopologySpec(tuple(groups), dense_out("logits"))


def resnet_plan(m: ResNet) -> list[tuple[str, bool]]:
    """(block name, projection) per block."""
    plan, in_width = [], scaled(m.stem_width, m.width_multiplier)
    for s, (n, width) in enumerate(zip(m.stage_sizes, m.stage_widths, strict=True), start=1):
        out_width = scaled(width, m.width_multiplier)
        for b in range(n):
            stride = 2 if (b == 0 and s > 1) else 1
            plan.append((f"stage{s}_block{b}", stride != 1 or in_width != out_width))
            in_width = out_width
    return plan


def resnet_spec(m: ResNet) -> TopologySpec:
    def out(path: str, bn: str) -> tuple[LeafAxis, ...]:
        return conv_out(path, bias=not m.use_bn, bn=bn if m.use_bn else None)

    plan = resnet_plan(m)
    index_maps, consumers_of, previous = [], {}, "stem_relu"
    for name, project in plan:
        consumers_of[previous] = kernel_in(f"{name}/conv1") + (kernel_in(f"{name}/proj_conv") if project else ())
        if not project:
            index_maps.append(IndexMapSpec(f"{name}/shortcut", source=previous, target=f"{name}/relu2"))
        previous = f"{name}/relu2"
    consumers_of[previous] = kernel_in("logits")
    groups = [UnitGroup("stem_relu", out("stem_conv", "stem_bn"), consumers_of["stem_relu"])]
    for name, project in plan:
        groups.append(UnitGroup(f"{name}/relu1", out(f"{name}/conv1", f"{name}/bn1"), kernel_in(f"{name}/conv2")))
        producers = out(f"{name}/conv2", f"{name}/bn2")
        if project:
            producers += out(f"{name}/proj_conv", f"{name}/proj_bn")
        groups.append(UnitGroup(f"{name}/relu2", producers, consumers_of[f"{name}/relu2"]))
    return TopologySpec(tuple(groups), dense_out("logits"), tuple(index_maps))


def resnet_splits(m: ResNet) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """MwT's kernel sets inside residual sums: (group, residual group, layers that produce it)."""
    out = []
    for name, project in resnet_plan(m):
        out.append((f"{name}/conv2", f"{name}/relu2", (f"{name}/conv2", f"{name}/bn2")))
        if project:
            out.append((f"{name}/proj_conv", f"{name}/relu2", (f"{name}/proj_conv", f"{name}/proj_bn")))
    return tuple(out)


def mobilenet_spec(m: MobileNet) -> TopologySpec:
    groups = [UnitGroup("stem_relu", conv_out("stem_conv", bias=False, bn="stem_bn"))]
    index_maps, previous, n = [], "stem_relu", len(m.blocks)
    for i in range(1, n + 1):
        name = f"block{i}"
        dw, pw = f"{name}/dw_relu", f"{name}/pw_relu"
        index_maps.append(IndexMapSpec(f"{name}/dw_in", source=previous, target=dw))
        groups.append(UnitGroup(dw, conv_out(f"{name}/dw_conv", bias=False, bn=f"{name}/dw_bn"),
                                kernel_in(f"{name}/pw_conv")))
        # the next block's depthwise conv reads this group through its index map, not a kernel axis
        groups.append(UnitGroup(pw, conv_out(f"{name}/pw_conv", bias=False, bn=f"{name}/pw_bn"),
                                kernel_in("logits") if i == n else ()))
        previous = pw
    return TopologySpec(tuple(groups), dense_out("logits"), tuple(index_maps))


def recurrent_spec(m: RecurrentClassifier) -> TopologySpec:
    """Hidden units of every layer: produced by its W, U and bias columns (every gate block, gate-major, so the
    kernel's last axis tiles the group), consumed by its own U rows and the next layer's W rows."""
    names = m.layer_names()
    groups = []
    for i, (name, group) in enumerate(zip(names, m.group_names(), strict=True)):
        producers = [LeafAxis((name, "kernel"), -1), LeafAxis((name, "recurrent_kernel"), -1),
                     LeafAxis((name, "bias"), 0)]
        if m.cell == "gru":
            producers.append(LeafAxis((name, "recurrent_bias"), 0))
        consumer = names[i + 1] if i + 1 < len(names) else "logits"
        consumers = (LeafAxis((name, "recurrent_kernel"), -2), *kernel_in(consumer))
        groups.append(UnitGroup(group, tuple(producers), consumers))
    return TopologySpec(tuple(groups), dense_out("logits"))


def hand_written_spec(module) -> TopologySpec:
    """The declaration the zoo module's class used to carry."""
    for cls, spec in ((MLP, mlp_spec), (LeNet5, lenet_spec), (VGG, vgg_spec), (ResNet, resnet_spec),
                      (MobileNet, mobilenet_spec), (RecurrentClassifier, recurrent_spec)):
        if isinstance(module, cls):
            return spec(module)
    raise TypeError(f"no hand-written topology for {type(module).__name__}")

"""Unit topology: which parameter axes belong to each hidden unit, and physical slicing.

A model declares a :class:`TopologySpec`: for each *unit group* (a hidden layer's units, named
as its activation tap), the parameter axes that produce those units (a kernel's output axis, a
bias, batch-norm statistics) and the axes that consume them (the next kernel's input axis, also
through a flatten). Units tied by a residual add are one group with several producers; where a
layer reads a group through an identity shortcut or a depthwise convolution, an
:class:`IndexMapSpec` says which group it reads and which it yields.

:func:`resolve_topology` fills in sizes from the model's shapes. From a resolved
:class:`Topology` and a choice of kept units (``keep``: group -> bool[units]) and classes:

* :func:`parameter_masks` gives the parameter-granularity mask a unit mask implies;
* :func:`slice_variables` gives a genuinely smaller variable tree and the widths to build the
  smaller model with, whose outputs equal the unit-masked full model's on the kept classes;
* :func:`unit_mask_variables` gives the ``unit_masks`` collection for that masked full model.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxmod.composed import ComposedModel, Provenance
from jaxmod.modules import ModuleSet, check_class_list
from jaxmod.taps import ACTIVATIONS, INDEX_MAPS, UNIT_MASKS

Path = tuple[str, ...]
LeafKey = tuple[str, Path]  # (collection, path inside it)
OUTPUT = "__output__"  # pseudo-group for the class axis of the output layer


@dataclasses.dataclass(frozen=True)
class LeafAxis:
    """One axis of one variable leaf that is indexed by a unit group (or by the classes).

    A flattened axis holds several positions per unit: ``inner`` consecutive entries belong to one
    unit (1 when units are the innermost factor, as NHWC channels after a flatten; H*W after an NCHW
    flatten), and the unit pattern repeats over the rest of the axis.
    """

    path: Path
    axis: int
    collection: str = "params"
    inner: int = 1

    @property
    def key(self) -> LeafKey:
        return (self.collection, self.path)


@dataclasses.dataclass(frozen=True)
class UnitGroup:
    """A hidden layer's units: the axes that produce them and the axes that consume them."""

    name: str
    producers: tuple[LeafAxis, ...]
    consumers: tuple[LeafAxis, ...] = ()


@dataclasses.dataclass(frozen=True)
class IndexMapSpec:
    """A layer reads group ``source`` and uses it as group ``target``'s units (same indices)."""

    name: str
    source: str
    target: str


@dataclasses.dataclass(frozen=True)
class TopologySpec:
    """What a model declares about its units; sizes come later from its shapes."""

    groups: tuple[UnitGroup, ...]
    output: tuple[LeafAxis, ...]
    index_maps: tuple[IndexMapSpec, ...] = ()


@dataclasses.dataclass(frozen=True)
class Topology:
    """A spec resolved against concrete shapes: group sizes and every indexed leaf's shape."""

    spec: TopologySpec
    sizes: Mapping[str, int]
    leaf_shapes: Mapping[LeafKey, tuple[int, ...]]
    num_classes: int
    input_shape: tuple[int, ...]
    variable_shapes: Mapping[LeafKey, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.spec.groups)

    def leaf_axes(self) -> dict[LeafKey, list[tuple[int, str, int]]]:
        """For every indexed leaf: (axis, group name or OUTPUT, inner) triples, axis made non-negative."""
        table: dict[LeafKey, list[tuple[int, str, int]]] = {}
        entries = [(la, g.name) for g in self.spec.groups for la in g.producers + g.consumers]
        entries += [(la, OUTPUT) for la in self.spec.output]
        for la, name in entries:
            ndim = len(self.leaf_shapes[la.key])
            table.setdefault(la.key, []).append((la.axis % ndim, name, la.inner))
        return table


# ---------------------------------------------------------------------------------------------
# Small constructors that keep model declarations short.


def conv_out(path: Path | str, *, bias: bool = True, bn: Path | str | None = None) -> tuple[LeafAxis, ...]:
    """Producer axes of a conv or dense layer (kernel axis -1, bias) and its optional batch norm."""
    path = _as_path(path)
    leaves = [LeafAxis(path + ("kernel",), -1)]
    if bias:
        leaves.append(LeafAxis(path + ("bias",), 0))
    if bn is not None:
        bn = _as_path(bn)
        leaves += [LeafAxis(bn + ("scale",), 0), LeafAxis(bn + ("bias",), 0)]
        leaves += [LeafAxis(bn + ("mean",), 0, "batch_stats"), LeafAxis(bn + ("var",), 0, "batch_stats")]
    return tuple(leaves)


def kernel_in(path: Path | str) -> tuple[LeafAxis, ...]:
    """Consumer axis of a conv (HWIO) or dense (in, out) kernel: axis -2."""
    return (LeafAxis(_as_path(path) + ("kernel",), -2),)


def dense_out(path: Path | str) -> tuple[LeafAxis, ...]:
    """The output layer's class axis: kernel axis -1 and bias."""
    return conv_out(path)


def _as_path(path: Path | str) -> Path:
    return tuple(path.split("/")) if isinstance(path, str) else tuple(path)


# ---------------------------------------------------------------------------------------------
# Resolution against shapes.


def model_label(model: Any) -> str:
    """The name messages give a model: its class, or the class of the model an adapted one runs."""
    source = getattr(model, "source", None)
    return source.name if source is not None and hasattr(source, "kind") else type(model).__name__


def is_adapted(model: Any) -> bool:
    """Whether ``model`` runs through :mod:`jaxmod.adapter` (its topology derived), not a tapped model."""
    return hasattr(model, "graph") and hasattr(model, "source")


def flat_activations(activations: Mapping[str, Any]) -> dict[str, jax.Array]:
    """The sown ``activations`` collection as {'a/b': array}."""
    return {k: v for k, v in traverse_util.flatten_dict(dict(activations), sep="/").items()}


def resolve_topology(model: nn.Module, input_shape: Sequence[int]) -> Topology:
    """Cached :func:`_resolve_topology`: a topology depends only on the model and input shape."""
    return _resolve_topology(model, tuple(int(d) for d in input_shape))


@functools.lru_cache(maxsize=64)
def _resolve_topology(model: nn.Module, input_shape: tuple[int, ...]) -> Topology:
    """The model's topology on inputs of ``input_shape``, each group sized: derived from the traced program of an
    adapted model (every zoo model and a user's, :mod:`jaxmod.adapter`), checked against the model's shapes.

    ``input_shape`` excludes the batch axis. ``TypeError`` for a model that is not adapted; ``ValueError`` when the
    topology does not match the model (a missing leaf, an axis whose length is not a multiple of its group's size,
    a read point without a group or a group without one).
    """
    if not is_adapted(model):
        raise TypeError(f"{model_label(model)} is not a jaxmod model: build it with jaxmod.models.create_model or "
                        "wrap it with jaxmod.adapt")
    spec = model.graph(input_shape=input_shape).spec
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))
    _, state = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros(x.shape, x.dtype), mutable=[ACTIVATIONS]), variables
    )
    acts = flat_activations(state[ACTIVATIONS])
    flat_vars = {
        (col, path): leaf.shape
        for col, tree in variables.items()
        for path, leaf in traverse_util.flatten_dict(dict(tree)).items()
    }
    names = [g.name for g in spec.groups]
    if sorted(names) != sorted(acts):
        raise ValueError(
            f"{model_label(model)}: declared unit groups {sorted(names)} do not match its "
            f"activation taps {sorted(acts)}"
        )
    sizes = {name: int(acts[name].shape[-1]) for name in names}
    num_classes = int(model.num_classes)
    leaf_shapes: dict[LeafKey, tuple[int, ...]] = {}
    checks = [(la, sizes[g.name], g.name) for g in spec.groups for la in g.producers + g.consumers]
    checks += [(la, num_classes, OUTPUT) for la in spec.output]
    for la, size, name in checks:
        if la.key not in flat_vars:
            raise ValueError(f"{model_label(model)}: group {name!r} names a missing leaf {la.key}")
        shape = flat_vars[la.key]
        if shape[la.axis] % size:
            raise ValueError(
                f"{model_label(model)}: leaf {la.key} axis {la.axis} has length {shape[la.axis]}, "
                f"not a multiple of group {name!r} size {size}"
            )
        leaf_shapes[la.key] = tuple(shape)
    for im in spec.index_maps:
        if im.source not in sizes or im.target not in sizes:
            raise ValueError(f"index map {im.name!r} names an unknown group")
    return Topology(spec, sizes, leaf_shapes, num_classes, tuple(int(d) for d in input_shape),
                    {k: tuple(v) for k, v in flat_vars.items()})


# ---------------------------------------------------------------------------------------------
# Checking a choice of units and classes.


def check_keep(topology: Topology, keep: Mapping[str, Any], rows: tuple[int, ...] = ()) -> None:
    """ValueError unless ``keep`` has a ``rows + (units,)`` array for every group (a vector by default)."""
    missing = set(topology.sizes) - set(keep)
    extra = set(keep) - set(topology.sizes)
    if missing or extra:
        raise ValueError(
            f"unit mask groups differ from the model's: missing {sorted(missing)}, unknown {sorted(extra)}"
        )
    for name, size in topology.sizes.items():
        shape = np.shape(keep[name])
        if shape != (*rows, size):
            raise ValueError(f"unit mask for {name!r} has shape {shape}, expected {(*rows, size)}")


def class_vector(topology: Topology, classes: Sequence[int] | np.ndarray) -> np.ndarray:
    """A bool[num_classes] vector from a list of class indices, validated."""
    vec = np.zeros(topology.num_classes, bool)
    vec[list(check_class_list(classes, range(topology.num_classes)))] = True
    return vec


def _axis_vector(topology: Topology, key: LeafKey, axis: int, name: str, keep, classes, xp, inner: int = 1):
    vec = classes if name == OUTPUT else keep[name]
    size = topology.num_classes if name == OUTPUT else topology.sizes[name]
    reps = topology.leaf_shapes[key][axis] // (size * inner)
    vec = xp.asarray(vec, bool)
    return xp.tile(xp.repeat(vec, inner) if inner > 1 else vec, reps)


# ---------------------------------------------------------------------------------------------
# Unit masks -> parameter masks, masked model, sliced model.


def parameter_masks(topology: Topology, keep: Mapping[str, Any], classes: Any, collection: str = "params") -> dict:
    """The parameter-granularity mask a unit mask implies: a nested dict of bool arrays.

    Only leaves the topology indexes appear (the jaxpruner convention: an absent leaf is kept
    whole). Works on jnp inputs under ``jit``/``vmap`` (e.g. vmapped over classes).
    """
    flat = {}
    for (col, path), axes in topology.leaf_axes().items():
        if col != collection:
            continue
        shape = topology.leaf_shapes[(col, path)]
        mask = jnp.ones(shape, bool)
        for axis, name, inner in axes:
            vec = _axis_vector(topology, (col, path), axis, name, keep, classes, jnp, inner)
            mask = mask & vec.reshape([-1 if a == axis else 1 for a in range(len(shape))])
        flat[path] = mask
    return traverse_util.unflatten_dict(flat)


def module_intersections(topology: Topology, unit_masks: Mapping[str, Any], collection: str = "params") -> np.ndarray:
    """``I[i, j]``: weights of ``collection`` kept by both class i's and class j's module.

    Module c keeps its units (``unit_masks[g][c]``) and logit c. A leaf's mask is an outer product of
    per-axis vectors, so the intersection of two modules on it is the product over its axes of the
    per-axis intersections: one ``K K^T`` Gram matrix per unit group, never a parameter mask per
    class (which for VGG16 and 100 classes would take gigabytes). Leaves no group indexes count whole.
    """
    c = topology.num_classes
    check_keep(topology, unit_masks, rows=(c,))
    grams = {}
    for g, m in unit_masks.items():
        k = np.asarray(m, np.int64)
        grams[g] = k @ k.T
    grams[OUTPUT] = np.eye(c, dtype=np.int64)
    table = topology.leaf_axes()
    total = np.zeros((c, c), np.int64)
    for (col, path), shape in topology.variable_shapes.items():
        if col != collection:
            continue
        axes = {axis: name for axis, name, _ in table.get((col, path), [])}
        inter = np.full((c, c), int(np.prod([d for a, d in enumerate(shape) if a not in axes], dtype=np.int64)))
        for axis, name in axes.items():
            size = c if name == OUTPUT else topology.sizes[name]
            inter = inter * grams[name] * (shape[axis] // size)
        total += inter
    return total


def unit_mask_variables(topology: Topology, keep: Mapping[str, Any]) -> dict:
    """The ``unit_masks`` collection that turns the full model into the unit-masked model."""
    flat = {tuple(name.split("/")): jax.device_put(np.asarray(keep[name], np.float32)) for name in topology.sizes}
    return {UNIT_MASKS: traverse_util.unflatten_dict(flat)}


@dataclasses.dataclass(frozen=True)
class SlicedModel(ComposedModel):
    """A physically smaller model: the module to call and its variables (with index maps); ``sliced(x)`` gives the
    logits of ``classes`` in that order (see :class:`jaxmod.composed.ComposedModel` for the input checks)."""

    model: nn.Module
    variables: dict
    classes: tuple[int, ...]
    provenance: Provenance | None = None

    def scores(self, x: jax.Array) -> jax.Array:
        return self.model.apply(self.variables, x)

    def _dataset_scores(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        from jaxmod.activations import predict_logits  # activations reads topology; resolve at call time

        return predict_logits(self.model, self.variables, x, batch_size)


def slice_variables(
    topology: Topology, variables: Mapping[str, Any], keep: Mapping[str, Any], classes: Sequence[int]
) -> tuple[dict, dict[str, int]]:
    """Cut every indexed leaf down to the kept units and classes; add the index maps.

    Returns the smaller variable tree and the widths (group -> kept units) to build the smaller
    model with; its outputs are the logits of ``classes`` in the order given. Raises
    ``ValueError`` when a group would keep no unit.
    """
    check_keep(topology, keep)
    class_order = np.asarray(check_class_list(classes, range(topology.num_classes)))
    keep_np = {k: np.asarray(v, bool) for k, v in keep.items()}
    empty = [name for name, vec in keep_np.items() if not vec.any()]
    if empty:
        raise ValueError(f"groups {empty} would keep no unit; a sliced model needs at least one per layer")
    table = topology.leaf_axes()
    out = {}
    for col, tree in variables.items():
        if col in (ACTIVATIONS, UNIT_MASKS, INDEX_MAPS):
            continue
        flat = traverse_util.flatten_dict(dict(tree))
        for path, leaf in flat.items():
            leaf = np.asarray(leaf)
            for axis, name, inner in table.get((col, path), []):
                if name == OUTPUT:  # the classes, in the order asked for
                    leaf = np.take(leaf, class_order, axis=axis)
                    continue
                vec = _axis_vector(topology, (col, path), axis, name, keep_np, None, np, inner)
                leaf = np.compress(vec, leaf, axis=axis)
            flat[path] = jax.device_put(leaf)
        out[col] = traverse_util.unflatten_dict(flat)
    maps = {}
    for im in topology.spec.index_maps:
        source_kept = np.flatnonzero(keep_np[im.source])
        position = np.full(topology.sizes[im.source], len(source_kept), np.int32)
        position[source_kept] = np.arange(len(source_kept), dtype=np.int32)
        maps[tuple(im.name.split("/"))] = jax.device_put(position[np.flatnonzero(keep_np[im.target])])
    if maps:
        out[INDEX_MAPS] = traverse_util.unflatten_dict(maps)
    widths = {name: int(vec.sum()) for name, vec in keep_np.items()}
    return out, widths


def slice_model(
    model: nn.Module, topology: Topology, variables: Mapping[str, Any], keep: Mapping[str, Any], classes: Sequence[int]
) -> SlicedModel:
    """The smaller model for ``classes`` keeping units ``keep``: same class, smaller widths."""
    sliced, widths = slice_variables(topology, variables, keep, classes)
    small = model.clone(widths=tuple(sorted(widths.items())), num_classes=len(classes))
    return SlicedModel(small, sliced, tuple(int(c) for c in classes))


def count_parameters(variables: Mapping[str, Any], collection: str = "params") -> int:
    """Number of scalar weights in one collection (the papers count biases and BN affine too)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(variables.get(collection, {}))))


# ---------------------------------------------------------------------------------------------
# Kernel sets inside residual sums (MwT's padding).


def split_residual_producers(topology: Topology, splits: Sequence[tuple[str, str, Sequence[str]]]) -> Topology:
    """A topology where some producers of a residual group become groups of their own.

    Each split ``(group, parent, layers)`` moves the parent group's producer axes whose leaf lies
    under one of ``layers`` (e.g. a block's ``conv2`` and ``bn2``) into a new group ``group`` of the
    parent's size, which the model reads through the index map ``<group>_pad`` (source ``group``,
    target ``parent``): a sliced model keeps only the split group's own kernels and zero-pads them to
    the residual sum's units, as MwT does. The parent keeps its consumers and index maps; a parent
    left without producers is fine (its units are the sum's). ``ValueError`` for an unknown parent,
    an existing group name or a layer that produces none of the parent's axes.
    """
    groups = {g.name: g for g in topology.spec.groups}
    new_groups = list(topology.spec.groups)
    sizes = dict(topology.sizes)
    maps = list(topology.spec.index_maps)
    for group, parent, layers in splits:
        if parent not in groups:
            raise ValueError(f"split {group!r}: unknown residual group {parent!r}")
        if group in sizes:
            raise ValueError(f"split {group!r}: a group of that name exists already")
        prefixes = [_as_path(layer) for layer in layers]
        index = next(i for i, g in enumerate(new_groups) if g.name == parent)
        current = new_groups[index]
        moved = tuple(la for la in current.producers if any(la.path[: len(p)] == p for p in prefixes))
        if not moved:
            raise ValueError(f"split {group!r}: layers {list(layers)} produce no axis of group {parent!r}")
        new_groups[index] = dataclasses.replace(current, producers=tuple(
            la for la in current.producers if la not in moved))
        new_groups.insert(index, UnitGroup(group, moved))
        sizes[group] = sizes[parent]
        maps.append(IndexMapSpec(f"{group}_pad", source=group, target=parent))
    spec = TopologySpec(tuple(new_groups), topology.spec.output, tuple(maps))
    return dataclasses.replace(topology, spec=spec, sizes=sizes)


def residual_split_topology(model: nn.Module, input_shape: Sequence[int], groups: Sequence[str]) -> Topology:
    """The model's topology with the residual producer splits (derived, :func:`jaxmod.graph.derive_graph`) that
    ``groups`` name applied: masks keyed by a split group (MwT's ``<block>/conv2:own``) index the split topology."""
    topology = resolve_topology(model, input_shape)
    named = set(groups)
    splits = [s for s in (model.residual_splits(tuple(input_shape)) if is_adapted(model) else ()) if s[0] in named]
    return split_residual_producers(topology, splits) if splits else topology


def topology_for_groups(model: nn.Module, input_shape: Sequence[int], groups: Sequence[str]) -> Topology:
    """The topology that unit masks of ``groups`` index: :func:`residual_split_topology`, without the groups that no
    mask names and no index map reads, which stay whole when masks are applied or sliced (a recurrent model's token
    embedding under Imtiaz et al.'s masks of its recurrent layers). Nothing is dropped when no group is named."""
    topology = residual_split_topology(model, input_shape, groups)
    named = set(groups)
    mapped = {name for m in topology.spec.index_maps for name in (m.source, m.target)}
    whole = {g.name for g in topology.spec.groups} - named - mapped
    if not whole or not named & set(topology.sizes):
        return topology
    spec = dataclasses.replace(topology.spec, groups=tuple(g for g in topology.spec.groups if g.name not in whole))
    return dataclasses.replace(topology, spec=spec, sizes={k: v for k, v in topology.sizes.items() if k not in whole})


def module_topology(model: nn.Module, modules: ModuleSet) -> Topology:
    """The unit topology the modules' unit masks index, read from their group names (MwT's
    kernel sets inside residual sums are groups of their own; groups no mask names stay whole)."""
    return topology_for_groups(model, modules.meta.input_shape, tuple(modules.units))

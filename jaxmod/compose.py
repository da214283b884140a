"""Composition: a model for any subset of classes from a module set, by merging or by voting.

Two ways, one call (:func:`compose`):

* **merge** (MODA's reuse without fine-tuning, and any unit-mask modules without a time axis): the
  chosen classes' unit masks are OR-ed layer by layer and the parameter tree is sliced, giving a
  physically smaller model (:class:`SlicedModel`) whose logits are the chosen classes', in order.
* **vote** (modules with a head, or masks that cannot be merged: positions, weights, unrolled recurrent
  units): each module runs with its own masks and head and scores "my class"; the composed prediction
  is the most confident module's class (:class:`VotingModel`). With node masks the voters' network drops the
  units no chosen module uses (:func:`used_units`), so it is physically smaller too.

Both return a callable ``composed(x) -> float[B, ..., k]`` over the chosen classes (logits, or the
modules' confidences), whose argmax is the composed prediction.
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

from jaxmod import fastconv
from jaxmod.checks import check_finite_tree
from jaxmod.composed import ComposedModel, Provenance
from jaxmod.models import create_model, model_config
from jaxmod.modules import ModuleSet, as_hashable, check_class_list, check_compatible, check_source
from jaxmod.running import apply_weight_mask, module_outputs, module_rows, one_module_output
from jaxmod.topology import (
    SlicedModel,
    Topology,
    model_label,
    module_topology,
    resolve_topology,
    slice_model,
    slice_variables,
)

HOW = ("merge", "vote")


def build_model(modules: ModuleSet) -> nn.Module:
    """The full model the modules were decomposed from, rebuilt from their metadata (zoo models)."""
    meta = modules.meta
    if meta.model_name is None:
        raise ValueError("the modules come from a model the zoo does not build; pass it as model=...")
    return create_model(meta.model_name, meta.num_classes, **as_hashable(dict(meta.model_config)))


@functools.lru_cache(maxsize=64)
def _param_shapes(model: nn.Module, input_shape: tuple[int, ...], dtype: str) -> dict:
    sample = jnp.zeros((1, *input_shape), dtype)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), sample, train=False))
    return {k: v.shape for k, v in traverse_util.flatten_dict(dict(expected.get("params", {}))).items()}


def check_variables_fit(model: nn.Module, variables: Mapping[str, Any], input_shape: Sequence[int],
                        dtype: str = "float32") -> None:
    """``ValueError`` when ``variables`` are not shaped like ``model``'s (another configuration)."""
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError("variables must be a mapping of collections that includes 'params'")
    want = _param_shapes(model, tuple(int(d) for d in input_shape), dtype)
    have = {k: np.shape(v) for k, v in traverse_util.flatten_dict(dict(variables["params"])).items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()), key=str)[:4]
        raise ValueError(f"the variables do not fit {model_label(model)} {model_config(model)}: e.g. {diff}")


def source_model(modules: ModuleSet, variables: Mapping[str, Any], model: nn.Module | None = None) -> nn.Module:
    """The model the modules run on, checked against their metadata and ``variables`` before any work."""
    modules.validate()
    meta = modules.meta
    full = build_model(modules) if model is None else model
    if model is not None:
        check_compatible(meta, model_name=meta.model_name, model_config=model_config(model),
                         input_shape=meta.input_shape, num_classes=int(model.num_classes))
        if meta.model_name is not None and type(model) is not type(build_model(modules)):
            raise ValueError(f"modules come from a {model_label(build_model(modules))}, not a {model_label(model)}")
    check_variables_fit(full, variables, meta.input_shape, meta.input_dtype)
    check_finite_tree(variables, "the variables")
    check_source(modules, variables)
    return full


def how_modules_compose(modules: ModuleSet) -> str:
    """``"vote"`` for modules with a head or masks that do not slice, else ``"merge"``."""
    if modules.votes or modules.granularity != "units" or modules.time_axis:
        return "vote"
    return "merge"


@dataclasses.dataclass(frozen=True)
class VotingModel(ComposedModel):
    """Modules of ``classes`` that vote: ``model`` with ``variables`` (weights outside the union of the
    modules' weight masks zeroed: the deployed subnetwork), run once per module with its own masks and head.

    ``voter(x)`` gives ``float[B, ..., k]``: module i's confidence that each sample (step) is ``classes[i]``.
    """

    model: nn.Module
    variables: Mapping[str, Any]
    modules: ModuleSet
    classes: tuple[int, ...]
    provenance: Provenance | None = None

    def scores(self, x: jax.Array) -> jax.Array:
        return _vote_fn(self.model)(dict(self.variables), module_rows(self.modules),
                                    jnp.asarray(self.classes, jnp.int32), jnp.asarray(x))

    def confidences(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """``float[k, N, ...]`` over a whole dataset, in one jitted scan."""
        return module_outputs(self.model, self.variables, self.modules, x, batch_size=batch_size)

    def _dataset_scores(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        return np.moveaxis(self.confidences(x, batch_size), 0, -1)


@functools.lru_cache(maxsize=64)
def _vote_fn(model: nn.Module):
    @jax.jit
    @fastconv.fast_convs
    def run(variables, rows, classes, x):
        conf = jax.vmap(lambda m, c: one_module_output(model, variables, m, c, x))(rows, classes)
        return jnp.moveaxis(conf, 0, -1)

    return run


def compose(modules: ModuleSet, variables: Mapping[str, Any], classes: Sequence[int], *, how: str | None = None,
            model: nn.Module | None = None) -> SlicedModel | VotingModel:
    """A model for ``classes`` from ``modules`` of the model whose ``variables`` they were decomposed from.

    ``how``: ``"merge"`` (slice the union of unit masks: a smaller model), ``"vote"`` (the modules vote), or
    ``None`` for the modules' own way (:func:`how_modules_compose`: voting for modules with a head or masks
    that cannot be sliced). ``model``, when given, must be the model the modules came from (required for a
    model outside the zoo). ``ValueError`` before any work for modules of another model, variables of
    another model or another training run, or an unknown, repeated or empty class list.
    """
    if how not in (None, *HOW):
        raise ValueError(f"how must be one of {HOW} or None, got {how!r}")
    full = source_model(modules, variables, model)
    classes = check_class_list(classes, modules.meta.classes)
    how = how or how_modules_compose(modules)
    if how == "merge":
        if modules.granularity != "units" or modules.time_axis:
            raise ValueError(f"merging slices unit masks without a time axis; these modules have "
                             f"{modules.granularity}{' with a time axis' if modules.time_axis else ''}: vote instead")
        topology = module_topology(full, modules)
        unsliceable = sorted(set(modules.units) - set(topology.sizes))
        if unsliceable:
            raise ValueError(f"merging slices the model's unit groups; these modules also mask {unsliceable}, which "
                             "slicing cannot remove (e.g. single gate units): vote instead")
        sliced = slice_model(full, topology, variables, modules.union(classes), classes)
        return dataclasses.replace(sliced, provenance=Provenance(modules.select(classes), variables, how))
    chosen = modules.select(classes)
    deployed = dict(variables)
    if chosen.weights is not None:
        deployed["params"] = apply_weight_mask(variables["params"], modules.union(classes))
    voter, deployed, voting = _sliced_for_voting(full, chosen, deployed)
    return VotingModel(voter, deployed, voting, classes, Provenance(chosen, variables, how))


def used_units(modules: ModuleSet, topology: Topology) -> dict[str, np.ndarray]:
    """Per group, ``bool[units]``: whether some module of the set uses the unit. With node masks (Pan and Rajan), a
    unit is used when a module keeps one of its positions; with weight masks (supermasks), when a module keeps one
    of the weights that read it (a unit none of whose outgoing weights is kept reaches nothing). A group that an
    identity shortcut carries (an index map) is used whole: its units reach the sum without a kernel."""
    if modules.positions is not None:
        return {g: np.asarray(m).reshape(-1, np.shape(m)[-1]).any(axis=0) for g, m in modules.positions.items()}
    if modules.weights is None:
        raise ValueError(f"used_units reads node or weight masks; these modules have {modules.granularity}")
    weights = {k: np.asarray(v).any(axis=0)  # over modules; a leaf the method does not mask is None
               for k, v in traverse_util.flatten_dict(dict(modules.weights)).items() if v is not None}
    shortcut = {name for m in topology.spec.index_maps for name in (m.source, m.target)}
    out = {}
    for group in topology.spec.groups:
        size = topology.sizes[group.name]
        used = np.full(size, group.name in shortcut or not group.consumers)
        for axis in group.consumers:
            mask = weights.get(axis.path) if axis.collection == "params" else None
            if mask is None:  # a consumer left unmasked reads every unit
                used[:] = True
                continue
            along = np.moveaxis(mask, axis.axis, 0).reshape(mask.shape[axis.axis], -1).any(axis=1)
            used |= along.reshape(-1, size, axis.inner).any(axis=(0, 2))
        out[group.name] = used
    return out


def _sliced_for_voting(full: nn.Module, chosen: ModuleSet, deployed: dict) -> tuple[nn.Module, dict, ModuleSet]:
    """For node-mask modules, the voters' network without the units no chosen module uses (:func:`used_units`),
    every class kept (the heads read them all), and the masks cut to match: each module's output is unchanged, since
    a dropped unit is zero in every one of them. The full network where nothing can go, for weight masks and for
    masks with a time axis."""
    if chosen.granularity != "positions" or chosen.time_axis:  # weight masks: see BUILD_NOTES (open point)
        return full, deployed, chosen
    topology = resolve_topology(full, chosen.meta.input_shape)
    used = used_units(chosen, topology)
    if set(used) != set(topology.sizes) or all(u.all() for u in used.values()):
        return full, deployed, chosen
    keep = {g: u if u.any() else np.arange(len(u)) == 0 for g, u in used.items()}  # a layer keeps one unit at least
    every = tuple(range(topology.num_classes))
    sliced = slice_model(full, topology, deployed, keep, every)
    changes: dict[str, Any] = {}
    if chosen.positions is not None:
        changes["positions"] = {g: np.asarray(m)[..., keep[g]] for g, m in chosen.positions.items()}
    if chosen.weights is not None:  # weight masks are cut like the parameters they mask
        flat = traverse_util.flatten_dict(dict(chosen.weights))
        cut = _cut_rows({("params", *k): v for k, v in flat.items() if v is not None}, topology, keep, every)
        changes["weights"] = traverse_util.unflatten_dict({k: cut.get(("params", *k), v) for k, v in flat.items()})
    if chosen.state is not None:  # per-module variable collections, e.g. batch statistics
        changes["state"] = traverse_util.unflatten_dict(
            _cut_rows(traverse_util.flatten_dict(dict(chosen.state)), topology, keep, every))
    return sliced.model, sliced.variables, chosen.replace(**changes)


def _cut_rows(stacked: Mapping[tuple, Any], topology: Topology, keep: Mapping[str, np.ndarray],
              classes: Sequence[int]) -> dict[tuple, np.ndarray]:
    """Leaves stacked over modules (flat keys ``(collection, *path)``), each module's row cut to the kept units as
    :func:`jaxmod.topology.slice_variables` cuts variables, and stacked again."""
    num = len(next(iter(stacked.values()))) if stacked else 0
    rows = [traverse_util.flatten_dict(slice_variables(
        topology, traverse_util.unflatten_dict({k: np.asarray(v)[i] for k, v in stacked.items()}), keep, classes)[0])
        for i in range(num)]
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in stacked}

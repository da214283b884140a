"""Module sizes, overlaps and Jaccard indices: how much of a model each module keeps and how modules share it.

One implementation for every granularity. Everything is read from one matrix ``I[i, j]``, the elements kept
by both module i and module j (the diagonal is each module's size), and the total the sizes are fractions of:

* unit masks count the model's **weights** (MODA's module size: a module keeps the weights between its kept
  units and its class's logit), through the unit topology (:func:`jaxmod.topology.module_intersections`);
* position masks count the **nodes** they cover (Pan and Rajan: dense units and conv-map positions);
* weight masks count the **maskable weights** they cover (Kingetsu et al.: every kernel).

A module is a subset of its model, so its module-versus-model Jaccard index (Pan and Rajan's and Imtiaz et
al.'s measure) equals its size over the same elements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from jaxmod import masks as mask_algebra
from jaxmod.modules import ModuleSet
from jaxmod.topology import Topology, module_intersections, module_topology, topology_for_groups

UNITS = {"units": "weights", "positions": "nodes", "weights": "maskable weights"}


def summarize(inter: np.ndarray, total: int) -> dict[str, Any]:
    """Sizes, pairwise overlaps and Jaccard indices (matrices and their means over modules or pairs i != j),
    and two-module union sizes (``pair_union[i, j] = |A_i | A_j| / total``), from ``I[i, j] = |A_i & A_j|``."""
    inter = np.asarray(inter, np.int64)
    stats = mask_algebra.statistics_from_intersections(inter, total)
    sizes = np.diag(inter)
    pair_union = (sizes[:, None] + sizes[None, :] - inter) / total
    upper = pair_union[np.triu_indices(len(sizes), 1)]
    nan = float("nan")
    return {
        **stats,
        "pair_union": pair_union,
        "mean_size": float(np.mean(stats["sizes"])),
        "mean_overlap": mask_algebra.mean_off_diagonal(stats["overlap"]),
        "mean_jaccard": mask_algebra.mean_off_diagonal(stats["jaccard"]),
        "two_class_union_mean": float(np.mean(upper)) if upper.size else nan,
        "two_class_union_min": float(np.min(upper)) if upper.size else nan,
        "two_class_union_max": float(np.max(upper)) if upper.size else nan,
    }


def element_statistics(stacked: Any) -> dict[str, Any]:
    """:func:`summarize` over the elements a stacked mask tree covers (``None`` leaves not counted)."""
    leaves = [leaf for leaf in jax.tree.leaves(stacked) if leaf is not None]
    if not leaves:
        raise ValueError("no mask leaves to measure")
    total = sum(int(np.prod(np.shape(leaf)[1:])) for leaf in leaves)
    return summarize(mask_algebra.pairwise_intersections(stacked), total)


def unit_statistics(topology: Topology, units: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`summarize` over the model's weights that unit masks ``{group: bool[num_classes, units]}`` keep."""
    total = int(sum(np.size(v) for v in jax.tree.leaves(params)))
    return summarize(module_intersections(topology, units), total)


def module_statistics(modules: ModuleSet, variables: Mapping[str, Any], model: Any = None) -> dict[str, Any]:
    """Sizes, overlaps and Jaccard indices of a module set, counted as its granularity's papers count them
    (see the module docstring; ``counted`` names the elements). ``model`` is needed for unit masks."""
    kind = modules.granularity
    if kind == "units":
        if model is None:
            raise ValueError("unit-mask statistics count weights through the model's topology: pass the model")
        if modules.time_axis:
            raise ValueError("unrolled (per-timestep) unit masks have no single weight count; "
                             "use jaxmod.approaches.rnn.module_model_jaccard")
        topology = module_topology(model, modules)
        stats = unit_statistics(topology, modules.units, variables["params"])
    else:
        stats = element_statistics(modules.masks)
    return {**stats, "counted": UNITS[kind]}


def weight_statistics(modules: ModuleSet, variables: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """Sizes, overlaps and Jaccard indices of any module set counted in the model's weights, the one unit in
    which methods compare: unit masks as :func:`module_statistics` counts them; node masks through the units they
    use (a unit with a kept node keeps its weights, as a kept unit does); weight masks weight by weight, the
    parameters they do not mask (biases, norms) kept whole."""
    kind = modules.granularity
    if kind == "units":
        return module_statistics(modules, variables, model)
    if kind == "positions":
        units = {g: np.asarray(m).reshape(np.shape(m)[0], -1, np.shape(m)[-1]).any(axis=1)
                 for g, m in modules.positions.items()}
        topology = topology_for_groups(model, modules.meta.input_shape, tuple(units))
        return {**unit_statistics(topology, units, variables["params"]), "counted": "weights"}
    masks = traverse_util.flatten_dict(dict(modules.weights))
    stacked = {k: np.asarray(masks[k]) if masks.get(k) is not None else np.ones((modules.num_modules, *np.shape(v)),
                                                                                 bool)
               for k, v in traverse_util.flatten_dict(dict(variables["params"])).items()}
    return {**element_statistics(traverse_util.unflatten_dict(stacked)), "counted": "weights"}


def union_size(modules: ModuleSet, classes: Sequence[int]) -> float:
    """The fraction of the covered elements (nodes, maskable weights) that the union of ``classes``' modules
    keeps: a voting composition's size. (A merged composition is a sliced model: count its parameters.)"""
    if modules.granularity == "units":
        raise ValueError("merged unit modules are a sliced model: its size is its parameter count over the model's")
    union = jax.tree.map(lambda m: np.asarray(m)[None], modules.union(classes))
    return float(element_statistics(union)["sizes"][0])


def module_model_jaccard(stacked: Any) -> np.ndarray:
    """Per module, |module & model| / |module | model| over the elements its masks cover: the kept fraction."""
    return element_statistics(stacked)["sizes"]

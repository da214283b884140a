"""Composition: a physically smaller model for any subset of classes, from a module set.

Unit-granularity modules from one model are merged by OR-ing the chosen classes' unit masks
layer by layer and slicing the parameter tree (MODA's reuse without fine-tuning); the result
outputs logits for the chosen classes only, in the order given.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxmod.models import create_model, model_config
from jaxmod.modules import ModuleSet, as_hashable, check_compatible
from jaxmod.topology import SlicedModel, check_class_list, resolve_topology, slice_model


def build_model(modules: ModuleSet) -> nn.Module:
    """The full model the modules were decomposed from, rebuilt from their metadata."""
    meta = modules.metadata
    return create_model(meta.model_name, meta.num_classes, **as_hashable(dict(meta.model_config)))


@functools.lru_cache(maxsize=64)
def _param_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))
    return {k: v.shape for k, v in traverse_util.flatten_dict(dict(expected.get("params", {}))).items()}


def check_variables_fit(model: nn.Module, variables: Mapping[str, Any], input_shape: Sequence[int]) -> None:
    """``ValueError`` when ``variables`` are not shaped like ``model``'s (another configuration)."""
    want = _param_shapes(model, tuple(int(d) for d in input_shape))
    have = {k: np.shape(v) for k, v in traverse_util.flatten_dict(dict(variables.get("params", {}))).items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()), key=str)[:4]
        raise ValueError(f"the variables do not fit {type(model).__name__} {model_config(model)}: e.g. {diff}")


def compose(modules: ModuleSet, variables: Mapping[str, Any], classes: Sequence[int], *,
            model: nn.Module | None = None, model_name: str | None = None) -> SlicedModel:
    """A sliced model for ``classes`` from unit-granularity ``modules`` of the model ``variables`` hold.

    ``model``/``model_name``, when given, must be the model the modules came from; a different
    name or configuration raises ``ValueError`` before any work.
    """
    meta = modules.metadata
    if meta.granularity != "unit":
        raise ValueError(f"merging by slicing needs unit-granularity modules, these are {meta.granularity!r}")
    classes = check_class_list(classes, meta.classes)
    if model is not None or model_name is not None:
        check_compatible(meta, model_name=model_name or meta.model_name,
                         model_config=model_config(model) if model is not None else meta.model_config,
                         input_shape=meta.input_shape, num_classes=getattr(model, "num_classes", meta.num_classes))
    full = build_model(modules)
    if model is not None and type(model) is not type(full):
        raise ValueError(f"modules come from a {type(full).__name__}, not a {type(model).__name__}")
    check_variables_fit(full, variables, meta.input_shape)
    topology = resolve_topology(full, meta.input_shape)
    return slice_model(full, topology, variables, modules.union(classes), classes)


def sample_subtasks(num_classes: int, count: int, *, min_size: int = 2, max_size: int = 9,
                    seed: int = 0) -> list[tuple[int, ...]]:
    """``count`` distinct random sub-tasks (sorted class tuples) of ``min_size``..``max_size`` classes."""
    max_size = min(max_size, num_classes)
    if not 1 <= min_size <= max_size:
        raise ValueError(f"sub-task sizes must satisfy 1 <= min_size <= max_size <= {num_classes}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    seen: dict[tuple[int, ...], None] = {}
    for _ in range(100 * count):
        size = int(rng.integers(min_size, max_size + 1))
        seen.setdefault(tuple(sorted(int(c) for c in rng.choice(num_classes, size, replace=False))), None)
        if len(seen) == count:
            return list(seen)
    raise ValueError(f"could not draw {count} distinct sub-tasks of {min_size}..{max_size} of {num_classes} classes")


def subtask_samples(y: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the samples of ``classes`` and their labels as positions in ``classes``."""
    y = np.asarray(y)
    classes = check_class_list(classes, None)
    if y.size == 0 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError("labels must be a non-empty array of non-negative integers")
    lookup = np.full(max(int(y.max()), max(classes)) + 1, -1, np.int64)
    lookup[list(classes)] = np.arange(len(classes))
    index = np.flatnonzero(lookup[y] >= 0)
    if len(index) == 0:
        raise ValueError(f"no samples of classes {list(classes)}")
    return index, lookup[y[index]].astype(np.int32)

"""Reuse: sub-tasks of a model's classes, modules of several models voting together, and how composed
models compare with the standard model restricted to the same classes.

The papers measure reuse the same way: a composed model for a subset of classes is scored on the test
samples of those classes (labels renumbered to positions in the subset), beside the standard model whose
prediction is restricted to the same classes (the argmax over their logits only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmod.modules import ModuleMeta, ModuleSet, check_class_list
from jaxmod.running import module_outputs
from jaxmod.voting import voting_accuracy


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


def restricted_accuracy(logits: np.ndarray, y: np.ndarray, classes: Sequence[int]) -> float:
    """Accuracy of a full model restricted to ``classes`` (argmax over their logits) on their samples."""
    index, labels = subtask_samples(y, classes)
    return float(np.mean(np.argmax(np.asarray(logits)[index][:, list(classes)], axis=1) == labels))


def voted_accuracy(confidences: np.ndarray, y: np.ndarray, classes: Sequence[int]) -> dict[str, float]:
    """Top-1 and top-5 accuracy of the modules of ``classes`` voting on the samples of those classes.

    ``confidences`` is ``float[C, N]`` for every class's module (row c = class c); labels outside
    ``classes`` are dropped.
    """
    classes = [int(c) for c in classes]
    index, labels = subtask_samples(y, classes)
    conf = np.asarray(confidences)[np.asarray(classes)][:, index]
    k5 = min(5, len(classes))
    return {"top1": voting_accuracy(conf, labels), "top5": voting_accuracy(conf, labels, k=k5)}


def check_same_inputs(metas: Sequence[ModuleMeta]) -> None:
    """``ValueError`` when modules of models that read their inputs differently (another input shape, dtype
    or token vocabulary) would be composed together. Architecture, depth and width may differ: each set
    runs with its own model's weights."""
    if not metas:
        raise ValueError("no modules to compose")
    first = metas[0]
    for meta in metas[1:]:
        diffs = [f"{k}: {getattr(first, k)!r} vs {getattr(meta, k)!r}"
                 for k in ("input_shape", "input_dtype", "input_vocab") if getattr(first, k) != getattr(meta, k)]
        if diffs:
            raise ValueError("modules come from models with different inputs: " + "; ".join(diffs))


def cross_model_confidences(module_sets: Sequence[ModuleSet], variables: Sequence[Mapping[str, Any]],
                            x: np.ndarray, models: Sequence[Any] | None = None,
                            batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Modules of one or several trained models voting on the same inputs (e.g. modules reused from another
    model of the same task). Checks first, before any work, that the sets read the same inputs and give
    outputs of the same shape (one per sample, or one per output step of the same length); then every set's
    modules run on ``x`` with their own model's weights. Returns the stacked confidences ``[sum M, N, ...]``
    and the class of each row, ready for :mod:`jaxmod.voting`."""
    from jaxmod.compose import source_model  # compose imports reuse's neighbours; resolve at call time

    check_same_inputs([s.meta for s in module_sets])
    if len(variables) != len(module_sets):
        raise ValueError(f"{len(module_sets)} module sets need as many variable trees, got {len(variables)}")
    models = list(models) if models is not None else [None] * len(module_sets)
    built = [source_model(s, v, m) for s, v, m in zip(module_sets, variables, models, strict=True)]
    sample = jax.ShapeDtypeStruct((1, *module_sets[0].meta.input_shape), jnp.dtype(module_sets[0].meta.input_dtype))
    shapes = {jax.eval_shape(lambda v, xb, m=m: m.apply(v, xb), dict(v), sample).shape[1:-1]
              for m, v in zip(built, variables, strict=True)}
    if len(shapes) > 1:
        raise ValueError(f"modules with outputs of different shapes {sorted(shapes)} (one per sample, or one per "
                         "output step) cannot be stacked for voting; score them apart")
    outputs = [module_outputs(m, v, s, x, batch_size=batch_size)
               for m, s, v in zip(built, module_sets, variables, strict=True)]
    labels = np.concatenate([np.asarray(s.meta.classes) for s in module_sets])
    return np.concatenate(outputs), labels

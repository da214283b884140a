"""The front door of a composed model: checked inputs, its class order, evaluation on original labels, orbax.

:func:`jaxmod.compose.compose` returns a merged (:class:`jaxmod.topology.SlicedModel`) or a voting
(:class:`jaxmod.compose.VotingModel`) model; both are :class:`ComposedModel`\\ s. Called on a batch, a composed
model first checks it against what the modules were decomposed on (trailing shape, dtype, finite values and,
where the run recorded it, the range the training normalisation gives), so raw ``uint8`` pixels or a missing
channel axis are refused with a message instead of a shape error deep inside Flax. ``predict`` answers in the
original class ids, ``evaluate`` takes the original labels, and ``save``/:func:`load_composed` store the chosen
modules with their source variables through orbax (loading composes them again, so a loaded model is the saved
one exactly).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxmod.checks import check_finite
from jaxmod.modules import ModuleSet

COMPOSED_KEY = "composed"  # metadata of a saved composed model: {"how": ..., "classes": [...]}


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What a composed model was made of: the chosen modules (in class order), their source variables, how."""

    modules: ModuleSet
    variables: Mapping[str, Any]
    how: str


class ComposedModel:
    """Shared behaviour of merged and voting composed models (subclasses define ``classes``, ``provenance`` and
    :meth:`scores`)."""

    classes: tuple[int, ...]
    provenance: Provenance | None

    def scores(self, x: Any) -> jax.Array:
        """The model's outputs for a batch already checked: ``[B, ..., k]`` over ``classes`` (argmax decides)."""
        raise NotImplementedError

    def __call__(self, x: Any) -> jax.Array:
        self.check_input(x)
        return self.scores(x)

    def check_input(self, x: Any) -> None:
        """``ValueError`` naming what is wrong with a batch for this model: shape, dtype, non-finite values, or
        values far outside the range the modules' training data had (e.g. unnormalised pixels)."""
        shape = tuple(np.shape(x))
        if self.provenance is None:
            check_finite(x, "the input")
            return
        meta = self.provenance.modules.meta
        if len(shape) < 2 or shape[1:] != tuple(meta.input_shape):
            single = " (a single sample? add the batch axis)" if shape == meta.input_shape else ""
            raise ValueError(f"expected a batch of inputs of shape (N, {', '.join(map(str, meta.input_shape))}), "
                             f"got {shape}{single}")
        dtype = np.asarray(x).dtype
        wants_int = np.issubdtype(np.dtype(meta.input_dtype), np.integer)
        if wants_int != np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            hint = ""
            normalization = meta.extra.get("input_normalization")
            if not wants_int and normalization:
                hint = (f"; the model was trained on float inputs normalised as (x / 255 - mean) / std with "
                        f"mean {normalization['mean']} and std {normalization['std']}")
            raise ValueError(f"inputs of dtype {dtype} do not fit modules decomposed on {meta.input_dtype} "
                             f"inputs{hint}")
        check_finite(x, "the input")
        span = meta.extra.get("input_range")
        if span and not wants_int and span[1] > span[0]:  # a constant training input says nothing of the range
            lo, hi = float(span[0]), float(span[1])
            width = max(hi - lo, 1.0)
            low, high = float(np.min(x)), float(np.max(x))
            if low < lo - width or high > hi + width:
                raise ValueError(f"input values span [{low:.3g}, {high:.3g}], far outside the [{lo:.3g}, {hi:.3g}] the "
                                 "modules' training data had: normalise them as the training data were")

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """The composed prediction of every sample (output step) in original class ids."""
        self.check_input(x)
        return np.asarray(self.classes)[np.argmax(self._dataset_scores(np.asarray(x), batch_size), axis=-1)]

    def evaluate(self, x: Any, y: Any, batch_size: int = 256) -> dict[str, Any]:
        """Top-1 and top-5 accuracy on the samples of ``y`` (original labels) that belong to the model's classes;
        samples of other classes are left out (their count is reported)."""
        from jaxmod.reuse import subtask_samples  # reuse builds on compose; resolve at call time

        self.check_input(x)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"labels must be (N,) for {len(x)} samples, got shape {y.shape}")
        index, labels = subtask_samples(y, self.classes)
        scores = self._dataset_scores(np.asarray(x)[index], batch_size)
        rank = np.sum(scores > np.take_along_axis(scores, labels[:, None], axis=1), axis=1)
        return {"top1": float(np.mean(rank < 1)), "top5": float(np.mean(rank < min(5, len(self.classes)))),
                "samples": int(len(index)), "left_out": int(len(y) - len(index))}

    def _dataset_scores(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        raise NotImplementedError

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Save through orbax: the chosen modules with their source variables and how they compose."""
        from jaxmod.checkpoint import save_modules

        if self.provenance is None:
            raise ValueError("this composed model was not made by jaxmod.compose.compose; it has no modules to save")
        p = self.provenance
        save_modules(directory, p.modules, p.variables, overwrite=overwrite,
                     extra={COMPOSED_KEY: {"how": p.how, "classes": list(self.classes)}})


def load_composed(directory: str | os.PathLike) -> ComposedModel:
    """A composed model saved by :meth:`ComposedModel.save`, composed again from its modules."""
    from jaxmod.checkpoint import read_modules_extra, restore_modules
    from jaxmod.compose import compose

    modules, variables = restore_modules(directory)
    saved = read_modules_extra(directory).get(COMPOSED_KEY)
    if not isinstance(saved, Mapping) or "how" not in saved:
        raise ValueError(f"{directory} holds a module set, not a composed model; use jaxmod.compose.compose on it")
    return compose(modules, variables, saved["classes"], how=saved["how"])

"""The module set: what every approach's decomposition produces, in one type.

A :class:`ModuleSet` holds one module per class as a mask pytree plus the metadata composition
checks before it uses the modules (same model, configuration, input shape and classes).

Mask granularity:

* ``"unit"``: ``{group: bool[num_modules, units]}`` over the model's unit groups (MODA, MwT,
  Pan & Rajan, Imtiaz et al.; an unrolled RNN adds a time axis);
* ``"weight"``: a pytree shaped like ``params`` with a leading module axis (supermasks);
* ``"position"``: masks over conv output positions, applied to activations (Pan & Rajan's CNN method).

Some methods give each module parameters of its own besides the shared, masked ones (Pan & Rajan's
channeled output layer, the supermask grafting layer): those go in ``heads``, a pytree whose leaves
also carry a leading module axis.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

import jaxmod
from jaxmod.masks import union_rows
from jaxmod.topology import check_class_list

GRANULARITIES = ("unit", "weight", "position")


@dataclasses.dataclass(frozen=True)
class ModuleMetadata:
    """Where modules come from. Composition refuses modules whose metadata does not match."""

    approach: str
    model_name: str
    model_config: Mapping[str, Any]
    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    classes: tuple[int, ...]
    granularity: str = "unit"
    library_version: str = jaxmod.__version__
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Stored as JSON: keep the JSON form so that a restored set compares equal to the saved one.
        object.__setattr__(self, "model_config", json_normal(self.model_config))
        object.__setattr__(self, "extra", json_normal(self.extra))
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if not self.classes:
            raise ValueError("a module set needs at least one class")
        bad = [c for c in self.classes if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"module classes {bad} are outside 0..{self.num_classes - 1}")

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["classes"] = list(self.classes)
        out["model_config"] = dict(self.model_config)
        out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModuleMetadata:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"module metadata has unknown fields {sorted(unknown)}")
        data = dict(data)
        data["input_shape"] = tuple(int(d) for d in data["input_shape"])
        data["classes"] = tuple(int(c) for c in data["classes"])
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class ModuleSet:
    """One module per class in ``metadata.classes``: row ``i`` of every mask leaf is module ``i``."""

    masks: Mapping[str, Any]
    metadata: ModuleMetadata
    heads: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        for what, tree in (("mask", self.masks), ("head", self.heads or {})):
            rows = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(tree)}
            if what == "mask" and not rows:
                raise ValueError("a module set needs at least one mask leaf")
            if rows and rows != {len(self.metadata.classes)}:
                raise ValueError(
                    f"{what} leaves have leading sizes {sorted(rows, key=str)}, expected one row per class "
                    f"({len(self.metadata.classes)})"
                )

    def row(self, cls: int) -> int:
        """Position of class ``cls``'s module in the mask leaves."""
        if cls not in self.metadata.classes:
            raise ValueError(f"no module for class {cls}; modules exist for {list(self.metadata.classes)}")
        return self.metadata.classes.index(cls)

    def module(self, cls: int) -> Any:
        """The mask pytree of one class's module."""
        i = self.row(cls)
        return jax.tree.map(lambda m: m[i], self.masks)

    def head(self, cls: int) -> Any:
        """The module-specific parameters of one class's module (``None`` if the method has none)."""
        i = self.row(cls)
        return None if self.heads is None else jax.tree.map(lambda h: h[i], self.heads)

    def union(self, classes: Sequence[int]) -> Any:
        """The OR of the chosen classes' modules: what a composed model for them must keep."""
        rows = [self.row(c) for c in check_class_list(classes, self.metadata.classes)]
        return union_rows(self.masks, rows)


def module_set(masks: Mapping[str, Any], *, approach: str, model_name: str, model: Any, dataset: str,
               input_shape: Sequence[int], granularity: str = "unit", extra: Mapping[str, Any] | None = None,
               heads: Mapping[str, Any] | None = None) -> ModuleSet:
    """A module set for every class of ``model`` (built as ``create_model(model_name, ...)``)."""
    from jaxmod.models import model_config  # models do not depend on modules; keep it that way

    meta = ModuleMetadata(approach=approach, model_name=model_name, model_config=model_config(model),
                          dataset=dataset, input_shape=tuple(int(d) for d in input_shape),
                          num_classes=int(model.num_classes), classes=tuple(range(int(model.num_classes))),
                          granularity=granularity, extra=dict(extra or {}))
    return ModuleSet(masks, meta, heads)


def json_normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists); ``ValueError`` if not JSON-able."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"not JSON-serialisable: {value!r} ({err})") from err


def as_hashable(value: Any) -> Any:
    """Lists (from JSON) back to tuples, so a config can rebuild a hashable Flax module."""
    if isinstance(value, list):
        return tuple(as_hashable(v) for v in value)
    if isinstance(value, dict):
        return {k: as_hashable(v) for k, v in value.items()}
    return value


def check_compatible(metadata: ModuleMetadata, *, model_name: str, model_config: Mapping[str, Any],
                     input_shape: Sequence[int], num_classes: int) -> None:
    """``ValueError`` naming the difference when modules do not belong to the given model."""
    expected = {
        "model_name": model_name,
        "model_config": json_normal(dict(model_config)),
        "input_shape": tuple(int(d) for d in input_shape),
        "num_classes": int(num_classes),
    }
    actual = {
        "model_name": metadata.model_name,
        "model_config": dict(metadata.model_config),
        "input_shape": tuple(metadata.input_shape),
        "num_classes": metadata.num_classes,
    }
    diffs = [f"{k}: modules have {actual[k]!r}, model has {expected[k]!r}"
             for k in expected if actual[k] != expected[k]]
    if diffs:
        raise ValueError("modules come from a different model: " + "; ".join(diffs))

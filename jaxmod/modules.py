"""The module set: what every approach's decomposition produces, in one pytree type.

A :class:`ModuleSet` holds one module per class (row ``i`` of every leaf is the module of
``meta.classes[i]``) and passes through ``jax.jit``, ``jax.vmap``, ``jax.tree.map`` and orbax. Its
masks come in one of three granularities, each with one convention for every method; the
granularity is read from which field is set, never from a free label:

* ``units``: ``{group: bool[M, units]}`` keyed by the model's unit groups ('/'-joined paths), the
  last axis the group's units. An unrolled recurrent module adds a time axis, ``bool[M, T, units]``;
  recurrent gate masks are unit masks of the gate group ``<layer>_gates``, ``bool[M, (T,) G, units]``.
  MODA, MwT, Imtiaz et al. and the random control.
* ``weights``: a tree shaped like ``params``; masked leaves ``bool[M, *leaf]``, untouched leaves
  ``None`` (the jaxpruner convention). Kingetsu et al.'s supermasks.
* ``positions``: ``{group: bool[M, *node_shape]}``, one entry per node of an activation (a conv map's
  ``(H, W, C)``, a dense layer's ``(units,)``). Pan and Rajan.

Per-module parameters follow one convention too. ``head`` is a dense layer on the model's logits,
``{"kernel": [M, C, 2], "bias": [M, 2]}``, whose column 1 scores "my class" and column 0 "another
class" (Pan and Rajan's and Imtiaz et al.'s channeling, Kingetsu et al.'s grafting layer); modules
with a head vote. ``state`` holds per-module variable collections that replace the model's (the
supermask modules' own batch-norm statistics, ``{"batch_stats": [M, ...]}``).

``meta`` (static) says where the modules come from: the approach and its configuration, the model
(zoo name and configuration), its input shape and dtype, the classes, and a fingerprint of the
exact variables they were decomposed from, which composition checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

import jaxmod

FORMAT_VERSION = 2
GRANULARITIES = ("units", "weights", "positions")
POSITIVE = 1  # head column that scores "my class"


# ---------------------------------------------------------------------------------------------
# Metadata


def json_normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists); ``ValueError`` if not JSON-able."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, default=_numpy_scalar))
    except (TypeError, ValueError) as err:
        raise ValueError(f"not JSON-serialisable: {value!r} ({err})") from err


def _numpy_scalar(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON data")


def as_hashable(value: Any) -> Any:
    """Lists (from JSON) back to tuples, so a config can rebuild a hashable Flax module."""
    if isinstance(value, list):
        return tuple(as_hashable(v) for v in value)
    if isinstance(value, dict):
        return {k: as_hashable(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True, eq=False)
class ModuleMeta:
    """Where a module set comes from; static (hashable) so a :class:`ModuleSet` can cross ``jit``."""

    approach: str
    model_name: str | None
    model_config: Mapping[str, Any]
    input_shape: tuple[int, ...]
    num_classes: int
    classes: tuple[int, ...]
    input_dtype: str = "float32"
    input_vocab: str = ""
    approach_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = ""
    source: str = ""
    library_version: str = jaxmod.__version__
    format_version: int = FORMAT_VERSION
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Stored as JSON: keep the JSON form so that a restored set compares equal to the saved one.
        for name in ("model_config", "approach_config", "extra"):
            object.__setattr__(self, name, json_normal(dict(getattr(self, name))))
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        if not self.classes:
            raise ValueError("a module set needs at least one class")
        bad = [c for c in self.classes if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"module classes {bad} are outside 0..{self.num_classes - 1}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"module classes {list(self.classes)} repeat a class")

    def to_json(self) -> dict[str, Any]:
        return json_normal(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModuleMeta:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"module metadata has unknown fields {sorted(unknown)}")
        return cls(**dict(data))

    def _key(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModuleMeta) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def replace(self, **changes: Any) -> ModuleMeta:
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# The module set


@dataclasses.dataclass(frozen=True)
class ModuleSet:
    """One module per class in ``meta.classes``; see the module docstring for the conventions."""

    units: Mapping[str, Any] | None = None
    weights: Mapping[str, Any] | None = None
    positions: Mapping[str, Any] | None = None
    head: Mapping[str, Any] | None = None
    state: Mapping[str, Any] | None = None
    meta: ModuleMeta | None = dataclasses.field(default=None, metadata={"static": True})

    @property
    def masks(self) -> Mapping[str, Any]:
        """The mask tree of the set's granularity."""
        return getattr(self, self.granularity)

    @property
    def granularity(self) -> str:
        """``"units"``, ``"weights"`` or ``"positions"``: the one mask field that is set."""
        present = [g for g in GRANULARITIES if getattr(self, g) is not None]
        if len(present) != 1:
            raise ValueError(f"a module set holds exactly one kind of mask ({', '.join(GRANULARITIES)}), "
                             f"this one holds {present or 'none'}")
        return present[0]

    @property
    def classes(self) -> tuple[int, ...]:
        return self.meta.classes

    @property
    def num_modules(self) -> int:
        return len(self.meta.classes)

    @property
    def votes(self) -> bool:
        """Modules with a head score "my class or not" and compose by voting; the others merge."""
        return self.head is not None

    @property
    def time_axis(self) -> bool:
        """Whether unit masks carry a time axis (unrolled recurrent modules): they cannot be sliced."""
        return self.granularity == "units" and any(np.ndim(v) > 2 for v in self.units.values())

    def row(self, cls: int) -> int:
        """Position of class ``cls``'s module along the leading axis."""
        if cls not in self.meta.classes:
            raise ValueError(f"no module for class {cls}; modules exist for {list(self.meta.classes)}")
        return self.meta.classes.index(cls)

    def rows(self, classes: Iterable[int]) -> list[int]:
        return [self.row(c) for c in check_class_list(classes, self.meta.classes)]

    def select(self, classes: Iterable[int]) -> ModuleSet:
        """The modules of ``classes`` (in that order) as a module set of their own."""
        rows = np.asarray(self.rows(classes))
        picked = jax.tree.map(lambda leaf: leaf[rows], self._data())
        return ModuleSet(**picked, meta=self.meta.replace(classes=tuple(self.meta.classes[i] for i in rows)))

    def union(self, classes: Iterable[int]) -> Mapping[str, Any]:
        """The OR of the chosen classes' masks: what a composed model for them must keep."""
        rows = jnp.asarray(self.rows(classes))
        return jax.tree.map(lambda m: jnp.any(jnp.asarray(m)[rows], axis=0), self.masks)

    def replace(self, **changes: Any) -> ModuleSet:
        return dataclasses.replace(self, **changes)

    def with_meta(self, **changes: Any) -> ModuleSet:
        """The same modules with metadata fields changed (e.g. ``dataset``, ``extra``)."""
        return dataclasses.replace(self, meta=self.meta.replace(**changes))

    def _data(self) -> dict[str, Any]:
        return {g: getattr(self, g) for g in (*GRANULARITIES, "head", "state")}

    def validate(self) -> ModuleSet:
        """``ValueError`` naming the problem unless the set keeps its conventions; returns it."""
        if self.meta is None:
            raise ValueError("a module set needs its metadata (ModuleMeta)")
        kind = self.granularity
        masks = jax.tree.leaves(self.masks)
        if not masks:
            raise ValueError(f"the module set's {kind} hold no mask")
        for path, leaf in jax.tree_util.tree_leaves_with_path(self.masks):
            where = f"{kind}{jax.tree_util.keystr(path)}"
            if np.asarray(leaf).dtype != np.bool_:
                raise ValueError(f"{where} has dtype {np.asarray(leaf).dtype}; masks must be boolean "
                                 "(True keeps, False removes)")
        m = self.num_modules
        for what in (kind, "head", "state"):
            for path, leaf in jax.tree_util.tree_leaves_with_path(getattr(self, what)):
                if np.ndim(leaf) == 0 or np.shape(leaf)[0] != m:
                    raise ValueError(f"{what}{jax.tree_util.keystr(path)} has shape {np.shape(leaf)}; every leaf "
                                     f"needs one row per module ({m})")
        if self.head is not None:
            kernel, bias = self.head.get("kernel"), self.head.get("bias")
            want = (m, self.meta.num_classes, 2)
            if set(self.head) != {"kernel", "bias"} or np.shape(kernel) != want or np.shape(bias) != (m, 2):
                raise ValueError(f"head must be {{'kernel': {want}, 'bias': {(m, 2)}}}, got "
                                 f"{ {k: np.shape(v) for k, v in self.head.items()} }")
        return self


jax.tree_util.register_dataclass(ModuleSet, data_fields=[*GRANULARITIES, "head", "state"], meta_fields=["meta"])


@dataclasses.dataclass(frozen=True)
class Decomposition:
    """What an approach's ``decompose`` returns: the modules, and the statistics they were read from
    (activation rates, kernel frequencies, training curves: diagnostics, not part of the modules)."""

    modules: ModuleSet
    statistics: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Building module sets


def fingerprint(variables: Mapping[str, Any]) -> str:
    """SHA-256 over a model's variables (paths, shapes, dtypes, bytes): which trained model exactly."""
    digest = hashlib.sha256()
    flat = traverse_util.flatten_dict(dict(variables))
    for path in sorted(flat, key=lambda p: tuple(map(str, p))):
        array = np.ascontiguousarray(np.asarray(flat[path]))
        digest.update(f"{'/'.join(map(str, path))}:{array.shape}:{array.dtype};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def data_fingerprint(*arrays: Any) -> str:
    """SHA-256 over arrays (shapes, dtypes, bytes): which data exactly, so a resumed run cannot switch datasets."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{array.shape}:{array.dtype};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def describe_model(model: Any) -> tuple[str | None, dict[str, Any]]:
    """The zoo name (``None`` for a model the zoo does not build) and configuration of ``model``."""
    from jaxmod.models import model_config, model_name  # models do not depend on modules; keep it that way

    return model_name(model), model_config(model)


def module_set(approach: Any, model: Any, variables: Mapping[str, Any], x: Any, *, units: Any = None,
               weights: Any = None, positions: Any = None, head: Any = None, state: Any = None,
               classes: Sequence[int] | None = None, extra: Mapping[str, Any] | None = None) -> ModuleSet:
    """A validated module set of ``approach`` decomposed from ``model`` with ``variables``.

    ``x`` holds the samples decomposed from (or one ``jax.ShapeDtypeStruct``); its trailing shape and dtype become
    the set's input spec, and for float inputs its value range (``extra["input_range"]``), which composed models
    check their inputs against. ``classes`` defaults to every class of the model. Masks must be boolean.
    """
    for kind, tree in (("units", units), ("weights", weights), ("positions", positions)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            if np.asarray(leaf).dtype != np.bool_:
                raise ValueError(f"{kind}{jax.tree_util.keystr(path)} has dtype {np.asarray(leaf).dtype}; masks "
                                 "must be boolean (True keeps, False removes)")
    extra = dict(extra or {})
    if isinstance(x, (np.ndarray, jax.Array)) and np.issubdtype(x.dtype, np.floating) and np.size(x):
        extra.setdefault("input_range", [float(np.min(x)), float(np.max(x))])
    name, config = describe_model(model)
    num_classes = int(model.num_classes)
    meta = ModuleMeta(
        approach=approach.name, approach_config=approach.config(), model_name=name, model_config=config,
        input_shape=tuple(np.shape(x)[1:]),
        input_dtype=str(jax.dtypes.canonicalize_dtype(np.dtype(getattr(x, "dtype", np.float32)))),
        num_classes=num_classes, classes=tuple(range(num_classes)) if classes is None else tuple(classes),
        source=fingerprint(variables), extra=extra)
    as_bool = lambda tree: None if tree is None else jax.tree.map(lambda m: np.asarray(m, bool), tree)  # noqa: E731
    modules = ModuleSet(units=as_bool(units), weights=as_bool(weights), positions=as_bool(positions),
                        head=head, state=state, meta=meta)
    return modules.validate()


def combine(sets: Sequence[ModuleSet]) -> ModuleSet:
    """The modules of several sets as one set, rows in order: sets decomposed from the same trained model
    by the same approach and configuration, each for other classes (e.g. supermask modules co-trained for
    class subsets). ``ValueError`` for sets of other models, other runs or configurations, or a class twice."""
    if not sets:
        raise ValueError("no module sets to combine")
    for i, s in enumerate(sets):
        if not isinstance(s, ModuleSet):
            raise TypeError(f"module set {i} is a {type(s).__name__}, not a ModuleSet")
        s.validate()
    first = sets[0]
    for i, s in enumerate(sets[1:], start=1):
        if s.meta.replace(classes=first.meta.classes) != first.meta:
            theirs, ours = s.meta.to_json(), first.meta.to_json()
            diffs = sorted(k for k in ours if k != "classes" and ours[k] != theirs[k])
            raise ValueError(f"module sets 0 and {i} come from different decompositions (they differ in {diffs}); "
                             "only modules of one trained model, approach and configuration combine")
        if jax.tree.structure(s._data()) != jax.tree.structure(first._data()):
            raise ValueError(f"module sets 0 and {i} hold different kinds of masks or per-module parts")
    classes = [c for s in sets for c in s.meta.classes]
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:
        raise ValueError(f"classes {twice} have modules in more than one module set")
    data = jax.tree.map(lambda *leaves: np.concatenate([np.asarray(a) for a in leaves]), *[s._data() for s in sets])
    return ModuleSet(**data, meta=first.meta.replace(classes=tuple(classes)))


# ---------------------------------------------------------------------------------------------
# Checks


def check_class_list(classes: Any, available: Sequence[int] | None) -> tuple[int, ...]:
    """The class list as a tuple of ints; ``ValueError`` if empty, not integers, repeated or unknown.

    ``available=None`` accepts any non-negative class. A string is refused (``"358"`` is not [3, 5, 8]).
    """
    if isinstance(classes, (str, bytes)):
        raise ValueError(f"classes must be a sequence of integers, got the string {classes!r}")
    values = np.asarray(list(classes) if not isinstance(classes, np.ndarray) else classes).reshape(-1)
    if values.size == 0:
        raise ValueError("the class list is empty")
    if values.dtype == np.bool_ or not (np.issubdtype(values.dtype, np.integer) or (
            np.issubdtype(values.dtype, np.floating) and np.all(np.mod(values, 1) == 0))):
        raise ValueError(f"class labels must be integers, got {values.tolist()}")
    out = tuple(int(c) for c in values)
    if len(set(out)) != len(out):
        raise ValueError(f"the class list {list(out)} repeats a class")
    if available is None:
        unknown = [c for c in out if c < 0]
    else:
        known = set(int(a) for a in available)
        unknown = [c for c in out if c not in known]
    if unknown:
        known_text = "non-negative integers" if available is None else list(available)
        raise ValueError(f"unknown classes {unknown}: available classes are {known_text}")
    return out


def check_compatible(meta: ModuleMeta, *, model_name: str | None, model_config: Mapping[str, Any],
                     input_shape: Sequence[int], num_classes: int) -> None:
    """``ValueError`` naming the difference when modules do not belong to the given model."""
    expected = {"model_name": model_name, "model_config": json_normal(dict(model_config)),
                "input_shape": tuple(int(d) for d in input_shape), "num_classes": int(num_classes)}
    actual = {"model_name": meta.model_name, "model_config": dict(meta.model_config),
              "input_shape": tuple(meta.input_shape), "num_classes": meta.num_classes}
    diffs = [f"{k}: modules have {actual[k]!r}, model has {expected[k]!r}"
             for k in expected if actual[k] != expected[k]]
    if diffs:
        raise ValueError("modules come from a different model: " + "; ".join(diffs))


def check_source(modules: ModuleSet, variables: Mapping[str, Any]) -> None:
    """``ValueError`` unless ``variables`` are the exact variables the modules were decomposed from."""
    if modules.meta.source and fingerprint(variables) != modules.meta.source:
        raise ValueError("the variables are not the model these modules were decomposed from (their fingerprint "
                         "differs); pass the variables saved with the modules")

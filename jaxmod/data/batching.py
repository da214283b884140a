"""Minibatching of in-memory numpy arrays, deterministic per seed so runs (and resumed runs) are reproducible."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator

import numpy as np


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def num_batches(n: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Number of batches `batch_iterator` yields for `n` examples (for progress bars and LR schedules)."""
    _check_batch_size(batch_size)
    if not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)


def epoch_seed(seed: int, epoch: int) -> int:
    """Shuffle seed for `epoch` of a run seeded with `seed`: a pure function of both.

    A run resumed at epoch k therefore shuffles exactly as an uninterrupted run does, without saving
    any RNG state. Mixed through `np.random.SeedSequence`, so neighbouring (seed, epoch) pairs give
    unrelated orders.
    """
    for label, value in (("seed", seed), ("epoch", epoch)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{label} must be a non-negative integer, got {value!r}")
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint32)[0])


def batch_iterator(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield `(x_batch, y_batch)` covering every example once (minus the remainder if `drop_remainder`).

    With `shuffle_seed`, the order is `np.random.default_rng(shuffle_seed).permutation(n)`: the same seed
    always gives the same batches. Without it, batches are in order (views, no copies).
    Arguments are checked when this is called, not when iteration starts.
    """
    _check_batch_size(batch_size)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    return _batches(x, y, batch_size, shuffle_seed, drop_remainder)


def _batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None, drop_remainder: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    n = len(x)
    order = None if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
    for b in range(num_batches(n, batch_size, drop_remainder)):
        start, stop = b * batch_size, min((b + 1) * batch_size, n)
        if order is None:
            yield x[start:stop], y[start:stop]
        else:
            idx = order[start:stop]
            yield x[idx], y[idx]

"""Measured latency: the wall-clock time of jitted forward passes, compared side by side.

FLOPs say how much arithmetic a composed model saves; latency says what a user waits. Each forward is jitted
and warmed up (compiled) first, then the candidates run in interleaved rounds so that machine noise hits all of
them alike, and the median of the rounds is reported. Times are of the backend jax runs on.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np


def interleaved_latency(forwards: Mapping[str, Callable[[jax.Array], Any]], x: jax.Array, *,
                        repeats: int = 20) -> dict[str, float]:
    """Median milliseconds of each ``forwards[name](x)`` (each jitted here), over ``repeats`` interleaved rounds."""
    if not forwards:
        raise ValueError("no forward passes to time")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    jitted = {name: jax.jit(fn) for name, fn in forwards.items()}
    for fn in jitted.values():  # compile and warm up
        jax.block_until_ready(fn(x))
    times: dict[str, list[float]] = {name: [] for name in jitted}
    for _ in range(repeats):
        for name, fn in jitted.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(x))
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def latency_comparison(full: Callable[[jax.Array], Any], composed: Callable[[jax.Array], Any],
                       input_shape: Sequence[int], *, batch_sizes: Sequence[int] = (1, 256), repeats: int = 20,
                       dtype: Any = np.float32) -> dict[str, float]:
    """Full and composed forward latency (ms) at each batch size and their ratio (composed / full).

    Keys: ``full_ms_batch_B``, ``composed_ms_batch_B``, ``ratio_batch_B`` for each ``B`` in ``batch_sizes``.
    The input is zeros of ``(B, *input_shape)``: latency of these dense models does not depend on the values.
    """
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    out: dict[str, float] = {}
    for batch in batch_sizes:
        x = jax.numpy.zeros((batch, *input_shape), dtype)
        ms = interleaved_latency({"full": full, "composed": composed}, x, repeats=repeats)
        out[f"full_ms_batch_{batch}"] = ms["full"]
        out[f"composed_ms_batch_{batch}"] = ms["composed"]
        out[f"ratio_batch_{batch}"] = ms["composed"] / ms["full"]
    return out

"""Measured latency: interleaved medians of jitted forwards, and bad settings refused before any work."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxmod.metrics import latency


def test_a_slower_forward_measures_slower():
    def fast(x):
        return x + 1.0

    def slow(x):  # 40 chained matmuls of a 256x256 matrix
        def body(_, h):
            return jnp.tanh(h @ jnp.ones((256, 256)) / 256.0)
        return jax.lax.fori_loop(0, 40, body, x)

    out = latency.latency_comparison(fast, slow, (256,), batch_sizes=(64,), repeats=5)
    assert set(out) == {"full_ms_batch_64", "composed_ms_batch_64", "ratio_batch_64"}
    assert out["composed_ms_batch_64"] > out["full_ms_batch_64"]
    assert out["ratio_batch_64"] == pytest.approx(out["composed_ms_batch_64"] / out["full_ms_batch_64"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="repeats"):
        latency.interleaved_latency({"f": jnp.sum}, jnp.ones(2), repeats=0)
    with pytest.raises(ValueError, match="no forward"):
        latency.interleaved_latency({}, jnp.ones(2))
    with pytest.raises(ValueError, match="batch_sizes"):
        latency.latency_comparison(jnp.sum, jnp.sum, (2,), batch_sizes=(0,))

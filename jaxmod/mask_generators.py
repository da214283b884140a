"""MwT's relevant-kernel recognition: one mask generator per masked conv layer.

A generator reads the conv layer's *input*, averages it over space to ``(B, C_in)``, and maps it
through ``Dense(C_in -> h, no bias) - ReLU - Dense(h -> C_out, bias 1.0)`` to a per-sample channel
mask ``relu(tanh(.))`` in ``[0, 1)`` (``h = C_out`` if ``C_out < 128`` else ``C_out // 2``; Kaiming-normal
kernels), as the MwT reference code builds it. The model multiplies its conv (+ BN) output by the
mask before the activation. The adapter (:class:`jaxmod.adapter.Adapted`) attaches one at each MwT gate the
derivation finds (every conv but the first, :func:`jaxmod.graph.derive_graph`) when the model has
``mask_generators=True``; a model needs no edit for it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch.nn.init.kaiming_normal_ defaults: fan_in, gain sqrt(2), untruncated normal.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def hidden_width(features: int) -> int:
    """The generator's hidden width: ``features`` below 128 channels, half of it from 128 on."""
    return features if features < 128 else features // 2


class MaskGenerator(nn.Module):
    """Per-sample channel mask ``(B, features)`` in ``[0, 1)`` from a layer input ``(B, ..., C_in)``."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = jnp.mean(x, axis=tuple(range(1, x.ndim - 1))) if x.ndim > 2 else x
        h = nn.relu(nn.Dense(hidden_width(self.features), use_bias=False, kernel_init=kaiming_normal,
                             name="dense1")(pooled))
        logits = nn.Dense(self.features, kernel_init=kaiming_normal, bias_init=nn.initializers.constant(1.0),
                          name="dense2")(h)
        return nn.relu(jnp.tanh(logits))

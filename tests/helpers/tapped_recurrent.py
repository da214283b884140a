"""The reference for removing recurrent units: the zoo's former tapped recurrent model, which applied Imtiaz et al.'s
rule inside its own cell (kept here to prove the adapter's loop masks equal it, tests/test_loops.py).

Before the zoo's recurrent models became plain Flax, each cell read its masks itself: at a step where unit ``n`` is
removed, its pre-activations in every gate block are zeroed (its columns of W, U and the biases), ``h_prev * keep``
drops its row of U, and the consumers read ``h * keep``; a gate mask zeroes single gate units' pre-activations. The
model sowed its hidden states under ``activations``. Same parameters as the zoo model (a subclass of it).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmod.models.recurrent import ACTIVATION_FNS, RecurrentClassifier, RecurrentLayer, gate_group, num_gates


def masked_step(cell, activation, params, x_t, h_prev, c_prev, block_keep, unit_keep):
    act = ACTIVATION_FNS[activation]
    g, u = block_keep.shape
    keep = block_keep.reshape(g * u)
    h_read = h_prev * unit_keep
    if cell == "gru":
        a = ((x_t @ params["kernel"]) + params["bias"]) * keep
        r_in = ((h_read @ params["recurrent_kernel"]) + params["recurrent_bias"]) * keep
        a, r_in = a.reshape(-1, g, u), r_in.reshape(-1, g, u)
        z = jax.nn.sigmoid(a[:, 0] + r_in[:, 0])
        r = jax.nn.sigmoid(a[:, 1] + r_in[:, 1])
        n = act(a[:, 2] + r * r_in[:, 2])
        h = z * h_prev + (1.0 - z) * n
        return h, h
    s = (((x_t @ params["kernel"]) + (h_read @ params["recurrent_kernel"]) + params["bias"]) * keep).reshape(-1, g, u)
    if cell == "vanilla":
        h = act(s[:, 0])
        return h, h
    i, f, gg, o = jax.nn.sigmoid(s[:, 0]), jax.nn.sigmoid(s[:, 1]), act(s[:, 2]), jax.nn.sigmoid(s[:, 3])
    c = f * c_prev + i * gg
    return o * act(c), c


class TappedRecurrentLayer(RecurrentLayer):
    @nn.compact
    def __call__(self, xs, step_valid, unit_keep, block_keep):
        width = num_gates(self.cell) * self.units
        params = {"kernel": self.param("kernel", nn.initializers.glorot_uniform(), (xs.shape[-1], width)),
                  "recurrent_kernel": self.param("recurrent_kernel", nn.initializers.orthogonal(), (self.units, width)),
                  "bias": self.param("bias", nn.initializers.zeros, (width,))}
        if self.cell == "gru":
            params["recurrent_bias"] = self.param("recurrent_bias", nn.initializers.zeros, (width,))
        zeros = jnp.zeros((xs.shape[0], self.units), xs.dtype)

        def step(carry, inputs):
            h_prev, c_prev = carry
            x_t, valid, keep_t, block_t = inputs
            h, c = masked_step(self.cell, self.activation, params, x_t, h_prev, c_prev, block_t, keep_t)
            h, c = jnp.where(valid[:, None], h, h_prev), jnp.where(valid[:, None], c, c_prev)
            return (h, c), h * keep_t

        inputs = (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(step_valid, 0, 1), unit_keep, block_keep)
        _, hs = jax.lax.scan(step, (zeros, zeros), inputs)
        return jnp.swapaxes(hs, 0, 1)


class TappedRecurrentClassifier(RecurrentClassifier):
    """The zoo model with its masks read inside the cell (``unit_masks/rnnK_h``, ``unit_masks/rnnK_gates``) and its
    hidden states sown under ``activations``."""

    def _layer(self, index, xs, step_valid):
        name, group = self.layer_names()[index], self.group_names()[index]
        steps, g = xs.shape[1], num_gates(self.cell)
        unit_keep = jnp.ones((steps, self.units))
        block_keep = jnp.ones((steps, g, self.units))
        if self.has_variable("unit_masks", group):
            unit_keep = jnp.broadcast_to(self.get_variable("unit_masks", group).astype(jnp.float32), unit_keep.shape)
        if self.has_variable("unit_masks", gate_group(group)):
            mask = self.get_variable("unit_masks", gate_group(group)).astype(jnp.float32)
            block_keep = jnp.broadcast_to(mask, block_keep.shape)
        hs = TappedRecurrentLayer(self.cell, self.units, self.activation, name=name)(
            xs, step_valid, unit_keep, block_keep * unit_keep[:, None, :])
        self.sow("activations", group, hs, init_fn=lambda: None, reduce_fn=lambda _, v: v)
        return hs[:, -1] if self.returns_last_step_only(index) else hs

"""A recurrent classifier as a user writes it in plain Flax (no jaxmod import): Keras-layout cells in a ``lax.scan``.

The same parameters (names, shapes, gate-major layout ``[gate 0 | gate 1 | ...]``) and equations as the zoo's
:class:`jaxmod.models.recurrent.RecurrentClassifier` (Vanilla, LSTM ``i f g o``, GRU ``z r n`` with two biases), with
nothing for jaxmod inside: it sows each layer's hidden states ``(B, T, units)`` as ``rnnK_h`` and carries the state
over padded token steps. Its derived topology must equal the zoo model's hand-written one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

GATES = {"vanilla": 1, "lstm": 4, "gru": 3}


def cell(kind: str, params: dict, x_t: jax.Array, h: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    units = h.shape[-1]
    if kind == "gru":
        a = (x_t @ params["kernel"] + params["bias"]).reshape(-1, 3, units)
        u = (h @ params["recurrent_kernel"] + params["recurrent_bias"]).reshape(-1, 3, units)
        z = jax.nn.sigmoid(a[:, 0] + u[:, 0])
        r = jax.nn.sigmoid(a[:, 1] + u[:, 1])
        n = jnp.tanh(a[:, 2] + r * u[:, 2])
        h = z * h + (1.0 - z) * n
        return h, h
    s = (x_t @ params["kernel"] + h @ params["recurrent_kernel"] + params["bias"]).reshape(-1, GATES[kind], units)
    if kind == "vanilla":
        h = jnp.tanh(s[:, 0])
        return h, h
    i, f, g, o = jax.nn.sigmoid(s[:, 0]), jax.nn.sigmoid(s[:, 1]), jnp.tanh(s[:, 2]), jax.nn.sigmoid(s[:, 3])
    c = f * c + i * g
    return o * jnp.tanh(c), c


class Recurrent(nn.Module):
    kind: str
    units: int

    @nn.compact
    def __call__(self, xs: jax.Array, valid: jax.Array) -> jax.Array:
        width = GATES[self.kind] * self.units
        params = {"kernel": self.param("kernel", nn.initializers.glorot_uniform(), (xs.shape[-1], width)),
                  "recurrent_kernel": self.param("recurrent_kernel", nn.initializers.orthogonal(),
                                                 (self.units, width)),
                  "bias": self.param("bias", nn.initializers.zeros, (width,))}
        if self.kind == "gru":
            params["recurrent_bias"] = self.param("recurrent_bias", nn.initializers.zeros, (width,))

        def step(carry, inputs):
            h, c = carry
            x_t, ok = inputs
            new_h, new_c = cell(self.kind, params, x_t, h, c)
            h, c = jnp.where(ok[:, None], new_h, h), jnp.where(ok[:, None], new_c, c)
            return (h, c), h

        zeros = jnp.zeros((xs.shape[0], self.units), xs.dtype)
        _, hs = jax.lax.scan(step, (zeros, zeros), (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(valid, 0, 1)))
        return jnp.swapaxes(hs, 0, 1)


class PlainRecurrentClassifier(nn.Module):
    """Token ids ``(B, T)`` (0 = padding) or float steps ``(B, T, F)``; shapes ``many_to_one``, ``many_to_many``,
    ``one_to_many`` and ``encoder_decoder`` as the zoo's."""

    num_classes: int = 10
    cell: str = "lstm"
    shape: str = "many_to_one"
    num_layers: int = 1
    units: int = 8
    vocab_size: int = 0
    embed_dim: int = 6
    output_len: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.vocab_size:
            valid = x != 0
            h = nn.Embed(self.vocab_size, self.embed_dim, name="embedding")(x.astype(jnp.int32))
        else:
            h = x.reshape(x.shape[0], x.shape[1], -1)
            valid = jnp.ones(x.shape[:2], bool)
        layers = 2 * self.num_layers if self.shape == "encoder_decoder" else self.num_layers
        if self.shape == "one_to_many":
            h = jnp.repeat(h.reshape(h.shape[0], 1, -1), self.output_len, axis=1)
            valid = jnp.ones(h.shape[:2], bool)
        for k in range(1, layers + 1):
            h = Recurrent(self.cell, self.units, name=f"rnn{k}")(h, valid)
            self.sow("intermediates", f"rnn{k}_h", h)
            last_of_encoder = self.shape == "encoder_decoder" and k == self.num_layers
            if last_of_encoder:
                h = jnp.repeat(h[:, -1][:, None, :], self.output_len, axis=1)
                valid = jnp.ones(h.shape[:2], bool)
        if self.shape == "many_to_one":
            h = h[:, -1]
        return nn.Dense(self.num_classes, name="logits")(h)

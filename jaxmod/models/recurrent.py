"""Recurrent classifiers (Imtiaz et al.): Vanilla (SimpleRNN), LSTM and GRU cells in the five input-output shapes.

Cells run as one ``lax.scan`` over time. Gate order and equations follow Keras (the paper's models are
Keras models), so that the gate blocks of every kernel are laid out gate-major, ``[gate 0 | gate 1 | ...]``,
each block ``units`` wide:

* ``vanilla``: ``h = act(x W + h_prev U + b)``; one block.
* ``lstm`` (blocks ``i, f, g, o``): ``s = x W + h_prev U + b``; ``i, f, o = sigmoid(s_i, s_f, s_o)``,
  ``g = act(s_g)``; ``c = f * c_prev + i * g``; ``h = o * act(c)``.
* ``gru`` (blocks ``z, r, n``; Keras ``reset_after=True``, two biases): ``a = x W + b``, ``u = h_prev U + b_rec``;
  ``z = sigmoid(a_z + u_z)``, ``r = sigmoid(a_r + u_r)``, ``n = act(a_n + r * u_n)``;
  ``h = z * h_prev + (1 - z) * n``.

``act`` is tanh, or ReLU for the ReLU variant (gates stay sigmoid). Token inputs (int, ``0`` = padding) go
through an embedding and mask their padded steps: on a padded step the state is carried unchanged and the
step's output repeats it (Keras ``Masking``). Shapes (``RecurrentClassifier.shape``):

* ``one_to_one``: one step (``T_in = 1``) through ``num_layers`` layers, one output;
* ``many_to_one``: ``num_layers`` layers, the last layer's final state feeds the output;
* ``many_to_many``: ``num_layers`` layers, an output at every input step (time-distributed dense);
* ``one_to_many``: the input flattened to one vector (Keras ``Flatten``), repeated ``output_len`` times
  (``RepeatVector``), ``num_layers`` layers, an output per step;
* ``encoder_decoder``: ``num_layers`` encoder layers, their final state repeated ``output_len`` times,
  ``num_layers`` decoder layers, an output per step.

Recurrent layers are named ``rnn1``, ``rnn2``, ... in the order data flows (encoder first). The model is plain Flax:
it sows each layer's hidden states ``(B, T, units)`` as ``rnnK_h`` (naming the unit group the derivation finds,
:mod:`jaxmod.graph`) and its gate activations (post-sigmoid/act) ``(B, T, G, units)`` as ``rnnK_gates``.

Removing units is jaxmod's work, not the model's: the adapter (:func:`jaxmod.adapter.loop_masks`) applies a unit
mask ``unit_masks/rnnK_h`` of shape ``(units,)`` (rolled: the same at every step) or ``(T, units)`` (unrolled: one
per step) the way the authors' code edits weights: at a step where unit ``n`` is removed, its columns in W, U and
the biases (every gate block) read zero, its row of U is not read and the consumers (the next layer, the output
layer) do not see it. The state itself is carried as computed, so a unit removed at one step and kept at the next
reads back its carried state, as in the reference. With one mask for all steps a removed unit stays exactly
zero, which is why that case slices physically. A gate mask ``unit_masks/rnnK_gates`` (:func:`gate_group`) of
shape ``(G, units)`` or ``(T, G, units)`` removes single gate units (the paper's "each gate by its own
activation"): that gate's pre-activation reads zero.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmod.adapter import Adapted, loop_gates
from jaxmod.checks import check_choice, check_finite

CELLS: tuple[str, ...] = ("vanilla", "lstm", "gru")
GATES: dict[str, tuple[str, ...]] = {"vanilla": ("h",), "lstm": ("i", "f", "g", "o"), "gru": ("z", "r", "n")}
# Gates whose activation is the cell's activation function (tanh or ReLU); the others are sigmoids.
CANDIDATE_GATES: dict[str, tuple[str, ...]] = {"vanilla": ("h",), "lstm": ("g",), "gru": ("n",)}
SHAPES: tuple[str, ...] = ("one_to_one", "one_to_many", "many_to_one", "many_to_many", "encoder_decoder")
MANY_OUTPUT_SHAPES: tuple[str, ...] = ("one_to_many", "many_to_many", "encoder_decoder")
ACTIVATION_FNS = {"tanh": jnp.tanh, "relu": nn.relu}
SOWN = "intermediates"  # what the model sows: rnnK_h (hidden states) and rnnK_gates (gate activations)


def gate_group(group: str) -> str:
    """The unit group of a recurrent layer's gate units: ``rnnK_h`` -> ``rnnK_gates`` (also the sown name of the
    layer's gate activations)."""
    if not group.endswith("_h"):
        raise ValueError(f"{group!r} is not a recurrent layer's hidden group (rnnK_h)")
    return loop_gates(group)


def num_gates(cell: str) -> int:
    """Gate blocks of a cell's kernels (1, 4 or 3)."""
    return len(GATES[cell])


def cell_step(cell: str, activation: str, params: dict, x_t: jax.Array, h_prev: jax.Array,
              c_prev: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One step of a cell on a batch: ``(h, c, gates)``; ``gates`` is ``(B, G, U)``. ``c`` is only used by the LSTM
    (the others return ``h`` in its place)."""
    act = ACTIVATION_FNS[activation]
    g, u = num_gates(cell), h_prev.shape[-1]
    if cell == "gru":
        a = ((x_t @ params["kernel"]) + params["bias"]).reshape(-1, g, u)
        r_in = ((h_prev @ params["recurrent_kernel"]) + params["recurrent_bias"]).reshape(-1, g, u)
        z = jax.nn.sigmoid(a[:, 0] + r_in[:, 0])
        r = jax.nn.sigmoid(a[:, 1] + r_in[:, 1])
        n = act(a[:, 2] + r * r_in[:, 2])
        h = z * h_prev + (1.0 - z) * n
        return h, h, jnp.stack([z, r, n], axis=1)
    s = ((x_t @ params["kernel"]) + (h_prev @ params["recurrent_kernel"]) + params["bias"]).reshape(-1, g, u)
    if cell == "vanilla":
        h = act(s[:, 0])
        return h, h, h[:, None]
    i, f, gg, o = jax.nn.sigmoid(s[:, 0]), jax.nn.sigmoid(s[:, 1]), act(s[:, 2]), jax.nn.sigmoid(s[:, 3])
    c = f * c_prev + i * gg
    h = o * act(c)
    return h, c, jnp.stack([i, f, gg, o], axis=1)


def run_cell(cell: str, activation: str, params: dict, xs: jax.Array, step_valid: jax.Array,
             units: int) -> tuple[jax.Array, jax.Array]:
    """Scan a cell over time: ``xs`` ``(B, T, F)``, ``step_valid`` ``(B, T)``. Returns the hidden states
    ``(B, T, U)`` and the gate activations ``(B, T, G, U)``; on a padded step the state is carried unchanged."""
    zeros = jnp.zeros((xs.shape[0], units), xs.dtype)

    def step(carry, inputs):
        h_prev, c_prev = carry
        x_t, valid = inputs
        h, c, gates = cell_step(cell, activation, params, x_t, h_prev, c_prev)
        valid = valid[:, None]
        h = jnp.where(valid, h, h_prev)
        c = jnp.where(valid, c, c_prev)
        return (h, c), (h, gates)

    _, (hs, gates) = jax.lax.scan(step, (zeros, zeros), (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(step_valid, 0, 1)))
    return jnp.swapaxes(hs, 0, 1), jnp.swapaxes(gates, 0, 1)


class RecurrentLayer(nn.Module):
    """One recurrent layer's parameters (Keras layout and initialisers) and its scan."""

    cell: str
    units: int
    activation: str = "tanh"

    @nn.compact
    def __call__(self, xs: jax.Array, step_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
        width = num_gates(self.cell) * self.units
        params = {
            "kernel": self.param("kernel", nn.initializers.glorot_uniform(), (xs.shape[-1], width)),
            "recurrent_kernel": self.param("recurrent_kernel", nn.initializers.orthogonal(), (self.units, width)),
            "bias": self.param("bias", _bias_init(self.cell, self.units), (width,)),
        }
        if self.cell == "gru":
            params["recurrent_bias"] = self.param("recurrent_bias", nn.initializers.zeros, (width,))
        return run_cell(self.cell, self.activation, params, xs, step_valid, self.units)


def _bias_init(cell: str, units: int):
    def init(key, shape, dtype=jnp.float32):
        del key
        bias = jnp.zeros(shape, dtype)
        if cell == "lstm":  # Keras unit_forget_bias
            bias = bias.at[units:2 * units].set(1.0)
        return bias

    return init


class RecurrentClassifier(nn.Module):
    """Embedding (token inputs), recurrent layers and a (time-distributed) dense output; see the module doc.

    ``vocab_size=0`` takes float feature steps ``(B, T, ...)`` (trailing axes flattened per step); otherwise
    int token ids ``(B, T)`` with 0 as padding. ``input_len=0`` accepts any length; a positive ``input_len``
    is the only length the model takes. ``output_len`` is the number of output steps of ``one_to_many`` and
    ``encoder_decoder`` models.
    """

    num_classes: int = 10
    cell: str = "lstm"
    shape: str = "many_to_one"
    num_layers: int = 1
    units: int = 32
    activation: str = "tanh"
    vocab_size: int = 0
    embed_dim: int = 32
    input_len: int = 0
    output_len: int = 1

    def __post_init__(self) -> None:
        check_choice("cell", self.cell, CELLS)
        check_choice("shape", self.shape, SHAPES)
        check_choice("activation", self.activation, ACTIVATION_FNS)
        if not (isinstance(self.num_layers, int) and 1 <= self.num_layers <= 4):
            raise ValueError(f"num_layers must be 1 to 4, got {self.num_layers!r}")
        for name in ("units", "output_len"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.vocab_size < 0 or self.input_len < 0:
            raise ValueError("vocab_size and input_len must be >= 0")
        if self.shape == "one_to_one" and self.input_len not in (0, 1):
            raise ValueError(f"a one_to_one model takes one input step, got input_len={self.input_len}")
        super().__post_init__()

    # -- structure -------------------------------------------------------------------------------------

    @property
    def many_output(self) -> bool:
        return self.shape in MANY_OUTPUT_SHAPES

    def layer_names(self) -> tuple[str, ...]:
        """Recurrent layers (parameter scopes) in data-flow order."""
        count = 2 * self.num_layers if self.shape == "encoder_decoder" else self.num_layers
        return tuple(f"rnn{i}" for i in range(1, count + 1))

    def group_names(self) -> tuple[str, ...]:
        """The recurrent layers' unit groups (hidden states), in data-flow order: ``rnnK_h``."""
        return tuple(f"{name}_h" for name in self.layer_names())

    def reads_input_steps(self) -> tuple[bool, ...]:
        """Per group: True when its timesteps are the input's (so padded input steps apply to it)."""
        names = self.group_names()
        if self.shape == "one_to_many":
            return tuple(False for _ in names)
        if self.shape == "encoder_decoder":
            return tuple(i < self.num_layers for i in range(len(names)))
        return tuple(True for _ in names)

    def returns_last_step_only(self, index: int) -> bool:
        """Whether group ``index`` hands only its final state on (Keras ``return_sequences=False``)."""
        names = self.group_names()
        if self.shape in ("many_to_one", "one_to_one"):
            return index == len(names) - 1
        return self.shape == "encoder_decoder" and index == self.num_layers - 1

    def step_valid(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Per group, bool ``(N, T)``: the steps that carry input (padded token steps are False)."""
        x = np.asarray(x)
        if self.vocab_size:
            input_valid = x != 0
        else:
            input_valid = np.ones(x.shape[:2], bool)
        out_valid = np.ones((x.shape[0], self.output_len), bool)
        return {g: (input_valid if reads else out_valid)
                for g, reads in zip(self.group_names(), self.reads_input_steps(), strict=True)}

    # -- forward ---------------------------------------------------------------------------------------

    def _layer(self, index: int, xs: jax.Array, step_valid: jax.Array) -> jax.Array:
        name, group = self.layer_names()[index], self.group_names()[index]
        hs, gates = RecurrentLayer(self.cell, self.units, self.activation, name=name)(xs, step_valid)
        self.sow(SOWN, group, hs)
        self.sow(SOWN, gate_group(group), gates)
        return hs[:, -1] if self.returns_last_step_only(index) else hs

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits ``(B, C)`` (one-output shapes) or ``(B, T_out, C)``."""
        del train  # no dropout or batch norm
        if x.ndim < 2:
            raise ValueError(f"expected a batch of sequences (B, T, ...), got shape {x.shape}")
        if self.input_len and x.shape[1] != self.input_len:
            raise ValueError(f"the model takes sequences of {self.input_len} steps, got {x.shape[1]}")
        if self.shape == "one_to_one" and x.shape[1] != 1:
            raise ValueError(f"a one_to_one model takes one input step, got {x.shape[1]}")
        if self.vocab_size:
            if x.ndim != 2:
                raise ValueError(f"token inputs must be (B, T) ids, got shape {x.shape}")
            tokens = x.astype(jnp.int32)
            valid = tokens != 0
            h = nn.Embed(self.vocab_size, self.embed_dim, name="embedding")(tokens)
        else:
            h = x.reshape(x.shape[0], x.shape[1], -1).astype(jnp.float32)
            valid = jnp.ones(x.shape[:2], bool)
        names = self.group_names()
        index = 0
        if self.shape == "one_to_many":
            h = jnp.repeat(h.reshape(h.shape[0], 1, -1), self.output_len, axis=1)
            valid = jnp.ones((h.shape[0], self.output_len), bool)
        encoder = self.num_layers if self.shape == "encoder_decoder" else len(names)
        for index in range(encoder):
            h = self._layer(index, h, valid)
        if self.shape == "encoder_decoder":
            h = jnp.repeat(h[:, None, :], self.output_len, axis=1)
            valid = jnp.ones((h.shape[0], self.output_len), bool)
            for index in range(encoder, len(names)):
                h = self._layer(index, h, valid)
        return nn.Dense(self.num_classes, name="logits")(h)


def recurrent_module(model: nn.Module) -> RecurrentClassifier:
    """The zoo's recurrent classifier behind ``model`` (itself, or the plain module an adapted zoo model runs);
    ``TypeError`` naming the model otherwise."""
    module = model.source.module if isinstance(model, Adapted) and model.source.module is not None else model
    if not isinstance(module, RecurrentClassifier):
        name = type(module).__name__ if not isinstance(model, Adapted) else model.source.name
        raise TypeError(f"rnn decomposition needs a RecurrentClassifier, got {name}")
    return module


def check_sequences(model: nn.Module, x: np.ndarray) -> None:
    """``ValueError`` naming the problem when ``x`` is not a batch of sequences ``model`` (a zoo recurrent model)
    takes: wrong rank, a length other than the model's ``input_len`` (e.g. a longer sequence), or token ids outside
    its vocabulary."""
    model = recurrent_module(model)
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of sequences (N, T, ...), got shape {x.shape}")
    if model.input_len and x.shape[1] != model.input_len:
        raise ValueError(f"sequences have {x.shape[1]} steps; the model takes {model.input_len}")
    if model.vocab_size:
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"token inputs must be integer ids of shape (N, T), got {x.dtype} {x.shape}")
        bad = (x < 0) | (x >= model.vocab_size)
        if bad.any():
            raise ValueError(f"token ids {sorted(set(x[bad].tolist()))[:5]} lie outside the input vocabulary "
                             f"of {model.vocab_size}")
    elif not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"a feature-input model takes float steps, got {x.dtype}")
    else:
        check_finite(x, "the input sequences")

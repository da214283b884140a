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

Recurrent layers are named ``rnn1``, ``rnn2``, ... in the order data flows (encoder first); each layer's
hidden units are the unit group ``rnnK_h``, sown per timestep as ``activations/rnnK_h`` ``(B, T, units)``; the
gate activations (post-sigmoid/act) are sown as ``gate_activations/rnnK_h`` ``(B, T, G, units)``.

Removing units. A ``unit_masks/rnnK_h`` variable of shape ``(units,)`` (rolled: the same at every step) or
``(T, units)`` (unrolled: one mask per step) removes units the way the authors' code edits weights: at a step
where unit ``n`` is removed, its columns in W, U and the biases (every gate block) read zero, its row of U is
not read (``h_prev * keep``) and the consumers (the next layer, the output layer) do not see it
(``h * keep``). The state itself is carried as computed, so a unit removed at one step and kept at the next
reads back its carried state, as in the reference. With one mask for all steps a removed unit stays exactly
zero, which is why that case slices physically (``topology_spec``). A ``unit_masks/rnnK_gates`` variable (the
layer's gate units, :func:`gate_group`) of shape ``(G, units)`` or ``(T, G, units)`` removes single gate units
(the paper's "each gate by its own activation"): that gate's pre-activation reads zero.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmod.checks import check_choice, check_finite
from jaxmod.taps import UNIT_MASKS, tap, width_of
from jaxmod.topology import LeafAxis, TopologySpec, UnitGroup, dense_out, kernel_in

CELLS: tuple[str, ...] = ("vanilla", "lstm", "gru")
GATES: dict[str, tuple[str, ...]] = {"vanilla": ("h",), "lstm": ("i", "f", "g", "o"), "gru": ("z", "r", "n")}
# Gates whose activation is the cell's activation function (tanh or ReLU); the others are sigmoids.
CANDIDATE_GATES: dict[str, tuple[str, ...]] = {"vanilla": ("h",), "lstm": ("g",), "gru": ("n",)}
SHAPES: tuple[str, ...] = ("one_to_one", "one_to_many", "many_to_one", "many_to_many", "encoder_decoder")
MANY_OUTPUT_SHAPES: tuple[str, ...] = ("one_to_many", "many_to_many", "encoder_decoder")
ACTIVATION_FNS = {"tanh": jnp.tanh, "relu": nn.relu}
GATE_ACTIVATIONS = "gate_activations"


def gate_group(group: str) -> str:
    """The unit group of a recurrent layer's gate units: ``rnnK_h`` -> ``rnnK_gates``."""
    if not group.endswith("_h"):
        raise ValueError(f"{group!r} is not a recurrent layer's hidden group (rnnK_h)")
    return f"{group[:-2]}_gates"


def num_gates(cell: str) -> int:
    """Gate blocks of a cell's kernels (1, 4 or 3)."""
    return len(GATES[cell])


def cell_step(cell: str, activation: str, params: dict, x_t: jax.Array, h_prev: jax.Array, c_prev: jax.Array,
              block_keep: jax.Array, unit_keep: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One step of a cell on a batch: ``(h, c, gates)``; ``gates`` is ``(B, G, U)``.

    ``block_keep`` ``(G, U)`` zeroes pre-activations (a removed unit in every gate, or a removed gate unit);
    ``unit_keep`` ``(U,)`` drops units of ``h_prev`` from the recurrent input (their rows of U).
    ``c`` is only used by the LSTM (the others return ``h`` in its place).
    """
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
        return h, h, jnp.stack([z, r, n], axis=1)
    s = ((x_t @ params["kernel"]) + (h_read @ params["recurrent_kernel"]) + params["bias"]) * keep
    s = s.reshape(-1, g, u)
    if cell == "vanilla":
        h = act(s[:, 0])
        return h, h, h[:, None]
    i, f, gg, o = jax.nn.sigmoid(s[:, 0]), jax.nn.sigmoid(s[:, 1]), act(s[:, 2]), jax.nn.sigmoid(s[:, 3])
    c = f * c_prev + i * gg
    h = o * act(c)
    return h, c, jnp.stack([i, f, gg, o], axis=1)


def run_cell(cell: str, activation: str, params: dict, xs: jax.Array, step_valid: jax.Array,
             unit_keep: jax.Array, block_keep: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Scan a cell over time: ``xs`` ``(B, T, F)``, ``step_valid`` ``(B, T)``, ``unit_keep`` ``(T, U)``,
    ``block_keep`` ``(T, G, U)``. Returns the consumers' view of the hidden states ``(B, T, U)`` (masked),
    the last step's output ``(B, U)`` (masked) and the gate activations ``(B, T, G, U)``."""
    batch = xs.shape[0]
    units = unit_keep.shape[-1]
    zeros = jnp.zeros((batch, units), xs.dtype)

    def step(carry, inputs):
        h_prev, c_prev = carry
        x_t, valid, keep_t, block_t = inputs
        h, c, gates = cell_step(cell, activation, params, x_t, h_prev, c_prev, block_t, keep_t)
        valid = valid[:, None]
        h = jnp.where(valid, h, h_prev)
        c = jnp.where(valid, c, c_prev)
        return (h, c), (h * keep_t, gates)

    inputs = (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(step_valid, 0, 1), unit_keep, block_keep)
    _, (hs, gates) = jax.lax.scan(step, (zeros, zeros), inputs)
    hs = jnp.swapaxes(hs, 0, 1)
    return hs, hs[:, -1], jnp.swapaxes(gates, 0, 1)


class RecurrentLayer(nn.Module):
    """One recurrent layer's parameters (Keras layout and initialisers) and its scan."""

    cell: str
    units: int
    activation: str = "tanh"

    @nn.compact
    def __call__(self, xs: jax.Array, step_valid: jax.Array, unit_keep: jax.Array,
                 block_keep: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        width = num_gates(self.cell) * self.units
        params = {
            "kernel": self.param("kernel", nn.initializers.glorot_uniform(), (xs.shape[-1], width)),
            "recurrent_kernel": self.param("recurrent_kernel", nn.initializers.orthogonal(), (self.units, width)),
            "bias": self.param("bias", _bias_init(self.cell, self.units), (width,)),
        }
        if self.cell == "gru":
            params["recurrent_bias"] = self.param("recurrent_bias", nn.initializers.zeros, (width,))
        return run_cell(self.cell, self.activation, params, xs, step_valid, unit_keep, block_keep)


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
    widths: tuple[tuple[str, int], ...] = ()

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

    def topology_spec(self) -> TopologySpec:
        """Hidden units of every layer: produced by its W, U and bias columns (every gate block, gate-major,
        so the kernel's last axis tiles the group), consumed by its own U rows and the next layer's W rows."""
        names = self.layer_names()
        groups = []
        for i, (name, group) in enumerate(zip(names, self.group_names(), strict=True)):
            producers = [LeafAxis((name, "kernel"), -1), LeafAxis((name, "recurrent_kernel"), -1),
                         LeafAxis((name, "bias"), 0)]
            if self.cell == "gru":
                producers.append(LeafAxis((name, "recurrent_bias"), 0))
            consumer = names[i + 1] if i + 1 < len(names) else "logits"
            consumers = (LeafAxis((name, "recurrent_kernel"), -2), *kernel_in(consumer))
            groups.append(UnitGroup(group, tuple(producers), consumers))
        return TopologySpec(tuple(groups), dense_out("logits"))

    # -- forward ---------------------------------------------------------------------------------------

    def _masks(self, name: str, steps: int, units: int) -> tuple[jax.Array, jax.Array]:
        g = num_gates(self.cell)
        unit_keep = jnp.ones((steps, units), jnp.float32)
        block_keep = jnp.ones((steps, g, units), jnp.float32)
        if self.has_variable(UNIT_MASKS, name):
            mask = jnp.asarray(self.get_variable(UNIT_MASKS, name), jnp.float32)
            unit_keep = jnp.broadcast_to(mask, (steps, units))
        if self.has_variable(UNIT_MASKS, gate_group(name)):
            mask = jnp.asarray(self.get_variable(UNIT_MASKS, gate_group(name)), jnp.float32)
            block_keep = jnp.broadcast_to(mask, (steps, g, units))
        return unit_keep, block_keep * unit_keep[:, None, :]

    def _layer(self, index: int, xs: jax.Array, step_valid: jax.Array) -> jax.Array:
        name, group = self.layer_names()[index], self.group_names()[index]
        units = width_of(self.widths, group, self.units)
        unit_keep, block_keep = self._masks(group, xs.shape[1], units)
        hs, last, gates = RecurrentLayer(self.cell, units, self.activation, name=name)(
            xs, step_valid, unit_keep, block_keep)
        self.sow(GATE_ACTIVATIONS, group, gates, init_fn=lambda: None, reduce_fn=lambda _, v: v)
        hs = tap(self, group, hs)
        return last if self.returns_last_step_only(index) else hs

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False) -> jax.Array:
        """Logits ``(B, C)`` (one-output shapes) or ``(B, T_out, C)``; with ``return_features`` the
        output layer's input instead (``(B, U)`` or ``(B, T_out, U)``)."""
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
        if return_features:
            return h
        return nn.Dense(self.num_classes, name="logits")(h)


def check_sequences(model: RecurrentClassifier, x: np.ndarray) -> None:
    """``ValueError`` naming the problem when ``x`` is not a batch of sequences ``model`` takes: wrong rank,
    a length other than the model's ``input_len`` (e.g. a longer sequence), or token ids outside its vocabulary."""
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

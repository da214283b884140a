"""Recurrent models: cells against the textbook (Keras) equations on hand-set weights, masking of padded steps,
the five shapes, unit masks as weight edits, and exact physical slicing of rolled modules."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod.models import create_model, zoo_module
from jaxmod.models.recurrent import SHAPES, check_sequences, gate_group
from jaxmod.taps import UNIT_MASKS
from jaxmod.topology import resolve_topology, slice_model, unit_mask_variables


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def textbook(cell, p, xs, act=np.tanh):
    """Per-step loop over one sequence with the Keras equations (gate orders i,f,g,o and z,r,n)."""
    u = p["recurrent_kernel"].shape[0]
    h, c, out = np.zeros(u), np.zeros(u), []
    for x in xs:
        if cell == "lstm":
            s = x @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"]
            i, f, g, o = sigmoid(s[:u]), sigmoid(s[u:2 * u]), act(s[2 * u:3 * u]), sigmoid(s[3 * u:])
            c = f * c + i * g
            h = o * act(c)
        elif cell == "gru":
            a = x @ p["kernel"] + p["bias"]
            r_in = h @ p["recurrent_kernel"] + p["recurrent_bias"]
            z, r = sigmoid(a[:u] + r_in[:u]), sigmoid(a[u:2 * u] + r_in[u:2 * u])
            n = act(a[2 * u:] + r * r_in[2 * u:])
            h = z * h + (1 - z) * n
        else:
            h = act(x @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"])
        out.append(h)
    return np.stack(out)


def random_variables(model, x, seed=0, scale=0.5):
    """Variables shaped as ``model.init`` makes them, filled with seeded normal values: ``eval_shape`` traces
    without compiling, so tests skip the (slow, eager) Keras initialisers they do not need."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, scale, s.shape).astype(s.dtype), shapes)


def hand_params(cell, f, u, seed=0):
    g = {"vanilla": 1, "lstm": 4, "gru": 3}[cell]
    rng = np.random.default_rng(seed)
    p = {"kernel": rng.normal(0, 0.7, (f, g * u)), "recurrent_kernel": rng.normal(0, 0.7, (u, g * u)),
         "bias": rng.normal(0, 0.3, (g * u,))}
    if cell == "gru":
        p["recurrent_bias"] = rng.normal(0, 0.3, (g * u,))
    return {k: v.astype(np.float32) for k, v in p.items()}


@pytest.mark.parametrize("cell", ["vanilla", "lstm", "gru"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_cell_matches_textbook_equations(cell, activation):
    model = create_model(f"rnn_{cell}", 3, shape="many_to_many", units=3, activation=activation)
    xs = np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)
    variables = random_variables(model, xs)
    p = hand_params(cell, 4, 3)
    variables = {"params": {**variables["params"], "rnn1": p}}
    _, state = model.apply(variables, xs, mutable=["activations"])
    act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0))
    expected = np.stack([textbook(cell, p, x, act) for x in xs])
    np.testing.assert_allclose(state["activations"]["rnn1_h"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padded_steps_carry_the_state(cell):
    """Post-padded and pre-padded token sequences end in the state of their real tokens only."""
    model = create_model(f"rnn_{cell}", 3, shape="many_to_one", units=4, vocab_size=10, input_len=6)
    tokens = np.array([[5, 2, 7, 0, 0, 0], [0, 0, 0, 5, 2, 7], [5, 2, 7, 1, 1, 1]])
    variables = random_variables(model, tokens)
    _, state = model.apply(variables, tokens, mutable=["activations"])
    feats = state["activations"]["rnn1_h"][:, -1]  # what the output layer reads
    chex.assert_trees_all_close(feats[0], feats[1], atol=1e-6)
    assert not np.allclose(feats[0], feats[2])
    # Against the textbook loop over the three real tokens.
    emb = np.asarray(variables["params"]["embedding"]["embedding"])[[5, 2, 7]]
    p = {k: np.asarray(v) for k, v in variables["params"]["rnn1"].items()}
    np.testing.assert_allclose(feats[0], textbook(cell, p, emb)[-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_and_taps(shape):
    one = shape == "one_to_one"
    model = create_model("rnn_gru", 4, shape=shape, num_layers=2, units=5, vocab_size=0 if one else 9,
                         input_len=1 if one else 6, output_len=3)
    x = np.ones((2, 1, 7), np.float32) if one else np.arange(12).reshape(2, 6) % 9
    # Shapes only: traced, not compiled.
    logits, state = jax.eval_shape(lambda v: model.apply(v, x, mutable=["activations", "intermediates"]),
                                   random_variables(model, x))
    expected = {"one_to_one": (2, 4), "many_to_one": (2, 4), "many_to_many": (2, 6, 4), "one_to_many": (2, 3, 4),
                "encoder_decoder": (2, 3, 4)}[shape]
    assert logits.shape == expected
    groups = zoo_module(model).group_names()
    assert set(state["activations"]) == set(groups) | ({"embedding"} if not one else set())  # token features too
    for g in groups:  # the gate activations the model sows, (B, T, G, U)
        assert state["intermediates"][gate_group(g)].shape[2:] == (3, 5)


def test_unit_mask_equals_editing_weights():
    """A rolled unit mask is the authors' weight edit: zero the unit's W, U and bias columns in every gate,
    its U row and the next layer's row."""
    model = create_model("rnn_lstm", 3, shape="many_to_many", num_layers=2, units=4, vocab_size=9, input_len=5)
    x = np.array([[1, 2, 3, 4, 5], [3, 3, 0, 0, 0]])
    v = random_variables(model, x)
    keep = np.array([1, 0, 1, 1], bool)
    masked = model.apply({**v, UNIT_MASKS: {"rnn1_h": keep.astype(np.float32)}}, x)
    p = jax.tree.map(np.array, v["params"])
    cols = np.tile(keep, 4)
    p["rnn1"]["kernel"][:, ~cols] = 0
    p["rnn1"]["recurrent_kernel"][:, ~cols] = 0
    p["rnn1"]["recurrent_kernel"][~keep, :] = 0
    p["rnn1"]["bias"][~cols] = 0
    p["rnn2"]["kernel"][~keep, :] = 0
    chex.assert_trees_all_close(masked, model.apply({"params": p}, x), atol=1e-6)


def test_per_step_masks_and_gate_masks_broadcast():
    model = create_model("rnn_gru", 3, shape="many_to_many", units=4, vocab_size=9, input_len=5)
    x = np.array([[1, 2, 3, 4, 5]])
    v = random_variables(model, x)
    same = model.apply({**v, UNIT_MASKS: {"rnn1_h": np.ones((5, 4), np.float32)}}, x)
    chex.assert_trees_all_close(same, model.apply(v, x))
    gate_cut = np.ones((5, 3, 4), np.float32)
    gate_cut[2, 0, 1] = 0  # update gate of unit 1 at step 2
    assert gate_group("rnn1_h") == "rnn1_gates"  # gate masks are unit masks of the layer's gate group
    out = model.apply({**v, UNIT_MASKS: {gate_group("rnn1_h"): gate_cut}}, x)
    chex.assert_trees_all_close(out[:, :2], same[:, :2])
    assert not np.allclose(out[:, 2], same[:, 2])


@pytest.mark.parametrize("cell", ["vanilla", "lstm", "gru"])
def test_rolled_modules_slice_exactly(cell):
    model = create_model(f"rnn_{cell}", 5, shape="encoder_decoder", num_layers=1, units=6, vocab_size=11,
                         input_len=4, output_len=3)
    topo = resolve_topology(model, (4,))
    x = np.array([[1, 2, 3, 0], [4, 5, 6, 7]])
    v = random_variables(model, x, seed=1)
    keep = {g: np.arange(size) % (i + 2) != 0 for i, (g, size) in enumerate(topo.sizes.items())}  # embedding too
    sliced = slice_model(model, topo, v, keep, [3, 1])
    masked = model.apply({**v, **unit_mask_variables(topo, keep)}, x)
    chex.assert_trees_all_close(sliced.model.apply(sliced.variables, x), masked[..., [3, 1]], atol=1e-6)


def test_bad_sequences_raise_first():
    model = create_model("rnn_lstm", 3, vocab_size=9, input_len=5)
    with pytest.raises(ValueError, match="takes 5"):
        check_sequences(model, np.ones((2, 6), np.int32))
    with pytest.raises(ValueError, match="outside the input vocabulary"):
        check_sequences(model, np.full((2, 5), 9, np.int32))
    with pytest.raises(ValueError, match="takes sequences of 5"):
        model.init(jax.random.key(0), jnp.ones((1, 7), jnp.int32))
    with pytest.raises(ValueError, match="num_layers"):
        create_model("rnn_lstm", 3, num_layers=5)

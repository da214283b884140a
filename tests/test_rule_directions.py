"""Tests that fail when a method's rule or metric has the wrong direction, term, boundary or aggregation (each
case below was a mutation that used to pass every test): which units a rule removes on a constructed case where
the answer is known, every loss term non-zero and checked by hand, and the means over module pairs only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod import losses
from jaxmod.approaches import moda as moda_lib
from jaxmod.approaches import rnn as rnn_lib
from jaxmod.approaches import supermask as sm
from jaxmod.metrics.modules import summarize
from jaxmod.models import create_model, zoo_module
from jaxmod.running import module_outputs
from jaxmod.voting import voting_accuracy

# ---------------------------------------------------------------------------------------------
# Imtiaz et al.: concern identification removes the units most tied to the *other* classes


HOT = {0: [0, 1], 1: [2, 3]}  # units that fire (|h| = 0.9) on each class's samples; the rest stay at 0.1


def _fake_monitor(model, variables, x, batch_size=256, with_gates=True):
    """Hidden states by construction: class c's samples (token c + 1 everywhere) fire HOT[c] at every step."""
    del variables, batch_size, with_gates
    cls = np.asarray(x)[:, 0] - 1
    steps = np.asarray(x).shape[1]
    h = np.full((len(x), steps, zoo_module(model).units), 0.1, np.float32)
    for c, units in HOT.items():
        h[np.ix_(cls == c, np.arange(steps), units)] = 0.9
    h += np.linspace(0, 0.01, h.size, dtype=np.float32).reshape(h.shape)  # distinct values (MAD > 0)
    return {zoo_module(model).group_names()[0]: h}, {}


@pytest.mark.parametrize("mode", ["rolled", "unrolled"])
def test_rnn_removal_takes_the_units_of_the_other_classes(monkeypatch, mode):
    model = create_model("rnn_vanilla", 2, shape="many_to_one", units=10, vocab_size=4, input_len=3)
    x = np.repeat(np.array([[1, 1, 1], [2, 2, 2]]), 20, axis=0)
    y = np.repeat([0, 1], 20)
    variables = model.init(jax.random.key(0), x[:1])
    monkeypatch.setattr(rnn_lib, "monitor", _fake_monitor)
    modules = rnn_lib.RnnDecomposition(mode=mode, max_remove=0.2).decompose(model, variables, x, y, 2).modules
    keep = np.asarray(modules.units[zoo_module(model).group_names()[0]])  # [2, (T,) 10]
    for c, other in ((0, 1), (1, 0)):
        removed = np.flatnonzero(~keep[c].reshape(-1, 10).all(axis=0))
        assert removed.tolist() == HOT[other], (mode, c, removed)  # never its own class's units


def _relu_monitor(model, variables, x, batch_size=256, with_gates=True):
    """ReLU hidden states: class c's samples fire HOT[c] (0.9), every other unit is exactly 0."""
    del variables, batch_size, with_gates
    cls = np.asarray(x)[:, 0] - 1
    h = np.zeros((len(x), np.asarray(x).shape[1], zoo_module(model).units), np.float32)
    for c, units in HOT.items():
        h[np.ix_(cls == c, np.arange(h.shape[1]), units)] = 0.9
    return {zoo_module(model).group_names()[0]: h}, {}


@pytest.mark.parametrize("max_remove, removed_of_class_0", [(0.2, []), (1.0, [4, 5, 6, 7, 8, 9])])
def test_relu_variant_removes_idle_units_and_restores_tangled_ones(monkeypatch, max_remove, removed_of_class_0):
    """Algorithm 5 on a constructed case: for class 0 the units never active on its samples are 2..9; the cap
    (ceil(0.2 * 10) = 2, lowest index first) picks 2 and 3, which fire on class 1 (tangled) and are restored, so
    nothing is removed; without a cap 2..9 go and 2, 3 come back: 4..9 removed."""
    model = create_model("rnn_vanilla", 2, shape="many_to_one", units=10, vocab_size=4, input_len=3)
    x = np.repeat(np.array([[1, 1, 1], [2, 2, 2]]), 20, axis=0)
    y = np.repeat([0, 1], 20)
    monkeypatch.setattr(rnn_lib, "monitor", _relu_monitor)
    decomposition = rnn_lib.RnnDecomposition(mode="rolled", statistic="relu", max_remove=max_remove)
    keep = np.asarray(decomposition.decompose(model, model.init(jax.random.key(0), x[:1]), x, y, 2)
                      .modules.units[zoo_module(model).group_names()[0]])
    assert np.flatnonzero(~keep[0]).tolist() == removed_of_class_0
    assert keep[0, HOT[0]].all() and keep[1, HOT[1]].all()  # a class's own units are never removed


GATE_HOT = {k: {c: [(4 * k + 2 * c) % 10, (4 * k + 2 * c + 1) % 10] for c in (0, 1)} for k in range(4)}


def _gate_monitor(model, variables, x, batch_size=256, with_gates=True):
    """LSTM gates by construction: on class c's samples gate k fires GATE_HOT[k][c] (0.9), the rest 0.1."""
    hidden, _ = _fake_monitor(model, variables, x, batch_size, False)
    cls = np.asarray(x)[:, 0] - 1
    g = np.full((len(x), np.asarray(x).shape[1], 4, zoo_module(model).units), 0.1, np.float32)
    for k, by_class in GATE_HOT.items():
        for c, units in by_class.items():
            g[np.ix_(cls == c, np.arange(g.shape[1]), [k], units)] = 0.9
    g += np.linspace(0, 0.01, g.size, dtype=np.float32).reshape(g.shape)
    return hidden, ({zoo_module(model).group_names()[0]: g} if with_gates else {})


def test_own_gates_remove_each_gates_units_of_the_other_class(monkeypatch):
    """gates="own": each gate by its own activation; gate k loses, for class c, exactly the units that gate fires
    on the other class (and the cap of 2 per gate block), so the gate axis is not mixed up."""
    model = create_model("rnn_lstm", 2, shape="many_to_one", units=10, vocab_size=4, input_len=3)
    x = np.repeat(np.array([[1, 1, 1], [2, 2, 2]]), 20, axis=0)
    y = np.repeat([0, 1], 20)
    monkeypatch.setattr(rnn_lib, "monitor", _gate_monitor)
    modules = rnn_lib.RnnDecomposition(mode="rolled", gates="own").decompose(
        model, model.init(jax.random.key(0), x[:1]), x, y, 2).modules
    (group,) = modules.units
    keep = np.asarray(modules.units[group])  # [2 classes, 4 gates, 10 units]
    assert keep.shape == (2, 4, 10)
    for k in range(4):
        for c, other in ((0, 1), (1, 0)):
            assert np.flatnonzero(~keep[c, k]).tolist() == sorted(GATE_HOT[k][other]), (k, c)


# ---------------------------------------------------------------------------------------------
# Module statistics: the headline means are over pairs i != j only


def test_mean_overlap_and_jaccard_leave_out_the_diagonal():
    inter = np.array([[4, 2, 0], [2, 6, 3], [0, 3, 5]])  # sizes 4, 6, 5 of 10 weights
    stats = summarize(inter, 10)
    assert stats["mean_size"] == pytest.approx(0.5)
    assert stats["mean_overlap"] == pytest.approx((0.2 + 0.0 + 0.3) / 3)  # with the diagonal it would be 0.2556
    jaccard = (2 / 8 + 0 / 9 + 3 / 8) / 3  # |A & B| / |A | B| per pair
    assert stats["mean_jaccard"] == pytest.approx(jaccard)
    assert stats["two_class_union_mean"] == pytest.approx(((4 + 6 - 2) + (4 + 5 - 0) + (6 + 5 - 3)) / 30)


# ---------------------------------------------------------------------------------------------
# MODA: every term of Eq. 7 non-zero, by hand


ACTS = jnp.array([[1.0, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1]])
LABELS = jnp.array([0, 0, 1, 1])


def test_moda_loss_with_every_term_non_zero_by_hand():
    r = 1 / np.sqrt(2)
    affinity = 1 - r  # same-label pairs (0, 1) and (2, 3): cos 1/sqrt(2) each
    dispersion = (0 + 0 + r + 0.5) / 4  # different-label pairs (0,2) (0,3) (1,2) (1,3)
    compactness = 6 / 12
    logits = jnp.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [0.5, 0.0]])
    ce = np.mean([np.log1p(np.exp(-2.0)), np.log(2.0), np.log1p(np.exp(-3.0)), np.log1p(np.exp(0.5))])
    loss, aux = losses.moda_loss(alpha=0.7, beta=2.0, gamma=0.3)(logits, {"a": ACTS}, LABELS % 2)
    np.testing.assert_allclose([aux["affinity"], aux["dispersion"], aux["compactness"]],
                               [affinity, dispersion, compactness], rtol=1e-6)
    np.testing.assert_allclose(loss, ce + 0.7 * affinity + 2.0 * dispersion + 0.3 * compactness, rtol=1e-6)


def test_moda_threshold_boundary_rows():
    """Rates exactly at tau are kept (>=), just below are not; a row with none kept takes its top k, k the largest
    thresholded module of the layer (2 here)."""
    rates = np.array([[0.9, 0.8999, 1.0, 0.0], [0.1, 0.2, 0.3, 0.0]], np.float32)
    keep = np.asarray(moda_lib.threshold_with_floor(jnp.asarray(rates), 0.9))
    assert keep[0].tolist() == [True, False, True, False]
    assert keep[1].tolist() == [False, True, True, False]  # below tau everywhere: its two most frequent units


# ---------------------------------------------------------------------------------------------
# Supermasks: each module is trained to say "mine" on its own class


def test_supermask_modules_are_confident_on_their_own_class():
    model = create_model("fc1", 3, units=16)
    rng = np.random.default_rng(0)
    y = (np.arange(120) % 3).astype(np.int32)
    x = (rng.normal(size=(120, 2, 2, 1)) + np.eye(4)[y].reshape(120, 2, 2, 1) * 3).astype(np.float32)
    variables = model.init(jax.random.key(0), x[:1])
    approach = sm.Supermask(k=0.5, epochs=8, batch_size=24, stemming=False)
    modules = approach.decompose(model, variables, x, y, 3).modules
    conf = module_outputs(model, variables, modules, x)  # [3, N]: each module's "my class" probability
    for c in range(3):
        assert conf[c, y == c].mean() > conf[c, y != c].mean() + 0.2, c
    assert voting_accuracy(conf, y) > 0.8


# ---------------------------------------------------------------------------------------------
# Translation: each sample is decoded by its own language's module (the routing behind BLEU)


def test_translation_routes_each_sample_to_its_languages_module():
    outputs = np.zeros((3, 4, 2, 5), np.float32)  # [modules, samples, steps, vocabulary]
    for m in range(3):
        outputs[m, :, :, m + 1] = 1.0  # module m always says token m + 1
    groups = np.array([2, 0, 1, 2])
    predicted = rnn_lib.routed_predictions(outputs, groups)
    np.testing.assert_array_equal(predicted, (groups + 1)[:, None].repeat(2, axis=1))  # sample i: module groups[i]
    with pytest.raises(ValueError, match=r"groups must be \(N,\) module indices in 0..2"):
        rnn_lib.routed_predictions(outputs, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="groups must be"):
        rnn_lib.routed_predictions(outputs, np.array([0, 1, 2]))

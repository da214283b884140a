"""Tests written for the mutants of the decomposition rules that survived `make mutation` (the rule modules of
Imtiaz et al.'s RNN decomposition, supermasks, MwT and slicing; experiments/results/mutation/): each one fails on
a mutant the other fast unit tests let through. Expected values are computed by hand in the comments."""

from __future__ import annotations

import dataclasses
import functools
import json
from types import SimpleNamespace

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmod import losses
from jaxmod.approaches import mwt as mwt_lib
from jaxmod.approaches import rnn as rnn_lib
from jaxmod.approaches import supermask as sm
from jaxmod.metrics.modules import element_statistics
from jaxmod.models import create_model, zoo_module
from jaxmod.modules import module_set
from jaxmod.running import channel_head
from jaxmod.topology import IndexMapSpec, LeafAxis, Topology, TopologySpec, UnitGroup

# ---------------------------------------------------------------------------------------------
# Imtiaz et al.: input checks name the problem (anchored messages: a mutated message fails)


def test_rnn_label_checks_name_the_problem():
    model = create_model("rnn_lstm", 3, shape="many_to_many", units=4, vocab_size=9, input_len=5)
    x = np.tile(np.arange(1, 6), (6, 1))
    y = np.tile([0, 1, 2, 0, 1], (6, 1))
    with pytest.raises(ValueError, match=r"^labels must be integers, got float64$"):
        rnn_lib.check_labels(model, x, y.astype(float), None, 3)
    with pytest.raises(ValueError, match=r"^labels must be \(N,\) or \(N, T\) for 6 samples, got shape \(6, 5, 1\)$"):
        rnn_lib.check_labels(model, x, y[..., None], None, 3)
    with pytest.raises(ValueError, match=r"^labels must be \(N,\) or \(N, T\) for 6 samples, got shape \(5, 5\)$"):
        rnn_lib.check_labels(model, x, y[:5], None, 3)
    with pytest.raises(ValueError, match=r"^y_valid has shape \(6, 4\), labels have \(6, 5\)$"):
        rnn_lib.check_labels(model, x, y, np.ones((6, 4), bool), 3)
    with pytest.raises(ValueError, match=r"^per-step labels have 4 steps but layers \['rnn1_h'\] run \{'rnn1_h': 5\} "
                                         r"steps$"):
        rnn_lib.check_labels(model, x, y[:, :4], None, 3)
    with pytest.raises(ValueError, match=r"^labels \[3\] lie outside the output vocabulary 0..2$"):
        rnn_lib.check_labels(model, x, np.where(y == 2, 3, y), None, 3)
    with pytest.raises(ValueError, match=r"^classes \[2\] have no samples; decomposition needs positives for every "
                                         r"class$"):
        rnn_lib.check_labels(model, x, np.where(y == 2, 0, y), None, 3)
    # a label outside the vocabulary on an invalid (padded) step is not looked at; negative labels are refused
    valid = y != 2
    assert rnn_lib.check_labels(model, x, np.where(y == 2, 7, y), valid, 2).tolist() == valid.tolist()
    with pytest.raises(ValueError, match=r"^labels \[-1\] lie outside"):
        rnn_lib.check_labels(model, x, np.where(y == 2, -1, y), None, 3)
    # at most 5 of the labels outside are named
    with pytest.raises(ValueError, match=r"^labels \[3, 4, 5, 6, 7\] lie outside the output vocabulary 0..2$"):
        rnn_lib.check_labels(model, x, np.array([3, 4, 5, 6, 7, 8]), None, 3)
    # a 0/1 validity mask is read as a mask (not as indices)
    got = rnn_lib.check_labels(model, x, np.where(y == 2, 7, y), valid.astype(np.int8), 2)
    assert got.dtype == bool and got.tolist() == valid.tolist()
    # per-sample labels pass and every step counts as valid
    assert rnn_lib.check_labels(model, x, np.array([0, 1, 2, 0, 1, 2]), None, 3).all()


# ---------------------------------------------------------------------------------------------
# Imtiaz et al.: the Jaccard index of a module and the model, by hand on three constructed module sets


def _variables(model, x, seed=0):
    """Variables shaped as ``model.init`` makes them (normal values), traced without compiling."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(s.dtype), shapes)


def _jaccard(model, units, head):
    x = np.ones((1, zoo_module(model).input_len), np.int64)
    variables = _variables(model, x)
    modules = module_set(rnn_lib.RnnDecomposition(), model, variables, x, units=units,
                         head=channel_head(model.num_classes, range(model.num_classes)) if head else None)
    return rnn_lib.module_model_jaccard(model, variables, modules)


def test_rnn_module_model_jaccard_rolled_two_layer_gru_by_hand():
    """GRU (3 gates, kernel and recurrent bias), embedding 32, 4 units, 2 layers, 3 classes. Module 0 keeps 3 then
    2 units, module 1 keeps 4 then 1; modules 2 keeps everything. Layer 1: 3 * kept columns x (32 inputs + kept
    units + 2 biases): 9 * 37 = 333, 12 * 38 = 456 of 456; layer 2 (its inputs: layer 1's kept units): 6 * (3 + 2 +
    2) = 42, 3 * (4 + 1 + 2) = 21 of 120; the output layer: (kept units + bias) x columns (1 channeled, 3 whole)
    of 15."""
    model = create_model("rnn_gru", 3, shape="many_to_many", units=4, vocab_size=9, input_len=5, num_layers=2)
    units = {"rnn1_h": np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], bool),
             "rnn2_h": np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], bool)}
    channeled = [333 + 42 + 3 * 1, 456 + 21 + 2 * 1, 456 + 120 + 5]
    np.testing.assert_allclose(_jaccard(model, units, head=True), np.array(channeled) / 591, rtol=1e-6)
    whole = [333 + 42 + 3 * 3, 456 + 21 + 2 * 3, 591]
    np.testing.assert_allclose(_jaccard(model, units, head=False), np.array(whole) / 591, rtol=1e-6)


def test_rnn_module_model_jaccard_unrolled_many_to_one_by_hand():
    """Vanilla cells (1 gate, one bias), 3 steps, 2 layers, many-to-one (layer 2 hands its last step to the output).
    Per step and layer: kept columns x (inputs + kept units + 1), the mean over steps. Layer 1 (32 inputs): module
    0 keeps 2, 4, 1 units: (2 * 35 + 4 * 37 + 1 * 34) / 3 = 84, module 1 keeps 1, 3, 2: (34 + 108 + 70) / 3, of
    148. Layer 2 (inputs: layer 1's kept units at the same step): module 0 keeps 1, 2, 3: (1 * (2 + 1 + 1) + 2 *
    (4 + 2 + 1) + 3 * (1 + 3 + 1)) / 3 = 11, module 1 keeps 4, 1, 1: (4 * 6 + 1 * 5 + 1 * 4) / 3 = 11, of 36.
    Output (channeled): the last step's kept units + 1: 4 and 2 (not step 1's 3 and 2), of 8 + 2."""
    model = create_model("rnn_vanilla", 2, shape="many_to_one", units=4, vocab_size=9, input_len=3, num_layers=2)
    units = {"rnn1_h": np.array([[[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]],
                                 [[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]]], bool),
             "rnn2_h": np.array([[[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]],
                                 [[1, 1, 1, 1], [0, 0, 0, 1], [0, 1, 0, 0]]], bool)}
    want = np.array([84 + 11 + 4, 212 / 3 + 11 + 2]) / (148 + 36 + 10)
    np.testing.assert_allclose(_jaccard(model, units, head=True), want, rtol=1e-6)


def test_rnn_module_model_jaccard_unrolled_many_to_many_by_hand():
    """One vanilla layer, 3 steps, every step feeds the (unchanneled, 2-column) output layer: the output rows are
    the mean kept units over the steps. Module 0 keeps 1, 2, 1 of 2 units: (34 + 70 + 34) / 3 = 46 of 70, and
    (4 / 3 + 1) x 2 of the output's 6."""
    model = create_model("rnn_vanilla", 2, shape="many_to_many", units=2, vocab_size=9, input_len=3)
    units = {"rnn1_h": np.array([[[1, 0], [1, 1], [0, 1]], [[1, 1], [1, 1], [1, 1]]], bool)}
    np.testing.assert_allclose(_jaccard(model, units, head=False), [(46 + 14 / 3) / 76, 1.0], rtol=1e-6)


def test_rnn_module_model_jaccard_own_gates_by_hand():
    """LSTM (4 gates, one bias), 2 units, own-gate masks [M, 4 gates, 2 units]: a gate column goes on its own and
    keeps every recurrent row. Module 0 keeps 5 of 8 gate columns: 5 * (32 + 2 + 1) = 175 of 280, module 1 all 8;
    the unchanneled output layer keeps all (2 + 1) x 2 of its 6."""
    model = create_model("rnn_lstm", 2, shape="many_to_one", units=2, vocab_size=9, input_len=3)
    gates = np.ones((2, 4, 2), bool)
    gates[0, [0, 2, 3], [1, 0, 1]] = False
    np.testing.assert_allclose(_jaccard(model, {"rnn1_gates": gates}, head=False), [181 / 286, 1.0], rtol=1e-6)


def test_rnn_jaccard_align_broadcasts_or_averages_the_previous_layers_rows():
    like = np.zeros((2, 3))
    rows = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert rnn_lib._align(rows, like) is rows  # same (module, step) shape: as it is
    np.testing.assert_array_equal(rnn_lib._align(np.array([2.0, 5.0]), like), [[2, 2, 2], [5, 5, 5]])  # rolled
    # another number of steps (an encoder's steps feeding a decoder's): the mean over the steps
    np.testing.assert_array_equal(rnn_lib._align(rows[:, :2], like), [[1.5, 1.5, 1.5], [4.5, 4.5, 4.5]])


# ---------------------------------------------------------------------------------------------
# Imtiaz et al.: sampling, statistics and the removal rules at their boundaries


def test_rnn_sampling_takes_num_positive_over_other_classes_negatives_per_label():
    """Per-sample labels, 3 classes: 4 positives ask for 4 // (3 - 1) = 2 negatives of each other label."""
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])
    pos, neg = rnn_lib.sample_weights(y, np.ones(10, bool), 3, num_positive=4)
    assert np.flatnonzero(pos[0]).tolist() == [0, 3, 6] and np.flatnonzero(pos[1]).tolist() == [1, 4, 7, 9]
    assert np.flatnonzero(neg[0]).tolist() == [1, 2, 4, 5]
    assert np.flatnonzero(neg[1]).tolist() == [0, 2, 3, 5]
    pos, neg = rnn_lib.sample_weights(y, np.ones(10, bool), 3, num_positive=3)  # 3 // 2 = 1 of each
    assert np.flatnonzero(pos[1]).tolist() == [1, 4, 7] and np.flatnonzero(neg[1]).tolist() == [0, 2]
    pos, neg = rnn_lib.sample_weights(y, np.ones(10, bool), 3, num_positive=1)  # 1 // 2 = 0: still one
    assert np.flatnonzero(neg[2]).tolist() == [0, 1]
    # per-step labels: an invalid (padded) step is neither a positive nor a negative of any class
    steps = np.array([[0, 1], [1, 1], [2, 0]])
    valid = np.ones((3, 2), bool)
    valid[1, 1] = False
    pos, neg = rnn_lib.sample_weights(steps, valid, 3, num_positive=2)
    assert not pos[:, 1, 1].any() and not neg[:, 1, 1].any()
    assert pos[1, :, 1].tolist() == [True, False, False] and neg[1, :, 1].tolist() == [False, False, True]
    # two classes: C - 1 = 1, so as many negatives as positives
    pos, neg = rnn_lib.sample_weights(y % 2, np.ones(10, bool), 2, num_positive=2)
    assert np.flatnonzero(pos[0]).tolist() == [0, 2] and np.flatnonzero(neg[0]).tolist() == [1, 4]


def test_rnn_masked_median_matches_numpy_on_equal_and_unequal_counts():
    values = np.array([[5.0, 1.0, 3.0, 2.0], [4.0, 9.0, 1.0, 7.0], [6.0, 2.0, 8.0, 3.0]], np.float32)
    # unequal counts (4, 3, 0): one sort; the even row's median is the mean of its two middle values
    weights = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
    got = rnn_lib.masked_median(values, weights, 1)
    assert got.shape == (3, 1)
    np.testing.assert_array_equal(got[:2, 0], [2.5, 4.0])
    assert np.isnan(got[2, 0])
    np.testing.assert_array_equal(rnn_lib.masked_median(values, weights, -1)[:2, 0], [2.5, 4.0])
    # equal counts: the partition at the middle ranks, even (4) and odd (3) counts
    np.testing.assert_array_equal(rnn_lib.masked_median(values, np.ones_like(weights), 1)[:, 0], [2.5, 5.5, 4.5])
    odd = np.ones_like(weights)
    odd[:, 3] = False
    np.testing.assert_array_equal(rnn_lib.masked_median(values, odd, 1)[:, 0], [3.0, 4.0, 6.0])
    # along axis 0 (columns select 2, 2, 2 and 1 values: 5 4, 1 9, 3 1, 2), and a tuple of axes
    np.testing.assert_array_equal(rnn_lib.masked_median(values, weights, 0)[0], [4.5, 5.0, 2.0, 2.0])
    cube = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    got = rnn_lib.masked_median(cube, np.ones((2, 2, 2), bool), (0, 2))  # [0, 1, 4, 5] and [2, 3, 6, 7]
    assert got.shape == (1, 2, 1)
    np.testing.assert_array_equal(got.ravel(), [2.5, 4.5])
    assert np.isnan(rnn_lib.masked_median(np.zeros((2, 0)), np.zeros((2, 0), bool), 1)).all()


def test_rnn_masked_median_of_rows_with_different_counts_sorts_each_row():
    """Rows selecting 2 and 9 values: the 9-value row's median is its 5th smallest (4), which a partition at the
    first row's middle ranks (0 and 1) does not place."""
    row = np.array([4.0, 5.0, 2.0, 6.0, 3.0, 8.0, 7.0, 0.0, 1.0], np.float32)
    weights = np.ones((2, 9), bool)
    weights[0, 2:] = False
    np.testing.assert_array_equal(rnn_lib.masked_median(np.stack([row, row]), weights, 1).ravel(), [4.5, 4.0])


def test_rnn_unrolled_statistic_matches_a_per_step_and_unit_reference():
    """Unrolled logistic statistics over (samples, steps, units) with a different number of selected samples per
    step (3 and 6: the sorting path), against NumPy's median per step and unit."""
    rng = np.random.default_rng(5)
    values = rng.standard_t(2, (6, 2, 3)).astype(np.float32)
    selection = np.zeros((1, 6, 2), bool)
    selection[0, [0, 2, 5], 0] = True
    selection[0, :, 1] = True
    got = rnn_lib.class_statistics(values, selection, rolled=False, kind="logistic")
    assert got.shape == (1, 2, 3)
    for t in range(2):
        for k in range(3):
            col = np.abs(values[selection[0, :, t], t, k])
            dev = np.abs(col - np.median(col))
            mad = np.median(dev)
            kept = col[dev / mad < 2] if mad > 0 else col
            assert got[0, t, k] == pytest.approx(kept.mean(), rel=1e-5), (t, k)


OUTLIER_BOUNDARY = np.array([0.0, 1.0, 1.0, 3.0], np.float32)  # median 1, |x - 1| = 1, 0, 0, 2 -> MAD 0.5:
# scores 2, 0, 0, 4. A score of exactly 2 is an outlier (the authors keep |x - median| / MAD < 2): mean of 1, 1.


def test_rnn_outlier_score_of_exactly_two_is_dropped_rolled_and_unrolled():
    w = np.ones(4, bool)
    assert float(rnn_lib.mean_minus_outliers(OUTLIER_BOUNDARY, w, 0)) == 1.0
    obs = np.stack([OUTLIER_BOUNDARY, -OUTLIER_BOUNDARY], axis=1)  # two units; |h| is what counts
    np.testing.assert_array_equal(rnn_lib.pooled_statistic(obs, "logistic"), [1.0, 1.0])
    values = obs[:, None, :]  # (N 4, T 1, K 2)
    sel = np.ones((1, 4, 1), bool)
    np.testing.assert_array_equal(rnn_lib.class_statistics(values, sel, rolled=True, kind="logistic"), [[1.0, 1.0]])
    np.testing.assert_array_equal(rnn_lib.class_statistics(values, sel, rolled=False, kind="logistic"),
                                  [[[1.0, 1.0]]])
    # an odd count: median 1 (of 0, 1, 1, 3, 9), |x - 1| = 1, 0, 0, 2, 8 -> MAD 1: 9 (score 8) goes, 3 (2) too
    five = np.array([0.0, 1.0, 1.0, 3.0, 9.0], np.float32)
    np.testing.assert_allclose(rnn_lib.pooled_statistic(five[:, None], "logistic"), [2 / 3])
    np.testing.assert_allclose(float(rnn_lib.mean_minus_outliers(five, np.ones(5, bool), 0)), 2 / 3)
    nothing = rnn_lib.pooled_statistic(np.zeros((0, 3)), "logistic")  # no observation: NaN for each of 3 units
    assert nothing.shape == (3,) and np.isnan(nothing).all()
    # a MAD of 0 keeps everything, even 5 (|5 - 2| = 3, which is 2 or more): (2 + 2 + 2 + 5) / 4
    np.testing.assert_allclose(rnn_lib.pooled_statistic(np.array([[2.0], [2.0], [2.0], [5.0]]), "logistic"), [2.75])


def test_rnn_pooled_statistic_of_twelve_observations_matches_numpy():
    """12 observations (even: the median is the mean of the 6th and 7th smallest, 1.1 and 1.1): the partition must
    place both middle ranks (a partition at the 4th and 7th does not place the 6th here)."""
    obs = np.array([0.1, 1.2, 0.9, 5.8, 1.0, 0.3, 2.5, 2.2, 3.1, 1.1, 0.5, 1.1], np.float32)
    dev = np.abs(obs - np.median(obs))
    want = obs[dev / np.median(dev) < 2].mean()
    np.testing.assert_allclose(rnn_lib.pooled_statistic(obs[:, None], "logistic"), [want], rtol=1e-6)


def test_rnn_rate_of_a_single_observation_and_of_many_per_step():
    """One selected observation is a rate of 0 or 1 (not NaN, not halved); a step with more than one padding
    multiple (64) of selected samples uses every one of them."""
    assert float(rnn_lib.rate(np.array([0.7, 0.0]), np.array([True, False]), 0)) == 1.0
    assert float(rnn_lib.rate(np.array([0.0, 0.7]), np.array([True, False]), 0)) == 0.0
    values = np.zeros((70, 1, 1), np.float32)
    values[64:] = 1.0  # only the last 6 of 70 selected samples are active
    got = rnn_lib.class_statistics(values, np.ones((1, 70, 1), bool), rolled=False, kind="relu")
    assert got[0, 0, 0] == pytest.approx(6 / 70)
    index, chosen = rnn_lib.gather_selection(np.ones((1, 70, 1), bool))
    assert index.shape == (1, 1, 70) and chosen.all()


def test_rnn_vocab_fingerprint_is_pinned():
    """Saved module sets carry it (meta.input_vocab): it must not change between versions."""
    assert rnn_lib.vocab_fingerprint(["a", "b"], 3) == "2daeb99529e20a1f"
    assert rnn_lib.vocab_fingerprint(["the", "cat"], 12) == "8903f717bbe42481"


def test_rnn_gate_rate_counts_half_and_relu_rate_counts_only_positive():
    """Own-gate statistics: the rate of |g| >= 0.5 (0.5 counts); ReLU: the rate of h > 0 (0 does not)."""
    gate = np.array([0.5, 0.49, -0.5, 0.9], np.float32)  # |g| >= 0.5: 3 of 4
    relu = np.array([0.0, 0.1, 0.0, 2.0], np.float32)  # > 0: 2 of 4
    values = np.stack([gate, relu], axis=1)[:, None, :]  # (N 4, T 1, K 2)
    sel = np.ones((1, 4, 1), bool)
    for rolled in (True, False):
        g = rnn_lib.class_statistics(values, sel, rolled=rolled, kind="gate").reshape(-1)
        r = rnn_lib.class_statistics(values, sel, rolled=rolled, kind="relu").reshape(-1)
        np.testing.assert_array_equal(g, [0.75, 0.25], err_msg=f"rolled={rolled}")  # relu column: only 2.0
        np.testing.assert_array_equal(r, [1.0, 0.5], err_msg=f"rolled={rolled}")  # gate column: every |g| > 0
    w = np.ones(4, bool)
    assert float(rnn_lib.rate(gate, w, 0, threshold=0.5, inclusive=True)) == 0.5  # signed: -0.5 is below
    assert float(rnn_lib.rate(gate, w, 0, threshold=0.5)) == 0.25
    assert float(rnn_lib.rate(relu, w, 0)) == 0.5
    assert np.isnan(float(rnn_lib.rate(relu, np.zeros(4, bool), 0)))
    # unrolled: one rate per step, a step with no selected sample is NaN
    two = np.stack([relu, relu[::-1]], axis=1)[:, :, None]  # (N 4, T 2, K 1)
    sel = np.zeros((1, 4, 2), bool)
    sel[0, :3, 0] = True  # step 0: 0, 0.1, 0 -> 1/3; step 1: nothing
    got = rnn_lib.class_statistics(two, sel, rolled=False, kind="relu")
    assert got.shape == (1, 2, 1)
    assert got[0, 0, 0] == pytest.approx(1 / 3) and np.isnan(got[0, 1, 0])


def test_rnn_removal_takes_only_negative_differences_most_negative_first():
    d = np.array([0.0, -0.1, -0.1, 0.3, -0.2])
    assert np.flatnonzero(~np.asarray(rnn_lib.remove_units(d, 1.0))).tolist() == [1, 2, 4]  # 0 is not < 0
    # cap ceil(0.4 * 5) = 2: the most negative (4), then of the tie at -0.1 the lower index (1)
    assert rnn_lib.removal_cap(5, 0.4) == 2 and rnn_lib.removal_cap(5, 0.41) == 3
    assert np.flatnonzero(~np.asarray(rnn_lib.remove_units(d, 0.4))).tolist() == [1, 4]
    assert np.asarray(rnn_lib.remove_units(d, 0.0)).all()
    # ties among many units (an unstable sort reorders them): the lowest indices go first
    assert np.flatnonzero(~np.asarray(rnn_lib.remove_units(np.full(40, -0.5), 0.125))).tolist() == [0, 1, 2, 3, 4]
    # a unit never observed (NaN) stays, however the others are ordered
    assert np.asarray(rnn_lib.remove_units(np.array([np.nan, -1.0, -2.0]), 1.0)).tolist() == [True, False, False]


def test_rnn_relu_keep_treats_unobserved_units_as_kept_and_untangled():
    """Positive rate NaN: never observed, so not "never active" (kept); negative rate NaN: not tangled."""
    positive = np.array([np.nan, 0.0, 0.0, 0.5])
    negative = np.array([0.0, np.nan, 0.3, 0.0])
    assert np.asarray(rnn_lib.relu_keep(positive, negative, 1.0)).tolist() == [True, False, True, True]
    # the cap applies to the idle units: ceil(0.25 * 4) = 1, the lower index (1) goes
    assert np.asarray(rnn_lib.relu_keep(positive, np.zeros(4), 0.25)).tolist() == [True, False, True, True]
    assert np.asarray(rnn_lib.relu_keep(positive, np.zeros(4), 0.5)).tolist() == [True, False, False, True]


# ---------------------------------------------------------------------------------------------
# Imtiaz et al.: the approach's settings


def test_rnn_settings_their_defaults_and_their_checks():
    a = rnn_lib.RnnDecomposition()
    assert a.config() == {"mode": "unrolled", "gates": "hidden", "max_remove": 0.2, "num_positive": 500,
                          "statistic": "auto", "channel": True, "encoder": True}
    assert a.batch_size == 256 and a.name == "rnn" and a.training_loss() is None
    for field, value, message in (
            ("mode", "x", r"^mode must be one of \('rolled', 'unrolled'\), got 'x'$"),
            ("gates", "x", r"^gates must be one of \('hidden', 'own'\), got 'x'$"),
            ("statistic", "x", r"^statistic must be one of \('auto', 'logistic', 'relu'\), got 'x'$"),
            ("max_remove", -0.1, r"^max_remove must be in \[0, 1\], got -0.1$"),
            ("max_remove", 1.1, r"^max_remove must be in \[0, 1\], got 1.1$"),
            ("num_positive", 0, r"^num_positive and batch_size must be >= 1$"),
            ("batch_size", 0, r"^num_positive and batch_size must be >= 1$")):
        with pytest.raises(ValueError, match=message):
            rnn_lib.RnnDecomposition(**{field: value})
    for boundary in ({"max_remove": 0.0}, {"max_remove": 1.0}, {"num_positive": 1, "batch_size": 1}):
        rnn_lib.RnnDecomposition(**boundary)
    tanh = create_model("rnn_vanilla", 2, shape="many_to_one", units=2, vocab_size=4, input_len=2)
    relu = create_model("rnn_vanilla", 2, shape="many_to_one", units=2, vocab_size=4, input_len=2, activation="relu")
    assert (a.kind(tanh), a.kind(relu)) == ("logistic", "relu")
    assert rnn_lib.RnnDecomposition(statistic="relu").kind(tanh) == "relu"
    assert rnn_lib.RnnDecomposition(statistic="logistic").kind(relu) == "logistic"
    assert rnn_lib.RnnDecomposition.for_shape("many_to_one", mode="rolled", num_positive=None) == \
        rnn_lib.RnnDecomposition(mode="rolled")


# ---------------------------------------------------------------------------------------------
# Kingetsu et al. (supermasks): settings, initialisation, the optimizer, the mask trees and the batches


def _tiny_fc1():
    """FC1 over 2x2 inputs, 4 hidden units, 3 classes, every weight 1 (its shapes are what matter here)."""
    model = create_model("fc1", 3, units=4)
    params = {"fc1": {"kernel": np.ones((4, 4), np.float32), "bias": np.zeros(4, np.float32)},
              "logits": {"kernel": np.ones((4, 3), np.float32), "bias": np.zeros(3, np.float32)}}
    return model, {"params": params}


def test_supermask_settings_their_defaults_and_their_checks():
    a = sm.Supermask()
    assert a.config() == {"k": 0.1, "alpha": 1.0, "p": 1.0, "share_init": True, "stemming": True, "epochs": 5,
                          "batch_size": 32, "score_lr": 0.1, "graft_lr": 0.01, "momentum": 0.9, "weight_decay": 0.0,
                          "seed": 0, "batch_norm": "module"}
    assert a.name == "supermask" and a.module_chunk == 0 and a.training_loss() is None
    for options, message in (
            ({"k": 0.0}, r"^k \(the fraction of weights each supermask keeps\) must be in \(0, 1\], got 0.0$"),
            ({"k": True}, r"^k \(the fraction of weights each supermask keeps\) must be in \(0, 1\], got True$"),
            ({"k": "0.5"}, r"^k \(the fraction .* got '0.5'$"),
            ({"alpha": -1.0}, r"^alpha \(stemming weight\) must be >= 0, got -1.0$"),
            ({"alpha": "1"}, r"^alpha \(stemming weight\) must be >= 0, got '1'$"),
            ({"p": 0.5}, r"^p \(the stemming loss's Lp exponent\) must be >= 1, got 0.5$"),
            ({"p": "2"}, r"^p \(the stemming loss's Lp exponent\) must be >= 1, got '2'$"),
            ({"epochs": 0}, r"^epochs must be a positive integer, got 0$"),
            ({"epochs": True}, r"^epochs must be a positive integer, got True$"),
            ({"batch_size": 2.0}, r"^batch_size must be a positive integer, got 2.0$"),
            ({"score_lr": 0.0}, r"^score_lr must be > 0, got 0.0$"),
            ({"graft_lr": -1.0}, r"^graft_lr must be > 0, got -1.0$"),
            ({"momentum": 1.0}, r"^momentum must be in \[0, 1\), got 1.0$"),
            ({"momentum": -0.1}, r"^momentum must be in \[0, 1\), got -0.1$"),
            ({"weight_decay": -1e-4}, r"^weight_decay must be >= 0, got -0.0001$"),
            ({"seed": -1}, r"^seed must be a non-negative integer, got -1$"),
            ({"seed": True}, r"^seed must be a non-negative integer, got True$"),
            ({"seed": 1.0}, r"^seed must be a non-negative integer, got 1.0$"),
            ({"module_chunk": -1}, r"^module_chunk must be a non-negative integer \(0: all modules in one vmap\), "
                                   r"got -1$"),
            ({"module_chunk": True}, r"^module_chunk must be .* got True$"),
            ({"module_chunk": 1.0}, r"^module_chunk must be .* got 1.0$"),
            ({"batch_norm": "train"}, r"^batch_norm must be one of \('module', 'running'\), got 'train'$")):
        with pytest.raises(ValueError, match=message):
            sm.Supermask(**options)
    # the boundaries are accepted
    sm.Supermask(k=1.0, alpha=0, p=1, epochs=1, batch_size=1, momentum=0.0, weight_decay=0.0, seed=0, module_chunk=1,
                 batch_norm="running")
    assert sm.Supermask(k=np.float32(0.5)).k == 0.5 and sm.Supermask(k=1).k == 1  # NumPy and int fractions


def test_supermask_graft_starts_as_a_channeling():
    graft = sm.init_graft(4, [2, 0])
    # column 1 reads the module's own logit, column 0 the mean of the 3 others
    np.testing.assert_allclose(graft["kernel"][0], [[1 / 3, 0], [1 / 3, 0], [0, 1], [1 / 3, 0]])
    np.testing.assert_allclose(graft["kernel"][1], [[0, 1], [1 / 3, 0], [1 / 3, 0], [1 / 3, 0]])
    np.testing.assert_array_equal(graft["bias"], np.zeros((2, 2)))


def test_supermask_scores_are_kaiming_normal_and_shared_on_request():
    params = {"wide": {"kernel": np.zeros((200, 50), np.float32), "bias": np.zeros(50, np.float32)},
              "out": {"kernel": np.zeros((50, 2), np.float32)}}
    shared = sm.init_scores(params, 3, jax.random.key(0), share=True)
    assert set(shared) == {"wide", "out"} and set(shared["wide"]) == {"kernel"}  # kernels only
    assert shared["wide"]["kernel"].shape == (3, 200, 50) and shared["out"]["kernel"].shape == (3, 50, 2)
    for leaf in jax.tree.leaves(shared):
        np.testing.assert_array_equal(leaf[0], leaf[2])  # one draw for every module
    # ReLU gain, fan in: std sqrt(2 / 200) (a normal draw of 10,000 values; gain 1 or 3, or the fan out 50, would be
    # 20% off or more)
    assert float(jnp.std(shared["wide"]["kernel"][0])) == pytest.approx(np.sqrt(2 / 200), rel=0.03)
    assert not np.allclose(shared["wide"]["kernel"][0, :50, :2], shared["out"]["kernel"][0])  # a key per leaf
    own = sm.init_scores({"wide": params["wide"]}, 3, jax.random.key(0), share=False)
    wide = np.asarray(own["wide"]["kernel"])
    assert not np.allclose(wide[0], wide[1]) and not np.allclose(wide[1], wide[2])  # a draw per module
    assert float(np.std(wide)) == pytest.approx(np.sqrt(2 / 200), rel=0.03)


def test_supermask_optimizer_is_nesterov_sgd_on_a_cosine_with_optional_weight_decay():
    p, g = {"w": jnp.array([2.0])}, {"w": jnp.array([1.0])}

    def first_two_updates(approach, lr, steps):
        opt = approach._optimizer(lr, steps)
        state = opt.init(p)
        u1, state = opt.update(g, state, p)
        u2, _ = opt.update(g, state, p)
        return float(u1["w"][0]), float(u2["w"][0])

    # Nesterov momentum 0.9: the first step moves by lr * (g + 0.9 g); the cosine over 2 steps halves lr at step 1,
    # where the trace is g + 0.9 g = 1.9 and the step lr/2 * (g + 0.9 * 1.9)
    u1, u2 = first_two_updates(sm.Supermask(), 0.1, 2)
    assert u1 == pytest.approx(-0.1 * 1.9) and u2 == pytest.approx(-0.05 * (1 + 0.9 * 1.9))
    u1, u2 = first_two_updates(sm.Supermask(momentum=0.0), 0.1, 2)  # plain SGD
    assert u1 == pytest.approx(-0.1) and u2 == pytest.approx(-0.05)
    # weight decay adds wd * w to the gradient first: (1 + 0.5 * 2) = 2
    u1, _ = first_two_updates(sm.Supermask(momentum=0.0, weight_decay=0.5), 0.1, 2)
    assert u1 == pytest.approx(-0.2)
    u1, u2 = first_two_updates(sm.Supermask(momentum=0.0), 0.1, 0)  # no steps: a schedule of one step
    assert u1 == pytest.approx(-0.1) and u2 == pytest.approx(0.0)


def test_supermask_mask_trees_cover_the_kernels_only():
    _, variables = _tiny_fc1()
    params = variables["params"]
    assert sm.masked_paths(params) == (("fc1", "kernel"), ("logits", "kernel"))
    nested = {"block": {"conv": {"kernel": np.ones((3, 3, 1, 2)), "bias": np.ones(2)}, "bn": {"scale": np.ones(2)}},
              "fc": {"kernel": np.ones((2, 2))}}
    assert sm.masked_paths(nested) == (("block", "conv", "kernel"), ("fc", "kernel"))  # kernels at any depth
    assert set(sm.mask_template(params)) == {"fc1", "logits"} and set(sm.mask_template(params)["fc1"]) == {"kernel"}
    assert sm.masked_weight_count(params) == 16 + 12
    masks = {"fc1": {"kernel": np.ones((2, 4, 4), bool)}, "logits": {"kernel": np.zeros((2, 4, 3), bool)}}
    tree = sm.weight_masks(params, masks)
    assert tree["fc1"]["bias"] is None and tree["logits"]["bias"] is None
    assert tree["fc1"]["kernel"] is masks["fc1"]["kernel"]
    with pytest.raises(ValueError, match=r"^mask leaves \['fc2/kernel'\] are not parameters$"):
        sm.weight_masks(params, {**masks, "fc2": {"kernel": np.ones((2, 1), bool)}})


def test_supermask_batch_order_drops_the_last_partial_batch_and_depends_on_seed_and_epoch():
    a = sm.Supermask(batch_size=4, seed=3)
    order = a.batch_order(10, 0)
    assert order.shape == (2, 4) and order.dtype == np.int32 and len(set(order.ravel().tolist())) == 8
    np.testing.assert_array_equal(order, a.batch_order(10, 0))
    assert not np.array_equal(order, a.batch_order(10, 1))
    assert not np.array_equal(order, sm.Supermask(batch_size=4, seed=4).batch_order(10, 0))
    assert sm.Supermask(batch_size=5).batch_order(10, 0).shape == (2, 5)


def test_supermask_check_inputs_name_the_problem():
    model, variables = _tiny_fc1()
    a = sm.Supermask(batch_size=4)
    x, y = np.zeros((6, 2, 2, 1), np.float32), np.arange(6) % 3
    assert a.check_inputs(model, variables, x, y, 3) == (0, 1, 2)
    assert a.check_inputs(model, variables, x, y, 3, classes=[2, 0]) == (2, 0)
    with pytest.raises(ValueError, match=r"^num_classes is 4 but the model has 3 classes$"):
        a.check_inputs(model, variables, x, y, 4)
    with pytest.raises(ValueError, match=r"^variables must be a mapping of collections that includes 'params'$"):
        a.check_inputs(model, {"batch_stats": {}}, x, y, 3)
    with pytest.raises(ValueError, match=r"^variables must be a mapping"):
        a.check_inputs(model, [variables], x, y, 3)
    with pytest.raises(ValueError, match=r"^the model has no 'kernel' weights for a supermask to cover$"):
        a.check_inputs(model, {"params": {"fc1": {"bias": np.zeros(4)}}}, x, y, 3)
    with pytest.raises(ValueError, match=r"^6 samples but 5 labels$"):
        a.check_inputs(model, variables, x, y[:5], 3)
    with pytest.raises(ValueError, match=r"^3 samples, fewer than one decomposition batch of 4$"):
        a.check_inputs(model, variables, x[:3], y[:3], 3)
    sm.Supermask(batch_size=3).check_inputs(model, variables, x[:3], y[:3], 3)  # exactly one batch
    with pytest.raises(ValueError, match=r"^classes \[2\] have no samples to decompose from$"):
        a.check_inputs(model, variables, x, y % 2, 3)


def test_supermask_batch_statistics_only_for_module_batch_norm_with_statistics():
    with_stats = {"params": {}, "batch_stats": {"bn": {"mean": np.zeros(2)}}}
    assert sm.uses_batch_statistics(with_stats, "module")
    assert not sm.uses_batch_statistics(with_stats, "running")
    assert not sm.uses_batch_statistics({"params": {}}, "module")
    assert not sm.uses_batch_statistics({"params": {}, "batch_stats": {}}, "module")


def test_supermask_top_k_of_large_scores_needs_all_31_bisection_steps():
    """|scores| near 1e30 have bit patterns above 2^30, so the threshold search needs its 31st step."""
    scores = jnp.array([[3e30, -1e30, 2e30, 5e29, 4e30, 1e-3]], jnp.float32)
    np.testing.assert_array_equal(np.asarray(sm.hard_top_k_rows(scores, 0.5)), [[True, False, True, False, True,
                                                                                   False]])
    # 64 tied scores, 10 kept (64 - int(0.84375 * 64)): the first 10 by index, found by bisecting positions
    tied = np.asarray(sm.hard_top_k_rows(jnp.full((2, 64), 0.5), 0.15625))
    assert tied.sum(axis=1).tolist() == [10, 10] and tied[:, :10].all()
    # 65 tied scores, 64 kept (65 - int(0.02 * 65)): the position search over 0..65 needs ceil(log2(66)) = 7 steps
    tied = np.asarray(sm.hard_top_k(jnp.full(65, 0.5), 0.98))
    assert tied.sum() == 64 and not tied[64]
    tiny = jnp.array([1e-38, 3e-38, 2e-38, 0.0], jnp.float32)  # small bit patterns
    np.testing.assert_array_equal(np.asarray(sm.hard_top_k(tiny, 0.5)), [False, True, True, False])


# ---------------------------------------------------------------------------------------------
# MwT: settings, the threshold rule at its boundaries, and completing the masks over every group


def test_mwt_settings_their_defaults_and_their_checks():
    a = mwt_lib.MwT()
    assert a.config() == {"alpha": 0.5, "beta": 1.5, "tau": 0.9, "tau_step": 0.05, "averaging": "class",
                          "finetune_epochs": 5, "finetune_lr": 0.01, "batch_size": 512}
    assert a.name == "mwt" and a.training_config() == {"alpha": 0.5, "beta": 1.5, "averaging": "class"}
    for options, message in (
            ({"tau": 0.0}, r"^tau must be in \(0, 1\], got 0.0$"),
            ({"tau": 1.01}, r"^tau must be in \(0, 1\], got 1.01$"),
            ({"tau_step": 0.0}, r"^tau_step must be in \(0, tau\], got 0.0$"),
            ({"tau": 0.5, "tau_step": 0.6}, r"^tau_step must be in \(0, tau\], got 0.6$"),
            ({"alpha": -0.1}, r"^alpha must be >= 0, got -0.1$"),
            ({"beta": -0.1}, r"^beta must be >= 0, got -0.1$"),
            ({"averaging": "mean"}, r"^averaging must be 'class' or 'pair', got 'mean'$"),
            ({"finetune_epochs": -1}, r"^finetune_epochs must be an integer >= 0, got -1$"),
            ({"finetune_epochs": 1.0}, r"^finetune_epochs must be an integer >= 0, got 1.0$"),
            ({"finetune_lr": 0.0}, r"^finetune_lr must be > 0, got 0.0$"),
            ({"batch_size": 0}, r"^batch_size must be >= 1, got 0$")):
        with pytest.raises(ValueError, match=message):
            mwt_lib.MwT(**options)
    mwt_lib.MwT(tau=1.0, tau_step=1.0, alpha=0.0, beta=0.0, averaging="pair", finetune_epochs=0, batch_size=1)
    assert a.training_model(create_model("lenet5", 10)).mask_generators  # MwT trains the model with its generators
    # the loss it trains with carries its weights and averaging (the losses' own tests check the values)
    m = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    y = jnp.array([0, 0, 0, 1, 1])
    logits = jnp.zeros((5, 2))
    for options in ({}, {"alpha": 0.2, "beta": 3.0, "averaging": "pair"}):
        got, _ = mwt_lib.MwT(**options).training_loss()(logits, {"mask@g": m}, y)
        want, _ = losses.mwt_loss(**{"alpha": 0.5, "beta": 1.5, "averaging": "class", **options})(
            logits, {"mask@g": m}, y)
        assert float(got) == pytest.approx(float(want))


def test_mwt_threshold_steps_down_to_the_smallest_positive_step():
    """tau 0.9, step 0.05: thresholds 0.9, 0.85, ..., 0.1, 0.05. A best frequency of 0.07 stops at 0.05 (keeping 0.06
    too); 0.045 lies below every step, so the class keeps its most frequent kernel(s)."""
    freq = np.array([[0.07, 0.06, 0.04], [0.045, 0.045, 0.01]])
    np.testing.assert_allclose(mwt_lib.lowered_thresholds(freq, 0.9), [0.05, 0.045])
    np.testing.assert_array_equal(mwt_lib.module_kernels(freq, 0.9), [[True, True, False], [True, True, False]])
    # a coarser step: 0.5, 0.25 (tau / step = 2 steps); 0.3 stops at 0.25, keeping 0.26 and not 0.2
    np.testing.assert_array_equal(mwt_lib.module_kernels(np.array([[0.3, 0.26, 0.2]]), 0.5, step=0.25),
                                  [[True, True, False]])
    # a best frequency exactly at a lowered step stops there, not a step lower (0.8 would keep 0.82 too); counts
    # over n that land on the step up to rounding (17 / 20 and 0.9 - 0.05) count as reaching it
    np.testing.assert_array_equal(mwt_lib.module_kernels(np.array([[17 / 20, 0.82, 0.3]]), 0.9), [[True, False, False]])
    assert mwt_lib.lowered_thresholds(np.array([[17 / 20, 0.82]]), 0.9)[0] == pytest.approx(0.85)
    below = np.array([[0.7 - 0.4, 0.29]])  # 0.29999999999999993: reaches 0.3 within the tolerance, 0.29 does not
    np.testing.assert_array_equal(mwt_lib.module_kernels(below, 0.3, step=0.1), [[True, False]])
    np.testing.assert_array_equal(mwt_lib.module_kernels(np.array([[0.1 * 3, 0.29]]), 0.3, step=0.1), [[True, False]])
    with pytest.raises(ValueError, match=r"^classes \[1\] have no kernel with a non-zero mask in this layer; nothing "
                                         r"can be kept$"):
        mwt_lib.lowered_thresholds(np.array([[0.5, 0.1], [0.0, 0.0], [1.0, 0.0]]), 0.9)


def _residual_topology():
    """Groups in forward order: a, c2 (gated), s (a residual sum without producers of its own, read through a and
    c2), t (a sum that produces units itself), u (read from c2 and from w, which comes later), w, v."""
    layer = lambda name: (LeafAxis((name, "kernel"), -1),)  # noqa: E731
    groups = (UnitGroup("a", layer("a")), UnitGroup("c2", layer("c2")), UnitGroup("s", ()), UnitGroup("t", layer("t")),
              UnitGroup("u", ()), UnitGroup("w", layer("w")), UnitGroup("v", layer("v")))
    maps = (IndexMapSpec("a_id", "a", "s"), IndexMapSpec("c2_pad", "c2", "s"), IndexMapSpec("c2_t", "c2", "t"),
            IndexMapSpec("c2_u", "c2", "u"), IndexMapSpec("w_u", "w", "u"))
    return Topology(TopologySpec(groups, (), maps), {g.name: 3 for g in groups}, {}, 2, ())


def test_mwt_complete_masks_take_the_union_into_residual_sums_only():
    gated = {"a": np.array([[1, 0, 0], [0, 1, 0]], bool), "c2": np.array([[0, 0, 1], [0, 1, 0]], bool)}
    masks = mwt_lib.complete_masks(_residual_topology(), gated, 2)
    assert sorted(masks) == ["a", "c2", "s", "t", "u", "v", "w"]
    np.testing.assert_array_equal(masks["s"], [[1, 0, 1], [0, 1, 0]])  # a | c2
    for whole in ("t", "u", "v", "w"):  # own producers, a source not settled yet, ungated: kept whole
        np.testing.assert_array_equal(masks[whole], np.ones((2, 3), bool), err_msg=whole)
    np.testing.assert_array_equal(masks["a"], gated["a"])
    with pytest.raises(ValueError, match=r"^masks for unknown groups \['x', 'y'\]$"):
        mwt_lib.complete_masks(_residual_topology(), {**gated, "y": gated["a"], "x": gated["a"]}, 2)
    as_ints = mwt_lib.complete_masks(_residual_topology(), {g: m.astype(np.int8) for g, m in gated.items()}, 2)
    assert all(m.dtype == bool for m in as_ints.values())
    np.testing.assert_array_equal(as_ints["s"], masks["s"])
    both = np.concatenate([gated["c2"], gated["a"]], axis=1)
    np.testing.assert_array_equal(mwt_lib.gated_kernels(masks, ["c2", "a"]), both)


def test_mwt_generator_parameters_are_told_apart_and_stripped():
    variables = {"params": {"conv2": {"kernel": np.ones(2)}, "conv2_generator": {"kernel": np.ones(3)},
                            "block": {"conv_generator": {"bias": np.ones(1)}, "conv": {"bias": np.ones(1)}}},
                 "batch_stats": {"conv2_generator": {"mean": np.ones(1)}}}
    assert mwt_lib.has_generator_params(variables)
    plain = mwt_lib.strip_generators(variables)
    assert plain == {"params": {"conv2": {"kernel": variables["params"]["conv2"]["kernel"]},
                                "block": {"conv": {"bias": variables["params"]["block"]["conv"]["bias"]}}},
                     "batch_stats": {}}
    assert not mwt_lib.has_generator_params(plain) and not mwt_lib.has_generator_params({})
    with pytest.raises(ValueError, match=r"^MLP has no conv layer MwT can mask \(no mask_generators option\)$"):
        mwt_lib.with_generators(create_model("fc1", 3, units=4))
    lenet = create_model("lenet5", 10)
    assert mwt_lib.with_generators(lenet).mask_generators and not mwt_lib.with_generators(lenet, False).mask_generators


def test_mwt_decompose_keeps_each_class_kernels_at_or_above_tau(monkeypatch):
    """LeNet-5's one gated group (conv2, 16 kernels) with made-up counts over 10 samples per class: class c's
    kernel c fires on all 10, kernel c + 1 on 9, kernel c + 2 on 8. With tau 0.9 module c keeps kernels c, c + 1;
    with tau 0.95 only c; the ungated groups stay whole; the modules describe the plain model."""
    model = create_model("lenet5", 10)
    shape = (28, 28, 1)
    gen = mwt_lib.with_generators(model)
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                             jax.eval_shape(lambda: gen.init(jax.random.key(0), jnp.zeros((1, *shape)))))
    x, y = np.zeros((20, *shape), np.float32), np.arange(20) % 10
    counts = np.zeros((10, 16), np.int32)
    for c in range(10):
        counts[c, [c, c + 1, c + 2]] = [10, 9, 8]
    calls = []

    def fake_counts(m, v, xs, ys, num_classes, batch_size):
        calls.append((m.mask_generators, len(xs), num_classes, batch_size))
        assert v is variables and np.array_equal(ys, y)  # the trained variables and the labels, passed on
        return {"mask@conv2_relu": jnp.asarray(counts)}, jnp.full(10, 10, jnp.int32)

    monkeypatch.setattr(mwt_lib, "class_activation_counts", fake_counts)
    d = mwt_lib.MwT(batch_size=7).decompose(model, variables, x, y, 10)
    assert calls == [(True, 20, 10, 7)]
    keep = np.asarray(d.modules.units["conv2_relu"])
    assert [np.flatnonzero(k).tolist() for k in keep] == [[c, c + 1] for c in range(10)]
    for g in ("conv1_relu", "fc1_relu", "fc2_relu"):
        assert np.asarray(d.modules.units[g]).all(), g
    np.testing.assert_allclose(d.statistics["kernel_frequency"]["conv2_relu"], counts / 10)
    assert d.statistics["gated_groups"] == ("conv2_relu",)
    assert not d.modules.meta.model_config.get("mask_generators", False)
    assert d.modules.meta.input_shape == shape and d.modules.meta.num_classes == 10
    tight = np.asarray(mwt_lib.MwT(tau=0.95).decompose(model, variables, x, y, 10).modules.units["conv2_relu"])
    assert [np.flatnonzero(k).tolist() for k in tight] == [[c] for c in range(10)]
    with pytest.raises(ValueError, match=r"^num_classes is 9 but the model has 10 classes$"):
        mwt_lib.MwT().decompose(model, variables, x, y, 9)
    with pytest.raises(ValueError, match=r"^classes \[3\] have no samples to decompose from$"):
        mwt_lib.MwT().decompose(model, variables, x, np.where(y == 3, 4, y), 10)
    # a class whose best kernel fires on 7 of 10 samples lowers tau 0.9 by its own step: by 0.3 to 0.6, keeping the
    # kernel at 0.6 too; by the default 0.05 to 0.7, keeping only the best
    counts[:] = 0
    for c in range(10):
        counts[c, [c, c + 1, c + 2]] = [7, 6, 5]
    coarse = np.asarray(mwt_lib.MwT(tau_step=0.3).decompose(model, variables, x, y, 10).modules.units["conv2_relu"])
    assert [np.flatnonzero(k).tolist() for k in coarse] == [[c, c + 1] for c in range(10)]
    fine = np.asarray(mwt_lib.MwT().decompose(model, variables, x, y, 10).modules.units["conv2_relu"])
    assert [np.flatnonzero(k).tolist() for k in fine] == [[c] for c in range(10)]
    with pytest.raises(ValueError, match=r"^the variables hold no mask-generator parameters: decompose a model "
                                         r"trained with MwT$"):
        mwt_lib.MwT().decompose(model, mwt_lib.strip_generators(variables), x, y, 10)


class _LinearBase(nn.Module):
    """A stand-in for a mixed module: one dense layer from 8 features to 4 logits."""

    num_classes: int = 4

    @nn.compact
    def __call__(self, x, train=False):
        del train
        return nn.Dense(self.num_classes, name="out")(x)


def _blobs(seed, per_class_train=150, per_class_val=15):
    """Four overlapping Gaussian classes in 8 dimensions, a train and a validation split."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, 8))

    def split(n):
        y = np.repeat(np.arange(4), n).astype(np.int32)
        return SimpleNamespace(x=(centers[y] + 1.5 * rng.normal(size=(len(y), 8))).astype(np.float32), y=y)

    return SimpleNamespace(train=split(per_class_train), val=split(per_class_val), num_classes=4)


def _finetune_reference(base, base_params, data, classes, *, epochs, batch_size, lr, seed):
    """MwT's reuse fine-tuning written out: a Dense(4 -> k) head on ReLU(logits) drawn from key(seed), SGD with
    Nesterov momentum 0.9 on a cosine decay over twice the epochs' steps, epoch e shuffled with seed * 1000 + e
    (the remainder dropped), validation accuracy after every epoch; the variables of the first best epoch."""
    pos = {c: i for i, c in enumerate(classes)}
    tr, va = np.flatnonzero(np.isin(data.train.y, classes)), np.flatnonzero(np.isin(data.val.y, classes))
    x, y = data.train.x[tr], np.array([pos[c] for c in data.train.y[tr]])
    xv, yv = data.val.x[va], np.array([pos[c] for c in data.val.y[va]])
    bs = min(batch_size, len(tr))
    steps = len(tr) // bs
    head = nn.Dense(len(classes)).init(jax.random.key(seed), jnp.zeros((1, base.num_classes)))["params"]
    params = {"base": base_params, "head": head}

    def forward(p, xb):
        return jax.nn.relu(base.apply({"params": p["base"]}, xb)) @ p["head"]["kernel"] + p["head"]["bias"]

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(forward(p, xb), yb).mean()

    opt = optax.sgd(optax.cosine_decay_schedule(lr, 2 * epochs * steps), momentum=0.9, nesterov=True)
    state, accuracies, snapshots = opt.init(params), [], []
    for epoch in range(epochs):
        order = np.random.default_rng(seed * 1000 + epoch).permutation(len(tr))[: steps * bs].reshape(steps, bs)
        for index in order:
            updates, state = opt.update(jax.grad(loss)(params, x[index], y[index]), state, params)
            params = optax.apply_updates(params, updates)
        accuracies.append(float(np.mean(np.argmax(forward(params, xv), -1) == yv)))
        snapshots.append(params)
    best = int(np.argmax(accuracies))
    return accuracies, best + 1, snapshots[best]


@pytest.mark.parametrize("options", [{}, {"learning_rate": 0.5, "seed": 3, "batch_size": 64, "epochs": 5}],
                         ids=["defaults", "lr0.5-seed3-batch64"])
def test_mwt_finetune_is_the_reference_recipe_and_keeps_the_first_best_validation_epoch(options):
    """finetune_subtask against the recipe written out by hand (defaults: 5 epochs, batch 128, lr 0.01, seed 0) on
    classes (2, 0) of four Gaussian blobs: the same head, the same per-epoch validation accuracies, the same chosen
    epoch and the same variables. With lr 0.5 the validation accuracy peaks at epoch 3, ties at 4 and falls at 5, so
    the first best epoch is neither the last nor a tied later one."""
    data = _blobs(7)
    base = _LinearBase()
    base_params = base.init(jax.random.key(7), data.train.x[:1])["params"]
    sliced = SimpleNamespace(model=base, variables={"params": base_params})
    tuned = mwt_lib.finetune_subtask(sliced, data, [2, 0], **options)
    accuracies, best, want = _finetune_reference(
        base, base_params, data, (2, 0), epochs=options.get("epochs", 5), batch_size=options.get("batch_size", 128),
        lr=options.get("learning_rate", 0.01), seed=options.get("seed", 0))
    if options:
        assert best == 3 and accuracies[3] == accuracies[2] > accuracies[4]  # the case the test is for
    assert tuned.classes == (2, 0) and tuned.model.num_classes == 2 and tuned.model.base is base
    np.testing.assert_allclose([h["val_accuracy"] for h in tuned.history], accuracies, atol=1e-6)
    assert [h["epoch"] for h in tuned.history] == [1, 2, 3, 4, 5] and tuned.best_epoch == best
    chex.assert_trees_all_close(tuned.variables["params"], want, atol=1e-5)
    assert set(tuned.variables) == {"params"}
    logits = tuned.model.apply(tuned.variables, data.val.x[:3])
    assert logits.shape == (3, 2)


class _DropoutBase(nn.Module):
    """A mixed module with dropout (so the training key matters) and an index map (a constant collection)."""

    num_classes: int = 4

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="out")(x)[..., self.get_variable("index_maps", "order")]


def test_mwt_finetune_trains_with_the_callers_key_unsplit_and_index_maps_held_constant():
    """The wiring of fine-tuning into the common training loop, which the hand-written recipe above cannot see without
    dropout: fit_task on a ModelTask that starts from the headed variables, draws dropout from key(seed) itself
    (split_key=False, the caller's seed), holds the index maps constant, and trains 2 x epochs of cosine schedule
    for ``epochs`` epochs, keeping the best validation epoch. One epoch is allowed."""
    from jaxmod import train
    from jaxmod.losses import cross_entropy_loss
    from jaxmod.reuse import subtask_samples

    data = _blobs(2)
    base = _DropoutBase()
    order = jnp.array([3, 1, 2, 0])
    params = _LinearBase().init(jax.random.key(0), data.train.x[:1])["params"]  # the same parameters
    sliced = SimpleNamespace(model=base, variables={"params": params, "index_maps": {"order": order}})
    tuned = mwt_lib.finetune_subtask(sliced, data, [1, 3], epochs=3, batch_size=64, learning_rate=0.2, seed=4)
    variables = mwt_lib.headed_variables(sliced, 2, 4)
    constants = {"index_maps": variables["index_maps"]}
    tr, tr_y = subtask_samples(data.train.y, [1, 3])
    va, va_y = subtask_samples(data.val.y, [1, 3])
    config = train.TrainConfig(epochs=6, batch_size=64, learning_rate=0.2, seed=4)
    optimizer = train.make_optimizer(config, len(tr) // 64)
    task = train.ModelTask(mwt_lib.HeadedModel(base, 2), cross_entropy_loss(), optimizer, data.train.x[:1], 4,
                           constants=constants, variables=variables, split_key=False)
    state, history = train.fit_task(task, data.train.x[tr], tr_y, config, val=(data.val.x[va], va_y),
                                    progress=False, stop_after=3, select="best_val",
                                    order_seed=lambda epoch: 4000 + epoch)
    chex.assert_trees_all_close(tuned.variables, {**state.variables(), **constants}, atol=1e-6)
    assert [h["val_accuracy"] for h in tuned.history] == [h["val_accuracy"] for h in history]
    other = mwt_lib.finetune_subtask(sliced, data, [1, 3], epochs=3, batch_size=64, learning_rate=0.2, seed=5)
    assert not np.allclose(other.variables["params"]["base"]["out"]["kernel"],
                           tuned.variables["params"]["base"]["out"]["kernel"])
    np.testing.assert_array_equal(tuned.variables["index_maps"]["base"]["order"], order)
    assert len(mwt_lib.finetune_subtask(sliced, data, [1, 3], epochs=1, batch_size=64).history) == 1


def test_mwt_headed_variables_put_the_mixed_module_under_base_beside_a_fresh_head():
    """The head is Dense(N -> k) drawn from key(seed) (N: the mixed module's logits); every collection of the mixed
    module moves under ``base``, as copies (the train step donates its state)."""
    params = {"out": {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)}}
    variables = {"params": params, "batch_stats": {"bn": {"mean": jnp.ones(3)}},
                 "index_maps": {"pad": jnp.arange(3)}}
    sliced = SimpleNamespace(model=_LinearBase(), variables=variables)
    out = mwt_lib.headed_variables(sliced, 3, seed=5)
    head = nn.Dense(3).init(jax.random.key(5), jnp.zeros((1, 4)))["params"]
    assert jax.tree.map(jnp.shape, out["params"]["head"]) == {"kernel": (4, 3), "bias": (3,)}
    chex.assert_trees_all_equal(out["params"]["head"], head)
    chex.assert_trees_all_equal(out["params"]["base"], params)
    chex.assert_trees_all_equal(out["batch_stats"], {"base": variables["batch_stats"]})
    chex.assert_trees_all_equal(out["index_maps"], {"base": variables["index_maps"]})
    assert set(out) == {"params", "batch_stats", "index_maps"}
    assert out["params"]["base"]["out"]["kernel"] is not params["out"]["kernel"]
    other = mwt_lib.headed_variables(sliced, 3, seed=6)["params"]["head"]["kernel"]
    assert not np.allclose(other, head["kernel"])


def test_mwt_kernel_metrics_read_each_samples_kernels_from_the_masks_or_the_activations():
    """kernel_metrics against the metrics computed on kernel sets read by hand: with generators, a sample's kernels
    are those whose generator mask is non-zero; without, those of the plain model's conv2 map that are non-zero at
    some position. The generator's last bias is shifted per kernel (from +1 to -2) so that the sets differ between
    samples and kernels; 33 samples in batches of 5 (a partial last batch) and in one batch."""
    from jaxmod.activations import forward
    from jaxmod.metrics import kernel_cohesion, kernel_coupling, kernel_retention_rate

    model = create_model("lenet5", 10)
    gen = mwt_lib.with_generators(model)
    x = np.random.default_rng(0).normal(size=(33, 28, 28, 1)).astype(np.float32)
    y = np.arange(33) % 4  # classes 0-3 with 8-9 samples each (cohesion over their pairs), 4-9 without any
    variables = gen.init(jax.random.key(0), jnp.asarray(x[:1]))
    shift = jnp.linspace(1.0, -2.0, 16)
    params = variables["params"]
    generator = {**params["conv2_relu_generator"],
                 "dense2": {**params["conv2_relu_generator"]["dense2"],
                            "bias": params["conv2_relu_generator"]["dense2"]["bias"] + shift}}
    variables = {**variables, "params": {**params, "conv2_relu_generator": generator}}
    masks = {"conv2_relu": np.random.default_rng(1).random((10, 16)) < 0.4}
    _, acts = forward(gen, variables, jnp.asarray(x))
    by_mask = np.asarray(acts["mask@conv2_relu"]) != 0
    _, plain_acts = forward(model, mwt_lib.strip_generators(variables), jnp.asarray(x))
    by_activation = (np.asarray(plain_acts["conv2_relu"]) != 0).any(axis=(1, 2))
    assert 0.2 < by_mask.mean() < 0.8 and not (by_mask == by_activation).all()  # the two readings differ here
    for generators, sets in ((True, by_mask), (False, by_activation)):
        want = {"krr": kernel_retention_rate(masks["conv2_relu"]),
                "cohesion": float(np.mean(kernel_cohesion(sets, y, masks["conv2_relu"]))),
                "coupling": kernel_coupling(masks["conv2_relu"]),
                "cohesion_per_module": kernel_cohesion(sets, y, masks["conv2_relu"]).tolist(),
                "kernels": 16, "gated_groups": ["conv2_relu"]}
        for batch in (5, 512):
            got = mwt_lib.kernel_metrics(gen if generators else model, variables, masks, x, y,
                                         generators=generators, batch_size=batch)
            assert set(got) == set(want), (generators, batch)
            assert (got["kernels"], got["gated_groups"]) == (want["kernels"], want["gated_groups"])
            for key in ("krr", "cohesion", "coupling", "cohesion_per_module"):
                assert got[key] == pytest.approx(want[key]), (generators, batch, key)
            assert len(set(np.round(got["cohesion_per_module"][:4], 6))) > 1  # cohesion varies between classes
            np.testing.assert_array_equal(
                mwt_lib.sample_kernel_sets(gen if generators else model, variables if generators else
                                           mwt_lib.strip_generators(variables), x,
                                           ["mask@conv2_relu"] if generators else ["conv2_relu"], batch), sets)
    assert mwt_lib.kernel_metrics(gen, variables, masks, x, y)["cohesion"] == pytest.approx(
        float(np.mean(kernel_cohesion(by_mask, y, masks["conv2_relu"]))))  # generators by default


def test_mwt_threshold_comparisons_at_their_exact_boundaries():
    """The threshold rule compares with a 1e-12 tolerance, inclusive at both ends: a best frequency exactly 1e-12
    under a step reaches it (tau 0.5: the threshold stays 0.5, not the next step 0.25), and a kernel exactly 1e-12
    under the class threshold is kept. Steps are rounded to 12 decimals: tau 0.9000000000004 steps from 0.9."""
    under = 0.5 - 1e-12
    assert under + 1e-12 == 0.5  # the exact boundary, in float64
    np.testing.assert_array_equal(mwt_lib.lowered_thresholds(np.array([[under, 0.1]]), 0.5, step=0.25), [0.5])
    np.testing.assert_array_equal(mwt_lib.module_kernels(np.array([[0.5, under, 0.1]]), 0.5, step=0.25),
                                  [[True, True, False]])
    near = 0.9 - 1e-12 + 2e-13  # reaches 0.9 (rounded to 12 decimals), not 0.9000000000004
    assert mwt_lib.lowered_thresholds(np.array([[near]]), 0.9000000000004)[0] == 0.9
    # float32 frequencies are compared in float64, where the tolerance exists: 0.3f lies 7e-14 under this tau
    tau = 0.300000011921
    assert float(np.float32(0.3)) < tau and mwt_lib.lowered_thresholds(np.float32([[0.3]]), tau)[0] == tau
    mixed = mwt_lib.gated_kernels({"a": np.array([[1, 0]]), "b": np.array([[0, 2]])}, ["b", "a"])
    assert mixed.dtype == bool
    np.testing.assert_array_equal(mixed, [[False, True, True, False]])


def test_mwt_reuse_refusals_name_the_problem(tmp_path):
    from types import SimpleNamespace

    from jaxmod.checkpoint import save_tree

    sliced = SimpleNamespace(model=SimpleNamespace(num_classes=3))
    data = SimpleNamespace(num_classes=3)
    with pytest.raises(ValueError, match=r"^learning_rate must be > 0, got 0.0$"):
        mwt_lib.finetune_subtask(sliced, data, [0, 1], learning_rate=0.0)
    with pytest.raises(ValueError, match=r"^fine-tuning needs the mixed module with every class's logit "
                                         r"\(all_logits=True\)$"):
        mwt_lib.finetune_subtask(sliced, SimpleNamespace(num_classes=4), [0, 1])
    with pytest.raises(ValueError, match=r"^epochs must be >= 1, got 0$"):
        mwt_lib.finetune_subtask(sliced, data, [0, 1], epochs=0)
    save_tree(tmp_path / "other", {"a": np.ones(2)}, {"kind": "modules"})
    with pytest.raises(ValueError, match=r"holds no MwT fine-tuned sub-model \(kind 'modules'\)$"):
        mwt_lib.restore_finetuned(str(tmp_path / "other"))
    lenet = create_model("lenet5", 10)
    with pytest.raises(ValueError, match=r"^groups \['conv2_relu'\] are not tapped by LeNet5; read them with "
                                         r"generators$"):
        mwt_lib.kernel_metrics(lenet, {}, {}, np.zeros((2, 28, 28, 1), np.float32), np.zeros(2, np.int32),
                               generators=False)


# ---------------------------------------------------------------------------------------------
# Supermasks: the stacked straight-through masks, what a resumed co-training must match, and batch norm per module


def test_supermask_stacked_masks_are_hard_forward_and_straight_through_backward():
    scores = {"a": jnp.array([[0.3, -0.9, 0.1, 0.5], [-0.2, 0.05, 0.4, -0.6]])}  # 2 modules, 4 weights, keep 2
    masks = sm.stacked_top_k_masks(scores, 0.5)
    np.testing.assert_array_equal(np.asarray(masks["a"]), [[0, 1, 0, 1], [0, 0, 1, 1]])
    upstream = jnp.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    grad = jax.grad(lambda s: jnp.sum(sm.stacked_top_k_masks(s, 0.5)["a"] * upstream))(scores)
    np.testing.assert_allclose(grad["a"], upstream * jnp.sign(scores["a"]))  # kept or not
    hard = sm.hard_masks(scores, 0.5)
    assert hard["a"].dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(hard["a"]), np.asarray(masks["a"]).astype(bool))


def test_supermask_cotraining_identity_covers_configuration_classes_model_and_data():
    _, variables = _tiny_fc1()
    x, y = np.zeros((6, 2, 2, 1), np.float32), (np.arange(6) % 3).astype(np.int32)
    a = sm.Supermask(batch_size=2)
    base = sm.cotrain_identity(a, variables, x, y, (0, 1, 2))
    # the keys are saved with every checkpoint (run_info): a resumed run compares them
    assert sorted(base) == ["base_fingerprint", "classes", "config", "data_sha256"]
    assert base["classes"] == [0, 1, 2] and base["config"] == json.loads(json.dumps(a.config()))
    assert base == sm.cotrain_identity(a, variables, x.copy(), list(y), [0, 1, 2])
    # the data as float32 samples and int32 labels: the same data in other dtypes is the same run
    assert base == sm.cotrain_identity(a, variables, x.astype(np.float64), y.astype(np.int64), (0, 1, 2))
    other = jax.tree.map(lambda v: v + 1, variables)
    for changed in (sm.cotrain_identity(sm.Supermask(batch_size=3), variables, x, y, (0, 1, 2)),
                    sm.cotrain_identity(a, variables, x, y, (0, 1)),
                    sm.cotrain_identity(a, other, x, y, (0, 1, 2)),
                    sm.cotrain_identity(a, variables, x + 1, y, (0, 1, 2)),
                    sm.cotrain_identity(a, variables, x, y[::-1], (0, 1, 2))):
        assert changed != base
    # the speed-only settings do not count: a run resumes across them
    assert sm.cotrain_identity(sm.Supermask(batch_size=2, module_chunk=2, progress=True), variables, x, y,
                               (0, 1, 2)) == base


class _TinyBN(nn.Module):
    """Dense(2, no bias) then batch norm (PyTorch's momentum 0.1 as flax's 0.9). ``epsilon`` 0 keeps hand-computed
    values exact; co-training tests need it > 0: a mask that cuts a unit's every weight makes its batch variance 0,
    and 0 / sqrt(0) would make every score NaN (and NaN equals NaN in assert_allclose, which passes anything)."""

    num_classes: int = 2
    epsilon: float = 0.0

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Dense(2, use_bias=False, name="fc")(x)
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=self.epsilon, name="bn")(h)


class _TinyDropoutBN(nn.Module):
    """Dense(2, no bias), dropout at rate 0.5, then batch norm: its train-mode statistics depend on the dropout key.
    ``epsilon``: see :class:`_TinyBN`."""

    num_classes: int = 2
    epsilon: float = 0.0

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Dropout(0.5, deterministic=not train)(nn.Dense(2, use_bias=False, name="fc")(x))
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=self.epsilon, name="bn")(h)


def _tiny_bn_variables():
    return {"params": {"fc": {"kernel": np.eye(2, dtype=np.float32)},
                       "bn": {"scale": np.ones(2, np.float32), "bias": np.zeros(2, np.float32)}},
            "batch_stats": {"bn": {"mean": np.zeros(2, np.float32), "var": np.ones(2, np.float32)}}}


def test_supermask_module_batch_stats_follow_each_masked_model_over_the_batches():
    """Two batches [[1, 2], [3, 4]] then [[5, 6], [7, 8]] through the identity kernel: running means 0.1 * (2, 3),
    then 0.9 * that + 0.1 * (6, 7) = (0.78, 0.97). Module 1's mask cuts the second unit: its mean stays 0 and its
    variance decays 1 -> 0.9 -> 0.81 (batch variance 0); the first unit's batch variance is 1 throughout."""
    model, variables = _TinyBN(), _tiny_bn_variables()
    masks = {"fc": {"kernel": np.array([[[1, 1], [1, 1]], [[1, 0], [0, 0]]], bool)}}
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], np.float32)
    stats = sm.module_batch_stats(model, variables, masks, x, np.array([[0, 1], [2, 3]], np.int32), seed=0)
    np.testing.assert_allclose(stats["bn"]["mean"], [[0.78, 0.97], [0.78, 0.0]], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["bn"]["var"], [[1.0, 1.0], [1.0, 0.81]], rtol=1e-5)
    np.testing.assert_array_equal(variables["batch_stats"]["bn"]["mean"], [0.0, 0.0])  # the base model is unchanged
    # with dropout in the model, the statistics follow the seed (0 by default)
    x = np.linspace(0.5, 4.0, 32, dtype=np.float32).reshape(16, 2)
    order = np.arange(16, dtype=np.int32).reshape(2, 8)
    drop = functools.partial(sm.module_batch_stats, _TinyDropoutBN(), variables, masks, x, order)
    np.testing.assert_array_equal(drop()["bn"]["mean"], drop(seed=0)["bn"]["mean"])
    assert not np.array_equal(drop(seed=0)["bn"]["mean"], drop(seed=1)["bn"]["mean"])


def test_supermask_module_forward_uses_the_modules_own_batch_statistics():
    """Inference: (h - mean) / sqrt(var) through the graft. With the base statistics (0, 1) the logits are h; with
    the module's (1, 4) they are (h - 1) / 2. Graft: column 1 reads logit 0, column 0 logit 1 plus a bias 0.5."""
    model, variables = _TinyBN(), _tiny_bn_variables()
    mask = {"fc": {"kernel": np.array([[1, 0], [1, 1]], bool)}}  # keeps the identity kernel's diagonal: h = x
    graft = {"kernel": jnp.array([[0.0, 1.0], [1.0, 0.0]]), "bias": jnp.array([0.5, 0.0])}
    x = jnp.array([[3.0, 5.0]])
    np.testing.assert_allclose(sm.module_forward(model, variables, mask, graft, x), [[5.5, 3.0]], rtol=1e-6)
    own = {"bn": {"mean": jnp.array([1.0, 1.0]), "var": jnp.array([4.0, 4.0])}}
    np.testing.assert_allclose(sm.module_forward(model, variables, mask, graft, x, own), [[2.5, 1.0]], rtol=1e-6)
    # the train-mode pass normalises by the batch's own statistics: two samples (1, 0) and (3, 2) -> -1, +1 each
    logits = sm.train_mode_logits(model, variables, mask, jnp.array([[1.0, 0.0], [3.0, 2.0]]), jax.random.key(0))
    np.testing.assert_allclose(logits, [[-1.0, -1.0], [1.0, 1.0]], rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Imtiaz et al.: own-gate decomposition reads sigmoid gates by their rate of |g| >= 0.5 and the candidate by its
# central tendency (the authors' code)


def _disagreeing_gates(model, variables, x, batch_size=256, with_gates=True):
    """LSTM gates where the two statistics disagree on unit 0 of every gate: on class 0's samples it alternates 0.5
    and 0 (rate 0.5, mean 0.25), on class 1's it is 0.49 (rate 0, mean 0.49). Unit 1 is 0.3 everywhere."""
    del variables, batch_size
    cls = np.asarray(x)[:, 0] - 1
    steps = np.asarray(x).shape[1]
    g = np.full((len(x), steps, 4, zoo_module(model).units), 0.3, np.float32)
    g[:, :, :, 0] = np.where(cls == 0, np.where(np.arange(len(x)) % 2 == 0, 0.5, 0.0), 0.49)[:, None, None]
    hidden = np.zeros((len(x), steps, zoo_module(model).units), np.float32)
    return {zoo_module(model).group_names()[0]: hidden}, ({zoo_module(model).group_names()[0]: g} if with_gates else {})


@pytest.mark.parametrize("mode", ["rolled", "unrolled"])
def test_rnn_own_gates_use_the_rate_for_sigmoid_gates_and_the_central_tendency_for_the_candidate(monkeypatch, mode):
    """Class 0's module: the sigmoid gates (i, f, o) see rate 0.5 - 0 > 0 and keep unit 0; the candidate (g) sees
    mean 0.25 - 0.49 < 0 and loses it. Class 1's module: the opposite. Unrolled: the same at each of the 2 steps."""
    model = create_model("rnn_lstm", 2, shape="many_to_one", units=2, vocab_size=4, input_len=2)
    x = np.repeat(np.array([[1, 1], [2, 2]]), 20, axis=0)
    y = np.repeat([0, 1], 20)
    monkeypatch.setattr(rnn_lib, "monitor", _disagreeing_gates)
    d = rnn_lib.RnnDecomposition(mode=mode, gates="own").decompose(model, _variables(model, x[:1]), x, y, 2)
    keep = np.asarray(d.modules.units["rnn1_gates"])  # [2 classes, (2 steps,) 4 gates (i, f, g, o), 2 units]
    assert keep.shape == ((2, 4, 2) if mode == "rolled" else (2, 2, 4, 2))
    keep = keep.reshape(2, -1, 4, 2)
    for step in range(keep.shape[1]):
        np.testing.assert_array_equal(keep[0, step, :, 0], [True, True, False, True])
        np.testing.assert_array_equal(keep[1, step, :, 0], [False, False, True, False])
    assert keep[..., 1].all()
    positive = d.statistics["rnn1_h/positive"].reshape(2, -1, 4, 2)
    negative = d.statistics["rnn1_h/negative"].reshape(2, -1, 4, 2)
    np.testing.assert_allclose(positive[0, :, :, 0], [[0.5, 0.5, 0.25, 0.5]] * keep.shape[1], rtol=1e-6)
    np.testing.assert_allclose(negative[0, :, :, 0], [[0.0, 0.0, 0.49, 0.0]] * keep.shape[1], rtol=1e-6)


def _relu_own_gates(model, variables, x, batch_size=256, with_gates=True):
    """A ReLU LSTM's gates. Sigmoid gates (i, f, o) as in _disagreeing_gates on unit 0 (rate 0.5 on class 0, 0 on
    class 1), 0.3 on unit 1. The candidate (g): unit 0 never active; unit 1 active (0.7) on class 0's samples only."""
    hidden, gates = _disagreeing_gates(model, variables, x, batch_size, with_gates)
    cls = np.asarray(x)[:, 0] - 1
    g = gates[zoo_module(model).group_names()[0]]
    g[:, :, 2, 0] = 0.0
    g[:, :, 2, 1] = np.where(cls == 0, 0.7, 0.0)[:, None]
    return hidden, gates


def test_rnn_own_gates_of_a_relu_model_apply_algorithm_5_to_the_candidate_only(monkeypatch):
    """The candidate by Algorithm 5: unit 0 (never active, nowhere) is removed from both modules; unit 1 stays in
    class 1's module although never active on class 1 (active on class 0: tangled). The sigmoid gates still by
    their rate difference: unit 0 kept for class 0, removed for class 1."""
    model = create_model("rnn_lstm", 2, shape="many_to_one", units=2, vocab_size=4, input_len=2, activation="relu")
    x = np.repeat(np.array([[1, 1], [2, 2]]), 20, axis=0)
    y = np.repeat([0, 1], 20)
    monkeypatch.setattr(rnn_lib, "monitor", _relu_own_gates)
    d = rnn_lib.RnnDecomposition(mode="rolled", gates="own").decompose(model, _variables(model, x[:1]), x, y, 2)
    keep = np.asarray(d.modules.units["rnn1_gates"])  # [2 classes, 4 gates (i, f, g, o), 2 units]
    np.testing.assert_array_equal(keep[0], [[True, True], [True, True], [False, True], [True, True]])
    np.testing.assert_array_equal(keep[1], [[False, True], [False, True], [False, True], [False, True]])
    np.testing.assert_allclose(d.statistics["rnn1_h/positive"][0, 2], [0.0, 1.0])  # the candidate's active rates
    np.testing.assert_allclose(d.statistics["rnn1_h/negative"][0, 2], [0.0, 0.0])


def test_rnn_monitor_gives_every_sample_its_hidden_states_and_gates():
    """6 samples in batches of 4 (the second padded): the same hidden states and gate activations as one apply of
    the model; gates by default, none on request; the same under a (one-device) data-parallel mesh."""
    from jaxmod import sharding
    from jaxmod.models.recurrent import SOWN
    from jaxmod.taps import ACTIVATIONS

    model = create_model("rnn_lstm", 2, shape="many_to_one", units=3, vocab_size=5, input_len=2)
    x = np.random.default_rng(0).integers(1, 5, (6, 2))
    variables = _variables(model, x[:1])
    _, state = model.apply(variables, x, mutable=[ACTIVATIONS, SOWN])
    want_h, want_g = dict(state[ACTIVATIONS]), {"rnn1_h": state[SOWN]["rnn1_gates"]}
    hidden, gates = rnn_lib.monitor(model, variables, x, batch_size=4)
    assert sorted(hidden) == sorted(gates) == ["rnn1_h"]  # the recurrent layers only (not the token embedding)
    np.testing.assert_allclose(hidden["rnn1_h"], want_h["rnn1_h"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gates["rnn1_h"], want_g["rnn1_h"], rtol=1e-5, atol=1e-6)
    assert gates["rnn1_h"].shape == (6, 2, 4, 3)
    only_hidden, none = rnn_lib.monitor(model, variables, x, batch_size=4, with_gates=False)
    assert none == {}
    np.testing.assert_allclose(only_hidden["rnn1_h"], want_h["rnn1_h"], rtol=1e-5, atol=1e-6)
    with sharding.data_parallel(sharding.parse_mesh(devices=jax.devices()[:1])):
        meshed, _ = rnn_lib.monitor(model, variables, x, batch_size=3, with_gates=False)
    np.testing.assert_allclose(meshed["rnn1_h"], want_h["rnn1_h"], rtol=1e-5, atol=1e-6)


def _token_monitor(model, variables, x, batch_size=256, with_gates=True):
    """Hidden states by token: at a step reading token 1, unit 0 is 0.9 and unit 1 is 0.1; token 2 the reverse."""
    del variables, batch_size, with_gates
    tokens = np.asarray(x)
    h = np.full((*tokens.shape, zoo_module(model).units), 0.1, np.float32)
    h[..., 0] = np.where(tokens == 1, 0.9, 0.1)
    h[..., 1] = np.where(tokens == 2, 0.9, 0.1)
    return {zoo_module(model).group_names()[0]: h}, {}


@pytest.mark.parametrize("mode", ["rolled", "unrolled"])
def test_rnn_per_step_labels_select_per_step_and_statistics_keep_their_sides(monkeypatch, mode):
    """Per-step labels (label = token - 1) on rows [1, 2] and [2, 1]: class 0's positives are the steps reading
    token 1 (unit 0 at 0.9), its negatives those reading token 2. Positive statistics (0.9, 0.1), negative (0.1,
    0.9): class 0's module loses unit 1, class 1's unit 0, at every step; the channeled head has one row per class."""
    model = create_model("rnn_vanilla", 2, shape="many_to_many", units=2, vocab_size=3, input_len=2)
    x = np.repeat(np.array([[1, 2], [2, 1]]), 10, axis=0)
    y = x - 1
    # ten more rows [1, 2] whose second step is invalid and labelled 7: never sampled, never checked
    x, y = np.concatenate([x, x[:10]]), np.concatenate([y, np.tile([0, 7], (10, 1))])
    valid = np.ones(y.shape, bool)
    valid[20:, 1] = False
    monkeypatch.setattr(rnn_lib, "monitor", _token_monitor)
    d = rnn_lib.RnnDecomposition(mode=mode, max_remove=0.5, num_positive=30).decompose(
        model, _variables(model, x[:1]), x, y, 2, valid)
    keep = np.asarray(d.modules.units["rnn1_h"]).reshape(2, -1, 2)
    assert keep.shape[1] == (1 if mode == "rolled" else 2)
    assert keep[0, :, 0].all() and not keep[0, :, 1].any() and keep[1, :, 1].all() and not keep[1, :, 0].any()
    positive = d.statistics["rnn1_h/positive"].reshape(2, -1, 2)
    negative = d.statistics["rnn1_h/negative"].reshape(2, -1, 2)
    np.testing.assert_allclose(positive[0], [[0.9, 0.1]] * keep.shape[1], rtol=1e-6)
    np.testing.assert_allclose(negative[0], [[0.1, 0.9]] * keep.shape[1], rtol=1e-6)
    np.testing.assert_allclose(positive[1], [[0.1, 0.9]] * keep.shape[1], rtol=1e-6)
    assert d.modules.head["kernel"].shape == (2, 2, 2) and d.modules.classes == (0, 1)
    assert d.modules.meta.input_shape == (2,)  # the samples decomposed from give the modules' input spec


def test_rnn_decompose_refusals_name_the_problem():
    rnn = create_model("rnn_vanilla", 3, shape="many_to_one", units=2, vocab_size=3, input_len=2)
    x, y = np.ones((4, 2), np.int64), np.array([0, 1, 0, 1])
    with pytest.raises(TypeError, match=r"^rnn decomposition needs a RecurrentClassifier, got MLP$"):
        rnn_lib.RnnDecomposition().decompose(create_model("fc1", 3, units=4), {}, x, y, 3)
    with pytest.raises(ValueError, match=r"^channeling needs one module per output class \(3\), got num_classes=2$"):
        rnn_lib.RnnDecomposition().decompose(rnn, {}, x, y, 2)


def _fake_cotraining(scores, graft):
    """A stand-in for Supermask.train_modules: the state and history co-training would return."""
    history = {"epochs": [{"two_class_rps": 0.5, "mean_jaccard": 0.25, "cross_entropy": [0.7, 0.6],
                           "stemming": [0.1, 0.2], "train_accuracy": [0.8, 0.9]},
                          {"two_class_rps": 0.4, "mean_jaccard": 0.35, "cross_entropy": [0.5, 0.4],
                           "stemming": [0.05, 0.15], "train_accuracy": [0.85, 0.95]}],
               "train_seconds": 1.5, "compile_seconds": 0.25, "classes": [0, 1]}
    state = sm.CotrainState(step=jnp.int32(4), scores=scores, graft=graft, score_opt=None, graft_opt=None)
    calls = []

    def train_modules(self, model, variables, x, y, num_classes, classes=None, workdir=None):
        calls.append((self.k, len(x), num_classes, workdir))
        return state, history

    return train_modules, calls, history


def test_supermask_decompose_returns_the_trained_masks_heads_history_and_module_batch_statistics(monkeypatch):
    """Co-training stood in for: the modules are the top-k masks of the final scores, the heads the trained grafts,
    the statistics the history per epoch; a batch-norm model gets each module's running statistics from one more
    pass in the batch order of epoch `epochs`."""
    model, variables = _TinyDropoutBN(), _tiny_bn_variables()
    scores = {"fc": {"kernel": jnp.array([[[0.9, -0.1], [0.2, 0.8]], [[0.1, 0.7], [-0.6, 0.3]]])}}
    graft = {"kernel": jnp.arange(8.0).reshape(2, 2, 2), "bias": jnp.array([[0.5, -0.5], [1.0, 2.0]])}
    train_modules, calls, _ = _fake_cotraining(scores, graft)
    monkeypatch.setattr(sm.Supermask, "train_modules", train_modules)
    x = np.arange(1, 17).reshape(8, 2)  # integer samples: the modules take them as float32
    y = np.arange(8) % 2
    a = sm.Supermask(k=0.5, epochs=2, batch_size=4, seed=3)
    d = a.decompose(model, variables, x, y, 2, workdir="somewhere")
    assert calls == [(0.5, 8, 2, "somewhere")]
    masks = d.modules.weights["fc"]["kernel"]
    np.testing.assert_array_equal(masks, [[[True, False], [False, True]], [[False, True], [True, False]]])
    assert d.modules.weights["bn"]["scale"] is None  # batch-norm affine parameters are never masked
    np.testing.assert_array_equal(d.modules.head["kernel"], np.asarray(graft["kernel"]))
    np.testing.assert_array_equal(d.modules.head["bias"], np.asarray(graft["bias"]))
    s = d.statistics
    np.testing.assert_allclose(s["two_class_rps"], [0.5, 0.4])
    np.testing.assert_allclose(s["mean_jaccard"], [0.25, 0.35])
    np.testing.assert_allclose(s["cross_entropy"], [[0.7, 0.6], [0.5, 0.4]])
    np.testing.assert_allclose(s["stemming"], [[0.1, 0.2], [0.05, 0.15]])
    np.testing.assert_allclose(s["train_accuracy"], [[0.8, 0.9], [0.85, 0.95]])
    assert float(s["train_seconds"]) == 1.5 and float(s["compile_seconds"]) == 0.25
    assert d.modules.meta.input_dtype == "float32" and d.modules.meta.extra["input_range"] == [1.0, 16.0]
    stats = functools.partial(sm.module_batch_stats, model, variables, {"fc": {"kernel": masks}}, x.astype(np.float32))
    want = stats(a.batch_order(8, 2), seed=3)  # the approach's seed: the dropout keys of the pass
    np.testing.assert_allclose(d.modules.state["batch_stats"]["bn"]["mean"], want["bn"]["mean"], rtol=1e-6)
    np.testing.assert_allclose(d.modules.state["batch_stats"]["bn"]["var"], want["bn"]["var"], rtol=1e-6)
    # another order or another seed gives other statistics
    assert not np.allclose(want["bn"]["mean"], stats(a.batch_order(8, 1), seed=3)["bn"]["mean"])
    assert not np.allclose(want["bn"]["mean"], stats(a.batch_order(8, 2), seed=0)["bn"]["mean"])
    # "running" batch norm, or a model without batch statistics: no module state
    running = sm.Supermask(k=0.5, epochs=2, batch_size=4, batch_norm="running")
    assert running.decompose(model, variables, x, y, 2).modules.state is None


class _TinyDropout(nn.Module):
    """Dense(2, no bias) then dropout at rate 0.5 (kept values doubled) in train mode."""

    num_classes: int = 2

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dropout(0.5, deterministic=not train)(nn.Dense(2, use_bias=False, name="fc")(x))


def test_supermask_train_mode_runs_the_masked_model_with_dropout_on():
    """Kernel [[1, 2], [3, 4]] masked to [[1, 0], [3, 4]]: each sample (1, 1) gives (4, 4), and dropout keeps each
    value doubled (8) or drops it (0); the unmasked kernel would give 12 in the second column."""
    variables = {"params": {"fc": {"kernel": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)}}}
    mask = {"fc": {"kernel": np.array([[1, 0], [1, 1]], bool)}}
    x = jnp.ones((64, 2))
    out = np.asarray(sm.train_mode_logits(_TinyDropout(), variables, mask, x, jax.random.key(0)))
    assert set(np.unique(out).tolist()) == {0.0, 8.0}  # both: dropout is on
    again = np.asarray(sm.train_mode_logits(_TinyDropout(), variables, mask, x, jax.random.key(0)))
    np.testing.assert_array_equal(out, again)  # the key decides which values drop
    other = np.asarray(sm.train_mode_logits(_TinyDropout(), variables, mask, x, jax.random.key(1)))
    assert not np.array_equal(out, other)


def test_supermask_objective_by_hand_in_train_and_inference_mode():
    """One module's objective: cross-entropy of its graft on the masked model, plus alpha times the stemming term,
    and its accuracy. Batch (1, 0), (3, 2); graft kernel [[1, 0], [0, -1]] (no bias); targets 1, 1. Batch statistics
    (train mode) normalise the batch to (-1, -1), (1, 1): outputs (-1, 1), (1, -1), accuracy 1/2; the running
    statistics (0, 1) leave it as it is: outputs (1, 0), (3, -2), accuracy 0."""
    model, variables = _TinyBN(), _tiny_bn_variables()
    scores = {"fc": {"kernel": jnp.array([[1.0, -2.0], [0.5, 0.0]])}}
    average = {"fc": {"kernel": jnp.array([[0.0, -1.0], [0.5, 1.0]])}}  # |s - a| = 1, 1, 0, 1: stemming 3/4
    masks = {"fc": {"kernel": jnp.ones((2, 2))}}
    graft = {"kernel": jnp.array([[1.0, 0.0], [0.0, -1.0]]), "bias": jnp.zeros(2)}
    x, target = jnp.array([[1.0, 0.0], [3.0, 2.0]]), jnp.array([1, 1])

    def cross_entropy(out):
        out = np.asarray(out, np.float64)
        return float(np.mean(np.log(np.exp(out).sum(axis=1)) - out[:, 1]))

    for train_bn, out, accuracy in ((True, [[-1.0, 1.0], [1.0, -1.0]], 0.5), (False, [[1.0, 0.0], [3.0, -2.0]], 0.0)):
        loss, (ce, stem, acc) = sm._objective(model, variables, 1.0, train_bn, scores, masks, graft, target, average,
                                               2.0, x, jax.random.key(0))
        assert float(ce) == pytest.approx(cross_entropy(out), rel=1e-5), train_bn
        assert float(stem) == pytest.approx(0.75) and float(acc) == accuracy, train_bn
        assert float(loss) == pytest.approx(cross_entropy(out) + 2.0 * 0.75, rel=1e-5), train_bn


def _one_cotraining_step(model, variables, classes, epoch_kwargs, train_bn, seed, decay=0.0):
    """One co-training step (one batch of the 4 samples) of make_epoch_fn(**epoch_kwargs), and the same step module
    by module in train or inference mode (``train_bn``) with dropout keys from ``seed``: SGD with momentum 0.9 after
    weight decay ``decay`` (which reads the parameters), on the scores (lr 0.1) and the graft (lr 0.01)."""
    import optax

    x = jnp.array([[1.0, 0.0], [3.0, 2.0], [0.5, 1.5], [2.0, -1.0]])
    y = jnp.array([0, 1, 1, 0])
    classes = jnp.asarray(classes, jnp.int32)
    scores = {"fc": {"kernel": jnp.array([[[0.9, -0.4], [0.3, 0.7]], [[-0.2, 0.6], [0.8, -0.5]]])}}
    graft = sm.init_graft(2, classes)
    average = jax.tree.map(lambda s: jnp.mean(s, axis=0), scores)
    score_opt, graft_opt = (optax.chain(optax.add_decayed_weights(decay), optax.sgd(lr, momentum=0.9))
                            for lr in (0.1, 0.01))
    state = sm.CotrainState(step=jnp.zeros((), jnp.int32), scores=jax.tree.map(jnp.copy, scores),
                            graft=jax.tree.map(jnp.copy, graft), score_opt=score_opt.init(scores),
                            graft_opt=graft_opt.init(graft))
    epoch = sm.make_epoch_fn(model, 0.5, 1.0, score_opt, graft_opt, **epoch_kwargs)
    before, variables = state, jax.tree.map(jnp.asarray, variables)
    state, metrics = epoch(state, variables, x, y, jnp.array([[0, 1, 2, 3]], jnp.int32), classes, average, 0.5)
    # the epoch consumes its input state (donated: one copy of the scores in memory), never the model's variables
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(before.scores))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(variables))

    @jax.jit
    def reference(s, g, target):
        def loss(s, g):
            masks = jax.tree.map(lambda leaf: sm.top_k_mask(leaf, 0.5), s)
            return sm._objective(model, variables, 1.0, train_bn, s, masks, g, target, average, 0.5, x,
                                 jax.random.fold_in(jax.random.key(seed), 0))

        (_, aux), (gs, gg) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(s, g)
        s_up, s_opt = score_opt.update(gs, score_opt.init(s), s)
        g_up, g_opt = graft_opt.update(gg, graft_opt.init(g), g)
        return optax.apply_updates(s, s_up), optax.apply_updates(g, g_up), aux, (s_opt, g_opt)

    want = [reference(*jax.tree.map(lambda a, m=m: a[m], (scores, graft)), (y == classes[m]).astype(jnp.int32))
            for m in range(2)]  # one vs rest: "mine" (1) on the module's own class
    return state, metrics, want


def _assert_step(state, metrics, want):
    assert int(state.step) == 1 and metrics.shape == (1, 2, 3)
    chex.assert_tree_all_finite((state, metrics, want))  # NaN == NaN in assert_allclose: finite values or nothing
    for m, (scores, graft, aux, opt) in enumerate(want):
        np.testing.assert_allclose(state.scores["fc"]["kernel"][m], scores["fc"]["kernel"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.graft["kernel"][m], graft["kernel"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.graft["bias"][m], graft["bias"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics[0, m], aux, rtol=1e-5, atol=1e-6)
        for got, ref in zip(jax.tree.leaves((state.score_opt, state.graft_opt)), jax.tree.leaves(opt), strict=True):
            np.testing.assert_allclose(got[m], ref, rtol=1e-5, atol=1e-6)  # the momentum traces carried on


@pytest.mark.parametrize("train_bn, chunk, decay", [(False, 0, 0.5), (True, 1, 0.0)])
def test_supermask_cotraining_step_equals_each_modules_own_gradient_step(train_bn, chunk, decay):
    """Co-training (all modules in one vmap, or one at a time with module_chunk=1) is each module's own step: its
    one-vs-rest targets (classes [1, 0]), its objective's gradient, the optimizers' updates of scores and graft and
    their states; metrics per module."""
    model, variables = _TinyBN(epsilon=1e-3), _tiny_bn_variables()
    _assert_step(*_one_cotraining_step(model, variables, [1, 0], {"train_bn": train_bn, "module_chunk": chunk},
                                       train_bn, 0, decay))


def test_supermask_cotraining_defaults_and_dropout_keys():
    """make_epoch_fn's defaults: inference mode (running statistics), and in train mode dropout keys from seed 0
    and the step (a model with dropout and batch norm)."""
    model, variables = _TinyDropoutBN(epsilon=1e-3), _tiny_bn_variables()
    _assert_step(*_one_cotraining_step(model, variables, [0, 1], {}, False, 0))
    _assert_step(*_one_cotraining_step(model, variables, [0, 1], {"train_bn": True}, True, 0))
    _assert_step(*_one_cotraining_step(model, variables, [0, 1], {"train_bn": True, "seed": 3}, True, 3))


def test_supermask_cotraining_schedules_run_over_whole_batches_of_every_epoch():
    """10 samples in batches of 4: 2 steps an epoch (the partial batch dropped), 3 epochs: both cosine schedules
    (scores lr 0.1, graft lr 0.01; no momentum) reach 0 at step 6: lr(t) = lr (1 + cos(pi t / 6)) / 2."""
    model, variables = _tiny_fc1()
    x, y = np.zeros((10, 2, 2, 1), np.float32), np.arange(10) % 3
    task = sm.CotrainTask(sm.Supermask(momentum=0.0, batch_size=4, epochs=3), model, variables, x, y, 3, (0, 1, 2))
    for opt, lr in ((task.score_opt, 0.1), (task.graft_opt, 0.01)):
        p = {"w": jnp.zeros(1)}
        state = opt.init(p)
        for t in range(7):
            update, state = opt.update({"w": jnp.ones(1)}, state, p)
            assert float(update["w"][0]) == pytest.approx(-lr * (1 + np.cos(np.pi * min(t, 6) / 6)) / 2, abs=1e-7), t


def test_supermask_task_epochs_are_the_epoch_function_with_stemming_from_epoch_two():
    """A co-training task over a model with dropout and batch norm ("module" batch norm: train mode) runs, epoch by
    epoch, make_epoch_fn with its optimizers, seed and batch order, alpha 0 in epoch 1 and the approach's alpha
    after, pulled towards the modules' mean scores per weight; it starts at step 0 (int32) with 0 s compiled.
    Every compared value is finite (batch norm's epsilon > 0, see _TinyBN), and the dropout seed and the per-weight
    average visibly matter here: seed 0, or the average over every axis, ends elsewhere."""
    from types import SimpleNamespace

    model, variables = _TinyDropoutBN(epsilon=1e-3), _tiny_bn_variables()
    x, y = np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(8, 2), np.arange(8) % 2
    a = sm.Supermask(k=0.5, epochs=2, batch_size=4, seed=3, alpha=0.7, share_init=False)
    task = sm.CotrainTask(a, model, variables, x, y, 2, (0, 1))
    assert task.compile_seconds == 0.0
    state = task.init()
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    assert not np.allclose(state.scores["fc"]["kernel"][0], state.scores["fc"]["kernel"][1])  # a draw per module
    manual = jax.tree.map(jnp.copy, state)
    epoch = sm.make_epoch_fn(model, 0.5, 1.0, task.score_opt, task.graft_opt, True, 3, 0)
    steps = []
    bar = SimpleNamespace(update=steps.append)
    other_seed = sm.make_epoch_fn(model, 0.5, 1.0, task.score_opt, task.graft_opt, True, 0, 0)
    run = lambda fn, s, order, average, alpha: fn(  # noqa: E731
        jax.tree.map(jnp.copy, s), jax.tree.map(jnp.asarray, variables), jnp.asarray(x), jnp.asarray(y, jnp.int32),
        jnp.asarray(order), jnp.array([0, 1], jnp.int32), average, jnp.float32(alpha))
    for e, alpha in ((0, 0.0), (1, 0.7)):
        order = a.batch_order(8, e)
        average = jax.tree.map(lambda s: jnp.mean(s, axis=0), manual.scores)
        # what the task must not do: dropout keys from seed 0, or (epoch 2) the pull towards one scalar per layer
        wrong = [run(other_seed, manual, order, average, alpha)[0].scores["fc"]["kernel"]]
        if alpha:
            flat = jax.tree.map(lambda s: jnp.full(s.shape[1:], jnp.mean(s)), manual.scores)
            wrong.append(run(epoch, manual, order, flat, alpha)[0].scores["fc"]["kernel"])
        manual, metrics = run(epoch, manual, order, average, alpha)
        state, info = task.run_epoch(state, x, y, order, e, bar)
        chex.assert_tree_all_finite((state, manual, metrics))
        for other in wrong:
            assert np.max(np.abs(np.asarray(other) - np.asarray(manual.scores["fc"]["kernel"]))) > 1e-3
        assert info["alpha"] == alpha
        np.testing.assert_allclose(state.scores["fc"]["kernel"], manual.scores["fc"]["kernel"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.graft["kernel"], manual.graft["kernel"], rtol=1e-5, atol=1e-6)
        # the epoch's record: per module the mean over the 2 steps of cross-entropy, stemming and accuracy
        means = np.asarray(metrics).mean(axis=0)  # [2 modules, 3]
        for key, column in (("cross_entropy", 0), ("stemming", 1), ("train_accuracy", 2)):
            np.testing.assert_allclose(info[key], means[:, column], rtol=1e-5, atol=1e-6, err_msg=key)
        pairs = element_statistics(sm.hard_masks(state.scores, 0.5))
        assert info["two_class_rps"] == pytest.approx(pairs["two_class_union_mean"])
        assert info["mean_jaccard"] == pytest.approx(pairs["mean_jaccard"])
        assert 0.0 <= info["train_seconds"] < 120.0
    assert steps == [2, 2]  # the progress bar advances by the epoch's steps
    assert 0.0 < task.compile_seconds < 120.0
    # one module has no pairs: no two-class RPs, no Jaccard index (None, not NaN: the history is saved as JSON)
    one = sm.CotrainTask(a, model, variables, x, y, 2, (1,))
    _, info = one.run_epoch(one.init(), x, y, a.batch_order(8, 0), 0, bar)
    assert info["two_class_rps"] is None and info["mean_jaccard"] is None
    # shared initial scores, also under a (one-device) data-parallel mesh
    from jaxmod import sharding

    with sharding.data_parallel(sharding.parse_mesh(devices=jax.devices()[:1])):
        shared = sm.CotrainTask(dataclasses.replace(a, share_init=True), model, variables, x, y, 2, (0, 1)).init()
    np.testing.assert_array_equal(shared.scores["fc"]["kernel"][0], shared.scores["fc"]["kernel"][1])


def test_supermask_train_modules_runs_the_common_training_loop_with_its_identity(monkeypatch):
    """train_modules hands fit_task the task, the settings (epochs, batch, score lr, seed), the run's identity only
    with a workdir, and turns the history's missing pair statistics (None) into NaN."""
    model, variables = _tiny_fc1()
    x, y = np.zeros((8, 2, 2, 1), np.float32), np.arange(8) % 3
    calls = []

    def fit_task(task, xs, ys, config, workdir, run_info=None, progress=True, description="train"):
        calls.append((config, workdir, run_info, progress, description, task.classes, len(xs), len(ys)))
        return "state", [{"two_class_rps": None, "mean_jaccard": 0.5, "train_seconds": 1.25},
                         {"two_class_rps": 0.25, "mean_jaccard": None, "train_seconds": 0.5}]

    monkeypatch.setattr(sm.train, "fit_task", fit_task)
    a = sm.Supermask(epochs=3, batch_size=4, score_lr=0.2, seed=5)
    state, history = a.train_modules(model, variables, x, y, 3, classes=(2, 0), workdir="runs/here")
    config, workdir, run_info, progress, description, classes, n, m = calls[-1]
    assert (config.epochs, config.batch_size, config.learning_rate, config.seed) == (3, 4, 0.2, 5)
    assert workdir == "runs/here" and run_info == sm.cotrain_identity(a, variables, x, y, (2, 0))
    assert (progress, description, classes, n, m) == (False, "supermask modules (2)", (2, 0), 8, 8)
    assert state == "state" and history["classes"] == [2, 0] and history["compile_seconds"] == 0.0
    assert history["train_seconds"] == 1.75
    assert np.isnan(history["epochs"][0]["two_class_rps"]) and history["epochs"][1]["two_class_rps"] == 0.25
    assert history["epochs"][0]["mean_jaccard"] == 0.5 and np.isnan(history["epochs"][1]["mean_jaccard"])
    sm.Supermask(batch_size=4, progress=True).train_modules(model, variables, x, y, 3)
    assert calls[-1][1:5] == (None, None, True, "supermask modules (3)")

"""Tests written for the mutants that survived `make mutation` (experiments/results/mutation/): each one fails on a
mutant the other unit tests let through. Expected values are computed by hand in the comments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod import losses

# ---------------------------------------------------------------------------------------------
# unit_values: dense activations pass through unchanged (sign kept), any activation of 3 or more axes is mean |a|
# over every axis between the batch and the units.


def test_unit_values_keep_the_sign_of_dense_activations():
    a = jnp.array([[1.0, -2.0], [-3.0, 0.0]])
    np.testing.assert_array_equal(losses.unit_values(a), a)  # not |a|
    # so a dense layer's cosine sees the sign: cos([1, -2], [-3, 0]) = -3 / (sqrt(5) * 3) = -1 / sqrt(5)
    terms = losses.moda_layer_terms(a, jnp.array([0, 1]))
    np.testing.assert_allclose(terms["dispersion"], -1 / np.sqrt(5), rtol=1e-6)
    np.testing.assert_allclose(terms["compactness"], (1 + 2 + 3 + 0) / 4, rtol=1e-6)


def test_unit_values_of_token_activations_average_over_time():
    a = jnp.array([[[1.0, -1.0], [2.0, 0.0], [-3.0, 4.0]],   # (batch 2, time 3, units 2)
                   [[0.0, 0.0], [0.0, 3.0], [0.0, -3.0]]])
    # sample 0: ((1 + 2 + 3) / 3, (1 + 0 + 4) / 3); sample 1: (0, (0 + 3 + 3) / 3)
    np.testing.assert_allclose(losses.unit_values(a), [[2.0, 5 / 3], [0.0, 2.0]], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# MwT: class and pair averaging differ on a batch whose classes have different numbers of pairs.

M5 = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
Y5 = jnp.array([0, 0, 0, 1, 1])
# class 0 (samples 0-2): pair cosines 1, 0, 0 -> mean 1/3; class 1 (samples 3, 4): cosine 1.
# class averaging: cohesion 1 - (1/3 + 1) / 2 = 1/3; pair averaging: 1 - (1 + 0 + 0 + 1) / 4 = 1/2.
# coupling: the 6 cross pairs have cosines 0, 0, 0, 0, 1, 1 -> 1/3 either way (one class pair).
CLASS_TERMS = {"cohesion": 1 / 3, "coupling": 1 / 3}
PAIR_TERMS = {"cohesion": 1 / 2, "coupling": 1 / 3}


def test_mwt_layer_terms_by_hand_and_class_averaging_by_default():
    for averaging, want in (("class", CLASS_TERMS), ("pair", PAIR_TERMS)):
        got = losses.mwt_layer_terms(M5, Y5, averaging)
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-6, err_msg=f"{averaging} {k}")
    default = losses.mwt_layer_terms(M5, Y5)
    for k, v in CLASS_TERMS.items():
        np.testing.assert_allclose(default[k], v, rtol=1e-6)


def test_mwt_terms_pass_the_averaging_to_every_layer():
    acts = {"mask@conv1": M5, "net/mask@conv2": M5[:, ::-1], "conv1": -jnp.ones((5, 2))}
    for averaging, want in (("class", CLASS_TERMS), ("pair", PAIR_TERMS)):
        got = losses.mwt_terms(acts, Y5, averaging)
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-6, err_msg=f"{averaging} {k}")
        np.testing.assert_allclose(got["kernel_rate"], 5 / 10, rtol=1e-6)  # 5 open of 10, both layers
    default = losses.mwt_terms(acts, Y5)
    np.testing.assert_allclose(default["cohesion"], CLASS_TERMS["cohesion"], rtol=1e-6)


def test_mwt_kernel_rate_counts_strictly_positive_entries():
    m = jnp.array([[0.0, 0.5, 1.0, 2.0], [0.0, 0.0, 0.25, 1.0]])  # 0 is closed; 0 < v <= 1 and above 1 are open
    np.testing.assert_allclose(losses.mwt_terms({"mask@g": m}, jnp.array([0, 1]))["kernel_rate"], 5 / 8, rtol=1e-6)


def test_mwt_loss_passes_the_averaging_and_allows_zero_weights():
    logits = jnp.zeros((5, 2))  # cross-entropy log 2 for every sample
    acts = {"mask@conv1": M5}
    for averaging, want in (("class", CLASS_TERMS), ("pair", PAIR_TERMS)):
        loss, aux = losses.mwt_loss(alpha=0.5, beta=1.5, averaging=averaging)(logits, acts, Y5)
        np.testing.assert_allclose(aux["cohesion"], want["cohesion"], rtol=1e-6)
        np.testing.assert_allclose(loss, np.log(2) + 0.5 * want["cohesion"] + 1.5 * want["coupling"], rtol=1e-6)
    loss, _ = losses.mwt_loss()(logits, acts, Y5)  # the paper's 0.5, 1.5 and class averaging
    np.testing.assert_allclose(loss, np.log(2) + 0.5 / 3 + 1.5 / 3, rtol=1e-6)
    # a zero weight is allowed and drops its term
    for alpha, beta, want in ((0.0, 0.0, np.log(2)), (0.0, 1.0, np.log(2) + 1 / 3), (2.0, 0.0, np.log(2) + 2 / 3)):
        loss, aux = losses.mwt_loss(alpha=alpha, beta=beta)(logits, acts, Y5)
        np.testing.assert_allclose(loss, want, rtol=1e-6)
        np.testing.assert_allclose(aux["cross_entropy"], np.log(2), rtol=1e-6)


def test_mwt_errors_name_the_problem():
    message = r"^averaging must be one of \('class', 'pair'\), got 'mean'$"
    with pytest.raises(ValueError, match=message):
        losses.mwt_layer_terms(M5, Y5, "mean")
    with pytest.raises(ValueError, match=message):
        losses.mwt_loss(averaging="mean")
    for name in ("alpha", "beta"):
        with pytest.raises(ValueError, match=f"^MwT weight {name} must be >= 0, got -0.5$"):
            losses.mwt_loss(**{name: -0.5})
        with pytest.raises(ValueError, match=f"^MwT weight {name} must be >= 0, got nan$"):
            losses.mwt_loss(**{name: float("nan")})


# ---------------------------------------------------------------------------------------------
# MODA's approach: its settings, their checks, and the loss it trains with.


def test_moda_settings_and_their_defaults():
    from jaxmod.approaches.moda import Moda

    moda = Moda()
    assert moda.name == "moda"
    assert moda.config() == {"alpha": 1.0, "beta": 1.0, "gamma": 0.3, "tau": 0.9, "min_unit_fraction": 0.005,
                             "batch_size": 512}
    assert moda.training_config() == {"alpha": 1.0, "beta": 1.0, "gamma": 0.3}  # tau does not change training
    other = Moda(alpha=0.5, beta=2.0, gamma=0.1, tau=0.7, min_unit_fraction=0.25, batch_size=3)
    assert other.config() == {"alpha": 0.5, "beta": 2.0, "gamma": 0.1, "tau": 0.7, "min_unit_fraction": 0.25,
                              "batch_size": 3}
    assert other.training_config() == {"alpha": 0.5, "beta": 2.0, "gamma": 0.1}
    model = object()
    assert moda.training_model(model) is model  # MODA trains the model as it is


@pytest.mark.parametrize("options", [dict(tau=1.0), dict(tau=1e-6), dict(alpha=0.0, beta=0.0, gamma=0.0),
                                     dict(min_unit_fraction=0.0), dict(min_unit_fraction=1.0), dict(batch_size=1)])
def test_moda_accepts_the_boundaries(options):
    from jaxmod.approaches.moda import Moda

    assert Moda(**options).config().items() >= options.items()


@pytest.mark.parametrize("options, message", [
    (dict(tau=0.0), r"tau must be in \(0, 1\], got 0.0"),
    (dict(tau=1.5), r"tau must be in \(0, 1\], got 1.5"),
    (dict(alpha=-0.1), r"alpha must be >= 0, got -0.1"),
    (dict(beta=-0.1), r"beta must be >= 0, got -0.1"),
    (dict(gamma=-0.1), r"gamma must be >= 0, got -0.1"),
    (dict(gamma=float("nan")), r"gamma must be >= 0, got nan"),
    (dict(min_unit_fraction=-0.01), r"min_unit_fraction must be in \[0, 1\], got -0.01"),
    (dict(min_unit_fraction=1.5), r"min_unit_fraction must be in \[0, 1\], got 1.5"),
    (dict(batch_size=0), r"batch_size must be >= 1, got 0"),
])
def test_moda_refuses_bad_settings_by_name(options, message):
    from jaxmod.approaches.moda import Moda

    with pytest.raises(ValueError, match=f"^{message}$"):
        Moda(**options)


def test_moda_trains_with_its_own_weights():
    from jaxmod.approaches.moda import Moda

    acts = {"a": jnp.array([[1.0, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1]])}
    labels = jnp.array([0, 0, 1, 1])
    logits = jnp.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [0.5, 0.0]])
    # affinity 1 - 1/sqrt(2), dispersion (0 + 0 + 1/sqrt(2) + 1/2) / 4, compactness 6/12: every term non-zero
    loss, aux = Moda(alpha=0.5, beta=2.0, gamma=0.1).training_loss()(logits, acts, labels)
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(loss, aux["cross_entropy"] + 0.5 * (1 - r) + 2.0 * (r + 0.5) / 4 + 0.1 * 0.5,
                               rtol=1e-6)


def test_moda_decompose_and_threshold_refuse_bad_shapes_by_name():
    from types import SimpleNamespace

    from jaxmod.approaches.moda import Moda, threshold_with_floor

    with pytest.raises(ValueError, match=r"^num_classes is 3 but the model has 2 classes$"):
        Moda().decompose(SimpleNamespace(num_classes=2), {}, np.zeros((4, 2)), np.zeros(4, np.int32), 3)
    with pytest.raises(ValueError, match=r"^rates must be \(classes, units\), got shape \(4,\)$"):
        threshold_with_floor(np.ones(4), 0.9)
    with pytest.raises(ValueError, match=r"^rates must be \(classes, units\), got shape \(1, 2, 2\)$"):
        threshold_with_floor(np.ones((1, 2, 2)), 0.9)


# ---------------------------------------------------------------------------------------------
# The random control: the reference's kept counts, its settings and the checks on the reference.


def _unit_reference(approach="moda", num_classes=3, extra=None):
    from jaxmod.modules import ModuleMeta, ModuleSet

    keep = np.array([[1, 1, 0, 0, 0], [0, 1, 1, 1, 0], [1, 0, 0, 0, 0]], bool)  # 3 modules x 5 units
    steps = np.array([[[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]],  # 3 modules x 2 steps x 5 units
                      [[1, 0, 0, 0, 0], [1, 1, 1, 0, 0]],
                      [[0, 0, 0, 0, 0], [1, 1, 1, 1, 0]]], bool)
    meta = ModuleMeta(approach=approach, model_name="fc1", model_config={}, input_shape=(2, 2, 1),
                      num_classes=num_classes, classes=(0, 1, 2), approach_config={"tau": 0.9},
                      extra=extra or {"note": "kept"})
    return ModuleSet(units={"dense": keep, "rnn": steps}, meta=meta)


def test_random_control_settings():
    from jaxmod.approaches.random import RandomControl

    control = RandomControl()
    assert (control.name, control.reference, control.seed) == ("random", "moda", 0)
    assert control.config() == {"reference": "moda", "seed": 0}
    assert RandomControl(reference="concern", seed=3).config() == {"reference": "concern", "seed": 3}
    assert control.training_loss() is None  # it trains nothing of its own
    model = object()
    assert control.training_model(model) is model


@pytest.mark.parametrize("options, message", [
    (dict(reference="random"), "reference must be another approach ({names}), got 'random'"),
    (dict(reference="nope"), "reference must be another approach ({names}), got 'nope'"),
    (dict(seed=-1), "seed must be a non-negative integer, got -1"),
    (dict(seed=True), "seed must be a non-negative integer, got True"),
    (dict(seed=1.0), "seed must be a non-negative integer, got 1.0"),
    (dict(seed="0"), "seed must be a non-negative integer, got '0'"),
])
def test_random_control_refuses_bad_settings_by_name(options, message):
    import re

    from jaxmod.approaches import available_approaches
    from jaxmod.approaches.random import RandomControl

    with pytest.raises(ValueError, match="^" + re.escape(message.format(names=", ".join(available_approaches())))
                       + "$"):
        RandomControl(**options)


def test_random_control_refuses_a_missing_or_foreign_reference():
    from jaxmod.approaches.random import RandomControl

    control = RandomControl()
    with pytest.raises(ValueError, match=r"^the random control needs the reference approach's modules "
                                         r"\(reference=ModuleSet\)$"):
        control.decompose(None, {}, None, None, 3)
    with pytest.raises(ValueError, match=r"^the random control needs the reference approach's modules"):
        control.decompose(None, {}, None, None, 3, reference=_unit_reference().units)
    with pytest.raises(ValueError, match="^the reference modules are 'concern' modules, the control was configured "
                                         "against 'moda'$"):
        control.decompose(None, {}, None, None, 3, reference=_unit_reference("concern"))
    with pytest.raises(ValueError, match="^num_classes is 4 but the reference modules have 3$"):
        control.decompose(None, {}, None, None, 4, reference=_unit_reference(num_classes=3))


def test_random_control_keeps_the_reference_counts_per_module_and_step():
    from jaxmod.approaches.random import RandomControl, random_like

    reference = _unit_reference()
    decomposition = RandomControl(seed=5).decompose(None, {}, None, None, 3, reference=reference)
    modules = decomposition.modules
    assert decomposition.statistics == {}
    assert modules.granularity == "units" and set(modules.units) == {"dense", "rnn"}
    for name, want in reference.units.items():
        got = np.asarray(modules.units[name])
        assert got.dtype == np.bool_ and got.shape == want.shape
        np.testing.assert_array_equal(got.sum(axis=-1), want.sum(axis=-1))  # per module, and per step
    # the rnn leaf's counts per step differ (5 then 0 for module 0): a count over all axes would not keep them
    np.testing.assert_array_equal(np.asarray(modules.units["rnn"]).sum(axis=-1), [[5, 0], [1, 3], [0, 4]])
    # the draw is random_like with the seed's key, over the last axis for unit masks
    drawn = random_like(jax.random.key(5), reference.units, "last")
    for name in reference.units:
        np.testing.assert_array_equal(modules.units[name], drawn[name])
    again = RandomControl(seed=5).decompose(None, {}, None, None, 3, reference=reference).modules
    other = RandomControl(seed=6).decompose(None, {}, None, None, 3, reference=reference).modules
    np.testing.assert_array_equal(again.units["dense"], modules.units["dense"])
    assert not all(np.array_equal(other.units[n], modules.units[n]) for n in reference.units)
    meta = modules.meta
    assert meta.approach == "random" and meta.approach_config == {"reference": "moda", "seed": 5}
    assert meta.extra == {"note": "kept", "reference_config": {"tau": 0.9}}
    assert (meta.num_classes, meta.classes, meta.model_name) == (3, (0, 1, 2), "fc1")
    assert reference.meta.approach == "moda" and reference.meta.extra == {"note": "kept"}  # the reference unchanged


def test_random_control_counts_positions_over_the_whole_mask_and_keeps_the_head():
    from jaxmod.approaches.random import RandomControl, random_like
    from jaxmod.modules import ModuleMeta, ModuleSet

    positions = {"a": np.array([[[1, 1, 1], [0, 0, 0]], [[0, 0, 0], [0, 0, 1]]], bool),  # 2 modules x 2 x 3
                 "b": np.array([[1, 0], [1, 1]], bool)}
    head = {"kernel": np.arange(2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2), "bias": np.ones((2, 2), np.float32)}
    meta = ModuleMeta(approach="concern", model_name="fc1", model_config={}, input_shape=(2, 2, 1), num_classes=2,
                      classes=(0, 1))
    reference = ModuleSet(positions=positions, head=head, meta=meta)
    modules = RandomControl(reference="concern", seed=1).decompose(None, {}, None, None, 2,
                                                                   reference=reference).modules
    assert modules.granularity == "positions"
    drawn = random_like(jax.random.key(1), positions, "all")
    for name, want in positions.items():
        got = np.asarray(modules.positions[name])
        np.testing.assert_array_equal(got, drawn[name])
        np.testing.assert_array_equal(got.reshape(2, -1).sum(axis=1), want.reshape(2, -1).sum(axis=1))
    np.testing.assert_array_equal(modules.head["kernel"], head["kernel"])
    np.testing.assert_array_equal(modules.head["bias"], head["bias"])


def test_random_like_counts_and_keys():
    from jaxmod.approaches.random import random_like

    masks = {"a": np.array([[[1, 1, 0], [0, 0, 0]], [[0, 1, 1], [1, 1, 1]]], bool), "none": None}
    by_row = random_like(jax.random.key(0), masks, "last")
    assert by_row["none"] is None
    assert by_row["a"].dtype == jnp.bool_ and by_row["a"].shape == (2, 2, 3)
    np.testing.assert_array_equal(np.sum(by_row["a"], axis=-1), [[2, 0], [2, 3]])
    by_module = random_like(jax.random.key(0), masks, "all")
    np.testing.assert_array_equal(np.sum(by_module["a"], axis=(1, 2)), [2, 5])
    # integer masks count as booleans
    ints = random_like(jax.random.key(0), {"a": np.array([[1, 0, 1, 0]])}, "last")["a"]
    assert ints.dtype == jnp.bool_ and int(np.sum(ints)) == 2
    # each leaf has its own draw: two equal leaves are (almost surely) drawn differently
    wide = np.zeros((2, 40), bool)
    wide[:, :20] = True
    two = random_like(jax.random.key(0), {"x": wide, "y": wide}, "last")
    assert not np.array_equal(two["x"], two["y"])
    np.testing.assert_array_equal(np.sum(two["x"], axis=1), [20, 20])
    with pytest.raises(ValueError, match="^count_axes must be 'last' or 'all', got 'rows'$"):
        random_like(jax.random.key(0), masks, "rows")


# ---------------------------------------------------------------------------------------------
# Mask statistics and top-k accuracy: the refusals, by name.


def test_mask_statistics_need_a_positive_total():
    from jaxmod import masks

    with pytest.raises(ValueError, match="^total weight count must be positive, got 0$"):
        masks.statistics_from_intersections(np.array([[1]]), 0)
    with pytest.raises(ValueError, match="^total weight count must be positive, got -3$"):
        masks.statistics_from_intersections(np.array([[1]]), -3)
    stats = masks.statistics_from_intersections(np.array([[1, 0], [0, 1]]), 1)  # one weight is a valid model
    np.testing.assert_allclose(stats["sizes"], [1.0, 1.0])
    np.testing.assert_allclose(stats["jaccard"], [[1.0, 0.0], [0.0, 1.0]])
    assert np.isnan(masks.mean_off_diagonal(np.ones((1, 1))))
    assert masks.mean_off_diagonal(np.array([[1.0, 0.2], [0.4, 1.0]])) == pytest.approx(0.3)
    assert masks.count({"w": np.ones((2, 3), bool), "skip": None}).dtype == jnp.int32


@pytest.mark.parametrize("logits, labels, k, message", [
    (jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), True, "k must be an int, got True"),
    (jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), 1.0, "k must be an int, got 1.0"),
    (jnp.zeros(()), jnp.zeros((), jnp.int32), 1, "logits must have a trailing class dimension"),
    (jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), 0, "k must be in [1, 3] (num_classes), got 0"),
    (jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), 4, "k must be in [1, 3] (num_classes), got 4"),
    (jnp.zeros((2, 3)), jnp.zeros(3, jnp.int32), 1, "labels shape (3,) must equal the leading dims of logits (2, 3)"),
    (jnp.zeros((2, 3)), jnp.zeros(2), 1, "labels must be integers, got dtype float32"),
])
def test_accuracy_refusals_name_the_problem(logits, labels, k, message):
    import re

    from jaxmod.metrics.accuracy import accuracy_counts, top_k_accuracy

    for fn in (accuracy_counts, top_k_accuracy):
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            fn(logits, labels, k)


def test_accuracy_at_the_edges_of_k_and_the_label_range():
    from jaxmod.metrics.accuracy import accuracy_counts, top_k_accuracy, top_k_hits

    logits = jnp.array([[0.0, 2.0, 1.0], [3.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    # row 0: order 1, 2, 0; row 1: 0 then 1 (tie, lower index first), then 2; row 2: all tied, 0, 1, 2
    np.testing.assert_array_equal(top_k_hits(logits, jnp.array([2, 1, 0]), 1), [False, False, True])
    np.testing.assert_array_equal(top_k_hits(logits, jnp.array([2, 1, 0]), 2), [True, True, True])
    np.testing.assert_array_equal(top_k_hits(logits, jnp.array([0, 2, 2]), 3), [True, True, True])
    np.testing.assert_array_equal(top_k_hits(logits, jnp.array([-1, 3, 1]), 3), [False, False, True])
    assert int(accuracy_counts(logits, jnp.array([1, 0, 0]), np.int64(1))) == 3  # any integer k
    # label 0 of row 0 is third, label 2 of row 2 is third: only row 1 is in the top 2
    assert float(top_k_accuracy(logits, jnp.array([0, 0, 2]), k=2)) == pytest.approx(1 / 3)
    assert float(top_k_accuracy(logits, jnp.array([0, 0, 2]), k=3)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="^top_k_accuracy of an empty batch is undefined$"):
        top_k_accuracy(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32))


# ---------------------------------------------------------------------------------------------
# Second run's survivors: MODA's floor at exactly min_req units, ties among many units, what decompose passes on.


def test_moda_floor_leaves_a_class_with_exactly_min_req_units_alone():
    from jaxmod.approaches.moda import threshold_with_floor

    rates = np.array([[0.95, 0.92, 0.1, 0.0], [0.95, 0.2, 0.3, 0.0]])
    # min_req = max(1, floor(0.005 * 4)) = 1: class 1 has exactly one unit at tau, so it keeps just that one
    # (a class below min_req would take its top k = 2: units 0 and 2)
    np.testing.assert_array_equal(threshold_with_floor(rates, 0.9), [[1, 1, 0, 0], [1, 0, 0, 0]])


def test_moda_floor_breaks_ties_by_unit_index_among_many_units():
    from jaxmod.approaches.moda import threshold_with_floor

    rates = np.full((2, 40), 0.5)
    rates[0, :5] = 0.95  # class 0 keeps 5 units; class 1 (every unit tied at 0.5) takes its top 5
    got = np.asarray(threshold_with_floor(rates, 0.9))
    np.testing.assert_array_equal(np.flatnonzero(got[0]), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(np.flatnonzero(got[1]), [0, 1, 2, 3, 4])  # the lowest indices, as the docstring


def _fc1_hand_set():
    """fc1 with 3 hidden units (as tests/test_activations.py): unit 0 fires iff pixel 0 > 0, unit 1 iff pixel 1 > 0,
    unit 2 never. Class 0 (samples 0, 1, 3): rates (1, 1/3, 0); class 1 (samples 2, 4, 5, 6): (0, 3/4, 0)."""
    from jaxmod.models import create_model

    model = create_model("fc1", 2, units=3)
    kernel = np.zeros((4, 3), np.float32)
    kernel[0, 0] = kernel[1, 1] = 1.0
    kernel[:, 2] = -1.0
    variables = {"params": {"fc1": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(3)},
                            "logits": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}}
    x = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0],
                  [0, 1, 0, 0], [0, 1, 0, 0]], np.float32).reshape(7, 2, 2, 1)
    y = np.array([0, 0, 1, 0, 1, 1, 1], np.int32)
    return model, variables, x, y


def test_moda_decompose_passes_its_settings_and_returns_the_rates(monkeypatch):
    from jaxmod.approaches import moda as moda_lib

    model, variables, x, y = _fc1_hand_set()
    batch_sizes = []
    counts = moda_lib.class_activation_counts

    def spy(*args, **kwargs):
        batch_sizes.append(args[5] if len(args) > 5 else kwargs.get("batch_size"))
        return counts(*args, **kwargs)

    monkeypatch.setattr(moda_lib, "class_activation_counts", spy)
    decomposition = moda_lib.Moda(tau=0.7, batch_size=2).decompose(model, variables, x, y, 2)
    assert batch_sizes == [2]  # the approach's batch size reaches the activation counts
    (group,) = decomposition.modules.units
    np.testing.assert_allclose(decomposition.statistics["activation_rate"][group], [[1.0, 1 / 3, 0.0],
                                                                                   [0.0, 0.75, 0.0]], rtol=1e-6)
    assert set(decomposition.statistics) == {"activation_rate"}
    meta = decomposition.modules.meta
    assert meta.input_shape == (2, 2, 1) and meta.input_dtype == "float32"  # read from the samples
    assert meta.extra["input_range"] == [0.0, 1.0]
    assert meta.approach == "moda" and meta.approach_config["batch_size"] == 2
    # min_unit_fraction reaches the threshold: min_req = floor(1.0 * 3) = 3, so both classes keep all three units
    # (with the default 0.005 they would keep units 0 and 1 only)
    whole = moda_lib.Moda(tau=0.7, min_unit_fraction=1.0).decompose(model, variables, x, y, 2).modules.units
    np.testing.assert_array_equal(whole[group], np.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"^classes \[1\] have no samples to decompose from$"):
        moda_lib.Moda().decompose(model, variables, x, np.zeros(7, np.int32), 2)


# ---------------------------------------------------------------------------------------------
# The random control's draw: non-zero entries count once, "all" draws over the whole module.


def test_random_like_counts_every_non_zero_entry_once():
    from jaxmod.approaches.random import random_like

    drawn = random_like(jax.random.key(0), {"a": np.array([[2, 0, 3, 0, 0, 0]])}, "last")["a"]
    assert drawn.dtype == jnp.bool_ and int(np.sum(drawn)) == 2  # two kept entries, not 2 + 3


def test_random_like_all_draws_over_the_whole_module():
    from jaxmod.approaches.random import random_like

    row_counts = set()
    for seed in range(8):
        leaf = np.array([[[1, 1, 1], [0, 0, 0]]], bool)  # one module, its 3 kept entries all in row 0
        drawn = np.asarray(random_like(jax.random.key(seed), {"a": leaf}, "all")["a"])
        assert int(drawn.sum()) == 3
        row_counts.add(tuple(drawn[0].sum(axis=-1).tolist()))
        np.testing.assert_array_equal(np.asarray(random_like(jax.random.key(seed), {"a": leaf}, "last")["a"]).sum(-1),
                                      [[3, 0]])
    assert row_counts != {(3, 0)}  # "all" moves kept entries between the rows of a module, "last" never does
    # a leaf whose second axis is not the module axis: the totals are per module (axis 0) all the same
    leaf = np.zeros((2, 3, 2), bool)
    leaf[0, 0, 0] = True
    leaf[1] = True
    leaf[1, 2, 1] = False
    for seed in range(5):
        drawn = np.asarray(random_like(jax.random.key(seed), {"a": leaf}, "all")["a"])
        np.testing.assert_array_equal(drawn.reshape(2, -1).sum(axis=1), [1, 5])


# ---------------------------------------------------------------------------------------------
# Accuracy: the default k, logits of one sample, the dtype named, and the documented dtypes with 64-bit enabled.


def test_accuracy_defaults_to_top_1_and_takes_a_single_sample():
    from jaxmod.metrics.accuracy import accuracy_counts, top_k_accuracy

    logits = jnp.array([[0.0, 2.0, 1.0], [3.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([2, 1, 0])  # top-1 right on row 2 only; top-2 right on all three
    assert int(accuracy_counts(logits, labels)) == 1
    assert float(top_k_accuracy(logits, labels)) == pytest.approx(1 / 3)
    one = jnp.array([0.0, 2.0, 1.0])  # logits of one sample: (num_classes,), its label a scalar
    assert int(accuracy_counts(one, jnp.array(1))) == 1
    assert float(top_k_accuracy(one, jnp.array(2))) == 0.0
    assert float(top_k_accuracy(one, jnp.array(2), k=2)) == 1.0


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bool_])
def test_accuracy_names_the_labels_dtype(dtype):
    from jaxmod.metrics.accuracy import top_k_accuracy

    with pytest.raises(ValueError, match=f"^labels must be integers, got dtype {jnp.dtype(dtype).name}$"):
        top_k_accuracy(jnp.zeros((2, 3)), jnp.zeros(2, dtype))


def test_documented_dtypes_hold_with_64_bit_enabled():
    from jaxmod import masks
    from jaxmod.metrics.accuracy import accuracy_counts, top_k_accuracy

    with jax.enable_x64(True):
        logits, labels = jnp.zeros((4, 3)), jnp.array([0, 1, 0, 2])
        assert top_k_accuracy(logits, labels).dtype == jnp.float32
        assert float(top_k_accuracy(logits, labels)) == 0.5
        assert accuracy_counts(logits, labels).dtype == jnp.int32
        count = masks.count({"w": np.ones((2, 3), bool), "b": np.array([True, False])})
        assert count.dtype == jnp.int32 and int(count) == 7


# ---------------------------------------------------------------------------------------------
# Mask statistics: an empty tree, the default of always_kept, and counts beyond int32 from an int32 matrix.


def test_mask_count_of_no_leaves_is_an_int32_zero():
    from jaxmod import masks

    empty = masks.count({"skip": None})
    assert isinstance(empty, jax.Array) and empty.dtype == jnp.int32 and int(empty) == 0


def test_module_statistics_count_only_the_masks_by_default():
    from jaxmod import masks

    stacked = {"w": jnp.array([[[1, 1, 0], [0, 1, 0]], [[1, 0, 0], [0, 1, 1]]], bool)}  # sizes 3 and 3, shared 2
    stats = masks.module_statistics(stacked, total=10)
    np.testing.assert_allclose(stats["sizes"], [0.3, 0.3])
    np.testing.assert_allclose(stats["overlap"][0, 1], 0.2)
    np.testing.assert_allclose(stats["jaccard"][0, 1], 2 / 4)


def test_statistics_of_an_int32_matrix_past_int32_range():
    from jaxmod import masks
    from jaxmod.metrics.modules import summarize

    big = 2**30 + 1
    inter = np.array([[big, 1], [1, big]], np.int32)  # |A | B| = 2^31 + 1: past int32
    total = 2**32
    stats = masks.statistics_from_intersections(inter, total)
    np.testing.assert_allclose(stats["jaccard"][0, 1], 1 / (2 * big - 1), rtol=1e-12)
    np.testing.assert_allclose(stats["sizes"], [big / total] * 2, rtol=1e-12)
    summary = summarize(inter, total)
    np.testing.assert_allclose(summary["pair_union"][0, 1], (2 * big - 1) / total, rtol=1e-12)
    np.testing.assert_allclose(summary["two_class_union_mean"], (2 * big - 1) / total, rtol=1e-12)

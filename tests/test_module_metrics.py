"""Module sizes, overlaps, Jaccard indices and union sizes, every figure computed by hand (units counted in
weights through the topology, positions in nodes), and the masked cross-entropy of padded sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmod import metrics, models
from jaxmod.losses import masked_cross_entropy_loss
from jaxmod.metrics.modules import module_model_jaccard, union_size
from jaxmod.modules import ModuleMeta, ModuleSet, fingerprint
from jaxmod.topology import resolve_topology

SHAPE = (2, 2, 1)  # 4 inputs


def _fc1_modules():
    """fc1 with 3 hidden units and 3 classes: 4*3 + 3 + 3*3 + 3 = 27 weights. Module c keeps its k units' input
    weights and biases (5k) and their weights to its own logit plus that logit's bias (k + 1): 6k + 1."""
    model = models.create_model("fc1", 3, units=3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
    (group,) = resolve_topology(model, SHAPE).sizes
    keep = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0]], bool)  # class 0: units {0, 1}; 1: {1, 2}; 2: {0}
    meta = ModuleMeta(approach="moda", model_name="fc1", model_config=models.model_config(model), dataset="none",
                      input_shape=SHAPE, num_classes=3, classes=(0, 1, 2), source=fingerprint(variables))
    return model, variables, ModuleSet(units={group: keep}, meta=meta)


def test_unit_module_statistics_by_hand():
    model, variables, modules = _fc1_modules()
    stats = metrics.module_statistics(modules, variables, model)
    # I = [[13, 5, 5], [5, 13, 0], [5, 0, 7]]: shared units s share 5s weights; logits are never shared
    np.testing.assert_allclose(stats["sizes"], np.array([13, 13, 7]) / 27)
    np.testing.assert_allclose(stats["overlap"], np.array([[13, 5, 5], [5, 13, 0], [5, 0, 7]]) / 27)
    np.testing.assert_allclose(stats["mean_size"], 33 / 81)
    np.testing.assert_allclose(stats["mean_overlap"], 20 / 6 / 27)  # over the 6 ordered pairs i != j
    np.testing.assert_allclose(stats["jaccard"][0, 1], 5 / 21)
    np.testing.assert_allclose(stats["jaccard"][0, 2], 5 / 15)
    np.testing.assert_allclose(stats["mean_jaccard"], (5 / 21 + 1 / 3 + 0) / 3)
    np.testing.assert_allclose(stats["pair_union"][0, 1], 21 / 27)
    np.testing.assert_allclose(stats["two_class_union_mean"], (21 + 15 + 20) / 81)
    np.testing.assert_allclose(stats["two_class_union_min"], 15 / 27)
    np.testing.assert_allclose(stats["two_class_union_max"], 21 / 27)
    assert stats["counted"] == "weights"
    with pytest.raises(ValueError, match="^unit-mask statistics count weights through the model's topology: "
                       "pass the model$"):
        metrics.module_statistics(modules, variables)
    unrolled = modules.replace(units={g: np.repeat(m[:, None], 2, axis=1) for g, m in modules.units.items()})
    with pytest.raises(ValueError, match=r"^unrolled \(per-timestep\) unit masks have no single weight count; "
                       r"use jaxmod.approaches.rnn.module_model_jaccard$"):
        metrics.module_statistics(unrolled, variables, model)
    with pytest.raises(ValueError, match="^merged unit modules are a sliced model: its size is its parameter "
                       "count over the model's$"):
        union_size(modules, [0, 1])


def _position_modules():
    a = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], bool)  # 4 nodes
    b = np.array([[1, 0], [1, 1], [0, 0]], bool)  # 2 nodes
    meta = ModuleMeta(approach="concern", model_name="fc1", model_config={}, dataset="none", input_shape=SHAPE,
                      num_classes=3, classes=(0, 1, 2), source="none")
    return ModuleSet(positions={"a": a, "b": b}, meta=meta)


def test_position_module_statistics_and_unions_by_hand():
    modules = _position_modules()
    stats = metrics.module_statistics(modules, {})
    np.testing.assert_allclose(stats["sizes"], np.array([3, 4, 1]) / 6)
    np.testing.assert_allclose(stats["overlap"][0, 1], 2 / 6)  # node a1 and node b0
    np.testing.assert_allclose(stats["jaccard"][0, 1], 2 / 5)
    assert stats["counted"] == "nodes"
    np.testing.assert_allclose(union_size(modules, [0, 1]), 5 / 6)
    np.testing.assert_allclose(union_size(modules, [0, 2]), 4 / 6)
    np.testing.assert_allclose(union_size(modules, [2]), 1 / 6)
    np.testing.assert_allclose(module_model_jaccard(modules.positions), np.array([3, 4, 1]) / 6)
    # leaves that are None are not counted
    np.testing.assert_allclose(module_model_jaccard({"a": modules.positions["a"], "c": None}), np.array([2, 2, 1]) / 4)
    with pytest.raises(ValueError, match="^no mask leaves to measure$"):
        module_model_jaccard({"c": None})


def test_masked_cross_entropy_scores_only_labelled_steps():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4)), jnp.float32)
    labels = jnp.array([[1, -1, 3], [-1, -1, 0]])
    loss, aux = masked_cross_entropy_loss()(logits, {}, labels)
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0)))
    np.testing.assert_allclose(float(loss), (ce[0, 0] + ce[0, 2] + ce[1, 2]) / 3, rtol=1e-6)
    assert aux == {}
    none, _ = masked_cross_entropy_loss()(logits, {}, jnp.full((2, 3), -1))
    assert float(none) == 0.0  # nothing labelled: zero, not NaN


def test_one_module_has_no_pairs():
    """A single module: its size, and NaN (not 0, not an error) for every mean over pairs."""
    stats = metrics.modules.summarize(np.array([[3]]), 6)
    np.testing.assert_allclose(stats["sizes"], [0.5])
    for key in ("mean_overlap", "mean_jaccard", "two_class_union_mean", "two_class_union_min", "two_class_union_max"):
        assert isinstance(stats[key], float) and np.isnan(stats[key]), key


def test_every_granularity_counted_in_weights_by_hand():
    """One unit for every method: node masks count the weights of the units they use (fc1's hidden nodes are its
    units: the unit statistics above), weight masks count weight by weight with unmasked biases kept whole."""
    model, variables, units = _fc1_modules()
    (group,) = units.units
    nodes = units.replace(units=None, positions={group: units.units[group]},
                          meta=units.meta.replace(approach="concern"))
    by_nodes = metrics.weight_statistics(nodes, variables, model)
    np.testing.assert_allclose(by_nodes["sizes"], np.array([13, 13, 7]) / 27)
    assert by_nodes["counted"] == "weights"
    np.testing.assert_allclose(metrics.weight_statistics(units, variables, model)["sizes"], by_nodes["sizes"])
    hidden, logits = np.zeros((2, 4, 3), bool), np.zeros((2, 3, 3), bool)
    hidden[0, [0, 1], 0] = True  # module 0: two input weights of unit 0
    hidden[1, [0, 3, 2, 1], [0, 1, 1, 2]] = True  # module 1: four, one of them shared
    logits[0, 0, 0] = True
    logits[1, [0, 1], [0, 1]] = True  # one shared
    weights = {"fc1": {"kernel": hidden, "bias": None}, "logits": {"kernel": logits, "bias": None}}
    masked = ModuleSet(weights=weights, meta=units.meta.replace(approach="supermask", classes=(0, 1)))
    stats = metrics.weight_statistics(masked, variables, model)
    # 6 unmasked biases in every module: sizes (2 + 1 + 6) and (4 + 2 + 6), shared 1 + 1 + 6, union 13
    np.testing.assert_allclose(stats["sizes"], np.array([9, 12]) / 27)
    np.testing.assert_allclose(stats["jaccard"][0, 1], 8 / 13)

"""Pan and Rajan's rules and diagnostics on hand-made fixtures where each answer is worked out by hand: which nodes
MC-BLN, MC-BI and CM-RIE remove, how continuous learning restores them, how pooling windows are read, and the
figures the diagnosis tables print. Written against mutation testing (experiments/results/mutation/): each
assertion pins a direction, boundary, axis or field a wrong rule would change."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod import models
from jaxmod.adapter import adapt
from jaxmod.approaches import concern
from jaxmod.graph import Op
from jaxmod.metrics.modules import module_statistics, unit_statistics
from jaxmod.topology import resolve_topology

DELTA = 0.5


def nested_plan():
    """Two hidden dense groups after a conv map flattened through a 2x2 pooling; every kernel sits two scopes deep, so
    that a layer name (``'block/fc2'``) differs from any shorter or longer cut of its path."""
    return concern.Plan(dense=(("fc1_relu", ("block", "fc2", "kernel")), ("fc2_relu", ("head", "logits", "kernel"))),
                        flatten=("conv_relu", "pool2", ("block", "fc1", "kernel")), conv_edges=(),
                        groups=("conv_relu", "fc1_relu", "fc2_relu"), output=("head", "logits", "kernel"))


def nested_params():
    logits = np.array([[0.5, -0.2, 0.1], [-0.9, 0.3, -1.2], [0.2, 0.2, 0.2]])  # (3 units, 3 classes); 0.5 = delta
    fc2 = np.array([[0.5, 0.1, -0.25], [0.0, -2.0, 0.3]])  # (2, 3)
    fc1 = np.array([[0.1, 0.2], [0.6, -0.5], [0.0, 0.0], [0.05, -0.1]])  # (4 flattened positions, 2)
    return {"head": {"logits": {"kernel": logits}}, "block": {"fc2": {"kernel": fc2}, "fc1": {"kernel": fc1}}}


def test_edge_strength_rows_by_hand():
    """Output row: |w| >= 0.5 for 0.5, -0.9, -1.2 (3 of 9; 0.5 sits on the boundary); the unconcerned edges (mean of
    the other classes') are c0 (-0.05, -0.45, 0.2), c1 (0.3, -1.05, 0.2), c2 (0.15, -0.3, 0.2): largest 1.05, and only
    (c1, unit 1) is strongly unconcerned with a weak concerned edge (0.3). Then one row per kernel MC-BLN reads on the
    way back: fc2 (0.5 and -2.0 strong, 2 of 6) and the flattened map's consumer fc1 (0.6 and -0.5, 2 of 8)."""
    rows = concern.edge_strength(nested_params(), nested_plan(), DELTA)
    assert [r["kernel"] for r in rows] == ["head/logits", "block/fc2", "block/fc1"]
    assert [sorted(r) for r in rows] == [sorted(["kernel", "max_abs", "strong_fraction", "max_abs_unconcerned",
                                                 "output_rule_pairs"])] + [["kernel", "max_abs", "strong_fraction"]] * 2
    assert rows[0]["output_rule_pairs"] == 1
    figures = [(r["max_abs"], r["strong_fraction"]) for r in rows]
    assert figures == [pytest.approx((1.2, 1 / 3)), pytest.approx((2.0, 1 / 3)), pytest.approx((0.6, 0.25))]
    assert rows[0]["max_abs_unconcerned"] == pytest.approx(1.05)
    # without a flatten the map's consumer has no row; without hidden dense layers only the output's
    plain = concern.Plan(dense=nested_plan().dense, flatten=None, conv_edges=(), groups=("fc1_relu", "fc2_relu"),
                         output=("head", "logits", "kernel"))
    assert [r["kernel"] for r in concern.edge_strength(nested_params(), plain, DELTA)] == ["head/logits", "block/fc2"]


def three_layer_plan():
    return concern.Plan(dense=(("h1", ("l2", "kernel")), ("h2", ("l3", "kernel")), ("h3", ("out", "kernel"))),
                        flatten=None, conv_edges=(), groups=("h1", "h2", "h3"), output=("out", "kernel"))


def three_layer_params():
    return {"out": {"kernel": np.array([[0.1, 0.9, 0.9], [0.9, 0.1, 0.1]])},  # (h3 units, 3 classes)
            "l3": {"kernel": np.array([[0.8, 0.0], [0.0, 0.5]])},  # h2 -> h3; 0.5 is strong (|w| >= delta)
            "l2": {"kernel": np.array([[0.0, -0.7], [0.6, 0.6]])}}  # h1 -> h2


def test_mc_bln_walks_back_through_every_hidden_layer_by_hand():
    """Output rule: class 0 drops h3 unit 0 (unconcerned mean(0.9, 0.9) = 0.9, concerned 0.1); classes 1 and 2 drop
    unit 1 (unconcerned 0.5 on the boundary, concerned 0.1) but keep unit 0 (its concerned edge 0.9 is strong). Back
    through l3 (0.8 and the boundary 0.5 strong): an h2 unit goes when its only strong edge reaches a removed h3 unit.
    Back through l2: h1 unit 0's only strong edge (-0.7) reaches h2 unit 1; unit 1 also reaches h2 unit 0."""
    ones = {g: np.ones((3, 2), bool) for g in ("h1", "h2", "h3")}
    out = concern.backtrack_dense(ones, three_layer_params(), three_layer_plan(), DELTA)
    np.testing.assert_array_equal(out["h3"], [[0, 1], [1, 0], [1, 0]])
    np.testing.assert_array_equal(out["h2"], [[0, 1], [1, 0], [1, 0]])
    np.testing.assert_array_equal(out["h1"], [[1, 1], [0, 1], [0, 1]])
    # rows of other classes (module 0 is class 2's, module 1 class 0's); a node a module had removed stays removed
    start = {g: np.ones((2, 2), bool) for g in ("h1", "h2", "h3")}
    start["h1"] = np.array([[1, 0], [1, 1]], bool)
    out = concern.backtrack_dense(start, three_layer_params(), three_layer_plan(), DELTA, classes=[2, 0])
    np.testing.assert_array_equal(out["h3"], [[1, 0], [0, 1]])
    np.testing.assert_array_equal(out["h2"], [[1, 0], [0, 1]])
    np.testing.assert_array_equal(out["h1"], [[0, 0], [1, 1]])


def test_cm_rie_removes_units_with_a_near_zero_edge_to_their_concern():
    """|w| < 0.1 to the concerned output: class 0 drops unit 0 (0.05) and keeps unit 1 (0.1, the boundary); class 1
    drops unit 1 (0.0); class 2 keeps both (-0.1 and 0.3). A unit a module had already removed stays removed."""
    plan = concern.Plan(dense=(("h", ("out", "kernel")),), flatten=None, conv_edges=(), groups=("h",),
                        output=("out", "kernel"))
    params = {"out": {"kernel": np.array([[0.05, 0.2, -0.1], [0.1, 0.0, 0.3]])}}
    masks = {"h": np.array([[1, 1], [1, 1], [0, 1]], bool)}
    out = concern.remove_irrelevant_edges(masks, params, plan, 0.1)
    np.testing.assert_array_equal(out["h"], [[0, 1], [1, 0], [0, 1]])
    two = concern.remove_irrelevant_edges({"h": np.ones((2, 2), bool)}, params, plan, 0.1, classes=[2, 1])
    np.testing.assert_array_equal(two["h"], [[1, 1], [1, 0]])
    no_dense = concern.Plan(dense=(), flatten=None, conv_edges=(), groups=("h",))
    assert concern.remove_irrelevant_edges(masks, params, no_dense, 0.1) == masks  # nothing to read the rule from


def _pool_op(dims, strides, padding=None):
    params = {"window_dimensions": dims, "window_strides": strides}
    if padding is not None:
        params["padding"] = padding
    return Op(jax.lax.reduce_window_max_p, params, (0,), (1,), "net/pool")


def test_pool_factor_reads_non_overlapping_square_windows_only():
    assert concern._pool_factor(_pool_op((1, 2, 2, 1), (1, 2, 2, 1))) == 2  # no padding recorded: none
    assert concern._pool_factor(_pool_op((1, 3, 3, 1), (1, 3, 3, 1), ((0, 0),) * 4)) == 3
    for dims, strides, padding in (((1, 2, 2, 1), (1, 1, 1, 1), None),  # overlapping, unpadded
                                   ((1, 2, 3, 1), (1, 2, 3, 1), None),  # not square
                                   ((1, 2, 2, 1), (1, 2, 2, 1), ((0, 0), (0, 1), (0, 1), (0, 0)))):  # padded
        with pytest.raises(ValueError) as err:
            concern._pool_factor(_pool_op(dims, strides, padding))
        assert str(err.value) == (
            f"Pan and Rajan's backtracking cannot follow this model: a pooling window {dims} with strides {strides}; "
            "MC-BI maps positions through non-overlapping p x p pooling only (primitive 'reduce_window_max' in layer "
            "'net/pool')")


def test_step_removals_count_per_module_means_by_hand():
    """Two modules over one group of 4 nodes (the row count differs from the node count): CI keeps 2 and 1 nodes,
    TI 3 and 2, MC-BLN 3 and 1, MC-BI 2 and 1; node 3 is removed by CI+TI from both modules."""
    m = lambda rows: {"g": np.array(rows, bool)}  # noqa: E731
    steps = {"ci": m([[1, 1, 0, 0], [1, 0, 0, 0]]), "ti": m([[1, 1, 1, 0], [1, 1, 0, 0]]),
             "bln": m([[1, 1, 1, 0], [1, 0, 0, 0]]), "bi": m([[1, 1, 0, 0], [1, 0, 0, 0]])}
    (row,) = concern.step_removals(steps)
    assert row == {"group": "g", "nodes": 4, "ci_removed": 2.5, "ti_restored": 1.0, "ti_removed_in_every_module": 1,
                   "bln_removed": 0.5, "bi_removed": 0.5, "kept": 1.5}


def test_step_masks_with_the_all_rule_read_the_positive_counts():
    """FSE 2020's rule keeps a node active on every positive: with 3 positives, counts 3 keep, 2 do not."""
    pos = {"h": np.array([[3, 2], [1, 3]])}
    neg = {"h": np.array([[0, 0], [0, 0]])}
    plan = concern.Plan(dense=(), flatten=None, conv_edges=(), groups=("h",))
    params = {"logits": {"kernel": np.ones((2, 2))}}
    steps = concern.step_masks(pos, neg, np.array([3, 3]), params, plan, DELTA, rule="all")
    np.testing.assert_array_equal(steps["ci"]["h"], [[1, 0], [0, 1]])
    np.testing.assert_array_equal(steps["ti"]["h"], [[1, 0], [0, 1]])


def tiny_mlp():
    """fc1 with 3 hidden units on 2 inputs, 3 classes (tests/test_concern_steps.py): unit u fires on input feature u
    (u = 0, 1); unit 2 (weights -1, -1) fires on neither training sample type."""
    model = models.create_model("fc1", 3, units=3)
    params = {"fc1": {"kernel": jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]]), "bias": jnp.zeros(3)},
              "logits": {"kernel": jnp.array([[2.0, -0.6, 0.1], [-0.6, 0.8, 0.01], [0.3, 0.3, 0.3]]),
                         "bias": jnp.array([0.1, 0.2, 0.3])}}
    x = np.asarray([[1, 0], [1, 0.5], [0, 1], [0, 2], [1, 1]], np.float32).reshape(-1, 1, 1, 2)
    return model, {"params": params}, x, np.array([0, 0, 1, 1, 2])


def test_continuous_learning_restores_then_backtracks_again_in_the_modules_classes():
    """MC-BLN's modules (tests/test_concern_steps.py): class 0 keeps units 0, 1; class 2 unit 1 only. Two new samples
    fire unit 0 and unit 2. Updating class 2's module (row 0 of a set ordered (2, 0)) restores both, then MC-BLN runs
    again for class 2 and removes unit 0 once more; class 0's module (not asked for) is unchanged."""
    model, variables, x, y = tiny_mlp()
    approach = concern.Concern(variant="ci_ti_mc_bln", positives=5, negatives=1)
    modules = approach.decompose(model, variables, x, y, 3).modules.select([2, 0])
    np.testing.assert_array_equal(modules.positions["fc1_relu"], [[0, 1, 0], [1, 1, 0]])
    new = np.asarray([[1, -1], [-1, -1]], np.float32).reshape(-1, 1, 1, 2)
    updated = approach.continue_learning(model, variables, modules, new, rows=[0])
    np.testing.assert_array_equal(updated.positions["fc1_relu"], [[0, 1, 1], [1, 1, 0]])
    every = approach.continue_learning(model, variables, modules, new)  # default: every module
    np.testing.assert_array_equal(every.positions["fc1_relu"], [[0, 1, 1], [1, 1, 1]])
    last = approach.continue_learning(model, variables, modules, new, rows=[1])  # the last row is a module too
    np.testing.assert_array_equal(last.positions["fc1_relu"], [[0, 1, 0], [1, 1, 1]])
    for rows in ([], [2], [-1], [0, 2]):
        with pytest.raises(ValueError) as err:
            approach.continue_learning(model, variables, modules, new, rows=rows)
        assert str(err.value) == f"rows must be module indices in 0..1, got {rows}"


class _OneConv(nn.Module):  # a conv map read by the output layer: a flatten, no conv-to-conv edge
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(2, (3, 3), name="conv")(x))
        return nn.Dense(self.num_classes, name="logits")(h.reshape((h.shape[0], -1)))


def test_weight_figures_only_for_dense_chains():
    """Pan and Rajan's weight-level Jaccard applies to dense chains (units with weights of their own): not to a conv
    map, even one read by a single dense layer with no conv-to-conv edge, nor to a recurrent model or a module that
    is not a jaxmod model."""

    x = np.zeros((1, 6, 6, 1), np.float32)
    one_conv = _OneConv()
    assert not concern._is_dense(adapt(one_conv, one_conv.init(jax.random.key(0), x), x).model, (6, 6, 1))
    assert not concern._is_dense(one_conv, (6, 6, 1))
    assert concern._is_dense(models.create_model("fc2", 3), (4, 4, 1))
    assert not concern._is_dense(models.create_model("lenet5", 3), (28, 28, 1))
    assert not concern._is_dense(models.create_model("rnn_lstm", 3, vocab_size=9, input_len=5), (5,))


def test_jaccard_figures_name_node_and_weight_figures():
    model, variables, x, y = tiny_mlp()
    modules = concern.Concern(variant="ci_ti_mc_bln", positives=5, negatives=1).decompose(
        model, variables, x, y, 3).modules
    figures = concern.jaccard_figures(model, variables, modules)
    node = module_statistics(modules, variables)
    weights = unit_statistics(resolve_topology(model, (1, 1, 2)), modules.positions, variables["params"])
    assert figures == {"node_module_model": node["sizes"].tolist(), "node_mean_module_model": node["mean_size"],
                       "node_mean_pairwise": node["mean_jaccard"], "weight_mean_pairwise": weights["mean_jaccard"],
                       "weight_mean_size": weights["mean_size"], "weight_sizes": weights["sizes"].tolist()}
    assert figures["node_module_model"] == pytest.approx([2 / 3, 2 / 3, 1 / 3])  # kept nodes of 3


def test_output_rule_boundaries_by_hand():
    """A node goes for module c when its unconcerned edge is strong (|mean of the other classes' edges| >= delta, 0.5
    exactly counts) and its concerned edge weak (|w| < delta, 0.5 exactly does not). Unit 0: for class 0 the
    unconcerned mean is (0.5 + 0.5) / 2 = 0.5 and the concerned 0.25: removed. Unit 1: for class 0 the unconcerned
    mean is 0.5 but the concerned edge is 0.5 (strong): kept; for class 2 it is 0.75 against 0.0: removed."""
    kernel = np.array([[0.25, 0.5, 0.5], [0.5, 1.0, 0.0]])  # (2 units, 3 classes), exact in binary
    np.testing.assert_array_equal(concern.output_removal(kernel, DELTA), [[1, 0], [0, 0], [0, 1]])


def test_mc_bln_maps_removed_flattened_nodes_onto_their_pooling_windows():
    """A 5x7 map, 2x2 pooled to 2x3 and flattened (row-major) into 6 nodes: nodes 0, 2 and 5 have strong edges to the
    one dense unit, which module 1 has removed, so module 1 loses their windows (rows 0-1 x cols 0-1, rows 0-1 x cols
    4-5, rows 2-3 x cols 4-5); the last row and column, outside every window, and module 0 keep everything."""
    plan = concern.Plan(dense=(("h", ("out", "kernel")),), flatten=("conv", "pool2", ("fc", "kernel")), conv_edges=(),
                        groups=("conv", "h"), output=("out", "kernel"))
    params = {"out": {"kernel": np.array([[1.0, 1.0]])}, "fc": {"kernel": np.array([[1.0], [0], [1], [0], [0], [1]])}}
    masks = {"conv": np.ones((2, 5, 7, 1), bool), "h": np.array([[True], [False]])}
    out = concern.backtrack_dense(masks, params, plan, DELTA)
    want = np.ones((2, 5, 7, 1), bool)
    want[1, 0:2, 0:2] = want[1, 0:2, 4:6] = want[1, 2:4, 4:6] = False
    np.testing.assert_array_equal(out["conv"], want)
    np.testing.assert_array_equal(out["h"], masks["h"])


def test_negatives_per_class_by_hand():
    """TI-I takes one negative per other class; the others balance the positives, positives // (C - 1), at least 1;
    an explicit count wins."""
    assert concern.Concern(variant="ti_i", positives=10).negatives_per_class(4) == 1
    assert concern.Concern(variant="ti_sne", positives=10).negatives_per_class(4) == 3
    seven = concern.Concern(variant="ci_ti_mc", positives=7).negatives_per_class(3)
    assert seven == 3 and isinstance(seven, int)  # 7 // 2, not 3.5
    assert concern.Concern(positives=2).negatives_per_class(10) == 1  # 2 // 9 = 0, raised to 1
    assert concern.Concern(variant="ti_i", positives=10, negatives=0).negatives_per_class(4) == 0


def test_config_records_every_setting_but_the_name():
    approach = concern.Concern(variant="cm_rie", delta=0.3, positives=7, negatives=2, confidence=0.5, irrelevant=0.1,
                               batch_size=16)
    assert approach.config() == {"variant": "cm_rie", "delta": 0.3, "positives": 7, "negatives": 2,
                                 "confidence": 0.5, "irrelevant": 0.1, "batch_size": 16}


def _op(name, params=None, path="net/layer"):
    primitive = {"reduce_sum": jax.lax.reduce_sum_p, "reshape": jax.lax.reshape_p,
                 "reduce_window_max": jax.lax.reduce_window_max_p}[name]
    return Op(primitive, params or {}, (0,), (1,), path)


PREFIX = "Pan and Rajan's backtracking cannot follow this model: "


def test_plan_errors_name_the_primitive_and_its_layer():
    assert str(concern._plan_error(None, "x")) == PREFIX + "x"
    assert str(concern._plan_error(_op("reshape", path=""), "x")) == PREFIX + "x (primitive 'reshape' in layer " \
                                                                              "'top level')"
    assert str(concern._plan_error(_op("reshape"), "x")) == PREFIX + "x (primitive 'reshape' in layer 'net/layer')"


def test_flatten_kinds_by_hand():
    """How a conv map reaches the first dense kernel: a mean over the two spatial axes ("gap"), an NHWC flatten
    (inner stride 1) after any non-overlapping poolings, whose factors multiply ("pool4" after two 2x2 poolings)."""
    window = {"window_dimensions": (1, 2, 2, 1), "window_strides": (1, 2, 2, 1)}
    assert concern._flatten_kind([_op("reduce_sum", {"axes": (1, 2)})], 1) == "gap"
    assert concern._flatten_kind([_op("reshape")], 1) == "pool1"
    assert concern._flatten_kind([_op("reduce_window_max", window), _op("reshape")], 1) == "pool2"
    assert concern._flatten_kind([_op("reduce_window_max", window), _op("reduce_window_max", window),
                                  _op("reshape")], 1) == "pool4"
    reduction = PREFIX + "a reduction over other axes than the two spatial ones (primitive 'reduce_sum' in layer " \
                         "'net/gap')"
    for steps in ([_op("reduce_sum", {"axes": (3,)}, "net/gap")],
                  [_op("reduce_sum", {"axes": (1, 2)}, "net/gap"), _op("reshape")],
                  [_op("reduce_window_max", window), _op("reduce_sum", {"axes": (1, 2)}, "net/gap")]):
        with pytest.raises(ValueError) as err:
            concern._flatten_kind(steps, 1)
        assert str(err.value) == reduction
    order = PREFIX + "a conv map flattened in another order than NHWC"
    for steps, inner, where in (([_op("reshape", path="net/first"), _op("reshape", path="net/second")], 3,
                                 " (primitive 'reshape' in layer 'net/first')"),
                                ([_op("reduce_window_max", window, "net/pool")], 1,
                                 " (primitive 'reduce_window_max' in layer 'net/pool')"),
                                ([], 1, "")):
        with pytest.raises(ValueError) as err:
            concern._flatten_kind(steps, inner)
        assert str(err.value) == order + where


def test_a_plain_module_is_planned_as_its_adapted_form_and_a_recurrent_one_is_refused():
    model, variables, x, _ = tiny_mlp()
    plain = concern.model_plan(models.zoo_module(model), (1, 1, 2))
    assert plain == concern.model_plan(model, (1, 1, 2))
    assert plain.dense == (("fc1_relu", ("logits", "kernel")),)
    with pytest.raises(ValueError) as err:
        concern.model_plan(models.create_model("rnn_lstm", 3, vocab_size=9, input_len=5), (5,))
    assert str(err.value).endswith("Imtiaz et al.'s method ('rnn') modularizes recurrent models")


def test_ci_ti_mc_needs_no_layer_facts_and_the_others_derive_them():
    model, *_ = tiny_mlp()
    assert concern.Concern(variant="ci_ti_mc").plan(model, (1, 1, 2)) == concern.Plan((), None, (), ("fc1_relu",))
    assert concern.Concern(variant="ci_ti_mc_bln").plan(model, (1, 1, 2)) == concern.model_plan(model, (1, 1, 2))


def test_check_refuses_by_name_before_any_work():
    model, variables, x, y = tiny_mlp()
    approach = concern.Concern(variant="ti_sne", positives=5)
    with pytest.raises(ValueError) as err:
        approach.check(model, variables, x, y, 4)
    assert str(err.value) == "num_classes is 4 but the model has 3 classes"
    with pytest.raises(ValueError) as err:
        approach.check(model, variables, x[:2], y[:2], 3)
    assert str(err.value) == "classes [1, 2] have no samples to decompose from"
    with pytest.raises(ValueError) as err:
        approach.check(model, variables, x, np.array([0, 1, 2, 2]), 3)
    assert str(err.value) == "5 samples but 4 labels"
    images = np.zeros((3, 4, 4, 1), np.float32)
    net = adapt(_OneConv(), _OneConv().init(jax.random.key(0), images[:1]), images[:1])
    with pytest.raises(ValueError) as err:
        approach.check(net.model, net.variables, images, np.arange(3), 3)
    assert str(err.value) == (f"variant 'ti_sne' is the dense (FSE 2020) method; for {concern.model_label(net.model)} "
                              f"use one of {concern.CNN_VARIANTS}")


def test_fse_variants_take_the_confident_positives_under_the_all_rule():
    """The FSE 2020 variants count only positives the model predicts with probability above ``confidence``: class 2's
    one sample exactly at it does not count (and class 2 is left without positives), one float below it does. They
    keep a node active on every counted positive ("all")."""
    model, variables, x, y = tiny_mlp()
    probs = np.asarray(jax.nn.softmax(concern.predict_logits(model, variables, x, 512)))[np.arange(5), y]
    assert probs[4] == probs.min()
    with pytest.raises(ValueError, match=r"classes \[2\] have no samples to identify their concern from"):
        concern.Concern(variant="ti_sne", positives=5, negatives=1, confidence=float(probs[4])).decompose(
            model, variables, x, y, 3)
    below = float(np.nextafter(probs[4], np.float32(0)))
    out = concern.Concern(variant="ti_sne", positives=5, negatives=1, confidence=below).decompose(
        model, variables, x, y, 3)
    np.testing.assert_array_equal(out.statistics["positives"], [2, 2, 1])
    # class 0's samples (1, 0) and (1, 0.5): unit 0 fires on both, unit 1 on the second only, so "all" drops unit 1
    # (without negatives, which would restore it through TI: class 1's (0, 1) fires it)
    alone = concern.Concern(variant="ti_sne", positives=5, negatives=0, confidence=below).decompose(
        model, variables, x, y, 3)
    np.testing.assert_array_equal(alone.modules.positions["fc1_relu"][0], [1, 0, 0])
    np.testing.assert_array_equal(out.modules.positions["fc1_relu"][0], [1, 1, 0])
    # confidence 0 filters nothing, not even a sample whose label's probability underflows to 0 (logits x 1000)
    sharp = jax.tree.map(lambda a: a * 1000, variables)
    assert float(jax.nn.softmax(concern.predict_logits(model, sharp, x, 512))[4, 2]) == 0.0
    everyone = concern.Concern(variant="ti_sne", positives=5, negatives=1, confidence=0.0).decompose(
        model, sharp, x, y, 3)
    np.testing.assert_array_equal(everyone.statistics["positives"], [2, 2, 1])


def test_each_variant_backtracks_as_its_paper_says():
    """CM-RIE removes near-zero output edges in the rows' classes; MC-BI (only in ci_ti_mc_bln_bi) runs after MC-BLN:
    through an identity shortcut a source node goes when its destination node is removed."""
    plan = concern.Plan(dense=(("h", ("out", "kernel")),), flatten=None, conv_edges=(concern.ConvEdge("a", "h"),),
                        groups=("a", "h"), output=("out", "kernel"))
    params = {"out": {"kernel": np.array([[0.01, 1.0], [1.0, 0.01]])}}  # (2 units, 2 classes)
    masks = {"a": np.ones((2, 2), bool), "h": np.ones((2, 2), bool)}
    rie = concern.Concern(variant="cm_rie", irrelevant=0.05).backtrack(masks, params, plan, classes=[1, 0])
    np.testing.assert_array_equal(rie["h"], [[1, 0], [0, 1]])  # row 0 is class 1: its near-zero edge is unit 1's
    np.testing.assert_array_equal(rie["a"], masks["a"])
    bln = concern.Concern(variant="ci_ti_mc_bln").backtrack(masks, params, plan)
    np.testing.assert_array_equal(bln["h"], [[0, 1], [1, 0]])  # output rule: class 0's unit 0 edge is weak
    np.testing.assert_array_equal(bln["a"], masks["a"])
    bi = concern.Concern(variant="ci_ti_mc_bln_bi").backtrack(masks, params, plan)
    np.testing.assert_array_equal(bi["h"], bln["h"])
    np.testing.assert_array_equal(bi["a"], bln["h"])  # identity shortcut: a's node follows h's
    assert concern.Concern(variant="ti_sne").backtrack(masks, params, plan) == masks


def test_conv_cover_counts_stay_integers_through_a_3x3_pooling():
    """A 6x6 map, 3x3 pooled to 2x2, read by a 1x1 conv whose outputs are all kept: each position reaches one."""
    edge = concern.ConvEdge("a", "b", kernel=(1, 1), pool=3)
    cover = concern._conv_cover(jnp.ones((1, 2, 2, 4), bool), edge, (6, 6, 1))
    np.testing.assert_array_equal(np.asarray(cover), np.ones((1, 6, 6, 1)))


def test_settings_are_refused_at_their_boundaries_by_name():
    concern.Concern(positives=1, negatives=0, confidence=0.0, batch_size=1)  # every lowest allowed value
    for settings, message in (({"positives": 0}, "positives must be >= 1 and negatives >= 0, got 0, None"),
                              ({"negatives": -1}, "positives must be >= 1 and negatives >= 0, got 1000, -1"),
                              ({"confidence": 1.0}, "confidence must be in [0, 1), got 1.0"),
                              ({"confidence": -0.1}, "confidence must be in [0, 1), got -0.1"),
                              ({"batch_size": 0}, "batch_size must be >= 1, got 0")):
        with pytest.raises(ValueError) as err:
            concern.Concern(**settings)
        assert str(err.value) == message


def test_tangling_restores_nodes_active_on_other_classes_negatives_only():
    """TI restores a node for module c when a negative of another class fired it, even once; c's own negatives (its
    quota for the other modules) do not count. Nothing is active on a positive, so CI keeps nothing."""
    pos = {"h": np.zeros((2, 2), np.int32)}
    neg = {"h": np.array([[1, 0], [0, 0]], np.int32)}  # class 0's negative fired unit 0 once
    out = concern.concern_masks(pos, neg, np.array([3, 3]), "any")
    np.testing.assert_array_equal(out["h"], [[0, 0], [1, 0]])
    with pytest.raises(ValueError) as err:
        concern.concern_masks(pos, neg, np.array([3, 3]), "most")
    assert str(err.value) == "rule must be 'any' or 'all', got 'most'"


def test_ranks_within_each_class_in_data_order():
    rank = concern.rank_in_class(np.array([2, 0, 2, 2, 0]), np.array([1, 1, 0, 1, 1], bool))
    np.testing.assert_array_equal(rank, [0, 0, -1, 1, 1])
    assert rank.dtype.kind == "i" and concern.rank_in_class(np.array([1, 1])).dtype.kind == "i"


def test_decomposition_statistics_by_hand():
    """tiny_mlp with 2 positives for classes 0 and 1 and 1 for class 2, one negative per class; unit 0 fires on
    both class-0 positives and on class 2's, unit 1 on class 0's second, both class-1 positives and class 2's."""
    model, variables, x, y = tiny_mlp()
    out = concern.Concern(variant="ci_ti_mc", positives=5, negatives=1).decompose(model, variables, x, y, 3)
    assert set(out.statistics) == {"positives", "negatives_per_class", "activation_rate"}
    np.testing.assert_array_equal(out.statistics["positives"], [2, 2, 1])
    np.testing.assert_array_equal(out.statistics["negatives_per_class"], [1, 1, 1])
    np.testing.assert_allclose(out.statistics["activation_rate"]["fc1_relu"], [[1, 0.5, 0], [0, 1, 0], [1, 1, 0]])
    assert out.modules.head is not None  # the ICSE variants channel
    dense = concern.Concern(variant="ti_sne", positives=5, negatives=1, confidence=0.0).decompose(
        model, variables, x, y, 3)
    assert dense.modules.head is None  # TI-SNE does not
    # counts without a positive or negative of the last class keep one row per class
    is_pos = np.array([1, 1, 0, 0, 0], bool)
    pos_c, neg_c, n_pos, n_neg = concern.node_counts(model, variables, x, y, is_pos, is_pos, 3)
    assert pos_c["fc1_relu"].dtype == neg_c["fc1_relu"].dtype == np.int32  # counts, as documented
    np.testing.assert_array_equal(n_pos, [2, 0, 0])
    np.testing.assert_array_equal(n_neg, [2, 0, 0])


class _Product(nn.Module):  # a dense layer reads the product of two groups
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        h = nn.relu(nn.Dense(4, name="a")(x))
        g = nn.relu(nn.Dense(4, name="b")(h))
        return nn.Dense(self.num_classes, name="logits")(h * g)


class _Stream(nn.Module):  # a residual stream: the embedding's output is kept whole
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        e = nn.Dense(8, name="embed")(x.reshape((x.shape[0], -1)))
        z = e + nn.Dense(8, name="proj")(nn.relu(nn.Dense(4, name="a")(e)))
        return nn.Dense(self.num_classes, name="logits")(z)


class _KernelFirst(nn.Module):  # the parameter on the left: (units, features) @ (features, batch)
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        w = self.param("w", nn.initializers.normal(1.0), (4, x.shape[-1]))
        return nn.Dense(self.num_classes, name="logits")(nn.relu(jnp.dot(w, x.T).T))


class _ConvLogits(nn.Module):  # a fully convolutional classifier
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(2, (3, 3), name="conv")(x))
        return jnp.mean(nn.Conv(self.num_classes, (1, 1), name="head")(h), axis=(1, 2))


class _Dilated(nn.Module):  # a dilated second conv
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(2, (3, 3), name="conv1")(x))
        h = nn.relu(nn.Conv(2, (3, 3), kernel_dilation=2, name="conv2")(h))
        return nn.Dense(self.num_classes, name="logits")(h.reshape((h.shape[0], -1)))


class _Strided(nn.Module):  # a second conv with unequal strides
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(2, (3, 3), name="conv1")(x))
        h = nn.relu(nn.Conv(2, (3, 3), strides=(1, 2), name="conv2")(h))
        return nn.Dense(self.num_classes, name="logits")(h.reshape((h.shape[0], -1)))


class _Reshaped(nn.Module):  # a second conv over a reshaped map
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(2, (3, 3), name="conv1")(x))
        h = nn.relu(nn.Conv(2, (3, 3), name="conv2")(h.reshape((h.shape[0], 4, 16, 2))))
        return nn.Dense(self.num_classes, name="logits")(h.reshape((h.shape[0], -1)))


class _TwoPools(nn.Module):  # two 2x2 poolings and a scaling between two convs
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(2, (3, 3), name="conv1")(x))
        h = nn.relu(nn.Conv(2, (1, 1), name="conv2")(0.5 * nn.max_pool(nn.max_pool(h, (2, 2), (2, 2)), (2, 2),
                                                                          (2, 2))))
        return nn.Dense(self.num_classes, name="logits")(h.reshape((h.shape[0], -1)))


class _Transposed(nn.Module):  # the kernel contracted on its second axis: x @ W.T
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        w = self.param("w", nn.initializers.normal(1.0), (4, x.shape[-1]))
        return nn.Dense(self.num_classes, name="logits")(nn.relu(jax.lax.dot_general(x, w, (((1,), (1,)), ((), ())))))


class _TwoHeads(nn.Module):  # one group read by two dense layers
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(4, name="a")(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.num_classes, name="logits")(h) + nn.Dense(self.num_classes, name="other")(h)


class _TwoMaps(nn.Module):  # two conv maps each flattened into a dense layer
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        h1 = nn.relu(nn.Conv(2, (3, 3), name="conv1")(x))
        h2 = nn.relu(nn.Conv(2, (3, 3), name="conv2")(h1))
        flat = lambda h: h.reshape((h.shape[0], -1))  # noqa: E731
        return nn.Dense(self.num_classes, name="logits")(flat(h1)) + nn.Dense(self.num_classes, name="other")(flat(h2))


class _TwoChains(nn.Module):  # two dense chains side by side
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        h, g = nn.relu(nn.Dense(4, name="a")(x)), nn.relu(nn.Dense(4, name="b")(x))
        return nn.Dense(self.num_classes, name="logits")(h) + nn.Dense(self.num_classes, name="other")(g)


class _Ordered(nn.Module):  # group names against forward order, a scaled read, the output layer named "classifier"
    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(4, name="z")(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.num_classes, name="classifier")(nn.relu(nn.Dense(4, name="a")(0.5 * h)))


def _plan_of(module: type[nn.Module]) -> concern.Plan:
    """Pan and Rajan's plan of ``module()`` adapted on 8x8 single-channel images."""
    x = np.ones((1, 8, 8, 1), np.float32)
    return concern.model_plan(adapt(module(), module().init(jax.random.key(0), x), x).model, (8, 8, 1))


@pytest.mark.parametrize("module, what", [
    (_Product, "a layer's input is not one group's activation reached through elementwise ops, pooling or flattening "
               "(primitive 'mul' in layer '_Product')"),
    (_Stream, "a layer's output is not a group of units (kept whole) (primitive 'dot_general' in layer "
              "'_Stream/embed')"),
    (_KernelFirst, "a layer's kernel is not a parameter used as it is (primitive 'dot_general' in layer "
                   "'_KernelFirst')"),
    (_ConvLogits, "a convolution makes the logits (primitive 'conv_general_dilated' in layer '_ConvLogits/head')"),
    (_Dilated, "a dilated convolution (primitive 'conv_general_dilated' in layer '_Dilated/conv2')"),
    (_Strided, "a convolution with strides (1, 2) (primitive 'conv_general_dilated' in layer '_Strided/conv2')"),
    (_Reshaped, "a convolution reads a reshaped or reduced map (primitive 'reshape' in layer '_Reshaped')"),
    (_Transposed, "a dense layer that is not (batch, features) @ (features, units), e.g. over tokens or heads "
                  "(primitive 'dot_general' in layer '_Transposed')"),
    (_TwoHeads, "group 'a' feeds two dense layers (primitive 'dot_general' in layer '_TwoHeads/other')"),
    (_TwoMaps, "two conv maps feed dense layers (primitive 'dot_general' in layer '_TwoMaps/other')"),
    (_TwoChains, "dense layers that are not one chain to the logits"),
])
def test_layers_the_rules_cannot_follow_are_refused_by_op_and_layer(module, what):
    with pytest.raises(ValueError) as err:
        _plan_of(module)
    assert str(err.value) == PREFIX + what


def test_a_conv_edge_through_two_poolings_and_a_scaling_maps_positions_by_their_product():
    plan = _plan_of(_TwoPools)
    assert plan.conv_edges == (concern.ConvEdge("conv1", "conv2", (1, 1), 1, ((0, 0), (0, 0)), 4),)


def test_the_dense_chain_follows_forward_order_not_names_to_the_output_kernel():
    assert _plan_of(_Ordered) == concern.Plan(
        dense=(("z", ("a", "kernel")), ("a", ("classifier", "kernel"))), flatten=None, conv_edges=(),
        groups=("z", "a"), output=("classifier", "kernel"))

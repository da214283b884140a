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


def test_weight_figures_only_for_dense_chains():
    """Pan and Rajan's weight-level Jaccard applies to dense chains (units with weights of their own): not to a conv
    map, even one read by a single dense layer with no conv-to-conv edge, nor to a recurrent model or a module that
    is not a jaxmod model."""

    class OneConv(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Conv(3, (3, 3), name="conv")(x))
            return nn.Dense(2, name="logits")(h.reshape((h.shape[0], -1)))

    x = np.zeros((1, 6, 6, 1), np.float32)
    one_conv = OneConv()
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

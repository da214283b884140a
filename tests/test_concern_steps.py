"""Pan & Rajan: the per-step diagnosis (what CI, TI, MC-BLN and MC-BI remove) and the zero-initialised
residual branches that let ResNet20 without batch norm train."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxmod import models
from jaxmod.activations import forward
from jaxmod.approaches import concern


def tiny_mlp():
    """fc1 with 3 hidden units on 2 inputs, 3 classes; unit u fires on input feature u (u = 0, 1), unit 2 never."""
    model = models.create_model("fc1", 3, units=3)
    params = {"fc1": {"kernel": jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]]), "bias": jnp.zeros(3)},
              "logits": {"kernel": jnp.array([[2.0, -0.6, 0.1], [-0.6, 0.8, 0.01], [0.3, 0.3, 0.3]]),
                         "bias": jnp.array([0.1, 0.2, 0.3])}}
    return model, {"params": params}


def test_step_masks_and_removals_by_hand():
    model, variables = tiny_mlp()
    x = np.asarray([[1, 0], [1, 0.5], [0, 1], [0, 2], [1, 1]], np.float32).reshape(-1, 1, 1, 2)
    y = np.array([0, 0, 1, 1, 2])
    pos, neg = concern.select_samples(y, 3, positives=5, negatives=1)
    pc, nc, n_pos, _ = concern.node_counts(model, variables, x, y, pos, neg, 3)
    plan = concern.model_plan(model, x.shape[1:])
    steps = concern.step_masks(pc, nc, n_pos, variables["params"], plan, 0.5)
    # CI ("any"): class 0 fires units 0, 1; class 1 unit 1; class 2 both. TI (first sample of every other
    # class: [1, 0], [0, 1], [1, 1]) gives every module units 0 and 1.
    chex.assert_trees_all_equal(steps["ci"]["fc1_relu"], np.array([[1, 1, 0], [0, 1, 0], [1, 1, 0]], bool))
    chex.assert_trees_all_equal(steps["ti"]["fc1_relu"], np.array([[1, 1, 0], [1, 1, 0], [1, 1, 0]], bool))
    # MC-BLN at the output: unit 0's edges (2, -0.6, 0.1): for module 2 the unconcerned edge is
    # mean(2, -0.6) = 0.7 >= 0.5 and the concerned one 0.1 < 0.5, so it goes; module 1's concerned -0.6 is strong.
    chex.assert_trees_all_equal(steps["bln"]["fc1_relu"], np.array([[1, 1, 0], [1, 1, 0], [0, 1, 0]], bool))
    chex.assert_trees_all_equal(steps["bi"]["fc1_relu"], steps["bln"]["fc1_relu"])  # no conv to backtrack
    (row,) = concern.step_removals(steps)
    assert row["group"] == "fc1_relu" and row["nodes"] == 3 and row["ti_removed_in_every_module"] == 1
    assert row["ci_removed"] == pytest.approx(4 / 3) and row["ti_restored"] == pytest.approx(1 / 3)
    assert row["bln_removed"] == pytest.approx(1 / 3) and row["bi_removed"] == 0 and row["kept"] == pytest.approx(5 / 3)
    # a larger delta leaves the output rule nothing to act on
    assert concern.step_removals(concern.step_masks(pc, nc, n_pos, variables["params"], plan, 2.5))[0][
        "bln_removed"] == 0
    (edges,) = concern.edge_strength(variables["params"], plan, 0.5)
    # |w| >= 0.5: 2.0, -0.6, -0.6, 0.8; unconcerned means: unit 0 (-0.25, 1.05, 0.7), unit 1 (0.405, -0.295, 0.1)
    assert edges["max_abs"] == pytest.approx(2.0) and edges["strong_fraction"] == pytest.approx(4 / 9)
    assert edges["max_abs_unconcerned"] == pytest.approx(1.05) and edges["output_rule_pairs"] == 1


def test_step_masks_match_the_variants_decompositions():
    model = models.create_model("lenet5", 10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    # scale the dense kernels so that delta 0.5 has strong edges to act on
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v * 8 if p[0].key in ("fc1", "fc2", "logits") and p[-1].key == "kernel" else v,
        variables["params"])
    variables = {"params": params}
    x = np.random.default_rng(0).normal(size=(60, 28, 28, 1)).astype(np.float32)
    y = np.arange(60) % 10
    kw = {"positives": 4, "negatives": 1}
    pos, neg = concern.select_samples(y, 10, 4, 1)
    pc, nc, n_pos, _ = concern.node_counts(model, variables, x, y, pos, neg, 10)
    steps = concern.step_masks(pc, nc, n_pos, params, concern.model_plan(model, x.shape[1:]), 0.5)
    for step, variant in (("ti", "ci_ti_mc"), ("bln", "ci_ti_mc_bln"), ("bi", "ci_ti_mc_bln_bi")):
        dec = concern.Concern(variant=variant, **kw).decompose(model, variables, x, y, 10)
        chex.assert_trees_all_equal({k: np.asarray(v) for k, v in dec.modules.positions.items()}, steps[step])
    rows = {r["group"]: r for r in concern.step_removals(steps)}
    assert rows["fc2_relu"]["bln_removed"] > 0 and rows["fc2_relu"]["kept"] < rows["fc2_relu"]["nodes"]


def test_zero_init_residual_is_off_by_default_and_zeroes_only_conv2():
    kw = {"use_bn": False, "stage_sizes": (1, 1, 1), "stage_widths": (4, 4, 8), "stem_width": 4}
    plain = models.create_model("resnet20", 3, **kw)
    zero = models.create_model("resnet20", 3, zero_init_residual=True, **kw)
    assert models.zoo_module(models.create_model("resnet20", 3, **kw)).zero_init_residual is False
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
    a = traverse_util.flatten_dict(plain.init(jax.random.key(0), x)["params"], sep="/")
    b = traverse_util.flatten_dict(zero.init(jax.random.key(0), x)["params"], sep="/")
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith("conv2/kernel"):
            assert not np.any(b[k]) and np.any(a[k])
        else:
            chex.assert_trees_all_equal(a[k], b[k])
    # every block starts as its shortcut: an identity block passes its (non-negative) input through
    _, acts = forward(zero, {"params": traverse_util.unflatten_dict(b, sep="/")}, x)
    chex.assert_trees_all_close(acts["stage1_block0/relu2"], acts["stem_relu"], atol=1e-6)

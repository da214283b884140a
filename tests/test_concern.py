"""Pan & Rajan decomposition: hand-made networks, sliding-window backtracking, voting, continuous learning."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.fast_init import fast_init

from jaxmod import checkpoint, data, metrics, models, reuse, train
from jaxmod.activations import forward
from jaxmod.approaches import concern, create_approach
from jaxmod.compose import VotingModel, compose
from jaxmod.losses import cross_entropy_loss
from jaxmod.modules import POSITIVE, ModuleMeta
from jaxmod.running import channel_head, head_logits, module_outputs


def tiny_mlp():
    """fc1 with 3 hidden units on 2 inputs (1x1x2 images), 3 classes; unit u fires on input feature u
    (u = 0, 1) and unit 2 never fires."""
    model = models.create_model("fc1", 3, units=3)
    params = {"fc1": {"kernel": jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]]), "bias": jnp.zeros(3)},
              "logits": {"kernel": jnp.array([[2.0, -0.6, 0.1], [-0.6, 0.8, 0.01], [0.3, 0.3, 0.3]]),
                         "bias": jnp.array([0.1, 0.2, 0.3])}}
    return model, {"params": params}


def samples(features):
    return np.asarray(features, np.float32).reshape(-1, 1, 1, 2)


def test_rank_and_selection_by_hand():
    y = np.array([1, 0, 1, 1, 0, 2])
    chex.assert_trees_all_equal(concern.rank_in_class(y), np.array([0, 0, 1, 2, 1, 0]))
    eligible = np.array([True, True, False, True, True, True])
    chex.assert_trees_all_equal(concern.rank_in_class(y, eligible), np.array([0, 0, -1, 1, 1, 0]))
    pos, neg = concern.select_samples(y, 3, positives=1, negatives=1, eligible=eligible)
    chex.assert_trees_all_equal(pos, np.array([True, True, False, False, False, True]))
    chex.assert_trees_all_equal(neg, np.array([True, True, False, False, False, True]))
    with pytest.raises(ValueError, match=r"classes \[2\] have no samples"):
        concern.select_samples(y, 3, 1, 1, eligible=y != 2)


def test_cut_and_restored_units_are_the_known_ones():
    model, variables = tiny_mlp()
    # class 0's positives fire unit 0 (one of them also unit 1); class 1's fire unit 1; class 2's fire both.
    x = samples([[1, 0], [1, 0.5], [0, 1], [0, 2], [1, 1]])
    y = np.array([0, 0, 1, 1, 2])
    pos, neg = concern.select_samples(y, 3, positives=5, negatives=0)
    pc, nc, n_pos, _ = concern.node_counts(model, variables, x, y, pos, neg, 3, batch_size=2)
    chex.assert_trees_all_equal(pc["fc1_relu"], np.array([[2, 1, 0], [0, 2, 0], [1, 1, 0]], np.int32))
    any_rule = concern.concern_masks(pc, nc, n_pos, "any")["fc1_relu"]
    all_rule = concern.concern_masks(pc, nc, n_pos, "all")["fc1_relu"]
    chex.assert_trees_all_equal(any_rule, np.array([[1, 1, 0], [0, 1, 0], [1, 1, 0]], bool))
    chex.assert_trees_all_equal(all_rule, np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], bool))
    # tangling: one negative per class (the first sample of each): class 1's [0, 1] restores unit 1 for
    # modules 0 and 2; class 0's [1, 0] restores unit 0 for modules 1 and 2.
    pos, neg = concern.select_samples(y, 3, positives=5, negatives=1)
    pc, nc, n_pos, _ = concern.node_counts(model, variables, x, y, pos, neg, 3)
    ti = concern.concern_masks(pc, nc, n_pos, "all")["fc1_relu"]
    chex.assert_trees_all_equal(ti, np.array([[1, 1, 0], [1, 1, 0], [1, 1, 0]], bool))


def test_channeling_is_the_concerned_logit_and_the_mean_of_the_others():
    model, variables = tiny_mlp()
    x = samples([[1, 0], [0, 3]])
    logits = np.asarray(model.apply(variables, x))
    head = channel_head(3, range(3))
    assert head["kernel"].shape == (3, 3, 2) and head["bias"].shape == (3, 2) and not head["bias"].any()
    out = np.stack([np.asarray(head_logits(jax.tree.map(lambda h, m=m: h[m], head), logits)) for m in range(3)])
    chex.assert_trees_all_close(out, np.einsum("bc,mcd->mbd", logits, head["kernel"]), rtol=1e-6)
    # column 1 (POSITIVE) is the concerned class's logit, column 0 the mean of the others
    assert POSITIVE == 1
    chex.assert_trees_all_close(out[1, :, POSITIVE], logits[:, 1], rtol=1e-6)
    chex.assert_trees_all_close(out[1, :, 0], (logits[:, 0] + logits[:, 2]) / 2, rtol=1e-6)
    # the same as a 2-node output layer whose unconcerned edges and bias are the other classes' means
    kernel, bias = variables["params"]["logits"]["kernel"], variables["params"]["logits"]["bias"]
    hidden = np.maximum(np.asarray(x).reshape(2, 2) @ np.asarray(variables["params"]["fc1"]["kernel"]), 0)
    unconcerned = hidden @ ((kernel[:, 0] + kernel[:, 2]) / 2) + (bias[0] + bias[2]) / 2
    chex.assert_trees_all_close(out[1, :, 0], np.asarray(unconcerned), rtol=1e-5)
    # a head for a subset of classes holds the chosen classes' rows, in order
    chex.assert_trees_all_equal(channel_head(3, [2, 0])["kernel"], head["kernel"][np.array([2, 0])])


def test_backtracking_through_dense_layers_by_hand():
    kernel = np.array([[0.9, -0.1, -0.1],   # strong only to class 0: unconcerned for modules 1, 2
                       [0.1, 0.1, 0.1],     # weak everywhere: never removed
                       [0.7, 0.7, -2.0]])   # strong to all
    removed = concern.output_removal(kernel, 0.5)
    # module 1: concerned edge -0.1 weak; unconcerned = mean(0.9, -0.1) = 0.4 < 0.5 -> kept
    # module 2 unit 0: unconcerned = mean(0.9, -0.1) = 0.4 -> kept; unit 2 module 0: concerned 0.7 strong -> kept
    chex.assert_trees_all_equal(removed, np.zeros((3, 3), bool))
    kernel[0] = [1.5, 1.5, 0.1]  # module 2: unconcerned mean 1.5 strong, concerned 0.1 weak -> removed
    chex.assert_trees_all_equal(concern.output_removal(kernel, 0.5)[:, 0], np.array([False, False, True]))
    # one layer further back: unit 0 strongly feeds only next-layer unit 1; unit 1 has no strong edge
    w = np.array([[0.1, 0.8], [0.2, 0.3]])
    kept_next = np.array([[True, False], [True, True]])
    chex.assert_trees_all_equal(concern._strong_removal(kept_next, w, 0.5), np.array([[True, False], [False, False]]))


def brute_cover(alive, kernel, stride, padding, src_hw, pool):
    """For each source position, the number of kept outputs whose window (through the pooling) holds it."""
    c, ho, wo, _ = alive.shape
    out_any = alive.any(axis=-1)
    cover = np.zeros((c, *src_hw))
    for m, i, j in itertools.product(range(c), range(ho), range(wo)):
        if not out_any[m, i, j]:
            continue
        for a, b in itertools.product(range(kernel[0]), range(kernel[1])):
            r, s = i * stride + a - padding, j * stride + b - padding  # position in the conv input
            if not (0 <= r < src_hw[0] // pool and 0 <= s < src_hw[1] // pool):
                continue  # padding
            cover[m, r * pool: (r + 1) * pool, s * pool: (s + 1) * pool] += 1
    return cover


@pytest.mark.parametrize("kernel, stride, padding, src, pool", [
    ((3, 3), 2, 1, (7, 7), 1),   # padding and stride
    ((2, 2), 1, 0, (8, 8), 2),   # valid, through a 2x2 pooling
    ((3, 3), 1, 1, (5, 6), 1),
])
def test_sliding_window_mapping_matches_brute_force(kernel, stride, padding, src, pool):
    rng = np.random.default_rng(0)
    hin, win = src[0] // pool, src[1] // pool
    ho, wo = (hin + 2 * padding - kernel[0]) // stride + 1, (win + 2 * padding - kernel[1]) // stride + 1
    alive = rng.random((2, ho, wo, 3)) < 0.25
    edge = concern.ConvEdge("a", "b", kernel, stride, ((padding, padding), (padding, padding)), pool)
    got = np.asarray(concern._conv_cover(jnp.asarray(alive), edge, (*src, 4)))[..., 0]
    chex.assert_trees_all_close(got, brute_cover(alive, kernel, stride, padding, src, pool))


def test_backtrack_to_input_removes_positions_feeding_only_removed_outputs():
    # a 1-D-like case: conv 3x3, stride 1, padding 1 on a 1x5 map; only output (0, 4) is kept
    plan = concern.Plan((), None, (concern.ConvEdge("in", "out", (3, 3), 1, ((1, 1), (1, 1))),), ("in", "out"))
    masks = {"in": np.ones((1, 1, 5, 2), bool), "out": np.zeros((1, 1, 5, 3), bool)}
    masks["out"][0, 0, 4, 1] = True
    got = concern.backtrack_conv(masks, plan)["in"][0, 0, :, 0]
    chex.assert_trees_all_equal(got, np.array([False, False, False, True, True]))


@pytest.fixture(scope="module")
def lenet():
    model = models.create_model("lenet5", 10)
    variables = fast_init(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))  # random weights
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 28, 28, 1)).astype(np.float32)
    y = np.arange(120) % 10
    return model, variables, x, y


def test_mc_bi_shrinks_modules_without_changing_predictions(lenet):
    model, variables, x, y = lenet
    dec = concern.Concern(variant="ci_ti_mc_bln", positives=3, negatives=1).decompose(model, variables, x, y, 10)
    masks = {k: np.array(v) for k, v in dec.modules.positions.items()}
    masks["conv2_relu"][:, :5] = False  # rows 0-4 of conv2's 10x10 map removed in every module
    bi = concern.backtrack_conv(masks, concern.model_plan(model, x.shape[1:]))
    # pooled rows 0-4 feed only conv2 rows 0-4 (5x5 valid windows), so conv1 rows 0-9 go; row 10 on stays
    assert not bi["conv1_relu"][:, :10].any()
    chex.assert_trees_all_equal(bi["conv1_relu"][:, 10:], masks["conv1_relu"][:, 10:])
    chex.assert_trees_all_equal(bi["conv2_relu"], masks["conv2_relu"])
    conf = [module_outputs(model, variables, dec.modules.replace(positions=m), x[:40]) for m in (masks, bi)]
    chex.assert_trees_all_close(conf[0], conf[1], atol=1e-6)


def test_continuous_learning_restores_nodes_active_on_the_new_classes(lenet):
    model, variables, x, y = lenet
    approach = concern.Concern(variant="ci_ti_mc", positives=2, negatives=0)
    dec = approach.decompose(model, variables, x, y, 10)
    other = np.random.default_rng(1).normal(size=(8, 28, 28, 1)).astype(np.float32)
    updated = approach.continue_learning(model, variables, dec.modules, other, rows=[3])
    assert updated.meta == dec.modules.meta
    chex.assert_trees_all_equal(updated.head, dec.modules.head)  # continuous learning changes masks only
    new = {k: np.asarray(v) for k, v in updated.positions.items()}
    old = {k: np.asarray(v) for k, v in dec.modules.positions.items()}
    _, active = forward(model, variables, jnp.asarray(other))
    for k in old:
        any_active = np.asarray(jnp.any(active[k] > 0, axis=0))
        chex.assert_trees_all_equal(new[k][3], old[k][3] | any_active)
        chex.assert_trees_all_equal(np.delete(new[k], 3, axis=0), np.delete(old[k], 3, axis=0))
    assert sum(new[k].sum() - old[k].sum() for k in old) > 0


def test_voting_rules_on_constructed_outputs():
    conf = np.array([[0.9, 0.2, 0.3, 0.6],
                     [0.6, 0.8, 0.4, 0.1],
                     [0.1, 0.7, 0.45, 0.2]])
    y = np.array([0, 2, 2, 1])
    # one voter says yes -> it wins; two say yes -> the more confident; none -> the most confident
    # samples: 0 -> module 0 (right), 1 -> module 1 (wrong, label 2), 2 -> module 2 (right), 3 -> module 0 (wrong)
    assert reuse.voted_accuracy(conf, y, [0, 1, 2])["top1"] == pytest.approx(0.5)
    assert reuse.voted_accuracy(conf, y, [0, 1, 2])["top5"] == pytest.approx(1.0)  # k clipped to 3 classes
    # a two-class sub-task votes with its two modules on its own samples only
    assert reuse.voted_accuracy(conf, y, [1, 2])["top1"] == pytest.approx(1 / 3)


def test_metrics_jaccard_with_the_model_and_co2e_by_hand():
    stacked = {"a": np.array([[1, 0, 1], [1, 1, 1]], bool), "b": np.array([[[1, 0]], [[0, 0]]], bool)}
    chex.assert_trees_all_close(metrics.module_model_jaccard(stacked), np.array([3 / 5, 3 / 5]))
    # one hour at 40 W CPU + 10 W DRAM: 1.58 * 50 / 1000 kWh, CO2e 0.954 of that
    out = metrics.co2e(3600.0, 40.0, 10.0)
    assert out["kwh"] == pytest.approx(0.079) and out["co2e_lbs"] == pytest.approx(0.954 * 0.079)
    with pytest.raises(ValueError, match="non-negative"):
        metrics.co2e(-1.0, 1.0, 1.0)


@pytest.mark.parametrize("build, message", [
    (lambda: concern.Concern(variant="ti_x"), "variant must be one of"),
    (lambda: create_approach("concern", delta=0), "delta must be > 0"),
])
def test_bad_options(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_inputs_fail_before_any_work(lenet):
    model, variables, x, y = lenet
    approach = concern.Concern()
    with pytest.raises(ValueError, match=r"classes \[9\] have no samples"):
        approach.decompose(model, variables, x[y != 9], y[y != 9], 10)
    with pytest.raises(ValueError, match="dense and convolutional models; RecurrentClassifier has a recurrent layer"):
        concern.model_plan(models.create_model("rnn_lstm", 10, vocab_size=20, input_len=5), (5,))
    with pytest.raises(ValueError, match="dense"):
        concern.Concern(variant="ti_sne").decompose(model, variables, x, y, 10)
    metas = [ModuleMeta(approach="concern", model_name=name, model_config={}, input_shape=shape, num_classes=10,
                        classes=tuple(range(10))) for name, shape in (("lenet5", (28, 28, 1)), ("vgg16", (32, 32, 3)))]
    reuse.check_same_inputs(metas[:1] * 2)  # the same inputs compose
    with pytest.raises(ValueError, match=r"different inputs: input_shape: \(28, 28, 1\) vs \(32, 32, 3\)"):
        reuse.check_same_inputs(metas)


def test_resnet_without_bn_plan_and_decomposition_run():
    model = models.create_model("resnet20", 3, use_bn=False, stage_sizes=(1, 1, 1), stage_widths=(4, 4, 8),
                                stem_width=4)
    variables = fast_init(model, jax.random.key(1), jnp.zeros((1, 8, 8, 1)))  # random weights
    x = np.random.default_rng(2).normal(size=(12, 8, 8, 1)).astype(np.float32)
    y = np.arange(12) % 3
    plan = concern.model_plan(model, x.shape[1:])
    assert plan.flatten[1] == "gap" and len(plan.conv_edges) == 9
    dec = concern.Concern(variant="ci_ti_mc_bln_bi", positives=4, delta=0.05).decompose(model, variables, x, y, 3)
    flat = {k: np.asarray(v) for k, v in dec.modules.positions.items()}
    assert flat["stage3_block0/relu2"].shape == (3, 2, 2, 8)
    # GAP backtracking removes whole channels of the last sum, for the modules whose channel goes
    removed = concern.output_removal(np.asarray(variables["params"]["logits"]["kernel"]), 0.05)
    assert not flat["stage3_block0/relu2"][removed[:, None, None, :].repeat(2, 1).repeat(2, 2)].any()


def test_end_to_end_on_mnist_and_module_checkpoint(tmp_path):
    ds = data.load_dataset("mnist", train_limit=3000, test_limit=1000)
    model = models.create_model("fc1", 10)
    state, _ = train.fit(model, ds, cross_entropy_loss(), train.TrainConfig(epochs=2), tmp_path / "std",
                         progress=False)
    variables = state.variables()
    model_acc = train.evaluate(model, variables, ds.test.x, ds.test.y)["top1"]
    approach = concern.Concern(variant="cm_rie")
    dec = approach.decompose(model, variables, ds.train.x, ds.train.y, 10)
    assert dec.modules.granularity == "positions" and dec.modules.votes
    conf = module_outputs(model, variables, dec.modules, ds.test.x)
    composed = reuse.voted_accuracy(conf, ds.test.y, range(10))
    assert model_acc > 0.8 and composed["top1"] >= model_acc - 0.02
    jac = concern.jaccard_figures(model, variables, dec.modules)
    assert 0 < jac["weight_mean_pairwise"] <= 1 and 0 < jac["node_mean_module_model"] <= 1
    modules = dec.modules.with_meta(dataset="mnist")
    assert modules.meta.input_shape == ds.input_shape and modules.meta.model_name == "fc1"
    checkpoint.save_modules(tmp_path / "modules", modules, variables)
    restored, restored_vars = checkpoint.restore_modules(tmp_path / "modules")
    assert restored.meta == modules.meta
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored.masks), jax.tree.map(np.asarray, modules.masks))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored.head), jax.tree.map(np.asarray, modules.head))
    voter = compose(restored, restored_vars, range(10))  # rebuilt from the saved metadata, voting
    assert isinstance(voter, VotingModel)
    again = voter.confidences(ds.test.x[:50])
    chex.assert_trees_all_close(again, conf[:, :50], atol=1e-6)

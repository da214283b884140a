"""Composition by physical slicing: equivalence, FLOPs, checks, and restoring in a new process."""

import json
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers.fast_init import fast_init
from helpers.program_runs import run_program

from jaxmod import checkpoint, compose, masks, metrics, models, reuse
from jaxmod.activations import predict_logits
from jaxmod.modules import ModuleMeta, ModuleSet, fingerprint
from jaxmod.topology import (
    count_parameters,
    module_intersections,
    parameter_masks,
    resolve_topology,
    unit_mask_variables,
)

SHAPE = (28, 28, 1)


def _random_modules(name, seed=0, p=0.4, **config):
    model = models.create_model(name, 10, **config)
    topo = resolve_topology(model, SHAPE)
    rng = np.random.default_rng(seed)
    masks = {g: rng.random((10, n)) < p for g, n in topo.sizes.items()}
    for m in masks.values():
        m[np.arange(10), rng.integers(0, m.shape[1], 10)] = True  # every module keeps a unit per layer
    variables = fast_init(model, jax.random.key(seed), jnp.zeros((1, *SHAPE)))  # random weights: values don't matter
    meta = ModuleMeta(approach="moda", model_name=name, model_config=models.model_config(model), dataset="none",
                      input_shape=SHAPE, num_classes=10, classes=tuple(range(10)), source=fingerprint(variables))
    return model, topo, ModuleSet(units=masks, meta=meta), variables


@pytest.mark.parametrize("name", ["fc3", "lenet5"])
def test_composed_equals_masked_full_model(name):
    model, topo, modules, variables = _random_modules(name)
    x = jax.random.normal(jax.random.key(1), (5, *SHAPE))
    masked_apply = jax.jit(model.apply)  # one compile for every class set (the masks change, not the shapes)
    for classes in [(3,), (7, 2), (0, 4, 5, 9)]:
        sliced = compose.compose(modules, variables, classes)
        keep = modules.union(classes)
        masked = masked_apply({**variables, **unit_mask_variables(topo, keep)}, x)[:, list(classes)]
        chex.assert_trees_all_close(jax.jit(sliced.model.apply)(sliced.variables, x), masked, atol=1e-5)
        assert count_parameters(sliced.variables) < count_parameters(variables)


def test_composed_flops_fall_with_kept_units():
    model, topo, modules, variables = _random_modules("lenet5")
    full = metrics.forward_flops(model, variables, SHAPE)
    flops = []
    for p in (0.1, 0.4, 0.7, 1.0):
        _, _, mods, _ = _random_modules("lenet5", seed=3, p=p)
        sliced = compose.compose(modules.replace(units=mods.units), variables, (1, 2))
        flops.append(metrics.forward_flops(sliced.model, sliced.variables, SHAPE))
    assert flops == sorted(flops) and flops[0] < flops[-1] < full
    # keeping every unit and class reproduces the full model's FLOPs
    everything = modules.replace(units={g: np.ones((10, n), bool) for g, n in topo.sizes.items()})
    sliced = compose.compose(everything, variables, range(10))
    assert metrics.forward_flops(sliced.model, sliced.variables, SHAPE) == full
    # LeNet-5's first conv by hand: 28*28 outputs x 6 channels x 25 MACs x 2
    conv1_only = metrics.count_flops(
        lambda v, x: jax.lax.conv_general_dilated(x, v["params"]["conv1"]["kernel"], (1, 1), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC")),
        variables, jnp.zeros((1, *SHAPE)))
    assert conv1_only == 2 * 28 * 28 * 6 * 25


@pytest.mark.parametrize("name, config", [("lenet5", {}), ("vgg_narrow", {}), ("resnet20", {"width_multiplier": 0.5}),
                                          ("mobilenet", {"width_multiplier": 0.25})])
def test_module_metrics_match_sliced_sizes(name, config):
    # sequential, flatten, residual (shared producers, identity shortcuts) and depthwise models
    model, topo, modules, variables = _random_modules(name, **config)
    stats = metrics.unit_statistics(topo, modules.units, variables["params"])
    chex.assert_trees_all_close(metrics.module_statistics(modules, variables, model)["sizes"], stats["sizes"])
    total = count_parameters(variables)
    for c in (0, 5):
        sliced = compose.compose(modules, variables, (c,))
        np.testing.assert_allclose(stats["sizes"][c], count_parameters(sliced.variables) / total)
    # the overlap of modules 0 and 5, by brute force on their materialised parameter masks
    a, b = (parameter_masks(topo, {g: m[c] for g, m in modules.units.items()}, np.eye(10, dtype=bool)[c])
            for c in (0, 5))
    shared = sum(int(np.sum(x & y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    np.testing.assert_allclose(stats["overlap"][0, 5], shared / total)
    # a composed pair also keeps the weights between the two modules' units: at least their union
    pair = compose.compose(modules, variables, (0, 5))
    union = stats["sizes"][0] + stats["sizes"][5] - stats["overlap"][0, 5]
    assert count_parameters(pair.variables) / total >= union - 1e-12
    np.testing.assert_allclose(stats["jaccard"][0, 5], stats["overlap"][0, 5] / union)


@pytest.mark.parametrize("name, config", [("lenet5", {}), ("resnet20", {"width_multiplier": 0.5})])
def test_factored_intersections_equal_materialised_masks(name, config):
    _, topo, modules, variables = _random_modules(name, **config)
    stacked = jax.vmap(lambda keep, cls: parameter_masks(topo, keep, cls))(
        {g: jnp.asarray(m) for g, m in modules.units.items()}, jnp.eye(10, dtype=bool))
    unindexed = sum(np.size(v) for path, v in traverse_util.flatten_dict(variables["params"]).items()
                    if ("params", path) not in topo.leaf_shapes)
    np.testing.assert_array_equal(module_intersections(topo, modules.units),
                                  masks.pairwise_intersections(stacked) + unindexed)


@pytest.mark.parametrize("classes, message", [([], "empty"), ([1, 11], "unknown"), ([2, 2], "repeats"),
                                             ([1.5, 2], "integers"), ([-1, 2], "unknown")])
def test_bad_class_lists(classes, message):
    _, _, modules, variables = _random_modules("fc1")
    with pytest.raises(ValueError, match=message):
        compose.compose(modules, variables, classes)


def test_modules_from_another_configuration_are_refused():
    model, _, modules, variables = _random_modules("fc1")
    with pytest.raises(ValueError, match="different model"):
        compose.compose(modules, variables, [1, 2], model=models.create_model("fc1", 10, units=64))
    with pytest.raises(ValueError, match="different model"):
        compose.compose(modules, variables, [1, 2], model=models.create_model("fc2", 10))
    other = fast_init(models.create_model("fc2", 10), jax.random.key(0), jnp.zeros((1, *SHAPE)))
    with pytest.raises(ValueError, match="do not fit"):
        compose.compose(modules, other, [1, 2])
    # the same architecture trained otherwise (here: initialised from another seed) is refused too
    retrained = fast_init(model, jax.random.key(7), jnp.zeros((1, *SHAPE)))
    with pytest.raises(ValueError, match="not the model these modules were decomposed from"):
        compose.compose(modules, retrained, [1, 2])
    with pytest.raises(ValueError, match="string"):
        compose.compose(modules, variables, "358")


def test_unit_modules_also_vote_through_the_same_call():
    model, topo, modules, variables = _random_modules("fc3")
    x = np.asarray(jax.random.normal(jax.random.key(1), (6, *SHAPE)))
    voter = compose.compose(modules, variables, (7, 2), how="vote")
    assert isinstance(voter, compose.VotingModel) and voter.classes == (7, 2)
    conf = np.asarray(voter(x))  # [B, k]: each module's softmax at its own class, the model masked by its units
    for i, c in enumerate((7, 2)):
        keep = {g: m[c] for g, m in modules.units.items()}
        probs = jax.nn.softmax(model.apply({**variables, **unit_mask_variables(topo, keep)}, x))[:, c]
        chex.assert_trees_all_close(conf[:, i], probs, atol=1e-6)
    np.testing.assert_array_equal(voter.predict(x), np.asarray((7, 2))[np.argmax(conf, axis=1)])
    chex.assert_trees_all_close(voter.confidences(x, batch_size=4), conf.T, atol=1e-6)


def test_sample_subtasks():
    tasks = reuse.sample_subtasks(10, 30, min_size=2, max_size=9, seed=1)
    assert len(tasks) == 30 and len(set(tasks)) == 30
    assert all(2 <= len(t) <= 9 and list(t) == sorted(set(t)) for t in tasks)
    assert tasks == reuse.sample_subtasks(10, 30, min_size=2, max_size=9, seed=1)
    with pytest.raises(ValueError):
        reuse.sample_subtasks(10, 0)
    index, labels = reuse.subtask_samples(np.array([3, 1, 3, 0, 7]), (7, 3))
    np.testing.assert_array_equal(index, [0, 2, 4])
    np.testing.assert_array_equal(labels, [1, 1, 0])
    with pytest.raises(ValueError, match="non-negative"):
        reuse.subtask_samples(np.array([-1, 0, 3]), (0, 3))
    with pytest.raises(ValueError, match="empty"):
        reuse.subtask_samples(np.array([0, 3]), ())


@pytest.mark.parametrize("name, config", [("lenet5", {}), ("resnet20", {"width_multiplier": 0.5})])
def test_restored_modules_compose_identically_in_a_new_process(tmp_path, name, config):
    # resnet20's groups are nested ('stage1_block0/relu1') and it has identity-shortcut index maps
    _, _, modules, variables = _random_modules(name, **config)
    checkpoint.save_modules(tmp_path / "mods", modules, variables)
    x = np.asarray(jax.random.normal(jax.random.key(2), (3, *SHAPE)))
    np.save(tmp_path / "x.npy", x)
    sliced = compose.compose(modules, variables, (2, 6, 8))
    here = np.asarray(jax.jit(sliced.model.apply)(sliced.variables, x))  # the same jitted apply in both processes
    script = textwrap.dedent(f"""
        import json, jax, numpy as np
        from jaxmod import checkpoint, compose
        modules, variables = checkpoint.restore_modules({str(tmp_path / "mods")!r})
        sliced = compose.compose(modules, variables, (2, 6, 8))
        out = np.asarray(jax.jit(sliced.model.apply)(sliced.variables, np.load({str(tmp_path / "x.npy")!r})))
        print(json.dumps(out.tolist()))
    """)
    proc = run_program([], code=script)  # a new process (forked from one that has imported jax, nothing more)
    assert proc.returncode == 0, proc.stderr[-3000:]
    there = np.array(json.loads(proc.stdout.strip().splitlines()[-1]), np.float32)
    np.testing.assert_array_equal(there, here)


def test_predict_logits_matches_apply_across_a_partial_batch():
    model, _, _, variables = _random_modules("lenet5")
    x = np.asarray(jax.random.normal(jax.random.key(4), (7, *SHAPE)))
    chex.assert_trees_all_close(predict_logits(model, variables, x, batch_size=3), model.apply(variables, x),
                                atol=1e-5)


def _fc2_meta(model, variables, approach):
    return ModuleMeta(approach=approach, model_name="fc2", model_config=models.model_config(model), dataset="none",
                      input_shape=SHAPE, num_classes=10, classes=tuple(range(10)), source=fingerprint(variables))


def test_used_units_by_hand():
    """fc2 with 3 and 2 hidden units: a unit is used when a module keeps one of its nodes (node masks) or one of
    the weights that read it (weight masks; the output layer reads the last hidden layer)."""
    model = models.create_model("fc2", 10, units=3)
    variables = fast_init(model, jax.random.key(0), jnp.zeros((1, *SHAPE)))  # random weights
    topo = resolve_topology(model, SHAPE)
    meta = _fc2_meta(model, variables, "concern")
    nodes = {"fc1_relu": np.array([[1, 0, 0], [0, 0, 1]], bool), "fc2_relu": np.array([[0, 0, 0], [0, 1, 0]], bool)}
    chosen = ModuleSet(positions=nodes, meta=meta.replace(classes=(0, 1)))
    used = compose.used_units(chosen, topo)
    chex.assert_trees_all_equal(used, {"fc1_relu": np.array([1, 0, 1], bool), "fc2_relu": np.array([0, 1, 0], bool)})
    kernels = {"fc1": {"kernel": np.ones((2, 784, 3), bool), "bias": None},
               "fc2": {"kernel": np.zeros((2, 3, 3), bool), "bias": None},
               "logits": {"kernel": np.zeros((2, 3, 10), bool), "bias": None}}
    kernels["fc2"]["kernel"][0, 2, 1] = True  # module 0 keeps fc1 unit 2 -> fc2 unit 1
    kernels["logits"]["kernel"][1, 0, 7] = True  # module 1 keeps fc2 unit 0 -> class 7
    chosen = ModuleSet(weights=kernels, meta=meta.replace(approach="supermask", classes=(0, 1)))
    used = compose.used_units(chosen, topo)
    chex.assert_trees_all_equal(used, {"fc1_relu": np.array([0, 0, 1], bool), "fc2_relu": np.array([1, 0, 0], bool)})


def test_a_voter_drops_the_units_no_chosen_module_uses():
    """Node-mask modules of a zoo LeNet-5 voting: units used by neither chosen module leave the network, which
    gives every module's own confidence (the full network with its masks) and has fewer parameters and FLOPs."""
    from jaxmod.running import channel_head, module_rows, one_module_output

    model = models.create_model("lenet5", 10)
    variables = fast_init(model, jax.random.key(0), jnp.zeros((1, *SHAPE)))  # random weights
    topo = resolve_topology(model, SHAPE)
    shapes = {k: v.shape[1:] for k, v in jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((1, *SHAPE)), mutable=["activations"])[1]["activations"],
        variables).items()}
    rng = np.random.default_rng(0)
    nodes = {g: rng.random((10, *shapes[g])) < 0.7 for g in topo.sizes}
    nodes["fc1_relu"][:, :40] = False  # the first 40 fc1 units: no module keeps them
    nodes["conv2_relu"][:, ..., 3] = False  # nor conv2's channel 3
    modules = ModuleSet(positions=nodes, head=channel_head(10, range(10)), meta=_fc2_meta(model, variables, "concern")
                        .replace(model_name="lenet5", model_config=models.model_config(model)))
    voter = compose.compose(modules, variables, (2, 6))
    x = jax.random.normal(jax.random.key(1), (4, *SHAPE))
    scores = voter(x)
    for i, c in enumerate((2, 6)):
        row = jax.tree.map(lambda m, c=c: m[c], module_rows(modules))
        own = one_module_output(model, variables, row, jnp.asarray(c), x)
        chex.assert_trees_all_close(scores[:, i], own, atol=1e-5)
    expected = {g: int(m[[2, 6]].reshape(-1, m.shape[-1]).any(axis=0).sum()) for g, m in nodes.items()}
    assert dict(voter.model.widths) == expected and expected["fc1_relu"] <= 80 and expected["conv2_relu"] <= 15
    assert count_parameters(voter.variables) < count_parameters(variables)
    assert metrics.forward_flops(voter.model, voter.variables, SHAPE) < metrics.forward_flops(model, variables, SHAPE)

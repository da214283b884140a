"""Tests for the model zoo: topology resolution, parameter counts, and exact physical slicing.

The central check (:func:`check_slicing`) is the same for every architecture: the physically sliced
model's logits equal the unit-masked full model's logits on the kept classes, in eval mode with
non-trivial batch-norm statistics, and the sliced model's size is the size its parameter masks imply.
"""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxmod.models import (
    INDEX_MAPS,
    MobileNet,
    ResNet,
    available_models,
    check_input_shape,
    create_model,
    model_config,
    zoo_model,
)
from jaxmod.topology import (
    class_vector,
    count_parameters,
    parameter_masks,
    resolve_topology,
    slice_model,
    unit_mask_variables,
)

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)
NATURAL_SHAPE = {"fc1": MNIST, "fc2": MNIST, "fc3": MNIST, "fc4": MNIST, "lenet5": MNIST, "vgg_narrow": MNIST}

# Exact parameter counts (params collection: weights, biases, BN scale and bias) on the natural shape
# with 10 classes, and the figure the literature quotes with its tolerance.
EXPECTED_PARAMS = {
    # 13 bias-free convs + BN, classifier 512-512-10: 14.71M conv + 8.4k BN + 0.53M dense.
    "vgg16": (15_249_354, 15.0e6, 0.03),
    "vgg_narrow": (435_754, None, None),
    # kuangliu/pytorch-cifar ResNet18: 11,173,962.
    "resnet18": (11_173_962, 11.2e6, 0.01),
    # He et al. ResNet20 (option A) 0.27M = 269,722; option B adds two 1x1 projections + BN (2,752).
    "resnet20": (272_474, 0.27e6, 0.02),
    "resnet32": (466_906, 0.46e6, 0.02),
    "resnet56": (855_770, 0.85e6, 0.02),
    # kuangliu/pytorch-cifar MobileNet: 3,217,226.
    "mobilenet": (3_217_226, 3.2e6, 0.01),
}


def natural_shape(name: str) -> tuple[int, int, int]:
    return NATURAL_SHAPE.get(name, CIFAR)


def param_count_of_shapes(model, input_shape) -> int:
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape))))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"])))


# ---------------------------------------------------------------------------
# Registry, shapes and parameter counts (shape-level only: jax.eval_shape)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", available_models())
def test_registered_model_resolves_on_natural_shape(name):
    model = create_model(name, num_classes=10)
    shape = natural_shape(name)
    topo = resolve_topology(model, shape)
    assert topo.num_classes == 10
    assert all(size >= 1 for size in topo.sizes.values())
    json.dumps(model_config(model))  # configs are JSON-able
    n = param_count_of_shapes(model, shape)
    print(f"{name} on {shape}: {n:,} params, {len(topo.sizes)} unit groups, {len(topo.spec.index_maps)} index maps")
    if name in EXPECTED_PARAMS:
        exact, quoted, tol = EXPECTED_PARAMS[name]
        assert n == exact
        if quoted is not None:
            assert abs(n - quoted) <= tol * quoted


@pytest.mark.parametrize("name", ["vgg_narrow", "resnet18", "resnet20", "resnet32", "resnet56", "mobilenet"])
@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_zoo_models_take_mnist_and_cifar_shapes(name, shape):
    check_input_shape(create_model(name, num_classes=10), shape)


def test_vgg16_needs_32x32():
    model = create_model("vgg16", num_classes=10)
    check_input_shape(model, CIFAR)
    with pytest.raises(ValueError, match="too small"):
        check_input_shape(model, MNIST)


def test_group_counts_and_index_maps():
    assert len(resolve_topology(create_model("vgg16", 10), CIFAR).sizes) == 15  # 13 conv + 2 fc
    r18 = resolve_topology(create_model("resnet18", 10), CIFAR)
    assert len(r18.sizes) == 1 + 2 * 8
    assert len(r18.spec.index_maps) == 8 - 3  # identity shortcuts: all blocks but 3 downsampling ones
    r20 = resolve_topology(create_model("resnet20", 10), CIFAR)
    assert len(r20.sizes) == 1 + 2 * 9 and len(r20.spec.index_maps) == 9 - 2
    mb = resolve_topology(create_model("mobilenet", 10), CIFAR)
    assert len(mb.sizes) == 1 + 2 * 13 and len(mb.spec.index_maps) == 13
    assert mb.sizes["block1/dw_relu"] == 32 and mb.sizes["block13/pw_relu"] == 1024
    assert mb.leaf_shapes[("params", ("block5", "dw_conv", "kernel"))] == (3, 3, 1, 256)


def test_width_multiplier_and_config():
    model = create_model("mobilenet", 10, width_multiplier=0.5)
    topo = resolve_topology(model, CIFAR)
    assert topo.sizes["stem_relu"] == 16 and topo.sizes["block13/pw_relu"] == 512
    vgg = create_model("vgg16", 10, width_multiplier=0.25)
    assert resolve_topology(vgg, CIFAR).sizes["conv13_relu"] == 128
    assert model_config(vgg)["width_multiplier"] == 0.25
    with pytest.raises(ValueError, match="bad configuration"):
        create_model("resnet20", 10, depth=3)


# ---------------------------------------------------------------------------
# Exact slicing: one helper for every architecture
# ---------------------------------------------------------------------------


def random_inputs(rng: np.random.Generator, batch: int, input_shape) -> jax.Array:
    """Noise images that also differ in contrast and per-channel offset: deep nets with global
    pooling map plain white-noise images to nearly the same logits."""
    noise = rng.normal(size=(batch, *input_shape))
    contrast = rng.uniform(0.3, 3.0, (batch, 1, 1, 1))
    offset = rng.normal(0.0, 1.0, (batch, 1, 1, input_shape[-1]))
    return jax.device_put(np.asarray(noise * contrast + offset, np.float32))


def random_variables(
    model, x: jax.Array, rng: np.random.Generator, calibrate: bool = True, unit_masks: dict | None = None
) -> dict:
    """Random variables of the model's shapes, drawn with numpy (fast: no per-shape PRNG compiles).

    Kernels are He-normal, biases and BN shifts small normals, BN scales in [0.5, 1.5]. Batch-norm
    running statistics are calibrated on ``x`` (one train-mode pass from zero statistics gives the
    batch statistics of every layer; with the ``unit_masks`` collection if given, so that the masked
    model, which loses units in every layer, keeps its signal) and then perturbed at random
    (variance times U(0.5, 2), mean shifted by up to half a standard deviation): no batch norm is an
    identity, and the input's signal still reaches the logits through every layer. Without
    ``calibrate`` the statistics are random: means U(0, 0.5), variances U(0.5, 2).
    """
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1]))
    draw = {
        "kernel": lambda s: rng.normal(size=s) * np.sqrt(2.0 / np.prod(s[:-1])),
        "bias": lambda s: rng.normal(0.0, 0.1, s),
        "scale": lambda s: rng.uniform(0.5, 1.5, s),
        "mean": lambda s: rng.uniform(0.0, 0.5, s),
        "var": lambda s: rng.uniform(0.5, 2.0, s),
    }

    def fill(tree, leaf_fn):
        flat = traverse_util.flatten_dict(dict(tree))
        return traverse_util.unflatten_dict({p: jax.device_put(leaf_fn(p, leaf)) for p, leaf in flat.items()})

    random_leaf = lambda path, leaf: np.asarray(draw[path[-1]](leaf.shape), leaf.dtype)
    out = {"params": fill(abstract["params"], random_leaf)}
    if "batch_stats" not in abstract:
        return out
    if not calibrate:
        return {**out, "batch_stats": fill(abstract["batch_stats"], random_leaf)}
    zeros = fill(abstract["batch_stats"], lambda path, leaf: np.zeros(leaf.shape, leaf.dtype))
    train = lambda v: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
    _, state = jax.jit(train)({**out, "batch_stats": zeros, **(unit_masks or {})})
    flat = traverse_util.flatten_dict(dict(state["batch_stats"]))
    stats = {}
    for path, updated in flat.items():
        batch_value = np.asarray(updated) / 0.1  # running = 0.9 * 0 + 0.1 * batch statistic
        if path[-1] == "var":
            std = np.sqrt(batch_value + 1e-3)
            stats[path] = batch_value * rng.uniform(0.5, 2.0, batch_value.shape) + 1e-3
            mean = path[:-1] + ("mean",)
            stats[mean] = stats.get(mean, 0.0) + std * rng.uniform(-0.5, 0.5, std.shape)
        else:
            stats[path] = stats.get(path, 0.0) + batch_value
    out["batch_stats"] = traverse_util.unflatten_dict(
        {p: jax.device_put(np.asarray(v, np.float32)) for p, v in stats.items()}
    )
    return out


def random_keep(topo, rng: np.random.Generator, p_keep: float = 0.6) -> dict[str, np.ndarray]:
    """A random unit mask: every group keeps at least one unit and (if it has two) drops one."""
    keep = {}
    for name, size in topo.sizes.items():
        vec = rng.random(size) < p_keep
        if not vec.any():
            vec[rng.integers(size)] = True
        if size > 1 and vec.all():
            vec[rng.integers(size)] = False
        keep[name] = vec
    return keep


def unindexed_size(topo, variables: dict, collection: str) -> int:
    indexed = {path for (col, path) in topo.leaf_axes() if col == collection}
    flat = traverse_util.flatten_dict(dict(variables.get(collection, {})))
    return int(sum(np.size(leaf) for path, leaf in flat.items() if path not in indexed))


def check_slicing(model, input_shape, seed: int = 0, num_kept_classes: int = 3, batch: int = 2):
    """Sliced logits == masked full model's logits on the kept classes; sliced size == mask-implied size."""
    rng = np.random.default_rng(seed)
    topo = resolve_topology(model, input_shape)
    x = random_inputs(rng, batch, input_shape)
    keep = random_keep(topo, rng)
    variables = random_variables(model, x, rng, unit_masks=unit_mask_variables(topo, keep))
    classes = sorted(int(c) for c in rng.choice(topo.num_classes, num_kept_classes, replace=False))

    apply = jax.jit(model.apply)  # one compile serves the full (all-ones mask) and the masked model
    full = apply({**variables, **unit_mask_variables(topo, {k: np.ones_like(v) for k, v in keep.items()})}, x)
    masked = apply({**variables, **unit_mask_variables(topo, keep)}, x)
    sliced = slice_model(model, topo, variables, keep, classes)
    small_apply = jax.jit(sliced.model.apply)
    small = small_apply(sliced.variables, x)

    assert type(sliced.model) is type(model) and sliced.model.num_classes == len(classes)
    assert dict(sliced.model.widths) == {name: int(vec.sum()) for name, vec in keep.items()}
    assert small.shape == (batch, len(classes))
    scale = float(jnp.max(jnp.abs(masked[:, classes])))
    assert np.isfinite(scale) and scale > 1e-3
    tol = 1e-4 * scale
    chex.assert_trees_all_close(small, masked[:, classes], atol=tol, rtol=1e-4)
    # the check is not vacuous: the logits depend on the input, and the mask changes them
    assert float(jnp.max(jnp.std(masked[:, classes], axis=0))) > 1e-2 * scale
    assert float(jnp.max(jnp.abs(full - masked))) > 100 * tol

    # every index map reads the right source, and at least one pads a unit its producer dropped
    maps = traverse_util.flatten_dict(dict(sliced.variables.get(INDEX_MAPS, {})), sep="/")
    assert sorted(maps) == sorted(im.name for im in topo.spec.index_maps)
    padded = 0
    for im in topo.spec.index_maps:
        sentinel = int(keep[im.source].sum())
        index = np.asarray(maps[im.name])
        assert index.shape == (int(keep[im.target].sum()),) and index.min() >= 0 and index.max() <= sentinel
        padded += int((index == sentinel).sum())
    if topo.spec.index_maps:
        assert padded > 0
        # the padding matters: reading a real unit instead of the zero pad changes the logits
        sentinels = {im.name: int(keep[im.source].sum()) for im in topo.spec.index_maps}
        unpadded = {name: jnp.where(index == sentinels[name], 0, index) for name, index in maps.items()}
        wrong_variables = {**sliced.variables, INDEX_MAPS: traverse_util.unflatten_dict(unpadded, sep="/")}
        assert float(jnp.max(jnp.abs(small_apply(wrong_variables, x) - small))) > 100 * tol

    # sliced size == mask-implied size (+ leaves the topology does not index, kept whole)
    class_vec = class_vector(topo, classes)
    for collection in ("params", "batch_stats"):
        if collection not in variables:
            continue
        masks = jax.jit(lambda k, c, col=collection: parameter_masks(topo, k, c, collection=col))(keep, class_vec)
        implied = sum(int(np.asarray(m).sum()) for m in jax.tree.leaves(masks))
        implied += unindexed_size(topo, variables, collection)
        assert count_parameters(sliced.variables, collection) == implied
    assert count_parameters(sliced.variables) < count_parameters(variables)
    return topo, keep, sliced


SLICING_CASES = {
    "fc2": (lambda: create_model("fc2", 10), MNIST),
    "lenet5": (lambda: create_model("lenet5", 10), MNIST),
    "vgg_narrow": (lambda: create_model("vgg_narrow", 10), MNIST),
    "vgg_narrow_nobn_cifar": (lambda: create_model("vgg_narrow", 10, use_bn=False), CIFAR),
    "vgg16_quarter": (lambda: create_model("vgg16", 10, width_multiplier=0.25), CIFAR),
    "resnet20": (lambda: create_model("resnet20", 10), CIFAR),
    "resnet20_nobn_mnist": (lambda: create_model("resnet20", 10, use_bn=False), MNIST),
    "resnet18_quarter": (lambda: create_model("resnet18", 10, width_multiplier=0.25), CIFAR),
    "mobilenet_quarter": (lambda: create_model("mobilenet", 10, width_multiplier=0.25), CIFAR),
}


@pytest.mark.parametrize("case", sorted(SLICING_CASES))
def test_slicing_equals_masked_model(case):
    factory, shape = SLICING_CASES[case]
    check_slicing(factory(), shape, seed=len(case))


# ---------------------------------------------------------------------------
# Train mode: dropout and batch norm
# ---------------------------------------------------------------------------


def test_vgg_dropout_runs_in_train_mode():
    model = create_model("vgg16", 10, width_multiplier=0.125)
    rng = np.random.default_rng(0)
    x = random_inputs(rng, 4, CIFAR)
    variables = random_variables(model, x, rng, calibrate=False)
    train_apply = jax.jit(lambda v, key: model.apply(v, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]))

    a, state = train_apply(variables, jax.random.key(1))
    b, _ = train_apply(variables, jax.random.key(1))
    c, _ = train_apply(variables, jax.random.key(2))
    assert a.shape == (4, 10) and bool(jnp.all(jnp.isfinite(a)))
    chex.assert_trees_all_close(a, b)
    assert float(jnp.max(jnp.abs(a - c))) > 0  # dropout masks differ with the key
    old = variables["batch_stats"]["bn1"]["mean"]
    assert float(jnp.max(jnp.abs(state["batch_stats"]["bn1"]["mean"] - old))) > 0  # running stats move
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)


@pytest.mark.parametrize(
    "model",
    [zoo_model(ResNet(stage_sizes=(1, 1), stage_widths=(4, 8), stem_width=4)),
     zoo_model(MobileNet(width_multiplier=0.125))],
    ids=["resnet", "mobilenet"],
)
def test_batchnorm_models_train_mode(model):
    rng = np.random.default_rng(0)
    x = random_inputs(rng, 2, MNIST)
    variables = random_variables(model, x, rng, calibrate=False)
    out, state = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
    assert out.shape == (2, 10) and bool(jnp.all(jnp.isfinite(out)))
    assert jax.tree.structure(state["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


def test_position_masks_zero_exactly_the_masked_positions():
    from jaxmod.models import create_model

    model = create_model("lenet5", 10)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 1)))
    variables = model.init(jax.random.PRNGKey(1), x)
    _, state = model.apply(variables, x, mutable=["activations"])
    full = np.asarray(state["activations"]["conv2_relu"])  # (2, 10, 10, 16)
    mask = np.ones(full.shape[1:], bool)
    mask[3, 4, :] = False
    mask[:, :, 5] = False
    _, state = model.apply({**variables, "position_masks": {"conv2_relu": mask}}, x, mutable=["activations"])
    masked = np.asarray(state["activations"]["conv2_relu"])
    np.testing.assert_array_equal(masked, full * mask)
    with pytest.raises(ValueError, match="position mask for 'conv2_relu'"):
        model.apply({**variables, "position_masks": {"conv2_relu": mask[:5]}}, x)

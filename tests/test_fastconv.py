"""The fast convolution path equals lax.conv_general_dilated (forward and gradients) and changes no parameters.

Tolerance: float32 results of the matmul and shifted-sum paths sum the same products in another order,
so they match lax to ``rtol=1e-4, atol=1e-5`` on unit-scale data; the lax path is bit-identical.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers.fast_init import fast_init
from jax import lax

from jaxmod import fastconv, metrics
from jaxmod.models import create_model

RTOL, ATOL = 1e-4, 1e-5
DN = ("NHWC", "HWIO", "NHWC")

# (input shape, kernel shape, strides, padding, groups, expected path)
CASES = [
    ((3, 2, 2, 8), (3, 3, 8, 5), (1, 1), ((1, 1), (1, 1)), 1, "matmul"),  # VGG16's last stage
    ((3, 4, 4, 6), (3, 3, 6, 4), (2, 2), ((1, 1), (1, 1)), 1, "matmul"),  # strided down to 2x2
    ((2, 4, 5, 3), (3, 2, 3, 4), (2, 3), ((2, 0), (1, 1)), 1, "matmul"),  # uneven strides, kernel, pads
    ((2, 1, 1, 4), (3, 3, 4, 3), (1, 1), "SAME", 1, "matmul"),  # 1x1 map
    ((2, 3, 3, 4), (3, 3, 4, 3), (1, 1), "VALID", 1, "matmul"),  # 1x1 output
    ((2, 2, 2, 8), (3, 3, 4, 6), (1, 1), ((1, 1), (1, 1)), 2, "matmul"),  # two groups, small map
    ((2, 8, 8, 6), (3, 3, 1, 6), (1, 1), ((1, 1), (1, 1)), 6, "depthwise"),
    ((2, 8, 7, 6), (3, 3, 1, 6), (2, 2), ((1, 1), (1, 1)), 6, "depthwise"),
    ((2, 2, 2, 4), (3, 3, 1, 8), (1, 1), "SAME", 4, "depthwise"),  # channel multiplier 2
    ((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), 1, "lax"),
    ((2, 4, 4, 3), (1, 1, 3, 4), (1, 1), "VALID", 1, "lax"),  # 1x1 kernels are matmuls already
]


def _random(shape, seed):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("x_shape,k_shape,strides,padding,groups,path", CASES)
def test_forward_and_gradients_equal_lax(x_shape, k_shape, strides, padding, groups, path):
    x, k = _random(x_shape, 0), _random(k_shape, 1)
    pads = fastconv.explicit_padding(padding, x_shape[1:3], k_shape[:2], strides)
    assert fastconv.conv_path(x_shape, k_shape, strides, pads, groups) == path

    def fast(x, k):
        return fastconv.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN, feature_group_count=groups)

    def ref(x, k):
        return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN, feature_group_count=groups)

    y, y_ref = jax.jit(fast)(x, k), jax.jit(ref)(x, k)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=RTOL, atol=ATOL)
    cot = _random(y.shape, 2)
    grads = jax.jit(jax.grad(lambda x, k: jnp.sum(fast(x, k) * cot), argnums=(0, 1)))(x, k)
    grads_ref = jax.jit(jax.grad(lambda x, k: jnp.sum(ref(x, k) * cot), argnums=(0, 1)))(x, k)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=RTOL, atol=ATOL)
    if path == "lax":
        np.testing.assert_array_equal(y, y_ref)


def test_prefers_matmul_only_on_small_outputs():
    assert fastconv.prefers_matmul((2, 2), (3, 3), (1, 1), ((1, 1), (1, 1)))
    assert not fastconv.prefers_matmul((4, 4), (3, 3), (1, 1), ((1, 1), (1, 1)))
    assert not fastconv.prefers_matmul((28, 28), (5, 5), (1, 1), ((2, 2), (2, 2)))  # LeNet-5 keeps lax
    assert not fastconv.prefers_matmul((2, 2), (1, 1), (1, 1), ((0, 0), (0, 0)))


def test_bad_padding_raises():
    with pytest.raises(ValueError, match="pairs"):
        fastconv.explicit_padding(((1, 1),), (2, 2), (3, 3), (1, 1))
    with pytest.raises(ValueError, match="groups"):
        fastconv.conv_matmul(jnp.zeros((1, 2, 2, 3)), jnp.zeros((3, 3, 2, 4)), (1, 1), ((1, 1), (1, 1)), 2)


class _UserNet(nn.Module):
    """A user's model with plain nn.Conv layers on a 2x2 map, batch norm included."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(6, (3, 3), padding=1)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.Conv(4, (3, 3), strides=2, padding=1)(x)
        return jnp.mean(x, axis=(1, 2))


def _prims(fn, *args):
    return {str(e.primitive) for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


def test_conv_module_has_nn_conv_parameters():
    x = _random((2, 2, 2, 3), 0)
    ours, theirs = fastconv.Conv(5, (3, 3), padding=1), nn.Conv(5, (3, 3), padding=1)
    v_ours, v_theirs = ours.init(jax.random.key(0), x), theirs.init(jax.random.key(0), x)
    assert jax.tree.structure(v_ours) == jax.tree.structure(v_theirs)
    jax.tree.map(np.testing.assert_array_equal, v_ours, v_theirs)
    np.testing.assert_allclose(ours.apply(v_theirs, x), theirs.apply(v_theirs, x), rtol=RTOL, atol=ATOL)


def test_intercept_gives_user_models_the_fast_path():
    model, x, y = _UserNet(), _random((4, 2, 2, 3), 0), jnp.arange(4) % 4
    variables = model.init(jax.random.key(0), x)
    with fastconv.intercept_convs():
        assert jax.tree.structure(model.init(jax.random.key(0), x)) == jax.tree.structure(variables)
    fast_apply = fastconv.fast_convs(model.apply)
    assert "conv_general_dilated" not in _prims(lambda v: fast_apply(v, x), variables)
    assert "conv_general_dilated" in _prims(lambda v: model.apply(v, x), variables)

    def loss(apply, params):
        logits, _ = apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(4), y])

    g_fast = jax.jit(jax.grad(lambda p: loss(fast_apply, p)))(variables["params"])
    g_ref = jax.jit(jax.grad(lambda p: loss(model.apply, p)))(variables["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL), g_fast, g_ref)
    # the interceptor leaves the module as it found it
    assert "conv_general_dilated" in _prims(lambda v: model.apply(v, x), variables)


def _zoo_outputs(name, shape, train, **config):
    model = create_model(name, 10, **config)
    x = _random((4, *shape), 3)
    variables = fast_init(model, jax.random.key(0), x)  # random weights shared by both paths

    def run(v):
        out = model.apply(v, x, train=train, mutable=["batch_stats"] if train else False,
                          rngs={"dropout": jax.random.key(1)})
        return out[0] if train else out

    def grads(v):
        return jax.grad(lambda p: jnp.sum(run({**v, "params": p}) ** 2))(v["params"])

    fast = jax.jit(run)(variables), jax.jit(grads)(variables)
    with fastconv.reference_convs():
        ref = jax.jit(run)(variables), jax.jit(grads)(variables)
    return fast, ref


def test_lenet5_is_bit_identical():
    (y, g), (y_ref, g_ref) = _zoo_outputs("lenet5", (28, 28, 1), train=True)
    np.testing.assert_array_equal(y, y_ref)
    jax.tree.map(np.testing.assert_array_equal, g, g_ref)


# small versions of the zoo's families whose maps reach 2x2 (matmul path) and whose MobileNet is depthwise
SMALL_ZOO = {
    "vgg16": ({"stages": ((4,), (6,), (6,), (8,), (8, 8)), "classifier": (8,)}, (32, 32, 3)),
    "resnet18": ({"stage_sizes": (1, 1, 1, 1), "stage_widths": (4, 6, 6, 8), "stem_width": 4}, (16, 16, 3)),
    "mobilenet": ({"stem_width": 4, "blocks": ((6, 1), (8, 2), (8, 2), (8, 1))}, (8, 8, 3)),
}


@pytest.mark.parametrize("name", sorted(SMALL_ZOO))
def test_zoo_models_match_reference_convs(name):
    config, shape = SMALL_ZOO[name]
    (y, g), (y_ref, g_ref) = _zoo_outputs(name, shape, train=True, **config)  # batch norm in train mode
    np.testing.assert_allclose(y, y_ref, rtol=1e-3, atol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * max(1.0, float(
        jnp.max(jnp.abs(b))))), g, g_ref)


def test_matmul_path_keeps_flop_count():
    model = create_model("vgg16", 10)
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    fast = metrics.count_flops(model.apply, variables, x)
    with fastconv.reference_convs():
        ref = metrics.count_flops(model.apply, variables, x)
    assert fast == ref


def test_the_library_gives_a_user_models_plain_convs_the_fast_path():
    """Training steps, dataset scans (statistics, evaluation) and logits all trace under the interceptor."""
    from jaxmod import activations, train
    from jaxmod.losses import cross_entropy_loss

    model, x = _UserNet(), _random((4, 2, 2, 3), 0)
    variables = model.init(jax.random.key(0), x)
    optimizer = optax.sgd(0.1)
    state = train.init_state(model, x, optimizer, 0)
    step = train.make_train_step(model, optimizer, cross_entropy_loss())
    assert "convolution" not in step.lower(state, x, jnp.arange(4) % 4).as_text()
    xs = jnp.stack([x, x])
    assert "convolution" not in activations._map_logits.lower(model, variables, xs).as_text()
    assert "convolution" in jax.jit(model.apply).lower(variables, x).as_text()  # the plain model has convs

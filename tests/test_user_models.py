"""The plain Flax models in tests/helpers/user_models.py: they build, run, and stay free of jaxmod."""

from __future__ import annotations

import ast
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import user_models

B = 3
IMAGE = (28, 28, 1)
LINEN = [  # (class name, input shape without batch, dtype, number of classes)
    ("FlaxExampleCNN", IMAGE, jnp.float32, 10),
    ("SmallResNet", IMAGE, jnp.float32, 10),
    ("SeparableCNN", IMAGE, jnp.float32, 10),
    ("TinyViT", IMAGE, jnp.float32, 10),
    ("TinyTextTransformer", (16,), jnp.int32, 5),
]


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == jnp.int32:
        return jnp.asarray(rng.integers(0, 1000, size=(B, *shape)), jnp.int32)
    return jnp.asarray(rng.normal(size=(B, *shape)), jnp.float32)


@nnx.jit
def _nnx_mlp():
    # Built under jit with an rbg key: on CPU both compile faster than eager threefry initialisation.
    return user_models.NNXMLP(rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))


@pytest.mark.parametrize("name,shape,dtype,num_classes", LINEN, ids=[case[0] for case in LINEN])
def test_linen_model_gives_finite_logits(name, shape, dtype, num_classes):
    model = getattr(user_models, name)()
    kwargs = {"train": False} if name == "SmallResNet" else {}
    # One quickly compiled program for both initialisation and the forward pass keeps the test fast on CPU.
    init = jax.jit(functools.partial(model.init_with_output, **kwargs), compiler_options=user_models.FAST_COMPILE)
    logits, variables = init(jax.random.key(0, impl="rbg"), _inputs(shape, dtype))
    assert jax.tree.leaves(variables["params"])
    assert logits.shape == (B, num_classes)
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_resnet_train_path_updates_batch_stats():
    model = user_models.SmallResNet()
    variables = user_models.init_linen(model, (1, *IMAGE))
    assert set(variables) == {"params", "batch_stats"}
    apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]),
                    compiler_options=user_models.FAST_COMPILE)
    logits, updates = apply(variables, _inputs(IMAGE, jnp.float32) + 1.0)
    assert logits.shape == (B, 10)
    assert bool(jnp.all(jnp.isfinite(logits)))
    old, new = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree.structure(old) == jax.tree.structure(new)
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), old, new))
    assert all(changed)


def test_nnx_mlp_split_merge_round_trip():
    model = _nnx_mlp()
    x = _inputs(IMAGE, jnp.float32)
    logits = model(x)
    assert logits.shape == (B, 10)
    assert bool(jnp.all(jnp.isfinite(logits)))
    graphdef, state = nnx.split(model)
    np.testing.assert_array_equal(nnx.merge(graphdef, state)(x), logits)
    sizes = [leaf.shape for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]
    assert sorted(sizes) == sorted([(784, 32), (32,), (32, 16), (16,), (16, 10), (10,)])


PARAMETERS = {"FlaxExampleCNN": 26_698, "SmallResNet": 5_122, "SeparableCNN": 906, "TinyViT": 19_594,
              "TinyTextTransformer": 42_821, "NNXMLP": 25_818}


def test_default_models_parameter_counts():
    """Pinned, so that a change to a model the topology tests rely on is a deliberate one (shapes only)."""
    counts = {}
    for name, shape, dtype, _ in LINEN:
        model = getattr(user_models, name)()
        kwargs = {"train": False} if name == "SmallResNet" else {}
        variables = jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.key(0),
                                   jax.ShapeDtypeStruct((1, *shape), dtype))
        counts[name] = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
    mlp = nnx.eval_shape(lambda: user_models.NNXMLP(rngs=nnx.Rngs(0)))
    counts["NNXMLP"] = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(mlp, nnx.Param)))
    assert counts == PARAMETERS


def test_init_linen_is_deterministic_in_its_seed():
    model = user_models.SeparableCNN()
    a, b, c = (user_models.init_linen(model, (1, *IMAGE), seed=s) for s in (0, 0, 1))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert any(jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.any(u != v)), a, c)))


def test_user_models_do_not_import_jaxmod():
    path = os.path.join(os.path.dirname(__file__), "helpers", "user_models.py")
    with open(path) as f:
        source = f.read()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not any(name.split(".")[0] == "jaxmod" for name in imported)
    assert {name.split(".")[0] for name in imported} <= {"__future__", "inspect", "functools", "flax", "jax",
                                                          "numpy"}

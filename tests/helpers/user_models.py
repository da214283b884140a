"""Classifiers written the way a researcher writes Flax: no jaxmod import, no taps, no special fields.

Used to test that jaxmod derives a model's unit topology from its traced program alone. Images are
NHWC ``(B, 28, 28, 1)``; the text model takes token ids ``(B, T)``.
"""

from __future__ import annotations

import inspect
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx


class FlaxExampleCNN(nn.Module):
    """The Flax examples' MNIST CNN, narrower: conv-relu-avgpool twice, then two dense layers."""

    num_classes: int = 10
    features: tuple[int, int] = (8, 16)
    hidden: int = 32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.features[0], (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(self.features[1], (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


class ResidualBlock(nn.Module):
    """conv-BN-relu-conv-BN plus a shortcut (identity, or a 1x1 conv + BN when the shape changes)."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = partial(nn.Conv, self.features, use_bias=False)
        norm = partial(nn.BatchNorm, use_running_average=not train)
        strides = (self.strides, self.strides)
        h = nn.relu(norm()(conv((3, 3), strides)(x)))
        h = norm()(conv((3, 3))(h))
        if x.shape[-1] != self.features or self.strides != 1:
            x = norm()(conv((1, 1), strides)(x))
        return nn.relu(h + x)


class SmallResNet(nn.Module):
    """A stem, an identity-shortcut block, a strided projection block, global average pooling."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = ResidualBlock(8)(x, train)
        x = ResidualBlock(16, strides=2)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


class SeparableCNN(nn.Module):
    """Depthwise-separable convolutions (MobileNet style), max pooling, global mean pooling."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.relu(nn.Conv(8, (3, 3), feature_group_count=8)(x))
        x = nn.relu(nn.Conv(16, (1, 1))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(16, (3, 3), feature_group_count=16)(x))
        x = nn.relu(nn.Conv(16, (1, 1))(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


class NNXMLP(nnx.Module):
    """An NNX multilayer perceptron on flattened images."""

    def __init__(self, in_features: int = 784, hidden: tuple[int, ...] = (32, 16), num_classes: int = 10, *,
                 rngs: nnx.Rngs):
        sizes = (in_features, *hidden)
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
        self.out = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        for layer in self.hidden:
            x = nnx.relu(layer(x))
        return self.out(x)


class MlpBlock(nn.Module):
    """Dense - GELU - Dense, back to the residual width."""

    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.mlp_dim)(x))
        return nn.Dense(x.shape[-1])(h)


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block: attention and an MLP, each added to the residual stream."""

    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=x.shape[-1])(y, y)
        return x + MlpBlock(self.mlp_dim)(nn.LayerNorm()(x))


class TinyViT(nn.Module):
    """A small vision Transformer: patch embedding, learned positions, pre-norm blocks, mean pooling."""

    num_classes: int = 10
    patch: int = 7
    dim: int = 32
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 64

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.dim, (self.patch, self.patch), strides=self.patch, name="patch_embedding")(x)
        x = x.reshape((x.shape[0], -1, self.dim))
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], self.dim))
        x = x + pos
        for _ in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim)(x)
        x = nn.LayerNorm()(x)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=1))


class TinyTextTransformer(nn.Module):
    """A small Transformer text classifier over token ids."""

    num_classes: int = 5
    vocab_size: int = 1000
    max_len: int = 64
    dim: int = 32
    depth: int = 1
    num_heads: int = 4
    mlp_dim: int = 64

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab_size, self.dim)(tokens)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, self.max_len, self.dim))
        x = x + pos[:, : tokens.shape[1]]
        for _ in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim)(x)
        x = nn.LayerNorm()(x)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=1))


def _init(model: nn.Module, key: jax.Array, x: jax.Array, takes_train: bool) -> dict:
    return model.init(key, x, **({"train": False} if takes_train else {}))


# The init programs are tiny and run once: ask XLA for a quick compile rather than fast code.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# One compile per model configuration and input shape.
_cached_init = jax.jit(_init, static_argnums=(0, 3), compiler_options=FAST_COMPILE)


def init_linen(model: nn.Module, input_shape: tuple[int, ...], dtype=jnp.float32, seed: int = 0) -> dict:
    """A linen model's variables for inputs of ``input_shape`` (``train=False`` when ``__call__`` takes it).

    The key uses the ``rbg`` generator: on CPU, XLA compiles it up to several times faster than the
    default threefry one, whose compile dominates the cost of initialising these small models in tests.
    """
    takes_train = "train" in inspect.signature(type(model).__call__).parameters
    key, x = jax.random.key(seed, impl="rbg"), jnp.zeros(input_shape, dtype)
    try:
        hash(model)
    except TypeError:  # an unhashable field (a list, say): compile for this call only
        return jax.jit(lambda key, x: _init(model, key, x, takes_train), compiler_options=FAST_COMPILE)(key, x)
    return _cached_init(model, key, x, takes_train)

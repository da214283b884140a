"""Classifiers written the way a researcher writes Flax: no jaxmod import, no taps, no special fields.

Used to test that jaxmod derives a model's unit topology from its traced program alone. Images are
NHWC ``(B, 28, 28, 1)``; the text model takes token ids ``(B, T)``.
"""

from __future__ import annotations

import inspect

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
        norm = lambda: nn.BatchNorm(use_running_average=not train)  # noqa: E731
        h = nn.relu(norm()(nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(x)))
        h = norm()(nn.Conv(self.features, (3, 3), use_bias=False)(h))
        if x.shape[-1] != self.features or self.strides != 1:
            x = norm()(nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x))
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


def init_linen(model: nn.Module, input_shape: tuple[int, ...], dtype=jnp.float32, seed: int = 0) -> dict:
    """A linen model's variables (``train=False`` when its ``__call__`` takes it)."""
    kwargs = {"train": False} if "train" in inspect.signature(type(model).__call__).parameters else {}
    return jax.jit(lambda x: model.init(jax.random.key(seed), x, **kwargs))(jnp.zeros(input_shape, dtype))

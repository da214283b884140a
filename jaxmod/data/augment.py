"""Training-time augmentation as pure, jitted functions of a key and a batch.

``crop_flip`` is the CIFAR/SVHN recipe of the papers' training code (torchvision's ``RandomCrop(32, padding=4)``
and ``RandomHorizontalFlip()``): each sample is padded by ``pad`` pixels on every side, cropped back to its size
at a uniformly drawn offset, and mirrored left-right with probability 1/2. The train step draws the key from
``fold_in(key, step)``, so a batch's augmentation depends only on the seed and the step: a resumed run
reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AUGMENTATIONS: tuple[str, ...] = ("none", "crop_flip")


def crop_flip(key: jax.Array, x: jax.Array, pad: int = 4) -> jax.Array:
    """Random crop after zero padding by ``pad`` and random horizontal flip, per sample of ``x`` ``(B, H, W, C)``.

    The padding is 0 in the model's input space (the normalised mean pixel; torchvision pads the raw image
    with black before normalising, a difference of the fill value only).
    """
    if x.ndim != 4:
        raise ValueError(f"crop_flip takes image batches (B, H, W, C), got shape {x.shape}")
    batch, height, width, channels = x.shape
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(image: jax.Array, offset: jax.Array, flip: jax.Array) -> jax.Array:
        crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)


def augment_batch(name: str, key: jax.Array, x: jax.Array) -> jax.Array:
    """The batch ``x`` under the augmentation ``name`` (``"none"``: unchanged)."""
    if name == "none":
        return x
    if name == "crop_flip":
        return crop_flip(key, x)
    raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {name!r}")

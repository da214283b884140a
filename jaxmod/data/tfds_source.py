"""Read a TFDS image-classification dataset into numpy arrays via `tfds.data_source` (no TensorFlow needed).

`tfds.data_source` gives random access to array_record files; records are read in chunks with the
source's batched `__getitems__` and stacked into preallocated arrays. Reading a prepared data_dir needs
no TensorFlow; *preparing* (downloading) an image dataset does, because TFDS encodes images as PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmod.data.raw import RawData

CHUNK_SIZE = 4096


def _read_records(source: Any, keys: Sequence[int]) -> Sequence[dict[str, Any]]:
    """Read `keys` from a TFDS data source in one batched call when it offers one.

    Falls back to per-record reads when `__getitems__` is missing or unusable (the mock installed by
    `tfds.testing.mock_data` sets it as an unbound function, so calling it raises TypeError).
    """
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        try:
            return getitems(list(keys))
        except TypeError:
            pass
    return [source[k] for k in keys]


def source_to_arrays(source: Any, *, image_key: str = "image", label_key: str = "label") -> tuple[np.ndarray, ...]:
    """Stack every record of a TFDS data source into (images uint8 (N, H, W, C), labels int64 (N,))."""
    from tqdm.auto import tqdm

    n = len(source)
    if n == 0:
        raise ValueError("TFDS data source is empty")
    first = source[0]
    image_shape = np.asarray(first[image_key]).shape
    images = np.empty((n, *image_shape), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    with tqdm(total=n, unit="ex", desc="reading TFDS", disable=None if n > CHUNK_SIZE else True, leave=False) as bar:
        for start in range(0, n, CHUNK_SIZE):
            stop = min(start + CHUNK_SIZE, n)
            records = _read_records(source, range(start, stop))
            images[start:stop] = np.stack([r[image_key] for r in records])
            labels[start:stop] = np.asarray([r[label_key] for r in records], dtype=np.int64)
            bar.update(stop - start)
    return images, labels


def load_tfds(
    tfds_name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> RawData:
    """Load the official train and test splits of `tfds_name` as RawData.

    With `download=False` only an already prepared `data_dir` is used; this fails fast instead of
    retrying network downloads for minutes when there is no network.
    """
    import tensorflow_datasets as tfds

    if not download:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        if not builder.is_prepared():
            raise FileNotFoundError(f"not prepared under {builder.data_dir} (and download=False)")
    arrays: dict[str, np.ndarray] = {}
    class_names: tuple[str, ...] = ()
    for split in ("train", "test"):
        source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=download)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = source_to_arrays(source)
        class_names = tuple(source.dataset_info.features["label"].names)
    where = f"data_dir={os.fspath(data_dir)}" if data_dir is not None else "default data_dir"
    return RawData(**arrays, class_names=class_names, origin=f"TFDS {tfds_name!r} ({where})")

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
TFDS_HOST = ("storage.googleapis.com", 443)


def reachable(address: tuple[str, int], timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``address`` opens within ``timeout`` seconds (a quick network probe)."""
    import socket

    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


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

    try:  # a prepared data_dir is read without touching the network
        return _read_splits(tfds, tfds_name, data_dir, download=False)
    except Exception as error:  # noqa: BLE001 - tfds raises several kinds for "not prepared"
        if not download:
            raise FileNotFoundError(f"not prepared under {data_dir or 'the default data_dir'} (and download=False): "
                                    f"{type(error).__name__}") from error
    if not reachable(TFDS_HOST):  # TFDS would retry its downloads for minutes before failing
        raise FileNotFoundError(f"not prepared under {data_dir or 'the default data_dir'}, and {TFDS_HOST[0]} (where "
                                "TFDS downloads from) cannot be reached from this machine")
    return _read_splits(tfds, tfds_name, data_dir, download=True)


def _read_splits(tfds: Any, tfds_name: str, data_dir: Any, download: bool) -> RawData:
    arrays: dict[str, np.ndarray] = {}
    class_names: tuple[str, ...] = ()
    for split in ("train", "test"):
        source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=download)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = source_to_arrays(source)
        class_names = tuple(source.dataset_info.features["label"].names)
    where = f"data_dir={os.fspath(data_dir)}" if data_dir is not None else "default data_dir"
    return RawData(**arrays, class_names=class_names, origin=f"TFDS {tfds_name!r} ({where})")

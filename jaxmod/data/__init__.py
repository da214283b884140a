"""Datasets for jaxmod: offline-first loading with a checked cache, splits, normalisation and batching.

    from jaxmod.data import load_dataset, batch_iterator, epoch_seed
    ds = load_dataset("mnist", val_fraction=0.1, seed=0)
    for x, y in batch_iterator(ds.train.x, ds.train.y, 128, shuffle_seed=epoch_seed(0, epoch)): ...

Prefetch with `python -m jaxmod.data.fetch mnist fashion_mnist`; the cache lives in `$JAXMOD_DATA_DIR`
(default `~/.cache/jaxmod/datasets`).
"""

from jaxmod.data.batching import batch_iterator, epoch_seed, num_batches
from jaxmod.data.core import SPLIT_NAMES, Dataset, Split, load_dataset
from jaxmod.data.raw import DataCheckError, check_every_class_present, check_labels
from jaxmod.data.registry import DATASET_NAMES, SOURCES
from jaxmod.data.sources import DatasetUnavailableError, cache_dir
from jaxmod.data.text import (
    SEQUENCE_DATASET_NAMES,
    SEQUENCE_SHAPES,
    SequenceDataset,
    SequenceSplit,
    load_sequence_dataset,
)

__all__ = [
    "DATASET_NAMES",
    "SEQUENCE_DATASET_NAMES",
    "SEQUENCE_SHAPES",
    "SOURCES",
    "SPLIT_NAMES",
    "DataCheckError",
    "Dataset",
    "DatasetUnavailableError",
    "SequenceDataset",
    "SequenceSplit",
    "Split",
    "batch_iterator",
    "cache_dir",
    "check_every_class_present",
    "check_labels",
    "epoch_seed",
    "load_dataset",
    "load_sequence_dataset",
    "num_batches",
]

"""Prefetch datasets into the cache so later runs work offline: `python -m jaxmod.data.fetch mnist fashion_mnist`.

Text datasets (`jaxmod.data.text.SEQUENCE_DATASET_NAMES`, e.g. `brown_tags translation`) fetch their pinned
archives into `<cache>/text/`.

Prints one line per dataset saying where the data came from and where it is cached; exits 1 (after
trying every dataset asked for) if any could not be had, with the error listing the sources tried.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from jaxmod.data import registry
from jaxmod.data.sources import OFFLINE_SPECS, DatasetUnavailableError, cache_dir, cache_path, load_raw
from jaxmod.data.text import SEQUENCE_DATASET_NAMES
from jaxmod.data.text_sources import fetch_dataset_archives

ALL_NAMES: tuple[str, ...] = registry.DATASET_NAMES + SEQUENCE_DATASET_NAMES


def fetch_one(name: str, *, source: str = "auto", data_dir: str | None = None, force: bool = False) -> str:
    """Make `name` available locally and return a one-line report; raises DatasetUnavailableError."""
    start = time.perf_counter()
    raw = load_raw(name, source=source, data_dir=data_dir, force=force)
    seconds = time.perf_counter() - start
    counts = f"{raw.y_train.shape[0]} train / {raw.y_test.shape[0]} test"
    if name in OFFLINE_SPECS and raw.origin.startswith("cache "):
        return f"{name}: already cached and verified at {cache_path(name)} ({counts}, {seconds:.1f} s)"
    if name in OFFLINE_SPECS and source != "tfds" and cache_path(name).exists():
        size_mb = cache_path(name).stat().st_size / 1e6
        return (
            f"{name}: fetched from {raw.origin}, checked and cached at {cache_path(name)} "
            f"({size_mb:.1f} MB, {counts}, {seconds:.1f} s)"
        )
    return f"{name}: available from {raw.origin} ({counts}, {seconds:.1f} s)"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m jaxmod.data.fetch", description=__doc__.splitlines()[0])
    parser.add_argument(
        "datasets",
        nargs="+",
        choices=ALL_NAMES,
        metavar="DATASET",
        help=f"one or more of: {', '.join(ALL_NAMES)}",
    )
    parser.add_argument(
        "--source",
        choices=registry.SOURCES,
        default="auto",
        help="where to get the data from (default: auto = offline sources, then TFDS)",
    )
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (for TFDS datasets or --source tfds)")
    parser.add_argument("--force", action="store_true", help="refetch even if a verified cache file exists")
    args = parser.parse_args(argv)

    print(f"cache directory: {cache_dir()} (set $JAXMOD_DATA_DIR to change)")
    failed = []
    for name in dict.fromkeys(args.datasets):
        if name in SEQUENCE_DATASET_NAMES:
            try:
                print(fetch_dataset_archives(name, force=args.force), flush=True)
            except DatasetUnavailableError as error:
                print(f"error: {error}", file=sys.stderr)
                failed.append(name)
            continue
        spec = registry.get_spec(name)
        source = args.source
        if (source == "offline" and not spec.offline) or (source == "tfds" and spec.tfds_name is None):
            print(f"{name}: cannot be had with --source {source}", file=sys.stderr)
            failed.append(name)
            continue
        try:
            print(fetch_one(name, source=source, data_dir=args.data_dir, force=args.force), flush=True)
        except DatasetUnavailableError as error:
            print(f"error: {error}", file=sys.stderr)
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

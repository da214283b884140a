"""Checkpoints for trees of arrays, trained models, module sets and resumable training runs.

Everything goes through orbax with its array storage (tensorstore/OCDBT) for arrays and its JSON
handler for metadata; nothing here can execute code read from a checkpoint.

Layout of a checkpoint written by :func:`save_tree` (and so :func:`save_model`/:func:`save_modules`)::

    directory/
      _CHECKPOINT_METADATA     orbax step metadata (JSON, holds the commit timestamp)
      commit_success.txt       orbax's finalisation marker
      state/                   orbax PyTree item: the arrays
      metadata/metadata        orbax JSON item: the metadata dict
      jaxmod_manifest.json     size and sha256 of every other file (truncation/corruption check)

Saving validates everything first, then writes into a hidden sibling staging directory (orbax itself
writes to ``<staging>.orbax-checkpoint-tmp`` and renames on finalisation), adds the manifest and
renames the result into place; ``overwrite=True`` swaps old and new with one atomic
``renameat2(RENAME_EXCHANGE)`` where the platform has it. Restoring checks finalisation, the
metadata JSON and the manifest before orbax reads anything, and turns any orbax/tensorstore error
into a ``ValueError`` naming the directory.

:class:`RunCheckpointer` keeps the last few steps of a training run with an orbax
``CheckpointManager``; only fully finalised steps are ever listed or restored.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

import jaxmod
from jaxmod.modules import FORMAT_VERSION, GRANULARITIES, ModuleMeta, ModuleSet, check_source, fingerprint

__all__ = [
    "MANIFEST_FILE",
    "RunCheckpointer",
    "check_checkpoint_dir",
    "restore_model",
    "restore_modules",
    "read_modules_extra",
    "restore_tree",
    "save_model",
    "save_modules",
    "save_tree",
]

PathLike = str | os.PathLike

MANIFEST_FILE = "jaxmod_manifest.json"
_MANIFEST_FORMAT = "jaxmod-checkpoint"
_MANIFEST_VERSION = 1
_STATE = "state"
_METADATA = "metadata"
_ITEMS = (_STATE, _METADATA)
_ORBAX_TMP = ".orbax-checkpoint-tmp"  # orbax: atomicity_types.TMP_DIR_SUFFIX
_ORBAX_COMMIT = "commit_success.txt"  # orbax: atomicity_types.COMMIT_SUCCESS_FILE
_ORBAX_STEP_METADATA = "_CHECKPOINT_METADATA"
_JSON_FILE = "metadata"  # file name orbax's JsonCheckpointHandler uses inside its item directory

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Validation (runs before anything is written)


def _path(directory: PathLike) -> Path:
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"checkpoint directory must be a path, got {type(directory).__name__}")
    return Path(os.fspath(directory)).absolute()


def _where(path: Sequence[Any]) -> str:
    return "/".join(str(p) for p in path) or "<root>"


def _check_key(key: Any, path: Sequence[Any], what: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what}: key {key!r} under {_where(path)} must be a non-empty string")
    if "." in key or "/" in key:
        # orbax names arrays by joining keys with '.', so {'a.b': x} and {'a': {'b': y}} would collide
        raise ValueError(f"{what}: key {key!r} under {_where(path)} must not contain '.' or '/'")


def _check_leaf(value: Any, path: Sequence[Any], what: str) -> None:
    """``ValueError`` saying why ``value`` cannot be stored as an array leaf."""
    if not isinstance(value, (np.ndarray, np.generic, jax.Array)):
        raise ValueError(
            f"{what}: leaf {_where(path)} is a {type(value).__name__}, not an array "
            "(only numpy/jax arrays can be stored; wrap scalars with np.asarray)"
        )
    dtype = value.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raise ValueError(f"{what}: leaf {_where(path)} is a typed PRNG key; store jax.random.key_data(key)")
    if np.dtype(dtype).kind in "OUSMm":
        raise ValueError(f"{what}: leaf {_where(path)} has unsupported dtype {dtype}")
    if 0 in np.shape(value):
        raise ValueError(f"{what}: leaf {_where(path)} has zero size (shape {np.shape(value)}); orbax cannot store it")


def _as_array(value: Any, path: Sequence[Any], what: str) -> np.ndarray:
    """``value`` as a host numpy array, or ``ValueError`` saying why it cannot be stored."""
    _check_leaf(value, path, what)
    try:
        return np.asarray(value)
    except Exception as e:  # tracers, non-addressable arrays
        raise ValueError(f"{what}: leaf {_where(path)} cannot be copied to the host: {e}") from e


def _plain_tree(tree: Any, what: str, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """A copy of a nested mapping of arrays as plain dicts of numpy arrays (validating it)."""
    if not isinstance(tree, Mapping):
        raise ValueError(
            f"{what}: {_where(path)} must be a mapping (nested dicts of arrays), got {type(tree).__name__}"
        )
    out: dict[str, Any] = {}
    for key, value in tree.items():
        _check_key(key, path, what)
        if isinstance(value, Mapping):
            out[key] = _plain_tree(value, what, (*path, key))
        else:
            out[key] = _as_array(value, (*path, key), what)
    return out


def _check_state(state: Any, what: str) -> None:
    """Checks an arbitrary pytree (dicts, tuples, NamedTuples, None) has only storable array leaves."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    if not leaves:
        raise ValueError(f"{what}: the state has no arrays")
    for key_path, leaf in leaves:
        path = [_key_name(k) for k in key_path]
        for k in key_path:
            if isinstance(k, jax.tree_util.DictKey) and isinstance(k.key, str):
                _check_key(k.key, path, what)
        _check_leaf(leaf, path, what)


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _json_value(value: Any, path: tuple[str, ...], what: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what}: {_where(path)} is {value}, which is not valid JSON")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(
                    f"{what}: key {k!r} under {_where(path)} is a {type(k).__name__}; "
                    "JSON keys must be strings"
                )
            out[k] = _json_value(v, (*path, k), what)
        return out
    if isinstance(value, (list, tuple)):
        return [_json_value(v, (*path, str(i)), what) for i, v in enumerate(value)]
    raise ValueError(
        f"{what}: {_where(path)} is a {type(value).__name__}, which is not JSON data "
        "(use dict/list/str/int/float/bool/None; convert numpy scalars with int()/float())"
    )


def _json_metadata(metadata: Any, what: str = "metadata") -> dict[str, Any]:
    """A JSON-normalised copy of ``metadata`` (tuples become lists), or ``ValueError``."""
    if not isinstance(metadata, Mapping):
        raise ValueError(f"{what} must be a mapping, got {type(metadata).__name__}")
    return _json_value(metadata, (), what)


# ---------------------------------------------------------------------------
# Finalisation and integrity checks (run before orbax touches a directory)


def _read_json(file: Path, label: str) -> Any:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise ValueError(f"{label}: {file.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{label}: {file.name} is not valid JSON ({e})") from None


def _finalisation_problem(path: Path, items: Sequence[str] = _ITEMS) -> str | None:
    """Why ``path`` is not a complete, finalised orbax checkpoint with ``items``; None if it is.

    orbax 0.12.8 on a local filesystem writes ``<name>.orbax-checkpoint-tmp`` and renames it on
    finalisation; just before the rename it adds ``commit_timestamp_nsecs`` to ``_CHECKPOINT_METADATA``
    and writes ``commit_success.txt`` (also into each item). All of that must be present.
    """
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is not a directory"
    if _ORBAX_TMP in path.name:
        return "is an unfinished orbax temporary directory (the save never completed)"
    step_metadata = path / _ORBAX_STEP_METADATA
    if not step_metadata.is_file():
        return f"is not an orbax checkpoint ({_ORBAX_STEP_METADATA} is missing)"
    try:
        info = json.loads(step_metadata.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"has a broken {_ORBAX_STEP_METADATA} ({e})"
    if not isinstance(info, dict) or not isinstance(info.get("commit_timestamp_nsecs"), int):
        return f"was never finalised (no commit timestamp in {_ORBAX_STEP_METADATA})"
    if not (path / _ORBAX_COMMIT).is_file():
        return f"was never finalised ({_ORBAX_COMMIT} is missing)"
    for item in items:
        item_dir = path / item
        if not item_dir.is_dir():
            return f"is truncated: the {item!r} item directory is missing"
        if not (item_dir / _ORBAX_COMMIT).is_file():
            return f"is truncated: the {item!r} item was never finalised ({item}/{_ORBAX_COMMIT} is missing)"
    return None


def _check_finalised(path: Path, items: Sequence[str] = _ITEMS) -> None:
    problem = _finalisation_problem(path, items)
    if problem is not None:
        raise ValueError(f"checkpoint {path} {problem}")


def _read_saved_metadata(path: Path) -> dict[str, Any]:
    data = _read_json(path / _METADATA / _JSON_FILE, f"checkpoint {path}: metadata item")
    if not isinstance(data, dict):
        raise ValueError(f"checkpoint {path}: the metadata JSON is a {type(data).__name__}, not an object")
    return data


def _iter_files(root: Path) -> Iterator[Path]:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            yield Path(dirpath) / name


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(path: Path) -> None:
    files = {}
    for file in sorted(_iter_files(path)):
        rel = file.relative_to(path).as_posix()
        if rel != MANIFEST_FILE:
            files[rel] = {"size": file.stat().st_size, "sha256": _sha256(file)}
    manifest = {"format": _MANIFEST_FORMAT, "version": _MANIFEST_VERSION, "files": files}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _check_manifest(path: Path) -> None:
    label = f"checkpoint {path}"
    manifest = _read_json(path / MANIFEST_FILE, f"{label} (not written by jaxmod.checkpoint, or truncated)")
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        raise ValueError(f"{label}: {MANIFEST_FILE} is not a jaxmod checkpoint manifest")
    if manifest.get("version") != _MANIFEST_VERSION:
        raise ValueError(f"{label}: unsupported manifest version {manifest.get('version')!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{label}: {MANIFEST_FILE} lists no files")
    for rel, entry in files.items():
        parts = Path(rel).parts
        if not isinstance(rel, str) or not parts or Path(rel).is_absolute() or ".." in parts:
            raise ValueError(f"{label}: {MANIFEST_FILE} lists an invalid path {rel!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) or not isinstance(
            entry.get("sha256"), str
        ):
            raise ValueError(f"{label}: {MANIFEST_FILE} has a malformed entry for {rel!r}")
        file = path / rel
        if not file.is_file():
            raise ValueError(f"{label} is truncated: file {rel} is missing")
        size = file.stat().st_size
        if size != entry["size"]:
            raise ValueError(f"{label} is corrupted: file {rel} has {size} bytes, expected {entry['size']}")
        if _sha256(file) != entry["sha256"]:
            raise ValueError(f"{label} is corrupted: file {rel} does not match its checksum")


def check_checkpoint_dir(directory: PathLike) -> None:
    """``ValueError`` unless ``directory`` is a complete checkpoint written by :func:`save_tree`.

    Checks, in order: it exists and is a directory; orbax finalised it (commit timestamp and
    ``commit_success.txt`` markers, both items present); its metadata is a JSON object; every file
    listed in its manifest is present with the recorded size and sha256.
    """
    path = _path(directory)
    _check_finalised(path)
    _read_saved_metadata(path)
    _check_manifest(path)


# ---------------------------------------------------------------------------
# Atomic publication


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2``: True when done, False when the platform lacks it; OSError on failure."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _publish(staging: Path, path: Path, overwrite: bool) -> None:
    """Moves the finished checkpoint ``staging`` to ``path``; with ``overwrite`` swaps it in."""
    if overwrite and path.exists():
        if _renameat2(staging, path, _RENAME_EXCHANGE):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the old checkpoint
            return
        # No atomic exchange here: for an instant neither is at `path` (both stay on disk).
        old = path.parent / f".{path.name}.jaxmod-old-{uuid.uuid4().hex}"
        os.rename(path, old)
        try:
            os.rename(staging, path)
        except BaseException:
            os.rename(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        done = _renameat2(staging, path, _RENAME_NOREPLACE)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise ValueError(f"checkpoint directory {path} appeared while saving; not overwriting it") from None
        raise
    if not done:
        if path.exists():
            raise ValueError(f"checkpoint directory {path} appeared while saving; not overwriting it")
        os.rename(staging, path)


def _remove_staging(staging: Path) -> None:
    for leftover in [staging, *staging.parent.glob(f"{staging.name}{_ORBAX_TMP}*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_symlink():
        raise ValueError(f"cannot save to {path}: it is a symbolic link; pass the directory it points to")
    if not path.exists():
        if path.parent.exists() and not path.parent.is_dir():
            raise ValueError(f"cannot save to {path}: {path.parent} is not a directory")
        return
    if not path.is_dir():
        raise ValueError(f"cannot save to {path}: it exists and is not a directory")
    if not overwrite:
        raise ValueError(f"checkpoint directory {path} already exists; pass overwrite=True to replace it")
    contents = {p.name for p in path.iterdir()}
    if contents and not contents & {_ORBAX_STEP_METADATA, MANIFEST_FILE}:
        raise ValueError(f"refusing to overwrite {path}: it is a non-empty directory that is not a checkpoint")


def _remove_leftovers(path: Path) -> None:
    """Staging and swapped-out directories of earlier saves to ``path`` that a killed process left behind."""
    for pattern in (f".{path.name}.jaxmod-staging-*", f".{path.name}.jaxmod-old-*"):
        for leftover in path.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _write(path: Path, state: dict[str, Any], metadata: dict[str, Any], overwrite: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    staging = path.parent / f".{path.name}.jaxmod-staging-{uuid.uuid4().hex}"
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        # ocp.Checkpointer (not AsyncCheckpointer) returns only once the save is finalised.
        checkpointer.save(
            staging,
            args=ocp.args.Composite(**{_STATE: ocp.args.PyTreeSave(state), _METADATA: ocp.args.JsonSave(metadata)}),
        )
        _check_finalised(staging)
        _write_manifest(staging)
        _publish(staging, path, overwrite)
    except BaseException:
        _remove_staging(staging)
        raise
    finally:
        checkpointer.close()


# ---------------------------------------------------------------------------
# Trees of arrays


def save_tree(directory: PathLike, tree: Mapping[str, Any], metadata: Mapping[str, Any], *,
              overwrite: bool = False) -> None:
    """Saves nested dicts of arrays plus a JSON metadata dict as one orbax checkpoint.

    Keys must be non-empty strings without '.' or '/'; leaves numpy/jax arrays (any numeric or bool
    dtype, not zero-size); empty sub-dicts are kept. ``ValueError`` before anything is written when
    the input is bad or ``directory`` exists and ``overwrite`` is False. Returns after the checkpoint
    is finalised; with ``overwrite`` an existing checkpoint is replaced atomically.
    """
    path = _path(directory)
    state = _plain_tree(tree, "tree")
    if not jax.tree.leaves(state):
        raise ValueError("tree: it contains no arrays")
    meta = _json_metadata(metadata)
    _check_target(path, overwrite)
    _write(path, state, meta, overwrite)


def _restore_checked(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    handler = ocp.PyTreeCheckpointHandler()
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        tree_metadata = handler.metadata(path / _STATE).tree
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree_metadata)
        out = checkpointer.restore(
            path,
            args=ocp.args.Composite(**{
                _STATE: ocp.args.PyTreeRestore(restore_args=restore_args),
                _METADATA: ocp.args.JsonRestore(),
            }),
        )
        state, metadata = out[_STATE], out[_METADATA]
    except Exception as e:
        raise ValueError(f"checkpoint {path} could not be read by orbax ({type(e).__name__}: {e})") from e
    finally:
        handler.close()
        checkpointer.close()
    if not isinstance(state, dict) or not isinstance(metadata, dict):
        raise ValueError(f"checkpoint {path} does not hold a tree of arrays and a metadata object")
    state = jax.tree.map(np.asarray, state)
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if leaf.dtype.kind in "OUSMm":
            raise ValueError(f"checkpoint {path}: {jax.tree_util.keystr(key_path)} has unsupported dtype {leaf.dtype}")
    return state, metadata


def restore_tree(directory: PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tree, metadata)`` from :func:`save_tree`: numpy arrays with their saved dtypes.

    ``ValueError`` naming the directory and the problem when it is missing, unfinished, truncated or
    corrupted.
    """
    path = _path(directory)
    check_checkpoint_dir(path)
    return _restore_checked(path)


# ---------------------------------------------------------------------------
# Models and module sets


def _check_variables(variables: Any) -> None:
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError("variables must be a mapping of collections that includes 'params'")


def _check_kind(path: Path, metadata: dict[str, Any], kind: str, required: Sequence[str]) -> None:
    found = metadata.get("kind")
    if found != kind:
        raise ValueError(f"checkpoint {path} holds {found!r}, not {kind!r}; use the matching restore function")
    missing = [k for k in required if k not in metadata]
    if missing:
        raise ValueError(f"checkpoint {path}: {kind} metadata lacks {missing}")


def save_model(directory: PathLike, variables: Mapping[str, Any], *, model_name: str,
               model_config: Mapping[str, Any], dataset: str, input_shape: Sequence[int], num_classes: int,
               extra: Mapping[str, Any] | None = None, overwrite: bool = False) -> None:
    """Saves a trained model's variables ('params', 'batch_stats', ...) with metadata ``kind: "model"``."""
    _check_variables(variables)
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"dataset must be a non-empty string, got {dataset!r}")
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in input_shape
    ):
        raise ValueError(f"input_shape must be a sequence of positive ints, got {input_shape!r}")
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    metadata = {
        "kind": "model",
        "library_version": jaxmod.__version__,
        "model_name": model_name,
        "model_config": _json_metadata(model_config, "model_config"),
        "dataset": dataset,
        "input_shape": [int(d) for d in input_shape],
        "num_classes": int(num_classes),
        "extra": _json_metadata(extra or {}, "extra"),
    }
    save_tree(directory, variables, metadata, overwrite=overwrite)


def restore_model(directory: PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(variables, metadata)`` from :func:`save_model`; ``metadata["input_shape"]`` is a tuple."""
    path = _path(directory)
    variables, metadata = restore_tree(path)
    _check_kind(path, metadata, "model", ("model_name", "model_config", "dataset", "input_shape", "num_classes"))
    metadata["input_shape"] = tuple(int(d) for d in metadata["input_shape"])
    return variables, metadata


def save_modules(directory: PathLike, modules: ModuleSet, variables: Mapping[str, Any], *,
                 overwrite: bool = False, extra: Mapping[str, Any] | None = None) -> None:
    """Saves a module set with the variables it was decomposed from (self-contained for composition).

    ``ValueError`` before anything is written when the set breaks its conventions or ``variables`` are not
    the model the modules were decomposed from (their fingerprint is in the set's metadata).
    """
    if not isinstance(modules, ModuleSet):
        raise TypeError(f"modules must be a ModuleSet, got {type(modules).__name__}")
    modules.validate()
    _check_variables(variables)
    check_source(modules, variables)
    kind = modules.granularity
    masks = modules.masks
    if kind == "weights":
        masks = traverse_util.unflatten_dict(
            {k: v for k, v in traverse_util.flatten_dict(dict(masks)).items() if v is not None})
    else:
        masks = traverse_util.unflatten_dict(dict(masks), sep="/")
    tree = {kind: masks, "variables": variables}
    for part in ("head", "state"):
        if getattr(modules, part) is not None:
            tree[part] = getattr(modules, part)
    metadata = {"kind": "modules", "format_version": FORMAT_VERSION, "library_version": jaxmod.__version__,
                "modules": _json_metadata(modules.meta.to_json(), "module metadata"),
                "extra": _json_metadata(dict(extra or {}), "extra")}
    save_tree(directory, tree, metadata, overwrite=overwrite)


def read_modules_extra(directory: PathLike) -> dict[str, Any]:
    """The ``extra`` metadata a module checkpoint was saved with (e.g. how a saved composed model composes)."""
    path = _path(directory)
    check_checkpoint_dir(path)
    metadata = _read_saved_metadata(path)
    _check_kind(path, metadata, "modules", ("modules",))
    extra = metadata.get("extra", {})
    return extra if isinstance(extra, dict) else {}


def restore_modules(directory: PathLike) -> tuple[ModuleSet, dict[str, Any]]:
    """``(modules, variables)`` from :func:`save_modules`.

    Modules saved in format version 1 (jaxmod before the one-module-type redesign) restore when they are
    unit masks without heads (MODA, MwT); any other version-1 set is refused with a message naming it.
    """
    path = _path(directory)
    tree, metadata = restore_tree(path)
    _check_kind(path, metadata, "modules", ("modules",))
    version = metadata.get("format_version", 1)
    try:
        if version == 1:
            return _restore_version_1(path, tree, metadata)
        if version != FORMAT_VERSION:
            raise ValueError(f"module format version {version!r} is not one this jaxmod ({jaxmod.__version__}) "
                             f"reads (version {FORMAT_VERSION})")
        kinds = [k for k in GRANULARITIES if k in tree]
        extra = set(tree) - {*GRANULARITIES, "head", "state", "variables"}
        if len(kinds) != 1 or "variables" not in tree or extra:
            raise ValueError(f"expected one of {GRANULARITIES}, 'variables' (and 'head', 'state'), "
                             f"found {sorted(tree)}")
        kind = kinds[0]
        if kind == "weights":
            flat_masks = traverse_util.flatten_dict(tree[kind])
            masks = traverse_util.unflatten_dict(
                {p: flat_masks.get(p) for p in traverse_util.flatten_dict(tree["variables"]["params"])})
        else:
            masks = traverse_util.flatten_dict(tree[kind], sep="/")
        modules = ModuleSet(**{kind: masks}, head=tree.get("head"), state=tree.get("state"),
                            meta=ModuleMeta.from_json(metadata["modules"])).validate()
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path}: invalid module set ({type(e).__name__}: {e})") from e
    return modules, tree["variables"]


def _restore_version_1(path: Path, tree: dict[str, Any], metadata: dict[str, Any]) -> tuple[ModuleSet, dict]:
    """Format version 1: ``masks`` + ``granularity`` + optional ``heads``. Unit masks without heads convert."""
    old = dict(metadata["modules"])
    if old.get("granularity") != "unit" or "heads" in tree or set(tree) != {"masks", "variables"}:
        raise ValueError(f"checkpoint {path} holds {old.get('approach')!r} modules of granularity "
                         f"{old.get('granularity')!r} in module format version 1, which this jaxmod "
                         f"({jaxmod.__version__}, format version {FORMAT_VERSION}) does not convert; decompose again")
    meta = ModuleMeta(approach=old["approach"], model_name=old["model_name"], model_config=old["model_config"],
                      input_shape=tuple(old["input_shape"]), num_classes=old["num_classes"],
                      classes=tuple(old["classes"]), approach_config=old.get("extra", {}),
                      dataset=old.get("dataset", ""), library_version=old.get("library_version", ""),
                      source=fingerprint(tree["variables"]))
    units = traverse_util.flatten_dict(tree["masks"], sep="/")
    return ModuleSet(units=units, meta=meta).validate(), tree["variables"]


# ---------------------------------------------------------------------------
# Resumable training runs


class _FinalisedSteps:
    """orbax NameFormat that hides step directories failing :func:`_finalisation_problem`.

    orbax 0.12.8 on a local filesystem counts any directory named like a step (``3``) as finalised,
    commit marker or not; this wrapper makes the manager (listing, latest step, garbage collection)
    see only complete steps.
    """

    def __init__(self) -> None:
        self._inner = ocp.step.standard_name_format()

    def build_name(self, step: int) -> str:
        return self._inner.build_name(step)

    def find_all(self, base_path: Any) -> Iterator[Any]:
        return (m for m in self._inner.find_all(base_path) if _finalisation_problem(Path(m.path)) is None)

    def find_step(self, base_path: Any, step: int) -> Any:
        found = self._inner.find_step(base_path, step)
        problem = _finalisation_problem(Path(found.path))
        if problem is not None:
            raise ValueError(f"step {step} in {base_path} {problem}")
        return found


def _match_like(leaf: Any, ref: Any, key_path: Any, step_path: Path) -> Any:
    """``leaf`` with the shape, dtype and kind (numpy or jax) of ``ref``; orbax keeps a numpy leaf
    numpy and its stored shape whatever ``like`` says, so this is checked here."""
    where = jax.tree_util.keystr(key_path)
    if tuple(np.shape(leaf)) != tuple(ref.shape):
        raise ValueError(
            f"checkpoint {step_path}: {where} has shape {tuple(np.shape(leaf))}, `like` expects {tuple(ref.shape)}"
        )
    if leaf.dtype != ref.dtype:
        leaf = leaf.astype(ref.dtype)
    if isinstance(ref, (jax.Array, jax.ShapeDtypeStruct)) and not isinstance(leaf, jax.Array):
        sharding = getattr(ref, "sharding", None)
        return jax.device_put(leaf, sharding) if sharding is not None else jax.numpy.asarray(leaf)
    if isinstance(ref, (np.ndarray, np.generic)) and isinstance(leaf, jax.Array):
        return np.asarray(leaf)
    return leaf


class RunCheckpointer:
    """The last ``max_to_keep`` finalised steps of a training run (state pytree + JSON metadata).

    ``save`` blocks until the step is finalised; ``latest_step``/``all_steps`` list only complete steps,
    so a step directory left half-written by a killed process is ignored (and replaced if that step is
    saved again). Use as a context manager or call ``close()``.
    """

    def __init__(self, directory: PathLike, *, max_to_keep: int = 2) -> None:
        path = _path(directory)
        if path.exists() and not path.is_dir():
            raise ValueError(f"run directory {path} exists and is not a directory")
        if not isinstance(max_to_keep, int) or isinstance(max_to_keep, bool) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be a positive int, got {max_to_keep!r}")
        self.directory = path
        self._names = _FinalisedSteps()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            step_name_format=self._names,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(path, options=options)

    def _step_path(self, step: int) -> Path:
        return self.directory / self._names.build_name(step)

    def all_steps(self) -> list[int]:
        """Finalised steps on disk, ascending."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest finalised step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, metadata: Mapping[str, Any]) -> None:
        """Writes ``state`` and ``metadata`` as ``step``; returns once the step is finalised."""
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        step = int(step)
        _check_state(state, "state")
        meta = _json_metadata(metadata)
        step_path = self._step_path(step)
        if step_path.exists():
            problem = _finalisation_problem(step_path)
            if problem is None:
                raise ValueError(f"step {step} already exists in {self.directory}")
            _log.warning("replacing incomplete step directory %s (%s)", step_path, problem)
            if step_path.is_dir():
                shutil.rmtree(step_path)
            else:
                step_path.unlink()
        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise ValueError(f"step {step} is not after the latest saved step {latest} in {self.directory}")
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state), _METADATA: ocp.args.JsonSave(meta)}),
                force=True,
            )
            self._manager.wait_until_finished()
        except BaseException:
            for leftover in self.directory.glob(f"{step_path.name}{_ORBAX_TMP}*"):
                shutil.rmtree(leftover, ignore_errors=True)
            raise
        problem = _finalisation_problem(step_path)
        if problem is not None:
            raise RuntimeError(f"orbax returned but step {step} {problem}")

    def metadata(self, step: int) -> dict[str, Any]:
        """The JSON metadata saved with ``step``, read without restoring any array (check a run's identity
        before restoring a state that may have other shapes)."""
        step_path = self._step_path(int(step))
        problem = _finalisation_problem(step_path)
        if problem is not None:
            raise ValueError(f"cannot read step {step} of {self.directory}: {step_path.name} {problem}")
        return _read_json(step_path / _METADATA / _JSON_FILE, f"checkpoint {step_path}: metadata item")

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """``(state, metadata)`` of ``step``, restored into the structure, shapes and dtypes of ``like``.

        ``like`` may be concrete (numpy leaves give numpy, jax leaves jax arrays on their shardings)
        or abstract (``jax.ShapeDtypeStruct`` leaves).
        """
        step_path = self._step_path(int(step))
        problem = _finalisation_problem(step_path)
        if problem is not None:
            raise ValueError(
                f"cannot restore step {step} from {self.directory}: {step_path.name} {problem}; "
                f"finalised steps: {self.all_steps()}"
            )
        _read_saved_metadata(step_path)
        try:
            out = self._manager.restore(
                int(step),
                args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(like), _METADATA: ocp.args.JsonRestore()}),
            )
            state, metadata = out[_STATE], out[_METADATA]
        except Exception as e:
            raise ValueError(
                f"checkpoint {step_path} could not be restored ({type(e).__name__}: {e})"
            ) from e
        if jax.tree.structure(state) != jax.tree.structure(like):
            raise ValueError(f"checkpoint {step_path}: restored structure does not match `like`")
        refs = jax.tree_util.tree_leaves_with_path(like)
        leaves = [
            _match_like(leaf, ref, key_path, step_path)
            for (key_path, ref), leaf in zip(refs, jax.tree.leaves(state), strict=True)
        ]
        return jax.tree.unflatten(jax.tree.structure(like), leaves), metadata

    def close(self) -> None:
        """Waits for pending work and releases orbax's resources."""
        self._manager.close()

    def __enter__(self) -> RunCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

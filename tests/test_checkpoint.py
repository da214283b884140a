"""Tests for jaxmod.checkpoint: orbax round trips, integrity checks, atomic saves, resumable runs."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import jaxmod
from jaxmod import checkpoint
from jaxmod.checkpoint import (
    MANIFEST_FILE,
    RunCheckpointer,
    check_checkpoint_dir,
    restore_model,
    restore_modules,
    restore_tree,
    save_model,
    save_modules,
    save_tree,
)
from jaxmod.modules import FORMAT_VERSION, ModuleMeta, ModuleSet, check_compatible, fingerprint

# When tensorstore fails to read a damaged step, orbax's worker threads can later post a callback to
# an already closed asyncio loop ("RuntimeError: Event loop is closed", reported by pytest as an
# unraisable exception in whichever test runs next). It is harmless noise from orbax's internals.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

MODEL_CONFIG = {"features": [5, 4], "activation": "relu"}


def _tree() -> dict:
    rng = np.random.default_rng(0)
    return {
        "params": {
            "fc1": {"kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32), "bias": jnp.zeros(5)},
            "fc2": {"kernel": rng.normal(size=(5, 4)).astype(np.float64), "bias": np.float32(0.5)},
        },
        "ints": {
            "i32": np.arange(7, dtype=np.int32), "i64": np.arange(3, dtype=np.int64), "u8": np.full(2, 255, np.uint8),
        },
        "flags": np.array([[True, False], [False, True]]),
        "half": np.linspace(0, 1, 4).astype(ml_dtypes.bfloat16),
        "empty": {},
        "nested_empty": {"a": {}, "b": {"c": {}}},
    }


def _checksum(tree) -> str:
    import hashlib

    import jax
    import numpy as np

    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        a = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def _module_set(variables: dict | None = None) -> ModuleSet:
    rng = np.random.default_rng(1)
    meta = ModuleMeta(
        approach="moda", model_name="dense", model_config=MODEL_CONFIG, dataset="mnist",
        input_shape=(6,), num_classes=3, classes=(0, 1, 2), extra={"threshold": 0.5},
        source=fingerprint(variables or _variables()),
    )
    units = {"fc1_relu": rng.random((3, 5)) > 0.5, "block/fc2_relu": rng.random((3, 4)) > 0.5}
    return ModuleSet(units=units, meta=meta)


def _variables() -> dict:
    tree = _tree()
    return {"params": tree["params"], "batch_stats": {"bn": {"mean": np.zeros(5, np.float32)}}}


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir()) if path.parent.exists() else []


# ---------------------------------------------------------------------------
# Trees


def test_tree_round_trip_preserves_values_dtypes_and_empty_dicts(tmp_path):
    tree = _tree()
    save_tree(tmp_path / "ckpt", tree, {"epoch": 3, "shape": (1, 2), "name": "x", "none": None})
    restored, metadata = restore_tree(tmp_path / "ckpt")
    expected = jax.tree.map(np.asarray, tree)
    chex.assert_trees_all_equal(restored, expected, strict=True)
    assert jax.tree.structure(restored) == jax.tree.structure(expected)  # empty sub-dicts survive
    assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(restored))
    assert restored["flags"].dtype == np.bool_
    assert restored["half"].dtype == ml_dtypes.bfloat16
    assert restored["params"]["fc2"]["bias"].shape == ()
    assert metadata == {"epoch": 3, "shape": [1, 2], "name": "x", "none": None}  # tuples come back as lists
    check_checkpoint_dir(tmp_path / "ckpt")
    assert _siblings(tmp_path / "ckpt") == ["ckpt"]  # no staging or orbax temporaries left


def test_restore_in_a_new_process_gives_identical_arrays(tmp_path):
    tree = _tree()
    save_tree(tmp_path / "ckpt", tree, {})
    script = textwrap.dedent(inspect.getsource(_checksum)) + textwrap.dedent(
        """
        import sys
        from jaxmod.checkpoint import restore_tree
        print(_checksum(restore_tree(sys.argv[1])[0]))
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "ckpt")], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == _checksum(jax.tree.map(np.asarray, tree))


def test_overwrite_replaces_atomically_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "ckpt"
    save_tree(path, {"a": np.zeros(3)}, {"version": 1})
    save_tree(path, {"b": np.ones(2, np.int32)}, {"version": 2}, overwrite=True)
    restored, metadata = restore_tree(path)
    chex.assert_trees_all_equal(restored, {"b": np.ones(2, np.int32)}, strict=True)
    assert metadata == {"version": 2}
    assert _siblings(path) == ["ckpt"]


def test_existing_directory_without_overwrite_is_left_untouched(tmp_path):
    path = tmp_path / "ckpt"
    save_tree(path, {"a": np.arange(3)}, {"version": 1})
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="already exists"):
        save_tree(path, {"a": np.zeros(3)}, {"version": 2})
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    assert restore_tree(path)[1] == {"version": 1}
    assert _siblings(path) == ["ckpt"]


def test_refuses_to_overwrite_something_that_is_not_a_checkpoint(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a checkpoint"):
        save_tree(precious, {"a": np.zeros(2)}, {}, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        save_tree(a_file, {"a": np.zeros(2)}, {}, overwrite=True)
    assert a_file.read_text() == "x"


@pytest.mark.parametrize(
    ("tree", "metadata", "message"),
    [
        ({"a": np.zeros(2)}, {"x": object()}, "not JSON"),
        ({"a": np.zeros(2)}, {"x": np.float32(1.0)}, "not JSON"),
        ({"a": np.zeros(2)}, {"x": float("nan")}, "not valid JSON"),
        ({"a": np.zeros(2)}, {1: "int key"}, "keys must be strings"),
        ({"a": np.zeros(2)}, ["not", "a", "dict"], "must be a mapping"),
        ({"a": 1.0}, {}, "not an array"),
        ({"a": {"b": "text"}}, {}, "not an array"),
        ({"a": [np.zeros(2)]}, {}, "not an array"),
        ({"a": None}, {}, "not an array"),
        ({"a.b": np.zeros(2)}, {}, "must not contain"),
        ({"": np.zeros(2)}, {}, "non-empty string"),
        ({"a": np.zeros((0, 3))}, {}, "zero size"),
        ({"a": np.array(["s"])}, {}, "unsupported dtype"),
        ({"key": jax.random.key(0)}, {}, "PRNG key"),
        ({"a": {}}, {}, "no arrays"),
        ([np.zeros(2)], {}, "must be a mapping"),
    ],
)
def test_bad_input_raises_before_anything_is_written(tmp_path, tree, metadata, message):
    path = tmp_path / "out" / "ckpt"
    with pytest.raises(ValueError, match=message):
        save_tree(path, tree, metadata)
    assert not path.exists()
    assert not (tmp_path / "out").exists()


def test_a_failing_save_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(_path):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_manifest", boom)
    with pytest.raises(OSError, match="disk full"):
        save_tree(tmp_path / "ckpt", {"a": np.zeros(2)}, {})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# Integrity checks


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _first_data_file(ckpt: Path) -> Path:
    return next(p for p in sorted((ckpt / "state" / "d").iterdir()) if p.is_file())


CORRUPTIONS = {
    "metadata item removed": (lambda c: _remove(c / "metadata"), "'metadata' item directory is missing"),
    "metadata file removed": (lambda c: _remove(c / "metadata" / "metadata"), "metadata is missing"),
    "metadata JSON garbage": (lambda c: (c / "metadata" / "metadata").write_text("{not json"), "not valid JSON"),
    "metadata JSON not an object": (lambda c: (c / "metadata" / "metadata").write_text("[1, 2]"), "not an object"),
    "state item removed": (lambda c: _remove(c / "state"), "'state' item directory is missing"),
    "state _METADATA removed": (lambda c: _remove(c / "state" / "_METADATA"), "state/_METADATA is missing"),
    "state manifest.ocdbt removed": (lambda c: _remove(c / "state" / "manifest.ocdbt"), "manifest.ocdbt is missing"),
    "state data file removed": (lambda c: _remove(_first_data_file(c)), "is missing"),
    "state data file truncated": (lambda c: _first_data_file(c).write_bytes(b"xx"), "bytes, expected"),
    "state data file flipped": (
        lambda c: _first_data_file(c).write_bytes(bytes(b ^ 1 for b in _first_data_file(c).read_bytes())),
        "checksum",
    ),
    "state sub-directory removed": (lambda c: _remove(c / "state" / "ocdbt.process_0"), "is missing"),
    "orbax step metadata removed": (lambda c: _remove(c / "_CHECKPOINT_METADATA"), "_CHECKPOINT_METADATA is missing"),
    "orbax step metadata garbage": (lambda c: (c / "_CHECKPOINT_METADATA").write_text("}"), "broken"),
    "commit marker removed": (lambda c: _remove(c / "commit_success.txt"), "never finalised"),
    "state commit marker removed": (lambda c: _remove(c / "state" / "commit_success.txt"), "never finalised"),
    "manifest removed": (lambda c: _remove(c / MANIFEST_FILE), "jaxmod_manifest.json is missing"),
    "manifest garbage": (lambda c: (c / MANIFEST_FILE).write_text("nope"), "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_truncated_or_corrupted_checkpoints_raise_value_error(tmp_path, case):
    corrupt, message = CORRUPTIONS[case]
    path = tmp_path / "ckpt"
    save_tree(path, {"w": np.arange(64, dtype=np.float32), "m": np.ones(3, bool)}, {"a": 1})
    corrupt(path)
    for check in (check_checkpoint_dir, restore_tree):
        with pytest.raises(ValueError, match=message) as info:
            check(path)
        assert str(path) in str(info.value)


def test_orbax_errors_are_wrapped_in_value_error(tmp_path):
    path = tmp_path / "ckpt"
    save_tree(path, {"w": np.arange(4.0)}, {})
    (path / "state" / "_METADATA").write_text('{"tree_metadata": 7}')
    checkpoint._write_manifest(path)  # the manifest agrees, so orbax itself has to fail
    with pytest.raises(ValueError, match="could not be read by orbax") as info:
        restore_tree(path)
    assert str(path) in str(info.value)


def test_check_checkpoint_dir_rejects_non_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        check_checkpoint_dir(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        check_checkpoint_dir(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an orbax checkpoint"):
        check_checkpoint_dir(tmp_path / "empty")
    save_tree(tmp_path / "ckpt", {"w": np.zeros(2)}, {})
    shutil.copytree(tmp_path / "ckpt", tmp_path / "ckpt.orbax-checkpoint-tmp-123")
    with pytest.raises(ValueError, match="unfinished orbax temporary"):
        check_checkpoint_dir(tmp_path / "ckpt.orbax-checkpoint-tmp-123")


def test_module_source_never_mentions_pickle():
    source = Path(checkpoint.__file__).read_text().lower()
    assert "pickle" not in source


# ---------------------------------------------------------------------------
# Models and module sets


def test_model_round_trip(tmp_path):
    variables = _variables()
    save_model(
        tmp_path / "model", variables, model_name="dense", model_config=MODEL_CONFIG, dataset="mnist",
        input_shape=(6,), num_classes=3, extra={"test_accuracy": 0.97},
    )
    restored, metadata = restore_model(tmp_path / "model")
    chex.assert_trees_all_equal(restored, jax.tree.map(np.asarray, variables), strict=True)
    assert metadata == {
        "kind": "model", "library_version": jaxmod.__version__, "model_name": "dense",
        "model_config": MODEL_CONFIG, "dataset": "mnist", "input_shape": (6,), "num_classes": 3,
        "extra": {"test_accuracy": 0.97},
    }


def test_modules_round_trip_is_self_contained(tmp_path):
    modules, variables = _module_set(), _variables()
    save_modules(tmp_path / "modules", modules, variables)
    restored, restored_variables = restore_modules(tmp_path / "modules")
    assert isinstance(restored, ModuleSet)
    assert restored.meta == modules.meta
    chex.assert_trees_all_equal(restored.units, modules.units, strict=True)
    assert restored.units["fc1_relu"].dtype == np.bool_
    chex.assert_trees_all_equal(restored_variables, jax.tree.map(np.asarray, variables), strict=True)
    np.testing.assert_array_equal(restored.union([0, 2])["block/fc2_relu"], modules.union([0, 2])["block/fc2_relu"])
    check_compatible(restored.meta, model_name="dense", model_config=MODEL_CONFIG, input_shape=(6,), num_classes=3)
    # the restored set is a pytree of its masks that crosses jit unchanged
    assert len(jax.tree.leaves(restored)) == 2
    chex.assert_trees_all_equal(jax.jit(lambda m: m)(restored).units, restored.units)
    assert jax.jit(lambda m: m)(restored).meta == restored.meta


def test_module_heads_state_and_weight_masks_round_trip(tmp_path):
    base = _module_set()
    head = {"kernel": np.arange(3 * 3 * 2, dtype=np.float32).reshape(3, 3, 2), "bias": np.ones((3, 2), np.float32)}
    state = {"batch_stats": {"bn": {"mean": np.arange(15, dtype=np.float32).reshape(3, 5)}}}
    variables = _variables()
    weights = {"fc1": {"kernel": np.random.default_rng(2).random((3, 6, 5)) > 0.5, "bias": None},
               "fc2": {"kernel": np.ones((3, 5, 4), bool), "bias": None}}
    modules = ModuleSet(weights=weights, head=head, state=state, meta=base.meta).validate()
    assert modules.granularity == "weights" and modules.votes
    save_modules(tmp_path / "modules", modules, variables)
    restored, _ = restore_modules(tmp_path / "modules")
    assert restored.weights["fc1"]["bias"] is None  # untouched leaves come back as None (the jaxpruner convention)
    chex.assert_trees_all_equal(restored.weights["fc1"]["kernel"], weights["fc1"]["kernel"])
    chex.assert_trees_all_equal(restored.head, head, strict=True)
    chex.assert_trees_all_equal(restored.state, state, strict=True)
    np.testing.assert_array_equal(restored.select([2]).head["kernel"][0], head["kernel"][2])
    with pytest.raises(ValueError, match="one row per module"):
        ModuleSet(units=base.units, head={"kernel": np.zeros((2, 3, 2)), "bias": np.zeros((2, 2))},
                  meta=base.meta).validate()


def test_saving_checks_the_modules_against_their_variables(tmp_path):
    modules = _module_set()
    other = jax.tree.map(lambda a: np.asarray(a) + 1, _variables())
    with pytest.raises(ValueError, match="not the model these modules were decomposed from"):
        save_modules(tmp_path / "modules", modules, other)
    bad = modules.replace(units={**modules.units, "fc1_relu": modules.units["fc1_relu"].astype(np.float32) * 0.3})
    with pytest.raises(ValueError, match="masks must be boolean"):
        save_modules(tmp_path / "modules", bad, _variables())
    assert not (tmp_path / "modules").exists()


def test_modules_of_format_version_1_restore_or_are_refused_by_name(tmp_path):
    variables = _variables()
    old_meta = {"approach": "moda", "model_name": "dense", "model_config": MODEL_CONFIG, "dataset": "mnist",
                "input_shape": [6], "num_classes": 3, "classes": [0, 1, 2], "granularity": "unit",
                "library_version": "0.1.0", "extra": {"tau": 0.9}}
    masks = {"fc1_relu": np.ones((3, 5), bool), "block": {"fc2_relu": np.zeros((3, 4), bool)}}
    save_tree(tmp_path / "v1", {"masks": masks, "variables": variables},
              {"kind": "modules", "library_version": "0.1.0", "modules": old_meta})
    restored, _ = restore_modules(tmp_path / "v1")
    assert restored.meta.format_version == FORMAT_VERSION and restored.meta.approach_config == {"tau": 0.9}
    assert set(restored.units) == {"fc1_relu", "block/fc2_relu"}
    heads = {"channel": np.zeros((3, 3, 2), np.float32)}
    save_tree(tmp_path / "v1_heads", {"masks": masks, "variables": variables, "heads": heads},
              {"kind": "modules", "library_version": "0.1.0", "modules": {**old_meta, "granularity": "position"}})
    with pytest.raises(ValueError, match="module format version 1"):
        restore_modules(tmp_path / "v1_heads")
    save_tree(tmp_path / "v9", {"units": masks, "variables": variables},
              {"kind": "modules", "format_version": 9, "modules": old_meta})
    with pytest.raises(ValueError, match="format version 9"):
        restore_modules(tmp_path / "v9")


def test_restoring_the_wrong_kind_raises(tmp_path):
    save_modules(tmp_path / "modules", _module_set(), _variables())
    save_model(tmp_path / "model", _variables(), model_name="dense", model_config=MODEL_CONFIG, dataset="mnist",
               input_shape=(6,), num_classes=3)
    save_tree(tmp_path / "tree", {"a": np.zeros(2)}, {})
    with pytest.raises(ValueError, match="'modules', not 'model'"):
        restore_model(tmp_path / "modules")
    with pytest.raises(ValueError, match="'model', not 'modules'"):
        restore_modules(tmp_path / "model")
    with pytest.raises(ValueError, match="None, not 'modules'"):
        restore_modules(tmp_path / "tree")


def test_model_and_module_arguments_are_validated(tmp_path):
    path = tmp_path / "x"
    good = {"model_name": "dense", "model_config": MODEL_CONFIG, "dataset": "mnist", "input_shape": (6,),
            "num_classes": 3}
    with pytest.raises(ValueError, match="'params'"):
        save_model(path, {"batch_stats": {}}, **good)
    with pytest.raises(ValueError, match="input_shape"):
        save_model(path, _variables(), **{**good, "input_shape": (6, 0)})
    with pytest.raises(ValueError, match="num_classes"):
        save_model(path, _variables(), **{**good, "num_classes": True})
    with pytest.raises(ValueError, match="model_config"):
        save_model(path, _variables(), **{**good, "model_config": {"act": np.tanh}})
    with pytest.raises(TypeError, match="ModuleSet"):
        save_modules(path, {"fc1_relu": np.ones((3, 5), bool)}, _variables())
    assert not path.exists()


# ---------------------------------------------------------------------------
# Resumable runs


def _train_state(scale: float = 1.0) -> dict:
    params = {"fc1": {"kernel": jnp.full((6, 5), scale), "bias": jnp.zeros(5)}, "fc2": {"kernel": jnp.ones((5, 4))}}
    opt_state = optax.sgd(0.1, momentum=0.9, nesterov=True).init(params)
    opt_state = jax.tree.map(lambda x: x + scale, opt_state)
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jnp.int32(int(scale)),
        "rng": jax.random.key_data(jax.random.key(int(scale))),
        "batch_stats": {},
    }


def test_run_checkpointer_round_trip_with_optax_state(tmp_path):
    with RunCheckpointer(tmp_path / "run") as run:
        assert run.latest_step() is None
        for step in (1, 2, 3):
            run.save(step, _train_state(step), {"epoch": step, "history": [0.5, 0.25]})
            assert run.latest_step() == step
        assert run.all_steps() == [2, 3]  # max_to_keep=2
        state = _train_state(3)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _train_state(0))
        for like in (abstract, jax.tree.map(np.asarray, _train_state(0)), _train_state(0)):
            restored, metadata = run.restore(3, like)
            assert jax.tree.structure(restored) == jax.tree.structure(state)
            assert isinstance(restored["opt_state"][0], optax.TraceState)
            chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored), jax.tree.map(np.asarray, state),
                                        strict=True)
            assert metadata == {"epoch": 3, "history": [0.5, 0.25]}
    with RunCheckpointer(tmp_path / "run") as run:  # a fresh manager finds the same steps
        assert run.latest_step() == 3
        restored, _ = run.restore(2, _train_state(0))
        chex.assert_trees_all_equal(restored, _train_state(2))


def _drop_commit_timestamp(step_dir: Path) -> None:
    info = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())
    info.pop("commit_timestamp_nsecs")
    (step_dir / "_CHECKPOINT_METADATA").write_text(json.dumps(info))


HALF_WRITTEN = {
    "no commit_success.txt": lambda d: (d / "commit_success.txt").unlink(),
    "no commit timestamp": _drop_commit_timestamp,
    "no state commit marker": lambda d: (d / "state" / "commit_success.txt").unlink(),
    "no metadata item": lambda d: shutil.rmtree(d / "metadata"),
    "bare directory": lambda d: [shutil.rmtree(d), (d / "state").mkdir(parents=True)],
}


@pytest.mark.parametrize("case", sorted(HALF_WRITTEN))
def test_latest_step_ignores_half_written_steps(tmp_path, case):
    directory = tmp_path / "run"
    with RunCheckpointer(directory) as run:
        run.save(1, _train_state(1), {"epoch": 1})
        run.save(2, _train_state(2), {"epoch": 2})
        shutil.copytree(directory / "2", directory / "7")
        HALF_WRITTEN[case](directory / "7")
        shutil.copytree(directory / "2", directory / "9.orbax-checkpoint-tmp-1234")  # orbax's own temporary
        assert run.latest_step() == 2
        assert run.all_steps() == [1, 2]
        with pytest.raises(ValueError, match="cannot restore step 7"):
            run.restore(7, _train_state(0))
    with RunCheckpointer(directory) as run:  # what a restarted process sees
        assert run.latest_step() == 2
        run.save(7, _train_state(7), {"epoch": 7})  # replaces the half-written directory
        assert run.latest_step() == 7
        assert run.all_steps() == [2, 7]
        restored, metadata = run.restore(7, _train_state(0))
        chex.assert_trees_all_equal(restored, _train_state(7))
        assert metadata == {"epoch": 7}


def test_run_checkpointer_rejects_bad_saves(tmp_path):
    directory = tmp_path / "run"
    with RunCheckpointer(directory) as run:
        run.save(5, _train_state(1), {})
        with pytest.raises(ValueError, match="already exists"):
            run.save(5, _train_state(1), {})
        with pytest.raises(ValueError, match="not after the latest"):
            run.save(3, _train_state(1), {})
        with pytest.raises(ValueError, match="not JSON"):
            run.save(6, _train_state(1), {"x": object()})
        with pytest.raises(ValueError, match="not an array"):
            run.save(6, {"params": {"w": 1.0}}, {})
        with pytest.raises(ValueError, match="PRNG key"):
            run.save(6, {"rng": jax.random.key(0)}, {})
        with pytest.raises(ValueError, match="non-negative int"):
            run.save(-1, _train_state(1), {})
        assert sorted(p.name for p in directory.iterdir() if p.name.isdigit() or "tmp" in p.name) == ["5"]
        assert run.all_steps() == [5]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: (d / "state" / "manifest.ocdbt").unlink(), "could not be restored"),
        (lambda d: (d / "metadata" / "metadata").write_text("{garbage"), "not valid JSON"),
    ],
)
def test_run_checkpointer_corrupted_step_raises_value_error(tmp_path, corrupt, message):
    with RunCheckpointer(tmp_path / "run") as run:
        run.save(1, _train_state(1), {})
        corrupt(tmp_path / "run" / "1")
        with pytest.raises(ValueError, match=message) as info:
            run.restore(1, _train_state(0))
        assert str(tmp_path / "run") in str(info.value)


def test_run_checkpointer_restore_checks_like(tmp_path):
    with RunCheckpointer(tmp_path / "run") as run:
        run.save(1, {"w": np.zeros((2, 3), np.float32), "j": jnp.ones((2, 2))}, {})
        for w, j in [((3, 3), (2, 2)), ((2, 3), (3, 3))]:  # a numpy leaf, then a jax leaf of the wrong shape
            like = {"w": jax.ShapeDtypeStruct(w, np.float32), "j": jax.ShapeDtypeStruct(j, np.float32)}
            with pytest.raises(ValueError, match="shape") as info:
                run.restore(1, like)
            assert str(tmp_path / "run" / "1") in str(info.value)
        with pytest.raises(ValueError, match="structure does not match|could not be restored"):
            run.restore(1, {"w": np.zeros((2, 3), np.float32), "j": np.zeros((2, 2)), "extra": np.zeros(1)})
        restored, _ = run.restore(1, {"w": jax.ShapeDtypeStruct((2, 3), jnp.int32), "j": np.zeros((2, 2), np.float16)})
        assert isinstance(restored["w"], jax.Array) and restored["w"].dtype == jnp.int32
        assert isinstance(restored["j"], np.ndarray) and restored["j"].dtype == np.float16
        np.testing.assert_array_equal(restored["j"], np.ones((2, 2)))


_DIE_DURING_FINALISATION = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from orbax.checkpoint._src.path import atomicity

    async def _killed(self):  # the process dies just before orbax renames its temporary directory
        os._exit(17)

    atomicity.AtomicRenameTemporaryPath.finalize = _killed
    from jaxmod.checkpoint import RunCheckpointer, save_tree

    if sys.argv[1] == "run":
        RunCheckpointer(sys.argv[2]).save(5, {"w": np.full(3, 5.0)}, {"epoch": 5})
    else:
        save_tree(sys.argv[2], {"w": np.full(3, 5.0)}, {"epoch": 5}, overwrite=True)
    """
)


def _run_and_die(mode: str, directory: Path) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", _DIE_DURING_FINALISATION, mode, str(directory)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 17, result.stderr


def test_a_process_killed_while_saving_a_step_leaves_the_previous_step_usable(tmp_path):
    directory = tmp_path / "run"
    with RunCheckpointer(directory) as run:
        run.save(4, {"w": np.full(3, 4.0)}, {"epoch": 4})
    _run_and_die("run", directory)
    assert any(".orbax-checkpoint-tmp" in p.name for p in directory.iterdir())  # the killed save's leftovers
    with RunCheckpointer(directory) as run:
        assert run.latest_step() == 4
        restored, metadata = run.restore(4, {"w": np.zeros(3)})
        np.testing.assert_array_equal(restored["w"], np.full(3, 4.0))
        run.save(5, {"w": np.full(3, 5.0)}, {"epoch": 5})
        assert run.latest_step() == 5
    assert not any(".orbax-checkpoint-tmp" in p.name for p in directory.iterdir())  # cleaned up on start


def test_a_process_killed_while_overwriting_leaves_the_old_checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    save_tree(path, {"w": np.full(3, 4.0)}, {"epoch": 4})
    _run_and_die("tree", path)
    restored, metadata = restore_tree(path)
    np.testing.assert_array_equal(restored["w"], np.full(3, 4.0))
    assert metadata == {"epoch": 4}


def test_refuses_to_save_through_a_symlink(tmp_path):
    save_tree(tmp_path / "real", {"w": np.zeros(2)}, {"v": 1})
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match="symbolic link"):
        save_tree(tmp_path / "link", {"w": np.ones(2)}, {"v": 2}, overwrite=True)
    assert restore_tree(tmp_path / "link")[1] == {"v": 1}  # restoring through a link is fine

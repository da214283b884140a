"""Faults a user meets, one test per class: non-finite values where they enter, settings that would fail after
training, work directories holding another run, where modules come from, the composed model's front door, and
leftovers of killed saves. Every case must end in one clear ValueError before any work, never a traceback from
deep inside JAX, Flax or orbax, and never a silent result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import pipeline
from experiments.configs import moda as moda_config
from experiments.configs import override
from jaxmod import checkpoint, compose, data, models, train
from jaxmod.approaches import create_approach
from jaxmod.checks import NonFiniteError
from jaxmod.composed import load_composed
from jaxmod.losses import cross_entropy_loss
from jaxmod.modules import combine


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("mnist", train_limit=600, test_limit=300, seed=0)


@pytest.fixture(scope="module")
def fc1_modules(digits):
    model = models.create_model("fc1", 10)
    state, _ = train.fit(model, digits, cross_entropy_loss(), train.TrainConfig(epochs=1, batch_size=32), None,
                         progress=False)
    variables = state.variables()
    modules = create_approach("moda").decompose(model, variables, digits.train.x, digits.train.y, 10).modules
    x = digits.train.x
    modules = modules.with_meta(extra={"input_range": [float(x.min()), float(x.max())],
                                       "input_normalization": {"mean": digits.mean.tolist(),
                                                               "std": digits.std.tolist()}})
    return model, variables, modules


def _tiny_config(**changes):
    return override(moda_config.get_config("tiny"), **changes)


# ---------------------------------------------------------------------------------------------
# Non-finite values are caught where they enter


def test_non_finite_inputs_are_refused_by_name(digits, fc1_modules):
    model, variables, modules = fc1_modules
    x = digits.train.x.copy()
    x[7, 3, 3, 0] = np.nan
    x[9, 1, 1, 0] = np.inf
    first_bad = r"input samples holds 2 non-finite value\(s\) .* first at index \[7, 3, 3, 0\]"
    with pytest.raises(ValueError, match=first_bad):
        create_approach("moda").decompose(model, variables, x, digits.train.y, 10)
    with pytest.raises(ValueError, match="non-finite"):
        train.evaluate(model, variables, np.full_like(digits.test.x, np.nan), digits.test.y)
    bad = dataclass_replace_split(digits, x)
    with pytest.raises(ValueError, match=r"training samples holds 2 non-finite"):
        train.fit(model, bad, cross_entropy_loss(), train.TrainConfig(epochs=1, batch_size=32), None, progress=False)
    diverged = jax.tree.map(lambda a: np.full_like(np.asarray(a), np.nan), variables)
    with pytest.raises(ValueError, match=r"the variables\['params'\]"):
        create_approach("moda").decompose(model, diverged, digits.train.x, digits.train.y, 10)


def dataclass_replace_split(ds, x):
    import dataclasses

    return dataclasses.replace(ds, train=data.Split(x, ds.train.y))


def test_a_diverging_run_stops_at_its_step_and_keeps_earlier_checkpoints(digits, tmp_path):
    model = models.create_model("fc1", 10)
    config = train.TrainConfig(epochs=2, batch_size=32, learning_rate=1e6)
    with pytest.raises(NonFiniteError, match=r"loss became non-finite at step \d+ of epoch 1 \(.*cross_entropy"):
        train.fit(model, digits, cross_entropy_loss(), config, tmp_path / "run", progress=False)
    assert isinstance(NonFiniteError("x"), ValueError)  # the programs report it as a user error
    with checkpoint.RunCheckpointer(tmp_path / "run") as ckpt:
        assert ckpt.latest_step() is None  # the bad epoch was never saved


# ---------------------------------------------------------------------------------------------
# Settings that would fail after training fail before it, naming the setting


@pytest.mark.parametrize("changes, message", [
    ({"eval_batch_size": 0}, "config.eval_batch_size"),
    ({"val_fraction": 0.001}, "have no val samples"),
    ({"test_limit": 5}, "have no test samples"),
    ({"reuse.max_classes": 1}, "sub-task sizes"),
    ({"options.tau": 0.0}, "tau must be in"),
    ({"model_config": "[1]"}, "must be a JSON object"),
    ({"train.schedule": "linear"}, "schedule must be one of"),
    ({"train.augment": "cutout"}, "augment must be one of"),
    ({"train.compute_dtype": "float16"}, "compute_dtype must be one of"),
    ({"mesh": "data=3"}, "has 3 positions but there are 1 devices"),
    ({"mesh": "batch=1"}, "is not one of"),
])
def test_settings_that_would_fail_later_fail_before_any_work(tmp_path, changes, message):
    work = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        pipeline.run(_tiny_config(**changes), str(work))
    assert not work.exists()


def test_a_work_directory_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        pipeline.run(_tiny_config(), str(tmp_path / "file"))


# ---------------------------------------------------------------------------------------------
# Work directories: identity by stage, one line naming what differs, finished runs return at once


def test_work_directory_identity_is_split_by_stage(tmp_path):
    work = str(tmp_path / "run")
    first = pipeline.run(_tiny_config(), work)
    modular = os.path.join(work, "modular")
    stamps = {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(modular) for f in fs}
    # a decomposition-only change (tau) reuses both trained models
    second = pipeline.run(_tiny_config(**{"options.tau": 0.5}), work)
    assert {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(modular) for f in fs} == stamps
    assert second["modular"]["test_accuracy"] == first["modular"]["test_accuracy"]
    assert second["config"]["approach"]["tau"] == 0.5 and second["modules"] != first["modules"]
    # a finished run of the same settings returns its results at once
    start = time.perf_counter()
    again = pipeline.run(_tiny_config(**{"options.tau": 0.5}), work)
    assert time.perf_counter() - start < 2.0 and again == json.loads(open(os.path.join(work, "results.json")).read())
    # a training change (another loss weight) is another run: refused in one line naming what differs
    with pytest.raises(ValueError) as info:
        pipeline.run(_tiny_config(**{"options.gamma": 0.5}), work)
    message = str(info.value)
    assert "\n" not in message and "run_info.gamma is 0.3 there, 0.5 here" in message
    with pytest.raises(ValueError, match=r"run_info.model is 'fc1' there, 'fc2' here"):
        pipeline.run(_tiny_config(model="fc2"), work)


# ---------------------------------------------------------------------------------------------
# Where modules come from


def test_modules_of_two_runs_or_non_boolean_masks_are_refused(digits, fc1_modules):
    model, variables, modules = fc1_modules
    other = modules.with_meta(source="0" * 64)
    with pytest.raises(ValueError, match=r"differ in \['source'\]"):
        combine([modules.select([0]), other.select([1])])
    with pytest.raises(ValueError, match="masks must be boolean"):
        modules.replace(units={k: v.astype(np.float32) * 2 for k, v in modules.units.items()}).validate()
    with pytest.raises(ValueError, match="not the model these modules were decomposed from"):
        compose.compose(modules, jax.tree.map(lambda a: np.asarray(a) * 1.01, variables), [1, 2])


# ---------------------------------------------------------------------------------------------
# The composed model's front door


def test_the_composed_model_checks_its_inputs(digits, fc1_modules):
    model, variables, modules = fc1_modules
    small = compose.compose(modules, variables, [3, 5, 8])
    x = digits.test.x[:4]
    assert np.shape(small(x)) == (4, 3)
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28, 1\), got \(4, 28, 28\)"):
        small(x[..., 0])
    with pytest.raises(ValueError, match=r"add the batch axis"):
        small(x[0])
    pixels = np.clip(x * digits.std + digits.mean, 0, 1) * 255
    with pytest.raises(ValueError, match=r"dtype uint8 .* normalised as \(x / 255 - mean\) / std"):
        small(pixels.astype(np.uint8))
    with pytest.raises(ValueError, match="far outside"):
        small(pixels.astype(np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        small(np.where(x > 0, np.nan, x))
    with pytest.raises(ValueError, match="string"):
        compose.compose(modules, variables, "358")


def test_the_composed_model_saves_loads_and_evaluates_on_original_labels(digits, fc1_modules, tmp_path):
    model, variables, modules = fc1_modules
    for how in ("merge", "vote"):
        small = compose.compose(modules, variables, [8, 3], how=how)
        small.save(tmp_path / how)
        back = load_composed(tmp_path / how)
        assert back.classes == (8, 3) and type(back) is type(small)
        np.testing.assert_array_equal(np.asarray(back(digits.test.x)), np.asarray(small(digits.test.x)))
        scores = small.evaluate(digits.test.x, digits.test.y)
        keep = np.isin(digits.test.y, [8, 3])
        predicted = small.predict(digits.test.x[keep])
        assert set(np.unique(predicted)) <= {3, 8}  # original class ids
        assert scores["samples"] == keep.sum() and scores["left_out"] == (~keep).sum()
        assert scores["top1"] == pytest.approx(np.mean(predicted == digits.test.y[keep]))
    checkpoint.save_modules(tmp_path / "plain", modules, variables)
    with pytest.raises(ValueError, match="holds a module set, not a composed model"):
        load_composed(tmp_path / "plain")


# ---------------------------------------------------------------------------------------------
# Leftovers, programs, data sources


def test_a_killed_save_leaves_nothing_behind_on_the_next_save(tmp_path):
    stale = tmp_path / ".tree.jaxmod-staging-deadbeef"
    stale.mkdir()
    (stale / "half_written").write_text("x")
    (tmp_path / ".tree.jaxmod-old-cafe").mkdir()
    checkpoint.save_tree(tmp_path / "tree", {"a": np.zeros(2)}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_the_program_reports_bad_configs_in_one_line(tmp_path):
    program = [sys.executable, "-m", "experiments.modularize"]
    for args, message in [(["--config=experiments/configs/nope.py", "--config.train.epochs=2"], "no config file"),
                          (["--config=experiments/configs/moda.py", "--config.trian.epochs=2"], "no field 'trian'"),
                          (["--config=experiments/configs/rnn.py:sideways"], "shape must be one of")]:
        proc = subprocess.run([*program, *args, f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()


def test_an_unreachable_download_host_fails_at_once():
    from jaxmod.data.tfds_source import reachable

    start = time.perf_counter()
    assert not reachable(("127.0.0.1", 9), timeout=1.0)  # nothing listens on the discard port here
    assert time.perf_counter() - start < 1.5

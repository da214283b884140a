r"""Bad inputs and faults a user meets, tried one by one, with the message each gives: a reproducible table.

    python -m experiments.benchmarks.bad_inputs --out=experiments/results/reliability/bad_inputs

Every case runs through the Python API or the experiment program on real MNIST (a small slice); a case passes
when it ends in one clear error line (``ValueError``/``TypeError`` through the API, exit code 2 and ``error:`` from
the program) that names the problem, raised before anything was written, with no traceback. Writes ``<out>.md``
and ``<out>.json``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import app, flags

from experiments import pipeline
from experiments.common import write_json_atomic
from experiments.configs import moda as moda_config
from experiments.configs import override
from jaxmod import checkpoint, compose, data, models, reuse, train
from jaxmod.approaches import create_approach
from jaxmod.composed import load_composed
from jaxmod.losses import cross_entropy_loss, moda_loss
from jaxmod.modules import combine, module_set

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "experiments/results/reliability/bad_inputs", "Output stem (.md and .json).")


def tiny_config(**changes: Any) -> Any:
    return override(moda_config.get_config("tiny"), **changes)


def cases(tmp: str) -> list[tuple[str, str, Callable[[], Any]]]:
    """(kind, what, the call that must fail cleanly)."""
    ds = data.load_dataset("mnist", train_limit=600, test_limit=300, seed=0)
    model = models.create_model("fc1", 10)
    state, _ = train.fit(model, ds, cross_entropy_loss(), train.TrainConfig(epochs=1, batch_size=32), None,
                         progress=False)
    v = state.variables()
    modules = create_approach("moda").decompose(model, v, ds.train.x, ds.train.y, 10).modules
    nan_x = ds.train.x.copy()
    nan_x[5, 0, 0, 0] = np.nan
    small = compose.compose(modules, v, [3, 5])
    checkpoint.save_modules(os.path.join(tmp, "mods"), modules, v)
    os.makedirs(os.path.join(tmp, "notckpt"))
    open(os.path.join(tmp, "afile"), "w").close()
    run = lambda **c: pipeline.run(tiny_config(**c), os.path.join(tmp, "never"))  # noqa: E731
    lenet = models.create_model("lenet5", 10)
    return [
        ("non-finite", "a NaN pixel in the samples to decompose", lambda: create_approach("moda").decompose(
            model, v, nan_x, ds.train.y, 10)),
        ("non-finite", "all-NaN images to evaluate", lambda: train.evaluate(model, v, np.full_like(ds.test.x, np.nan),
                                                                           ds.test.y)),
        ("non-finite", "a NaN training image", lambda: train.fit(model, dataclasses.replace(ds, train=data.Split(
            nan_x, ds.train.y)), cross_entropy_loss(), train.TrainConfig(epochs=1), None, progress=False)),
        ("non-finite", "a diverging run (lr 1e6)", lambda: train.fit(model, ds, cross_entropy_loss(),
                                                                     train.TrainConfig(epochs=1, batch_size=32,
                                                                                       learning_rate=1e6), None,
                                                                     progress=False)),
        ("non-finite", "NaN variables (a diverged model) to decompose", lambda: create_approach("moda").decompose(
            model, jax.tree.map(lambda a: np.asarray(a) * np.nan, v), ds.train.x, ds.train.y, 10)),
        ("non-finite", "NaN input to a composed model", lambda: small(np.full_like(ds.test.x[:2], np.nan))),
        ("settings", "eval_batch_size 0", lambda: run(eval_batch_size=0)),
        ("settings", "val_fraction leaving classes without validation samples", lambda: run(val_fraction=0.001)),
        ("settings", "test_limit leaving classes without test samples", lambda: run(test_limit=5)),
        ("settings", "train_limit below one batch", lambda: run(train_limit=100)),
        ("settings", "unknown model", lambda: run(model="resnet99")),
        ("settings", "unknown dataset", lambda: run(dataset="imagenet21k")),
        ("settings", "model that does not take the data (vgg16 on 28x28)", lambda: run(model="vgg16")),
        ("settings", "model_config not a JSON object", lambda: run(model_config="[1]")),
        ("settings", "model_config with an unknown field", lambda: run(model_config='{"depth": 8}')),
        ("settings", "tau out of range", lambda: run(**{"options.tau": 1.5})),
        ("settings", "negative loss weight", lambda: run(**{"options.alpha": -1.0})),
        ("settings", "zero epochs", lambda: run(**{"train.epochs": 0})),
        ("settings", "negative learning rate", lambda: run(**{"train.learning_rate": -0.1})),
        ("settings", "unknown optimizer", lambda: run(**{"train.optimizer": "rmsprop"})),
        ("settings", "Adam for MODA's modular model", lambda: run(**{"train.optimizer": "adam"})),
        ("settings", "zero sub-tasks", lambda: run(**{"reuse.num_subtasks": 0})),
        ("settings", "sub-tasks larger than the class count", lambda: run(**{"reuse.min_classes": 11})),
        ("settings", "unknown data source", lambda: run(data_source="web")),
        ("settings", "unknown approach", lambda: create_approach("gradsplitter")),
        ("work directory", "a work directory that is a regular file", lambda: pipeline.run(
            tiny_config(), os.path.join(tmp, "afile"))),
        ("work directory", "another model in a trained run's directory", lambda: train.fit(
            models.create_model("fc2", 10), ds, cross_entropy_loss(), train.TrainConfig(epochs=1, batch_size=32),
            os.path.join(tmp, "trained"), progress=False, run_info={"model": "fc2"})),
        ("work directory", "another loss weight in a trained run's directory", lambda: train.fit(
            model, ds, moda_loss(gamma=0.5), train.TrainConfig(epochs=1, batch_size=32), os.path.join(tmp, "trained"),
            progress=False, run_info={"model": "fc1", "gamma": 0.5})),
        ("checkpoint", "restore modules from a directory that is no checkpoint", lambda: checkpoint.restore_modules(
            os.path.join(tmp, "notckpt"))),
        ("checkpoint", "save modules with another model's variables", lambda: checkpoint.save_modules(
            os.path.join(tmp, "m2"), modules, jax.tree.map(lambda a: np.asarray(a) + 1, v))),
        ("checkpoint", "save modules over an existing checkpoint without overwrite", lambda: checkpoint.save_modules(
            os.path.join(tmp, "mods"), modules, v)),
        ("checkpoint", "load a module set as a composed model", lambda: load_composed(os.path.join(tmp, "mods"))),
        ("provenance", "compose with variables of another training run", lambda: compose.compose(
            modules, jax.tree.map(lambda a: np.asarray(a) * 1.01, v), [1, 2])),
        ("provenance", "combine modules of two runs", lambda: combine([modules.select([0]), modules.with_meta(
            source="0" * 64).select([1])])),
        ("provenance", "non-boolean masks (0.3, 2, -1)", lambda: module_set(
            create_approach("moda"), model, v, ds.train.x[:1], units={k: np.full(m.shape, 0.3) * 1.0
                                                                      for k, m in modules.units.items()})),
        ("provenance", "a module set without a class's row", lambda: modules.select([0, 1]).row(7)),
        ("composition", "classes given as the string '358'", lambda: compose.compose(modules, v, "358")),
        ("composition", "a repeated class", lambda: compose.compose(modules, v, [2, 2])),
        ("composition", "an unknown class", lambda: compose.compose(modules, v, [1, 12])),
        ("composition", "an empty class list", lambda: compose.compose(modules, v, [])),
        ("composition", "merging position masks (Pan & Rajan)", lambda: compose.compose(
            modules.replace(units=None, positions=modules.units), v, [1, 2], how="merge")),
        ("composition", "a model of another configuration", lambda: compose.compose(
            modules, v, [1, 2], model=models.create_model("fc1", 10, units=64))),
        ("front door", "a batch without its channel axis", lambda: small(ds.test.x[:4, ..., 0])),
        ("front door", "one sample without the batch axis", lambda: small(ds.test.x[0])),
        ("front door", "uint8 pixels", lambda: small((ds.test.x[:4] > 0).astype(np.uint8) * 255)),
        ("front door", "unnormalised float pixels 0..255", lambda: small(np.full(ds.test.x[:2].shape, 255.0,
                                                                                   np.float32))),
        ("front door", "evaluate with labels of another length", lambda: small.evaluate(ds.test.x, ds.test.y[:5])),
        ("front door", "evaluate on samples of none of its classes", lambda: small.evaluate(
            ds.test.x[ds.test.y == 1], ds.test.y[ds.test.y == 1])),
        ("reuse", "sub-task samples of absent classes", lambda: reuse.subtask_samples(np.array([0, 1]), [5])),
        ("data", "a TFDS dataset without network or prepared data_dir", lambda: data.load_dataset(
            "cifar10", source="tfds")),
        ("training", "a model that does not take the samples", lambda: train.fit(
            models.create_model("vgg16", 10), ds, cross_entropy_loss(), train.TrainConfig(epochs=1), None,
            progress=False)),
        ("training", "labels beyond the model's classes", lambda: train.fit(
            models.create_model("fc1", 5), ds, cross_entropy_loss(), train.TrainConfig(epochs=1), None,
            progress=False)),
        ("decomposition", "MwT on a model without convs (fc1)", lambda: create_approach("mwt").training_model(model)),
        ("decomposition", "Pan & Rajan's dense variant on LeNet-5", lambda: create_approach(
            "concern", variant="ti_i").decompose(lenet, lenet.init(jax.random.key(0), ds.train.x[:1]), ds.train.x,
                                                  ds.train.y, 10)),
        ("decomposition", "the random control without its reference modules", lambda: create_approach(
            "random").decompose(model, v, ds.train.x, ds.train.y, 10)),
    ]


PROGRAM_CASES = [
    ("program", "a config file that does not exist", ["--config=experiments/configs/nope.py",
                                                      "--config.train.epochs=2"]),
    ("program", "a misspelt config field", ["--config=experiments/configs/moda.py", "--config.trian.epochs=2"]),
    ("program", "an unknown RNN shape", ["--config=experiments/configs/rnn.py:sideways"]),
    ("program", "an unknown approach option", ["--config=experiments/configs/moda.py", "--config.options.delta=2"]),
    ("program", "an RNN model with 5 layers", ["--config=experiments/configs/rnn.py:many_to_many",
                                               "--config.rnn.layers=5"]),
    ("program", "an unknown augmentation", ["--config=experiments/configs/moda.py", "--config.train.augment=cutout"]),
    ("program", "a compute dtype that is not offered", ["--config=experiments/configs/moda.py",
                                                        "--config.train.compute_dtype=float16"]),
    ("program", "a mesh larger than the machine", ["--config=experiments/configs/moda.py", "--config.mesh=data=8"]),
]


def try_case(call: Callable[[], Any]) -> tuple[bool, str]:
    try:
        call()
    except (ValueError, TypeError) as err:
        return True, f"{type(err).__name__}: {str(err).splitlines()[0]}"
    except Exception as err:  # noqa: BLE001 - the point is to see what escapes
        return False, f"UNCLEAN {type(err).__name__}: {str(err)[:200]}"
    return False, "NO ERROR (silent)"


def main(argv: list[str]) -> None:
    del argv
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train.fit(models.create_model("fc1", 10), data.load_dataset("mnist", train_limit=600, test_limit=300),
                  cross_entropy_loss(), train.TrainConfig(epochs=1, batch_size=32), os.path.join(tmp, "trained"),
                  progress=False, run_info={"model": "fc1"})
        for kind, what, call in cases(tmp):
            clean, message = try_case(call)
            rows.append({"kind": kind, "case": what, "clean": clean, "message": message})
            print(rows[-1], flush=True)
        for kind, what, args in PROGRAM_CASES:
            work = os.path.join(tmp, "program_never")
            proc = subprocess.run([sys.executable, "-m", "experiments.modularize", *args, f"--workdir={work}"],
                                  capture_output=True, text=True)
            last = (proc.stderr.strip().splitlines() or [""])[-1]
            clean = proc.returncode == 2 and "Traceback" not in proc.stderr and not os.path.exists(work)
            rows.append({"kind": kind, "case": what, "clean": clean, "message": last})
            print(rows[-1], flush=True)
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    write_json_atomic(f"{FLAGS.out}.json", {"cases": rows, "all_clean": all(r["clean"] for r in rows)})
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["# Bad inputs and faults, and the message each gives", "",
             "Made by `python -m experiments.benchmarks.bad_inputs` (MNIST slices). `clean`: one error line naming "
             "the problem, before anything was written, no traceback.", "",
             f"{sum(r['clean'] for r in rows)} of {len(rows)} clean.", "",
             "| kind | case | clean | message |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['kind']} | {cell(r['case'])} | {'yes' if r['clean'] else 'NO'} | {cell(r['message'])} |"
              for r in rows]
    with open(f"{FLAGS.out}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{sum(r['clean'] for r in rows)} of {len(rows)} clean: {FLAGS.out}.md")


if __name__ == "__main__":
    app.run(main)

r"""The supermask score learning rate chosen on the validation split: co-train all modules over a saved frozen
base model once per learning rate and vote on the validation split (never the test split).

    python -m experiments.supermask_score_lr --base_run=runs/supermask_tables/t1_fc4_mnist --dataset=mnist \
        --score_lrs=0.1,1.0 --out=experiments/results/supermask/score_lr_fc4_mnist

``--base_run`` is the work directory of an ``experiments.modularize --config=experiments/configs/supermask.py``
run: its saved module set carries the frozen base variables and architecture. Writes ``<out>.md`` / ``<out>.csv``
with, per learning rate, the validation voting accuracy, the mean balanced accuracy of the modules, the per-epoch
cross-entropy, the mean Jaccard index and two-class RPs.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from absl import app, flags

from experiments.common import number_list_flag, write_rows_tables
from jaxmod import checkpoint
from jaxmod.approaches import supermask as sm
from jaxmod.compose import build_model
from jaxmod.data import load_dataset
from jaxmod.metrics.modules import element_statistics
from jaxmod.running import module_outputs
from jaxmod.voting import voting_accuracy

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The program's flags, defined only when it runs (tests may import its functions)."""
    flags.DEFINE_string("base_run", None, "Work directory of a supermask run (its modules/ hold the base model).")
    flags.DEFINE_string("dataset", "mnist", "Dataset the base model was trained on.")
    flags.DEFINE_list("score_lrs", ["0.1", "1.0"], "Score learning rates tried.")
    flags.DEFINE_float("graft_lr", 0.01, "Grafting-layer learning rate.")
    flags.DEFINE_float("alpha", 1.0, "Stemming weight.")
    flags.DEFINE_integer("module_epochs", 10, "Co-training epochs.")
    flags.DEFINE_integer("train_limit", 6000, "Training images (class balanced), as the tables use.")
    flags.DEFINE_integer("seed", 0, "Seed of the data split (the base run's).")
    flags.DEFINE_string("out", None, "Output stem (writes <out>.md and <out>.csv).")
    flags.mark_flags_as_required(["base_run", "out"])


def balanced_accuracies(confidences: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per module (rows of ``confidences``, one per class): mean of its recall on its class and on the others."""
    said = confidences > 0.5
    target = labels[None] == np.arange(len(confidences))[:, None]
    hit = (said & target).sum(1) / np.maximum(target.sum(1), 1)
    reject = (~said & ~target).sum(1) / np.maximum((~target).sum(1), 1)
    return (hit + reject) / 2


def evaluate_lr(model: Any, variables: Any, ds: Any, score_lr: float) -> dict[str, Any]:
    """Co-train every module at ``score_lr`` and measure it on the validation split."""
    approach = sm.Supermask(epochs=FLAGS.module_epochs, score_lr=score_lr, graft_lr=FLAGS.graft_lr, alpha=FLAGS.alpha)
    start = time.perf_counter()
    dec = approach.decompose(model, variables, ds.train.x, ds.train.y, ds.num_classes)
    confidences = module_outputs(model, variables, dec.modules, ds.val.x)
    pairs = element_statistics(dec.modules.weights)
    ce = dec.statistics["cross_entropy"]
    return {"score_lr": score_lr, "val_voting_accuracy": float(voting_accuracy(confidences, ds.val.y)),
            "val_mean_balanced_accuracy": float(balanced_accuracies(confidences, ds.val.y).mean()),
            "first_epoch_ce": float(np.mean(ce[0])), "last_epoch_ce": float(np.mean(ce[-1])),
            "mean_jaccard": float(pairs["mean_jaccard"]), "two_class_rps": float(pairs["two_class_union_mean"]),
            "seconds": time.perf_counter() - start}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    lrs = number_list_flag(FLAGS.score_lrs, "score_lrs")
    modules_dir = os.path.join(FLAGS.base_run, "modules")
    if not os.path.isdir(modules_dir):
        raise app.UsageError(f"--base_run: no saved module set at {modules_dir}")
    modules, variables = checkpoint.restore_modules(modules_dir)
    if modules.meta.approach != "supermask":
        raise app.UsageError(f"--base_run holds {modules.meta.approach!r} modules, not supermask ones")
    model = build_model(modules)
    ds = load_dataset(FLAGS.dataset, train_limit=FLAGS.train_limit, seed=FLAGS.seed)
    rows = [evaluate_lr(model, variables, ds, lr) for lr in lrs]
    best = max(rows, key=lambda r: r["val_voting_accuracy"])
    title = f"Supermask score learning rate on the validation split ({modules.meta.model_name}, {FLAGS.dataset})"
    notes = (f"Best validation voting accuracy: score lr {best['score_lr']}. Validation split only ({len(ds.val.x)} "
             f"images); {len(ds.train.x)} training images, {FLAGS.module_epochs} co-training epochs.")
    md = write_rows_tables(FLAGS.out, rows, title, notes, "experiments.supermask_score_lr")
    print(open(md).read())


if __name__ == "__main__":
    define_flags()
    app.run(main)

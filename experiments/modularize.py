r"""Train, decompose, compose, measure: one modularization approach end to end.

    python -m experiments.modularize --approach=moda --model=lenet5 --dataset=mnist \
        --epochs=4 --workdir=runs/moda_lenet5_mnist

Each approach has a runner in ``experiments/runners/<approach>.py`` (its own flags live there; the
flags below are shared). Every runner writes ``WORKDIR/results.json`` in the common schema
(:data:`experiments.common.RESULTS_SCHEMA`), PNG plots under ``WORKDIR/plots``, the module set
under ``WORKDIR/modules`` (orbax) and resumable training checkpoints, and the program prints a
summary table. Paper scale is a flag away, e.g. ``--model=vgg16 --dataset=cifar10 --epochs=200
--data_dir=PREPARED_TFDS_DIR``. Shared options left unset take the approach's defaults (MODA:
alpha 1, beta 1, gamma 0.3; MwT: alpha 0.5, beta 1.5; supermask: alpha 1).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from absl import app, flags, logging

from experiments.common import check_results, summary

FLAGS = flags.FLAGS
RUNNERS = ("moda", "mwt", "concern", "rnn", "supermask")

flags.DEFINE_enum("approach", "moda", list(RUNNERS), "Modularization approach.")
flags.DEFINE_string("model", None, "Zoo model name (default: the approach's).")
flags.DEFINE_string("model_config", "{}", 'Model configuration as JSON, e.g. \'{"use_bn": false}\'.')
flags.DEFINE_string("dataset", None, "Dataset name (mnist, fashion_mnist, cifar10, ...; default: the approach's).")
flags.DEFINE_integer("epochs", 4, "Training epochs for each trained model.")
flags.DEFINE_string("workdir", None, "Output directory (resumable).")
flags.DEFINE_integer("seed", 0, "Seed for initialisation, shuffling, splits and sub-tasks.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_float("lr", 0.05, "Initial learning rate (cosine schedule).")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"], "Optimizer of the standard model of the post-training "
                  "approaches (concern, supermask): sgd (Nesterov, the papers') or adam (e.g. ResNet20 without "
                  "batch norm, with --lr=0.001).")
flags.DEFINE_float("alpha", None, "First loss weight (MODA affinity, MwT cohesion, supermask stemming).")
flags.DEFINE_float("beta", None, "Second loss weight of the approach (MODA dispersion, MwT coupling).")
flags.DEFINE_float("gamma", None, "MODA compactness weight.")
flags.DEFINE_float("tau", None, "Activation-frequency threshold for decomposition (default 0.9).")
flags.DEFINE_integer("num_subtasks", 30, "Random reuse sub-tasks.")
flags.DEFINE_integer("min_subtask_classes", 2, "Smallest sub-task.")
flags.DEFINE_integer("max_subtask_classes", 9, "Largest sub-task.")
flags.DEFINE_integer("train_limit", None, "Use at most this many training samples (class balanced).")
flags.DEFINE_integer("test_limit", None, "Use at most this many test samples (class balanced).")
flags.DEFINE_float("val_fraction", 0.1, "Validation fraction carved from the training split.")
flags.DEFINE_string("data_dir", None, "TFDS data_dir for datasets without an offline source.")
flags.DEFINE_enum("data_source", "auto", ["auto", "offline", "tfds"], "Where datasets come from.")
flags.DEFINE_integer("eval_batch_size", 512, "Batch size of evaluation and decomposition scans.")
flags.DEFINE_integer("timing_repeats", 60, "Train steps timed per loss (in 5 interleaved rounds).")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.mark_flag_as_required("workdir")

# Importing the runners defines their own flags before absl parses the command line.
_RUNNER_MODULES: dict[str, ModuleType] = {
    name: importlib.import_module(f"experiments.runners.{name}") for name in RUNNERS}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    runner = _RUNNER_MODULES[FLAGS.approach]
    try:
        results = runner.run(FLAGS.workdir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    check_results(results)
    print(f"\n{results['approach']} on {results['model']} / {results['dataset']} ({results['backend']})")
    print(summary(results, getattr(runner, "SUMMARY_ROWS", ())))
    print(f"\nresults: {os.path.join(FLAGS.workdir, 'results.json')}")


if __name__ == "__main__":
    app.run(main)

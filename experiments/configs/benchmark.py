"""The side-by-side benchmark: every method on the same models, data, seeds and budget.

    python -m experiments.benchmark --config=experiments/configs/benchmark.py --workdir=runs/benchmark
    python -m experiments.benchmark --config=experiments/configs/benchmark.py:tiny --workdir=/tmp/bench  # a test grid

The grid is models x datasets x seeds; in each cell the standard model trains once and the post-training methods
(Pan and Rajan, supermask) decompose it, MODA and MwT train their modular models with the same budget, and every
run draws the random control at its own module sizes. The default budget is CPU-sized (see BUILD_NOTES.md).
"""

from __future__ import annotations

import ml_collections


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.models = "fc4,lenet5,vgg_narrow,resnet20"
    config.datasets = "mnist,fashion_mnist"
    config.seeds = "0,1,2"
    config.methods = "moda,mwt,concern,supermask"
    config.output = "experiments/results/benchmark"  # tables and plots (the runs themselves stay in --workdir)

    # one budget for every method (CPU-sized: a few hours for the whole grid on 2 cores)
    config.epochs = 3
    config.train_limit = 12000  # class-balanced training subset (after the validation carve)
    config.test_limit = 5000
    config.module_epochs = 3  # supermask co-training epochs
    config.subtask_sizes = "2,5"  # reuse on sub-tasks of these sizes, the same sub-tasks for every method
    config.subtasks_per_size = 5
    config.timing_repeats = 0  # train-step timing is the speed benchmark's job; training time comes from history
    config.progress = True
    config.tables_only = False  # write the tables from the finished runs on disk; unfinished runs are rows saying so
    # keep the records already in output/cells.json for cells outside this grid (rows of earlier invocations, e.g.
    # whose work directory is gone) and write the tables from both
    config.keep_cells = False
    if preset == "tiny":
        config.models, config.datasets, config.seeds, config.methods = "fc4", "mnist", "0", "moda,concern"
        config.epochs, config.train_limit, config.test_limit, config.module_epochs = 1, 1000, 500, 1
        config.subtasks_per_size = 2
        config.progress = False
    elif preset:
        raise ValueError(f"unknown benchmark preset {preset!r} (known: tiny)")
    return config

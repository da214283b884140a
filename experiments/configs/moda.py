"""MODA (Ngo et al.) with the paper's defaults: alpha 1.0, beta 1.0, gamma 0.3, tau 0.9.

``--config=experiments/configs/moda.py:tiny``: FC1, one epoch on 1,000 MNIST samples, 2 sub-tasks, no timing (the
tests' and the reliability programs' run, seconds long)."""

from __future__ import annotations

import ml_collections

from experiments.configs import default
from experiments.configs.options import approach_options


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    config = default.get_config()
    config.approach = "moda"
    config.options = approach_options("moda")
    if preset == "tiny":
        config.model, config.train.epochs, config.train_limit, config.test_limit = "fc1", 1, 1000, 300
        config.reuse.num_subtasks, config.timing_repeats, config.progress = 2, 0, False
    elif preset:
        raise ValueError(f"unknown moda preset {preset!r} (known: tiny)")
    return config

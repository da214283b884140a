"""Kingetsu et al.'s supermask modules with module stemming (k 10%, alpha 1, 5 module epochs) over FC1 on MNIST."""

from __future__ import annotations

import ml_collections

from experiments.configs import default
from experiments.configs.options import approach_options


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.approach = "supermask"
    config.model = "fc1"
    config.options = approach_options("supermask")
    config.extras.time_single_module = True  # also train one module alone and record the co-training ratio
    return config

"""MODA (Ngo et al.) with the paper's defaults: alpha 1.0, beta 1.0, gamma 0.3, tau 0.9."""

from __future__ import annotations

import ml_collections

from experiments.configs import default
from experiments.configs.options import approach_options


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.approach = "moda"
    config.options = approach_options("moda")
    return config

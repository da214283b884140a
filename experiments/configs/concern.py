"""Pan and Rajan's decomposition (CI+TI+MC with MC-BLN on LeNet-5 by default; dense variants for fc1..fc4)."""

from __future__ import annotations

import ml_collections

from experiments.configs import default
from experiments.configs.options import approach_options


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.approach = "concern"
    config.options = approach_options("concern")
    return config

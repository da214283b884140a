"""MwT (Qi et al.) with the paper's defaults: alpha 0.5 (cohesion), beta 1.5 (coupling), tau 0.9; reuse
sub-models fine-tuned 5 epochs with a new head (learning rate 0.01, see BUILD_NOTES.md)."""

from __future__ import annotations

import ml_collections

from experiments.configs import default
from experiments.configs.options import approach_options


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.approach = "mwt"
    config.options = approach_options("mwt")
    config.extras.save_finetuned = True  # each fine-tuned sub-model saved (orbax) under WORKDIR/finetuned
    return config

"""The random control: random masks with the same per-layer kept counts as another approach's modules.

    --config=experiments/configs/random.py          # against MODA (the default reference)
    --config=experiments/configs/random.py:mwt      # against MwT; any approach name works

The run trains and decomposes exactly as the reference approach's config says, then draws the random
modules of the same sizes from the same model, so every figure shows whether the method beats chance.
"""

from __future__ import annotations

import importlib

import ml_collections

from experiments.configs.options import approach_options


def get_config(reference: str = "moda") -> ml_collections.ConfigDict:
    reference = reference or "moda"
    config = importlib.import_module(f"experiments.configs.{reference}").get_config()
    config.reference_options = config.options
    config.approach = "random"
    config.options = approach_options("random", reference=reference)
    return config

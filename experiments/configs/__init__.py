"""Experiment settings as ml_collections configs, one per approach, read through absl:

    python -m experiments.modularize --config=experiments/configs/moda.py --config.train.epochs=3 --workdir=runs/x

``default.py`` holds what every run shares; each approach's file imports it and sets its ``options`` (the
approach's own settings, with the paper's defaults taken from the approach's dataclass) and ``extras`` (what
the pipeline measures or saves beyond the common results, for that approach).
"""

from typing import Any


def override(config: Any, **changes: Any) -> Any:
    """``config`` with dotted fields set (``override(c, **{"train.epochs": 2})``), as ``--config.<field>`` does."""
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return config

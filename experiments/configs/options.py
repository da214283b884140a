"""An approach's options as a config, with the defaults of the approach's own dataclass (one source of truth)."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from ml_collections import config_dict

from jaxmod.approaches import approach_class

# Options whose default is "the run's" value: None in the dataclass, typed here so flags can set them.
PLACEHOLDERS: dict[str, type] = {"negatives": int, "num_positive": int}


def approach_options(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The settings of approach ``name`` as a ConfigDict, with ``overrides`` applied."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(approach_class(name)):
        if not field.init or field.name in ("progress",):
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        values[field.name] = config_dict.placeholder(PLACEHOLDERS[field.name]) if default is None else default
    values.update(overrides)
    return ml_collections.ConfigDict(values)

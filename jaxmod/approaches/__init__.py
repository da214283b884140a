"""Modularization approaches behind one protocol (:class:`Approach`), found by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from jaxmod.approaches.base import Approach
from jaxmod.approaches.moda import Moda, threshold_with_floor
from jaxmod.modules import Decomposition

# A factory, or "module:attribute" imported on first use (keeps heavy approaches out of import time).
_APPROACHES: dict[str, Callable[..., Approach] | str] = {
    "moda": Moda,
    "mwt": "jaxmod.approaches.mwt:MwT",
    "concern": "jaxmod.approaches.concern:Concern",
    "rnn": "jaxmod.approaches.rnn:RnnDecomposition",
    "supermask": "jaxmod.approaches.supermask:Supermask",
    "random": "jaxmod.approaches.random:RandomControl",
}


def _factory(name: str) -> Callable[..., Approach]:
    factory = _APPROACHES[name]
    if isinstance(factory, str):
        module, attribute = factory.split(":")
        factory = _APPROACHES[name] = getattr(importlib.import_module(module), attribute)
    return factory


def register_approach(name: str, factory: Callable[..., Approach]) -> None:
    """Make ``factory(**options)`` available as ``create_approach(name, ...)``."""
    _APPROACHES[name] = factory


def approach_class(name: str) -> Callable[..., Approach]:
    """The factory (the approach's config dataclass) registered as ``name``."""
    if name not in _APPROACHES:
        raise ValueError(f"unknown approach {name!r}; available: {', '.join(available_approaches())}")
    return _factory(name)


def available_approaches() -> tuple[str, ...]:
    return tuple(sorted(_APPROACHES))


def create_approach(name: str, **options: Any) -> Approach:
    """Build an approach by name; ``ValueError`` for an unknown name or option."""
    if name not in _APPROACHES:
        raise ValueError(f"unknown approach {name!r}; available: {', '.join(available_approaches())}")
    try:
        return _factory(name)(**options)
    except TypeError as err:
        raise ValueError(f"bad options {options} for approach {name!r}: {err}") from err


__all__ = ["Approach", "Decomposition", "Moda", "approach_class", "available_approaches", "create_approach",
           "register_approach", "threshold_with_floor"]

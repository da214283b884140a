"""A zoo model's random variables, initialised under one quick ``jit`` compile instead of op by op.

Eager ``model.init`` on XLA:CPU compiles every op on its own (tens of seconds for a ResNet or MobileNet); one jitted
init compiled at a low optimisation level takes a second or two. The values equal the eager ones for most models and
differ by about an ULP for some (MwT mask generators, recurrent embeddings): use it only where the variables are
random weights that test mechanics, never where a test pins numbers or compares with the library's own init.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

QUICK_COMPILE = {"xla_backend_optimization_level": 1}


@functools.cache
def _jitted_init(model: Any, kwargs: tuple[tuple[str, Any], ...]) -> Any:
    return jax.jit(lambda key, x: model.init(key, x, **dict(kwargs)), compiler_options=QUICK_COMPILE)


def fast_init(model: Any, key: jax.Array, x: Any, **kwargs: Any) -> Any:
    """``model.init(key, x, **kwargs)`` through one jitted function per (model, kwargs) (compiled once per input shape
    and key type)."""
    return _jitted_init(model, tuple(sorted(kwargs.items())))(key, x)

"""Analytic FLOP counting from a jaxpr (never wall time or XLA cost analysis: hardware independent and
reproducible)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Jaxpr

# Primitives counted as one FLOP per output element with include_elementwise.
_ELEMENTWISE_PRIMS = frozenset(
    {
        "add", "add_any", "sub", "mul", "div", "rem", "pow", "integer_pow",
        "neg", "sign", "abs", "max", "min", "clamp", "square", "sqrt", "rsqrt",
        "cbrt", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic",
        "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh",
        "asinh", "acosh", "atanh", "erf", "erfc", "erf_inv", "lgamma",
        "digamma", "floor", "ceil", "round", "nextafter",
    }
)  # fmt: skip
# Reductions/scans counted as one FLOP per *input* element with include_elementwise.
_REDUCTION_PRIMS = frozenset(
    {
        "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax",
        "argmin", "cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp",
        "reduce_precision",
    }
)  # fmt: skip


def _size(var: Any) -> int:
    return math.prod(int(d) for d in var.aval.shape)


def _dot_general_macs(eqn: Any) -> int:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    contract = math.prod(int(lhs_shape[d]) for d in lhs_contract)
    return _size(eqn.outvars[0]) * contract


def _conv_macs(eqn: Any) -> int:
    # ConvDimensionNumbers: rhs_spec = (out_feature_dim, in_feature_dim, *spatial).
    # The rhs in-feature dim is already in_features / feature_group_count, and
    # with batch_group_count each output element still sums over exactly one
    # kernel window x rhs in-features, so this formula covers both groupings.
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec
    rhs_shape = eqn.invars[1].aval.shape
    in_feat = int(rhs_shape[rhs_spec[1]])
    window = math.prod(int(rhs_shape[d]) for d in rhs_spec[2:])
    return _size(eqn.outvars[0]) * window * in_feat


def _sub_jaxprs(params: Mapping[str, Any]) -> Iterator[Jaxpr]:
    """Every Jaxpr found in an equation's params (directly or in tuples)."""
    for value in params.values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, Jaxpr):
                yield item


def _jaxpr_counts(jaxpr: Jaxpr, include_elementwise: bool) -> int:
    """Recursively count FLOPs: 2 per dot/conv MAC, plus optional elementwise ops."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += 2 * _dot_general_macs(eqn)
        elif name == "conv_general_dilated":
            total += 2 * _conv_macs(eqn)
        elif name == "scan":
            body = eqn.params["jaxpr"].jaxpr
            total += int(eqn.params["length"]) * _jaxpr_counts(body, include_elementwise)
        elif name == "cond":
            total += max(
                (_jaxpr_counts(b.jaxpr, include_elementwise) for b in eqn.params["branches"]),
                default=0,
            )
        elif name == "while":
            # Trip count is data dependent: body and cond are counted once.
            total += _jaxpr_counts(eqn.params["body_jaxpr"].jaxpr, include_elementwise)
            total += _jaxpr_counts(eqn.params["cond_jaxpr"].jaxpr, include_elementwise)
        elif include_elementwise and name in _ELEMENTWISE_PRIMS:
            total += sum(_size(v) for v in eqn.outvars)
        elif include_elementwise and name in _REDUCTION_PRIMS:
            total += _size(eqn.invars[0])
        else:
            # jit/pjit, closed_call, custom_jvp_call, custom_vjp_call, remat,
            # shard_map, ...: the primal computation is the sub-jaxpr(s).
            total += sum(_jaxpr_counts(j, include_elementwise) for j in _sub_jaxprs(eqn.params))
    return total


def jaxpr_flops(jaxpr: Jaxpr | ClosedJaxpr, *, include_elementwise: bool = False) -> int:
    """FLOPs of an already-traced (closed) jaxpr; see :func:`count_flops`."""
    if isinstance(jaxpr, ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    if not isinstance(jaxpr, Jaxpr):
        raise TypeError(f"expected a Jaxpr or ClosedJaxpr, got {type(jaxpr).__name__}")
    return _jaxpr_counts(jaxpr, include_elementwise)


def count_flops(fn: Callable[..., Any], *args: Any, include_elementwise: bool = False, **kwargs: Any) -> int:
    """Analytic FLOPs of one call ``fn(*args, **kwargs)``, read from its jaxpr.

    Counts ``2 * MACs`` of ``dot_general`` (output elements x contracted size)
    and ``conv_general_dilated`` (output elements x kernel window x kernel
    in-features per group), the convention of the modularization literature,
    so numbers are exact, hardware independent and cheap (tracing only; no
    compilation or execution).  With ``include_elementwise=True`` arithmetic
    and transcendental elementwise ops add 1 per output element and reductions
    1 per input element (comparisons, selects and data movement stay free).

    Sub-jaxprs are walked recursively: ``jit``/``pjit``, ``custom_jvp_call``,
    ``custom_vjp_call`` (primal only), ``remat`` etc. are summed; ``scan``
    bodies are multiplied by ``length``; ``cond`` takes the most expensive
    branch; ``while`` body and condition are counted ONCE (the trip count is
    unknown statically).

    Positional ``args`` are traced (arrays or ``jax.ShapeDtypeStruct``);
    ``kwargs`` are bound statically with ``functools.partial`` so Python flags
    like ``train=False`` work.  ``fn`` cannot receive a keyword named
    ``include_elementwise`` this way (bind it with ``partial`` yourself).
    """
    closed = jax.make_jaxpr(partial(fn, **kwargs) if kwargs else fn)(*args)
    return jaxpr_flops(closed, include_elementwise=include_elementwise)


def count_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Multiply-accumulates of dot/conv ops in one call (``count_flops // 2``)."""
    return count_flops(fn, *args, include_elementwise=False, **kwargs) // 2



def forward_flops(model: Any, variables: Mapping[str, Any], input_shape: Sequence[int]) -> int:
    """FLOPs of one eval-mode forward pass on a single input, counted from the jaxpr of the plain convolutions
    (the fast formulations of :mod:`jaxmod.fastconv` compute the same sums; a depthwise shifted sum would count as
    elementwise work)."""
    from jaxmod.fastconv import reference_convs  # metrics stay importable without the layers

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    with reference_convs():
        return count_flops(lambda v, xb: model.apply(v, xb), variables, x)

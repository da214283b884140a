"""Convolutions that XLA:CPU runs fast: a drop-in for ``lax.conv_general_dilated`` chosen by shape.

Why: with jax 0.10 on CPU, XLA lowers most 2-D convolutions (and every dot) to a fast library
kernel, but a 3x3 convolution on a map no larger than its kernel's reach (e.g. 2x2 with padding 1,
VGG16's last stage) is rewritten into a kernel-as-input convolution that runs on a generic loop,
60-100x slower than the same arithmetic as one matrix product. This module computes such
convolutions as im2col + ``dot_general`` (exactly the same sum, in another order) and leaves
every other convolution to ``lax.conv_general_dilated``, so models on larger maps (LeNet-5) keep
their numerics bit for bit.

* :func:`conv_general_dilated` has ``lax.conv_general_dilated``'s signature; it takes the matmul
  path only when :func:`prefers_matmul` says so, otherwise calls lax unchanged.
* :class:`Conv` is ``flax.linen.Conv`` with that function plugged in (same fields, same parameter
  tree): the zoo models use it.
* :func:`fast_convs` / :func:`intercept_convs` give a user's own linen model the same path
  without editing it, by intercepting ``nn.Conv.__call__`` while the model is traced.

The im2col form keeps every kernel tap (zero padding included), so its ``dot_general`` has as many
multiply-adds as the convolution and :func:`jaxmod.metrics.count_flops` reports the same FLOPs.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# A convolution takes the matmul path when its output map has at most this many positions and its
# padded input is no larger than the kernel's reach plus one stride on each side, the shapes where XLA
# swaps the convolution's operands (see module docstring). Measured in
# experiments/results/speed/README.md.
MAX_MATMUL_POSITIONS = 4

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _pairs(value: int | Sequence[int] | None, n: int, default: int = 1) -> tuple[int, ...]:
    if value is None:
        return (default,) * n
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value)


def explicit_padding(padding: str | Sequence[tuple[int, int]], in_hw: Sequence[int], kernel_hw: Sequence[int],
                     strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``padding`` as (low, high) pairs per spatial axis: ``'SAME'``/``'VALID'`` resolved as lax does."""
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(tuple(in_hw), tuple(kernel_hw), tuple(strides), padding))
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != len(in_hw):
        raise ValueError(f"padding has {len(pads)} pairs for {len(in_hw)} spatial axes: {padding}")
    return pads


def output_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
    """Output length of a convolution along one axis."""
    return (size + pad[0] + pad[1] - kernel) // stride + 1


def prefers_matmul(in_hw: Sequence[int], kernel_hw: Sequence[int], strides: Sequence[int],
                   pads: Sequence[tuple[int, int]]) -> bool:
    """Whether a 2-D convolution of these spatial shapes should be an im2col matmul on XLA:CPU.

    True for the small-map shapes where XLA's own lowering is pathologically slow: an output map of at
    most :data:`MAX_MATMUL_POSITIONS` positions from a kernel wider than one pixel. 1x1 kernels are
    plain matmuls already and larger maps are fast in XLA (and keep their numerics).
    """
    if len(in_hw) != 2 or max(kernel_hw) <= 1:
        return False
    out = [output_size(n, k, s, p) for n, k, s, p in zip(in_hw, kernel_hw, strides, pads, strict=True)]
    return min(out) >= 1 and out[0] * out[1] <= MAX_MATMUL_POSITIONS


def shifted_inputs(x: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int],
                   pads: Sequence[tuple[int, int]]) -> list[jax.Array]:
    """The input each kernel tap sees, ``(B, H', W', C)`` per tap in row-major tap order."""
    kh, kw = kernel_hw
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    oh = output_size(x.shape[1], kh, sh, pads[0])
    ow = output_size(x.shape[2], kw, sw, pads[1])
    return [
        lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, xp.shape[3]),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)
    ]


def im2col(x: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int],
           pads: Sequence[tuple[int, int]]) -> jax.Array:
    """``(B, H, W, C) -> (B, H', W', kh * kw, C)``: every kernel tap's input, zero padding included."""
    return jnp.stack(shifted_inputs(x, kernel_hw, strides, pads), axis=3)


def conv_matmul(x: jax.Array, kernel: jax.Array, strides: Sequence[int], pads: Sequence[tuple[int, int]],
                feature_group_count: int = 1, precision: Any = None,
                preferred_element_type: Any = None) -> jax.Array:
    """NHWC x HWIO convolution as im2col + one ``dot_general`` (groups as a batch dimension).

    The same multiply-adds as ``lax.conv_general_dilated`` (padding taps included), summed in another
    order: equal up to float rounding.
    """
    kh, kw, cin_g, cout = kernel.shape
    g = feature_group_count
    if x.shape[-1] != cin_g * g or cout % g:
        raise ValueError(f"input channels {x.shape[-1]} and kernel {kernel.shape} do not fit {g} groups")
    patches = im2col(x, (kh, kw), strides, pads)  # (B, H', W', K, C)
    b, oh, ow, k, _ = patches.shape
    if g == 1:
        out = lax.dot_general(patches.reshape(b * oh * ow, k * cin_g), kernel.reshape(k * cin_g, cout),
                              (((1,), (0,)), ((), ())), precision=precision,
                              preferred_element_type=preferred_element_type)
        return out.reshape(b, oh, ow, cout)
    lhs = patches.reshape(b * oh * ow, k, g, cin_g)
    rhs = kernel.reshape(k, cin_g, g, cout // g)
    # batch over groups: (G, N, Cout/G), contracting the taps and each group's input channels
    out = lax.dot_general(lhs, rhs, (((1, 3), (0, 1)), ((2,), (2,))), precision=precision,
                          preferred_element_type=preferred_element_type)
    return jnp.moveaxis(out, 0, 1).reshape(b, oh, ow, cout)


def conv_depthwise(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                   pads: Sequence[tuple[int, int]]) -> jax.Array:
    """Depthwise NHWC convolution (kernel ``(kh, kw, 1, C * m)``) as a sum of shifted, scaled inputs.

    One fused elementwise loop instead of XLA:CPU's slow grouped convolution; equal to it up to float
    rounding. Output channel ``c * m + r`` reads input channel ``c``, as in ``lax.conv_general_dilated``.
    """
    kh, kw, one, cout = kernel.shape
    cin = x.shape[-1]
    if one != 1 or cout % cin:
        raise ValueError(f"kernel {kernel.shape} is not depthwise for {cin} input channels")
    if cout != cin:
        x = jnp.repeat(x, cout // cin, axis=-1)
    taps = shifted_inputs(x, (kh, kw), strides, pads)
    weights = kernel.reshape(kh * kw, cout)
    return functools.reduce(jnp.add, [tap * weights[t] for t, tap in enumerate(taps)])


def _is_nhwc(lhs_shape: Sequence[int], rhs_shape: Sequence[int], dimension_numbers: Any) -> bool:
    if len(lhs_shape) != 4:
        return False
    dn = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)
    return tuple(dn) == tuple(_NHWC)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_general_dilated``, computed as an im2col matmul where XLA:CPU is slow.

    The matmul path covers 2-D NHWC/HWIO convolutions without dilation or batch groups on the
    shapes :func:`prefers_matmul` selects; everything else goes to lax unchanged.
    """
    lax_call = functools.partial(
        lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision, preferred_element_type=preferred_element_type)
    if (not _STATE.enabled or batch_group_count != 1 or any(d != 1 for d in _pairs(lhs_dilation, 2))
            or any(d != 1 for d in _pairs(rhs_dilation, 2)) or not _is_nhwc(lhs.shape, rhs.shape, dimension_numbers)):
        return lax_call()
    strides = _pairs(window_strides, 2)
    kernel_hw = rhs.shape[:2]
    pads = explicit_padding(padding, lhs.shape[1:3], kernel_hw, strides)
    path = conv_path(lhs.shape, rhs.shape, strides, pads, feature_group_count)
    if path == "depthwise" and preferred_element_type is None:
        return conv_depthwise(lhs, rhs, strides, pads)
    if path == "matmul":
        return conv_matmul(lhs, rhs, strides, pads, feature_group_count, precision, preferred_element_type)
    return lax_call()


def conv_path(lhs_shape: Sequence[int], rhs_shape: Sequence[int], strides: Sequence[int],
              pads: Sequence[tuple[int, int]], feature_group_count: int = 1) -> str:
    """Which formulation an NHWC/HWIO convolution takes: ``"lax"``, ``"matmul"`` or ``"depthwise"``.

    Depthwise convolutions (one input channel per group) with a kernel wider than one pixel take the
    shifted sum everywhere: XLA:CPU's grouped convolution is 10-50x slower than it on every map size
    the zoo has. Other convolutions take the im2col matmul where :func:`prefers_matmul` says so.
    """
    kernel_hw = tuple(rhs_shape[:2])
    if (feature_group_count > 1 and feature_group_count == lhs_shape[-1] and rhs_shape[2] == 1
            and max(kernel_hw) > 1):
        return "depthwise"
    if prefers_matmul(lhs_shape[1:3], kernel_hw, strides, pads):
        return "matmul"
    return "lax"


class _State(threading.local):
    enabled: bool = True


_STATE = _State()


@contextlib.contextmanager
def reference_convs() -> Iterator[None]:
    """While active (at trace time), :func:`conv_general_dilated` is plain ``lax.conv_general_dilated``.

    For checking the fast path against XLA's own numerics, or reproducing figures computed before it.
    """
    previous, _STATE.enabled = _STATE.enabled, False
    try:
        yield
    finally:
        _STATE.enabled = previous


class Conv(nn.Conv):
    """``flax.linen.Conv`` computing small-map convolutions as matmuls (see :func:`conv_general_dilated`).

    Same fields, parameters and initialisation as ``nn.Conv``; a checkpoint of one loads in the other.
    """

    conv_general_dilated: Callable[..., jax.Array] | None = conv_general_dilated


def _conv_interceptor(next_fun: Callable, args: tuple, kwargs: dict, context: nn.module.InterceptorContext) -> Any:
    module = context.module
    if (context.method_name != "__call__" or not isinstance(module, nn.Conv)
            or module.conv_general_dilated is not None or module.conv_general_dilated_cls is not None):
        return next_fun(*args, **kwargs)
    object.__setattr__(module, "conv_general_dilated", conv_general_dilated)
    try:
        return next_fun(*args, **kwargs)
    finally:
        object.__setattr__(module, "conv_general_dilated", None)


@contextlib.contextmanager
def intercept_convs() -> Iterator[None]:
    """While active, every plain ``nn.Conv`` traced takes :func:`conv_general_dilated`.

    It acts at trace time: enter it inside the function that ``jax.jit`` traces (or use
    :func:`fast_convs`), since a jitted function traced outside it keeps its compiled form.
    Convs that set their own ``conv_general_dilated`` are left alone; parameters are unchanged.
    """
    with nn.intercept_methods(_conv_interceptor):
        yield


def fast_convs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run under :func:`intercept_convs`; wrap what you jit, e.g. ``jax.jit(fast_convs(step))``."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with intercept_convs():
            return fn(*args, **kwargs)

    return wrapped

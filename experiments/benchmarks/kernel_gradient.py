"""Is a convolution's kernel gradient faster as one im2col matmul on XLA:CPU? (issue 20; writes JSON)

    python -m experiments.benchmarks.kernel_gradient --out=experiments/results/speed/kernel_gradient.json

For each zoo conv shape (batch 128), the jitted forward + input and kernel gradients of ``sum(conv(x, w) * g)`` two
ways, interleaved, medians: XLA's own (``lax.conv_general_dilated`` and its transpose rules), and a ``custom_vjp``
that keeps lax's forward and input gradient but computes the kernel gradient as ``patches^T @ dy`` (the im2col matrix
of :func:`jaxmod.fastconv.im2col`). Also the kernel gradients' largest relative difference.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax

from experiments.common import write_text
from jaxmod import fastconv

flags.DEFINE_string("out", "experiments/results/speed/kernel_gradient.json", "Where the JSON goes.")
flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds (medians).")
FLAGS = flags.FLAGS

DN = ("NHWC", "HWIO", "NHWC")
# (map size, input channels, output channels, kernel, padding): LeNet-5's two convs, ResNet-20's, VGG16's
SHAPES = ((28, 1, 6, 5, 2), (14, 6, 16, 5, 0), (32, 16, 16, 3, 1), (32, 64, 64, 3, 1), (16, 128, 128, 3, 1),
          (8, 256, 256, 3, 1), (4, 512, 512, 3, 1))


def lax_conv(x: jax.Array, w: jax.Array, pad: int) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=DN)


def kernel_grad_matmul(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int], pad: int) -> jax.Array:
    """``d sum(conv * dy) / d kernel`` as one matmul of the im2col patches with ``dy``."""
    patches = fastconv.im2col(x, kernel_hw, (1, 1), ((pad, pad), (pad, pad)))  # (B, H', W', K, C)
    k, c = patches.shape[-2:]
    out = lax.dot_general(patches.reshape(-1, k * c), dy.reshape(-1, dy.shape[-1]), (((0,), (0,)), ((), ())))
    return out.reshape(*kernel_hw, c, dy.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_matmul_kernel_grad(x: jax.Array, w: jax.Array, pad: int) -> jax.Array:
    return lax_conv(x, w, pad)


def _forward(x, w, pad):
    return lax_conv(x, w, pad), (x, w)


def _backward(pad, residuals, dy):
    x, w = residuals
    _, input_vjp = jax.vjp(lambda xx: lax_conv(xx, w, pad), x)
    return input_vjp(dy)[0], kernel_grad_matmul(x, dy, w.shape[:2], pad)


conv_matmul_kernel_grad.defvjp(_forward, _backward)


def gradients(conv):
    return jax.jit(jax.grad(lambda x, w, g: jnp.sum(conv(x, w) * g), argnums=(0, 1)))


def timed_ms(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return 1000 * (time.perf_counter() - start)


def main(argv: list[str]) -> None:
    del argv
    rows = []
    for size, cin, cout, k, pad in SHAPES:
        kx, kw, kg = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (128, size, size, cin))
        w = 0.1 * jax.random.normal(kw, (k, k, cin, cout))
        g = jax.random.normal(kg, lax_conv(x, w, pad).shape)
        fns = {"lax": gradients(lambda x, w, pad=pad: lax_conv(x, w, pad)),
               "matmul_kernel_grad": gradients(lambda x, w, pad=pad: conv_matmul_kernel_grad(x, w, pad))}
        grads = {name: fn(x, w, g) for name, fn in fns.items()}  # compiled here, outside the timing
        times = {name: [] for name in fns}
        for _ in range(FLAGS.rounds):
            for name, fn in fns.items():
                times[name].append(timed_ms(fn, x, w, g))
        ref = grads["lax"][1]
        row = {"shape": f"{size}x{size}x{cin}->{cout} k{k} pad{pad}", "batch": 128,
               **{f"{name}_ms": float(np.median(t)) for name, t in times.items()},
               "kernel_grad_max_rel_diff": float(jnp.max(jnp.abs(grads["matmul_kernel_grad"][1] - ref))
                                                 / jnp.max(jnp.abs(ref)))}
        row["matmul_over_lax"] = row["matmul_kernel_grad_ms"] / row["lax_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"load_average": list(os.getloadavg()), "backend": jax.default_backend(), "jax": jax.__version__,
           "rows": rows}
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    write_text(FLAGS.out, json.dumps(out, indent=1))


if __name__ == "__main__":
    app.run(main)

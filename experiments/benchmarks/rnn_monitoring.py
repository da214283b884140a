r"""Monitoring + statistics of the RNN decomposition: our jitted scan over all samples and the vectorised
statistics against the straightforward per-sample loop of the same computation, on the same real samples
(fortunes, LSTM, 32 units, 30 steps), in one run; writes JSON.

    python -m experiments.benchmarks.rnn_monitoring --samples=500 --output=experiments/results/rnn/monitoring.json

Both paths compute, per class, the outlier-trimmed mean of |h| of every unit over the (sample, step)
observations of that class's samples (rolled, Algorithm 1's statistic). The loop is the honest
straightforward version: one jitted forward per sample (batch of one) collecting its hidden states, then
per class the same vectorised statistic over the observations gathered. Ours: ``monitor`` (one jitted
``lax.map`` of the scan over stacked batches, hidden states only) and ``class_statistics`` (every unit and
class at once). Both must give the same statistics (checked). Monitoring and statistics are timed apart.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from experiments.common import write_json_atomic
from jaxmod.approaches.rnn import class_statistics, mean_minus_outliers, monitor
from jaxmod.data.text import load_sequence_dataset
from jaxmod.models import create_model
from jaxmod.taps import ACTIVATIONS

FLAGS = flags.FLAGS
flags.DEFINE_integer("samples", 500, "Samples monitored.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (the best is reported).")
flags.DEFINE_string("output", "experiments/results/rnn/monitoring.json", "JSON output.")


def best_of(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls after one warm-up call (compilation excluded)."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main(argv: list[str]) -> None:
    del argv
    ds = load_sequence_dataset("fortunes", max_input_len=30)
    x, y = ds.train.x[: FLAGS.samples], ds.train.y[: FLAGS.samples]
    model = create_model("rnn_lstm", ds.num_classes, units=32, vocab_size=len(ds.input_vocab), input_len=30)
    variables = model.init(jax.random.key(0), x[:1])
    steps = model.step_valid(x)["rnn1_h"]  # (N, T): padded steps are not observations
    selection = (y[None, :, None] == np.arange(ds.num_classes)[:, None, None]) & steps[None]  # (C, N, T)

    def our_monitoring():
        return monitor(model, variables, x, with_gates=False)[0]["rnn1_h"]

    def our_statistics(h):
        return class_statistics(h, selection, rolled=True, kind="logistic")

    forward = jax.jit(lambda v, xb: model.apply(v, xb, mutable=[ACTIVATIONS])[1][ACTIVATIONS]["rnn1_h"])

    def loop_monitoring():
        return np.stack([np.asarray(forward(variables, xi[None]))[0] for xi in x])  # one forward per sample

    def loop_statistics(h):
        out = []
        for c in range(ds.num_classes):  # per class: its observations, then the statistic for every unit
            obs = np.abs(h[selection[c]])  # (observations, U)
            out.append(mean_minus_outliers(obs, np.ones((1, 1), bool), 0))
        return np.stack(out)

    mon_s, hidden = best_of(our_monitoring, FLAGS.repeats)
    stat_s, fast = best_of(lambda: our_statistics(hidden), FLAGS.repeats)
    loop_mon_s, loop_hidden = best_of(loop_monitoring, FLAGS.repeats)
    loop_stat_s, slow = best_of(lambda: loop_statistics(loop_hidden), FLAGS.repeats)
    np.testing.assert_allclose(hidden, loop_hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-5)
    ours, loop = mon_s + stat_s, loop_mon_s + loop_stat_s
    result = {"samples": len(x), "timesteps": 30, "units": 32, "classes": ds.num_classes, "cell": "lstm",
              "vectorised_seconds": ours, "vectorised_monitoring_seconds": mon_s,
              "vectorised_statistics_seconds": stat_s, "loop_seconds": loop, "loop_monitoring_seconds": loop_mon_s,
              "loop_statistics_seconds": loop_stat_s, "speedup": loop / ours,
              "monitoring_speedup": loop_mon_s / mon_s,
              "max_abs_difference": float(np.nanmax(np.abs(fast - slow))), "backend": jax.default_backend(),
              "timing": f"best of {FLAGS.repeats} after a warm-up call"}
    write_json_atomic(FLAGS.output, result)
    print(result)


if __name__ == "__main__":
    app.run(main)

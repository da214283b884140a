r"""Monitoring + statistics of the RNN decomposition at the scale a decomposition really monitors: our jitted
scan over all samples and the vectorised statistics against the straightforward per-sample loop of the same
computation, on the same real samples, in one run; writes JSON.

    python -m experiments.benchmarks.rnn_monitoring --num_positive=500 --output=experiments/results/rnn/monitoring.json

The samples are what ``RnnDecomposition.decompose`` monitors (Algorithm 1's sampling, the paper's counts):
for every class of fortunes (10 classes, 30 steps) its first ``num_positive`` training samples (positives)
and ``num_positive // 9`` of every other class (negatives), about 4,800 distinct samples with the default
500. The statistic is Algorithm 1's (rolled): per class, the outlier-trimmed mean of ``|h|`` of every unit
over the (sample, step) observations of its positives, and the same over its negatives.

- **Ours**: ``monitor`` (one jitted ``lax.map`` of the scan over stacked batches, hidden states only) and
  ``class_statistics`` (per class one gather, then every unit at once with linear-time partitions).
- **Loop** (the honest straightforward version): one jitted forward per sample (a batch of one; compiled
  once, so only the per-sample dispatch and the small-batch compute differ), collecting its hidden states;
  then per class the observations of its positives (negatives) gathered and the library's general
  ``mean_minus_outliers`` applied to every unit at once (vectorised over units, not a per-unit loop). The
  headline ``speedup`` is against this loop. For reference the JSON also gives the loop with the authors' own
  structure for the statistic, one ``mean_minus_outliers`` call per (class, unit)
  (``speedup_against_per_unit_statistics``); it is not the headline figure.

Both must give the same statistics (checked). Monitoring and statistics are timed apart, best of
``--repeats`` after a warm-up call (compilation excluded on both sides).
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from experiments.common import write_json_atomic
from jaxmod.approaches.rnn import class_statistics, mean_minus_outliers, monitor, sample_weights
from jaxmod.data.text import load_sequence_dataset
from jaxmod.models import create_model, zoo_module
from jaxmod.taps import ACTIVATIONS

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_positive", 500, "Positives per class (the paper's 500); negatives num_positive // (C-1).")
flags.DEFINE_integer("monitor_batch", 256, "Batch size of our monitoring pass.")
flags.DEFINE_integer("units", 32, "LSTM units.")
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
    if FLAGS.num_positive < 1 or FLAGS.monitor_batch < 1 or FLAGS.units < 1 or FLAGS.repeats < 1:
        raise ValueError("--num_positive, --monitor_batch, --units and --repeats must be >= 1")
    ds = load_sequence_dataset("fortunes", max_input_len=30)
    c = ds.num_classes
    positive, negative = sample_weights(ds.train.y, np.ones(len(ds.train.y), bool), c, FLAGS.num_positive)
    pool = np.flatnonzero((positive | negative).any(axis=0))  # the samples a decomposition monitors
    x = ds.train.x[pool]
    model = create_model("rnn_lstm", c, units=FLAGS.units, vocab_size=len(ds.input_vocab), input_len=30)
    variables = model.init(jax.random.key(0), x[:1])
    steps = zoo_module(model).step_valid(x)["rnn1_h"]  # (N, T): padded steps are not observations
    selections = {"positive": positive[:, pool, None] & steps[None], "negative": negative[:, pool, None] & steps[None]}

    def our_monitoring():
        return monitor(model, variables, x, FLAGS.monitor_batch, with_gates=False)[0]["rnn1_h"]

    def our_statistics(h):
        return np.stack([class_statistics(h, sel, rolled=True, kind="logistic") for sel in selections.values()])

    forward = jax.jit(lambda v, xb: model.apply(v, xb, mutable=[ACTIVATIONS])[1][ACTIVATIONS]["rnn1_h"])

    def loop_monitoring():
        return np.stack([np.asarray(forward(variables, xi[None]))[0] for xi in x])  # one forward per sample

    def loop_statistics(h):
        out = []
        for sel in selections.values():
            for k in range(c):  # per class: its observations, then the statistic of every unit
                obs = np.abs(h[sel[k]])  # (observations, U)
                out.append(mean_minus_outliers(obs, np.ones((1, 1), bool), 0))
        return np.stack(out).reshape(len(selections), c, -1)

    def loop_statistics_per_unit(h):
        out = np.empty((len(selections), c, h.shape[-1]), np.float32)
        for i, sel in enumerate(selections.values()):
            for k in range(c):
                obs = np.abs(h[sel[k]])
                for unit in range(h.shape[-1]):  # the authors' structure: one statistic call per node
                    out[i, k, unit] = mean_minus_outliers(obs[:, unit], np.ones(1, bool), 0)
        return out

    mon_s, hidden = best_of(our_monitoring, FLAGS.repeats)
    stat_s, fast = best_of(lambda: our_statistics(hidden), FLAGS.repeats)
    loop_mon_s, loop_hidden = best_of(loop_monitoring, FLAGS.repeats)
    loop_stat_s, slow = best_of(lambda: loop_statistics(loop_hidden), FLAGS.repeats)
    unit_stat_s, per_unit = best_of(lambda: loop_statistics_per_unit(loop_hidden), 1)
    np.testing.assert_allclose(per_unit, slow, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hidden, loop_hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-5)
    ours, loop = mon_s + stat_s, loop_mon_s + loop_stat_s
    observations = {k: int(v.sum()) for k, v in selections.items()}
    result = {"dataset": "fortunes (train split)", "samples": len(x), "num_positive": FLAGS.num_positive,
              "observations": observations, "timesteps": 30, "units": FLAGS.units, "classes": c, "cell": "lstm",
              "monitor_batch": FLAGS.monitor_batch,
              "vectorised_seconds": ours, "vectorised_monitoring_seconds": mon_s,
              "vectorised_statistics_seconds": stat_s, "loop_seconds": loop, "loop_monitoring_seconds": loop_mon_s,
              "loop_statistics_seconds": loop_stat_s, "speedup": loop / ours,
              "monitoring_speedup": loop_mon_s / mon_s, "statistics_speedup": loop_stat_s / stat_s,
              "loop_seconds_per_sample_forward": loop_mon_s / len(x), "our_seconds_per_sample_forward": mon_s / len(x),
              "loop_per_unit_statistics_seconds": unit_stat_s,
              "speedup_against_per_unit_statistics": (loop_mon_s + unit_stat_s) / ours,
              "max_abs_difference": float(np.nanmax(np.abs(fast - slow))), "backend": jax.default_backend(),
              "timing": f"best of {FLAGS.repeats} after a warm-up call"}
    write_json_atomic(FLAGS.output, result)
    print(result)


if __name__ == "__main__":
    app.run(main)

r"""bfloat16 against float32: LeNet-5 on MNIST, standard and MODA training, same seed and budget.

    python -m experiments.precision --workdir=runs/precision --out=experiments/results/precision

Each of the four runs (loss x compute dtype) trains with float32 parameters and optimizer state; the bfloat16
runs compute the forward and backward pass in bfloat16 (``TrainConfig.compute_dtype``). Reported: test accuracy,
the MODA decomposition's mean module size and mean Jaccard (decomposed in float32 from each trained model), and
the median train-step time of bf16 over f32, the two steps timed in interleaved rounds on one batch.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import app, flags

from experiments.common import start_program, write_json_atomic, write_text
from jaxmod import data, metrics, models, report, train
from jaxmod.approaches import create_approach
from jaxmod.losses import cross_entropy_loss

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where the four trained models are checkpointed (resumable).")
flags.DEFINE_string("out", "experiments/results/precision", "Output directory (README.md and precision.json).")
flags.DEFINE_integer("epochs", 3, "Training epochs of every run.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_integer("timing_rounds", 5, "Interleaved rounds of step timing (each times 10 steps of each dtype).")

DTYPES = ("float32", "bfloat16")


def step_ratio(model: Any, dataset: data.Dataset, loss_fn: Any, config: train.TrainConfig) -> dict[str, float]:
    """Median train-step milliseconds per dtype, interleaved in rounds on one batch, and their ratio."""
    optimizer = train.make_optimizer(config, len(dataset.train.x) // config.batch_size)
    x, y = dataset.train.x[: config.batch_size], dataset.train.y[: config.batch_size]
    state = train.init_state(model, x, optimizer, config.seed)
    steps = {dt: train.make_train_step(model, optimizer, loss_fn, compute_dtype=dt) for dt in DTYPES}
    times: dict[str, list[float]] = {dt: [] for dt in DTYPES}
    for _ in range(FLAGS.timing_rounds):
        for dt, step in steps.items():
            times[dt].append(train.benchmark_step(step, state, x, y, repeats=10, warmup=2))
    median = {dt: sorted(t)[len(t) // 2] for dt, t in times.items()}
    return {"f32_step_ms": median["float32"], "bf16_step_ms": median["bfloat16"],
            "bf16_over_f32": median["bfloat16"] / median["float32"]}


def main(argv: list[str]) -> None:
    start_program(argv, FLAGS.workdir)
    dataset = data.load_dataset("mnist", seed=FLAGS.seed)
    model = models.create_model("lenet5", dataset.num_classes)
    moda = create_approach("moda")
    losses = {"standard": (cross_entropy_loss(), {"loss": "cross_entropy"}),
              "moda": (moda.training_loss(), {"loss": "moda", **moda.training_config()})}
    rows = []
    for name, (loss_fn, identity) in losses.items():
        by_dtype = {}
        for dtype in DTYPES:
            config = train.TrainConfig(epochs=FLAGS.epochs, seed=FLAGS.seed, compute_dtype=dtype)
            state, history = train.fit(model, dataset, loss_fn, config, os.path.join(FLAGS.workdir, f"{name}_{dtype}"),
                                       progress=False, description=f"{name} {dtype}",
                                       run_info={"model": "lenet5", "dataset": "mnist", **identity})
            variables = state.variables()
            accuracy = train.evaluate(model, variables, dataset.test.x, dataset.test.y)["top1"]
            modules = moda.decompose(model, variables, dataset.train.x, dataset.train.y, dataset.num_classes).modules
            sizes = metrics.module_statistics(modules, variables, model)
            by_dtype[dtype] = {"accuracy": accuracy, "mean_size": sizes["mean_size"],
                               "mean_jaccard": sizes["mean_jaccard"],
                               "epoch_seconds": sum(h["seconds"] for h in history) / len(history)}
        timing = step_ratio(model, dataset, loss_fn, train.TrainConfig(seed=FLAGS.seed))
        f32, bf16 = by_dtype["float32"], by_dtype["bfloat16"]
        rows.append({"training": name, "f32 accuracy": f32["accuracy"], "bf16 accuracy": bf16["accuracy"],
                     "accuracy change (points)": 100 * (bf16["accuracy"] - f32["accuracy"]),
                     "within 0.5 points": abs(bf16["accuracy"] - f32["accuracy"]) <= 0.005,
                     "f32 mean module size": f32["mean_size"], "bf16 mean module size": bf16["mean_size"],
                     "f32 mean Jaccard": f32["mean_jaccard"], "bf16 mean Jaccard": bf16["mean_jaccard"],
                     **timing})
    command = "python -m experiments.precision " + " ".join(sys.argv[1:])
    os.makedirs(FLAGS.out, exist_ok=True)
    write_json_atomic(os.path.join(FLAGS.out, "precision.json"), {"command": command, "epochs": FLAGS.epochs,
                                                                   "load": os.getloadavg()[0], "rows": rows})
    text = (f"# bfloat16 against float32 (LeNet-5, MNIST, {FLAGS.epochs} epochs)\n\nMade by `{command}` "
            f"(load average {os.getloadavg()[0]:.2f} at the end; step times interleaved in "
            f"{FLAGS.timing_rounds} rounds).\n\n" + report.markdown_table(rows, floatfmt=".4f") + "\n\n"
            + ("The bf16 step is slower on this CPU (no native bfloat16 matrix units: XLA converts around the "
               "matmuls); the option is for accelerators (GPU tensor cores, TPU).\n"
               if min(r["bf16_over_f32"] for r in rows) > 1 else "The bf16 step is not slower on this CPU.\n"))
    write_text(os.path.join(FLAGS.out, "README.md"), text)
    print(report.summary_table(rows, floatfmt=".4f"))


if __name__ == "__main__":
    app.run(main)

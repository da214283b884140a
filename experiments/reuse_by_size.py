r"""Reuse by sub-task size (MwT's Tables 5-7 layout): MODA and MwT modules composed for sub-tasks of 2..10 classes.

    python -m experiments.reuse_by_size --workdir=runs/reuse_by_size --out=experiments/results/reuse_by_size

For each model (LeNet-5 and vgg_narrow by default) on Fashion-MNIST, one standard model is trained and shared;
MODA and MwT train their modular models with the same budget (``experiments.pipeline``, each method's paper
defaults) and compose ``--per_size`` random sub-tasks of every size (seeded; the same sub-tasks for both
methods; size 10 is the one whole task). MwT is reported without fine-tuning (its modules as they are) and with
its paper's fine-tuned new head. Per size: mean and standard deviation of sub-task accuracy, the standard model
on the same classes, composed size (weights) and FLOPs against the full model, and MwT's KRR. Writes one Markdown
and CSV table per (model, method), ``reuse_by_size.json`` and a PNG per model (accuracy and size against sub-task
size). Runs are resumable: a finished run is read back.
"""

from __future__ import annotations

import importlib
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags

from experiments import pipeline
from experiments.common import define_model_run_flags, start_program, to_csv, write_json_atomic, write_text
from jaxmod import report

FLAGS = flags.FLAGS
define_model_run_flags("experiments/results/reuse_by_size", ["lenet5", "vgg_narrow"], "fashion_mnist", epochs=5,
                       train_limit=12000)
flags.DEFINE_integer("test_limit", 0, "Class-balanced test subset (0: the whole test split).")
flags.DEFINE_integer("per_size", 10, "Random sub-tasks per size.")

METHODS = ("moda", "mwt")
FIGURES = ("accuracy", "standard_accuracy", "composed_size", "composed_flops", "accuracy_no_finetune",
           "composed_size_no_finetune", "composed_flops_no_finetune", "krr")


def run_config(model: str, method: str) -> Any:
    """The pipeline config: the method's paper defaults, this program's budget and sub-tasks."""
    config = importlib.import_module(f"experiments.configs.{method}").get_config()
    config.model, config.dataset, config.seed = model, FLAGS.dataset, FLAGS.seed
    config.train.epochs, config.train_limit = FLAGS.epochs, FLAGS.train_limit or None
    config.test_limit = FLAGS.test_limit or None
    config.reuse.sizes, config.reuse.num_subtasks = ",".join(str(k) for k in range(2, 11)), FLAGS.per_size
    config.shared_standard_dir = os.path.join(FLAGS.workdir, model, "standard")
    config.timing_repeats, config.latency_repeats, config.progress = 0, 0, False
    if method == "mwt":
        config.extras.save_finetuned = False
    return config


def per_size(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of every figure over the sub-tasks of each size."""
    out = []
    for size in sorted({len(r["classes"]) for r in rows}):
        mine = [r for r in rows if len(r["classes"]) == size]
        row: dict[str, Any] = {"classes": size, "sub-tasks": len(mine)}
        for key in FIGURES:
            values = [r[key] for r in mine if key in r]
            if values:
                row[key] = statistics.fmean(values)
                row[f"{key} std"] = statistics.pstdev(values)
        out.append(row)
    return out


def main(argv: list[str]) -> None:
    start_program(argv, FLAGS.workdir)
    configs = {(m, a): run_config(m, a) for m in FLAGS.models for a in METHODS}
    for config in configs.values():  # every run's settings checked before the first trains
        pipeline.setup(config)
    command = "python -m experiments.reuse_by_size " + " ".join(sys.argv[1:])
    tables, payload = [], {"command": command, "runs": {}}
    for model in FLAGS.models:
        curves: dict[str, list[float]] = {}
        sizes: list[int] = []
        for method in METHODS:
            results = pipeline.run(configs[model, method], os.path.join(FLAGS.workdir, model, method))
            rows = per_size(results["reuse"]["subtasks"])
            payload["runs"][f"{model}/{method}"] = {"per_size": rows, "standard_accuracy":
                                                    results["standard"]["test_accuracy"],
                                                    "modular_accuracy": results["modular"]["test_accuracy"],
                                                    "module_size": results["modules"]["mean_size"]}
            stem = os.path.join(FLAGS.out, f"{model}_{FLAGS.dataset}_{method}")
            title = (f"# Reuse by sub-task size: {method.upper()} on {model}, {FLAGS.dataset}\n\n"
                     f"Made by `{command}`. "
                     f"Standard model {results['standard']['test_accuracy']:.4f}, modular model "
                     f"{results['modular']['test_accuracy']:.4f}, mean module size "
                     f"{results['modules']['mean_size']:.4f} (weights). Mean and std over the sub-tasks of each "
                     "size:\n\n")
            os.makedirs(FLAGS.out, exist_ok=True)
            write_text(stem + ".md", title + report.markdown_table(rows, floatfmt=".4f") + "\n")
            write_text(stem + ".csv", to_csv(rows))
            tables.append(stem + ".md")
            sizes = [r["classes"] for r in rows]
            curves[f"{method} accuracy"] = [r["accuracy"] for r in rows]
            if method == "mwt":
                curves["mwt accuracy, no fine-tuning"] = [r["accuracy_no_finetune"] for r in rows]
            curves[f"{method} composed size"] = [r.get("composed_size_no_finetune", r["composed_size"]) for r in rows]
        curves["standard model on the same classes"] = [r["standard_accuracy"] for r in
                                                        payload["runs"][f"{model}/moda"]["per_size"]]
        report.line_plot_png(sizes, curves, os.path.join(FLAGS.out, f"{model}_{FLAGS.dataset}.png"),
                             xlabel="classes in the sub-task", ylabel="accuracy / fraction of the model's weights",
                             title=f"reuse by sub-task size: {model}, {FLAGS.dataset}")
    write_json_atomic(os.path.join(FLAGS.out, "reuse_by_size.json"), payload)
    print("\n".join(tables))


if __name__ == "__main__":
    app.run(main)

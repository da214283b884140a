r"""MODA's claim at mid scale: small modules that compose back without losing accuracy, on vgg_narrow and resnet20.

    python -m experiments.moda_midscale --workdir=runs/moda_midscale --out=experiments/results/moda_midscale

Per model on Fashion-MNIST: the standard model, MODA (the paper's alpha 1, beta 1, gamma 0.3) and the compactness
ablation (gamma 0) train with the same seed and budget, one epoch at a time (resumable). After every epoch the
modular models are decomposed on the training subset (tau 0.9) and the ten modules merged are scored on the
validation split, so the curves show when modules become small and whether the merged model keeps up. At the end a
tau sweep is read on the validation split only (the smallest mean module size whose merged model loses at most one
point against the modular model there); the test split is scored once, at the chosen tau. Writes per-model curves
(PNG), ``moda_midscale.json`` and ``README.md``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import numpy as np
from absl import app, flags

from experiments.common import define_model_run_flags, start_program, write_json_atomic, write_text
from jaxmod import compose, data, metrics, models, report, train
from jaxmod.approaches import create_approach
from jaxmod.losses import cross_entropy_loss

FLAGS = flags.FLAGS
define_model_run_flags("experiments/results/moda_midscale", ["vgg_narrow", "resnet20"], "fashion_mnist", epochs=30,
                       train_limit=0)
flags.DEFINE_list("taus", ["0.5", "0.6", "0.7", "0.8", "0.9", "0.95"], "Thresholds of the validation sweep.")

RUNS = {"standard": None, "moda": 0.3, "moda_gamma0": 0.0}  # run -> MODA's gamma (None: cross-entropy only)


def merged_accuracy(model: Any, variables: Any, modules: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 of all modules merged into one sliced model."""
    merged = compose.compose(modules, variables, tuple(range(model.num_classes)))
    return train.evaluate(merged.model, merged.variables, x, y)["top1"]


def train_run(name: str, gamma: float | None, model_name: str, model: Any, dataset: data.Dataset) -> dict[str, Any]:
    """One run, epoch by epoch: history (with MODA's terms), and per epoch the module size and merged accuracy."""
    moda = create_approach("moda") if gamma is None else create_approach("moda", gamma=gamma)
    loss = cross_entropy_loss() if gamma is None else moda.training_loss()
    config = train.TrainConfig(epochs=FLAGS.epochs, seed=FLAGS.seed)
    info = {"model": model_name, "dataset": FLAGS.dataset, "loss": "cross_entropy" if gamma is None
            else "moda", **({} if gamma is None else moda.training_config())}
    curve, workdir = [], os.path.join(FLAGS.workdir, FLAGS.dataset, model_name, name)
    for epoch in range(1, FLAGS.epochs + 1):
        state, history = train.fit(model, dataset, loss, config, workdir, progress=False, stop_after=epoch,
                                   description=f"{name} epoch {epoch}",
                                   run_info=info)
        if gamma is not None:
            variables = state.variables()
            modules = moda.decompose(model, variables, dataset.train.x, dataset.train.y, dataset.num_classes).modules
            sizes = metrics.module_statistics(modules, variables, model)
            curve.append({"epoch": epoch, "mean_size": sizes["mean_size"], "mean_jaccard": sizes["mean_jaccard"],
                          "merged_val_accuracy": merged_accuracy(model, variables, modules, dataset.val.x,
                                                                 dataset.val.y)})
    return {"state": state, "history": history, "curve": curve, "approach": moda}


def tau_sweep(run: dict[str, Any], model: Any, dataset: data.Dataset) -> dict[str, Any]:
    """Sizes and merged validation accuracy per tau; the chosen tau (validation only) and its test figures."""
    variables = run["state"].variables()
    modular_val = train.evaluate(model, variables, dataset.val.x, dataset.val.y)["top1"]
    rows = []
    for tau in (float(t) for t in FLAGS.taus):
        approach = dataclasses.replace(run["approach"], tau=tau)
        modules = approach.decompose(model, variables, dataset.train.x, dataset.train.y, dataset.num_classes).modules
        sizes = metrics.module_statistics(modules, variables, model)
        rows.append({"tau": tau, "mean_size": sizes["mean_size"], "mean_jaccard": sizes["mean_jaccard"],
                     "merged_val_accuracy": merged_accuracy(model, variables, modules, dataset.val.x, dataset.val.y),
                     "modules": modules})
    good = [r for r in rows if r["merged_val_accuracy"] >= modular_val - 0.01]
    chosen = min(good, key=lambda r: r["mean_size"]) if good else max(rows, key=lambda r: r["merged_val_accuracy"])
    test = {"modular_test_accuracy": train.evaluate(model, variables, dataset.test.x, dataset.test.y)["top1"],
            "merged_test_accuracy": merged_accuracy(model, variables, chosen["modules"], dataset.test.x,
                                                    dataset.test.y)}
    return {"modular_val_accuracy": modular_val, "chosen_tau": chosen["tau"], "chosen_mean_size": chosen["mean_size"],
            "met_on_validation": bool(good), **test,
            "sweep": [{k: v for k, v in r.items() if k != "modules"} for r in rows]}


def plot_curves(name: str, runs: dict[str, dict[str, Any]]) -> list[str]:
    """Two PNGs per model: accuracies and module size per epoch; MODA's loss terms per epoch."""
    epochs = list(range(1, FLAGS.epochs + 1))
    accuracy, terms = {}, {}
    for run_name, run in runs.items():
        accuracy[f"{run_name}: val acc"] = [h["val_accuracy"] for h in run["history"]]
        if run["curve"]:
            accuracy[f"{run_name}: merged modules, val acc"] = [c["merged_val_accuracy"] for c in run["curve"]]
            accuracy[f"{run_name}: mean module size"] = [c["mean_size"] for c in run["curve"]]
            for term in ("affinity", "dispersion", "compactness"):
                terms[f"{run_name}: {term}"] = [h[f"train_{term}"] for h in run["history"]]
    stem = os.path.join(FLAGS.out, f"{name}_{FLAGS.dataset}")
    report.line_plot_png(epochs, accuracy, stem + "_accuracy.png", xlabel="epoch",
                         ylabel="accuracy / fraction of the weights", title=f"MODA on {name}, {FLAGS.dataset}")
    report.line_plot_png(epochs, terms, stem + "_terms.png", xlabel="epoch", ylabel="training loss term (mean)",
                         title=f"MODA's terms on {name}, {FLAGS.dataset}")
    return [stem + "_accuracy.png", stem + "_terms.png"]


def main(argv: list[str]) -> None:
    start_program(argv, FLAGS.workdir)
    dataset = data.load_dataset(FLAGS.dataset, train_limit=FLAGS.train_limit or None, seed=FLAGS.seed)
    command = "python -m experiments.moda_midscale " + " ".join(sys.argv[1:])
    summary, payload = [], {"command": command, "models": {}}
    for name in FLAGS.models:
        model = models.create_model(name, dataset.num_classes)
        runs = {run: train_run(run, gamma, name, model, dataset) for run, gamma in RUNS.items()}
        std_test = train.evaluate(model, runs["standard"]["state"].variables(), dataset.test.x, dataset.test.y)["top1"]
        entry = {"standard_test_accuracy": std_test}
        for run in ("moda", "moda_gamma0"):
            sweep = tau_sweep(runs[run], model, dataset)
            entry[run] = {"curve": runs[run]["curve"], "history": runs[run]["history"], **sweep}
            summary.append({"model": name, "run": run, "standard test": std_test,
                            "modular test": sweep["modular_test_accuracy"], "chosen tau (val)": sweep["chosen_tau"],
                            "mean module size": sweep["chosen_mean_size"],
                            "merged test": sweep["merged_test_accuracy"],
                            "merged - modular (points)": 100 * (sweep["merged_test_accuracy"]
                                                                - sweep["modular_test_accuracy"]),
                            "size at tau 0.9": next(r["mean_size"] for r in sweep["sweep"] if r["tau"] == 0.9)})
        entry["standard"] = {"history": runs["standard"]["history"]}
        os.makedirs(FLAGS.out, exist_ok=True)
        entry["plots"] = [os.path.basename(p) for p in plot_curves(name, runs)]
        payload["models"][name] = entry
    write_json_atomic(os.path.join(FLAGS.out, "moda_midscale.json"), payload)
    write_text(os.path.join(FLAGS.out, "README.md"),
               f"# MODA at mid scale ({FLAGS.dataset}, {FLAGS.epochs} epochs)\n\nMade by `{command}`. tau chosen on "
               "the validation split (smallest mean size whose merged model is within 1 point of the modular model "
               "there); test scored once at that tau.\n\n" + report.markdown_table(summary, floatfmt=".4f") + "\n")
    print(report.summary_table(summary, floatfmt=".4f"))


if __name__ == "__main__":
    app.run(main)

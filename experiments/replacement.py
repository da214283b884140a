r"""Module replacement (MODA RQ1, Table 1 layout): a weak model's class answered by a strong model's MODA module,
substituted (the CNNSplitter baseline) or through MODA's calibration layer, for every class.

    python -m experiments.replacement --workdir=runs/replacement --out=experiments/results/replacement

Per dataset (MNIST, Fashion-MNIST): the strong model is LeNet-5 trained with MODA's loss on the whole training
split (``--strong_epochs``), decomposed by MODA; two weak LeNet-5 models as the paper builds them, scaled to this
CPU: *overfitted* (10% of the training data, class-balanced, ``--overfit_epochs`` epochs, no augmentation,
dropout or weight decay) and *underfitted* (5% of the strong model's training steps). Each replacement's
calibration layer trains on its weak model's own training data. Training runs are checkpointed under
``--workdir`` (resumable); the table and JSON are written at the end, atomically.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
from typing import Any

import numpy as np
from absl import app, flags

from experiments.common import start_program, write_json_atomic, write_text
from jaxmod import data, models, replace, report, train
from jaxmod.approaches import create_approach
from jaxmod.data.registry import get_spec
from jaxmod.data.splits import balanced_subset_indices
from jaxmod.losses import cross_entropy_loss

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where the trained models are checkpointed (resumable).")
flags.DEFINE_string("out", "experiments/results/replacement", "Output directory (README.md table and JSON).")
flags.DEFINE_list("datasets", ["mnist", "fashion_mnist"], "Datasets.")
flags.DEFINE_integer("strong_epochs", 3, "Epochs of the strong (MODA) model.")
flags.DEFINE_float("overfit_fraction", 0.1, "Share of the training data the overfitted weak model sees.")
flags.DEFINE_integer("overfit_epochs", 20, "Epochs of the overfitted weak model.")
flags.DEFINE_float("underfit_steps", 0.05, "Share of the strong model's training steps the underfitted model takes.")
flags.DEFINE_integer("calibration_epochs", 5, "Epochs of the calibration layer (the paper: 3 to 5).")
flags.DEFINE_integer("seed", 0, "Seed.")

# MODA's Table 1 averages over its 20 cases per scenario (paper text, Sec. 5.1), in accuracy points
PAPER = {"overfitted": {"calibrated TC": 10.11, "substituted TC": 0.90, "calibrated non-TC": 0.28,
                        "substituted non-TC": 1.42},
         "underfitted": {"calibrated TC": 13.97, "substituted TC": 0.31, "calibrated non-TC": 6.76,
                         "substituted non-TC": 2.56}}


def subset(dataset: data.Dataset, index: np.ndarray) -> data.Dataset:
    """The dataset with its training split cut to ``index`` (same normalisation, validation and test)."""
    train_split = dataclasses.replace(dataset.train, x=dataset.train.x[index], y=dataset.train.y[index])
    return dataclasses.replace(dataset, train=train_split)


def trained(model: Any, dataset: data.Dataset, loss_fn: Any, epochs: int, workdir: str, name: str,
            **identity: Any) -> dict:
    config = train.TrainConfig(epochs=epochs, batch_size=128, seed=FLAGS.seed)
    state, _ = train.fit(model, dataset, loss_fn, config, os.path.join(workdir, dataset.name, name), progress=False,
                         description=f"{dataset.name} {name}", run_info={"model": "lenet5", "dataset": dataset.name,
                                                                        **identity})
    return state.variables()


def run_dataset(name: str, workdir: str) -> list[dict[str, Any]]:
    full = data.load_dataset(name, seed=FLAGS.seed)
    model = models.create_model("lenet5", full.num_classes)
    moda = create_approach("moda")
    strong_vars = trained(model, full, moda.training_loss(), FLAGS.strong_epochs, workdir, "strong",
                          loss="moda", **moda.training_config())
    modules = moda.decompose(model, strong_vars, full.train.x, full.train.y, full.num_classes).modules
    overfit_n = int(FLAGS.overfit_fraction * len(full.train.x))
    strong_steps = FLAGS.strong_epochs * (len(full.train.x) // 128)
    underfit_n = max(128, int(FLAGS.underfit_steps * strong_steps) * 128)
    weak = {
        "overfitted": subset(full, balanced_subset_indices(full.train.y, overfit_n, FLAGS.seed)),
        "underfitted": subset(full, balanced_subset_indices(full.train.y, underfit_n, FLAGS.seed + 1)),
    }
    epochs = {"overfitted": FLAGS.overfit_epochs, "underfitted": 1}
    strong_test = replace.replacement_accuracy(np.asarray(model.apply(strong_vars, full.test.x)), full.test.y, 0)
    rows = []
    for scenario, weak_data in weak.items():
        weak_vars = trained(model, weak_data, cross_entropy_loss(), epochs[scenario], workdir, f"weak_{scenario}",
                            loss="cross_entropy")
        weak_logits = np.asarray(model.apply(weak_vars, full.test.x))
        for target in range(full.num_classes):
            before = replace.replacement_accuracy(weak_logits, full.test.y, target)
            strong = replace.replacement_accuracy(np.asarray(model.apply(strong_vars, full.test.x)), full.test.y,
                                                  target)
            sub = replace.replace_class(model, weak_vars, modules, strong_vars, target).evaluate(
                full.test.x, full.test.y)
            cal = replace.replace_class(model, weak_vars, modules, strong_vars, target,
                                        calibrate_on=(weak_data.train.x, weak_data.train.y),
                                        epochs=FLAGS.calibration_epochs, seed=FLAGS.seed).evaluate(
                full.test.x, full.test.y)
            rows.append({"dataset": name, "scenario": scenario, "class": target,
                         "weak samples": len(weak_data.train.x), "weak epochs": epochs[scenario],
                         "weak TC": before["target"], "weak non-TC": before["others"],
                         "weak overall": before["overall"],
                         "strong TC": strong["target"], "strong overall": strong_test["overall"],
                         "substituted TC": sub["target"], "substituted non-TC": sub["others"],
                         "substituted overall": sub["overall"],
                         "calibrated TC": cal["target"], "calibrated non-TC": cal["others"],
                         "calibrated overall": cal["overall"]})
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean changes against the weak model (accuracy points), per dataset and scenario, beside the paper's."""
    out = []
    for key in dict.fromkeys((r["dataset"], r["scenario"]) for r in rows):
        mine = [r for r in rows if (r["dataset"], r["scenario"]) == key]

        def delta(col: str, base: str, group: list[dict[str, Any]] = mine) -> float:
            return 100 * statistics.fmean(r[col] - r[base] for r in group)

        row = {"dataset": key[0], "scenario": key[1], "cases": len(mine),
               "weak overall": statistics.fmean(r["weak overall"] for r in mine)}
        for method in ("substituted", "calibrated"):
            row[f"{method} TC"] = delta(f"{method} TC", "weak TC")
            row[f"{method} non-TC"] = delta(f"{method} non-TC", "weak non-TC")
            row[f"{method} overall"] = delta(f"{method} overall", "weak overall")
        row["calibrated beats substituted on TC"] = sum(r["calibrated TC"] > r["substituted TC"] for r in mine)
        row["calibrated within 1 point overall"] = sum(r["calibrated overall"] >= r["weak overall"] - 0.01
                                                       for r in mine)
        row.update({f"paper {k}": v for k, v in PAPER[key[1]].items()})
        out.append(row)
    return out


def main(argv: list[str]) -> None:
    start_program(argv, FLAGS.workdir)
    for name in FLAGS.datasets:
        get_spec(name)
    if not 0 < FLAGS.overfit_fraction <= 1 or not 0 < FLAGS.underfit_steps <= 1:
        raise app.UsageError("--overfit_fraction and --underfit_steps must be in (0, 1]")
    rows = [row for name in FLAGS.datasets for row in run_dataset(name, FLAGS.workdir)]
    summary = summarise(rows)
    os.makedirs(FLAGS.out, exist_ok=True)
    command = "python -m experiments.replacement " + " ".join(sys.argv[1:])
    write_json_atomic(os.path.join(FLAGS.out, "replacement.json"), {"command": command, "rows": rows,
                                                                     "summary": summary, "paper": PAPER})
    text = (f"# Module replacement (MODA RQ1, Table 1 layout)\n\nMade by `{command}`.\n\n"
            "Changes against the weak model in accuracy points (TC: the replaced class; non-TC: the others), mean "
            "over the ten target classes, beside the paper's averages:\n\n"
            + report.markdown_table(summary, floatfmt=".2f") + "\n\nEvery case (accuracies):\n\n"
            + report.markdown_table(rows, floatfmt=".4f") + "\n")
    write_text(os.path.join(FLAGS.out, "README.md"), text)
    print(report.summary_table(summary, floatfmt=".2f"))


if __name__ == "__main__":
    app.run(main)

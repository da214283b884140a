r"""MwT's coupling weight beta chosen on the validation split: one MwT run per beta, one table.

    python -m experiments.mwt_beta_sweep --model=lenet5 --dataset=fashion_mnist --epochs=15 \
        --betas=1.5,1.0,0.5 --workdir=runs/mwt_beta_lenet5_fashion_mnist_e15

The paper's beta (1.5) was set for VGG16 / ResNet18, whose masked layers have 64-512 kernels. A model with
few kernels per masked layer (LeNet-5: 16) has little room to give each class kernels of its own, and the
coupling term then costs accuracy. The rule, on the validation split only: the largest beta (the most
modular training) whose last-epoch validation accuracy is within ``--tolerance`` of the standard model's.
Test accuracies are reported beside it, never used. Each run is ``experiments.modularize
--config=experiments/configs/mwt.py``
in ``<workdir>/beta_<b>`` (a rerun resumes finished training); writes ``<out>/<model>_<dataset>_beta.md/.csv``
and a PNG of validation accuracy against kernel retention.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from typing import Any

from absl import app, flags

from experiments.common import number_list_flag, write_rows_tables

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The program's flags, defined only when it runs (tests import its functions without them)."""
    flags.DEFINE_string("model", "lenet5", "Zoo model.")
    flags.DEFINE_string("dataset", "fashion_mnist", "Dataset.")
    flags.DEFINE_integer("epochs", 15, "Training epochs (standard and modular).")
    flags.DEFINE_integer("seed", 0, "Seed.")
    flags.DEFINE_list("betas", ["1.5", "1.0", "0.5"], "Coupling weights tried.")
    flags.DEFINE_float("tolerance", 0.015, "Largest validation-accuracy loss against the standard model accepted.")
    flags.DEFINE_string("workdir", None, "Work directory (one sub-directory per beta).")
    flags.DEFINE_string("out", "experiments/results/mwt_vs_moda", "Where the tables and the plot go.")
    flags.mark_flag_as_required("workdir")


def run_command(beta: float) -> list[str]:
    """The MwT run of one beta (one sub-task, one fine-tuning epoch: the sweep reads training only)."""
    return [sys.executable, "-m", "experiments.modularize", "--config=experiments/configs/mwt.py",
            f"--config.model={FLAGS.model}", f"--config.dataset={FLAGS.dataset}",
            f"--config.train.epochs={FLAGS.epochs}", f"--config.seed={FLAGS.seed}", f"--config.options.beta={beta}",
            "--config.reuse.num_subtasks=1",
            "--config.options.finetune_epochs=1", f"--workdir={beta_dir(beta)}", "--config.progress=false"]


def beta_dir(beta: float) -> str:
    return os.path.join(FLAGS.workdir, f"beta_{beta}")


def last_val(result: dict[str, Any], part: str) -> float:
    return result[part]["history"][-1]["val_accuracy"]


def row(beta: float, r: dict[str, Any]) -> dict[str, Any]:
    """One table row from a finished run's results.json."""
    return {"beta": beta, "standard_val": last_val(r, "standard"), "modular_val": last_val(r, "modular"),
            "val_gap": last_val(r, "modular") - last_val(r, "standard"),
            "standard_test": r["standard"]["test_accuracy"], "modular_test": r["modular"]["test_accuracy"],
            "test_gap": r["modular"]["test_accuracy"] - r["standard"]["test_accuracy"],
            "krr": r["modules"]["krr"], "cohesion": r["modules"]["cohesion"], "coupling": r["modules"]["coupling"],
            "module_size": r["modules"]["mean_size"]}


def selected(rows: list[dict[str, Any]], tolerance: float) -> float | None:
    """The largest beta whose validation gap is within the tolerance (None if no beta is)."""
    ok = [r["beta"] for r in rows if r["val_gap"] >= -tolerance]
    return max(ok) if ok else None


def write_outputs(rows: list[dict[str, Any]], choice: float | None) -> str:
    """Markdown + CSV table and the plot; returns the Markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = os.path.join(FLAGS.out, f"{FLAGS.model}_{FLAGS.dataset}_beta")
    notes = (f"Rule (validation only): the largest beta whose modular validation accuracy is within {FLAGS.tolerance} "
             f"of the standard model's. Selected: {choice}. Test columns are reported, not used. KRR, cohesion, "
             "coupling: the paper's kernel metrics (Eq. 1-3) on the training samples.")
    title = f"MwT's coupling weight on the validation split: {FLAGS.model}, {FLAGS.dataset}, {FLAGS.epochs} epochs"
    md = write_rows_tables(stem, rows, title, notes, "experiments.mwt_beta_sweep")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["krr"] for r in rows], [r["modular_val"] for r in rows], "o-", label="MwT")
    for r in rows:
        ax.annotate(f"beta {r['beta']}", (r["krr"], r["modular_val"]), textcoords="offset points", xytext=(4, -10))
    ax.axhline(rows[0]["standard_val"], color="gray", ls="--", label="standard")
    ax.axhline(rows[0]["standard_val"] - FLAGS.tolerance, color="gray", ls=":", label=f"standard - {FLAGS.tolerance}")
    ax.set_xlabel("kernel retention rate (KRR)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"MwT on {FLAGS.model} / {FLAGS.dataset}: accuracy against module size", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{stem}.png", dpi=120)
    plt.close(fig)
    return md


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    betas = sorted(set(number_list_flag(FLAGS.betas, "betas", allow_zero=True)), reverse=True)
    if FLAGS.epochs < 1 or not 0 <= FLAGS.tolerance < 1:
        raise app.UsageError("--epochs must be >= 1 and --tolerance in [0, 1)")
    rows = []
    for beta in betas:
        print("running", " ".join(shlex.quote(a) for a in ["python", *run_command(beta)[1:]]), flush=True)
        subprocess.run(run_command(beta), check=True)
        with open(os.path.join(beta_dir(beta), "results.json")) as f:
            rows.append(row(beta, json.load(f)))
    md = write_outputs(rows, selected(rows, FLAGS.tolerance))
    print(open(md).read())


if __name__ == "__main__":
    define_flags()
    app.run(main)

r"""Tables 1 and 2 of Kingetsu et al. on our runs (supermask decomposition), as Markdown + CSV.

    python -m experiments.supermask_tables --table=all --runs_dir=runs/supermask_tables \
        --out_dir=experiments/results/supermask

Every cell is one ``python -m experiments.modularize --config=experiments/configs/supermask.py ...`` run (its command
is in the Markdown and in ``RUN/command.txt``); a run whose ``results.json`` exists with the same command is reused.

* Table 1: mean Jaccard index of the modules and accuracy of the recomposed model of all modules (voting),
  module stemming at k = 10%, alpha 1, FC1-FC4 on MNIST and Fashion-MNIST, beside the paper's figures and,
  when ``--dense_table`` exists, our Pan and Rajan dense decomposition figures (blank otherwise).
* Table 2: the ablation of initial score sharing and stemming loss: average ratio of remaining parameters
  (RPs) for two-class recomposition at the last module epoch (paper: 25), alpha 1, k 10%, FC1 on MNIST;
  mean, best and worst over trials (``--trials`` score seeds on one base model).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags

from jaxmod import report

FLAGS = flags.FLAGS
flags.DEFINE_enum("table", "all", ["all", "1", "2"], "Which table to produce.")
flags.DEFINE_string("runs_dir", "runs/supermask_tables", "Work directories of the runs.")
flags.DEFINE_string("out_dir", "experiments/results/supermask", "Where the Markdown and CSV tables go.")
flags.DEFINE_string("dense_table", "experiments/results/concern/dense_table.csv",
                    "Pan and Rajan dense decomposition figures (model,dataset,variant,jaccard,composed_accuracy,"
                    "model_accuracy); columns stay blank when the file is absent.")
flags.DEFINE_list("models", ["fc1", "fc2", "fc3", "fc4"], "Table 1 models.")
flags.DEFINE_list("datasets", ["mnist", "fashion_mnist"], "Table 1 datasets.")
flags.DEFINE_integer("epochs", 10, "Standard-model training epochs.")
flags.DEFINE_integer("train_limit", None, "Class-balanced training subset (before the validation split).")
flags.DEFINE_integer("test_limit", None, "Class-balanced test subset.")
flags.DEFINE_integer("table1_module_epochs", 10, "Module co-training epochs for Table 1.")
flags.DEFINE_float("table1_score_lr", 1.0, "Score learning rate of the Table 1 runs (chosen on the validation split: "
                   "0.1, the paper's, leaves FC4 unlearned at our ~11x shorter epochs; BUILD_NOTES.md, Supermasks).")
flags.DEFINE_integer("table2_module_epochs", 25, "Module co-training epochs for Table 2 (paper: 25).")
flags.DEFINE_integer("trials", 2, "Table 2: score seeds per configuration (the paper: 5).")
flags.DEFINE_integer("num_subtasks", 10, "Reuse sub-tasks per run.")
flags.DEFINE_bool("dry_run", False, "Print the commands and build tables from existing runs only.")

# Kingetsu et al., Table 1, "Module Stemming (ours)" row: (Jaccard index, recomposed accuracy).
PAPER_TABLE1 = {
    ("mnist", "fc1"): (0.60, 0.9647), ("mnist", "fc2"): (0.71, 0.9592), ("mnist", "fc3"): (0.67, 0.9661),
    ("mnist", "fc4"): (0.67, 0.9675), ("fashion_mnist", "fc1"): (0.72, 0.8463),
    ("fashion_mnist", "fc2"): (0.67, 0.8544), ("fashion_mnist", "fc3"): (0.66, 0.8630),
    ("fashion_mnist", "fc4"): (0.75, 0.8642),
}
# Table 2: (initial score sharing, stemming loss) -> (avg ratio of RPs, best, worst).
PAPER_TABLE2 = {
    (False, False): (0.175, 0.159, 0.185), (True, False): (0.173, 0.159, 0.183),
    (False, True): (0.122, 0.117, 0.126), (True, True): (0.122, 0.116, 0.126),
}
DENSE_COLUMNS = ("model", "dataset", "variant", "jaccard", "composed_accuracy", "model_accuracy")


def run_command(workdir: str, model: str, dataset: str, module_epochs: int, *, share_init: bool = True,
                stemming: bool = True, score_seed: int = 0, time_single: bool = False,
                score_lr: float | None = None) -> list[str]:
    """The ``experiments.modularize`` command of one cell (``score_lr`` None: the runner's default)."""
    cmd = [sys.executable, "-m", "experiments.modularize", "--config=experiments/configs/supermask.py",
           f"--config.model={model}", f"--config.dataset={dataset}", "--config.options.k=0.1",
           "--config.options.alpha=1.0", f"--config.train.epochs={FLAGS.epochs}",
           f"--config.options.epochs={module_epochs}", f"--config.options.share_init={str(share_init).lower()}",
           f"--config.options.stemming={str(stemming).lower()}", f"--config.options.seed={score_seed}",
           f"--config.reuse.num_subtasks={FLAGS.num_subtasks}",
           f"--config.extras.time_single_module={str(time_single).lower()}", "--config.progress=false",
           f"--workdir={workdir}"]
    if score_lr is not None:
        cmd.append(f"--config.options.score_lr={score_lr:g}")
    if FLAGS.train_limit:
        cmd.append(f"--config.train_limit={FLAGS.train_limit}")
    if FLAGS.test_limit:
        cmd.append(f"--config.test_limit={FLAGS.test_limit}")
    return cmd


def shown(cmd: Sequence[str]) -> str:
    return shlex.join(["python", *cmd[1:]])


def ensure_run(cmd: list[str], workdir: str) -> dict[str, Any] | None:
    """``results.json`` of the run, running it first unless a finished run with the same command exists."""
    results_path, command_path = os.path.join(workdir, "results.json"), os.path.join(workdir, "command.txt")
    same = os.path.exists(command_path) and open(command_path).read().strip() == shown(cmd)
    if not (same and os.path.exists(results_path)):
        if FLAGS.dry_run:
            print(f"missing: {shown(cmd)}")
            return None
        print(f"running: {shown(cmd)}", flush=True)
        os.makedirs(workdir, exist_ok=True)
        with open(command_path, "w") as f:
            f.write(shown(cmd) + "\n")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"run failed ({proc.returncode}): {shown(cmd)}\n{proc.stderr[-3000:]}")
    with open(results_path) as f:
        return json.load(f)


def read_dense_table(path: str) -> dict[tuple[str, str], list[dict[str, str]]]:
    """Pan and Rajan's dense figures by (dataset, model); empty when the file is absent."""
    if not path or not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in DENSE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing}")
        out: dict[tuple[str, str], list[dict[str, str]]] = {}
        for row in reader:
            out.setdefault((row["dataset"], row["model"]), []).append(row)
    return out


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def table1_rows(results: Mapping[tuple[str, str], Mapping[str, Any]],
                dense: Mapping[tuple[str, str], list[dict[str, str]]]) -> list[dict[str, Any]]:
    """One row per (dataset, model): ours, the paper's, and the dense baseline's variants (blank if absent)."""
    variants = sorted({r["variant"] for rows in dense.values() for r in rows}) or [""]
    rows = []
    for (dataset, model), res in results.items():
        paper_ji, paper_acc = PAPER_TABLE1.get((dataset, model), (None, None))
        row = {"dataset": dataset, "model": model,
               "JI (ours)": res["modules"]["mean_jaccard"], "acc (ours)": res["composed"]["test_accuracy"],
               "JI (paper)": paper_ji, "acc (paper)": paper_acc,
               "model acc (ours)": res["standard"]["test_accuracy"],
               "RPs all classes (ours)": res["modules"]["rps"]["all_classes"]}
        by_variant = {r["variant"]: r for r in dense.get((dataset, model), [])}
        for variant in variants:
            label = f"P&R {variant}".strip()
            found = by_variant.get(variant, {})
            row[f"{label} JI"] = _number(found.get("jaccard"))
            row[f"{label} acc"] = _number(found.get("composed_accuracy"))
        rows.append(row)
    return rows


def table2_rows(results: Mapping[tuple[bool, bool], Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (sharing, stemming): mean, best and worst over trials of the average two-class RPs."""
    rows = []
    for (share, stem), trials in results.items():
        per_trial = [t["modules"]["rps"]["two_class_mean"] for t in trials]
        paper = PAPER_TABLE2[(share, stem)]
        rows.append({"initial score sharing": "x" if share else "", "stemming loss": "x" if stem else "",
                     "avg RPs (ours)": float(np.mean(per_trial)), "best (ours)": float(np.min(per_trial)),
                     "worst (ours)": float(np.max(per_trial)), "avg RPs (paper)": paper[0],
                     "best (paper)": paper[1], "worst (paper)": paper[2],
                     "mean JI (ours)": float(np.mean([t["modules"]["mean_jaccard"] for t in trials])),
                     "recomposed acc (ours)": float(np.mean([t["composed"]["test_accuracy"] for t in trials])),
                     "trials": len(trials)})
    return rows


def write_table(name: str, rows: list[dict[str, Any]], title: str, commands: Sequence[str], notes: str) -> None:
    """``OUT/name.md`` (title, the exact commands, the table) and ``OUT/name.csv``."""
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    program = shlex.join(["python", "-m", "experiments.supermask_tables", *sys.argv[1:]])
    body = [f"# {title}", "", "Produced by:", "", "```", program, "```", "", notes, "",
            report.markdown_table(rows, floatfmt=".4f"), "", "Runs (one `experiments.modularize` call each):", "",
            "```", *commands, "```", ""]
    with open(os.path.join(FLAGS.out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(body))
    with open(os.path.join(FLAGS.out_dir, f"{name}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    print(report.summary_table(rows, floatfmt=".4f"))


def make_table1() -> None:
    dense = read_dense_table(FLAGS.dense_table)
    results, commands = {}, []
    for dataset in FLAGS.datasets:
        for model in FLAGS.models:
            workdir = os.path.join(FLAGS.runs_dir, f"t1_{model}_{dataset}")
            cmd = run_command(workdir, model, dataset, FLAGS.table1_module_epochs, time_single=model == "fc1",
                              score_lr=FLAGS.table1_score_lr)
            commands.append(shown(cmd))
            res = ensure_run(cmd, workdir)
            if res is not None:
                results[(dataset, model)] = res
    if not results:
        return
    source = FLAGS.dense_table if dense else f"not found ({FLAGS.dense_table}): those columns are blank"
    notes = (f"Module stemming, k = 10%, alpha = 1, p = 1, {FLAGS.table1_module_epochs} module epochs, score "
             f"learning rate {FLAGS.table1_score_lr:g}. JI: mean "
             "Jaccard index over module pairs (maskable weights); acc: test accuracy of all ten modules recomposed "
             f"by confidence voting. Pan and Rajan dense figures: {source}.")
    write_table("table1", table1_rows(results, dense), "Table 1 (Kingetsu et al.) on our runs", commands, notes)


def make_table2() -> None:
    results: dict[tuple[bool, bool], list[dict[str, Any]]] = {}
    commands = []
    for share in (False, True):
        for stem in (False, True):
            for trial in range(FLAGS.trials):
                workdir = os.path.join(FLAGS.runs_dir, f"t2_share{int(share)}_stem{int(stem)}_trial{trial}")
                cmd = run_command(workdir, "fc1", "mnist", FLAGS.table2_module_epochs, share_init=share,
                                  stemming=stem, score_seed=trial)
                commands.append(shown(cmd))
                res = ensure_run(cmd, workdir)
                if res is not None:
                    results.setdefault((share, stem), []).append(res)
    if not results:
        return
    notes = (f"FC1 on MNIST, alpha = 1, k = 10%, RPs after {FLAGS.table2_module_epochs} module epochs: the "
             "fraction of maskable weights kept by the union of two modules, averaged over the 45 class pairs; "
             "best / worst over trials (score seeds on one base model).")
    write_table("table2", table2_rows(results), "Table 2 (Kingetsu et al.): score sharing and stemming loss",
                commands, notes)
    epochs = list(range(1, FLAGS.table2_module_epochs + 1))
    curves = {f"sharing {'on' if s else 'off'}, stemming {'on' if t else 'off'}":
              np.mean([r["modules"]["rps"]["two_class_per_epoch"] for r in runs], axis=0)
              for (s, t), runs in results.items()}
    report.line_plot_png(epochs, curves, os.path.join(FLAGS.out_dir, "table2_rps_per_epoch.png"),
                          xlabel="module epoch", ylabel="two-class RPs (mean over pairs and trials)",
                          title="FC1 / MNIST, alpha 1, k 10%")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.trials < 1:
        raise app.UsageError("--trials must be >= 1")
    if FLAGS.table in ("all", "1"):
        make_table1()
    if FLAGS.table in ("all", "2"):
        make_table2()


if __name__ == "__main__":
    app.run(main)

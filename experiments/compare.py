r"""MODA against MwT on the same model, dataset, seed and epochs: one Markdown and one CSV table.

    python -m experiments.compare --model=lenet5 --dataset=mnist --epochs=3 --num_subtasks=5 \
        --workdir=runs/compare_lenet5_mnist --out=experiments/results/mwt_vs_moda

Each approach runs through ``python -m experiments.modularize`` in a subprocess (resumable: a
rerun reuses finished training), with the same shared flags. MODA's modules are then also read the
way MwT reads kernels (a kernel is relevant to a sample when its activation is non-zero, as the MwT
paper does for a standard model) so that KRR, cohesion and coupling compare like for like over the
same conv layers (the ones MwT masks).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from typing import Any

from absl import app, flags

from experiments.pipeline import dig
from jaxmod import checkpoint, compose, data
from jaxmod.approaches import mwt as mwt_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "lenet5", "Zoo model both approaches modularize.")
flags.DEFINE_string("dataset", "mnist", "Dataset.")
flags.DEFINE_integer("epochs", 3, "Training epochs (standard and modular, both approaches).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_integer("train_limit", None, "Use at most this many training samples (class balanced).")
flags.DEFINE_integer("num_subtasks", 5, "Reuse sub-tasks (the same for both approaches).")
flags.DEFINE_integer("finetune_epochs", 5, "MwT fine-tuning epochs per sub-task.")
flags.DEFINE_float("mwt_alpha", None, "MwT's cohesion weight (default: the paper's 0.5); MODA keeps its own alpha.")
flags.DEFINE_float("mwt_beta", None, "MwT's coupling weight (default: the paper's 1.5); MODA keeps its own beta.")
flags.DEFINE_string("workdir", None, "Work directory (one sub-directory per approach).")
flags.DEFINE_string("out", "experiments/results/mwt_vs_moda", "Where the Markdown and CSV tables go.")
flags.DEFINE_bool("progress", False, "Progress bars of the runs.")
flags.DEFINE_bool("rerun", True, "Run each approach even when its results.json is there; with --norerun a "
                  "finished run with the same settings is read instead (one whose settings differ raises).")
flags.mark_flag_as_required("workdir")

APPROACHES = ("moda", "mwt")
ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("standard test accuracy", ("standard", "test_accuracy")),
    ("modular test accuracy", ("modular", "test_accuracy")),
    ("all modules merged, test accuracy (no fine-tuning)", ("composed", "test_accuracy")),
    ("mean module size (weights)", ("modules", "mean_size")),
    ("mean module overlap (weights)", ("modules", "mean_overlap")),
    ("mean Jaccard index (weights)", ("modules", "mean_jaccard")),
    ("KRR (kernels of the masked convs)", ("modules", "krr")),
    ("cohesion (Jaccard, Eq. 2)", ("modules", "cohesion")),
    ("coupling (Jaccard, Eq. 3)", ("modules", "coupling")),
    ("reuse accuracy, no fine-tuning", ("reuse", "mean_accuracy_no_finetune")),
    ("reuse accuracy, fine-tuned head", ("reuse", "mean_accuracy_finetuned")),
    ("standard model on the same sub-tasks", ("reuse", "mean_standard_accuracy")),
    ("composed size, no fine-tuning", ("reuse", "mean_composed_size_no_finetune")),
    ("composed FLOPs, no fine-tuning", ("reuse", "mean_composed_flops_no_finetune")),
    ("composed size, fine-tuned", ("reuse", "mean_composed_size_finetuned")),
    ("composed FLOPs, fine-tuned", ("reuse", "mean_composed_flops_finetuned")),
    ("standard train step (ms)", ("timing", "standard_step_ms")),
    ("modular train step (ms)", ("timing", "modular_step_ms")),
    ("modular / standard step", ("timing", "step_ratio")),
)


def run_command(approach: str) -> list[str]:
    """The ``experiments.modularize`` command line of one approach (shared settings identical)."""
    cmd = [sys.executable, "-m", "experiments.modularize", f"--config=experiments/configs/{approach}.py",
           f"--config.model={FLAGS.model}", f"--config.dataset={FLAGS.dataset}",
           f"--config.train.epochs={FLAGS.epochs}",
           f"--config.seed={FLAGS.seed}", f"--config.reuse.num_subtasks={FLAGS.num_subtasks}",
           f"--workdir={os.path.join(FLAGS.workdir, approach)}", f"--config.progress={str(FLAGS.progress).lower()}"]
    if FLAGS.train_limit:
        cmd.append(f"--config.train_limit={FLAGS.train_limit}")
    if approach == "mwt":
        cmd.append(f"--config.options.finetune_epochs={FLAGS.finetune_epochs}")
        cmd += [f"--config.options.{name}={value}" for name, value in (("alpha", FLAGS.mwt_alpha),
                                                                      ("beta", FLAGS.mwt_beta)) if value is not None]
    return cmd


def finished_results(approach: str) -> dict[str, Any] | None:
    """The approach's results.json when it was made with this comparison's settings, else None.

    ``ValueError`` when a results.json is there but was made with other settings (never mixed in).
    """
    path = os.path.join(FLAGS.workdir, approach, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        r = json.load(f)
    found = (r["approach"], r["model"], r["dataset"], r["seed"], r["config"]["train"]["epochs"],
             len(r["reuse"]["subtasks"]), r["reuse"].get("finetune_epochs", FLAGS.finetune_epochs))
    wanted = (approach, FLAGS.model, FLAGS.dataset, FLAGS.seed, FLAGS.epochs, FLAGS.num_subtasks,
              FLAGS.finetune_epochs)
    if FLAGS.train_limit and r["config"]["train_samples"] > FLAGS.train_limit:
        raise ValueError(f"{path} used {r['config']['train_samples']} training samples, not --train_limit")
    if approach == "mwt":  # the loss weights too: a table never mixes runs of other weights
        defaults = mwt_lib.MwT()
        found += (r["config"]["approach"]["alpha"], r["config"]["approach"]["beta"])
        wanted += (FLAGS.mwt_alpha if FLAGS.mwt_alpha is not None else defaults.alpha,
                   FLAGS.mwt_beta if FLAGS.mwt_beta is not None else defaults.beta)
    if found != wanted:
        raise ValueError(f"{path} was made with (approach, model, dataset, seed, epochs, subtasks, finetune "
                         f"epochs) {found}, not {wanted}: rerun with --rerun")
    return r


def moda_kernel_metrics(workdir: str) -> dict[str, Any]:
    """KRR, cohesion and coupling of MODA's modules over the conv layers MwT masks."""
    modules, variables = checkpoint.restore_modules(os.path.join(workdir, "modules"))
    model = compose.build_model(modules)
    dataset = data.load_dataset(FLAGS.dataset, seed=FLAGS.seed, train_limit=FLAGS.train_limit)
    return mwt_lib.kernel_metrics(model, variables, modules.units, dataset.train.x, dataset.train.y,
                                  generators=False)


def comparable(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Both results with the table's derived entries (fine-tuned / not, step ratio)."""
    out = {}
    for name, r in results.items():
        r = json.loads(json.dumps(r))
        reuse = r["reuse"]
        if name == "moda":  # MODA reuses without fine-tuning
            reuse["mean_accuracy_no_finetune"] = reuse["mean_accuracy"]
            reuse["mean_composed_size_no_finetune"] = reuse["mean_composed_size"]
            reuse["mean_composed_flops_no_finetune"] = reuse["mean_composed_flops"]
        else:
            reuse["mean_accuracy_finetuned"] = reuse["mean_accuracy"]
            reuse["mean_composed_size_finetuned"] = reuse["mean_composed_size"]
            reuse["mean_composed_flops_finetuned"] = reuse["mean_composed_flops"]
        r["timing"]["step_ratio"] = r["timing"]["modular_step_ms"] / r["timing"]["standard_step_ms"]
        out[name] = r
    return out


def write_tables(results: dict[str, dict[str, Any]], commands: list[str], stem: str) -> tuple[str, str]:
    """``<stem>.md`` (with the commands) and ``<stem>.csv``; returns both paths."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    rows = [(label, *[dig(results[a], path) for a in APPROACHES]) for label, path in ROWS]
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", *APPROACHES])
        w.writerows([(label, *["" if v is None else f"{v:.4f}" for v in vals]) for label, *vals in rows])
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"# MODA vs MwT: {FLAGS.model} on {FLAGS.dataset}, {FLAGS.epochs} epochs, seed {FLAGS.seed}", "",
             "Made by:", "", "```", " ".join(shlex.quote(a) for a in [
                 "python", "-m", "experiments.compare", *sys.argv[1:]]), "```", "",
             "which ran:", "", "```", *commands, "```", "",
             "| metric | MODA | MwT |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {fmt(a)} | {fmt(b)} |" for label, a, b in rows]
    mwt = results["mwt"]
    lines += ["", f"Backend: {mwt['backend']}. Train samples: {mwt['config']['train_samples']}, "
              f"test samples: {mwt['config']['test_samples']}. Sub-tasks: "
              f"{[s['classes'] for s in mwt['reuse']['subtasks']]}. MwT's kernels: {mwt['modules']['kernels']} "
              f"({', '.join(mwt['modules']['gated_groups'])}). MODA's KRR/cohesion/coupling read the same conv "
              "layers, a kernel being relevant to a sample when its activation is non-zero. MwT's sub-models: "
              f"{mwt['reuse']['finetune_epochs']} fine-tuning epoch(s), learning rate "
              f"{mwt['reuse'].get('finetune_lr', 'n/a')}, best epoch on validation. MwT's loss weights: alpha "
              f"{mwt['config']['approach']['alpha']}, beta {mwt['config']['approach']['beta']}.", ""]
    with open(f"{stem}.md", "w") as f:
        f.write("\n".join(lines))
    return f"{stem}.md", f"{stem}.csv"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.epochs < 1 or FLAGS.num_subtasks < 1 or FLAGS.finetune_epochs < 0:
        raise app.UsageError("--epochs and --num_subtasks must be >= 1, --finetune_epochs >= 0")
    results, commands = {}, []
    for approach in APPROACHES:
        cmd = run_command(approach)
        commands.append(" ".join(shlex.quote(a) for a in ["python", *cmd[1:]]))
        done = None if FLAGS.rerun else finished_results(approach)
        if done is not None:
            print(f"reading the finished run of {commands[-1]}", flush=True)
            results[approach] = done
            continue
        print(f"running {commands[-1]}", flush=True)
        subprocess.run(cmd, check=True)
        with open(os.path.join(FLAGS.workdir, approach, "results.json")) as f:
            results[approach] = json.load(f)
    moda = moda_kernel_metrics(os.path.join(FLAGS.workdir, "moda"))
    results["moda"]["modules"].update(krr=moda["krr"], cohesion=moda["cohesion"], coupling=moda["coupling"])
    stem = os.path.join(FLAGS.out, f"{FLAGS.model}_{FLAGS.dataset}")
    md, csv_path = write_tables(comparable(results), commands, stem)
    print(open(md).read())
    print(f"tables: {md}, {csv_path}")


if __name__ == "__main__":
    app.run(main)

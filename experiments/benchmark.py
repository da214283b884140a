r"""The side-by-side benchmark: every method on the same models, data and seeds, one set of metrics, one table.

    python -m experiments.benchmark --config=experiments/configs/benchmark.py --workdir=runs/benchmark

For each (model, dataset, seed) cell the standard model trains once (``CELL/standard``) and is shared by the
post-training methods; MODA and MwT train their modular models with the same budget; every method's run
(``experiments.pipeline``) also draws the random control at its own per-layer module sizes and measures it on the
same sub-tasks. A cell a method cannot run (MwT on a model without convolutions) is a row that says why. Writes,
under ``config.output``: one Markdown and CSV table per (model, dataset) with mean ± std over seeds, a summary table,
``cells.json`` with every figure, and plots (reuse accuracy against module size per method). Resumable: a finished
run is read back, never redone.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import pipeline
from experiments.common import start_program, to_csv, write_json_atomic, write_text
from jaxmod import report
from jaxmod.approaches import create_approach
from jaxmod.data.registry import get_spec

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiments/configs/benchmark.py (the grid and the budget).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where the runs live (resumable).")

METHODS = ("moda", "mwt", "concern", "supermask")
# the figures of every row, in one unit per column: (column, how it is read from a run's results.json)
COLUMNS: dict[str, str] = {
    "standard acc": "standard.test_accuracy",
    "modular acc": "modular.test_accuracy",
    "composed acc (all classes)": "composed.test_accuracy",
    "reuse acc, 2 classes": "reuse_by_size.2.accuracy",
    "standard acc, same 2-class tasks": "reuse_by_size.2.standard_accuracy",
    "reuse acc, 5 classes": "reuse_by_size.5.accuracy",
    "standard acc, same 5-class tasks": "reuse_by_size.5.standard_accuracy",
    "module size": "modules.mean_size",
    "module Jaccard": "modules.mean_jaccard",
    "module size (weights)": "modules.weights.mean_size",
    "module Jaccard (weights)": "modules.weights.mean_jaccard",
    "composed FLOPs, 2 classes": "reuse_by_size.2.composed_flops",
    "composed latency ratio, batch 1": "latency_ratio.batch_1",
    "composed latency ratio, batch 256": "latency_ratio.batch_256",
    "decomposition / standard training time": "cost.decompose_over_training",
    "modular training / standard training time": "cost.modular_over_training",
    "random control: composed acc": "random_control.composed.test_accuracy",
    "random control: reuse acc, 2 classes": "random_control.reuse_by_size.2.accuracy",
    "random control: module size": "random_control.modules.mean_size",
    "random control: module size (weights)": "random_control.modules.weights.mean_size",
    "margin over random: composed acc": "margin.composed",
    "margin over random: reuse acc, 2 classes": "margin.reuse_2",
}
SUMMARY_COLUMNS = ("composed acc (all classes)", "reuse acc, 2 classes", "reuse acc, 5 classes", "module size",
                   "module size (weights)",
                   "margin over random: composed acc", "margin over random: reuse acc, 2 classes")


def csv_list(value: str, name: str, kind: type = str) -> list[Any]:
    """A comma-separated config value as a list; ``ValueError`` naming the field."""
    try:
        items = [kind(v.strip()) for v in str(value).split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"config.{name}: {err}") from err
    if not items:
        raise ValueError(f"config.{name} is empty")
    return items


def grid(config: Any) -> list[tuple[str, str, int, str]]:
    """Every (model, dataset, seed, method) of the config, checked before any work."""
    methods = csv_list(config.methods, "methods")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"config.methods: unknown {unknown} (known: {', '.join(METHODS)})")
    for name in ("epochs", "train_limit", "test_limit", "module_epochs", "subtasks_per_size"):
        if int(config[name]) < 1:
            raise ValueError(f"config.{name} must be >= 1, got {config[name]}")
    csv_list(config.subtask_sizes, "subtask_sizes", int)
    return [(model, dataset, seed, method) for model in csv_list(config.models, "models")
            for dataset in csv_list(config.datasets, "datasets") for seed in csv_list(config.seeds, "seeds", int)
            for method in methods]


def run_config(config: Any, model: str, dataset: str, seed: int, method: str, cell_dir: str) -> Any:
    """The pipeline config of one method in one cell: the method's paper defaults, the benchmark's budget."""
    run = importlib.import_module(f"experiments.configs.{method}").get_config()
    run.model, run.dataset, run.seed = model, dataset, seed
    run.train.epochs = config.epochs
    run.train_limit, run.test_limit = config.train_limit, config.test_limit
    run.reuse.sizes, run.reuse.num_subtasks = config.subtask_sizes, config.subtasks_per_size
    run.timing_repeats, run.progress = config.timing_repeats, config.progress
    run.shared_standard_dir = os.path.join(cell_dir, "standard")
    run.random_control = True
    if method == "supermask":
        run.options.epochs = config.module_epochs
        run.extras.time_single_module = False
    if method == "mwt":  # reuse on the common footing: composed without retraining (fine-tuning is MwT's own extra)
        run.options.finetune_epochs = 0
        run.extras.save_finetuned = False
    return run


def dig(results: Mapping[str, Any], path: str) -> Any:
    node: Any = results
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def by_size(reuse_section: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Mean accuracy, standard accuracy and composed FLOPs of the sub-tasks of each size."""
    sizes: dict[str, list[Mapping[str, Any]]] = {}
    for row in reuse_section["subtasks"]:
        sizes.setdefault(str(len(row["classes"])), []).append(row)
    out = {}
    for size, rows in sizes.items():
        out[size] = {key: statistics.fmean(r[key] for r in rows)
                     for key in ("accuracy", "standard_accuracy", "composed_flops") if all(key in r for r in rows)}
    return out


def cell_figures(results: Mapping[str, Any]) -> dict[str, Any]:
    """One run's results.json reduced to the benchmark's columns (None where a figure does not apply)."""
    enriched = dict(results)
    enriched["reuse_by_size"] = by_size(results["reuse"])
    control = results.get("random_control")
    if control is not None:
        enriched["random_control"] = {**control, "reuse_by_size": by_size(control["reuse"])}
    training = sum(e.get("seconds", 0.0) for e in results["standard"]["history"])
    modular = sum(e.get("seconds", 0.0) for e in results["modular"]["history"])
    extra = results["timing"].get("cotrain_seconds", 0.0)
    enriched["cost"] = {
        "decompose_over_training": (results["timing"]["decompose_seconds"] + extra) / training if training else None,
        "modular_over_training": (modular / training if training and results["modular"]["history"]
                                  is not results["standard"]["history"] and results["approach"] in ("moda", "mwt")
                                  else None)}
    latency = results.get("latency") or {}
    enriched["latency_ratio"] = {f"batch_{b}": latency.get(f"ratio_batch_{b}") for b in (1, 256)}
    figures = {column: dig(enriched, path) for column, path in COLUMNS.items()}
    if control is not None:
        figures["margin over random: composed acc"] = (figures["composed acc (all classes)"]
                                                       - figures["random control: composed acc"])
        if figures["reuse acc, 2 classes"] is not None and figures["random control: reuse acc, 2 classes"] is not None:
            figures["margin over random: reuse acc, 2 classes"] = (figures["reuse acc, 2 classes"]
                                                                   - figures["random control: reuse acc, 2 classes"])
    figures["size counted in"] = results["modules"].get("counted")
    figures["composition"] = results["composed"].get("method")
    return figures


def mean_std(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    if len(present) == 1:
        return f"{present[0]:.4f}"
    return f"{statistics.fmean(present):.4f} ± {statistics.stdev(present):.4f}"


def aggregate(cells: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method (mean ± std over seeds); a method that could not run says why."""
    rows = []
    for method in dict.fromkeys(c["method"] for c in cells):
        mine = [c for c in cells if c["method"] == method]
        skipped = [c for c in mine if c.get("skipped")]
        row: dict[str, Any] = {"method": method, "seeds": len(mine) - len(skipped)}
        if skipped and len(skipped) == len(mine):
            row.update({col: "n/a" for col in columns})
            row["note"] = skipped[0]["skipped"]
        else:
            for col in columns:
                row[col] = mean_std([c["figures"].get(col) for c in mine if not c.get("skipped")])
            counted = {c["figures"].get("size counted in") for c in mine if not c.get("skipped")}
            row["note"] = "size in " + ", ".join(sorted(str(v) for v in counted))
        rows.append(row)
    return rows


def write_tables(cells: Sequence[Mapping[str, Any]], output: str) -> dict[str, str]:
    """Per (model, dataset) Markdown + CSV, the summary, cells.json and the plots; returns what was written."""
    os.makedirs(output, exist_ok=True)
    written: dict[str, str] = {}
    summary_rows = []
    for model, dataset in dict.fromkeys((c["model"], c["dataset"]) for c in cells):
        mine = [c for c in cells if (c["model"], c["dataset"]) == (model, dataset)]
        rows = aggregate(mine, list(COLUMNS))
        stem = os.path.join(output, f"{model.rpartition(':')[2]}_{dataset}")  # a user's model: its class name
        write_text(stem + ".md", f"# {model} / {dataset}\n\nmean ± std over seeds; command in README.md beside\n\n"
                   + report.markdown_table(rows) + "\n")
        write_text(stem + ".csv", to_csv(rows))
        written[f"{model}/{dataset}"] = stem + ".md"
        keep = ("method", "seeds", *SUMMARY_COLUMNS)
        summary_rows += [{"model": model, "dataset": dataset, **{k: r[k] for k in keep}}
                         for r in rows]
    write_text(os.path.join(output, "summary.md"), report.markdown_table(summary_rows) + "\n")
    write_text(os.path.join(output, "summary.csv"), to_csv(summary_rows))
    write_json_atomic(os.path.join(output, "cells.json"), list(cells))
    points: dict[str, tuple[list[float], list[float]]] = {}
    for c in cells:
        f = c.get("figures") or {}
        if f.get("module size") is not None and f.get("reuse acc, 2 classes") is not None:
            xs, ys = points.setdefault(c["method"], ([], []))
            xs.append(f["module size"])
            ys.append(f["reuse acc, 2 classes"])
        if f.get("random control: module size") is not None and f.get("random control: reuse acc, 2 classes"):
            xs, ys = points.setdefault("random control", ([], []))
            xs.append(f["random control: module size"])
            ys.append(f["random control: reuse acc, 2 classes"])
    if points:
        report.scatter_plot_png(points, os.path.join(output, "reuse_vs_size.png"), xlabel="mean module size",
                                ylabel="reuse accuracy, 2-class sub-tasks",
                                title="the trade-off each method makes (every cell and seed)")
    return written


def run_grid(config: Any, workdir: str) -> list[dict[str, Any]]:
    """Run (or read back) every cell of the grid; returns one record per (model, dataset, seed, method)."""
    pipeline.check_workdir(workdir)
    cells = grid(config)
    runs = []
    for model, dataset, seed, method in cells:  # every run's settings checked before the first trains
        cell_dir = os.path.join(workdir, model, dataset, f"seed{seed}")
        run = run_config(config, model, dataset, seed, method, cell_dir)
        runs.append((model, dataset, seed, method, cell_dir, run))
    out = []
    for model, dataset, seed, method, cell_dir, run in runs:
        record: dict[str, Any] = {"model": model, "dataset": dataset, "seed": seed, "method": method}
        try:
            spec = get_spec(dataset)
            built = pipeline.create_model(model, spec.num_classes, np.zeros((1, *spec.input_shape), np.float32))
            pipeline.check_model(create_approach(method, **pipeline.approach_options(run.options)), built, model,
                                 spec.input_shape)
        except ValueError as err:  # e.g. MwT on a model without convolutions: the row says why
            record["skipped"] = str(err)
            out.append(record)
            continue
        if config.tables_only and pipeline.finished(run, os.path.join(cell_dir, method)) is None:
            record["skipped"] = "not run (tables_only: the run is not finished in the work directory)"
            out.append(record)
            continue
        pipeline.say(run, f"== {model} / {dataset} / seed {seed} / {method}")
        results = pipeline.run(run, os.path.join(cell_dir, method))
        record["figures"] = cell_figures(results)
        out.append(record)
    return out


def kept_cells(cells: Sequence[Mapping[str, Any]], output: str) -> list[dict[str, Any]]:
    """The records of ``output/cells.json`` for (model, dataset, seed, method) cells that ``cells`` does not have."""
    path = os.path.join(output, "cells.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        earlier = json.load(f)
    key = lambda c: (c["model"], c["dataset"], c["seed"], c["method"])  # noqa: E731
    have = {key(c) for c in cells}
    return [c for c in earlier if key(c) not in have]


def main(argv: list[str]) -> None:
    start_program(argv, FLAGS.workdir)
    try:
        cells = run_grid(FLAGS.config, FLAGS.workdir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if FLAGS.config.keep_cells:
        cells = kept_cells(cells, FLAGS.config.output) + cells
    written = write_tables(cells, FLAGS.config.output)
    with open(os.path.join(FLAGS.config.output, "summary.md")) as f:
        print(f.read())
    print(json.dumps(written, indent=1))


if __name__ == "__main__":
    app.run(main)

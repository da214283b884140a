r"""Table II of Imtiaz et al.: the cost of decomposing recurrent models, per shape x cell x layers x mode.

    python -m experiments.rnn_table --table_layers=1,2 --output_dir=experiments/results/rnn

Trains one small model per (shape, cell, layers) on the shape's real dataset, decomposes it rolled and
unrolled (one_to_one has one step: unrolled is N/A, as in the paper), composes the modules by voting
(routing per target language for translation) and reports composed - standard test accuracy in points
(BLEU points for translation), with the mean module-model Jaccard index. Each finished model is appended
to ``table.jsonl`` in the output folder, so an interrupted run resumes where it stopped; Markdown and CSV
are rewritten from it at the end. Layers 1 to 4 are accepted.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import app, flags
from tqdm.auto import tqdm

from experiments.common import append_jsonl_rows, parse_json_object, read_jsonl_rows, write_json_atomic
from experiments.pipeline_rnn import RnnRun, decompose_and_measure, train_model
from jaxmod import report
from jaxmod.approaches.rnn import RnnDecomposition
from jaxmod.models.recurrent import CELLS, SHAPES

FLAGS = flags.FLAGS
flags.DEFINE_enum("gates", "hidden", ["hidden", "own"], "Cut gates by the hidden state or each by its own.")
flags.DEFINE_float("max_remove", 0.2, "Removal cap per layer (fraction of units; the paper's 20%).")
flags.DEFINE_list("table_layers", ["1", "2"], "Recurrent layer counts (1-4).")
flags.DEFINE_list("table_cells", list(CELLS), "Cells.")
flags.DEFINE_list("table_shapes", list(SHAPES), "Input-output shapes.")
flags.DEFINE_integer("table_units", 24, "Hidden units per layer.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("output_dir", "experiments/results/rnn", "Where table.md, table.csv and table.jsonl go.")
flags.DEFINE_bool("progress", True, "Progress bar.")
flags.DEFINE_string("table_settings", "{}", "JSON overrides of SETTINGS per shape, e.g. "
                    '\'{"many_to_many": {"train_limit": 8000, "epochs": 5}}\' (RnnRun fields).')
flags.DEFINE_list("table_max_remove", [], "Extra decompositions with these removal caps (e.g. 0.05, the authors' "
                  "many-to-many and translation scripts), reported as modes rolled@CAP and unrolled@CAP.")

# Small models and short training so that the 30 models (60 decompositions) fit a shared 2-core CPU.
SETTINGS: dict[str, dict[str, Any]] = {
    "one_to_one": {"vocab_size": 500, "train_limit": 1500, "epochs": 6},
    "one_to_many": {"train_limit": 3000, "test_limit": 1000, "epochs": 4},
    "many_to_one": {"max_input_len": 30, "train_limit": 3000, "test_limit": 1000, "epochs": 4},
    "many_to_many": {"max_input_len": 20, "train_limit": 2000, "test_limit": 1000, "epochs": 3},
    "encoder_decoder": {"train_limit": 3000, "test_limit": 1000, "epochs": 8},
}


def check_flags() -> tuple[list[int], list[str], list[str]]:
    try:
        layers = [int(v) for v in FLAGS.table_layers]
    except ValueError as err:
        raise ValueError(f"--table_layers must list integers, got {FLAGS.table_layers}") from err
    if not layers or any(not 1 <= v <= 4 for v in layers):
        raise ValueError(f"--table_layers must list values in 1..4, got {FLAGS.table_layers}")
    bad = [c for c in FLAGS.table_cells if c not in CELLS] + [s for s in FLAGS.table_shapes if s not in SHAPES]
    if bad:
        raise ValueError(f"unknown cells or shapes {bad}")
    settings()
    caps()
    return layers, list(FLAGS.table_cells), list(FLAGS.table_shapes)


def settings() -> dict[str, dict[str, Any]]:
    """SETTINGS with ``--table_settings`` applied; ``ValueError`` for unknown shapes or RnnRun fields."""
    overrides = parse_json_object(FLAGS.table_settings, "table_settings")
    fields = {f.name for f in dataclasses.fields(RnnRun)} - {"cell", "shape", "layers", "units", "seed"}
    out = {k: dict(v) for k, v in SETTINGS.items()}
    for shape, values in overrides.items():
        if shape not in SHAPES or not isinstance(values, Mapping) or set(values) - fields:
            raise ValueError(f"--table_settings: {shape!r} must be a shape mapping to RnnRun fields {sorted(fields)}")
        out[shape].update(values)
    return out


def caps() -> list[float]:
    """The extra removal caps of ``--table_max_remove``, each in [0, 1]."""
    try:
        values = [float(v) for v in FLAGS.table_max_remove]
    except ValueError as err:
        raise ValueError(f"--table_max_remove must list numbers, got {FLAGS.table_max_remove}") from err
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"--table_max_remove values must be in [0, 1], got {values}")
    return values


def measure(shape: str, cell: str, layers: int) -> list[dict[str, Any]]:
    """One model, its rolled and (where it applies) unrolled decomposition: one row per mode."""
    cfg = RnnRun(cell=cell, shape=shape, layers=layers, units=FLAGS.table_units, seed=FLAGS.seed,
                 **settings()[shape])
    base_modes = ("rolled",) if shape == "one_to_one" else ("rolled", "unrolled")
    variants = [(m, m, FLAGS.max_remove) for m in base_modes]
    variants += [(f"{m}@{cap:g}", m, cap) for cap in caps() for m in base_modes]
    modes = tuple(label for label, _, _ in variants)
    approaches = [RnnDecomposition.for_shape(shape, mode=m, gates=FLAGS.gates, max_remove=cap)
                  for _, m, cap in variants]
    trained = train_model(cfg, approaches)
    std = trained.standard
    measured = [decompose_and_measure(a, trained, cfg.eval_batch_size, seed=cfg.seed) for a in approaches]
    rows = []
    for mode, m in zip(modes, measured, strict=True):
        row = {"shape": shape, "dataset": trained.data.dataset.name, "cell": cell, "layers": layers, "mode": mode,
               "standard_accuracy": std["test_accuracy"], "composed_accuracy": m["accuracy"],
               "cost_points": 100 * (m["accuracy"] - std["test_accuracy"]), "jaccard": m["mean_jaccard"],
               "train_seconds": std["train_seconds"], "decompose_seconds": m["decompose_seconds"]}
        if "bleu" in m:
            for lang in trained.data.dataset.groups:
                row[f"bleu_standard_{lang}"] = std["bleu"][lang]
                row[f"bleu_composed_{lang}"] = m["bleu"][lang]
            row["bleu_standard"], row["bleu_composed"] = std["bleu"]["all"], m["bleu"]["all"]
            row["bleu2_standard"], row["bleu2_composed"] = std["bleu2"]["all"], m["bleu2"]["all"]
            row["cost_points"] = m["bleu"]["all"] - std["bleu"]["all"]
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], layers: list[int], cells: list[str], command: str) -> str:
    """Table II's layout: a row per (shape, mode), a column per cell-layers, cost in points, mean JI."""
    columns = [f"{c.upper() if c != 'vanilla' else 'Vanilla'}-{n}" for c in cells for n in layers]
    lines = ["# Cost of decomposing RNNs into modules (Table II layout)\n", f"Command: `{command}`\n",
             "Values: composed - standard, test accuracy in points (translation: corpus BLEU-4 points over all "
             "target languages, then in brackets the BLEU-2 cost (B2) and the token accuracy cost in points). "
             "JI: mean module-model Jaccard index. N/A: unrolled does not apply to one step. Empty: not run.\n",
             "| I/O | dataset | mode | " + " | ".join(columns) + " | Avg. JI |",
             "| --- | --- | --- | " + " | ".join("---:" for _ in columns) + " | ---: |"]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    modes = list(dict.fromkeys(["rolled", "unrolled", *(r["mode"] for r in rows)]))
    for shape in shapes:
        for mode in modes:
            cells_rows = {(r["cell"], r["layers"]): r for r in rows if r["shape"] == shape and r["mode"] == mode}
            dataset = next((r["dataset"] for r in rows if r["shape"] == shape), "")
            if not cells_rows:
                values = ["N/A"] * len(columns)
                ji = "N/A"
            else:
                values = [cell_text(cells_rows[(c, n)]) if (c, n) in cells_rows else "" for c in cells for n in layers]
                ji = f"{np.mean([r['jaccard'] for r in cells_rows.values()]):.2f}"
            lines.append(f"| {shape} | {dataset} | {mode} | " + " | ".join(values) + f" | {ji} |")
    lines.append("")
    lines += summary_lines(rows)
    return "\n".join(lines) + "\n"


def cell_text(row: dict[str, Any]) -> str:
    """A table cell: the cost in points; translation adds the BLEU-2 cost (where measured) and the token
    accuracy cost (BLEU-4 is 0 when the small models produce no matching 4-gram, which hides any cost)."""
    text = f"{row['cost_points']:+.2f}"
    if row["shape"] == "encoder_decoder":
        bleu2 = f"{row['bleu2_composed'] - row['bleu2_standard']:+.2f} B2, " if "bleu2_standard" in row else ""
        text += f" ({bleu2}{100 * (row['composed_accuracy'] - row['standard_accuracy']):+.2f} acc)"
    return text


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The paper's headline comparison: mean cost of rolled and unrolled on one- and many-output models."""
    out = ["## Summary", ""]
    groups = {"one-output (one_to_one, many_to_one)": ("one_to_one", "many_to_one"),
              "many-output (one_to_many, many_to_many)": ("one_to_many", "many_to_many"),
              "translation BLEU (encoder_decoder)": ("encoder_decoder",)}
    modes = list(dict.fromkeys(["rolled", "unrolled", *(r["mode"] for r in rows)]))
    for label, shapes in groups.items():
        for mode in modes:
            costs = [r["cost_points"] for r in rows if r["shape"] in shapes and r["mode"] == mode]
            if costs:
                out.append(f"- {label}, {mode}: mean {np.mean(costs):+.2f}, median {np.median(costs):+.2f} "
                           f"points over {len(costs)} models")
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for mode in modes:
            chosen = [r for r in rows if r["shape"] == shape and r["mode"] == mode]
            if chosen:
                acc = [100 * (r["composed_accuracy"] - r["standard_accuracy"]) for r in chosen]
                out.append(f"- {shape} ({chosen[0]['dataset']}), {mode}: accuracy cost mean {np.mean(acc):+.2f}, "
                           f"worst {np.min(acc):+.2f} points over {len(chosen)} models; standard accuracy "
                           f"{np.mean([r['standard_accuracy'] for r in chosen]):.3f}")
    for mode in modes:
        chosen = [r for r in rows if "bleu2_standard" in r and r["mode"] == mode]
        if chosen:
            cost = [r["bleu2_composed"] - r["bleu2_standard"] for r in chosen]
            out.append(f"- translation BLEU-2 (encoder_decoder), {mode}: mean {np.mean(cost):+.2f}, median "
                       f"{np.median(cost):+.2f} points over {len(cost)} models; standard BLEU-2 "
                       f"{np.mean([r['bleu2_standard'] for r in chosen]):.2f}")
    classifiers = [r["cost_points"] for r in rows if r["shape"] != "encoder_decoder" and (
        r["mode"] == "unrolled" or r["shape"] == "one_to_one")]
    if classifiers:
        out.append(f"- unrolled (rolled for one_to_one), all classifiers: mean {np.mean(classifiers):+.2f} points")
    return out


def plot_cost_vs_size(rows: list[dict[str, Any]], path: str) -> None:
    """Cost against module size: one point per model and mode (x: the mean module-model Jaccard index), one
    colour per shape and mode, so the removal caps of ``--table_max_remove`` show as clusters."""
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        xs, ys = groups.setdefault(f"{r['shape']} {r['mode']}", ([], []))
        xs.append(r["jaccard"])
        ys.append(r["cost_points"])
    report.scatter_plot_png(groups, path, xlabel="module-model Jaccard index (module size)",
                             ylabel="cost, points (translation: BLEU-4)",
                             title="Decomposition cost against module size")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        layers, cells, shapes = check_flags()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    jsonl = os.path.join(FLAGS.output_dir, "table.jsonl")
    rows = read_jsonl_rows(jsonl)
    done = {(r["shape"], r["cell"], r["layers"]) for r in rows}
    grid = [(s, c, n) for s in shapes for c in cells for n in layers if (s, c, n) not in done]
    start = time.perf_counter()
    for shape, cell, n in tqdm(grid, desc="models", disable=None if FLAGS.progress else True):
        new = measure(shape, cell, n)
        append_jsonl_rows(jsonl, new)
        rows += new
    command = "python -m experiments.rnn_table " + " ".join(a for a in sys.argv[1:])
    with open(os.path.join(FLAGS.output_dir, "table.md"), "w") as f:
        f.write(markdown(rows, layers, cells, command.strip()))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(FLAGS.output_dir, "table.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    if rows:
        plot_cost_vs_size(rows, os.path.join(FLAGS.output_dir, "cost_vs_size.png"))
    if grid:  # a resume with nothing left to run keeps the last run's timing
        write_json_atomic(os.path.join(FLAGS.output_dir, "timing.json"),
                          {"seconds_this_run": time.perf_counter() - start, "models_this_run": len(grid)})
    print(open(os.path.join(FLAGS.output_dir, "table.md")).read())


if __name__ == "__main__":
    app.run(main)

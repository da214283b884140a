r"""The acceptance tables of Pan & Rajan's decomposition, written to ``experiments/results/concern/``.

    python -m experiments.concern_tables --mode=dense  --workdir=/tmp/concern_runs   # FC1-FC4 x MNIST/F-MNIST
    python -m experiments.concern_tables --mode=cnn    --workdir=/tmp/concern_runs   # LeNet5, ResNet20 (no BN)
    python -m experiments.concern_tables --mode=timing --workdir=/tmp/concern_runs   # LeNet5 MNIST, 10 modules

Standard models are trained here (resumable under ``--workdir``; nothing is selected on the test
set). ``dense`` compares TI-I, TI-SNE and CM-RIE with the supermask paper's Table 1 and also writes
``dense_table.csv`` (model,dataset,variant,jaccard,composed_accuracy,model_accuracy); ``cnn`` gives the
CNN paper's Table 1 columns (CI+TI+MC, CI+TI+MC-BLN, CI+TI+MC-BLN+MC-BI); ``timing`` times the
vectorised decomposition of all ten LeNet5 modules against a per-sample Python loop of the same statistic.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from tqdm.auto import tqdm

from experiments.common import write_json_atomic
from jaxmod import data, metrics, models, train
from jaxmod.activations import forward
from jaxmod.approaches import concern
from jaxmod.losses import cross_entropy_loss

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "dense", ["dense", "cnn", "timing"], "Which table to produce.")
flags.DEFINE_string("workdir", "/tmp/concern_runs", "Where trained standard models are kept (resumable).")
flags.DEFINE_string("out", "experiments/results/concern", "Where tables go.")
flags.DEFINE_list("models", None, "Models (default: fc1..fc4 for dense, lenet5,resnet20 for cnn).")
flags.DEFINE_list("datasets", ["mnist", "fashion_mnist"], "Datasets.")
flags.DEFINE_integer("epochs", 3, "Training epochs of the standard models.")
flags.DEFINE_integer("train_limit", None, "Training samples (class balanced; default all).")
flags.DEFINE_integer("test_limit", None, "Test samples (class balanced; default all).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_integer("loop_samples", 200, "Samples of the per-sample loop baseline (timing mode).")
flags.DEFINE_bool("progress", True, "Progress bars.")
flags.DEFINE_float("lr", None, "Learning rate of the standard models (default: train.TrainConfig's).")
flags.DEFINE_bool("table_only", False, "cnn mode: write cnn_table.md/csv from the finished rows, run nothing.")

# The supermask paper's Table 1 (Kingetsu et al.): Pan & Rajan's dense variants, Jaccard index between
# modules and recomposed accuracy, k = 10%.
PAPER_DENSE = {
    ("mnist", "ti_i"): ((0.47, 94.91), (0.64, 96.83), (0.44, 69.19), (0.53, 96.44)),
    ("mnist", "ti_sne"): ((0.47, 94.91), (0.65, 96.83), (0.45, 96.30), (0.55, 96.79)),
    ("mnist", "cm_rie"): ((0.43, 94.90), (0.63, 96.82), (0.43, 96.33), (0.53, 96.75)),
    ("fashion_mnist", "ti_i"): ((0.78, 85.82), (0.64, 87.58), (0.52, 77.55), (0.56, 87.51)),
    ("fashion_mnist", "ti_sne"): ((0.78, 85.82), (0.65, 87.58), (0.53, 87.09), (0.57, 87.79)),
    ("fashion_mnist", "cm_rie"): ((0.75, 85.85), (0.63, 87.56), (0.51, 87.10), (0.55, 87.95)),
}
MODEL_CONFIG = {"resnet20": {"use_bn": False}}


def trained(model_name: str, dataset: data.Dataset, dataset_name: str, epochs: int) -> tuple[Any, dict, list]:
    """A standard model trained with cross-entropy (resumed from ``--workdir`` when already there)."""
    model = models.create_model(model_name, dataset.num_classes, **MODEL_CONFIG.get(model_name, {}))
    config = train.TrainConfig(epochs=epochs, seed=FLAGS.seed, **({} if FLAGS.lr is None else
                                                                   {"learning_rate": FLAGS.lr}))
    suffix = "" if FLAGS.lr is None else f"_lr{FLAGS.lr:g}"
    workdir = os.path.join(FLAGS.workdir, f"{model_name}_{dataset_name}_e{epochs}_n{len(dataset.train.x)}{suffix}")
    state, history = train.fit(model, dataset, cross_entropy_loss(), config, workdir, progress=FLAGS.progress,
                               description=f"{model_name}/{dataset_name}",
                               run_info={"model": model_name, "dataset": dataset_name})
    return model, state.variables(), history


def modules_digest(masks: Any, heads: np.ndarray | None) -> str:
    """A digest of a module set's masks and heads: equal digests, equal modules (so equal outputs)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(masks) + ([] if heads is None else [heads]):
        leaf = np.asarray(leaf)
        digest.update(str((leaf.shape, leaf.dtype)).encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()


def decompose_and_measure(model, variables, dataset: data.Dataset, variant: str,
                          cache: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Decompose with ``variant``, vote with all modules on the test split, measure Jaccard indices.
    ``cache`` (digest -> confidences) skips the test-split forward passes when an earlier variant of the
    same model produced the very same masks and heads (e.g. a backtracking step that removed nothing)."""
    approach = concern.Concern(variant=variant)
    start = time.perf_counter()
    dec = approach.decompose(model, variables, dataset.train.x, dataset.train.y, dataset.num_classes)
    seconds = time.perf_counter() - start
    heads = None if dec.heads is None else dec.heads["channel"]
    key = modules_digest(dec.masks, heads)
    if cache is not None and key in cache:
        conf = cache[key]
    else:
        conf = concern.module_confidences(model, variables, dec.masks, heads, range(dataset.num_classes),
                                          dataset.test.x)
        if cache is not None:
            cache[key] = conf
    voted = concern.voted(conf, dataset.test.y, range(dataset.num_classes))
    return {"variant": variant, **voted, **concern.jaccard_figures(model, variables, dec.masks, dataset.input_shape),
            "decompose_seconds": seconds}


def write_table(name: str, rows: list[dict[str, Any]], columns: Sequence[str], title: str, notes: str) -> None:
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, f"{name}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    command = "python -m experiments.concern_tables " + " ".join(sys.argv[1:])
    md = (f"# {title}\n\nCommand: `{command}`\n\n{notes}\n\n"
          f"{metrics.markdown_table([{c: r.get(c) for c in columns} for r in rows], list(columns))}\n")
    with open(os.path.join(FLAGS.out, f"{name}.md"), "w") as f:
        f.write(md)


def load(name: str) -> data.Dataset:
    return data.load_dataset(name, seed=FLAGS.seed, train_limit=FLAGS.train_limit, test_limit=FLAGS.test_limit)


def dense_mode() -> None:
    rows = []
    for dataset_name in FLAGS.datasets:
        dataset = load(dataset_name)
        for model_name in FLAGS.models or ["fc1", "fc2", "fc3", "fc4"]:
            model, variables, _ = trained(model_name, dataset, dataset_name, FLAGS.epochs)
            acc = train.evaluate(model, variables, dataset.test.x, dataset.test.y)["top1"]
            for variant in concern.DENSE_VARIANTS:
                r = decompose_and_measure(model, variables, dataset, variant)
                paper = PAPER_DENSE.get((dataset_name, variant))
                depth = int(model_name[2:]) - 1
                rows.append({"model": model_name, "dataset": dataset_name, "variant": variant,
                             "jaccard": round(r["weight_mean_pairwise"], 4), "composed_accuracy": round(r["top1"], 4),
                             "model_accuracy": round(acc, 4),
                             "jaccard_module_model": round(r["weight_mean_size"], 4),
                             "paper_jaccard": paper[depth][0] if paper else None,
                             "paper_composed_accuracy": paper[depth][1] / 100 if paper else None})
                tqdm.write(str(rows[-1]))
    columns = ["model", "dataset", "variant", "jaccard", "composed_accuracy", "model_accuracy"]
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "dense_table.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    write_table("dense_table_full", rows, columns + ["jaccard_module_model", "paper_jaccard",
                                                     "paper_composed_accuracy"],
                "Pan & Rajan dense decomposition (FSE 2020 variants) on FC1-FC4",
                "`jaccard`: mean pairwise Jaccard index between the ten modules over weights (a module keeps the "
                "weights between its kept units and its class's output edges), the measure of the FSE 2020 code and "
                "of the supermask paper's Table 1. `jaccard_module_model`: kept fraction of the model's weights. "
                "`composed_accuracy`: all ten modules voting on the test split. `paper_*`: the supermask paper's "
                f"Table 1 figures for the same variant. Standard models: {FLAGS.epochs} epochs, SGD as in "
                "BUILD_NOTES, no selection on the test set.")


def cnn_row_key(model_name: str, dataset_name: str) -> dict[str, Any]:
    """What identifies a finished CNN row in ``cnn_rows.jsonl``: a rerun with other settings recomputes it."""
    key = {"model": model_name, "dataset": dataset_name, "epochs": FLAGS.epochs, "train_limit": FLAGS.train_limit,
           "test_limit": FLAGS.test_limit, "seed": FLAGS.seed}
    return key if FLAGS.lr is None else {**key, "lr": FLAGS.lr}


def finished_rows(path: str) -> list[dict[str, Any]]:
    """Rows already written to the JSONL file (one JSON object per line; a torn last line is ignored)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logging.warning("ignoring an unreadable line of %s", path)
    return rows


def cnn_mode() -> None:
    """One row per model and dataset, appended to ``cnn_rows.jsonl`` as it finishes; finished rows (same
    settings) are skipped on a rerun; the table is rewritten after every row and at the end."""
    jsonl = os.path.join(FLAGS.out, "cnn_rows.jsonl")
    os.makedirs(FLAGS.out, exist_ok=True)
    wanted = [(m, d) for d in FLAGS.datasets for m in FLAGS.models or ["lenet5", "resnet20"]]
    for model_name, dataset_name in [] if FLAGS.table_only else wanted:
        key = cnn_row_key(model_name, dataset_name)
        if any(r.get("key") == key for r in finished_rows(jsonl)):
            tqdm.write(f"{model_name}/{dataset_name}: finished row found in {jsonl}, skipped")
            continue
        dataset = load(dataset_name)
        start = time.perf_counter()
        model, variables, history = trained(model_name, dataset, dataset_name, FLAGS.epochs)
        ev = train.evaluate(model, variables, dataset.test.x, dataset.test.y)
        row = {"model": model_name, "dataset": dataset_name, "model_top1": round(ev["top1"], 4),
               "model_top5": round(ev["top5"], 4), "val_top1": round(history[-1]["val_accuracy"], 4),
               "train_samples": len(dataset.train.x), "test_samples": len(dataset.test.x),
               "train_or_resume_seconds": round(time.perf_counter() - start, 1)}
        cache: dict[str, np.ndarray] = {}
        for variant in concern.CNN_VARIANTS:
            r = decompose_and_measure(model, variables, dataset, variant, cache)
            row.update({f"{variant}_top1": round(r["top1"], 4), f"{variant}_top5": round(r["top5"], 4),
                        f"{variant}_ji": round(r["node_mean_module_model"], 4),
                        f"{variant}_ji_pairwise": round(r["node_mean_pairwise"], 4),
                        f"{variant}_decompose_seconds": round(r["decompose_seconds"], 1)})
        row["bln_meets_model_minus_0.02"] = row["ci_ti_mc_bln_top1"] >= row["model_top1"] - 0.02
        row["model_trained"] = row["model_top1"] > 2 / dataset.num_classes  # else the comparison is vacuous
        with open(jsonl, "a") as f:
            f.write(json.dumps({**row, "key": key}) + "\n")
        tqdm.write(str(row))
        write_cnn_table(jsonl, wanted)
    write_cnn_table(jsonl, wanted)


def write_cnn_table(jsonl: str, wanted: Sequence[tuple[str, str]]) -> None:
    """``cnn_table.md``/``.csv`` from the finished rows of this command's settings, in ``wanted`` order."""
    columns = ["model", "dataset", "model_top1", "model_top5"] + [
        f"{v}_{m}" for v in concern.CNN_VARIANTS for m in ("top1", "top5", "ji")] + [
        "bln_meets_model_minus_0.02", "model_trained"]
    keys = [json.dumps(cnn_row_key(m, d), sort_keys=True) for m, d in wanted]
    done = {json.dumps(r.get("key"), sort_keys=True): r for r in finished_rows(jsonl)}
    rows = [{"model_trained": r["model_top1"] > 0.2, **r} for r in (done[k] for k in keys if k in done)]
    write_table("cnn_table", rows, columns + [f"{v}_ji_pairwise" for v in concern.CNN_VARIANTS],
                "Pan & Rajan CNN decomposition (ICSE 2022 Table 1 columns)",
                "Composed top-1/top-5: all ten binary modules voting on the test split. `ji`: Jaccard index "
                "between a module and the model over nodes (dense units and conv-map positions, what the "
                "method removes), mean over modules; `ji_pairwise`: mean over module pairs. ResNet20 has no "
                "batch norm (Pan & Rajan's models) and 1x1 projection shortcuts. Standard models: "
                f"{FLAGS.epochs} epochs on {FLAGS.train_limit or 'all'} class-balanced training samples, "
                "no selection on the test set (the last epoch is taken). Rows are written to "
                f"`cnn_rows.jsonl` as they finish (a rerun skips them): {len(rows)} of {len(keys)} here. "
                "`model_trained`: the standard model's top-1 is above twice chance; where it is not, the "
                "composed-vs-model comparison says nothing (modules of an untrained model vote like it).")


def loop_statistic(model, variables, x: np.ndarray) -> dict[str, np.ndarray]:
    """The straightforward baseline: one forward per sample, then update the inactive map (Algorithm 1)."""
    fwd = jax.jit(lambda v, xb: forward(model, v, xb)[1])
    inactive = None
    for i in range(len(x)):
        acts = {k: np.asarray(a[0]) for k, a in fwd(variables, jnp.asarray(x[i: i + 1])).items()}
        now = {k: a <= 0 for k, a in acts.items()}
        inactive = now if inactive is None else {k: inactive[k] & now[k] for k in now}
    return inactive


def timing_mode() -> None:
    dataset = data.load_dataset("mnist", seed=FLAGS.seed, train_limit=FLAGS.train_limit)
    model, variables, _ = trained("lenet5", dataset, "mnist", FLAGS.epochs)
    approach = concern.Concern(variant="ci_ti_mc_bln")
    x, y = dataset.train.x, dataset.train.y
    approach.decompose(model, variables, x[:2000], y[:2000], 10)  # compile
    start = time.perf_counter()
    dec = approach.decompose(model, variables, x, y, 10)
    jax.block_until_ready(jax.tree.leaves(dec.masks))
    vectorised = time.perf_counter() - start
    scanned = int(np.sum(dec.statistics["positives"]) + 0)
    is_pos, is_neg = concern.select_samples(y, 10, approach.positives, approach.negatives_per_class(10))
    selected = int(np.sum(is_pos | is_neg))
    slice_x = x[np.flatnonzero(is_pos & (y == 0))[: FLAGS.loop_samples]]
    loop_statistic(model, variables, slice_x[:2])  # compile
    start = time.perf_counter()
    inactive = loop_statistic(model, variables, slice_x)
    loop_s = time.perf_counter() - start
    # the same statistic from the vectorised pass on the same slice agrees
    pos_c, _, _, _ = concern.node_counts(model, variables, slice_x, np.zeros(len(slice_x), np.int32),
                                         np.ones(len(slice_x), bool), np.zeros(len(slice_x), bool), 1)
    agree = all(np.array_equal(inactive[k], pos_c[k][0] == 0) for k in inactive)
    result = {"model": "lenet5", "dataset": "mnist", "variant": approach.variant, "modules": 10,
              "positives_per_module": approach.positives, "negatives_per_other_class": approach.negatives_per_class(10),
              "positives_scanned": scanned, "samples_scanned": selected,
              "vectorised_seconds_all_modules": vectorised,
              "loop_samples": len(slice_x), "loop_seconds": loop_s, "loop_seconds_per_sample": loop_s / len(slice_x),
              "loop_seconds_extrapolated_to_scanned_samples": loop_s / len(slice_x) * selected,
              "loop_and_vectorised_agree_on_slice": agree, "backend": jax.default_backend(),
              "rapl_available": os.path.isdir("/sys/class/powercap"),
              "command": "python -m experiments.concern_tables " + " ".join(sys.argv[1:])}
    os.makedirs(FLAGS.out, exist_ok=True)
    write_json_atomic(os.path.join(FLAGS.out, "timing.json"), result)
    print(result)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    if FLAGS.epochs < 1:
        raise app.UsageError("--epochs must be >= 1")
    {"dense": dense_mode, "cnn": cnn_mode, "timing": timing_mode}[FLAGS.mode]()


if __name__ == "__main__":
    app.run(main)

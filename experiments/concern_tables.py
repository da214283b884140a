r"""The acceptance tables of Pan & Rajan's decomposition, written to ``experiments/results/concern/``.

    python -m experiments.concern_tables --mode=dense  --workdir=/tmp/concern_runs   # FC1-FC4 x MNIST/F-MNIST
    python -m experiments.concern_tables --mode=cnn    --workdir=/tmp/concern_runs   # LeNet5, ResNet20 (no BN)
    python -m experiments.concern_tables --mode=timing --workdir=/tmp/concern_runs   # LeNet5 MNIST, 10 modules
    python -m experiments.concern_tables --mode=recipe --workdir=/tmp/concern_runs   # ResNet20 recipe (val split)
    python -m experiments.concern_tables --mode=steps  --workdir=/tmp/concern_runs   # what each step removes

Standard models are trained here (resumable under ``--workdir``; nothing is selected on the test
set). ``dense`` compares TI-I, TI-SNE and CM-RIE with the supermask paper's Table 1 and also writes
``dense_table.csv`` (model,dataset,variant,jaccard,composed_accuracy,model_accuracy); ``cnn`` gives the
CNN paper's Table 1 columns (CI+TI+MC, CI+TI+MC-BLN, CI+TI+MC-BLN+MC-BI); ``timing`` times the
vectorised decomposition of all ten LeNet5 modules against a per-sample Python loop of the same statistic;
``recipe`` compares training recipes for ResNet20 without batch norm on the validation split; ``steps``
reports per layer what CI, TI, MC-BLN and MC-BI remove, and how MC-BLN's delta changes the modules.
ResNets are trained with ``--resnet_optimizer`` / ``--resnet_lr`` / ``--zero_init_residual``, which
enter their cnn row keys; LeNet5 keeps the library's SGD.
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

from experiments.common import append_jsonl_rows, number_list_flag, read_jsonl_rows, write_json_atomic
from jaxmod import data, models, report, reuse, train
from jaxmod.activations import forward
from jaxmod.approaches import concern
from jaxmod.losses import cross_entropy_loss
from jaxmod.modules import ModuleSet
from jaxmod.running import module_outputs

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "dense", ["dense", "cnn", "timing", "recipe", "steps"], "Which table to produce.")
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
flags.DEFINE_bool("zero_init_residual", False, "cnn mode: ResNets start each block's conv2 at zero (Fixup-style), "
                  "the recipe that trains ResNet20 without batch norm (chosen on the validation split, recipe mode).")
flags.DEFINE_bool("steps_accuracy", True, "steps mode: also vote with the modules of every delta on the test "
                  "split (backtracking_delta); off: only the per-layer counts and edge strengths.")
flags.DEFINE_list("deltas", ["0.5", "0.25", "0.1", "0.05"], "steps mode: MC-BLN thresholds to diagnose.")
flags.DEFINE_float("resnet_lr", None, "Learning rate of the ResNets only (default --lr): the recipe for ResNet20 "
                   "without batch norm differs from LeNet5's.")
flags.DEFINE_enum("resnet_optimizer", "sgd", ["sgd", "adam"], "Optimizer of the ResNets' standard models: the "
                  "library's SGD (Nesterov, cosine) or Adam with the same cosine schedule (--resnet_lr, default 1e-3).")
flags.DEFINE_list("recipe_candidates", ["default:sgd:0.05", "zero:sgd:0.05", "default:adam:0.001"],
                  "recipe mode: init:optimizer:lr per candidate (init default or zero: zero-initialised residual "
                  "branches; optimizer sgd or adam).")

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


def model_overrides(model_name: str, zero_init: bool | None = None) -> dict[str, Any]:
    """The model configuration of ``model_name`` in these tables: ResNets without batch norm, their
    residual branches zero-initialised when ``zero_init`` (default ``--zero_init_residual``)."""
    zero_init = FLAGS.zero_init_residual if zero_init is None else zero_init
    config = dict(MODEL_CONFIG.get(model_name, {}))
    if model_name.startswith("resnet") and zero_init:
        config["zero_init_residual"] = True
    return config


def model_lr(model_name: str) -> float | None:
    """The learning rate of ``model_name``'s standard model: ``--resnet_lr`` for ResNets when set, else ``--lr``."""
    if model_name.startswith("resnet") and FLAGS.resnet_lr is not None:
        return FLAGS.resnet_lr
    return FLAGS.lr


def model_optimizer(model_name: str) -> str:
    """``--resnet_optimizer`` for ResNets, the library's SGD for every other model."""
    return FLAGS.resnet_optimizer if model_name.startswith("resnet") else "sgd"


def trained(model_name: str, dataset: data.Dataset, dataset_name: str, epochs: int, lr: float | None = None,
            zero_init: bool | None = None, optimizer: str | None = None) -> tuple[Any, dict, list]:
    """A standard model trained with cross-entropy (resumed from ``--workdir`` when already there)."""
    overrides = model_overrides(model_name, zero_init)
    optimizer = model_optimizer(model_name) if optimizer is None else optimizer
    lr = model_lr(model_name) if lr is None else lr
    if optimizer == "adam" and lr is None:
        lr = 1e-3
    model = models.create_model(model_name, dataset.num_classes, **overrides)
    config = train.TrainConfig(epochs=epochs, seed=FLAGS.seed, optimizer=optimizer,
                               **({} if lr is None else {"learning_rate": lr}))
    info = {"model": model_name, "dataset": dataset_name, **({"optimizer": "adam"} if optimizer == "adam" else {})}
    suffix = (("" if lr is None else f"_lr{lr:g}") + ("_zi" if overrides.get("zero_init_residual") else "")
              + ("_adam" if optimizer == "adam" else ""))
    workdir = os.path.join(FLAGS.workdir, f"{model_name}_{dataset_name}_e{epochs}_n{len(dataset.train.x)}{suffix}")
    state, history = train.fit(model, dataset, cross_entropy_loss(), config, workdir, progress=FLAGS.progress,
                               description=f"{model_name}/{dataset_name}", run_info=info)
    return model, state.variables(), history


def modules_digest(modules: ModuleSet) -> str:
    """A digest of a module set's masks and heads: equal digests, equal modules (so equal outputs)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(modules):
        leaf = np.asarray(leaf)
        digest.update(str((leaf.shape, leaf.dtype)).encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()


def vote(model, variables, modules: ModuleSet, dataset: data.Dataset, cache: dict[str, np.ndarray] | None) -> dict:
    """All modules voting on the test split. ``cache`` (digest -> confidences) skips the test-split forward passes
    when an earlier variant of the same model produced the very same modules (e.g. a backtracking step that
    removed nothing)."""
    key = modules_digest(modules)
    if cache is not None and key in cache:
        conf = cache[key]
    else:
        conf = module_outputs(model, variables, modules, dataset.test.x)
        if cache is not None:
            cache[key] = conf
    return reuse.voted_accuracy(conf, dataset.test.y, range(dataset.num_classes))


def decompose_and_measure(model, variables, dataset: data.Dataset, variant: str,
                          cache: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Decompose with ``variant``, vote with all modules on the test split, measure Jaccard indices."""
    approach = concern.Concern(variant=variant)
    start = time.perf_counter()
    dec = approach.decompose(model, variables, dataset.train.x, dataset.train.y, dataset.num_classes)
    seconds = time.perf_counter() - start
    voted = vote(model, variables, dec.modules, dataset, cache)
    kept = float(sum(np.sum(m) for m in jax.tree.leaves(dec.modules.positions))) / dataset.num_classes
    return {"variant": variant, **voted, **concern.jaccard_figures(model, variables, dec.modules),
            "decompose_seconds": seconds, "kept_nodes": kept}


def write_table(name: str, rows: list[dict[str, Any]], columns: Sequence[str], title: str, notes: str) -> None:
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, f"{name}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    command = "python -m experiments.concern_tables " + " ".join(sys.argv[1:])
    md = (f"# {title}\n\nCommand: `{command}`\n\n{notes}\n\n"
          f"{report.markdown_table([{c: r.get(c) for c in columns} for r in rows], list(columns))}\n")
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
    if model_overrides(model_name).get("zero_init_residual"):
        key["zero_init_residual"] = True
    if model_optimizer(model_name) == "adam":
        key["optimizer"] = "adam"
    lr = model_lr(model_name)
    return key if lr is None else {**key, "lr": lr}


def cnn_mode() -> None:
    """One row per model and dataset, appended to ``cnn_rows.jsonl`` as it finishes; finished rows (same
    settings) are skipped on a rerun; the table is rewritten after every row and at the end."""
    jsonl = os.path.join(FLAGS.out, "cnn_rows.jsonl")
    os.makedirs(FLAGS.out, exist_ok=True)
    wanted = [(m, d) for d in FLAGS.datasets for m in FLAGS.models or ["lenet5", "resnet20"]]
    for model_name, dataset_name in [] if FLAGS.table_only else wanted:
        key = cnn_row_key(model_name, dataset_name)
        if any(r.get("key") == key for r in read_jsonl_rows(jsonl)):
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
                        f"{variant}_decompose_seconds": round(r["decompose_seconds"], 1),
                        f"{variant}_kept_nodes": round(r["kept_nodes"], 1)})
        row["nodes"] = int(sum(np.prod(s) for s in concern.node_shapes(model, variables, dataset.input_shape).values()))
        row["bln_removed_nodes"] = round(row["ci_ti_mc_kept_nodes"] - row["ci_ti_mc_bln_kept_nodes"], 1)
        row["bi_removed_nodes"] = round(row["ci_ti_mc_bln_kept_nodes"] - row["ci_ti_mc_bln_bi_kept_nodes"], 1)
        row["optimizer"] = model_optimizer(model_name)
        row["bln_meets_model_minus_0.02"] = row["ci_ti_mc_bln_top1"] >= row["model_top1"] - 0.02
        row["model_trained"] = row["model_top1"] > 2 / dataset.num_classes  # else the comparison is vacuous
        append_jsonl_rows(jsonl, [{**row, "key": key}])
        tqdm.write(str(row))
        write_cnn_table(jsonl, wanted)
    write_cnn_table(jsonl, wanted)


def write_cnn_table(jsonl: str, wanted: Sequence[tuple[str, str]]) -> None:
    """``cnn_table.md``/``.csv`` from the finished rows of this command's settings, in ``wanted`` order."""
    columns = ["model", "dataset", "model_top1", "model_top5"] + [
        f"{v}_{m}" for v in concern.CNN_VARIANTS for m in ("top1", "top5", "ji")] + [
        "bln_meets_model_minus_0.02", "model_trained"]
    keys = [json.dumps(cnn_row_key(m, d), sort_keys=True) for m, d in wanted]
    done = {json.dumps(r.get("key"), sort_keys=True): r for r in read_jsonl_rows(jsonl)}
    rows = [{"model_trained": r["model_top1"] > 0.2, **r} for r in (done[k] for k in keys if k in done)]
    write_table("cnn_table", rows, columns + [f"{v}_ji_pairwise" for v in concern.CNN_VARIANTS]
                + ["nodes", "ci_ti_mc_kept_nodes", "bln_removed_nodes", "bi_removed_nodes", "optimizer"],
                "Pan & Rajan CNN decomposition (ICSE 2022 Table 1 columns)",
                "Composed top-1/top-5: all ten binary modules voting on the test split. `ji`: Jaccard index "
                "between a module and the model over nodes (dense units and conv-map positions, what the "
                "method removes), mean over modules; `ji_pairwise`: mean over module pairs. ResNet20 has no "
                "batch norm (Pan & Rajan's models) and 1x1 projection shortcuts. Standard models: "
                f"{FLAGS.epochs} epochs on {FLAGS.train_limit or 'all'} class-balanced training samples, "
                "no selection on the test set (the last epoch is taken). Rows are written to "
                f"`cnn_rows.jsonl` as they finish (a rerun skips them): {len(rows)} of {len(keys)} here. "
                "`model_trained`: the standard model's top-1 is above twice chance; where it is not, the "
                "composed-vs-model comparison says nothing (modules of an untrained model vote like it). "
                "`nodes`: the model's nodes; `ci_ti_mc_kept_nodes`: nodes a CI+TI+MC module keeps (mean over "
                "modules); `bln_removed_nodes`/`bi_removed_nodes`: how many more MC-BLN and then MC-BI remove "
                "(mean per module; see backtracking_*.md for the per-layer diagnosis). `optimizer`: how the "
                "standard model was trained (ResNet20: Adam, chosen on the validation split, recipe_table.md).")


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
    jax.block_until_ready(jax.tree.leaves(dec.modules))
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


def recipe_candidates() -> list[tuple[str, str, float]]:
    """``--recipe_candidates`` parsed: (init, optimizer, lr) each; ``UsageError`` naming a bad one."""
    out = []
    for text in FLAGS.recipe_candidates:
        parts = text.split(":")
        try:
            init, optimizer, lr = parts[0], parts[1], float(parts[2])
        except (IndexError, ValueError) as err:
            raise app.UsageError(f"--recipe_candidates: {text!r} is not init:optimizer:lr") from err
        if len(parts) != 3 or init not in ("default", "zero") or optimizer not in ("sgd", "adam") or lr <= 0:
            raise app.UsageError(f"--recipe_candidates: {text!r} must be (default|zero):(sgd|adam):lr>0")
        out.append((init, optimizer, lr))
    return out


def recipe_mode() -> None:
    """Choose how ResNet20 without batch norm is trained, on the validation split only: every learning
    rate of ``--recipe_lrs`` with the default initialisation and with zero-initialised residual branches.
    Writes ``recipe_table.md``/``.csv`` (validation accuracy per epoch; the test split is not read)."""
    rows = []
    for dataset_name in FLAGS.datasets:
        dataset = load(dataset_name)
        for model_name in FLAGS.models or ["resnet20"]:
            for init, optimizer, lr in recipe_candidates():
                start = time.perf_counter()
                _, _, history = trained(model_name, dataset, dataset_name, FLAGS.epochs, lr, init == "zero", optimizer)
                rows.append({"model": model_name, "dataset": dataset_name, "zero_init_residual": init == "zero",
                             "optimizer": optimizer, "lr": lr,
                             "val_top1_per_epoch": " ".join(f"{h['val_accuracy']:.4f}" for h in history),
                             "train_loss_per_epoch": " ".join(f"{h['train_loss']:.4f}" for h in history),
                             "val_top1": round(history[-1]["val_accuracy"], 4),
                             "train_or_resume_seconds": round(time.perf_counter() - start, 1)})
                tqdm.write(str(rows[-1]))
    write_table("recipe_table", rows, list(rows[0]) if rows else ["model"],
                "Training recipe for ResNet20 without batch norm (validation split only)",
                f"{FLAGS.epochs} epochs on {FLAGS.train_limit or 'all'} class-balanced training samples, batch 128; "
                "`sgd`: the library's SGD (Nesterov 0.9, cosine decay); `adam`: Adam with the same cosine decay. "
                "`val_top1`: the validation split after the last epoch. `zero_init_residual`: each block's conv2 "
                "starts at zero (Fixup-style). The test split is not read.")


def steps_mode() -> None:
    """What each step of the CNN pipeline removes, per layer, and what MC-BLN's threshold delta changes:
    ``backtracking_layers`` (nodes removed by CI, restored by TI, removed by MC-BLN and MC-BI, mean over
    modules), ``backtracking_edges`` (how many edges reach |w| >= delta) and ``backtracking_delta``
    (composed accuracy and Jaccard per variant and delta). One statistics pass per model serves every delta."""
    layer_rows, edge_rows, delta_rows = [], [], []
    for dataset_name in FLAGS.datasets:
        dataset = load(dataset_name)
        for model_name in FLAGS.models or ["lenet5"]:
            model, variables, _ = trained(model_name, dataset, dataset_name, FLAGS.epochs)
            approach = concern.Concern(variant="ci_ti_mc_bln_bi")
            x, y, c = dataset.train.x, dataset.train.y, dataset.num_classes
            plan = approach.check(model, variables, x, y, c)
            is_pos, is_neg = concern.select_samples(y, c, approach.positives, approach.negatives_per_class(c))
            pos_c, neg_c, n_pos, _ = concern.node_counts(model, variables, x, y, is_pos, is_neg, c)
            base = approach.decompose(model, variables, x, y, c).modules  # the set's head and metadata
            cache: dict[str, np.ndarray] = {}
            model_top1 = (train.evaluate(model, variables, dataset.test.x, dataset.test.y)["top1"]
                          if FLAGS.steps_accuracy else None)
            for delta in (float(d) for d in FLAGS.deltas):
                steps = concern.step_masks(pos_c, neg_c, n_pos, variables["params"], plan, delta)
                where = {"model": model_name, "dataset": dataset_name, "delta": delta}
                layer_rows += [{**where, **{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}}
                               for r in concern.step_removals(steps)]
                edge_rows += [{**where, **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}}
                              for r in concern.edge_strength(variables["params"], plan, delta)]
                for step, variant in () if not FLAGS.steps_accuracy else (
                        ("ti", "ci_ti_mc"), ("bln", "ci_ti_mc_bln"), ("bi", "ci_ti_mc_bln_bi")):
                    modules = base.replace(positions=steps[step])
                    voted = vote(model, variables, modules, dataset, cache)
                    ji = concern.jaccard_figures(model, variables, modules)
                    delta_rows.append({**where, "variant": variant, "model_top1": round(model_top1, 4),
                                       "top1": round(voted["top1"], 4), "top5": round(voted["top5"], 4),
                                       "ji": round(ji["node_mean_module_model"], 4),
                                       "ji_pairwise": round(ji["node_mean_pairwise"], 4)})
                    tqdm.write(str(delta_rows[-1]))
    setting = (f"Standard models as in the cnn table ({FLAGS.epochs} epochs on {FLAGS.train_limit or 'all'} "
               f"class-balanced training samples, {FLAGS.test_limit or 'all'} test samples); 1000 positives per "
               "module, 111 negatives per other class; one statistics pass per model, every delta from it.")
    write_table("backtracking_layers", layer_rows, list(layer_rows[0]), "What each step removes, per layer",
                "Mean over the ten modules: nodes (dense units or conv-map positions) CI removes (inactive on every "
                "positive), TI restores (active on a negative), MC-BLN and MC-BI remove, and nodes kept; "
                "`ti_removed_in_every_module`: nodes CI+TI removes from all ten modules alike (inactive on every "
                "selected sample, positives and negatives). " + setting)
    write_table("backtracking_edges", edge_rows, ["model", "dataset", "delta", "kernel", "max_abs", "strong_fraction",
                                                  "max_abs_unconcerned", "output_rule_pairs"],
                "Edges MC-BLN's threshold can act on",
                "`strong_fraction`: edges with |w| >= delta; `max_abs_unconcerned`: the largest |mean of the other "
                "classes' output edges| (the channeled unconcerned node); `output_rule_pairs`: (node, module) pairs "
                "meeting the output rule |w_unconcerned| >= delta and |w_concerned| < delta. " + setting)
    if not delta_rows:
        return
    write_table("backtracking_delta", delta_rows, list(delta_rows[0]), "Composed accuracy and Jaccard per delta",
                "All ten modules voting on the test split; `ji`: module-model Jaccard over nodes (mean), "
                "`ji_pairwise`: between modules. delta 0.5 is the paper's. " + setting)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    if FLAGS.epochs < 1:
        raise app.UsageError("--epochs must be >= 1")
    if FLAGS.mode == "recipe" and not recipe_candidates():
        raise app.UsageError("--recipe_candidates is empty")
    for name in ("lr", "resnet_lr"):
        if getattr(FLAGS, name) is not None and getattr(FLAGS, name) <= 0:
            raise app.UsageError(f"--{name} must be > 0")
    number_list_flag(FLAGS.deltas, "deltas")
    {"dense": dense_mode, "cnn": cnn_mode, "timing": timing_mode, "recipe": recipe_mode,
     "steps": steps_mode}[FLAGS.mode]()


if __name__ == "__main__":
    app.run(main)

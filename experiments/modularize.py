r"""Train a standard and a modular model, decompose, compose, measure: one approach end to end.

    python -m experiments.modularize --approach=moda --model=lenet5 --dataset=mnist \
        --epochs=4 --workdir=runs/moda_lenet5_mnist

Writes ``WORKDIR/results.json`` (the schema shared by every approach), PNG plots under
``WORKDIR/plots``, the module set under ``WORKDIR/modules`` (orbax) and resumable training
checkpoints under ``WORKDIR/standard`` and ``WORKDIR/modular``; prints a summary table.
Paper scale is a flag away, e.g. ``--model=vgg16 --dataset=cifar10 --epochs=200
--data_dir=PREPARED_TFDS_DIR``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from tqdm.auto import tqdm

from jaxmod import approaches, checkpoint, compose, data, metrics, models, train
from jaxmod.activations import predict_logits
from jaxmod.losses import cross_entropy_loss
from jaxmod.modules import ModuleSet, as_hashable, module_set
from jaxmod.topology import count_parameters, resolve_topology

FLAGS = flags.FLAGS
flags.DEFINE_string("approach", "moda", "Modularization approach.")
flags.DEFINE_string("model", "lenet5", "Zoo model name.")
flags.DEFINE_string("model_config", "{}", 'Model configuration as JSON, e.g. \'{"use_bn": false}\'.')
flags.DEFINE_string("dataset", "mnist", "Dataset name (mnist, fashion_mnist, digits, cifar10, ...).")
flags.DEFINE_integer("epochs", 4, "Training epochs for each of the two models.")
flags.DEFINE_string("workdir", None, "Output directory (resumable).")
flags.DEFINE_integer("seed", 0, "Seed for initialisation, shuffling, splits and sub-tasks.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_float("lr", 0.05, "Initial learning rate (cosine schedule).")
flags.DEFINE_float("alpha", 1.0, "MODA affinity weight.")
flags.DEFINE_float("beta", 1.0, "MODA dispersion weight.")
flags.DEFINE_float("gamma", 0.3, "MODA compactness weight.")
flags.DEFINE_float("tau", 0.9, "Activation-frequency threshold for decomposition.")
flags.DEFINE_integer("num_subtasks", 30, "Random reuse sub-tasks.")
flags.DEFINE_integer("min_subtask_classes", 2, "Smallest sub-task.")
flags.DEFINE_integer("max_subtask_classes", 9, "Largest sub-task.")
flags.DEFINE_integer("train_limit", None, "Use at most this many training samples (class balanced).")
flags.DEFINE_integer("test_limit", None, "Use at most this many test samples (class balanced).")
flags.DEFINE_float("val_fraction", 0.1, "Validation fraction carved from the training split.")
flags.DEFINE_string("data_dir", None, "TFDS data_dir for datasets without an offline source.")
flags.DEFINE_enum("data_source", "auto", ["auto", "offline", "tfds"], "Where datasets come from.")
flags.DEFINE_integer("eval_batch_size", 512, "Batch size of evaluation and decomposition scans.")
flags.DEFINE_integer("timing_repeats", 60, "Train steps timed per loss (in 5 interleaved rounds).")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.mark_flag_as_required("workdir")

APPROACH_OPTIONS = {"moda": ("alpha", "beta", "gamma", "tau")}


def approach_from_flags() -> approaches.Approach:
    names = APPROACH_OPTIONS.get(FLAGS.approach, ())
    return approaches.create_approach(FLAGS.approach, **{n: getattr(FLAGS, n) for n in names})


def model_config_from_flags() -> dict[str, Any]:
    try:
        config = json.loads(FLAGS.model_config)
    except json.JSONDecodeError as err:
        raise ValueError(f"--model_config is not JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"--model_config must be a JSON object, got {FLAGS.model_config!r}")
    return as_hashable(config)


def step_times(model, data_: data.Dataset, loss_fns: dict[str, Any], config: train.TrainConfig,
               repeats: int) -> dict[str, float]:
    """Median jitted train-step time (ms) per loss on the same batch, interleaved to share noise."""
    steps_per_epoch = data.num_batches(len(data_.train.x), config.batch_size, drop_remainder=True)
    optimizer = train.make_optimizer(config, steps_per_epoch)
    state = train.init_state(model, data_.input_shape, optimizer, config.seed)
    x, y = data_.train.x[: config.batch_size], data_.train.y[: config.batch_size]
    fns = {k: train.make_train_step(model, optimizer, fn) for k, fn in loss_fns.items()}
    rounds = {k: [] for k in fns}
    for _ in range(5):
        for k, fn in fns.items():
            rounds[k].append(train.benchmark_step(fn, state, x, y, repeats=max(1, repeats // 5)))
    return {k: statistics.median(v) for k, v in rounds.items()}


def timed(fn, *args, **kwargs):
    """(result, seconds) of a call whose jitted work is compiled already (second call timed)."""
    jax.block_until_ready(fn(*args, **kwargs))
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - start


def evaluate_reuse(modules: ModuleSet, variables, std_model, std_variables, data_: data.Dataset, subtasks,
                   full_params: int, full_flops: int, progress: bool) -> list[dict[str, Any]]:
    """Accuracy, size and FLOPs of each composed sub-task model beside the restricted standard model."""
    std_logits = predict_logits(std_model, std_variables, data_.test.x)
    rows = []
    for classes in tqdm(subtasks, desc="reuse sub-tasks", disable=not progress, leave=False):
        sliced = compose.compose(modules, variables, classes)
        index, labels = compose.subtask_samples(data_.test.y, classes)
        acc = train.evaluate(sliced.model, sliced.variables, data_.test.x[index], labels)["top1"]
        std_acc = float(np.mean(np.argmax(std_logits[index][:, list(classes)], axis=1) == labels))
        rows.append({
            "classes": list(classes),
            "accuracy": acc,
            "standard_accuracy": std_acc,
            "composed_size": count_parameters(sliced.variables) / full_params,
            "composed_flops": metrics.forward_flops(sliced.model, sliced.variables, data_.input_shape) / full_flops,
        })
    return rows


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def run(workdir: str) -> dict[str, Any]:
    """The whole experiment; every input is checked before anything is trained or written."""
    approach = approach_from_flags()
    config = train.TrainConfig(epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, learning_rate=FLAGS.lr,
                               seed=FLAGS.seed)
    if FLAGS.num_subtasks < 1:
        raise ValueError(f"--num_subtasks must be >= 1, got {FLAGS.num_subtasks}")
    dataset = data.load_dataset(FLAGS.dataset, val_fraction=FLAGS.val_fraction, seed=FLAGS.seed,
                                data_dir=FLAGS.data_dir, source=FLAGS.data_source, train_limit=FLAGS.train_limit,
                                test_limit=FLAGS.test_limit)
    model = models.create_model(FLAGS.model, dataset.num_classes, **model_config_from_flags())
    models.check_input_shape(model, dataset.input_shape)
    subtasks = compose.sample_subtasks(dataset.num_classes, FLAGS.num_subtasks, min_size=FLAGS.min_subtask_classes,
                                       max_size=FLAGS.max_subtask_classes, seed=FLAGS.seed)
    topology = resolve_topology(model, dataset.input_shape)
    # Decomposition needs every class; find out before training rather than after.
    data.check_every_class_present(dataset.train.y, dataset.num_classes, "training samples (raise --train_limit)")

    run_info = {"model": FLAGS.model, "model_config": models.model_config(model), "dataset": FLAGS.dataset,
                "train_samples": len(dataset.train.x), "val_fraction": FLAGS.val_fraction}
    std_state, std_history = train.fit(model, dataset, cross_entropy_loss(), config,
                                       os.path.join(workdir, "standard"), progress=FLAGS.progress,
                                       description="standard", run_info={**run_info, "loss": "cross_entropy"})
    modular_loss = approach.training_loss()
    if modular_loss is None:  # post-training approach: decompose the standard model
        src_state, src_history = std_state, std_history
    else:
        src_state, src_history = train.fit(model, dataset, modular_loss, config, os.path.join(workdir, "modular"),
                                           progress=FLAGS.progress, description="modular",
                                           run_info={**run_info, "loss": approach.name, **approach.config()})
    std_vars, src_vars = std_state.variables(), src_state.variables()
    std_eval = train.evaluate(model, std_vars, dataset.test.x, dataset.test.y, FLAGS.eval_batch_size)
    src_eval = train.evaluate(model, src_vars, dataset.test.x, dataset.test.y, FLAGS.eval_batch_size)
    times = step_times(model, dataset, {"standard": cross_entropy_loss(),
                                        "modular": modular_loss or cross_entropy_loss()},
                       config, FLAGS.timing_repeats)

    # Decomposition over the training samples, timed against one forward pass over the same samples.
    x_dec, y_dec = dataset.train.x, dataset.train.y
    decomposition, decompose_s = timed_decompose(approach, model, src_vars, x_dec, y_dec, dataset.num_classes)
    _, inference_s = timed(predict_logits, model, src_vars, x_dec, FLAGS.eval_batch_size)

    modules = module_set(decomposition.masks, approach=approach.name, model_name=FLAGS.model, model=model,
                         dataset=FLAGS.dataset, input_shape=dataset.input_shape,
                         granularity=decomposition.granularity, extra=approach.config())
    checkpoint.save_modules(os.path.join(workdir, "modules"), modules, src_vars, overwrite=True)

    mod = metrics.module_metrics(topology, modules.masks, src_vars["params"])
    full_params = count_parameters(src_vars)
    full_flops = metrics.forward_flops(model, src_vars, dataset.input_shape)
    composed_all = compose.compose(modules, src_vars, range(dataset.num_classes))
    composed_eval = train.evaluate(composed_all.model, composed_all.variables, dataset.test.x, dataset.test.y)
    reuse = evaluate_reuse(modules, src_vars, model, std_vars, dataset, subtasks, full_params, full_flops,
                           FLAGS.progress)

    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    rates = decomposition.statistics.get("activation_rate")
    if rates is not None:
        metrics.activation_heatmap_png(rates, os.path.join(workdir, "plots", "activation_frequency.png"),
                                       class_names=dataset.class_names,
                                       title=f"{approach.name}: per-class activation frequency ({FLAGS.model}, "
                                             f"{FLAGS.dataset})")
    metrics.scatter_plot_png(
        {"composed": ([r["composed_size"] for r in reuse], [r["accuracy"] for r in reuse]),
         "standard (restricted)": ([1.0] * len(reuse), [r["standard_accuracy"] for r in reuse])},
        os.path.join(workdir, "plots", "reuse_accuracy_vs_size.png"),
        xlabel="composed model size (fraction of weights)", ylabel="sub-task test accuracy",
        title="reuse without fine-tuning")

    results = {
        "approach": approach.name,
        "model": FLAGS.model,
        "dataset": FLAGS.dataset,
        "seed": FLAGS.seed,
        "num_classes": dataset.num_classes,
        "config": {"train": {"epochs": config.epochs, "batch_size": config.batch_size, "lr": config.learning_rate},
                   "approach": approach.config(), "train_samples": len(dataset.train.x),
                   "test_samples": len(dataset.test.x)},
        "standard": {"test_accuracy": std_eval["top1"], "test_top5": std_eval["top5"], "history": std_history},
        "modular": {"test_accuracy": src_eval["top1"], "test_top5": src_eval["top5"], "history": src_history},
        "composed": {"test_accuracy": composed_eval["top1"], "test_top5": composed_eval["top5"],
                     "size": count_parameters(composed_all.variables) / full_params},
        "modules": {"mean_size": mod["mean_size"], "mean_overlap": mod["mean_overlap"],
                    "mean_jaccard": mod["mean_jaccard"], "sizes": mod["sizes"].tolist()},
        "reuse": {
            "subtasks": reuse,
            "mean_accuracy": float(np.mean([r["accuracy"] for r in reuse])),
            "mean_standard_accuracy": float(np.mean([r["standard_accuracy"] for r in reuse])),
            "mean_composed_size": float(np.mean([r["composed_size"] for r in reuse])),
            "mean_composed_flops": float(np.mean([r["composed_flops"] for r in reuse])),
        },
        "timing": {"standard_step_ms": times["standard"], "modular_step_ms": times["modular"],
                   "decompose_seconds": decompose_s, "inference_seconds": inference_s},
        "backend": jax.default_backend(),
    }
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    return results


def timed_decompose(approach, model, variables, x, y, num_classes):
    """Decompose twice (the first call compiles) and time the second."""
    approach.decompose(model, variables, x, y, num_classes)
    start = time.perf_counter()
    out = approach.decompose(model, variables, x, y, num_classes)
    jax.block_until_ready(jax.tree.leaves(out.masks))
    return out, time.perf_counter() - start


def summary(results: dict[str, Any]) -> str:
    r = results
    rows = [
        {"metric": "standard test accuracy", "value": r["standard"]["test_accuracy"]},
        {"metric": "modular test accuracy", "value": r["modular"]["test_accuracy"]},
        {"metric": "composed (all classes) accuracy", "value": r["composed"]["test_accuracy"]},
        {"metric": "mean module size", "value": r["modules"]["mean_size"]},
        {"metric": "mean module overlap", "value": r["modules"]["mean_overlap"]},
        {"metric": "mean Jaccard index", "value": r["modules"]["mean_jaccard"]},
        {"metric": f"reuse accuracy ({len(r['reuse']['subtasks'])} sub-tasks)", "value": r["reuse"]["mean_accuracy"]},
        {"metric": "standard accuracy, same sub-tasks", "value": r["reuse"]["mean_standard_accuracy"]},
        {"metric": "mean composed size", "value": r["reuse"]["mean_composed_size"]},
        {"metric": "mean composed FLOPs", "value": r["reuse"]["mean_composed_flops"]},
        {"metric": "standard step (ms)", "value": r["timing"]["standard_step_ms"]},
        {"metric": "modular step (ms)", "value": r["timing"]["modular_step_ms"]},
        {"metric": "modular / standard step",
         "value": r["timing"]["modular_step_ms"] / r["timing"]["standard_step_ms"]},
        {"metric": "decompose (s)", "value": r["timing"]["decompose_seconds"]},
        {"metric": "inference, same samples (s)", "value": r["timing"]["inference_seconds"]},
    ]
    return metrics.summary_table(rows)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    try:
        results = run(FLAGS.workdir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"\n{results['approach']} on {results['model']} / {results['dataset']} ({results['backend']})")
    print(summary(results))
    print(f"\nresults: {os.path.join(FLAGS.workdir, 'results.json')}")


if __name__ == "__main__":
    app.run(main)

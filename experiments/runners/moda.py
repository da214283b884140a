"""MODA's pipeline (and the shape of every mask-and-slice approach): standard and modular training,
decomposition over the training samples, physical composition, reuse sub-tasks, results.json."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import flags
from tqdm.auto import tqdm

from experiments.common import (
    image_run_from_flags,
    option,
    step_times,
    write_json_atomic,
)
from jaxmod import approaches, compose, data, metrics, train
from jaxmod.activations import predict_logits
from jaxmod.losses import cross_entropy_loss
from jaxmod.modules import ModuleSet
from jaxmod.topology import count_parameters, resolve_topology

FLAGS = flags.FLAGS
DEFAULTS = {"model": "lenet5", "dataset": "mnist", "alpha": 1.0, "beta": 1.0, "gamma": 0.3, "tau": 0.9}


def approach_from_flags() -> approaches.Approach:
    return approaches.create_approach(
        "moda", **{n: option(getattr(FLAGS, n), DEFAULTS[n]) for n in ("alpha", "beta", "gamma", "tau")})


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


def run(workdir: str) -> dict[str, Any]:
    """MODA end to end; every input is checked before anything is trained or written."""
    approach = approach_from_flags()
    setup = image_run_from_flags(FLAGS, DEFAULTS)
    model_name, dataset_name, config = setup.model_name, setup.dataset_name, setup.config
    dataset, model, subtasks = setup.dataset, setup.model, setup.subtasks
    topology = resolve_topology(model, dataset.input_shape)
    std_state, std_history = setup.train_standard(workdir, FLAGS.progress)
    modular_loss = approach.training_loss()
    if modular_loss is None:  # post-training approach: decompose the standard model
        src_state, src_history = std_state, std_history
    else:
        src_state, src_history = train.fit(model, dataset, modular_loss, config, os.path.join(workdir, "modular"),
                                           progress=FLAGS.progress, description="modular",
                                           run_info=setup.run_info(approach.name, **approach.config()))
    std_vars, src_vars = std_state.variables(), src_state.variables()
    std_eval = train.evaluate(model, std_vars, dataset.test.x, dataset.test.y, FLAGS.eval_batch_size)
    src_eval = train.evaluate(model, src_vars, dataset.test.x, dataset.test.y, FLAGS.eval_batch_size)
    times = step_times(model, dataset, {"standard": cross_entropy_loss(),
                                        "modular": modular_loss or cross_entropy_loss()},
                       config, FLAGS.timing_repeats)

    decomposition, modules, decompose_s, inference_s = setup.decompose_and_save(approach, src_vars, workdir,
                                                                                FLAGS.eval_batch_size)

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
                                       title=f"{approach.name}: per-class activation frequency ({model_name}, "
                                             f"{dataset_name})")
    metrics.scatter_plot_png(
        {"composed": ([r["composed_size"] for r in reuse], [r["accuracy"] for r in reuse]),
         "standard (restricted)": ([1.0] * len(reuse), [r["standard_accuracy"] for r in reuse])},
        os.path.join(workdir, "plots", "reuse_accuracy_vs_size.png"),
        xlabel="composed model size (fraction of weights)", ylabel="sub-task test accuracy",
        title="reuse without fine-tuning")

    results = {
        **setup.results_header(approach),
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

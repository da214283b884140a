"""MwT's pipeline: standard training, modular training with mask generators, modularizing by kernel
frequency, KRR/cohesion/coupling, the mixed modules of reuse sub-tasks with and without fine-tuning,
results.json in the common schema."""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from absl import flags
from tqdm.auto import tqdm

from experiments.common import (
    image_run_from_flags,
    option,
    parse_json_object,
    step_times,
    write_json_atomic,
)
from jaxmod import approaches, compose, data, metrics, models, train
from jaxmod.activations import predict_logits
from jaxmod.approaches import mwt as mwt_lib
from jaxmod.losses import cross_entropy_loss
from jaxmod.modules import ModuleSet
from jaxmod.topology import count_parameters

FLAGS = flags.FLAGS
DEFAULTS = {"model": "lenet5", "dataset": "mnist", "alpha": 0.5, "beta": 1.5, "tau": 0.9}

flags.DEFINE_integer("mwt_finetune_epochs", 5, "MwT: fine-tuning epochs of each reuse sub-model (0: none).")
flags.DEFINE_enum("mwt_averaging", "class", ["class", "pair"],
                  "MwT: loss averaging, per class as Eq. 4-5 (class) or over sample pairs as the reference code.")
flags.DEFINE_float("mwt_finetune_lr", mwt_lib.FINETUNE_LR,
                   "MwT: learning rate of the reuse fine-tuning (the whole sub-model; see finetune_subtask).")
flags.DEFINE_bool("mwt_save_finetuned", True, "MwT: save each fine-tuned sub-model (orbax) under WORKDIR/finetuned.")

SUMMARY_ROWS = (
    ("KRR (kernel retention rate)", ("modules", "krr")),
    ("cohesion (Jaccard)", ("modules", "cohesion")),
    ("coupling (Jaccard)", ("modules", "coupling")),
    ("reuse accuracy without fine-tuning", ("reuse", "mean_accuracy_no_finetune")),
    ("mean sub-task KRR", ("reuse", "mean_krr")),
)


def approach_from_flags() -> mwt_lib.MwT:
    return approaches.create_approach(
        "mwt", **{n: option(getattr(FLAGS, n), DEFAULTS[n]) for n in ("alpha", "beta", "tau")},
        averaging=FLAGS.mwt_averaging, finetune_epochs=FLAGS.mwt_finetune_epochs, batch_size=FLAGS.eval_batch_size)


def evaluate_reuse(approach: mwt_lib.MwT, modules: ModuleSet, variables, std_model, std_variables,
                   data_: data.Dataset, subtasks, full_params: int, full_flops: int, groups: list[str],
                   workdir: str) -> list[dict[str, Any]]:
    """Per sub-task: the mixed module without fine-tuning, the fine-tuned sub-model, the standard model."""
    std_logits = predict_logits(std_model, std_variables, data_.test.x)
    rows = []
    for classes in tqdm(subtasks, desc="reuse sub-tasks", disable=not FLAGS.progress, leave=False):
        index, labels = compose.subtask_samples(data_.test.y, classes)
        plain = mwt_lib.mixed_module(modules, variables, classes)
        row = {
            "classes": list(classes),
            "accuracy_no_finetune": train.evaluate(plain.model, plain.variables, data_.test.x[index], labels)["top1"],
            "standard_accuracy": float(np.mean(np.argmax(std_logits[index][:, list(classes)], axis=1) == labels)),
            "krr": float(mwt_lib.gated_kernels({g: m[None] for g, m in modules.union(classes).items()}, groups).mean()),
            "composed_size_no_finetune": count_parameters(plain.variables) / full_params,
            "composed_flops_no_finetune":
                metrics.forward_flops(plain.model, plain.variables, data_.input_shape) / full_flops,
        }
        if approach.finetune_epochs:
            mixed = mwt_lib.mixed_module(modules, variables, classes, all_logits=True)
            start = time.perf_counter()
            tuned = mwt_lib.finetune_subtask(mixed, data_, classes, epochs=approach.finetune_epochs,
                                             batch_size=FLAGS.batch_size, learning_rate=FLAGS.mwt_finetune_lr,
                                             seed=FLAGS.seed)
            row["finetune_seconds"] = time.perf_counter() - start
            row["accuracy"] = train.evaluate(tuned.model, tuned.variables, data_.test.x[index], labels)["top1"]
            row["best_epoch"] = tuned.best_epoch
            row["composed_size"] = count_parameters(tuned.variables) / full_params
            row["composed_flops"] = metrics.forward_flops(tuned.model, tuned.variables, data_.input_shape) / full_flops
            if FLAGS.mwt_save_finetuned:
                mwt_lib.save_finetuned(os.path.join(workdir, "finetuned", "_".join(map(str, classes))), tuned,
                                       modules, overwrite=True)
        else:
            row.update(accuracy=row["accuracy_no_finetune"], composed_size=row["composed_size_no_finetune"],
                       composed_flops=row["composed_flops_no_finetune"])
        rows.append(row)
    return rows


def run(workdir: str) -> dict[str, Any]:
    """MwT end to end; every input is checked before anything is trained or written."""
    approach = approach_from_flags()
    if not FLAGS.mwt_finetune_lr > 0:
        raise ValueError(f"--mwt_finetune_lr must be > 0, got {FLAGS.mwt_finetune_lr}")
    early = models.create_model(option(FLAGS.model, DEFAULTS["model"]), 2,  # fails fast on a bad config
                                **parse_json_object(FLAGS.model_config, "model_config"))
    mwt_lib.with_generators(early)  # a model without maskable convs fails before any data is loaded
    setup = image_run_from_flags(FLAGS, DEFAULTS)
    model_name, dataset_name, config = setup.model_name, setup.dataset_name, setup.config
    dataset, model, subtasks = setup.dataset, setup.model, setup.subtasks
    gen_model = approach.training_model(model, dataset.input_shape)
    topology = mwt_lib.mwt_topology(model, dataset.input_shape)
    std_state, std_history = setup.train_standard(workdir, FLAGS.progress)
    modular_loss = approach.training_loss()
    src_state, src_history = train.fit(gen_model, dataset, modular_loss, config, os.path.join(workdir, "modular"),
                                       progress=FLAGS.progress, description="modular",
                                       run_info=setup.run_info(
                                           approach.name, model_config=models.model_config(gen_model),
                                           # fine-tuning comes after training: not part of the run's identity
                                           **{k: v for k, v in approach.config().items() if k != "finetune_epochs"}))
    std_vars, src_vars = std_state.variables(), src_state.variables()
    plain_vars = mwt_lib.strip_generators(src_vars)
    std_eval = train.evaluate(model, std_vars, dataset.test.x, dataset.test.y, FLAGS.eval_batch_size)
    src_eval = train.evaluate(gen_model, src_vars, dataset.test.x, dataset.test.y, FLAGS.eval_batch_size)
    times = step_times(model, dataset, {"standard": cross_entropy_loss(), "modular": modular_loss}, config,
                       FLAGS.timing_repeats, models={"modular": gen_model})

    x_dec, y_dec = dataset.train.x, dataset.train.y
    decomposition, modules, decompose_s, inference_s = setup.decompose_and_save(
        approach, plain_vars, workdir, FLAGS.eval_batch_size, source=(gen_model, src_vars))

    mod = metrics.module_metrics(topology, modules.masks, plain_vars["params"])
    kern = mwt_lib.kernel_metrics(gen_model, src_vars, modules.masks, x_dec, y_dec, batch_size=FLAGS.eval_batch_size)
    full_params = count_parameters(plain_vars)
    full_flops = metrics.forward_flops(model, plain_vars, dataset.input_shape)
    composed_all = mwt_lib.mixed_module(modules, plain_vars, range(dataset.num_classes))
    composed_eval = train.evaluate(composed_all.model, composed_all.variables, dataset.test.x, dataset.test.y)
    groups = list(kern["gated_groups"])
    reuse = evaluate_reuse(approach, modules, plain_vars, model, std_vars, dataset, subtasks, full_params,
                           full_flops, groups, workdir)

    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    metrics.activation_heatmap_png(decomposition.statistics["kernel_frequency"],
                                   os.path.join(workdir, "plots", "kernel_frequency.png"),
                                   class_names=dataset.class_names,
                                   title=f"mwt: per-class kernel frequency ({model_name}, {dataset_name})")
    metrics.scatter_plot_png(
        {"fine-tuned": ([r["composed_size"] for r in reuse], [r["accuracy"] for r in reuse]),
         "no fine-tuning": ([r["composed_size_no_finetune"] for r in reuse],
                            [r["accuracy_no_finetune"] for r in reuse]),
         "standard (restricted)": ([1.0] * len(reuse), [r["standard_accuracy"] for r in reuse])},
        os.path.join(workdir, "plots", "reuse_accuracy_vs_size.png"),
        xlabel="sub-model size (fraction of weights)", ylabel="sub-task test accuracy", title="MwT reuse")

    mean = lambda key: float(np.mean([r[key] for r in reuse]))  # noqa: E731
    results = {
        **setup.results_header(approach),
        "standard": {"test_accuracy": std_eval["top1"], "test_top5": std_eval["top5"], "history": std_history},
        "modular": {"test_accuracy": src_eval["top1"], "test_top5": src_eval["top5"], "history": src_history},
        "composed": {"test_accuracy": composed_eval["top1"], "test_top5": composed_eval["top5"],
                     "size": count_parameters(composed_all.variables) / full_params, "fine_tuned": False},
        "modules": {"mean_size": mod["mean_size"], "mean_overlap": mod["mean_overlap"],
                    "mean_jaccard": mod["mean_jaccard"], "sizes": mod["sizes"].tolist(),
                    "krr": kern["krr"], "cohesion": kern["cohesion"], "coupling": kern["coupling"],
                    "cohesion_per_module": kern["cohesion_per_module"], "kernels": kern["kernels"],
                    "gated_groups": groups},
        "reuse": {
            "subtasks": reuse,
            "mean_accuracy": mean("accuracy"),
            "mean_accuracy_no_finetune": mean("accuracy_no_finetune"),
            "mean_standard_accuracy": mean("standard_accuracy"),
            "mean_composed_size": mean("composed_size"),
            "mean_composed_flops": mean("composed_flops"),
            "mean_composed_size_no_finetune": mean("composed_size_no_finetune"),
            "mean_composed_flops_no_finetune": mean("composed_flops_no_finetune"),
            "mean_krr": mean("krr"),
            "finetune_epochs": approach.finetune_epochs,
            "finetune_lr": FLAGS.mwt_finetune_lr,
        },
        "timing": {"standard_step_ms": times["standard"], "modular_step_ms": times["modular"],
                   "decompose_seconds": decompose_s, "inference_seconds": inference_s,
                   "finetune_seconds": float(sum(r.get("finetune_seconds", 0.0) for r in reuse))},
        "backend": jax.default_backend(),
    }
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    return results

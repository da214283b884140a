"""Runner of Pan & Rajan's decomposition (``--approach=concern``): train the standard model, decompose it
into one binary module per class, compose all modules (and random sub-tasks) by voting, results.json.

    python -m experiments.modularize --approach=concern --model=lenet5 --dataset=mnist --epochs=2 \
        --concern_variant=ci_ti_mc_bln --workdir=runs/concern_lenet5_mnist
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import flags

from experiments.common import image_run_from_flags, option, write_json_atomic
from jaxmod import approaches, compose, metrics, models, train
from jaxmod.activations import predict_logits
from jaxmod.approaches import concern

FLAGS = flags.FLAGS
DEFAULTS = {"model": "lenet5", "dataset": "mnist"}

flags.DEFINE_enum("concern_variant", "ci_ti_mc_bln", list(concern.VARIANTS),
                  "Pan & Rajan variant: ti_i, ti_sne, cm_rie (dense, FSE 2020) or ci_ti_mc, ci_ti_mc_bln, "
                  "ci_ti_mc_bln_bi (CNN, ICSE 2022).")
flags.DEFINE_float("concern_delta", 0.5, "MC-BLN strong-edge threshold delta.")
flags.DEFINE_integer("concern_positives", 1000, "Positive samples per concern.")
flags.DEFINE_integer("concern_negatives", None, "Negatives per other class (default: 1 for ti_i, else 1:1).")

SUMMARY_ROWS = (
    ("module-model Jaccard (nodes)", ("modules", "jaccard_module_model")),
    ("pairwise Jaccard (weights, dense)", ("modules", "weight_mean_pairwise")),
    ("composed top-5", ("composed", "test_top5")),
)


def approach_from_flags() -> concern.Concern:
    return approaches.create_approach("concern", variant=FLAGS.concern_variant, delta=FLAGS.concern_delta,
                                      positives=FLAGS.concern_positives, negatives=FLAGS.concern_negatives)


def run(workdir: str) -> dict[str, Any]:
    """Every input is checked (model supported, classes present, variant fits) before training or writing."""
    approach = approach_from_flags()
    model_name = option(FLAGS.model, DEFAULTS["model"])

    def check_model(model) -> None:
        concern.model_plan(model)
        if approach.variant in concern.DENSE_VARIANTS and not isinstance(model, models.MLP):
            raise ValueError(f"variant {approach.variant!r} is for dense models (fc1..fc4), not {model_name}")

    setup = image_run_from_flags(FLAGS, DEFAULTS, check_model, allow_optimizer=True)
    dataset, model, subtasks = setup.dataset, setup.model, setup.subtasks
    state, history = setup.train_standard(workdir, FLAGS.progress)
    variables = state.variables()
    std_eval = train.evaluate(model, variables, dataset.test.x, dataset.test.y, FLAGS.eval_batch_size)

    decomposition, modules, decompose_s, inference_s = setup.decompose_and_save(approach, variables, workdir,
                                                                                FLAGS.eval_batch_size)

    heads = None if decomposition.heads is None else decomposition.heads["channel"]
    classes = list(range(dataset.num_classes))
    conf = concern.module_confidences(model, variables, decomposition.masks, heads, classes, dataset.test.x)
    composed = concern.voted(conf, dataset.test.y, classes)
    jac = concern.jaccard_figures(model, variables, decomposition.masks, dataset.input_shape)
    std_logits = predict_logits(model, variables, dataset.test.x)
    reuse = []
    for sub in subtasks:
        index, labels = compose.subtask_samples(dataset.test.y, sub)
        reuse.append({"classes": list(sub), "accuracy": concern.voted(conf, dataset.test.y, sub)["top1"],
                      "standard_accuracy": float(np.mean(np.argmax(std_logits[index][:, list(sub)], 1) == labels))})

    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    rates = {k: v.reshape(v.shape[0], -1) for k, v in decomposition.statistics["activation_rate"].items()}
    metrics.activation_heatmap_png(rates, os.path.join(workdir, "plots", "activation_frequency.png"),
                                   class_names=dataset.class_names,
                                   title=f"concern: node activation frequency on positives ({model_name})")
    std_result = {"test_accuracy": std_eval["top1"], "test_top5": std_eval["top5"], "history": history}
    results = {
        **setup.results_header(approach, variant=approach.variant,
                               backtracking={"ci_ti_mc_bln": "MC-BLN", "ci_ti_mc_bln_bi": "MC-BLN+MC-BI",
                                             "cm_rie": "RIE"}.get(approach.variant, "none")),
        "standard": std_result,
        "modular": std_result,  # post-training: the decomposed model is the standard one
        "composed": {"test_accuracy": composed["top1"], "test_top5": composed["top5"], "method": "voting"},
        "modules": {"mean_size": jac["node_mean_module_model"], "mean_jaccard": jac["node_mean_pairwise"],
                    "jaccard_module_model": jac["node_mean_module_model"], **jac},
        "reuse": {"subtasks": reuse, "mean_accuracy": float(np.mean([r["accuracy"] for r in reuse])),
                  "mean_standard_accuracy": float(np.mean([r["standard_accuracy"] for r in reuse]))},
        "timing": {"decompose_seconds": decompose_s, "inference_seconds": inference_s},
        "backend": jax.default_backend(),
    }
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    return results

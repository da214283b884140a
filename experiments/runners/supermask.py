"""Supermask decomposition (Kingetsu et al.) end to end: train the standard model, co-train one supermask
module per class over it (frozen), recompose by the union of supermasks and confidence voting, results.json.

    python -m experiments.modularize --approach=supermask --model=fc1 --dataset=mnist --k=0.1 --alpha=1.0 \
        --module_epochs=5 --workdir=runs/supermask_fc1_mnist

``modules.rps`` holds the remaining-parameter ratios (RPs) of the paper: per module, for every two-class
recomposition (mean, best, worst; also per epoch) and for all classes. ``timing.cotrain_seconds`` /
``timing.single_module_seconds`` compare co-training all modules with training one module alone for the
same epochs (both after compilation), in the same run. The co-training is checkpointed per epoch under
``WORKDIR/cotrain`` (a killed run resumes from its last complete epoch). Models with batch norm co-train
with batch statistics and give each module its own running statistics (``--supermask_batch_norm=module``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from absl import flags
from tqdm.auto import tqdm

from experiments.common import image_run_from_flags, option, timed, write_json_atomic
from jaxmod import checkpoint, compose, metrics, train
from jaxmod.activations import predict_logits
from jaxmod.approaches import create_approach
from jaxmod.approaches import supermask as sm
from jaxmod.voting import vote_top_k, voting_accuracy

FLAGS = flags.FLAGS
DEFAULTS = {"model": "fc1", "dataset": "mnist", "alpha": 1.0}

flags.DEFINE_float("k", 0.1, "supermask: fraction of each layer's weights a module keeps, in (0, 1].")
flags.DEFINE_float("p", 1.0, "supermask: exponent of the stemming loss's Lp distance (>= 1).")
flags.DEFINE_bool("share_init", True, "supermask: initial score sharing (all modules start from one draw).")
flags.DEFINE_bool("stemming", True, "supermask: stemming loss from epoch 2 (weight --alpha).")
flags.DEFINE_integer("module_epochs", 5, "supermask: co-training epochs of the modules.")
flags.DEFINE_integer("module_batch_size", 32, "supermask: co-training batch size (paper: 32).")
flags.DEFINE_float("score_lr", 0.1, "supermask: learning rate of the scores (paper: 0.1).")
flags.DEFINE_float("graft_lr", 0.01, "supermask: learning rate of the grafting layers (low).")
flags.DEFINE_float("score_weight_decay", 0.0, "supermask: weight decay of scores and grafting layers.")
flags.DEFINE_integer("score_seed", None, "supermask: seed of the score initialisation and batch order "
                                         "(default --seed; vary it for trials over one base model).")
flags.DEFINE_enum("supermask_batch_norm", "module", list(sm.BATCH_NORM_MODES),
                  "supermask: 'module' co-trains with batch statistics and gives each module its own running "
                  "statistics; 'running' keeps the frozen model's (no effect on models without batch norm).")
flags.DEFINE_integer("supermask_module_chunk", 0, "supermask: co-train the modules this many at a time (lax.map) "
                     "instead of all in one vmap (0); same result, faster for conv models on a CPU.")
flags.DEFINE_bool("time_single_module", True, "supermask: also train one module alone for the same epochs "
                                              "and record the co-training time ratio.")

SUMMARY_ROWS = (
    ("two-class RPs (mean)", ("modules", "rps", "two_class_mean")),
    ("two-class RPs (best)", ("modules", "rps", "two_class_min")),
    ("two-class RPs (worst)", ("modules", "rps", "two_class_max")),
    ("RPs, all classes", ("modules", "rps", "all_classes")),
    ("mean module balanced accuracy", ("modules", "mean_balanced_accuracy")),
    ("co-training (s)", ("timing", "cotrain_seconds")),
    ("one module alone (s)", ("timing", "single_module_seconds")),
    ("co-training / one module", ("timing", "cotrain_ratio")),
)


def approach_from_flags() -> sm.Supermask:
    return create_approach(
        "supermask", k=FLAGS.k, alpha=option(FLAGS.alpha, DEFAULTS["alpha"]), p=FLAGS.p, share_init=FLAGS.share_init,
        stemming=FLAGS.stemming, epochs=FLAGS.module_epochs, batch_size=FLAGS.module_batch_size,
        score_lr=FLAGS.score_lr, graft_lr=FLAGS.graft_lr, weight_decay=FLAGS.score_weight_decay,
        seed=option(FLAGS.score_seed, FLAGS.seed), batch_norm=FLAGS.supermask_batch_norm,
        module_chunk=FLAGS.supermask_module_chunk, progress=FLAGS.progress)


def module_accuracies(confidences: np.ndarray, y: np.ndarray, classes: tuple[int, ...]) -> dict[str, list[float]]:
    """Each module as a binary classifier (positive when its confidence > 0.5): accuracy and balanced accuracy."""
    target = np.asarray(y)[None, :] == np.asarray(classes)[:, None]
    said = confidences > 0.5
    tpr = np.sum(said & target, axis=1) / np.maximum(np.sum(target, axis=1), 1)
    tnr = np.sum(~said & ~target, axis=1) / np.maximum(np.sum(~target, axis=1), 1)
    return {"accuracy": np.mean(said == target, axis=1).tolist(), "balanced_accuracy": ((tpr + tnr) / 2).tolist()}


def evaluate_reuse(modules, variables, confidences: np.ndarray, std_logits: np.ndarray, y: np.ndarray, subtasks,
                   progress: bool) -> list[dict[str, Any]]:
    """Each sub-task: voting among its modules on its test samples, beside the restricted standard model.

    A module's confidence does not depend on the other modules, so the rows of the all-class confidence
    matrix are the recomposed model's confidences (a test checks this against :func:`recompose`).
    """
    rows = []
    for classes in tqdm(subtasks, desc="reuse sub-tasks", disable=not progress, leave=False):
        recomposed = sm.recompose(modules, variables, classes)
        index, labels = compose.subtask_samples(y, classes)
        conf = confidences[list(classes)][:, index]
        rows.append({
            "classes": list(classes),
            "accuracy": voting_accuracy(conf, np.asarray(classes)[labels], classes=classes),
            "standard_accuracy": float(np.mean(np.argmax(std_logits[index][:, list(classes)], axis=1) == labels)),
            "composed_size": recomposed.rps,
        })
    return rows


def run(workdir: str) -> dict[str, Any]:
    """Supermask decomposition end to end; every input is checked before anything is trained or written."""
    approach = approach_from_flags()
    setup = image_run_from_flags(FLAGS, DEFAULTS, allow_optimizer=True)
    model_name, dataset_name, config = setup.model_name, setup.dataset_name, setup.config
    dataset, model, subtasks = setup.dataset, setup.model, setup.subtasks
    if len(dataset.train.x) < max(config.batch_size, approach.batch_size):
        raise ValueError(f"the training split has {len(dataset.train.x)} samples, fewer than one batch of "
                         f"{max(config.batch_size, approach.batch_size)}")
    std_state, std_history = setup.train_standard(workdir, FLAGS.progress)
    variables = std_state.variables()
    std_eval = train.evaluate(model, variables, dataset.test.x, dataset.test.y, FLAGS.eval_batch_size)

    # Co-training of all modules (timed inside, after compilation), then one module alone for the same epochs.
    x_dec, y_dec = dataset.train.x, dataset.train.y
    start = time.perf_counter()
    # Checkpointed per epoch under WORKDIR/cotrain: a killed run resumes from its last complete epoch.
    decomposition = approach.decompose(model, variables, x_dec, y_dec, dataset.num_classes,
                                       workdir=os.path.join(workdir, "cotrain"))
    decompose_s = time.perf_counter() - start
    cotrain_s = float(decomposition.statistics["train_seconds"])
    single_s = None
    if FLAGS.time_single_module:
        _, single = approach.train_modules(model, variables, x_dec, y_dec, dataset.num_classes, classes=(0,))
        single_s = single["train_seconds"]
    _, inference_s = timed(predict_logits, model, variables, x_dec, FLAGS.eval_batch_size)

    modules = sm.supermask_module_set(decomposition, model_name=model_name, model=model, dataset=dataset_name,
                                      input_shape=dataset.input_shape, variables=variables,
                                      config=approach.config())
    checkpoint.save_modules(os.path.join(workdir, "modules"), modules, variables, overwrite=True)

    classes = tuple(range(dataset.num_classes))
    recomposed = sm.recompose(modules, variables, classes)
    confidences = sm.recomposed_confidences(recomposed, dataset.test.x, FLAGS.eval_batch_size)
    composed_acc = voting_accuracy(confidences, dataset.test.y)
    composed_top5 = float(np.mean(np.any(np.asarray(vote_top_k(confidences, min(5, len(classes))))
                                         == dataset.test.y[:, None], axis=1)))
    pairs = sm.pair_statistics(modules.masks)
    per_module = module_accuracies(confidences, dataset.test.y, classes)
    std_logits = predict_logits(model, variables, dataset.test.x, FLAGS.eval_batch_size)
    reuse = evaluate_reuse(modules, variables, confidences, std_logits, dataset.test.y, subtasks, FLAGS.progress)

    stats = decomposition.statistics
    epochs = list(range(1, len(stats["two_class_rps"]) + 1))
    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    metrics.line_plot_png(epochs, {"two-class RPs": stats["two_class_rps"], "mean Jaccard": stats["mean_jaccard"],
                                   "k (one module)": [approach.k] * len(epochs)},
                          os.path.join(workdir, "plots", "rps_per_epoch.png"), xlabel="module epoch",
                          ylabel="fraction of maskable weights",
                          title=f"supermask {model_name}/{dataset_name}: alpha {approach.alpha}, k {approach.k}")
    metrics.scatter_plot_png(
        {"recomposed (voting)": ([r["composed_size"] for r in reuse], [r["accuracy"] for r in reuse]),
         "standard (restricted)": ([1.0] * len(reuse), [r["standard_accuracy"] for r in reuse])},
        os.path.join(workdir, "plots", "reuse_accuracy_vs_rps.png"),
        xlabel="RPs (fraction of maskable weights)", ylabel="sub-task test accuracy",
        title="recomposition, no retraining")

    std_section = {"test_accuracy": std_eval["top1"], "test_top5": std_eval["top5"], "history": std_history}
    results = {
        **setup.results_header(approach, maskable_weights=sm.masked_weight_count(variables["params"]),
                               base_fingerprint=modules.metadata.extra[sm.FINGERPRINT_KEY]),
        "standard": std_section,
        "modular": std_section,  # post-training: the modules are cut from the standard model
        "composed": {"test_accuracy": composed_acc, "test_top5": composed_top5, "size": recomposed.rps,
                     "method": "union of supermasks, confidence voting"},
        "modules": {
            "mean_size": pairs["mean_size"], "mean_overlap": pairs["mean_overlap"],
            "mean_jaccard": pairs["mean_jaccard"], "sizes": pairs["sizes"].tolist(),
            "rps": {"single_mean": pairs["mean_size"], "two_class_mean": pairs["two_class_rps_mean"],
                    "two_class_min": pairs["two_class_rps_min"], "two_class_max": pairs["two_class_rps_max"],
                    "all_classes": recomposed.rps, "two_class_per_epoch": stats["two_class_rps"].tolist()},
            "jaccard_per_epoch": stats["mean_jaccard"].tolist(),
            "accuracy": per_module["accuracy"], "balanced_accuracy": per_module["balanced_accuracy"],
            "mean_balanced_accuracy": float(np.mean(per_module["balanced_accuracy"])),
            "train_cross_entropy_per_epoch": stats["cross_entropy"].mean(axis=1).tolist(),
            "stemming_per_epoch": stats["stemming"].mean(axis=1).tolist(),
        },
        "reuse": {
            "subtasks": reuse,
            "mean_accuracy": float(np.mean([r["accuracy"] for r in reuse])),
            "mean_standard_accuracy": float(np.mean([r["standard_accuracy"] for r in reuse])),
            "mean_composed_size": float(np.mean([r["composed_size"] for r in reuse])),
        },
        "timing": {
            "decompose_seconds": decompose_s, "inference_seconds": inference_s,
            "cotrain_seconds": cotrain_s, "cotrain_compile_seconds": float(stats["compile_seconds"]),
            "cotrain_modules": dataset.num_classes, "module_epochs": approach.epochs,
            **({"single_module_seconds": single_s, "cotrain_ratio": cotrain_s / single_s} if single_s else {}),
        },
        "backend": jax.default_backend(),
    }
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    return results

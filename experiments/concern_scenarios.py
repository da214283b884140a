r"""Pan & Rajan's reuse and replacement scenarios (ICSE 2022, Sec. 4.2.2-4.2.3) on LeNet5, MNIST x Fashion-MNIST.

    python -m experiments.concern_scenarios --workdir=/tmp/concern_scen --train_limit=10000 --epochs=2

* intra-dataset reuse: the modules of two classes vote, against LeNet5 trained from scratch on the two classes;
* inter-dataset reuse: a MNIST module and a Fashion-MNIST module vote (each sees the input normalised as its
  model was trained), with and without continuous learning (tangling re-applied with the other dataset's
  class), against LeNet5 trained from scratch on the two classes;
* intra-dataset replacement: in the modules of a weaker MNIST model, one class's module is swapped for the
  module of a stronger one; all ten vote;
* inter-dataset replacement: MNIST class 0's module is swapped for a Fashion-MNIST module, against a model
  trained from scratch on the mixed ten classes;
* time of each (composition vs training from scratch plus prediction). Energy and CO2e (Eq. 1-2) need
  power counters (RAPL under /sys/class/powercap); without them time alone is reported.

Tables go to ``--out`` as Markdown + CSV with this command line; ``scenarios.json`` holds everything.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import sys
import time
from typing import Any

import numpy as np
from absl import app, flags, logging

from experiments.common import write_json_atomic
from jaxmod import checkpoint, data, models, report, reuse, train
from jaxmod.approaches import concern
from jaxmod.data.core import Dataset, Split
from jaxmod.losses import cross_entropy_loss
from jaxmod.modules import ModuleSet
from jaxmod.reuse import subtask_samples
from jaxmod.running import module_outputs

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/concern_scenarios", "Trained models (resumable).")
flags.DEFINE_string("out", "experiments/results/concern", "Where tables go.")
flags.DEFINE_integer("epochs", 2, "Epochs of every trained model but the weak one.")
flags.DEFINE_integer("weak_epochs", 1, "Epochs of the weaker MNIST model of the intra-dataset replacement.")
flags.DEFINE_integer("weak_train_limit", None, "Training samples of the weaker model (default: --train_limit, "
                     "the same data as the stronger one, as in the paper).")
flags.DEFINE_integer("train_limit", 10000, "Training samples per dataset (class balanced).")
flags.DEFINE_integer("test_limit", 5000, "Test samples per dataset (class balanced).")
flags.DEFINE_list("classes", ["0", "1", "2", "3"], "Classes of the reuse scenarios (the paper takes four).")
flags.DEFINE_string("variant", "ci_ti_mc_bln", "Decomposition variant.")
flags.DEFINE_integer("seed", 0, "Seed.")


def fit(name: str, dataset: Dataset, epochs: int, num_classes: int) -> tuple[Any, dict, float | None]:
    """A LeNet5 trained under ``--workdir/name`` (resumed when there) and the seconds its training took.

    The training time is the one measured when the epochs ran, kept in ``name.train_seconds.json`` beside
    the checkpoints, so a resumed model reports its original cost, not the ~0 s of restoring it; ``None``
    when the epochs ran before this record existed.
    """
    model = models.create_model("lenet5", num_classes)
    directory = os.path.join(FLAGS.workdir, name)
    record = os.path.join(FLAGS.workdir, f"{name}.train_seconds.json")
    with checkpoint.RunCheckpointer(directory) as ckpt:
        done = ckpt.latest_step() or 0
    saved = None
    if os.path.exists(record):
        with open(record) as f:
            saved = json.load(f)
    start = time.perf_counter()
    state, _ = train.fit(model, dataset, cross_entropy_loss(), train.TrainConfig(epochs=epochs, seed=FLAGS.seed),
                         directory, progress=False, run_info={"name": name})
    elapsed = time.perf_counter() - start
    seconds = recorded_train_seconds(done, epochs, saved, elapsed)
    if done < epochs:
        write_json_atomic(record, {"train_seconds": seconds, "epochs": epochs})
    return model, state.variables(), seconds


def recorded_train_seconds(done: int, epochs: int, saved: dict[str, Any] | None, elapsed: float) -> float | None:
    """Training seconds of a run that had ``done`` of ``epochs`` epochs before a call that took ``elapsed``:
    the saved record when nothing was trained now, the saved seconds of the ``done`` epochs plus ``elapsed``
    when it resumed, ``elapsed`` when it started from nothing, ``None`` when the earlier epochs were not timed."""
    if done >= epochs:
        return None if saved is None else saved["train_seconds"]
    if done == 0:
        return elapsed
    if saved is None or saved["epochs"] != done or saved["train_seconds"] is None:
        return None
    return saved["train_seconds"] + elapsed


def renormalise(x: np.ndarray, source: Dataset, target: Dataset) -> np.ndarray:
    """Images normalised with ``source``'s statistics, re-normalised with ``target``'s."""
    return ((x * source.std + source.mean - target.mean) / target.std).astype(np.float32)


def subset(dataset: Dataset, split: str, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    s = dataset.split(split)
    index, labels = subtask_samples(s.y, classes)
    return s.x[index], labels


def two_class_dataset(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]]) -> Dataset:
    """A dataset from ``(train x, val x, test x, label)`` parts, one per class."""
    def split(k):
        x = np.concatenate([p[k] for p in parts])
        y = np.concatenate([np.full(len(p[k]), p[3], np.int32) for p in parts])
        return Split(x.astype(np.float32), y)
    return Dataset("mixed", split(0), split(1), split(2), len(parts), parts[0][0].shape[1:],
                   tuple(str(i) for i in range(len(parts))), np.zeros(1, np.float32), np.ones(1, np.float32))


def confidences(model, variables, modules: ModuleSet, rows, x):
    """The confidences of the modules of classes ``rows`` on ``x`` (one jitted scan)."""
    return module_outputs(model, variables, modules.select(rows), x)


def plus(a: float | None, b: float) -> float | None:
    return None if a is None else a + b


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    classes = [int(c) for c in FLAGS.classes]
    approach = concern.Concern(variant=FLAGS.variant)
    if approach.variant not in concern.CNN_VARIANTS or len(classes) < 2:
        raise app.UsageError("--variant must be a CNN variant and --classes must name at least two classes")
    load = lambda n: data.load_dataset(n, seed=FLAGS.seed, train_limit=FLAGS.train_limit,  # noqa: E731
                                       test_limit=FLAGS.test_limit)
    mnist, fashion = load("mnist"), load("fashion_mnist")
    if mnist.input_shape != fashion.input_shape:
        raise ValueError(f"MNIST and Fashion-MNIST inputs differ: {mnist.input_shape} vs {fashion.input_shape}")
    model, v_m, train_m = fit("mnist", mnist, FLAGS.epochs, 10)
    _, v_f, _ = fit("fashion", fashion, FLAGS.epochs, 10)
    weak_limit = FLAGS.weak_train_limit or FLAGS.train_limit
    weak_data = data.load_dataset("mnist", seed=FLAGS.seed, train_limit=weak_limit, test_limit=FLAGS.test_limit)
    _, v_w, train_w = fit(f"mnist_weak_e{FLAGS.weak_epochs}_n{weak_limit}", weak_data, FLAGS.weak_epochs, 10)
    approach.decompose(model, v_m, mnist.train.x[:2000], mnist.train.y[:2000], 10)  # compile, not timed
    dec_m, dec_s = timed(approach.decompose, model, v_m, mnist.train.x, mnist.train.y, 10)
    dec_m = dec_m.modules
    dec_f = approach.decompose(model, v_f, fashion.train.x, fashion.train.y, 10).modules
    dec_w = approach.decompose(model, v_w, mnist.train.x, mnist.train.y, 10).modules
    out: dict[str, Any] = {"decompose_seconds_mnist": dec_s, "train_seconds_mnist_full_model": train_m,
                           "train_seconds_weak_model": train_w,
                           "weak_model": {"epochs": FLAGS.weak_epochs, "train_samples": len(weak_data.train.x)},
                           "rapl_available": os.path.isdir("/sys/class/powercap"), "variant": approach.variant,
                           "command": "python -m experiments.concern_scenarios " + " ".join(sys.argv[1:])}

    # intra-dataset reuse
    intra = []
    for a, b in itertools.combinations(classes, 2):
        x, labels = subset(mnist, "test", [a, b])
        conf, reuse_s = timed(confidences, model, v_m, dec_m, [a, b], x)
        parts = [tuple(subset(mnist, s, [c])[0] for s in ("train", "val", "test")) for c in (a, b)]
        ds2 = two_class_dataset([(*p, i) for i, p in enumerate(parts)])
        m2, v2, train_s = fit(f"intra_{a}_{b}", ds2, FLAGS.epochs, 2)
        ev2, pred_s = timed(train.evaluate, m2, v2, ds2.test.x, ds2.test.y)
        intra.append({"classes": f"{a}-{b}", "module_accuracy": reuse.voted_accuracy(conf, labels, [0, 1])["top1"],
                      "trained_accuracy": ev2["top1"], "reuse_seconds": reuse_s,
                      "train_predict_seconds": plus(train_s, pred_s)})
    out["intra_reuse"] = intra

    # inter-dataset reuse, with and without continuous learning
    inter = []
    for a, b in itertools.product(classes[:2], classes[:2]):
        xa, xb = subset(mnist, "test", [a])[0], subset(fashion, "test", [b])[0]
        x_m = np.concatenate([xa, renormalise(xb, fashion, mnist)])  # as the MNIST module sees them
        x_f = np.concatenate([renormalise(xa, mnist, fashion), xb])  # as the Fashion-MNIST module sees them
        labels = np.concatenate([np.zeros(len(xa), np.int32), np.ones(len(xb), np.int32)])
        row = {"mnist_class": a, "fashion_class": b}
        for cl in (False, True):
            start = time.perf_counter()
            mod_a, mod_b = dec_m.select([a]), dec_f.select([b])
            if cl:  # re-apply tangling with the other dataset's class (training samples, the TI quota)
                neg = approach.negatives_per_class(10)
                na = renormalise(subset(fashion, "train", [b])[0][:neg], fashion, mnist)
                nb = renormalise(subset(mnist, "train", [a])[0][:neg], mnist, fashion)
                mod_a = approach.continue_learning(model, v_m, mod_a, na)
                mod_b = approach.continue_learning(model, v_f, mod_b, nb)
            conf = np.concatenate([module_outputs(model, v_m, mod_a, x_m), module_outputs(model, v_f, mod_b, x_f)])
            key = "modified_module_accuracy" if cl else "module_accuracy"
            row[key] = reuse.voted_accuracy(conf, labels, [0, 1])["top1"]
            row["cl_seconds" if cl else "reuse_seconds"] = time.perf_counter() - start
        parts = [tuple(subset(mnist, s, [a])[0] for s in ("train", "val", "test")),
                 tuple(renormalise(subset(fashion, s, [b])[0], fashion, mnist) for s in ("train", "val", "test"))]
        ds2 = two_class_dataset([(*p, i) for i, p in enumerate(parts)])
        m2, v2, train_s = fit(f"inter_{a}_{b}", ds2, FLAGS.epochs, 2)
        ev2, pred_s = timed(train.evaluate, m2, v2, ds2.test.x, ds2.test.y)
        row["trained_accuracy"] = ev2["top1"]
        row["train_predict_seconds"] = plus(train_s, pred_s)
        inter.append(row)
    out["inter_reuse"] = inter

    # intra-dataset replacement: weak model's modules, class r's module from the strong model
    all10 = list(range(10))
    conf_w = confidences(model, v_w, dec_w, all10, mnist.test.x)
    conf_s = confidences(model, v_m, dec_m, all10, mnist.test.x)
    weak_model_acc = train.evaluate(model, v_w, mnist.test.x, mnist.test.y)
    replace = {"weak_model_top1": weak_model_acc["top1"], "weak_model_top5": weak_model_acc["top5"],
               "strong_model_top1": train.evaluate(model, v_m, mnist.test.x, mnist.test.y)["top1"],
               "prior_composed": reuse.voted_accuracy(conf_w, mnist.test.y, all10),
               "strong_composed": reuse.voted_accuracy(conf_s, mnist.test.y, all10)}
    for r in all10:
        conf = conf_w.copy()
        conf[r] = conf_s[r]
        replace[f"RM{r}"] = reuse.voted_accuracy(conf, mnist.test.y, all10)
    out["intra_replace"] = replace

    # inter-dataset replacement: MNIST class 0's module -> a Fashion-MNIST class k module
    inter_rep = []
    for k in classes[:2]:
        keep = mnist.test.y != 0
        xk = subset(fashion, "test", [k])[0]
        x_m = np.concatenate([mnist.test.x[keep], renormalise(xk, fashion, mnist)])
        x_f = np.concatenate([renormalise(mnist.test.x[keep], mnist, fashion), xk])
        labels = np.concatenate([mnist.test.y[keep], np.zeros(len(xk), np.int32)])
        start = time.perf_counter()
        conf = np.concatenate([confidences(model, v_f, dec_f, [k], x_f),
                               confidences(model, v_m, dec_m, all10[1:], x_m)])
        composed = reuse.voted_accuracy(conf, labels, all10)
        compose_s = time.perf_counter() - start
        mixed = [(mnist.train.x[mnist.train.y == c], mnist.val.x[mnist.val.y == c], mnist.test.x[mnist.test.y == c], c)
                 for c in all10[1:]]
        parts = [tuple(renormalise(subset(fashion, s, [k])[0], fashion, mnist) for s in ("train", "val", "test"))]
        ds10 = two_class_dataset([(*parts[0], 0), *[(m[0], m[1], m[2], m[3]) for m in mixed]])
        m10, v10, train_s = fit(f"inter_replace_{k}", ds10, FLAGS.epochs, 10)
        ev, pred_s = timed(train.evaluate, m10, v10, ds10.test.x, ds10.test.y)
        inter_rep.append({"fashion_class": k, "trained_top1": ev["top1"], "trained_top5": ev["top5"],
                          "composed_top1": composed["top1"], "composed_top5": composed["top5"],
                          "compose_seconds": compose_s, "train_predict_seconds": plus(train_s, pred_s)})
    out["inter_replace"] = inter_rep
    out["energy"] = ("RAPL power counters are not exposed on this machine (/sys/class/powercap is absent): "
                     "time alone is reported; metrics.co2e implements Eq. 1-2 for machines that have them")
    write_outputs(out)


def seconds(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.1f} s"


def write_outputs(out: dict[str, Any]) -> None:
    os.makedirs(FLAGS.out, exist_ok=True)
    write_json_atomic(os.path.join(FLAGS.out, "scenarios.json"), out)
    rep = out["intra_replace"]
    tables = {
        "intra_reuse": out["intra_reuse"],
        "inter_reuse": out["inter_reuse"],
        "intra_replace": [{"replaced": k, "top1": v["top1"], "top5": v["top5"]} for k, v in rep.items()
                          if isinstance(v, dict)],
        "inter_replace": out["inter_replace"],
    }
    md = [f"# Pan & Rajan scenarios (LeNet5, MNIST x Fashion-MNIST, {out['variant']})\n",
          f"Command: `{out['command']}`\n",
          f"Decomposing the MNIST model (10 modules, compiled beforehand): {out['decompose_seconds_mnist']:.2f} s; "
          f"training it: {seconds(out['train_seconds_mnist_full_model'])}. Energy: {out['energy']}.\n",
          "Time columns: `reuse_seconds`, `cl_seconds` and `compose_seconds` time the composition as run here (the "
          "modules' forward passes and the vote on the test samples; continuous learning included in `cl_seconds`), "
          "not the one-time decomposition above. `train_predict_seconds` is the from-scratch alternative: the "
          "training time measured when the model was trained (kept in `<workdir>/<name>.train_seconds.json`, so a "
          "resumed model reports its original cost; empty when not recorded) plus prediction on the same samples.\n",
          f"Weak model (intra replacement): LeNet5, {out['weak_model']['epochs']} epoch(s) on "
          f"{out['weak_model']['train_samples']} training samples (the stronger one: {FLAGS.epochs} epochs on the "
          f"same data), top-1 {rep['weak_model_top1']:.4f}, top-5 {rep['weak_model_top5']:.4f} (the stronger: top-1 "
          f"{rep['strong_model_top1']:.4f}); training it "
          f"{seconds(out['train_seconds_weak_model'])}.\n"]
    for name, rows in tables.items():
        with open(os.path.join(FLAGS.out, f"scenario_{name}.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        md += [f"## {name.replace('_', ' ')}\n", report.markdown_table(rows), ""]
    with open(os.path.join(FLAGS.out, "scenarios.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    app.run(main)

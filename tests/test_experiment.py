"""The experiment program end to end on a slice of real MNIST, and its refusal of bad flags."""

import json

import numpy as np
import pytest
from helpers.program_runs import run_program

from jaxmod import checkpoint, compose

SCHEMA = {
    "approach", "model", "dataset", "seed", "num_classes", "standard", "modular", "composed", "modules", "reuse",
    "timing",
}


def _run(approach, *flags):
    """``python -m experiments.modularize --config=experiments/configs/APPROACH.py --config.progress=false FLAGS``,
    in a process of its own forked from a server that has imported jax already (tests/helpers/program_runs.py)."""
    return run_program([f"--config=experiments/configs/{approach}.py", "--config.progress=false", *flags])


def test_moda_end_to_end_on_real_mnist(tmp_path):
    work = tmp_path / "run"
    proc = _run("moda", "--config.model=lenet5", "--config.dataset=mnist", "--config.train.epochs=1",
                "--config.train_limit=2000", "--config.test_limit=1000", "--config.reuse.num_subtasks=4",
                "--config.timing_repeats=3", f"--workdir={work}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    assert SCHEMA <= set(results)
    for key in ("standard", "modular", "composed"):
        assert 0.5 < results[key]["test_accuracy"] <= 1.0  # one epoch on 2000 digits learns something
    for key in ("mean_size", "mean_overlap", "mean_jaccard"):
        assert 0.0 < results["modules"][key] <= 1.0
    assert results["modules"]["mean_overlap"] <= results["modules"]["mean_size"]
    reuse = results["reuse"]
    assert len(reuse["subtasks"]) == 4
    for task in reuse["subtasks"]:
        assert set(task) == {"classes", "accuracy", "standard_accuracy", "composed_size", "composed_flops"}
        assert 2 <= len(task["classes"]) <= 9
        assert 0 < task["composed_size"] < 1 and 0 < task["composed_flops"] <= 1
    np.testing.assert_allclose(reuse["mean_accuracy"], np.mean([t["accuracy"] for t in reuse["subtasks"]]))
    for key in ("standard_step_ms", "modular_step_ms", "decompose_seconds", "inference_seconds"):
        assert results["timing"][key] > 0
    latency = results["latency"]  # the 2-class composed model against the full one, measured
    assert latency["classes"] == [0, 1] and latency["method"] == "SlicedModel"
    for batch in (1, 256):
        assert latency[f"full_ms_batch_{batch}"] > 0 and latency[f"composed_ms_batch_{batch}"] > 0
        assert latency[f"ratio_batch_{batch}"] == latency[f"composed_ms_batch_{batch}"] / latency[
            f"full_ms_batch_{batch}"]
    assert 0 < latency["flops_ratio"] < 1 and 0 < latency["size_ratio"] < 1
    assert (work / "plots" / "activation_frequency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the saved modules compose the same sub-task model the run measured
    modules, variables = checkpoint.restore_modules(work / "modules")
    assert modules.meta.approach == "moda" and modules.meta.model_name == "lenet5" and modules.meta.dataset == "mnist"
    sliced = compose.compose(modules, variables, reuse["subtasks"][0]["classes"])
    assert sliced.model.num_classes == len(reuse["subtasks"][0]["classes"])
    assert "reuse accuracy" in proc.stdout  # the summary table


def test_random_control_end_to_end_on_real_mnist(tmp_path):
    """The random control runs like every approach: the reference's training, random modules of the
    reference's per-layer sizes, the common results.json."""
    work = tmp_path / "run"
    proc = _run("random", "--config.train.epochs=1", "--config.train_limit=1000", "--config.test_limit=500",
                "--config.reuse.num_subtasks=2", "--config.timing_repeats=0", f"--workdir={work}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    assert SCHEMA <= set(results) and results["approach"] == "random"
    assert results["config"]["approach"] == {"reference": "moda", "seed": 0}
    modules, variables = checkpoint.restore_modules(work / "modules")
    assert modules.meta.approach == "random" and modules.granularity == "units"
    assert 0.0 < results["modules"]["mean_size"] <= 1.0 and 0 < results["composed"]["test_accuracy"] <= 1
    composed = compose.compose(modules, variables, [1, 2])
    assert composed.model.num_classes == 2


@pytest.mark.parametrize("flag, message", [
    ("--config.model=resnet99", "unknown model"),
    ("--config.options.tau=1.5", "tau"),
    ("--config.dataset=imagenet21k", "dataset"),
    ("--config.reuse.num_subtasks=0", "num_subtasks"),
    ("--config.model=vgg16", "does not take"),
    ("--config.train_limit=100", "fewer than one batch"),
    ("--config.train_limit=5 --config.train.batch_size=4", "have no train samples"),
    ("--config.model_config={\"units\":8}", "bad configuration"),
    ("--config.train.optimizer=adam", "would also train moda's modular model"),
    ("--config.options.alpha=-1", "alpha"),
])
def test_bad_settings_fail_before_writing(tmp_path, flag, message):
    work = tmp_path / "never"
    proc = _run("moda", "--config.train.epochs=1", f"--workdir={work}", *flag.split(" "))
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not work.exists()


def test_rows_tables_hold_the_command_and_every_row(tmp_path):
    from experiments.common import write_rows_tables

    rows = [{"beta": 1.5, "acc": 0.91234, "name": "a"}, {"beta": 0.5, "acc": 0.8, "name": "b"}]
    md = write_rows_tables(str(tmp_path / "sub" / "t"), rows, "A title", "Some notes.", "experiments.somewhere")
    text = open(md).read()
    assert text.startswith("# A title") and "python -m experiments.somewhere" in text and "Some notes." in text
    assert "| 1.5000 | 0.9123 | a |" in text and "| 0.5000 | 0.8000 | b |" in text
    assert open(tmp_path / "sub" / "t.csv").read().splitlines() == ["beta,acc,name", "1.5,0.91234,a", "0.5,0.8,b"]
    with pytest.raises(ValueError, match="no rows"):
        write_rows_tables(str(tmp_path / "u"), [], "t", "n", "p")


def test_mwt_end_to_end_on_real_mnist(tmp_path):
    """``configs/mwt.py`` through the pipeline: the common results plus MwT's kernel metrics and both reuse
    accuracies, and a saved fine-tuned sub-model that restores to the accuracy the run reported."""
    from jaxmod import data, train
    from jaxmod.approaches import mwt as mwt_lib
    from jaxmod.reuse import subtask_samples

    work = tmp_path / "run"
    proc = _run("mwt", "--config.model=lenet5", "--config.dataset=mnist", "--config.train.epochs=1",
                "--config.train_limit=2000", "--config.test_limit=1000", "--config.reuse.num_subtasks=2",
                "--config.options.finetune_epochs=1", "--config.timing_repeats=3", f"--workdir={work}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    assert SCHEMA <= set(results) and results["approach"] == "mwt"
    mods = results["modules"]
    assert 0 < mods["krr"] <= 1 and 0 <= mods["coupling"] <= 1 and 0 <= mods["cohesion"] <= 1
    assert results["config"]["approach"]["beta"] == 1.5 and results["config"]["approach"]["alpha"] == 0.5
    reuse = results["reuse"]
    assert len(reuse["subtasks"]) == 2
    np.testing.assert_allclose(reuse["mean_accuracy"], np.mean([t["accuracy"] for t in reuse["subtasks"]]))
    np.testing.assert_allclose(reuse["mean_accuracy_no_finetune"],
                               np.mean([t["accuracy_no_finetune"] for t in reuse["subtasks"]]))
    for key in ("standard_step_ms", "modular_step_ms", "decompose_seconds", "finetune_seconds"):
        assert results["timing"][key] > 0
    # the fine-tuned sub-model saved through orbax gives the accuracy the run reported
    task = reuse["subtasks"][0]
    classes = tuple(task["classes"])
    tuned = mwt_lib.restore_finetuned(str(work / "finetuned" / "_".join(map(str, classes))))
    assert tuned.classes == classes
    ds = data.load_dataset("mnist", train_limit=2000, test_limit=1000, seed=0)
    index, labels = subtask_samples(ds.test.y, classes)
    acc = train.evaluate(tuned.model, tuned.variables, ds.test.x[index], labels)["top1"]
    assert acc == pytest.approx(task["accuracy"], abs=1e-6)
    assert (work / "plots" / "kernel_frequency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_number_list_flag_parses_and_refuses_by_name():
    from absl import app

    from experiments.common import number_list_flag

    assert number_list_flag(["0.5", "1", "2e-1"], "betas") == [0.5, 1.0, 0.2]
    assert number_list_flag(["1.5", "0"], "betas", allow_zero=True) == [1.5, 0.0]
    for values, allow_zero, message in [(["a"], False, "--lrs must be numbers"), ([], False, "positive"),
                                        (["0"], False, "--lrs must be positive"), (["-1"], True, "non-negative")]:
        with pytest.raises(app.UsageError, match=message):
            number_list_flag(values, "lrs", allow_zero=allow_zero)

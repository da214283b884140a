"""Supermask decomposition on conv models (batch norm, dropout, residual adds) and end to end on real MNIST."""

import json
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod import checkpoint, models
from jaxmod.approaches import supermask as sm


@pytest.mark.parametrize("batch_norm", ["module", "running"])
def test_a_conv_model_with_batch_norm_and_dropout_decomposes(batch_norm):
    name = "vgg_narrow"
    model = models.create_model(name, 3, stages=((4,),), classifier=(8,), dropout=0.5)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    # running statistics unlike a fresh batch's, so that train-mode batch norm would give other outputs
    variables = {**variables, "batch_stats": jax.tree.map(lambda a: a + 0.3, variables["batch_stats"])}
    rng = np.random.default_rng(0)
    y = (np.arange(48) % 3).astype(np.int32)
    x = rng.normal(size=(48, 8, 8, 1)).astype(np.float32)
    approach = sm.Supermask(k=0.2, epochs=1, batch_size=16, batch_norm=batch_norm)
    decomposition = approach.decompose(model, variables, x, y, 3)
    kernels = sm.masked_paths(variables["params"])
    assert any("conv" in "/".join(p) for p in kernels)
    assert len(jax.tree.leaves(decomposition.masks)) == len(kernels)  # every conv and dense kernel, nothing else
    for leaf in jax.tree.leaves(decomposition.masks):
        assert leaf.shape[0] == 3
        assert int(leaf[0].sum()) == sm.kept_count(leaf[0].size, 0.2)
    modules = sm.supermask_module_set(decomposition, model_name=name, model=model, dataset="synthetic",
                                      input_shape=(8, 8, 1), variables=variables)
    rec = sm.recompose(modules, variables, [0, 1, 2])
    chex.assert_trees_all_equal(rec.deployed["batch_stats"], variables["batch_stats"])  # the model stays frozen
    conf = sm.recomposed_confidences(rec, x[:10])
    np.testing.assert_array_equal(conf, sm.recomposed_confidences(rec, x[:10]))  # dropout is off
    mask0 = jax.tree.map(lambda m: m[0], rec.masks)
    head0 = jax.tree.map(lambda h: h[0], rec.heads["graft"])
    if batch_norm == "module":
        # each module's own running statistics: the base ones moved (momentum 0.9, 3 batches) towards the masked
        # model's batch statistics, one set per module
        stats = rec.heads["batch_stats"]
        order = approach.batch_order(len(x), 1)
        expected = variables["batch_stats"]
        params0 = sm.apply_mask(variables["params"], mask0)
        for index in order:
            _, upd = model.apply({**variables, "params": params0, "batch_stats": expected}, x[index], train=True,
                                 mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
            expected = upd["batch_stats"]
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], stats), expected, rtol=1e-5, atol=1e-6)
        stats0 = jax.tree.map(lambda a: a[0], stats)
    else:
        assert "batch_stats" not in rec.heads
        stats0 = None
    direct = jax.nn.softmax(sm.module_forward(model, variables, mask0, head0, jnp.asarray(x[:10]), stats0),
                            axis=-1)[:, 1]
    np.testing.assert_allclose(conf[0], direct, rtol=1e-4, atol=1e-5)


def _run(*flags):
    return subprocess.run([sys.executable, "-m", "experiments.modularize", "--approach=supermask", "--progress=false",
                           *flags], capture_output=True, text=True)


def test_supermask_end_to_end_on_real_mnist(tmp_path):
    work = tmp_path / "run"
    proc = _run("--model=fc1", "--dataset=mnist", "--epochs=3", "--train_limit=2000", "--test_limit=500",
                "--module_epochs=2", "--num_subtasks=3", "--timing_repeats=1", "--k=0.1", "--alpha=1.0",
                f"--workdir={work}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    assert results["approach"] == "supermask" and results["modular"] == results["standard"]
    assert results["composed"]["test_accuracy"] > 0.6  # ten one-class modules voting, after a tiny budget
    rps = results["modules"]["rps"]
    assert rps["single_mean"] == pytest.approx(0.1, abs=1e-3)  # k = 10% of every layer
    assert rps["single_mean"] < rps["two_class_min"] <= rps["two_class_mean"] <= rps["two_class_max"] <= 0.2 + 1e-9
    assert rps["two_class_max"] <= rps["all_classes"] <= 1.0
    assert len(rps["two_class_per_epoch"]) == 2
    assert rps["two_class_per_epoch"][-1] == pytest.approx(rps["two_class_mean"])
    assert 0 < results["modules"]["mean_jaccard"] <= 1
    timing = results["timing"]
    assert timing["cotrain_seconds"] > 0 and timing["single_module_seconds"] > 0
    assert timing["cotrain_ratio"] == pytest.approx(timing["cotrain_seconds"] / timing["single_module_seconds"])
    assert (work / "plots" / "rps_per_epoch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with checkpoint.RunCheckpointer(work / "cotrain") as cotrain:
        assert cotrain.all_steps() == [1, 2]  # the co-training, checkpointed once per epoch
    # the saved modules recompose the sub-task the run measured, with the same RPs
    modules, variables = checkpoint.restore_modules(work / "modules")
    task = results["reuse"]["subtasks"][0]
    assert sm.recompose(modules, variables, task["classes"]).rps == pytest.approx(task["composed_size"])
    assert "two-class RPs (mean)" in proc.stdout


@pytest.mark.parametrize("flag", ["--k=0", "--k=1.5"])
def test_bad_k_fails_before_writing(tmp_path, flag):
    work = tmp_path / "never"
    proc = _run(flag, f"--workdir={work}")
    assert proc.returncode != 0
    assert "k (the fraction of weights" in proc.stderr
    assert not work.exists()

"""Supermask decomposition on conv models (batch norm, dropout, residual adds) and end to end on real MNIST."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import pipeline
from experiments.configs import supermask as supermask_config
from jaxmod import checkpoint, metrics, models
from jaxmod.approaches import supermask as sm
from jaxmod.compose import VotingModel, compose
from jaxmod.running import apply_weight_mask


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
    modules = approach.decompose(model, variables, x, y, 3).modules
    assert modules.granularity == "weights" and modules.meta.input_shape == (8, 8, 1)
    kernels = sm.masked_paths(variables["params"])
    assert any("conv" in "/".join(p) for p in kernels)
    assert len(jax.tree.leaves(modules.weights)) == len(kernels)  # every conv and dense kernel, nothing else
    for leaf in jax.tree.leaves(modules.weights):
        assert leaf.shape[0] == 3
        assert int(leaf[0].sum()) == sm.kept_count(leaf[0].size, 0.2)
    rec = compose(modules, variables, [0, 1, 2])
    assert isinstance(rec, VotingModel)
    chex.assert_trees_all_equal(rec.variables["batch_stats"], variables["batch_stats"])  # the model stays frozen
    conf = rec.confidences(x[:10])
    np.testing.assert_array_equal(conf, rec.confidences(x[:10]))  # dropout is off
    mask0 = jax.tree.map(lambda m: m[0], rec.modules.weights)
    head0 = jax.tree.map(lambda h: h[0], rec.modules.head)
    if batch_norm == "module":
        # each module's own running statistics: the base ones moved (momentum 0.9, 3 batches) towards the masked
        # model's batch statistics, one set per module
        assert set(rec.modules.state) == {"batch_stats"}
        stats = rec.modules.state["batch_stats"]
        order = approach.batch_order(len(x), 1)
        expected = variables["batch_stats"]
        params0 = apply_weight_mask(variables["params"], mask0)
        for index in order:
            _, upd = model.apply({**variables, "params": params0, "batch_stats": expected}, x[index], train=True,
                                 mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
            expected = upd["batch_stats"]
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], stats), expected, rtol=1e-5, atol=1e-6)
        stats0 = jax.tree.map(lambda a: a[0], stats)
    else:
        assert rec.modules.state is None
        stats0 = None
    direct = jax.nn.softmax(sm.module_forward(model, variables, mask0, head0, jnp.asarray(x[:10]), stats0),
                            axis=-1)[:, 1]
    np.testing.assert_allclose(conf[0], direct, rtol=1e-4, atol=1e-5)


def _config(**options):
    config = supermask_config.get_config()
    config.progress = False
    config.options.update(options)
    return config


def test_supermask_end_to_end_on_real_mnist(tmp_path):
    work = tmp_path / "run"
    config = _config(epochs=2, k=0.1, alpha=1.0)
    config.model, config.dataset = "fc1", "mnist"
    config.train.epochs = 3
    config.train_limit, config.test_limit = 2000, 500
    config.reuse.num_subtasks = 3
    config.timing_repeats = 1
    returned = pipeline.run(config, str(work))
    results = json.loads((work / "results.json").read_text())
    pipeline.check_results(results)
    assert results["approach"] == "supermask" and results["modular"] == results["standard"]
    assert results["composed"]["test_accuracy"] > 0.6  # ten one-class modules voting, after a tiny budget
    assert results["composed"]["test_accuracy"] == pytest.approx(returned["composed"]["test_accuracy"])
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
    composed = compose(modules, variables, task["classes"])
    assert isinstance(composed, VotingModel) and composed.classes == tuple(task["classes"])
    assert metrics.union_size(composed.modules, task["classes"]) == pytest.approx(task["composed_size"])
    assert metrics.union_size(modules, task["classes"]) == pytest.approx(task["composed_size"])
    assert "two-class RPs (mean)" in pipeline.summary(results)


@pytest.mark.parametrize("k", [0.0, 1.5])
def test_bad_k_fails_before_writing(tmp_path, k):
    work = tmp_path / "never"
    with pytest.raises(ValueError, match=r"k \(the fraction of weights"):
        pipeline.run(_config(k=k), str(work))
    assert not work.exists()

"""Training: resumption after an interruption, evaluation, and input checks."""

import dataclasses

import chex
import jax
import numpy as np
import pytest

from jaxmod import data, train
from jaxmod.losses import cross_entropy_loss, moda_loss
from jaxmod.models import create_model


@pytest.fixture(scope="module")
def mnist_small():
    return data.load_dataset("mnist", train_limit=600, test_limit=300, seed=0)


CONFIG = train.TrainConfig(epochs=3, batch_size=64, learning_rate=0.05, seed=3)


def test_interrupted_run_resumes_to_the_same_parameters(mnist_small, tmp_path):
    model = create_model("fc2", 10)
    full, full_history = train.fit(model, mnist_small, moda_loss(), CONFIG, tmp_path / "a", progress=False)
    part, _ = train.fit(model, mnist_small, moda_loss(), CONFIG, tmp_path / "b", progress=False, stop_after=1)
    assert int(part.step) < int(full.step)
    resumed, resumed_history = train.fit(model, mnist_small, moda_loss(), CONFIG, tmp_path / "b", progress=False)
    chex.assert_trees_all_equal(resumed.params, full.params)
    chex.assert_trees_all_equal(resumed.opt_state, full.opt_state)
    assert int(resumed.step) == int(full.step)
    assert [h["epoch"] for h in resumed_history] == [1, 2, 3]
    np.testing.assert_allclose([h["train_loss"] for h in resumed_history], [h["train_loss"] for h in full_history])
    # every epoch logs the mean of each MODA term, and the loss is their weighted sum (Eq. 7: 1, 1, 0.3)
    for h in full_history:
        np.testing.assert_allclose(h["train_loss"], h["train_cross_entropy"] + h["train_affinity"]
                                   + h["train_dispersion"] + 0.3 * h["train_compactness"], rtol=1e-5)
    # a finished run returns its final state without training again
    again, _ = train.fit(model, mnist_small, moda_loss(), CONFIG, tmp_path / "b", progress=False)
    chex.assert_trees_all_equal(again.params, full.params)


def test_training_learns_real_digits(mnist_small, tmp_path):
    model = create_model("lenet5", 10)
    state, history = train.fit(model, mnist_small, cross_entropy_loss(), CONFIG, tmp_path, progress=False)
    result = train.evaluate(model, state.variables(), mnist_small.test.x, mnist_small.test.y)
    assert result["top1"] > 0.6 and result["top5"] >= result["top1"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_resuming_with_other_settings_is_refused(mnist_small, tmp_path):
    model = create_model("fc1", 10)
    train.fit(model, mnist_small, cross_entropy_loss(), dataclasses.replace(CONFIG, epochs=2), tmp_path,
              progress=False, stop_after=1)
    with pytest.raises(ValueError, match=r"another run \(config.seed is 3 there, 9 here\)"):
        train.fit(model, mnist_small, cross_entropy_loss(), dataclasses.replace(CONFIG, epochs=2, seed=9), tmp_path,
                  progress=False)
    # the same optimisation settings but another loss (recorded in run_info) is another run too
    train.fit(model, mnist_small, moda_loss(), CONFIG, tmp_path / "moda", progress=False, stop_after=1,
              run_info={"loss": "moda", "gamma": 0.3})
    with pytest.raises(ValueError, match=r"another run \(run_info.gamma is 0.3 there, 0.5 here\)"):
        train.fit(model, mnist_small, moda_loss(gamma=0.5), CONFIG, tmp_path / "moda", progress=False,
                  run_info={"loss": "moda", "gamma": 0.5})
    # the same settings on other data (another dataset of the same size, or other labels) is another run: a
    # finished run must not be handed back for a dataset it never saw
    relabelled = dataclasses.replace(mnist_small, train=dataclasses.replace(
        mnist_small.train, y=(np.asarray(mnist_small.train.y) + 1) % 10))
    with pytest.raises(ValueError, match=r"another run \(data.sha256 is '[0-9a-f]{64}' there, '[0-9a-f]{64}' here\)"):
        train.fit(model, relabelled, cross_entropy_loss(), dataclasses.replace(CONFIG, epochs=2), tmp_path,
                  progress=False)


def test_evaluate_by_hand():
    class Fixed:
        num_classes = 3

        @staticmethod
        def apply(variables, x):
            return x[:, :3]

    x = np.array([[3.0, 1, 2], [0, 1, 2], [5, 0, 1], [0, 9, 1]], np.float32)
    y = np.array([0, 1, 2, 1], np.int32)
    # top-1 hits: rows 0 and 3; top-2 hits: rows 0, 1 (1 is second), 2 (2 is second), 3
    got = train.evaluate(Fixed(), {}, x, y, batch_size=3)
    assert got["top1"] == 0.5
    assert got["top5"] == 1.0  # k = min(5, classes) = 3: everything


@pytest.mark.parametrize("field, value", [("epochs", 0), ("batch_size", 0), ("learning_rate", -1.0),
                                          ("momentum", 1.0)])
def test_bad_config(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(CONFIG, **{field: value})


def test_bad_inputs_raise_before_writing(mnist_small, tmp_path):
    bad_labels = dataclasses.replace(mnist_small, train=data.Split(mnist_small.train.x, mnist_small.train.y + 5))
    with pytest.raises(ValueError, match="label"):
        train.fit(create_model("fc1", 10), bad_labels, cross_entropy_loss(), CONFIG, tmp_path / "labels",
                  progress=False)
    assert not (tmp_path / "labels").exists()
    with pytest.raises(ValueError, match="does not take"):
        train.fit(create_model("vgg16", 10), mnist_small, cross_entropy_loss(), CONFIG, tmp_path / "shape",
                  progress=False)
    assert not (tmp_path / "shape").exists()
    jax.clear_caches()


def test_make_optimizer_kinds_follow_their_update_rules():
    """First update on a hand-set gradient: SGD (Nesterov, momentum 0.9) moves lr * (1 + 0.9) * g,
    Adam moves lr * sign(g) (its bias-corrected first step); an unknown kind is refused."""
    import jax.numpy as jnp

    config = train.TrainConfig(epochs=1, learning_rate=0.1)
    params, grads = {"w": jnp.zeros(3)}, {"w": jnp.array([2.0, -0.5, 0.0])}
    sgd = train.make_optimizer(config, 10)
    step, _ = sgd.update(grads, sgd.init(params), params)
    chex.assert_trees_all_close(step["w"], -0.1 * 1.9 * grads["w"], rtol=1e-6)
    adam = train.make_optimizer(dataclasses.replace(config, optimizer="adam"), 10)
    step, _ = adam.update(grads, adam.init(params), params)
    chex.assert_trees_all_close(step["w"], jnp.array([-0.1, 0.1, 0.0]), atol=1e-6)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        dataclasses.replace(config, optimizer="rmsprop")
    constant = train.make_optimizer(dataclasses.replace(config, schedule="constant", momentum=0.0), 10)
    state = constant.init(params)
    for _ in range(3):  # a constant rate: every plain SGD step is lr * g
        step, state = constant.update(grads, state, params)
        chex.assert_trees_all_close(step["w"], -0.1 * grads["w"], rtol=1e-6)

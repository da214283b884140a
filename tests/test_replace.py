"""Replacement (MODA RQ1 and the CNNSplitter baseline; a module swapped in a vote): hand-made cases for the
substitution and the calibration layer, and a weak/strong pair on real MNIST."""

from __future__ import annotations

import dataclasses

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod import data, models, replace, train
from jaxmod.approaches import create_approach
from jaxmod.compose import compose
from jaxmod.losses import cross_entropy_loss
from jaxmod.voting import voting_accuracy


@pytest.fixture(scope="module")
def pair():
    """A weak fc1 (200 MNIST images, 1 epoch) and a strong one (2,000 images, 2 epochs) with MODA modules."""
    digits = data.load_dataset("mnist", train_limit=2000, test_limit=500, seed=0)
    model = models.create_model("fc1", 10)
    weak_data = dataclasses.replace(digits, train=dataclasses.replace(digits.train, x=digits.train.x[:200],
                                                                      y=digits.train.y[:200]))
    weak, _ = train.fit(model, weak_data, cross_entropy_loss(), train.TrainConfig(epochs=1, batch_size=32, seed=1),
                        None, progress=False)
    strong, _ = train.fit(model, digits, cross_entropy_loss(), train.TrainConfig(epochs=2, batch_size=32), None,
                          progress=False)
    strong_vars = strong.variables()
    modules = create_approach("moda").decompose(model, strong_vars, digits.train.x, digits.train.y, 10).modules
    return digits, weak_data, model, weak.variables(), modules, strong_vars


def test_the_target_column_comes_from_the_strong_module_and_nothing_else_changes(pair):
    digits, _, model, weak_vars, modules, strong_vars = pair
    x = digits.test.x[:64]
    out = replace.replaced_logits(model, weak_vars, modules, strong_vars, 3, x)
    weak = np.asarray(model.apply(weak_vars, x))
    module = compose(modules, strong_vars, [3], how="merge")
    chex.assert_trees_all_close(np.delete(out, 3, axis=1), np.delete(weak, 3, axis=1), atol=1e-6)
    chex.assert_trees_all_close(out[:, 3], np.asarray(module.model.apply(module.variables, x))[:, 0], atol=1e-5)


def test_calibration_layer_starts_near_zero_and_learns_a_known_map():
    params = replace.init_calibration(4, seed=0)
    assert params["kernel"].shape == (4, 4) and float(jnp.std(params["kernel"])) < 0.03
    chex.assert_trees_all_equal(params["bias"], jnp.zeros(4))
    # logits whose class is the argmax after swapping columns 0 and 1: the layer must learn the swap
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2048, 4)).astype(np.float32) * 3
    labels = np.argmax(logits[:, [1, 0, 2, 3]], axis=1)
    fitted = replace.fit_calibration(logits, labels, epochs=20, batch_size=64, learning_rate=0.05)
    predicted = np.argmax(np.asarray(replace.calibrate(fitted, jnp.asarray(logits))), axis=1)
    assert np.mean(predicted == labels) > 0.97
    assert np.mean(np.argmax(logits, axis=1) == labels) < 0.6  # without the swap it would fail


def test_accuracy_split_by_target_class_by_hand():
    logits = np.array([[2, 1, 0], [0, 3, 1], [1, 0, 2], [5, 0, 0]], np.float32)
    y = np.array([0, 1, 1, 2])  # predictions 0, 1, 2, 0: right, right, wrong, wrong
    assert replace.replacement_accuracy(logits, y, 1) == {"overall": 0.5, "target": 0.5, "others": 0.5}
    assert replace.replacement_accuracy(logits, y, 0) == {"overall": 0.5, "target": 1.0, "others": 1 / 3}


def test_replacing_a_class_on_real_data_substituted_and_calibrated(pair):
    digits, weak_data, model, weak_vars, modules, strong_vars = pair
    substituted = replace.replace_class(model, weak_vars, modules, strong_vars, 8)
    calibrated = replace.replace_class(model, weak_vars, modules, strong_vars, 8,
                                       calibrate_on=(weak_data.train.x, weak_data.train.y), epochs=10,
                                       batch_size=32)
    weak = replace.replacement_accuracy(np.asarray(model.apply(weak_vars, digits.test.x)), digits.test.y, 8)
    sub = substituted.evaluate(digits.test.x, digits.test.y)
    cal = calibrated.evaluate(digits.test.x, digits.test.y)
    assert set(sub) == set(cal) == {"overall", "target", "others"}
    assert calibrated.calibration is not None and substituted.calibration is None
    assert cal["overall"] >= weak["overall"] - 0.05  # the calibrated model stays a working classifier
    assert 0.0 <= sub["target"] <= 1.0


def test_a_module_swapped_in_the_vote(pair):
    digits, _, model, weak_vars, strong_modules, strong_vars = pair
    weak_modules = create_approach("moda").decompose(model, weak_vars, digits.train.x[:200], digits.train.y[:200],
                                                     10).modules
    conf, rows = replace.replace_in_vote(weak_modules, weak_vars, strong_modules, strong_vars, 2, digits.test.x)
    assert conf.shape == (10, len(digits.test.x)) and sorted(rows.tolist()) == list(range(10))
    assert rows[-1] == 2  # the strong module answers for class 2
    assert 0.0 < voting_accuracy(conf, digits.test.y, classes=rows) <= 1.0


def test_bad_replacements_are_refused_before_any_work(pair):
    digits, _, model, weak_vars, modules, strong_vars = pair
    with pytest.raises(ValueError, match="classes 0..9"):
        replace.replace_class(model, weak_vars, modules, strong_vars, 10)
    with pytest.raises(ValueError, match="weak model has 5"):
        replace.replace_class(models.create_model("fc1", 5), weak_vars, modules, strong_vars, 1)
    with pytest.raises(ValueError, match="shape"):
        replace.replaced_logits(model, weak_vars, modules, strong_vars, 1, np.zeros((2, 14, 14, 1), np.float32))
    with pytest.raises(ValueError, match="training samples"):
        replace.replace_class(model, weak_vars, modules, strong_vars, 1,
                              calibrate_on=(digits.train.x[:0], digits.train.y[:0]))
    with pytest.raises(ValueError, match="no module for class"):
        replace.replace_class(model, weak_vars, modules.select([0, 1]), strong_vars, 4)
    with pytest.raises(ValueError, match="training logits"):
        replace.fit_calibration(np.zeros((0, 3), np.float32), np.zeros(0, np.int32))

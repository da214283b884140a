"""Activation statistics and MODA's decomposition on a hand-set network with known activity."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod.activations import activation_rates, class_activation_counts, predict_logits
from jaxmod.approaches import create_approach
from jaxmod.models import create_model

# fc1 with 3 hidden units: unit 0 fires iff pixel 0 > 0, unit 1 iff pixel 1 > 0, unit 2 never.
MODEL = create_model("fc1", 2, units=3)
KERNEL = np.zeros((4, 3), np.float32)
KERNEL[0, 0] = KERNEL[1, 1] = 1.0
KERNEL[:, 2] = -1.0
VARIABLES = {"params": {"fc1": {"kernel": jnp.asarray(KERNEL), "bias": jnp.zeros(3)},
                        "logits": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}}
X = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0],
              [0, 1, 0, 0], [0, 1, 0, 0]], np.float32).reshape(7, 2, 2, 1)
Y = np.array([0, 0, 1, 0, 1, 1, 1], np.int32)
# Class 0 (samples 0, 1, 3): unit 0 active 3/3, unit 1 active 1/3, unit 2 0/3.
# Class 1 (samples 2, 4, 5, 6): unit 0 active 0/4, unit 1 active 3/4, unit 2 0/4.


def test_class_counts_by_hand_with_a_partial_last_batch():
    counts, totals = class_activation_counts(MODEL, VARIABLES, X, Y, num_classes=2, batch_size=3)
    np.testing.assert_array_equal(totals, [3, 4])
    np.testing.assert_array_equal(counts["fc1_relu"], [[3, 1, 0], [0, 3, 0]])
    rates = activation_rates(counts, totals)
    np.testing.assert_allclose(rates["fc1_relu"], [[1.0, 1 / 3, 0.0], [0.0, 0.75, 0.0]])


def test_moda_decomposition_by_hand():
    # tau 0.7 keeps unit 0 for class 0 and unit 1 for class 1; unit 2 is in no module
    masks = create_approach("moda", tau=0.7).decompose(MODEL, VARIABLES, X, Y, 2).modules.units
    np.testing.assert_array_equal(masks["fc1_relu"], [[True, False, False], [False, True, False]])
    # tau 0.8: class 1 has no unit at 0.8, so the floor keeps its most frequent unit (unit 1)
    masks = create_approach("moda", tau=0.8).decompose(MODEL, VARIABLES, X, Y, 2).modules.units
    np.testing.assert_array_equal(masks["fc1_relu"], [[True, False, False], [False, True, False]])


def test_absent_class_is_an_error():
    counts, totals = class_activation_counts(MODEL, VARIABLES, X, np.zeros(7, np.int32), 2, batch_size=4)
    with pytest.raises(ValueError, match=r"classes \[1\] have no samples"):
        activation_rates(counts, totals)


def test_bad_inputs_are_refused_before_work():
    with pytest.raises(ValueError, match="label"):
        class_activation_counts(MODEL, VARIABLES, X, np.where(Y == 1, 5, 0).astype(np.int32), 2)
    with pytest.raises(ValueError, match="does not take samples of shape"):
        class_activation_counts(MODEL, VARIABLES, np.zeros((3, 3, 3, 1), np.float32), Y[:3], 2)
    with pytest.raises(ValueError, match="does not take samples of shape"):
        predict_logits(MODEL, VARIABLES, np.zeros((3, 5), np.float32))
    moda = create_approach("moda")
    with pytest.raises(ValueError, match="no samples"):
        moda.decompose(MODEL, VARIABLES, X, np.zeros(7, np.int32), 2)
    with pytest.raises(ValueError, match="num_classes"):
        moda.decompose(MODEL, VARIABLES, X, Y, 3)


def test_a_model_without_taps_is_refused_by_name():
    class Plain(nn.Module):  # a user's model as written, no jaxmod calls inside
        num_classes: int = 3

        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(self.num_classes)(nn.relu(nn.Dense(4)(x.reshape((x.shape[0], -1)))))

    model = Plain()
    x = np.random.default_rng(0).normal(size=(12, 2, 2, 1)).astype(np.float32)
    y = np.arange(12) % 3
    variables = model.init(jax.random.key(0), x[:1])
    with pytest.raises(ValueError, match=r"Plain records no hidden activations: .* adapt the model first"):
        create_approach("moda").decompose(model, variables, x, y, 3)

"""Run by tests/test_sharding.py in a fresh process with 4 host devices: the same work on 1 and on 4 devices.

Prints one JSON object of the largest differences (and mask equality) for the test to check.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxmod import activations, data, models, sharding, train  # noqa: E402
from jaxmod.approaches import create_approach  # noqa: E402
from jaxmod.approaches import rnn as rnn_lib  # noqa: E402
from jaxmod.approaches import supermask as sm  # noqa: E402


def max_rel(a, b):
    leaves = jax.tree.leaves(jax.tree.map(lambda u, v: float(np.max(np.abs(np.asarray(u) - np.asarray(v)))
                                                             / (np.max(np.abs(np.asarray(v))) + 1e-12)), a, b))
    return max(leaves)


def main() -> None:
    assert jax.device_count() == 4, jax.devices()
    digits = data.load_dataset("mnist", train_limit=1024, test_limit=512, seed=0)
    model = models.create_model("lenet5", 10)
    moda = create_approach("moda")
    config = train.TrainConfig(epochs=1, batch_size=128)
    out = {}
    results = []
    for mesh in (None, "data=4"):
        with sharding.data_parallel(mesh) if mesh else _nothing():
            state, _ = train.fit(model, digits, moda.training_loss(), config, None, progress=False)
            variables = jax.tree.map(np.asarray, state.variables())
            if mesh:  # the trained parameters really were replicated over the 4 devices
                out["param_devices"] = len(jax.tree.leaves(state.params)[0].sharding.device_set)
            counts, totals = activations.class_activation_counts(model, variables, digits.train.x, digits.train.y, 10)
            masks = moda.decompose(model, variables, digits.train.x, digits.train.y, 10).modules.units
            logits = activations.predict_logits(model, variables, digits.test.x)
            concern = create_approach("concern").decompose(model, variables, digits.train.x[:256],
                                                           digits.train.y[:256], 10).modules
        results.append((variables, jax.tree.map(np.asarray, counts), np.asarray(totals), masks, logits,
                        jax.tree.map(np.asarray, concern.masks)))
    (v1, c1, t1, m1, l1, p1), (v4, c4, t4, m4, l4, p4) = results
    out["params_max_rel_diff"] = max_rel(v4, v1)
    out["counts_equal"] = bool(all(np.array_equal(c1[k], c4[k]) for k in c1)) and bool(np.array_equal(t1, t4))
    out["masks_equal"] = bool(all(np.array_equal(np.asarray(m1[k]), np.asarray(m4[k])) for k in m1))
    out["logits_max_rel_diff"] = max_rel(l4, l1)
    out["concern_masks_equal"] = bool(all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1),
                                                                              jax.tree.leaves(p4), strict=True)))
    out.update(rnn_monitoring())
    out.update(supermask_cotraining(digits))
    print(json.dumps(out))


def rnn_monitoring() -> dict:
    """Imtiaz et al.'s monitoring (hidden states and gates of every sample and step) on 4 devices against 1."""
    model = models.create_model("rnn_lstm", 3, shape="many_to_one", units=8, vocab_size=20, input_len=6)
    x = np.random.default_rng(0).integers(1, 20, size=(300, 6)).astype(np.int32)
    variables = model.init(jax.random.key(0), x[:1])
    runs = []
    for mesh in (None, "data=4"):
        with sharding.data_parallel(mesh) if mesh else _nothing():
            runs.append(rnn_lib.monitor(model, variables, x, batch_size=64))
    (h1, g1), (h4, g4) = runs
    return {"rnn_hidden_max_rel_diff": max_rel(h4, h1), "rnn_gates_max_rel_diff": max_rel(g4, g1)}


def supermask_cotraining(digits) -> dict:
    """Ten supermask modules co-trained one epoch, split over the module axis of a 2 x 2 mesh, against one
    device: the same scores and the same top-k masks."""
    model = models.create_model("fc1", 10)
    variables = model.init(jax.random.key(0), digits.train.x[:1])
    approach = create_approach("supermask", epochs=1, batch_size=64)
    runs = []
    for mesh in (None, "data=2,module=2"):
        with sharding.data_parallel(mesh) if mesh else _nothing():
            state, _ = approach.train_modules(model, variables, digits.train.x[:512], digits.train.y[:512], 10)
            devices = len(jax.tree.leaves(state.scores)[0].sharding.device_set)
            runs.append((jax.tree.map(np.asarray, state.scores), devices,
                         jax.tree.map(np.asarray, sm.hard_masks(state.scores, approach.k))))
    (s1, _, k1), (s4, d4, k4) = runs
    return {"supermask_scores_max_rel_diff": max_rel(s4, s1), "supermask_score_devices": d4,
            "supermask_masks_equal": bool(all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(k1),
                                                                                   jax.tree.leaves(k4), strict=True)))}


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    sys.exit(main())

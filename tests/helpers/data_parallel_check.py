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
    print(json.dumps(out))


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    sys.exit(main())

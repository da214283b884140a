"""Data parallelism: the same training, statistics, decomposition and logits on 4 host devices as on 1 (a fresh
process with ``--xla_force_host_platform_device_count=4``), and mesh specs checked before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from jaxmod import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_four_devices_train_and_decompose_as_one():
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "helpers", "data_parallel_check.py")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["param_devices"] == 4  # parameters replicated over the mesh
    assert out["params_max_rel_diff"] < 1e-5  # MODA training, one epoch: only the order of float sums differs
    assert out["logits_max_rel_diff"] < 1e-5
    assert out["counts_equal"] and out["masks_equal"] and out["concern_masks_equal"]


def test_mesh_specs():
    devices = jax.devices()[:1]
    assert sharding.parse_mesh("data=1", devices).shape == {"data": 1}
    assert sharding.parse_mesh(None, devices).axis_names == ("data",)
    for spec, message in (("batch=1", "not one of"), ("data=0", "positive"), ("data=x", "positive"),
                          ("data=2", "2 positions but there are 1"), ("module=1", "needs a 'data' axis"),
                          ("data=1,data=1", "twice")):
        with pytest.raises(ValueError, match=message):
            sharding.parse_mesh(spec, devices)


def test_without_a_mesh_nothing_is_placed():
    x = jax.numpy.ones((3, 2))
    assert sharding.current_mesh() is None and sharding.shard_batch(x) is x and sharding.replicate(x) is x
    with sharding.data_parallel(sharding.parse_mesh("data=1", jax.devices()[:1])) as mesh:
        assert sharding.current_mesh() is mesh
        assert sharding.shard_batch(x).sharding.spec == jax.sharding.PartitionSpec("data")
    assert sharding.current_mesh() is None

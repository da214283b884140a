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
    assert out["rnn_hidden_max_rel_diff"] < 1e-5 and out["rnn_gates_max_rel_diff"] < 1e-5  # RNN monitoring
    assert out["supermask_score_devices"] == 4  # the modules' scores were split over the mesh
    assert out["supermask_scores_max_rel_diff"] < 1e-5 and out["supermask_masks_equal"]


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


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_epoch_together_into_one_checkpoint(tmp_path):
    """jax.distributed with a local coordinator: each process reads half the data, they train LeNet-5 with MODA's
    loss as one global batch, orbax writes one checkpoint, and this single process restores it exactly."""
    import numpy as np  # noqa: PLC0415

    from jaxmod import checkpoint, models, train  # noqa: PLC0415

    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    port = str(_free_port())
    script = os.path.join(ROOT, "tests", "helpers", "two_process_train.py")
    procs = [subprocess.Popen([sys.executable, script, str(i), port, str(tmp_path)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    with open(tmp_path / "history.json") as f:
        run = json.load(f)
    assert run["local_samples"] == 640 and len(run["history"]) == 1  # each process read its half
    assert 0 < run["history"][0]["train_loss"] < 10 and run["history"][0]["val_accuracy"] > 0.3
    model = models.create_model("lenet5", 10)
    config = train.TrainConfig(epochs=1, batch_size=64, seed=0)
    like = train.init_state(model, (28, 28, 1), train.make_optimizer(config, 10), 0)
    with checkpoint.RunCheckpointer(tmp_path / "run") as ckpt:
        assert ckpt.all_steps() == [1]
        restored, meta = ckpt.restore(1, like)
    assert int(restored.step) == 20  # 1280 samples in global batches of 64, each 2 x 32
    assert int(restored.opt_state[1].count) == 20  # the schedule counted the global steps
    saved = np.load(tmp_path / "trained.npz", allow_pickle=False)
    flat = {"/".join(str(k.key) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(restored.params)}
    assert set(flat) == set(saved.files)
    for name, leaf in flat.items():
        np.testing.assert_array_equal(np.asarray(leaf), saved[name])
    assert meta["data"]["samples"] == 1280  # the run's identity counts both processes' data

"""Run by tests/test_sharding.py as two processes (``python two_process_train.py PROCESS_ID PORT WORKDIR``): they
join one JAX runtime through ``jax.distributed`` on 127.0.0.1, each reads its half of the training data, and they
train one epoch together into one checkpoint. Process 0 writes ``WORKDIR/trained.npz`` (the parameters it holds)
and ``WORKDIR/history.json``; the test restores the checkpoint in its own single process and compares.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

from jaxmod import sharding  # noqa: E402


def main() -> None:
    process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sharding.initialize_distributed(f"127.0.0.1:{port}", 2, process_id)
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from jaxmod import data, models, train  # noqa: PLC0415
    from jaxmod.losses import moda_loss  # noqa: PLC0415

    assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
    full = data.load_dataset("mnist", train_limit=1280, test_limit=256, seed=0)
    part = sharding.process_shard(len(full.train.x))
    val_part = sharding.process_shard(len(full.val.x))
    mine = dataclasses.replace(full, train=dataclasses.replace(full.train, x=full.train.x[part], y=full.train.y[part]),
                               val=dataclasses.replace(full.val, x=full.val.x[val_part], y=full.val.y[val_part]))
    model = models.create_model("lenet5", 10)
    config = train.TrainConfig(epochs=1, batch_size=64, seed=0)
    with sharding.data_parallel("data=2"):
        state, history = train.fit(model, mine, moda_loss(), config, os.path.join(workdir, "run"), progress=False)
        params = jax.tree.map(np.asarray, state.params)  # replicated: every process holds all of it
    if sharding.is_main_process():
        flat = {"/".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
        np.savez(os.path.join(workdir, "trained.npz"), **flat)
        with open(os.path.join(workdir, "history.json"), "w") as f:
            json.dump({"history": history, "local_samples": len(mine.train.x)}, f)


if __name__ == "__main__":
    main()

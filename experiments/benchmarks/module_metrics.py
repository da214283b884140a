"""Time and memory of module metrics (size, overlap, Jaccard) for VGG16 with 100 modules; writes JSON.

    python -m experiments.benchmarks.module_metrics --out=runs/bench/module_metrics.json
"""

import json
import os
import resource
import time

import jax
import numpy as np
from absl import app, flags

from jaxmod import metrics, models
from jaxmod.topology import resolve_topology

flags.DEFINE_string("out", "runs/bench/module_metrics.json", "Where to write the figures.")
flags.DEFINE_integer("classes", 100, "Number of classes (modules).")
flags.DEFINE_float("keep", 0.3, "Fraction of units each random module keeps.")


def main(argv):
    del argv
    f = flags.FLAGS
    model = models.create_model("vgg16", f.classes)
    topo = resolve_topology(model, (32, 32, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3))))["params"]
    params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
    rng = np.random.default_rng(0)
    masks = {g: rng.random((f.classes, n)) < f.keep for g, n in topo.sizes.items()}
    start = time.perf_counter()
    out = metrics.unit_statistics(topo, masks, params)
    seconds = time.perf_counter() - start
    result = {"model": "vgg16", "classes": f.classes, "seconds": seconds, "mean_size": out["mean_size"],
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
    with open(f.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)

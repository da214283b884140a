"""Time to derive a model's unit topology from its traced program (jaxmod.adapt); writes JSON.

    python -m experiments.benchmarks.derive_topology --out=experiments/results/derive_topology/derive_topology.json

Each zoo model's plain module is adapted as a user's model would be (its variables and one sample); the time
covers tracing the forward pass, inlining it and the walk that derives groups, consumers, index maps and read
points (:func:`jaxmod.adapter.adapt`), with the derivation cache cleared before each. It also checks that the
result is the zoo model's own topology (tests/test_graph.py checks that against the former hand-written one).
"""

import json
import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from jaxmod import adapter, models
from jaxmod.topology import resolve_topology

flags.DEFINE_string("out", "experiments/results/derive_topology/derive_topology.json", "Where to write the figures.")
flags.DEFINE_list("models", ["vgg16", "resnet18", "mobilenet", "resnet56"], "Zoo models to derive.")
flags.DEFINE_integer("repeats", 3, "Timed derivations per model (each on a new model object: nothing cached).")


def main(argv):
    del argv
    f = flags.FLAGS
    rows = []
    for name in f.models:
        x = jnp.zeros((1, 32, 32, 3))
        variables = jax.jit(lambda xb, name=name: models.create_model(name, 10).init(jax.random.key(0), xb))(x)
        seconds = []
        for _ in range(f.repeats):
            module = models.zoo_module(models.create_model(name, 10))  # the plain module, as a user brings it
            adapter.model_graph.cache_clear()  # nothing cached: each derivation traces and walks
            start = time.perf_counter()
            net = adapter.adapt(module, variables, x)
            seconds.append(time.perf_counter() - start)
        zoo = resolve_topology(models.create_model(name, 10), (32, 32, 3))
        same = net.graph.spec == zoo.spec  # the tests check the zoo's against its former hand-written declaration
        rows.append({"model": name, "ops": len(net.graph.program.ops), "groups": len(net.graph.spec.groups),
                     "index_maps": len(net.graph.index_maps), "first_seconds": seconds[0],
                     "median_seconds": sorted(seconds)[len(seconds) // 2], "same_as_the_zoo_model": same})
        print(json.dumps(rows[-1]))
    result = {"device": jax.devices()[0].platform, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
              "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
    tmp = f.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp, f.out)


if __name__ == "__main__":
    app.run(main)

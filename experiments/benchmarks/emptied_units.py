"""How much of the network the voting methods' 2-class composed models drop: the units no module of the pair uses
(:func:`jaxmod.compose.used_units`; writes JSON).

    python -m experiments.benchmarks.emptied_units --model=tests.helpers.user_models:FlaxExampleCNN \
        --modules=/work/runs/benchmark/<model>/mnist/seed0/concern/modules,.../supermask/modules \
        --out=experiments/results/benchmark/emptied_units.json

Pan and Rajan's modules are node masks and the supermasks weight masks; their composed models vote, each module
running the voters' network with its own masks. A unit leaves that network when no module of the pair uses it: no
kept position (node masks) or no kept outgoing weight (weight masks: its value reaches nothing). This counts such
units over every 2-class pair, per group and over all hidden units, and the composed voter's parameters against
the full model's.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
from absl import app, flags, logging

from experiments.common import write_text
from experiments.pipeline import create_model
from jaxmod import checkpoint
from jaxmod.compose import compose, used_units
from jaxmod.topology import count_parameters, resolve_topology

flags.DEFINE_string("model", None, "The modules' model: a zoo name or package.module:ClassName.", required=True)
flags.DEFINE_list("modules", None, "Module checkpoint directories (checkpoint.save_modules).", required=True)
flags.DEFINE_string("out", "experiments/results/benchmark/emptied_units.json", "Where the JSON goes.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)  # orbax's restore logs
    results = []
    for directory in FLAGS.modules:
        modules, variables = checkpoint.restore_modules(directory)
        meta = modules.meta
        model = create_model(FLAGS.model, meta.num_classes, np.zeros((1, *meta.input_shape), np.float32))
        topology = resolve_topology(model, meta.input_shape)
        per_group: dict[str, list[float]] = {}
        emptied_total, parameters = [], []
        for classes in itertools.combinations(modules.classes, 2):
            reached = used_units(modules.select(classes), topology)
            for group, r in reached.items():
                per_group.setdefault(group, []).append(float(np.mean(~r)))
            emptied_total.append(float(np.mean(np.concatenate([~r for r in reached.values()]))))
            voter = compose(modules, variables, classes, model=model)
            parameters.append(count_parameters(voter.variables) / count_parameters(variables))
        results.append({"modules": directory, "approach": meta.approach, "granularity": modules.granularity,
                        "pairs": len(emptied_total), "mean_emptied_unit_fraction": float(np.mean(emptied_total)),
                        "max_emptied_unit_fraction": float(np.max(emptied_total)),
                        "mean_voter_parameter_fraction": float(np.mean(parameters)),
                        "min_voter_parameter_fraction": float(np.min(parameters)),
                        "per_group_mean": {g: float(np.mean(v)) for g, v in per_group.items()}})
        print(json.dumps(results[-1]), flush=True)
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    write_text(FLAGS.out, json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)

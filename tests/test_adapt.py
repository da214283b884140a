"""Users' own Flax models, written without jaxmod (tests/helpers/user_models.py), through the short API.

Each is adapted, decomposed (MODA, the random control, supermasks), and a 2-class model composed from
its modules must be physically smaller (parameters and FLOPs) and give the masked full model's logits
on those classes. Synthetic samples test the mechanics; the real-data runs live in experiments/.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import user_models

import jaxmod
from jaxmod.approaches import create_approach
from jaxmod.metrics import count_flops
from jaxmod.taps import ACTIVATIONS
from jaxmod.topology import count_parameters, resolve_topology, unit_mask_variables

CLASSES = [3, 5]


def _linen(name, shape, dtype=jnp.float32, **kwargs):
    model = getattr(user_models, name)(**kwargs)
    return model, user_models.init_linen(model, (1, *shape), dtype)


def _samples(shape, n=80, seed=0, integer=None):
    rng = np.random.default_rng(seed)
    if integer:
        x = rng.integers(0, integer, size=(n, *shape)).astype(np.int32)
    else:
        x = rng.normal(size=(n, *shape)).astype(np.float32)
    return x, (np.arange(n) % 10).astype(np.int32)


def _adapted(kind):
    if kind == "cnn":
        model, v = _linen("FlaxExampleCNN", (28, 28, 1))
        shape = (28, 28, 1)
    elif kind == "resnet":
        model, v = _linen("SmallResNet", (28, 28, 1))
        shape = (28, 28, 1)
    elif kind == "separable":
        model, v = _linen("SeparableCNN", (28, 28, 1))
        shape = (28, 28, 1)
    elif kind == "nnx_mlp":
        model, v, shape = user_models.NNXMLP(rngs=nnx.Rngs(0)), None, (28, 28, 1)
    elif kind == "vit":
        model, v = _linen("TinyViT", (28, 28, 1))
        shape = (28, 28, 1)
    else:
        raise AssertionError(kind)
    x, y = _samples(shape)
    return jaxmod.adapt(model, v, x[:1]), x, y


KINDS = ["cnn", "resnet", "separable", "nnx_mlp", "vit"]


@pytest.fixture(scope="module", params=KINDS)
def adapted(request):
    return (request.param, *_adapted(request.param))


def test_moda_modules_compose_into_a_smaller_model_equal_to_the_masked_one(adapted):
    kind, net, x, y = adapted
    assert net.graph.spec.groups, kind
    sown = jax.jit(lambda v, xb: net.model.apply(v, xb, mutable=[ACTIVATIONS]))(net.variables, x[:4])[1]
    assert len(jax.tree.leaves(sown)) == len(net.graph.spec.groups)  # one activation per derived group
    modules = jaxmod.decompose("moda", net, x, y, tau=0.6, batch_size=64)
    small = jaxmod.recompose(net, modules, CLASSES)
    topology = resolve_topology(net.model, x.shape[1:])
    keep = modules.union(tuple(CLASSES))
    masked = jax.jit(net.model.apply)({**net.variables, **unit_mask_variables(topology, keep)}, x[:16])
    chex.assert_trees_all_close(small(x[:16]), masked[:, CLASSES], atol=1e-5)
    assert count_parameters(small.variables) < count_parameters(net.variables), kind
    full_flops = count_flops(lambda xb: net.model.apply(net.variables, xb), x[:1])
    small_flops = count_flops(lambda xb: small.scores(xb), x[:1])
    assert small_flops < full_flops, kind
    # the random control draws modules of the same sizes and composes the same way
    control = jaxmod.decompose("random", net, x, y, reference=modules)
    assert {k: np.sum(v, 1).tolist() for k, v in control.units.items()} == {
        k: np.sum(v, 1).tolist() for k, v in modules.units.items()}
    assert jaxmod.recompose(net, control, CLASSES)(x[:2]).shape == (2, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_supermask_modules_of_a_users_model_vote(kind):
    """Kingetsu et al.'s supermasks over every kernel of a user's model (the ViT's attention and MLP too): a
    2-class voter whose scores are each module's own masked full model's confidence in its class."""
    from jaxmod.running import module_rows, one_module_output

    net, x, y = _adapted(kind)
    modules = jaxmod.decompose("supermask", net, x[:40], y[:40], epochs=1, batch_size=40, k=0.1)
    kept = [float(np.mean(w)) for w in jax.tree.leaves(modules.weights)]
    assert 0 < min(kept) and max(kept) < 0.2, kind  # top-k of the scores: about a tenth of each masked kernel
    voter = jaxmod.recompose(net, modules, CLASSES)
    scores = np.asarray(voter(x[:4]))
    assert scores.shape == (4, 2) and np.all(np.isfinite(scores))
    row = jax.tree.map(lambda w: w[CLASSES[0]], module_rows(modules))
    own = one_module_output(net.model, net.variables, row, jnp.asarray(CLASSES[0]), jnp.asarray(x[:4]))
    chex.assert_trees_all_close(scores[:, 0], np.asarray(own), atol=1e-5)  # the full network with module 3's masks


@pytest.mark.parametrize("kind", ["cnn", "resnet", "separable"])
def test_mwt_generators_attach_to_the_derived_conv_groups(kind, tmp_path):
    """MwT on a user's CNN: generators at every conv but the first (kernel sets of their own inside residual
    sums), its loss reads their masks, and the modules compose into a smaller model equal to the masked one."""
    from jaxmod.approaches.mwt import mwt_topology, strip_generators, with_generators

    net, x, y = _adapted(kind)
    x, y = x[:60], y[:60]
    gen = with_generators(net.model)
    initial = jax.jit(lambda xb: gen.init(jax.random.key(0), xb))(x[:1])
    variables = {**net.variables, "params": {**initial["params"], **net.variables["params"]}}
    logits, state = jax.jit(lambda v, xb: gen.apply(v, xb, train=True, mutable=["batch_stats", ACTIVATIONS]))(
        variables, x[:20])
    loss, terms = jax.jit(create_approach("mwt").training_loss())(logits, state[ACTIVATIONS], y[:20])
    assert np.isfinite(loss) and terms["cohesion"] > 0
    modules = jaxmod.decompose("mwt", jaxmod.adapter.Net(net.model, variables), x, y, tau=0.5)
    assert sorted(modules.units) == sorted(mwt_topology(net.model, x.shape[1:]).sizes)
    plain = jaxmod.adapter.Net(net.model, strip_generators(variables))
    small = jaxmod.recompose(plain, modules, CLASSES)
    topology = mwt_topology(net.model, x.shape[1:])
    unit_masks = unit_mask_variables(topology, modules.union(tuple(CLASSES)))
    masked = jax.jit(net.model.apply)({**plain.variables, **unit_masks}, x[:8])
    chex.assert_trees_all_close(small(x[:8]), masked[:, CLASSES], atol=1e-5)
    assert count_parameters(small.variables) < count_parameters(plain.variables)
    if kind == "resnet":  # the names the derivation makes (generators, split groups) are valid checkpoint keys
        from jaxmod import checkpoint

        checkpoint.save_tree(tmp_path / "trained", variables, {"kind": "test"})
        chex.assert_trees_all_equal(checkpoint.restore_tree(tmp_path / "trained")[0], jax.device_get(variables))
        checkpoint.save_modules(tmp_path / "modules", modules, plain.variables)
        restored, _ = checkpoint.restore_modules(tmp_path / "modules")
        chex.assert_trees_all_equal(dict(restored.units), dict(modules.units))


@pytest.mark.parametrize("kind", ["cnn", "resnet", "separable", "vit"])
def test_pan_and_rajan_cnn_variants_on_a_users_model(kind):
    """ICSE 2022's variants on a user's model: MC-BLN and MC-BI read the derived plan (conv edges, pooling,
    shortcuts, the flatten or global average); CI+TI+MC, which backtracks nothing, also runs on the ViT's MLP
    neurons (one node per token and unit). Each backtracking step only removes nodes, and the voter gives each
    module's confidence from the full model with that module's node masks."""
    from jaxmod.approaches import concern
    from jaxmod.running import module_rows, one_module_output

    net, x, y = _adapted(kind)
    variant = "ci_ti_mc" if kind == "vit" else "ci_ti_mc_bln_bi"
    modules = jaxmod.decompose("concern", net, x, y, variant=variant, positives=8, delta=0.05)
    shapes = concern.node_shapes(net.model, net.variables, x.shape[1:])
    assert {k: v.shape[1:] for k, v in modules.positions.items()} == shapes
    if variant != "ci_ti_mc":
        plan = concern.model_plan(net.model, x.shape[1:])
        pc, nc, n_pos, _ = concern.node_counts(net.model, net.variables, x, y, *concern.select_samples(y, 10, 8, 1), 10)
        steps = concern.step_masks(pc, nc, n_pos, net.variables["params"], plan, 0.05)
        for group in shapes:  # each step keeps a subset of the previous one's nodes
            assert not np.any(steps["bln"][group] & ~steps["ti"][group])
            assert not np.any(steps["bi"][group] & ~steps["bln"][group])
        removed = sum(int(np.sum(steps["ti"][g] & ~steps["bi"][g])) for g in shapes)
        assert removed > 0, kind  # backtracking acted
    # a unit neither chosen module keeps leaves the voters' network (here forced: the last group's first unit)
    last = list(modules.positions)[-1]
    emptied = np.asarray(modules.positions[last]).copy()
    emptied[CLASSES, ..., 0] = False
    modules = modules.replace(positions={**modules.positions, last: emptied})
    voter = jaxmod.recompose(net, modules, CLASSES)
    assert count_parameters(voter.variables) < count_parameters(net.variables), kind
    full_flops = count_flops(lambda xb: net.model.apply(net.variables, xb), x[:1])
    assert count_flops(lambda xb: voter.model.apply(voter.variables, xb), x[:1]) < full_flops, kind  # per module
    scores = np.asarray(voter(x[:8]))
    row = jax.tree.map(lambda w: w[CLASSES[1]], module_rows(modules))
    own = one_module_output(net.model, net.variables, row, jnp.asarray(CLASSES[1]), jnp.asarray(x[:8]))
    chex.assert_trees_all_close(scores[:, 1], np.asarray(own), atol=1e-5)  # the full network with module 5's masks
    masked = jax.jit(net.model.apply)({**net.variables, "position_masks": jax.tree.map(
        lambda v: jnp.asarray(v[CLASSES[1]]), dict(modules.positions))}, x[:8])
    assert not np.allclose(np.asarray(masked), np.asarray(net(x[:8])), atol=1e-6) or kind == "vit"


@pytest.mark.parametrize("name,config", [("lenet5", {}), ("resnet20", {"use_bn": False, "stage_sizes": (1, 1),
                                                                         "stage_widths": (8, 16), "stem_width": 8})],
                         ids=["lenet5", "resnet-nobn"])
def test_pan_and_rajan_on_a_zoo_model_equal_its_plain_module_adapted(name, config):
    """The same model decomposed twice, once as the zoo builds it, once its plain module adapted as a user's model
    (``jaxmod.adapt``): every module's node masks are the same, group by group."""
    from jaxmod.models import create_model, zoo_module

    model = create_model(name, 10, **config)
    x, y = _samples((28, 28, 1), n=60, seed=1)
    variables = jax.jit(lambda xb: model.init(jax.random.key(0), xb, train=False))(x[:1])
    variables = {"params": variables["params"]}
    options = dict(variant="ci_ti_mc_bln_bi", positives=6, delta=0.05)
    hand = create_approach("concern", **options).decompose(model, variables, x, y, 10).modules
    net = jaxmod.adapt(zoo_module(model), variables, x[:1])
    derived = jaxmod.decompose("concern", net, x, y, **options)
    by_shape = lambda m: sorted((v.shape, np.asarray(v).tobytes()) for v in m.positions.values())  # noqa: E731
    assert len(derived.positions) == len(hand.positions)
    assert by_shape(derived) == by_shape(hand)
    assert sum(int(np.sum(~np.asarray(v))) for v in hand.positions.values()) > 0


def test_vit_units_are_the_mlp_neurons_and_the_residual_stream_is_kept_whole():
    net, _, _ = _adapted("vit")
    graph = net.graph
    mlp = [g for g in graph.spec.groups if "Dense_0" in g.name or "Mlp" in g.name]
    assert len(graph.spec.groups) == 2 and len(mlp) == 2  # one hidden MLP layer per block
    assert all(graph.sizes[g.name] == 64 for g in graph.spec.groups)
    reasons = " ".join(w.reason for w in graph.whole)
    assert "reduce_sum" in reasons or "mixes its units" in reasons  # LayerNorm over the stream
    assert "another activation" in reasons or "multi-axis" in reasons  # attention


def test_text_transformer_embedding_feeds_a_whole_stream():
    model = user_models.TinyTextTransformer()
    variables = user_models.init_linen(model, (1, 16), jnp.int32)
    x, y = _samples((16,), integer=1000)
    y = y % 5
    net = jaxmod.adapt(model, variables, x[:1])
    (group,) = net.graph.spec.groups  # the MLP hidden layer; embedding, stream and attention are whole
    assert net.graph.sizes[group.name] == 64
    assert any("Embed" in w.name for w in net.graph.whole)
    modules = jaxmod.decompose("moda", net, x, y, tau=0.6, batch_size=64)
    small = jaxmod.recompose(net, modules, [1, 4])
    assert count_parameters(small.variables) < count_parameters(net.variables)
    topology = resolve_topology(net.model, x.shape[1:])
    masked = net.model.apply({**net.variables, **unit_mask_variables(topology, modules.union((1, 4)))}, x[:8])
    chex.assert_trees_all_close(small(x[:8]), masked[:, [1, 4]], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad inputs: a clear error before any work.


def test_a_sample_of_the_wrong_shape_is_refused():
    model, variables = _linen("FlaxExampleCNN", (28, 28, 1))
    with pytest.raises(ValueError, match="does not take samples of shape|do not fit"):
        jaxmod.adapt(model, variables, jnp.zeros((1, 32, 32, 3)))


def test_variables_of_another_model_are_refused():
    model, _ = _linen("FlaxExampleCNN", (28, 28, 1))
    _, other = _linen("SeparableCNN", (28, 28, 1))
    with pytest.raises(ValueError, match="variables do not fit FlaxExampleCNN"):
        jaxmod.adapt(model, other, jnp.zeros((1, 28, 28, 1)))


def test_a_weight_feeding_a_gather_is_named_with_its_layer():
    class Permuting(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(6, name="hidden")(x))
            table = self.param("table", nn.initializers.normal(), (6, 6))
            order = jnp.argsort(h, axis=-1)
            h = jnp.take_along_axis(table[None], order[:, :, None], axis=1)[..., 0]
            return nn.Dense(3, name="out")(h)

    model = Permuting()
    x = jnp.ones((1, 4))
    with pytest.raises(ValueError, match="cannot derive the unit topology.*gather"):
        jaxmod.adapt(model, model.init(jax.random.key(0), x), x)


def test_a_while_loop_over_units_is_refused_with_the_primitive_named():
    """A ``scan`` is followed (tests/test_loops.py); a loop whose length depends on the data is not."""

    class Looping(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(5)(x))
            _, h = jax.lax.while_loop(lambda c: c[0] < jnp.sum(c[1]), lambda c: (c[0] + 1, jnp.tanh(c[1])), (0.0, h))
            return nn.Dense(2)(h)

    model = Looping()
    x = jnp.ones((1, 4))
    with pytest.raises(ValueError, match="cannot derive the unit topology.*'while' in layer 'Looping'"):
        jaxmod.adapt(model, model.init(jax.random.key(0), x), x)


def test_not_a_flax_module_is_a_type_error():
    with pytest.raises(TypeError, match="flax.linen or flax.nnx module"):
        jaxmod.adapt(lambda x: x, {"params": {}}, jnp.ones((1, 3)))
    with pytest.raises(TypeError, match="Net"):
        jaxmod.decompose("moda", object(), np.zeros((2, 3)), np.zeros(2))


def test_pan_and_rajan_decompose_a_users_nnx_mlp_on_real_mnist():
    """The dense variants read the user's dense chain from the derived topology (a short real-data run:
    the method needs correctly classified samples, which a random model does not have)."""
    from jaxmod import data, train
    from jaxmod.losses import cross_entropy_loss

    ds = data.load_dataset("mnist", train_limit=3000, test_limit=500)
    net = jaxmod.adapt(user_models.NNXMLP(rngs=nnx.Rngs(0)), None, ds.train.x[:1])
    config = train.TrainConfig(epochs=2, optimizer="adam", learning_rate=1e-3)
    state, _ = train.fit(net.model, ds, cross_entropy_loss(), config, None, progress=False, validate=False)
    net = jaxmod.adapter.Net(net.model, state.variables())
    for variant in ("ti_i", "cm_rie"):
        modules = jaxmod.decompose("concern", net, ds.train.x, ds.train.y, variant=variant, positives=50,
                                   confidence=0.0)
        assert sorted(modules.positions) == sorted(net.graph.sizes)
        kept = np.mean([np.mean(m) for m in modules.positions.values()])
        assert 0 < kept < 1, variant  # the rule removed some hidden units and kept others
        voter = jaxmod.recompose(net, modules, CLASSES)
        assert voter.evaluate(ds.test.x, ds.test.y)["top1"] > 0.55, variant  # two classes: chance is 0.5


def test_a_users_model_class_is_imported_by_its_path_and_checked_for_every_method():
    """Experiment programs take ``--config.model=package.module:ClassName`` (linen or NNX); each method's
    pre-training check runs on it, and a bad reference is refused by name before any work."""
    from experiments import pipeline

    x = np.zeros((1, 28, 28, 1), np.float32)
    mlp = pipeline.create_model("helpers.user_models:NNXMLP", 5, x, seed=1)
    cnn = pipeline.create_model("helpers.user_models:FlaxExampleCNN", 10, x)
    assert isinstance(mlp, jaxmod.adapter.Adapted) and mlp.num_classes == 5 and cnn.num_classes == 10
    for name in ("moda", "mwt", "concern", "supermask"):
        pipeline.check_model(create_approach(name), cnn, "user cnn", (28, 28, 1))
    with pytest.raises(ValueError, match="for dense models"):
        pipeline.check_model(create_approach("concern", variant="ti_i"), cnn, "user cnn", (28, 28, 1))
    for ref, message in (("helpers.user_models:Missing", "cannot import"), ("no_such_module:Net", "cannot import"),
                         ("helpers.user_models:init_linen", "not a flax.linen or flax.nnx module class"),
                         ("FlaxExampleCNN", "package.module:ClassName"), (":Net", "package.module:ClassName")):
        with pytest.raises(ValueError, match=message):
            pipeline.create_model(ref, 10, x)
    with pytest.raises(ValueError, match="cannot build .*widths"):
        pipeline.create_model("helpers.user_models:FlaxExampleCNN", 10, x, widths=3)

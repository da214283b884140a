"""The derived unit topology (jaxmod.graph) against the zoo's former hand-written declarations.

The zoo's models are plain Flax: their topology is derived from the traced program, their groups named after
what they sow. The derivation must find the groups (same producing and consuming weight axes), the output
axis, the index maps and the MwT gates and residual splits that the zoo used to declare by hand
(tests/helpers/hand_written.py), and read each group where the model sows it.
"""

from __future__ import annotations

import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers.fast_init import QUICK_COMPILE, fast_init
from helpers.hand_written import hand_written_spec, resnet_splits

from jaxmod.adapter import adapt
from jaxmod.models import create_model, zoo_module
from jaxmod.taps import ACTIVATIONS
from jaxmod.topology import flat_activations, resolve_topology

ZOO = [("fc2", {}, (28, 28, 1)), ("lenet5", {}, (28, 28, 1)), ("vgg_narrow", {}, (32, 32, 3)),
       ("vgg16", {}, (32, 32, 3)), ("resnet20", {}, (32, 32, 3)), ("resnet20", {"use_bn": False}, (28, 28, 1)),
       ("resnet18", {}, (32, 32, 3)), ("mobilenet", {}, (32, 32, 3))]


def derived_graph(model, shape):
    return model.graph(input_shape=shape)


def perturbed(variables):
    """Variables moved off their initial values (batch statistics and zero biases included)."""
    leaves, treedef = jax.tree.flatten({c: t for c, t in variables.items() if c != ACTIVATIONS})
    keys = jax.random.split(jax.random.key(2), len(leaves))
    moved = [a + 0.1 * jnp.abs(jax.random.normal(k, a.shape)) for a, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, moved)


def _axes(spec_axes, shapes):
    return tuple(sorted((a.collection, a.path, a.axis % len(shapes[a.key]), a.inner) for a in spec_axes))


def _table(spec, shapes):
    """Group name -> (producer axes, consumer axes)."""
    return {g.name: (_axes(g.producers, shapes), _axes(g.consumers, shapes)) for g in spec.groups}


@pytest.mark.parametrize("name,config,shape", ZOO, ids=[f"{n}{'-nobn' if c else ''}" for n, c, _ in ZOO])
def test_derived_topology_equals_the_hand_written_one(name, config, shape):
    """Same group names (what the model sows), in the same (forward) order, with the same producing and consuming
    axes; the same output axis and index maps; no group kept whole."""
    model = create_model(name, 10, **config)
    topology = resolve_topology(model, shape)
    graph = derived_graph(model, shape)
    hand = hand_written_spec(zoo_module(model))
    shapes = topology.variable_shapes
    assert graph.group_names == tuple(g.name for g in hand.groups)
    assert _table(graph.spec, shapes) == _table(hand, shapes)
    assert _axes(graph.spec.output, shapes) == _axes(hand.output, shapes)
    assert not graph.whole
    assert sorted((m.source, m.target) for m in graph.spec.index_maps) == sorted(
        (m.source, m.target) for m in hand.index_maps)
    assert topology.spec == graph.spec


SMALL = [("lenet5", {}, (28, 28, 1)),
         ("resnet20", {"stage_sizes": (2, 1), "stage_widths": (8, 16), "stem_width": 8}, (16, 16, 3)),
         ("mobilenet", {"blocks": ((16, 1), (32, 2), (32, 1)), "stem_width": 8}, (16, 16, 3))]


@pytest.mark.parametrize("name,config,shape", SMALL, ids=["lenet5", "resnet", "mobilenet"])
def test_read_points_are_where_the_zoo_sows(name, config, shape):
    """The zoo model read through jaxmod gives the plain module's logits and, at every derived read point,
    what the module sows there (its post-ReLU activations)."""
    model = create_model(name, 10, **config)
    module = zoo_module(model)
    x = jax.random.normal(jax.random.key(1), (3, *shape))
    variables = jax.jit(lambda xb: perturbed(model.init(jax.random.key(0), xb, train=False)),
                        compiler_options=QUICK_COMPILE)(x)  # random weights, one quick compile
    logits, sown = jax.jit(lambda v, xb: module.apply(v, xb, mutable=["intermediates"]))(variables, x)
    read, acts = jax.jit(lambda v, xb: model.apply(v, xb, mutable=[ACTIVATIONS]))(variables, x)
    chex.assert_trees_all_close(read, logits, atol=1e-5)  # jaxmod takes its fast convolutions on small maps
    sown = {k: v[0] for k, v in traverse_util.flatten_dict(sown["intermediates"], sep="/").items()}
    acts = flat_activations(acts[ACTIVATIONS])
    assert set(acts) == set(sown) == set(resolve_topology(model, shape).sizes)
    chex.assert_trees_all_close(acts, sown, atol=1e-5)


def test_zoo_models_initialise_as_the_plain_modules():
    """A zoo model's ``init`` is its plain module's: the same weights from the same key (the recorded results
    were trained from them)."""
    for name, config, shape in SMALL[:2]:  # a model without and one with nested blocks and batch statistics
        model = create_model(name, 10, **config)
        x = jnp.zeros((1, *shape))
        ours = model.init(jax.random.key(3), x, train=False)
        theirs = zoo_module(model).init(jax.random.key(3), x, train=False)
        chex.assert_trees_all_equal({c: ours[c] for c in theirs if c != "intermediates"},
                                    {c: theirs[c] for c in theirs if c != "intermediates"})


def test_deriving_vgg16_and_resnet18_takes_seconds():
    for name in ("vgg16", "resnet18"):
        start = time.perf_counter()
        derived_graph(create_model(name, 10), (32, 32, 3))
        assert time.perf_counter() - start < 5.0, name


def test_flatten_of_channels_first_maps_units_with_an_inner_factor():
    """A model that flattens NCHW-style (channels outer) consumes each unit in a block of H*W inputs."""
    import flax.linen as nn

    class ChannelsFirst(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(3, (3, 3))(x))
            x = jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))
            return nn.Dense(4)(x)

    model = ChannelsFirst()
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 1))
    net = adapt(model, model.init(jax.random.key(0), x), x)
    (group,) = net.graph.spec.groups
    (consumer,) = group.consumers
    assert (consumer.path, consumer.axis, consumer.inner) == (("Dense_0", "kernel"), 0, 25)
    keep = {group.name: np.array([True, False, True])}
    from jaxmod.topology import slice_model, unit_mask_variables

    topology = resolve_topology(net.model, (5, 5, 1))
    small = slice_model(net.model, topology, net.variables, keep, [0, 2, 3])
    masked = jax.jit(net.model.apply)({**net.variables, **unit_mask_variables(topology, keep)}, x)
    chex.assert_trees_all_close(small(x), masked[:, [0, 2, 3]], atol=1e-5)
    assert small.variables["params"]["Dense_0"]["kernel"].shape == (50, 3)


@pytest.mark.parametrize("name,shape", [("lenet5", (28, 28, 1)), ("vgg_narrow", (32, 32, 3)),
                                        ("resnet20", (32, 32, 3)), ("mobilenet", (32, 32, 3))])
def test_derived_mwt_gates_are_the_zoo_gates(name, shape):
    """MwT's gates, derived: every conv but the first (its rule for VGG), at the group it produces; inside a
    residual sum, a split group of the conv's own kernels (named after its layer), as the zoo used to declare
    ``residual_splits`` by hand."""
    from jaxmod.approaches.mwt import gate_names
    from jaxmod.taps import gate_group

    model = create_model(name, 10)
    graph = derived_graph(model, shape)
    module = zoo_module(model)
    hand_splits = {s[0]: (s[1], tuple(sorted(s[2]))) for s in
                   (resnet_splits(module) if name == "resnet20" else ())}
    assert {s[0]: (s[1], tuple(sorted(s[2]))) for s in graph.residual_splits} == hand_splits
    convs = [g.name for g in hand_written_spec(module).groups if "fc" not in g.name]
    if name == "resnet20":  # every block conv and projection: relu1's conv and the split groups
        expected = [g for g in convs if g.endswith("relu1")] + list(hand_splits)
    else:
        expected = convs[1:]
    assert sorted(g.group for g in graph.gates) == sorted(expected)
    assert sorted(gate_group(n) for n in gate_names(model, shape)) == sorted(expected)


@pytest.mark.parametrize("name,config,shape", [
    ("resnet20", {"stage_sizes": (2, 1), "stage_widths": (8, 16), "stem_width": 8}, (16, 16, 3)),
    ("vgg16", {"stages": ((8,), (8,)), "classifier": (16, 16)}, (8, 8, 3))], ids=["resnet-bn", "vgg-dropout"])
def test_training_mode_derives_the_same_groups_reads_and_gates(name, config, shape):
    """Batch norm's training-mode statistics are reductions of the data: they must not move a read point,
    break a residual tie or move an MwT gate (the loss and the generators see what evaluation sees); nor may
    dropout after a sown activation (read where the model sows it, as in evaluation)."""
    model = create_model(name, 10, **config)
    evaluation = model.graph(4, False, shape)
    training = model.graph(4, True, shape)
    assert training.spec == evaluation.spec
    assert training.residual_splits == evaluation.residual_splits
    assert [g.group for g in training.gates] == [g.group for g in evaluation.gates]
    assert not training.whole
    x = jax.random.normal(jax.random.key(0), (4, *shape))
    variables = fast_init(model, jax.random.key(1), x[:1], train=False)  # random weights
    _, state = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                           mutable=[ACTIVATIONS, "batch_stats"])
    _, sown = zoo_module(model).apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                                      mutable=["intermediates", "batch_stats"])
    sown = {k: v[0] for k, v in traverse_util.flatten_dict(sown["intermediates"], sep="/").items()}
    chex.assert_trees_all_close(flat_activations(state[ACTIVATIONS]), sown, atol=1e-5)


def hand_written_plan(name, model):
    """The Pan and Rajan plans the zoo used to declare by hand (before they were derived), in the zoo's tap names."""
    from jaxmod.approaches.concern import ConvEdge, Plan

    if name == "fc2":
        names = ("fc1_relu", "fc2_relu")
        return Plan(tuple(zip(names, (("fc2", "kernel"), ("logits", "kernel")), strict=True)), None, (), names)
    if name == "lenet5":
        dense = (("fc1_relu", ("fc2", "kernel")), ("fc2_relu", ("logits", "kernel")))
        edges = (ConvEdge("conv1_relu", "conv2_relu", (5, 5), 1, ((0, 0), (0, 0)), pool=2),)
        return Plan(dense, ("conv2_relu", "pool2", ("fc1", "kernel")), edges,
                    ("conv1_relu", "conv2_relu", "fc1_relu", "fc2_relu"))
    edges, groups, previous = [], ["stem_relu"], "stem_relu"  # a ResNet
    for block, _, _, stride, project in zoo_module(model)._plan():
        r1, r2 = f"{block}/relu1", f"{block}/relu2"
        edges.append(ConvEdge(previous, r1, (3, 3), stride, ((1, 1), (1, 1))))
        edges.append(ConvEdge(r1, r2, (3, 3), 1, ((1, 1), (1, 1))))
        edges.append(ConvEdge(previous, r2, (1, 1), stride) if project else ConvEdge(previous, r2))
        groups += [r1, r2]
        previous = r2
    return Plan((), (previous, "gap", ("logits", "kernel")), tuple(edges), tuple(groups))


PLAN_ZOO = [("fc2", {}, (28, 28, 1)), ("lenet5", {}, (28, 28, 1)), ("resnet20", {"use_bn": False}, (28, 28, 1))]


@pytest.mark.parametrize("name,config,shape", PLAN_ZOO, ids=["fc2", "lenet5", "resnet20-nobn"])
def test_derived_pan_and_rajan_plan_equals_the_hand_written_one(name, config, shape):
    """Pan and Rajan's layer facts (conv edges with kernel, stride, padding and pooling; identity shortcuts; the
    flatten and its reduction; the dense chain), read from the traced program and named after the zoo's taps, equal
    the plans the zoo used to declare by hand."""
    from jaxmod.approaches import concern

    model = create_model(name, 10, **config)
    hand, derived = hand_written_plan(name, model), concern.model_plan(model, shape)
    assert (derived.groups, derived.dense, derived.flatten, derived.output) == (
        hand.groups, hand.dense, hand.flatten, hand.output)
    assert sorted(map(str, derived.conv_edges)) == sorted(map(str, hand.conv_edges))


@pytest.mark.parametrize("name,shape", [("vgg_narrow", (32, 32, 3)), ("resnet20", (32, 32, 3)),
                                        ("mobilenet", (32, 32, 3))])
def test_pan_and_rajan_plans_of_the_other_zoo_models_derive(name, shape):
    """VGG (pooling between conv pairs, a dense classifier), ResNet with batch norm, MobileNet (depthwise edges)."""
    from jaxmod.approaches import concern

    model = create_model(name, 10)
    plan = concern.model_plan(model, shape)
    assert set(plan.groups) == set(resolve_topology(model, shape).sizes)
    assert plan.flatten is not None and plan.conv_edges and plan.output == ("logits", "kernel")
    if name == "vgg_narrow":
        assert [e.pool for e in plan.conv_edges] == [1, 2, 1, 2, 1] and plan.flatten[1] == "pool2"
    else:
        assert plan.flatten[1] == "gap"


def test_derived_plan_names_what_it_cannot_follow():
    """Overlapping pooling between two convolutions: MC-BI's position mapping is not defined; the error names it."""
    import flax.linen as nn

    from jaxmod.approaches import concern

    class OverlappingPool(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3))(x))
            x = nn.max_pool(x, (3, 3), (2, 2))
            x = nn.relu(nn.Conv(4, (3, 3))(x))
            return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))

    from helpers.user_models import init_linen

    model = OverlappingPool()
    net = adapt(model, init_linen(model, (1, 12, 12, 1)), jnp.zeros((1, 12, 12, 1)))
    with pytest.raises(ValueError, match="pooling window .* 'reduce_window_max'"):
        concern.model_plan(net.model, (12, 12, 1))


RECURRENT = [(cell, shape, layers, vocab) for cell in ("vanilla", "lstm", "gru")
             for shape, layers, vocab in (("many_to_one", 2, 20), ("many_to_many", 1, 20), ("one_to_many", 1, 0),
                                          ("encoder_decoder", 1, 20))]


@pytest.mark.parametrize("user", [False, True], ids=["zoo", "user"])
@pytest.mark.parametrize("cell,shape,layers,vocab", RECURRENT,
                         ids=[f"{c}-{s}-{n}{'-tokens' if v else ''}" for c, s, n, v in RECURRENT])
def test_derived_recurrent_topology_equals_the_hand_written_one(cell, shape, layers, vocab, user):
    """The zoo's recurrent classifier, and one a user writes (tests/helpers/plain_recurrent.py), in plain Flax: a
    ``lax.scan`` over Keras-layout cells, which the walk follows until the carried state's units settle. Each layer's
    hidden units are one group: produced by every gate block of its kernels and biases (gate-major, the units
    tiled once per gate), consumed by its own recurrent kernel's rows and the next layer's kernel. They equal
    the zoo model's former hand-written declaration; the only other group is the token embedding's features."""
    from helpers.plain_recurrent import PlainRecurrentClassifier

    from jaxmod.adapter import _shape_table, linen_source, model_graph

    config = {"num_classes": 5, "cell": cell, "shape": shape, "num_layers": layers, "vocab_size": vocab,
              "output_len": 3}
    zoo = zoo_module(create_model(f"rnn_{cell}", units=8, embed_dim=6, **config))
    plain = PlainRecurrentClassifier(units=8, embed_dim=6, **config) if user else zoo
    x = jnp.ones((1, 7), jnp.int32) if vocab else jnp.ones((1, 7, 2, 2))
    variables = {c: t for c, t in plain.init(jax.random.key(0), x).items() if c != "intermediates"}
    graph = model_graph(linen_source(plain), _shape_table(variables), x.shape, str(x.dtype), False)
    hand = hand_written_spec(zoo)
    shapes = {(c, tuple(p)): s for (c, *p), s, _ in _shape_table(variables)}
    derived = _table(graph.spec, shapes)
    assert {n: derived[n] for n in graph.group_names if n != "embedding"} == _table(hand, shapes)
    assert [n for n in graph.group_names if n != "embedding"] == [g.name for g in hand.groups]
    assert ("embedding" in graph.group_names) == bool(vocab)
    assert _axes(graph.spec.output, shapes) == _axes(hand.output, shapes)
    assert not graph.whole and not graph.index_maps
    assert set(graph.sizes.values()) <= {8, 6}


@pytest.mark.parametrize("cell", ["SimpleCell", "LSTMCell", "GRUCell"])
def test_flax_recurrent_cells_derive_one_group_per_layer(cell):
    """Flax's own cells under ``nn.RNN`` (a lifted scan, one Dense per gate): one group of hidden units, produced by
    every gate's input and hidden kernels (and their biases), consumed by the hidden kernels and the head."""
    import flax.linen as nn

    from jaxmod.adapter import _shape_table, linen_source, model_graph

    class Tagger(nn.Module):
        @nn.compact
        def __call__(self, x):
            hs = nn.RNN(getattr(nn, cell)(8), name="rnn")(nn.Embed(20, 6, name="embed")(x))
            self.sow("intermediates", "rnn_h", hs)
            return nn.Dense(5, name="logits")(hs[:, -1])

    model = Tagger()
    x = jnp.ones((1, 6), jnp.int32)
    variables = {c: t for c, t in model.init(jax.random.key(0), x).items() if c != "intermediates"}
    graph = model_graph(linen_source(model), _shape_table(variables), x.shape, "int32", False)
    assert graph.sizes == {"embed": 6, "rnn_h": 8} and not graph.whole
    (group,) = [g for g in graph.spec.groups if g.name == "rnn_h"]
    kernels = set(variables["params"][f"{cell}_0"])  # the cell is built outside nn.RNN: its parameters are the model's
    produced = {(a.path[-2], a.axis) for a in group.producers if a.path[-1] == "kernel"}
    consumed = {(a.path[-2], a.axis) for a in group.consumers}
    assert produced == {(k, 1) for k in kernels}
    assert consumed == {(k, 0) for k in kernels if k.startswith("h")} | {("logits", 0)}

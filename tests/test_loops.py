"""Recurrent layers in plain Flax (the zoo's and a user's): the derivation follows a ``lax.scan`` (tests/test_graph.py)
and the adapter masks and slices units inside it.

A unit of a recurrent layer is removed as Imtiaz et al.'s code removes it: its columns in every gate block of the
kernels and biases read zero, its recurrent-kernel row is not read, and the layers after it do not see it; with one
mask per step (unrolled) each step's weights are edited. The reference is the zoo's former tapped model
(tests/helpers/tapped_recurrent.py), which applied exactly that rule inside its own cell: the zoo's plain model and
a user's (tests/helpers/plain_recurrent.py, same parameters), adapted, must give the same logits and hidden states
under every kind of mask, and a rolled module sliced physically must give the masked model's logits.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.plain_recurrent import PlainRecurrentClassifier
from helpers.tapped_recurrent import TappedRecurrentClassifier

import jaxmod
from jaxmod.models import create_model
from jaxmod.models.recurrent import num_gates
from jaxmod.taps import ACTIVATIONS, UNIT_MASKS
from jaxmod.topology import resolve_topology, slice_variables

CASES = [("lstm", "many_to_many", 2), ("gru", "many_to_one", 1), ("vanilla", "encoder_decoder", 1)]
IDS = [f"{c}-{s}" for c, s, _ in CASES]
UNITS, STEPS = 6, 5


@functools.cache
def models(cell, shape, layers, user=True):
    """The reference (tapped) model, the adapted plain model (a user's, or the zoo's), their parameters and tokens
    (some padded at the front); built once per configuration (all immutable)."""
    config = {"num_classes": 4, "cell": cell, "shape": shape, "num_layers": layers, "vocab_size": 12,
              "output_len": 3}
    tokens = jax.random.randint(jax.random.key(1), (9, STEPS), 0, 12).at[:, :2].set(
        jnp.array([[0, 0]] * 3 + [[3, 4]] * 6))
    reference = TappedRecurrentClassifier(units=UNITS, embed_dim=5, **config)
    variables = reference.init(jax.random.key(0), tokens)
    params = {"params": jax.tree.map(lambda a: a + 0.05, variables["params"])}  # biases off zero
    if user:
        net = jaxmod.adapt(PlainRecurrentClassifier(units=UNITS, embed_dim=5, **config), params, tokens[:1])
        return reference, net.model, params, tokens
    return reference, create_model(f"rnn_{cell}", **config, units=UNITS, embed_dim=5), params, tokens


def masks(zoo, key, per_step):
    """Random unit and gate masks for every layer (``per_step``: one per step, as unrolled modules have)."""
    out = {}
    steps = {g: (STEPS if reads else zoo.output_len) for g, reads in zip(zoo.group_names(), zoo.reads_input_steps(),
                                                                        strict=True)}
    for i, group in enumerate(zoo.group_names()):
        k1, k2 = jax.random.split(jax.random.fold_in(key, i))
        lead = (steps[group],) if per_step else ()
        out[group] = jax.random.bernoulli(k1, 0.6, (*lead, UNITS))
        out[f"{group[:-2]}_gates"] = jax.random.bernoulli(k2, 0.8, (*lead, num_gates(zoo.cell), UNITS))
    return out


@pytest.mark.parametrize("cell,shape,layers", CASES, ids=IDS)
@pytest.mark.parametrize("kind", ["none", "rolled", "per_step", "units_only"])
@pytest.mark.parametrize("user", [True, False], ids=["user", "zoo"])
def test_masked_plain_recurrent_model_equals_the_reference_rule(cell, shape, layers, kind, user):
    zoo, model, params, tokens = models(cell, shape, layers, user)
    unit_masks = {} if kind == "none" else masks(zoo, jax.random.key(7), kind == "per_step")
    if kind == "units_only":
        unit_masks = {k: v for k, v in unit_masks.items() if k.endswith("_h")}
    variables = {**params, UNIT_MASKS: unit_masks} if unit_masks else params
    want, want_state = zoo.apply(variables, tokens, mutable=[ACTIVATIONS])
    got, got_state = model.apply(variables, tokens, mutable=[ACTIVATIONS])
    chex.assert_trees_all_close(got, want, atol=1e-6)
    hidden = {g: got_state[ACTIVATIONS][g] for g in zoo.group_names()}  # (the plain model's embedding is a group too)
    chex.assert_trees_all_close(hidden, dict(want_state[ACTIVATIONS]), atol=1e-6)
    if kind != "none":  # the masks matter: the unmasked model differs
        assert not np.allclose(model.apply(params, tokens), want, atol=1e-3)


@pytest.mark.parametrize("cell,shape,layers", CASES, ids=IDS)
def test_rolled_module_sliced_equals_masked(cell, shape, layers):
    """A rolled module (one unit mask for all steps) as a physically smaller recurrent model: fewer parameters,
    the masked full model's logits on the kept classes."""
    zoo, model, params, tokens = models(cell, shape, layers, user=False)
    topology = resolve_topology(model, tokens.shape[1:])
    keep = {g: np.asarray(m) for g, m in masks(zoo, jax.random.key(3), False).items() if g.endswith("_h")}
    keep["embedding"] = np.arange(topology.sizes["embedding"]) != 1  # the token features are units too
    classes = [2, 0]
    small_vars, widths = slice_variables(topology, params, keep, classes)
    small = model.clone(widths=tuple(sorted(widths.items())), num_classes=len(classes))
    masked = model.apply({**params, UNIT_MASKS: keep}, tokens)
    sliced = small.apply(small_vars, tokens)
    chex.assert_trees_all_close(sliced, masked[..., np.asarray(classes)], atol=1e-5)
    count = sum(a.size for a in jax.tree.leaves(small_vars["params"]))
    assert count < sum(a.size for a in jax.tree.leaves(params["params"]))

"""RNN decomposition (Imtiaz et al.): hand-computed statistics, sampling, the removal cap, channeling, bad
inputs, and monitoring + composition on a trained model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod.approaches import create_approach
from jaxmod.approaches.rnn import (
    RnnDecomposition,
    channel_heads,
    check_composable,
    class_statistics,
    composed_outputs,
    mean_minus_outliers,
    module_outputs,
    removal_cap,
    remove_units,
    sample_weights,
    vocab_fingerprint,
)
from jaxmod.models import create_model
from jaxmod.modules import module_set
from jaxmod.voting import voting_accuracy


def test_mean_minus_outliers_by_hand():
    # median 1.5, |x - 1.5| = 0.5, 0.5, 0.5, 8.5 -> MAD 0.5; scores 1, 1, 1, 17: only 10 is an outlier.
    v = jnp.array([1.0, 1.0, 2.0, 10.0])
    assert float(mean_minus_outliers(v, jnp.ones(4, bool), 0)) == pytest.approx(4 / 3)
    # MAD 0 keeps everything (the authors' get_mean_minus_outliers).
    v = jnp.array([2.0, 2.0, 2.0, 5.0])
    assert float(mean_minus_outliers(v, jnp.ones(4, bool), 0)) == pytest.approx(2.75)
    # Unselected values do not count; nothing selected is NaN.
    assert float(mean_minus_outliers(jnp.array([1.0, 100.0]), jnp.array([True, False]), 0)) == 1.0
    assert np.isnan(float(mean_minus_outliers(jnp.array([1.0]), jnp.array([False]), 0)))


def test_sampling_first_positives_and_negatives_per_step():
    y = np.array([[0, 1], [0, 0], [1, 0], [0, 1], [2, 2]])
    valid = np.ones_like(y, bool)
    valid[4, 1] = False
    pos, neg = sample_weights(y, valid, 3, num_positive=2)
    # label 0 at step 0: samples 0, 1 (first two), not 3
    assert pos[0, :, 0].tolist() == [True, True, False, False, False]
    # negatives of label 0 at step 0: 2 // (3 - 1) = 1 of each other label: sample 2 (label 1), 4 (label 2)
    assert neg[0, :, 0].tolist() == [False, False, True, False, True]
    # padded step never sampled
    assert not pos[2, 4, 1] and not neg[0, 4, 1]


def test_removal_cap_and_order():
    assert removal_cap(32, 0.2) == 7 and removal_cap(10, 0.2) == 2 and removal_cap(10, 0.0) == 0
    d = np.array([-0.1, -0.5, 0.2, -0.3, np.nan, -0.05, 0.0, 0.3, 0.1, 0.4])
    keep = remove_units(d, 0.2)  # two most negative go: units 1 and 3
    assert np.flatnonzero(~keep).tolist() == [1, 3]
    keep_t = remove_units(np.stack([d, -d]), 0.2)  # per row (timestep)
    assert np.flatnonzero(~keep_t[1]).tolist() == [7, 9]


def test_statistics_rolled_and_unrolled():
    values = np.zeros((3, 2, 1), np.float32)
    values[:, 0, 0] = [1, 2, 3]
    values[:, 1, 0] = [-5, 5, 5]
    sel = np.zeros((1, 3, 2), bool)
    sel[0, :2, :] = True
    unrolled = class_statistics(values, sel, rolled=False, kind="logistic")
    np.testing.assert_allclose(unrolled[0, :, 0], [1.5, 5.0])
    rolled = class_statistics(values, sel, rolled=True, kind="logistic")  # |.| = 1, 2, 5, 5: MAD 1.5
    np.testing.assert_allclose(rolled[0], [3.25])
    relu_values = np.where(values > 2, values, 0.0).astype(np.float32)  # selected: 0, 0 (step 0), 0, 5 (step 1)
    relu = class_statistics(relu_values, sel, rolled=True, kind="relu")
    np.testing.assert_allclose(relu[0], [0.25])


def test_channel_heads():
    kernel = np.array([[1.0, 2.0, 6.0]])
    bias = np.array([0.0, 3.0, 6.0])
    heads = channel_heads(kernel, bias)
    np.testing.assert_allclose(heads["kernel"][0, 0], [1.0, 4.0])
    np.testing.assert_allclose(heads["bias"][2], [6.0, 1.5])


def test_bad_inputs_raise_before_work():
    model = create_model("rnn_lstm", 3, shape="many_to_many", units=4, vocab_size=9, input_len=5)
    x = np.tile(np.arange(1, 6), (6, 1))
    v = random_variables(model, x[:1])
    y = np.tile([0, 1, 2, 0, 1], (6, 1))
    a = create_approach("rnn", mode="unrolled")
    with pytest.raises(ValueError, match="outside the output vocabulary"):
        a.decompose(model, v, x, np.where(y == 2, 3, y), 3)
    with pytest.raises(ValueError, match=r"classes \[2\] have no samples"):
        a.decompose(model, v, x, np.where(y == 2, 0, y), 3)
    with pytest.raises(ValueError, match="model takes 5"):
        a.decompose(model, v, np.ones((6, 7), np.int64), y, 3)
    with pytest.raises(ValueError, match="input vocabulary"):
        a.decompose(model, v, x + 9, y, 3)
    with pytest.raises(ValueError, match="mode"):
        RnnDecomposition(mode="sideways")


def random_variables(model, x, seed=0, scale=0.5):
    """Variables shaped as ``model.init`` makes them, seeded normal values, traced without compiling."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, scale, s.shape).astype(s.dtype), shapes)


def tagger_modules(vocab, input_len=6, vocab_size=12):
    model = create_model("rnn_gru", 3, shape="many_to_many", units=8, vocab_size=vocab_size, input_len=input_len)
    masks = {"unit_masks": {"rnn1_h": np.ones((3, 8), bool)}}
    return module_set(masks, approach="rnn", model_name="rnn_gru", model=model, dataset="toy", input_shape=(6,),
                      extra={"input_vocab_hash": vocab_fingerprint(vocab)})


def test_modules_of_models_with_other_inputs_do_not_compose():
    """Another input vocabulary (same size) or another input length: ValueError before any work (the
    variables given are not even trees)."""
    words = [f"w{i}" for i in range(12)]
    mine = tagger_modules(words)
    with pytest.raises(ValueError, match="input vocabularies differ"):
        composed_outputs([mine, tagger_modules(words[::-1])], [None, None], np.ones((2, 6), np.int64))
    with pytest.raises(ValueError, match="input_len: 6 vs 7"):
        check_composable([mine.metadata, tagger_modules(words, input_len=7).metadata])
    with pytest.raises(ValueError, match="vocab_size"):
        check_composable([mine.metadata, tagger_modules(words, vocab_size=13).metadata])
    with pytest.raises(ValueError, match="no modules"):
        check_composable([])
    check_composable([mine.metadata, tagger_modules(list(words)).metadata])
    assert vocab_fingerprint(None) == "features" and vocab_fingerprint(words) != vocab_fingerprint(words[:-1])


def test_decomposition_of_a_trained_tagger():
    """A tagger trained on a rule (tag = token mod 3) decomposes at a small cost in both modes, the removal
    cap holds, and modules composed from two sets through ``composed_outputs`` are the sets' own outputs."""
    import optax

    from experiments.runners.rnn import masked_cross_entropy
    from jaxmod import train

    rng = np.random.default_rng(0)
    x = rng.integers(1, 12, (384, 6))
    y = x % 3
    model = create_model("rnn_gru", 3, shape="many_to_many", units=8, vocab_size=12, input_len=6)
    v = random_variables(model, x)
    opt = optax.adam(0.05)
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v["params"], batch_stats={},
                             opt_state=opt.init(v["params"]), key=jax.random.key_data(jax.random.key(0)))
    step = train.make_train_step(model, opt, masked_cross_entropy())
    for i in range(60):
        b = slice(64 * (i % 6), 64 * (i % 6 + 1))
        state, _ = step(state, x[b], y[b])
    v = state.variables()
    valid = np.ones_like(y, bool)
    std = float(np.mean(np.argmax(model.apply(v, x), -1) == y))
    assert std > 0.95
    for mode in ("rolled", "unrolled"):
        d = RnnDecomposition(mode=mode, num_positive=50).decompose(model, v, x, y, 3, valid)
        masks = d.masks["unit_masks"]["rnn1_h"]
        assert masks.shape == ((3, 8) if mode == "rolled" else (3, 6, 8))
        assert (~masks).sum(-1).max() <= removal_cap(8, 0.2)
        assert (~masks).any()  # something was removed: the cost below is not that of the full model
        conf = module_outputs(model, v, d.masks, d.heads, x)
        assert voting_accuracy(conf, y, valid=valid) >= std - 0.05
    modules = module_set(d.masks, approach="rnn", model_name="rnn_gru", model=model, dataset="toy",
                         input_shape=(6,), heads=d.heads, extra={"input_vocab_hash": vocab_fingerprint(None)})
    flat = dataclasses.replace(modules, masks={"unit_masks/rnn1_h": d.masks["unit_masks"]["rnn1_h"]})
    both, labels = composed_outputs([modules, flat], [v, v], x)  # also as restore_modules returns masks
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    np.testing.assert_allclose(both, np.concatenate([conf, conf]), atol=1e-6)


@pytest.mark.parametrize("count", [7, 8])
def test_rolled_statistic_matches_a_per_unit_reference(count):
    """Rolled statistics (one boolean gather, linear-time partitions) against NumPy's median per unit on
    random observations, odd and even counts, with an unselected class step and padded steps."""
    rng = np.random.default_rng(count)
    values = rng.standard_t(2, (5, 3, 4)).astype(np.float32)  # heavy tails: outliers get dropped
    selection = np.zeros((2, 5, 3), bool)
    selection[0].flat[rng.choice(15, count, replace=False)] = True
    selection[1, :2, :2] = True
    got = class_statistics(values, selection, rolled=True, kind="logistic")
    for c in range(2):
        obs = np.abs(values[selection[c]])
        for k in range(4):
            col = obs[:, k]
            dev = np.abs(col - np.median(col))
            mad = np.median(dev)
            kept = col[dev / mad < 2] if mad > 0 else col
            assert got[c, k] == pytest.approx(kept.mean(), rel=1e-5)
    assert np.isnan(class_statistics(values, np.zeros((1, 5, 3), bool), rolled=True, kind="logistic")).all()


@pytest.mark.parametrize("mode", ["rolled", "unrolled"])
def test_translation_modules_keep_the_encoder_whole(mode):
    """``for_shape('encoder_decoder')`` is the authors' translation setting: modules keep the output layer and
    every encoder unit (only the decoder layers are decomposed) and sample 1000 positives; ``encoder=True``
    decomposes the encoder too. Classifier shapes keep the previous settings."""
    rng = np.random.default_rng(1)
    model = create_model("rnn_lstm", 9, shape="encoder_decoder", num_layers=2, units=10, vocab_size=9,
                         input_len=5, output_len=4)
    x = rng.integers(1, 9, (240, 5))
    language = rng.integers(0, 3, 240)  # the module label: a target language per pair
    v = random_variables(model, x)
    approach = RnnDecomposition.for_shape("encoder_decoder", mode=mode)
    assert (approach.channel, approach.encoder, approach.num_positive) == (False, False, 1000)
    assert RnnDecomposition.for_shape("many_to_many", mode=mode) == RnnDecomposition(mode=mode)
    decoder_only = approach.decompose(model, v, x, language, 3).masks["unit_masks"]
    everything = dataclasses.replace(approach, encoder=True).decompose(model, v, x, language, 3).masks["unit_masks"]
    encoder, decoder = model.group_names()[:2], model.group_names()[2:]
    for g in encoder:
        assert decoder_only[g].all()
        np.testing.assert_array_equal(decoder_only[g].shape, everything[g].shape)
    for g in decoder:  # the decoder's masks do not depend on the encoder option
        np.testing.assert_array_equal(decoder_only[g], everything[g])
    assert not all(everything[g].all() for g in encoder)  # random weights: the encoder does lose units

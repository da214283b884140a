"""RNN decomposition (Imtiaz et al.): hand-computed statistics, sampling, the removal cap, channeling, bad
inputs, and monitoring + composition on a trained model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod import checkpoint
from jaxmod.approaches import create_approach
from jaxmod.approaches.rnn import (
    RnnDecomposition,
    class_statistics,
    mean_minus_outliers,
    removal_cap,
    remove_units,
    sample_weights,
    vocab_fingerprint,
)
from jaxmod.models import create_model, zoo_module
from jaxmod.modules import module_set
from jaxmod.reuse import check_same_inputs, cross_model_confidences
from jaxmod.running import channel_head, head_logits, module_outputs
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


def binary_layer(kernel, bias, c):
    """Channeling as the authors build it: a binary output layer whose "another class" column (0) is the mean
    of the other classes' columns (bias likewise) and whose "my class" column (1) is class ``c``'s own."""
    others = np.delete(np.arange(kernel.shape[1]), c)
    k = np.stack([kernel[:, others].mean(axis=1), kernel[:, c]], axis=-1)
    return k, np.array([bias[others].mean(), bias[c]])


def test_channel_head_on_logits_is_the_binary_output_layer():
    """The head reads the logits (own logit in column 1, the mean of the others in column 0): applied to the
    logits it equals the binary output layer built from the output kernel and bias applied to the features."""
    kernel = np.array([[1.0, 2.0, 6.0]])
    bias = np.array([0.0, 3.0, 6.0])
    head = channel_head(3, range(3))
    assert head["kernel"].shape == (3, 3, 2) and head["bias"].shape == (3, 2)
    features = np.array([[1.0], [-2.0], [0.5]])
    logits = features @ kernel + bias
    one = lambda c: {k: v[c] for k, v in head.items()}  # noqa: E731
    # By hand: class 0 keeps kernel 1 and bias 0, the others' mean is kernel (2 + 6) / 2 = 4, bias (3 + 6) / 2.
    np.testing.assert_allclose(head_logits(one(0), logits), features @ [[4.0, 1.0]] + [4.5, 0.0], rtol=1e-6)
    # Class 2: own kernel 6 and bias 6, the others' (1 + 2) / 2 and (0 + 3) / 2.
    np.testing.assert_allclose(head_logits(one(2), logits), features @ [[1.5, 6.0]] + [1.5, 6.0], rtol=1e-6)
    # Any layer, any subset of classes, rows in the order given.
    rng = np.random.default_rng(0)
    kernel, bias, features = rng.normal(size=(5, 4)), rng.normal(size=4), rng.normal(size=(7, 5))
    logits = features @ kernel + bias
    head = channel_head(4, [3, 1])
    for row, c in enumerate([3, 1]):
        k, b = binary_layer(kernel, bias, c)
        got = head_logits({"kernel": head["kernel"][row], "bias": head["bias"][row]}, logits)
        np.testing.assert_allclose(got, features @ k + b, rtol=1e-5, atol=1e-6)


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
    x = np.ones((1, input_len), np.int64)
    modules = module_set(RnnDecomposition(), model, random_variables(model, x), x,
                         units={"rnn1_h": np.ones((3, 8), bool)})
    return modules.with_meta(dataset="toy", input_vocab=vocab_fingerprint(vocab, vocab_size))


def test_modules_of_models_with_other_inputs_do_not_compose():
    """Another input vocabulary (same size), another input length or another vocabulary size: ValueError before
    any work (the variables given are not even trees)."""
    words = [f"w{i}" for i in range(12)]
    mine = tagger_modules(words)
    with pytest.raises(ValueError, match="input_vocab"):
        cross_model_confidences([mine, tagger_modules(words[::-1])], [None, None], np.ones((2, 6), np.int64))
    with pytest.raises(ValueError, match=r"input_shape: \(6,\) vs \(7,\)"):
        check_same_inputs([mine.meta, tagger_modules(words, input_len=7).meta])
    with pytest.raises(ValueError, match="input_vocab"):  # the fingerprint holds the model's vocabulary size
        check_same_inputs([mine.meta, tagger_modules(words, vocab_size=13).meta])
    with pytest.raises(ValueError, match="no modules"):
        check_same_inputs([])
    check_same_inputs([mine.meta, tagger_modules(list(words)).meta])
    assert vocab_fingerprint(None) == "" and vocab_fingerprint(words) != vocab_fingerprint(words[:-1])
    assert vocab_fingerprint(words, 12) != vocab_fingerprint(words, 13)


def test_decomposition_of_a_trained_tagger(tmp_path):
    """A tagger trained on a rule (tag = token mod 3) decomposes at a small cost in both modes, the removal
    cap holds, and modules composed from two sets through ``cross_model_confidences`` are the sets' own outputs."""
    import optax

    from jaxmod import train
    from jaxmod.losses import masked_cross_entropy_loss

    rng = np.random.default_rng(0)
    x = rng.integers(1, 12, (384, 6))
    y = x % 3
    model = create_model("rnn_gru", 3, shape="many_to_many", units=8, vocab_size=12, input_len=6)
    v = random_variables(model, x)
    opt = optax.adam(0.05)
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=v["params"], batch_stats={},
                             opt_state=opt.init(v["params"]), key=jax.random.key_data(jax.random.key(0)))
    step = train.make_train_step(model, opt, masked_cross_entropy_loss())
    for i in range(60):
        b = slice(64 * (i % 6), 64 * (i % 6 + 1))
        state, _ = step(state, x[b], y[b])
    v = state.variables()
    valid = np.ones_like(y, bool)
    std = float(np.mean(np.argmax(model.apply(v, x), -1) == y))
    assert std > 0.95
    for mode in ("rolled", "unrolled"):
        d = RnnDecomposition(mode=mode, num_positive=50).decompose(model, v, x, y, 3, valid)
        masks = d.modules.units["rnn1_h"]
        assert masks.shape == ((3, 8) if mode == "rolled" else (3, 6, 8))
        assert (~masks).sum(-1).max() <= removal_cap(8, 0.2)
        assert (~masks).any()  # something was removed: the cost below is not that of the full model
        conf = module_outputs(model, v, d.modules, x)
        assert voting_accuracy(conf, y, valid=valid) >= std - 0.05
    modules = d.modules.with_meta(dataset="toy", input_vocab=vocab_fingerprint(None))
    checkpoint.save_modules(tmp_path / "modules", modules, v)
    restored, restored_v = checkpoint.restore_modules(tmp_path / "modules")
    both, labels = cross_model_confidences([modules, restored], [v, restored_v], x)  # also as restore_modules gives
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
def test_translation_modules_keep_the_encoder_whole(mode, tmp_path):
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
    modules = approach.decompose(model, v, x, language, 3).modules
    assert modules.classes == (0, 1, 2) and not modules.votes  # one module per language, the full output layer
    decoder_only = modules.units
    everything = dataclasses.replace(approach, encoder=True).decompose(model, v, x, language, 3).modules.units
    encoder, decoder = zoo_module(model).group_names()[:2], zoo_module(model).group_names()[2:]
    for g in encoder:
        assert decoder_only[g].all()
        np.testing.assert_array_equal(decoder_only[g].shape, everything[g].shape)
    for g in decoder:  # the decoder's masks do not depend on the encoder option
        np.testing.assert_array_equal(decoder_only[g], everything[g])
    assert not all(everything[g].all() for g in encoder)  # random weights: the encoder does lose units
    # Translation modules save and restore as any module set.
    checkpoint.save_modules(tmp_path / "modules", modules, v)
    restored, _ = checkpoint.restore_modules(tmp_path / "modules")
    assert restored.meta == modules.meta and restored.head is None
    for g in decoder_only:
        np.testing.assert_array_equal(restored.units[g], decoder_only[g])

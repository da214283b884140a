"""The mechanics of ``experiments/rnn_scenarios.py`` (RQ2/RQ3 reuse and replacement, the motivating examples):
hand-computed cases for the data plumbing, composition across models of other depths and shapes, bad flags,
and one real intra-shape run on a slice of BBC News."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import rnn_scenarios as sc
from jaxmod.approaches.rnn import RnnDecomposition, vocab_fingerprint
from jaxmod.data.text import SequenceSplit
from jaxmod.models import create_model, zoo_module
from jaxmod.modules import module_set
from jaxmod.reuse import cross_model_confidences
from jaxmod.running import module_outputs


def arrays(x, y, valid, label=None):
    """A split; ``label`` (the module label of translation pairs, their target language) is its group."""
    y = np.asarray(y)
    return SequenceSplit(np.asarray(x), y, np.asarray(valid, bool), None if label is None else np.asarray(label))


def test_pair_arrays_one_output_and_per_step():
    a = arrays(np.arange(5)[:, None], [0, 2, 1, 2, 0], [True] * 5)
    p = sc.pair_arrays(a, (0, 2))
    np.testing.assert_array_equal(p.x[:, 0], [0, 1, 3, 4])
    np.testing.assert_array_equal(p.y, [0, 1, 1, 0])
    assert p.y_valid.all()
    tags = arrays(np.arange(3)[:, None], [[0, 1, 2], [1, 1, 1], [2, 0, 0]], [[1, 1, 0], [1, 1, 1], [1, 1, 1]],
                  label=np.zeros(3, int))
    p = sc.pair_arrays(tags, (0, 2))  # the middle sentence has neither tag: dropped; step 2 of the first is padding
    np.testing.assert_array_equal(p.x[:, 0], [0, 2])
    np.testing.assert_array_equal(p.y_valid, [[True, False, False], [True, True, True]])
    np.testing.assert_array_equal(np.where(p.y_valid, p.y, -1), [[0, -1, -1], [1, 0, 0]])


def test_undersample_keeps_the_smallest_count_of_every_label():
    y = np.array([0, 1, 1, 1, 2, 2, 0, 1, 2, 2])
    keep = sc.undersample(y, seed=3)
    assert np.all(np.diff(keep) > 0)  # original order
    np.testing.assert_array_equal(np.bincount(y[keep]), [2, 2, 2])
    np.testing.assert_array_equal(keep, sc.undersample(y, seed=3))
    np.testing.assert_array_equal(sc.undersample(np.array([1, 1, 1]), 0), [0, 1, 2])


def test_corrupt_changes_only_the_chosen_language():
    et = sc.LANGUAGES.index("et")
    label = np.array([et, 0, et, et, 1, et])
    y = np.arange(6)[:, None] * np.ones((1, 3), int)
    a = arrays(np.zeros((6, 2)), y, np.ones((6, 3)), label)
    out = sc.corrupt(a, "et", 1.0, seed=0)
    np.testing.assert_array_equal(out.y[label != et], y[label != et])  # other languages untouched
    assert sorted(out.y[label == et, 0]) == sorted(y[label == et, 0])  # et targets permuted among et pairs
    np.testing.assert_array_equal(out.x, a.x)
    half = sc.corrupt(a, "et", 0.5, seed=0)
    assert np.sum(half.y[:, 0] != y[:, 0]) <= 2  # two of the four et pairs are shuffled (maybe onto themselves)


def test_recode_maps_words_into_another_vocabulary():
    from jaxmod.data.text import SequenceDataset, SequenceSplit

    split = SequenceSplit(np.array([[2, 3, 4, 0], [4, 1, 0, 0]], np.int32), np.array([0, 1]), np.ones(2, bool))
    ds = SequenceDataset("toy", "many_to_one", split, split, split, ("<pad>", "<unk>", "cat", "dog", "emu"),
                         ("a", "b"), 4, 1)
    out = sc.recode(ds, ("<pad>", "<unk>", "dog", "cat"))
    np.testing.assert_array_equal(out.train.x, [[3, 2, 1, 0], [1, 1, 0, 0]])  # emu is unknown there
    assert out.input_vocab == ("<pad>", "<unk>", "dog", "cat") and out.test.x is not split.x


def test_tag_scores_take_the_best_unpadded_step():
    probs = np.array([[0.2, 0.6, 0.9], [0.5, 0.1, 0.3]])
    x = np.array([[5, 6, 0], [7, 0, 0]])
    np.testing.assert_allclose(sc.tag_scores(probs, x, odds=False), [0.6, 0.5])
    np.testing.assert_allclose(sc.tag_scores(probs, x, odds=True), [1.5, 1.0])


def test_summary_table_means_and_medians_per_cell():
    rows = [sc.row("III", "intra", "M:1", "lstm", "a-b", 0.75, 0.625),
            sc.row("III", "intra", "M:1", "lstm", "a-c", 0.5, 0.625),
            sc.row("III", "intra", "M:1", "lstm", "b-c", 0.625, 0.625),
            sc.row("III", "intra", "M:1", "gru", "a-b", 1, 0.5), sc.row("IV", "intra", "M:1", "gru", "x", 0.5, 0.5)]
    np.testing.assert_array_equal([r["change_points"] for r in rows[:3]], [12.5, -12.5, 0])
    lines = sc.summary_table(rows, "III", ["lstm", "gru", "vanilla"])
    assert lines[2] == "| intra | M:1 | +0.00 | +0.00 | 3 | +50.00 | +50.00 | 1 |  |  | 0 |"
    assert len(sc.summary_table(rows, "IV", ["gru"])) == 3
    text = sc.markdown(rows, ["lstm", "gru"], ["python -m experiments.rnn_scenarios --x"])
    assert "`python -m experiments.rnn_scenarios --x`" in text and "## Table IV" in text
    bleu = sc.row("V", "add Ukrainian", "Encoder-Decoder", "lstm", "1", 12.5, 10.0, metric="BLEU", per_language={})
    assert bleu["change_points"] == 2.5


def random_variables(model, x, seed=0):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(s.dtype), shapes)


def toy_set(layers, shape="many_to_one", vocab=("<pad>", "<unk>", "a", "b"), seed=0):
    """Random modules of a toy model with seeded random variables: ``(model, variables, modules)``."""
    model = create_model("rnn_gru", 3, shape=shape, num_layers=layers, units=6, vocab_size=12, input_len=5)
    x = np.zeros((1, 5), np.int32)
    variables = random_variables(model, x, seed=seed)
    units = {g: np.random.default_rng(layers).random((3, 6)) > 0.3 for g in zoo_module(model).group_names()}
    head = {"kernel": np.random.default_rng(1).normal(size=(3, 3, 2)).astype(np.float32),
            "bias": np.zeros((3, 2), np.float32)}
    modules = module_set(RnnDecomposition(), model, variables, x, units=units, head=head)
    return model, variables, modules.with_meta(dataset="toy", input_vocab=vocab_fingerprint(vocab, 12))


def test_modules_of_models_of_other_depths_compose_but_not_other_output_shapes():
    """RQ3's replacement composes a 1-layer and a 2-layer model's modules: each runs with its own weights.
    One-output and per-step modules cannot be stacked for voting (the inter rows score them apart)."""
    x = np.random.default_rng(0).integers(0, 12, (7, 5)).astype(np.int32)
    (m1, v1, s1), (m2, v2, s2) = toy_set(1), toy_set(2, seed=1)
    out, labels = cross_model_confidences([s1, s2], [v1, v2], x)
    assert out.shape == (6, 7)
    np.testing.assert_array_equal(labels, [0, 1, 2, 0, 1, 2])
    np.testing.assert_allclose(out[3:], module_outputs(m2, v2, s2, x), rtol=1e-6)
    np.testing.assert_allclose(out[:3], module_outputs(m1, v1, s1, x), rtol=1e-6)
    _, vt, tagger = toy_set(1, shape="many_to_many")
    with pytest.raises(ValueError, match=r"outputs of different shapes .* one per output step"):
        cross_model_confidences([s1, tagger], [v1, vt], x)
    _, vo, other = toy_set(1, vocab=("<pad>", "<unk>", "b", "a"))
    with pytest.raises(ValueError, match="input_vocab"):
        cross_model_confidences([s1, other], [v1, vo], x)


def test_bad_flags_fail_before_anything_is_written(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "experiments.rnn_scenarios", "--scenario_parts=intra,bogus",
                           f"--scenario_output_dir={out}"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown parts" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("values, message", [({"scenario_layers": 5}, "scenario_layers"),
                                             ({"scenario_fault_fraction": 0.0}, "fault_fraction"),
                                             ({"scenario_pairs": 0}, "scenario_pairs"),
                                             ({"scenario_cells": ["lstm", "transformer"]}, "transformer"),
                                             ({"scenario_shapes": ["encoder_decoder"]}, "encoder_decoder")])
def test_check_flags_names_the_bad_value(values, message):
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver(**values), pytest.raises(ValueError, match=message):
        sc.check_flags()


def test_intra_reuse_and_replacement_on_real_bbc_news(monkeypatch):
    """A slice of the real BBC News bag of words: a 2-layer and a 1-layer model trained and decomposed;
    one pair reused against a two-label model from scratch; every module of the weaker model replaced."""
    monkeypatch.setitem(sc.SETTINGS, "one_to_one", {"vocab_size": 200, "train_limit": 400, "epochs": 2})
    rows = sc.intra("one_to_one", "vanilla", 2, 1, 8, 0, "unrolled")
    reuse = [r for r in rows if r["table"] == "III"]
    replace = [r for r in rows if r["table"] == "IV"]
    assert len(reuse) == 1 and len(replace) == 5  # five topics, each module replaced once
    for r in rows:
        assert 0 <= r["composed"] <= 1 and 0 <= r["reference"] <= 1
        np.testing.assert_allclose(r["change_points"], 100 * (r["composed"] - r["reference"]))
    assert reuse[0]["reference"] > 0.6  # two topics of real text separate after two epochs
    assert {r["faulty_layers"] for r in replace} | {r["best_layers"] for r in replace} == {1, 2}
    assert all(r["reference"] <= r["best_accuracy"] for r in replace)  # the faulty model is the weaker one

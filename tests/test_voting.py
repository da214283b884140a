"""Voting composition on constructed module outputs."""

import chex
import numpy as np
import pytest

from jaxmod.voting import vote, vote_top_k, voting_accuracy

# 3 modules x 4 samples: module i's confidence that the sample is its class.
CONF = np.array([
    [0.9, 0.2, 0.40, 0.1],
    [0.8, 0.7, 0.45, 0.1],
    [0.1, 0.6, 0.30, 0.1],
])


def test_most_confident_module_wins_and_ties_go_to_the_first():
    chex.assert_trees_all_equal(np.asarray(vote(CONF)), np.array([0, 1, 1, 0]))
    # with the modules' own class ids (a sub-task of classes 7, 2, 5)
    chex.assert_trees_all_equal(np.asarray(vote(CONF, classes=[7, 2, 5])), np.array([7, 2, 2, 7]))


def test_top_k_and_accuracy_by_hand():
    chex.assert_trees_all_equal(np.asarray(vote_top_k(CONF, 2)), np.array([[0, 1], [1, 2], [1, 0], [0, 1]]))
    labels = np.array([1, 2, 1, 2])
    assert voting_accuracy(CONF, labels) == pytest.approx(0.25)  # only sample 2
    assert voting_accuracy(CONF, labels, k=2) == pytest.approx(0.75)  # samples 0, 1, 2
    assert voting_accuracy(CONF, labels, k=3) == pytest.approx(1.0)
    # with the modules' own class ids, top-k answers in those ids too
    chex.assert_trees_all_equal(np.asarray(vote_top_k(CONF, 2, classes=[7, 2, 5])),
                                np.array([[7, 2], [2, 5], [2, 7], [7, 2]]))
    assert voting_accuracy(CONF, np.array([2, 5, 2, 5]), k=2, classes=[7, 2, 5]) == pytest.approx(0.75)


def test_many_output_votes_per_step_and_skip_padding():
    conf = np.stack([CONF, CONF[::-1]], axis=-1)  # (modules, batch, time=2)
    labels = np.array([[0, 2], [1, 0], [1, 0], [0, 0]])
    valid = np.array([[True, True], [True, False], [True, True], [True, False]])
    chex.assert_shape(vote(conf), (4, 2))
    # step 0 votes as CONF (0,1,1,0): all four right; step 1 (modules reversed) votes (2,0,0,2)
    # -> right on sample 0 only; samples 1 and 3 at step 1 are padding.
    assert voting_accuracy(conf, labels, valid=valid) == pytest.approx(5 / 6)


@pytest.mark.parametrize("call, message", [
    (lambda: vote(np.zeros(3)), "confidences must be"),
    (lambda: vote(CONF, classes=[0, 1]), "3 modules vote but 2 classes"),
    (lambda: vote(CONF, classes=[0, 1, 1]), "its own class"),
    (lambda: vote_top_k(CONF, 4), "k must be in 1..3"),
    (lambda: voting_accuracy(CONF, np.zeros(5)), "labels have shape"),
])
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_padding_masks_of_any_dtype_and_a_single_scored_step():
    labels = np.array([0, 0, 1, 0])  # vote: (0, 1, 1, 0): right on 0, 2, 3
    assert voting_accuracy(CONF, labels, valid=np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(1.0)  # 1 of 1
    assert voting_accuracy(CONF, labels, valid=np.array([0, 1, 1, 0])) == pytest.approx(0.5)


def test_bad_votes_are_refused_with_the_shapes_named():
    with pytest.raises(ValueError, match=r"^confidences must be \(modules, batch, ...\), got shape \(3,\)$"):
        vote(np.ones(3))
    with pytest.raises(ValueError, match="^3 modules vote but 2 classes were given$"):
        vote(CONF, classes=[1, 2])
    with pytest.raises(ValueError, match="^3 modules vote but 0 classes were given$"):
        vote(CONF, classes=4)
    with pytest.raises(ValueError, match=r"^labels have shape \(3,\), confidences give \(4,\)$"):
        voting_accuracy(CONF, np.array([0, 1, 2]))


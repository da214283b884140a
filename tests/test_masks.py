"""Mask algebra and MODA's thresholding on hand-made masks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxmod import masks
from jaxmod.approaches.moda import threshold_with_floor

A = {"w": jnp.array([[1, 1, 0], [0, 1, 0]], bool), "b": jnp.array([1, 0], bool), "skip": None}
B = {"w": jnp.array([[1, 0, 0], [0, 1, 1]], bool), "b": jnp.array([1, 1], bool), "skip": None}


def test_union_intersection_count():
    chex.assert_trees_all_equal(masks.intersection(A, B), {"w": jnp.array([[1, 0, 0], [0, 1, 0]], bool),
                                                           "b": jnp.array([1, 0], bool), "skip": None})
    assert masks.count(A) == 4 and masks.count(B) == 5
    assert masks.count(masks.union(A, B)) == 6
    assert masks.count(masks.intersection(A, B)) == 3


def test_module_statistics_by_hand():
    stacked = {k: jnp.stack([A[k], B[k]]) for k in ("w", "b")}
    stats = masks.module_statistics(stacked, total=10, always_kept=2)
    # sizes: (4 + 2) / 10 and (5 + 2) / 10; shared: 3 + 2; union: 6 + 2
    np.testing.assert_allclose(stats["sizes"], [0.6, 0.7])
    np.testing.assert_allclose(stats["overlap"][0, 1], 0.5)
    np.testing.assert_allclose(stats["jaccard"][0, 1], 5 / 8)
    np.testing.assert_allclose(np.diag(stats["jaccard"]), [1.0, 1.0])
    assert masks.mean_off_diagonal(stats["jaccard"]) == 5 / 8


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(bool, st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 3))))
def test_pairwise_intersections_match_brute_force(stacked):
    got = masks.pairwise_intersections({"leaf": jnp.asarray(stacked), "other": jnp.asarray(stacked[:, :1])})
    flat = np.concatenate([stacked.reshape(len(stacked), -1), stacked[:, :1].reshape(len(stacked), -1)], 1)
    want = flat.astype(int) @ flat.T.astype(int)
    np.testing.assert_array_equal(got, want)


def test_union_rows():
    stacked = {"w": jnp.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], bool)}
    chex.assert_trees_all_equal(masks.union_rows(stacked, [0, 1]), {"w": jnp.array([1, 1, 0], bool)})


def test_threshold_with_floor():
    rates = np.array([
        [0.95, 0.90, 0.10, 0.0],   # two pass tau = 0.9 (>= is inclusive)
        [0.50, 0.20, 0.80, 0.1],   # none pass: below min_req = 1
        [0.30, 0.30, 0.10, 0.0],   # none pass
    ])
    # deficient classes keep their top-k, k = max(min_req 1, largest module in the layer 2) = 2;
    # ties go to the lower unit index
    got = threshold_with_floor(rates, tau=0.9, min_fraction=0.005)
    np.testing.assert_array_equal(got, [[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0]])
    # only one unit passes anywhere: k = 1
    got = threshold_with_floor(rates, tau=0.92, min_fraction=0.005)
    np.testing.assert_array_equal(got, [[1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]])
    # min_req = floor(0.75 * 4) = 3 exceeds every module: deficient classes (all three) keep 3
    got = threshold_with_floor(rates, tau=0.9, min_fraction=0.75)
    np.testing.assert_array_equal(got, [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0]])
    # classes that meet min_req keep exactly the units that pass
    got = threshold_with_floor(rates, tau=0.25, min_fraction=0.005)
    np.testing.assert_array_equal(got, [[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0]])


def test_mask_rules_are_jittable_and_agree_with_their_eager_form():
    """The rules that can be jnp are: counting, MODA's threshold with floor, Imtiaz et al.'s removal with its
    cap and the ReLU variant, and the random control's draw."""
    from jaxmod.approaches.random import random_like
    from jaxmod.approaches.rnn import relu_keep, remove_units

    rates = np.array([[0.95, 0.2, 0.91, 0.1], [0.3, 0.5, 0.2, 0.4]])
    np.testing.assert_array_equal(jax.jit(threshold_with_floor, static_argnums=1)(rates, 0.9),
                                  threshold_with_floor(rates, 0.9))
    assert int(jax.jit(masks.count)(A)) == masks.count(A) == 4
    d = np.array([[-0.3, 0.2, -0.1, np.nan, -0.5]], np.float32)
    np.testing.assert_array_equal(jax.jit(remove_units, static_argnums=1)(d, 0.4), remove_units(d, 0.4))
    np.testing.assert_array_equal(remove_units(d, 0.4), [[False, True, True, True, False]])  # two most negative
    pos, neg = np.array([[0.0, 0.5, 0.0]]), np.array([[0.1, 0.0, 0.0]])
    np.testing.assert_array_equal(jax.jit(relu_keep, static_argnums=2)(pos, neg, 1.0), [[True, True, False]])
    stacked = {"a": np.array([[True, False, True, False], [False, False, False, True]])}
    drawn = jax.jit(random_like, static_argnums=2)(jax.random.key(0), stacked, "last")
    np.testing.assert_array_equal(np.sum(drawn["a"], axis=1), [2, 1])  # the same kept count per module

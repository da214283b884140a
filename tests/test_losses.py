"""MODA's losses against small hand-computed examples."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmod import losses

DENSE = jnp.array([[1.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 1]])
DENSE_LABELS = jnp.array([0, 0, 1, 1])


def test_dense_layer_terms_by_hand():
    terms = losses.moda_layer_terms(DENSE, DENSE_LABELS)
    # same-label pairs (0,1): cos 1; (2,3): cos 1/sqrt(2)
    np.testing.assert_allclose(terms["affinity"], ((1 - 1) + (1 - 1 / np.sqrt(2))) / 2, rtol=1e-6)
    # all four different-label pairs are orthogonal
    np.testing.assert_allclose(terms["dispersion"], 0.0, atol=1e-7)
    np.testing.assert_allclose(terms["compactness"], 5 / 12, rtol=1e-6)


def test_conv_layer_reduces_to_mean_abs_over_space():
    a = np.zeros((2, 2, 2, 2), np.float32)
    a[0, :, :, 0] = 2.0
    a[0, 1, 1, 1] = -4.0  # |a| is used: channel mean 1
    a[1, :, :, 1] = 1.0
    chex.assert_trees_all_close(losses.unit_values(jnp.asarray(a)), jnp.array([[2.0, 1.0], [0.0, 1.0]]))
    terms = losses.moda_layer_terms(jnp.asarray(a), jnp.array([0, 1]))
    np.testing.assert_allclose(terms["affinity"], 0.0)  # no same-label pair in the batch
    np.testing.assert_allclose(terms["dispersion"], 1 / np.sqrt(5), rtol=1e-6)
    np.testing.assert_allclose(terms["compactness"], (2 + 1 + 0 + 1) / 4, rtol=1e-6)


def test_batches_without_pairs_are_finite_with_finite_gradients():
    a = jnp.array([[1.0, 2.0], [3.0, 0.5], [0.0, 0.0]])
    for labels in (jnp.array([0, 0, 0]), jnp.array([0, 1, 2])):
        value, grad = jax.value_and_grad(lambda x, lab=labels: sum(losses.moda_layer_terms(x, lab).values()))(a)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
    same_only = losses.moda_layer_terms(a, jnp.array([0, 0, 0]))
    assert float(same_only["dispersion"]) == 0.0
    distinct = losses.moda_layer_terms(a, jnp.array([0, 1, 2]))
    assert float(distinct["affinity"]) == 0.0
    # a single sample has no pair at all
    single = losses.moda_layer_terms(a[:1], jnp.array([3]))
    assert float(single["affinity"]) == 0.0 and float(single["dispersion"]) == 0.0


def test_moda_loss_combines_terms_averaged_over_layers():
    logits = jnp.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [0.5, 0.0]])
    acts = {"a": DENSE, "b": 2.0 * DENSE[:, ::-1]}
    loss, aux = losses.moda_loss(alpha=1.0, beta=2.0, gamma=0.3)(logits, acts, DENSE_LABELS % 2)
    ce = np.mean([np.log1p(np.exp(-2.0)), np.log(2.0), np.log1p(np.exp(-3.0)), np.log1p(np.exp(0.5))])
    aff = (1 - 1 / np.sqrt(2)) / 2  # the same in both layers: cosine ignores scale and unit order
    comp = (5 / 12 + 10 / 12) / 2
    np.testing.assert_allclose(aux["cross_entropy"], ce, rtol=1e-6)
    np.testing.assert_allclose(aux["affinity"], aff, rtol=1e-6)
    np.testing.assert_allclose(aux["compactness"], comp, rtol=1e-6)
    np.testing.assert_allclose(loss, ce + 1.0 * aff + 2.0 * 0.0 + 0.3 * comp, rtol=1e-6)


def test_cross_entropy_loss_ignores_activations():
    logits = jnp.array([[0.0, 0.0]])
    loss, aux = losses.cross_entropy_loss()(logits, {}, jnp.array([1]))
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
    assert set(aux) == {"cross_entropy"}


def test_bad_weights_and_layers_raise():
    for name in ("alpha", "beta", "gamma"):  # each weight named in its own message
        with pytest.raises(ValueError, match=f"^MODA weight {name} must be >= 0, got -1.0$"):
            losses.moda_loss(**{name: -1.0})
    with pytest.raises(ValueError, match=r"^layers \['b'\] are not tapped by the model; tapped: \['a'\]$"):
        losses.moda_terms({"a": DENSE}, DENSE_LABELS, layers=["b"])
    with pytest.raises(ValueError, match="^MODA needs at least one tapped hidden layer$"):
        losses.moda_terms({}, DENSE_LABELS)


def test_paper_defaults_zero_weights_and_the_layer_choice():
    logits = jnp.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [0.5, 0.0]])
    acts = {"a": DENSE, "b": jnp.array([[1.0, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])}
    labels = DENSE_LABELS
    both = losses.moda_terms(acts, labels)
    loss, aux = losses.moda_loss()(logits, acts, labels)  # Eq. 7 with the paper's 1.0, 1.0, 0.3
    assert float(both["dispersion"]) > 0  # layer b has a non-orthogonal different-label pair: every term counts
    np.testing.assert_allclose(loss, aux["cross_entropy"] + both["affinity"] + both["dispersion"]
                               + 0.3 * both["compactness"], rtol=1e-6)
    zero, zero_aux = losses.moda_loss(alpha=0.0, beta=0.0, gamma=0.0)(logits, acts, labels)  # 0 is allowed
    np.testing.assert_allclose(zero, zero_aux["cross_entropy"], rtol=1e-6)
    only_a, aux_a = losses.moda_loss(layers=["a"])(logits, acts, labels)  # the chosen layers only
    terms_a = losses.moda_layer_terms(DENSE, labels)
    for k in ("affinity", "dispersion", "compactness"):
        np.testing.assert_allclose(aux_a[k], terms_a[k], rtol=1e-6)
    assert not np.isclose(float(only_a), float(loss))


def test_masked_cross_entropy_with_a_single_labelled_step():
    logits = jnp.array([[[2.0, 0.0], [0.0, 0.0]]])
    loss, _ = losses.masked_cross_entropy_loss()(logits, {}, jnp.array([[0, -1]]))
    np.testing.assert_allclose(float(loss), np.log1p(np.exp(-2.0)), rtol=1e-6)  # divided by 1, not more


MASKS = jnp.array([[0.0, 0.4, 1.0], [0.0, 0.9, 1.0], [1.0, 0.0, 0.2], [0.6, 0.0, 0.0]])  # 4 samples x 3 kernels


def test_mwt_terms_average_layers_and_count_open_kernels():
    labels = jnp.array([0, 0, 0, 1])  # unbalanced: class and pair averaging differ
    acts = {"block/mask@conv1": MASKS, "block/conv1": jnp.ones((4, 3)), "mask@conv2": MASKS[:, ::-1]}
    for averaging in ("class", "pair"):
        terms = losses.mwt_terms(acts, labels, averaging)
        layer = losses.mwt_layer_terms(MASKS, labels, averaging)  # kernel order does not change the terms
        for k in layer:
            np.testing.assert_allclose(terms[k], layer[k], rtol=1e-5)
    default = losses.mwt_terms(acts, labels)  # the paper's class averaging by default
    np.testing.assert_allclose(default["cohesion"], losses.mwt_terms(acts, labels, "class")["cohesion"], rtol=1e-6)
    # kernel_rate: the share of mask values above 0 (a kernel that is open at all): 7 of 12
    np.testing.assert_allclose(default["kernel_rate"], 7 / 12, rtol=1e-6)
    with pytest.raises(ValueError, match=r"^MwT needs a model built with mask generators \(mask_generators=True\); "
                                         r"no generator masks among \['conv1'\]$"):
        losses.mwt_terms({"conv1": MASKS}, labels)
    for name in ("alpha", "beta"):
        with pytest.raises(ValueError, match=f"^MwT weight {name} must be >= 0, got -1.0$"):
            losses.mwt_loss(**{name: -1.0})

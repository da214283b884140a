"""Training objectives as pure functions: cross-entropy, and modular terms added to it.

A *loss function* here has the signature ``loss_fn(logits, activations, labels) -> (loss,
metrics)``, where ``activations`` maps each unit group to its tapped activation
(``(batch, ..., units)``). Standard training is :func:`cross_entropy_loss`; modular training
adds terms computed on the activations, e.g. :func:`moda_loss`. The one jitted train step in
:mod:`jaxmod.train` takes either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jax.Array, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def unit_values(a: jax.Array) -> jax.Array:
    """Per-unit values of one sample's activation: conv maps reduce to mean |a| over space.

    ``(B, H, W, C) -> (B, C)``; ``(B, U)`` is returned as is. MODA's Eq. 8.
    """
    if a.ndim <= 2:
        return a
    return jnp.mean(jnp.abs(a), axis=tuple(range(1, a.ndim - 1)))


def pair_masks(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Upper-triangle (i < j) masks of same-label and different-label sample pairs."""
    n = labels.shape[0]
    upper = jnp.triu(jnp.ones((n, n), bool), k=1)
    same = labels[:, None] == labels[None, :]
    return upper & same, upper & ~same


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` where ``mask`` holds; 0 when it holds nowhere (no NaN, no gradient)."""
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cosine_similarity_matrix(a: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``S[i, j] = cos(a_i, a_j)`` for rows of ``a`` (an all-zero row has similarity 0)."""
    norm = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=-1, keepdims=True), eps * eps))  # finite gradient at 0
    unit = a / norm
    return unit @ unit.T


def moda_layer_terms(a: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """MODA's three objectives on one layer's activation, as losses to minimise.

    ``affinity``: mean of 1 - cos over same-label pairs (Eq. 4, 1 - intra-class affinity);
    ``dispersion``: mean cos over different-label pairs (Eq. 3); ``compactness``: ||a||_1 / numel
    (Eq. 6). A batch without same-label (different-label) pairs contributes 0 for that term.
    """
    values = unit_values(a)
    sim = cosine_similarity_matrix(values)
    same, diff = pair_masks(labels)
    return {
        "affinity": masked_mean(1.0 - sim, same),
        "dispersion": masked_mean(sim, diff),
        "compactness": jnp.mean(jnp.abs(values)),
    }


def moda_terms(activations: Mapping[str, jax.Array], labels: jax.Array,
               layers: Sequence[str] | None = None) -> dict[str, jax.Array]:
    """MODA's terms averaged over layers (all tapped layers unless ``layers`` is given)."""
    names = list(activations) if layers is None else list(layers)
    if not names:
        raise ValueError("MODA needs at least one tapped hidden layer")
    missing = [n for n in names if n not in activations]
    if missing:
        raise ValueError(f"layers {missing} are not tapped by the model; tapped: {sorted(activations)}")
    per_layer = [moda_layer_terms(activations[n], labels) for n in names]
    return {k: jnp.mean(jnp.stack([t[k] for t in per_layer])) for k in per_layer[0]}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def cross_entropy_loss() -> LossFn:
    """Standard training: cross-entropy alone."""

    def loss_fn(logits, activations, labels):
        del activations
        ce = cross_entropy(logits, labels)
        return ce, {"cross_entropy": ce}

    return loss_fn


def masked_cross_entropy_loss() -> LossFn:
    """Cross-entropy over the labelled steps only: labels below 0 (padded output steps) are not scored."""

    def loss_fn(logits, activations, labels):
        del activations
        valid = labels >= 0
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
        loss = jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1)
        return loss, {}

    return loss_fn


def moda_loss(alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.3,
              layers: Sequence[str] | None = None) -> LossFn:
    """MODA's Eq. 7: CE + alpha (1 - affinity) + beta dispersion + gamma compactness."""
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not value >= 0:
            raise ValueError(f"MODA weight {name} must be >= 0, got {value}")

    def loss_fn(logits, activations, labels):
        ce = cross_entropy(logits, labels)
        terms = moda_terms(activations, labels, layers)
        loss = ce + alpha * terms["affinity"] + beta * terms["dispersion"] + gamma * terms["compactness"]
        return loss, {"cross_entropy": ce, **terms}

    return loss_fn


# ---------------------------------------------------------------------------------------------
# MwT (Qi et al.): cohesion and coupling of the mask generators' per-sample kernel masks.

MWT_AVERAGING = ("class", "pair")


def mwt_layer_terms(masks: jax.Array, labels: jax.Array, averaging: str = "class") -> dict[str, jax.Array]:
    """MwT's cohesion and coupling losses on one layer's masks ``(B, kernels)`` (values in [0, 1]).

    ``averaging="class"`` is the paper's Eq. 4 and 5: cosine similarities averaged within each class
    (pairs j < k), then over the classes; averaged over each pair of classes, then over the class
    pairs. Only the classes in the batch count (Eq. 4 needs two samples of a class), and a batch
    without any such class (class pair) contributes 0. With sample weights ``1 / n_class`` both
    reduce to weighted sums over one ``(B, B)`` similarity matrix, so no class count is needed.
    ``"pair"`` is the reference code: one mean over all same-label (different-label) pairs i < j.
    All-zero masks have cosine 0.
    """
    if averaging not in MWT_AVERAGING:
        raise ValueError(f"averaging must be one of {MWT_AVERAGING}, got {averaging!r}")
    sim = cosine_similarity_matrix(masks)
    if averaging == "pair":
        same, diff = pair_masks(labels)
        return {"cohesion": masked_mean(1.0 - sim, same), "coupling": masked_mean(sim, diff)}
    eye = jnp.eye(labels.shape[0], dtype=bool)
    same = labels[:, None] == labels[None, :]
    n = jnp.sum(same, axis=1).astype(sim.dtype)  # size of each sample's class in the batch
    w = 1.0 / n
    # cohesion: per sample, its summed similarity to the rest of its class over n (n - 1); summing a
    # class's samples gives the class mean; weighting by 1 / n and dividing by the class count averages
    has_pair = n >= 2
    row_same = jnp.sum(jnp.where(same & ~eye, sim, 0.0), axis=1) / jnp.maximum(n * (n - 1.0), 1.0)
    classes_with_pair = jnp.sum(jnp.where(has_pair, w, 0.0))
    mean_within = jnp.sum(jnp.where(has_pair, row_same, 0.0)) / jnp.maximum(classes_with_pair, 1.0)
    cohesion = jnp.where(classes_with_pair > 0, 1.0 - mean_within, 0.0)
    # coupling: sum over different-label pairs of S w_a w_b is the sum over ordered class pairs of
    # their mean similarity; there are P (P - 1) ordered pairs of the P classes in the batch
    classes = jnp.sum(w)
    ordered_pairs = classes * (classes - 1.0)
    cross = jnp.sum(jnp.where(~same, sim * w[:, None] * w[None, :], 0.0))
    coupling = jnp.where(ordered_pairs > 0.5, cross / jnp.maximum(ordered_pairs, 1.0), 0.0)
    return {"cohesion": cohesion, "coupling": coupling}


def mwt_terms(activations: Mapping[str, jax.Array], labels: jax.Array,
              averaging: str = "class") -> dict[str, jax.Array]:
    """MwT's losses averaged over the masked layers (every ``mask@`` entry of ``activations``)."""
    from jaxmod.taps import is_gate_name

    names = [n for n in activations if is_gate_name(n)]
    if not names:
        raise ValueError("MwT needs a model built with mask generators (mask_generators=True); "
                         f"no generator masks among {sorted(activations)}")
    per_layer = [mwt_layer_terms(activations[n], labels, averaging) for n in names]
    terms = {k: jnp.mean(jnp.stack([t[k] for t in per_layer])) for k in per_layer[0]}
    terms["kernel_rate"] = jnp.mean(jnp.stack([jnp.mean(activations[n] > 0) for n in names]))
    return terms


def mwt_loss(alpha: float = 0.5, beta: float = 1.5, averaging: str = "class") -> LossFn:
    """MwT's Eq. 6: CE + alpha cohesion + beta coupling (cohesion = 1 - mean same-class cosine)."""
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not value >= 0:
            raise ValueError(f"MwT weight {name} must be >= 0, got {value}")
    if averaging not in MWT_AVERAGING:
        raise ValueError(f"averaging must be one of {MWT_AVERAGING}, got {averaging!r}")

    def loss_fn(logits, activations, labels):
        ce = cross_entropy(logits, labels)
        terms = mwt_terms(activations, labels, averaging)
        return ce + alpha * terms["cohesion"] + beta * terms["coupling"], {"cross_entropy": ce, **terms}

    return loss_fn

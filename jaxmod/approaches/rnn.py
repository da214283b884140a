"""Decomposing recurrent models into one module per output label (Imtiaz et al., Algorithms 1-5).

Pipeline, all vectorised (the only Python loop runs over classes, as configuration). Monitoring is one jitted
``lax.map``; sampling and the statistics run on the host (NumPy: XLA's CPU sort, which the medians need, is
about 100x slower than NumPy's); the removal rules (:func:`remove_units`, :func:`relu_keep`) are jit-able.

1. **Sampling** (:func:`sample_weights`). Positives of label ``c`` are the first ``num_positive`` samples
   labelled ``c``; negatives the first ``num_positive // (C - 1)`` samples of every other label. For
   many-output models this is done per output timestep (a sample is positive for ``c`` at step ``t`` when
   its label at ``t`` is ``c``; padded steps are never sampled), for one-output models per sample.
2. **Monitoring** (:func:`monitor`): every unit of every recurrent layer at every timestep (and every gate
   activation) for the union of the sampled inputs, in one jitted ``lax.map`` over stacked batches. A
   sample's hidden values do not depend on which selection it belongs to, so monitoring once and weighting
   afterwards is the same as the paper's per-(label, timestep) monitoring.
3. **Statistics** (:func:`class_statistics`): per label, the central tendency of ``|h|`` (mean after dropping
   observations with ``|x - median| / MAD >= 2``; all kept when the MAD is 0, as the authors' code) for
   logistic activations, or the active rate for ReLU; own-gate decomposition uses, as the authors' code,
   the rate of ``|g| >= 0.5`` for sigmoid gates and the central tendency for the candidate.
   *Rolled*: observations of every timestep pooled (for many-output models, step ``t`` contributes the
   samples selected at ``t``). *Unrolled*: one statistic per timestep.
4. **Concern identification** (:func:`remove_units`): logistic: ``d = pos - neg``; units with ``d < 0`` are
   removed, most negative first, up to ``ceil(max_remove * units)`` per layer (per gate block for own
   gates; per timestep when unrolled). ReLU: units never active on a positive are removed (same cap),
   then tangling restores units active on some negative.
5. **Channeling** (:func:`jaxmod.running.channel_head`): the output layer becomes binary per module, the
   label's column and a "negative" column that is the mean of the other columns (kernel and bias), as a head
   on the logits (the output layer is linear, so this is the same binary layer). Encoder-decoder
   translation modules (one per target language) keep the full output layer (``channel=False``) and, as
   the authors' translation scripts, decompose only the decoder layers (``encoder=False``; see
   :meth:`RnnDecomposition.for_shape`).

Modules are unit masks (:mod:`jaxmod.modules`): ``{"rnnK_h": bool[C, U] or [C, T, U]}`` (gates cut by the
hidden state) or ``{"rnnK_gates": bool[C, G, U] or [C, T, G, U]}`` (each gate by its own activation), so module
``c`` runs as the model with row ``c`` in its ``unit_masks`` collection (:func:`jaxmod.running.module_outputs`).
Rolled hidden-state modules slice physically too (``jaxmod.compose.compose(..., how="merge")``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmod import sharding
from jaxmod.checks import check_choice
from jaxmod.models.recurrent import CANDIDATE_GATES, GATES, SOWN, gate_group, recurrent_module
from jaxmod.models.recurrent import check_sequences as check_model_sequences
from jaxmod.modules import Decomposition, ModuleSet, module_set
from jaxmod.running import channel_head
from jaxmod.taps import ACTIVATIONS
from jaxmod.topology import flat_activations

MODES = ("rolled", "unrolled")
GATE_MODES = ("hidden", "own")
STATISTICS = ("auto", "logistic", "relu")
OUTLIER_MAD = 2.0  # the authors' get_mean_minus_outliers(m=2)


# ---------------------------------------------------------------------------------------------------------
# Input checks


def check_labels(model: nn.Module, x: np.ndarray, y: np.ndarray, y_valid: np.ndarray | None,
                 num_classes: int) -> np.ndarray:
    """``ValueError`` before any work for inputs the decomposition cannot use; returns ``y_valid`` filled in.

    Checks the sequences (length, vocabulary), the labels' shape (``(N,)`` per sample or ``(N, T)`` per
    output step, matching the layers' steps), labels outside ``0..num_classes-1`` on valid steps, and
    labels with no sample at all (an empty class has no module).
    """
    check_model_sequences(model, x)
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    if y.ndim not in (1, 2) or len(y) != len(x):
        raise ValueError(f"labels must be (N,) or (N, T) for {len(x)} samples, got shape {y.shape}")
    valid = np.ones(y.shape, bool) if y_valid is None else np.asarray(y_valid, bool)
    if valid.shape != y.shape:
        raise ValueError(f"y_valid has shape {valid.shape}, labels have {y.shape}")
    if y.ndim == 2:
        steps = {g: v.shape[1] for g, v in recurrent_module(model).step_valid(np.asarray(x)[:1]).items()}
        wrong = {g: t for g, t in steps.items() if t != y.shape[1]}
        if wrong:
            raise ValueError(f"per-step labels have {y.shape[1]} steps but layers {sorted(wrong)} run {wrong} steps")
    bad = valid & ((y < 0) | (y >= num_classes))
    if bad.any():
        raise ValueError(f"labels {sorted(set(y[bad].tolist()))[:5]} lie outside the output vocabulary "
                         f"0..{num_classes - 1}")
    present = np.bincount(y[valid].reshape(-1), minlength=num_classes)[:num_classes]
    empty = np.flatnonzero(present == 0).tolist()
    if empty:
        raise ValueError(f"classes {empty} have no samples; decomposition needs positives for every class")
    return valid


# ---------------------------------------------------------------------------------------------------------
# 1. Sampling


def sample_weights(y: np.ndarray, valid: np.ndarray, num_classes: int, num_positive: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative selections ``bool[C, N, ...]`` (``...`` = the label's step axis, if any).

    A label's positives are its first ``num_positive`` occurrences (per step); its negatives the first
    ``max(1, num_positive // (C - 1))`` occurrences of every other label (per step).
    """
    y = np.where(valid, y, -1)
    onehot = (y[None] == np.arange(num_classes).reshape((-1,) + (1,) * y.ndim))  # (C, N, ...)
    rank = np.cumsum(onehot, axis=1)  # occurrences so far of each label, per step
    own_rank = np.sum(rank * onehot, axis=0)  # (N, ...): rank of each sample within its own label
    num_negative = max(1, num_positive // max(1, num_classes - 1))
    positive = onehot & (own_rank[None] <= num_positive)
    negative = valid[None] & ~onehot & (own_rank[None] <= num_negative)
    return positive, negative


# ---------------------------------------------------------------------------------------------------------
# 2. Monitoring


@functools.lru_cache(maxsize=32)
def _monitor_fn(model: nn.Module, with_gates: bool):
    groups = recurrent_module(model).group_names()

    def one_batch(variables, xb):
        _, state = model.apply(variables, xb, mutable=[ACTIVATIONS, SOWN])
        hidden = flat_activations(state[ACTIVATIONS])
        gates = {g: state[SOWN][gate_group(g)] for g in groups} if with_gates else {}
        return {g: hidden[g] for g in groups}, gates

    @jax.jit
    def run(variables, xs):
        return jax.lax.map(lambda xb: one_batch(variables, xb), xs)

    return run


def monitor(model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, batch_size: int = 256,
            with_gates: bool = True) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Hidden states ``{group: (N, T, U)}`` and gate activations ``{group: (N, T, G, U)}`` of every sample,
    in one jitted ``lax.map`` over stacked batches (``with_gates=False``: hidden states only, gates ``{}``;
    XLA then neither keeps nor copies the gate activations)."""
    x = np.asarray(x)
    n = len(x)
    pad = (-n) % batch_size
    xs = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    xs = xs.reshape(-1, batch_size, *x.shape[1:])
    plain = sharding.replicate({k: v for k, v in variables.items() if k in ("params",)})
    hidden, gates = _monitor_fn(model, with_gates)(plain, sharding.shard_batch(xs, axis=1))
    unstack = lambda a: np.asarray(a).reshape(-1, *a.shape[2:])[:n]  # noqa: E731
    return {k: unstack(v) for k, v in hidden.items()}, {k: unstack(v) for k, v in gates.items()}


# ---------------------------------------------------------------------------------------------------------
# 3. Statistics


def masked_median(values: np.ndarray, weights: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """Median of the selected entries along ``axis`` (kept as size-1 axes; NumPy's even-count rule), with
    the unselected entries pushed to the end. When every reduced row selects the same number of entries (a
    rolled statistic: one selection shared by all units) one ``np.partition`` at the two middle ranks
    (linear time) suffices; otherwise one vectorised sort. NumPy, not XLA: XLA's CPU sort is about 100x
    slower than NumPy's on these arrays."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(a % values.ndim for a in axes)
    rest = [a for a in range(values.ndim) if a not in axes]
    v = np.transpose(np.where(weights, values, np.inf), rest + list(axes))
    v = v.reshape(*v.shape[: len(rest)], -1)
    shape = [1 if a in axes else values.shape[a] for a in range(values.ndim)]
    if v.shape[-1] == 0:  # nothing to reduce over
        return np.full(shape, np.nan, np.float32)
    count = np.sum(np.transpose(weights, rest + list(axes)).reshape(v.shape), axis=-1, keepdims=True)
    low_rank = np.maximum(count - 1, 0) // 2
    high_rank = np.maximum(count, 1) // 2 - (count == 0)
    if count.min() == count.max():
        lo, hi = int(low_rank.flat[0]), int(high_rank.flat[0])
        ordered = np.partition(v, sorted({lo, hi}), axis=-1)
    else:
        ordered = np.sort(v, axis=-1)
    low = np.take_along_axis(ordered, low_rank, axis=-1)
    high = np.take_along_axis(ordered, high_rank, axis=-1)
    median = np.where(count > 0, (low + high) / 2, np.nan)[..., 0]
    return median.reshape(shape)


def mean_minus_outliers(values: np.ndarray, weights: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """Mean of the selected ``values`` after dropping those with ``|x - median| / MAD >= 2`` (all kept when
    the MAD is 0), reduced over ``axis``; NaN where nothing is selected. ``weights`` (bool) broadcasts."""
    values = np.asarray(values, np.float32)
    weights = np.broadcast_to(np.asarray(weights, bool), values.shape)
    median = masked_median(values, weights, axis)
    deviation = np.abs(values - median)
    mad = masked_median(deviation, weights, axis)
    score = np.where(mad > 0, deviation / np.where(mad > 0, mad, 1.0), 0.0)
    kept = weights & (score < OUTLIER_MAD)
    total = np.sum(np.where(kept, values, 0.0), axis=axis)
    count = np.sum(kept, axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def rate(values: np.ndarray, weights: np.ndarray, axis: int | tuple[int, ...], threshold: float = 0.0,
         inclusive: bool = False) -> np.ndarray:
    """Fraction of selected observations above ``threshold`` (``>=`` when ``inclusive``); NaN if none."""
    values = np.asarray(values)
    weights = np.broadcast_to(np.asarray(weights, bool), values.shape)
    active = values >= threshold if inclusive else values > threshold
    count = np.sum(weights, axis=axis)
    return np.where(count > 0, np.sum(active & weights, axis=axis) / np.maximum(count, 1), np.nan)


def gather_selection(selection: np.ndarray, multiple: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``bool[C, N, T]`` -> per class and step the selected sample indices ``int[C, T, S]`` and which of
    them are real ``bool[C, T, S]`` (``S`` = the largest selection, rounded up to ``multiple`` so that the
    jitted statistics compile once for all classes)."""
    c, n, t = selection.shape
    size = int(selection.sum(axis=1).max())
    size = max(1, min(n, -(-size // multiple) * multiple))
    order = np.argsort(~selection, axis=1, kind="stable")[:, :size]  # selected samples first, in order
    chosen = np.take_along_axis(selection, order, axis=1)
    return order.transpose(0, 2, 1), chosen.transpose(0, 2, 1)


def _statistic(values: np.ndarray, index: np.ndarray, weights: np.ndarray, rolled: bool, kind: str) -> np.ndarray:
    """``values`` ``(N, T, K)``; ``index``/``weights`` ``(T, S)``: a statistic ``(K,)`` (rolled) or ``(T, K)``."""
    steps = np.arange(values.shape[1])[:, None]
    v = np.abs(values[index, steps])  # (T, S, K): the observations of each step
    axis = (0, 1) if rolled else 1
    w = weights[..., None]
    if kind == "logistic":
        return mean_minus_outliers(v, w, axis)
    if kind == "relu":
        return rate(v, w, axis)
    return rate(v, w, axis, threshold=0.5, inclusive=True)  # "gate": |sigmoid| >= 0.5


def pooled_statistic(observations: np.ndarray, kind: str) -> np.ndarray:
    """The statistic of every unit over its observations ``(observations, K)`` (all selected) -> ``(K,)``.
    Logistic: :func:`mean_minus_outliers` with every observation selected, so the two medians are
    linear-time ``np.partition`` calls at fixed ranks and no selection mask is carried."""
    obs = np.ascontiguousarray(np.abs(np.asarray(observations, np.float32)).T)  # (K, n): reductions along memory
    n = obs.shape[1]
    if n == 0:
        return np.full(obs.shape[0], np.nan, np.float32)
    if kind != "logistic":
        threshold, inclusive = (0.0, False) if kind == "relu" else (0.5, True)  # "gate": |sigmoid| >= 0.5
        return np.mean(obs >= threshold if inclusive else obs > threshold, axis=1)
    ranks = sorted({(n - 1) // 2, n // 2})

    def median(a: np.ndarray) -> np.ndarray:
        part = np.partition(a, ranks, axis=1)
        return (part[:, (n - 1) // 2] + part[:, n // 2]) / 2

    deviation = np.abs(obs - median(obs)[:, None])
    mad = median(deviation)[:, None]
    kept = np.where(mad > 0, deviation / np.where(mad > 0, mad, 1.0) < OUTLIER_MAD, True)
    return np.sum(obs * kept, axis=1) / np.sum(kept, axis=1)


def class_statistics(values: np.ndarray, selection: np.ndarray, rolled: bool, kind: str) -> np.ndarray:
    """Per class: ``selection`` ``bool[C, N, T]`` over ``values`` ``(N, T, K)`` -> ``[C, K]`` (rolled) or
    ``[C, T, K]`` (unrolled), vectorised over samples, steps and units (a loop over classes as config).
    Rolled: the class's selected (sample, step) observations gathered by one boolean index, then every unit
    at once (equal counts per unit, so the medians are linear-time partitions). Unrolled: one statistic per
    step, the steps' selections padded to one size."""
    v = np.asarray(values, np.float32)
    selection = np.asarray(selection, bool)
    if rolled:
        return np.stack([pooled_statistic(v[sel], kind) for sel in selection])
    index, weights = gather_selection(selection)
    return np.stack([_statistic(v, i, w, rolled, kind) for i, w in zip(index, weights, strict=True)])


# ---------------------------------------------------------------------------------------------------------
# 4. Concern identification


def removal_cap(units: int, max_remove: float) -> int:
    """Most units one layer (or gate block) may lose: the authors' loop stops once ``removed / units``
    reaches ``max_remove``, so it removes ``ceil(max_remove * units)`` at most."""
    return int(math.ceil(max_remove * units - 1e-9))


def remove_units(difference: jax.Array, max_remove: float) -> jax.Array:
    """Keep mask from ``d = pos - neg`` (last axis = units): remove ``d < 0``, most negative first, at most
    ``ceil(max_remove * units)`` along the last axis. NaN (no observation) keeps the unit. Jit-able."""
    d = jnp.asarray(difference)
    d = jnp.where(jnp.isnan(d), jnp.inf, d)
    order = jnp.argsort(d, axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1, stable=True)  # each unit's place, most negative first
    return ~((d < 0) & (rank < removal_cap(d.shape[-1], max_remove)))


def relu_keep(positive_rate: jax.Array, negative_rate: jax.Array, max_remove: float) -> jax.Array:
    """Algorithm 5: remove units never active on a positive (capped), then restore units active on some
    negative (tangling identification). Jit-able."""
    never = jnp.nan_to_num(jnp.asarray(positive_rate), nan=1.0) == 0
    removed = ~remove_units(jnp.where(never, -1.0, 0.0), max_remove)
    tangled = jnp.nan_to_num(jnp.asarray(negative_rate), nan=0.0) > 0
    return ~(removed & ~tangled)


# ---------------------------------------------------------------------------------------------------------
# The approach


@dataclasses.dataclass(frozen=True)
class RnnDecomposition:
    """Imtiaz et al.'s decomposition of a trained recurrent model (post-training: no modular loss).

    ``mode``: ``rolled`` (one mask for all timesteps) or ``unrolled`` (a mask per timestep); ``gates``:
    ``hidden`` (remove a unit from every gate by its hidden state) or ``own`` (each gate by its own
    activation); ``max_remove``: the removal cap per layer (0.2, the paper's choice); ``statistic``:
    ``logistic`` (central tendency), ``relu`` (active rates) or ``auto`` (from the model's activation);
    ``channel``: binary output heads (False for translation modules, one per target language);
    ``encoder``: also decompose the encoder layers of an encoder-decoder model (False: only the decoder
    layers, as the authors' translation scripts do; the encoder stays whole in every module).
    :meth:`for_shape` gives the authors' settings per input-output shape.
    """

    mode: str = "unrolled"
    gates: str = "hidden"
    max_remove: float = 0.2
    num_positive: int = 500
    statistic: str = "auto"
    channel: bool = True
    encoder: bool = True
    batch_size: int = 256
    name: str = dataclasses.field(default="rnn", init=False)

    @classmethod
    def for_shape(cls, shape: str, **overrides: Any) -> RnnDecomposition:
        """The decomposition of a model of ``shape`` with the authors' settings: classifiers channel their
        output layer (500 positives per label); translation modules (encoder-decoder, one per target
        language) keep the output layer, decompose only the decoder layers and sample 1000 positives.
        ``overrides`` (``None`` values ignored) replace any field."""
        translation = shape == "encoder_decoder"
        fields = {"channel": not translation, "encoder": not translation, "num_positive": 1000 if translation else 500}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("gates", self.gates, GATE_MODES)
        check_choice("statistic", self.statistic, STATISTICS)
        if not 0.0 <= self.max_remove <= 1.0:
            raise ValueError(f"max_remove must be in [0, 1], got {self.max_remove}")
        if self.num_positive < 1 or self.batch_size < 1:
            raise ValueError("num_positive and batch_size must be >= 1")

    def training_loss(self) -> None:
        return None

    def config(self) -> dict[str, Any]:
        return {"mode": self.mode, "gates": self.gates, "max_remove": self.max_remove,
                "num_positive": self.num_positive, "statistic": self.statistic, "channel": self.channel,
                "encoder": self.encoder}

    def kind(self, model: nn.Module) -> str:
        """The statistic used for hidden states: ``logistic`` or ``relu``."""
        if self.statistic != "auto":
            return self.statistic
        return "relu" if recurrent_module(model).activation == "relu" else "logistic"

    def decompose(self, model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                  num_classes: int, y_valid: np.ndarray | None = None) -> Decomposition:
        """One module per label of a zoo recurrent model. ``y``: ``(N,)`` one label per sample (Algorithm 1,
        also the target language of a translation pair) or ``(N, T)`` one label per output step (Algorithm 2)
        with ``y_valid``."""
        rnn = recurrent_module(model)
        if self.channel and model.num_classes != num_classes:
            raise ValueError(f"channeling needs one module per output class ({model.num_classes}), "
                             f"got num_classes={num_classes}")
        x = np.asarray(x)
        valid = check_labels(model, x, y, y_valid, num_classes)
        y = np.asarray(y)
        positive, negative = sample_weights(y, valid, num_classes, self.num_positive)
        pool = np.flatnonzero((positive | negative).reshape(num_classes, len(x), -1).any(axis=(0, 2)))
        hidden, gates = monitor(model, variables, x[pool], self.batch_size, with_gates=self.gates == "own")
        steps = rnn.step_valid(x[pool])
        rolled = self.mode == "rolled"
        kind = self.kind(model)
        whole = set(rnn.group_names()[: rnn.num_layers]) if (
            rnn.shape == "encoder_decoder" and not self.encoder) else set()  # layers every module keeps whole
        masks, stats = {}, {}
        for group, h in hidden.items():
            step_ok = steps[group]
            if y.ndim == 1:  # a sample's label holds at each of its (unpadded) steps
                pos_w = positive[:, pool, None] & step_ok[None]
                neg_w = negative[:, pool, None] & step_ok[None]
            else:
                pos_w, neg_w = positive[:, pool] & step_ok[None], negative[:, pool] & step_ok[None]
            if self.gates == "hidden":
                pos = class_statistics(h, pos_w, rolled, kind)
                neg = class_statistics(h, neg_w, rolled, kind)
                keep = relu_keep(pos, neg, self.max_remove) if kind == "relu" else remove_units(pos - neg,
                                                                                              self.max_remove)
                masks[group] = np.asarray(keep) | (group in whole)
            else:
                pos, neg, keep = self._gate_keep(rnn, gates[group], pos_w, neg_w, rolled, kind)
                masks[gate_group(group)] = np.asarray(keep) | (group in whole)
            stats[f"{group}/positive"], stats[f"{group}/negative"] = pos, neg
        head = channel_head(model.num_classes, range(num_classes)) if self.channel else None
        modules = module_set(self, model, variables, x, units=masks, head=head, classes=range(num_classes))
        return Decomposition(modules, statistics=stats)

    def _gate_keep(self, model: nn.Module, g: np.ndarray, pos_w: np.ndarray, neg_w: np.ndarray,
                   rolled: bool, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each gate by its own activation: ``(N, T, G, U)`` -> statistics and keep ``[C, (T,) G, U]``."""
        n, t, num_g, u = g.shape
        flat = g.reshape(n, t, num_g * u)
        candidate = np.array([name in CANDIDATE_GATES[model.cell] for name in GATES[model.cell]])
        cand_kind = kind
        pos_c = class_statistics(flat, pos_w, rolled, cand_kind)
        neg_c = class_statistics(flat, neg_w, rolled, cand_kind)
        pos_s = class_statistics(flat, pos_w, rolled, "gate")
        neg_s = class_statistics(flat, neg_w, rolled, "gate")
        shape = pos_c.shape[:-1] + (num_g, u)
        is_cand = candidate[:, None]
        pos = np.where(is_cand, pos_c.reshape(shape), pos_s.reshape(shape))
        neg = np.where(is_cand, neg_c.reshape(shape), neg_s.reshape(shape))
        if kind == "relu":
            keep = jnp.where(is_cand, relu_keep(pos, neg, self.max_remove), remove_units(pos - neg, self.max_remove))
        else:
            keep = remove_units(pos - neg, self.max_remove)
        return pos, neg, keep


# ---------------------------------------------------------------------------------------------------------
# Running modules, composition, Jaccard


def routed_predictions(outputs: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Translation: each sample decoded by the module of its group (target language): ``int[N, T]``."""
    groups = np.asarray(groups)
    if groups.shape != (outputs.shape[1],) or groups.min() < 0 or groups.max() >= outputs.shape[0]:
        raise ValueError(f"groups must be (N,) module indices in 0..{outputs.shape[0] - 1}")
    chosen = outputs[groups, np.arange(len(groups))]
    return np.argmax(chosen, axis=-1)


def vocab_fingerprint(vocab: Sequence[str] | None, size: int | None = None) -> str:
    """A short SHA-256 of an input vocabulary and the model's vocabulary size (``""`` for feature inputs):
    a module set's ``meta.input_vocab``, so that modules of models that read tokens differently are never
    composed together (:func:`jaxmod.reuse.check_same_inputs`)."""
    if vocab is None:
        return ""
    return hashlib.sha256(("\n".join(vocab) + f"\n#{size}").encode()).hexdigest()[:16]


def module_model_jaccard(model: nn.Module, variables: Mapping[str, Any], modules: ModuleSet) -> np.ndarray:
    """Jaccard index between each module and the model, over the recurrent and output weights (as the
    authors' code, the embedding is left out): a module is a subset of the model, so the index is the
    fraction of those weights it keeps (a channeled output layer counts as the one column it keeps, an
    unchanneled one, as translation modules have, keeps every column of its kept units). For
    unrolled modules the index is the mean over timesteps of the per-step fraction, per layer."""
    model = recurrent_module(model)
    params = variables["params"]
    units = {k: np.asarray(v, float) for k, v in modules.units.items()}
    groups = model.group_names()
    layers = model.layer_names()
    g = len(GATES[model.cell])
    num_modules = modules.num_modules
    kept = np.zeros(num_modules)
    total = 0.0
    prev_rows = None  # kept units of the previous group per module (and step)
    for i, (group, layer) in enumerate(zip(groups, layers, strict=True)):
        p = params[layer]
        in_dim = p["kernel"].shape[0]
        u = p["recurrent_kernel"].shape[0]
        biases = 2 if "recurrent_bias" in p else 1
        if group in units:
            unit = units[group]  # (M, [T,] U)
            cols = g * unit.sum(-1)
            rows_u = unit.sum(-1)
        else:
            gate = units[gate_group(group)]  # (M, [T,] G, U)
            cols = gate.sum((-1, -2))
            rows_u = np.full(cols.shape, float(u))
        rows_in = float(in_dim) if prev_rows is None else _align(prev_rows, cols)
        count = cols * (rows_in + rows_u + biases)
        kept += count.reshape(num_modules, -1).mean(axis=1)
        total += g * u * (in_dim + u + biases)
        prev_rows = rows_u
        if model.returns_last_step_only(i) and prev_rows.ndim == 2:
            prev_rows = prev_rows[:, -1]
    out_rows = prev_rows.reshape(num_modules, -1).mean(axis=1)
    columns = 1 if modules.votes else params["logits"]["kernel"].shape[-1]
    kept += (out_rows + 1) * columns
    total += params["logits"]["kernel"].size + params["logits"]["bias"].size
    return kept / total


def _align(rows: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Previous layer's kept units, broadcast to this layer's (module, step) shape."""
    if rows.shape == like.shape:
        return rows
    if rows.ndim == 1:
        return np.broadcast_to(rows.reshape((-1,) + (1,) * (like.ndim - 1)), like.shape)
    return np.broadcast_to(rows.mean(axis=1).reshape((-1,) + (1,) * (like.ndim - 1)), like.shape)

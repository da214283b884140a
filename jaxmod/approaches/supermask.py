"""Supermask decomposition and recomposition (Kingetsu, Kobayashi, Suzuki).

A trained N-class model is frozen. Each class gets a *module*: a supermask over the model's edge
weights (every ``kernel`` leaf of ``params``: dense and conv weights) and a *grafting layer*, a
``Dense(N -> 2)`` after the model's logits that says "my class" or "not my class".

* **Edge-popup mask** (:func:`top_k_mask`): a score per weight (Kaiming-normal initialisation); the
  forward pass keeps the top ``k`` fraction of ``|score|`` in each layer (the edge-popup rule, per
  layer, ``numel - floor((1 - k) * numel)`` kept); the backward pass is straight-through (the gradient
  of the mask is passed to ``|score|`` unchanged). The weights never change.
* **Module stemming** (:func:`stemming_loss`, Eq. 1): ``alpha`` times the mean over all scores of
  ``|S_c - S_avg|^p``, where ``S_avg`` is the average of all modules' scores at the end of the previous
  epoch; **initial score sharing** gives every module the same initial scores.
* **Module co-training** (Algorithm 1, method B): all modules train together in one jitted step (a
  ``vmap`` over the module axis; one epoch is one ``lax.scan``). Epoch 1 has no stemming term.
* **Recomposition** (:func:`jaxmod.compose.compose`, modules with a head vote): the union of the chosen
  classes' supermasks is the deployed subnetwork; each module runs its own supermask and grafting layer on it
  and the most confident positive output wins. :func:`jaxmod.metrics.union_size` is the paper's RPs.

Modules are weight masks (:mod:`jaxmod.modules`): a tree shaped like ``params`` whose ``kernel`` leaves are
``bool[num_modules, *kernel_shape]`` and whose other leaves (biases, batch-norm scale and bias) are ``None``
(:func:`weight_masks`). The grafting layers are the module set's ``head``, ``{"kernel": [M, N, 2], "bias":
[M, 2]}``, column 1 "my class".

Batch norm (``Supermask.batch_norm``): by default ("module") co-training runs the masked model as PyTorch's
``model.train()`` does (batch statistics, dropout on; the model's variables never change) and each module
then gets its own running statistics (:func:`module_batch_stats`, the set's ``state["batch_stats"]``),
SupSup's per-task batch norm; a 10%-per-layer subnetwork normalised by the full model's statistics passes no
signal. "running": inference mode throughout. Recomposed modules always run in inference mode (dropout off).

Co-training state is checkpointed per epoch when ``train_modules``/``decompose`` get a ``workdir``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct, traverse_util

from jaxmod import sharding, train
from jaxmod.checks import check_choice
from jaxmod.data import check_every_class_present, check_labels, epoch_seed
from jaxmod.metrics.modules import element_statistics
from jaxmod.models import check_inputs
from jaxmod.modules import Decomposition, check_class_list, data_fingerprint, fingerprint, json_normal, module_set
from jaxmod.running import apply_weight_mask, head_logits

MASKED_LEAF = "kernel"
# "module": co-train with batch statistics, then give each module its own running statistics (SupSup's
# per-task batch norm); "running": the frozen model in inference mode throughout (the base statistics).
BATCH_NORM_MODES = ("module", "running")

Path = tuple[str, ...]


# ---------------------------------------------------------------------------
# The edge-popup mask and the stemming loss


def kept_count(size: int, k: float) -> int:
    """Weights an edge-popup layer of ``size`` weights keeps: ``size - floor((1 - k) * size)``."""
    check_fraction(k)
    return size - int((1 - k) * size)


def check_fraction(k: float) -> None:
    """``ValueError`` unless ``0 < k <= 1`` (the fraction of weights a supermask keeps)."""
    if isinstance(k, bool) or not isinstance(k, (int, float, np.floating, np.integer)) or not 0 < k <= 1:
        raise ValueError(f"k (the fraction of weights each supermask keeps) must be in (0, 1], got {k!r}")


def hard_top_k_rows(scores: jax.Array, k: float) -> jax.Array:
    """``bool`` masks of the ``kept_count`` largest ``|scores|`` of each row (leading axis; ties: lower index).

    The same masks as ``lax.top_k`` plus a scatter, found without sorting: the bit patterns of
    non-negative floats are ordered like their values (and below 2^31), so each row's k-th largest value is
    a 31-step bisection over int32 thresholds, each step one compare-and-count over the rows; a second
    bisection over positions keeps the first ties at that value, run only when some row has more ties at its
    threshold than it keeps (one ``lax.cond`` for all rows; with continuous scores almost never). No sort,
    scatter or cumsum (all slow on the CPU). Call it on the stacked module axis rather than under ``vmap``
    (``vmap`` turns the ``cond`` into computing both branches).
    """
    rows = scores.shape[0]
    bits = jax.lax.bitcast_convert_type(jnp.abs(scores).astype(jnp.float32), jnp.int32).reshape(rows, -1)
    size = bits.shape[1]
    kept = kept_count(size, k)

    def bisect(_, bounds):  # invariant: count(bits >= lo) >= kept > count(bits >= hi), per row
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits >= mid[:, None], axis=1) >= kept
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    hi = jnp.max(bits, axis=1)
    lo, _ = jax.lax.fori_loop(0, 31, bisect, (jnp.zeros_like(hi), hi + 1))
    above = bits > lo[:, None]
    ties = bits == lo[:, None]
    need = kept - jnp.sum(above, axis=1)  # >= 1 ties at the k-th value are kept: the first ``need`` by index
    position = jnp.arange(size, dtype=jnp.int32)

    def first_ties():
        def step(_, bounds):  # invariant: count(ties before lo) < need <= count(ties before hi)
            lo_i, hi_i = bounds
            mid = lo_i + (hi_i - lo_i) // 2
            short = jnp.sum(ties & (position < mid[:, None]), axis=1) < need
            return jnp.where(short, mid, lo_i), jnp.where(short, hi_i, mid)

        _, end = jax.lax.fori_loop(0, max(1, math.ceil(math.log2(size + 1))), step,
                                   (jnp.zeros(rows, jnp.int32), jnp.full(rows, size, jnp.int32)))
        return above | (ties & (position < end[:, None]))

    every_tie_kept = jnp.all(jnp.sum(ties, axis=1) == need)
    return jax.lax.cond(every_tie_kept, lambda: above | ties, first_ties).reshape(scores.shape)


def hard_top_k(scores: jax.Array, k: float) -> jax.Array:
    """``bool`` mask of the ``kept_count`` largest ``|scores|`` of one layer (ties: lower index); see
    :func:`hard_top_k_rows`."""
    return hard_top_k_rows(scores[None], k)[0]


def stacked_top_k_masks(scores: Any, k: float) -> Any:
    """Straight-through edge-popup masks (float 0/1, see :func:`top_k_mask`) of stacked scores (leading module
    axis), every layer's top-k found for all modules at once."""

    def one(s):
        magnitude = jnp.abs(s)
        hard = jax.lax.stop_gradient(hard_top_k_rows(s, k).astype(s.dtype))
        return hard + (magnitude - jax.lax.stop_gradient(magnitude))

    return jax.tree.map(one, scores)


def top_k_mask(scores: jax.Array, k: float) -> jax.Array:
    """Float 0/1 edge-popup mask of one layer with a straight-through gradient.

    Forward: 1 for the top ``k`` fraction of ``|scores|``, else 0. Backward: the mask's gradient
    reaches ``|scores|`` unchanged (so ``scores`` get it times ``sign(scores)``, as in edge-popup).
    """
    magnitude = jnp.abs(scores)
    hard = jax.lax.stop_gradient(hard_top_k(scores, k).astype(scores.dtype))
    return hard + (magnitude - jax.lax.stop_gradient(magnitude))


def stemming_loss(scores: Any, average: Any, p: float) -> jax.Array:
    """Eq. 1's regulariser without ``alpha``: mean over every score of ``|S - S_avg|^p``.

    The paper's ``1 / (L x M x N)`` is one over the number of scores when layers are equal; with
    unequal layers we divide by the total number of scores, so every score is pulled equally.
    ``|d|^p`` is written ``(d * sign(d))^p`` so that its gradient at ``d = 0`` is 0.
    """
    leaves = jax.tree.leaves(scores)
    total = sum(leaf.size for leaf in leaves)
    terms = jax.tree.map(lambda s, a: jnp.sum(jnp.power((s - a) * jnp.sign(s - a), p)), scores, average)
    return sum(jax.tree.leaves(terms)) / total


# ---------------------------------------------------------------------------
# Mask trees


def masked_paths(params: Mapping[str, Any]) -> tuple[Path, ...]:
    """Paths of the leaves a supermask covers: every ``kernel`` (dense and conv weights)."""
    return tuple(path for path in traverse_util.flatten_dict(dict(params)) if path[-1] == MASKED_LEAF)


def mask_template(params: Mapping[str, Any]) -> dict[str, Any]:
    """The masked leaves of ``params`` as a nested dict (the shape every mask tree has)."""
    flat = traverse_util.flatten_dict(dict(params))
    return traverse_util.unflatten_dict({path: flat[path] for path in masked_paths(params)})


def masked_weight_count(params: Mapping[str, Any]) -> int:
    """Number of weights a supermask covers (the denominator of RPs and of module sizes)."""
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(mask_template(params))))


def weight_masks(params: Mapping[str, Any], masks: Mapping[str, Any]) -> dict[str, Any]:
    """Stacked kernel masks as a module set's ``weights``: shaped like ``params``, ``None`` for every leaf a
    supermask does not cover (biases, batch-norm scale and bias)."""
    flat_masks = traverse_util.flatten_dict(dict(masks))
    flat = traverse_util.flatten_dict(dict(params))
    unknown = set(flat_masks) - set(flat)
    if unknown:
        raise ValueError(f"mask leaves {sorted('/'.join(p) for p in unknown)} are not parameters")
    return traverse_util.unflatten_dict({path: flat_masks.get(path) for path in flat})


# ---------------------------------------------------------------------------
# Co-training


@struct.dataclass
class CotrainState:
    """What co-training carries: scores and grafting layers (leading module axis) and their optimizers."""

    step: jax.Array
    scores: Any
    graft: Any
    score_opt: Any
    graft_opt: Any


def init_scores(params: Mapping[str, Any], num_modules: int, key: jax.Array, share: bool) -> dict[str, Any]:
    """Kaiming-normal (ReLU gain, fan-in) scores shaped like the masked leaves, stacked per module.

    ``share``: every module starts from the same draw (initial score sharing); otherwise each module
    draws its own.
    """
    template = mask_template(params)
    init = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    flat = traverse_util.flatten_dict(template)
    keys = jax.random.split(key, len(flat))
    out = {}
    for leaf_key, (path, leaf) in zip(keys, flat.items(), strict=True):
        shape = np.shape(leaf)
        if share:
            out[path] = jnp.broadcast_to(init(leaf_key, shape, jnp.float32), (num_modules, *shape))
        else:
            out[path] = jax.vmap(lambda k, s=shape: init(k, s, jnp.float32))(jax.random.split(leaf_key, num_modules))
    return traverse_util.unflatten_dict(out)


def init_graft(num_classes: int, classes: Sequence[int]) -> dict[str, jax.Array]:
    """Grafting layers ``Dense(N -> 2)`` initialised as a channeling: "positive" reads the module's own
    logit, "negative" the mean of the others (the paper leaves the initialisation open)."""
    own = jax.nn.one_hot(jnp.asarray(classes), num_classes)
    kernel = jnp.stack([(1.0 - own) / (num_classes - 1), own], axis=-1)  # [M, N, 2]
    return {"kernel": kernel, "bias": jnp.zeros((len(classes), 2))}


def module_forward(model: nn.Module, variables: Mapping[str, Any], mask: Mapping[str, Any],
                   graft: Mapping[str, jax.Array], x: jax.Array, batch_stats: Any = None) -> jax.Array:
    """One module's two-way output: the masked frozen model in inference mode, then its grafting layer.

    ``batch_stats``: the module's own batch-norm running statistics (``state["batch_stats"]``, see
    :func:`module_batch_stats`) in place of the base model's; ``None`` keeps the base model's.
    """
    params = apply_weight_mask(variables["params"], mask)
    frozen = {**variables, "params": params}
    if batch_stats is not None:
        frozen["batch_stats"] = batch_stats
    logits = model.apply(frozen, x, train=False)
    return head_logits(graft, logits)


def train_mode_logits(model: nn.Module, variables: Mapping[str, Any], mask: Mapping[str, Any], x: jax.Array,
                      rng: jax.Array) -> jax.Array:
    """The masked model as PyTorch's ``model.train()`` runs it: batch norm normalises by the batch's own
    statistics (the updated running statistics are discarded: the model stays frozen), dropout is on."""
    params = apply_weight_mask(variables["params"], mask)
    logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                            rngs={"dropout": rng})
    return logits


def uses_batch_statistics(variables: Mapping[str, Any], batch_norm: str) -> bool:
    """Whether co-training runs batch norm on batch statistics (``batch_norm="module"`` and the model has some)."""
    return batch_norm == "module" and bool(jax.tree.leaves(variables.get("batch_stats", {})))


def _objective(model, variables, p, train_bn, scores, masks, graft, target, average, alpha, x, rng):
    if train_bn:
        out = head_logits(graft, train_mode_logits(model, variables, masks, x, rng))
    else:
        out = module_forward(model, variables, masks, graft, x)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, target))
    stem = stemming_loss(scores, average, p)
    accuracy = jnp.mean(jnp.argmax(out, -1) == target)
    return ce + alpha * stem, jnp.stack([ce, stem, accuracy])


def make_epoch_fn(model: nn.Module, k: float, p: float, score_opt: optax.GradientTransformation,
                  graft_opt: optax.GradientTransformation, train_bn: bool = False, seed: int = 0,
                  module_chunk: int = 0):
    """``epoch(state, variables, x, y, order, classes, average, alpha) -> (state, metrics[steps, M, 3])``.

    One jitted ``lax.scan`` over the epoch's batches (``order`` is ``int[steps, batch]`` into ``x``);
    each step ``vmap``s the module objective over the module axis, with the batch shared. ``train_bn``:
    batch norm on batch statistics and dropout on (:func:`train_mode_logits`; dropout keys from ``seed``
    and the step, shared by the modules), else the frozen model in inference mode. ``module_chunk`` > 0:
    the modules run ``module_chunk`` at a time (``lax.map``; the gradient is the same) instead of all in
    one ``vmap``: a vmapped conv with per-module kernels becomes a grouped convolution, which XLA's CPU
    backend runs far slower than the same convolutions one after another.
    """

    def step(carry, index, variables, x, y, classes, average, alpha):
        state = carry
        xb, yb = x[index], y[index]
        targets = (yb[None, :] == classes[:, None]).astype(jnp.int32)
        rng = jax.random.fold_in(jax.random.key(seed), state.step)

        def total(scores, graft):
            masks = stacked_top_k_masks(scores, k)  # all modules' top-k at once (straight-through)
            objective = functools.partial(_objective, model, variables, p, train_bn)
            if module_chunk:
                losses, metrics = jax.lax.map(lambda a: objective(*a, average, alpha, xb, rng),
                                              (scores, masks, graft, targets), batch_size=module_chunk)
            else:
                losses, metrics = jax.vmap(objective, in_axes=(0, 0, 0, 0, None, None, None, None))(
                    scores, masks, graft, targets, average, alpha, xb, rng)
            return jnp.sum(losses), metrics  # modules are independent: the sum's gradient is per module

        (_, metrics), (g_scores, g_graft) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
            state.scores, state.graft)
        s_updates, score_opt_state = score_opt.update(g_scores, state.score_opt, state.scores)
        g_updates, graft_opt_state = graft_opt.update(g_graft, state.graft_opt, state.graft)
        state = state.replace(step=state.step + 1, scores=optax.apply_updates(state.scores, s_updates),
                              graft=optax.apply_updates(state.graft, g_updates), score_opt=score_opt_state,
                              graft_opt=graft_opt_state)
        return state, metrics

    def epoch(state, variables, x, y, order, classes, average, alpha):
        body = functools.partial(step, variables=variables, x=x, y=y, classes=classes, average=average, alpha=alpha)
        return jax.lax.scan(body, state, order)

    return jax.jit(epoch, donate_argnums=0)


class CotrainTask:
    """Supermask co-training as a :class:`jaxmod.train.TrainTask`: the state is the modules' scores and grafting
    layers with their optimizers; an epoch is one jitted ``lax.scan`` (:func:`make_epoch_fn`), compiled ahead
    of the first epoch (``compile_seconds``) so that the epochs' times are training alone."""

    def __init__(self, approach: Supermask, model: nn.Module, variables: Mapping[str, Any], x: np.ndarray,
                 y: np.ndarray, num_classes: int, classes: Sequence[int]) -> None:
        self.approach, self.model = approach, model
        self.variables = sharding.replicate(jax.tree.map(jnp.asarray, dict(variables)))
        self.x = sharding.replicate(jnp.asarray(np.asarray(x, np.float32)))
        self.y = sharding.replicate(jnp.asarray(np.asarray(y, np.int32)))
        self.num_classes, self.classes = num_classes, tuple(classes)
        steps = len(x) // approach.batch_size
        self.score_opt = approach._optimizer(approach.score_lr, approach.epochs * steps)
        self.graft_opt = approach._optimizer(approach.graft_lr, approach.epochs * steps)
        self.class_array = jnp.asarray(self.classes, jnp.int32)
        self.compile_seconds = 0.0
        self._epoch_fn = None

    def init(self) -> CotrainState:
        a = self.approach
        scores = init_scores(self.variables["params"], len(self.classes), jax.random.key(a.seed), a.share_init)
        graft = init_graft(self.num_classes, self.classes)
        state = CotrainState(step=jnp.zeros((), jnp.int32), scores=scores, graft=graft,
                             score_opt=self.score_opt.init(scores), graft_opt=self.graft_opt.init(graft))
        return sharding.shard_modules(state, len(self.classes))  # data parallel: each device trains its modules

    def _compiled(self, state: CotrainState, order: jax.Array, average: Any) -> Any:
        if self._epoch_fn is None:
            a = self.approach
            start = time.perf_counter()
            train_bn = uses_batch_statistics(self.variables, a.batch_norm)
            self._epoch_fn = make_epoch_fn(self.model, a.k, a.p, self.score_opt, self.graft_opt, train_bn, a.seed,
                                           a.module_chunk).lower(
                state, self.variables, self.x, self.y, order, self.class_array, average, jnp.float32(0)).compile()
            self.compile_seconds = time.perf_counter() - start
        return self._epoch_fn

    def run_epoch(self, state: CotrainState, x: np.ndarray, y: np.ndarray, order: np.ndarray, epoch: int,
                  bar: Any) -> tuple[CotrainState, dict[str, Any]]:
        """One epoch. Algorithm 1: the first epoch trains without stemming; later ones pull towards the average
        of all modules' scores at the end of the previous epoch."""
        del x, y  # the task holds the samples on the device
        a = self.approach
        alpha = a.alpha if (a.stemming and epoch > 0) else 0.0
        order = jnp.asarray(order)
        average = jax.tree.map(lambda s: jnp.mean(s, axis=0), state.scores)
        epoch_fn = self._compiled(state, order, average)
        start = time.perf_counter()
        state, metrics = epoch_fn(state, self.variables, self.x, self.y, order, self.class_array, average,
                                  jnp.float32(alpha))
        jax.block_until_ready(state)
        seconds = time.perf_counter() - start
        bar.update(len(order))
        means = np.asarray(jnp.mean(metrics, axis=0))  # [M, 3]
        pairs = element_statistics(hard_masks(state.scores, a.k))
        nan_free = lambda v: None if math.isnan(v) else v  # noqa: E731 - a single module has no pairs
        return state, {"alpha": alpha, "cross_entropy": means[:, 0].tolist(), "stemming": means[:, 1].tolist(),
                       "train_accuracy": means[:, 2].tolist(), "two_class_rps": nan_free(pairs["two_class_union_mean"]),
                       "mean_jaccard": nan_free(pairs["mean_jaccard"]), "train_seconds": seconds}


def cotrain_identity(approach: Any, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                     classes: Sequence[int]) -> dict[str, Any]:
    """What a co-training checkpoint must match to be resumed: configuration, classes, base model and data."""
    return json_normal({"config": approach.config(), "classes": list(classes),
                        "base_fingerprint": fingerprint(variables),
                        "data_sha256": data_fingerprint(np.asarray(x, np.float32), np.asarray(y, np.int32))})


@functools.partial(jax.jit, static_argnums=1)
def hard_masks(scores: Any, k: float) -> Any:
    """``bool`` masks of stacked scores (leading module axis), layer by layer."""
    return jax.tree.map(lambda s: hard_top_k_rows(s, k), scores)


@functools.partial(jax.jit, static_argnums=0)
def _recalibrate(model, variables, masks, x, order, rng):
    def one_module(mask):
        params = apply_weight_mask(variables["params"], mask)

        def body(stats, index):
            _, updated = model.apply({**variables, "params": params, "batch_stats": stats}, x[index], train=True,
                                     mutable=["batch_stats"], rngs={"dropout": rng})
            return updated["batch_stats"], None

        return jax.lax.scan(body, variables["batch_stats"], order)[0]

    return jax.vmap(one_module)(masks)


def module_batch_stats(model: nn.Module, variables: Mapping[str, Any], masks: Mapping[str, Any], x: np.ndarray,
                       order: np.ndarray, seed: int = 0) -> Any:
    """Each module's batch-norm running statistics, ``[M, ...]`` leaves: the base model's statistics updated
    (the model's own momentum) by train-mode passes of the masked model over the batches ``order``
    (``int[steps, batch]`` into ``x``), as PyTorch's running statistics after an epoch of ``model.train()``.

    A 10%-per-layer subnetwork's conv outputs are far smaller than the full model's, so the base model's
    statistics would normalise them to a constant; per-module statistics are SupSup's per-task batch norm.
    """
    return _recalibrate(model, variables, masks, jnp.asarray(x), jnp.asarray(order), jax.random.key(seed))


# ---------------------------------------------------------------------------
# The approach


@dataclasses.dataclass(frozen=True)
class Supermask:
    """Supermask modules over a frozen model; defaults from the paper (k 10%, alpha 1, p 1, sharing and
    stemming on; decomposition SGD with Nesterov momentum 0.9, score lr 0.1, batch 32)."""

    k: float = 0.1
    alpha: float = 1.0
    p: float = 1.0
    share_init: bool = True
    stemming: bool = True
    epochs: int = 5
    batch_size: int = 32
    score_lr: float = 0.1
    graft_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    batch_norm: str = "module"
    module_chunk: int = 0
    progress: bool = dataclasses.field(default=False, compare=False)
    name: str = dataclasses.field(default="supermask", init=False)

    def __post_init__(self) -> None:
        check_fraction(self.k)
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise ValueError(f"alpha (stemming weight) must be >= 0, got {self.alpha!r}")
        if not (isinstance(self.p, (int, float)) and self.p >= 1):
            raise ValueError(f"p (the stemming loss's Lp exponent) must be >= 1, got {self.p!r}")
        for field in ("epochs", "batch_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        for field in ("score_lr", "graft_lr"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be > 0, got {getattr(self, field)!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.module_chunk, bool) or not isinstance(self.module_chunk, int) or self.module_chunk < 0:
            raise ValueError(f"module_chunk must be a non-negative integer (0: all modules in one vmap), "
                             f"got {self.module_chunk!r}")
        check_choice("batch_norm", self.batch_norm, BATCH_NORM_MODES)

    def training_loss(self) -> None:
        """Post-training: supermasks decompose the standard model."""
        return None

    def config(self) -> dict[str, Any]:
        """The settings that shape the modules (``module_chunk`` and ``progress`` only change speed and display)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("name", "progress", "module_chunk")}

    def _optimizer(self, lr: float, total_steps: int) -> optax.GradientTransformation:
        schedule = optax.cosine_decay_schedule(lr, max(1, total_steps))
        sgd = optax.sgd(schedule, momentum=self.momentum or None, nesterov=self.momentum > 0)
        return optax.chain(optax.add_decayed_weights(self.weight_decay), sgd) if self.weight_decay else sgd

    def batch_order(self, n: int, epoch: int) -> np.ndarray:
        """``int32[steps, batch]``: epoch ``epoch``'s shuffled batches of ``n`` samples (last partial batch dropped)."""
        steps = n // self.batch_size
        perm = np.random.default_rng(epoch_seed(self.seed, epoch)).permutation(n)
        return perm[: steps * self.batch_size].reshape(steps, self.batch_size).astype(np.int32)

    def check_inputs(self, model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                     num_classes: int, classes: Sequence[int] | None = None) -> tuple[int, ...]:
        """Every check :meth:`train_modules` makes before any work; returns the class tuple."""
        if num_classes != model.num_classes:
            raise ValueError(f"num_classes is {num_classes} but the model has {model.num_classes} classes")
        if not isinstance(variables, Mapping) or "params" not in variables:
            raise ValueError("variables must be a mapping of collections that includes 'params'")
        if not masked_paths(variables["params"]):
            raise ValueError("the model has no 'kernel' weights for a supermask to cover")
        x, y = np.asarray(x), np.asarray(y)
        if len(x) != len(y):
            raise ValueError(f"{len(x)} samples but {len(y)} labels")
        check_labels(y, num_classes)
        check_inputs(model, variables, x)
        if len(x) < self.batch_size:
            raise ValueError(f"{len(x)} samples, fewer than one decomposition batch of {self.batch_size}")
        classes = check_class_list(range(num_classes) if classes is None else classes, range(num_classes))
        check_every_class_present(y, num_classes, "samples to decompose from")
        return classes

    def train_modules(self, model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                      num_classes: int, classes: Sequence[int] | None = None,
                      workdir: str | os.PathLike[str] | None = None) -> tuple[CotrainState, dict]:
        """Co-train the modules of ``classes`` (all by default) for ``epochs`` (Algorithm 1, method B), with
        the library's one training loop (:func:`jaxmod.train.fit_task`).

        Returns the final state and a history: per epoch the mean cross-entropy, stemming term and
        training accuracy of each module and the masks' two-class RPs and mean Jaccard index, plus
        ``train_seconds`` (the epochs alone, after compilation, summed over resumed sessions) and
        ``compile_seconds``. With ``workdir`` the co-training state is checkpointed after every epoch
        and a rerun resumes from the last complete epoch; the batch order of an epoch depends only on the
        seed and the epoch, so a resumed run ends with exactly the masks of an uninterrupted one. Resuming a
        directory written for another configuration, base model, class list or training set raises
        ``ValueError``.
        """
        classes = self.check_inputs(model, variables, x, y, num_classes, classes)
        identity = cotrain_identity(self, variables, x, y, classes) if workdir is not None else None
        task = CotrainTask(self, model, variables, x, y, num_classes, classes)
        config = train.TrainConfig(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.score_lr,
                                   seed=self.seed)
        state, history = train.fit_task(task, np.asarray(x), np.asarray(y), config, workdir, run_info=identity,
                                        progress=self.progress, description=f"supermask modules ({len(classes)})")
        history = [{k: float("nan") if v is None else v for k, v in e.items()} for e in history]
        return state, {"epochs": history, "train_seconds": float(sum(e["train_seconds"] for e in history)),
                       "compile_seconds": task.compile_seconds, "classes": list(classes)}

    def decompose(self, model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                  num_classes: int, workdir: str | os.PathLike[str] | None = None) -> Decomposition:
        """One module per class, co-trained on the (unaugmented) training samples (checkpointed per epoch
        under ``workdir`` when given, see :meth:`train_modules`)."""
        state, history = self.train_modules(model, variables, x, y, num_classes, workdir=workdir)
        epochs = history["epochs"]
        statistics = {
            "two_class_rps": np.asarray([e["two_class_rps"] for e in epochs]),
            "mean_jaccard": np.asarray([e["mean_jaccard"] for e in epochs]),
            "cross_entropy": np.asarray([e["cross_entropy"] for e in epochs]),
            "stemming": np.asarray([e["stemming"] for e in epochs]),
            "train_accuracy": np.asarray([e["train_accuracy"] for e in epochs]),
            "train_seconds": np.asarray(history["train_seconds"]),
            "compile_seconds": np.asarray(history["compile_seconds"]),
        }
        masks = jax.tree.map(np.asarray, hard_masks(state.scores, self.k))
        head = jax.tree.map(np.asarray, state.graft)
        module_state = None
        if uses_batch_statistics(variables, self.batch_norm):  # one more pass, in its own batch order
            order = self.batch_order(len(x), self.epochs)
            stats = module_batch_stats(model, jax.tree.map(jnp.asarray, dict(variables)), masks,
                                       np.asarray(x, np.float32), order, self.seed)
            module_state = {"batch_stats": jax.tree.map(np.asarray, stats)}
        modules = module_set(self, model, variables, np.asarray(x, np.float32),
                             weights=weight_masks(variables["params"], masks), head=head, state=module_state)
        return Decomposition(modules, statistics=statistics)

"""Pan & Rajan: post-training decomposition of dense (FSE 2020) and convolutional (ICSE 2022) models.

A module for class ``c`` is the trained model with some *nodes* removed (a dense unit, or one output
position of a conv map, since conv weights are shared) plus, where the variant channels, a binary
output (concerned / unconcerned). Nodes are removed by zeroing them where their group is read (the
``position_masks`` collection, applied at each group's read point; a dense layer's "positions" are its units).

Steps, each a pure function over stacked masks ``{group: bool[C, *node_shape]}`` (row c = module c):

* **statistics** (:func:`node_counts`): one jitted ``lax.scan`` over the selected samples counts, per
  class, how often every node is active (> 0) on the class's positives and on its negative quota
  (a segment sum as a one-hot matmul). Negatives of class ``k`` are a prefix of class ``k``'s
  samples, so one pass serves every module (a module's negatives are the other classes' prefixes).
* **concern identification** (CI): ICSE 2022 removes a node inactive on *every* positive
  (``rule="any"``); the FSE 2020 code keeps only nodes active on *every* positive
  (``rule="all"``, the intersection of ``modifyThroughInterSection``).
* **tangling identification** (TI): a node active on any negative comes back.
* **channeling** (MC): the output becomes (concerned logit, mean of the other logits); the output
  layer is linear, so this is a ``(C, 2)`` matrix on the logits: the per-module ``heads``.
* **MC-BLN** (:func:`backtrack_dense`): from the channeled output back through the dense layers to the
  last conv map (through pooling, flatten and global average pooling).
* **MC-BI** (:func:`backtrack_conv`): through convolutions by the sliding-window mapping of
  Algorithm 3: an input position whose every consumer output is removed is removed.
* **CM-RIE** (FSE 2020 approach 6): channeling plus removal of last-hidden units whose edge to the
  concerned output is irrelevant (|w| < 0.05).

Composition is by voting (:mod:`jaxmod.voting`) on each module's confidence in its own class.

Where the work runs: the statistics pass is one jitted scan; sample selection, CI, TI and the backtracking
rules run on the host (NumPy, over per-class count tables; MC-BI's sliding-window cover is a jnp transpose).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxmod.activations import forward, predict_logits, scan_dataset
from jaxmod.adapter import Adapted, linen_source
from jaxmod.checks import check_choice
from jaxmod.data import check_every_class_present, check_labels
from jaxmod.graph import ELEMENTWISE, OUTPUT_LABEL, WINDOW, Const, ModelGraph, Op
from jaxmod.losses import LossFn
from jaxmod.metrics.modules import module_statistics, unit_statistics
from jaxmod.models import check_inputs
from jaxmod.modules import Decomposition, ModuleSet, module_set
from jaxmod.running import channel_head
from jaxmod.topology import is_adapted, model_label, resolve_topology

DENSE_VARIANTS = ("ti_i", "ti_sne", "cm_rie")
CNN_VARIANTS = ("ci_ti_mc", "ci_ti_mc_bln", "ci_ti_mc_bln_bi")
VARIANTS = DENSE_VARIANTS + CNN_VARIANTS
CHANNELED = ("cm_rie", *CNN_VARIANTS)

Masks = dict[str, np.ndarray]  # flat: group name ('a/b') -> bool[C, *node_shape]


# ---------------------------------------------------------------------------------------------
# What the method needs to know about a model's layers.


@dataclasses.dataclass(frozen=True)
class ConvEdge:
    """A consumer of group ``src`` producing group ``dst``: a conv (``kernel``, ``stride``,
    ``padding`` per side, optional 2x2 ``pool`` in between) or the identity shortcut (``kernel=None``)."""

    src: str
    dst: str
    kernel: tuple[int, int] | None = None
    stride: int = 1
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    pool: int = 1


@dataclasses.dataclass(frozen=True)
class Plan:
    """The layer facts backtracking needs.

    ``dense``: the hidden dense groups in forward order, each with the kernel that consumes it (the
    last one's is the output layer). ``flatten``: the conv group feeding the first dense layer (or
    the output), how it is reduced (``"pool<p>"``: a p x p pooling, then an NHWC flatten; or ``"gap"``) and
    the consuming kernel.
    ``conv_edges``: every conv-to-conv consumer, for MC-BI. ``groups``: all groups in forward order.
    """

    dense: tuple[tuple[str, tuple[str, ...]], ...]
    flatten: tuple[str, str, tuple[str, ...]] | None
    conv_edges: tuple[ConvEdge, ...]
    groups: tuple[str, ...]
    output: tuple[str, ...] = ("logits", "kernel")  # the output layer's kernel


def _plan_error(op: Op | None, what: str) -> ValueError:
    where = f" (primitive {op.name!r} in layer {op.path or 'top level'!r})" if op is not None else ""
    return ValueError(f"Pan and Rajan's backtracking cannot follow this model: {what}{where}")


def _pool_factor(op: Op) -> int:
    """The factor ``p`` of a ``p x p``, stride ``p``, unpadded pooling over the two spatial axes."""
    dims, strides = op.params["window_dimensions"], op.params["window_strides"]
    pads = op.params.get("padding", ((0, 0),) * len(dims))
    p = dims[1]
    if tuple(dims) != (1, p, p, 1) or tuple(strides) != tuple(dims) or any(tuple(q) != (0, 0) for q in pads):
        raise _plan_error(op, f"a pooling window {tuple(dims)} with strides {tuple(strides)}; MC-BI maps positions "
                              "through non-overlapping p x p pooling only")
    return p


def derived_plan(graph: ModelGraph) -> Plan:
    """The plan of a user's adapted model (:mod:`jaxmod.adapter`), read from its derived graph.

    Every convolution between two groups becomes a :class:`ConvEdge` (kernel, stride, padding from the
    traced op; a non-overlapping pooling between the source's read point and the conv becomes ``pool``);
    every identity shortcut (an index map at an add) an identity edge. The dense part is the chain of 2-D
    kernels from the last conv map (flattened in NHWC order, after an optional pooling, or globally
    averaged) to the logits. ``ValueError`` naming the operation for anything else (attention, NCHW
    flattening, overlapping pooling, a dense layer over tokens).
    """
    program = graph.program
    producer = {o: i for i, op in enumerate(program.ops) for o in op.outputs}
    reader = {rp.var: name for name, rp in graph.read_points.items()}
    leaf_index = {vid: i for i, vid in enumerate(program.leaf_ids)}
    order = {name: i for i, name in enumerate(graph.group_names)}

    def source(v: int) -> tuple[str | None, list[Op]]:
        """The group whose read value ``v`` carries (``None``: the sample) and the ops on the way, last first."""
        steps: list[Op] = []
        while v not in reader:
            if v == program.input_id:
                return None, steps
            op = program.ops[producer[v]]
            data = [u for u in op.inputs if isinstance(u, int) and (u in graph.labels or u == program.input_id)]
            if len(data) != 1 or not (op.name in ELEMENTWISE or op.name in WINDOW
                                      or op.name in ("reshape", "reduce_sum")):
                raise _plan_error(op, "a layer's input is not one group's activation reached through elementwise "
                                      "ops, pooling or flattening")
            steps.append(op)
            v = data[0]
        return reader[v], steps

    def label(v: int, axis: int) -> str:
        found = graph.labels.get(v, {}).get(axis)
        if found is None:
            raise _plan_error(program.ops[producer[v]], "a layer's output is not a group of units (kept whole)")
        return found[0]

    def kernel_path(v: int | Const, op: Op) -> tuple[str, ...]:
        if not isinstance(v, int) or v not in leaf_index or program.leaf_keys[leaf_index[v]][0] != "params":
            raise _plan_error(op, "a layer's kernel is not a parameter used as it is")
        return program.leaf_keys[leaf_index[v]][1]

    edges, dense, flatten = [], {}, None
    for op in program.ops:
        if op.name == "conv_general_dilated":
            lhs, rhs = op.inputs
            dn = op.params["dimension_numbers"]
            dst = label(op.outputs[0], dn.out_spec[1])
            src, steps = source(lhs)
            if src is None:
                continue
            if dst == OUTPUT_LABEL:
                raise _plan_error(op, "a convolution makes the logits")
            if any(d != 1 for d in (*op.params["lhs_dilation"], *op.params["rhs_dilation"])):
                raise _plan_error(op, "a dilated convolution")
            strides = tuple(op.params["window_strides"])
            if len(strides) != 2 or strides[0] != strides[1]:
                raise _plan_error(op, f"a convolution with strides {strides}")
            pool = 1
            for step in steps:
                if step.name in WINDOW:
                    pool *= _pool_factor(step)
                elif step.name not in ELEMENTWISE:
                    raise _plan_error(step, "a convolution reads a reshaped or reduced map")
            shape = program.avals[rhs].shape
            kernel = tuple(int(shape[d]) for d in dn.rhs_spec[2:])
            edges.append(ConvEdge(src, dst, kernel, strides[0], tuple(tuple(p) for p in op.params["padding"]), pool))
        elif op.name == "dot_general" and any(isinstance(v, int) and v in leaf_index for v in op.inputs):
            lhs, rhs = op.inputs
            (contract_l, contract_r), (batch_l, _) = op.params["dimension_numbers"]
            rank = len(program.avals[lhs].shape) if isinstance(lhs, int) else 0
            if rank != 2 or tuple(contract_l) != (1,) or tuple(contract_r) != (0,) or batch_l:
                raise _plan_error(op, "a dense layer that is not (batch, features) @ (features, units), e.g. over "
                                      "tokens or heads")
            path = kernel_path(rhs, op)
            src, steps = source(lhs)
            dst = label(op.outputs[0], 1)
            if src is None:
                continue
            if src in dense:
                raise _plan_error(op, f"group {src!r} feeds two dense layers")
            dense[src] = (path, dst)
            if len(program.avals[graph.read_points[src].var].shape) > 2:
                if flatten is not None:
                    raise _plan_error(op, "two conv maps feed dense layers")
                flatten = (src, _flatten_kind(steps, graph.labels[lhs][1][1]), path)
            elif any(step.name not in ELEMENTWISE for step in steps):
                raise _plan_error(op, f"group {src!r} reaches a dense layer through a reshape or reduction")
    # the dense chain: from the flattened map (or the first dense group) to the logits
    chain, current = [], (flatten[0] if flatten else min(dense, key=order.get, default=None))
    while current is not None:
        if current not in dense:
            raise _plan_error(None, f"group {current!r} is not consumed by a dense layer")
        path, nxt = dense[current]
        if flatten is None or current != flatten[0]:
            chain.append((current, path))
        current = None if nxt == OUTPUT_LABEL else nxt
        output = path
    if not dense:
        raise _plan_error(None, "no dense layer makes the logits")
    if len(chain) + (flatten is not None) != len(dense):
        raise _plan_error(None, "dense layers that are not one chain to the logits")
    identity = []
    for m in graph.index_maps:
        op = program.ops[m.op]
        if op.name == "add":
            src, steps = source(op.inputs[m.operand])
            if src != m.source or steps:
                raise _plan_error(op, "a shortcut that is not an identity of a group's activation")
            identity.append(ConvEdge(m.source, m.target))
    return Plan(tuple(chain), flatten, tuple(edges + identity), graph.group_names, output)


def _flatten_kind(steps: Sequence[Op], inner: int) -> str:
    """How a conv map reaches its first dense kernel: ``"gap"`` (mean over positions), ``"pool<p>"`` (a
    non-overlapping p x p pooling, then an NHWC flatten) or ``"pool1"`` (flattened as it is)."""
    names = [s.name for s in steps]
    if "reduce_sum" in names:
        reduce = steps[names.index("reduce_sum")]
        if tuple(reduce.params["axes"]) != (1, 2) or any(n in WINDOW or n == "reshape" for n in names):
            raise _plan_error(reduce, "a reduction over other axes than the two spatial ones")
        return "gap"
    if "reshape" not in names or inner != 1:
        raise _plan_error(steps[0] if steps else None, "a conv map flattened in another order than NHWC")
    pool = 1
    for step in steps:
        if step.name in WINDOW:
            pool *= _pool_factor(step)
    return f"pool{pool}"


def model_plan(model: nn.Module, input_shape: Sequence[int]) -> Plan:
    """The plan of any model whose layers the derivation follows (:func:`derived_plan`): a user's or a zoo model
    (groups named after what it sows). ``ValueError`` naming the operation it cannot follow."""
    if not is_adapted(model):  # a plain module: the derivation names what it cannot follow
        model = Adapted(linen_source(model), num_classes=int(model.num_classes))
    graph = model.graph(input_shape=tuple(int(d) for d in input_shape))
    if graph.program.loops:
        index = min(graph.program.loops)
        raise ValueError(f"Pan and Rajan's method takes dense and convolutional models; {model_label(model)} has a "
                         f"recurrent layer (a loop in layer {graph.program.ops[index].path!r}): Imtiaz et al.'s method "
                         "('rnn') modularizes recurrent models")
    return derived_plan(graph)


# ---------------------------------------------------------------------------------------------
# Samples and statistics.


def rank_in_class(y: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """Position of each sample among the (eligible) samples of its class, in data order; -1 if not eligible."""
    y = np.asarray(y)
    ok = np.ones(len(y), bool) if eligible is None else np.asarray(eligible, bool)
    key = np.where(ok, y, -1)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    starts = np.searchsorted(sorted_key, sorted_key, side="left")
    rank = np.empty(len(y), np.int64)
    rank[order] = np.arange(len(y)) - starts
    return np.where(ok, rank, -1)


def select_samples(y: np.ndarray, num_classes: int, positives: int, negatives: int,
                   eligible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(is_positive, is_negative)`` per sample: the first ``positives`` eligible samples of each class
    (its concern's inputs) and the first ``negatives`` samples of each class (the quota it gives every
    other class's module as tangling negatives). ``ValueError`` when a class has no positive."""
    pos = (rank_in_class(y, eligible) >= 0) & (rank_in_class(y, eligible) < positives)
    neg = rank_in_class(y) < negatives
    missing = np.flatnonzero(np.bincount(np.asarray(y)[pos], minlength=num_classes) == 0).tolist()
    if missing:
        raise ValueError(f"classes {missing} have no samples to identify their concern from")
    return pos, neg


@functools.lru_cache(maxsize=32)
def _count_fn(model: nn.Module, num_classes: int) -> Callable:
    def batch_fn(carry, xb, code, valid, variables):
        pos_counts, neg_counts = carry
        _, acts = forward(model, variables, xb)
        label, pos, neg = code // 4, (code % 2) == 1, (code // 2) % 2 == 1
        onehot = jax.nn.one_hot(label, num_classes, dtype=jnp.float32) * valid[:, None]
        one_p, one_n = onehot * pos[:, None], onehot * neg[:, None]
        new_p, new_n = {}, {}
        for k, a in acts.items():
            active = (a > 0).reshape(a.shape[0], -1).astype(jnp.float32)
            new_p[k] = pos_counts[k] + jnp.round(one_p.T @ active).astype(jnp.int32)
            new_n[k] = neg_counts[k] + jnp.round(one_n.T @ active).astype(jnp.int32)
        return new_p, new_n

    return batch_fn


def node_shapes(model: nn.Module, variables: Mapping[str, Any], input_shape: Sequence[int]) -> dict[str, tuple]:
    """Per tapped group, the shape of one sample's activation (its nodes)."""
    shapes = jax.eval_shape(lambda v: forward(model, v, jnp.zeros((1, *input_shape), jnp.float32))[1], variables)
    return {k: tuple(s.shape[1:]) for k, s in shapes.items()}


def node_counts(model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                is_pos: np.ndarray, is_neg: np.ndarray, num_classes: int,
                batch_size: int = 512) -> tuple[Masks, Masks, np.ndarray, np.ndarray]:
    """Per class and node: active counts over its positives and over its negative quota.

    Only selected samples are scanned, in one jitted pass. Returns ``(pos_counts, neg_counts,
    n_pos, n_neg)`` with counts ``int32[C, *node_shape]`` per group.
    """
    keep = np.flatnonzero(is_pos | is_neg)
    code = (np.asarray(y)[keep] * 4 + is_pos[keep] * 1 + is_neg[keep] * 2).astype(np.int32)
    shapes = node_shapes(model, variables, x.shape[1:])
    init = tuple({k: jnp.zeros((num_classes, int(np.prod(s))), jnp.int32) for k, s in shapes.items()}
                 for _ in range(2))
    pos_c, neg_c = scan_dataset(_count_fn(model, num_classes), init, np.asarray(x)[keep], code, batch_size,
                                variables)
    reshape = lambda d: {k: np.asarray(v).reshape(num_classes, *shapes[k]) for k, v in d.items()}  # noqa: E731
    n_pos = np.bincount(np.asarray(y)[is_pos], minlength=num_classes)
    n_neg = np.bincount(np.asarray(y)[is_neg], minlength=num_classes)
    return reshape(pos_c), reshape(neg_c), n_pos, n_neg


def concern_masks(pos_counts: Masks, neg_counts: Masks, n_pos: np.ndarray, rule: str) -> Masks:
    """CI then TI for every module at once.

    CI keeps a node active on some positive (``rule="any"``, ICSE 2022) or on every positive
    (``rule="all"``, FSE 2020); TI restores a node active on a negative, i.e. on a sample of another
    class's quota (``neg_counts`` summed over the other classes).
    """
    if rule not in ("any", "all"):
        raise ValueError(f"rule must be 'any' or 'all', got {rule!r}")
    out = {}
    for k, pc in pos_counts.items():
        need = np.reshape(n_pos, (-1,) + (1,) * (pc.ndim - 1))
        ci = pc > 0 if rule == "any" else pc >= need
        nc = neg_counts[k]
        others = nc.sum(axis=0, keepdims=True) - nc
        out[k] = ci | (others > 0)
    return out


# ---------------------------------------------------------------------------------------------
# Channeling and backtracking.


def _leaf(params: Mapping[str, Any], path: tuple[str, ...]) -> np.ndarray:
    return np.asarray(traverse_util.flatten_dict(dict(params))[path])


def _strong_removal(kept_next: np.ndarray, kernel: np.ndarray, delta: float) -> np.ndarray:
    """``bool[C, U]``: nodes with a strong edge (|w| >= delta) whose strong edges all reach removed nodes."""
    strong = np.abs(kernel) >= delta  # (U, V)
    reach_kept = kept_next.astype(np.int32) @ strong.T.astype(np.int32)  # (C, U)
    return strong.any(axis=1)[None, :] & (reach_kept == 0)


def output_removal(kernel: np.ndarray, delta: float) -> np.ndarray:
    """``bool[C, U]``: last-hidden nodes strongly tied (|w| >= delta) only to module c's unconcerned node."""
    concerned = kernel.T  # (C, U)
    unconcerned = (kernel.sum(axis=1)[None, :] - concerned) / (kernel.shape[1] - 1)
    return (np.abs(unconcerned) >= delta) & (np.abs(concerned) < delta)


def backtrack_dense(masks: Masks, params: Mapping[str, Any], plan: Plan, delta: float,
                    classes: Sequence[int] | None = None) -> Masks:
    """MC-BLN: remove nodes that only feed the unconcerned output, layer by layer back to the last conv.

    At the output a node goes when its edge to the unconcerned node is strong (|w| >= delta) and its
    edge to the concerned node is not; further back a node goes when it has strong edges and all of
    them reach removed (or cut) nodes. Through flatten the removal maps one-to-one onto the pooled
    map and each pooled node onto its p x p window; through global average pooling onto every position.
    ``classes[i]`` is the class of mask row ``i`` (default: row i is class i).
    """
    masks = dict(masks)
    logits = _leaf(params, plan.output)
    rows = np.arange(logits.shape[1]) if classes is None else np.asarray(classes)
    if plan.dense:
        last = plan.dense[-1][0]
        masks[last] = masks[last] & ~output_removal(logits, delta)[rows]
        for i in range(len(plan.dense) - 2, -1, -1):
            group, consumer = plan.dense[i]
            masks[group] = masks[group] & ~_strong_removal(masks[plan.dense[i + 1][0]], _leaf(params, consumer), delta)
    if plan.flatten is None:
        return masks
    group, reduce, consumer = plan.flatten
    shape = masks[group].shape  # (C, H, W, Ch)
    if plan.dense:  # the flattened (or averaged) map's nodes that feed only removed first-dense nodes
        removed_flat = _strong_removal(masks[plan.dense[0][0]], _leaf(params, consumer), delta)
    else:  # the map feeds the output layer itself
        removed_flat = output_removal(_leaf(params, consumer), delta)[rows]
    if reduce == "gap":
        removed = np.broadcast_to(removed_flat[:, None, None, :], shape)
    else:
        p = int(reduce.removeprefix("pool"))
        pooled = removed_flat.reshape(shape[0], shape[1] // p, shape[2] // p, shape[3])
        removed = np.zeros(shape, bool)
        up = pooled.repeat(p, axis=1).repeat(p, axis=2)
        removed[:, : up.shape[1], : up.shape[2]] = up
    masks[group] = masks[group] & ~removed
    return masks


def _conv_cover(alive: jax.Array, edge: ConvEdge, src_shape: tuple[int, ...]) -> jax.Array:
    """How many kept consumer outputs each source position reaches (the sliding-window mapping)."""
    if edge.kernel is None:  # identity shortcut: position and channel map one to one
        return alive.astype(jnp.float32)
    out_any = jnp.any(alive, axis=-1, keepdims=True).astype(jnp.float32)  # (C, H', W', 1)
    c, hs, ws = alive.shape[0], src_shape[0], src_shape[1]
    hin, win = hs // edge.pool, ws // edge.pool

    def conv(x):
        return jax.lax.conv_general_dilated(x, jnp.ones((*edge.kernel, 1, 1), jnp.float32), (edge.stride,) * 2,
                                            edge.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    cover = jax.linear_transpose(conv, jax.ShapeDtypeStruct((c, hin, win, 1), jnp.float32))(out_any)[0]
    if edge.pool > 1:
        def pool(x):
            return nn.avg_pool(x, (edge.pool, edge.pool), (edge.pool, edge.pool))

        cover = jax.linear_transpose(pool, jax.ShapeDtypeStruct((c, hs, ws, 1), jnp.float32))(cover)[0]
        cover = cover * edge.pool**2  # a sum pooling's transpose: counts stay integers
    return cover


def backtrack_conv(masks: Masks, plan: Plan) -> Masks:
    """MC-BI: a conv-map position whose every consumer output is removed is removed too.

    Groups are visited in reverse forward order so that each consumer's map is final first. A conv
    consumer reaches every output whose sliding window (padding and stride included, through a 2x2
    pooling where there is one) contains the position, whatever the channel; an identity shortcut
    reaches the same position and channel of the sum. Removing such positions leaves every kept
    output unchanged, so MC-BI shrinks a module without changing its predictions.
    """
    masks = dict(masks)
    for group in reversed(plan.groups):
        edges = [e for e in plan.conv_edges if e.src == group]
        if not edges:
            continue
        src_shape = masks[group].shape[1:]
        cover = sum(_conv_cover(jnp.asarray(masks[e.dst]), e, src_shape) for e in edges)
        masks[group] = masks[group] & np.asarray(cover > 0)
    return masks


def remove_irrelevant_edges(masks: Masks, params: Mapping[str, Any], plan: Plan, threshold: float,
                            classes: Sequence[int] | None = None) -> Masks:
    """CM-RIE: last-hidden units whose edge to the concerned output is near zero (|w| < threshold) go.

    The FSE 2020 code merges such units into one averaged unit; here they are removed (see notes).
    """
    if not plan.dense:
        return dict(masks)
    last = plan.dense[-1][0]
    weak = np.abs(_leaf(params, plan.output).T) < threshold  # (C, U)
    weak = weak if classes is None else weak[np.asarray(classes)]
    return {**masks, last: masks[last] & ~weak}


# ---------------------------------------------------------------------------------------------
# What each step does (diagnosis).

STEPS = ("ci", "ti", "bln", "bi")


def step_masks(pos_counts: Masks, neg_counts: Masks, n_pos: np.ndarray, params: Mapping[str, Any], plan: Plan,
               delta: float, rule: str = "any") -> dict[str, Masks]:
    """The masks after each step of the ICSE pipeline, from one set of statistics: ``ci`` (concern
    identification alone), ``ti`` (+ tangling: CI+TI+MC's masks), ``bln`` (+ MC-BLN) and ``bi`` (+ MC-BI)."""
    no_negatives = {k: np.zeros_like(v) for k, v in neg_counts.items()}
    ci = concern_masks(pos_counts, no_negatives, n_pos, rule)
    ti = concern_masks(pos_counts, neg_counts, n_pos, rule)
    bln = backtrack_dense(ti, params, plan, delta)
    return {"ci": ci, "ti": ti, "bln": bln, "bi": backtrack_conv(bln, plan)}


def step_removals(steps: Mapping[str, Masks]) -> list[dict[str, Any]]:
    """Per group, the mean over modules of how many nodes CI removes, TI restores, MC-BLN and MC-BI remove,
    and how many are kept at the end; also how many nodes CI+TI removes from every module alike (nodes
    inactive on all the selected samples). ``steps`` as :func:`step_masks` returns them."""

    def kept(m: np.ndarray) -> float:
        return float(np.mean(m.reshape(m.shape[0], -1).sum(axis=1)))

    rows = []
    for group, ti in steps["ti"].items():
        nodes = int(np.prod(ti.shape[1:]))
        k = {step: kept(steps[step][group]) for step in STEPS}
        rows.append({"group": group, "nodes": nodes, "ci_removed": nodes - k["ci"], "ti_restored": k["ti"] - k["ci"],
                     "ti_removed_in_every_module": int((~ti.reshape(ti.shape[0], -1)).all(axis=0).sum()),
                     "bln_removed": k["ti"] - k["bln"], "bi_removed": k["bln"] - k["bi"], "kept": k["bi"]})
    return rows


def edge_strength(params: Mapping[str, Any], plan: Plan, delta: float) -> list[dict[str, Any]]:
    """How many edges MC-BLN's rule can act on: per kernel it reads, the largest |w| and the fraction of
    edges with |w| >= ``delta``; for the output layer also the largest |unconcerned edge| (the mean of the
    other classes' edges) and how many (node, module) pairs meet the output rule."""
    logits = _leaf(params, plan.output)
    unconcerned = (logits.sum(axis=1)[None, :] - logits.T) / (logits.shape[1] - 1)
    rows = [{"kernel": "/".join(plan.output[:-1]), "max_abs": float(np.abs(logits).max()),
             "strong_fraction": float(np.mean(np.abs(logits) >= delta)),
             "max_abs_unconcerned": float(np.abs(unconcerned).max()),
             "output_rule_pairs": int(output_removal(logits, delta).sum())}]
    consumers = [c for _, c in plan.dense[:-1]] + ([plan.flatten[2]] if plan.flatten and plan.dense else [])
    for path in consumers:
        kernel = _leaf(params, path)
        rows.append({"kernel": "/".join(path[:-1]), "max_abs": float(np.abs(kernel).max()),
                     "strong_fraction": float(np.mean(np.abs(kernel) >= delta))})
    return rows


# ---------------------------------------------------------------------------------------------
# Modules: confidences and voting.


# ---------------------------------------------------------------------------------------------
# The approach.


@dataclasses.dataclass(frozen=True)
class Concern:
    """Pan & Rajan's decomposition.

    ``variant``: ``ti_i``, ``ti_sne``, ``cm_rie`` (FSE 2020, dense models) or ``ci_ti_mc``,
    ``ci_ti_mc_bln``, ``ci_ti_mc_bln_bi`` (ICSE 2022). ``positives`` per concern (1000, as both
    papers' code); ``negatives`` per other class (``None``: 1 for TI-I, else balanced 1:1,
    ``positives // (C - 1)``). ``confidence``: the FSE variants take only positives the model predicts
    with at least this probability (0.9). ``delta``: MC-BLN's strong-edge threshold (0.5).
    """

    variant: str = "ci_ti_mc_bln"
    delta: float = 0.5
    positives: int = 1000
    negatives: int | None = None
    confidence: float = 0.9
    irrelevant: float = 0.05
    batch_size: int = 512
    name: str = dataclasses.field(default="concern", init=False)

    def __post_init__(self) -> None:
        check_choice("variant", self.variant, VARIANTS)
        if not self.delta > 0:
            raise ValueError(f"delta must be > 0, got {self.delta}")
        if self.positives < 1 or (self.negatives is not None and self.negatives < 0):
            raise ValueError(f"positives must be >= 1 and negatives >= 0, got {self.positives}, {self.negatives}")
        if not 0 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0, 1), got {self.confidence}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def channeled(self) -> bool:
        return self.variant in CHANNELED

    def training_loss(self) -> LossFn | None:
        return None

    def plan(self, model: nn.Module, input_shape: Sequence[int]) -> Plan:
        """The model's layer facts; CI+TI+MC backtracks nothing, so on a user's model it needs none (a ViT's
        MLP neurons, say, are modularized by CI, TI and channeling alone)."""
        if self.variant == "ci_ti_mc" and is_adapted(model):
            return Plan((), None, (), tuple(model.graph(input_shape=tuple(input_shape)).group_names))
        return model_plan(model, input_shape)

    def negatives_per_class(self, num_classes: int) -> int:
        if self.negatives is not None:
            return self.negatives
        return 1 if self.variant == "ti_i" else max(1, self.positives // (num_classes - 1))

    def check(self, model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
              num_classes: int) -> Plan:
        """Every check before any work: classes, labels, supported layers, input shape."""
        if num_classes != model.num_classes:
            raise ValueError(f"num_classes is {num_classes} but the model has {model.num_classes} classes")
        check_labels(np.asarray(y), num_classes)
        check_every_class_present(y, num_classes, "samples to decompose from")
        plan = self.plan(model, np.shape(x)[1:])
        if self.variant in DENSE_VARIANTS and (plan.flatten is not None or plan.conv_edges):
            raise ValueError(f"variant {self.variant!r} is the dense (FSE 2020) method; for {model_label(model)} "
                             f"use one of {CNN_VARIANTS}")
        check_inputs(model, variables, np.asarray(x))
        if len(x) != len(y):
            raise ValueError(f"{len(x)} samples but {len(y)} labels")
        return plan

    def decompose(self, model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                  num_classes: int) -> Decomposition:
        """One module per class: position masks ``{group: bool[C, *nodes]}`` and, where the variant channels,
        channel heads."""
        plan = self.check(model, variables, x, y, num_classes)
        x, y = np.asarray(x), np.asarray(y)
        eligible = None
        if self.variant in DENSE_VARIANTS and self.confidence > 0:
            probs = jax.nn.softmax(predict_logits(model, variables, x, self.batch_size))
            eligible = np.asarray(probs[np.arange(len(y)), y] > self.confidence)
        is_pos, is_neg = select_samples(y, num_classes, self.positives, self.negatives_per_class(num_classes),
                                        eligible)
        pos_c, neg_c, n_pos, n_neg = node_counts(model, variables, x, y, is_pos, is_neg, num_classes,
                                                 self.batch_size)
        rule = "all" if self.variant in DENSE_VARIANTS else "any"
        masks = concern_masks(pos_c, neg_c, n_pos, rule)
        masks = self.backtrack(masks, variables["params"], plan)
        stats = {"positives": n_pos, "negatives_per_class": n_neg,
                 "activation_rate": {k: v / np.reshape(np.maximum(n_pos, 1), (-1,) + (1,) * (v.ndim - 1))
                                     for k, v in pos_c.items()}}
        head = channel_head(num_classes, range(num_classes)) if self.channeled else None
        modules = module_set(self, model, variables, x, positions=masks, head=head)
        return Decomposition(modules, statistics=stats)

    def backtrack(self, masks: Masks, params: Mapping[str, Any], plan: Plan,
                  classes: Sequence[int] | None = None) -> Masks:
        """The variant's modularization after CI and TI (none for TI-I/TI-SNE and CI+TI+MC); ``classes[i]`` is
        the class of mask row i (default row i = class i)."""
        if self.variant == "cm_rie":
            return remove_irrelevant_edges(masks, params, plan, self.irrelevant, classes)
        if self.variant in ("ci_ti_mc_bln", "ci_ti_mc_bln_bi"):
            masks = backtrack_dense(masks, params, plan, self.delta, classes)
        if self.variant == "ci_ti_mc_bln_bi":
            masks = backtrack_conv(masks, plan)
        return masks

    def continue_learning(self, model: nn.Module, variables: Mapping[str, Any], modules: ModuleSet,
                          x_negative: np.ndarray, rows: Sequence[int] | None = None) -> ModuleSet:
        """Continuous learning (ICSE 2022, Sec. 3.5): re-apply tangling identification with the unseen
        classes of another dataset. Nodes of the module's model active on any of ``x_negative`` are
        restored, then the variant's backtracking runs again. ``rows`` picks the modules to update
        (default all). Returns the updated module set."""
        x_negative = np.asarray(x_negative)
        plan = self.plan(model, x_negative.shape[1:])
        check_inputs(model, variables, x_negative)
        flat = {k: np.asarray(v) for k, v in modules.positions.items()}
        n = modules.num_modules
        rows = list(range(n)) if rows is None else list(rows)
        if not rows or min(rows) < 0 or max(rows) >= n:
            raise ValueError(f"rows must be module indices in 0..{n - 1}, got {rows}")
        y0 = np.zeros(len(x_negative), np.int32)
        ones = np.ones(len(x_negative), bool)
        _, neg_c, _, _ = node_counts(model, variables, x_negative, y0, ~ones, ones, 1, self.batch_size)
        selected = np.zeros(n, bool)
        selected[rows] = True
        restored = {k: v | (selected.reshape((-1,) + (1,) * (v.ndim - 1)) & (neg_c[k] > 0)) for k, v in flat.items()}
        updated = self.backtrack(restored, variables["params"], plan, modules.classes)
        return modules.replace(positions={k: np.where(selected.reshape((-1,) + (1,) * (v.ndim - 1)), updated[k], v)
                                          for k, v in flat.items()})

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}


# ---------------------------------------------------------------------------------------------
# Measuring modules.


def _is_dense(model: nn.Module, input_shape: Sequence[int]) -> bool:
    """A chain of dense layers (the zoo's MLP or a user's), whose nodes are units with weights of their own."""
    if not is_adapted(model):
        return False
    try:
        plan = derived_plan(model.graph(input_shape=tuple(input_shape)))
    except ValueError:
        return False
    return plan.flatten is None and not plan.conv_edges


def jaccard_figures(model: nn.Module, variables: Mapping[str, Any], modules: ModuleSet) -> dict[str, Any]:
    """Module-model and pairwise Jaccard indices and sizes.

    Over nodes (dense units and conv-map positions: what the method removes) for every model; for
    dense models also over weights (a module keeps the weights between its kept units, counted as for
    unit masks), the measure the FSE 2020 code and the supermask paper use.
    """
    node = module_statistics(modules, variables)
    out = {"node_module_model": node["sizes"].tolist(), "node_mean_module_model": node["mean_size"],
           "node_mean_pairwise": node["mean_jaccard"]}
    if _is_dense(model, modules.meta.input_shape):
        weights = unit_statistics(resolve_topology(model, modules.meta.input_shape), modules.positions,
                                  variables["params"])
        out.update({"weight_mean_pairwise": weights["mean_jaccard"], "weight_mean_size": weights["mean_size"],
                    "weight_sizes": weights["sizes"].tolist()})
    return out

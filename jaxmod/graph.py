"""A model's unit topology, derived from its traced jaxpr (DepGraph's idea, with JAX's own graph).

:func:`trace_program` traces ``apply(variables, x)`` into a :class:`Program`: the jaxpr with every
call-like primitive (``jit``, ``custom_jvp_call``, ``custom_vjp_call``, ``checkpoint``) inlined, so that
one forward pass over its operations sees every dependency. :func:`derive_graph` walks it once:

* **Unit groups** are born at the output axis of a contraction with a weight: a Dense or Conv kernel's
  output features (also depthwise), an embedding table's features (a row gather), an attention
  projection's outputs. Per-unit weights met elementwise on the way (bias, norm scale and bias, batch
  statistics) become the group's **producers**.
* A group's units are followed through elementwise ops, reshape/flatten (recording the *inner* factor:
  how many positions lie inside each unit's block of a flattened axis), pooling, transposes and
  broadcasts, to the kernel axes that **consume** them.
* **Residual adds**: operands that have not yet passed a nonlinearity (a conv + BN branch and a
  projection) are tied into one group; an operand that has (an identity shortcut of a ReLU output)
  is read through an **index map** into the sum's group, which a sliced model uses to re-index it
  (zero for units its producer dropped). A depthwise convolution reads its input the same way.
* A group is **whole** (kept entire, never masked or sliced) when anything other than a weight
  contraction mixes its units: a normalisation over features (LayerNorm: the Transformer residual
  stream), a softmax, attention's activation-activation products, a multi-axis projection (heads),
  a grouped convolution, a concatenation along units. Nothing is guessed: such a group is kept.
* Each remaining group is **read** where its elementwise region ends (after its nonlinearity, before
  pooling or the next layer): statistics and the MODA/MwT losses see that value, and unit masks act
  there.

What the walk cannot follow (a weight feeding an arbitrary gather, a loop primitive, an unknown
primitive on units) raises ``ValueError`` naming the operation and the layer path, before any work.
The result, :class:`ModelGraph`, converts to the :class:`jaxmod.topology.TopologySpec` that masks,
slicing and metrics already use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

from jaxmod.topology import IndexMapSpec, LeafAxis, TopologySpec, UnitGroup

Path = tuple[str, ...]
LeafKey = tuple[str, Path]

# Call-like primitives and the parameter that holds their body: inlined by trace_program.
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
          "remat": "jaxpr", "checkpoint": "jaxpr"}
_CUSTOM = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})  # kept whole when evaluated
ELEMENTWISE = frozenset(
    "add sub mul div rem max min neg abs sign exp exp2 log log1p expm1 tanh logistic erf erfc erf_inv sqrt rsqrt "
    "cbrt pow integer_pow square sin cos tan asin acos atan atan2 sinh cosh asinh acosh atanh floor ceil round "
    "is_finite nextafter select_n clamp eq ne lt le gt ge and or not xor convert_element_type copy copy_p "
    "reduce_precision stop_gradient real imag conj".split())
# Elementwise ops that keep a value affine in its producer's output when the other operands are weights or
# constants: a bias, a norm's affine map. Any other elementwise op (ReLU's max, GELU, tanh) activates it.
_AFFINE = frozenset("add sub mul div neg convert_element_type copy copy_p reduce_precision stop_gradient".split())
_REDUCE = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin".split())
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
WINDOW = frozenset("reduce_window_sum reduce_window_max reduce_window_min reduce_window".split())
_NO_UNITS = frozenset("iota random_bits random_seed random_wrap random_unwrap random_fold_in random_split "
                      "threefry2x32 rng_bit_generator rng_uniform shift_left shift_right_logical "
                      "shift_right_arithmetic".split())


# ---------------------------------------------------------------------------------------------
# The traced program.


@dataclasses.dataclass(frozen=True)
class Const:
    """A literal or closed-over constant operand."""

    value: Any


@dataclasses.dataclass(frozen=True)
class Op:
    """One primitive application: operands are variable ids or :class:`Const`; ``path`` is the layer."""

    primitive: Any
    params: Mapping[str, Any]
    inputs: tuple[int | Const, ...]
    outputs: tuple[int, ...]
    path: str

    @property
    def name(self) -> str:
        return self.primitive.name


@dataclasses.dataclass(frozen=True)
class CustomCall:
    """A call with a custom derivative (``custom_jvp_call``: ``nn.relu``, ``jax.nn.softmax``; ``custom_vjp_call``),
    inlined as ops ``start:stop`` for the walk; evaluation binds the call itself so gradients keep its rule (ReLU's
    derivative is 0 at 0, ``max``'s is 1/2)."""

    primitive: Any
    params: Mapping[str, Any]
    inputs: tuple[int | Const, ...]
    outputs: tuple[int, ...]
    start: int
    stop: int


@dataclasses.dataclass(frozen=True)
class Loop:
    """A ``scan``'s body, inlined once for the walk (evaluation binds the scan whole): its ops, and the body's
    variables for the constants, carries and per-step inputs it reads and the carries and per-step outputs it
    returns. The scan's operands are ``consts + carries + xs`` and its results ``carries + ys`` (stacked on a
    leading loop axis)."""

    ops: tuple[Op, ...]
    consts: tuple[int, ...]
    carry_in: tuple[int, ...]
    xs: tuple[int, ...]
    carry_out: tuple[int | Const, ...]
    ys: tuple[int | Const, ...]


@dataclasses.dataclass(frozen=True)
class Program:
    """A flat list of primitive ops: inputs are the variable leaves (``leaf_keys`` order) then the sample."""

    ops: tuple[Op, ...]
    leaf_keys: tuple[LeafKey, ...]
    leaf_ids: tuple[int, ...]
    input_id: int
    extra_ids: tuple[int, ...]
    output_ids: tuple[int | Const, ...]
    avals: Mapping[int, Any]
    out_tree: Any = None  # the pytree structure of apply's result
    names: Mapping[int, str] = dataclasses.field(default_factory=dict)  # variables the model sows, by sown name
    custom_calls: tuple[CustomCall, ...] = ()
    loops: Mapping[int, Loop] = dataclasses.field(default_factory=dict)  # the scan op's index -> its body


def _leaf_key(path: tuple) -> LeafKey:
    names = tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
    return names[0], names[1:]


def trace_program(apply: Callable, variables: Mapping[str, Any], x: Any, *extra: Any, named: bool = False) -> Program:
    """Trace ``apply(variables, x, *extra)`` (arrays or ``ShapeDtypeStruct`` s) into a flat :class:`Program`.

    ``apply`` may return one array or a tuple whose first element is the logits (the rest, e.g. updated
    batch statistics, become further outputs). With ``named``, ``apply`` returns ``(result, names)``, ``names``
    a flat mapping of names to values the model computes (what it sows): they name those variables
    (:attr:`Program.names`) without becoming outputs.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(dict(variables))
    keys = tuple(_leaf_key(p) for p, _ in flat)

    def fn(leaves, xb, *rest):
        out = apply(jax.tree_util.tree_unflatten(treedef, leaves), xb, *rest)
        return out if named else (out, {})

    closed, (out_shapes, name_shapes) = jax.make_jaxpr(fn, return_shape=True)([leaf for _, leaf in flat], x, *extra)
    builder = _Builder()
    inputs = [builder.new(v.aval) for v in closed.jaxpr.invars]
    outputs = builder.inline(closed.jaxpr, closed.consts, inputs, "")
    n, n_out = len(flat), len(jax.tree_util.tree_leaves(out_shapes))
    _, name_tree = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure((out_shapes, name_shapes)), outputs)
    names: dict[int, str] = {}
    for name, var in sorted(dict(name_tree).items()):
        if not isinstance(var, Const):
            names.setdefault(var, name)
    return Program(tuple(builder.ops), keys, tuple(inputs[:n]), inputs[n], tuple(inputs[n + 1:]),
                   tuple(outputs[:n_out]), builder.avals, jax.tree_util.tree_structure(out_shapes), names,
                   tuple(builder.custom_calls), dict(builder.loops))


class _Builder:
    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.avals: dict[int, Any] = {}
        self.custom_calls: list[CustomCall] = []
        self.loops: dict[int, Loop] = {}
        self.in_body = False

    def new(self, aval: Any) -> int:
        i = len(self.avals)
        self.avals[i] = aval
        return i

    def inline(self, jaxpr: Any, consts: Sequence[Any], inputs: Sequence[int | Const], prefix: str) -> list:
        env: dict[Any, int | Const] = {}
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = Const(c)
        for v, r in zip(jaxpr.invars, inputs, strict=True):
            env[v] = r

        def read(a: Any) -> int | Const:
            if isinstance(a, jex_core.Literal):
                return Const(np.asarray(a.val, dtype=a.aval.dtype))
            return env[a]

        for eqn in jaxpr.eqns:
            ins = [read(a) for a in eqn.invars]
            path = str(eqn.source_info.name_stack) or prefix
            body = eqn.params.get(_CALLS.get(eqn.primitive.name, ""), None)
            if body is not None:
                inner, inner_consts = (body.jaxpr, body.consts) if hasattr(body, "consts") else (body, ())
                start, first_var = len(self.ops), len(self.avals)
                outs = self.inline(inner, inner_consts, ins, path)
                for v, r in zip(eqn.outvars, outs, strict=True):
                    env[v] = r
                if eqn.primitive.name in _CUSTOM and all(isinstance(o, int) and o >= first_var for o in outs):
                    self.custom_calls.append(CustomCall(eqn.primitive, dict(eqn.params), tuple(ins), tuple(outs),
                                                        start, len(self.ops)))
                continue
            outs = [self.new(v.aval) for v in eqn.outvars]
            for v, i in zip(eqn.outvars, outs, strict=True):
                env[v] = i
            self.ops.append(Op(eqn.primitive, dict(eqn.params), tuple(ins), tuple(outs), path))
            if eqn.primitive.name == "scan" and not self.in_body:  # a loop in a loop stays an op the walk refuses
                self.loops[len(self.ops) - 1] = self.loop_body(eqn.params, path)
        return [read(v) for v in jaxpr.outvars]

    def loop_body(self, params: Mapping[str, Any], path: str) -> Loop:
        """A scan's body inlined into its own op list (fresh variables for its inputs)."""
        body, consts, carries = params["jaxpr"], params["num_consts"], params["num_carry"]
        inputs = [self.new(v.aval) for v in body.jaxpr.invars]
        outer, outer_calls = self.ops, self.custom_calls
        self.ops, self.custom_calls = [], []  # calls inside a body are evaluated with it, never alone
        self.in_body = True
        try:
            outputs = self.inline(body.jaxpr, body.consts, inputs, path)
            ops = self.ops
        finally:
            self.ops, self.custom_calls, self.in_body = outer, outer_calls, False
        return Loop(tuple(ops), tuple(inputs[:consts]), tuple(inputs[consts:consts + carries]),
                    tuple(inputs[consts + carries:]), tuple(outputs[:carries]), tuple(outputs[carries:]))


# ---------------------------------------------------------------------------------------------
# The derived graph.


@dataclasses.dataclass(frozen=True)
class ReadPoint:
    """Where a group's activation is read: variable ``var`` of the program, units on ``axis``."""

    var: int
    axis: int


@dataclasses.dataclass(frozen=True)
class IndexMapPoint:
    """Operand ``operand`` of op ``op`` reads group ``source`` as group ``target``'s units (``name``)."""

    name: str
    op: int
    operand: int
    axis: int
    source: str
    target: str


@dataclasses.dataclass(frozen=True)
class GatePoint:
    """Where MwT's mask generator for conv group ``group`` multiplies (the conv [+ BN] output ``var``, units
    on ``axis``, before any nonlinearity or residual add), reading the conv's input ``input``."""

    group: str
    var: int
    axis: int
    input: int | Const
    size: int

    @property
    def sown_name(self) -> str:
        head, _, last = self.group.rpartition("/")
        return f"{head}/mask@{last}" if head else f"mask@{last}"


@dataclasses.dataclass(frozen=True)
class LoopAxis:
    """Axis ``axis`` of constant operand ``operand`` of loop op ``op`` is indexed by ``group``, a group the loop
    produces (a recurrent layer's units): as a ``producer`` (its gate blocks, ``axis`` a whole number of tiles of
    the group) or a ``consumer`` (the recurrent kernel's rows). Masks act on these inside the loop."""

    op: int
    operand: int
    axis: int
    group: str
    role: str


@dataclasses.dataclass(frozen=True)
class WholeGroup:
    """A group kept entire, and why (the op that mixes its units)."""

    name: str
    size: int
    reason: str


@dataclasses.dataclass(frozen=True)
class ModelGraph:
    """What :func:`derive_graph` found: the topology, where each group is read, the index maps and the
    groups kept whole. ``labels`` gives, per program variable, ``{axis: (group, inner)}`` for unit axes
    (group ``OUTPUT`` for the class axis), used to resize operations when the model is sliced."""

    program: Program
    spec: TopologySpec
    sizes: Mapping[str, int]
    read_points: Mapping[str, ReadPoint]
    index_maps: tuple[IndexMapPoint, ...]
    whole: tuple[WholeGroup, ...]
    labels: Mapping[int, Mapping[int, tuple[str, int]]]
    num_classes: int
    gates: tuple[GatePoint, ...] = ()
    residual_splits: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    loop_axes: tuple[LoopAxis, ...] = ()

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.spec.groups)


OUTPUT_LABEL = "__output__"


@dataclasses.dataclass
class _Group:
    size: int
    order: int
    producers: set = dataclasses.field(default_factory=set)  # (leaf index, axis, inner)
    consumers: set = dataclasses.field(default_factory=set)
    whole: str | None = None
    origin: str = ""  # the layer whose weight made the group


class _Walk:
    """One forward pass over a program: labels, groups, ties, index maps, regions."""

    def __init__(self, program: Program) -> None:
        self.p = program
        self.groups: list[_Group] = []
        self.parent: list[int] = []
        self.units: dict[int, dict[int, tuple[int, int]]] = {}  # activation var -> {axis: (gid, inner)}
        self.leaves: dict[int, dict[int, frozenset]] = {}  # weight-derived var -> {axis: {(leaf, axis, inner)}}
        self.data: set[int] = set()  # vars that depend on the sample
        self.region: dict[int, dict[int, bool]] = {}  # var -> {gid: activated?} for vars inside a group's region
        self.uses: dict[int, list[int]] = {}
        self.maps: list[tuple[int, int, int, int, int]] = []  # (source gid, target gid, op, operand, axis)
        self.reduced_leaves: set[tuple[int, int]] = set()
        self.stats: set[int] = set()  # per-unit statistics over the batch (training-mode batch norm)
        self.own: dict[int, set] = {}  # a group's producers before it was tied to another
        self.chain: dict[int, int] = {}  # var -> conv group whose affine chain (conv, bias, BN) it ends so far
        self.chain_end: dict[int, int] = {}  # conv group -> the last var of that chain (MwT's gate point)
        self.conv_input: dict[int, int | Const] = {}  # conv group -> the conv's input (the generator's input)
        self.tie_targets: set[int] = set()  # groups an activated operand is added into (residual sums)
        self.conv_layer: dict[int, str] = {}  # conv group -> the layer of its kernel
        self.kernel_layer: dict[int, str] = {}  # group -> the layer of the weight that made it
        self.loop_depth = 0  # > 0 while walking a loop body
        self.body_vars: set[int] = set()  # a loop body's per-step values (never read points)
        self.loop_values: set[int] = set()  # a loop's results and their transposes (hidden state sequences)
        self.uniform: dict[int, set[int]] = {}  # a broadcast's result -> the axes it is constant along
        self.broadcast_units: dict[int, dict[int, int]] = {}  # such a result -> {axis: group it meets there}
        for i, vid in enumerate(program.leaf_ids):
            self.leaves[vid] = {a: frozenset({(i, a, 1)}) for a in range(len(program.avals[vid].shape))}
        self.data.add(program.input_id)
        self.units[program.input_id] = {}

    # groups ------------------------------------------------------------------------------------
    def new_group(self, size: int, producers: set, origin: str = "") -> int:
        self.groups.append(_Group(size, len(self.groups), set(producers), origin=origin))
        self.parent.append(len(self.parent))
        g = len(self.groups) - 1
        if producers:
            self.kernel_layer[g] = "/".join(self.p.leaf_keys[min(producers)[0]][1][:-1])
        return g

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if self.groups[b].order < self.groups[a].order:
            a, b = b, a
        self.parent[b] = a
        ga, gb = self.groups[a], self.groups[b]
        for g in (a, b):
            self.own.setdefault(g, set(self.groups[g].producers))
        ga.producers |= gb.producers
        ga.consumers |= gb.consumers
        ga.whole = ga.whole or gb.whole
        return a

    def make_whole(self, g: int, reason: str) -> None:
        g = self.find(g)
        if self.groups[g].whole is None:
            self.groups[g].whole = reason

    def whole_all(self, var: int | Const, reason: str) -> None:
        if isinstance(var, int):
            for g, _ in self.units.get(var, {}).values():
                self.make_whole(g, reason)

    # helpers -----------------------------------------------------------------------------------
    def shape(self, v: int | Const) -> tuple[int, ...]:
        return tuple(np.shape(v.value)) if isinstance(v, Const) else tuple(self.p.avals[v].shape)

    def is_data(self, v: int | Const) -> bool:
        return isinstance(v, int) and v in self.data

    def leaf_axes(self, v: int | Const, axis: int) -> frozenset:
        return self.leaves.get(v, {}).get(axis, frozenset()) if isinstance(v, int) else frozenset()

    def error(self, op: Op, what: str) -> ValueError:
        where = f" in layer {op.path!r}" if op.path else ""
        return ValueError(f"cannot derive the unit topology: {what} (primitive {op.name!r}{where}); "
                          "jaxmod follows units through dense, conv, depthwise conv, embedding and attention "
                          "layers, elementwise ops, reshapes, pooling, residual adds and normalisation")

    # the walk ----------------------------------------------------------------------------------
    def run(self) -> None:
        for index, op in enumerate(self.p.ops):
            for v in op.inputs:
                if isinstance(v, int):
                    self.uses.setdefault(v, []).append(index)
            self.step(index, op)

    def step(self, index: int | None, op: Op) -> None:
        """Walk one op; ``index`` is its place in the program (``None`` inside a loop body)."""
        name = op.name
        if index is not None and index in self.p.loops:
            return self.loop(op, self.p.loops[index])
        data_in = [v for v in op.inputs if self.is_data(v)]
        weight_in = [v for v in op.inputs if isinstance(v, int) and v in self.leaves]
        if name == "broadcast_in_dim":
            self.note_uniform(op)
        if not data_in and not weight_in:
            return  # constants, random keys, iotas: no units
        if name in ELEMENTWISE:
            return self.elementwise(index, op, data_in)
        if name == "dot_general":
            return self.dot_general(op)
        if name == "conv_general_dilated":
            return self.conv(index, op)
        if name == "gather":
            return self.gather(op)
        if name in _NO_UNITS and not any(self.leaf_axes(v, a) for v in weight_in for a in self.leaves[v]):
            for o in op.outputs:
                if data_in:
                    self.data.add(o)
                    self.units[o] = {}
            return
        mappings = self.structural(op)
        if mappings is not None and name == "reshape" and self.loop_depth:
            mappings = [self.retile(op, mappings[0])]
        if mappings is None:
            if any(self.units.get(v) for v in data_in) or any(self.leaves.get(v) for v in weight_in):
                raise self.error(op, "units or weights flow into an operation it cannot follow")
            for o in op.outputs:
                self.data.add(o)
                self.units[o] = {}
            return
        for out_index, o in enumerate(op.outputs):
            src = op.inputs[0]
            if self.is_data(src) or any(self.is_data(v) for v in op.inputs):
                self.data.add(o)
                self.units[o] = self.remap(self.units.get(src, {}) if isinstance(src, int) else {},
                                           mappings[out_index], op, data=True)
                if src in self.stats or (op.name in _REDUCE and 0 in op.params["axes"] and self.units[o]):
                    self.stats.add(o)
                if name == "transpose" and src in self.loop_values:  # a state sequence put batch-major: read there
                    self.loop_values.add(o)
                    self.region[o] = {g: True for g, _ in self.units[o].values()}
            else:
                self.leaves[o] = self.remap(self.leaves.get(src, {}) if isinstance(src, int) else {},
                                            mappings[out_index], op, data=False)

    def remap(self, labels: Mapping[int, Any], mapping: Mapping[int, Any], op: Op, data: bool) -> dict:
        """Carry ``labels`` through ``mapping``: in-axis -> out-axis, ``(out-axis, factor)`` for a merge,
        ``None`` where the units are mixed (whole, for data; reduced, for weights)."""
        out: dict[int, Any] = {}
        for axis, label in labels.items():
            target = mapping.get(axis, "drop")
            if target == "drop":
                continue
            if target is None:
                if data:
                    self.make_whole(label[0], f"{op.name} mixes its units at {op.path or 'top level'}")
                else:
                    self.reduced_leaves |= {(leaf, ax) for leaf, ax, _ in label}
                continue
            out_axis, factor = target if isinstance(target, tuple) else (target, 1)
            if data:
                if out_axis in out:
                    self.make_whole(label[0], f"{op.name} merges two unit axes at {op.path or 'top level'}")
                    self.make_whole(out[out_axis][0], f"{op.name} merges two unit axes")
                    continue
                out[out_axis] = (label[0], label[1] * factor)
            else:
                out[out_axis] = out.get(out_axis, frozenset()) | frozenset((lf, ax, inner * factor)
                                                                           for lf, ax, inner in label)
        return out

    def structural(self, op: Op) -> list[dict] | None:
        """Per output, how the first operand's axes map to the output's (see :meth:`remap`)."""
        name, params = op.name, op.params
        shape = self.shape(op.inputs[0])
        out_shapes = [tuple(self.p.avals[o].shape) for o in op.outputs]
        if name == "reshape":
            return [_reshape_mapping(shape, out_shapes[0])]
        if name == "broadcast_in_dim":
            target = out_shapes[0]
            return [{i: (d if shape[i] == target[d] else None) for i, d in enumerate(params["broadcast_dimensions"])}]
        if name == "transpose":
            perm = params["permutation"]
            return [{src: dst for dst, src in enumerate(perm)}]
        if name == "squeeze":
            dims = {d % len(shape) for d in params["dimensions"]}
            kept = [a for a in range(len(shape)) if a not in dims]
            return [{a: i for i, a in enumerate(kept)}]
        if name == "expand_dims":
            dims = sorted(params["dimensions"])
            rest = [a for a in range(len(out_shapes[0])) if a not in dims]
            return [{a: rest[a] for a in range(len(shape))}]
        if name in _REDUCE:
            axes = set(params["axes"])
            kept = [a for a in range(len(shape)) if a not in axes]
            return [{a: (kept.index(a) if a in kept else None) for a in range(len(shape))}]
        if name in _CUMULATIVE:
            return [{a: (None if a == params["axis"] else a) for a in range(len(shape))}]
        if name in WINDOW:
            dims, strides = params["window_dimensions"], params["window_strides"]
            pads = params.get("padding", ((0, 0),) * len(shape))
            return [{a: (a if dims[a] == 1 and strides[a] == 1 and tuple(pads[a]) == (0, 0) else None)
                     for a in range(len(shape))}]
        if name == "pad":
            config = params["padding_config"]
            return [{a: (a if tuple(config[a]) == (0, 0, 0) else None) for a in range(len(shape))}]
        if name == "slice":
            start, limit = params["start_indices"], params["limit_indices"]
            strides = params["strides"] or (1,) * len(shape)
            return [{a: (a if start[a] == 0 and limit[a] == shape[a] and strides[a] == 1 else None)
                     for a in range(len(shape))}]
        if name == "dynamic_slice":
            sizes = params["slice_sizes"]
            return [{a: (a if sizes[a] == shape[a] else None) for a in range(len(shape))}]
        if name in ("sort", "argsort", "top_k"):
            axis = params.get("dimension", len(shape) - 1)
            return [{a: (None if a == axis % len(shape) else a) for a in range(len(shape))} for _ in op.outputs]
        if name == "split":
            axis = params["axis"]
            return [{a: (None if a == axis else a) for a in range(len(shape))} for _ in op.outputs]
        if name == "stack":  # values side by side on a new axis (a cell's gates): the same units stay units
            axis = params["axis"]
            same = self.stacked_labels(op, None)
            return [{a: (a + (a >= axis) if same is not None else None) for a in range(len(shape))}]
        if name == "concatenate":
            axis = params["dimension"]
            stacked = self.stacked_labels(op, axis)
            if stacked is not None:  # the same units side by side (a cell's gates stacked): they stay units
                return [{a: a for a in stacked}]
            for v in op.inputs[1:]:
                if isinstance(v, int):
                    for _, label in self.units.get(v, {}).items():
                        self.make_whole(label[0], f"concatenated at {op.path or 'top level'}")
                    if self.leaves.get(v):
                        raise self.error(op, "a weight is concatenated")
            return [{a: (None if a == axis else a) for a in range(len(shape))}]
        return None

    def note_uniform(self, op: Op) -> None:
        """Record the axes along which a broadcast's result is constant (new axes, or axes of size 1 before)."""
        shape, target = self.shape(op.inputs[0]), tuple(self.p.avals[op.outputs[0]].shape)
        dims = op.params["broadcast_dimensions"]
        kept = {d for i, d in enumerate(dims) if shape[i] == target[d]}
        axes = {d for d in range(len(target)) if d not in kept and target[d] > 1}
        if axes:
            self.uniform[op.outputs[0]] = axes

    def stacked_labels(self, op: Op, axis: int | None) -> dict[int, tuple[int, int]] | None:
        """Values joined along ``axis`` (a concatenation's; ``None``: a new one) that all carry the same groups on the
        same axes, none on ``axis`` (each a data value): those labels, which the result keeps; ``None`` otherwise."""
        labels = [{a: (self.find(g), inner) for a, (g, inner) in self.units.get(v, {}).items()}
                  if self.is_data(v) else None for v in op.inputs]
        if any(lab is None for lab in labels) or any(lab != labels[0] for lab in labels[1:]) or axis in labels[0]:
            return None
        return labels[0]

    def elementwise(self, index: int, op: Op, data_in: list) -> None:
        out = op.outputs[0]
        out_shape = tuple(self.p.avals[out].shape)
        full = [v for v in op.inputs if len(self.shape(v)) == len(out_shape)]
        if not data_in:  # weights only: carry their axes
            labels: dict[int, frozenset] = {}
            for v in full:
                if isinstance(v, int):
                    for a, s in self.leaves.get(v, {}).items():
                        if self.shape(v)[a] == out_shape[a]:
                            labels[a] = labels.get(a, frozenset()) | s
            self.leaves[out] = labels
            return
        self.data.add(out)
        primary = [v for v in data_in if v not in self.stats]  # statistics (batch norm's) act like weights
        if not primary:
            self.stats.add(out)
        result: dict[int, tuple[int, int]] = {}
        for axis in range(len(out_shape)):
            found = [(v, self.units[v][axis]) for v in data_in
                     if axis in self.units.get(v, {}) and self.shape(v)[axis] == out_shape[axis]]
            if not found:
                continue
            gids = {self.find(g) for _, (g, _) in found}
            inners = {inner for _, (_, inner) in found}
            if len(gids) == 1:
                result[axis] = (gids.pop(), inners.pop() if len(inners) == 1 else 1)
                if len(inners) > 1:
                    self.make_whole(result[axis][0], "added to itself with another layout")
                continue
            if inners != {1}:
                for g in gids:
                    self.make_whole(g, f"flattened units tied at {op.path or 'top level'}")
                continue
            result[axis] = (self.tie(index, op, found, axis), 1)
        self.units[out] = result
        for v in op.inputs:  # a value broadcast along a unit axis (a step's validity): resized with the units
            for a in self.uniform.get(v, ()) if isinstance(v, int) else ():
                if a in result and self.shape(v)[a] == out_shape[a]:
                    self.broadcast_units.setdefault(v, {})[a] = result[a][0]
        # per-unit weights met here belong to the group on that axis
        for v in op.inputs:
            if not isinstance(v, int) or v in self.data:
                continue
            for a, s in self.leaves.get(v, {}).items():
                if a in result and self.shape(v)[a] == out_shape[a] and out_shape[a] > 1:
                    g, inner = result[a]
                    self.groups[self.find(g)].producers |= {(lf, ax, i * inner) for lf, ax, i in s}
        # the region: the output stays in a group's region when every (non-statistic) data operand carrying it was
        # in it; it is activated once any was, or when the op is not affine in them
        affine = op.name in _AFFINE and len(primary) == 1 or op.name in ("add", "sub")
        region: dict[int, bool] = {}
        for _, (g, _) in result.items():
            g = self.find(g)
            states = [self._region_state(v, g) for v in primary if any(self.find(lab[0]) == g
                                                                       for lab in self.units[v].values())]
            if states and all(s is not None for s in states):
                region[g] = any(states) or not affine
        if region:
            self.region[out] = region
        if len(primary) == 1 and primary[0] in self.chain and op.name in _AFFINE:
            self.chain[out] = self.chain[primary[0]]
            self.chain_end[self.chain[out]] = out

    def _region_state(self, v: int, g: int) -> bool | None:
        for gid, activated in self.region.get(v, {}).items():
            if self.find(gid) == g:
                return activated
        return None

    def tie(self, index: int | None, op: Op, found: list, axis: int) -> int:
        """Operands of one elementwise op carrying different groups on one axis: fresh ones (not yet
        through a nonlinearity) become one group; activated ones are read through index maps. Inside a loop
        body (evaluated whole, so no index map can act there) they all become one group, as a recurrent cell's
        gates multiplying each other share their units."""
        if self.loop_depth:
            target = found[0][1][0]
            for _, (g, _) in found[1:]:
                target = self.union(target, g)
            return self.find(target)
        fresh, activated = [], []
        for v, (g, _) in found:
            state = self._region_state(v, self.find(g))
            (fresh if state is False else activated).append((v, self.find(g)))
        if fresh:
            target = fresh[0][1]
            for _, g in fresh[1:]:
                target = self.union(target, g)
        else:
            target = self.new_group(self.shape(found[0][0])[axis], set())
        for v, g in activated:
            if self.find(g) != self.find(target):
                self.maps.append((g, target, index, op.inputs.index(v), axis))
                self.tie_targets.add(target)
        return self.find(target)

    def dot_general(self, op: Op) -> None:
        lhs, rhs = op.inputs[:2]
        (lc, rc), (lb, rb) = op.params["dimension_numbers"]
        ls, rs = self.shape(lhs), self.shape(rhs)
        out = op.outputs[0]
        lfree = [a for a in range(len(ls)) if a not in lc and a not in lb]
        rfree = [a for a in range(len(rs)) if a not in rc and a not in rb]
        position = {("b", i): i for i in range(len(lb))}
        position.update({("l", a): len(lb) + i for i, a in enumerate(lfree)})
        position.update({("r", a): len(lb) + len(lfree) + i for i, a in enumerate(rfree)})
        ldata, rdata = self.is_data(lhs), self.is_data(rhs)
        if ldata and rdata:  # activation x activation (attention): every group involved is kept whole
            for v in (lhs, rhs):
                self.whole_all(v, f"multiplied by another activation at {op.path or 'top level'}")
            self.data.add(out)
            self.units[out] = {}
            return
        if not ldata and not rdata:  # weights only
            labels = {}
            for side, v, free in (("l", lhs, lfree), ("r", rhs, rfree)):
                for a in free:
                    if self.leaf_axes(v, a):
                        labels[position[(side, a)]] = self.leaf_axes(v, a)
            self.leaves[out] = labels
            return
        data, weight = (lhs, rhs) if ldata else (rhs, lhs)
        dc, wc = (lc, rc) if ldata else (rc, lc)
        dfree, wfree = (lfree, rfree) if ldata else (rfree, lfree)
        dbatch = lb if ldata else rb
        dside, wside = ("l", "r") if ldata else ("r", "l")
        labels = self.units.get(data, {})
        for da, wa in zip(dc, wc, strict=True):
            if da in labels:
                g, inner = labels[da]
                axes = self.leaf_axes(weight, wa)
                if axes:
                    self.groups[self.find(g)].consumers |= {(lf, ax, i * inner) for lf, ax, i in axes}
                else:
                    self.make_whole(g, f"contracted with a computed operand at {op.path or 'top level'}")
        result = {}
        for i, a in enumerate(dbatch):
            if a in labels:
                result[i] = labels[a]
        for a in dfree:
            if a in labels:
                result[position[(dside, a)]] = labels[a]
        wshape = ls if rdata else rs
        new = []
        for a in wfree:
            g = self.new_group(wshape[a], set(self.leaf_axes(weight, a)), op.path)
            new.append(g)
            result[position[(wside, a)]] = (g, 1)
        if len(new) > 1:
            for g in new:
                self.make_whole(g, f"a multi-axis projection (e.g. attention heads) at {op.path or 'top level'}")
        self.data.add(out)
        self.units[out] = result
        self.region[out] = {g: False for g in new}

    # loops -------------------------------------------------------------------------------------
    def loop(self, op: Op, loop: Loop) -> None:
        """A ``scan``: its body walked until the carries' units settle (a recurrent state is read by the next
        step, so the weights that read it there consume its units), then its results labelled: the carries as the
        body returns them, the per-step outputs with the loop axis in front."""
        n_consts, n_carry = len(loop.consts), len(loop.carry_in)
        self.body_vars.update(loop.consts + loop.carry_in + loop.xs)
        for outer, inner in zip(op.inputs[:n_consts + n_carry], loop.consts + loop.carry_in, strict=True):
            self.bind(outer, inner, 0)
        for outer, inner in zip(op.inputs[n_consts + n_carry:], loop.xs, strict=True):
            self.bind(outer, inner, -1)
        self.loop_depth += 1
        for _ in range(4):
            for body_op in loop.ops:
                self.body_vars.update(body_op.outputs)
                self.step(None, body_op)
            if not self.join_carries(loop):
                break
        else:
            raise self.error(op, "a loop whose carried units do not settle")
        self.loop_depth -= 1
        for inner, outer in zip(loop.carry_out, op.outputs[:n_carry], strict=True):
            self.bind(inner, outer, 0)
        for inner, outer in zip(loop.ys, op.outputs[n_carry:], strict=True):
            self.bind(inner, outer, 1)
        self.loop_values.update(o for o in op.outputs if self.units.get(o))

    def bind(self, src: int | Const, dst: int, shift: int) -> None:
        """``dst`` takes ``src``'s labels, axes moved by ``shift`` (-1: one step of a scanned input, whose loop
        axis goes; +1: per-step outputs stacked on a new leading axis)."""
        if isinstance(src, Const):
            return

        def moved(labels: Mapping[int, Any]) -> dict:
            return {a + shift: label for a, label in labels.items() if a + shift >= 0}

        if src in self.data:
            labels = self.units.get(src, {})
            if shift < 0 and 0 in labels:
                self.make_whole(labels[0][0], "its units lie along a loop's steps")
            self.data.add(dst)
            self.units[dst] = moved(labels)
            if src in self.region:
                self.region[dst] = dict(self.region[src])
            if src in self.stats:
                self.stats.add(dst)
        elif src in self.leaves:
            if shift < 0 and 0 in self.leaves[src]:
                self.reduced_leaves |= {(leaf, ax) for leaf, ax, _ in self.leaves[src][0]}
            self.leaves[dst] = moved(self.leaves[src])

    def join_carries(self, loop: Loop) -> bool:
        """Give each carry's input the units its output has (one group per axis); True when that changed what
        the body reads, so the body must be walked again."""
        changed = False
        for cin, cout in zip(loop.carry_in, loop.carry_out, strict=True):
            if not self.is_data(cout):
                continue
            if cin not in self.data:
                self.data.add(cin)
                self.units[cin] = {}
                changed = True
            labels = self.units[cin]
            for axis, (g, inner) in self.units.get(cout, {}).items():
                if axis not in labels:
                    labels[axis] = (g, inner)
                    changed = True
                elif labels[axis][1] != inner:
                    self.make_whole(g, "a loop carries its units in another layout")
                    self.make_whole(labels[axis][0], "a loop carries its units in another layout")
                else:
                    self.union(labels[axis][0], g)
            self.region[cin] = {self.find(g): True for g, _ in labels.values()}
        return changed

    def retile(self, op: Op, mapping: dict[int, Any]) -> dict[int, Any]:
        """Inside a loop body, a unit axis split into ``(tiles, units)`` (a recurrent kernel's gate blocks, laid
        out gate-major) keeps its units on the innermost factor: the group shrinks to that factor and its weight
        axes repeat the unit pattern once per tile. Only a group nothing consumes yet, with no flattened axes."""
        src = op.inputs[0]
        if not isinstance(src, int):
            return mapping
        old, new = self.shape(src), tuple(self.p.avals[op.outputs[0]].shape)
        data = self.is_data(src)
        labels = self.units.get(src, {}) if data else self.leaves.get(src, {})
        for ins, outs in reshape_blocks(old, new):
            real_in = [a for a in ins if old[a] != 1]
            real_out = [a for a in outs if new[a] != 1]
            if len(real_in) != 1 or len(real_out) < 2 or real_in[0] not in labels:
                continue
            if not data:  # a weight-only value (a first step's recurrent term): its axes tile the same way
                if all(i == 1 for _, _, i in labels[real_in[0]]):
                    mapping = {**mapping, real_in[0]: real_out[-1]}
                continue
            g, inner = labels[real_in[0]]
            group = self.groups[self.find(g)]
            if inner != 1 or group.consumers or group.size != old[real_in[0]] or any(
                    i != 1 for _, _, i in group.producers):
                continue
            group.size = new[real_out[-1]]
            mapping = {**mapping, real_in[0]: real_out[-1]}
        return mapping

    def conv(self, index: int, op: Op) -> None:
        lhs, rhs = op.inputs
        if not self.is_data(lhs) or self.is_data(rhs):
            raise self.error(op, "a convolution whose kernel depends on the input")
        dn = op.params["dimension_numbers"]
        lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        ls, rs = self.shape(lhs), self.shape(rhs)
        groups = op.params["feature_group_count"]
        labels = self.units.get(lhs, {})
        feature = labels.get(lspec[1])
        out = op.outputs[0]
        where = op.path or "top level"
        g = self.new_group(rs[rspec[0]], set(self.leaf_axes(rhs, rspec[0])), op.path)
        if op.params["batch_group_count"] != 1:
            self.make_whole(g, f"a batch-grouped convolution at {where}")
        if groups == 1:
            if feature is not None:
                axes = self.leaf_axes(rhs, rspec[1])
                if axes:
                    self.groups[self.find(feature[0])].consumers |= {(lf, ax, i * feature[1]) for lf, ax, i in axes}
                else:
                    self.make_whole(feature[0], f"convolved with a computed kernel at {where}")
        elif groups == ls[lspec[1]] and rs[rspec[1]] == 1 and rs[rspec[0]] == groups:
            if feature is not None:  # depthwise: output channel c reads input channel c
                if self.loop_depth:
                    self.make_whole(feature[0], f"a depthwise convolution inside a loop at {where}")
                    self.make_whole(g, f"a depthwise convolution inside a loop at {where}")
                elif feature[1] != 1:
                    self.make_whole(feature[0], f"a depthwise convolution of flattened units at {where}")
                else:
                    self.maps.append((self.find(feature[0]), g, index, 0, lspec[1]))
        else:
            self.make_whole(g, f"a grouped convolution ({groups} groups) at {where}")
            if feature is not None:
                self.make_whole(feature[0], f"a grouped convolution ({groups} groups) at {where}")
        self.data.add(out)
        self.units[out] = {ospec[1]: (g, 1)}
        self.region[out] = {g: False}
        if self.loop_depth:  # MwT's gates multiply outside loops only
            return
        self.chain[out] = g
        self.chain_end[g] = out
        self.conv_input[g] = lhs
        self.conv_layer[g] = self.kernel_layer.get(g, f"conv{g}")

    def gather(self, op: Op) -> None:
        operand, indices = op.inputs[:2]
        dn = op.params["dimension_numbers"]
        out = op.outputs[0]
        shape = self.shape(operand)
        sizes = op.params["slice_sizes"]
        if self.is_data(operand):
            labels = self.units.get(operand, {})
            offset_axes = [a for a in range(len(shape)) if a not in dn.collapsed_slice_dims
                           and a not in getattr(dn, "operand_batching_dims", ())]
            result = {}
            for a, label in labels.items():
                if a in offset_axes and sizes[a] == shape[a] and a not in dn.start_index_map:
                    result[dn.offset_dims[offset_axes.index(a)]] = label
                else:
                    self.make_whole(label[0], f"gathered along its units at {op.path or 'top level'}")
            self.data.add(out)
            self.units[out] = result
            return
        # a weight indexed by the sample: an embedding lookup (whole rows of a 2-D table) only
        if not self.is_data(indices):
            self.leaves[out] = {}
            return
        rows = tuple(dn.collapsed_slice_dims) == (0,) and tuple(dn.start_index_map) == (0,)
        if len(shape) != 2 or not rows or sizes[1] != shape[1] or len(dn.offset_dims) != 1:
            raise self.error(op, f"a weight of shape {shape} feeds a gather that is not an embedding row lookup")
        g = self.new_group(shape[1], set(self.leaf_axes(operand, 1)), op.path)
        self.data.add(out)
        self.units[out] = {dn.offset_dims[0]: (g, 1)}
        self.region[out] = {g: False}


def _reshape_mapping(src: tuple[int, ...], dst: tuple[int, ...]) -> dict[int, Any]:
    """In-axis -> out-axis (or ``(out-axis, inner factor)`` for a merge, ``None`` when split apart)."""
    mapping: dict[int, Any] = {}
    for ins, outs in reshape_blocks(src, dst):
        real_in = [a for a in ins if src[a] != 1]
        real_out = [a for a in outs if dst[a] != 1]
        if len(real_in) <= 1 and len(real_out) <= 1:
            for a in real_in:
                mapping[a] = real_out[0]
            continue
        if len(real_out) == 1:  # merge: inner factor = product of the in-axes after it
            for i, a in enumerate(real_in):
                mapping[a] = (real_out[0], math.prod(src[b] for b in real_in[i + 1:]))
            continue
        for a in real_in:  # a split or a regrouping: units are not followed through it
            mapping[a] = None
    return mapping


def reshape_blocks(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Minimal runs of consecutive axes with equal products on both sides of a reshape."""
    blocks, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        ins, outs, pi, pj = [], [], 1, 1
        if i < len(src):
            ins, pi, i = [i], src[i], i + 1
        if j < len(dst):
            outs, pj, j = [j], dst[j], j + 1
        while pi != pj and (i < len(src) or j < len(dst)):
            if (pi < pj and i < len(src)) or j >= len(dst):
                ins.append(i)
                pi, i = pi * src[i], i + 1
            else:
                outs.append(j)
                pj, j = pj * dst[j], j + 1
        blocks.append((ins, outs))
    return blocks


def derive_graph(program: Program) -> ModelGraph:
    """Walk ``program`` and build its :class:`ModelGraph`; ``ValueError`` for what cannot be followed."""
    walk = _Walk(program)
    walk.run()
    out = program.output_ids[0]
    if isinstance(out, Const) or not walk.is_data(out):
        raise ValueError("cannot derive the unit topology: the model's output does not depend on its input")
    out_shape = tuple(program.avals[out].shape)
    out_labels = walk.units.get(out, {})
    class_axis = len(out_shape) - 1
    if class_axis not in out_labels or out_labels[class_axis][1] != 1:
        raise ValueError(f"cannot derive the unit topology: the model's output {out_shape} does not come from a "
                         "layer whose output features are the classes (a Dense/Conv kernel's output axis)")
    output_gid = walk.find(out_labels[class_axis][0])
    # weights reduced over a unit axis (weight normalisation) or claimed by two groups: keep those groups whole
    owner: dict[tuple[int, int], int] = {}
    for gid in range(len(walk.groups)):
        if walk.find(gid) != gid:
            continue
        for lf, ax, _ in walk.groups[gid].producers | walk.groups[gid].consumers:
            if (lf, ax) in walk.reduced_leaves:
                walk.make_whole(gid, f"its weight {program.leaf_keys[lf]} is reduced over its units")
            if (lf, ax) in owner and walk.find(owner[(lf, ax)]) != gid:
                walk.union(owner[(lf, ax)], gid)
            owner[(lf, ax)] = gid
    output_gid = walk.find(output_gid)
    # read points: where a group's elementwise region ends
    exits: dict[int, list[tuple[int, int, bool]]] = {}
    sown: dict[int, list[tuple[int, int, bool]]] = {}
    for var, states in walk.region.items():
        if var in walk.body_vars:  # a loop's per-step value: the group is read on the loop's stacked result
            continue
        for gid, activated in states.items():
            g = walk.find(gid)
            leaves_region = var in program.output_ids or any(
                walk._region_state(o, g) is None and o not in walk.stats
                for i in walk.uses.get(var, []) for o in program.ops[i].outputs)
            if leaves_region:
                axis = next(a for a, (lg, _) in walk.units[var].items() if walk.find(lg) == g)
                exits.setdefault(g, []).append((var, axis, activated))
            if activated and var in program.names:  # where the model sows its activation (before a dropout, say)
                axis = next(a for a, (lg, _) in walk.units[var].items() if walk.find(lg) == g)
                sown.setdefault(g, []).append((var, axis, activated))
    for g, found in sown.items():  # read there: training mode's dropout must not move the read point
        if g in exits:  # (of several, one the walk would read at: a recurrent layer's states, not its gates)
            exits[g] = [min([f for f in found if f in exits[g]] or found)]
    maps = [(walk.find(s), walk.find(t), op, operand, axis) for s, t, op, operand, axis in walk.maps]
    maps = [m for m in maps if m[0] != m[1]]
    changed = True
    while changed:  # an index map between a whole group and a sliceable one would slice the whole one
        changed = False
        for s, t, *_ in maps:
            ws, wt = walk.groups[s].whole, walk.groups[t].whole
            if bool(ws) != bool(wt):
                walk.make_whole(s if wt else t, f"read through an index map together with a whole group ({ws or wt})")
                changed = True
    roots = sorted({walk.find(g) for g in range(len(walk.groups))}, key=lambda g: walk.groups[g].order)
    names = _group_names(walk, roots, program, exits)
    read_points, groups, whole, sizes = {}, [], [], {}
    for g in roots:
        group = walk.groups[g]
        if g == output_gid:
            continue
        if not group.producers and not group.consumers and g not in exits:
            continue  # a group nothing reads (dead code)
        if group.whole is None:
            candidates = exits.get(g, [])
            vars_ = {v for v, _, _ in candidates}
            if len(vars_) != 1:
                walk.make_whole(g, "read at several places" if vars_ else "never read after its producer")
        if group.whole is not None:
            whole.append(WholeGroup(names[g], group.size, group.whole))
            continue
        var, axis, _ = exits[g][0]
        read_points[names[g]] = ReadPoint(var, axis)
        sizes[names[g]] = group.size
        groups.append(UnitGroup(names[g], _leaf_axes(group.producers, program), _leaf_axes(group.consumers, program)))
    out_group = walk.groups[output_gid]
    if any(inner != 1 for _, _, inner in out_group.producers):
        raise ValueError("cannot derive the unit topology: the class axis of the output is a flattened axis")
    index_maps = []
    for s, t, op, operand, axis in maps:
        if walk.groups[s].whole or walk.groups[t].whole:
            continue
        index_maps.append(IndexMapPoint(f"{names[t]}<-{names[s]}".replace("/", ":"), op, operand, axis,
                                        names[s], names[t]))
    spec = TopologySpec(tuple(groups), _leaf_axes(out_group.producers, program),
                        tuple(IndexMapSpec(m.name, m.source, m.target) for m in index_maps))
    labels = {}
    for var, axes in walk.broadcast_units.items():
        entry = {a: (names[walk.find(g)], 1) for a, g in axes.items() if names.get(walk.find(g)) in sizes}
        if entry:
            labels[var] = entry
    for var, axes in walk.units.items():
        entry = {}
        for a, (g, inner) in axes.items():
            g = walk.find(g)
            if g == output_gid:
                entry[a] = (OUTPUT_LABEL, inner)
            elif names.get(g) in sizes:
                entry[a] = (names[g], inner)
        if entry:
            labels[var] = {**labels.get(var, {}), **entry}
    gates, splits = _gates(walk, names, sizes, output_gid, program)
    return ModelGraph(program, spec, sizes, read_points, tuple(index_maps), tuple(whole), labels,
                      int(out_shape[class_axis]), gates, splits, _loop_axes(walk, spec, program))


def _loop_axes(walk: _Walk, spec: TopologySpec, program: Program) -> tuple[LoopAxis, ...]:
    """For every loop, the axes of its constant operands that index a group it produces (see :class:`LoopAxis`)."""
    roles = {}
    for group in spec.groups:
        for role, axes in (("producer", group.producers), ("consumer", group.consumers)):
            for a in axes:
                roles[(a.key, a.axis % len(program.avals[program.leaf_ids[program.leaf_keys.index(a.key)]].shape))] = (
                    group.name, role)
    out = []
    for index, loop in sorted(program.loops.items()):
        operands = program.ops[index].inputs[:len(loop.consts)]
        found = []
        for k, var in enumerate(operands):
            for axis, items in (walk.leaves.get(var, {}) if isinstance(var, int) else {}).items():
                for leaf, leaf_axis, _ in items:
                    if (program.leaf_keys[leaf], leaf_axis) in roles:
                        found.append((k, axis, *roles[(program.leaf_keys[leaf], leaf_axis)]))
        own = {group for _, _, group, role in found if role == "producer"}
        out += [LoopAxis(index, k, axis, group, role) for k, axis, group, role in sorted(set(found)) if group in own]
    return tuple(out)


def _gates(walk: _Walk, names: Mapping[int, str], sizes: Mapping[str, int], output_gid: int,
           program: Program) -> tuple[tuple[GatePoint, ...], tuple]:
    """MwT's gates: every conv but the first (its rule for VGG), on a group that is sliceable. A conv whose
    group is a residual sum (tied with another conv, or fed an identity shortcut) gets a split group of its
    own kernels (named after its layer, ``<layer>:own`` where a group already has that name), padded into the
    sum, as MwT does inside residual sums."""
    convs = sorted(walk.conv_input, key=lambda g: walk.groups[g].order)
    per_root: dict[int, list[int]] = {}
    for g in convs:
        per_root.setdefault(walk.find(g), []).append(g)
    gates, splits = [], []
    for g in convs[1:]:
        root = walk.find(g)
        if root == output_gid or names[root] not in sizes or g not in walk.chain_end:
            continue
        var = walk.chain_end[g]
        axis = next((a for a, (lg, _) in walk.units[var].items() if walk.find(lg) == root), None)
        if axis is None:
            continue
        group = names[root]
        if root in walk.tie_targets or len(per_root[root]) > 1:
            own = walk.own.get(g, walk.groups[g].producers)
            layers = tuple(sorted({"/".join(program.leaf_keys[lf][1][:-1]) for lf, _, _ in own}))
            group = walk.conv_layer[g]  # named after the conv's layer, or "<layer>:own" where a group has that name
            if group in sizes or group in (gate.group for gate in gates):
                group = f"{group}:own"
            splits.append((group, names[root], layers))
        gates.append(GatePoint(group, var, axis, walk.conv_input[g], walk.groups[root].size))
    return tuple(gates), tuple(splits)


def _leaf_axes(items: set, program: Program) -> tuple[LeafAxis, ...]:
    out = []
    for lf, ax, inner in sorted(items, key=lambda t: (program.leaf_keys[t[0]][1], t[1], t[2])):
        col, path = program.leaf_keys[lf]
        out.append(LeafAxis(path, ax, col, inner))
    return tuple(out)


def _group_names(walk: _Walk, roots: list[int], program: Program,
                 exits: Mapping[int, list[tuple[int, int, bool]]]) -> dict[int, str]:
    """A group read where the model sows a value (``self.sow("intermediates", "conv1_relu", h)``) is named after
    it; any other after the layer whose weight made it (the first, for tied groups): ``'block1/conv2'``."""
    names: dict[int, str] = {}
    used: set[str] = set()
    for g in roots:
        read = {v for v, _, _ in exits.get(g, [])}
        sown = program.names.get(next(iter(read))) if len(read) == 1 else None
        if sown is not None and sown not in used:
            names[g] = sown
            used.add(sown)
    for g in roots:
        if g in names:
            continue
        base = walk.kernel_layer.get(g) or walk.groups[g].origin or f"sum{g}"
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}#{k}"
        used.add(name)
        names[g] = name
    return names

"""Any Flax model, as its author wrote it, as a jaxmod model.

:func:`adapt` takes a ``flax.linen`` module with its variables, or a ``flax.nnx`` module, and a sample
input, and returns a :class:`Net`: an :class:`Adapted` linen module plus the variables in jaxmod's layout.
``Adapted`` runs the user's forward pass by evaluating its traced program (:mod:`jaxmod.graph`), and
at each derived unit group's read point does what a zoo model's ``tap`` does: applies the unit and
position masks it is given and sows the activation. Every approach, composition and metric therefore
takes a user's model unchanged.

Why evaluate the traced graph rather than intercept layers: nonlinearities (``nn.relu``, ``nn.gelu``)
are plain functions, not modules, and the read point lies after them; NNX has no method interception;
and a physically smaller model needs every shape-carrying operation (a flatten's sizes, a depthwise
conv's group count) resized, which only the graph exposes. Linen refuses to apply a module to
parameters of other shapes than its fields declare; the program does not care, so the sliced model is
the same program evaluated on sliced variables, with those shapes rewritten from the inputs' shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from jaxmod import fastconv
from jaxmod.graph import Const, GatePoint, ModelGraph, Op, derive_graph, reshape_blocks, trace_program
from jaxmod.mask_generators import MaskGenerator
from jaxmod.taps import ACTIVATIONS, INDEX_MAPS, POSITION_MASKS, UNIT_MASKS
from jaxmod.topology import TopologySpec

JAXMOD_COLLECTIONS = (ACTIVATIONS, UNIT_MASKS, POSITION_MASKS, INDEX_MAPS)
SOWN = "intermediates"  # what a linen model sows there names the groups read at those values


# ---------------------------------------------------------------------------------------------
# The user's model behind one functional interface.


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """A user's model as two pure functions: ``init(rng, x)`` and ``apply(variables, x, train, rng)``.

    ``apply`` returns ``(logits, updated non-parameter collections)``. Hashed by identity: two
    adapters of one model object share compiled functions.
    """

    kind: str
    name: str
    init_fn: Callable[[jax.Array, jax.Array], dict]
    apply_fn: Callable[..., tuple[jax.Array, dict]]
    named_fn: Callable[..., tuple[tuple[jax.Array, dict], dict]] | None = None
    module: Any = None  # the linen module, for a linen source

    def init(self, rng: jax.Array, x: jax.Array) -> dict:
        return self.init_fn(rng, x)

    def apply(self, variables: Mapping[str, Any], x: jax.Array, train: bool, rng: jax.Array) -> tuple[jax.Array, dict]:
        return self.apply_fn(variables, x, train, rng)

    def apply_named(self, variables: Mapping[str, Any], x: jax.Array, train: bool,
                    rng: jax.Array) -> tuple[tuple[jax.Array, dict], dict[str, jax.Array]]:
        """``apply``'s result and the values the model sows (``intermediates``), by flat name: they name groups."""
        if self.named_fn is None:
            return self.apply(variables, x, train, rng), {}
        return self.named_fn(variables, x, train, rng)


def _takes_train(module: nn.Module) -> bool:
    try:
        return "train" in inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return False


@functools.cache
def linen_source(module: nn.Module) -> Source:
    """A linen module as a :class:`Source` (``train=`` passed when its ``__call__`` takes it). One source per
    module value (linen modules compare by their fields), so equal models share compiled functions."""
    takes_train = _takes_train(module)

    def init(rng, x):
        kwargs = {"train": False} if takes_train else {}
        variables = module.init({"params": rng, "dropout": rng}, x, **kwargs)
        return {c: t for c, t in variables.items() if c not in (*JAXMOD_COLLECTIONS, SOWN)}

    def run(variables, x, train, rng, extra):
        kwargs = {"train": train} if takes_train else {}
        mutable = ([c for c in variables if c != "params"] if train else []) + extra
        out = module.apply(dict(variables), x, rngs={"dropout": rng}, mutable=mutable or False, **kwargs)
        logits, state = out if mutable else (out, {})
        state = dict(state)
        sown = state.pop(SOWN, {})
        return (logits, state if train else {}), sown

    def apply(variables, x, train, rng):
        return run(variables, x, train, rng, [])[0]

    def named(variables, x, train, rng):
        result, sown = run(variables, x, train, rng, [SOWN])
        names = {}
        for path, values in traverse_util.flatten_dict(dict(sown), sep="/").items():
            for k, value in enumerate(values if isinstance(values, tuple) else (values,)):
                names[path if k == 0 else f"{path}#{k + 1}"] = value
        return result, names

    return Source("linen", type(module).__name__, init, apply, named, module)


def _str_keys(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def nnx_source(model: nnx.Module) -> tuple[Source, dict]:
    """An NNX module as a :class:`Source` and its current weights as ``{"params": ..., "batch_stats": ...}``.

    Parameters (``nnx.Param``) form ``params``; every other state (batch statistics, counters) forms
    ``batch_stats``. ``init`` returns the module's own weights (NNX initialises in the constructor).
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    templates = {"params": params, "batch_stats": rest}
    weights = {c: _str_keys(s.to_pure_dict()) for c, s in templates.items() if jax.tree.leaves(s.to_pure_dict())}

    def to_state(collection, pure):
        template = templates[collection]
        flat_template = traverse_util.flatten_dict(template.to_pure_dict())
        flat = traverse_util.flatten_dict(dict(pure))
        values = {k: flat[tuple(str(p) for p in k)] for k in flat_template}
        state = jax.tree.map(lambda v: v, template)
        nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(values))
        return state

    def init(rng, x):
        del rng, x
        return weights

    def apply(variables, x, train, rng):
        del rng
        states = [to_state(c, variables[c]) if c in variables else templates[c] for c in ("params", "batch_stats")]
        module = nnx.merge(graphdef, *states)
        module.train() if train else module.eval()
        logits = module(x)
        if not train or "batch_stats" not in variables:
            return logits, {}
        _, _, new_rest = nnx.split(module, nnx.Param, ...)
        return logits, {"batch_stats": _str_keys(new_rest.to_pure_dict())}

    return Source("nnx", type(model).__name__, init, apply), weights


# ---------------------------------------------------------------------------------------------
# Evaluating the traced program with masks, taps and (for a sliced model) resized shapes.


@functools.lru_cache(maxsize=64)
def model_graph(source: Source, variable_shapes: tuple, x_shape: tuple[int, ...], x_dtype: str,
                train: bool) -> ModelGraph:
    """The derived graph of ``source`` on full-size variables (``variable_shapes``: flat (key, shape, dtype))."""
    variables = traverse_util.unflatten_dict({k: jax.ShapeDtypeStruct(s, d) for k, s, d in variable_shapes})
    x = jax.ShapeDtypeStruct(x_shape, x_dtype)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    with fastconv.reference_convs():  # the plain conv primitive, which the walk follows
        program = trace_program(lambda v, xb, r: source.apply_named(v, xb, train, r), variables, x, rng, named=True)
    return derive_graph(program)


@functools.lru_cache(maxsize=64)
def source_shapes(source: Source, input_shape: tuple[int, ...], dtype: str) -> tuple:
    """The (flat key, shape, dtype) table of the variables ``source`` initialises for inputs of ``input_shape``."""
    x = jax.ShapeDtypeStruct((1, *input_shape), dtype)
    return _shape_table(jax.eval_shape(lambda xb: source.init(jax.random.key(0), xb), x))


def _caller_key(module: nn.Module, name: str) -> jax.Array:
    """The key the caller gave ``init``/``apply`` for ``name`` (Flax's own, before any per-call folding), so that
    an adapted model initialises and drops out exactly as the model does without jaxmod."""
    return module.scope.rngs[name].as_jax_rng()


def _resized_reshape(old_in: tuple, old_out: tuple, new_in: tuple, out_labels: Mapping[int, Any]) -> tuple:
    new_out = list(old_out)
    for ins, outs in reshape_blocks(old_in, old_out):
        old_total = int(np.prod([old_in[a] for a in ins]))
        new_total = int(np.prod([new_in[a] for a in ins]))
        if old_total == new_total:
            continue
        real = [a for a in outs if old_out[a] != 1]
        target = real[0] if len(real) == 1 else next((a for a in outs if a in out_labels), None)
        if target is None:
            raise ValueError(f"cannot resize a reshape {old_in} -> {old_out} of a sliced model")
        rest = int(np.prod([old_out[a] for a in outs if a != target]))
        new_out[target] = new_total // rest
    return tuple(new_out)


def _resized_params(op: Op, ins: list, graph: ModelGraph, widths: Mapping[str, int]) -> dict:
    """``op``'s parameters for operands whose unit axes were sliced (shapes from the operands; a broadcast along a
    unit axis of a value that has none, from the group's sliced width)."""
    params = dict(op.params)
    name = op.name
    avals = graph.program.avals
    old = [tuple(np.shape(v.value)) if isinstance(v, Const) else tuple(avals[v].shape) for v in op.inputs]
    new = [tuple(np.shape(v)) for v in ins]
    if name == "reshape":
        out = op.outputs[0]
        params["new_sizes"] = _resized_reshape(old[0], tuple(avals[out].shape), new[0], graph.labels.get(out, {}))
    elif name == "broadcast_in_dim":
        shape = list(params["shape"])
        for i, d in enumerate(params["broadcast_dimensions"]):
            if old[0][i] == shape[d]:
                shape[d] = new[0][i]
        for d, (group, inner) in graph.labels.get(op.outputs[0], {}).items():
            if group in widths and shape[d] == graph.program.avals[op.outputs[0]].shape[d]:
                shape[d] = widths[group] * inner
        params["shape"] = tuple(shape)
    elif name == "conv_general_dilated":
        lhs_feature = params["dimension_numbers"].lhs_spec[1]
        if params["feature_group_count"] > 1 and params["feature_group_count"] == old[0][lhs_feature]:
            params["feature_group_count"] = new[0][lhs_feature]
    elif name == "gather":
        params["slice_sizes"] = tuple(n if s == o else s for s, o, n in zip(params["slice_sizes"], old[0], new[0],
                                                                            strict=True))
    elif name == "slice":
        params["limit_indices"] = tuple(n if lim == o else lim for lim, o, n in zip(params["limit_indices"], old[0],
                                                                                    new[0], strict=True))
    elif name == "dynamic_slice":
        params["slice_sizes"] = tuple(n if s == o else s for s, o, n in zip(params["slice_sizes"], old[0], new[0],
                                                                            strict=True))
    return params


def _bind(op: Op, ins: list, params: Mapping[str, Any]) -> list:
    if op.name == "conv_general_dilated":  # XLA:CPU's slow shapes take jaxmod's fast formulation
        out = fastconv.conv_general_dilated(
            ins[0], ins[1], params["window_strides"], params["padding"], params["lhs_dilation"], params["rhs_dilation"],
            params["dimension_numbers"], params["feature_group_count"], params["batch_group_count"],
            params["precision"], params["preferred_element_type"])
        return [out]
    out = op.primitive.bind(*ins, **params)
    return list(out) if op.primitive.multiple_results else [out]


def gather_axis(x: jax.Array, index: jax.Array, axis: int) -> jax.Array:
    """Re-index units on ``axis``: ``index`` holds a position in ``x`` or ``x.shape[axis]`` (reads zero)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, 1)
    return jnp.take(jnp.pad(x, pad), index, axis=axis)


def run_graph(graph: ModelGraph, variables: Mapping[str, Any], x: jax.Array, rng: jax.Array, *,
              sliced: bool = False, on_read: Callable[[str, jax.Array, int], jax.Array] | None = None,
              on_gate: Callable[[GatePoint, jax.Array, jax.Array], jax.Array] | None = None,
              index_maps: Mapping[str, jax.Array] | None = None,
              on_loop: Callable[[int, list], tuple[list, dict[int, jax.Array]]] | None = None,
              on_named: Callable[[str, jax.Array], None] | None = None,
              widths: Mapping[str, int] | None = None) -> list:
    """Evaluate the program; ``on_read(group, value, axis)`` replaces each group's value at its read point;
    ``on_gate(gate, value, conv_input)`` each MwT gate point's; ``index_maps`` re-index the operands the graph
    names; ``on_loop(op, consts)`` gives a loop's constant operands edited and those that change per step
    (``{operand: stacked}``); ``on_named(name, value)`` sees each value the model sows; ``sliced`` resizes shape
    parameters (``widths``: the sliced groups' sizes, for a loop's constant initial state)."""
    program = graph.program
    flat = traverse_util.flatten_dict(dict(variables))
    env: dict[int, Any] = {}
    for key, vid in zip(program.leaf_keys, program.leaf_ids, strict=True):
        col, path = key
        if (col, *path) not in flat:
            raise ValueError(f"the variables have no leaf {col}/{'/'.join(path)} that the model reads")
        env[vid] = flat[(col, *path)]
    env[program.input_id] = x
    for vid in program.extra_ids:
        env[vid] = rng
    reads = {p.var: name for name, p in graph.read_points.items()}
    gates = {g.var: g for g in graph.gates} if on_gate is not None else {}
    maps: dict[int, list] = {}
    for m in graph.index_maps:
        maps.setdefault(m.op, []).append(m)
    index_maps = index_maps or {}
    calls = _whole_calls(graph, set(reads) | set(gates))

    def read(v):
        return v.value if isinstance(v, Const) else env[v]

    def write(vid, value):
        if vid in gates:
            value = on_gate(gates[vid], value, read(gates[vid].input))
        if on_read is not None and vid in reads:
            value = on_read(reads[vid], value, graph.read_points[reads[vid]].axis)
        if on_named is not None and vid in program.names:
            on_named(program.names[vid], value)
        env[vid] = value

    index = 0
    while index < len(program.ops):
        call = calls.get(index)
        if call is not None:
            ins = [read(v) for v in call.inputs]
            if all(isinstance(v, Const) or np.shape(a) == tuple(program.avals[v].shape)
                   for a, v in zip(ins, call.inputs, strict=True)):  # a sliced model's smaller values: inlined
                outs = call.primitive.bind(*ins, **call.primitive.get_bind_params(call.params))
                for vid, value in zip(call.outputs, outs, strict=True):
                    write(vid, value)
                index = call.stop
                continue
        op = program.ops[index]
        ins = [read(v) for v in op.inputs]
        for m in maps.get(index, ()):
            if m.name in index_maps:
                ins[m.operand] = gather_axis(ins[m.operand], index_maps[m.name], m.axis)
        if index in program.loops:
            outs = _run_loop(graph, index, ins, on_loop, sliced, widths or {})
        else:
            outs = _bind(op, ins, _resized_params(op, ins, graph, widths or {}) if sliced else op.params)
        for vid, value in zip(op.outputs, outs, strict=True):
            write(vid, value)
        index += 1
    return [read(v) for v in program.output_ids]


def _run_loop(graph: ModelGraph, index: int, ins: list, on_loop: Callable | None, sliced: bool,
              widths: Mapping[str, int]) -> list:
    """A ``scan`` op: bound whole when nothing changes inside it (the traced loop itself); otherwise its body
    evaluated op by op in a ``lax.scan`` of its own, with the constants ``on_loop`` edits, those it makes per-step
    scanned beside the inputs, and (sliced) every shape resized and the constant initial state cut to the groups'
    sliced widths (a recurrent layer's zeros)."""
    op, loop = graph.program.ops[index], graph.program.loops[index]
    n_consts, n_carry = len(loop.consts), len(loop.carry_in)
    consts, carry, xs = list(ins[:n_consts]), list(ins[n_consts:n_consts + n_carry]), list(ins[n_consts + n_carry:])
    stepped: dict[int, jax.Array] = {}
    if on_loop is not None:
        consts, stepped = on_loop(index, consts)
    if not stepped and not sliced:
        return _bind(op, [*consts, *carry, *xs], op.params)
    for k, var in enumerate(loop.carry_in):
        for axis, (group, _) in graph.labels.get(var, {}).items():
            if group in widths and carry[k].shape[axis] != widths[group]:
                carry[k] = jax.lax.slice_in_dim(carry[k], 0, widths[group], axis=axis)
    per_step = sorted(stepped)

    def body(state, inputs):
        x_t, consts_t = inputs
        env = dict(zip(loop.consts, consts, strict=True))
        env.update({loop.consts[k]: value for k, value in zip(per_step, consts_t, strict=True)})
        env.update(zip(loop.carry_in, state, strict=True))
        env.update(zip(loop.xs, x_t, strict=True))

        def read(v):
            return v.value if isinstance(v, Const) else env[v]

        for body_op in loop.ops:
            body_ins = [read(v) for v in body_op.inputs]
            params = _resized_params(body_op, body_ins, graph, widths) if sliced else body_op.params
            env.update(zip(body_op.outputs, _bind(body_op, body_ins, params), strict=True))
        return [read(v) for v in loop.carry_out], [read(v) for v in loop.ys]

    carry, ys = jax.lax.scan(body, carry, (xs, [stepped[k] for k in per_step]), length=op.params["length"],
                             reverse=op.params["reverse"], unroll=op.params["unroll"])
    return [*carry, *ys]


def _whole_calls(graph: ModelGraph, hooked: set[int]) -> dict[int, Any]:
    """The custom-derivative calls evaluated whole (their own rule for gradients), by first op: the outermost at
    each start whose inner values no read point, gate or index map touches (the hooks need the inlined ops)."""
    mapped = {m.op for m in graph.index_maps}
    ops = graph.program.ops
    out: dict[int, Any] = {}
    for call in sorted(graph.program.custom_calls, key=lambda c: (c.start, -c.stop)):
        if call.start in out or any(c.start <= call.start < c.stop for c in out.values()):
            continue
        inner = {v for op in ops[call.start:call.stop] for v in op.outputs} - set(call.outputs)
        if inner & hooked or mapped & set(range(call.start, call.stop)):
            continue
        out[call.start] = call
    return out


def loop_gates(group: str) -> str:
    """The unit-mask name of the gate units of a loop's group (a recurrent layer's): ``rnn1_h`` -> ``rnn1_gates``,
    any other ``g`` -> ``g_gates``. Each gate's units are masked on their own (Imtiaz et al.'s "each gate by its own
    activation")."""
    return f"{group[:-2]}_gates" if group.endswith("_h") else f"{group}_gates"


def loop_masks(graph: ModelGraph, index: int, consts: list,
               unit_masks: Mapping[str, jax.Array]) -> tuple[list, dict[int, jax.Array]]:
    """Unit masks of the groups loop ``index`` produces, applied inside it as its authors' code removes a recurrent
    unit: its columns in every gate block of the kernels and biases read zero (so its pre-activations are zero) and
    its recurrent kernel row is not read. A gate mask (``loop_gates``) zeroes single gate units' columns. A mask
    with a leading step axis (``(T, units)``, ``(T, gates, units)``) edits each step's weights, scanned beside
    the inputs. Returns the constants and ``{operand: per-step stack}``."""
    length = graph.program.ops[index].params["length"]
    keeps: dict[int, list[tuple[int, jax.Array]]] = {}  # operand -> (axis, keep [size] or [T, size])
    for la in graph.loop_axes:
        unit = unit_masks.get(la.group)
        gates = unit_masks.get(loop_gates(la.group)) if la.role == "producer" else None
        if la.op != index or (unit is None and gates is None):
            continue
        size = graph.sizes[la.group]
        tiles = consts[la.operand].shape[la.axis] // size
        keep = jnp.ones((tiles * size,), jnp.float32)
        if unit is not None:
            keep = keep * jnp.tile(unit.astype(jnp.float32), (1,) * (unit.ndim - 1) + (tiles,))
        if gates is not None:
            keep = keep * gates.astype(jnp.float32).reshape(*gates.shape[:-2], tiles * size)
        if keep.ndim > 1 and keep.shape[0] != length:
            raise ValueError(f"a per-step mask for {la.group!r} has {keep.shape[0]} steps; the loop takes {length}")
        keeps.setdefault(la.operand, []).append((la.axis, keep))
    consts = list(consts)
    stepped: dict[int, jax.Array] = {}
    for k, edits in keeps.items():
        value = consts[k]
        per_step = any(keep.ndim > 1 for _, keep in edits)
        if per_step:
            value = jnp.broadcast_to(value, (length, *value.shape))
        for axis, keep in edits:
            shape = [-1 if a == axis else 1 for a in range(consts[k].ndim)]
            keep = keep.reshape([length, *shape] if keep.ndim > 1 else ([1, *shape] if per_step else shape))
            value = value * keep.astype(value.dtype)
        if per_step:
            stepped[k] = value
        else:
            consts[k] = value
    return consts, stepped


# ---------------------------------------------------------------------------------------------
# The adapter module.


def _flat_names(tree: Any) -> dict[str, jax.Array]:
    return traverse_util.flatten_dict(dict(tree), sep="/") if tree else {}


def _along(mask: jax.Array, ndim: int, axis: int, batch: bool = False) -> jax.Array:
    """``mask`` (``[units]``, or ``[batch, units]``) shaped to multiply a value with units on ``axis``."""
    if batch:
        return mask.reshape([mask.shape[0] if a == 0 else (-1 if a == axis else 1) for a in range(ndim)])
    return mask.reshape([-1 if a == axis else 1 for a in range(ndim)])


class Adapted(nn.Module):
    """A model (through its :class:`Source`) as a jaxmod model: ``num_classes``, ``widths`` (a sliced model when
    set), the derived topology (:meth:`graph`), and the ``activations``/``unit_masks``/``position_masks``/
    ``index_maps`` collections. ``variable_shapes`` are the full model's (flat key, shape, dtype) and
    ``input_shape`` one sample's; both may be left out (the zoo's models), and are then taken from each call's
    input: the traced program is always the full model's, evaluated on whatever variables come.

    ``own_keys``: initialise and drop out with the caller's keys exactly as the model does without jaxmod (the
    zoo's models, whose weights must stay those their recorded results were trained from). Off, the model draws
    them from Flax's per-call keys, as the users' models adapted for the recorded benchmark rows did."""

    source: Source
    variable_shapes: tuple | None = None
    input_shape: tuple[int, ...] | None = None
    input_dtype: str = "float32"
    num_classes: int = 2
    widths: tuple[tuple[str, int], ...] = ()
    mask_generators: bool = False
    own_keys: bool = False

    def _key(self, name: str) -> jax.Array:
        return _caller_key(self, name) if self.own_keys else self.make_rng(name)

    def _shapes(self, input_shape: tuple[int, ...], dtype: str) -> tuple:
        return self.variable_shapes or source_shapes(self.source, tuple(input_shape), dtype)

    def _input_shape(self, input_shape: Sequence[int] | None) -> tuple[int, ...]:
        shape = self.input_shape if input_shape is None else tuple(int(d) for d in input_shape)
        if shape is None:
            raise ValueError(f"{self.source.name}: give the input shape (one sample's) to derive its topology")
        return shape

    def residual_splits(self, input_shape: Sequence[int] | None = None) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
        """MwT's kernel sets inside residual sums, derived (see :func:`jaxmod.graph.derive_graph`)."""
        return self.graph(input_shape=input_shape).residual_splits

    def graph(self, batch: int = 1, train: bool = False, input_shape: Sequence[int] | None = None) -> ModelGraph:
        """The derived graph on inputs of ``input_shape`` (one sample's; the model's own when it has one)."""
        shape = self._input_shape(input_shape)
        return model_graph(self.source, self._shapes(shape, self.input_dtype), (batch, *shape), self.input_dtype,
                           train)

    def topology_spec(self, input_shape: Sequence[int] | None = None) -> TopologySpec:
        return self.graph(input_shape=input_shape).spec

    def jaxmod_config(self) -> dict[str, Any]:
        """What identifies the model in module metadata: its class, input and derived topology's digest."""
        digest = hashlib.sha256(repr(self.topology_spec()).encode()).hexdigest()[:16]
        return {"adapted": f"{self.source.kind}:{self.source.name}", "input_shape": list(self.input_shape),
                "topology": digest}

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if jnp.issubdtype(jnp.dtype(self.input_dtype), jnp.integer) and not jnp.issubdtype(x.dtype, jnp.integer):
            x = x.astype(self.input_dtype)  # token ids: shape probes elsewhere pass float zeros
        if self.is_initializing():
            for col, tree in self.source.init(self._key("params"), x).items():
                for key, value in dict(tree).items():
                    self.put_variable(col, key, value)
        variables = {c: dict(t) for c, t in self.variables.items() if c not in JAXMOD_COLLECTIONS}
        dtype = str(jnp.dtype(x.dtype))
        graph = model_graph(self.source, self._shapes(tuple(x.shape[1:]), dtype), tuple(x.shape), dtype, train)
        unit_masks = _flat_names(self.variables.get(UNIT_MASKS))
        position_masks = _flat_names(self.variables.get(POSITION_MASKS))
        index_maps = _flat_names(self.variables.get(INDEX_MAPS))

        def on_read(name: str, value: jax.Array, axis: int) -> jax.Array:
            if name in unit_masks:
                mask = unit_masks[name]
                if mask.ndim > 1:  # one mask per step of a loop's state sequence, shaped like one sample's value
                    mask = jnp.moveaxis(mask, -1, axis - 1)
                    if mask.shape != value.shape[1:]:
                        raise ValueError(f"unit mask for {name!r} has shape {unit_masks[name].shape}, the "
                                         f"activation is {jnp.moveaxis(value, axis, -1).shape[1:]}")
                    value = value * mask.astype(value.dtype)
                else:
                    value = value * _along(mask, value.ndim, axis).astype(value.dtype)
            if name in position_masks:
                mask = jnp.moveaxis(position_masks[name], -1, axis - 1)
                if mask.shape != value.shape[1:]:
                    raise ValueError(f"position mask for {name!r} has shape {position_masks[name].shape}, "
                                     f"activation is {jnp.moveaxis(value, axis, -1).shape[1:]}")
                value = value * mask.astype(value.dtype)
            if not self.is_initializing():  # variables hold no activations (their flat names are no keys)
                self.sow(ACTIVATIONS, name, jnp.moveaxis(value, axis, -1), init_fn=lambda: None,
                         reduce_fn=lambda _, v: v)
            return value

        def on_gate(gate: GatePoint, value: jax.Array, conv_input: jax.Array) -> jax.Array:
            if self.mask_generators:  # MwT: a per-sample channel mask from the conv's input
                name = gate.group.replace("/", ":") + "_generator"  # no "." or "/": checkpoint keys
                mask = MaskGenerator(value.shape[gate.axis], name=name)(conv_input)
                if not self.is_initializing():
                    self.sow(ACTIVATIONS, gate.sown_name, mask, init_fn=lambda: None, reduce_fn=lambda _, v: v)
                value = value * _along(mask, value.ndim, gate.axis, batch=True).astype(value.dtype)
            if gate.group in unit_masks:  # a split group's own kernels, masked (the masked full model)
                value = value * _along(unit_masks[gate.group], value.ndim, gate.axis).astype(value.dtype)
            pad = f"{gate.group}_pad"
            if pad in index_maps:  # a sliced split group, zero-padded into its residual sum's units
                value = gather_axis(value, index_maps[pad], gate.axis)
            return value

        if train and not self.has_rng("dropout") and any(v in graph.program.extra_ids for op in graph.program.ops
                                                        for v in op.inputs):
            raise ValueError(f"{self.source.name} draws random numbers in training (dropout): pass "
                             "rngs={'dropout': key}")
        def on_named(name: str, value: jax.Array) -> None:  # the model's own sown values stay readable
            if not self.is_initializing():
                self.sow(SOWN, name, value, init_fn=lambda: None, reduce_fn=lambda _, v: v)

        def on_loop(index: int, consts: list) -> tuple[list, dict[int, jax.Array]]:
            return loop_masks(graph, index, consts, unit_masks)

        rng = self._key("dropout") if train and self.has_rng("dropout") else jax.random.key(0)
        outputs = run_graph(graph, variables, x, rng, sliced=bool(self.widths), on_read=on_read, on_gate=on_gate,
                            index_maps=index_maps, on_loop=on_loop if unit_masks else None,
                            on_named=on_named if graph.program.loops else None, widths=dict(self.widths))
        logits, *updates = outputs
        if train and updates:
            flat_updates = jax.tree_util.tree_unflatten(graph.program.out_tree, outputs)[1]
            for col, tree in dict(flat_updates).items():
                if self.is_mutable_collection(col):
                    for key, value in dict(tree).items():
                        self.put_variable(col, key, value)
        return logits


# ---------------------------------------------------------------------------------------------
# The public entry point.


@dataclasses.dataclass(frozen=True)
class Net:
    """An adapted model and its variables: what :func:`jaxmod.decompose` and :func:`jaxmod.compose` take."""

    model: Adapted
    variables: Mapping[str, Any]

    def __call__(self, x: jax.Array) -> jax.Array:
        return _jitted_apply(self.model)(self.variables, jnp.asarray(x))

    @property
    def graph(self) -> ModelGraph:
        return self.model.graph()


@functools.lru_cache(maxsize=64)
def _jitted_apply(model: Adapted) -> Callable:
    return jax.jit(model.apply)


def _shape_table(variables: Mapping[str, Any]) -> tuple:
    flat = traverse_util.flatten_dict(dict(variables))
    return tuple(sorted((k, tuple(np.shape(v)), str(jnp.result_type(v))) for k, v in flat.items()))


def adapt(model: Any, variables: Mapping[str, Any] | None = None, sample_x: Any = None) -> Net:
    """A user's Flax model as a jaxmod :class:`Net`: ``adapt(linen_module, variables, x)`` or
    ``adapt(nnx_module, sample_x=x)`` (or ``adapt(nnx_module, None, x)``).

    ``sample_x`` is a batch of one or more inputs (its trailing shape and dtype are the model's input).
    The unit topology is derived here, so every problem surfaces before any work: ``TypeError`` for a
    model that is neither, ``ValueError`` for a sample the model does not take, variables of another
    model, or an operation the derivation cannot follow (named with its layer).
    """
    if sample_x is None:
        raise ValueError("adapt needs a sample input (a batch of at least one sample)")
    x = jnp.asarray(sample_x)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"sample_x must be a batch of at least one sample, got shape {x.shape}")
    if isinstance(model, nnx.Module):
        if variables is not None:
            raise ValueError("an NNX module carries its own weights; pass variables=None")
        source, variables = nnx_source(model)
    elif isinstance(model, nn.Module):
        if not isinstance(variables, Mapping) or "params" not in variables:
            raise ValueError("a linen model needs its variables: a mapping with a 'params' collection")
        source = linen_source(model)
        expected = jax.eval_shape(lambda: source.init(jax.random.key(0), x[:1]))
        given = {c: t for c, t in variables.items() if c not in JAXMOD_COLLECTIONS}
        if _shape_table(expected) != _shape_table(given):
            have, want = _shape_table(given), _shape_table(expected)
            diff = sorted(set(have) ^ set(want), key=str)[:4]
            raise ValueError(f"the variables do not fit {type(model).__name__} on inputs of shape {x.shape[1:]}: "
                             f"e.g. {diff}")
    else:
        raise TypeError(f"adapt takes a flax.linen or flax.nnx module, got {type(model).__name__}")
    variables = {c: dict(t) for c, t in variables.items() if c not in JAXMOD_COLLECTIONS}
    dtype = str(jnp.dtype(x.dtype))
    try:
        out = jax.eval_shape(lambda v, xb: source.apply(v, xb, False, jax.random.key(0))[0], variables, x[:1])
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to run means the sample does not fit
        raise ValueError(f"{source.name} does not take samples of shape {x.shape[1:]} ({dtype}): "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    if len(out.shape) < 2:  # (batch, classes), or (batch, steps, classes) for a sequence of outputs
        raise ValueError(f"{source.name} maps samples of shape {x.shape[1:]} to {out.shape}, not (batch, ..., classes)")
    adapted = Adapted(source, _shape_table(variables), tuple(int(d) for d in x.shape[1:]), dtype,
                      num_classes=int(out.shape[-1]))
    adapted.graph()  # derive now: an operation the walk cannot follow fails here, before any work
    return Net(adapted, variables)


def model_class(ref: str) -> type:
    """The Flax module class ``"package.module:ClassName"`` names; ``ValueError`` naming what is wrong."""
    module_name, _, class_name = str(ref).partition(":")
    if not module_name or not class_name:
        raise ValueError(f"a user's model is named 'package.module:ClassName', got {ref!r}")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import the model {ref!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, nn.Module | nnx.Module)):
        raise ValueError(f"{ref} is not a flax.linen or flax.nnx module class")
    return cls


def import_model(ref: str, num_classes: int, sample_x: Any, seed: int = 0, **config: Any) -> Net:
    """A user's model class named by ``"package.module:ClassName"``, built with ``num_classes`` and ``config``,
    initialised from ``seed`` on ``sample_x`` and adapted: how experiment programs take a model that is not in
    the zoo (e.g. ``--config.model=my_models:SmallCNN``). A linen class is initialised with its own ``init``
    (``train=False`` when its ``__call__`` takes it); an NNX class is built with ``rngs=nnx.Rngs(seed)``.
    ``ValueError`` naming the problem for a reference that does not import or a class that is not a Flax module.
    """
    cls = model_class(ref)
    x = jnp.asarray(sample_x)[:1]
    is_nnx = issubclass(cls, nnx.Module)
    try:
        model = cls(num_classes=num_classes, rngs=nnx.Rngs(seed), **config) if is_nnx else cls(
            num_classes=num_classes, **config)
    except TypeError as err:
        raise ValueError(f"cannot build {ref} with num_classes={num_classes} and {config}: {err}") from err
    if is_nnx:
        return adapt(model, None, x)
    extra = {"train": False} if _takes_train(model) else {}
    # the rbg generator: XLA:CPU compiles a model's initialisers several times faster with it than with threefry
    variables = jax.jit(lambda key, xb: model.init(key, xb, **extra))(jax.random.key(seed, impl="rbg"), x)
    return adapt(model, variables, x)


def describe(net: Net) -> str:
    """A short table of the derived unit groups, index maps and whole groups (for a first look)."""
    graph = net.graph
    lines = [f"{'group':40s} {'units':>6s}  producers / consumers"]
    for g in graph.spec.groups:
        lines.append(f"{g.name:40s} {graph.sizes[g.name]:6d}  {len(g.producers)} / {len(g.consumers)}")
    for m in graph.index_maps:
        lines.append(f"index map {m.name}")
    for w in graph.whole:
        lines.append(f"kept whole: {w.name} ({w.size}): {w.reason}")
    return "\n".join([*lines, f"classes: {graph.num_classes}"])

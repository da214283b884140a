"""Evaluation metrics, analytic FLOP counting, plots and summary tables.

Everything here is a pure function: accuracy helpers are jit-able, the FLOP
counter reads a jaxpr (never wall time or XLA cost analysis, so numbers are
hardware independent and reproducible), plots are written atomically as PNG
files without touching matplotlib's global state, and tables are plain strings.
"""

from __future__ import annotations

import math
import numbers
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr
from matplotlib.figure import Figure

from jaxmod import masks as mask_algebra
from jaxmod.topology import Topology, module_intersections

__all__ = [
    "accuracy_counts",
    "activation_heatmap_png",
    "count_flops",
    "count_macs",
    "jaxpr_flops",
    "line_plot_png",
    "markdown_table",
    "scatter_plot_png",
    "summary_table",
    "top_k_accuracy",
]


# ---------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------


def _check_topk_args(logits: jax.Array, labels: jax.Array, k: int) -> int:
    """Validate static shapes/k for the accuracy helpers; return num_classes."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be an int, got {k!r}")
    if jnp.ndim(logits) < 1:
        raise ValueError("logits must have a trailing class dimension")
    num_classes = int(jnp.shape(logits)[-1])
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must be in [1, {num_classes}] (num_classes), got {k}")
    if tuple(jnp.shape(labels)) != tuple(jnp.shape(logits)[:-1]):
        raise ValueError(
            f"labels shape {tuple(jnp.shape(labels))} must equal the leading dims of logits {tuple(jnp.shape(logits))}"
        )
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {jnp.result_type(labels)}")
    return num_classes


def top_k_hits(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Boolean mask (shape of labels): is the label among the top-k logits?

    The label's rank is the number of classes that beat it: classes with a
    strictly larger logit plus tied classes with a smaller index.  This is the
    same tie-break as ``jnp.argmax`` and ``lax.top_k`` (lower index wins), so
    top-1 accuracy equals ``mean(argmax(logits, -1) == labels)``.  Labels out
    of ``[0, num_classes)`` count as incorrect (range checks are the caller's
    job; this just keeps garbage labels from inflating accuracy).
    """
    num_classes = logits.shape[-1]
    valid = (labels >= 0) & (labels < num_classes)
    safe = jnp.where(valid, labels, 0)
    label_logit = jnp.take_along_axis(logits, safe[..., None], axis=-1)
    idx = jnp.arange(num_classes)
    beats = (logits > label_logit) | ((logits == label_logit) & (idx < safe[..., None]))
    rank = jnp.sum(beats, axis=-1)
    return valid & (rank < k)


@partial(jax.jit, static_argnames="k")
def _accuracy_counts_jit(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    return jnp.sum(top_k_hits(logits, labels, k), dtype=jnp.int32)


def accuracy_counts(logits: jax.Array, labels: jax.Array, k: int = 1) -> jax.Array:
    """Number of rows whose label is among the ``k`` largest logits (int32 scalar).

    Returning an exact integer count (rather than a mean) lets batched
    evaluation sum counts over batches of different sizes without rounding.
    ``logits`` has shape ``(..., num_classes)``, ``labels`` the leading shape.
    Ties are broken towards the lower class index (as ``argmax``/``top_k``).
    """
    _check_topk_args(logits, labels, k)
    return _accuracy_counts_jit(logits, labels, k=int(k))


def top_k_accuracy(logits: jax.Array, labels: jax.Array, k: int = 1) -> jax.Array:
    """Fraction of rows whose label is among the ``k`` largest logits (float32).

    ``k`` is static, so this is jit-able (use ``static_argnames='k'``).  Ties
    are broken towards the lower class index, exactly like ``jnp.argmax`` for
    ``k=1``.  Raises ValueError for ``k`` outside ``[1, num_classes]``,
    mismatched leading dims, non-integer labels, or an empty batch.
    """
    _check_topk_args(logits, labels, k)
    n = math.prod(jnp.shape(labels))
    if n == 0:
        raise ValueError("top_k_accuracy of an empty batch is undefined")
    return _accuracy_counts_jit(logits, labels, k=int(k)).astype(jnp.float32) / n


# ---------------------------------------------------------------------------
# FLOP counting
# ---------------------------------------------------------------------------

# Primitives counted as one FLOP per output element with include_elementwise.
_ELEMENTWISE_PRIMS = frozenset(
    {
        "add", "add_any", "sub", "mul", "div", "rem", "pow", "integer_pow",
        "neg", "sign", "abs", "max", "min", "clamp", "square", "sqrt", "rsqrt",
        "cbrt", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic",
        "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh",
        "asinh", "acosh", "atanh", "erf", "erfc", "erf_inv", "lgamma",
        "digamma", "floor", "ceil", "round", "nextafter",
    }
)  # fmt: skip
# Reductions/scans counted as one FLOP per *input* element with include_elementwise.
_REDUCTION_PRIMS = frozenset(
    {
        "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax",
        "argmin", "cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp",
        "reduce_precision",
    }
)  # fmt: skip


def _size(var: Any) -> int:
    return math.prod(int(d) for d in var.aval.shape)


def _dot_general_macs(eqn: Any) -> int:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    contract = math.prod(int(lhs_shape[d]) for d in lhs_contract)
    return _size(eqn.outvars[0]) * contract


def _conv_macs(eqn: Any) -> int:
    # ConvDimensionNumbers: rhs_spec = (out_feature_dim, in_feature_dim, *spatial).
    # The rhs in-feature dim is already in_features / feature_group_count, and
    # with batch_group_count each output element still sums over exactly one
    # kernel window x rhs in-features, so this formula covers both groupings.
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec
    rhs_shape = eqn.invars[1].aval.shape
    in_feat = int(rhs_shape[rhs_spec[1]])
    window = math.prod(int(rhs_shape[d]) for d in rhs_spec[2:])
    return _size(eqn.outvars[0]) * window * in_feat


def _sub_jaxprs(params: Mapping[str, Any]) -> Iterator[Jaxpr]:
    """Every Jaxpr found in an equation's params (directly or in tuples)."""
    for value in params.values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, Jaxpr):
                yield item


def _jaxpr_counts(jaxpr: Jaxpr, include_elementwise: bool) -> int:
    """Recursively count FLOPs: 2 per dot/conv MAC, plus optional elementwise ops."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += 2 * _dot_general_macs(eqn)
        elif name == "conv_general_dilated":
            total += 2 * _conv_macs(eqn)
        elif name == "scan":
            body = eqn.params["jaxpr"].jaxpr
            total += int(eqn.params["length"]) * _jaxpr_counts(body, include_elementwise)
        elif name == "cond":
            total += max(
                (_jaxpr_counts(b.jaxpr, include_elementwise) for b in eqn.params["branches"]),
                default=0,
            )
        elif name == "while":
            # Trip count is data dependent: body and cond are counted once.
            total += _jaxpr_counts(eqn.params["body_jaxpr"].jaxpr, include_elementwise)
            total += _jaxpr_counts(eqn.params["cond_jaxpr"].jaxpr, include_elementwise)
        elif include_elementwise and name in _ELEMENTWISE_PRIMS:
            total += sum(_size(v) for v in eqn.outvars)
        elif include_elementwise and name in _REDUCTION_PRIMS:
            total += _size(eqn.invars[0])
        else:
            # jit/pjit, closed_call, custom_jvp_call, custom_vjp_call, remat,
            # shard_map, ...: the primal computation is the sub-jaxpr(s).
            total += sum(_jaxpr_counts(j, include_elementwise) for j in _sub_jaxprs(eqn.params))
    return total


def jaxpr_flops(jaxpr: Jaxpr | ClosedJaxpr, *, include_elementwise: bool = False) -> int:
    """FLOPs of an already-traced (closed) jaxpr; see :func:`count_flops`."""
    if isinstance(jaxpr, ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    if not isinstance(jaxpr, Jaxpr):
        raise TypeError(f"expected a Jaxpr or ClosedJaxpr, got {type(jaxpr).__name__}")
    return _jaxpr_counts(jaxpr, include_elementwise)


def count_flops(fn: Callable[..., Any], *args: Any, include_elementwise: bool = False, **kwargs: Any) -> int:
    """Analytic FLOPs of one call ``fn(*args, **kwargs)``, read from its jaxpr.

    Counts ``2 * MACs`` of ``dot_general`` (output elements x contracted size)
    and ``conv_general_dilated`` (output elements x kernel window x kernel
    in-features per group), the convention of the modularization literature,
    so numbers are exact, hardware independent and cheap (tracing only; no
    compilation or execution).  With ``include_elementwise=True`` arithmetic
    and transcendental elementwise ops add 1 per output element and reductions
    1 per input element (comparisons, selects and data movement stay free).

    Sub-jaxprs are walked recursively: ``jit``/``pjit``, ``custom_jvp_call``,
    ``custom_vjp_call`` (primal only), ``remat`` etc. are summed; ``scan``
    bodies are multiplied by ``length``; ``cond`` takes the most expensive
    branch; ``while`` body and condition are counted ONCE (the trip count is
    unknown statically).

    Positional ``args`` are traced (arrays or ``jax.ShapeDtypeStruct``);
    ``kwargs`` are bound statically with ``functools.partial`` so Python flags
    like ``train=False`` work.  ``fn`` cannot receive a keyword named
    ``include_elementwise`` this way (bind it with ``partial`` yourself).
    """
    closed = jax.make_jaxpr(partial(fn, **kwargs) if kwargs else fn)(*args)
    return jaxpr_flops(closed, include_elementwise=include_elementwise)


def count_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Multiply-accumulates of dot/conv ops in one call (``count_flops // 2``)."""
    return count_flops(fn, *args, include_elementwise=False, **kwargs) // 2


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


def _atomic_savefig(fig: Figure, path: str | os.PathLike[str], dpi: int = 120) -> None:
    """Save ``fig`` as PNG to a temp file next to ``path``, then os.replace it."""
    target = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(target))
    tmp = os.path.join(directory, f".{base}.{uuid.uuid4().hex}.tmp")
    # os.open with 0o666 (not mkstemp's 0o600) so the final file gets the usual umask mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _finite_1d(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a sequence of numbers") from exc
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} must not be empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must contain only finite numbers")
    return arr


def _sort_units(rates: np.ndarray) -> np.ndarray:
    """Column order grouping units by their most active class (block structure).

    Within a class group units are ordered by decreasing peak rate; units that
    never fire go last.
    """
    peak = rates.max(axis=0)
    group = np.where(peak > 0, rates.argmax(axis=0), rates.shape[0])
    return np.lexsort((-peak, group))


def activation_heatmap_png(
    rates: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    sort_units: bool = True,
) -> None:
    """Write one PNG with a (classes x units) activation-rate heatmap per layer.

    ``rates[layer][c, u]`` is how often unit ``u`` is active on class ``c``
    (in [0, 1]).  Class-specific units show up as blocks, which is what
    decomposition into per-class modules exploits; ``sort_units`` orders
    columns by the class of maximal rate to make those blocks visible.  All
    units are drawn (wide layers are resampled to the figure width rather than
    truncated).  Input is validated before anything is written, and the file is
    written atomically.
    """
    if not isinstance(rates, Mapping) or len(rates) == 0:
        raise ValueError("rates must be a non-empty mapping of layer name -> array")
    arrays: dict[str, np.ndarray] = {}
    num_classes: int | None = None
    for name, value in rates.items():
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"rates[{name!r}] must be 2-D (classes, units), got {arr.shape}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"rates[{name!r}] must not be empty, got shape {arr.shape}")
        if not np.all((arr >= 0.0) & (arr <= 1.0)):  # also rejects NaN
            raise ValueError(f"rates[{name!r}] must lie in [0, 1]")
        if num_classes is None:
            num_classes = arr.shape[0]
        elif arr.shape[0] != num_classes:
            raise ValueError(
                f"all layers must have the same number of rows (classes); "
                f"rates[{name!r}] has {arr.shape[0]}, expected {num_classes}"
            )
        arrays[str(name)] = arr[:, _sort_units(arr)] if sort_units else arr
    assert num_classes is not None
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries, expected {num_classes}")

    n = len(arrays)
    max_units = max(a.shape[1] for a in arrays.values())
    ncols = 1 if max_units > 128 else min(3, n)
    nrows = math.ceil(n / ncols)
    dpi = 150
    if ncols == 1:
        # Give every unit at least ~1 pixel (up to 40 inches), so wide layers stay
        # legible without dropping columns.
        panel_w = min(40.0, max(12.0, 1.15 * max_units / dpi))
    else:
        panel_w = min(6.0, max(3.0, 0.06 * max_units + 1.5))
    pixels = int(0.85 * panel_w * dpi)  # approximate drawable width of one panel
    panel_h = min(6.0, max(1.6, 0.22 * num_classes + 1.0))
    fig = Figure(figsize=(panel_w * ncols + 1.0, panel_h * nrows + (0.5 if title else 0.0)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for ax, (name, arr) in zip(axes.flat, arrays.items(), strict=False):
        units = arr.shape[1]
        image = ax.imshow(
            arr,
            aspect="auto",
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            # Exact cells when every unit gets a pixel; antialiased resampling
            # otherwise, so no column silently vanishes.
            interpolation="nearest" if units <= pixels else "antialiased",
        )
        ax.set_title(f"{name} ({units} units{', sorted' if sort_units else ''})", fontsize=9)
        ax.set_xlabel("unit", fontsize=8)
        ax.set_ylabel("class", fontsize=8)
        ax.tick_params(labelsize=7)
        if num_classes <= 40:
            ax.set_yticks(range(num_classes))
            ax.set_yticklabels(class_names if class_names is not None else range(num_classes))
        if sort_units:
            ax.set_xticks([])
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="activation rate", shrink=0.9)
    if title:
        fig.suptitle(title)
    _atomic_savefig(fig, path, dpi=dpi)


def _finish_xy_plot(
    fig: Figure,
    ax: Any,
    path: str | os.PathLike[str],
    xlabel: str,
    ylabel: str,
    title: str | None,
) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _atomic_savefig(fig, path)


def line_plot_png(
    xs: Sequence[float],
    ys_by_label: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
) -> None:
    """Write a PNG with one line per label over shared ``xs`` (e.g. accuracy vs. epoch).

    ValueError before writing on empty/non-finite input or length mismatches.
    """
    x = _finite_1d(xs, "xs")
    if not isinstance(ys_by_label, Mapping) or len(ys_by_label) == 0:
        raise ValueError("ys_by_label must be a non-empty mapping of label -> values")
    series = {}
    for label, ys in ys_by_label.items():
        y = _finite_1d(ys, f"ys_by_label[{label!r}]")
        if y.shape != x.shape:
            raise ValueError(f"ys_by_label[{label!r}] has {y.size} values but xs has {x.size}")
        series[str(label)] = y
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for label, y in series.items():
        ax.plot(x, y, marker="o", markersize=3, label=label)
    _finish_xy_plot(fig, ax, path, xlabel, ylabel, title)


def scatter_plot_png(
    points_by_label: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
) -> None:
    """Write a PNG scatter plot, one colour per label (e.g. accuracy vs. module size).

    ValueError before writing on empty/non-finite input or x/y length mismatches.
    """
    if not isinstance(points_by_label, Mapping) or len(points_by_label) == 0:
        raise ValueError("points_by_label must be a non-empty mapping of label -> (xs, ys)")
    series = {}
    for label, pair in points_by_label.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"points_by_label[{label!r}] must be an (xs, ys) pair")
        x = _finite_1d(pair[0], f"points_by_label[{label!r}] xs")
        y = _finite_1d(pair[1], f"points_by_label[{label!r}] ys")
        if x.shape != y.shape:
            raise ValueError(f"points_by_label[{label!r}] has {x.size} xs but {y.size} ys")
        series[str(label)] = (x, y)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for label, (x, y) in series.items():
        ax.scatter(x, y, s=18, label=label)
    _finish_xy_plot(fig, ax, path, xlabel, ylabel, title)


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def _prepare_table(
    rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None, floatfmt: str
) -> tuple[list[str], list[list[str]], list[bool]]:
    """Validate rows/columns; return headers, formatted cells, right-align flags."""
    if isinstance(rows, Mapping) or len(rows) == 0:
        raise ValueError("rows must be a non-empty sequence of mappings")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"rows[{i}] must be a mapping, got {type(row).__name__}")
    try:
        format(1.0, floatfmt)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid floatfmt {floatfmt!r}") from exc
    known: dict[str, None] = {}
    for row in rows:
        for key in row:
            known.setdefault(str(key), None)
    if columns is None:
        cols = list(known)
    else:
        cols = [str(c) for c in columns]
        if not cols:
            raise ValueError("columns must not be empty")
        if len(set(cols)) != len(cols):
            raise ValueError(f"duplicate columns in {cols}")
        unknown = [c for c in cols if c not in known]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; available: {list(known)}")

    def lookup(row: Mapping[str, object], col: str) -> object:
        if col in row:
            return row[col]
        for key, value in row.items():  # non-str keys were stringified above
            if str(key) == col:
                return value
        return None

    def is_number(v: object) -> bool:
        return isinstance(v, numbers.Number) and not isinstance(v, bool)

    def fmt(v: object) -> str:
        if v is None:
            return ""
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            return str(int(v))
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            return format(float(v), floatfmt)
        return " ".join(str(v).split("\n"))

    raw = [[lookup(row, c) for c in cols] for row in rows]
    raw = [[v.item() if isinstance(v, (np.ndarray, jax.Array)) and np.ndim(v) == 0 else v for v in r] for r in raw]
    right = [
        all(is_number(r[j]) for r in raw if r[j] is not None) and any(r[j] is not None for r in raw)
        for j in range(len(cols))
    ]
    cells = [[fmt(v) for v in r] for r in raw]
    return cols, cells, right


def summary_table(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str] | None = None,
    *,
    floatfmt: str = ".4f",
) -> str:
    """Fixed-width plain-text table (header, dashes, aligned columns) for logs.

    ``columns`` defaults to all keys in order of first appearance; missing
    cells are blank.  Floats use ``floatfmt``; numeric columns are
    right-aligned, others left-aligned; columns are separated by two spaces and
    lines carry no trailing whitespace.  ValueError on empty rows, unknown or
    duplicate columns, or a bad ``floatfmt``.
    """
    cols, cells, right = _prepare_table(rows, columns, floatfmt)
    widths = [max(len(h), *(len(r[j]) for r in cells)) for j, h in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(cols), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def markdown_table(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str] | None = None,
    floatfmt: str = ".4f",
) -> str:
    """GitHub-flavoured Markdown table (numeric columns right-aligned with ``---:``).

    Same column/format rules and errors as :func:`summary_table`; ``|`` inside
    cells is escaped.  Cells are padded so the raw Markdown is readable too.
    """
    cols, cells, right = _prepare_table(rows, columns, floatfmt)
    cols = [c.replace("|", "\\|") for c in cols]
    cells = [[v.replace("|", "\\|") for v in r] for r in cells]
    widths = [max(3, len(h), *(len(r[j]) for r in cells)) for j, h in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
        return "| " + " | ".join(parts) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if r else "-" * w for w, r in zip(widths, right, strict=True)) + " |"
    return "\n".join([line(cols), sep, *(line(r) for r in cells)])


# ---------------------------------------------------------------------------
# Module metrics (MODA's counting: weights as scalar elements of the params)
# ---------------------------------------------------------------------------


def module_metrics(topology: Topology, unit_masks: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Module sizes, overlaps and Jaccard indices (fractions of the full model's weights).

    ``unit_masks`` is ``{group: bool[num_classes, units]}``; returns per-module ``sizes`` and
    the pairwise ``overlap`` and ``jaccard`` matrices, plus their means over modules / pairs.
    """
    total = int(sum(np.size(v) for v in jax.tree.leaves(params)))
    stats = mask_algebra.statistics_from_intersections(module_intersections(topology, unit_masks), total)
    return {
        **stats,
        "mean_size": float(np.mean(stats["sizes"])),
        "mean_overlap": mask_algebra.mean_off_diagonal(stats["overlap"]),
        "mean_jaccard": mask_algebra.mean_off_diagonal(stats["jaccard"]),
    }


def forward_flops(model: Any, variables: Mapping[str, Any], input_shape: Sequence[int]) -> int:
    """FLOPs of one eval-mode forward pass on a single input, counted from the jaxpr."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return count_flops(lambda v, xb: model.apply(v, xb), variables, x)


# ---------------------------------------------------------------------------
# Pan & Rajan: Jaccard index between a module and the model; CO2e (ICSE 2022, Eq. 1 and 2)
# ---------------------------------------------------------------------------


def module_model_jaccard(stacked: Any) -> np.ndarray:
    """Per module, |module & model| / |module | model| over the elements its masks cover.

    A module is a subset of its model (which keeps every element), so this is the kept fraction.
    ``stacked`` is a mask tree with a leading module axis.
    """
    leaves = [np.asarray(leaf).reshape(np.shape(leaf)[0], -1) for leaf in mask_algebra._leaves(stacked)]
    if not leaves:
        raise ValueError("no mask leaves to compare with the model")
    kept = np.sum([leaf.sum(axis=1) for leaf in leaves], axis=0)
    return kept / sum(leaf.shape[1] for leaf in leaves)


PUE = 1.58  # power usage effectiveness in Eq. 1 (Strubell et al.)
CO2E_PER_KWH = 0.954  # pounds of CO2e per kWh in Eq. 2


def co2e(seconds: float, cpu_watts: float, dram_watts: float, gpu_watts: float = 0.0,
         gpus: int = 0) -> dict[str, float]:
    """Energy ``pt = 1.58 t (pc + pr + g pg) / 1000`` (kWh, t in hours) and ``CO2e = 0.954 pt`` (lbs)."""
    values = {"seconds": seconds, "cpu_watts": cpu_watts, "dram_watts": dram_watts, "gpu_watts": gpu_watts}
    bad = [k for k, v in values.items() if not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0)]
    if bad or gpus < 0:
        raise ValueError(f"co2e needs finite non-negative inputs, got {values} and gpus={gpus}")
    kwh = PUE * (seconds / 3600.0) * (cpu_watts + dram_watts + gpus * gpu_watts) / 1000.0
    return {"kwh": kwh, "co2e_lbs": CO2E_PER_KWH * kwh}


# ---------------------------------------------------------------------------
# MwT's kernel metrics: KRR, cohesion and coupling by the Jaccard index (Eq. 1-3), exact pairwise
# ---------------------------------------------------------------------------


@partial(jax.jit, static_argnames="block")
def _jaccard_pair_sum(x: jax.Array, valid: jax.Array, block: int) -> jax.Array:
    """Sum of JI(row i, row j) over ordered pairs i != j of valid rows, ``block`` rows at a time."""
    sizes = jnp.sum(x, axis=1)
    n = x.shape[0]

    def one_block(start):
        xb = jax.lax.dynamic_slice_in_dim(x, start, block)
        vb = jax.lax.dynamic_slice_in_dim(valid, start, block)
        sb = jax.lax.dynamic_slice_in_dim(sizes, start, block)
        inter = xb @ x.T
        union = sb[:, None] + sizes[None, :] - inter
        ji = jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)  # two empty sets are the same set
        rows = start + jnp.arange(block)
        pair = vb[:, None] & valid[None, :] & (rows[:, None] != jnp.arange(n)[None, :])
        return jnp.sum(jnp.where(pair, ji, 0.0))

    return jnp.sum(jax.lax.map(one_block, jnp.arange(0, n, block)))


def mean_pairwise_jaccard(sets: Any, block: int = 512) -> float:
    """Exact mean Jaccard index (Eq. 1) over all unordered pairs of rows of a 0/1 matrix ``(n, K)``.

    Every pair is computed (intersections as one matmul per block of rows, unions from the row
    sizes): no sampling. Two empty sets count as identical (JI 1). ``ValueError`` for fewer than two rows.
    """
    x = np.asarray(sets)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need a (sets >= 2, elements) matrix, got shape {x.shape}")
    if not np.isin(x, (0, 1)).all():
        raise ValueError("sets must be 0/1 (or bool) membership rows")
    n = x.shape[0]
    block = max(1, min(block, n))
    pad = (-n) % block
    xp = np.concatenate([x.astype(np.float32), np.zeros((pad, x.shape[1]), np.float32)])
    valid = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
    total = float(_jaccard_pair_sum(jnp.asarray(xp), jnp.asarray(valid), block))
    return total / (n * (n - 1))


def kernel_retention_rate(module_kernels: Any) -> float:
    """KRR: mean over modules of the fraction of kernels a module keeps (``bool[modules, kernels]``)."""
    k = np.asarray(module_kernels, bool)
    if k.ndim != 2 or k.shape[1] == 0:
        raise ValueError(f"module kernels must be (modules, kernels), got shape {k.shape}")
    return float(np.mean(k.mean(axis=1)))


def kernel_cohesion(sample_kernels: Any, labels: Any, module_kernels: Any, *, filter_by_module: bool = True,
                    block: int = 512) -> np.ndarray:
    """Cohesion of each module (Eq. 2): mean JI over all pairs of its class's samples' kernel sets.

    ``sample_kernels`` is ``bool[samples, kernels]`` (the kernels relevant to each sample),
    ``module_kernels`` ``bool[classes, kernels]``. As the MwT reference code does, a sample's set is
    first restricted to its module's kernels (``filter_by_module``). A class with one sample has
    cohesion 1. Returns ``float[classes]``.
    """
    s = np.asarray(sample_kernels, bool)
    y = np.asarray(labels)
    k = np.asarray(module_kernels, bool)
    if s.ndim != 2 or k.ndim != 2 or s.shape[1] != k.shape[1]:
        raise ValueError(f"sample kernels {s.shape} and module kernels {k.shape} must be (n, K) and (C, K)")
    if y.shape != (s.shape[0],) or y.min() < 0 or y.max() >= k.shape[0]:
        raise ValueError(f"labels must be {s.shape[0]} integers in [0, {k.shape[0]})")
    out = np.ones(k.shape[0])
    for c in range(k.shape[0]):  # classes are configuration; the pairs inside are one matmul per block
        rows = s[y == c] & k[c] if filter_by_module else s[y == c]
        if len(rows) >= 2:
            out[c] = mean_pairwise_jaccard(rows, block)
    return out


def kernel_coupling(module_kernels: Any) -> float:
    """Coupling (Eq. 3) averaged over all pairs of modules: mean JI of their kernel sets."""
    return mean_pairwise_jaccard(np.asarray(module_kernels, bool))


# ------------------------------------------------------------------------------------------------- BLEU


def _ngram_keys(codes: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sentence id, n-gram as an (K, n) row) of every n-gram of a flat, ragged corpus of integer codes."""
    starts = np.cumsum(lengths) - lengths
    sentence = np.repeat(np.arange(lengths.shape[0]), lengths)
    position = np.arange(codes.shape[0]) - np.repeat(starts, lengths)
    ok = position + n <= lengths[sentence]
    begin = np.flatnonzero(ok)
    grams = codes[begin[:, None] + np.arange(n)[None, :]] if begin.size else np.zeros((0, n), dtype=codes.dtype)
    return sentence[begin], grams


def bleu_statistics(
    references: Sequence[Sequence[Any]], hypotheses: Sequence[Sequence[Any]], max_order: int = 4
) -> dict[str, Any]:
    """Corpus n-gram statistics for BLEU: clipped matches and totals per order 1..max_order, and the hypothesis and
    reference lengths. One reference per hypothesis; tokens are any comparable hashables (strings or ints).

    Vectorised over the corpus: tokens are coded once with `np.unique`, each order's n-grams become rows that are
    counted per sentence with `np.unique(axis=0)`, and a hypothesis n-gram's count is clipped by the same n-gram's
    count in its own reference (Papineni et al.'s modified precision).
    """
    if isinstance(max_order, bool) or not isinstance(max_order, numbers.Integral) or max_order < 1:
        raise ValueError(f"max_order must be a positive integer, got {max_order!r}")
    if isinstance(references, (str, bytes)) or isinstance(hypotheses, (str, bytes)):
        raise TypeError("references and hypotheses must be sequences of token sequences, not strings")
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if len(hypotheses) == 0:
        raise ValueError("BLEU needs at least one hypothesis")
    for what, corpus in (("reference", references), ("hypothesis", hypotheses)):
        bad = next((i for i, s in enumerate(corpus) if isinstance(s, (str, bytes))), None)
        if bad is not None:
            raise TypeError(f"{what} {bad} is a string; pass a list of tokens (e.g. text.split())")
    ref_len = np.array([len(s) for s in references], dtype=np.int64)
    hyp_len = np.array([len(s) for s in hypotheses], dtype=np.int64)
    tokens = [t for s in references for t in s] + [t for s in hypotheses for t in s]
    flat = np.empty(len(tokens), dtype=object)
    flat[:] = tokens
    try:
        _, codes = np.unique(flat, return_inverse=True) if flat.size else (None, np.zeros(0, dtype=np.int64))
    except TypeError:
        raise TypeError("tokens must be mutually comparable (all strings or all integers)") from None
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    ref_codes, hyp_codes = codes[: ref_len.sum()], codes[ref_len.sum() :]
    matches = np.zeros(max_order, dtype=np.int64)
    totals = np.zeros(max_order, dtype=np.int64)
    for n in range(1, max_order + 1):  # loop over n-gram orders
        ref_sentence, ref_grams = _ngram_keys(ref_codes, ref_len, n)
        hyp_sentence, hyp_grams = _ngram_keys(hyp_codes, hyp_len, n)
        totals[n - 1] = hyp_sentence.shape[0]
        if hyp_sentence.size == 0 or ref_sentence.size == 0:
            continue
        rows = np.concatenate([np.column_stack([ref_sentence, ref_grams]), np.column_stack([hyp_sentence, hyp_grams])])
        _, key = np.unique(rows, axis=0, return_inverse=True)
        key = key.reshape(-1)
        ref_count = np.bincount(key[: ref_sentence.shape[0]], minlength=int(key.max()) + 1)
        hyp_count = np.bincount(key[ref_sentence.shape[0] :], minlength=int(key.max()) + 1)
        matches[n - 1] = int(np.minimum(ref_count, hyp_count).sum())
    return {
        "matches": matches,
        "totals": totals,
        "hyp_len": int(hyp_len.sum()),
        "ref_len": int(ref_len.sum()),
    }


def corpus_bleu(
    references: Sequence[Sequence[Any]],
    hypotheses: Sequence[Sequence[Any]],
    max_order: int = 4,
    smooth: str = "none",
) -> float:
    """Corpus BLEU (Papineni et al. 2002) on token lists, on the 0..1 scale (multiply by 100 for sacrebleu's scale).

    BLEU = BP * exp(mean over n = 1..max_order of log p_n), with p_n the clipped n-gram precision pooled over the
    corpus and BP = min(1, exp(1 - r / c)) the brevity penalty (c, r: total hypothesis and reference lengths). One
    reference per hypothesis, no tokenisation of its own (the caller's tokens are used as they are, as in the
    reference code's `nltk` `corpus_bleu` on word lists; `max_order` 1..4 gives its '1-grams' .. '1-4-grams').
    `smooth="none"` returns 0 when some order has no match; `smooth="exp"` is sacrebleu's default smoothing
    (the k-th order without a match counts as 1 / (2^k * total)).
    """
    if smooth not in ("none", "exp"):
        raise ValueError(f"smooth must be 'none' or 'exp', got {smooth!r}")
    stats = bleu_statistics(references, hypotheses, max_order)
    matches, totals = stats["matches"].astype(np.float64), stats["totals"].astype(np.float64)
    c, r = stats["hyp_len"], stats["ref_len"]
    if c == 0:
        return 0.0
    if smooth == "none":
        if np.any(matches == 0):
            return 0.0
        precisions = matches / totals
    else:
        zero = (matches == 0) & (totals > 0)
        k = np.cumsum(zero)
        safe_totals = np.maximum(totals, 1.0)
        precisions = np.where(zero, 1.0 / (2.0**k * safe_totals), matches / safe_totals)
        if np.any(totals == 0):
            return 0.0
    brevity = 1.0 if c > r else math.exp(1.0 - r / c)
    return float(brevity * math.exp(np.mean(np.log(precisions))))

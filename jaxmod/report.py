"""Plots (PNG, written atomically, matplotlib's global state untouched) and plain-text tables.

The one place that imports matplotlib: training, statistics and decomposition never import it.
"""

from __future__ import annotations

import math
import numbers
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure


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

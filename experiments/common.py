"""Pieces the table programs share: flag parsing, resumable rows, Markdown/CSV tables, atomic JSON."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import app, flags

from jaxmod.modules import as_hashable


def define_model_run_flags(out: str, models: Sequence[str], dataset: str, epochs: int, train_limit: int) -> None:
    """The flags of a program that trains zoo models on one dataset into a resumable work directory: --workdir,
    --out, --models, --dataset, --epochs, --train_limit (0: the whole training split) and --seed."""
    flags.DEFINE_string("workdir", None, "Where the runs are checkpointed (resumable).")
    flags.DEFINE_string("out", out, "Output directory.")
    flags.DEFINE_list("models", list(models), "Models.")
    flags.DEFINE_string("dataset", dataset, "Dataset.")
    flags.DEFINE_integer("epochs", epochs, "Training epochs of every run.")
    flags.DEFINE_integer("train_limit", train_limit, "Class-balanced training subset (0: the whole training split).")
    flags.DEFINE_integer("seed", 0, "Seed.")


def start_program(argv: Sequence[str], workdir: str | None) -> None:
    """The common start of a results program's ``main``: no stray arguments (``UsageError``), a ``--workdir``
    (a one-line error and exit status 2 without one), absl logging at warnings."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
    if not workdir:
        print("error: --workdir is required", file=sys.stderr)
        sys.exit(2)
    logging.getLogger("absl").setLevel(logging.WARNING)


def parse_json_object(text: str, flag: str) -> dict[str, Any]:
    """A flag holding a JSON object, as a hashable mapping; ``ValueError`` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--{flag} is not JSON: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"--{flag} must be a JSON object, got {text!r}")
    return as_hashable(value)


def number_list_flag(values: Sequence[str], flag: str, allow_zero: bool = False) -> list[float]:
    """A list flag of numbers, each > 0 (>= 0 with ``allow_zero``), in the given order; ``app.UsageError``
    naming the flag otherwise (empty lists included)."""
    try:
        numbers = [float(v) for v in values]
    except ValueError as err:
        raise app.UsageError(f"--{flag} must be numbers: {list(values)}") from err
    if not numbers or min(numbers) < 0 or (min(numbers) == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise app.UsageError(f"--{flag} must be {kind} numbers, got {list(values)}")
    return numbers


def write_rows_tables(stem: str, rows: Sequence[Mapping[str, Any]], title: str, notes: str, program: str) -> str:
    """``<stem>.csv`` and ``<stem>.md`` (title, the command that made it, the rows, notes); returns the Markdown path.

    ``program`` is the module name the command line is written with (``python -m <program> <this run's flags>``).
    """
    if not rows:
        raise ValueError("no rows to write")
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    cols = list(rows[0])
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    cmd = " ".join(shlex.quote(a) for a in ["python", "-m", program, *sys.argv[1:]])
    lines = [f"# {title}", "", "Made by:", "", "```", cmd, "```", "",
             "| " + " | ".join(cols) + " |", "| " + " | ".join("---:" for _ in cols) + " |"]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", notes, ""]
    with open(f"{stem}.md", "w") as f:
        f.write("\n".join(lines))
    return f"{stem}.md"


def read_jsonl_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows a resumable table program already wrote (one JSON object per line; a torn last line is ignored)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logging.warning("ignoring an unreadable line of %s", os.fspath(path))
    return rows


def append_jsonl_rows(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Append finished rows, one JSON object per line, so that an interrupted program resumes after them."""
    with open(path, "a") as f:
        f.writelines(json.dumps(dict(r)) + "\n" for r in rows)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV text (the first row's keys are the columns)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text through a temporary file and a rename: a reader never sees half a file."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Write JSON through a temporary file and a rename: a reader never sees half a file."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")

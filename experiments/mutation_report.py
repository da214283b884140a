r"""The mutation report: mutmut's results per module, every survivor with its diff and why it survives.

    make mutation    # one `mutmut run` per module of [tool.mutmut] in pyproject.toml, then this program

Reads the finished ``mutmut run`` in ``mutants/`` (``mutmut results --all true``, ``mutmut show``), the measured
wall time of each module's run (``--times``: lines ``module seconds``, as ``make mutation`` writes them), and
``experiments/results/mutation/equivalent.json`` (mutant name -> why it cannot change behaviour: reviewed by
hand) and ``surviving.json`` (survivors that could change behaviour: why no test kills them yet; not scored as
equivalent). Score per module: killed / (mutants - equivalent), where a mutant no selected test reaches counts as
surviving. A module of the scope that ``mutants/`` holds no results for (it was measured in an earlier run) keeps
its row, survivors and time from the previous ``mutation.json``. Writes ``README.md`` and ``mutation.json`` in
``--out``. ``--list``: print the scope's modules (dotted names, from ``only_mutate``) and stop.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys

from absl import app, flags

from experiments.common import write_json_atomic, write_text
from jaxmod import report

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "experiments/results/mutation", "Output directory (README.md, mutation.json).")
flags.DEFINE_string("times", "", "File of `module seconds` lines: each module's measured mutmut run time.")
flags.DEFINE_string("mutmut", os.path.join(os.path.dirname(sys.executable), "mutmut"), "The mutmut executable.")
flags.DEFINE_string("pyproject", "pyproject.toml", "Where [tool.mutmut] is.")
flags.DEFINE_bool("list", False, "Print the modules of the scope, one a line, and stop.")
flags.DEFINE_string("note", "", "A paragraph printed under the table (how the times were measured, what is left).")

KILLED = {"killed", "segfault"}  # a test run that fails detects the mutant
# not scored: mutants the run did not check, and timeouts (on this shared machine a slow or paused test run, not
# an infinite loop, is what times out; they are listed apart)
UNSCORED = {"not checked", "timeout"}
COMMAND = 'mutmut run --max-children 1 "{module}.*"'  # how make mutation runs one module


def mutmut(*args: str) -> str:
    return subprocess.run([FLAGS.mutmut, *args], capture_output=True, text=True, check=True).stdout


def scope(path: str) -> list[str]:
    """The dotted module names of ``only_mutate`` (``jaxmod/approaches/rnn.py`` -> ``jaxmod.approaches.rnn``)."""
    text = open(path).read()
    section = text[text.index("[tool.mutmut]"):]
    files = re.findall(r'"([^"]+)"', re.search(r"^only_mutate\s*=\s*\[(.*?)\]", section, re.S | re.M).group(1))
    return [f.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for f in files]


def statuses() -> dict[str, str]:
    """Mutant name -> mutmut's status (killed, survived, no tests, timeout, ...)."""
    out = {}
    for line in mutmut("results", "--all", "true").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            out[name] = status.strip()
    return out


def module_of(mutant: str) -> str:
    return mutant.split("__mutmut_")[0].rsplit(".", 1)[0]


def read_times(path: str) -> dict[str, float]:
    """``module seconds`` lines; a module run twice (resumed) adds up."""
    times: dict[str, float] = collections.defaultdict(float)
    if path:
        for line in open(path):
            if line.strip():
                module, seconds = line.split()
                times[module] += float(seconds)
    return dict(times)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    modules = scope(FLAGS.pyproject)
    if FLAGS.list:
        print("\n".join(modules))
        return
    found = {n: s for n, s in statuses().items() if module_of(n) in modules}
    previous_path = os.path.join(FLAGS.out, "mutation.json")
    previous = json.load(open(previous_path)) if os.path.exists(previous_path) else {"modules": [], "survivors": []}
    earlier = {r["module"]: r for r in previous["modules"] if r["module"] in modules and r["module"] != "all"}
    if not found and not earlier:
        raise app.UsageError("no mutmut results: run `make mutation` (or `mutmut run`) first")
    pending = sorted(n for n, s in found.items() if s == "not checked")  # a run cut short: reported, not scored
    timeouts = sorted(n for n, s in found.items() if s == "timeout")
    found = {n: s for n, s in found.items() if s not in UNSCORED}
    path = os.path.join(FLAGS.out, "equivalent.json")
    equivalent = json.load(open(path)) if os.path.exists(path) else {}
    path = os.path.join(FLAGS.out, "surviving.json")  # survivors that are not equivalent: why no test kills them yet
    surviving = json.load(open(path)) if os.path.exists(path) else {}
    times = read_times(FLAGS.times)
    rows, survivors = [], []
    by_module = collections.defaultdict(list)
    for name, status in found.items():
        by_module[module_of(name)].append((name, status))
    for module in modules:
        mutants = by_module.get(module)
        if not mutants:  # measured in an earlier run: its row and survivors as they were
            if module in earlier:
                row = {"not checked": 0, "seconds": None, **earlier[module]}
                row.setdefault("command", f"mutmut run --max-children 2 (with {len(earlier)} modules in one run of "
                                          f"{previous.get('seconds', 0) / 60:.0f} minutes)")
                rows.append(row)
                survivors += [s for s in previous["survivors"] if module_of(s["mutant"]) == module]
            continue
        killed = sum(s in KILLED for _, s in mutants)
        eq = sum(n in equivalent and s not in KILLED for n, s in mutants)
        alive = [(n, s) for n, s in mutants if s not in KILLED]
        not_checked = sum(module_of(n) == module for n in pending + timeouts)
        seconds = times.get(module, (earlier.get(module) or {}).get("seconds"))
        rows.append({"module": module, "mutants": len(mutants) + not_checked, "killed": killed, "equivalent": eq,
                     "surviving, not equivalent": len(alive) - eq, "not checked": not_checked,
                     "score": killed / max(len(mutants) - eq, 1), "seconds": seconds,
                     "command": COMMAND.format(module=module)})
        for name, status in sorted(alive, key=lambda a: a[0]):
            diff = [line for line in mutmut("show", name).splitlines()
                    if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
            survivors.append({"mutant": name, "status": status, "diff": "\n".join(diff),
                              "why": equivalent.get(name) or "NOT EQUIVALENT: " + surviving.get(
                                  name, "not explained, needs a test")})
    total = {"module": "all"}
    for key in ("mutants", "killed", "equivalent", "surviving, not equivalent", "not checked"):
        total[key] = sum(r.get(key) or 0 for r in rows)
    total["score"] = total["killed"] / max(total["mutants"] - total["not checked"] - total["equivalent"], 1)
    total["seconds"] = sum(r.get("seconds") or 0 for r in rows) or None
    total["command"] = "make mutation"
    rows.append(total)
    os.makedirs(FLAGS.out, exist_ok=True)
    write_json_atomic(os.path.join(FLAGS.out, "mutation.json"), {"modules": rows, "survivors": survivors,
                                                                  "not_checked": pending, "timeouts": timeouts})
    table = [{**r, "minutes": "" if r.get("seconds") is None else f"{r['seconds'] / 60:.0f}"} for r in rows]
    columns = ["module", "mutants", "killed", "equivalent", "surviving, not equivalent", "not checked", "score",
               "minutes"]
    lines = ["# Mutation testing", "",
             "Made by `make mutation` (mutmut; the modules and the fast unit tests they run against are "
             "`[tool.mutmut]` in pyproject.toml): one `mutmut run` per module, each timed (wall minutes on one "
             "core of this 2-core machine; the first module's time includes mutmut's one pass over every selected "
             "test that maps tests to functions). Score: killed / (mutants - not checked - equivalent).", "",
             report.markdown_table(table, columns, floatfmt=".3f"), ""] + ([FLAGS.note, ""] if FLAGS.note else []) + [
             "Commands (from the repository root, after `make data`):", ""]
    lines += [f"- `{r['module']}`: `{r['command']}`" for r in rows if r["module"] != "all" and r.get("command")]
    lines += [""]
    if pending:
        lines += [f"**{len(pending)} mutants were not checked** (the run was cut short; they are not in the "
                  "scores): " + ", ".join(sorted({module_of(n) for n in pending})) + ".", ""]
    if timeouts:
        lines += [f"{len(timeouts)} mutants timed out and are not scored: " + ", ".join(f"`{n}`" for n in timeouts)
                  + ".", ""]
    lines += ["## Survivors", ""]
    for s in survivors:
        lines += [f"### `{s['mutant']}` ({s['status']})", "", s["why"], "", "```diff", s["diff"], "```", ""]
    write_text(os.path.join(FLAGS.out, "README.md"), "\n".join(lines))
    print(report.summary_table(table, columns, floatfmt=".3f"))


if __name__ == "__main__":
    app.run(main)

r"""The mutation report: mutmut's results per module, every survivor with its diff and why it survives.

    make mutation    # runs mutmut over [tool.mutmut] in pyproject.toml, then this program

Reads the finished ``mutmut run`` in ``mutants/`` (``mutmut results --all true``, ``mutmut show``), and
``experiments/results/mutation/equivalent.json`` (mutant name -> why it cannot change behaviour: reviewed by
hand). Score per module: killed / (mutants - equivalent), where a mutant no selected test reaches counts as
surviving. Writes ``README.md`` and ``mutation.json`` in ``--out``.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

from absl import app, flags

from experiments.common import write_json_atomic, write_text
from jaxmod import report

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "experiments/results/mutation", "Output directory (README.md, mutation.json).")
flags.DEFINE_integer("seconds", 0, "Wall time of the mutmut run, for the report (0: not stated).")
flags.DEFINE_string("mutmut", os.path.join(os.path.dirname(sys.executable), "mutmut"), "The mutmut executable.")

KILLED = {"killed", "segfault"}  # a test run that fails detects the mutant
# not scored: mutants the run did not check, and timeouts (on this shared machine a slow or paused test run, not
# an infinite loop, is what times out; they are listed apart)
UNSCORED = {"not checked", "timeout"}


def mutmut(*args: str) -> str:
    return subprocess.run([FLAGS.mutmut, *args], capture_output=True, text=True, check=True).stdout


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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    found = statuses()
    if not found:
        raise app.UsageError("no mutmut results: run `make mutation` (or `mutmut run`) first")
    pending = sorted(n for n, s in found.items() if s == "not checked")  # a run cut short: reported, not scored
    timeouts = sorted(n for n, s in found.items() if s == "timeout")
    found = {n: s for n, s in found.items() if s not in UNSCORED}
    path = os.path.join(FLAGS.out, "equivalent.json")
    equivalent = json.load(open(path)) if os.path.exists(path) else {}
    rows, survivors = [], []
    by_module = collections.defaultdict(list)
    for name, status in found.items():
        by_module[module_of(name)].append((name, status))
    for module, mutants in sorted(by_module.items()):
        killed = sum(s in KILLED for _, s in mutants)
        eq = sum(n in equivalent and s not in KILLED for n, s in mutants)
        alive = [(n, s) for n, s in mutants if s not in KILLED]
        rows.append({"module": module, "mutants": len(mutants), "killed": killed, "equivalent": eq,
                     "surviving, not equivalent": len(alive) - eq,
                     "score": killed / max(len(mutants) - eq, 1)})
        for name, status in alive:
            diff = [line for line in mutmut("show", name).splitlines()
                    if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
            survivors.append({"mutant": name, "status": status, "diff": "\n".join(diff),
                              "why": equivalent.get(name, "NOT EXPLAINED: needs a test")})
    total = {"module": "all", "mutants": sum(r["mutants"] for r in rows), "killed": sum(r["killed"] for r in rows),
             "equivalent": sum(r["equivalent"] for r in rows),
             "surviving, not equivalent": sum(r["surviving, not equivalent"] for r in rows)}
    total["score"] = total["killed"] / max(total["mutants"] - total["equivalent"], 1)
    rows.append(total)
    os.makedirs(FLAGS.out, exist_ok=True)
    write_json_atomic(os.path.join(FLAGS.out, "mutation.json"), {"modules": rows, "survivors": survivors,
                                                                  "seconds": FLAGS.seconds, "not_checked": pending,
                                                                  "timeouts": timeouts})
    timing = f" The mutmut run took {FLAGS.seconds / 60:.0f} minutes on this machine." if FLAGS.seconds else ""
    lines = ["# Mutation testing", "", "Made by `make mutation` (mutmut; the modules and the fast unit tests they run "
             f"against are `[tool.mutmut]` in pyproject.toml).{timing} Score: killed / (mutants - equivalent).", "",
             report.markdown_table(rows, floatfmt=".3f"), ""]
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
    print(report.summary_table(rows, floatfmt=".3f"))


if __name__ == "__main__":
    app.run(main)

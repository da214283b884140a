r"""Kill -9 at random points of a run, rerun it, and check it finishes exactly as an uninterrupted run.

    python -m experiments.benchmarks.kill_resume --trials=10 --out=experiments/results/reliability/kill_resume.json

One uninterrupted reference run first (its stage lines timed), then each trial: start the same run in a fresh work
directory, SIGKILL it at a random moment of one stage (training, decomposition and module saving, composition,
drawn in turn), rerun it to the end, and compare its ``results.json`` with the reference's (every figure but wall
times) and look for leftover staging or orbax temporary directories. Writes one JSON with every trial.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
from absl import app, flags

from experiments.common import write_json_atomic

FLAGS = flags.FLAGS
flags.DEFINE_integer("trials", 10, "Runs actually killed (a run that ended before its kill moment is not counted).")
flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
flags.DEFINE_string("out", "experiments/results/reliability/kill_resume.json", "Where the JSON goes.")
flags.DEFINE_list("settings", ["--config=experiments/configs/moda.py", "--config.model=lenet5",
                               "--config.train.epochs=3", "--config.train_limit=3000", "--config.test_limit=1000",
                               "--config.reuse.num_subtasks=3", "--config.timing_repeats=0"],
                  "The run's command-line settings (progress lines are switched on to time the stages).")

STAGES = {"training": ("standard epoch", "decomposing"), "decomposition and saving": ("decomposing", "composing"),
          "composition": ("composing", None)}
LEFTOVERS = ("jaxmod-staging", "jaxmod-old", "orbax-checkpoint-tmp")


def command(workdir: str) -> list[str]:
    return [sys.executable, "-m", "experiments.modularize", *FLAGS.settings, "--config.progress=true",
            f"--workdir={workdir}"]


def run_timed(workdir: str) -> tuple[float, dict[str, float]]:
    """Run to the end; return the wall time and when each stage line first appeared (seconds from the start)."""
    start = time.perf_counter()
    marks: dict[str, float] = {}
    proc = subprocess.Popen(command(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        for marker in ("standard epoch", "decomposing", "composing"):
            if marker in line and marker not in marks:
                marks[marker] = time.perf_counter() - start
    if proc.wait() != 0:
        raise RuntimeError(f"the run in {workdir} failed")
    return time.perf_counter() - start, marks


def comparable(results: Any) -> Any:
    """Results without wall times (keys naming seconds or milliseconds, and the measured latency)."""
    if isinstance(results, dict):
        return {k: comparable(v) for k, v in results.items()
                if "seconds" not in k and not k.endswith("_ms") and k != "latency"}
    if isinstance(results, list):
        return [comparable(v) for v in results]
    return results


def leftovers(workdir: str) -> list[str]:
    return sorted(os.path.join(d, n) for d, dirs, files in os.walk(workdir) for n in dirs + files
                  if any(mark in n for mark in LEFTOVERS))


def main(argv: list[str]) -> None:
    del argv
    rng = np.random.default_rng(FLAGS.seed)
    base = tempfile.mkdtemp(prefix="kill_resume_")
    try:
        total, marks = run_timed(os.path.join(base, "reference"))
        with open(os.path.join(base, "reference", "results.json")) as f:
            reference = comparable(json.load(f))
        stage_names = list(STAGES)
        trials: list[dict[str, Any]] = []
        trial = 0
        while sum(t["killed"] for t in trials) < FLAGS.trials and trial < 3 * FLAGS.trials:
            stage = stage_names[trial % len(stage_names)]
            begin, end = STAGES[stage]
            low = marks.get(begin, 0.0)
            high = marks.get(end, total) if end else 0.95 * total  # a kill before the run ends on its own
            moment = float(rng.uniform(low, max(low + 0.1, high)))
            workdir = os.path.join(base, f"trial{trial}")
            proc = subprocess.Popen(command(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(moment)
            killed = proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            rerun_seconds, _ = run_timed(workdir)
            with open(os.path.join(workdir, "results.json")) as f:
                same = comparable(json.load(f)) == reference
            stray = leftovers(workdir)
            trials.append({"trial": trial, "stage": stage, "kill_at_seconds": round(moment, 2), "killed": killed,
                           "rerun_seconds": round(rerun_seconds, 1), "identical_results": same,
                           "stray_temporaries": stray})
            print(trials[-1], flush=True)
            shutil.rmtree(workdir, ignore_errors=True)
            trial += 1
        out = {"command": " ".join(["python", "-m", "experiments.modularize", *FLAGS.settings]),
               "reference_seconds": round(total, 1), "stage_marks_seconds": marks, "trials": trials,
               "killed_trials": sum(t["killed"] for t in trials),
               "all_identical": all(t["identical_results"] for t in trials),
               "no_stray_temporaries": all(not t["stray_temporaries"] for t in trials),
               "load_average": os.getloadavg()}
        os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
        write_json_atomic(FLAGS.out, out)
        print(json.dumps({k: v for k, v in out.items() if k != "trials"}, indent=1))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)

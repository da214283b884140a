"""``python -m experiments.modularize ARGS`` (or ``python -c CODE``), each run its own process, without each paying
for importing jax.

Every run is a process forked from a ``multiprocessing`` fork server that has imported jax and the experiment
pipeline once (no backend started, one thread): the child sets ``sys.argv`` and runs the program's module as
``__main__``, as ``python -m`` does (or the code, as ``python -c`` does), with its stdout and stderr (file descriptors
1 and 2) sent to files, and exits with the program's exit status. Nothing of the test process (its flags, its jax
backend, its state) reaches the run.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import runpy
import sys
import tempfile
import traceback

PROGRAM = "experiments.modularize"
PRELOAD = ["jax", "experiments.pipeline"]  # imports only: the program's module itself (its flags) loads in each run


@dataclasses.dataclass(frozen=True)
class Completed:
    """What ``subprocess.run(..., capture_output=True, text=True)`` gives: exit status, stdout, stderr."""

    returncode: int
    stdout: str
    stderr: str


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # as the interpreter does for sys.exit("message")
    return 1


def _run_program(argv: list[str], out_path: str, err_path: str, code: str | None = None) -> None:
    """In the forked child: the program as ``python -m PROGRAM argv...`` (``python -c code`` where code is given);
    never returns."""
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    status = 1
    try:
        sys.argv = ["-c" if code is not None else PROGRAM, *argv]
        try:
            if code is None:
                runpy.run_module(PROGRAM, run_name="__main__", alter_sys=True)
            else:
                exec(compile(code, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            status = 0
        except SystemExit as exit_:
            status = _exit_status(exit_.code)
        except BaseException:  # noqa: BLE001 - an uncaught error ends the program with a traceback, status 1
            traceback.print_exc()
            status = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(status)


_context = None


def _fork_server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def run_program(argv: list[str], timeout: float = 300.0, code: str | None = None) -> Completed:
    """``python -m experiments.modularize *argv`` (``python -c code *argv`` where code is given) in the current
    directory, forked from the preloaded server."""
    with tempfile.TemporaryDirectory() as tmp:
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        process = _fork_server().Process(target=_run_program, args=(list(argv), out_path, err_path, code))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise TimeoutError(f"{'python -c' if code is not None else PROGRAM} {' '.join(argv)} ran past {timeout} s")
        with open(out_path) as out, open(err_path) as err:
            return Completed(process.exitcode, out.read(), err.read())

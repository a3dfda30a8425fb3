"""The grading probe: the only course code besides ``helpers`` that runs inside a student's kernel.

Kernel side: it runs in the student's interpreter, which student code can change at will.

Runs in the student's interpreter, so it holds nothing secret: no expected value, no reference
implementation, no verdict. The hidden part of every test cell is one line::

    import gradeprobe; gradeprobe.run("01_forward_process", "q_sample", globals())

While grading (``GRADEPROBE_DIR`` set by the trusted worker), ``run`` reads the plan that the
trusted side wrote for this question (``<dir>/plan/<question>.json`` + ``.npz``: which student
functions to call, on which inputs, with which stub models and generators), executes it on the
notebook's globals and writes what came back to ``<dir>/records/<question>.json`` + ``.npz``:
plain data only (JSON and NumPy arrays), read back with ``allow_pickle=False``. It never raises
and never prints. The verdict, the message and the points are decided afterwards by
``grading.verdict`` in the trusted grading process, which the kernel cannot reach.

Without ``GRADEPROBE_DIR`` (the instructor's own runs: nbval on ``solutions/``, the mistake
suites), ``run`` plans, executes and judges in this process with ``grading.verdict`` and raises
``AssertionError`` with the message when the check fails.
"""
from __future__ import annotations

import os

from .codec import read_file, write_file
from .executor import execute

__all__ = ["run", "execute"]

ENV_DIR = "GRADEPROBE_DIR"


def run(assignment: str, question: str, namespace: dict) -> None:
    """Run the hidden test ``question`` of ``assignment`` on the notebook's globals ``namespace``."""
    folder = os.environ.get(ENV_DIR)
    if not folder:
        from grading.verdict import run_local  # the instructor's environment: judge right here

        run_local(assignment, question, namespace)
        return
    try:
        plan = read_file(os.path.join(folder, "plan"), question)
    except (OSError, ValueError):
        return  # no plan: the trusted side will report the question as not run
    try:
        record = execute(plan, namespace)
    except BaseException as exc:  # noqa: BLE001 - the probe must never stop the cell
        record = {"fatal": f"{type(exc).__name__}: {exc}"[:2000]}, {}
    try:
        write_file(os.path.join(folder, "records"), question, *record)
    except Exception:  # noqa: BLE001 - e.g. a full disk: the trusted side reports no record
        pass

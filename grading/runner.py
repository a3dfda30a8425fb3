"""Run a notebook's code cells in a fresh kernel and score its test cells the way nbgrader does.

Used by the notebooks' mistake tests (``tests/test_mistakes_NN.py``) and by
``python -m grading check``::

    from grading.runner import run_notebook
    res = run_notebook("solutions/01_forward_process/01_forward_process.ipynb",
                       replace={"q_sample": BUGGY_SOURCE}, stop_after="test_q_sample")
    assert not res["test_q_sample"].passed

One kernel (the ``python3`` kernel of the running Python) per call; cwd is the notebook's folder;
the environment has ``DIFFUSION_FAST=1``. Cells tagged with one of ``skip_tags`` are not run;
errors do not stop the run. Scoring mirrors ``nbgrader.utils.determine_grade`` after the course's
``IgnorePattern`` (warnings on stderr do not count): an error or other stderr output gives 0, a
numeric last expression gives partial credit, anything else full points.

Trusted: runs in the instructor's (or a test's) process; the notebook's code runs in the kernel it
starts.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import cells, course
from .messages import STDERR_MESSAGE, error_text, summary


@dataclass
class CellResult:
    """Outcome of one graded test cell (``grade: true`` code cell)."""
    grade_id: str
    passed: bool
    points: float
    max_points: float
    message: str = ""
    seconds: float = field(default=0.0, compare=False)


def _warning_pattern() -> str:
    return course.load_config(course.REPO_ROOT).IgnorePattern.pattern


def score_cell(cell, pattern: str | None = None) -> CellResult:
    """Score an executed test cell like nbgrader (``IgnorePattern`` then ``determine_grade``)."""
    from nbformat import from_dict
    from nbgrader.utils import determine_grade

    pattern = _warning_pattern() if pattern is None else pattern
    cell = from_dict(cell)
    outputs = []
    for out in cell.get("outputs", []):
        if (pattern and out.get("output_type") == "stream" and out.get("name") == "stderr"
                and re.search(pattern, out.get("text", ""))):
            continue
        outputs.append(out)
    cell.outputs = outputs
    meta = cells.nbgrader(cell)
    points, max_points = determine_grade(cell)
    points = float(points or 0.0)
    message = ""
    for out in outputs:
        if out.get("output_type") == "error":
            message = error_text(out.get("ename", "Error"), out.get("evalue", ""))
            break
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            message = STDERR_MESSAGE
            break
    if not message and points < max_points:
        message = f"partial credit {points:g}/{max_points:g}"
    return CellResult(grade_id=meta["grade_id"], passed=points >= max_points and max_points > 0
                      or (max_points == 0 and not message), points=points,
                      max_points=float(max_points), message=message)


def run_notebook(path, replace: dict[str, str] | None = None, skip_tags=(cells.SLOW_TAG,),
                 stop_after: str | None = None, timeout: int = 120,
                 env: dict[str, str] | None = None) -> dict[str, CellResult]:
    """Execute a notebook and return ``{test grade_id: CellResult}`` for the test cells it reached.

    Args:
        path: the ``.ipynb`` file (a solution notebook or a student's); it is not modified.
        replace: ``{grade_id: new source}`` for answer cells (any cell with that ``grade_id``).
        skip_tags: cells carrying one of these tags are not executed (a skipped test cell scores 0
            with the message ``"skipped (tag ...)"``).
        stop_after: a ``grade_id``; nothing after that cell runs or is reported.
        timeout: seconds per cell; a cell over it is interrupted and scores like an error.
        env: extra environment variables for the kernel (on top of ``DIFFUSION_FAST=1``).

    Raises:
        KeyError: a ``replace`` key or ``stop_after`` names no cell of the notebook.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    ids = {cells.grade_id(c): i for i, c in enumerate(nb.cells) if cells.grade_id(c)}
    for gid, src in (replace or {}).items():
        if gid not in ids:
            raise KeyError(f"replace: no cell with grade_id {gid!r} in {path.name}; "
                           f"known: {sorted(ids)}")
        nb.cells[ids[gid]].source = src
    if stop_after is not None and stop_after not in ids:
        raise KeyError(f"stop_after: no cell with grade_id {stop_after!r} in {path.name}")
    last = ids[stop_after] if stop_after is not None else len(nb.cells) - 1

    kernel_env = course.grading_env()
    kernel_env.update(env or {})
    replies = {}

    def on_executed(cell, cell_index, execute_reply):  # nbgrader's Execute.on_cell_executed
        replies[cell_index] = execute_reply

    from jupyter_client.manager import AsyncKernelManager

    sockets = tempfile.mkdtemp(prefix="kernel-")  # the kernel's Unix sockets, removed at the end
    km = AsyncKernelManager(kernel_name="python3", **course.ipc_kernel(os.path.join(sockets, "k")))
    client = NotebookClient(
        nb, km=km, timeout=timeout, kernel_name="python3", allow_errors=True,
        interrupt_on_timeout=True, raise_on_iopub_timeout=False, startup_timeout=120,
        error_on_timeout={"ename": "CellTimeoutError",
                          "evalue": f"cell did not finish within {timeout} s",
                          "traceback": ["CellTimeoutError: cell did not finish in time"]},
        skip_cells_with_tag=cells.NEVER_SKIP_TAG,
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_executed=on_executed,
    )
    pattern = _warning_pattern()
    results: dict[str, CellResult] = {}
    skip = set(skip_tags or ())
    try:
        with client.setup_kernel(env=kernel_env, cwd=str(path.parent), stderr=subprocess.DEVNULL):
            for index, cell in enumerate(nb.cells):
                if index > last:
                    break
                tags = set(cell.get("metadata", {}).get("tags", []))
                if cell.cell_type != "code":
                    continue
                if tags & skip:
                    if cells.is_test(cell):
                        m = cells.nbgrader(cell)
                        results[m["grade_id"]] = CellResult(
                            m["grade_id"], False, 0.0, float(m.get("points", 0)),
                            f"skipped (tag {', '.join(sorted(tags & skip))})")
                    continue
                t0 = time.perf_counter()
                client.execute_cell(cell, index)
                reply = replies.get(index)
                if reply is not None and reply["content"].get("status") == "error":
                    if not any(o.get("output_type") == "error" for o in cell.outputs):
                        cell.outputs.append(nbformat.v4.new_output(
                            "error", ename=reply["content"].get("ename", "Error"),
                            evalue=reply["content"].get("evalue", ""),
                            traceback=reply["content"].get("traceback", [])))
                if cells.is_test(cell):
                    r = score_cell(cell, pattern)
                    r.seconds = time.perf_counter() - t0
                    results[r.grade_id] = r
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    return results


def format_table(results: dict[str, CellResult]) -> str:
    """A per-question summary table (question, points, passed, message)."""
    rows = [("question", "points", "passed", "message")]
    for r in results.values():
        rows.append((r.grade_id, f"{r.points:g}/{r.max_points:g}", "yes" if r.passed else "NO",
                     summary(r.message)))
    total = sum(r.points for r in results.values())
    total_max = sum(r.max_points for r in results.values())
    rows.append(("total", f"{total:g}/{total_max:g}", "", ""))
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join([row[0].ljust(w[0]), row[1].rjust(w[1]), row[2].ljust(w[2]), row[3]])
                     .rstrip())
        if i == 0 or i == len(rows) - 2:
            lines.append("-" * (sum(w) + 6 + 20))
    return "\n".join(lines)

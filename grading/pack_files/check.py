#!/usr/bin/env python3
"""Run a notebook's visible tests before you hand it in.

    python check.py notebooks/01_forward_process/01_forward_process.ipynb
    python check.py -x notebooks/01_forward_process/01_forward_process.ipynb  # stop at a failed test

Runs the notebook's code cells in a fresh kernel, in order, the way it is run when graded: in
its own folder, in fast mode (``DIFFUSION_FAST=1``), skipping the cells tagged ``slow``
(training loops and long experiments; no test depends on them). Then it prints, for each test
cell, whether its visible tests passed. The notebook file itself is not changed.

Passing here is necessary, not sufficient: every test cell also has hidden tests, and the
written answers are read by a person; both are graded after you hand the notebook in.

Exit status: 0 when every visible test passes, 1 when one fails, 2 when the file is not a
notebook or the kernel could not run it.
"""
# Only the standard library and Jupyter's own nbformat and nbclient (installed with JupyterLab):
# this script ships with the notebooks and needs nothing else from the course.
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

#: stderr lines matching this are warnings, not failures (the same rule as when graded).
WARNING_PATTERN = r"\w*Warning\b|warnings\.warn|NNPACK"
SKIP_TAG = "slow"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class NotANotebook(Exception):
    """The path is missing, a folder, or a file that is not a Jupyter notebook."""


def grading_meta(cell) -> dict:
    """The cell's grading metadata (``metadata.nbgrader``), or ``{}``."""
    meta = cell.get("metadata", {}).get("nbgrader") or {}
    return meta if isinstance(meta, dict) else {}


def is_test_cell(cell) -> bool:
    m = grading_meta(cell)
    return cell.get("cell_type") == "code" and bool(m.get("grade")) and not m.get("solution") \
        and "grade_id" in m


def is_written_answer(cell) -> bool:
    m = grading_meta(cell)
    return cell.get("cell_type") == "markdown" and bool(m.get("grade")) and bool(m.get("solution"))


def points(cell) -> float:
    try:
        return float(grading_meta(cell).get("points", 0) or 0)
    except (TypeError, ValueError):
        return 0.0


def read_notebook(path: Path):
    """The notebook at ``path``; raises ``NotANotebook`` with a one-line reason."""
    import nbformat

    if not path.exists():
        raise NotANotebook(f"no such file: {path}")
    if path.is_dir():
        raise NotANotebook(f"{path} is a folder; give the .ipynb file inside it")
    if path.suffix != ".ipynb":
        raise NotANotebook(f"not a notebook: {path} (expected a .ipynb file saved by Jupyter)")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NotANotebook(f"not a notebook: {path} (not JSON: {str(err).splitlines()[0][:100]})")
    if not (isinstance(raw, dict) and isinstance(raw.get("cells"), list) and "nbformat" in raw):
        raise NotANotebook(f"not a notebook: {path} (JSON, but without a notebook's cells "
                           "and nbformat version)")
    try:
        return nbformat.reads(json.dumps(raw), as_version=4)
    except Exception as err:  # nbformat's validation and version errors have no common base
        raise NotANotebook(f"not a notebook: {path} ({type(err).__name__}: "
                           f"{(str(err).splitlines() or [''])[0][:100]})")


def error_line(ename: str, evalue: str) -> str:
    """``ename: evalue`` on one line, without colour codes or traceback."""
    if ename == "KeyboardInterrupt":
        ename, evalue = "Timeout", "the cell was stopped at the time limit"
    if ename == "NotImplementedError" and not evalue:
        evalue = "an answer above is not written yet"
    text = _ANSI.sub("", f"{ename}: {evalue}" if evalue else ename)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), ename)
    return first[:160]


def cell_problem(cell) -> str:
    """Why a cell counts as failed: its error, or stderr output that is not a warning; else ''."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return error_line(out.get("ename", "Error"), out.get("evalue", ""))
    for out in cell.get("outputs", []):
        if (out.get("output_type") == "stream" and out.get("name") == "stderr"
                and not re.search(WARNING_PATTERN, out.get("text", ""))):
            return "wrote to stderr: " + _ANSI.sub("", out.get("text", "")).strip()[:120]
    return ""


def first_line(cell) -> str:
    src = cell.get("source", "")
    src = "".join(src) if isinstance(src, list) else src
    return next((ln.strip() for ln in src.splitlines() if ln.strip()), "(empty)")[:60]


def run(nb, folder: Path, timeout: int, stop_at_failure: bool) -> tuple[list, list, bool]:
    """Execute the code cells; returns (test results, other failed cells, stopped early).

    A test result is ``(grade_id, points, problem)``, problem ``''`` when its visible tests passed.
    """
    from nbclient import NotebookClient

    env = dict(os.environ, DIFFUSION_FAST="1", MPLBACKEND="agg")
    # The client owns its kernel manager: leaving the `with` shuts the kernel down and closes its
    # channels, so nothing is left for the garbage collector to warn about at exit.
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            interrupt_on_timeout=True, startup_timeout=120,
                            resources={"metadata": {"path": str(folder)}})
    tests, others, stopped = [], [], False
    # The kernel's own log lines (not the cells' output) would only confuse: they go nowhere.
    with client.setup_kernel(env=env, cwd=str(folder), stderr=subprocess.DEVNULL):
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if SKIP_TAG in cell.get("metadata", {}).get("tags", []):
                if is_test_cell(cell):  # never the case in the course's notebooks
                    tests.append((grading_meta(cell)["grade_id"], points(cell),
                                  f"not run: tagged {SKIP_TAG}"))
                continue
            client.execute_cell(cell, index)
            problem = cell_problem(cell)
            if is_test_cell(cell):
                tests.append((grading_meta(cell)["grade_id"], points(cell), problem))
                if problem and stop_at_failure:
                    stopped = True
                    break
            elif problem:
                others.append((index + 1, first_line(cell), problem))
    return tests, others, stopped


def plural(n: float, word: str) -> str:
    return f"{n:g} {word}" + ("" if n == 1 else "s")


def report(name: str, nb, tests, others, stopped: bool) -> str:
    """The summary printed for the student."""
    all_tests = [c for c in nb.cells if is_test_cell(c)]
    total_points = sum(points(c) for c in all_tests)
    written = [c for c in nb.cells if is_written_answer(c)]
    written_points = sum(points(c) for c in written)
    lines = [f"{name}: visible tests of {len(all_tests)} test cells "
             f"({plural(total_points, 'point')}); cells tagged {SKIP_TAG} were skipped"]
    width = max([len(g) for g, _, _ in tests] + [10])
    for grade_id, pts, problem in tests:
        mark = "FAILED" if problem else "passed"
        lines.append((f"  {mark}  {grade_id.ljust(width)}  {plural(pts, 'point').ljust(9)}"
                      + (f"  {problem}" if problem else "")).rstrip())
    passed = [t for t in tests if not t[2]]
    if stopped:
        lines.append(f"  stopped at the first failed test (-x): "
                     f"{len(all_tests) - len(tests)} test cells not run")
    if others:
        number, text, problem = others[0]
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        lines.append(f"errors outside the test cells: cell {number} ({text}): {problem}{more}")
    lines.append(f"visible tests: {len(passed)} of {len(all_tests)} test cells passed "
                 f"({plural(sum(p for _, p, _ in passed), 'point')} of {total_points:g}, "
                 "if the hidden tests agree)")
    lines.append(f"graded after you hand in: the hidden tests of every test cell, and "
                 f"{plural(written_points, 'point')} of written answers "
                 f"({len(written)} question{'' if len(written) == 1 else 's'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", help="the .ipynb file, e.g. notebooks/01_forward_process/"
                                         "01_forward_process.ipynb")
    parser.add_argument("-x", "--stop-at-failure", action="store_true",
                        help="stop at the first test cell that fails")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell (default 300)")
    args = parser.parse_args(argv)
    path = Path(args.notebook)
    try:
        nb = read_notebook(path)
    except NotANotebook as err:
        print(err, file=sys.stderr)
        return 2
    try:
        tests, others, stopped = run(nb, path.resolve().parent, args.timeout, args.stop_at_failure)
    except Exception as err:  # no kernel, a kernel that died: one line, not a traceback
        print(f"{path.name}: could not run the notebook: {type(err).__name__}: "
              f"{(str(err).splitlines() or [''])[0][:200]}", file=sys.stderr)
        return 2
    print(report(path.name, nb, tests, others, stopped))
    return 0 if len([t for t in tests if not t[2]]) == len([c for c in nb.cells
                                                            if is_test_cell(c)]) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Scaffolding shared by the mistake tests ``tests/test_mistakes_<NN>.py``.

The mistake tests check the hidden tests (``grading/checks/<name>.py``) against the solution
notebook: they read its cells by ``grade_id``, replace an answer cell by a mistaken (or a different
but correct) version, execute the given and answer cells in a fresh namespace as the notebook would,
and call a check on it. The slow layer runs the whole notebook in a kernel with ``grading.runner``
(or nbval) and looks at the points of each test cell.

A plain module (not a conftest), imported by the tests::

    from notebook_support import SolutionNotebook, run_cells

    NOTEBOOK = SolutionNotebook("01_forward_process", checks, answers=(...), prelude="import torch\\n")
    src = NOTEBOOK.mutate("q_sample", "torch.sqrt(ab) * x_0", "ab * x_0")
    assert "square root" in NOTEBOOK.check_message("q_sample", {"q_sample": src})
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

import nbformat

from grading import cells

REPO = Path(__file__).resolve().parent.parent

BEGIN, END = f"### {cells.BEGIN_SOLUTION}", f"### {cells.END_SOLUTION}"


def solution_path(assignment: str) -> Path:
    """``solutions/<assignment>/<assignment>.ipynb``, e.g. for ``"01_forward_process"``."""
    return REPO / "solutions" / assignment / f"{assignment}.ipynb"


def read_cells(path: Path) -> dict[str, str]:
    """``grade_id -> source`` of every code cell of the notebook at ``path`` that has a grade_id."""
    nb = nbformat.read(path, as_version=4)
    out = {}
    for cell in nb.cells:
        gid = cells.grade_id(cell)
        if cell.cell_type == "code" and gid:
            out[gid] = cell.source
    return out


def strip_markers(src: str) -> str:
    """The cell source without its ``### BEGIN/END SOLUTION`` lines (comments: the code is the same)."""
    return "\n".join(ln for ln in src.splitlines() if BEGIN not in ln and END not in ln)


class SolutionNotebook:
    """The solution notebook of one assignment and its hidden checks, as the mistake tests use them.

    ``checks``: the module ``grading.checks.<name>`` (its ``CHECKS`` and ``CheckFailed``), needed by
    :meth:`check_message` (not by :meth:`run_hidden`, which goes through ``gradeprobe.run``);
    ``answers``: grade_ids of the answer cells, executed in this order; ``given``: read-only cells
    executed before them and ``after`` cells executed after them; ``prelude``: code executed first
    (the notebook's imports); ``name``: the namespace's ``__name__`` (None: not set); ``setup(ns)``:
    called after the given cells, before the answers (e.g. notebook globals a mistake might use).
    Every one of these cells must be in the notebook.
    """

    def __init__(self, assignment: str, checks: ModuleType | None = None, *, answers: tuple[str, ...],
                 given: tuple[str, ...] = (), after: tuple[str, ...] = (), prelude: str = "", name: str | None = None,
                 setup: Callable[[dict], None] | None = None):
        self.assignment, self.checks = assignment, checks
        self.path = solution_path(assignment)
        self.answers, self.given, self.after = tuple(answers), tuple(given), tuple(after)
        self.prelude, self.name, self.setup = prelude, name, setup
        self.cells = read_cells(self.path)
        missing = set(self.given + self.answers + self.after) - set(self.cells)
        assert not missing, f"cells missing from {self.path.name}: {sorted(missing)}"

    # -- mistaken versions of an answer cell -----------------------------------------------------
    def mutate(self, gid: str, old: str, new: str, count: int = -1) -> str:
        """The solution's cell ``gid`` with ``old`` replaced by ``new`` (all occurrences, or the first
        ``count`` ones); ``old`` must occur, so a test cannot silently stop testing its mistake."""
        src = self.cells[gid]
        assert old in src, f"{old!r} not found in the solution of {gid}; update this test"
        return src.replace(old, new, count if count > 0 else -1)

    def mutate_many(self, gid: str, *edits: tuple[str, str]) -> str:
        """The solution's cell ``gid`` with each ``(old, new)`` edit applied in turn (each must apply)."""
        src = self.cells[gid]
        for old, new in edits:
            assert old in src, f"{old!r} not found in the solution of {gid}; update this test"
            src = src.replace(old, new)
        return src

    def source(self, gid: str, edits: str | list[tuple[str, str]]) -> str:
        """An answer cell's source: ``edits`` itself when it is a whole source, else the solution's
        cell with each ``(old, new)`` edit applied (:meth:`mutate_many`)."""
        return edits if isinstance(edits, str) else self.mutate_many(gid, *edits)

    def assert_caught(self, gid: str, edits, words: str, what) -> None:
        """The check of ``gid`` fails the mistaken cell and its message names the cause ``words``."""
        message = self.check_message(gid, {gid: self.source(gid, edits)})
        assert message is not None, f"the check {gid!r} passed the mistake: {what}"
        assert words in message, f"{what}: the message does not name the cause {words!r}:\n{message}"

    def body(self, gid: str, new_body: str) -> str:
        """The answer cell with its solution region replaced by ``new_body`` (indented 4 spaces)."""
        head, rest = self.cells[gid].split(f"    {BEGIN}\n")
        _, tail = rest.split(f"    {END}")
        lines = "".join("    " + ln + "\n" if ln.strip() else "\n" for ln in new_body.strip("\n").split("\n"))
        return head + lines + tail.lstrip("\n")

    # -- the notebook's globals ------------------------------------------------------------------
    def namespace(self, replace: dict[str, str] | None = None) -> dict:
        """Execute prelude, given cells, answer cells (those in ``replace`` by its sources) and the
        ``after`` cells in a fresh namespace, as the notebook would."""
        replace = replace or {}
        ns: dict = {} if self.name is None else {"__name__": self.name}
        exec(self.prelude, ns)  # noqa: S102 - our own notebook's code
        for gid in self.given:
            self._exec(gid, self.cells[gid], ns)
        if self.setup is not None:
            self.setup(ns)
        for gid in self.answers:
            self._exec(gid, replace.get(gid, self.cells[gid]), ns)
        for gid in self.after:
            self._exec(gid, self.cells[gid], ns)
        return ns

    @staticmethod
    def _exec(gid: str, src: str, ns: dict) -> None:
        exec(compile(strip_markers(src), f"<cell {gid}>", "exec"), ns)  # noqa: S102

    # -- running the hidden checks ---------------------------------------------------------------
    def check_message(self, check: str, replace: dict[str, str] | None = None,
                      ns: dict | None = None) -> str | None:
        """Call ``CHECKS[check]`` of the checks module directly on the namespace (``ns``, or a fresh one with
        ``replace``); None when it passes, else the :class:`CheckFailed` message (other errors
        propagate)."""
        try:
            self.checks.CHECKS[check](self.namespace(replace) if ns is None else ns)
        except self.checks.CheckFailed as exc:
            return str(exc)
        return None

    def run_hidden(self, question: str, replace: dict[str, str] | None = None, ns: dict | None = None) -> None:
        """Run the check as the hidden part of a test cell does outside grading: ``gradeprobe.run``
        plans, executes and judges it in this process. Raises ``CheckFailed`` (an AssertionError)
        when the check fails."""
        import gradeprobe

        gradeprobe.run(self.assignment, question, self.namespace(replace) if ns is None else ns)

    def assert_test_cells_call_checks(self) -> None:
        """Every answer has a test cell ``test_<answer>`` whose hidden part runs the check of that
        name, and the checks module has exactly these checks."""
        for gid in self.answers:
            line = f'gradeprobe.run("{self.assignment}", "{gid}", globals())'
            assert self.cells[f"test_{gid}"].startswith(f"### BEGIN HIDDEN TESTS\nimport gradeprobe; {line}"), gid
        assert set(self.checks.CHECKS) == set(self.answers)


# ------------------------------------------------------------------------------------------------
# The slow layer: the notebook in a kernel
# ------------------------------------------------------------------------------------------------
def run_cells(path: Path, replace: dict[str, str] | None = None, stop_after: str | None = None,
              expect_cells: list[str] | tuple[str, ...] | None = None):
    """``grading.runner.run_notebook`` (slow cells skipped) -> ``(results, table)``; the table of points
    is printed (pytest shows it when a test fails). With ``expect_cells``, the test cells that ran
    must be exactly these."""
    from grading.runner import format_table, run_notebook
    res = run_notebook(path, replace=replace, stop_after=stop_after)
    table = format_table(res)
    print(table)
    if expect_cells is not None:
        assert set(res) == set(expect_cells), table
    return res, table


def assert_every_cell_passes(res: dict, cells, max_points: float | None = None) -> None:
    """Runner results ``res`` are exactly the test cells ``cells`` and every one passed (the messages
    of those that did not are shown); with ``max_points``, the cells are worth that much in all."""
    assert set(res) == set(cells), sorted(res)
    failed = {k: r.message for k, r in res.items() if not r.passed}
    assert not failed, failed
    if max_points is not None:
        assert sum(r.max_points for r in res.values()) == max_points


def assert_only_replaced_cells_fail(res: dict, answers, replace: dict[str, str], table: str = "") -> None:
    """In runner results ``res``: the test cell ``test_<gid>`` of every replaced answer lost all its
    points, and the test cell of every other answer passed (a mistake costs its own cell only)."""
    for gid in answers:
        assert res[f"test_{gid}"].passed == (gid not in replace), table
        if gid in replace:
            assert res[f"test_{gid}"].points == 0, table


def run_nbval_fast(path: Path, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    """Run the notebook top to bottom under nbval in fast mode (slow cells included, as nbgrader runs
    them) in a subprocess; returns the finished process and the seconds it took."""
    env = dict(os.environ, DIFFUSION_FAST="1")
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:python",
                        "-p", "no:cacheprovider", "-q", str(path)], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    return r, time.perf_counter() - start


def assert_fast_mode_within(path: Path, budget_s: float = 90) -> None:
    """nbval in fast mode (slow cells included, as nbgrader runs them): no error, at most ``budget_s``."""
    r, elapsed = run_nbval_fast(path)
    assert r.returncode == 0, r.stdout[-4000:]
    assert elapsed <= budget_s, f"fast mode took {elapsed:.0f} s (budget {budget_s:g} s)"

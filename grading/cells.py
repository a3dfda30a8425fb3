"""The nbgrader cell vocabulary of the course: what each kind of cell is, and the markers in them.

Trusted: imported by the grading tools (release, sanitize, tamper scan, autograde, runner, rubric,
demo) and by ``nbgrader_config.py``; never by code that runs in a student's kernel.

A cell's nbgrader metadata (``cell.metadata.nbgrader``, ``schema_version: 3``) decides its kind
(CONTRIBUTING.md has the full conventions):

- *test* cell: a code cell with ``grade: true, solution: false`` (autograded; visible asserts, then
  the hidden tests between :data:`BEGIN_HIDDEN_TESTS` and :data:`END_HIDDEN_TESTS`);
- *answer* cell: a code cell with ``solution: true`` (the student's code; the solution lies between
  :data:`BEGIN_SOLUTION` and :data:`END_SOLUTION` in ``solutions/``);
- *written* answer: ``solution: true, grade: true`` (a markdown cell graded by hand);
- *locked* cell: ``locked: true, solution: false`` with a ``grade_id`` (nbgrader restores it
  before grading, whatever the student did to it).

Every function accepts a cell as a dict from JSON or an ``nbformat`` node, and metadata that a
front end mangled (no ``nbgrader`` key, or one that is not a dict) as "no metadata".
"""
from __future__ import annotations

from dataclasses import dataclass

# nbgrader's delimiters (its defaults), matched as substrings of a line; nbgrader_config.py sets them.
BEGIN_SOLUTION = "BEGIN SOLUTION"
END_SOLUTION = "END SOLUTION"
BEGIN_HIDDEN_TESTS = "BEGIN HIDDEN TESTS"
END_HIDDEN_TESTS = "END HIDDEN TESTS"
#: What the release puts in place of a solution region (code) and of a written answer (markdown).
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"

#: Cells with this tag in the course's notebooks are skipped by the cell runner and, by default, by
#: autograde (``grading.slow`` decides which submitted cells they are); nbval runs them in fast mode.
SLOW_TAG = "slow"
#: nbclient skips cells with this tag by default; a submission's cells lose it (see sanitize).
SKIP_EXECUTION_TAG = "skip-execution"
#: A tag nbclient is told to skip where nothing may be skipped (the cell runner).
NEVER_SKIP_TAG = "__diffusion_course_never_skip__"
#: The tag nbclient skips while autograding: only ``grading.slow`` sets it, on the cells it leaves
#: out; a submission's cells lose it first (see sanitize).
GRADER_SKIP_TAG = "__diffusion_grader_leaves_out__"

#: A hidden-test line shorter than this is too generic to look for in feedback pages.
MIN_HIDDEN_LINE = 12


def nbgrader(cell) -> dict:
    """The cell's nbgrader metadata, ``{}`` when it has none (or something that is not a dict)."""
    meta = cell.get("metadata")
    m = meta.get("nbgrader") if isinstance(meta, dict) else None
    return m if isinstance(m, dict) else {}


def source(cell) -> str:
    """The cell's text (nbformat allows a list of lines in the JSON)."""
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else str(s)


def grade_id(cell) -> str | None:
    return nbgrader(cell).get("grade_id")


def is_test(cell) -> bool:
    """An autograded test cell."""
    m = nbgrader(cell)
    return cell.get("cell_type") == "code" and bool(m.get("grade")) and not m.get("solution") \
        and "grade_id" in m


def is_answer(cell) -> bool:
    """A code cell the student writes code in."""
    return cell.get("cell_type") == "code" and bool(nbgrader(cell).get("solution"))


def is_written(cell) -> bool:
    """A written answer, graded by hand."""
    m = nbgrader(cell)
    return bool(m.get("solution")) and bool(m.get("grade"))


def is_locked(cell) -> bool:
    """A read-only cell that nbgrader puts back from the gradebook before grading."""
    m = nbgrader(cell)
    return bool(m.get("locked")) and not m.get("solution") and "grade_id" in m


def grade_ids(nb: dict) -> set[str]:
    """The grade ids of every cell of ``nb`` that has one."""
    return {grade_id(c) for c in nb.get("cells", []) if grade_id(c) is not None}


@dataclass(frozen=True)
class GradedCell:
    """A cell that earns points: ``kind`` is ``"test"`` (autograded) or ``"written"`` (by hand)."""
    id: str
    points: float
    kind: str


def graded_cells(nb: dict) -> list[GradedCell]:
    """Every cell of ``nb`` with ``grade: true`` and a grade id, in notebook order."""
    out = []
    for c in nb["cells"]:
        m = nbgrader(c)
        if m.get("grade") and "grade_id" in m:
            out.append(GradedCell(m["grade_id"], float(m.get("points", 0)),
                                  "written" if is_written(c) else "test"))
    return out


def hidden_test_lines(nb: dict) -> set[str]:
    """The stripped source lines between the hidden-test markers of every cell (the short ones,
    under :data:`MIN_HIDDEN_LINE` characters, left out)."""
    lines = set()
    for c in nb["cells"]:
        inside = False
        for ln in source(c).splitlines():
            if BEGIN_HIDDEN_TESTS in ln:
                inside = True
            elif END_HIDDEN_TESTS in ln:
                inside = False
            elif inside and len(ln.strip()) >= MIN_HIDDEN_LINE:
                lines.add(ln.strip())
    return lines


def display_name(nb_cells: list, index: int) -> str:
    """How a student finds cell ``index``: its grade id, else ``cell N after <grade id>`` (N
    counted from 1, the grade id the nearest one above it), never a bare list index."""
    gid = grade_id(nb_cells[index])
    if gid:
        return gid
    above = next((grade_id(c) for c in reversed(nb_cells[:index]) if grade_id(c)), None)
    return f"cell {index + 1}" + (f" (after {above})" if above else " (before any graded cell)")


def without_solution_markers(text: str) -> str:
    """``text`` without the lines that hold a solution marker."""
    return "\n".join(ln for ln in text.splitlines()
                     if BEGIN_SOLUTION not in ln and END_SOLUTION not in ln)


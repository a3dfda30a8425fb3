"""Which cells of a submission the graded run leaves out: the course's ``slow`` cells.

Trusted: runs in the grader's own process, on the sanitized submission and the course's own
source and released notebooks.

A ``slow`` cell (training loops, long experiments, big figures) is one that no graded test cell
depends on, by the course's rule (``CONTRIBUTING.md``; ``tests/test_grading_slow.py`` proves it
for the six notebooks). Autograde does not run them unless the course config says
``c.CourseGrading.execute_slow_cells = True`` (``grading/nbgrader_config.py``); the TA reads the
student's own outputs of those cells.

What is slow is decided here from the course's **source** notebook, never from the student's tags
(a student's ``slow`` tag means nothing to the grader). A cell of the submission is left out when
it is a code cell and either

- it carries the grade id of an answer cell that is ``slow`` in the source (``training_loop``:
  nbgrader keeps answer cells' grade ids, and ``grading.sanitize`` took their metadata from the
  release), or
- it has no grade id, and its cell id or its whole source (stripped) is that of a ``slow`` cell of
  the release without a grade id.

A test cell, a locked cell, a written answer or any cell with another grade id is never left
out, whatever its cell id or source: a student who gives a test cell the id of a slow cell still
has the test run (skipping it would leave it without an error, i.e. full points).

The cells left out get :data:`grading.cells.GRADER_SKIP_TAG`, the one tag nbclient is told to skip
(``Execute.skip_cells_with_tag``); ``grading.sanitize`` removes that tag from every submitted
cell first, so only this module ever sets it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import cells


@dataclass(frozen=True)
class SlowCells:
    """The ``slow`` cells of one notebook of the course."""
    answer_ids: frozenset[str] = field(default_factory=frozenset)  # grade ids of slow answer cells
    cell_ids: frozenset[str] = field(default_factory=frozenset)    # cell ids of the other slow cells
    sources: frozenset[str] = field(default_factory=frozenset)     # their released sources, stripped

    def __bool__(self) -> bool:
        return bool(self.answer_ids or self.cell_ids or self.sources)


def _tags(cell) -> list:
    meta = cell.get("metadata")
    tags = meta.get("tags") if isinstance(meta, dict) else None
    return tags if isinstance(tags, list) else []


def is_slow(cell) -> bool:
    """Whether a cell of the course's own notebooks carries the ``slow`` tag."""
    return cells.SLOW_TAG in _tags(cell)


def slow_cells(source_nb: dict, release_nb: dict) -> SlowCells:
    """The ``slow`` cells of a notebook, from its source version (the truth) and its release (what
    students got: the sources they hand back unchanged). ``ValueError`` when a graded cell of the
    source is tagged ``slow``: no test may be left out."""
    released = {c.get("id"): c for c in release_nb.get("cells", []) if c.get("id")}
    answer_ids, cell_ids, sources = set(), set(), set()
    for c in source_nb.get("cells", []):
        if c.get("cell_type") != "code" or not is_slow(c):
            continue
        meta = cells.nbgrader(c)
        if meta.get("grade") or meta.get("locked"):
            raise ValueError(f"graded or locked cell {cells.grade_id(c)!r} is tagged {cells.SLOW_TAG!r}: "
                             "grading would leave it out")
        if cells.grade_id(c):
            answer_ids.add(cells.grade_id(c))
            continue
        if c.get("id"):
            cell_ids.add(c["id"])
        rel = released.get(c.get("id"), c)
        if cells.source(rel).strip():
            sources.add(cells.source(rel).strip())
    return SlowCells(frozenset(answer_ids), frozenset(cell_ids), frozenset(sources))


def leaves_out(cell, slow: SlowCells) -> bool:
    """Whether the graded run leaves this submitted cell out (see the module docstring)."""
    if cell.get("cell_type") != "code":
        return False
    meta = cells.nbgrader(cell)
    gid = meta.get("grade_id")
    if gid is not None:
        return gid in slow.answer_ids and not meta.get("grade") and not meta.get("locked")
    if meta.get("grade") or meta.get("locked"):
        return False
    return cell.get("id") in slow.cell_ids or cells.source(cell).strip() in slow.sources


def mark_left_out(nb: dict, slow: SlowCells) -> int:
    """Tag the cells of the sanitized submission ``nb`` that the graded run leaves out; their count."""
    n = 0
    for cell in nb.get("cells", []):
        if leaves_out(cell, slow):
            meta = cell.setdefault("metadata", {})
            meta["tags"] = [t for t in _tags(cell) if t != cells.GRADER_SKIP_TAG] + [cells.GRADER_SKIP_TAG]
            n += 1
    return n

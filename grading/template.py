"""The assignment template of an autograde run: one released assignment and its gradebook,
built once per assignment and copied into every job.

Trusted: runs in the grader's own process.

:func:`build_template` copies ``solutions/<a>`` into a template course, runs nbgrader's
``generate_assignment`` there into a template SQLite gradebook, and records what grading needs of
it: the released and source notebooks, their graded cells, the hidden-test lines that must never
reach a feedback page, and a digest of everything that decides a grade (a submission graded with
another digest is graded again). :func:`register_assignment` puts the assignment into the course
gradebook.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import cells, course
from .cells import GradedCell
from .course import ToolError
from .gradebook import writing
from .slow import SlowCells, slow_cells


@dataclass
class Template:
    assignment: str
    root: Path                              # template course folder
    db: Path                                # template gradebook (SQLite)
    release: dict[str, dict]                # notebook name -> released notebook dict
    source: dict[str, dict]                 # notebook name -> source notebook dict
    cells: dict[str, list[GradedCell]]      # notebook name -> its graded cells
    digest: str                             # hash of everything that defines the grading
    hidden_lines: set[str] = field(default_factory=set)  # hidden-test lines not in the release
    #: notebook name -> the cells the graded run leaves out (none when the course config says
    #: ``CourseGrading.execute_slow_cells = True``; see ``grading.slow``)
    slow: dict[str, SlowCells] = field(default_factory=dict)


def _grading_files(assignment: str) -> list[Path]:
    """The course files besides the assignment's own that decide how it is graded."""
    name = assignment.split("_", 1)[-1]
    probe = course.REPO_ROOT / "gradeprobe"
    return [course.GRADING_DIR / "checks" / f"{name}.py", course.GRADING_DIR / "reference" / f"{name}.py",
            course.GRADING_DIR / "hidden.py", course.GRADING_DIR / "verdict.py",
            course.GRADING_DIR / "records.py", course.GRADING_DIR / "execute.py",
            course.CONFIG_FILE, course.GRADING_DIR / "cells.py",
            *sorted(probe.glob("*.py"))]


def build_template(assignment: str, root: Path, workdir: Path) -> Template:
    tdir = workdir / f"template-{assignment}"
    src = root / course.SOURCE_DIR / assignment
    shutil.copytree(src, tdir / course.SOURCE_DIR / assignment,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc"))
    db = tdir / "gradebook.db"
    api = course.make_api(tdir, db_url=f"sqlite:///{db}")
    with course.quiet_nbgrader():
        res = api.generate_assignment(assignment, force=True, create=True)
    if not res["success"]:
        raise ToolError(f"generate_assignment {assignment} failed:\n{res.get('error') or res.get('log')}")
    release, source, graded = {}, {}, {}
    h = hashlib.sha256()
    for nb_path in course.assignment_notebooks(tdir, assignment):
        source[nb_path.stem] = course.read_json(nb_path)
        h.update(nb_path.read_bytes())
        rel = tdir / course.RELEASE_DIR / assignment / nb_path.name
        release[nb_path.stem] = course.read_json(rel)
        graded[nb_path.stem] = cells.graded_cells(source[nb_path.stem])
    for f in sorted(src.rglob("*")):
        if f.is_file() and f.suffix != ".ipynb":
            h.update(f.name.encode() + f.read_bytes())
    for extra in _grading_files(assignment):
        if extra.is_file():
            h.update(extra.read_bytes())
    hidden = set()
    for nb in source.values():
        hidden |= cells.hidden_test_lines(nb)
    released_text = "".join(json.dumps(nb) for nb in release.values())
    hidden = {ln for ln in hidden if json.dumps(ln)[1:-1] not in released_text}
    slow = {}
    if not course.load_config(root).CourseGrading.get("execute_slow_cells", False):
        try:
            slow = {name: slow_cells(source[name], release[name]) for name in source}
        except ValueError as exc:
            raise ToolError(f"{assignment}: {exc}") from exc
    h.update(repr(sorted((n, sorted(s.answer_ids), sorted(s.cell_ids), sorted(s.sources))
                         for n, s in slow.items())).encode())
    return Template(assignment, tdir, db, release, source, graded, h.hexdigest(), hidden, slow)


def register_assignment(tpl: Template, db_url: str) -> None:
    """Create or update the assignment in the course gradebook (parent only)."""
    api = course.make_api(tpl.root, db_url=db_url)
    with writing(db_url), course.quiet_nbgrader():
        res = api.generate_assignment(tpl.assignment, force=True, create=True)
    if not res["success"]:
        raise ToolError(f"could not register {tpl.assignment} in {db_url}:\n"
                        f"{(res.get('error') or res.get('log') or '')[-2000:]}")

"""Totals: per student and assignment the autograded points, the written (manual) points, their
sum and maximum, and per student the course total; read from the course gradebook.

Trusted: runs in the grader's own process.

Written answers are graded by a person (nbgrader's manual score of the grade, set in formgrader,
``python -m grading manual`` or nbgrader's ``Gradebook`` API). Until every written answer of a
submission has a manual score, its manual score, total and the student's course total are the
word ``pending``, never a number that looks final: a 0 there would reach the LMS as a grade.

A written answer the student left as released ("No response", autograded 0) needs no grader and
counts 0. The course maximum is the sum of the maxima of every assignment in the gradebook, so a
missing submission counts 0 of its maximum.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import course

PENDING = "pending"


@dataclass
class WrittenGrade:
    """One written answer of one submission, as the gradebook holds it."""
    notebook: str
    cell: str
    max_score: float
    score: float | None          # None: awaiting a grader
    comment: str | None = None   # the grader's comment (manual), else the autograder's


@dataclass
class Totals:
    """One submission's points: autograded, written, and their sum."""
    auto_score: float
    auto_max: float
    manual_score: float          # of the written answers graded so far
    manual_max: float
    pending: float               # points of written answers awaiting a grader
    written: list[WrittenGrade] = field(default_factory=list)

    @property
    def total(self) -> float | None:
        """``auto_score + manual_score``, or None while written points are pending."""
        return None if self.pending else self.auto_score + self.manual_score

    @property
    def max_total(self) -> float:
        return self.auto_max + self.manual_max


def fmt(x: float | None) -> str:
    """A score for a CSV: ``pending`` for None, else the number without trailing zeros."""
    return PENDING if x is None else f"{x:g}"


def gradebook_totals(db_url: str) -> tuple[dict[tuple[str, str], Totals], dict[str, float]]:
    """``({(student, assignment): Totals}, {assignment: maximum})`` from the course gradebook."""
    from nbgrader.api import Gradebook

    course.ensure_path()
    out, maxima = {}, {}
    with course.quiet_nbgrader(), Gradebook(db_url, "diffusion") as gb:
        for a in gb.assignments:
            maxima[a.name] = float(a.max_score)
            for sub in a.submissions:
                t = Totals(float(sub.code_score), float(sub.max_code_score), 0.0, 0.0, 0.0)
                for snb in sub.notebooks:
                    written = {c.name for c in snb.notebook.solution_cells}
                    comments = {c.name: c for c in snb.comments}
                    for g in snb.grades:
                        if g.name not in written or g.cell_type != "markdown":
                            continue
                        mx = float(g.max_score)
                        waiting = g.manual_score is None and bool(g.needs_manual_grade)
                        score = None if waiting else float(g.score or 0.0)
                        c = comments.get(g.name)
                        note = c and (c.manual_comment or c.auto_comment)
                        t.written.append(WrittenGrade(snb.name, g.name, mx, score, note or None))
                        t.manual_max += mx
                        if waiting:
                            t.pending += mx
                        else:
                            t.manual_score += score
                out[(sub.student.id, a.name)] = t
    return out, maxima


def course_totals(totals: dict[tuple[str, str], Totals],
                  maxima: dict[str, float]) -> dict[str, tuple[float | None, float]]:
    """``{student: (course total or None while anything is pending, course maximum)}``."""
    course_max = sum(maxima.values())
    per: dict[str, float | None] = {}
    for (s, _a), t in sorted(totals.items()):
        if s not in per:
            per[s] = 0.0
        per[s] = None if per[s] is None or t.total is None else per[s] + t.total
    return {s: (v, course_max) for s, v in per.items()}

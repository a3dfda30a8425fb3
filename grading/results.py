"""A graded job as rows: its ``grades.csv`` row, its ``questions.csv`` rows, its gradebook grades.

Trusted: runs in the grader's own process, the only one that writes the course gradebook.

:func:`build_rows` turns a :class:`~grading.jobs.Job` and its worker result into the rows and the
gradebook updates; :func:`write_gradebook` records the updates. A student's message is shortened
by :func:`grading.messages.summary` for both, so the ``Likely cause`` of a failed check reaches
``questions.csv`` and the gradebook comment alike.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import course
from .gradebook import writing
from .jobs import Job
from .messages import summary


@dataclass(frozen=True)
class GradeUpdate:
    """What the course gradebook gets for one graded cell."""
    score: float | None       # None: awaiting a manual grade
    needs_manual_grade: bool
    comment: str | None


def _question(s: str, a: str, gid: str, points: str, max_points: float, passed: str,
              message: str) -> dict:
    return {"student": s, "assignment": a, "cell_id": gid, "points": points,
            "max_points": f"{max_points:g}", "passed": passed, "message": message}


def build_rows(job: Job) -> tuple[dict, list[dict], dict[str, dict[str, GradeUpdate]]]:
    """``(grades.csv row, questions.csv rows, {notebook: {grade_id: GradeUpdate}})``."""
    a, s = job.tpl.assignment, job.sub.student
    res = job.result
    qrows, updates = [], {}
    auto, auto_max, pending = 0.0, 0.0, 0.0
    notes = list(job.notes)
    tamper = "; ".join(job.flags)
    worker_error = None if res is None else (res.tool_error or res.failure)
    for nb_name, graded_cells in job.tpl.cells.items():
        graded = res.grades.get(nb_name, {}) if res is not None else {}
        msgs = res.messages.get(nb_name, {}) if res is not None else {}
        zero = job.zero_reasons.get(nb_name)
        if zero is None and (worker_error or res is None or nb_name not in res.grades):
            zero = f"autograding failed: {worker_error or 'no result'}"
        upd = updates.setdefault(nb_name, {})
        for cell in graded_cells:
            gid, mx = cell.id, cell.points
            g = graded.get(gid)
            if cell.kind == "test":
                auto_max += mx
                if zero is not None or g is None:
                    pts, msg = 0.0, zero or "not graded"
                else:
                    pts = float(g.auto_score or 0.0)
                    msg = summary(msgs.get(gid)) or ("" if pts >= mx else
                                                     f"partial credit {pts:g}/{mx:g}")
                if tamper and zero is None:
                    msg = f"set to 0 for review ({summary(tamper)}); ran as {pts:g}/{mx:g}" + (
                        f": {msg}" if msg else "")
                    pts = 0.0
                auto += pts
                qrows.append(_question(s, a, gid, f"{pts:g}", mx, str(pts >= mx and mx > 0).lower(),
                                       msg))
                upd[gid] = GradeUpdate(pts, False, msg or None)
            elif zero is not None or g is None:  # written answer, graded by hand
                qrows.append(_question(s, a, gid, "0", mx, "false", zero or "not graded"))
                upd[gid] = GradeUpdate(0.0, False, zero)
            elif g.needs_manual_grade:
                pending += mx
                qrows.append(_question(s, a, gid, "", mx, "", "needs manual grading"))
                upd[gid] = GradeUpdate(None, True, None)
            else:
                pts = float(g.auto_score or 0.0)
                comment = summary(g.auto_comment)
                qrows.append(_question(s, a, gid, f"{pts:g}", mx, "false", comment or "No response."))
                upd[gid] = GradeUpdate(pts, False, comment or None)
    for nb_name, reason in job.zero_reasons.items():
        notes.append(f"{nb_name}: scored 0: {reason}")
    for nb_name, errs in (res.cell_errors.items() if res is not None else ()):
        for cell_name, err in errs.items():
            notes.append(f"{nb_name}: error in {cell_name}: {summary(err)}")
    if worker_error:
        notes.append(f"autograde error: {worker_error}")
    grow = {"student": s, "assignment": a, "auto_score": f"{auto:g}", "auto_max": f"{auto_max:g}",
            "manual_points_pending": f"{pending:g}", "review": tamper,
            "notes": " | ".join(notes)[:2000]}
    return grow, qrows, updates


def write_gradebook(db_url: str, job: Job, updates: dict[str, dict[str, GradeUpdate]]) -> None:
    """Record one submission's grades in the course gradebook (parent process only; one writer at
    a time across autograde runs, see ``grading.gradebook``)."""
    from nbgrader.api import Gradebook

    a, s = job.tpl.assignment, job.sub.student
    with writing(db_url), course.quiet_nbgrader(), Gradebook(db_url, "diffusion") as gb:
        gb.update_or_create_student(s)
        gb.update_or_create_submission(a, s)
        for nb_name, grades in updates.items():
            snb = gb.find_submission_notebook(nb_name, a, s)
            for g in snb.grades:
                if g.name in grades:
                    g.auto_score = grades[g.name].score
                    # a TA's manual score outlives a regrade (``grading.manual``)
                    g.needs_manual_grade = grades[g.name].needs_manual_grade and g.manual_score is None
            for c in snb.comments:
                if c.name in grades and grades[c.name].comment:
                    c.auto_comment = grades[c.name].comment
        gb.db.commit()

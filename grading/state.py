"""What autograde keeps in its output folder: the state of every submission, and the CSVs.

Trusted: runs in the grader's own process.

``.autograde_state.json`` holds, per ``<student>/<assignment>``, the digest of what was graded
(``None``: grade it again next time), its ``grades.csv`` row and its ``questions.csv`` rows; the
CSVs are written from it after every run, so they always cover every submission graded so far.
:func:`grade_table` prints ``grades.csv`` as a student x assignment table.

``grades.csv`` takes the written answers' points from the course gradebook (``grading.totals``):
``manual_score``, ``total`` and ``course_total`` say ``pending`` until a grader scored every written
answer they add up. ``late`` is the LMS download's late mark (Canvas's ``_LATE_``). Commands that
change manual grades (``feedback``, ``export``) write it again with :func:`refresh_csvs`.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("grading.autograde")

STATE_FILE = ".autograde_state.json"
GRADES_COLUMNS = ["student", "assignment", "auto_score", "auto_max", "manual_score", "manual_max",
                  "manual_points_pending", "total", "max_total", "course_total", "course_max",
                  "late", "review", "notes"]
QUESTION_COLUMNS = ["student", "assignment", "cell_id", "points", "max_points", "passed", "message"]


def load_state(out: Path) -> dict:
    p = Path(out) / STATE_FILE
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            log.warning("ignoring unreadable %s", p)
    return {"submissions": {}}


def save_state(out: Path, state: dict) -> None:
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, out / STATE_FILE)


def grades_rows(state: dict, db_url: str | None, totals=None) -> list[dict]:
    """``grades.csv``'s rows: the state's rows with the gradebook's written points and totals."""
    from .totals import course_totals, fmt, gradebook_totals

    totals, maxima = totals or (gradebook_totals(db_url) if db_url else ({}, {}))
    courses = course_totals(totals, maxima)
    rows = []
    for key in sorted(state["submissions"]):
        e = state["submissions"][key]
        row = {c: e["grades"].get(c, "") for c in GRADES_COLUMNS}
        s, a = row["student"], row["assignment"]
        t = totals.get((s, a))
        if t is not None:  # the gradebook is the truth for the written answers
            row.update(manual_score=fmt(None if t.pending else t.manual_score),
                       manual_max=fmt(t.manual_max), manual_points_pending=fmt(t.pending),
                       total=fmt(t.total), max_total=fmt(t.max_total))
            total, course_max = courses[s]
            row.update(course_total=fmt(total), course_max=fmt(course_max))
        row["late"] = "true" if (e.get("lms") or {}).get("late") else ""
        rows.append(row)
    return rows


def write_csvs(out: Path, state: dict, db_url: str | None = None) -> None:
    """``grades.csv`` and ``questions.csv`` from the state (and the gradebook at ``db_url``)."""
    from .totals import fmt, gradebook_totals

    entries = [state["submissions"][k] for k in sorted(state["submissions"])]
    totals = gradebook_totals(db_url) if db_url else ({}, {})
    rows = grades_rows(state, db_url, totals)
    tmp = out / "grades.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, GRADES_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "grades.csv")
    with open(out / "questions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, QUESTION_COLUMNS)
        w.writeheader()
        for e in entries:
            for row in e["questions"]:
                t = totals[0].get((row["student"], row["assignment"]))
                graded = {g.cell: g for g in (t.written if t else []) if g.score is not None}
                g = graded.get(row["cell_id"])
                if g is not None and row["message"] == "needs manual grading":  # a TA graded it
                    row = dict(row, points=fmt(g.score), passed=str(g.score >= g.max_score).lower(),
                               message=g.comment or "graded")
                w.writerow(row)


def refresh_csvs(out: Path, db_url: str | None = None) -> Path | None:
    """Write ``<out>/grades.csv`` again with the gradebook's manual grades (after a TA graded);
    returns its path, or None when ``out`` holds no autograde state."""
    out = Path(out)
    if not (out / STATE_FILE).is_file():
        return None
    write_csvs(out, load_state(out), db_url or f"sqlite:///{out / 'gradebook.db'}")
    return out / "grades.csv"


def grade_table(out: Path) -> str:
    """student x assignment table of ``auto_score/auto_max`` (``+N?``: N points of written answers
    await a grader; ``REVIEW``: set to 0 by the tamper scan; ``LATE``: the LMS said so), and
    each student's course total (``pending`` while written answers await a grader)."""
    with open(Path(out) / "grades.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    students = sorted({r["student"] for r in rows})
    assigns = sorted({r["assignment"] for r in rows})
    cell = {(r["student"], r["assignment"]): r for r in rows}
    head = ["student"] + assigns + ["total"]
    lines = [head]
    for s in students:
        line = [s]
        for a in assigns:
            r = cell.get((s, a))
            if r is None:
                line.append("-")
                continue
            txt = f"{r['auto_score']}/{r['auto_max']}"
            if float(r["manual_points_pending"] or 0):
                txt += f" +{r['manual_points_pending']}?"
            if r["review"]:
                txt += " REVIEW"
            if r.get("late"):
                txt += " LATE"
            line.append(txt)
        mine = [r for r in rows if r["student"] == s and r.get("course_total")]
        line.append(f"{mine[0]['course_total']}/{mine[0]['course_max']}" if mine else "-")
        lines.append(line)
    w = [max(len(l[i]) for l in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(l)).rstrip() for l in lines)

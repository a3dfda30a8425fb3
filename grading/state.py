"""What autograde keeps in its output folder: the state of every submission, and the CSVs.

Trusted: runs in the grader's own process.

``.autograde_state.json`` holds, per ``<student>/<assignment>``, the digest of what was graded
(``None``: grade it again next time), its ``grades.csv`` row and its ``questions.csv`` rows; the
CSVs are written from it after every run, so they always cover every submission graded so far.
:func:`grade_table` prints ``grades.csv`` as a student x assignment table.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("grading.autograde")

STATE_FILE = ".autograde_state.json"
GRADES_COLUMNS = ["student", "assignment", "auto_score", "auto_max", "manual_points_pending",
                  "review", "notes"]
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


def write_csvs(out: Path, state: dict) -> None:
    entries = [state["submissions"][k] for k in sorted(state["submissions"])]
    with open(out / "grades.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, GRADES_COLUMNS)
        w.writeheader()
        for e in entries:
            w.writerow(e["grades"])
    with open(out / "questions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, QUESTION_COLUMNS)
        w.writeheader()
        for e in entries:
            for row in e["questions"]:
                w.writerow(row)


def grade_table(out: Path) -> str:
    """student x assignment table of ``auto_score/auto_max`` (``+N?``: N points of written answers
    await a grader; ``REVIEW``: set to 0 by the tamper scan)."""
    with open(Path(out) / "grades.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    students = sorted({r["student"] for r in rows})
    assigns = sorted({r["assignment"] for r in rows})
    cell = {(r["student"], r["assignment"]): r for r in rows}
    head = ["student"] + assigns
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
            line.append(txt)
        lines.append(line)
    w = [max(len(l[i]) for l in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(l)).rstrip() for l in lines)

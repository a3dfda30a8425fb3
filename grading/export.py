"""``python -m grading export``: one CSV row per submission of the course gradebook, manual grades
included (as nbgrader's ``export``, with the autograder's review flags); with ``--format
canvas|brightspace|moodle`` the LMS's grade-import layout instead (``grading.lms``). Either way
``<out>/grades.csv`` is written again with the gradebook's manual points.

Trusted: runs in the grader's own process.
"""
from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

from . import course
from .state import STATE_FILE, load_state, refresh_csvs

log = logging.getLogger("grading.export")

EXPORT_COLUMNS = ["student", "assignment", "auto_score", "auto_max", "manual_score",
                  "manual_points_pending", "score", "max_score", "needs_manual_grade", "review"]
#: Where ``export`` writes when ``--to`` is not given (in the current folder).
DEFAULT_TO = "grades.csv"


def export_grades(db_url: str, to: Path | str, state_dir: Path | None = None) -> int:
    """Write one CSV row per submission of the gradebook (with the manual grades); returns rows."""
    from nbgrader.api import Gradebook

    course.ensure_path()
    review = {}
    if state_dir is not None and (Path(state_dir) / STATE_FILE).is_file():
        for key, e in load_state(Path(state_dir))["submissions"].items():
            review[key] = e["grades"].get("review", "")
    rows = []
    with course.quiet_nbgrader(), Gradebook(db_url, "diffusion") as gb:
        for a in gb.assignments:
            for sub in a.submissions:
                s = sub.student.id
                pending = 0.0
                manual = 0.0
                for snb in sub.notebooks:
                    written = {c.name for c in snb.notebook.solution_cells}
                    for g in snb.grades:
                        if g.name in written:
                            if g.needs_manual_grade and g.manual_score is None:
                                pending += float(g.max_score)
                            manual += float(g.score or 0.0)
                rows.append({"student": s, "assignment": a.name, "auto_score": f"{sub.code_score:g}",
                             "auto_max": f"{sub.max_code_score:g}", "manual_score": f"{manual:g}",
                             "manual_points_pending": f"{pending:g}", "score": f"{sub.score:g}",
                             "max_score": f"{sub.max_score:g}",
                             "needs_manual_grade": str(bool(sub.needs_manual_grade)).lower(),
                             "review": review.get(f"{s}/{a.name}", "")})
    rows.sort(key=lambda r: (r["student"], r["assignment"]))
    with open(to, "w", newline="") as fh:
        w = csv.DictWriter(fh, EXPORT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def export_cli(args) -> int:
    out = Path(args.out).resolve()
    db_url = args.db or f"sqlite:///{out / 'gradebook.db'}"
    if db_url.startswith("sqlite:///") and not Path(db_url[len("sqlite:///"):]).is_file():
        log.error("no gradebook at %s", db_url)
        return 2
    refreshed = refresh_csvs(out, db_url)  # grades.csv of --out, with the manual points
    fmt = getattr(args, "format", None) or "csv"
    if fmt == "csv":
        to = Path(args.to or DEFAULT_TO)
        n = export_grades(db_url, to, out)
        print(f"wrote {n} row(s) to {to}")
    else:
        from .lms import export_lms

        try:
            res = export_lms(fmt, out, db_url, args.to, getattr(args, "pending", "blank"))
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        for f in res.files:
            print(f"wrote {f} ({fmt} grade import, {res.students} student(s))")
        if res.pending:
            what = ("left empty (no grade imported)" if getattr(args, "pending", "blank") == "blank"
                    else "exported with the points graded so far")
            print(f"{len(res.pending)} submission(s) still have written answers awaiting a grader, "
                  f"{what}: {', '.join(res.pending[:10])}{' ...' if len(res.pending) > 10 else ''}",
                  file=sys.stderr)
    if refreshed:
        print(f"updated {refreshed}")
    return 0

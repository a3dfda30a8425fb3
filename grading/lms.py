"""``python -m grading export --format canvas|brightspace|moodle``: grades in each LMS's import layout.

Trusted: runs in the grader's own process.

The student ids are the ones the LMS download carried (``grading.collect`` keeps them in the
autograde state: the LMS, the id, the name or login); a submission graded from a
``<student>/<assignment>/`` tree has no LMS id, and its folder name is written as the id. Points
are each assignment's total (autograded + written, ``grading.totals``).

**Pending written points.** While a written answer of a submission awaits a grader, its total is
not known: the cell is left **empty** in every layout, which each LMS reads as "no grade to
import" (the LMS keeps whatever it had), never as 0. The command says how many cells it left
empty and why, so that a run before the TAs finished is not mistaken for a final one. Pass
``--pending auto`` to export the points known so far instead (autograded + graded written).

Layouts, and where each comes from:

- **Canvas** (Grades > Import, "Importing grades in the Gradebook" of the Canvas Instructor
  Guide): a CSV whose first columns are ``Student, ID, SIS User ID, SIS Login ID, Section``,
  then one column per assignment, named ``<assignment>`` (Canvas makes a new assignment of a
  column it does not know, or matches one named ``<name> (<assignment id>)``). Canvas matches a
  row by ``ID``, its user id, which is the number after the login (and ``LATE``) in the file
  names of "Download Submissions": ``doejane_LATE_12345_67890_nb.ipynb`` is user 12345.
  A second row ``Points Possible`` gives each column's maximum.
- **Brightspace** (Grades > Import, "Import grades" of D2L's Brightspace documentation; its
  sample file): ``OrgDefinedId, <item> Points Grade, ..., End-of-Line Indicator`` with ``#`` as the
  last column of every row. The id written is the number before the name in the folder or file
  names of "Download" (``12345-67890 - Jane Doe - ...``), which is how ``collect`` names the
  student; where the institution's OrgDefinedId differs, map it in the file before importing.
- **Moodle** (Assignment > "Upload grading worksheet", the offline grading worksheet of
  Moodle's assignment module): one CSV per assignment with the columns ``Identifier, Full name,
  Grade, Maximum Grade, Feedback comments``; ``Identifier`` is ``Participant <n>``, ``n`` the
  number in the file names of "Download all submissions"
  (``Jane Doe_12345_assignsubmission_file_nb.ipynb``). Moodle matches rows by ``Identifier``.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from .state import load_state
from .totals import Totals, gradebook_totals

log = logging.getLogger("grading.export")

FORMATS = ("canvas", "brightspace", "moodle")
CANVAS_HEAD = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
BRIGHTSPACE_ID, BRIGHTSPACE_END = "OrgDefinedId", "End-of-Line Indicator"
MOODLE_HEAD = ["Identifier", "Full name", "Grade", "Maximum Grade", "Feedback comments"]


@dataclass
class Student:
    """A student as the LMS download named them."""
    key: str        # the id autograde graded under
    lms_id: str     # the id the LMS matches on
    name: str


@dataclass
class LmsExport:
    files: list[Path]
    pending: list[str]   # "<student>/<assignment>" cells left empty (or exported partial)
    students: int


def _students(state: dict) -> dict[str, Student]:
    out = {}
    for key, e in sorted(state["submissions"].items()):
        s = key.split("/", 1)[0]
        lms = e.get("lms") or {}
        out.setdefault(s, Student(s, str(lms.get("id") or s), str(lms.get("name") or s)))
    return out


def _points(t: Totals | None, pending_mode: str) -> str | None:
    """The points to import, "" for nothing (no submission: 0 is the LMS's own business), or
    None when written points are pending and ``pending_mode`` is ``blank``."""
    if t is None:
        return ""
    if t.total is not None:
        return f"{t.total:g}"
    return None if pending_mode == "blank" else f"{t.auto_score + t.manual_score:g}"


def export_lms(fmt: str, out: Path | str, db_url: str, to: Path | str | None = None,
               pending_mode: str = "blank") -> LmsExport:
    """Write the grades of autograde's ``out`` (and its gradebook) in ``fmt``'s import layout."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    state = load_state(out)
    if not state["submissions"]:
        raise ValueError(f"no graded submissions in {out}: run autograde with --out {out} first")
    totals, maxima = gradebook_totals(db_url)
    students = _students(state)
    assigns = sorted(maxima)
    pending: list[str] = []

    def cell(s: str, a: str) -> str:
        t = totals.get((s, a))
        if t is not None and t.total is None:
            pending.append(f"{s}/{a}")
        return _points(t, pending_mode) or ""

    files = []
    if fmt == "moodle":
        folder = Path(to) if to else out / "moodle"
        folder.mkdir(parents=True, exist_ok=True)
        for a in assigns:
            dest = folder / f"{a}.csv"
            with open(dest, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(MOODLE_HEAD)
                for st in students.values():
                    if (st.key, a) not in totals:
                        continue
                    t = totals[(st.key, a)]
                    notes = "; ".join(f"{g.cell}: {g.comment}" for g in t.written if g.comment
                                      and g.score is not None)
                    w.writerow([f"Participant {st.lms_id}", st.name, cell(st.key, a),
                                f"{maxima[a]:g}", notes])
            files.append(dest)
    else:
        dest = Path(to) if to else out / f"{fmt}.csv"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "w", newline="") as fh:
            w = csv.writer(fh)
            if fmt == "canvas":
                w.writerow(CANVAS_HEAD + assigns)
                w.writerow(["Points Possible", "", "", "", ""] + [f"{maxima[a]:g}" for a in assigns])
                for st in students.values():
                    w.writerow([st.name, st.lms_id, "", "", ""] + [cell(st.key, a) for a in assigns])
            else:
                w.writerow([BRIGHTSPACE_ID] + [f"{a} Points Grade" for a in assigns] + [BRIGHTSPACE_END])
                for st in students.values():
                    w.writerow([st.lms_id] + [cell(st.key, a) for a in assigns] + ["#"])
        files.append(dest)
    return LmsExport(files, pending, len(students))

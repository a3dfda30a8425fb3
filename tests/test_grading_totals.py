"""Totals and the LMS: grades.csv's manual points, totals and course total ("pending" until a
grader scored every written answer), Canvas's late marks, and the grade-import files of Canvas,
Brightspace and Moodle with the ids of the LMS download that autograde read.

One autograde run over a mixed LMS download of the fixture assignment is shared by the tests;
the written answers are graded through nbgrader's ``Gradebook`` API, as a TA's tool would."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from grading.autograde import autograde
from grading.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import grading_cases as gc  # noqa: E402

pytestmark = pytest.mark.slow
A = gc.ASSIGNMENT


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lms")
    d = tmp / "download"
    d.mkdir()
    perfect, blank = gc.dump(gc.perfect()), gc.dump(gc.blank())
    (d / f"doejane_LATE_12345_67890_{A}.ipynb").write_bytes(perfect)          # Canvas, late
    (d / f"roejohn_222_333_{A}.ipynb").write_bytes(blank)                     # Canvas
    (d / f"doejane_LATE_12345_67891_report.pdf").write_bytes(b"%PDF-1.4")    # Canvas, a PDF
    (d / f"Jane Roe_555_assignsubmission_file_{A}.ipynb").write_bytes(perfect)  # Moodle
    (d / f"777-888 - Ann Lee - Mar 3, 2025 1015 AM - {A}.ipynb").write_bytes(perfect)  # Brightspace
    out = tmp / "out"
    rep = autograde(d, out=out, jobs=2, timeout=8, root=gc.COURSE, progress=False)
    return dict(tmp=tmp, out=out, rep=rep, db=f"sqlite:///{out / 'gradebook.db'}")


def ta_grades(db: str, student: str, points: float, comment: str) -> None:
    from nbgrader.api import Gradebook

    with Gradebook(db, "diffusion") as gb:
        g = gb.find_grade("why", A, A, student)
        g.manual_score = points
        gb.find_comment("why", A, A, student).manual_comment = comment
        gb.db.commit()


def test_grades_csv_says_pending_until_a_grader_scored(graded):
    g = {r["student"]: r for r in read_csv(graded["out"] / "grades.csv")}
    assert set(g) == {"12345", "222", "555", "777-888"}
    late = g["12345"]
    assert late["late"] == "true" and g["555"]["late"] == "" and g["222"]["late"] == ""
    assert (late["auto_score"], late["auto_max"]) == ("3", "3")
    assert (late["manual_score"], late["manual_max"], late["manual_points_pending"]) == ("pending", "2", "2")
    assert (late["total"], late["max_total"]) == ("pending", "5")
    assert (late["course_total"], late["course_max"]) == ("pending", "5")
    # a written answer left as released needs no grader: 0, and the totals are numbers
    blank = g["222"]
    assert (blank["manual_score"], blank["total"], blank["course_total"]) == ("0", "0", "0")
    unmatched = read_csv(graded["out"] / "unmatched.csv")
    assert [r["path"] for r in unmatched] == ["doejane_LATE_12345_67891_report.pdf"]
    assert "not a notebook (.pdf" in unmatched[0]["reason"]


def test_lms_exports_leave_pending_totals_empty(graded, capsys):
    out = graded["out"]
    assert main(["export", "--out", str(out), "--format", "canvas"]) == 0
    err = capsys.readouterr().err
    assert "3 submission(s) still have written answers awaiting a grader, left empty" in err
    canvas = rows(out / "canvas.csv")
    assert canvas[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", A]
    assert canvas[1] == ["Points Possible", "", "", "", "", "5"]
    by_id = {r[1]: r for r in canvas[2:]}
    assert by_id["12345"] == ["doejane", "12345", "", "", "", ""]   # pending: no grade imported
    assert by_id["222"] == ["roejohn", "222", "", "", "", "0"]
    assert main(["export", "--out", str(out), "--format", "canvas", "--pending", "auto",
                 "--to", str(graded["tmp"] / "partial.csv")]) == 0
    assert {r[1]: r[5] for r in rows(graded["tmp"] / "partial.csv")[2:]}["12345"] == "3"


def test_lms_exports_after_the_ta_graded(graded, capsys):
    out, db = graded["out"], graded["db"]
    for s, pts, why in (("12345", 1.5, "Names the sign argument, not zero."), ("555", 2, "Complete."),
                        ("777-888", 0, "Off topic.")):
        ta_grades(db, s, pts, why)
    for fmt in ("canvas", "brightspace", "moodle"):
        assert main(["export", "--out", str(out), "--format", fmt]) == 0
    assert "awaiting a grader" not in capsys.readouterr().err
    canvas = {r[1]: r[5] for r in rows(out / "canvas.csv")[2:]}
    assert canvas == {"12345": "4.5", "222": "0", "555": "5", "777-888": "3"}
    bs = rows(out / "brightspace.csv")
    assert bs[0] == ["OrgDefinedId", f"{A} Points Grade", "End-of-Line Indicator"]
    assert ["777-888", "3", "#"] in bs[1:] and ["12345", "4.5", "#"] in bs[1:]
    moodle = read_csv(out / "moodle" / f"{A}.csv")
    assert list(moodle[0]) == ["Identifier", "Full name", "Grade", "Maximum Grade", "Feedback comments"]
    m = {r["Identifier"]: r for r in moodle}
    assert m["Participant 555"]["Full name"] == "Jane Roe" and m["Participant 555"]["Grade"] == "5"
    assert m["Participant 555"]["Maximum Grade"] == "5" and "Complete." in m["Participant 555"]["Feedback comments"]
    g = {r["student"]: r for r in read_csv(out / "grades.csv")}   # export wrote it again
    assert (g["12345"]["manual_score"], g["12345"]["total"], g["12345"]["course_total"]) == ("1.5", "4.5", "4.5")
    assert g["12345"]["late"] == "true"
    q = {(r["student"], r["cell_id"]): r for r in read_csv(out / "questions.csv")}
    assert q[("12345", "why")]["points"] == "1.5"
    assert q[("12345", "why")]["message"] == "Names the sign argument, not zero."


def test_export_refuses_an_unknown_folder(tmp_path):
    assert main(["export", "--out", str(tmp_path / "nowhere"), "--format", "moodle"]) == 2

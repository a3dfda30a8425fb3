"""End to end on a real notebook of ``solutions/``: the solution earns every autograded point,
the released notebook none, and the feedback shows no hidden test."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from grading import cells, course
from grading.autograde import autograde
from grading.demo import make_submissions
from grading.release import release

pytestmark = pytest.mark.slow
REAL = course.list_assignments(course.REPO_ROOT)
ASSIGNMENT = REAL[0] if REAL else None


@pytest.mark.skipif(not REAL, reason="no solutions/ notebooks yet")
def test_perfect_and_blank_on_a_real_notebook(tmp_path):
    a = ASSIGNMENT
    root = tmp_path / "course"
    shutil.copytree(course.REPO_ROOT / course.SOURCE_DIR / a, root / course.SOURCE_DIR / a)
    release([a], root=root)
    make_submissions(root, [a], tmp_path / "subs")
    shutil.rmtree(tmp_path / "subs" / "partial")
    rep = autograde(tmp_path / "subs", out=tmp_path / "out", jobs=2, root=root, progress=False)
    assert rep.errors == []
    rows = {r["student"]: r for r in csv.DictReader(open(tmp_path / "out" / "grades.csv"))}
    sol = json.loads((root / course.SOURCE_DIR / a / f"{a}.ipynb").read_text())
    max_auto = sum(c.points for c in cells.graded_cells(sol) if c.kind == "test")
    assert max_auto > 0
    assert float(rows["perfect"]["auto_score"]) == float(rows["perfect"]["auto_max"]) == max_auto
    assert float(rows["blank"]["auto_score"]) == 0
    assert rows["perfect"]["review"] == "" and rows["blank"]["review"] == ""
    hidden = cells.hidden_test_lines(sol)
    assert hidden
    for page in (tmp_path / "out" / "feedback").glob(f"*/{a}/*.html"):
        text = page.read_text()
        assert "BEGIN HIDDEN TESTS" not in text and "_hidden.run" not in text and "gradeprobe.run" not in text
        assert not [ln for ln in hidden if ln in text]

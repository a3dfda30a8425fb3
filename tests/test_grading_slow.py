"""The graded run leaves out the course's ``slow`` cells, decided from the source notebook only.

Fast tests: which submitted cells ``grading.slow`` leaves out, and that a student's tags change
nothing. Slow tests: autograde of the fixture assignment with hostile submissions (a test cell
given the grader's skip tag or a slow cell's id), and the proof that no graded test of the six
notebooks depends on a ``slow`` cell: every perfect notebook earns every autograded point with
its ``slow`` cells left out (and they were left out).
"""
from __future__ import annotations

import copy
import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from grading import cells, course
from grading.sanitize import sanitize
from grading.slow import SlowCells, leaves_out, mark_left_out, slow_cells

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import grading_cases as gc  # noqa: E402

SKIP = cells.GRADER_SKIP_TAG


def _by_id(nb: dict, cid: str) -> dict:
    return next(c for c in nb["cells"] if c.get("id") == cid)


def _left_out(nb: dict) -> list[str]:
    return [c.get("id") for c in nb["cells"] if SKIP in c.get("metadata", {}).get("tags", [])]


@pytest.fixture(scope="module")
def fixture_slow() -> SlowCells:
    return slow_cells(gc.load(gc.SOLUTION), gc.load(gc.RELEASE))


def prepared(nb: dict, slow: SlowCells) -> dict:
    """As ``grading.jobs.prepare`` does: sanitize against the release, then mark."""
    s = sanitize(gc.dump(nb), gc.load(gc.RELEASE))
    assert s.nb is not None
    mark_left_out(s.nb, slow)
    return s.nb


def test_the_fixture_slow_cell_is_left_out_and_nothing_else(fixture_slow):
    assert fixture_slow.cell_ids == {"train"} and not fixture_slow.answer_ids
    assert _left_out(prepared(gc.perfect(), fixture_slow)) == ["train"]
    # found by its source when a front end lost the cell ids
    nb = gc.perfect()
    for i, c in enumerate(nb["cells"]):
        c["id"] = f"x{i}"
    assert _left_out(prepared(nb, fixture_slow)) == ["x9"]


def test_student_tags_decide_nothing(fixture_slow):
    nb = gc.perfect()
    for c in nb["cells"]:   # every cell tagged slow and with the grader's own skip tag
        c.setdefault("metadata", {})["tags"] = ["slow", SKIP]
    s = sanitize(gc.dump(nb), gc.load(gc.RELEASE))
    assert _left_out(s.nb) == [] and any(f"removed tag {SKIP}" in n for n in s.notes)
    mark_left_out(s.nb, fixture_slow)
    assert _left_out(s.nb) == ["train"]


def test_a_test_cell_is_never_left_out(fixture_slow):
    """A test cell given the slow cell's id, or its source, still runs."""
    nb = gc.blank()
    _by_id(nb, "train")["id"] = "moved"
    test = next(c for c in nb["cells"] if gc.gid(c) == "test_square")
    test["id"] = "train"
    out = prepared(nb, fixture_slow)
    assert _left_out(out) == ["moved"]   # the slow cell, found by its source
    assert not leaves_out({"cell_type": "code", "id": "train", "source": "SLOW_RAN = True",
                           "metadata": {"nbgrader": {"grade": True, "grade_id": "test_square"}}},
                          fixture_slow)
    assert not leaves_out({"cell_type": "markdown", "id": "train", "source": "", "metadata": {}},
                          fixture_slow)


def test_slow_answer_cells_go_by_grade_id():
    src = {"cells": [
        {"cell_type": "code", "id": "a", "source": "### BEGIN SOLUTION\nx = 1\n### END SOLUTION",
         "metadata": {"tags": ["slow"], "nbgrader": {"grade": False, "solution": True,
                                                     "grade_id": "training_loop"}}},
        {"cell_type": "code", "id": "b", "source": "y = 2", "metadata": {"tags": ["slow"]}}]}
    slow = slow_cells(src, src)
    assert slow.answer_ids == {"training_loop"} and slow.cell_ids == {"b"}
    student = {"cell_type": "code", "id": "zz", "source": "x = 3  # my loop",
               "metadata": {"nbgrader": {"grade": False, "solution": True, "grade_id": "training_loop"}}}
    assert leaves_out(student, slow)
    bad = copy.deepcopy(src)
    bad["cells"][1]["metadata"]["nbgrader"] = {"grade": True, "grade_id": "test_y", "points": 1}
    with pytest.raises(ValueError, match="test_y"):
        slow_cells(bad, bad)


def test_the_config_switch_runs_slow_cells_again(tmp_path, monkeypatch):
    from grading import template

    assert template.build_template(gc.ASSIGNMENT, gc.COURSE, tmp_path / "a").slow[gc.ASSIGNMENT]
    load = course.load_config

    def load_config(root, db_url=None):
        cfg = load(root, db_url)
        cfg.CourseGrading.execute_slow_cells = True
        return cfg

    monkeypatch.setattr(course, "load_config", load_config)
    assert template.build_template(gc.ASSIGNMENT, gc.COURSE, tmp_path / "b").slow == {}


# -- end to end ---------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_autograde_leaves_out_slow_cells_but_never_a_test(tmp_path):
    from grading.autograde import autograde

    subs = tmp_path / "subs"
    a = gc.ASSIGNMENT
    nb = gc.perfect()
    _by_id(nb, "train")["source"] = "raise SystemExit('the slow cell ran')"  # edited, same id
    nbs = {"perfect": nb}
    nb = gc.blank()   # a blank notebook whose test cells ask to be skipped
    for c in nb["cells"]:
        if cells.is_test(c):
            c.setdefault("metadata", {})["tags"] = [SKIP, "slow"]
    nbs["tagged_tests"] = nb
    nb = gc.blank()   # a blank notebook whose test cell wears the slow cell's id
    _by_id(nb, "train")["id"] = "elsewhere"
    next(c for c in nb["cells"] if gc.gid(c) == "test_add_one")["id"] = "train"
    nbs["test_as_slow"] = nb
    for name, nb in nbs.items():
        (subs / name / a).mkdir(parents=True)
        (subs / name / a / f"{a}.ipynb").write_bytes(gc.dump(nb))
    rep = autograde(subs, out=tmp_path / "out", jobs=2, timeout=8, root=gc.COURSE, progress=False)
    assert rep.errors == []
    scores = {r["student"]: r["auto_score"] for r in _read_csv(tmp_path / "out" / "grades.csv")}
    assert scores == {"perfect": "3", "tagged_tests": "0", "test_as_slow": "0"}
    graded = json.loads((tmp_path / "out" / "autograded" / "perfect" / a / f"{a}.ipynb").read_text())
    train = _by_id(graded, "train")
    assert train["execution_count"] is None and train["outputs"] == []
    ran = [c for c in graded["cells"] if c["cell_type"] == "code" and c.get("id") != "train"]
    assert all(c["execution_count"] for c in ran)
    q = {(r["student"], r["cell_id"]): r for r in _read_csv(tmp_path / "out" / "questions.csv")}
    assert "NotImplementedError" in q[("test_as_slow", "test_add_one")]["message"]


@pytest.mark.slow
def test_no_graded_test_depends_on_a_slow_cell(tmp_path):
    """Every perfect notebook of the course earns every autograded point with its slow cells left
    out (the course's rule, proven), and the graded notebooks show they were not run."""
    from grading.autograde import autograde
    from grading.demo import make_submissions
    from grading.release import release

    real = course.list_assignments(course.REPO_ROOT)
    assert len(real) == 6
    root = tmp_path / "course"
    for a in real:
        shutil.copytree(course.REPO_ROOT / course.SOURCE_DIR / a, root / course.SOURCE_DIR / a)
    release(real, root=root)
    make_submissions(root, real, tmp_path / "subs")
    for other in ("blank", "partial"):
        shutil.rmtree(tmp_path / "subs" / other)
    rep = autograde(tmp_path / "subs", out=tmp_path / "out", jobs=2, root=root, progress=False)
    assert rep.errors == []
    rows = {r["assignment"]: r for r in _read_csv(tmp_path / "out" / "grades.csv")}
    assert set(rows) == set(real)
    not_full = {a: (r["auto_score"], r["auto_max"], r["notes"]) for a, r in rows.items()
                if float(r["auto_score"]) != float(r["auto_max"]) or float(r["auto_max"]) == 0}
    assert not_full == {}
    left_out = tagged = 0
    for a in real:
        src = course.read_json(root / course.SOURCE_DIR / a / f"{a}.ipynb")
        slow_ids = {c["id"] for c in src["cells"] if cells.SLOW_TAG in c["metadata"].get("tags", [])}
        tagged += len(slow_ids)
        graded = course.read_json(tmp_path / "out" / "autograded" / "perfect" / a / f"{a}.ipynb")
        for c in graded["cells"]:
            if c["cell_type"] == "code" and c.get("id") in slow_ids:
                assert c["execution_count"] is None, (a, c["id"])
                left_out += 1
            elif c["cell_type"] == "code" and cells.is_test(c):
                assert c["execution_count"], (a, cells.grade_id(c))
    assert left_out == tagged >= 30   # every slow cell of the six notebooks (32 today) left out

"""Release: deterministic, leak-free, and ``--check`` catches stale or missing notebooks."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grading import course, release

FIXTURES = Path(__file__).resolve().parent / "fixtures"
COURSE = FIXTURES / "course"
A = "00_fixture"
HIDDEN = ("square(-3)", "add_one(-1)", "[0.5, -2.0]", "twice(2)) == 5")


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "grading", *args], capture_output=True, text=True,
                          cwd=cwd or course.REPO_ROOT, env=course.grading_env())


@pytest.fixture
def course_copy(tmp_path):
    dst = tmp_path / "course"
    shutil.copytree(COURSE, dst)
    return dst


def test_release_is_deterministic_and_committed_fixture_is_current():
    first = release.build_release(A, COURSE)
    second = release.build_release(A, COURSE)
    assert first == second
    committed = (COURSE / "notebooks" / A / f"{A}.ipynb").read_bytes()
    assert first[f"{A}.ipynb"] == committed
    assert release.release([A], root=COURSE, check=True) == []


def test_release_contains_no_solution_hidden_test_or_rubric():
    text = release.build_release(A, COURSE)[f"{A}.ipynb"].decode()
    for marker in release.FORBIDDEN + HIDDEN + ("return x * x", "return x + 1", "Model answer"):
        assert marker not in text, marker
    assert text.count("raise NotImplementedError()") == 2
    assert "YOUR ANSWER HERE" in text
    assert "square(2) == 4" in text  # the visible tests stay


def test_check_names_stale_missing_and_extra_files(course_copy):
    nb = course_copy / "notebooks" / A / f"{A}.ipynb"
    nb.write_text(nb.read_text().replace("Fixture assignment", "Fixture assignment (edited)"))
    r = cli("release", "--check", "--root", str(course_copy))
    assert r.returncode == 1 and f"stale: notebooks/{A}/{A}.ipynb" in r.stdout
    nb.unlink()
    (course_copy / "notebooks" / A / "stray.txt").write_text("x")
    r = cli("release", "--check", "--root", str(course_copy))
    assert r.returncode == 1
    assert f"missing: notebooks/{A}/{A}.ipynb" in r.stdout and "stray.txt" in r.stdout
    r = cli("release", "--root", str(course_copy))   # what --check recommends repairs all three
    assert r.returncode == 0 and f"removed notebooks/{A}/stray.txt" in r.stdout, r.stdout
    assert not (course_copy / "notebooks" / A / "stray.txt").exists()
    assert cli("release", "--check", "--root", str(course_copy)).returncode == 0
    assert nb.read_bytes() == (COURSE / "notebooks" / A / f"{A}.ipynb").read_bytes()


def test_release_copies_other_files_and_leaves_no_gradebook(course_copy):
    (course_copy / "solutions" / A / "data.csv").write_text("a,b\n1,2\n")
    assert release.release([A], root=course_copy, check=True) == [f"missing: notebooks/{A}/data.csv"]
    release.release([A], root=course_copy)
    assert (course_copy / "notebooks" / A / "data.csv").read_text() == "a,b\n1,2\n"
    assert not list(course_copy.rglob("*.db"))
    assert not (course_copy / "gradebook.db").exists()


def test_leaking_release_is_refused(course_copy):
    src = course_copy / "solutions" / A / f"{A}.ipynb"
    src.write_text(src.read_text().replace("A tiny assignment", "Rubric: a tiny assignment"))
    with pytest.raises(release.ReleaseError, match="Rubric"):
        release.build_release(A, course_copy)


REAL = course.list_assignments(course.REPO_ROOT)


@pytest.mark.parametrize("assignment", REAL or [pytest.param(None, marks=pytest.mark.skip(
    reason="no solutions/ notebooks yet"))])
def test_real_release_builds_without_leaks(assignment):
    files = release.build_release(assignment, course.REPO_ROOT)
    assert release.build_release(assignment, course.REPO_ROOT) == files   # deterministic
    text = files[f"{assignment}.ipynb"].decode()
    assert release.leaks(text) == []
    assert "BEGIN HIDDEN TESTS" not in text and "_hidden.run" not in text and "gradeprobe" not in text


def test_release_never_overwrites_work_without_force(course_copy):
    """Someone worked in notebooks/ (typed an answer, ran cells): the release says so, writes
    nothing, and asks for --force; with --force it overwrites and says what the file held."""
    import json

    nb = course_copy / "notebooks" / A / f"{A}.ipynb"
    released = nb.read_bytes()
    work = json.loads(released)
    answer = next(c for c in work["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "square")
    answer["source"] = "def square(x):\n    return x * x\n"
    nb.write_text(json.dumps(work))
    src = course_copy / "solutions" / A / f"{A}.ipynb"
    src.write_text(src.read_text().replace("A tiny assignment", "A small assignment"))
    r = cli("release", "--root", str(course_copy))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"notebooks/{A}/{A}.ipynb: answers typed into square" in r.stderr and "--force" in r.stderr
    assert json.loads(nb.read_text()) == work                        # nothing written
    code = next(c for c in work["cells"] if c["cell_type"] == "code")
    answer["source"] = next(c["source"] for c in json.loads(released)["cells"]   # as released
                            if c["metadata"].get("nbgrader", {}).get("grade_id") == "square")
    code["outputs"], code["execution_count"] = [{"output_type": "stream", "name": "stdout",
                                                 "text": "fast mode: True\n"}], 1
    nb.write_text(json.dumps(work))
    with pytest.raises(release.ReleaseError, match="outputs of 1 code cell"):
        release.release([A], root=course_copy)
    r = cli("release", "--root", str(course_copy), "--force")
    assert r.returncode == 0 and f"overwrote notebooks/{A}/{A}.ipynb (it held outputs" in r.stdout
    assert "A small assignment" in nb.read_text()
    assert cli("release", "--root", str(course_copy)).returncode == 0   # a clean release: no question

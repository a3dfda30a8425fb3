"""The cell runner (``grading.runner.run_notebook``) and ``python -m grading check``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from grading import course
from grading.runner import CellResult, run_notebook, score_cell

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import grading_cases as gc  # noqa: E402

SOL = gc.SOLUTION


def test_solution_passes_every_test_cell():
    res = run_notebook(SOL)
    assert list(res) == ["test_square", "test_add_one"]
    assert all(r.passed and r.points == r.max_points for r in res.values())
    assert res["test_square"] == CellResult("test_square", True, 2.0, 2.0, "")


def test_replace_stop_after_and_hidden_failure_message():
    res = run_notebook(SOL, replace={"square": "def square(x):\n    return abs(x) * 2"},
                       stop_after="test_square")
    assert list(res) == ["test_square"]            # nothing after stop_after runs
    r = res["test_square"]
    assert not r.passed and r.points == 0 and r.max_points == 2
    assert r.message == "AssertionError: hidden check: negative inputs"


def test_slow_cells_are_skipped_unless_asked(tmp_path):
    nb = gc.load(SOL)
    slow = next(c for c in nb["cells"] if "slow" in c["metadata"].get("tags", []))
    nb["cells"].remove(slow)
    nb["cells"].insert(1, slow)                    # the slow cell now runs before the tests
    path = tmp_path / "nb.ipynb"
    path.write_bytes(gc.dump(nb))
    probe = "def add_one(x):\n    return x + 1 + int('SLOW_RAN' in globals())"
    assert run_notebook(path, replace={"add_one": probe})["test_add_one"].passed
    assert not run_notebook(path, replace={"add_one": probe}, skip_tags=())["test_add_one"].passed


def test_warnings_pass_other_stderr_fails_and_partial_credit():
    warn = "import warnings\ndef square(x):\n    warnings.warn('careful', UserWarning)\n    return x * x"
    loud = "import sys\ndef add_one(x):\n    print('oops', file=sys.stderr)\n    return x + 1"
    res = run_notebook(SOL, replace={"square": warn, "add_one": loud, "test_add_one": "0.5"},
                       env={"EXTRA": "1"})
    assert res["test_square"].passed
    assert res["test_add_one"].points == 0.5 and not res["test_add_one"].passed
    res = run_notebook(SOL, replace={"add_one": loud})
    assert res["test_add_one"].points == 0 and res["test_add_one"].message == "stderr output"


def test_timeout_and_errors_do_not_stop_the_run():
    res = run_notebook(SOL, replace={"square": "while True:\n    pass"}, timeout=3)
    assert res["test_square"].message.startswith("NameError")
    assert res["test_add_one"].passed


def test_unknown_grade_ids_raise():
    with pytest.raises(KeyError, match="nope"):
        run_notebook(SOL, replace={"nope": "x = 1"})
    with pytest.raises(KeyError, match="nope"):
        run_notebook(SOL, stop_after="nope")


def test_score_cell_mirrors_nbgrader():
    base = {"cell_type": "code", "source": "", "metadata": {"nbgrader": {
        "grade": True, "solution": False, "grade_id": "t", "points": 4}}, "outputs": []}
    assert score_cell(base).points == 4
    err = dict(base, outputs=[{"output_type": "error", "ename": "ValueError", "evalue": "bad\nmore",
                               "traceback": ["secret hidden line"]}])
    assert score_cell(err).message == "ValueError: bad\nmore" and score_cell(err).points == 0
    part = dict(base, outputs=[{"output_type": "execute_result", "execution_count": 1,
                                "data": {"text/plain": "1.5"}, "metadata": {}}])
    assert score_cell(part).points == 1.5


def test_check_command_runs_the_students_notebook_without_hidden_tests(tmp_path):
    nb = tmp_path / "00_fixture.ipynb"
    nb.write_bytes(gc.dump(gc.with_answer(gc.perfect(), "square", "def square(x):\n    return abs(x) * x")))
    r = subprocess.run([sys.executable, "-m", "grading", "check", str(nb)], capture_output=True,
                       text=True, env=course.grading_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # abs(x) * x passes the visible asserts; only the hidden ones (not in the release) catch it
    assert "test_square" in r.stdout and "3/3" in r.stdout
    assert "hidden" not in r.stdout.lower()

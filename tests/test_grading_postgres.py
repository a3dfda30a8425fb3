"""The course gradebook on PostgreSQL (``--db postgresql://...``): autograde, a regrade, a manual
score through nbgrader's Gradebook API, export; and two autograde runs of different assignments
writing into one PostgreSQL gradebook at the same time lose nothing.

The server comes from ``GRADING_TEST_POSTGRES_URL`` (``.ci/run`` starts one on loopback with
``.ci/postgres``); each test gets a database of its own on it. Without the variable these tests
skip, except in CI (``CI=true``), where they fail.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from grading import course

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import grading_cases as gc  # noqa: E402

pytestmark = pytest.mark.slow
A = gc.ASSIGNMENT
TIMEOUT = 8
URL = os.environ.get("GRADING_TEST_POSTGRES_URL")


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def pg_url():
    """A fresh database on the test server, dropped afterwards."""
    if not URL:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("GRADING_TEST_POSTGRES_URL is not set in CI (.ci/run starts PostgreSQL)")
        pytest.skip("GRADING_TEST_POSTGRES_URL not set (bash .ci/postgres starts a server)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"grading_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_autograde_regrade_manual_scores_and_export_on_postgres(pg_url, tmp_path):
    from nbgrader.api import Gradebook

    from grading.autograde import autograde
    from grading.cli import main
    from grading.export import export_grades

    names = ["perfect", "blank", "hidden_fail", "likely_cause"]
    cases = gc.write_tree(tmp_path / "subs", names)
    out = tmp_path / "out"
    rep = autograde(tmp_path / "subs", out=out, jobs=2, timeout=TIMEOUT, root=gc.COURSE,
                    progress=False, db_url=pg_url)
    assert rep.errors == [] and rep.graded == len(names)
    rows = {r["student"]: r for r in _read_csv(out / "grades.csv")}
    assert {n: float(r["auto_score"]) for n, r in rows.items()} == {n: c[1] for n, c in cases.items()}
    assert not (out / "gradebook.db").exists()   # no SQLite file beside it
    with Gradebook(pg_url, "diffusion") as gb:
        assert {s.student.id: s.code_score for s in gb.find_assignment(A).submissions} == \
            {n: c[1] for n, c in cases.items()}
        g = gb.find_grade("why", A, A, "perfect")   # a TA grades the written answer
        g.manual_score = 1.5
        gb.db.commit()
    # a changed submission is regraded, alone, into the same gradebook
    (tmp_path / "subs" / "blank" / A / f"{A}.ipynb").write_bytes(gc.cases()["perfect"][0])
    rep = autograde(tmp_path / "subs", out=out, jobs=2, timeout=TIMEOUT, root=gc.COURSE,
                    progress=False, db_url=pg_url)
    assert rep.graded == 1 and rep.skipped == len(names) - 1
    assert export_grades(pg_url, tmp_path / "export.csv", out) == len(names)
    exported = {r["student"]: r for r in _read_csv(tmp_path / "export.csv")}
    assert exported["perfect"]["score"] == "4.5" and exported["blank"]["auto_score"] == "3"
    assert main(["export", "--db", pg_url, "--out", str(out), "--to", str(tmp_path / "cli.csv")]) == 0
    assert _read_csv(tmp_path / "cli.csv") == _read_csv(tmp_path / "export.csv")


def _two_assignment_course(dest: Path) -> tuple[Path, str]:
    """The fixture course with a second assignment (a copy of the first under another id)."""
    from grading.release import release

    other = "01_copy"
    shutil.copytree(gc.COURSE / course.SOURCE_DIR / A, dest / course.SOURCE_DIR / A)
    (dest / course.SOURCE_DIR / other).mkdir(parents=True)
    shutil.copy(gc.SOLUTION, dest / course.SOURCE_DIR / other / f"{other}.ipynb")
    release([A, other], root=dest)
    return dest, other


def test_two_runs_at_once_into_one_postgres_gradebook_lose_nothing(pg_url, tmp_path):
    """Two autograde processes, two assignments, the same students, one empty gradebook: both
    create its tables, the course and the students at the same moment."""
    from nbgrader.api import Gradebook

    root, other = _two_assignment_course(tmp_path / "course")
    names = ["perfect", "blank", "hidden_fail"]
    runs = {}
    for a in (A, other):
        subs = tmp_path / f"subs-{a}"
        for name in names:
            d = subs / name / a
            d.mkdir(parents=True)
            (d / f"{a}.ipynb").write_bytes(gc.cases()[name][0])
        runs[a] = subprocess.Popen(
            [sys.executable, "-m", "grading", "autograde", str(subs), "--out", str(tmp_path / f"out-{a}"),
             "--db", pg_url, "--jobs", "1", "--timeout", str(TIMEOUT), "--root", str(root)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=course.grading_env())
    for a, p in runs.items():
        log, _ = p.communicate(timeout=600)
        assert p.returncode == 0, log[-3000:]
    want = {n: gc.cases()[n][1] for n in names}
    with Gradebook(pg_url, "diffusion") as gb:
        assert sorted(x.name for x in gb.assignments) == sorted([A, other])
        assert sorted(s.id for s in gb.students) == sorted(names)
        for a in (A, other):
            assert {s.student.id: s.code_score for s in gb.find_assignment(a).submissions} == want, a
    for a in (A, other):
        state = json.loads((tmp_path / f"out-{a}" / ".autograde_state.json").read_text())
        assert sorted(state["submissions"]) == sorted(f"{n}/{a}" for n in names)


def test_gradebook_writers_take_turns(pg_url):
    """While one process writes the course gradebook, another cannot start to."""
    from sqlalchemy import create_engine, text

    from grading.gradebook import LOCK_KEY, writing

    other = create_engine(pg_url)
    try:
        with other.connect() as conn:
            def free() -> bool:
                got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar()
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                return bool(got)

            assert free()
            with writing(pg_url):
                assert not free()
            assert free()
    finally:
        other.dispose()

"""Autograding end to end on the fixture assignment: every bad submission is graded, never fatal.

One autograde run over all cases (``tests/fixtures/grading_cases.py``) is shared by the tests; a
second run checks that re-running changes nothing, a third that --jobs 1 gives the same grades.
"""
from __future__ import annotations

import csv
import sys
import zipfile
from pathlib import Path

import pytest

from grading import course
from grading.autograde import autograde

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import grading_cases as gc  # noqa: E402

pytestmark = pytest.mark.slow
A = gc.ASSIGNMENT
TIMEOUT = 8  # seconds per cell; the infinite loop hits it


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("autograde")
    cases = gc.write_tree(tmp / "subs")
    rep = autograde(tmp / "subs", out=tmp / "out", jobs=2, timeout=TIMEOUT, root=gc.COURSE,
                    progress=False)
    grades = {r["student"]: r for r in read_csv(tmp / "out" / "grades.csv")}
    questions = {}
    for r in read_csv(tmp / "out" / "questions.csv"):
        questions.setdefault(r["student"], []).append(r)
    return dict(tmp=tmp, out=tmp / "out", rep=rep, cases=cases, grades=grades, questions=questions)


def test_every_case_gets_the_score_it_earns(graded):
    assert graded["rep"].errors == []
    assert set(graded["grades"]) == set(graded["cases"])
    wrong = {}
    for name, (_, expected, text) in graded["cases"].items():
        g = graded["grades"][name]
        assert g["assignment"] == A and g["auto_max"] == "3"
        if float(g["auto_score"]) != expected:
            wrong[name] = (g["auto_score"], expected, g["notes"])
        if text:
            blob = " ".join(q["message"] for q in graded["questions"][name]) + g["notes"] + g["review"]
            assert text in blob, (name, text, blob)
    assert wrong == {}


def test_questions_rows_and_manual_points(graded):
    perfect = {q["cell_id"]: q for q in graded["questions"]["perfect"]}
    assert set(perfect) == {"test_square", "test_add_one", "why"}
    assert perfect["test_square"]["passed"] == "true" and perfect["test_square"]["points"] == "2"
    assert perfect["why"]["message"] == "needs manual grading"
    assert graded["grades"]["perfect"]["manual_points_pending"] == "2"
    assert graded["grades"]["blank"]["manual_points_pending"] == "0"   # unchanged answer: no response
    hidden = {q["cell_id"]: q for q in graded["questions"]["hidden_fail"]}
    assert hidden["test_square"]["message"] == "AssertionError: hidden check: negative inputs"


def test_the_likely_cause_reaches_questions_csv(graded):
    """A failed check's message of several lines keeps its first line and its likely cause."""
    q = {r["cell_id"]: r for r in graded["questions"]["likely_cause"]}
    assert q["test_add_one"]["message"] == ("AssertionError: hidden check: wrong for a negative x "
                                            "Likely cause: the sign of x is lost (abs?)")
    assert q["test_add_one"]["points"] == "0" and q["test_square"]["points"] == "2"
    page = (graded["out"] / "feedback" / "likely_cause" / A / f"{A}.html").read_text()
    assert "Likely cause: the sign of x is lost" in page   # the whole message in the feedback


def test_tampering_is_zeroed_and_marked_for_review(graded):
    g = graded["grades"]["tamper"]
    assert g["auto_score"] == "0" and "np.allclose" in g["review"]
    assert all(not graded["grades"][n]["review"] for n in graded["cases"]
               if n not in ("tamper", "kernel_death"))


def test_gradebook_is_consistent(graded):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{graded['out'] / 'gradebook.db'}", "diffusion") as gb:
        for name in graded["cases"]:
            sub = gb.find_submission(A, name)
            assert sub.code_score == pytest.approx(float(graded["grades"][name]["auto_score"])), name
            assert sub.max_code_score == 3
        assert gb.find_submission(A, "perfect").needs_manual_grade
        assert not gb.find_submission(A, "blank").needs_manual_grade


def test_feedback_has_no_hidden_tests_or_solutions(graded):
    pages = sorted((graded["out"] / "feedback").glob(f"*/{A}/{A}.html"))
    assert {p.parent.parent.name for p in pages} == set(graded["cases"])  # not run: a page too
    for name, why in (("empty_file", "empty file"), ("invalid_json", "not valid JSON"),
                      ("missing_notebook", "missing notebook")):
        text = (graded["out"] / "feedback" / name / A / f"{A}.html").read_text()
        assert "This notebook scored 0:" in text and why in text, (name, text[-800:])
    for p in pages:
        text = p.read_text()
        own = p.parent.parent.name == "solution"  # handed in the instructor's notebook itself
        for snippet in gc.HIDDEN_SNIPPETS + (() if own else ("Model answer", "Rubric")):
            assert snippet not in text, (p, snippet)
    assert "hidden check: negative inputs" in (graded["out"] / "feedback" / "hidden_fail" / A /
                                               f"{A}.html").read_text()
    big = graded["out"] / "feedback" / "million_lines" / A / f"{A}.html"
    assert big.stat().st_size < 2_000_000   # LimitOutput kept a million lines out


def test_rerun_changes_nothing_and_force_regrades(graded):
    out = graded["out"]
    before = {f: (out / f).read_bytes() for f in ("grades.csv", "questions.csv")}
    rep = autograde(graded["tmp"] / "subs", out=out, jobs=2, timeout=TIMEOUT, root=gc.COURSE,
                    progress=False)
    assert rep.graded == 0 and rep.skipped == len(graded["cases"])
    assert {f: (out / f).read_bytes() for f in before} == before
    # a changed submission is regraded, alone
    nb = graded["tmp"] / "subs" / "blank" / A / f"{A}.ipynb"
    nb.write_bytes(graded["cases"]["perfect"][0])
    rep = autograde(graded["tmp"] / "subs", out=out, jobs=1, timeout=TIMEOUT, root=gc.COURSE,
                    progress=False)
    assert rep.graded == 1
    assert {r["student"]: r for r in read_csv(out / "grades.csv")}["blank"]["auto_score"] == "3"


def test_jobs_1_gives_the_same_grades_as_jobs_2(graded, tmp_path):
    names = ["perfect", "exception", "hidden_fail", "skip_execution"]
    gc.write_tree(tmp_path / "subs", names)
    with pytest.raises(ValueError, match="unknown assignment '99'"):
        autograde(tmp_path / "subs", out=tmp_path / "out", assignment="99", root=gc.COURSE)
    autograde(tmp_path / "subs", out=tmp_path / "out", jobs=1, timeout=TIMEOUT, root=gc.COURSE,
              progress=False, assignment="00")   # a prefix, as the other commands accept
    one = {r["student"]: r for r in read_csv(tmp_path / "out" / "grades.csv")}
    assert one == {n: graded["grades"][n] for n in names}
    q1 = [r for r in read_csv(tmp_path / "out" / "questions.csv")]
    q2 = [r for r in read_csv(graded["out"] / "questions.csv") if r["student"] in names]
    assert q1 == q2


def test_lms_zip_download(tmp_path):
    z = tmp_path / "download.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"doejane_12345_67890_{A}.ipynb", gc.cases()["perfect"][0])
        zf.writestr(f"Jane Roe_555_assignsubmission_file_{A} (1).ipynb", gc.cases()["blank"][0])
    db = tmp_path / "elsewhere.db"   # any SQLAlchemy URL through --db
    autograde(z, out=tmp_path / "out", jobs=2, timeout=TIMEOUT, root=gc.COURSE, progress=False,
              db_url=f"sqlite:///{db}")
    grades = {r["student"]: r["auto_score"] for r in read_csv(tmp_path / "out" / "grades.csv")}
    assert grades == {"12345": "3", "555": "0"}
    assert db.is_file() and not (tmp_path / "out" / "gradebook.db").exists()


def test_export_feedback_and_manual_grades(graded, tmp_path):
    from nbgrader.api import Gradebook

    from grading.export import export_grades
    from grading.feedback import regenerate_feedback

    db = f"sqlite:///{graded['out'] / 'gradebook.db'}"
    with Gradebook(db, "diffusion") as gb:   # a TA grades the written answer of "perfect"
        g = gb.find_grade("why", A, A, "perfect")
        g.manual_score = 1.5
        gb.db.commit()
    assert export_grades(db, tmp_path / "grades.csv", graded["out"]) == len(graded["cases"])
    rows = {r["student"]: r for r in read_csv(tmp_path / "grades.csv")}
    assert rows["perfect"]["score"] == "4.5" and rows["perfect"]["max_score"] == "5"
    assert rows["perfect"]["manual_points_pending"] == "0"
    assert rows["vscode"]["manual_points_pending"] == "2"
    assert rows["tamper"]["review"] and rows["tamper"]["auto_score"] == "0"
    pages = regenerate_feedback(graded["out"], student="perfect", root=gc.COURSE)
    assert len(pages) == 1
    text = pages[0].read_text()
    assert "1.5" in text and not any(s in text for s in gc.HIDDEN_SNIPPETS)
    from grading.cli import main   # a folder without graded notebooks is an error, not "0 written"

    assert main(["feedback", "--out", str(tmp_path / "nowhere")]) == 2
    assert main(["export", "--out", str(tmp_path / "nowhere")]) == 2


def test_rubric_and_demo_on_the_fixture(capsys):
    from grading.demo import run_demo
    from grading.rubric import print_rubric

    print_rubric(A, root=gc.COURSE)
    out = capsys.readouterr().out
    assert "Model answer" in out and "Rubric (2 points)" in out and "never negative" in out
    assert run_demo(jobs=2, root=gc.COURSE, timeout=TIMEOUT, keep=True) == 0
    out = capsys.readouterr().out
    table = {ln.split()[0]: ln.split()[1] for ln in out.splitlines()
             if ln.split() and ln.split()[0] in ("perfect", "partial", "blank")}
    assert table == {"perfect": "3/3", "partial": "0/3", "blank": "0/3"}
    assert "updated notebooks/" not in out   # the demo's copy is no repository folder
    where = {ln.split(": ", 1)[0].strip(): Path(ln.split(": ", 1)[1]) for ln in out.splitlines()
             if ln.startswith("  ") and ": /" in ln}
    assert where["grade table (one row per student and assignment)"].name == "grades.csv"
    assert where["a feedback page (open it in a browser)"].suffix == ".html"
    assert all(p.is_file() for p in where.values()), where   # --keep kept them
    import shutil

    kept = next(ln for ln in out.splitlines() if ln.startswith("kept the demo course in "))
    shutil.rmtree(kept.rsplit(" ", 1)[1])


def test_student_code_cannot_write_outside_its_job(tmp_path):
    """Root only: the kernel runs under an unprivileged uid of its own (in a read-only sandbox
    where it must): it cannot write outside its job, signal the grader's processes, or leave a
    process running after its job."""
    import os
    import subprocess

    from grading.isolation import isolation_mode

    if os.geteuid() != 0:
        pytest.skip("not root: isolation is the throw-away course copy only")
    out = tmp_path / "out"
    out.mkdir()
    mode, why = isolation_mode([course.GRADING_DIR, out], tmp_path)
    assert mode == "bwrap", why
    targets = [course.REPO_ROOT / "pwned.txt", out / "pwned.txt", tmp_path / "pwned.txt"]
    attack = ("import pathlib\nfor p in %r:\n    try:\n        pathlib.Path(p).write_text('x')\n"
              "    except OSError as e:\n        print('blocked', p, e)\n"
              "import os, subprocess\n"
              "for pid in (os.getppid(), 1):\n    try:\n        os.kill(pid, 0)\n"
              "        print('SIGNALLED', pid)\n    except OSError:\n        pass\n"
              "subprocess.Popen(['sleep', '4321'], start_new_session=True)\n"
              "def square(x):\n    return x * x") % [str(t) for t in targets]
    d = tmp_path / "subs" / "mallory" / A
    d.mkdir(parents=True)
    (d / f"{A}.ipynb").write_bytes(gc.dump(gc.with_answer(gc.perfect(), "square", attack)))
    autograde(tmp_path / "subs", out=out, jobs=1, timeout=TIMEOUT, root=gc.COURSE, progress=False)
    assert not any(t.exists() for t in targets)
    row = read_csv(out / "grades.csv")[0]
    assert row["auto_score"] == "0" and "file write" in row["review"]   # and flagged statically
    q = {r["cell_id"]: r for r in read_csv(out / "questions.csv")}
    assert "ran as 2/2" in q["test_square"]["message"]                  # the code did run
    nb = gc.load(out / "autograded" / "mallory" / A / f"{A}.ipynb")
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert printed.count("blocked") == 3 and "SIGNALLED" not in printed, printed
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "sleep 4321" not in ps                                        # killed with its job


def test_a_kernel_that_dies_before_any_cell_is_tried_again(tmp_path, monkeypatch):
    """A kernel that dies at start (e.g. it could not open its sockets) is the machine's fault,
    never the student's: the job runs once more; if that fails too, the notes say so and the next
    run grades the student again. The kernel talks over Unix sockets, not localhost ports."""
    import json

    import grading.autograde as ag  # the modules as imported now (other tests may purge grading.*),
    from grading import isolation

    real, failing, started = isolation.write_kernel_spec, set(), []

    def kernel_spec(job_dir, mode, uid, *rest):
        real(job_dir, mode, uid, *rest)
        started.append(job_dir)
        if len(started) in failing:
            spec = job_dir / "kernels" / "kernels" / isolation.KERNEL_NAME / "kernel.json"
            argv = [sys.executable, "-c", "raise SystemExit(3)", "{connection_file}"]
            spec.write_text(json.dumps({**json.loads(spec.read_text()), "argv": argv}))

    monkeypatch.setattr(isolation, "write_kernel_spec", kernel_spec)
    ipc_check = ("from ipykernel.kernelapp import IPKernelApp\n"
                 "assert IPKernelApp.instance().transport == 'ipc', IPKernelApp.instance().transport\n"
                 "def square(x):\n    return x * x")
    d = tmp_path / "subs" / "flaky" / A
    d.mkdir(parents=True)
    (d / f"{A}.ipynb").write_bytes(gc.dump(gc.with_answer(gc.perfect(), "square", ipc_check)))
    out = tmp_path / "out"

    def run() -> tuple:
        rep = ag.autograde(tmp_path / "subs", out=out, jobs=1, timeout=TIMEOUT, root=gc.COURSE,
                           progress=False)   # ... so the patched write_kernel_spec is the one it calls
        return rep, read_csv(out / "grades.csv")[0]

    failing.update({1, 2})                   # fails twice: reported, not held against the student
    rep, row = run()
    assert len(started) == 2 and row["auto_score"] == "0", row["notes"]
    assert "died before it ran any cell" in row["notes"] and "run autograde again" in row["notes"]
    assert len(rep.errors) == 1 and "died before it ran any cell" in rep.errors[0]  # the tool's error
    failing.clear()                           # the same submission again, without --force
    rep, row = run()
    assert len(started) == 3 and row["auto_score"] == "3" and rep.errors == [], row["notes"]
    failing.add(4)                            # fails once: the second try grades it
    ag.autograde(tmp_path / "subs", out=out, jobs=1, timeout=TIMEOUT, root=gc.COURSE,
                 progress=False, force=True)
    row = read_csv(out / "grades.csv")[0]
    assert len(started) == 5 and row["auto_score"] == "3" and row["notes"] == "", row["notes"]


def test_sandboxed_kernel_reads_course_data_in_a_closed_folder(tmp_path, monkeypatch):
    """The sandbox (root: an unprivileged uid in bubblewrap's allow-list): the job's uid still
    reads the course's data and checkpoints when they lie in a closed folder (here pytest's 0700
    temporary root), through the links in its home."""
    import os

    from grading.isolation import isolation_mode

    if os.geteuid() != 0:
        pytest.skip("not root")
    mode, why = isolation_mode([course.GRADING_DIR], tmp_path)
    assert mode == "bwrap", why
    data = tmp_path / "closed" / "data"
    data.mkdir(parents=True)
    os.chmod(tmp_path / "closed", 0o700)
    (data / "digits.txt").write_text("4")
    monkeypatch.setenv("DIFFUSION_DATA_DIR", str(data))
    answer = ("import os, pathlib\n"
              "n = int((pathlib.Path.home() / 'data' / 'digits.txt').read_text())\n"
              "assert n == 4 and os.getuid() != 0\n"
              "def square(x):\n    return x * x")
    d = tmp_path / "subs" / "reader" / A
    d.mkdir(parents=True)
    (d / f"{A}.ipynb").write_bytes(gc.dump(gc.with_answer(gc.perfect(), "square", answer)))
    autograde(tmp_path / "subs", out=tmp_path / "out", jobs=1, timeout=TIMEOUT, root=gc.COURSE,
              progress=False)
    row = read_csv(tmp_path / "out" / "grades.csv")[0]
    assert row["auto_score"] == "3", (row["notes"], row["review"])


def test_log_lines_are_never_glued_onto_the_progress_bar(tmp_path):
    """Every log line starts a line of its own, the bar drawn between them (tqdm's logging
    redirect), also when stderr is a file."""
    import re
    import subprocess

    for name in ("perfect", "blank", "empty_file"):
        gc.write_tree(tmp_path / "subs", [name])
    cmd = [sys.executable, "-m", "grading", "autograde", str(tmp_path / "subs"), "--jobs", "2",
           "--root", str(gc.COURSE), "--out", str(tmp_path / "out")]
    env = dict(course.grading_env(), PYTHONPATH=str(course.REPO_ROOT))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "%|" in res.stderr                          # the bar was drawn
    logged = 0
    for piece in re.split(r"[\r\n]", res.stderr):       # what each carriage return leaves
        piece = piece.strip()
        if "INFO grading" in piece or "WARNING grading" in piece:
            logged += 1
            assert re.match(r"^(INFO|WARNING) grading", piece), piece   # nothing glued before it
    assert logged >= 5

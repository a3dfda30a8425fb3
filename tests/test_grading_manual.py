"""TAs' grading of written answers without a browser: what autograde keeps of a submission
(``grading.submitted``), the gradebook side and the CSV round trip (``grading.manual``), the
page's server without a browser (``grading.manual_server``), and that a regrade keeps manual
scores. Every gradebook here is made with nbgrader's API in a fraction of a second; the real
autograde and the browser are in ``test_grading_manual_browser.py``."""
from __future__ import annotations

import base64
import csv
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from grading import cells, course, submitted
from grading.manual import Course, ManualGradeError, export_csv, import_csv

sys.path.insert(0, str(Path(__file__).resolve().parent))
import manual_support as ms  # noqa: E402

A, Q = ms.A, ms.QUESTION
SOURCE = course.read_json(ms.gc.SOLUTION)
RELEASE = course.read_json(ms.gc.RELEASE)


# -- what autograde keeps ----------------------------------------------------------------------

def md(cid, gid=None, written=False):
    meta = {"nbgrader": {"grade_id": gid, "solution": written, "grade": written, "locked": not written,
                         "points": 1}} if gid else {}
    return {"cell_type": "markdown", "id": cid, "source": cid, "metadata": meta}


def code(cid, gid=None, test=False, outputs=()):
    meta = {"nbgrader": {"grade_id": gid, "grade": test, "solution": not test, "points": 1}} if gid else {}
    return {"cell_type": "code", "id": cid, "source": cid, "metadata": meta, "outputs": list(outputs),
            "execution_count": None}


def test_default_cells_are_the_code_before_a_run_of_questions_back_to_a_test():
    nb = [code("setup"), code("f", "f"), code("test_f", "test_f", test=True), code("fig1"),
          md("text"), code("fig2"), md("q1_prompt", "q1_prompt"), md("q1", "q1", written=True),
          md("q2_prompt", "q2_prompt"), md("q2", "q2", written=True), code("fig3"),
          md("q3", "q3", written=True), md("q4", "q4", written=True)]
    ids = lambda i: [nb[k]["id"] for k in submitted.default_about(nb, i)]  # noqa: E731
    assert ids(7) == ["fig1", "fig2"]         # back to the test cell, markdown skipped
    assert ids(9) == ["fig1", "fig2"]         # a run of questions shares the cells before it
    assert ids(11) == ["fig3"] == ids(12)     # stops at the previous written answer
    assert ids(2) == ["setup", "f"]           # from the top of the notebook


def test_the_fixture_question_is_about_the_train_cell():
    e = submitted.extract(json.dumps(ms.student_notebook("my answer", "0.125")), SOURCE, RELEASE)
    q = e["questions"][Q]
    assert e["note"] == "" and q["answer"] == "my answer" and q["missing"] == []
    assert [c["id"] for c in q["cells"]] == ["train"]
    outs = q["cells"][0]["outputs"]
    assert outs[0] == {"type": "text", "text": "loss = 0.125\n"}
    assert outs[1] == {"type": "image", "mime": "image/png", "data": ms.PNG}
    assert outs[2] == {"type": "text", "text": "a table"}      # HTML: only its text/plain
    assert "script" not in json.dumps(e)


def test_explicit_cells_from_the_source_metadata_and_missing_ones_named():
    src = json.loads(json.dumps(SOURCE))
    cell = next(c for c in src["cells"] if c.get("id") == Q)
    cell["metadata"]["course"] = {"about": ["setup", "gone"]}
    nb = ms.student_notebook("a", "1")
    next(c for c in nb["cells"] if c["id"] == "setup")["outputs"] = [
        {"output_type": "stream", "name": "stdout", "text": "\x1b[31mfast mode: False\x1b[0m\n"}]
    q = submitted.extract(json.dumps(nb).encode(), src, RELEASE)["questions"][Q]
    assert [c["id"] for c in q["cells"]] == ["setup"] and q["missing"] == ["gone"]
    assert q["cells"][0]["outputs"] == [{"type": "text", "text": "fast mode: False\n"}]  # no ANSI


def test_lost_metadata_duplicates_and_unreadable_files():
    nb = ms.student_notebook("the last copy", "1")
    for c in nb["cells"]:
        c["metadata"].pop("nbgrader", None)     # VS Code: the cell id still says which cell it is
    first = json.loads(json.dumps(next(c for c in nb["cells"] if c["id"] == Q)))
    first["id"], first["source"] = "copy", "an earlier copy"
    first["metadata"]["nbgrader"] = {"grade_id": Q, "solution": True, "grade": True}
    nb["cells"].insert(3, first)
    q = submitted.extract(json.dumps(nb).encode(), SOURCE, RELEASE)["questions"][Q]
    assert q["answer"] == "the last copy"
    for raw, why in ((b"", "not valid JSON"), (b"[1]", "not a notebook"), (None, "missing"),
                     (b"\xff\xfe", "not UTF-8")):
        e = submitted.extract(raw, SOURCE, RELEASE)
        assert e["questions"] == {} and why in e["note"], (raw, e)


def test_only_inert_outputs_are_kept():
    svg = "<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"
    got = [submitted.safe_output(o) for o in [
        {"output_type": "display_data", "data": {"application/javascript": "alert(1)"}},
        {"output_type": "display_data", "data": {"image/png": "not base64 \" onerror=x"}},
        {"output_type": "display_data", "data": {"image/svg+xml": svg}},
        {"output_type": "error", "ename": "ValueError", "evalue": "boom", "traceback": ["..."]},
        {"output_type": "display_data", "data": {"image/png": "A" * (submitted.MAX_IMAGE_CHARS + 4)}},
        {"output_type": "stream", "text": "x" * (submitted.MAX_TEXT_CHARS + 10)}]]
    assert got[0] is None and got[1] is None
    assert got[2] == {"type": "image", "mime": "image/svg+xml",
                      "data": base64.b64encode(svg.encode()).decode()}   # an <img> runs no script
    assert got[3] == {"type": "error", "text": "ValueError: boom"}
    assert got[4]["type"] == "text" and "too large" in got[4]["text"]
    assert got[5]["text"].endswith("(10 more characters)")


def test_keep_submitted_writes_one_file_per_notebook(tmp_path):
    raw = json.dumps(ms.student_notebook("kept", "2")).encode()
    job = SimpleNamespace(sub=SimpleNamespace(student="ada", files={"renamed (1).ipynb": raw}),
                          tpl=SimpleNamespace(assignment=A, release={A: RELEASE}, source={A: SOURCE}))
    submitted.keep_submitted(job, tmp_path)   # a single renamed upload stands for the notebook
    kept = submitted.load_submitted(tmp_path, "ada", A, A)
    assert kept["questions"][Q]["answer"] == "kept"
    assert submitted.load_submitted(tmp_path, "bob", A, A) is None


# -- the gradebook and the CSV round trip -------------------------------------------------------

STUDENTS = {"ada": "An answer with $x^2 \\geq 0$.", "bob": "Because.", "cyd": None}


@pytest.fixture
def graded(tmp_path) -> Course:
    """A gradebook as autograde leaves it for the fixture assignment: ada's and bob's written
    answers await a grader, cyd left it blank (scored 0, no response); kept submissions beside."""
    from nbgrader.api import Gradebook

    course.ensure_path()
    out = tmp_path / "out"
    out.mkdir()
    db = f"sqlite:///{out / 'gradebook.db'}"
    with course.quiet_nbgrader(), Gradebook(db, "diffusion") as gb:
        gb.add_assignment(A)
        gb.add_notebook(A, A)
        for name, pts, kind in (("test_square", 2, "code"), ("test_add_one", 1, "code"), (Q, 2, "markdown")):
            gb.add_grade_cell(name, A, A, max_score=pts, cell_type=kind)
        for name in ("square", "add_one", Q):
            gb.add_solution_cell(name, A, A)
        for s, answer in STUDENTS.items():
            gb.add_student(s)
            gb.add_submission(A, s)
            g = gb.find_grade(Q, A, A, s)
            g.auto_score, g.needs_manual_grade = (None, True) if answer else (0.0, False)
            for t in ("test_square", "test_add_one"):
                t_grade = gb.find_grade(t, A, A, s)
                t_grade.auto_score, t_grade.needs_manual_grade = 1.0, False
        gb.db.commit()
    for s, answer in STUDENTS.items():
        nb = ms.student_notebook(answer, "0.5")
        job = SimpleNamespace(sub=SimpleNamespace(student=s, files={f"{A}.ipynb": json.dumps(nb).encode()}),
                              tpl=SimpleNamespace(assignment=A, release={A: RELEASE}, source={A: SOURCE}))
        submitted.keep_submitted(job, out)
    return Course.open(out, root=ms.gc.COURSE)


def grades(c: Course) -> dict:
    q = c.question(A, Q)
    return {a.student: (a.manual_score, a.manual_comment, a.needs_manual_grade) for a in c.answers(q)}


def write(tmp_path, rows, header="student,assignment,question,points,comment") -> Path:
    p = tmp_path / "in.csv"
    p.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return p


def test_questions_carry_the_model_answer_and_the_prompt(graded):
    (q,) = graded.questions()
    assert (q.assignment, q.notebook, q.id, q.max_points) == (A, A, Q, 2.0)
    assert "Why is $x^2$ never negative" in q.prompt
    assert "**Model answer.**" in q.model_answer and "**Rubric (2 points).**" in q.model_answer
    assert graded.progress() == {f"{A}/{A}/{Q}": (0, 3)}


def test_export_then_import_round_trip(graded, tmp_path):
    to = tmp_path / "w.csv"
    _, n = export_csv(graded, to)
    rows = list(csv.DictReader(to.open(encoding="utf-8")))
    assert n == 3 and [r["student"] for r in rows] == ["ada", "bob", "cyd"]
    assert rows[0]["answer"] == STUDENTS["ada"] and rows[0]["max_points"] == "2"
    assert rows[0]["status"] == "pending" and rows[2]["status"].startswith("auto 0")
    assert rows[2]["answer"] == cells.TEXT_STUB    # the release left as it was
    rows[0]["points"], rows[0]["comment"] = "2", "Both points, with the $0$ case."
    rows[1]["points"], rows[1]["comment"] = "0,5", "Only the sign argument, half stated."
    with to.open("w", newline="", encoding="utf-8") as fh:   # as a spreadsheet saves it: ; and BOM
        fh.write("\ufeff")
        w = csv.DictWriter(fh, list(rows[0]), delimiter=";")
        w.writeheader()
        w.writerows(rows)
    assert import_csv(graded, to) == 2                  # cyd's empty row changes nothing
    g = grades(graded)
    assert g["ada"] == (2.0, "Both points, with the $0$ case.", False)
    assert g["bob"] == (0.5, "Only the sign argument, half stated.", False)
    assert g["cyd"] == (None, "", False)
    _, n = export_csv(graded, to)                       # and back out again, unchanged by import
    again = {r["student"]: r for r in csv.DictReader(to.open(encoding="utf-8"))}
    assert again["bob"]["points"] == "0.5" and again["ada"]["status"] == "graded"
    assert import_csv(graded, to) == 2 and grades(graded) == g   # importing twice is harmless
    assert graded.progress() == {f"{A}/{A}/{Q}": (2, 3)}


def test_grades_reach_nbgrader_as_manual_score_and_comment(graded, tmp_path):
    from nbgrader.api import Gradebook

    import_csv(graded, write(tmp_path, [f"ada,{A},{Q},1.5,Close."]))
    with Gradebook(graded.db_url, "diffusion") as gb:
        g = gb.find_grade(Q, A, A, "ada")
        assert g.manual_score == 1.5 and g.score == 1.5 and not g.needs_manual_grade
        assert gb.find_comment(Q, A, A, "ada").manual_comment == "Close."
        sub = gb.find_submission(A, "ada")
        assert sub.score == pytest.approx(3.5) and sub.needs_manual_grade is False


BAD = {
    "unknown student": ([f"zed,{A},{Q},1,"], "line 2: unknown student 'zed'"),
    "unknown question": ([f"ada,{A},q_nope,1,"], "line 2: 'q_nope' is not a written question of 00_fixture"),
    "autograded cell": ([f"ada,{A},test_square,1,"], "line 2: 'test_square' is not a written question"),
    "unknown assignment": ([f"ada,99_nope,{Q},1,"], "line 2: unknown assignment '99_nope'"),
    "above the maximum": ([f"ada,{A},{Q},2.5,"], "line 2: 2.5 points is above the maximum of 2"),
    "negative": ([f"ada,{A},{Q},-1,"], "line 2: points -1 is negative"),
    "not a number": ([f"ada,{A},{Q},two,"], "line 2: points 'two' is not a number"),
    "not finite": ([f"ada,{A},{Q},nan,"], "line 2: points 'nan' is not a number"),
    "duplicated row": ([f"ada,{A},{Q},1,", f"bob,{A},{Q},1,", f"ada,{A},{Q},2,"],
                       "line 4: repeats line 2 (student ada"),
    "comment without points": ([f"ada,{A},{Q},,nice"], "line 2: a comment but no points"),
    "missing field": ([f",{A},{Q},1,"], "line 2: student, assignment and question must all be given"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rows_are_named_and_nothing_is_half_imported(graded, tmp_path, case):
    rows, message = BAD[case]
    # a good row first: it must not be written either
    path = write(tmp_path, [f"bob,{A},{Q},2,fine"] + [r.replace("line", "") for r in rows])
    before = grades(graded)
    with pytest.raises(ManualGradeError) as exc:
        import_csv(graded, path)
    shifted = message.replace("line 2", "line 3").replace("line 4", "line 5").replace(
        "repeats line 2", "repeats line 3")
    assert shifted in str(exc.value), str(exc.value)
    assert grades(graded) == before


def test_unusable_files_are_refused(graded, tmp_path):
    cases = {"no_columns.csv": (b"student,assignment\nada,x\n", "lacks the column(s) question, points, comment"),
             "latin1.csv": ("student,assignment,question,points,comment\nad\xe9,x,y,1,\n".encode("latin-1"),
                            "not UTF-8"),
             "empty.csv": (b"student,assignment,question,points,comment\n", "no rows"),
             "extra.csv": (f"student,assignment,question,points,comment\nada,{A},{Q},1,a,b\n".encode(),
                           "line 2 has more fields than the header")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ManualGradeError, match=re.escape(message)):
            import_csv(graded, tmp_path / name)
    with pytest.raises(ManualGradeError, match="no such file"):
        import_csv(graded, tmp_path / "absent.csv")


def test_every_error_is_listed_at_once(graded, tmp_path):
    path = write(tmp_path, [f"zed,{A},{Q},1,", f"ada,{A},{Q},9,", f"bob,{A},{Q},x,"])
    with pytest.raises(ManualGradeError) as exc:
        import_csv(graded, path)
    assert [e.split(":")[0] for e in exc.value.errors] == ["line 2", "line 3", "line 4"]


def test_a_failure_while_writing_rolls_everything_back(graded, monkeypatch):
    from nbgrader.api import Gradebook

    entries = graded.check([{"student": "ada", "assignment": A, "question": Q, "points": "2",
                             "comment": "x"},
                            {"student": "bob", "assignment": A, "question": Q, "points": "1",
                             "comment": "y"}])
    real = Gradebook.find_comment
    calls = []

    def failing(self, *args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(self, *args)

    monkeypatch.setattr(Gradebook, "find_comment", failing)
    before = grades(graded)
    with pytest.raises(RuntimeError, match="disk full"):
        graded.write(entries)
    monkeypatch.undo()
    assert grades(graded) == before


def test_a_regrade_keeps_manual_scores(graded, tmp_path):
    """What autograde writes for a written answer awaiting a grader (``results.write_gradebook``)
    leaves a TA's score, comment and "graded" state alone (the browser test regrades for real)."""
    from grading.results import GradeUpdate, write_gradebook

    import_csv(graded, write(tmp_path, [f"ada,{A},{Q},2,Good."]))
    job = SimpleNamespace(tpl=SimpleNamespace(assignment=A), sub=SimpleNamespace(student="ada"))
    write_gradebook(graded.db_url, job, {A: {Q: GradeUpdate(None, True, None),
                                             "test_square": GradeUpdate(0.0, False, "wrong now")}})
    assert grades(graded)["ada"] == (2.0, "Good.", False)
    bob = SimpleNamespace(tpl=SimpleNamespace(assignment=A), sub=SimpleNamespace(student="bob"))
    write_gradebook(graded.db_url, bob, {A: {Q: GradeUpdate(None, True, None)}})
    assert grades(graded)["bob"] == (None, "", True)   # not graded yet: still awaits a grader


def test_cli_import_says_what_is_wrong_and_exits_2(graded, tmp_path, capsys):
    from grading.cli import main

    path = write(tmp_path, [f"ada,{A},{Q},5,"])
    assert main(["manual", "--out", str(graded.out), "--root", str(ms.gc.COURSE), "import",
                 str(path)]) == 2
    err = capsys.readouterr().err
    assert "nothing imported" in err and "line 2: 5 points is above the maximum of 2" in err
    to = tmp_path / "o.csv"
    assert main(["manual", "export", str(to), "--out", str(graded.out), "--root",
                 str(ms.gc.COURSE)]) == 0
    assert to.read_text(encoding="utf-8").startswith("student,assignment,notebook,question")
    assert main(["manual", "--out", str(tmp_path / "none")]) == 2
    assert "no gradebook" in capsys.readouterr().err


# -- the page's server, without a browser -------------------------------------------------------

@pytest.fixture
def server(graded):
    """The grading page's app on a free loopback port, served from a thread."""
    import asyncio
    import threading

    from grading.manual_server import start

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box = {}

    def run():
        asyncio.set_event_loop(loop)

        async def go():
            box["server"], box["url"] = start(graded)
            ready.set()

        loop.run_until_complete(go())
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(20)
    yield box["url"], graded
    loop.call_soon_threadsafe(box["server"].stop)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


def http(url, data=None, headers=None):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers


def test_the_server_needs_its_token_and_its_host(server):
    url, _ = server
    base, token = url.split("/?token=")
    page = f"{base}/q/{A}/{A}/{Q}"
    assert http(page)[0] == 403                                   # no token
    assert http(f"{page}?token=wrong")[0] == 403
    status, body, headers = http(page, headers={"Cookie": f"grading_manual_token={token}"})
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert http(page, headers={"Cookie": f"grading_manual_token={token}",
                               "Host": "evil.example:80"})[0] == 403   # DNS rebinding
    save = json.dumps({"student": "ada", "assignment": A, "notebook": A, "question": Q,
                       "points": "1", "comment": ""}).encode()
    cookie = {"Cookie": f"grading_manual_token={token}", "Content-Type": "application/json"}
    assert http(f"{base}/api/grade", save, cookie)[0] == 403       # a cookie alone is not enough
    assert base.startswith("http://127.0.0.1:")


def test_the_page_shows_answers_outputs_and_rubric_escaped(server):
    url, _ = server
    base, token = url.split("/?token=")
    status, body, _ = http(f"{base}/q/{A}/{A}/{Q}", headers={"Cookie": f"grading_manual_token={token}"})
    assert status == 200
    assert "Model answer." in body and "Rubric (2 points)." in body and "Why is" in body
    assert body.count('class="card') == 3 and "loss = 0.5" in body
    assert f"data:image/png;base64,{ms.PNG}" in body
    assert "<script>window.pwned" not in body and "&lt;script&gt;" not in body   # HTML output: text only
    assert '<span class="math">' in body


def test_a_save_through_the_api_is_checked_and_written(server):
    url, c = server
    base, token = url.split("/?token=")
    hdr = {"X-Grading-Token": token, "Cookie": f"grading_manual_token={token}",
           "Content-Type": "application/json"}
    row = {"student": "bob", "assignment": A, "notebook": A, "question": Q, "points": "3",
           "comment": ""}
    status, body, _ = http(f"{base}/api/grade", json.dumps(row).encode(), hdr)
    assert status == 400 and "above the maximum of 2" in json.loads(body)["error"]
    row.update(points="1", comment="half")
    status, body, _ = http(f"{base}/api/grade", json.dumps(row).encode(), hdr)
    assert status == 200 and json.loads(body) == {"ok": True, "written": 1, "status": "graded",
                                                   "points": "1", "graded": 1, "total": 3}
    assert grades(c)["bob"] == (1.0, "half", False)


def test_point_buttons():
    from grading.manual_server import point_steps

    assert point_steps(2) == [0, 1, 2] and point_steps(1) == [0, 0.5, 1] and point_steps(3) == [0, 1, 2, 3]


def test_listed_cells_of_the_course_notebooks_exist_in_their_release():
    """A written answer's ``metadata.course.about`` names code cells that students have."""
    listed = 0
    for a in course.list_assignments():
        for path in course.assignment_notebooks(course.REPO_ROOT, a):
            rel = course.read_json(course.REPO_ROOT / course.RELEASE_DIR / a / path.name)
            code_ids = {c["id"] for c in rel["cells"] if c["cell_type"] == "code"}
            for qid, ids in submitted.about_ids(course.read_json(path)).items():
                assert set(ids) <= code_ids, (a, qid, set(ids) - code_ids)
                listed += 1
    assert listed >= 1   # 03_sampling's q_all_steps looks back to 5.1 and ahead to section 8


def test_an_answer_that_looks_like_a_formula_stays_text_in_the_csv(graded, tmp_path):
    from grading.manual import inert

    assert inert("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert inert("@SUM(A1)") == "'@SUM(A1)" and inert("-1 + 2") == "'-1 + 2"
    assert inert("Because.") == "Because."
    kept = submitted.path_for(graded.out, "bob", A, A)
    data = json.loads(kept.read_text())
    data["questions"][Q]["answer"] = "=cmd|'/c calc'!A0"
    kept.write_text(json.dumps(data))
    text, _ = export_csv(graded)
    bob = next(r for r in csv.DictReader(text.splitlines()) if r["student"] == "bob")
    assert bob["answer"] == "'=cmd|'/c calc'!A0"

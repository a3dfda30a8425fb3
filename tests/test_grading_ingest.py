"""Ingestion refuses what it cannot attribute: links are skipped with a note, and two names that
map to one student id stop the run before anything is graded."""
from __future__ import annotations

import pytest

from grading.collect import IngestError, collect

KNOWN = ["01_forward_process"]


def _nb(path, text="{}"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_linked_notebook_is_skipped_with_a_note(tmp_path):
    secret = tmp_path / "solutions" / "01_forward_process.ipynb"
    _nb(secret, '{"solution": true}')
    subs = tmp_path / "subs"
    _nb(subs / "alice" / "01_forward_process" / "01_forward_process.ipynb")
    (subs / "bob" / "01_forward_process").mkdir(parents=True)
    (subs / "bob" / "01_forward_process" / "01_forward_process.ipynb").symlink_to(secret)
    (subs / "carol").symlink_to(subs / "alice", target_is_directory=True)  # a linked folder too
    skipped = []
    found = {s.student: s for s in collect(subs, KNOWN, skipped=skipped)}
    assert found["alice"].files
    assert found["bob"].files == {}
    assert any("symbolic link" in p for p in found["bob"].problems)
    assert "carol" not in found and any(n.startswith("carol") and "symbolic link" in n for n in skipped)


def test_two_names_for_one_id_stop_the_run(tmp_path):
    subs = tmp_path / "subs"
    _nb(subs / "alice smith" / "01_forward_process" / "01_forward_process.ipynb")
    _nb(subs / "alice_smith" / "01_forward_process" / "01_forward_process.ipynb")
    with pytest.raises(IngestError, match="'alice smith'.*'alice_smith'"):
        collect(subs, KNOWN)


def test_autograde_grades_nothing_when_two_names_share_an_id(tmp_path):
    from grading import course
    from grading.autograde import autograde

    a = course.list_assignments(course.REPO_ROOT)[0]
    subs = tmp_path / "subs"
    _nb(subs / "Bob Lee" / a / f"{a}.ipynb")
    _nb(subs / "Bob_Lee" / a / f"{a}.ipynb")
    with pytest.raises(IngestError, match="Bob_Lee"):
        autograde(subs, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "grades.csv").exists()


def test_outputs_do_not_count_towards_the_size_limit():
    import json

    from grading import course
    from grading.sanitize import sanitize

    a = course.list_assignments(course.REPO_ROOT)[0]
    release = course.read_json(course.REPO_ROOT / course.RELEASE_DIR / a / f"{a}.ipynb")
    nb = json.loads(json.dumps(release))
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "display_data", "metadata": {},
                        "data": {"image/png": "A" * 50_000_000}}]   # a 50 MB figure
    s = sanitize(json.dumps(nb).encode(), release)
    assert s.nb is not None, s.zero_reason
    code["outputs"] = []
    code["source"] = "x = 1\n" * 5_000_000                          # 30 MB of code
    s = sanitize(json.dumps(nb).encode(), release)
    assert s.nb is None and "too large" in s.zero_reason


def test_every_file_is_graded_or_listed_with_its_reason(tmp_path):
    """As a new instructor's folder looks: a PDF beside a notebook, a misspelled assignment folder,
    an empty folder, a PDF inside an LMS zip, a notebook no student can be told for."""
    import zipfile

    from grading.collect import Skipped

    subs = tmp_path / "subs"
    _nb(subs / "alice" / "01_forward_process" / "01_forward_process.ipynb")
    _nb(subs / "alice" / "01_forward_process" / "report.pdf", "%PDF")
    _nb(subs / "bob" / "01_forward" / "01_forward_process.ipynb")
    (subs / "carol").mkdir()
    (subs / "dan" / "01_forwrd_process").mkdir(parents=True)
    _nb(subs / "orphan.ipynb")
    with zipfile.ZipFile(subs / "canvas.zip", "w") as zf:
        zf.writestr("doejane_LATE_12345_67890_01_forward_process.ipynb", "{}")
        zf.writestr("doejane_LATE_12345_67891_notes.pdf", "%PDF")
    skipped = []
    found = {s.student: s for s in collect(subs, KNOWN, skipped=skipped)}
    assert set(found) == {"alice", "12345"}
    why = {s.path: s.reason for s in skipped}
    assert all(isinstance(s, Skipped) for s in skipped)
    assert why["alice/01_forward_process/report.pdf"].startswith("not a notebook (.pdf file)")
    assert why["bob/01_forward/01_forward_process.ipynb"] == (
        "folder '01_forward' is not an assignment of this course (did you mean 01_forward_process?)")
    assert why["carol/"] == "an empty folder"
    assert "did you mean 01_forward_process?" in why["dan/01_forwrd_process/"]
    assert why["canvas.zip:doejane_LATE_12345_67891_notes.pdf"].startswith("not a notebook (.pdf")
    assert why["orphan.ipynb"].startswith("cannot tell whose notebook it is")
    assert len(skipped) == 6


def test_lms_identity_and_canvas_late_marks_are_kept(tmp_path):
    subs = tmp_path / "subs"
    _nb(subs / "doejane_LATE_12345_67890_01_forward_process.ipynb")
    _nb(subs / "roejohn_222_333_01_forward_process.ipynb")
    _nb(subs / "Jane Roe_555_assignsubmission_file_01_forward_process.ipynb")
    _nb(subs / "777-888 - Ann Lee - Mar 3, 2025 1015 AM - 01_forward_process.ipynb")
    found = {s.student: s.lms for s in collect(subs, KNOWN)}
    assert found == {
        "12345": {"lms": "canvas", "id": "12345", "name": "doejane", "late": True},
        "222": {"lms": "canvas", "id": "222", "name": "roejohn", "late": False},
        "555": {"lms": "moodle", "id": "555", "name": "Jane Roe", "late": False},
        "777-888": {"lms": "brightspace", "id": "777-888", "name": "Ann Lee", "late": False}}


def test_an_empty_submissions_folder_is_an_error(tmp_path, caplog):
    from grading.cli import main

    (tmp_path / "subs" / "alice").mkdir(parents=True)   # folders, but not one file
    assert main(["autograde", str(tmp_path / "subs"), "--out", str(tmp_path / "out")]) == 2
    assert "holds no file" in caplog.text
    caplog.clear()
    assert not (tmp_path / "out" / "grades.csv").exists()
    _nb(tmp_path / "subs" / "alice" / "notes.pdf", "%PDF")   # files, but no notebook
    assert main(["autograde", str(tmp_path / "subs"), "--out", str(tmp_path / "out")]) == 2
    assert "no submission found" in caplog.text and "unmatched.csv" in caplog.text
    assert "alice/notes.pdf" in (tmp_path / "out" / "unmatched.csv").read_text()

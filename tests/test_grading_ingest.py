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

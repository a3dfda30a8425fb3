"""Sanitizer, tamper scan and submission collection (no kernels: fast)."""
from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

from grading import course, release
from grading.collect import collect, parse_lms_name
from grading.sanitize import sanitize
from grading.tamper import scan_notebook, scan_source

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import grading_cases as gc  # noqa: E402

REL = gc.load(gc.RELEASE)


def grade_ids(nb):
    return [gc.gid(c) for c in nb["cells"] if gc.gid(c)]


# ----------------------------------------------------------------------------- sanitize
@pytest.mark.parametrize("raw, reason", [
    (b"", "empty file"), (b"   \n", "empty file"), (b'{"cells": [', "not valid JSON"),
    (b'{"a": 1}', "not a notebook"), (b"\xff\xfe\x00", "not a notebook"), (None, "missing notebook"),
])
def test_unreadable_submissions_score_zero_with_reason(raw, reason):
    s = sanitize(raw, REL)
    assert s.nb is None and reason in s.zero_reason


def test_notebook_of_another_assignment_is_rejected():
    data, _, _ = gc.cases()["other_assignment"]
    s = sanitize(data, REL)
    assert s.nb is None and "wrong notebook" in s.zero_reason


def test_duplicate_grade_id_keeps_last_copy():
    data, _, _ = gc.cases()["duplicated_cell"]
    s = sanitize(data, REL)
    squares = [c for c in s.nb["cells"] if "def square" in gc.src(c)]
    assert len(squares) == 2
    assert "nbgrader" not in squares[0]["metadata"]          # the earlier (wrong) copy
    assert gc.gid(squares[1]) == "square" and "return x * x" in gc.src(squares[1])
    assert grade_ids(s.nb).count("square") == 1
    assert any("duplicate cell square" in n for n in s.notes)


def test_skip_execution_tag_is_removed():
    data, _, _ = gc.cases()["skip_execution"]
    s = sanitize(data, REL)
    assert all("skip-execution" not in c["metadata"].get("tags", []) for c in s.nb["cells"])


@pytest.mark.parametrize("case", ["jupyterlab4", "vscode", "colab"])
def test_front_end_metadata_is_normalised(case):
    import nbformat

    data, _, _ = gc.cases()[case]
    s = sanitize(data, REL)
    assert s.nb is not None
    assert sorted(grade_ids(s.nb)) == sorted(grade_ids(REL))   # VS Code: restored from release
    for c in s.nb["cells"]:
        assert not set(c["metadata"]) & {"execution", "vscode", "colab", "id", "jupyter"}
        assert c.get("outputs", []) == []
    assert len({c["id"] for c in s.nb["cells"]}) == len(s.nb["cells"])
    nbformat.validate(nbformat.from_dict(s.nb))


def test_graded_metadata_comes_from_the_release():
    nb = gc.perfect()
    gc.find(nb, "test_square")["metadata"]["nbgrader"]["points"] = 100
    gc.find(nb, "square")["metadata"]["nbgrader"].update(grade=True, points=50)
    s = sanitize(gc.dump(nb), REL)
    assert gc.find(s.nb, "test_square")["metadata"]["nbgrader"] == \
        gc.find(REL, "test_square")["metadata"]["nbgrader"]
    assert gc.find(s.nb, "square")["metadata"]["nbgrader"]["grade"] is False
    assert "points" not in gc.find(s.nb, "square")["metadata"]["nbgrader"]


def test_perfect_submission_passes_unchanged_in_substance():
    s = sanitize(gc.dump(gc.perfect()), REL)
    assert s.notes == [] and grade_ids(s.nb) == grade_ids(REL)


# ----------------------------------------------------------------------------- tamper
EXPLOITS = {
    "grading": "import grading.hidden as h\nh.run = lambda *a: None",
    "sys.modules": "import sys\nsys.modules['grading.hidden'] = object()",
    "importlib": "import importlib\nimportlib.reload(np)",
    "builtins": "import builtins\nbuiltins.AssertionError = Exception",
    "__builtins__": "__builtins__.len = lambda x: 3",
    "get_ipython": "get_ipython().events.register('post_run_cell', f)",
    "input_transformers": "ip.input_transformers_cleanup.append(lambda lines: [])",
    "ctypes": "import ctypes",
    "gc.": "import gc\n[o for o in gc.get_objects()]",
    "inspect.currentframe": "import inspect\ninspect.currentframe().f_back.f_globals['x'] = 1",
    "sys._getframe": "import sys\nsys._getframe(1).f_globals.clear()",
    "setattr module": "import torch\nsetattr(torch, 'allclose', lambda *a, **k: True)",
    "setattr type": "setattr(type(x), '__eq__', lambda *a: True)",
    "torch monkeypatch": "torch.allclose = lambda *a, **k: True",
    "np monkeypatch": "np.testing.assert_allclose = print",
    "math monkeypatch": "math.isclose = lambda *a, **k: True",
    "helpers monkeypatch": "helpers.config.FAST = False",
    "__eq__": "class Any:\n    def __eq__(self, other):\n        return True",
    "__torch_function__": "class T(torch.Tensor):\n    @classmethod\n    def __torch_function__(cls, f, t, a=(), k=None):\n        return True",
    "exec": "exec('x = 1')", "eval": "y = eval('1 + 1')", "compile": "c = compile('1', 'f', 'eval')",
    "__import__": "os_ = __import__('os')",
    "os.system": "import os\nos.system('rm -rf /')", "subprocess": "import subprocess\nsubprocess.run(['ls'])",
    "open w": "open('/tmp/x', 'w').write('1')", "open kw": "open('/tmp/x', mode='a')",
    "shell": "!cat /etc/passwd", "torch.save": "torch.save(model, '/work/main/grading/x.pt')",
}


@pytest.mark.parametrize("name", sorted(EXPLOITS))
def test_each_exploit_is_flagged(name):
    assert scan_source("square", EXPLOITS[name]), name


@pytest.mark.parametrize("name", sorted(EXPLOITS))
def test_exploit_in_an_added_cell_is_flagged_in_the_notebook(name):
    nb = gc.perfect()
    nb["cells"].insert(3, {"cell_type": "code", "id": "added", "metadata": {}, "outputs": [],
                           "execution_count": None, "source": EXPLOITS[name]})
    flags = scan_notebook(nb, REL)
    assert flags and flags[0].cell == "cell 3"


def test_clean_code_is_not_flagged():
    clean = ("import numpy as np\nimport torch\n\ndef q_sample(x_0, t, alpha_bar, noise):\n"
             "    a = alpha_bar[t].sqrt().view(-1, 1, 1, 1)  # (B, 1, 1, 1)\n"
             "    out = a * x_0 + (1 - alpha_bar[t]).sqrt().view(-1, 1, 1, 1) * noise\n"
             "    with open('notes.txt') as fh:\n        pass\n"
             "    setattr(out, 'note', 1)\n"
             "    return torch.where(torch.isfinite(out), out, x_0)\n")
    assert scan_source("q_sample", clean) == []
    assert scan_notebook(gc.perfect(), REL) == []
    assert scan_notebook(gc.load(gc.SOLUTION), REL) == []


def test_edited_locked_cells_are_not_scanned_but_edited_given_code_is():
    nb = gc.perfect()
    gc.find(nb, "test_square")["source"] = "import ctypes"   # restored from the gradebook anyway
    assert scan_notebook(nb, REL) == []
    nb["cells"][1]["source"] = "import subprocess"            # the unlocked setup cell
    assert [f.pattern for f in scan_notebook(nb, REL)] == ["subprocess"]


@pytest.mark.parametrize("assignment", course.list_assignments() or [
    pytest.param(None, marks=pytest.mark.skip(reason="no solutions/ notebooks yet"))])
def test_real_solutions_are_not_flagged(assignment):
    sol = json.loads((course.REPO_ROOT / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    rel = json.loads(release.build_release(assignment)[f"{assignment}.ipynb"])
    assert scan_notebook(sol, rel) == []


# ----------------------------------------------------------------------------- collect
LMS = {
    "12345-67890 - Jane Doe - Mar 3, 2025 1015 AM - 00_fixture.ipynb": "12345-67890",
    "doejane_12345_67890_00_fixture.ipynb": "12345",
    "doejane_LATE_22222_67890_00_fixture.ipynb": "22222",
    "Jane Doe_33333_assignsubmission_file_00_fixture.ipynb": "33333",
}


@pytest.mark.parametrize("name, sid", sorted(LMS.items()))
def test_lms_file_names(name, sid):
    assert parse_lms_name(name) == (sid, "00_fixture.ipynb")


def test_collect_zip_of_lms_files_and_tree(tmp_path):
    z = tmp_path / "download.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for name in LMS:
            zf.writestr(name, gc.dump(gc.blank()))
        zf.writestr("../evil.ipynb", b"{}")
        zf.writestr("readme.txt", b"x")
    subs = collect(z, ["00_fixture"])
    assert sorted(s.student for s in subs) == sorted(LMS.values())
    assert all(s.assignment == "00_fixture" and list(s.files) == ["00_fixture.ipynb"] for s in subs)
    gc.write_tree(tmp_path / "tree", ["perfect", "missing_notebook"])
    subs = {s.student: s for s in collect(tmp_path / "tree", ["00_fixture"])}
    assert set(subs) == {"perfect", "missing_notebook"} and subs["missing_notebook"].files == {}


def test_collect_moodle_folders_and_foreign_notebooks(tmp_path):
    d = tmp_path / "Jane Doe_33333_assignsubmission_file_"
    d.mkdir()
    (d / "00_fixture.ipynb").write_bytes(gc.dump(gc.blank()))
    (tmp_path / "doejane_12345_67890_99_other.ipynb").write_bytes(gc.dump(gc.blank()))
    subs = {s.student: s for s in collect(tmp_path, ["00_fixture", "99_other"], assignment="00_fixture")}
    assert subs["33333"].files.keys() == {"00_fixture.ipynb"}
    assert subs["12345"].assignment == "00_fixture"          # graded (to 0) against 00_fixture
    assert "not a notebook of 00_fixture" in subs["12345"].problems[0]


def test_collect_with_assignment_for_unnamed_files(tmp_path):
    (tmp_path / "doejane_12345_67890_homework.ipynb").write_bytes(gc.dump(gc.blank()))
    assert collect(tmp_path, ["00_fixture"])[0].assignment is None
    sub = collect(tmp_path, ["00_fixture"], assignment="00_fixture")[0]
    assert (sub.student, sub.assignment) == ("12345", "00_fixture")

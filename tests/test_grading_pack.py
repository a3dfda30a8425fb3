"""``python -m grading pack``: the students' folder holds their materials and nothing of ours.

Fast tests build the pack and search the text of every file in it for solutions, hidden tests,
model answers, rubrics, the grading package and the source of its reference implementations
and checks; they also run ``check.py``'s file checks. The slow tests run ``check.py`` on a
notebook, and make a fresh venv from the pack's own ``requirements.txt`` (no nbgrader in it) in
which a released notebook runs to its first unanswered test.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from grading import course
from grading.pack import (INSTRUCTOR_PACKAGES, TOP_FILES, PackError, build_pack,
                          requirement_names)

ROOT = course.REPO_ROOT
A = "01_forward_process"
NB = f"notebooks/{A}/{A}.ipynb"
#: Markers of instructor material: nbgrader's delimiters, the written answers' key, the hidden
#: checks' entry point, and the grading package as code.
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS",
           "HIDDEN TESTS", "Model answer", "Rubric", "MARK SCHEME", "_hidden.run", "CHECKS = {",
           "grading.hidden", "grading.reference", "grading.checks", "import grading",
           "from grading", "grading/", "CheckFailed", "match_variants", "swapped_in")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return build_pack(tmp_path_factory.mktemp("pack") / "student-pack")


def file_text(path: Path) -> str:
    """A file's text; a notebook's cell sources and outputs one per line (JSON unescaped)."""
    raw = path.read_bytes().decode("utf-8")
    if path.suffix != ".ipynb":
        return raw
    nb = json.loads(raw)
    parts = [json.dumps(nb.get("metadata", {}))]
    for c in nb["cells"]:
        parts.append("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
        parts.append(json.dumps(c.get("outputs", [])))
        parts.append(json.dumps(c.get("metadata", {})))
    return "\n".join(parts)


def normal(text: str) -> str:
    """Whitespace-insensitive form: stripped lines, blank lines dropped."""
    return "\n".join(ln.strip() for ln in text.splitlines() if ln.strip())


def function_bodies(path: Path) -> dict[str, str]:
    """``{function name: normalised body source}`` of each function of a module, no docstring."""
    src = path.read_text()
    out = {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                body = body[1:]
            if body:
                text = normal("\n".join(ast.get_source_segment(src, b) or "" for b in body))
                if len(text) >= 50 and text.count("\n") >= 1:  # one-liners are everyone's code
                    out[node.name] = text
    return out


def solution_regions(path: Path) -> list[str]:
    """The text between nbgrader's solution and hidden-test delimiters of a source notebook."""
    regions = []
    for c in json.loads(path.read_text())["cells"]:
        src = "".join(c["source"])
        for m in re.finditer(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n(.*?)### END \1", src, re.S):
            if len(normal(m.group(2))) >= 20:
                regions.append(normal(m.group(2)))
    return regions


def assignment_module(assignment: str) -> str:
    return assignment.split("_", 1)[1]


# -- contents --------------------------------------------------------------------------------
def test_pack_holds_the_student_materials_and_nothing_else(pack):
    assignments = course.list_assignments(ROOT, course.RELEASE_DIR)
    assert len(assignments) == 6
    want = set(TOP_FILES)
    want |= {f"helpers/{p.name}" for p in (ROOT / "helpers").glob("*.py")}
    want |= {f"notebooks/{a}/{a}.ipynb" for a in assignments}
    have = {p.relative_to(pack.folder).as_posix() for p in pack.folder.rglob("*") if p.is_file()}
    assert have == want == set(pack.files)
    for a in assignments:  # byte for byte what the release wrote
        rel = f"notebooks/{a}/{a}.ipynb"
        assert (pack.folder / rel).read_bytes() == (ROOT / rel).read_bytes()
    assert 100_000 < pack.size < 2_000_000, pack.size


def test_no_file_holds_instructor_material(pack):
    texts = {p.relative_to(pack.folder).as_posix(): file_text(p)
             for p in pack.folder.rglob("*") if p.is_file()}
    for rel, text in texts.items():
        found = [m for m in MARKERS if m in text]
        assert not found, f"{rel} contains {found}"
    norm = {rel: normal(t) for rel, t in texts.items()}
    checked = 0
    # hidden checks: none of their code anywhere
    for f in sorted((ROOT / "grading" / "checks").glob("*.py")) + [ROOT / "grading" / "hidden.py"]:
        for name, body in function_bodies(f).items():
            for rel, text in norm.items():
                assert body not in text, f"{rel} holds the code of {f.name}:{name}"
                assert not re.search(rf"\bdef {re.escape(name)}\(", text) or not name.startswith(
                    "check_"), f"{rel} defines {name}"
            checked += 1
    # reference implementations and the solutions: not in their own notebook, nor in helpers,
    # README, requirements or check.py (a later notebook may give an earlier answer, read-only)
    for a in course.list_assignments(ROOT):
        mine = {rel: t for rel, t in norm.items()
                if rel.startswith(f"notebooks/{a}/") or not rel.startswith("notebooks/")}
        ref = ROOT / "grading" / "reference" / f"{assignment_module(a)}.py"
        needles = list(function_bodies(ref).items()) + [
            (f"solution region {i}", r) for i, r in
            enumerate(solution_regions(ROOT / "solutions" / a / f"{a}.ipynb"))]
        assert len(needles) > 5, a
        for name, body in needles:
            for rel, text in mine.items():
                assert body not in text, f"{rel} holds {a}'s {name}:\n{body[:300]}"
            checked += 1
    assert checked > 100


def test_requirements_are_the_students_own(pack):
    text = (pack.folder / "requirements.txt").read_text()
    names = requirement_names(text)
    assert not set(names) & set(INSTRUCTOR_PACKAGES), names
    assert "torch==2.14.1" in text.splitlines() and "torchvision==0.29.1" in text.splitlines()
    assert "jupyterlab" in names and "-e ." in text.splitlines()
    # every third-party module that helpers, the notebooks and check.py import is required
    imported = set()
    for p in list((pack.folder / "helpers").glob("*.py")) + [pack.folder / "check.py"]:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    for p in (pack.folder / "notebooks").rglob("*.ipynb"):
        for c in json.loads(p.read_text())["cells"]:
            if c["cell_type"] == "code":
                imported |= set(re.findall(r"^\s*(?:from|import)\s+(\w+)", "".join(c["source"]),
                                           re.M))
    dist = {"IPython": "ipykernel", "PIL": "pillow"}
    third_party = {dist.get(m, m).lower() for m in imported
                   if m not in sys.stdlib_module_names and m != "helpers"}
    assert third_party - {"pillow"} <= set(names), third_party - set(names)
    assert "pillow" not in third_party or "torchvision" in names   # torchvision brings it
    # pyproject installs helpers, and nothing of the instructors'
    py = (pack.folder / "pyproject.toml").read_text()
    assert 'include = ["helpers*"]' in py and "grading" not in py


def test_readme_sets_up_and_opens_jupyterlab_in_two_commands(pack):
    text = (pack.folder / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert first == ["python3 -m venv .venv && .venv/bin/pip install -r requirements.txt",
                     ".venv/bin/jupyter lab notebooks/"]
    assert "--index-url https://download.pytorch.org/whl/cpu" in text   # no GPU: CPU wheels
    assert "--allow-root" in text and "check.py" in text
    assert "nbgrader" not in text


def test_check_script_needs_only_jupyter_and_grades_like_the_course(pack):
    src = (pack.folder / "check.py").read_text()
    mods = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            mods.add(node.module.split(".")[0])
    assert mods - set(sys.stdlib_module_names) == {"nbformat", "nbclient"}, mods
    ns: dict = {}
    exec(compile(src, "check.py", "exec"), ns)  # noqa: S102 - our own file
    cfg = course.load_config(ROOT)
    assert ns["WARNING_PATTERN"] == cfg.IgnorePattern.pattern   # the same stderr rule as grading
    assert ns["SKIP_TAG"] == "slow"


@pytest.mark.parametrize("name, content, message", [
    ("README.md", None, "not a notebook: {p} (expected a .ipynb file saved by Jupyter)"),
    ("missing.ipynb", None, "no such file: {p}"),
    ("broken.ipynb", b'{"cells": [', "not a notebook: {p} (not JSON: "),
    ("other.ipynb", b'{"a": 1}', "not a notebook: {p} (JSON, but without a notebook's cells"),
])
def test_check_script_says_in_one_line_when_a_file_is_not_a_notebook(pack, tmp_path, name,
                                                                       content, message):
    p = pack.folder / name if name == "README.md" else tmp_path / name
    if content is not None:
        p.write_bytes(content)
    res = subprocess.run([sys.executable, str(pack.folder / "check.py"), str(p)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith(message.format(p=p)), \
        res.stderr


# -- refusals --------------------------------------------------------------------------------
def _fake_repo(tmp: Path) -> Path:
    root = tmp / "repo"
    for folder in ("helpers", "notebooks"):
        for f in (ROOT / folder).rglob("*"):
            rel = f.relative_to(ROOT)
            if f.is_file() and "__pycache__" not in rel.parts and ".ipynb_checkpoints" not in \
                    rel.parts:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(f.read_bytes())
    return root


@pytest.mark.parametrize("where, leak", [
    ("nb_markdown", "### BEGIN SOLUTION\nthe answer\n### END SOLUTION"),
    ("nb_markdown", "**Model answer.** beta grows"),
    ("nb_code", "import grading.hidden as _hidden"),
    ("helpers", "from grading.reference import forward_process"),
    ("nb_output", "run"),
])
def test_a_leak_or_an_executed_notebook_stops_the_pack(tmp_path, where, leak):
    root = _fake_repo(tmp_path)
    nb_path = root / NB
    if where == "helpers":
        with open(root / "helpers" / "plotting.py", "a") as fh:
            fh.write(f"\n{leak}\n")
    else:
        nb = json.loads(nb_path.read_text())
        if where == "nb_output":  # a notebook someone ran in place
            cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]
            cell["execution_count"] = 1
        else:
            kind = "markdown" if where == "nb_markdown" else "code"
            cell = next(c for c in nb["cells"] if c["cell_type"] == kind)
            cell["source"] = cell["source"] + ["\n", leak]
        nb_path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    out = tmp_path / "out"
    with pytest.raises(PackError) as err:
        build_pack(out, root=root)
    assert ("plotting.py" if where == "helpers" else f"{A}.ipynb") in str(err.value)
    assert not out.exists()


def test_out_must_be_a_pack_and_a_repack_keeps_the_students_venv(tmp_path):
    other = tmp_path / "mine"
    (other / "thesis").mkdir(parents=True)
    with pytest.raises(PackError, match="not a student pack"):
        build_pack(other)
    assert (other / "thesis").is_dir()
    p = build_pack(tmp_path / "pack")
    (p.folder / ".venv").mkdir()
    (p.folder / ".venv" / "marker").write_text("x")
    (p.folder / "helpers" / "stale.py").write_text("old")
    build_pack(tmp_path / "pack")
    assert (p.folder / ".venv" / "marker").read_text() == "x"
    assert not (p.folder / "helpers" / "stale.py").exists()


def test_cli_writes_a_reproducible_zip(tmp_path):
    out = tmp_path / "student-pack"
    cmd = [sys.executable, "-m", "grading", "pack", "--out", str(out), "--zip"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    n_files = len(TOP_FILES) + len(list((ROOT / "helpers").glob("*.py"))) + 6
    assert f"{out}: {n_files} files (6 notebooks)" in res.stdout and f"{out}.zip: " in res.stdout
    first = (tmp_path / "student-pack.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "student-pack.zip") as zf:
        names = zf.namelist()
        assert names == sorted(names) and all(n.startswith("student-pack/") for n in names)
        files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        assert {n.removeprefix("student-pack/") for n in names} == files
        assert zf.read(f"student-pack/{NB}") == (ROOT / NB).read_bytes()
    time.sleep(1.1)  # a later build, same bytes: no timestamps inside
    assert subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=120).returncode == 0
    assert (tmp_path / "student-pack.zip").read_bytes() == first


# -- running it ------------------------------------------------------------------------------
def _fill_answers(nb_path: Path, skip: set[str]) -> None:
    """Put the solutions' answer cells (all but ``skip``) into a released notebook."""
    sol = json.loads((ROOT / "solutions" / A / f"{A}.ipynb").read_text())
    answers = {c["metadata"]["nbgrader"]["grade_id"]: c["source"] for c in sol["cells"]
               if c["metadata"].get("nbgrader", {}).get("solution")
               and c["cell_type"] == "code"}
    nb = json.loads(nb_path.read_text())
    for c in nb["cells"]:
        gid = c["metadata"].get("nbgrader", {}).get("grade_id")
        if gid in answers and gid not in skip:
            c["source"] = answers[gid]
    nb_path.write_text(json.dumps(nb))


def _expected_points(nb_path: Path) -> tuple[dict[str, float], float]:
    nb = json.loads(nb_path.read_text())
    tests, written = {}, 0.0
    for c in nb["cells"]:
        m = c["metadata"].get("nbgrader", {})
        if m.get("grade") and not m.get("solution") and c["cell_type"] == "code":
            tests[m["grade_id"]] = float(m["points"])
        elif m.get("grade") and m.get("solution") and c["cell_type"] == "markdown":
            written += float(m["points"])
    return tests, written


def _check(python: str, pack_dir: Path, *args: str, env=None, timeout=600):
    return subprocess.run([python, "check.py", *args], cwd=pack_dir, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_check_script_reports_visible_tests_and_what_is_graded_later(tmp_path):
    folder = build_pack(tmp_path / "pack").folder
    nb_path = folder / NB
    _fill_answers(nb_path, skip={"cosine_beta_schedule"})
    tests, written = _expected_points(nb_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(folder),
               DIFFUSION_DATA_DIR=str(tmp_path / "data"),
               DIFFUSION_CHECKPOINT_DIR=str(tmp_path / "ckpt"))
    res = _check(sys.executable, folder, NB, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    rows = {ln.split()[1]: ln.split()[0] for ln in res.stdout.splitlines()
            if ln.startswith("  passed ") or ln.startswith("  FAILED ")}
    assert rows == {g: ("FAILED" if g == "test_cosine_beta_schedule" else "passed")
                    for g in tests}, res.stdout
    fail = next(ln for ln in res.stdout.splitlines() if "test_cosine_beta_schedule" in ln)
    assert "NotImplementedError" in fail
    earned = sum(p for g, p in tests.items() if g != "test_cosine_beta_schedule")
    assert (f"visible tests: {len(tests) - 1} of {len(tests)} test cells passed "
            f"({earned:g} points of {sum(tests.values()):g}, if the hidden tests agree)"
            ) in res.stdout
    assert (f"graded after you hand in: the hidden tests of every test cell, and "
            f"{written:g} points of written answers") in res.stdout
    assert "errors outside the test cells: cell" in res.stdout   # the cosine figure cell
    assert res.stderr.strip() == "", res.stderr   # no zmq warning or traceback at exit
    assert json.loads(nb_path.read_text())["cells"][1].get("outputs", []) == []  # untouched


@pytest.mark.slow
def test_fresh_venv_from_the_pack_runs_a_notebook_to_its_first_unanswered_test(tmp_path):
    """The students' two-command install, then check.py -x: the released notebook runs until
    its first test, which fails because the answer is not written yet. No nbgrader there."""
    folder = build_pack(tmp_path / "pack").folder
    readme = (folder / "README.md").read_text()
    install = re.search(r"```bash\n(.*?)\n", readme).group(1)   # the README's first command
    assert install.startswith("python3 -m venv .venv")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(Path(sys.executable).parent)))
    env.update(DIFFUSION_DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="1",
               DIFFUSION_CHECKPOINT_DIR=str(tmp_path / "ckpt"), PIP_NO_INPUT="1")
    python3 = os.environ.get("PACK_TEST_PYTHON", sys._base_executable)
    try:
        _install_and_run(folder, install, python3, env, tmp_path)
    finally:  # 6 GB: pytest would keep it with the last three runs' tmp folders
        shutil.rmtree(folder / ".venv", ignore_errors=True)


def _install_and_run(folder: Path, install: str, python3: str, env: dict, tmp_path: Path):
    t0 = time.monotonic()
    res = subprocess.run(install.replace("python3 ", f"{python3} ", 1), shell=True, cwd=folder,
                         env=env, capture_output=True, text=True, timeout=1800)
    install_s = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    venv = folder / ".venv"
    py = str(venv / "bin" / "python")
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"fresh pack venv: {install_s:.0f} s, {size / 1e9:.1f} GB")

    # no instructor tools: nbgrader is not installed, and no Jupyter extension of its is there
    probe = subprocess.run([py, "-c", "import importlib.util as u; print(u.find_spec('nbgrader'),"
                            " u.find_spec('grading'))"], capture_output=True, text=True, env=env,
                           cwd=tmp_path)
    assert probe.stdout.split() == ["None", "None"], probe.stdout + probe.stderr
    for what in (["server", "extension", "list"], ["labextension", "list"]):
        ext = subprocess.run([str(venv / "bin" / "jupyter"), *what], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=120)
        assert ext.returncode == 0 and "nbgrader" not in (ext.stdout + ext.stderr).lower(), \
            ext.stdout + ext.stderr
    lab = subprocess.run([str(venv / "bin" / "jupyter"), "lab", "--version"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert lab.returncode == 0 and lab.stdout.startswith("4."), lab.stdout + lab.stderr

    res = _check(py, folder, "-x", NB, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    first = lines[1].split()
    assert first[:2] == ["FAILED", "test_linear_beta_schedule"], res.stdout
    assert "NotImplementedError" in lines[1]
    assert "stopped at the first failed test (-x)" in res.stdout
    assert "errors outside the test cells" not in res.stdout, res.stdout  # the cells above ran
    assert res.stderr.strip() == "", res.stderr


def test_make_lab_starts_jupyterlab_as_root_too(tmp_path):
    """JupyterLab refuses root without --allow-root: containers and Codespaces run as root."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()   # newer than requirements.txt: make only prints the command
    res = subprocess.run(["make", "-n", "lab", f"VENV={venv}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    cmd = [ln for ln in res.stdout.splitlines() if "jupyter lab" in ln]
    assert cmd and cmd[0].split()[:3] == [f"{venv}/bin/jupyter", "lab", "notebooks/"], res.stdout
    assert ("--allow-root" in cmd[0]) == (os.geteuid() == 0), cmd

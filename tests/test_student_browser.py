"""The student's side in a real browser: JupyterLab on the students' pack, an answer typed into
notebook 01, its visible test run, the notebook saved, and the saved file autograded.

Playwright drives Debian's ``chromium`` (no browser download; ``.ci/run`` installs it). Outside
CI a missing browser skips these tests; in CI (``CI=true``) it fails them.

JupyterLab runs from the test's own Python (the course venv) on the pack's folder, with the
pack's ``helpers`` first on the kernel's path and nbgrader's server and lab extensions switched
off, as in the students' environment, which has no nbgrader (``test_grading_pack.py`` checks
that environment itself); a fresh pack venv would cost minutes per run.
"""
from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from grading import course
from grading.pack import build_pack

pytestmark = pytest.mark.slow

A = "01_forward_process"
NOTEBOOK = f"notebooks/{A}/{A}.ipynb"
ANSWER_ID = "linear_beta_schedule"
TEST_ID = f"test_{ANSWER_ID}"
BODY = "return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: Where the screenshots go as well as the test's tmp folder (to look at them after a run).
SCREENSHOT_DIR = os.environ.get("STUDENT_BROWSER_SCREENSHOTS")
#: nbgrader's extensions, off for this server as they are absent from the students' install.
NBGRADER_SERVER_EXTENSIONS = ("formgrader", "validate_assignment", "assignment_list",
                              "course_list")


def _unavailable(why: str):
    """Skip outside CI; in CI a missing browser is a broken machine, not a reason to pass."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (CI=true: .ci/run installs it)")
    pytest.skip(why)


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    if not path:
        _unavailable("no chromium on PATH (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -r requirements.txt)")
    exe = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _jupyter_dirs(base: Path) -> dict[str, str]:
    """Private Jupyter config, data, runtime and settings folders for one server."""
    dirs = {k: base / k for k in ("config", "data", "runtime", "settings", "workspaces",
                                  "ipython")}
    for d in dirs.values():
        d.mkdir(parents=True)
    (dirs["config"] / "labconfig").mkdir()
    # nbgrader's lab extension and the news pop-up off, as a student without nbgrader sees it
    (dirs["config"] / "labconfig" / "page_config.json").write_text(json.dumps({
        "disabledExtensions": {"@jupyter/nbgrader": True,
                               "@jupyterlab/apputils-extension:announcements": True}}))
    (dirs["config"] / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {
        "jpserver_extensions": {f"nbgrader.server_extensions.{e}": False
                                for e in NBGRADER_SERVER_EXTENSIONS}}}))
    return {"JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
            "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
            "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
            "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
            "IPYTHONDIR": str(dirs["ipython"])}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a fresh pack, on a free loopback port, with a token of our own."""
    tmp = tmp_path_factory.mktemp("lab")
    pack = build_pack(tmp / "pack").folder
    token = secrets.token_hex(16)
    env = dict(os.environ, **_jupyter_dirs(tmp / "jupyter"))
    env.update(PYTHONPATH=str(pack), DIFFUSION_FAST="1", OMP_NUM_THREADS="1",
               DIFFUSION_DATA_DIR=str(tmp / "data"), DIFFUSION_CHECKPOINT_DIR=str(tmp / "ckpt"))
    env.pop("MPLBACKEND", None)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", "--port=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={pack}"]
    if os.geteuid() == 0:  # CI and containers run as root; JupyterLab refuses root without it
        cmd.append("--allow-root")
    log = open(tmp / "lab.log", "wb")
    proc = subprocess.Popen(cmd, cwd=pack, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = _wait_for_server(Path(env["JUPYTER_RUNTIME_DIR"]), proc, tmp / "lab.log")
        yield dict(url=url, token=token, pack=pack, tmp=tmp, log=tmp / "lab.log")
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_for_server(runtime: Path, proc, log: Path, timeout: float = 90) -> str:
    """The server's base URL, once its runtime file names the port and /api/status answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        for f in runtime.glob("jpserver-*.json"):
            try:
                info = json.loads(f.read_text())
                url = f"http://127.0.0.1:{info['port']}"
                urllib.request.urlopen(f"{url}/api/status?token={info['token']}", timeout=2)
                return url
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.3)
    raise RuntimeError(f"JupyterLab did not answer within {timeout:g} s:\n"
                       f"{log.read_text(errors='replace')[-3000:]}")


def _screenshot(page, tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.png"
    page.screenshot(path=str(path))
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENSHOT_DIR) / path.name)
    return path


def _answer_dialogs(page, seen: list[str]) -> None:
    """Answer any JupyterLab dialog with its default button, and keep what it said.

    On a loaded CI machine JupyterLab sometimes opens a dialog of its own before the first
    cell runs (a slow kernel start, a dropped connection), which would swallow every click.
    Playwright's locator handler answers it before each action, as a student would; what the
    dialogs said is printed with the test's output, and a dialog saying the kernel died fails
    the test rather than being clicked away."""
    dialog = page.locator(".jp-Dialog").first

    def answer(d):
        text = " ".join(d.inner_text().split())
        seen.append(text)
        print("JupyterLab dialog:", text)
        assert "died" not in text.lower(), f"the kernel died: {text}"
        button = d.locator(".jp-Dialog-button.jp-mod-accept")
        if button.count():
            button.first.click()
        else:
            page.keyboard.press("Escape")

    page.add_locator_handler(dialog, answer)


def _code_cell(page, text: str):
    """The notebook's code cell whose editor shows ``text``."""
    cell = page.locator(".jp-Notebook .jp-CodeCell").filter(
        has=page.locator(".cm-content", has_text=text))
    cell.first.wait_for(timeout=30_000)
    return cell.first


def _run_cell(page, cell, timeout_ms: int = 60_000) -> None:
    """Run a code cell (Ctrl+Enter in command mode) and wait for its execution count to appear.

    On a loaded machine a run request sent while the kernel was still settling can be dropped
    (the prompt stays ``[ ]``, not ``[*]``): then the cell is run again, as a student would."""
    prompt = cell.locator(".jp-InputPrompt").first
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        cell.locator(".cm-content").first.click()
        page.keyboard.press("Escape")  # command mode: Ctrl+Enter runs the selected cell
        page.keyboard.press("Control+Enter")
        asked = time.monotonic()
        while time.monotonic() - asked < 20:
            text = prompt.inner_text()
            if re.search(r"\[\d+\]", text):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cell did not run within {timeout_ms / 1000:g} s (prompt {text!r})")
            page.wait_for_timeout(500)
        if "*" in prompt.inner_text():   # queued or running: wait for it, do not ask again
            page.wait_for_function("el => /\\[\\d+\\]/.test(el.textContent)",
                                   arg=prompt.element_handle(),
                                   timeout=max(1000, int((deadline - time.monotonic()) * 1000)))
            return


def _questions(out: Path, student: str) -> dict[str, dict]:
    with open(out / "questions.csv", newline="") as fh:
        return {r["cell_id"]: r for r in csv.DictReader(fh) if r["student"] == student}


def test_student_answers_in_jupyterlab_and_the_saved_notebook_is_graded(lab, browser):
    t0 = time.monotonic()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    dialogs: list[str] = []
    _answer_dialogs(page, dialogs)
    try:
        page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK}?token={lab['token']}")
        page.locator(".jp-Notebook .jp-Cell").first.wait_for()
        # the kernel is up when the toolbar's indicator says idle
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
            timeout=90_000)
        # none of nbgrader's menu, notebook button or panels, which fail without a course
        menus = page.locator(".lm-MenuBar-itemLabel").all_inner_texts()
        assert "File" in menus and "Nbgrader" not in menus, menus
        for tool in ("Validate", "Formgrader", "Assignment List", "Create Assignment"):
            assert not page.get_by_text(tool, exact=True).count(), f"{tool} in student's lab"

        # the imports: the kernel's first cell loads torch, matplotlib and helpers
        _run_cell(page, _code_cell(page, "seed_everything(0)"), timeout_ms=150_000)
        answer = _code_cell(page, f"def {ANSWER_ID}(")
        answer.locator(".cm-line", has_text="raise NotImplementedError()").click()
        page.keyboard.press("End")
        page.keyboard.press("Shift+Home")   # to the indentation: the typed line keeps it
        page.keyboard.type(BODY, delay=5)
        _run_cell(page, answer)
        test = _code_cell(page, f"_b = {ANSWER_ID}()")
        _run_cell(page, test)
        test.locator(".jp-OutputArea-output", has_text="visible tests passed").wait_for()
        _screenshot(page, lab["tmp"], "01_answer_and_test")
        page.keyboard.press("Control+s")

        saved = lab["pack"] / NOTEBOOK
        deadline = time.monotonic() + 30
        while BODY not in saved.read_text() and time.monotonic() < deadline:
            time.sleep(0.3)
        nb = json.loads(saved.read_text())
        cells = {c["metadata"].get("nbgrader", {}).get("grade_id"): c for c in nb["cells"]}
        assert BODY in "".join(cells[ANSWER_ID]["source"]), "the typed answer was not saved"
        assert "visible tests passed" in json.dumps(cells[TEST_ID]["outputs"])
    except Exception:
        print("screenshot of the failure:", _screenshot(page, lab["tmp"], "failure"))
        print("JupyterLab's log:", lab["log"].read_text(errors="replace")[-3000:])
        raise
    page.close()
    browser_seconds = time.monotonic() - t0

    subs = lab["tmp"] / "subs" / "student1" / A
    subs.mkdir(parents=True)
    shutil.copy(saved, subs / f"{A}.ipynb")
    out = lab["tmp"] / "graded"
    res = subprocess.run([sys.executable, "-m", "grading", "autograde", str(subs.parent.parent),
                          "--out", str(out), "--jobs", "1"], cwd=course.REPO_ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = _questions(out, "student1")
    points = float(cells[TEST_ID]["metadata"]["nbgrader"]["points"])
    assert rows[TEST_ID]["passed"] == "true", rows[TEST_ID]
    assert float(rows[TEST_ID]["points"]) == float(rows[TEST_ID]["max_points"]) == points
    others = {k: r for k, r in rows.items() if k != TEST_ID and r["passed"] == "true"}
    assert not others, f"unanswered cells scored: {others}"
    with open(out / "grades.csv", newline="") as fh:
        grades = {r["student"]: r for r in csv.DictReader(fh)}
    assert float(grades["student1"]["auto_score"]) == points
    print(f"browser part {browser_seconds:.1f} s, with autograde {time.monotonic() - t0:.1f} s")

"""A student's feedback page in headless Chromium, offline: math rendered (MathML, no raw
``$\\beta_t$``), a written answer "awaiting grading", and after a TA's score and comment in the
gradebook and ``python -m grading feedback``, the points and the comment.

Every request the page makes to anything but ``file://`` is blocked and counted: the page must
need none. Playwright drives Debian's ``chromium``; outside CI a missing browser skips, in CI it
fails (as in ``test_student_browser.py``). The screenshots land in the test's tmp folder (and in
``$FEEDBACK_SCREENSHOTS`` when set) to be looked at.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from grading import course
from grading.autograde import autograde
from grading.cli import main
from grading.feedback_html import render_page

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import grading_cases as gc  # noqa: E402

pytestmark = pytest.mark.slow
A = gc.ASSIGNMENT
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
COMMENT = "Right sign argument; zero as the minimum is missing."


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("no chromium on PATH (CI=true: .ci/run installs it)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser():
    sync = pytest.importorskip("playwright.sync_api")
    with sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_offline(browser, url: str, shot: Path):
    """The page at ``url`` with every request but file:// blocked; returns (page, blocked)."""
    page = browser.new_page(viewport={"width": 1000, "height": 1000})
    blocked = []

    def guard(route):
        if route.request.url.startswith(("file://", "data:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.goto(url)
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("FEEDBACK_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["FEEDBACK_SCREENSHOTS"]) / shot.name)
    return page, blocked


def rendered_math(page) -> int:
    """How many formulas the browser laid out as MathML with a real size."""
    return page.evaluate("""() => [...document.querySelectorAll('math')]
        .filter(m => m.getBoundingClientRect().width > 2 && m.getBoundingClientRect().height > 2).length""")


def test_a_course_notebook_math_renders_offline(browser, tmp_path):
    """Notebook 01's page: its 100+ formulas laid out by the browser, none left as raw LaTeX."""
    a = "01_forward_process"
    nb = course.read_json(course.REPO_ROOT / course.RELEASE_DIR / a / f"{a}.ipynb")
    html = tmp_path / "01.html"
    html.write_text(render_page(a, "student", nb, {}))
    page, blocked = open_offline(browser, html.as_uri(), tmp_path / "feedback-01-math.png")
    text = "\n".join(page.locator(".md").all_inner_texts())   # the prose (code may hold LaTeX)
    assert blocked == []
    assert rendered_math(page) > 100
    assert any("$\\beta_t$" in gc.src(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "$\\beta_t$" not in text and "\\beta" not in text and "$$" not in text
    assert page.locator("script").count() == 0


def test_feedback_page_before_and_after_manual_grading(browser, tmp_path):
    d = tmp_path / "subs" / "ada" / A
    d.mkdir(parents=True)
    (d / f"{A}.ipynb").write_bytes(gc.dump(gc.perfect()))
    out = tmp_path / "out"
    autograde(tmp_path / "subs", out=out, jobs=1, timeout=8, root=gc.COURSE, progress=False)
    url = (out / "feedback" / "ada" / A / f"{A}.html").as_uri()
    page, blocked = open_offline(browser, url, tmp_path / "feedback-before.png")
    assert blocked == []
    assert rendered_math(page) >= 3 and "$x^2$" not in page.inner_text("body")
    why = page.locator('.score[data-grade-id="why"]')
    assert "awaiting grading" in why.inner_text() and "0 / 2" not in why.inner_text()
    assert page.locator("#total").inner_text().startswith("pending")
    assert "2 / 2" in page.locator('.score[data-grade-id="test_square"]').inner_text()
    body = page.inner_text("body")
    assert not any(s in body for s in gc.HIDDEN_SNIPPETS), "a hidden test reached the page"

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{out / 'gradebook.db'}", "diffusion") as gb:   # the TA grades
        gb.find_grade("why", A, A, "ada").manual_score = 1.5
        gb.find_comment("why", A, A, "ada").manual_comment = COMMENT
        gb.db.commit()
    assert main(["feedback", "--out", str(out), "--root", str(gc.COURSE)]) == 0
    page, blocked = open_offline(browser, url, tmp_path / "feedback-after.png")
    assert blocked == []
    why = page.locator('.score[data-grade-id="why"]').inner_text()
    assert "1.5 / 2" in why and COMMENT in why and "awaiting" not in why
    assert page.locator("#total").inner_text() == "4.5 / 5"

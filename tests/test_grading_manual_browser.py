"""The TAs' grading page in a real browser: a graded fixture course (autograde, for real), the
page served by ``python -m grading manual --serve``, two answers graded in headless Chromium, the
page reloaded, the grades still there and in the nbgrader gradebook; then autograde ``--force``
again, and the manual grades survive it.

Playwright drives Debian's ``chromium`` as in ``test_student_browser.py`` (a missing browser skips
outside CI and fails in CI). Screenshots go to the test's folder, and to
``$MANUAL_BROWSER_SCREENSHOTS`` when it is set.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grading import course

sys.path.insert(0, str(Path(__file__).resolve().parent))
import manual_support as ms  # noqa: E402
from test_student_browser import CHROMIUM_ARGS, chromium_path, _unavailable  # noqa: E402

pytestmark = pytest.mark.slow
A, Q = ms.A, ms.QUESTION
SCREENSHOT_DIR = os.environ.get("MANUAL_BROWSER_SCREENSHOTS")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("manual")
    rep = ms.graded_course(tmp)
    assert rep.errors == [] and rep.graded == len(ms.ANSWERS)
    return tmp


@pytest.fixture(scope="module")
def server(graded):
    """``python -m grading manual --serve`` as a TA starts it; yields the URL it printed."""
    env = dict(os.environ, PYTHONPATH=str(course.REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "grading", "manual", "--serve", "--out",
                             str(graded / "out"), "--root", str(ms.gc.COURSE)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url, seen = None, []
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(r"http://127\.0\.0\.1:\d+/\?token=[\w-]+", line)
        url = m.group(0) if m else None
    assert url, "".join(seen)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -r requirements.txt)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def shot(page, tmp: Path, name: str) -> None:
    for d in filter(None, (tmp, SCREENSHOT_DIR)):
        Path(d).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(d) / f"{name}.png"), full_page=True)


def gradebook_grades(out: Path) -> dict:
    from nbgrader.api import Gradebook

    with course.quiet_nbgrader(), Gradebook(f"sqlite:///{out / 'gradebook.db'}", "diffusion") as gb:
        return {s: (gb.find_grade(Q, A, A, s).manual_score, gb.find_comment(Q, A, A, s).manual_comment,
                    gb.find_grade(Q, A, A, s).needs_manual_grade) for s in ms.ANSWERS}


def test_grade_two_answers_reload_and_find_them_in_the_gradebook(graded, server, browser):
    from playwright.sync_api import expect  # its waits run no eval: the page's CSP forbids it

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    assert page.url.endswith(f"/q/{A}/{A}/{Q}")          # the token went into a cookie
    cards = page.locator("article.card")
    assert cards.count() == 3
    ada, bob = page.locator("#s-ada"), page.locator("#s-bob")
    # the rubric and the student's own outputs beside the answer; math typeset offline by KaTeX
    assert "Rubric (2 points)." in page.locator("aside.rubric").inner_text()
    assert "loss = 0.125" in ada.inner_text() and "loss = 0.250" in bob.inner_text()
    assert ada.locator("img.out").evaluate("i => i.complete && i.naturalWidth") == ms.PNG_WIDTH
    assert page.locator("#s-ada .answer .katex").count() == 2
    assert page.locator("aside .katex").count() >= 1
    assert page.evaluate("window.pwned") is None          # a student's HTML ran nowhere
    assert "<img src=x" in bob.locator(".answer").inner_text()   # shown as text
    shot(page, graded, "manual-before")

    ada.locator("textarea.comment").fill("Both points: the sign argument and $0$ as the minimum.")
    ada.locator("button.step[data-points='2']").click()   # one click saves, moves to bob
    expect(ada.locator(".saved")).to_have_text("saved")
    assert page.evaluate("document.activeElement.closest('.card').id") == "s-bob"
    bob.locator("textarea.comment").fill("The sign argument only.")
    bob.locator("input.points").fill("1")
    bob.locator("input.points").press("Enter")
    expect(bob.locator(".saved")).to_have_text("saved")
    assert page.locator("#progress").inner_text() == "2 / 3 graded"
    bob.locator("input.points").fill("7")                 # above the maximum: refused, said
    bob.locator("input.points").press("Enter")
    expect(bob.locator(".saved")).to_contain_text("above the maximum of 2")

    page.reload()
    assert page.locator("#s-ada button.step.on").inner_text() == "2"
    assert page.locator("#s-ada textarea.comment").input_value().startswith("Both points")
    assert page.locator("#s-bob input.points").input_value() == "1"
    assert page.locator("#s-bob textarea.comment").input_value() == "The sign argument only."
    assert page.locator("#s-cyd input.points").input_value() == ""
    assert page.locator("#progress").inner_text() == "2 / 3 graded"
    assert "graded" in page.locator("#s-ada").get_attribute("class")
    shot(page, graded, "manual-after")
    assert errors == []
    page.close()
    g = gradebook_grades(graded / "out")
    assert g["ada"] == (2.0, "Both points: the sign argument and $0$ as the minimum.", False)
    assert g["bob"] == (1.0, "The sign argument only.", False)
    assert g["cyd"][0] is None


def test_a_forced_regrade_keeps_the_manual_grades(graded, server, browser):
    from grading.autograde import autograde

    before = gradebook_grades(graded / "out")
    assert before["ada"][0] == 2.0, "runs after the grading test"
    one = graded / "regrade"   # ada's notebook alone: one job keeps the test short
    shutil.copytree(graded / "subs" / "ada", one / "ada")
    rep = autograde(one, out=graded / "out", jobs=1, timeout=30, root=ms.gc.COURSE,
                    progress=False, force=True)
    assert rep.errors == [] and rep.graded == 1
    assert gradebook_grades(graded / "out") == before
    page = browser.new_page()
    page.goto(server)
    assert page.locator("#s-ada button.step.on").inner_text() == "2"
    page.close()


def test_a_comment_left_before_the_points_is_saved_with_them(graded, server, browser):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(server)
    cyd = page.locator("#s-cyd")
    cyd.locator("textarea.comment").fill("No answer.")
    cyd.locator("input.points").focus()                   # the comment box is left first
    expect(cyd.locator(".saved")).to_have_text("give points to save the comment")
    cyd.locator("button.step[data-points='0']").click()
    expect(cyd.locator(".saved")).to_have_text("saved")
    page.close()
    assert gradebook_grades(graded / "out")["cyd"] == (0.0, "No answer.", False)

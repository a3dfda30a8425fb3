"""How long a TA takes to grade one written question for N students on the grading page.

Autogrades N students of the fixture assignment (``tests/manual_support.py``: each with an answer
and outputs of their own, every third one blank), starts ``python -m grading manual --serve``, and
drives headless Chromium as a TA would: for each student one click on a point button (which saves
and moves on), and for every other student a comment typed first. It prints the clicks and
keystrokes, the time the page took (load, every save acknowledged, reload), and checks that the
gradebook holds all N grades. The time of a person reading each answer comes on top; the page's
own share is what this measures.

    python benchmarks/manual_grading.py            # 18 students, as many as the demo's submissions
    python benchmarks/manual_grading.py --students 40
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import manual_support as ms  # noqa: E402

from grading import course  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", type=int, default=18)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--screenshot", default=None, help="PNG of the page after grading")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="manual-bench-"))
    t0 = time.perf_counter()
    answers = ms.copy_answers(args.students)
    rep = ms.graded_course(tmp, answers, jobs=args.jobs)
    print(f"autograded {rep.graded} notebooks in {time.perf_counter() - t0:.0f} s")
    proc = subprocess.Popen([sys.executable, "-m", "grading", "manual", "--serve", "--out",
                             str(tmp / "out"), "--root", str(ms.gc.COURSE)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = None
    for line in proc.stdout:
        m = re.search(r"http://127\.0\.0\.1:\d+/\?token=[\w-]+", line)
        if m:
            url = m.group(0)
            break
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            page = b.new_page(viewport={"width": 1280, "height": 900})
            clicks = keys = 0
            t_load = time.perf_counter()
            page.goto(url)
            expect(page.locator("article.card")).to_have_count(args.students)
            t_loaded = time.perf_counter()
            for k, student in enumerate(sorted(answers)):
                card = page.locator(f"#s-{student}")
                pts = "0" if answers[student][0] is None else str(1 + k % 2)
                if k % 2 == 0:
                    comment = f"Point {pts}: see the rubric."
                    card.locator("textarea.comment").click()
                    card.locator("textarea.comment").type(comment)
                    clicks, keys = clicks + 1, keys + len(comment)
                card.locator(f"button.step[data-points='{pts}']").click()
                clicks += 1
                expect(card.locator(".saved")).to_have_text("saved")
            t_graded = time.perf_counter()
            expect(page.locator("#progress")).to_have_text(f"{args.students} / {args.students} graded")
            page.reload()
            expect(page.locator("button.step.on")).to_have_count(args.students)
            t_end = time.perf_counter()
            if args.screenshot:
                page.screenshot(path=args.screenshot, full_page=False)
            b.close()
    finally:
        proc.terminate()
        proc.wait(10)
    from grading.manual import Course

    c = Course.open(tmp / "out", root=ms.gc.COURSE)
    done, total = c.progress()[f"{ms.A}/{ms.A}/{ms.QUESTION}"]
    print(f"{args.students} students, one question: {clicks} clicks and {keys} keystrokes "
          f"(comments on every other student)")
    print(f"page load {t_loaded - t_load:.2f} s, grading {t_graded - t_loaded:.2f} s "
          f"({(t_graded - t_loaded) / args.students:.2f} s per student, every save acknowledged), "
          f"reload and check {t_end - t_graded:.2f} s; gradebook: {done}/{total} graded")
    course.ensure_path()
    return 0 if done == total == args.students else 1


if __name__ == "__main__":
    sys.exit(main())

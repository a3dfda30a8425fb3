"""``python -m grading feedback``: the feedback pages, with every hidden test kept out of them.

Trusted: runs in the grader's own process.

:func:`redact_feedback` removes from a page any hidden-test line (and marker) that made it through
nbgrader's ``ClearHiddenTests``; autograde runs it on every page a job writes.
:func:`regenerate_feedback` writes the pages again, as nbgrader's ``generate_feedback`` does, from
``autograded/`` and the course gradebook, which by then holds the manual grades.
"""
from __future__ import annotations

import html
import logging
import shutil
import tempfile
from pathlib import Path

from . import cells, course
from .messages import summary

log = logging.getLogger("grading.feedback")

HIDDEN_PLACEHOLDER = "[hidden test]"


def redact_feedback(data: bytes, hidden_lines: set[str]) -> tuple[bytes, int]:
    """Remove any of ``hidden_lines`` that still made it into a feedback page; returns (html, hits)."""
    text = data.decode("utf-8", errors="replace")
    hits = 0
    for ln in hidden_lines:
        for form in {ln, html.escape(ln), html.escape(ln, quote=False)}:
            if form in text:
                hits += text.count(form)
                text = text.replace(form, HIDDEN_PLACEHOLDER)
    for marker in (cells.BEGIN_HIDDEN_TESTS, cells.END_HIDDEN_TESTS):
        if marker in text:
            hits += text.count(marker)
            text = text.replace(marker, "")
    return text.encode("utf-8"), hits


def regenerate_feedback(out: Path | str, assignment: str | None = None, student: str | None = None,
                        db_url: str | None = None, root: Path | str = course.REPO_ROOT) -> list[Path]:
    """Rewrite ``feedback/<s>/<a>/*.html`` from ``autograded/`` and the gradebook (which now holds
    the manual grades), with hidden tests removed. Returns the pages written."""
    course.ensure_path()
    out, root = Path(out).resolve(), Path(root).resolve()
    db_url = db_url or f"sqlite:///{out / 'gradebook.db'}"
    written = []
    with tempfile.TemporaryDirectory(prefix="feedback-") as tmp:
        tmp = Path(tmp)
        pairs = sorted({(p.parent.parent.name, p.parent.name)
                        for p in (out / "autograded").glob("*/*/*.ipynb")})
        for s, a in pairs:
            if (assignment and a != assignment) or (student and s != student):
                continue
            shutil.copytree(out / "autograded" / s / a, tmp / "autograded" / s / a)
            hidden = set()
            for nb in course.assignment_notebooks(root, a):
                hidden |= cells.hidden_test_lines(course.read_json(nb))
            api = course.make_api(tmp, db_url=db_url)
            with course.quiet_nbgrader():
                res = api.generate_feedback(a, s, force=True)
            if not res["success"]:
                log.error("feedback %s/%s failed: %s", s, a, summary(res.get("error")))
                continue
            for page in sorted((tmp / "feedback" / s / a).glob("*.html")):
                data, hits = redact_feedback(page.read_bytes(), hidden)
                dest = out / "feedback" / s / a / page.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                written.append(dest)
    return written


def feedback_cli(args) -> int:
    out = Path(args.out)
    if not (out / "autograded").is_dir():
        log.error("no graded notebooks in %s (no autograded/ folder): give autograde's --out", out)
        return 2
    try:
        assignment = args.assignment and course.resolve_assignment(args.assignment)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    pages = regenerate_feedback(out, assignment, args.student, db_url=args.db)
    for p in pages:
        print(p)
    print(f"{len(pages)} feedback page(s) written")
    if not pages:
        log.error("no feedback page written from %s%s%s", out / "autograded",
                  f" for assignment {assignment}" if assignment else "",
                  f" for student {args.student}" if args.student else "")
        return 1
    return 0

"""``python -m grading feedback``: the feedback pages, with every hidden test kept out of them.

Trusted: runs in the grader's own process.

:func:`redact_feedback` removes from a page any hidden-test line (and marker) that made it through
nbgrader's ``ClearHiddenTests``; autograde runs it on every page a job writes.
:func:`write_pages` writes one submission's pages (``grading.feedback_html``: each question's
points, "awaiting grading" for a written answer no person has scored yet, math as MathML) from
``autograded/`` and the course gradebook; autograde calls it for every job, and
:func:`regenerate_feedback` (``python -m grading feedback``) for every submission after a TA
graded, when it also writes ``grades.csv`` again with the manual points.
"""
from __future__ import annotations

import html
import logging
import os
from pathlib import Path

from . import cells, course
from .feedback_html import CellScore, render_page
from .messages import summary
from .state import load_state, refresh_csvs

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


def cell_scores(db_url: str, student: str, assignment: str) -> dict[str, dict[str, CellScore]]:
    """``{notebook: {grade_id: CellScore}}`` of one submission, from the course gradebook."""
    from nbgrader.api import Gradebook

    out: dict[str, dict[str, CellScore]] = {}
    with course.quiet_nbgrader(), Gradebook(db_url, "diffusion") as gb:
        sub = gb.find_submission(assignment, student)
        for snb in sub.notebooks:
            written = {c.name for c in snb.notebook.solution_cells}
            comments = {c.name: c for c in snb.comments}
            order = {c.name: i for i, c in enumerate(snb.notebook.grade_cells)}
            scores = {}
            for g in sorted(snb.grades, key=lambda g: order.get(g.name, 0)):
                c = comments.get(g.name)
                if g.name in written and g.cell_type == "markdown":
                    waiting = g.manual_score is None and bool(g.needs_manual_grade)
                    scores[g.name] = CellScore("written", float(g.max_score),
                                               None if waiting else float(g.score or 0.0),
                                               (c and (c.manual_comment or c.auto_comment)) or None,
                                               bool(c and c.manual_comment))
                else:  # a test cell's comment is its failure message, from autograde
                    scores[g.name] = CellScore("test", float(g.max_score), float(g.score or 0.0),
                                               (c and (c.manual_comment or c.auto_comment)) or None)
            out[snb.name] = scores
    return out


def write_pages(out: Path, db_url: str, student: str, assignment: str,
                root: Path | str = course.REPO_ROOT,
                zero_reasons: dict[str, str] | None = None,
                messages: dict[str, str] | None = None) -> list[Path]:
    """Write ``feedback/<student>/<assignment>/<nb>.html`` for every notebook of the submission,
    from ``autograded/`` and the gradebook; a notebook that was not run gets a page that says why
    it scored 0. ``messages`` (``{grade_id: text}``, autograde's ``questions.csv`` messages) say
    why a test cell lost points: the gradebook keeps comments of answer cells only. Hidden tests
    are removed (and the page checked for them). Returns the pages."""
    out = Path(out)
    hidden = set()
    for nb_path in course.assignment_notebooks(root, assignment):
        hidden |= cells.hidden_test_lines(course.read_json(nb_path))
    written = []
    for nb_name, scores in cell_scores(db_url, student, assignment).items():
        graded = out / "autograded" / student / assignment / f"{nb_name}.ipynb"
        nb = course.read_json(graded) if graded.is_file() else None
        for gid, sc in scores.items():
            if sc.kind == "test" and not sc.comment and (messages or {}).get(gid):
                sc.comment = messages[gid]
        reason = (zero_reasons or {}).get(nb_name)
        if nb is None and reason is None:
            reason = "no graded notebook (it was missing, or could not be read)"
        title = f"{assignment}: {nb_name}.ipynb"
        page = render_page(title, student, nb, scores, reason).encode("utf-8")
        page, hits = redact_feedback(page, hidden)
        if hits:
            log.warning("%s/%s: removed %d hidden-test line(s) from the feedback", student,
                        assignment, hits)
        dest = out / "feedback" / student / assignment / f"{nb_name}.html"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".html.tmp")
        tmp.write_bytes(page)
        os.replace(tmp, dest)
        written.append(dest)
    return written


def regenerate_feedback(out: Path | str, assignment: str | None = None, student: str | None = None,
                        db_url: str | None = None, root: Path | str = course.REPO_ROOT) -> list[Path]:
    """Rewrite ``feedback/<s>/<a>/*.html`` from ``autograded/`` and the gradebook (which now holds
    the manual grades), with hidden tests removed, and ``grades.csv`` with the manual points.
    Returns the pages written."""
    course.ensure_path()
    out, root = Path(out).resolve(), Path(root).resolve()
    db_url = db_url or f"sqlite:///{out / 'gradebook.db'}"
    state = load_state(out)["submissions"]
    pairs = {tuple(k.split("/", 1)) for k in state}
    pairs |= {(p.parent.parent.name, p.parent.name) for p in (out / "autograded").glob("*/*/*.ipynb")}
    written = []
    for s, a in sorted(pairs):
        if (assignment and a != assignment) or (student and s != student):
            continue
        entry = state.get(f"{s}/{a}") or {}
        msgs = {q["cell_id"]: q["message"] for q in entry.get("questions", [])}
        try:
            written += write_pages(out, db_url, s, a, root, entry.get("zero_reasons") or {}, msgs)
        except Exception as exc:  # noqa: BLE001  (one submission's page, not the others')
            log.error("feedback %s/%s failed: %s: %s", s, a, type(exc).__name__, summary(str(exc)))
    refresh_csvs(out, db_url)
    return written


def feedback_cli(args) -> int:
    out = Path(args.out)
    if not (out / "autograded").is_dir():
        log.error("no graded notebooks in %s (no autograded/ folder): give autograde's --out", out)
        return 2
    try:
        assignment = args.assignment and course.resolve_assignment(
            args.assignment, getattr(args, "root", course.REPO_ROOT))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    pages = regenerate_feedback(out, assignment, args.student, db_url=args.db,
                                root=getattr(args, "root", course.REPO_ROOT))
    for p in pages:
        print(p)
    print(f"{len(pages)} feedback page(s) written; {out / 'grades.csv'} has the manual points")
    if not pages:
        log.error("no feedback page written from %s%s%s", out / "autograded",
                  f" for assignment {assignment}" if assignment else "",
                  f" for student {args.student}" if args.student else "")
        return 1
    return 0

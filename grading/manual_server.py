"""``python -m grading manual --serve``: the TAs' grading page, served on loopback.

Trusted: runs in the grader's own process; the browser that opens the page is the TA's. Student
text and outputs are shown, never run: see "Safety" below.

One question at a time across all students, as Gradescope grades: beside the question, its model
answer and rubric (from ``solutions/``), every student's answer with the outputs of the cells the
question is about as the student handed them in (kept by autograde: ``grading.submitted``), and
for each a row of point buttons, a points field and a comment. A click on a point button or Enter
in the points field saves the points and the comment and moves to the next student; typed points
also save when the field is left, and a changed comment when its box is left once the student has
points. Saves go into the nbgrader gradebook (``grading.manual.Course.save``: the same checks as
a CSV import); a refused one says why on the student's card.

Why tornado: it is already in the course environment (Jupyter's server runs on it), small, kept up,
with templates that escape by default and a static file handler; nothing else is needed.

Math: KaTeX, vendored in ``grading/vendor/katex`` (MIT licence beside it), renders in the
browser without any network, on the ``<span class="math">`` elements that mistune's math plugin
leaves in the server-rendered Markdown. KaTeX rather than server-side MathML (latex2mathml): it
renders every formula of the six notebooks as students see them in JupyterLab, and its
``trust: false`` default refuses ``\\href`` and HTML in student formulas, while latex2mathml copies
``\\text{<script>}`` through unescaped.

Safety, since every answer and output on the page is a student's:
- the server binds 127.0.0.1 only, on a free port, and answers only with the secret token of the
  printed URL (kept in an HttpOnly, SameSite=Strict cookie after the first visit) and only to
  ``Host: 127.0.0.1:<port>`` or ``localhost:<port>`` (no DNS rebinding); a save must carry the
  token in a header, which another site's page cannot read (no CSRF);
- Markdown is rendered with raw HTML escaped and unsafe links dropped (mistune ``escape=True``);
  outputs are only PNG/JPEG/SVG images in ``<img>`` and escaped text (``grading.submitted``);
- a Content-Security-Policy lets the page run only its own two scripts and load nothing from
  outside (``img-src 'self' data:``), so an inline handler that slipped through would not run.
"""
from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

from . import course
from .manual import Answer, Course, ManualGradeError

FILES = Path(__file__).resolve().parent / "manual_files"
KATEX = Path(__file__).resolve().parent / "vendor" / "katex"
COOKIE = "grading_manual_token"
HEADER = "X-Grading-Token"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; form-action 'none'; base-uri 'none'; "
       "frame-ancestors 'none'")


def markdown(text: str | None) -> str:
    """Markdown to HTML with raw HTML escaped; math left for KaTeX in ``span/div.math``."""
    import mistune

    render = getattr(markdown, "_md", None)
    if render is None:
        render = markdown._md = mistune.create_markdown(
            escape=True, plugins=["math", "table", "strikethrough"])
    return render(text or "")


def point_steps(max_points: float) -> list[float]:
    """The point buttons of a question: whole points, halves for a question of one point."""
    step = 0.5 if max_points <= 1 else 1.0
    n = int(round(max_points / step))
    return [round(k * step, 2) for k in range(n + 1)]


def _answer_view(a: Answer) -> dict:
    return {"student": a.student, "text": a.text, "html": markdown(a.text) if a.text else "",
            "cells": a.cells, "note": a.note, "status": a.status,
            "points": "" if a.manual_score is None else f"{a.manual_score:g}",
            "comment": a.manual_comment, "auto_comment": a.auto_comment,
            "blank": a.text is None or not a.needs_manual_grade and a.manual_score is None
            and a.auto_score == 0}


def make_app(c: Course, token: str, port_holder: list[int]):
    """The tornado application (``port_holder[0]``: the port, for the Host check)."""
    import tornado.web

    class Base(tornado.web.RequestHandler):
        def set_default_headers(self):
            self.set_header("Content-Security-Policy", CSP)
            self.set_header("X-Content-Type-Options", "nosniff")
            self.set_header("Referrer-Policy", "no-referrer")
            self.set_header("Cache-Control", "no-store")

        def prepare(self):
            host = self.request.host or ""
            if host not in (f"127.0.0.1:{port_holder[0]}", f"localhost:{port_holder[0]}"):
                raise tornado.web.HTTPError(403, "wrong Host")
            given = self.get_query_argument("token", None)
            if given is not None and secrets.compare_digest(given, token):
                self.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
                if self.request.method == "GET":  # the token leaves the address bar
                    self.redirect(self.request.path)
                    return
            elif not secrets.compare_digest(self.get_cookie(COOKIE, "") or "", token):
                raise tornado.web.HTTPError(403, "open the URL that `python -m grading manual "
                                                 "--serve` printed (it holds the token)")

        def write_error(self, status_code, **kwargs):
            exc = kwargs.get("exc_info", (None, None))[1]
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(f"{status_code}: {getattr(exc, 'log_message', None) or self._reason}\n")

        def page(self, name: str, **kw):
            self.render(name, token=token, **kw)

    class Index(Base):
        def get(self):
            qs = c.questions()
            prog = c.progress()
            if len(qs) == 1 and not self.get_query_argument("list", None):
                q = qs[0]
                self.redirect(f"/q/{q.key}")
                return
            self.page("index.html", questions=qs, progress=prog, out=str(c.out))

    class QuestionPage(Base):
        def get(self, a: str, nb: str, qid: str):
            try:
                q = c.question(a, qid, nb)
            except KeyError as exc:
                raise tornado.web.HTTPError(404, str(exc)) from None
            qs = c.questions()
            k = [x.key for x in qs].index(q.key)
            answers = [_answer_view(x) for x in c.answers(q)]
            self.page("question.html", q=q, questions=qs, index=k, answers=answers,
                      prompt=markdown(q.prompt), model=markdown(q.model_answer),
                      steps=point_steps(q.max_points), progress=c.progress(),
                      prev=qs[k - 1] if k > 0 else None, next=qs[k + 1] if k + 1 < len(qs) else None)

    class Grade(Base):
        def check_xsrf_cookie(self):  # the token header stands for it
            pass

        def post(self):
            if not secrets.compare_digest(self.request.headers.get(HEADER, ""), token):
                raise tornado.web.HTTPError(403, f"a save needs the {HEADER} header")
            try:
                data = json.loads(self.request.body or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                raise tornado.web.HTTPError(400, f"not JSON: {exc}") from None
            row = {k: str(data.get(k) if data.get(k) is not None else "")
                   for k in ("student", "assignment", "notebook", "question", "points", "comment")}
            try:
                n = c.save([row], where="save")
            except ManualGradeError as exc:
                self.set_status(400)
                self.finish({"ok": False, "error": str(exc)})
                return
            except Exception as exc:  # noqa: BLE001  (e.g. a gradebook locked by autograde)
                self.set_status(500)
                self.finish({"ok": False, "error": f"not saved: {type(exc).__name__}: {exc}"})
                return
            q = c.question(row["assignment"], row["question"], row["notebook"] or None)
            ans = next(iter(c.answers(q, only=row["student"])), None)
            done, total = c.progress().get(q.key, (0, 0))
            self.finish({"ok": True, "written": n, "status": ans.status if ans else "",
                         "points": "" if ans is None or ans.manual_score is None
                         else f"{ans.manual_score:g}", "graded": done, "total": total})

    class NoIcon(Base):
        def get(self):
            self.set_status(204)

    return tornado.web.Application(
        [(r"/", Index), (r"/favicon.ico", NoIcon), (r"/q/([^/]+)/([^/]+)/([^/]+)", QuestionPage), (r"/api/grade", Grade),
         (r"/katex/(.*)", tornado.web.StaticFileHandler, {"path": str(KATEX)})],
        template_path=str(FILES / "templates"), static_path=str(FILES / "static"),
        compiled_template_cache=False, autoreload=False)


def start(c: Course, port: int = 0):
    """Start serving (on the running asyncio loop); returns ``(http server, url with token)``."""
    import tornado.httpserver
    import tornado.netutil

    token = secrets.token_urlsafe(24)
    holder = [0]
    sockets = tornado.netutil.bind_sockets(port, address="127.0.0.1")
    holder[0] = sockets[0].getsockname()[1]
    server = tornado.httpserver.HTTPServer(make_app(c, token, holder))
    server.add_sockets(sockets)
    return server, f"http://127.0.0.1:{holder[0]}/?token={token}"


def serve(c: Course, port: int = 0) -> int:
    """Serve until Ctrl-C; prints the URL to open."""
    import asyncio

    async def main():
        _, url = start(c, port)
        print(f"grading page for {c.out} (gradebook {c.db_url}):\n  {url}\n"
              "open it in a browser on this machine; Ctrl-C stops the server", flush=True)
        await asyncio.Event().wait()

    course.ensure_path()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


__all__ = ["make_app", "markdown", "point_steps", "serve", "start"]

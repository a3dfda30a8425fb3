"""A student's feedback page: their graded notebook with each question's points, readable offline.

Trusted: runs in the grader's own process; the page is one self-contained HTML file.

What the page shows, question by question, from the course gradebook:

- a test cell: its points (``2 / 2``) and, when it failed, the message (the likely cause);
- a written answer: ``awaiting grading`` until a person scored it (never ``0 / 2``), then the
  points and the grader's comment;
- a notebook that could not be run (empty, not JSON, missing): a page that says why it scored 0.

Hidden tests never appear: the region between the hidden-test markers is removed from every cell
before rendering, and :func:`grading.feedback.redact_feedback` then checks the page's text for
any hidden-test line that slipped through.

**Math is pre-rendered to MathML** with ``latex2mathml`` (MIT licence, pure Python, from PyPI),
so the page needs no script, no font files and no network: browsers render MathML Core natively
(Chromium 109+, Firefox, Safari). Chosen over shipping KaTeX or MathJax with each page (half a
megabyte of script and fonts per page, or a folder beside it that a student's download loses) and
over nbconvert's default, MathJax from a CDN, which shows raw ``$\\beta_t$`` offline. A formula it
cannot convert stays as its LaTeX source in ``<code>``.

Student-written Markdown and HTML outputs are sanitized (``bleach``, which nbconvert depends on,
with an allow-list of text and table tags) before the MathML is put in, so a submission cannot put
a script into its own page.
"""
from __future__ import annotations

import base64
import functools
import html
import re
from dataclasses import dataclass

from . import cells

#: Display math ($$...$$ or \[...\]) first, then inline ($...$ or \(...\)); \$ is a dollar sign.
_MATH = re.compile(r"\$\$(?P<d1>.+?)\$\$|\\\[(?P<d2>.+?)\\\]|(?<![\\$])\$(?!\s)(?P<i1>[^$]+?)(?<![\s\\])\$"
                   r"|\\\((?P<i2>.+?)\\\)", re.S)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: At most this many characters of one stream output reach the page.
MAX_STREAM_CHARS = 20_000


@dataclass
class CellScore:
    """What the gradebook says of one graded cell."""
    kind: str                 # "test" or "written"
    max_score: float
    score: float | None       # None: a written answer awaiting a grader
    comment: str | None = None
    by_grader: bool = False   # the comment is a person's (manual), not the autograder's


#: What student-written HTML may keep (everything else is escaped as text).
ALLOWED_TAGS = {"a", "abbr", "b", "blockquote", "br", "code", "del", "div", "em", "h1", "h2", "h3",
                "h4", "h5", "h6", "hr", "i", "img", "li", "ol", "p", "pre", "s", "span", "strong",
                "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul"}
ALLOWED_ATTRIBUTES = {"a": ["href", "title"], "img": ["src", "alt", "width", "height"],
                      "*": ["class", "align"]}   # no id: a heading's id would hold a formula


def clean_html(text: str) -> str:
    """Sanitized HTML: the allowed tags kept, scripts, styles and event handlers out."""
    import bleach

    return bleach.clean(text, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES,
                        protocols={"http", "https", "data", "mailto"}, strip=True)


MATHML_NS = "http://www.w3.org/1998/Math/MathML"
#: The MathML that formulas may become; any other element (latex2mathml passes the text of
#: ``\\text{<script>...}`` and friends through as markup) turns into plain, escaped text.
MATHML_TAGS = {"math", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "msub", "msup",
               "msubsup", "mfrac", "msqrt", "mroot", "mover", "munder", "munderover", "mtable",
               "mtr", "mtd", "mstyle", "mpadded", "mphantom", "menclose", "mfenced", "merror",
               "mmultiscripts", "mprescripts", "none", "semantics"}
#: Presentation attributes only: no ``href`` (latex2mathml keeps ``\\href{javascript:...}``).
MATHML_ATTRIBUTES = {"display", "mathvariant", "stretchy", "fence", "separator", "separators",
                     "form", "lspace", "rspace", "minsize", "maxsize", "largeop", "movablelimits",
                     "accent", "accentunder", "linethickness", "columnalign", "rowalign",
                     "columnspacing", "rowspacing", "columnlines", "rowlines", "frame", "width",
                     "height", "depth", "displaystyle", "scriptlevel", "notation", "symmetric",
                     "open", "close", "align"}


def safe_mathml(markup: str) -> str | None:
    """``markup`` with only :data:`MATHML_TAGS` and :data:`MATHML_ATTRIBUTES` left, every other
    element as its escaped text; None when it is not well-formed XML."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(markup)
    except ET.ParseError:
        return None
    for el in root.iter():
        tag = el.tag.rpartition("}")[2] if isinstance(el.tag, str) else ""
        if tag not in MATHML_TAGS:
            text = "".join(el.itertext())
            for child in list(el):
                el.remove(child)
            el.tag, el.text = f"{{{MATHML_NS}}}mtext", text
            el.attrib.clear()
        for name in list(el.attrib):
            if name.rpartition("}")[2] not in MATHML_ATTRIBUTES:
                del el.attrib[name]
    ET.register_namespace("", MATHML_NS)
    return ET.tostring(root, encoding="unicode")


def latex_to_mathml(tex: str, display: bool) -> str:
    """MathML for ``tex`` (cleaned by :func:`safe_mathml`); the LaTeX source in ``<code>`` when it
    cannot be converted."""
    from latex2mathml.converter import convert

    try:
        markup = safe_mathml(convert(tex.strip(), display="block" if display else "inline"))
    except Exception:  # noqa: BLE001  (any LaTeX it does not know: shown as source, not lost)
        markup = None
    return markup if markup is not None else f'<code class="tex">{html.escape(tex)}</code>'


# Cached: the instructions (markdown) and the given code are the same in every student's notebook,
# and rendering them (math, sanitizing, highlighting) was the largest cost of a feedback page.
@functools.lru_cache(maxsize=8192)
def render_markdown(text: str) -> str:
    """Markdown (with LaTeX math) as sanitized HTML with the math as MathML."""
    from nbconvert.filters import markdown2html_mistune

    found: list[str] = []

    def hold(m: re.Match) -> str:
        display = bool(m.group("d1") or m.group("d2"))
        tex = next(g for g in (m.group("d1"), m.group("d2"), m.group("i1"), m.group("i2")) if g)
        found.append(latex_to_mathml(tex, display))
        return f"MATHPLACEHOLDER{len(found) - 1}X"

    body = clean_html(markdown2html_mistune(_MATH.sub(hold, text)))
    body = re.sub(r'<a class="anchor-link"[^>]*>.*?</a>', "", body)  # nbconvert's heading links
    return re.sub(r"MATHPLACEHOLDER(\d+)X", lambda m: found[int(m.group(1))], body)


def without_hidden_tests(src: str) -> str:
    """``src`` without the lines from a hidden-test begin marker to its end marker."""
    out, inside = [], False
    for ln in src.splitlines():
        if cells.BEGIN_HIDDEN_TESTS in ln:
            inside = True
        elif cells.END_HIDDEN_TESTS in ln:
            inside = False
        elif not inside:
            out.append(ln)
    return "\n".join(out).strip("\n")


@functools.lru_cache(maxsize=8192)
def _code(src: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return highlight(src, PythonLexer(), HtmlFormatter(cssclass="highlight"))


def _text(s) -> str:
    return "".join(s) if isinstance(s, list) else str(s or "")


def _output(out: dict) -> str:
    kind = out.get("output_type")
    if kind == "stream":
        text = _ANSI.sub("", _text(out.get("text")))
        if len(text) > MAX_STREAM_CHARS:
            text = text[:MAX_STREAM_CHARS] + f"\n... ({len(text) - MAX_STREAM_CHARS} more characters)"
        return f'<pre class="out {html.escape(out.get("name", "stdout"))}">{html.escape(text)}</pre>'
    if kind == "error":
        tb = _ANSI.sub("", "\n".join(out.get("traceback") or [])) or \
            f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"
        return f'<pre class="out error">{html.escape(tb)}</pre>'
    data = out.get("data") or {}
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            b64 = _text(data[mime]).replace("\n", "")
            return f'<img class="out" alt="figure" src="data:{mime};base64,{b64}">'
    if "image/svg+xml" in data:  # as an image: a script inside an SVG never runs there
        b64 = base64.b64encode(_text(data["image/svg+xml"]).encode()).decode()
        return f'<img class="out" alt="figure" src="data:image/svg+xml;base64,{b64}">'
    if "text/html" in data:
        return f'<div class="out html">{clean_html(_text(data["text/html"]))}</div>'
    if "text/latex" in data:
        return f'<div class="out">{render_markdown(_text(data["text/latex"]))}</div>'
    if "text/plain" in data:
        return f'<pre class="out">{html.escape(_ANSI.sub("", _text(data["text/plain"])))}</pre>'
    return ""


def _points(x: float) -> str:
    return f"{x:g} point" + ("" if x == 1 else "s")


def score_box(gid: str, sc: CellScore) -> str:
    """The box under a graded cell: its points, or 'awaiting grading', and the message."""
    name = html.escape(gid)
    if sc.kind == "written" and sc.score is None:
        return (f'<div class="score pending" data-grade-id="{name}"><b>{name}</b>: awaiting grading '
                f'({_points(sc.max_score)}); a grader reads this answer and the points appear here.'
                '</div>')
    full = sc.score >= sc.max_score > 0
    cls = "full" if full else ("part" if sc.score > 0 else "zero")
    note = ""
    if sc.comment:
        who = "Grader's comment" if sc.by_grader else "Why"
        note = f'<div class="comment"><b>{who}:</b> {html.escape(sc.comment)}</div>'
    return (f'<div class="score {cls}" data-grade-id="{name}"><b>{name}</b>: '
            f'<span class="pts">{sc.score:g} / {sc.max_score:g}</span>{note}</div>')


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:62rem;margin:2rem auto;
padding:0 1rem;color:#1b1b1b}
header{border-bottom:2px solid #ccc;margin-bottom:1rem} header h1{font-size:1.4rem;margin:.2rem 0}
.summary td{padding:.1rem .8rem .1rem 0}
.cell{margin:.6rem 0} .md{padding:0 .3rem} .code .highlight{background:#f6f8fa;border:1px solid #e1e4e8;
border-radius:4px;padding:.2rem .6rem;overflow-x:auto} .highlight pre{margin:.3rem 0}
pre.out{margin:.2rem 0 .2rem 1.2rem;white-space:pre-wrap;max-height:30rem;overflow:auto;font-size:13px}
pre.error{background:#fdecea;color:#8a1f11;padding:.3rem .5rem} pre.stderr{background:#fff8e1}
img.out{max-width:100%;margin-left:1.2rem}
.score{margin:.3rem 0 1rem 0;padding:.4rem .7rem;border-radius:4px;border-left:5px solid}
.score.full{background:#e8f5e9;border-color:#2e7d32} .score.part{background:#fff8e1;border-color:#f9a825}
.score.zero{background:#fdecea;border-color:#c62828} .score.pending{background:#e3f2fd;border-color:#1565c0}
.comment{margin-top:.2rem;white-space:pre-wrap} .why0{background:#fdecea;padding:.6rem;border-radius:4px}
math{font-size:1.15em;font-family:"STIX Two Math","Latin Modern Math","Cambria Math",math} math[display=block]{margin:.5rem 0}
"""


def render_page(title: str, student: str, nb: dict | None, scores: dict[str, CellScore],
                zero_reason: str | None = None) -> str:
    """The whole feedback page of one notebook (``nb`` None: it could not be graded)."""
    from pygments.formatters import HtmlFormatter

    auto = [s for s in scores.values() if s.kind == "test"]
    written = [s for s in scores.values() if s.kind == "written"]
    pending = sum(s.max_score for s in written if s.score is None)
    got = sum(s.score or 0.0 for s in scores.values())
    mx = sum(s.max_score for s in scores.values())
    rows = [("Autograded tests", f"{sum(s.score or 0 for s in auto):g} / {sum(s.max_score for s in auto):g}")]
    if written:
        done = sum(s.score for s in written if s.score is not None)
        rows.append(("Written answers", f"{done:g} / {sum(s.max_score for s in written):g}" if not pending
                     else f"awaiting grading ({_points(pending)})"
                     + (f"; {done:g} graded so far" if pending < sum(s.max_score for s in written) else "")))
    rows.append(("Total", f"{got:g} / {mx:g}" if not pending else f"pending (so far {got:g} of {mx:g})"))
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{html.escape(title)}: feedback for {html.escape(student)}</title>"
             f"<style>{CSS}{HtmlFormatter().get_style_defs('.highlight')}</style></head><body>",
             f"<header><h1>{html.escape(title)}</h1><p>Feedback for <b>{html.escape(student)}</b></p>"
             '<table class="summary">' + "".join(f"<tr><td>{k}</td><td id=\"{k.split()[0].lower()}\">"
                                                 f"{html.escape(v)}</td></tr>" for k, v in rows)
             + "</table></header>"]
    if nb is None:
        parts.append(f'<div class="why0"><b>This notebook scored 0:</b> '
                     f'{html.escape(zero_reason or "it could not be graded")}.</div>')
        parts.extend(score_box(g, s) for g, s in scores.items())
    else:
        for cell in nb.get("cells", []):
            gid = cells.grade_id(cell)
            src = cells.source(cell)
            if cell.get("cell_type") == "markdown":
                parts.append(f'<div class="cell md">{render_markdown(src)}</div>')
            elif cell.get("cell_type") == "code":
                src = without_hidden_tests(src)
                outs = "".join(_output(o) for o in cell.get("outputs", []))
                parts.append(f'<div class="cell code">{_code(src) if src.strip() else ""}{outs}</div>')
            if gid in scores and cells.nbgrader(cell).get("grade"):
                parts.append(score_box(gid, scores[gid]))
    parts.append("</body></html>\n")
    return "\n".join(parts)

"""What a student reads about a cell: an error as text, and its one-line summary.

Trusted: used by the cell runner, the grading worker and the result rows; never imported by a
student's kernel.

A hidden check fails with a message of several lines (``grading.hidden.CheckFailed``): what was
expected and what came back first, the diagnosis last, on a line ``Likely cause: ...``.
:func:`error_text` keeps all of it (the feedback page and the cell runner show it);
:func:`summary` is the one rule that shortens it for ``questions.csv``, the gradebook's comment
and the ``check`` table: the first line and the likely cause.
"""
from __future__ import annotations

import re

#: The mark of a check's diagnosis line (written by ``grading.hidden.expect`` and friends).
LIKELY_CAUSE = "Likely cause:"
#: What a test cell that wrote to stderr (and raised nothing) is told.
STDERR_MESSAGE = "stderr output"
#: The longest error text kept (a student's exception can carry a huge message).
MAX_ERROR_CHARS = 2000
#: The longest line of a summary.
MAX_LINE_CHARS = 300

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_text(ename: str, evalue: str) -> str:
    """``ename: evalue`` without terminal colours (no traceback, no source).

    A ``KeyboardInterrupt`` is how a cell interrupted at the per-cell timeout ends: it is reported
    as ``CellTimeoutError``.
    """
    if ename == "KeyboardInterrupt":
        ename, evalue = "CellTimeoutError", "interrupted at the per-cell time limit"
    text = f"{ename}: {evalue}" if evalue else str(ename)
    text = "\n".join(ln for ln in _ANSI.sub("", text).splitlines() if ln.strip())
    return text[:MAX_ERROR_CHARS]


def _cut(line: str) -> str:
    line = line.strip()
    return line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS - 3] + "..."


def summary(text: str | None) -> str:
    """The first non-blank line of ``text`` and, when a later line gives the likely cause, that
    line too (``"<first line> Likely cause: ..."``), each at most :data:`MAX_LINE_CHARS` long."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        return ""
    out = _cut(lines[0])
    cause = next((ln for ln in lines[1:] if ln.startswith(LIKELY_CAUSE)), None)
    return f"{out} {_cut(cause)}" if cause else out

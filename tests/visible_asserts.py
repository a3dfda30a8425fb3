"""Run the visible part of a test cell (what follows ``### END HIDDEN TESTS``) as a student sees it.

Issue 15, family 8: a visible assert that fails first must name the likely cause itself (through
``helpers.checks``), so the mistake tests run the visible part of a test cell on a notebook namespace
whose answer cell holds a known mistake and look for the cause in the message.
"""
from __future__ import annotations

from helpers.checks import VisibleTestFailed

END_HIDDEN = "### END HIDDEN TESTS\n"


def visible_part(src: str) -> str:
    """The visible asserts of a test cell (everything after the hidden block)."""
    head, sep, tail = src.partition(END_HIDDEN)
    assert sep, "the test cell has no hidden block"
    return tail


def visible_message(notebook, test_gid: str, replace: dict[str, str] | None = None, prelude: str = "") -> str | None:
    """Execute the visible part of test cell ``test_gid`` on ``notebook.namespace(replace)``; None when it
    passes, else the message of the :class:`VisibleTestFailed` it raised (other errors propagate)."""
    ns = notebook.namespace(replace)
    exec(prelude, ns)  # noqa: S102 - our own notebook's imports
    try:
        exec(compile(visible_part(notebook.cells[test_gid]), f"<visible {test_gid}>", "exec"), ns)  # noqa: S102
    except VisibleTestFailed as exc:
        return str(exc)
    return None

"""The layout of ``grading/``: every module says where it runs, kernel-side code imports nothing
trusted, the notebook markers are spelled in one module, and every cited document exists."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GRADING = REPO / "grading"
PROBE = REPO / "gradeprobe"
MODULES = sorted(GRADING.glob("*.py")) + [GRADING / "checks" / "__init__.py",
                                          GRADING / "reference" / "__init__.py"]
KERNEL_MODULES = sorted(PROBE.glob("*.py"))   # the only course code (besides helpers) in the kernel


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", MODULES + KERNEL_MODULES, ids=lambda p: module_name(p))
def test_every_module_says_where_it_runs(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    want = "Kernel side:" if path.parent == PROBE else "Trusted:"
    assert want in doc or module_name(path) == "grading", f"{path.name}: docstring lacks {want!r}"


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level:
            yield node, [node.module or ""]
        elif isinstance(node, ast.Import):
            yield node, [a.name for a in node.names]


def test_kernel_side_code_imports_nothing_trusted():
    """The probe never loads grading code while grading; only its local mode (the instructor's own
    runs, without GRADEPROBE_DIR) imports ``grading.verdict``, inside ``run``."""
    for path in KERNEL_MODULES:
        tree = ast.parse(path.read_text())
        local = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "run"
                 for n in ast.walk(f)}
        for node, names in _imports(tree):
            for name in names:
                if name == "grading" or name.startswith("grading."):
                    assert path.name == "__init__.py" and name == "grading.verdict" and id(node) in local, \
                        f"{path.name} imports {name}"


def test_the_markers_are_spelled_in_cells_only():
    from grading import cells

    markers = (cells.BEGIN_SOLUTION, cells.END_SOLUTION, cells.BEGIN_HIDDEN_TESTS,
               cells.END_HIDDEN_TESTS, cells.TEXT_STUB)
    for path in GRADING.rglob("*.py"):
        if path.name != "cells.py":
            text = path.read_text()
            assert not [m for m in markers if m in text], path


def test_every_cited_document_is_in_the_repository():
    cited = set()
    for path in [*GRADING.rglob("*.py"), *REPO.glob("*.md"), *(REPO / "docs").glob("*.md")]:
        cited |= {(path, m) for m in re.findall(r"(?<![\w/.])((?:[\w.-]+/)*[\w.-]+\.md)\b",
                                                 path.read_text())}
    assert cited
    missing = sorted(f"{p.relative_to(REPO)} cites {m}" for p, m in cited
                     if not (REPO / m).is_file() and not (p.parent / m).is_file())
    assert missing == []

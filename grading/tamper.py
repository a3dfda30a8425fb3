"""Static tamper scan of a submission.

Trusted: runs in the grader's own process, on the submitted JSON (the code is parsed, never run).

Student-authored code is every code cell that is not a released locked cell left unchanged:
answer cells, added cells and edited given cells (locked cells are restored by nbgrader anyway,
but a cell whose metadata was stripped is scanned like an added one). Each cell is parsed with
``ast`` (IPython magics and shell lines are handled separately); a cell that does not parse is
scanned with regular expressions. A finding is a :class:`Flag` naming the pattern, the cell and
the line; the autograder then sets the notebook's autograded points to 0 and marks it for review.

What is flagged (each is a known way to game a notebook autograder):

- reaching the grader: ``grading``, ``sys.modules``, ``importlib``, ``__import__``, ``builtins`` /
  ``__builtins__``, ``get_ipython``, ``input_transformers``, frame inspection
  (``inspect.currentframe``, ``sys._getframe``, ``f_back``/``f_globals``), ``gc.``, ``ctypes``;
- patching what the tests use: assignment to an attribute of ``torch``/``np``/``numpy``/``math``/
  ``helpers`` (or their ``nn``/``F`` aliases), ``setattr(<module>, ...)``;
- objects that claim to pass: ``__eq__``, ``__ne__``, ``__bool__``, ``__torch_function__``,
  ``__array_function__``, ``__array_ufunc__``, ``__instancecheck__``, ``__class__`` assignment;
- running hidden code: ``exec(``, ``eval(``, ``compile(``, ``os.system``, ``os.popen``,
  ``subprocess``, shell escapes (``!cmd``, ``%%bash``, ``%run``), ``open(..., 'w')`` and other
  file writes.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from . import cells

PATCHABLE_MODULES = {"torch", "np", "numpy", "math", "helpers", "nn", "F", "functional", "random",
                     "scipy", "sys", "os", "builtins", "grading", "hidden", "_hidden", "unittest",
                     "pytest", "warnings"}
BANNED_IMPORTS = {"grading": "grading", "importlib": "importlib", "builtins": "builtins",
                  "ctypes": "ctypes", "gc": "gc.", "subprocess": "subprocess", "inspect": "inspect",
                  "sys": None, "os": None, "pty": "subprocess", "socket": "socket",
                  "atexit": "atexit", "signal": "signal", "threading": "threading",
                  "multiprocessing": "multiprocessing", "IPython": "get_ipython",
                  "_thread": "threading", "marshal": "exec(", "types": None, "code": "exec(",
                  "runpy": "exec(", "sqlite3": "file write", "shutil": "file write"}
BANNED_NAMES = {"__builtins__": "builtins/__builtins__", "get_ipython": "get_ipython",
                "__import__": "__import__", "input_transformers": "input_transformers",
                "globals": None, "_getframe": "sys._getframe", "currentframe": "inspect.currentframe",
                "exec": "exec(", "eval": "eval(", "compile": "compile(", "setattr": None,
                "__loader__": "importlib", "__spec__": "importlib"}
DUNDERS = {"__eq__", "__ne__", "__bool__", "__torch_function__", "__torch_dispatch__",
           "__array_function__", "__array_ufunc__", "__instancecheck__", "__subclasscheck__",
           "__getattribute__", "__globals__", "__code__", "__subclasses__", "__closure__",
           "__class__", "__dict__", "__reduce__", "__del__", "__hash__", "__abs__", "__lt__",
           "__le__", "__gt__", "__ge__", "__float__", "__index__", "__len__", "__iter__"}
# dunders that a correct answer (an nn.Module, a dataclass) may legitimately define
ALLOWED_DEFS = {"__init__", "__call__", "__repr__", "__len__", "__iter__", "__getitem__"}
FRAME_ATTRS = {"f_back", "f_globals", "f_locals", "f_builtins", "tb_frame", "gi_frame", "cr_frame"}
WRITE_ATTRS = {"write_text", "write_bytes", "unlink", "rmdir", "rename", "chmod",
               "symlink_to", "touch", "tofile", "savetxt", "savez", "savez_compressed"}
#: ``<module>.<function>`` calls that write files
WRITE_CALLS = {("torch", "save"), ("np", "save"), ("numpy", "save"), ("os", "replace"),
               ("shutil", "copy"), ("shutil", "move"), ("pickle", "dump")}
OS_CALLS = {"system", "popen", "execv", "execve", "execl", "execvp", "spawnv", "spawnl", "fork",
            "kill", "remove", "unlink", "rmdir", "rename", "replace", "chdir", "putenv",
            "removedirs", "symlink", "link", "chmod", "chown", "_exit", "environ"}


@dataclass(frozen=True)
class Flag:
    cell: str       # grade_id of the cell, or "cell <index>"
    pattern: str    # which tampering pattern
    line: int       # 1-based line in the cell
    code: str       # the offending line (stripped, shortened)

    def __str__(self) -> str:
        return f"tamper: {self.pattern} in {self.cell} line {self.line}: {self.code}"


def student_cells(nb: dict, release_nb: dict | None) -> list[tuple[str, str]]:
    """``(cell label, source)`` of the code cells a student wrote or changed."""
    rel_cells = (release_nb or {}).get("cells", [])
    locked = {cells.grade_id(c) for c in rel_cells if cells.is_locked(c)}
    released_code = {cells.source(c).strip() for c in rel_cells if c.get("cell_type") == "code"}
    out = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        gid = cells.grade_id(cell)
        src = cells.source(cell)
        if gid in locked:
            continue  # restored from the gradebook before execution
        if not cells.is_answer(cell) and src.strip() in released_code:
            continue  # a released cell left as it was
        out.append((gid or f"cell {i}", src))
    return out


_MAGIC = re.compile(r"^\s*(!|%%?)(\w*)")
_SAFE_MAGICS = {"matplotlib", "time", "timeit", "config", "pinfo", "who", "whos", "precision",
                "pprint", "autoreload", "load_ext"}
_REGEXES = [
    (r"\bgrading\b", "grading"), (r"\bsys\s*\.\s*modules\b", "sys.modules"),
    (r"\bimportlib\b", "importlib"), (r"\b__builtins__\b|\bbuiltins\b", "builtins/__builtins__"),
    (r"\bget_ipython\b", "get_ipython"), (r"\binput_transformers\b", "input_transformers"),
    (r"\bctypes\b", "ctypes"), (r"\bgc\s*\.", "gc."), (r"\bcurrentframe\b", "inspect.currentframe"),
    (r"\b_getframe\b", "sys._getframe"), (r"\bsetattr\s*\(", "setattr("),
    (r"\b(?:torch|np|numpy|math|helpers|nn|F)(?:\s*\.\s*\w+)+\s*(?:[-+*/@%|&^]|//|\*\*)?=(?!=)",
     "monkeypatch"),
    (r"__(?:eq|ne|bool|torch_function|array_function|array_ufunc|instancecheck)__", "__eq__"),
    (r"(?<![\w.])(?:exec|eval|compile)\s*\(", "exec(/eval(/compile("), (r"\b__import__\b", "__import__"),
    (r"\bos\s*\.\s*(?:system|popen)\b", "os.system"), (r"\bsubprocess\b", "subprocess"),
    (r"\bopen\s*\([^)]*['\"][rbt]*[wax+]", "open(... 'w')"),
]


def _line(src: str, lineno: int) -> str:
    lines = src.splitlines()
    text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
    return text[:120]


class _Visitor(ast.NodeVisitor):
    def __init__(self, label: str, src: str, module_names: set[str]):
        self.label, self.src, self.flags = label, src, []
        self.modules = set(module_names)

    def flag(self, node, pattern):
        ln = getattr(node, "lineno", 1)
        self.flags.append(Flag(self.label, pattern, ln, _line(self.src, ln)))

    # imports -------------------------------------------------------------------------------
    def visit_Import(self, node):
        for a in node.names:
            root = a.name.split(".")[0]
            self.modules.add((a.asname or a.name).split(".")[0])
            pat = BANNED_IMPORTS.get(root)
            if pat:
                self.flag(node, pat)
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        root = (node.module or "").split(".")[0]
        if node.level:
            self.flag(node, "relative import")
        pat = BANNED_IMPORTS.get(root)
        if pat:
            self.flag(node, pat)
        names = {a.name for a in node.names}
        if root == "sys" and names & {"modules", "_getframe", "meta_path", "path_hooks"}:
            self.flag(node, "sys.modules")
        if root == "os" and names & OS_CALLS:
            self.flag(node, "os.system")
        if root in ("inspect",):
            self.flag(node, "inspect.currentframe")
        for a in node.names:
            if a.name in BANNED_NAMES and BANNED_NAMES[a.name]:
                self.flag(node, BANNED_NAMES[a.name])
        self.generic_visit(node)

    # names and attributes -----------------------------------------------------------------
    def visit_Name(self, node):
        pat = BANNED_NAMES.get(node.id)
        if pat:
            self.flag(node, pat)
        elif node.id in DUNDERS:
            self.flag(node, node.id)
        elif node.id == "grading":
            self.flag(node, "grading")
        self.generic_visit(node)

    def visit_Attribute(self, node):
        base = node.value
        root = base
        while isinstance(root, ast.Attribute):
            root = root.value
        rootname = root.id if isinstance(root, ast.Name) else None
        if rootname == "sys" and node.attr in ("modules", "meta_path", "path_hooks", "settrace",
                                               "setprofile", "_getframe", "stdout", "stderr"):
            self.flag(node, "sys._getframe" if node.attr == "_getframe" else "sys.modules")
        if rootname == "gc":
            self.flag(node, "gc.")
        if rootname == "inspect" and node.attr in ("currentframe", "stack", "getouterframes",
                                                   "getmodule"):
            self.flag(node, "inspect.currentframe")
        if rootname == "os" and node.attr in OS_CALLS:
            self.flag(node, "os.system")
        if node.attr in FRAME_ATTRS:
            self.flag(node, "frame access")
        if node.attr in DUNDERS:
            self.flag(node, node.attr)
        if "transformers" in node.attr or node.attr in ("showtraceback", "run_cell", "events",
                                                         "user_ns", "user_global_ns"):
            self.flag(node, "input_transformers" if "transformers" in node.attr else "get_ipython")
        if rootname == "grading" or node.attr == "hidden":
            self.flag(node, "grading")
        if isinstance(node.ctx, (ast.Store, ast.Del)) and rootname in (self.modules |
                                                                        PATCHABLE_MODULES):
            self.flag(node, f"assignment to {rootname}.* (monkeypatch)")
        if node.attr in WRITE_ATTRS and isinstance(node.ctx, ast.Load):
            self.flag(node, "file write")
        self.generic_visit(node)

    # definitions and calls ----------------------------------------------------------------
    def visit_FunctionDef(self, node):
        if node.name in DUNDERS and node.name not in ALLOWED_DEFS:
            self.flag(node, node.name)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and \
                (f.value.id, f.attr) in WRITE_CALLS:
            self.flag(node, "file write")
        if isinstance(f, ast.Name):
            if f.id == "setattr" or f.id == "delattr":
                target = node.args[0] if node.args else None
                troot = target
                while isinstance(troot, ast.Attribute):
                    troot = troot.value
                if isinstance(troot, ast.Name) and troot.id in (self.modules | PATCHABLE_MODULES):
                    self.flag(node, "setattr( on a module")
                elif isinstance(troot, (ast.Call, ast.Subscript)) or target is None:
                    # setattr(type(x), ...), setattr(sys.modules[...], ...), setattr(*args)
                    self.flag(node, "setattr( on a module")
                # setattr(self, name, value) on the student's own objects is fine
            if f.id == "open":
                mode = None
                if len(node.args) >= 2:
                    mode = node.args[1]
                for kw in node.keywords:
                    if kw.arg == "mode":
                        mode = kw.value
                if mode is not None and not (isinstance(mode, ast.Constant)
                                             and isinstance(mode.value, str)
                                             and not set(mode.value) & set("wax+")):
                    self.flag(node, "open(... 'w')")
            if f.id in ("vars", "locals", "globals"):
                self.flag(node, f"{f.id}()")
        self.generic_visit(node)

    def visit_Subscript(self, node):
        if isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Call) and \
                isinstance(node.value.func, ast.Name) and node.value.func.id in ("globals", "vars"):
            self.flag(node, "globals() assignment")
        self.generic_visit(node)


def scan_source(label: str, src: str, module_names: set[str] = frozenset()) -> list[Flag]:
    """Flags for one cell's source."""
    flags: list[Flag] = []
    code_lines = []
    for ln, line in enumerate(src.splitlines(), 1):
        m = _MAGIC.match(line)
        if m:
            kind, name = m.group(1), m.group(2)
            if kind == "!" or kind == "%%" or name not in _SAFE_MAGICS:
                flags.append(Flag(label, f"IPython magic/shell {kind}{name}", ln, line.strip()[:120]))
            code_lines.append("")
        else:
            code_lines.append(line)
    code = "\n".join(code_lines)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        for ln, line in enumerate(code.splitlines(), 1):
            stripped = line.split("#", 1)[0]
            for rx, pat in _REGEXES:
                if re.search(rx, stripped):
                    flags.append(Flag(label, pat, ln, line.strip()[:120]))
        return flags
    v = _Visitor(label, code, module_names)
    v.visit(tree)
    return sorted(set(flags + v.flags), key=lambda f: (f.line, f.pattern))


def scan_notebook(nb: dict, release_nb: dict | None = None) -> list[Flag]:
    """Flags for every student-authored code cell of a (sanitized) submission."""
    authored = student_cells(nb, release_nb)
    modules = set()
    for _, src in authored:
        for m in re.finditer(r"^\s*import\s+([\w.]+)(?:\s+as\s+(\w+))?", src, re.M):
            modules.add(m.group(2) or m.group(1).split(".")[0])
    flags = []
    for label, src in authored:
        flags.extend(scan_source(label, src, modules))
    return flags

"""``python -m grading release``: ``solutions/NN/NN.ipynb`` -> ``notebooks/NN/NN.ipynb``.

nbgrader's ``generate_assignment`` runs in a throw-away course folder with a throw-away gradebook;
only the student notebooks (normalised so that the same input gives byte-identical output) and the
assignment's other files are copied back, and files of ``notebooks/<a>`` that the release does
not make are removed. ``--check`` regenerates in memory and names every stale, missing or extra
file of ``notebooks/``.

A released notebook that holds work (outputs, or an answer cell whose placeholder was replaced:
someone worked in ``notebooks/`` rather than in the student pack) is never overwritten or removed
without ``--force``: the release stops before writing anything and names each such file.

Trusted: runs in the instructor's process.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from . import cells, course

log = logging.getLogger("grading.release")

#: Text that must never reach a student. A hit in a released notebook is a release error.
FORBIDDEN = (cells.BEGIN_SOLUTION, cells.END_SOLUTION, cells.BEGIN_HIDDEN_TESTS,
             cells.END_HIDDEN_TESTS, "Rubric", "Model answer", "grading.hidden",
             "MARK SCHEME")  # nbgrader's BEGIN/END MARK SCHEME
#: Folders of ``notebooks/<a>`` that are never the release's (Jupyter's and Python's caches).
IGNORED_PARTS = (".ipynb_checkpoints", "__pycache__")


class ReleaseError(RuntimeError):
    """nbgrader failed, or a released notebook would leak solutions or hidden tests."""


def normalise_notebook(nb: dict) -> dict:
    """Make a released notebook stable: no outputs or execution counts, sorted keys, fixed metadata."""
    nb = json.loads(json.dumps(nb))
    keep_meta = {k: nb.get("metadata", {})[k] for k in ("kernelspec", "language_info")
                 if k in nb.get("metadata", {})}
    if "language_info" in keep_meta:  # the authoring Python's patch version is noise
        keep_meta["language_info"] = {k: v for k, v in keep_meta["language_info"].items()
                                      if k in ("name", "file_extension", "mimetype",
                                               "pygments_lexer", "codemirror_mode",
                                               "nbconvert_exporter")}
    nb["metadata"] = keep_meta
    nb["nbformat"], nb["nbformat_minor"] = 4, 5
    for i, cell in enumerate(nb["cells"]):
        cell.setdefault("id", f"cell-{i}")
        meta = cell.get("metadata", {})
        for noisy in ("execution", "collapsed", "scrolled", "ExecuteTime", "jupyter", "vscode",
                      "colab", "outputId"):
            meta.pop(noisy, None)
        cell["metadata"] = meta
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.pop("attachments", None) if not cell.get("attachments") else None
    return nb


def dumps_notebook(nb: dict) -> str:
    """The canonical text of a notebook (what nbformat writes: indent 1, sorted keys, newline)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def leaks(text: str) -> list[str]:
    """The forbidden markers found in a released notebook's text."""
    return [m for m in FORBIDDEN if m in text]


def build_release(assignment: str, root: Path = course.REPO_ROOT) -> dict[str, bytes]:
    """Generate the student version of one assignment; returns ``{relative path: bytes}``.

    Paths are relative to the assignment's release folder (``notebooks/<assignment>``).
    """
    src = Path(root) / course.SOURCE_DIR / assignment
    if not src.is_dir():
        raise ReleaseError(f"no source folder {src}")
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="release-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(src, tmp / course.SOURCE_DIR / assignment,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc"))
        api = course.make_api(tmp, db_url=f"sqlite:///{tmp / 'throwaway.db'}")
        with course.quiet_nbgrader():
            res = api.generate_assignment(assignment, force=True, create=True)
        if not res["success"]:
            raise ReleaseError(f"nbgrader generate_assignment {assignment} failed:\n"
                               f"{res.get('error') or res.get('log')}")
        rel = tmp / course.RELEASE_DIR / assignment
        for nb_path in sorted(rel.glob("*.ipynb")):
            nb = normalise_notebook(course.read_json(nb_path))
            text = dumps_notebook(nb)
            bad = leaks(text)
            if bad:
                raise ReleaseError(f"{assignment}/{nb_path.name}: released text contains "
                                   f"{', '.join(map(repr, bad))}; put it inside solution or "
                                   "hidden-test delimiters of a graded cell")
            out[nb_path.name] = text.encode("utf-8")
    for f in sorted(src.rglob("*")):
        rel_path = f.relative_to(src)
        if (f.is_file() and f.suffix not in (".ipynb", ".pyc", ".db")
                and not any(p in IGNORED_PARTS for p in rel_path.parts)):
            out[rel_path.as_posix()] = f.read_bytes()
    return out


def work_in(path: Path) -> str | None:
    """What work a released notebook on disk holds (outputs, typed answers), or None."""
    if path.suffix != ".ipynb" or not path.is_file():
        return None
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        nb_cells = nb["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return "it is not a readable notebook"
    ran = sum(1 for c in nb_cells if c.get("cell_type") == "code"
              and (c.get("outputs") or c.get("execution_count") is not None))
    typed = [cells.grade_id(c) or "?" for c in nb_cells if cells.nbgrader(c).get("solution")
             and ("raise NotImplementedError()" not in cells.source(c) if c.get("cell_type") == "code"
                  else cells.TEXT_STUB not in cells.source(c))]
    found = ([f"answers typed into {', '.join(typed[:4])}{' ...' if len(typed) > 4 else ''}"] if typed
             else []) + ([f"outputs of {ran} code cell(s)"] if ran else [])
    return "; ".join(found) or None


def extra_files(dest: Path, files: dict[str, bytes]) -> list[Path]:
    """The files under ``dest`` (an assignment's release folder) that are not in ``files``."""
    if not dest.is_dir():
        return []
    return [f for f in sorted(dest.rglob("*"))
            if f.is_file() and f.relative_to(dest).as_posix() not in files
            and not any(p in IGNORED_PARTS for p in f.relative_to(dest).parts)]


def release(assignments: list[str] | None = None, root: Path = course.REPO_ROOT,
            check: bool = False, force: bool = False) -> list[str]:
    """Release (or with ``check`` compare) the given assignments; returns the problems found.

    Without ``check`` the files are written, extra files removed, and the list names what changed
    (``"updated ..."``, ``"removed ..."``, ``"overwrote ... (it held ...)"`` with ``force``).
    A released notebook that holds work raises :class:`ReleaseError` before anything is written,
    unless ``force``.
    """
    root = Path(root)
    problems, changed = [], []
    built = {a: build_release(a, root) for a in course.resolve_assignments(assignments, root)}
    held = {}
    for a, files in built.items():
        dest = root / course.RELEASE_DIR / a
        for target in [dest / n for n in files] + extra_files(dest, files):
            if target.is_file() and target.read_bytes() != files.get(target.relative_to(dest).as_posix()):
                work = work_in(target)
                if work:
                    held[target] = work
    if held and not check and not force:
        raise ReleaseError("these released notebooks hold work that the release would overwrite:\n"
                           + "\n".join(f"  {t.relative_to(root)}: {w}" for t, w in held.items())
                           + "\nstudents work in the pack (python -m grading pack), not in "
                           f"{course.RELEASE_DIR}/; move the files away, or run the release again "
                           "with --force to overwrite them")
    for a, files in built.items():
        dest = root / course.RELEASE_DIR / a
        for name, data in files.items():
            target = dest / name
            if check:
                if not target.is_file():
                    problems.append(f"missing: {target.relative_to(root)}")
                elif target.read_bytes() != data:
                    problems.append(f"stale: {target.relative_to(root)}")
            elif not target.is_file() or target.read_bytes() != data:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                changed.append(f"overwrote {target.relative_to(root)} (it held {held[target]})"
                               if target in held else f"updated {target.relative_to(root)}")
        for f in extra_files(dest, files):
            if check:
                problems.append(f"extra (not in {course.SOURCE_DIR}/): {f.relative_to(root)}")
            else:
                f.unlink()
                changed.append(f"removed {f.relative_to(root)}"
                               + (f" (it held {held[f]})" if f in held else ""))
    return problems if check else changed

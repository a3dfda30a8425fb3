"""``python -m grading pack``: the folder (or zip) handed to students, and nothing else.

Trusted: runs in the instructor's process; what it writes is what students get.

The pack holds the released notebooks (``notebooks/NN_name/``), ``helpers/``, and the files of
``grading/pack_files/``: a students' ``README.md`` (two commands: set up, open JupyterLab), a
``requirements.txt`` without nbgrader or any grading code, a ``pyproject.toml`` that installs
``helpers`` so every notebook imports it, and ``check.py`` (the students' run of the visible
tests, with only Jupyter's own libraries). Solutions, hidden tests, model answers, rubrics,
reference implementations and checks live in ``solutions/`` and ``grading/`` and are never
copied; every file of the pack is scanned for them before it is written.

The notebooks are taken from ``notebooks/`` as committed (``python -m grading release`` writes
them, ``release --check`` in CI keeps them current); one that was run (outputs) is refused.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import course
from .release import FORBIDDEN, dumps_notebook, normalise_notebook

PACK_FILES = Path(__file__).resolve().parent / "pack_files"
DEFAULT_OUT = Path("build") / "student-pack"
#: Files of ``pack_files/`` copied to the top of the pack, as they are.
TOP_FILES = ("README.md", "requirements.txt", "pyproject.toml", "check.py")
#: Never copied from ``notebooks/`` or ``helpers/``: caches, data, checkpoints, gradebooks.
SKIP_PARTS = {".ipynb_checkpoints", "__pycache__", "checkpoints", "data", ".pytest_cache"}
SKIP_SUFFIXES = {".pyc", ".db", ".pt", ".pth", ".npz"}
#: The grading package's name used as code (``import grading``, ``grading.hidden``, ``grading/``):
#: the English word "grading" in a notebook's text is fine.
GRADING_CODE = re.compile(r"\b(?:import|from)\s+grading\b|(?<![\w-])grading[./\\]\w")
#: Packages that belong to the instructors' environment, never to the students'.
INSTRUCTOR_PACKAGES = ("nbgrader", "nbval", "pytest", "diffusion-course", "playwright")
#: Top-level names a pack may hold; anything else in an existing ``--out`` folder is not ours.
PACK_NAMES = set(TOP_FILES) | {"notebooks", "helpers", ".venv", "data", "checkpoints", "build",
                               "diffusion_course_student.egg-info"}


class PackError(RuntimeError):
    """The pack cannot be made: a file would leak instructor material, or --out is not a pack."""


@dataclass
class Pack:
    """What ``build_pack`` wrote: the folder, its files (relative paths) and their total size."""
    folder: Path
    files: list[str]
    size: int
    zip_path: Path | None = None
    zip_size: int = 0


def leaks(text: str) -> list[str]:
    """The instructor-only markers in a text: release's markers, and the grading package as code."""
    found = [m for m in FORBIDDEN if m in text]
    found += sorted({m.group(0).strip() for m in GRADING_CODE.finditer(text)})
    return found


def requirement_names(text: str) -> list[str]:
    """The project names of a requirements file's lines (``torch==2.14.1`` -> ``torch``)."""
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        names.append(re.split(r"[<>=!~;\[ @]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def collect(root: Path = course.REPO_ROOT) -> dict[str, bytes]:
    """Every file of the pack, ``{relative path: bytes}``, checked; raises ``PackError``."""
    root = Path(root)
    files: dict[str, bytes] = {}
    for name in TOP_FILES:
        files[name] = (PACK_FILES / name).read_bytes()
    bad = [n for n in requirement_names(files["requirements.txt"].decode())
           if n in INSTRUCTOR_PACKAGES]
    if bad:
        raise PackError(f"pack_files/requirements.txt names instructor packages {bad}")
    assignments = course.list_assignments(root, course.RELEASE_DIR)
    if not assignments:
        raise PackError(f"no released notebooks in {root / course.RELEASE_DIR}: run "
                        "`python -m grading release` first")
    for folder in ("helpers", course.RELEASE_DIR):
        base = root / folder
        if not base.is_dir():
            raise PackError(f"no folder {base}")
        for f in sorted(base.rglob("*")):
            rel = f.relative_to(root)
            if not f.is_file() or SKIP_PARTS & set(rel.parts[1:]) or f.suffix in SKIP_SUFFIXES:
                continue
            if folder == course.RELEASE_DIR and rel.parts[1] not in assignments:
                continue  # a stray file beside the assignment folders
            data = f.read_bytes()
            if f.suffix == ".ipynb":
                nb = json.loads(data)
                if dumps_notebook(normalise_notebook(nb)) != dumps_notebook(nb):
                    raise PackError(f"{rel} has outputs or metadata of a run: restore it with "
                                    "`python -m grading release`")
            files[rel.as_posix()] = data
    for rel, data in files.items():
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        found = leaks(text)
        if found:
            raise PackError(f"{rel} contains {', '.join(map(repr, found))}: instructor material "
                            "must not reach students")
    return files


def _is_pack(folder: Path) -> bool:
    return all(p.name in PACK_NAMES for p in folder.iterdir())


def write_zip(folder: Path, files: dict[str, bytes], zip_path: Path) -> None:
    """A reproducible zip: sorted entries under ``<folder name>/``, fixed timestamps."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in sorted(files):
            info = zipfile.ZipInfo(f"{folder.name}/{rel}", date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if rel == "check.py" else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[rel])


def build_pack(out: Path | str = DEFAULT_OUT, root: Path = course.REPO_ROOT,
               make_zip: bool = False) -> Pack:
    """Write the students' pack to ``out`` (replacing an earlier pack there) and, with
    ``make_zip``, ``out.zip`` beside it. Nothing is written when a file fails the scan."""
    out = Path(out).resolve()
    files = collect(root)
    if out.exists():
        if not out.is_dir() or not _is_pack(out):
            raise PackError(f"{out} exists and is not a student pack; give another --out")
        with tempfile.TemporaryDirectory(dir=out.parent) as keep:  # a student's venv survives
            kept = [p for p in (".venv", "data", "checkpoints") if (out / p).exists()]
            for p in kept:
                (out / p).rename(Path(keep) / p)
            shutil.rmtree(out)
            out.mkdir(parents=True)
            for p in kept:
                (Path(keep) / p).rename(out / p)
    out.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (out / "check.py").chmod(0o755)
    pack = Pack(folder=out, files=sorted(files), size=sum(len(d) for d in files.values()))
    if make_zip:
        pack.zip_path = out.with_name(out.name + ".zip")
        write_zip(out, files, pack.zip_path)
        pack.zip_size = pack.zip_path.stat().st_size
    return pack


def pack_cli(args) -> int:
    """``python -m grading pack [--out DIR] [--zip]``."""
    try:
        pack = build_pack(args.out, root=Path(args.root), make_zip=args.zip)
    except PackError as exc:
        print(f"pack failed: {exc}", file=sys.stderr)
        return 2
    notebooks = [f for f in pack.files if f.endswith(".ipynb")]
    print(f"{pack.folder}: {len(pack.files)} files ({len(notebooks)} notebooks), "
          f"{pack.size / 1e6:.2f} MB")
    if pack.zip_path:
        print(f"{pack.zip_path}: {pack.zip_size / 1e6:.2f} MB")
    return 0

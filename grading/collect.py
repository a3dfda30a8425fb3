"""Find the submissions in a folder or a zip: ``<student>/<assignment>/<nb>.ipynb`` trees and LMS
downloads whose file names carry the student id.

Trusted: runs in the grader's own process (it reads the files, never runs them).

Recognised LMS file names (the notebook's own name comes last)::

    Brightspace  12345-67890 - Jane Doe - Mar 3, 2025 1015 AM - 01_forward_process.ipynb
                 (student id: "12345-67890", everything before the first " - ")
    Canvas       doejane_12345_67890_01_forward_process.ipynb   (student id: 12345, the user id)
                 doejane_LATE_12345_67890_01_forward_process.ipynb
    Moodle       Jane Doe_12345_assignsubmission_file_01_forward_process.ipynb   (student id: 12345)
                 (also the folder form "Jane Doe_12345_assignsubmission_file_/<nb>.ipynb")

The assignment comes from the tree, from the notebook's name (``01_forward_process`` or a renamed
``01_forward_process (1).ipynb``) or from ``--assignment``.

What an LMS download says about the student is kept (:attr:`Submission.lms`): which LMS, the id
in the file name, the name or login beside it, and Canvas's ``LATE`` mark; ``grading.lms`` writes
the grade-import files with these ids. Every other file is accounted for in ``skipped`` with the
reason it was not graded (:class:`Skipped`: a PDF, a folder whose name is no assignment, an empty
folder, a link), so that ``autograde`` can list it in its ``unmatched.csv`` and on the terminal.
"""
from __future__ import annotations

import difflib
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

BRIGHTSPACE = re.compile(r"^(?P<sid>\d+(?:-\d+)?) - (?P<name>.+?) - (?P<date>.+?) - (?P<file>.+)$")
CANVAS = re.compile(r"^(?P<login>[A-Za-z0-9.\-]+)_(?:LATE_)?(?P<sid>\d+)_(?P<subid>\d+)_(?P<file>.+)$")
MOODLE = re.compile(r"^(?P<name>.+?)_(?P<sid>\d+)_assignsubmission_(?:file|onlinetext)_(?P<file>.*)$")
SAFE_ID = re.compile(r"[^A-Za-z0-9_.@-]+")


@dataclass
class Submission:
    student: str
    assignment: str | None
    files: dict[str, bytes] = field(default_factory=dict)   # notebook name -> bytes
    origin: list[str] = field(default_factory=list)          # where the files came from
    problems: list[str] = field(default_factory=list)
    #: what the LMS download said: {"lms": "canvas"|"brightspace"|"moodle", "id", "name", "late"}
    lms: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.student, self.assignment or "?")


class Skipped(str):
    """``"<path>: <reason>"`` for a file or folder under SUBMISSIONS that is not graded."""

    def __new__(cls, path: str, reason: str):
        obj = super().__new__(cls, f"{path}: {reason}")
        obj.path, obj.reason = path, reason
        return obj


def safe_id(text: str) -> str:
    """A student id usable as a folder name (nbgrader puts it in paths)."""
    s = SAFE_ID.sub("_", text.strip()).strip("._")
    return s or "unknown"


def parse_lms_name(name: str) -> tuple[str, str] | None:
    """``(student id, original file name)`` from an LMS download's file name, or None."""
    parsed = parse_lms(name)
    return None if parsed is None else (safe_id(parsed["id"]), parsed["file"])


def parse_lms(name: str) -> dict | None:
    """What an LMS download's file name says: ``{"lms", "id", "name", "late", "file"}``, or None.

    ``id`` is the raw id of the file name (Canvas: the user id, which its gradebook CSV calls
    ``ID``; Moodle: the participant number of its grading worksheet's ``Identifier``;
    Brightspace: the numbers before the name)."""
    for lms, rx in (("brightspace", BRIGHTSPACE), ("moodle", MOODLE), ("canvas", CANVAS)):
        m = rx.match(name)
        if m:
            who = m.group("login") if lms == "canvas" else m.group("name")
            return {"lms": lms, "id": m.group("sid"), "name": who,
                    "late": lms == "canvas" and "_LATE_" in name[:m.start("sid")],
                    "file": m.group("file")}
    return None


def near_miss(name: str, known: list[str]) -> str:
    """`` (did you mean X?)`` for a misspelled assignment folder, or ``""``."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5) or \
        [a for a in known if a.startswith(name[:3]) and name[:2].isdigit()][:1]
    return f" (did you mean {close[0]}?)" if close else ""


def guess_assignment(filename: str, known: list[str]) -> str | None:
    """The assignment whose id starts the file name (``01_forward_process (1).ipynb`` too)."""
    stem = Path(filename).stem
    for a in sorted(known, key=len, reverse=True):
        if stem == a or stem.startswith(a):
            return a
    m = re.match(r"^(\d\d)[_\- ]", stem)
    if m:
        hits = [a for a in known if a.startswith(m.group(1) + "_")]
        if len(hits) == 1:
            return hits[0]
    return None


def _extract_zip(path: Path, dest: Path, skipped: list | None = None, label: str = "") -> Path:
    """Extract only notebooks (and nested zips), refusing absolute paths and ``..``; each entry
    left out is added to ``skipped`` (``label`` names the zip there)."""
    skipped = [] if skipped is None else skipped
    with zipfile.ZipFile(path) as zf:
        total = 0
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or name.startswith("__MACOSX"):
                continue
            parts = Path(name).parts
            if Path(name).is_absolute() or ".." in parts:
                skipped.append(Skipped(f"{label or path.name}:{name}", "a path outside the zip"))
                continue
            if not name.lower().endswith((".ipynb", ".zip")):
                skipped.append(Skipped(f"{label or path.name}:{name}", _not_notebook(name)))
                continue
            total += info.file_size
            if total > 2_000_000_000:
                raise ValueError(f"{path}: archive too large")
            out = dest.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as fh:
                shutil.copyfileobj(src, fh)
    return dest


def _not_notebook(name: str) -> str:
    ext = Path(name).suffix.lower()
    return f"not a notebook ({ext or 'no extension'} file): hand in the .ipynb file"


class IngestError(ValueError):
    """Submissions that cannot be attributed safely: nothing is graded."""


def _link_on_the_way(root: Path, rel: Path) -> str | None:
    """The first symbolic link among ``root/rel`` and the folders between them, or None."""
    cur = root
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            return str(cur.relative_to(root))
    return None


def collect(path: Path | str, known: list[str], assignment: str | None = None,
            skipped: list[str] | None = None) -> list[Submission]:
    """All submissions under ``path`` (folder or .zip); one per (student, assignment).

    Symbolic links are never followed (each is skipped with a note on the submission, or in
    ``skipped`` when no student can be told); two folder or file names that map to one student id
    raise :class:`IngestError` before anything is graded."""
    path = Path(path)
    skipped = [] if skipped is None else skipped
    tmp = None
    try:
        if path.is_file() and path.suffix.lower() == ".zip":
            tmp = Path(tempfile.mkdtemp(prefix="submissions-"))
            path = _extract_zip(path, tmp, skipped)
        if not path.is_dir():
            raise FileNotFoundError(f"no submissions folder or zip at {path}")
        inner_zips = set()
        for inner in sorted(path.rglob("*.zip")):  # LMS zips inside the download
            _extract_zip(inner, inner.with_suffix(""), skipped, str(inner.relative_to(path)))
            inner_zips.add(inner)
        subs: dict[tuple[str, str], Submission] = {}
        raw_ids: dict[str, tuple[str, str]] = {}  # safe id -> (raw id, where it was seen)

        def student_id(raw: str, origin: str) -> str:
            """The safe id of ``raw``; two raw ids that map to one safe id would merge two students'
            work (one grade lost), so that stops the run before anything is graded."""
            sid = safe_id(raw)
            seen = raw_ids.setdefault(sid, (raw, origin))
            if seen[0] != raw:
                raise IngestError(f"two students map to the id {sid!r}: {seen[0]!r} ({seen[1]}) and "
                                  f"{raw!r} ({origin}); rename one of the folders or files")
            return sid

        def add(student, assign, nbname, data, origin, problem=None, lms=None):
            key = (student, assign or "?")
            sub = subs.setdefault(key, Submission(student, assign))
            if lms:
                sub.lms = {k: v for k, v in lms.items() if k != "file"} | {
                    "late": bool(sub.lms.get("late")) or lms["late"]}
            if nbname in sub.files:
                # several uploads of the same notebook: the last in name order wins
                sub.problems.append(f"several files for {nbname}; used {origin}")
            sub.files[nbname] = data
            sub.origin.append(origin)
            if problem:
                sub.problems.append(problem)

        for f in sorted(path.rglob("*")):
            rel = f.relative_to(path)
            if ".ipynb_checkpoints" in f.parts or f.name.startswith("._"):
                if f.is_file():
                    skipped.append(Skipped(str(rel), "an editor's backup copy (Jupyter checkpoint "
                                                     "or macOS resource file)"))
                continue
            link = _link_on_the_way(path, rel)
            if link is None and f.is_dir():
                if len(rel.parts) == 2 and (f.name in known or f.name == assignment):
                    continue  # graded: a missing notebook scores 0 (below)
                if not any(f.iterdir()):
                    why = "an empty folder"
                    if len(rel.parts) == 2 and f.name not in known:
                        why += f"; {f.name!r} is not an assignment of this course" + near_miss(f.name, known)
                    skipped.append(Skipped(str(rel) + "/", why))
                continue
            if link is None and f.suffix.lower() != ".ipynb":
                if f in inner_zips:
                    continue  # its notebooks were extracted beside it
                if f.is_file():
                    skipped.append(Skipped(str(rel), _not_notebook(f.name)))
                continue
            if link is not None:
                # A link is not the student's file: an unzipped upload may hold a link to the
                # solutions or to another student's notebook. Skipped, and said.
                lms = parse_lms_name(f.name)
                who = student_id(rel.parts[0], str(rel)) if len(rel.parts) > 1 else (lms[0] if lms else None)
                a = rel.parts[1] if len(rel.parts) == 3 and rel.parts[1] in known else \
                    (guess_assignment(lms[1] if lms else f.name, known) or assignment)
                if who is not None and a is not None:
                    key = (who, a)
                    sub = subs.setdefault(key, Submission(who, a))
                    sub.origin.append(str(rel))
                    sub.problems.append(f"skipped {rel}: a symbolic link ({link}), not a file")
                else:
                    skipped.append(Skipped(str(rel), f"a symbolic link ({link}), not a file"))
                continue
            if not f.is_file():
                continue
            data = f.read_bytes()
            # 1. tree: <student>/<assignment>/<nb>.ipynb
            if len(rel.parts) == 3 and (rel.parts[1] in known or assignment == rel.parts[1]):
                a = rel.parts[1]
                if assignment and a != assignment:
                    skipped.append(Skipped(str(rel), f"assignment {a}, not --assignment {assignment}"))
                    continue
                add(student_id(rel.parts[0], str(rel)), a, f.name, data, str(rel))
                continue
            # 2. LMS names, in the file name or in a per-student folder name
            lms = parse_lms(f.name)
            if lms is None and len(rel.parts) >= 2:
                lms = parse_lms(rel.parts[-2] + ("" if rel.parts[-2].endswith("_") else "_"))
                if lms is not None:
                    lms["file"] = f.name
            parsed = None if lms is None else (safe_id(lms["id"]), lms["file"])
            if parsed is None and len(rel.parts) == 2:  # <student>/<nb>.ipynb
                parsed = (student_id(rel.parts[0], str(rel)), f.name)
            if parsed is None:
                if len(rel.parts) == 3:
                    skipped.append(Skipped(str(rel), f"folder {rel.parts[1]!r} is not an assignment "
                                           f"of this course{near_miss(rel.parts[1], known)}"))
                else:
                    skipped.append(Skipped(str(rel), "cannot tell whose notebook it is (expected "
                                           "<student>/<assignment>/<notebook>.ipynb or an LMS "
                                           "download's file name)"))
                continue
            student, original = parsed
            a = guess_assignment(original, known) or assignment
            if assignment and a != assignment:
                # a notebook named for another assignment: graded (to 0) against the one asked for
                add(student, assignment, f"{assignment}.ipynb", data, str(rel),
                    f"file {original!r} is not a notebook of {assignment}", lms)
                continue
            if a is None:
                add(student, None, original, data, str(rel), f"cannot tell the assignment of "
                    f"{original!r}; use --assignment", lms)
                continue
            add(student, a, f"{a}.ipynb" if Path(original).stem.startswith(a) else original,
                data, str(rel), lms=lms)
        # <student>/<assignment>/ folders without any notebook: a missing notebook scores 0
        for d in sorted(path.glob("*/*")):
            if d.is_dir() and (d.name in known or d.name == assignment) and \
                    (assignment is None or d.name == assignment) and not any(d.rglob("*.ipynb")):
                key = (safe_id(d.parent.name), d.name)
                if key not in subs:
                    subs[key] = Submission(key[0], d.name, origin=[str(d.relative_to(path))],
                                           problems=["no notebook in the submission folder"])
        return sorted(subs.values(), key=lambda s: (s.assignment or "", s.student))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

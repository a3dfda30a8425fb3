"""Make a submitted notebook safe and fair to autograde.

Trusted: runs in the grader's own process, on the submitted JSON.

``sanitize(raw, release_nb)`` parses the file, then runs the :data:`STEPS` in order (as nbgrader
runs its preprocessors) and returns a :class:`Sanitized` with either a clean notebook dict or a
reason why the submission scores 0 (empty file, not JSON, not a notebook, the notebook of another
assignment). Repairs made on the way are listed in ``notes``. The steps, in order:

- ``drop_malformed_cells``: cells that are not cells go;
- ``restore_lost_metadata``: nbgrader metadata lost by another front end (VS Code, Colab) is
  restored from the released notebook for cells whose cell id or whole source matches a released
  graded/locked cell;
- ``refuse_other_assignment``: the notebook of another assignment scores 0;
- ``deduplicate_grade_ids``: of cells sharing a ``grade_id`` (a copied graded cell, JupyterLab's
  "split cell") the *last* keeps it and the earlier ones lose their nbgrader metadata (as
  UBC-DSCI/rudaux does; nbgrader's own ``DeduplicateIds`` blanks it to ``{}`` instead, which then
  fails the whole submission, #1083);
- ``metadata_from_release``: nbgrader metadata of every known cell is replaced by the released copy
  (a student cannot change points, or turn an answer cell into a test cell or the reverse);
- ``clean_cells``: front-end metadata (JupyterLab 4 ``execution``, VS Code ``vscode``, Colab
  ``colab``) dropped, the ``skip-execution`` tag (nbclient would not run a test cell carrying it)
  removed, missing or duplicate cell ids fixed, outputs cleared;
- ``clean_notebook_metadata``: notebook metadata of front ends (widgets, ...) dropped, format 4.5;
- ``note_if_invalid``: a notebook still not schema-valid is graded anyway, with a note.
"""
from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable

from . import cells
from .cells import grade_id, nbgrader, source

NOISY_NOTEBOOK_META = ("widgets", "colab", "vscode", "accelerator", "gpuClass", "interpreter",
                       "toc", "varInspector", "celltoolbar", "jupytext", "papermill", "orig_nbformat")
NOISY_CELL_META = ("execution", "colab", "vscode", "outputId", "id", "ExecuteTime", "executionInfo",
                   "papermill", "collapsed", "scrolled", "jupyter", "pycharm")
#: Tags that would make nbclient skip a cell; only the grader (``grading.slow``) sets the second.
STRIP_TAGS = (cells.SKIP_EXECUTION_TAG, cells.GRADER_SKIP_TAG)
MAX_BYTES = 20_000_000          # a notebook's size once its outputs are removed
MAX_UPLOAD_BYTES = 512_000_000  # what is read at all (outputs are discarded before grading anyway)
_ID_RE = re.compile(r"^[a-zA-Z0-9-_]{1,64}$")


@dataclass
class Sanitized:
    nb: dict | None                 # the notebook to grade, or None when it scores 0
    zero_reason: str | None = None  # why the whole notebook scores 0
    notes: list[str] = field(default_factory=list)


# The metadata that decides how a cell is graded; bookkeeping keys (checksum, cell_type) that the
# release adds are restored silently.
_GRADING_KEYS = ("grade", "solution", "locked", "task", "points", "grade_id")


def parse(raw: bytes | str | None, max_bytes: int | None = None) -> tuple[dict | None, str | None]:
    """Bytes of a submitted file -> (notebook dict in format 4, None) or (None, reason)."""
    if raw is None:
        return None, "missing notebook"
    if isinstance(raw, bytes):
        if len(raw) > MAX_UPLOAD_BYTES:
            return None, f"file too large ({len(raw) // 1_000_000} MB)"
        if not raw.strip():
            return None, "empty file"
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            return None, "not a notebook (not UTF-8 text)"
    else:
        text = raw
    if not text.strip():
        return None, "empty file"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at line {exc.lineno})"
    if not isinstance(data, dict) or not isinstance(data.get("cells", data.get("worksheets")), list):
        return None, "not a notebook (JSON without cells)"
    # Outputs are not graded (the notebook is run again): a big figure must not cost the notebook.
    for cell in data.get("cells") or []:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    size = len(json.dumps(data))
    if size > (MAX_BYTES if max_bytes is None else max_bytes):
        return None, f"file too large ({size // 1_000_000} MB without its outputs)"
    try:
        import nbformat

        with warnings.catch_warnings():  # duplicate/missing cell ids are repaired below
            warnings.simplefilter("ignore")
            nb = nbformat.reads(json.dumps(data), as_version=4)  # upgrades format 3
            nb = json.loads(nbformat.writes(nb))
    except Exception as exc:  # noqa: BLE001  (any nbformat failure is the submission's)
        # keep going with the raw dict if it looks like format 4
        if data.get("nbformat") == 4:
            nb = data
        else:
            return None, f"not a readable notebook ({type(exc).__name__}: {exc})"
    return nb, None


@dataclass
class Released:
    """The released notebook that a submission is repaired against, indexed for the steps."""
    by_id: dict[str, dict]                 # cell id -> released cell
    by_source: dict[tuple[str, str], dict]  # (cell type, stripped source) -> first graded cell
    graded: dict[str, dict]                # grade id -> released cell

    @classmethod
    def of(cls, release_nb: dict) -> "Released":
        rel_cells = release_nb.get("cells", [])
        by_source: dict[tuple[str, str], dict] = {}
        for c in rel_cells:
            if grade_id(c):
                by_source.setdefault((c["cell_type"], source(c).strip()), c)
        return cls(by_id={c.get("id"): c for c in rel_cells if c.get("id")}, by_source=by_source,
                   graded={grade_id(c): c for c in rel_cells if grade_id(c) is not None})


#: A step repairs ``nb`` in place, appends what it did to ``notes``, and returns why the notebook
#: scores 0 (which ends the pipeline) or None.
Step = Callable[[dict, Released, list], "str | None"]


def drop_malformed_cells(nb: dict, rel: Released, notes: list[str]) -> None:
    """Cells that are not a dict with a ``cell_type`` go."""
    kept = [c for c in nb.get("cells", []) if isinstance(c, dict) and "cell_type" in c]
    if len(kept) != len(nb.get("cells", [])):
        notes.append("dropped malformed cells")
    nb["cells"] = kept


def restore_lost_metadata(nb: dict, rel: Released, notes: list[str]) -> None:
    """nbgrader metadata that another front end dropped comes back from the released cell with the
    same cell id, or else the same type and source."""
    present = cells.grade_ids(nb)
    for cell in nb["cells"]:
        if nbgrader(cell):
            continue
        ref = rel.by_id.get(cell.get("id"))
        if ref is None or not nbgrader(ref) or ref["cell_type"] != cell["cell_type"]:
            ref = rel.by_source.get((cell["cell_type"], source(cell).strip()))
        if ref is not None and nbgrader(ref) and grade_id(ref) not in present:
            cell.setdefault("metadata", {})["nbgrader"] = copy.deepcopy(nbgrader(ref))
            present.add(grade_id(ref))
            notes.append(f"restored nbgrader metadata of {grade_id(ref)}")


def refuse_other_assignment(nb: dict, rel: Released, notes: list[str]) -> str | None:
    """The notebook of another assignment (or something else entirely) scores 0."""
    sub_ids, rel_ids = cells.grade_ids(nb), set(rel.graded)
    common = sub_ids & rel_ids
    if rel_ids and (not common or (len(sub_ids - rel_ids) > len(common)
                                   and len(common) < len(rel_ids) / 2)):
        other = sorted(sub_ids)[:4]
        return ("wrong notebook: none of this assignment's graded cells found"
                + (f" (it has {', '.join(other)})" if other else ""))
    return None


def deduplicate_grade_ids(nb: dict, rel: Released, notes: list[str]) -> None:
    """Of the cells sharing a grade id, the last keeps it; the earlier ones lose their metadata."""
    seen: set[str] = set()
    for cell in reversed(nb["cells"]):
        gid = grade_id(cell)
        if gid is None:
            continue
        if gid in seen:
            cell["metadata"].pop("nbgrader", None)
            notes.append(f"duplicate cell {gid}: kept the last copy")
        else:
            seen.add(gid)


def metadata_from_release(nb: dict, rel: Released, notes: list[str]) -> None:
    """nbgrader metadata comes from the release, never from the student: a cell with an unknown
    grade id loses it, a known one gets the released copy (points, locked, solution, grade)."""
    for cell in nb["cells"]:
        gid = grade_id(cell)
        if gid is None:
            continue
        if gid not in rel.graded:
            cell["metadata"].pop("nbgrader", None)
            notes.append(f"unknown graded cell {gid}: metadata dropped")
            continue
        want = nbgrader(rel.graded[gid])
        mine = {k: nbgrader(cell).get(k) or None for k in _GRADING_KEYS}
        if mine != {k: want.get(k) or None for k in _GRADING_KEYS}:
            notes.append(f"nbgrader metadata of {gid} restored from the release")
        cell["metadata"]["nbgrader"] = copy.deepcopy(want)


def clean_cells(nb: dict, rel: Released, notes: list[str]) -> None:
    """Front-end metadata and the ``skip-execution`` tag go, cell ids are made valid and unique,
    sources become strings, outputs are cleared, unknown cell types become raw cells."""
    used_ids: set[str] = set()
    for i, cell in enumerate(nb["cells"]):
        meta = cell.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        for key in NOISY_CELL_META:
            meta.pop(key, None)
        tags = meta.get("tags")
        if isinstance(tags, list):
            kept = [t for t in tags if isinstance(t, str) and t not in STRIP_TAGS]
            for t in sorted({t for t in tags if t in STRIP_TAGS}):
                notes.append(f"removed tag {t} from cell {i}")
            meta["tags"] = kept
            if not kept:
                meta.pop("tags")
        elif tags is not None:
            meta.pop("tags")
        cell["metadata"] = meta
        cid = cell.get("id")
        if not isinstance(cid, str) or not _ID_RE.match(cid) or cid in used_ids:
            cid = f"cell-{i}"
            while cid in used_ids:
                cid += "x"
            cell["id"] = cid
        used_ids.add(cid)
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(str(s) for s in cell["source"])
        elif not isinstance(cell.get("source"), str):
            cell["source"] = str(cell.get("source", ""))
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        else:
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
            if cell["cell_type"] not in ("markdown", "raw"):
                cell["cell_type"] = "raw"


def clean_notebook_metadata(nb: dict, rel: Released, notes: list[str]) -> None:
    """Front-end notebook metadata goes; the kernelspec is the course's; the format is 4.5."""
    md = nb.get("metadata") if isinstance(nb.get("metadata"), dict) else {}
    for key in NOISY_NOTEBOOK_META:
        md.pop(key, None)
    md["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                        "name": "python3"}
    md["language_info"] = {"name": "python"}
    nb["metadata"] = md
    nb["nbformat"], nb["nbformat_minor"] = 4, 5


def note_if_invalid(nb: dict, rel: Released, notes: list[str]) -> None:
    """A notebook that is still not schema-valid is graded anyway, with a note saying so."""
    try:
        import nbformat

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nbformat.validate(nbformat.from_dict(nb))
    except Exception as exc:  # noqa: BLE001
        notes.append(f"notebook still not schema-valid after repair: {str(exc).splitlines()[0]}")


#: The repairs, in the order they run (each one's docstring says what it does).
STEPS: tuple[Step, ...] = (
    drop_malformed_cells,
    restore_lost_metadata,
    refuse_other_assignment,
    deduplicate_grade_ids,
    metadata_from_release,
    clean_cells,
    clean_notebook_metadata,
    note_if_invalid,
)


def sanitize(raw: bytes | str | None, release_nb: dict, max_bytes: int | None = None) -> Sanitized:
    """Parse one submitted notebook and run the :data:`STEPS` on it against its released version
    (``max_bytes``: the largest notebook without its outputs, the course config's by default)."""
    nb, reason = parse(raw, max_bytes)
    if nb is None:
        return Sanitized(None, reason)
    rel, notes = Released.of(release_nb), []
    for step in STEPS:
        reason = step(nb, rel, notes)
        if reason is not None:
            return Sanitized(None, reason, notes)
    return Sanitized(nb, None, notes)

"""Make a submitted notebook safe and fair to autograde (runs in the trusted parent process).

``sanitize(raw, release_nb)`` returns a :class:`Sanitized` with either a clean notebook dict or a
reason why the submission scores 0 (empty file, not JSON, not a notebook, the notebook of another
assignment). Repairs made on the way are listed in ``notes``:

- duplicate ``grade_id`` (a copied graded cell, JupyterLab's "split cell"): keep the *last* copy and
  drop the nbgrader metadata of the earlier ones (as UBC-DSCI/rudaux does; nbgrader's own
  ``DeduplicateIds`` blanks it to ``{}`` instead, which then fails the whole submission, #1083);
- nbgrader metadata lost by another front end (VS Code, Colab): restored from the released
  notebook for cells whose cell id or whole source matches a released graded/locked cell;
- front-end metadata (JupyterLab 4 ``execution``, VS Code ``vscode``, Colab ``colab``, widgets)
  dropped, missing or duplicate cell ids fixed, outputs cleared, format upgraded to 4.5;
- the ``skip-execution`` tag (nbclient would not run a test cell carrying it) removed everywhere;
- nbgrader metadata of every known cell replaced by the released copy (a student cannot change
  points, or turn an answer cell into a test cell or the reverse).
"""
from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import dataclass, field

from .tamper import _nbg, _src  # the notebook-JSON accessors both modules need

NOISY_NOTEBOOK_META = ("widgets", "colab", "vscode", "accelerator", "gpuClass", "interpreter",
                       "toc", "varInspector", "celltoolbar", "jupytext", "papermill", "orig_nbformat")
NOISY_CELL_META = ("execution", "colab", "vscode", "outputId", "id", "ExecuteTime", "executionInfo",
                   "papermill", "collapsed", "scrolled", "jupyter", "pycharm")
STRIP_TAGS = ("skip-execution",)
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


def parse(raw: bytes | str | None) -> tuple[dict | None, str | None]:
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
    if size > MAX_BYTES:
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


def _grade_ids(nb: dict) -> set[str]:
    return {_nbg(c)["grade_id"] for c in nb.get("cells", []) if "grade_id" in _nbg(c)}


def sanitize(raw: bytes | str | None, release_nb: dict) -> Sanitized:
    """Parse and repair one submitted notebook against its released version (see module doc)."""
    nb, reason = parse(raw)
    if nb is None:
        return Sanitized(None, reason)
    notes: list[str] = []
    cells = [c for c in nb.get("cells", []) if isinstance(c, dict) and "cell_type" in c]
    if len(cells) != len(nb.get("cells", [])):
        notes.append("dropped malformed cells")
    nb["cells"] = cells

    rel_cells = release_nb.get("cells", [])
    rel_by_id = {c.get("id"): c for c in rel_cells if c.get("id")}
    rel_by_src = {}
    for c in rel_cells:
        if _nbg(c).get("grade_id"):
            rel_by_src.setdefault((c["cell_type"], _src(c).strip()), c)
    rel_ids = _grade_ids(release_nb)
    rel_graded = {_nbg(c)["grade_id"]: c for c in rel_cells if "grade_id" in _nbg(c)}

    # 1. restore nbgrader metadata that other front ends dropped (matched by cell id or source)
    present = _grade_ids(nb)
    for cell in cells:
        if _nbg(cell):
            continue
        ref = rel_by_id.get(cell.get("id"))
        if ref is None or not _nbg(ref) or ref["cell_type"] != cell["cell_type"]:
            ref = rel_by_src.get((cell["cell_type"], _src(cell).strip()))
        if ref is not None and _nbg(ref) and _nbg(ref)["grade_id"] not in present:
            cell.setdefault("metadata", {})["nbgrader"] = copy.deepcopy(_nbg(ref))
            present.add(_nbg(ref)["grade_id"])
            notes.append(f"restored nbgrader metadata of {_nbg(ref)['grade_id']}")

    # 2. the notebook of another assignment (or something else entirely)
    sub_ids = _grade_ids(nb)
    common = sub_ids & rel_ids
    if rel_ids and (not common or (len(sub_ids - rel_ids) > len(common)
                                   and len(common) < len(rel_ids) / 2)):
        other = sorted(sub_ids)[:4]
        return Sanitized(None, "wrong notebook: none of this assignment's graded cells found"
                         + (f" (it has {', '.join(other)})" if other else ""), notes)

    # 3. duplicate grade ids: keep the last copy, strip nbgrader metadata from earlier ones
    seen: set[str] = set()
    for cell in reversed(cells):
        gid = _nbg(cell).get("grade_id")
        if gid is None:
            continue
        if gid in seen:
            cell["metadata"].pop("nbgrader", None)
            notes.append(f"duplicate cell {gid}: kept the last copy")
        else:
            seen.add(gid)

    # 4. nbgrader metadata comes from the release, never from the student: a cell with an unknown
    #    grade_id loses it, a known one gets the released copy (points, locked, solution, grade)
    for cell in cells:
        gid = _nbg(cell).get("grade_id")
        if gid is None:
            continue
        if gid not in rel_graded:
            cell["metadata"].pop("nbgrader", None)
            notes.append(f"unknown graded cell {gid}: metadata dropped")
            continue
        want = _nbg(rel_graded[gid])
        mine = {k: _nbg(cell).get(k) or None for k in _GRADING_KEYS}
        if mine != {k: want.get(k) or None for k in _GRADING_KEYS}:
            notes.append(f"nbgrader metadata of {gid} restored from the release")
        cell["metadata"]["nbgrader"] = copy.deepcopy(want)

    # 5. front-end noise, tags, ids, outputs
    used_ids: set[str] = set()
    for i, cell in enumerate(cells):
        meta = cell.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        for key in NOISY_CELL_META:
            meta.pop(key, None)
        tags = meta.get("tags")
        if isinstance(tags, list):
            kept = [t for t in tags if isinstance(t, str) and t not in STRIP_TAGS]
            if len(kept) != len(tags):
                notes.append(f"removed tag skip-execution from cell {i}")
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
    md = nb.get("metadata") if isinstance(nb.get("metadata"), dict) else {}
    for key in NOISY_NOTEBOOK_META:
        md.pop(key, None)
    md["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                        "name": "python3"}
    md["language_info"] = {"name": "python"}
    nb["metadata"] = md
    nb["nbformat"], nb["nbformat_minor"] = 4, 5
    try:
        import nbformat

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nbformat.validate(nbformat.from_dict(nb))
    except Exception as exc:  # noqa: BLE001
        notes.append(f"notebook still not schema-valid after repair: {str(exc).splitlines()[0]}")
    return Sanitized(nb, None, notes)

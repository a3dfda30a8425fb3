"""What the student handed in, kept before autograde re-executes it: for each written question, the
answer and the outputs of the cells the question is about (the student's own figures and numbers).

Trusted: runs in the grader's own process, on the submitted JSON (it never runs the notebook).

The grading kernel re-runs every notebook in fast mode, so the graded notebook's figures and numbers
are not the ones the student wrote about. :func:`keep_submitted` (called by autograde for every job
it stores) writes ``<out>/submitted_outputs/<student>/<assignment>/<nb>.json``, which the TAs'
grading page (``grading.manual_server``) and ``manual export`` read::

    {"questions": {"<grade_id>": {"answer": "...", "cells": [{"id", "source", "outputs": [...]}],
                                  "missing": ["<cell id>", ...]}},
     "note": "..."}   # why nothing could be kept (unreadable file), else ""

**The cells a question is about.** A written answer cell of ``solutions/`` may list them,
``metadata.course.about = ["<cell id>", ...]`` (cell ids survive the release and JupyterLab);
otherwise they are the code cells before the question: step back over the markdown (prompts and
the other written answers of a run of questions), then take every code cell back to the previous
test cell or written answer. Test cells are never taken (their outputs are the autograder's).

**Only inert outputs are kept**: PNG, JPEG and SVG images (shown as ``<img>``, where SVG cannot
run script), text (``text/plain`` and streams, without terminal colour codes) and an error's
``ename: evalue``. HTML and JavaScript outputs are replaced by their ``text/plain``. Each output
and each cell is capped (:data:`MAX_IMAGE_CHARS`, :data:`MAX_TEXT_CHARS`, :data:`MAX_OUTPUTS`).
"""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

from . import cells
from .sanitize import MAX_UPLOAD_BYTES

#: Folder of ``--out`` that holds the kept answers and outputs.
SUBMITTED_DIR = "submitted_outputs"
#: Metadata key (``cell.metadata[ABOUT_KEY[0]][ABOUT_KEY[1]]``) of a written answer's cell ids.
ABOUT_KEY = ("course", "about")
MAX_IMAGE_CHARS = 4_000_000   # base64 characters of one image (about 3 MB)
MAX_TEXT_CHARS = 20_000       # characters of one text output
MAX_OUTPUTS = 30              # outputs kept per cell
MAX_CELLS = 12                # cells kept per question
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_B64 = re.compile(r"[A-Za-z0-9+/=\s]*")


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def _clip(text: str) -> str:
    text = _ANSI.sub("", text)
    if len(text) > MAX_TEXT_CHARS:
        return text[:MAX_TEXT_CHARS] + f"\n... ({len(text) - MAX_TEXT_CHARS} more characters)"
    return text


def _image(mime: str, value) -> dict | None:
    raw = _text(value)
    if mime == "image/svg+xml":
        raw = base64.b64encode(raw.encode()).decode()
    elif not _B64.fullmatch(raw):
        return None
    raw = re.sub(r"\s+", "", raw)
    if len(raw) > MAX_IMAGE_CHARS:
        return {"type": "text", "text": f"(an image of {len(raw) * 3 // 4 // 1000} kB: too large to keep)"}
    return {"type": "image", "mime": mime, "data": raw}


def safe_output(out) -> dict | None:
    """One output as ``{"type": "image", "mime", "data"}`` or ``{"type": "text"|"error", "text"}``,
    or None when it shows nothing."""
    if not isinstance(out, dict):
        return None
    kind = out.get("output_type")
    if kind == "stream":
        return {"type": "text", "text": _clip(_text(out.get("text")))}
    if kind == "error":
        return {"type": "error", "text": _clip(f"{out.get('ename', 'Error')}: {out.get('evalue', '')}")}
    data = out.get("data")
    if kind in ("display_data", "execute_result") and isinstance(data, dict):
        for mime in IMAGE_TYPES:
            if mime in data:
                img = _image(mime, data[mime])
                if img is not None:
                    return img
        if "text/plain" in data:
            return {"type": "text", "text": _clip(_text(data["text/plain"]))}
    return None


def _code(cell) -> bool:
    return cell.get("cell_type") == "code"


def default_about(nb_cells: list, i: int) -> list[int]:
    """Indices of the code cells that written answer ``nb_cells[i]`` is about by default (see the
    module docstring), in notebook order."""
    j = i - 1
    while j >= 0 and not _code(nb_cells[j]):  # the prompt, and the questions of the same run
        j -= 1
    out = []
    while j >= 0 and not (cells.is_test(nb_cells[j]) or cells.is_written(nb_cells[j])):
        if _code(nb_cells[j]):
            out.append(j)
        j -= 1
    return sorted(out)


def about_ids(source_nb: dict) -> dict[str, list[str]]:
    """``{written grade_id: [cell id]}`` for the written answers of ``source_nb`` that list them."""
    out = {}
    for c in source_nb.get("cells", []):
        meta = c.get("metadata") or {}
        about = (meta.get(ABOUT_KEY[0]) or {}).get(ABOUT_KEY[1]) if isinstance(meta, dict) else None
        if cells.is_written(c) and isinstance(about, list):
            out[cells.grade_id(c)] = [str(x) for x in about]
    return out


def _grade_ids(nb_cells: list, release_nb: dict) -> list[str | None]:
    """The grade id of every submitted cell: its nbgrader metadata's, else (metadata lost in
    another front end) that of the released cell with its cell id."""
    by_id = {c.get("id"): cells.grade_id(c) for c in release_nb.get("cells", []) if c.get("id")}
    return [cells.grade_id(c) or by_id.get(c.get("id")) for c in nb_cells]


def _cell_record(cell) -> dict:
    outputs = [o for o in map(safe_output, (cell.get("outputs") or [])[:MAX_OUTPUTS]) if o]
    return {"id": str(cell.get("id") or ""), "source": _clip(cells.source(cell)),
            "outputs": outputs}


def parse_with_outputs(raw: bytes | str | None) -> tuple[dict | None, str]:
    """The submitted notebook with its outputs (``grading.sanitize.parse`` drops them), format
    4, or ``(None, reason)``."""
    if raw is None:
        return None, "missing notebook"
    if isinstance(raw, bytes):
        if len(raw) > MAX_UPLOAD_BYTES:
            return None, f"file too large ({len(raw) // 1_000_000} MB)"
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            return None, "not a notebook (not UTF-8 text)"
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, "not a notebook"
    if data.get("nbformat") != 4 and isinstance(data.get("worksheets"), list):
        try:
            import nbformat

            data = json.loads(nbformat.writes(nbformat.reads(json.dumps(data), as_version=4)))
        except Exception as exc:  # noqa: BLE001  (any nbformat failure is the submission's)
            return None, f"not a readable notebook ({type(exc).__name__})"
    if not isinstance(data.get("cells"), list):
        return None, "not a notebook (JSON without cells)"
    return data, ""


def extract(raw: bytes | str | None, source_nb: dict, release_nb: dict) -> dict:
    """The answers and related outputs of a submitted notebook (see the module docstring)."""
    nb, reason = parse_with_outputs(raw)
    written = [c.id for c in cells.graded_cells(source_nb) if c.kind == "written"]
    if nb is None:
        return {"questions": {}, "note": f"nothing kept: {reason}"}
    nb_cells = [c for c in nb["cells"] if isinstance(c, dict)]
    gids = _grade_ids(nb_cells, release_nb)
    explicit = about_ids(source_nb)
    by_cell_id = {c.get("id"): c for c in nb_cells if c.get("id")}
    questions = {}
    for qid in written:
        hits = [k for k, g in enumerate(gids) if g == qid]
        if not hits:
            questions[qid] = {"answer": None, "cells": [], "missing": []}
            continue
        i = hits[-1]  # as sanitize: of cells sharing a grade id, the last keeps it
        missing = []
        if qid in explicit:
            chosen = []
            for cid in explicit[qid]:
                if cid in by_cell_id:
                    chosen.append(by_cell_id[cid])
                else:
                    missing.append(cid)
        else:
            chosen = [nb_cells[k] for k in default_about(nb_cells, i)]
        chosen = [c for c in chosen if _code(c) and not cells.is_test(c)][-MAX_CELLS:]
        questions[qid] = {"answer": cells.source(nb_cells[i]), "cells": [_cell_record(c) for c in chosen],
                          "missing": missing}
    return {"questions": questions, "note": ""}


def submitted_files(job) -> dict[str, bytes | None]:
    """``{notebook name: the bytes handed in}``, matched as ``grading.jobs.prepare`` matches them
    (a single renamed upload stands for a single expected notebook)."""
    files, expected = dict(job.sub.files), list(job.tpl.release)
    out = {}
    for name in expected:
        raw = files.pop(f"{name}.ipynb", None)
        if raw is None and len(expected) == 1 and len(files) == 1:
            _, raw = files.popitem()
        out[name] = raw
    return out


def path_for(out: Path | str, student: str, assignment: str, notebook: str) -> Path:
    return Path(out) / SUBMITTED_DIR / student / assignment / f"{notebook}.json"


def keep_submitted(job, out: Path | str) -> None:
    """Write the kept answers and outputs of one job's notebooks under ``out`` (atomically)."""
    for name, raw in submitted_files(job).items():
        data = extract(raw, job.tpl.source[name], job.tpl.release[name])
        dest = path_for(out, job.sub.student, job.tpl.assignment, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, dest)


def load_submitted(out: Path | str, student: str, assignment: str, notebook: str) -> dict | None:
    """What :func:`keep_submitted` kept, or None (graded before outputs were kept)."""
    p = path_for(out, student, assignment, notebook)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None

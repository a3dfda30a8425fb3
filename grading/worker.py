"""Autograde one student's assignment inside a prepared job folder (a separate process per job).

``python -m grading.worker JOB`` where ``JOB`` (prepared by ``grading.autograde``) holds
``course/`` (the assignment's ``solutions/`` copy, a copy of the template ``gradebook.db`` and the
sanitized ``submitted/<student>/<assignment>/*.ipynb``), ``kernels/`` (the grading kernelspec) and
``job.json``. It runs nbgrader's autograde and generate_feedback there and writes ``result.json``:
the grades read back from the job's own gradebook plus each test cell's failure message. Only
the parent process writes the course gradebook.

Tracebacks are cut to their final ``ename: evalue`` line before the feedback is rendered, so a
failing hidden assert does not show its source.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
import traceback
from pathlib import Path

from . import course, verdict
from .runner import STDERR_MESSAGE, error_message, is_test_cell, nbgrader_meta


def strip_tracebacks(nb_path: Path, pattern: str) -> tuple[dict[str, str], dict[str, str]]:
    """Replace every error traceback by ``ename: evalue``.

    Returns ``({test grade_id: message}, {other cell: error})``, the second naming errors in answer
    and other cells (a timeout in an answer cell explains a later test's NameError)."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    messages, other_errors = {}, {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        msg = ""
        for out in cell.outputs:
            if out.output_type == "error":
                line = error_message(out.get("ename", "Error"), out.get("evalue", ""))
                out.traceback = [line]
                msg = msg or line
            elif out.output_type == "stream" and out.name == "stderr" and not msg:
                if not (pattern and re.search(pattern, out.text)):
                    msg = STDERR_MESSAGE
                # a Python traceback printed to stderr may quote hidden source lines
                if "Traceback (most recent call last)" in out.text:
                    out.text = "\n".join(ln for ln in out.text.splitlines()
                                         if not ln.startswith("  ")) + "\n"
        if is_test_cell(cell):
            messages[nbgrader_meta(cell)["grade_id"]] = msg
        elif msg and msg != STDERR_MESSAGE:
            other_errors[nbgrader_meta(cell).get("grade_id") or f"cell {index}"] = msg
    nbformat.write(nb, nb_path)
    return messages, other_errors


def apply_verdicts(api, a: str, s: str, out_dir: Path, sessions: dict, job_dir: Path,
                   probe_rel: str) -> None:
    """Judge the trusted checks from the records the kernel left, then make the job's gradebook and
    graded notebook say so: a failed verdict scores its cell 0 and becomes the cell's error output
    (in place of a visible assert's, since it names the likely cause)."""
    import nbformat

    for nb_name, nb_sessions in sessions.items():
        nb_path = out_dir / f"{nb_name}.ipynb"
        if not nb_sessions or not nb_path.is_file():
            continue
        verdicts = verdict.judge_checks(nb_sessions, str(job_dir), f"{probe_rel}/records")
        failed = {gid: v.message for gid, v in verdicts.items() if not v.passed}
        if not failed:
            continue
        nb = nbformat.read(nb_path, as_version=4)
        for cell in nb.cells:
            gid = nbgrader_meta(cell).get("grade_id")
            if cell.cell_type == "code" and gid in failed:
                if not verdicts[gid].ran and any(o.get("output_type") == "error" for o in cell.outputs):
                    continue  # the cell's own error says why nothing ran (e.g. the kernel died)
                cell.outputs = [o for o in cell.outputs if o.get("output_type") != "error"] + [
                    nbformat.v4.new_output("error", ename="CheckFailed", evalue=failed[gid],
                                           traceback=[f"CheckFailed: {failed[gid]}"])]
        nbformat.write(nb, nb_path)
        with course.quiet_nbgrader(), api.gradebook as gb:
            snb = gb.find_submission_notebook(nb_name, a, s)
            for g in snb.grades:
                if g.name in failed:
                    g.auto_score = 0.0
            gb.db.commit()


def run_job(job: Path) -> dict:
    spec = json.loads((job / "job.json").read_text())
    root = job / "course"
    a, s = spec["assignment"], spec["student"]
    overrides = {"Execute.kernel_name": spec.get("kernel_name") or "python3"}
    if spec.get("timeout"):
        overrides["Execute.timeout"] = int(spec["timeout"])
    for name, value in (spec.get("kernel_manager") or {}).items():  # Unix sockets in its home
        overrides[f"KernelManager.{name}"] = value
    if spec.get("memory_cgroup"):  # to tell an out-of-memory kill from other deaths
        overrides["CourseExecute.memory_cgroup"] = spec["memory_cgroup"]
        overrides["CourseExecute.memory_limit_mb"] = int(spec.get("memory_mb") or 0)
    if spec.get("notebook_timeout"):
        overrides["CourseExecute.notebook_timeout"] = int(spec["notebook_timeout"])
    api = course.make_api(root, db_url=f"sqlite:///{root / 'gradebook.db'}", **overrides)
    pattern = api.config.IgnorePattern.pattern
    result = {"student": s, "assignment": a, "ok": False, "error": None, "notebooks": {},
              "messages": {}, "feedback": {}, "autograded": {}}
    # Trusted checks: plan them with a seed the kernel never sees, judge after nbgrader ran.
    probe_home = spec.get("probe_dir")
    sessions: dict[str, dict] = {}
    if probe_home:
        seed = secrets.randbits(62)
        for nb_path in course.assignment_notebooks(root, a):
            sessions[nb_path.stem] = verdict.plan_checks(course.read_json(nb_path),
                                                         os.path.join(probe_home, "plan"), seed)
    t0 = time.perf_counter()
    res = api.autograde(a, s, force=True, create=True)  # its log (stderr) goes to the slot's log
    result["autograde_seconds"] = round(time.perf_counter() - t0, 2)
    if not res["success"]:
        log_text = res.get("log") or ""
        key_lines = [ln.strip() for ln in log_text.splitlines()
                     if re.match(r"^\s*[\w.]+(Error|Exception)\b", ln) and "Warning" not in ln]
        result["error"] = "\n".join(key_lines[-5:] + [(res.get("error") or "")[-2000:]])
    out_dir = root / "autograded" / s / a
    if res["success"] and any(sessions.values()):
        apply_verdicts(api, a, s, out_dir, sessions, Path(spec["job_dir"]), spec["probe_rel"])
    for nb_path in sorted(out_dir.glob("*.ipynb")):
        result["messages"][nb_path.stem], result.setdefault("cell_errors", {})[nb_path.stem] = \
            strip_tracebacks(nb_path, pattern)
        result["autograded"][nb_path.stem] = str(nb_path)
    if res["success"]:
        with course.quiet_nbgrader():
            fb = api.generate_feedback(a, s, force=True)
        if not fb["success"]:
            result["feedback_error"] = (fb.get("error") or fb.get("log") or "")[-2000:]
        for html in sorted((root / "feedback" / s / a).glob("*.html")):
            result["feedback"][html.stem] = str(html)
    with course.quiet_nbgrader(), api.gradebook as gb:
        try:
            sub = gb.find_submission(a, s)
        except Exception as exc:  # noqa: BLE001
            result["error"] = result["error"] or f"no submission in gradebook: {exc}"
        else:
            for snb in sub.notebooks:
                grades = {}
                comments = {c.name: c.auto_comment for c in snb.comments}
                for g in snb.grades:
                    grades[g.name] = {
                        "auto_score": g.auto_score, "manual_score": g.manual_score,
                        "max_score": float(g.max_score),
                        "needs_manual_grade": bool(g.needs_manual_grade),
                        "auto_comment": comments.get(g.name),
                    }
                result["notebooks"][snb.name] = grades
            result["ok"] = res["success"]
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def run_one(job: Path) -> None:
    """Grade one job folder and write its ``result.json`` (errors included, never raised)."""
    import os

    spec = json.loads((job / "job.json").read_text())
    for key, value in (spec.get("env") or {}).items():
        os.environ[key] = value
    try:
        result = run_job(job)
    except Exception:  # noqa: BLE001  (reported to the parent, never fatal to others)
        result = {"ok": False, "error": traceback.format_exc()[-4000:]}
    (job / "result.json").write_text(json.dumps(result, indent=1))


def main(argv: list[str] | None = None) -> int:
    """``worker JOB`` grades one job; ``worker --serve`` grades the job folders read from stdin,
    one per line, answering ``DONE <folder>`` on stdout after each (one process per --jobs slot,
    so nbgrader is imported once per slot, not once per student)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve":
        out = sys.stdout
        sys.stdout = sys.stderr  # nothing but the protocol on the real stdout
        for line in sys.stdin:
            job = line.strip()
            if not job:
                continue
            run_one(Path(job))
            out.write(f"DONE {job}\n")
            out.flush()
        return 0
    run_one(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

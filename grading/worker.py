"""Autograde one student's assignment inside a prepared job folder (a separate process per job).

Trusted: runs as the grader, in a process of its own; the student's code runs in the kernel that
nbgrader starts from here (confined as ``grading.isolation`` arranges).

``python -m grading.worker JOB`` where ``JOB`` (prepared by ``grading.jobs``) holds ``course/``
(the assignment's ``solutions/`` copy, a copy of the template ``gradebook.db`` and the sanitized
``submitted/<student>/<assignment>/*.ipynb``), ``kernels/`` (the grading kernelspec) and
``job.json``. It runs nbgrader's autograde there and writes ``result.json``,
a :class:`WorkerResult`: the grades read back from the job's own gradebook plus each test cell's
failure message. Only the parent process writes the course gradebook.

A failure is either the submission's (:attr:`WorkerResult.failure`: nbgrader could not grade it,
e.g. its code ended the kernel) or the tool's (:attr:`WorkerResult.tool_error`: the worker itself
failed, or the kernel died before it ran any cell); the worker decides which, once.

Tracebacks are cut to their final ``ename: evalue`` text before the feedback is rendered, so a
failing hidden assert does not show its source.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import cells, course, execute, verdict
from .messages import STDERR_MESSAGE, error_text, summary

RESULT_FILE = "result.json"
#: What nbgrader logs when the kernel died before it answered its first request.
KERNEL_DID_NOT_START = "Kernel died before replying to kernel_info"
KERNEL_NOT_STARTED_ERROR = ("the grading kernel died before it ran any cell (a problem of the "
                            "grading machine, not of this notebook): run autograde again to grade it")


@dataclass
class CellGrade:
    """One graded cell as the job's gradebook holds it after autograding."""
    auto_score: float | None
    max_score: float
    needs_manual_grade: bool
    auto_comment: str | None = None


@dataclass
class WorkerResult:
    """What grading one job gave (``result.json``; notebooks are named without ``.ipynb``)."""
    grades: dict[str, dict[str, CellGrade]] = field(default_factory=dict)  # nb -> grade_id -> grade
    messages: dict[str, dict[str, str]] = field(default_factory=dict)      # nb -> test cell -> error
    cell_errors: dict[str, dict[str, str]] = field(default_factory=dict)   # nb -> other cell -> error
    autograded: dict[str, str] = field(default_factory=dict)  # nb -> graded notebook in the job
    failure: str | None = None     # why nbgrader could not grade the submission (its own doing)
    tool_error: str | None = None  # why the grading tool could not grade it (never the student's)
    kernel_started: bool = True    # False: the kernel died before any cell, worth another try
    seconds: float = 0.0
    #: where the worker's seconds went (``grading.autograde`` sums them per run): ``setup`` (the
    #: API, the checks' plans), ``kernel_start``, ``cells``, ``nbgrader`` (autograde's own work
    #: around the kernel), ``verdicts``, ``read_grades``; ``slowest_cells``
    timings: dict = field(default_factory=dict)

    @property
    def graded(self) -> bool:
        return self.failure is None and self.tool_error is None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "WorkerResult":
        data = json.loads(text)
        data["grades"] = {nb: {gid: CellGrade(**g) for gid, g in grades.items()}
                          for nb, grades in data.get("grades", {}).items()}
        return cls(**data)


def _write(nb, nb_path: Path) -> None:
    """Rewrite a graded notebook: nbgrader leaves it read-only (0444), which only root ignores."""
    import nbformat

    os.chmod(nb_path, 0o644)
    nbformat.write(nb, nb_path)


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
                line = error_text(out.get("ename", "Error"), out.get("evalue", ""))
                out.traceback = [line]
                msg = msg or line
            elif out.output_type == "stream" and out.name == "stderr" and not msg:
                if not (pattern and re.search(pattern, out.text)):
                    msg = STDERR_MESSAGE
                # a Python traceback printed to stderr may quote hidden source lines
                if "Traceback (most recent call last)" in out.text:
                    out.text = "\n".join(ln for ln in out.text.splitlines()
                                         if not ln.startswith("  ")) + "\n"
        if cells.is_test(cell):
            messages[cells.grade_id(cell)] = msg
        elif msg and msg != STDERR_MESSAGE:
            other_errors[cells.display_name(nb.cells, index)] = msg
    _write(nb, nb_path)
    return messages, other_errors


def describe_failure(error: str | None) -> str:
    """One line saying why nbgrader could not grade a notebook, from its error log."""
    text = error or ""
    if "DeadKernelError" in text or "Kernel died" in text:
        return ("the kernel died while running the notebook (the code ended Python, e.g. "
                "os._exit, a crash, or ran out of memory)")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Exit)\b", ln.strip()) and "NbGraderException" not in ln:
            return summary(ln)
    return summary(lines[-1]) if lines else "failed"


def _autograde_error(res: dict) -> str:
    """The exception lines of a failed ``NbGraderAPI.autograde`` call, with its error text."""
    key_lines = [ln.strip() for ln in (res.get("log") or "").splitlines()
                 if re.match(r"^\s*[\w.]+(Error|Exception)\b", ln) and "Warning" not in ln]
    return "\n".join(key_lines[-5:] + [(res.get("error") or "")[-2000:]])


def apply_verdicts(api, a: str, s: str, out_dir: Path, sessions: dict, job_dir: Path,
                   probe_rel: str) -> None:
    """Judge the trusted checks (``grading.verdict``) from the records the kernel left, then make
    the job's gradebook and graded notebook say so: a failed verdict scores its cell 0 and becomes
    the cell's error output (in place of a visible assert's, since it names the likely cause)."""
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
            gid = cells.grade_id(cell)
            if cell.cell_type == "code" and gid in failed:
                if not verdicts[gid].ran and any(o.get("output_type") == "error" for o in cell.outputs):
                    continue  # the cell's own error says why nothing ran (e.g. the kernel died)
                cell.outputs = [o for o in cell.outputs if o.get("output_type") != "error"] + [
                    nbformat.v4.new_output("error", ename="CheckFailed", evalue=failed[gid],
                                           traceback=[f"CheckFailed: {failed[gid]}"])]
        _write(nb, nb_path)
        with course.quiet_nbgrader(), api.gradebook as gb:
            snb = gb.find_submission_notebook(nb_name, a, s)
            for g in snb.grades:
                if g.name in failed:
                    g.auto_score = 0.0
            gb.db.commit()


def grade_job(job: Path) -> WorkerResult:
    """Autograde the submission of the job folder ``job`` and read its grades back."""
    t_setup = time.perf_counter()
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
    result = WorkerResult()
    # Trusted checks: planned with a seed the kernel never sees, judged after nbgrader ran.
    sessions: dict[str, dict] = {}
    if spec.get("probe_dir"):
        seed = secrets.randbits(62)
        for nb_path in course.assignment_notebooks(root, a):
            sessions[nb_path.stem] = verdict.plan_checks(course.read_json(nb_path),
                                                         os.path.join(spec["probe_dir"], "plan"), seed)
    t0 = time.perf_counter()
    timings = result.timings
    timings["setup"] = round(t0 - t_setup, 3)
    execute.CourseExecute.last_timings = {}
    res = api.autograde(a, s, force=True, create=True)  # its log (stderr) goes to the slot's log
    t1 = time.perf_counter()
    ran = execute.CourseExecute.last_timings
    timings["kernel_start"] = ran.get("kernel_start", 0.0)
    timings["cells"] = ran.get("cells", 0.0)
    timings["nbgrader"] = round(t1 - t0 - timings["kernel_start"] - timings["cells"], 3)
    timings["slowest_cells"] = ran.get("slowest_cells", [])
    if not res["success"]:
        error = _autograde_error(res)
        if KERNEL_DID_NOT_START in error:
            result.kernel_started, result.tool_error = False, KERNEL_NOT_STARTED_ERROR
        else:
            result.failure = describe_failure(error)
    out_dir = root / "autograded" / s / a
    if res["success"] and any(sessions.values()):
        apply_verdicts(api, a, s, out_dir, sessions, Path(spec["job_dir"]), spec["probe_rel"])
    for nb_path in sorted(out_dir.glob("*.ipynb")):
        result.messages[nb_path.stem], result.cell_errors[nb_path.stem] = \
            strip_tracebacks(nb_path, pattern)
        result.autograded[nb_path.stem] = str(nb_path)
    t2 = time.perf_counter()
    timings["verdicts"] = round(t2 - t1, 3)
    # No nbgrader generate_feedback here: the parent renders the course's own pages from the
    # graded notebook and the gradebook (grading.feedback_html), which saved about 1 s per job.
    with course.quiet_nbgrader(), api.gradebook as gb:
        try:
            sub = gb.find_submission(a, s)
        except Exception as exc:  # noqa: BLE001
            if result.graded:
                result.tool_error = f"no submission in the job's gradebook: {exc}"
        else:
            for snb in sub.notebooks:
                comments = {c.name: c.auto_comment for c in snb.comments}
                result.grades[snb.name] = {
                    g.name: CellGrade(g.auto_score, float(g.max_score), bool(g.needs_manual_grade),
                                      comments.get(g.name))
                    for g in snb.grades}
    result.seconds = round(time.perf_counter() - t0, 2)
    timings["read_grades"] = round(time.perf_counter() - t2, 3)
    return result


#: This worker's warm-kernel server (``grading.zygote``), started with its first job that asks
#: for warm kernels and kept for the next ones.
_zygote = None


def _warm_kernels(wanted: bool) -> None:
    """Make this worker's kernel launchers fork from the warm-kernel server (or start cold)."""
    global _zygote
    from . import zygote

    if not wanted:
        os.environ.pop(zygote.ENV_SOCKET, None)
        return
    if _zygote is None or not _zygote.alive():
        try:
            _zygote = zygote.Zygote(env={k: v for k, v in os.environ.items() if k != zygote.ENV_SOCKET})
        except (OSError, RuntimeError) as exc:
            print(f"grading: no warm kernels ({exc}); kernels start cold", file=sys.stderr)
            _zygote = None
            os.environ.pop(zygote.ENV_SOCKET, None)
            return
    os.environ[zygote.ENV_SOCKET] = _zygote.socket


#: The line (then `` 1`` or `` 0``: with or without warm kernels) that asks a ``--serve``
#: worker to get ready before its first job; it answers ``DONE`` and the line, as for a job (a
#: job is an absolute path).
WARM = "WARM"


def warm_up(kernels: bool) -> None:
    """Do now what a slot's first job would otherwise wait for: nbgrader's imports and, with
    ``kernels``, the warm-kernel template (a few seconds, while the parent still builds templates)."""
    import nbformat  # noqa: F401
    from nbgrader.apps import NbGraderAPI  # noqa: F401

    _warm_kernels(kernels)


def run_one(job: Path) -> None:
    """Grade one job folder and write its ``result.json`` (errors included, never raised)."""
    spec = json.loads((job / "job.json").read_text())
    for key, value in (spec.get("env") or {}).items():
        os.environ[key] = value
    _warm_kernels(bool(spec.get("warm_kernels")))
    try:
        result = grade_job(job)
    except Exception as exc:  # noqa: BLE001  (reported to the parent, never fatal to others)
        traceback.print_exc(file=sys.stderr)  # the slot's log
        result = WorkerResult(tool_error=f"the grading worker failed: {type(exc).__name__}: {exc}")
    (job / RESULT_FILE).write_text(result.to_json())


def main(argv: list[str] | None = None) -> int:
    """``worker JOB`` grades one job; ``worker --serve`` grades the job folders read from stdin,
    one per line, answering ``DONE <folder>`` on stdout after each (one process per --jobs slot,
    so nbgrader is imported once per slot, not once per student); a :data:`WARM` line gets it
    ready first."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve":
        out = sys.stdout
        sys.stdout = sys.stderr  # nothing but the protocol on the real stdout
        try:
            for line in sys.stdin:
                job = line.strip()
                if not job:
                    continue
                if job.startswith(WARM):
                    try:
                        warm_up(job.split()[-1] == "1")
                    except Exception:  # noqa: BLE001  (the first job starts them itself)
                        traceback.print_exc(file=sys.stderr)
                else:
                    run_one(Path(job))
                out.write(f"DONE {job}\n")
                out.flush()
        finally:
            if _zygote is not None:
                _zygote.close()
        return 0
    run_one(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

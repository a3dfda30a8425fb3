"""``python -m grading autograde``: grade a folder or zip of submissions with nbgrader, in parallel,
each student isolated in a throw-away course copy.

Trusted: runs in the grader's own process. Student code only ever runs in the kernel of a job.

This module is the orchestration; each step lives in a module of its own:

1. ``grading.collect`` finds ``(student, assignment, notebooks)`` in the tree or LMS download.
2. ``grading.template``: per assignment, a template course (``solutions/<a>`` copy +
   ``generate_assignment`` into a template SQLite gradebook) is built once; the course gradebook
   (``--db``) gets the assignment.
3. ``grading.jobs.prepare``: per submission, ``grading.sanitize`` (bad files -> 0 with the reason,
   duplicates, front-end metadata, ``skip-execution``), ``grading.tamper`` (static scan), a
   content hash (unchanged submissions are not regraded unless ``--force``; see ``grading.state``).
4. ``grading.jobs.run_job``: jobs run ``python -m grading.worker`` in their own temporary course
   copy (own gradebook copy, cwd inside it), ``--jobs`` at a time. Each job's kernel runs in
   bubblewrap's allow-list (``grading.isolation``, ``grading.bwrap``, ``grading.kernel_launcher``):
   no repository, grading code, submissions or gradebook on its file system, no network, its own
   pid namespace; as root under an unprivileged uid of its own, in a memory cgroup
   (``grading.limits``). Whatever the job's uid still runs afterwards is killed. The kernel talks
   to nbgrader over Unix sockets in its own folder. The worker plans the trusted checks before
   the kernel starts and judges them after it finished (``grading.verdict``).
5. The parent alone writes the course gradebook and the rows (``grading.results``), ``grades.csv``
   and ``questions.csv`` (``grading.state``, totals from ``grading.totals``), the feedback HTML
   (``feedback/<student>/<assignment>/<nb>.html``, hidden tests removed and checked:
   ``grading.feedback``; a notebook that could not be run gets one too, saying why it scored 0),
   the graded notebooks (``autograded/<student>/<assignment>/``) and, for the TAs' grading page,
   the written answers with the outputs the student handed in (``submitted_outputs/``:
   ``grading.submitted``).

Every file under SUBMISSIONS is graded or listed, with the reason, in ``unmatched.csv`` under
``--out`` and on the terminal (:attr:`Report.not_graded`): a PDF, a folder whose name is no
assignment, an empty folder, a link. A SUBMISSIONS folder without any file is an error.

Exit status is non-zero only for the tool's own errors (:attr:`Report.errors`), never for a
student's code; a submission that cannot be matched to an assignment is reported
(:attr:`Report.not_graded`) but is not an error of the tool.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from . import course, datacache, isolation, limits
from .collect import Skipped, collect
from .course import ToolError
from .feedback import write_pages
from .jobs import Job, WorkerSlot, prepare, run_job_with_retry, submission_digest, warm_kernels
from .results import build_rows, write_gradebook
from .state import grade_table, load_state, save_state, write_csvs
from .submitted import keep_submitted
from .template import Template, build_template, register_assignment
from .worker import WorkerResult

__all__ = ["Report", "ToolError", "autograde", "autograde_cli"]

log = logging.getLogger("grading.autograde")
#: Seconds between two writes of the state file while grading (and once at the end).
STATE_SAVE_EVERY_S = 10.0


@dataclass
class Report:
    graded: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)      # the tool's own errors (exit status 1)
    not_graded: list[str] = field(default_factory=list)  # files not graded, with the reason
    seconds: float = 0.0
    out: Path | None = None
    #: where the seconds of the graded jobs went, summed over jobs (phase -> seconds): the job
    #: folder (``lay_out``), the worker's phases (``grading.worker.WorkerResult.timings``), and the
    #: parent's ``rows``, ``gradebook``, ``files`` and ``state`` per job
    timings: dict[str, float] = field(default_factory=dict)


def _shorten(text: str, limit: int = 160) -> str:
    """One log line's worth of the notes; the full text is in grades.csv."""
    return text if len(text) <= limit else text[:limit - 25] + f"... (+{len(text) - limit + 25} chars)"


def _store_files(job: Job, out: Path, db_url: str, qrows: list[dict]) -> None:
    """The job's graded notebooks into ``out``, the answers and outputs the student handed in (for
    the TAs' grading page), then its feedback pages (``grading.feedback``: hidden tests removed;
    written answers "awaiting grading"), one for every notebook."""
    a, s = job.tpl.assignment, job.sub.student
    keep_submitted(job, out)
    for rel, data in job.files.items():
        kind, nb_name = rel.split("/", 1)
        if kind == "autograded":
            dest = out / "autograded" / s / a / f"{nb_name}.ipynb"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    stale = out / "autograded" / s / a
    for nb in stale.glob("*.ipynb") if stale.is_dir() else ():
        if nb.stem in job.zero_reasons:  # an earlier graded version of a notebook now unreadable
            nb.unlink()
    try:
        write_pages(out, db_url, s, a, job.tpl.root, job.zero_reasons,
                    {q["cell_id"]: q["message"] for q in qrows})
    except Exception as exc:  # noqa: BLE001  (the grades stand; `feedback` can write it again)
        log.error("%s/%s: no feedback page: %s: %s", s, a, type(exc).__name__, exc)


def write_unmatched(out: Path, skipped: list[Skipped]) -> Path:
    """``<out>/unmatched.csv``: every file under SUBMISSIONS that was not graded, and why."""
    dest = out / "unmatched.csv"
    with open(dest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "reason"])
        for sk in skipped:
            w.writerow([getattr(sk, "path", sk), getattr(sk, "reason", "")])
    return dest


def _templates(subs, root: Path, workdir: Path, db_url: str) -> dict[str, Template]:
    templates = {}
    for a in sorted({s.assignment for s in subs}):
        templates[a] = build_template(a, root, workdir)
        register_assignment(templates[a], db_url)
    return templates


def autograde(submissions: Path | str, out: Path | str = "autograded", assignment: str | None = None,
              jobs: int | None = None, db_url: str | None = None, force: bool = False,
              timeout: int | None = None, root: Path | str = course.REPO_ROOT,
              progress: bool = True, notebook_timeout: int | None = None,
              memory_mb: int | None = None, scheduler: str | None = None) -> Report:
    """Autograde every submission found under ``submissions``; see the module docstring.

    ``scheduler``: the address of a Dask distributed scheduler (``tcp://host:8786``) whose
    workers grade the jobs (``grading.cluster``); None grades them here, ``jobs`` at a time.

    ``assignment`` may be an id or a ``01``-style prefix (``ValueError`` when it names none).
    """
    course.ensure_path()
    t_start = time.perf_counter()
    root, out = Path(root).resolve(), Path(out).resolve()
    # --out holds every student's grades, notebooks and feedback: the grader's alone
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    db_url = db_url or f"sqlite:///{out / 'gradebook.db'}"
    known = course.list_assignments(root)
    if assignment is not None:
        assignment = course.resolve_assignment(assignment, root)
    src = Path(submissions)
    if src.is_dir() and not any(p.is_file() or p.is_symlink() for p in src.rglob("*")):
        raise ToolError(f"the submissions folder {src} holds no file: give the folder of the "
                        "<student>/<assignment>/<notebook>.ipynb submissions or the LMS download")
    skipped: list[Skipped] = []
    subs = collect(submissions, known, assignment, skipped=skipped)
    report = Report(out=out)
    for s in subs:
        if s.assignment not in known:
            why = "; ".join(s.problems) or "unknown assignment"
            skipped.extend(Skipped(o, f"{why} (student {s.student})") for o in s.origin)
    subs = [s for s in subs if s.assignment in known]
    report.not_graded = list(skipped)
    write_unmatched(out, skipped)
    for note in skipped:
        log.warning("not graded: %s", note)
    if not subs:
        raise ToolError(f"no submission found in {submissions}"
                        + (f" ({len(skipped)} file(s) not graded, listed in {out / 'unmatched.csv'})"
                           if skipped else ""))
    for d in ("data", "checkpoints"):  # helpers create them; an unprivileged kernel cannot
        (root / d).mkdir(exist_ok=True)
    jobs = max(1, jobs or os.cpu_count() or 1)
    state = load_state(out)
    workdir = Path(tempfile.mkdtemp(prefix="autograde-"))
    os.chmod(workdir, 0o711)
    # what a kernel must never see: the sources, the grading code, the output folder
    hidden = [p for p in (root / course.SOURCE_DIR, course.REPO_ROOT / course.SOURCE_DIR,
                          course.GRADING_DIR, out) if p.exists()]
    job_limits = limits.JobLimits(root, notebook_timeout, memory_mb)
    mode = None
    if scheduler is None:
        mode, why = isolation.isolation_mode(hidden, workdir)
        (log.info if mode != "none" else log.warning)("isolation: %s", why)
        if mode in isolation.CONFINED:
            isolation.warn_unreadable_shared_dirs()
        if mode not in isolation.CONFINED or not limits.available():
            job_limits.memory_mb = 0  # no cgroup can be made here: said once, then graded anyway
    else:  # each Dask worker probes its own sandbox and says so with its first result
        log.info("grading on the Dask cluster at %s", scheduler)
    log.info("limits: %r", job_limits)
    redirect = contextlib.ExitStack()
    all_slots: list[WorkerSlot] = []
    if scheduler is None and (force or any(
            not (state["submissions"].get(f"{s.student}/{s.assignment}") or {}).get("digest")
            for s in subs)):
        # The slots' workers start now (nbgrader's imports, the warm-kernel template: seconds of
        # their own), while this process builds the templates; a run with nothing new to grade
        # starts them only if a resubmission turns up.
        all_slots = [WorkerSlot(workdir) for _ in range(min(jobs, len(subs)))]
        for sl in all_slots:
            sl.warm(warm_kernels(mode, job_limits))
    try:
        templates = _templates(subs, root, workdir, db_url)
        if db_url.startswith("sqlite:///") and Path(db_url[len("sqlite:///"):]).is_file():
            os.chmod(db_url[len("sqlite:///"):], 0o600)
        if scheduler is None:
            datacache.warm(datacache.loaders_used(nb for t in templates.values()
                                                  for nb in t.source.values()))
        log.info("%d assignment template(s) ready after %.1f s", len(templates),
                 time.perf_counter() - t_start)
        todo: list[Job] = []
        for sub in subs:
            tpl = templates[sub.assignment]
            prev = state["submissions"].get(f"{sub.student}/{sub.assignment}")
            if prev and prev.get("digest") == submission_digest(sub, tpl) and not force:
                report.skipped += 1
                continue
            todo.append(prepare(sub, tpl, job_limits.max_notebook_bytes))
        to_run = [j for j in todo if j.runnable]
        # longest first (a notebook's code size is a fair proxy): the slots finish together
        to_run.sort(key=lambda j: -sum(len(json.dumps(nb)) for nb in j.tpl.source.values()))
        for j in todo:
            if j.flags:
                log.warning("%s flagged for review: %s", j.key, "; ".join(j.flags))
            for nb, reason in j.zero_reasons.items():
                log.warning("%s/%s scores 0: %s", j.key, nb, reason)
        bar = None
        if progress and to_run:
            from tqdm.auto import tqdm
            # tqdm's own helper: log lines are written above the bar, never glued onto it
            from tqdm.contrib.logging import logging_redirect_tqdm

            bar = tqdm(total=len(to_run), desc="autograde", unit="nb", file=sys.stderr)
            redirect.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))

        saved = [time.perf_counter()]

        def finish(j: Job) -> None:
            t = [time.perf_counter()]
            grow, qrows, updates = build_rows(j)
            t.append(time.perf_counter())
            write_gradebook(db_url, j, updates)
            t.append(time.perf_counter())
            _store_files(j, out, db_url, qrows)
            t.append(time.perf_counter())
            res = j.result
            if res is not None and res.tool_error:
                report.errors.append(f"{j.key}: {res.tool_error}")
            state["submissions"][j.key] = {  # no digest: the next run grades it again
                "digest": None if res is not None and res.tool_error else j.digest,
                "grades": grow, "questions": qrows, "seconds": j.wall_seconds,
                "lms": j.sub.lms, "zero_reasons": j.zero_reasons}
            if res is not None and not res.graded:
                log.warning("%s: autograde problem: %s", j.key, res.tool_error or res.failure)
            log.info("%s: %s/%s%s%s%s", j.key, grow["auto_score"], grow["auto_max"],
                     f" ({j.memory_peak_mb:.0f} MB peak)" if j.memory_peak_mb else "",
                     " (review)" if grow["review"] else "",
                     f" [{_shorten(grow['notes'])}]" if grow["notes"] else "")
            report.graded += 1
            # The state file holds every submission: written after each job it cost O(n^2) for a
            # course's term. A lost state entry only means the job is graded again next time.
            if time.perf_counter() - saved[0] >= STATE_SAVE_EVERY_S:
                save_state(out, state)
                saved[0] = time.perf_counter()
            t.append(time.perf_counter())
            for phase, a, b in (("rows", 0, 1), ("gradebook", 1, 2), ("files", 2, 3), ("state", 3, 4)):
                j.timings[phase] = round(t[b] - t[a], 3)
            for phase, sec in j.timings.items():
                report.timings[phase] = report.timings.get(phase, 0.0) + sec
            slowest = (res.timings.get("slowest_cells") if res is not None else None) or []
            log.debug("%s: seconds %s; slowest cells %s", j.key, j.timings, slowest)

        for j in todo:
            if not j.runnable:
                finish(j)
        if scheduler is not None:
            from .cluster import run_on_cluster

            def done(j: Job) -> None:
                finish(j)
                if bar is not None:
                    bar.update(1)

            if to_run:
                run_on_cluster(scheduler, to_run, timeout, job_limits, done)
        else:
            slots: queue.Queue = queue.Queue()
            n_slots = min(jobs, max(1, len(to_run)))
            for sl in all_slots[n_slots:]:  # started for submissions that turned out unchanged
                sl.close()
            all_slots[n_slots:] = []
            all_slots += [WorkerSlot(workdir) for _ in range(n_slots - len(all_slots))]
            uids = isolation.UidPool() if mode in isolation.CONFINED else None
            for sl in all_slots:
                slots.put(sl)

            def run_in_slot(j: Job, i: int) -> None:
                sl = slots.get()
                try:
                    run_job_with_retry(j, i, workdir, mode, timeout, sl, uids, job_limits, log)
                finally:
                    slots.put(sl)

            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(run_in_slot, j, i): j for i, j in enumerate(to_run)}
                for fut in as_completed(futures):
                    j = futures[fut]
                    try:
                        fut.result()
                    except Exception as exc:  # noqa: BLE001  (a tool error, reported at the end)
                        j.result = WorkerResult(tool_error=f"{type(exc).__name__}: {exc}")
                    finish(j)
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        redirect.close()
        write_csvs(out, state, db_url)
    finally:
        redirect.close()
        for sl in all_slots:
            sl.close()
        save_state(out, state)  # also when the run stops half-way: what was graded stays graded
        shutil.rmtree(workdir, ignore_errors=True)
    report.seconds = time.perf_counter() - t_start
    return report


def autograde_cli(args) -> int:
    try:
        rep = autograde(args.submissions, out=args.out, assignment=args.assignment, jobs=args.jobs,
                        db_url=args.db, force=args.force, timeout=args.timeout, root=args.root,
                        notebook_timeout=args.notebook_timeout, memory_mb=args.memory_mb,
                        scheduler=getattr(args, "scheduler", None))
    except (ToolError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    print(grade_table(rep.out))
    print(f"\ngraded {rep.graded}, unchanged {rep.skipped}, in {rep.seconds:.1f} s; "
          f"wrote {rep.out / 'grades.csv'}, {rep.out / 'questions.csv'}, {rep.out / 'feedback'}")
    for e in rep.not_graded:
        print(f"not graded: {e}", file=sys.stderr)
    if rep.not_graded:
        print(f"{len(rep.not_graded)} file(s) not graded, listed with the reason in "
              f"{rep.out / 'unmatched.csv'}", file=sys.stderr)
    for e in rep.errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if rep.errors else 0

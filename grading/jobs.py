"""One student's assignment as a job: prepared in the parent, graded by a worker in a folder of its own.

Trusted: runs in the grader's own process.

:func:`prepare` matches a submission's files to the assignment's notebooks, sanitizes and scans
them (``grading.sanitize``, ``grading.tamper``). :func:`run_job` lays out a fresh copy of the
template course in a job folder (the submission, a copy of the template gradebook, the job's
kernelspec and scratch ``home``), hands the folder to a :class:`WorkerSlot` (one long-lived
``python -m grading.worker --serve`` per ``--jobs`` slot) and returns the worker's result with the
files it wrote, before the folder goes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import course, isolation, limits
from .collect import Submission
from .course import ToolError
from .isolation import UidPool
from .sanitize import sanitize
from .slow import SlowCells, mark_left_out
from .tamper import scan_notebook
from .template import Template
from .worker import RESULT_FILE, WARM, WorkerResult


@dataclass
class Job:
    sub: Submission
    tpl: Template
    digest: str
    notebooks: dict[str, dict | None]        # nb name -> sanitized notebook (None: scores 0)
    zero_reasons: dict[str, str]             # nb name -> why it scores 0
    notes: list[str]
    flags: list[str]
    result: WorkerResult | None = None       # None: nothing to run (every notebook scores 0)
    files: dict[str, bytes] = field(default_factory=dict)  # "autograded/<nb>"
    wall_seconds: float | None = None
    memory_peak_mb: float | None = None     # the kernel's peak memory (as root, from its cgroup)
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds (see Report.timings)

    @property
    def key(self) -> str:
        return f"{self.sub.student}/{self.tpl.assignment}"

    @property
    def runnable(self) -> bool:
        return any(nb is not None for nb in self.notebooks.values())


def submission_digest(sub: Submission, tpl: Template) -> str:
    h = hashlib.sha256(tpl.digest.encode())
    for name in sorted(sub.files):
        h.update(name.encode() + b"\0" + hashlib.sha256(sub.files[name]).digest())
    return h.hexdigest()


def prepare(sub: Submission, tpl: Template, max_notebook_bytes: int | None = None) -> Job:
    """Match files to the assignment's notebooks, sanitize and scan them."""
    notebooks, reasons, notes, flags = {}, {}, list(sub.problems), []
    files = dict(sub.files)
    expected = list(tpl.release)
    for name in expected:
        raw = files.pop(f"{name}.ipynb", None)
        if raw is None and len(expected) == 1 and len(files) == 1:
            other, raw = files.popitem()  # renamed upload ("01_x (1).ipynb", "notebook.ipynb")
            notes.append(f"used {other} as {name}.ipynb")
        s = sanitize(raw, tpl.release[name], max_bytes=max_notebook_bytes)
        notes.extend(f"{name}: {n}" for n in s.notes)
        if s.nb is None:
            reasons[name] = s.zero_reason or "unreadable"
            notebooks[name] = None
            continue
        notebooks[name] = s.nb
        for f in scan_notebook(s.nb, tpl.release[name]):
            flags.append(f"{name}: {f}")
        mark_left_out(s.nb, tpl.slow.get(name, SlowCells()))  # after the scan: it reads the student's cells
    for extra in files:
        notes.append(f"ignored extra file {extra}")
    return Job(sub, tpl, submission_digest(sub, tpl), notebooks, reasons, notes, flags)


class WorkerSlot:
    """One long-lived ``grading.worker --serve`` process (one per --jobs slot)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.warming: str | None = None  # the answer to the warm-up, while it has not come
        self.log = open(workdir / f"worker-{id(self)}.log", "ab")

    def _start(self) -> None:
        env = course.grading_env()
        env.pop("JUPYTER_CONFIG_DIR", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "grading.worker", "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env, cwd=str(self.workdir))

    def warm(self, kernels: bool) -> None:
        """Start the worker now and let it get ready (``grading.worker.warm_up``) while the parent
        goes on; the first job's answer comes after it. Best effort: a worker that died is
        started again by :meth:`run`."""
        try:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            self.warming = f"DONE {WARM} {int(kernels)}"
            self.proc.stdin.write(f"{WARM} {int(kernels)}\n".encode())
            self.proc.stdin.flush()
        except OSError:
            self.proc, self.warming = None, None

    def wait_warm(self) -> None:
        """Wait until the worker has got ready (or died: :meth:`run` starts another)."""
        while self.warming and self.proc is not None:
            line = self.proc.stdout.readline()
            if not line or line.decode(errors="replace").strip() == self.warming:
                self.warming = None

    def run(self, job_dir: Path) -> int | None:
        """Send one job; returns None when done, or the worker's exit code if it died."""
        for _ in range(2):
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            try:
                self.proc.stdin.write(f"{job_dir}\n".encode())
                self.proc.stdin.flush()
            except BrokenPipeError:
                self.proc = None
                continue
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    code = self.proc.wait()
                    self.proc = None
                    return code
                text = line.decode(errors="replace").strip()
                if text == self.warming:
                    self.warming = None
                elif text == f"DONE {job_dir}":
                    return None
        return -1

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except Exception:  # noqa: BLE001
                self.proc.kill()
        self.log.close()


def warm_kernels(mode: str | None, job_limits: limits.JobLimits | None) -> bool:
    """Whether a job's kernel is forked from its worker's warm template (``grading.zygote``):
    in the uid sandbox (root), unless the course config turns it off."""
    return mode == "bwrap" and bool(job_limits and job_limits.warm_kernels)


def _scratch_links(src: Path, dest: Path) -> None:
    """``dest`` holding a symlink to every file of ``src``: a notebook reads the course's data and
    checkpoints through it, and its own writes (helpers write to a temporary file, then
    ``os.replace``) replace the link in the job's folder, never the course's file."""
    dest.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        for f in src.iterdir():
            if f.is_file():
                (dest / f.name).symlink_to(f.resolve())


def _lay_out(job: Job, job_dir: Path, mode: str, uid: int, timeout: int | None,
             cgroup: str | None, job_limits: limits.JobLimits | None) -> None:
    """Write the job folder the worker reads (see ``grading.worker``)."""
    a, s = job.tpl.assignment, job.sub.student
    course_dir = job_dir / "course"
    shutil.copytree(job.tpl.root / course.SOURCE_DIR, course_dir / course.SOURCE_DIR)
    shutil.copyfile(job.tpl.db, course_dir / "gradebook.db")
    sub_dir = course_dir / "submitted" / s / a
    sub_dir.mkdir(parents=True)
    for name, nb in job.notebooks.items():
        if nb is not None:
            (sub_dir / f"{name}.ipynb").write_text(json.dumps(nb, indent=1))
    isolation.write_kernel_spec(job_dir, mode, uid, cgroup, job_limits)
    home = job_dir / "home"
    for src, name in zip(isolation.shared_dirs(), ("data", "checkpoints")):
        _scratch_links(src, home / name)
    # The kernel's Unix sockets lie in its own home (0700, its uid): no other job can take
    # its ports before it binds them (it would die at start), or connect to it.
    kernel_manager = course.ipc_kernel(str(home / "zmq"))
    # The trusted checks' plans and the kernel's records (``gradeprobe``) lie in its home.
    env = {"JUPYTER_PATH": str(job_dir / "kernels"), "HOME": str(home),
           "DIFFUSION_DATA_DIR": str(home / "data"),
           "DIFFUSION_CHECKPOINT_DIR": str(home / "checkpoints"),
           "GRADEPROBE_DIR": str(home / "probe"),
           # the kernel has no network: a download attempt would only cost it seconds
           "DIFFUSION_NO_DOWNLOAD": "1"}
    if mode != "none" and kernel_manager.get("transport") != "ipc":
        raise ToolError(f"the job folder's path is too long for the kernel's Unix sockets: {home}")
    (job_dir / "job.json").write_text(json.dumps(
        {"assignment": a, "student": s, "kernel_name": isolation.KERNEL_NAME, "timeout": timeout,
         "env": env, "kernel_manager": kernel_manager, "job_dir": str(job_dir),
         "probe_dir": str(home / "probe"), "probe_rel": "home/probe",
         "memory_cgroup": cgroup, "memory_mb": job_limits.memory_mb if job_limits else 0,
         # kernels forked from the worker's warm template into this sandbox (grading.zygote)
         "warm_kernels": warm_kernels(mode, job_limits),
         "notebook_timeout": job_limits.notebook_timeout if job_limits else 0}))
    os.chmod(job_dir, 0o711)
    os.chmod(course_dir, 0o711)
    os.chmod(course_dir / "gradebook.db", 0o600)
    os.chmod(course_dir / course.SOURCE_DIR, 0o700)
    os.chmod(course_dir / "submitted", 0o700)


def run_job(job: Job, index: int, workdir: Path, mode: str, timeout: int | None,
            slot: WorkerSlot, uids: UidPool | None = None,
            job_limits: limits.JobLimits | None = None) -> None:
    """Grade one job on a fresh copy of the template course in a worker slot; sets its
    ``result``, ``files`` and ``wall_seconds``."""
    job_dir = Path(tempfile.mkdtemp(prefix=f"job-{index:04d}-", dir=workdir))
    uid, uid_lock = uids.claim() if uids is not None else (
        isolation.UID_BASE + index % UidPool.SIZE, None)
    confined = mode in isolation.CONFINED
    cgroup = None
    t_start = time.perf_counter()
    try:
        if confined:
            isolation.reap_uid(uid)
            cgroup = limits.create(f"{job_dir.name}-{uid}", job_limits.memory_mb if job_limits else 0)
        t_reap = time.perf_counter()
        _lay_out(job, job_dir, mode, uid, timeout, cgroup, job_limits)
        t0 = time.perf_counter()
        job.timings["reap_and_cgroup"] = round(t_reap - t_start, 3)
        job.timings["lay_out"] = round(t0 - t_reap, 3)
        died = slot.run(job_dir)
        res_file = job_dir / RESULT_FILE
        if res_file.is_file():
            job.result = WorkerResult.from_json(res_file.read_text())
        else:
            job.result = WorkerResult(tool_error=f"grading worker died (exit {died}) without a result")
        job.wall_seconds = round(time.perf_counter() - t0, 2)
        job.files = {}  # the graded notebooks, before the job folder goes
        for nb_name, path in job.result.autograded.items():
            p = Path(path)
            if p.is_file() and job_dir in p.parents:
                job.files[f"autograded/{nb_name}"] = p.read_bytes()
        job.memory_peak_mb = limits.peak_mb(cgroup) if cgroup else None
        for phase, sec in job.result.timings.items():
            if isinstance(sec, (int, float)):
                job.timings[phase] = job.timings.get(phase, 0.0) + sec
        job.timings["worker_other"] = round(job.wall_seconds - sum(
            v for v in job.result.timings.values() if isinstance(v, (int, float))), 3)
    finally:
        t_clean = time.perf_counter()
        if confined:
            isolation.reap_uid(uid)
        limits.remove(cgroup)
        if uid_lock is not None:
            uid_lock.close()
        shutil.rmtree(job_dir, ignore_errors=True)
        job.timings["clean_up"] = job.timings.get("clean_up", 0.0) + round(time.perf_counter() - t_clean, 3)


def run_job_with_retry(job: Job, index: int, workdir: Path, mode: str, timeout: int | None,
                       slot: WorkerSlot, uids: UidPool | None = None,
                       job_limits: limits.JobLimits | None = None, log=None) -> None:
    """:func:`run_job`, once more when the kernel died before running any cell (the machine's
    fault, not the student's); the local pool and every Dask worker grade this way."""
    run_job(job, index, workdir, mode, timeout, slot, uids, job_limits)
    if not job.result.kernel_started:
        if log is not None:
            log.warning("%s: the kernel died before running any cell; trying again", job.key)
        run_job(job, index, workdir, mode, timeout, slot, uids, job_limits)

"""``autograde --scheduler ADDRESS``: the jobs of a run graded on a Dask distributed cluster.

Trusted: :func:`run_on_cluster` runs in the coordinating autograde process; :func:`grade_remote`
runs in a Dask worker process (as the grader: root for the uid sandbox), never in a student's
kernel.

Dask distributed was chosen over hand-made machinery (ssh, a job queue of our own) because it
already starts workers on Slurm (dask-jobqueue), Kubernetes (dask-kubernetes, the Dask Helm
chart) or by hand (``dask-scheduler`` / ``dask-worker``), notices a worker that dies and moves its
tasks to another, and sends Python values both ways. README "Grading on a cluster" says how.

What travels: each task carries one prepared job (the sanitized notebooks, already scanned and
marked by the coordinator; the assignment's template files and template gradebook; the limits),
and returns the :class:`~grading.worker.WorkerResult`, the graded notebooks
pages as bytes. A Dask worker grades exactly as a local slot does (``grading.jobs.run_job``: a
fresh job folder, its own kernel in the bubblewrap sandbox under a uid of its own, the memory
cgroup), from its own copy of the course (``helpers/``, ``gradeprobe/``, ``grading/``), its venv
and its data folder. It writes no gradebook, CSV or feedback of the course: the coordinating
process alone does (``grading.autograde``), after each result arrives.

Workers started with ``--preload grading.cluster`` (:func:`dask_setup`) probe their sandbox and
start a warm grading slot as they join, before any job comes.

A worker that dies mid-job loses no grade: the scheduler gives its task to another worker, at most
once (the coordinator sets the scheduler's ``allowed-failures`` to 1); a job whose second worker
dies too comes back as a tool error (the run exits 1, and the next run grades it again).
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Callable

from . import course, datacache, isolation, limits
from .collect import Submission
from .course import ToolError
from .dask_scheduler import allow_one_retry
from .jobs import Job, WorkerSlot, run_job_with_retry, warm_kernels
from .template import Template
from .worker import WorkerResult

log = logging.getLogger("grading.autograde")

#: What ``dask worker --preload`` is given, so that a worker gets ready as it joins (:func:`dask_setup`).
PRELOAD = "grading.cluster"
#: The folder of the course's Dask settings (``grading.yaml``), for ``DASK_CONFIG``.
DASK_CONFIG_DIR = Path(__file__).resolve().parent / "dask"
KILLED_TWICE = ("the Dask workers grading it died twice (a problem of the grading cluster, not of "
                "this notebook): run autograde again to grade it")


# -- the coordinator's side ----------------------------------------------------------------------


def template_payload(tpl: Template) -> dict:
    """What a worker needs of an assignment template: its files and its gradebook, as bytes."""
    src = tpl.root / course.SOURCE_DIR
    files = {str(p.relative_to(src)): p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file()}
    return {"assignment": tpl.assignment, "digest": tpl.digest, "files": files,
            "gradebook": tpl.db.read_bytes()}


def job_payload(job: Job, template: dict, timeout: int | None, job_limits: limits.JobLimits,
                loaders: list[str]) -> dict:
    return {"student": job.sub.student, "notebooks": job.notebooks, "template": template,
            "timeout": timeout, "limits": job_limits, "loaders": loaders}


def task_key(job: Job) -> str:
    """The Dask key of a job: names the student and assignment (the scheduler's dashboard shows it)."""
    return f"grade-{job.sub.student}-{job.tpl.assignment}-{uuid.uuid4().hex[:8]}"


def run_on_cluster(address: str, jobs: list[Job], timeout: int | None,
                   job_limits: limits.JobLimits, done: Callable[[Job], None]) -> None:
    """Grade ``jobs`` on the Dask cluster at ``address``; ``done(job)`` is called in this process
    as each result arrives (it writes the gradebook, the rows and the files)."""
    from distributed import Client, as_completed
    from distributed.scheduler import KilledWorker

    try:
        client = Client(address, timeout="60s")
    except (OSError, TimeoutError) as exc:
        raise ToolError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    with client:
        client.run_on_scheduler(allow_one_retry)  # from a module light enough for the scheduler
        n = len(client.scheduler_info().get("workers", {}))
        log.info("Dask scheduler %s: %d worker(s) now; %d job(s) to grade", address, n, len(jobs))
        templates: dict[str, dict] = {}
        loaders: dict[str, list[str]] = {}

        def submit(j: Job):
            a = j.tpl.assignment
            if a not in templates:
                templates[a] = template_payload(j.tpl)
                loaders[a] = datacache.loaders_used(j.tpl.source.values())
            return client.submit(grade_remote, job_payload(j, templates[a], timeout, job_limits, loaders[a]),
                                 key=task_key(j), pure=False, retries=0)

        # No more jobs in flight than the cluster has threads: a job waiting on a worker that dies
        # would count that death against it too (Dask's allowed-failures counts every job the
        # worker held). Workers that join later (an adaptive cluster) raise the count.
        pending = list(jobs)
        futures: dict = {}
        running = as_completed()
        seen_modes: set[tuple[str, str]] = set()

        def top_up() -> None:
            room = max(1, sum(client.nthreads().values())) - len(futures)
            while pending and room > 0:
                j = pending.pop(0)
                fut = submit(j)
                futures[fut] = j
                running.add(fut)
                room -= 1

        top_up()
        for fut in running:
            j = futures.pop(fut)
            try:
                out = fut.result()
            except KilledWorker:
                j.result = WorkerResult(tool_error=KILLED_TWICE)
            except Exception as exc:  # noqa: BLE001  (a tool error, reported at the end)
                j.result = WorkerResult(tool_error=f"on the Dask cluster: {type(exc).__name__}: {exc}")
            else:
                j.result = WorkerResult.from_json(out["result"])
                j.files, j.wall_seconds = out["files"], out["wall_seconds"]
                j.memory_peak_mb, j.timings = out["memory_peak_mb"], out["timings"]
                where = (out["worker"], out["isolation"])
                if where not in seen_modes:
                    seen_modes.add(where)
                    (log.info if out["confined"] else log.warning)("worker %s: isolation: %s", *where)
            top_up()
            done(j)


# -- the Dask worker's side ----------------------------------------------------------------------


class _WorkerState:
    """What a Dask worker process keeps between jobs: its work folder, its isolation mode (probed
    once), its uid pool, idle grading slots and the templates it has unpacked."""

    def __init__(self) -> None:
        course.ensure_path()
        self.workdir = Path(tempfile.mkdtemp(prefix="autograde-"))
        os.chmod(self.workdir, 0o711)
        hidden = [p for p in (course.REPO_ROOT / course.SOURCE_DIR, course.GRADING_DIR) if p.exists()]
        self.mode, self.why = isolation.isolation_mode(hidden, self.workdir)
        self.cgroups = self.mode in isolation.CONFINED and limits.available()
        if self.mode in isolation.CONFINED:
            isolation.warn_unreadable_shared_dirs()
        self.uids = isolation.UidPool() if self.mode in isolation.CONFINED else None
        self.slots: queue.Queue = queue.Queue()
        self.all_slots: list[WorkerSlot] = []
        self.templates: dict[str, Template] = {}
        self.warmed: set[str] = set()
        self.lock = threading.Lock()
        self.count = 0
        atexit.register(self.close)

    def template(self, payload: dict) -> Template:
        with self.lock:
            tpl = self.templates.get(payload["digest"])
            if tpl is None:
                root = self.workdir / f"template-{payload['assignment']}-{payload['digest'][:12]}"
                for rel, data in payload["files"].items():
                    dest = root / course.SOURCE_DIR / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(data)
                (root / "gradebook.db").write_bytes(payload["gradebook"])
                tpl = Template(payload["assignment"], root, root / "gradebook.db", {}, {}, {},
                               payload["digest"])
                self.templates[payload["digest"]] = tpl
            return tpl

    def warm(self, loaders: list[str]) -> None:
        with self.lock:
            todo = [n for n in loaders if n not in self.warmed]
            if todo:
                datacache.warm(todo)
                self.warmed.update(todo)

    def slot(self) -> WorkerSlot:
        try:
            return self.slots.get_nowait()
        except queue.Empty:
            sl = WorkerSlot(self.workdir)
            with self.lock:
                self.all_slots.append(sl)
            return sl

    def next_index(self) -> int:
        with self.lock:
            self.count += 1
            return self.count

    def close(self) -> None:
        for sl in self.all_slots:
            sl.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


_state: _WorkerState | None = None
_state_lock = threading.Lock()


def _worker_state() -> _WorkerState:
    global _state
    with _state_lock:
        if _state is None:
            _state = _WorkerState()
        return _state


def dask_setup(worker=None) -> None:
    """``dask worker --preload grading.cluster``: get the worker ready for grading as it joins
    (the sandbox probe, a grading slot with nbgrader imported and its warm-kernel template), so
    that a run's first jobs do not wait for it. In a thread: the worker joins the cluster at once,
    and a job that arrives meanwhile waits until the slot is ready, then takes it. Without the
    preload the first job does all this itself."""
    global _preloaded
    _preloaded = True
    threading.Thread(target=_get_ready, name="grading-warm-up", daemon=True).start()


def _get_ready() -> None:
    try:
        st = _worker_state()
        sl = st.slot()
        # the course config of this worker's copy of the course (a job's limits say it again)
        sl.warm(warm_kernels(st.mode, limits.JobLimits(course.REPO_ROOT)))
        sl.wait_warm()
        st.slots.put(sl)
    except Exception as exc:  # noqa: BLE001  (the first job gets ready itself)
        log.warning("the Dask worker could not get ready for grading: %s: %s", type(exc).__name__, exc)
    finally:
        _ready.set()


#: Set in a Dask worker once :func:`dask_setup`'s warm-up has ended (see :func:`worker_ready`);
#: a job that comes before waits for it (its slot is the one being warmed).
_ready = threading.Event()
_preloaded = False
READY_WAIT_S = 300


def worker_ready() -> dict | None:
    """Run on a Dask worker (``client.run``): None while its preload's warm-up goes on, then its
    isolation mode and how many grading slots wait ready (their worker started and warmed)."""
    if not _ready.is_set():
        return None
    st = _state
    slots = list(st.slots.queue) if st is not None else []
    return {"isolation": st.why if st is not None else None,
            "ready_slots": sum(1 for sl in slots if sl.proc is not None and sl.proc.poll() is None
                               and sl.warming is None)}


def grade_remote(payload: dict) -> dict:
    """The Dask task: grade one job as a local slot does and return what the coordinator needs."""
    if _preloaded:
        _ready.wait(READY_WAIT_S)
    st = _worker_state()
    tpl = st.template(payload["template"])
    st.warm(payload.get("loaders") or [])
    job_limits = payload["limits"]
    if not st.cgroups:
        job_limits.memory_mb = 0
    job = Job(Submission(payload["student"], tpl.assignment), tpl, "", payload["notebooks"], {}, [], [])
    sl = st.slot()
    try:
        run_job_with_retry(job, st.next_index(), st.workdir, st.mode, payload["timeout"], sl, st.uids,
                           job_limits, log)
    finally:
        st.slots.put(sl)
    return {"result": job.result.to_json(), "files": job.files, "wall_seconds": job.wall_seconds,
            "memory_peak_mb": job.memory_peak_mb, "timings": job.timings,
            "worker": socket.gethostname() + f":{os.getpid()}", "isolation": st.why,
            "confined": st.mode != "none"}


# -- a cluster on this machine (tests, the benchmark, trying it out) -----------------------------


class LoopbackCluster:
    """A Dask scheduler and ``n_workers`` single-threaded workers on 127.0.0.1, as separate
    processes (``dask scheduler``, ``dask worker``: what a real cluster runs), each worker under a
    nanny that restarts it when it dies. ``with LoopbackCluster(2) as c: autograde(...,
    scheduler=c.address)``."""

    def __init__(self, n_workers: int = 1, env: dict | None = None, start_timeout: float = 120):
        import json
        import subprocess
        import sys
        import time

        self.dir = Path(tempfile.mkdtemp(prefix="dask-loopback-"))
        self.procs: list = []
        # the course's Dask settings (one job per thread, less background sampling)
        env = {**os.environ, "DASK_CONFIG": str(DASK_CONFIG_DIR), **(env or {})}
        sched_file = self.dir / "scheduler.json"
        logs = [open(self.dir / f"{n}.log", "wb") for n in ["scheduler"] + [f"worker-{i}" for i in range(n_workers)]]
        self._logs = logs
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)],
            stdout=logs[0], stderr=subprocess.STDOUT, env=env, cwd=str(self.dir)))
        deadline = time.monotonic() + start_timeout
        while not sched_file.is_file():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                self.close()
                raise ToolError(f"the Dask scheduler did not start (log: {self.dir / 'scheduler.log'})")
            time.sleep(0.2)
        time.sleep(0.2)
        self.address = json.loads(sched_file.read_text())["address"]
        for i in range(n_workers):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nthreads", "1",
                 "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1", "--preload", PRELOAD,
                 "--local-directory", str(self.dir / f"w{i}")],
                stdout=logs[i + 1], stderr=subprocess.STDOUT, env=env, cwd=str(self.dir)))
        from distributed import Client

        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(n_workers, timeout=start_timeout)
            # and until each has got ready for grading (the preload's probe and warm slot)
            while not all(v is not None for v in client.run(worker_ready).values()):
                if time.monotonic() > deadline + start_timeout:
                    self.close()
                    raise ToolError(f"the Dask workers did not get ready (logs: {self.dir})")
                time.sleep(0.2)

    def __enter__(self) -> "LoopbackCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        import signal

        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except Exception:  # noqa: BLE001
                p.kill()
        for fh in self._logs:
            fh.close()
        shutil.rmtree(self.dir, ignore_errors=True)

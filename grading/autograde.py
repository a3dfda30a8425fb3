"""``python -m grading autograde``: grade a folder or zip of submissions with nbgrader, in parallel,
each student isolated in a throw-away course copy.

Pipeline (the parent process is trusted; student code only ever runs in a kernel of a job):

1. ``grading.collect`` finds ``(student, assignment, notebooks)`` in the tree or LMS download.
2. Per assignment, a *template* course (``solutions/<a>`` copy + ``generate_assignment`` into a
   template SQLite gradebook) is built once; the course gradebook (``--db``) gets the assignment.
3. Per submission: ``grading.sanitize`` (bad files -> 0 with the reason, duplicates, front-end
   metadata, ``skip-execution``), ``grading.tamper`` (static scan), a content hash (unchanged
   submissions are not regraded unless ``--force``).
4. Jobs run ``python -m grading.worker`` in their own temporary course copy (own gradebook copy,
   cwd inside it), ``--jobs`` at a time. As root, each job's kernel runs under its own
   unprivileged uid (``grading.kernel_launcher``), in a read-only mount namespace where it must:
   the repository, the course gradebook and the other jobs are read-only or invisible to student
   code, and no other process can be signalled. Whatever the job's uid still runs afterwards is
   killed. The kernel talks to nbgrader over Unix sockets in its own folder.
5. The parent alone writes the course gradebook, ``grades.csv``, ``questions.csv``, the feedback
   HTML (``feedback/<student>/<assignment>/<nb>.html``, hidden tests removed and checked) and the
   graded notebooks (``autograded/<student>/<assignment>/``).

Exit status is non-zero only for the tool's own errors, never for a student's code.
"""
from __future__ import annotations

import csv
import hashlib
import re
import html
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from . import bwrap, course, limits
from .collect import Submission, collect
from .sanitize import sanitize
from .tamper import scan_notebook

log = logging.getLogger("grading.autograde")

STATE_FILE = ".autograde_state.json"
GRADES_COLUMNS = ["student", "assignment", "auto_score", "auto_max", "manual_points_pending",
                  "review", "notes"]
QUESTION_COLUMNS = ["student", "assignment", "cell_id", "points", "max_points", "passed", "message"]
KERNEL_NAME = "diffusion-grader"
UID_BASE = 61000


class ToolError(RuntimeError):
    """A failure of the grading tool itself (not of a student's submission)."""


# --------------------------------------------------------------------------------------------
# Templates: one released assignment + gradebook, copied into every job
# --------------------------------------------------------------------------------------------
@dataclass
class Template:
    assignment: str
    root: Path                      # template course folder
    db: Path                        # template gradebook (SQLite)
    release: dict[str, dict]        # notebook name -> released notebook dict
    source: dict[str, dict]         # notebook name -> source notebook dict
    cells: dict[str, list[dict]]    # notebook name -> graded cells [{id, points, kind}]
    digest: str                     # hash of everything that defines the grading
    hidden_lines: set[str] = field(default_factory=set)



def _shorten(text: str, limit: int = 160) -> str:
    """One log line's worth of the notes; the full text is in grades.csv."""
    return text if len(text) <= limit else text[:limit - 25] + f"... (+{len(text) - limit + 25} chars)"

def _graded_cells(nb: dict) -> list[dict]:
    out = []
    for c in nb["cells"]:
        m = c.get("metadata", {}).get("nbgrader") or {}
        if m.get("grade") and "grade_id" in m:
            out.append({"id": m["grade_id"], "points": float(m.get("points", 0)),
                        "kind": "written" if m.get("solution") else "test"})
    return out


def _hidden_lines(nb: dict) -> set[str]:
    """Source lines inside hidden-test blocks that do not also appear in the released text."""
    lines = set()
    for c in nb["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        inside = False
        for ln in src.splitlines():
            if "BEGIN HIDDEN TESTS" in ln:
                inside = True
                continue
            if "END HIDDEN TESTS" in ln:
                inside = False
                continue
            if inside and len(ln.strip()) >= 12:
                lines.add(ln.strip())
    return lines


def build_template(assignment: str, root: Path, workdir: Path) -> Template:
    tdir = workdir / f"template-{assignment}"
    src = root / course.SOURCE_DIR / assignment
    shutil.copytree(src, tdir / course.SOURCE_DIR / assignment,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc"))
    db = tdir / "gradebook.db"
    api = course.make_api(tdir, db_url=f"sqlite:///{db}")
    with course.quiet_nbgrader():
        res = api.generate_assignment(assignment, force=True, create=True)
    if not res["success"]:
        raise ToolError(f"generate_assignment {assignment} failed:\n{res.get('error') or res.get('log')}")
    release, source, cells = {}, {}, {}
    h = hashlib.sha256()
    for nb_path in course.assignment_notebooks(tdir, assignment):
        source[nb_path.stem] = course.read_json(nb_path)
        h.update(nb_path.read_bytes())
        rel = tdir / course.RELEASE_DIR / assignment / nb_path.name
        release[nb_path.stem] = course.read_json(rel)
        cells[nb_path.stem] = _graded_cells(source[nb_path.stem])
    for f in sorted(src.rglob("*")):
        if f.is_file() and f.suffix != ".ipynb":
            h.update(f.name.encode() + f.read_bytes())
    name = assignment.split("_", 1)[-1]
    for extra in (course.GRADING_DIR / "checks" / f"{name}.py", course.GRADING_DIR / "hidden.py",
                  course.CONFIG_FILE):
        if extra.is_file():
            h.update(extra.read_bytes())
    hidden = set()
    for nb in source.values():
        hidden |= _hidden_lines(nb)
    released_text = "".join(json.dumps(nb) for nb in release.values())
    hidden = {ln for ln in hidden if json.dumps(ln)[1:-1] not in released_text}
    return Template(assignment, tdir, db, release, source, cells, h.hexdigest(), hidden)


def register_assignment(tpl: Template, db_url: str) -> None:
    """Create or update the assignment in the course gradebook (parent only)."""
    api = course.make_api(tpl.root, db_url=db_url)
    with course.quiet_nbgrader():
        res = api.generate_assignment(tpl.assignment, force=True, create=True)
    if not res["success"]:
        raise ToolError(f"could not register {tpl.assignment} in {db_url}:\n"
                        f"{(res.get('error') or res.get('log') or '')[-2000:]}")


# --------------------------------------------------------------------------------------------
# Privilege drop
# --------------------------------------------------------------------------------------------
def can_drop_privileges() -> tuple[bool, str]:
    """Whether kernels can run under an unprivileged uid (root, and the venv/repo readable)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "not running as root: student kernels run under the grader's own uid"
    uid = UID_BASE - 1

    def drop():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    try:
        r = subprocess.run([sys.executable, "-c", "import ipykernel, grading, helpers, nbformat"],
                           preexec_fn=drop, capture_output=True, timeout=120, cwd="/")
    except Exception as exc:  # noqa: BLE001
        return False, f"cannot start a process as uid {uid}: {exc}"
    if r.returncode != 0:
        return False, (f"uid {uid} cannot import the course packages (permissions?): "
                       f"{r.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    return True, f"student kernels run as unprivileged uids {UID_BASE}+"


def readable_by_others(path: Path) -> bool:
    """Whether a user who is neither the owner nor in the group can read ``path``."""
    path = Path(path).resolve()
    try:
        if any(not os.stat(d).st_mode & 0o001 for d in path.parents):
            return False
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(mode & 0o004) and (not path.is_dir() or bool(mode & 0o001))


def bwrap_mode(hidden: list[Path], workdir: Path) -> str | None:
    """Whether kernels can run in bubblewrap's allow-list (``grading.bwrap``): a probe kernel that
    must not see ``hidden``, nor import ``grading``, nor reach the network. Its explanation, or None."""
    if not bwrap.available():
        return None
    home = workdir / "probe-home"
    home.mkdir(exist_ok=True)
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    cmd = [sys.executable, "-m", "grading.kernel_launcher", "--bwrap", "--probe", "--home", str(home)]
    if root:
        cmd += ["--uid", str(UID_BASE - 1), "--gid", str(UID_BASE - 1)]
    for p in hidden:
        cmd += ["--protect", str(p)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
    except Exception as exc:  # noqa: BLE001
        log.warning("bubblewrap sandbox unavailable: %s", exc)
        return None
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if r.returncode != 0 or "sandbox-ok" not in r.stdout:
        log.warning("bubblewrap sandbox unavailable: %s", (r.stderr or r.stdout).strip()[-300:])
        return None
    who = f"as unprivileged uids {UID_BASE}+" if root else "as the grader's own uid (user namespace)"
    return (f"student kernels run in a bubblewrap sandbox {who}: they see the Python, helpers and "
            "data read-only and their scratch folder, no network, no other process")


def isolation_mode(protect: list[Path], workdir: Path) -> tuple[str, str]:
    """``("uid" | "sandbox" | "none", explanation)``: how student kernels are confined.

    ``uid``: an unprivileged uid per job. ``sandbox`` (root, when no other uid can reach this
    Python as installed): an unprivileged uid per job too, in a private mount namespace where
    the folders closed to other users are opened only on the way to Python, and everything but
    the job's scratch folder is read-only. ``none``: not root; kernels run as the grader's
    user, each in its own throw-away course copy.
    """
    found = bwrap_mode([p / d for p in protect for d in ("solutions", "grading")
                        if (p / d).exists()] + [p for p in protect[1:2]], workdir)
    if found is not None:
        return "bwrap", found
    ok, why = can_drop_privileges()
    if ok:
        return "uid", why
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        return "none", why
    home = workdir / "probe-home"
    home.mkdir(exist_ok=True)
    cmd = [shutil.which("unshare"), "-m", "--propagation", "private", "--", sys.executable, "-m",
           "grading.kernel_launcher", "--sandbox", "--probe", "--home", str(home),
           "--uid", str(UID_BASE - 1), "--gid", str(UID_BASE - 1)]
    for p in protect:
        cmd += ["--protect", str(p)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
    except Exception as exc:  # noqa: BLE001
        return "none", f"{why}; read-only sandbox unavailable: {exc}"
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if r.returncode == 0 and "sandbox-ok" in r.stdout:
        return "sandbox", (f"{why}; student kernels run as unprivileged uids {UID_BASE}+ in a "
                           "read-only mount namespace (only their scratch folder is writable)")
    return "none", f"{why}; read-only sandbox unavailable: {(r.stderr or r.stdout).strip()[-300:]}"


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------
@dataclass
class Job:
    sub: Submission
    tpl: Template
    digest: str
    notebooks: dict[str, dict | None]        # nb name -> sanitized notebook (None: scores 0)
    zero_reasons: dict[str, str]             # nb name -> why it scores 0
    notes: list[str]
    flags: list[str]
    result: dict | None = None


def submission_digest(sub: Submission, tpl: Template) -> str:
    h = hashlib.sha256(tpl.digest.encode())
    for name in sorted(sub.files):
        h.update(name.encode() + b"\0" + hashlib.sha256(sub.files[name]).digest())
    return h.hexdigest()


def prepare(sub: Submission, tpl: Template) -> Job:
    """Match files to the assignment's notebooks, sanitize and scan them."""
    notebooks, reasons, notes, flags = {}, {}, list(sub.problems), []
    files = dict(sub.files)
    expected = list(tpl.release)
    for name in expected:
        raw = files.pop(f"{name}.ipynb", None)
        if raw is None and len(expected) == 1 and len(files) == 1:
            other, raw = files.popitem()  # renamed upload ("01_x (1).ipynb", "notebook.ipynb")
            notes.append(f"used {other} as {name}.ipynb")
        s = sanitize(raw, tpl.release[name])
        notes.extend(f"{name}: {n}" for n in s.notes)
        if s.nb is None:
            reasons[name] = s.zero_reason or "unreadable"
            notebooks[name] = None
            continue
        notebooks[name] = s.nb
        for f in scan_notebook(s.nb, tpl.release[name]):
            flags.append(f"{name}: {f}")
    for extra in files:
        notes.append(f"ignored extra file {extra}")
    return Job(sub, tpl, submission_digest(sub, tpl), notebooks, reasons, notes, flags)


def _kernel_spec(job_dir: Path, mode: str, uid: int, protect: list[Path], cgroup: str | None = None,
                 network_off: bool = False) -> None:
    kdir = job_dir / "kernels" / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True)
    launcher = [sys.executable, "-m", "grading.kernel_launcher", "--home", str(job_dir / "home")]
    if cgroup:
        launcher += ["--cgroup", cgroup]
    # A network namespace of its own (only a loopback that is down): the kernel talks to nbgrader
    # over Unix sockets in its home, so it needs no network, and it reaches none.
    unshare = shutil.which("unshare") or "unshare"
    no_net = ["-n"] if network_off else []
    if mode == "bwrap":  # (its own network namespace: bubblewrap's --unshare-net)
        argv = launcher + ["--bwrap"] + (["--uid", str(uid), "--gid", str(uid)] if os.geteuid() == 0 else []) + \
            ["-f", "{connection_file}"]
    elif mode == "uid":
        argv = ([unshare] + no_net + ["--"] if no_net else []) + launcher + \
            ["--uid", str(uid), "--gid", str(uid), "-f", "{connection_file}"]
    elif mode == "sandbox":
        argv = [unshare, "-m", "--propagation", "private"] + no_net + ["--"] + \
            launcher + ["--sandbox", "--uid", str(uid), "--gid", str(uid)] + \
            [a for p in protect for a in ("--protect", str(p))] + ["-f", "{connection_file}"]
    else:
        argv = launcher + ["-f", "{connection_file}"]
    # Interrupts as messages: a signal would reach bubblewrap, not the kernel inside it.
    (kdir / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "Python 3 (grading)", "language": "python",
         "interrupt_mode": "message" if mode == "bwrap" else "signal"}))


class UidPool:
    """The unprivileged uids that student kernels run as: one per running job, never shared with
    a job of another autograde run on this machine (a lock file per uid, in a folder only root
    can write), so a student's code can neither signal nor read another running kernel."""

    SIZE = 4000

    def __init__(self) -> None:
        self.dir = Path("/run/diffusion-grading-uids")
        try:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            st = self.dir.stat()
            if st.st_uid != 0 or st.st_mode & 0o077:
                raise PermissionError(f"{self.dir} is not root's own folder")
        except OSError as exc:  # no shared folder: uids are unique within this run only
            log.warning("uid locks: %s; another autograde run at the same time may reuse uids", exc)
            self.dir = Path(tempfile.mkdtemp(prefix="uid-locks-"))
        self.next = int.from_bytes(os.urandom(2), "big") % self.SIZE
        self.lock = threading.Lock()

    def claim(self) -> tuple[int, object]:
        import fcntl

        with self.lock:
            for _ in range(self.SIZE):
                uid = UID_BASE + self.next
                self.next = (self.next + 1) % self.SIZE
                fh = open(self.dir / f"{uid}.lock", "w")
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    fh.close()
                    continue
                return uid, fh
        raise ToolError(f"all {self.SIZE} grading uids are in use")


def reap_uid(uid: int) -> None:
    """Kill every process of ``uid`` (what a student's code left running, e.g. a daemon, must not
    meet the next job that gets this uid): ``kill -KILL -1`` run as that uid."""
    if uid < UID_BASE:
        raise ValueError(f"not a grading uid: {uid}")
    kill = shutil.which("kill") or "/bin/kill"
    try:
        subprocess.run([kill, "-KILL", "-1"], user=uid, group=uid, extra_groups=[], cwd="/",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not stop the processes of uid %d: %s", uid, exc)


class WorkerSlot:
    """One long-lived ``grading.worker --serve`` process (one per --jobs slot)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.log = open(workdir / f"worker-{id(self)}.log", "ab")

    def _start(self) -> None:
        env = course.grading_env()
        env.pop("JUPYTER_CONFIG_DIR", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "grading.worker", "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env, cwd=str(self.workdir))

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
                if line.decode(errors="replace").strip() == f"DONE {job_dir}":
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


def shared_dirs() -> tuple[Path, Path]:
    """The course's data and checkpoint folders, which every job's kernel reads."""
    return (Path(os.environ.get("DIFFUSION_DATA_DIR") or course.REPO_ROOT / "data"),
            Path(os.environ.get("DIFFUSION_CHECKPOINT_DIR") or course.REPO_ROOT / "checkpoints"))


def _scratch_links(src: Path, dest: Path) -> None:
    """``dest`` holding a symlink to every file of ``src``: a notebook reads the course's data and
    checkpoints through it, and its own writes (helpers write to a temporary file, then
    ``os.replace``) replace the link in the job's folder, never the course's file."""
    dest.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        for f in src.iterdir():
            if f.is_file():
                (dest / f.name).symlink_to(f.resolve())


def run_job(job: Job, index: int, workdir: Path, mode: str, timeout: int | None,
            slot: WorkerSlot, protect: list[Path] = (), uids: UidPool | None = None,
            job_limits: limits.JobLimits | None = None) -> dict:
    """Run one job on a fresh copy of the template course in a worker slot; returns its result."""
    a, s = job.tpl.assignment, job.sub.student
    job_dir = Path(tempfile.mkdtemp(prefix=f"job-{index:04d}-", dir=workdir))
    uid, uid_lock = uids.claim() if uids is not None else (UID_BASE + index % UidPool.SIZE, None)
    confined = mode in ("uid", "sandbox") or (mode == "bwrap" and os.geteuid() == 0)
    cgroup = None
    try:
        if confined:
            reap_uid(uid)
            cgroup = limits.create(f"{job_dir.name}-{uid}", job_limits.memory_mb if job_limits else 0)
        course_dir = job_dir / "course"
        shutil.copytree(job.tpl.root / course.SOURCE_DIR, course_dir / course.SOURCE_DIR)
        shutil.copyfile(job.tpl.db, course_dir / "gradebook.db")
        sub_dir = course_dir / "submitted" / s / a
        sub_dir.mkdir(parents=True)
        for name, nb in job.notebooks.items():
            if nb is not None:
                (sub_dir / f"{name}.ipynb").write_text(json.dumps(nb, indent=1))
        home = job_dir / "home"
        for src, name in zip(shared_dirs(), ("data", "checkpoints")):
            _scratch_links(src, home / name)
        # The kernel's Unix sockets lie in its own home (0700, its uid): no other job can take
        # its ports before it binds them (it would die at start), or connect to it.
        kernel_manager = course.ipc_kernel(str(home / "zmq"))
        _kernel_spec(job_dir, mode, uid, list(protect), cgroup,
                     network_off=kernel_manager.get("transport") == "ipc")
        # The trusted checks' plans and the kernel's records (``gradeprobe``) lie in its home.
        env = {"JUPYTER_PATH": str(job_dir / "kernels"), "HOME": str(home),
               "DIFFUSION_DATA_DIR": str(home / "data"),
               "DIFFUSION_CHECKPOINT_DIR": str(home / "checkpoints"),
               "GRADEPROBE_DIR": str(home / "probe")}
        (job_dir / "job.json").write_text(json.dumps(
            {"assignment": a, "student": s, "kernel_name": KERNEL_NAME, "timeout": timeout,
             "env": env, "kernel_manager": kernel_manager, "job_dir": str(job_dir),
             "memory_cgroup": cgroup, "memory_mb": job_limits.memory_mb if job_limits else 0,
             "notebook_timeout": job_limits.notebook_timeout if job_limits else 0,
             "probe_dir": str(home / "probe"), "probe_rel": "home/probe"}))
        os.chmod(job_dir, 0o711)
        os.chmod(course_dir, 0o711)
        os.chmod(course_dir / "gradebook.db", 0o600)
        os.chmod(course_dir / course.SOURCE_DIR, 0o700)
        os.chmod(course_dir / "submitted", 0o700)
        t0 = time.perf_counter()
        died = slot.run(job_dir)
        res_file = job_dir / "result.json"
        if res_file.is_file():
            result = json.loads(res_file.read_text())
        else:
            result = {"ok": False, "error": f"grading worker died (exit {died}) without a result"}
        result["wall_seconds"] = round(time.perf_counter() - t0, 2)
        keep = {}  # the graded notebooks and the feedback, before the job folder goes
        for kind in ("feedback", "autograded"):
            for nb_name, path in (result.get(kind) or {}).items():
                p = Path(path)
                if p.is_file() and job_dir in p.parents:
                    keep[f"{kind}/{nb_name}"] = p.read_bytes()
        result["_files"] = keep
        if cgroup:
            result["memory_peak_mb"] = limits.peak_mb(cgroup)
        return result
    finally:
        if confined:
            reap_uid(uid)
        limits.remove(cgroup)
        if uid_lock is not None:
            uid_lock.close()
        shutil.rmtree(job_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Results -> rows, gradebook, files
# --------------------------------------------------------------------------------------------
def first_line(text: str | None) -> str:
    for ln in (text or "").splitlines():
        if ln.strip():
            return ln.strip()[:300]
    return ""


KERNEL_DID_NOT_START = "Kernel died before replying to kernel_info"


def kernel_did_not_start(result: dict | None) -> bool:
    """Whether a job failed because its kernel died before it ran any cell: never the student's
    doing (their code had not run yet), so the job is worth running again."""
    return bool(result) and not result.get("ok") and KERNEL_DID_NOT_START in (result.get("error") or "")


def describe_failure(error: str | None) -> str:
    """One line saying why nbgrader could not grade a notebook."""
    text = error or ""
    if KERNEL_DID_NOT_START in text:
        return ("the grading kernel died before it ran any cell (a problem of the grading machine, "
                "not of this notebook): run autograde again to grade it")
    if "DeadKernelError" in text or "Kernel died" in text:
        return ("the kernel died while running the notebook (the code ended Python, e.g. "
                "os._exit, a crash, or ran out of memory)")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Exit)\b", ln.strip()) and "NbGraderException" not in ln:
            return first_line(ln)
    return first_line(lines[-1]) if lines else "failed"


def build_rows(job: Job) -> tuple[dict, list[dict], dict]:
    """(grades.csv row, questions.csv rows, gradebook updates {nb: {grade_id: (score, manual, comment)}})."""
    a, s = job.tpl.assignment, job.sub.student
    res = job.result or {}
    qrows, updates = [], {}
    auto, auto_max, pending = 0.0, 0.0, 0.0
    notes = list(job.notes)
    tamper = "; ".join(job.flags)
    worker_error = None if res.get("ok") or not job.result else describe_failure(res.get("error"))
    for nb_name, cells in job.tpl.cells.items():
        graded = (res.get("notebooks") or {}).get(nb_name, {})
        msgs = (res.get("messages") or {}).get(nb_name, {})
        zero = job.zero_reasons.get(nb_name)
        if zero is None and (worker_error or nb_name not in (res.get("notebooks") or {})):
            zero = f"autograding failed: {worker_error or 'no result'}"
        upd = updates.setdefault(nb_name, {})
        for cell in cells:
            gid, mx = cell["id"], cell["points"]
            g = graded.get(gid)
            if cell["kind"] == "test":
                auto_max += mx
                if zero is not None or g is None:
                    pts, msg = 0.0, zero or "not graded"
                else:
                    pts = float(g.get("auto_score") or 0.0)
                    msg = first_line(msgs.get(gid)) or ("" if pts >= mx else
                                                         f"partial credit {pts:g}/{mx:g}")
                if tamper and zero is None:
                    msg = f"set to 0 for review ({first_line(tamper)}); ran as {pts:g}/{mx:g}" + (
                        f": {msg}" if msg else "")
                    pts = 0.0
                auto += pts
                qrows.append({"student": s, "assignment": a, "cell_id": gid, "points": f"{pts:g}",
                              "max_points": f"{mx:g}", "passed": str(pts >= mx and mx > 0).lower(),
                              "message": msg})
                upd[gid] = (pts, False, msg or None)
            else:  # written answer, graded by hand
                if zero is not None or g is None:
                    qrows.append({"student": s, "assignment": a, "cell_id": gid, "points": "0",
                                  "max_points": f"{mx:g}", "passed": "false",
                                  "message": zero or "not graded"})
                    upd[gid] = (0.0, False, zero)
                elif g.get("needs_manual_grade"):
                    pending += mx
                    qrows.append({"student": s, "assignment": a, "cell_id": gid, "points": "",
                                  "max_points": f"{mx:g}", "passed": "",
                                  "message": "needs manual grading"})
                    upd[gid] = (None, True, None)
                else:
                    pts = float(g.get("auto_score") or 0.0)
                    qrows.append({"student": s, "assignment": a, "cell_id": gid, "points": f"{pts:g}",
                                  "max_points": f"{mx:g}", "passed": "false",
                                  "message": first_line(g.get("auto_comment")) or "No response."})
                    upd[gid] = (pts, False, g.get("auto_comment"))
    for nb_name, reason in job.zero_reasons.items():
        notes.append(f"{nb_name}: scored 0: {reason}")
    for nb_name, errs in (res.get("cell_errors") or {}).items():
        for cell_name, err in errs.items():
            notes.append(f"{nb_name}: error in {cell_name}: {first_line(err)}")
    if worker_error:
        notes.append(f"autograde error: {worker_error}")
    grow = {"student": s, "assignment": a, "auto_score": f"{auto:g}", "auto_max": f"{auto_max:g}",
            "manual_points_pending": f"{pending:g}", "review": tamper,
            "notes": " | ".join(notes)[:2000]}
    return grow, qrows, updates


def write_gradebook(db_url: str, job: Job, updates: dict) -> None:
    """Record one submission's grades in the course gradebook (parent process only)."""
    from nbgrader.api import Gradebook

    a, s = job.tpl.assignment, job.sub.student
    with course.quiet_nbgrader(), Gradebook(db_url, "diffusion") as gb:
        gb.update_or_create_student(s)
        gb.update_or_create_submission(a, s)
        for nb_name, grades in updates.items():
            snb = gb.find_submission_notebook(nb_name, a, s)
            for g in snb.grades:
                if g.name in grades:
                    score, manual, _ = grades[g.name]
                    g.auto_score = score
                    g.needs_manual_grade = manual
            for c in snb.comments:
                if c.name in grades and grades[c.name][2]:
                    c.auto_comment = grades[c.name][2][:1000]
        gb.db.commit()


def redact_feedback(data: bytes, tpl: Template) -> tuple[bytes, int]:
    """Remove any hidden-test line that still made it into a feedback page; returns (html, hits)."""
    text = data.decode("utf-8", errors="replace")
    hits = 0
    for ln in tpl.hidden_lines:
        for form in {ln, html.escape(ln), html.escape(ln, quote=False)}:
            if form in text:
                hits += text.count(form)
                text = text.replace(form, "[hidden test]")
    for marker in ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        if marker in text:
            hits += text.count(marker)
            text = text.replace(marker, "")
    return text.encode("utf-8"), hits


# --------------------------------------------------------------------------------------------
# State, CSV
# --------------------------------------------------------------------------------------------
def load_state(out: Path) -> dict:
    p = out / STATE_FILE
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            log.warning("ignoring unreadable %s", p)
    return {"submissions": {}}


def save_state(out: Path, state: dict) -> None:
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, out / STATE_FILE)


def write_csvs(out: Path, state: dict) -> None:
    entries = [state["submissions"][k] for k in sorted(state["submissions"])]
    with open(out / "grades.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, GRADES_COLUMNS)
        w.writeheader()
        for e in entries:
            w.writerow(e["grades"])
    with open(out / "questions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, QUESTION_COLUMNS)
        w.writeheader()
        for e in entries:
            for row in e["questions"]:
                w.writerow(row)


# --------------------------------------------------------------------------------------------
# Main entry
# --------------------------------------------------------------------------------------------
@dataclass
class Report:
    graded: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    out: Path | None = None


def autograde(submissions: Path | str, out: Path | str = "autograded", assignment: str | None = None,
              jobs: int | None = None, db_url: str | None = None, force: bool = False,
              timeout: int | None = None, root: Path | str = course.REPO_ROOT,
              progress: bool = True, notebook_timeout: int | None = None,
              memory_mb: int | None = None) -> Report:
    """Autograde every submission found under ``submissions``; see the module docstring."""
    course.ensure_path()
    t_start = time.perf_counter()
    root, out = Path(root).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    db_url = db_url or f"sqlite:///{out / 'gradebook.db'}"
    known = course.list_assignments(root)
    if assignment is not None and assignment not in known:
        raise ToolError(f"unknown assignment {assignment!r}; known: {', '.join(known)}")
    skipped: list[str] = []
    subs = collect(submissions, known, assignment, skipped=skipped)
    report = Report(out=out)
    for note in skipped:
        log.warning("not graded: %s", note)
    unknown = [s for s in subs if s.assignment not in known]
    for s in unknown:
        msg = f"{s.student}: {'; '.join(s.problems) or 'unknown assignment'} ({', '.join(s.origin)})"
        log.error("not graded: %s", msg)
        report.errors.append(msg)
    subs = [s for s in subs if s.assignment in known]
    if not subs:
        log.warning("no submissions found in %s", submissions)
    for d in ("data", "checkpoints"):  # helpers create them; an unprivileged kernel cannot
        (root / d).mkdir(exist_ok=True)
    jobs = max(1, jobs or os.cpu_count() or 1)
    state = load_state(out)
    workdir = Path(tempfile.mkdtemp(prefix="autograde-"))
    os.chmod(workdir, 0o711)
    protect = [root, out, workdir, course.REPO_ROOT]
    mode, why = isolation_mode(protect, workdir)
    log.info("isolation: %s", why)
    job_limits = limits.JobLimits(root, notebook_timeout, memory_mb)
    if mode == "none" or not limits.available():
        job_limits.memory_mb = 0  # no cgroup can be made here: said once, then graded anyway
    log.info("limits: %r", job_limits)
    if mode == "uid":  # (the sandbox opens the way to them itself)
        for src in shared_dirs():
            hidden = [f for f in ([src] + sorted(src.iterdir()) if src.is_dir() else [])
                      if not readable_by_others(f)]
            if hidden:
                log.warning("student kernels (unprivileged uids) cannot read %s: make it readable "
                            "by other users, or its notebooks will fail", hidden[0])
    try:
        templates: dict[str, Template] = {}
        for a in sorted({s.assignment for s in subs}):
            templates[a] = build_template(a, root, workdir)
            register_assignment(templates[a], db_url)
        log.info("%d assignment template(s) ready after %.1f s", len(templates),
                 time.perf_counter() - t_start)
        todo: list[Job] = []
        for sub in subs:
            tpl = templates[sub.assignment]
            key = f"{sub.student}/{sub.assignment}"
            digest = submission_digest(sub, tpl)
            prev = state["submissions"].get(key)
            if prev and prev.get("digest") == digest and not force:
                report.skipped += 1
                continue
            todo.append(prepare(sub, tpl))
        to_run = [j for j in todo if any(nb is not None for nb in j.notebooks.values())]
        # longest first (a notebook's code size is a fair proxy): the slots finish together
        to_run.sort(key=lambda j: -sum(len(json.dumps(nb)) for nb in j.tpl.source.values()))
        for j in todo:
            if j.flags:
                log.warning("%s/%s flagged for review: %s", j.sub.student, j.tpl.assignment,
                            "; ".join(j.flags))
            for nb, reason in j.zero_reasons.items():
                log.warning("%s/%s/%s scores 0: %s", j.sub.student, j.tpl.assignment, nb, reason)
        bar = None
        if progress and to_run:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(to_run), desc="autograde", unit="nb", file=sys.stderr)

        def finish(j: Job) -> None:
            grow, qrows, updates = build_rows(j)
            write_gradebook(db_url, j, updates)
            a, s = j.tpl.assignment, j.sub.student
            for rel, data in ((j.result or {}).get("_files") or {}).items():
                kind, nb_name = rel.split("/", 1)
                if kind == "feedback":
                    data, hits = redact_feedback(data, j.tpl)
                    if hits:
                        log.warning("%s/%s: removed %d hidden-test line(s) from the feedback", s, a, hits)
                    dest = out / "feedback" / s / a / f"{nb_name}.html"
                else:
                    dest = out / "autograded" / s / a / f"{nb_name}.ipynb"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
            state["submissions"][f"{s}/{a}"] = {  # no digest: the next run grades it again
                "digest": None if kernel_did_not_start(j.result) else j.digest,
                "grades": grow, "questions": qrows,
                "seconds": (j.result or {}).get("wall_seconds")}
            if j.result and not j.result.get("ok"):
                log.warning("%s/%s: autograde problem: %s", s, a,
                            first_line((j.result.get("error") or "").strip().splitlines()[-1]
                                       if j.result.get("error") else ""))
            log.info("%s/%s: %s/%s%s%s", s, a, grow["auto_score"], grow["auto_max"],
                     " (review)" if grow["review"] else "",
                     f" [{_shorten(grow['notes'])}]" if grow["notes"] else "")
            report.graded += 1
            save_state(out, state)

        for j in todo:
            if j not in to_run:
                finish(j)
        import queue

        slots: queue.Queue = queue.Queue()
        all_slots = [WorkerSlot(workdir) for _ in range(min(jobs, max(1, len(to_run))))]
        uids = UidPool() if mode in ("uid", "sandbox") or (mode == "bwrap" and os.geteuid() == 0) else None
        for sl in all_slots:
            slots.put(sl)

        def run_in_slot(j: Job, i: int) -> dict:
            sl = slots.get()
            try:
                result = run_job(j, i, workdir, mode, timeout, sl, protect, uids, job_limits)
                if kernel_did_not_start(result):
                    log.warning("%s/%s: the kernel died before running any cell; trying again",
                                j.sub.student, j.tpl.assignment)
                    result = run_job(j, i, workdir, mode, timeout, sl, protect, uids, job_limits)
                return result
            finally:
                slots.put(sl)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(run_in_slot, j, i): j for i, j in enumerate(to_run)}
            for fut in as_completed(futures):
                j = futures[fut]
                try:
                    j.result = fut.result()
                except Exception as exc:  # noqa: BLE001  (a tool error, reported at the end)
                    j.result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    report.errors.append(f"{j.sub.student}/{j.tpl.assignment}: {exc}")
                finish(j)
                if bar is not None:
                    bar.update(1)
        for sl in all_slots:
            sl.close()
        if bar is not None:
            bar.close()
        write_csvs(out, state)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.seconds = time.perf_counter() - t_start
    return report


def grade_table(out: Path) -> str:
    """student x assignment table of ``auto_score/auto_max`` (``*`` = written answers pending)."""
    rows = list(csv.DictReader(open(Path(out) / "grades.csv")))
    students = sorted({r["student"] for r in rows})
    assigns = sorted({r["assignment"] for r in rows})
    cell = {(r["student"], r["assignment"]): r for r in rows}
    head = ["student"] + assigns
    lines = [head]
    for s in students:
        line = [s]
        for a in assigns:
            r = cell.get((s, a))
            if r is None:
                line.append("-")
                continue
            txt = f"{r['auto_score']}/{r['auto_max']}"
            if float(r["manual_points_pending"] or 0):
                txt += f" +{r['manual_points_pending']}?"
            if r["review"]:
                txt += " REVIEW"
            line.append(txt)
        lines.append(line)
    w = [max(len(l[i]) for l in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(l)).rstrip() for l in lines)


def autograde_cli(args) -> int:
    try:
        rep = autograde(args.submissions, out=args.out, assignment=args.assignment, jobs=args.jobs,
                        db_url=args.db, force=args.force, timeout=args.timeout, root=args.root,
                        notebook_timeout=args.notebook_timeout, memory_mb=args.memory_mb)
    except (ToolError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    print(grade_table(rep.out))
    print(f"\ngraded {rep.graded}, unchanged {rep.skipped}, in {rep.seconds:.1f} s; "
          f"wrote {rep.out / 'grades.csv'}, {rep.out / 'questions.csv'}, {rep.out / 'feedback'}")
    for e in rep.errors:
        print(f"error: {e}", file=sys.stderr)
    tool_errors = [e for e in rep.errors if "unknown assignment" not in e and "cannot tell" not in e]
    return 1 if tool_errors else 0


# --------------------------------------------------------------------------------------------
# feedback / export (as in nbgrader, from the course gradebook)
# --------------------------------------------------------------------------------------------
def regenerate_feedback(out: Path | str, assignment: str | None = None, student: str | None = None,
                        db_url: str | None = None, root: Path | str = course.REPO_ROOT) -> list[Path]:
    """Rewrite ``feedback/<s>/<a>/*.html`` from ``autograded/`` and the gradebook (which now holds
    the manual grades), with hidden tests removed. Returns the pages written."""
    course.ensure_path()
    out, root = Path(out).resolve(), Path(root).resolve()
    db_url = db_url or f"sqlite:///{out / 'gradebook.db'}"
    written = []
    with tempfile.TemporaryDirectory(prefix="feedback-") as tmp:
        tmp = Path(tmp)
        pairs = sorted({(p.parent.parent.name, p.parent.name)
                        for p in (out / "autograded").glob("*/*/*.ipynb")})
        for s, a in pairs:
            if (assignment and a != assignment) or (student and s != student):
                continue
            shutil.copytree(out / "autograded" / s / a, tmp / "autograded" / s / a)
            hidden = set()
            for nb in course.assignment_notebooks(root, a):
                hidden |= _hidden_lines(course.read_json(nb))
            api = course.make_api(tmp, db_url=db_url)
            with course.quiet_nbgrader():
                res = api.generate_feedback(a, s, force=True)
            if not res["success"]:
                log.error("feedback %s/%s failed: %s", s, a, first_line(res.get("error")))
                continue
            tpl = Template(a, tmp, tmp, {}, {}, {}, "", hidden)
            for page in sorted((tmp / "feedback" / s / a).glob("*.html")):
                data, hits = redact_feedback(page.read_bytes(), tpl)
                dest = out / "feedback" / s / a / page.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                written.append(dest)
    return written


def feedback_cli(args) -> int:
    pages = regenerate_feedback(args.out, args.assignment, args.student, db_url=args.db)
    for p in pages:
        print(p)
    print(f"{len(pages)} feedback page(s) written")
    return 0


EXPORT_COLUMNS = ["student", "assignment", "auto_score", "auto_max", "manual_score",
                  "manual_points_pending", "score", "max_score", "needs_manual_grade", "review"]


def export_grades(db_url: str, to: Path | str, state_dir: Path | None = None) -> int:
    """Write one CSV row per submission of the gradebook (with the manual grades); returns rows."""
    from nbgrader.api import Gradebook

    course.ensure_path()
    review = {}
    if state_dir is not None and (Path(state_dir) / STATE_FILE).is_file():
        for key, e in load_state(Path(state_dir))["submissions"].items():
            review[key] = e["grades"].get("review", "")
    rows = []
    with course.quiet_nbgrader(), Gradebook(db_url, "diffusion") as gb:
        for a in gb.assignments:
            for sub in a.submissions:
                s = sub.student.id
                pending = 0.0
                manual = 0.0
                for snb in sub.notebooks:
                    written = {c.name for c in snb.notebook.solution_cells}
                    for g in snb.grades:
                        if g.name in written:
                            if g.needs_manual_grade and g.manual_score is None:
                                pending += float(g.max_score)
                            manual += float(g.score or 0.0)
                rows.append({"student": s, "assignment": a.name, "auto_score": f"{sub.code_score:g}",
                             "auto_max": f"{sub.max_code_score:g}", "manual_score": f"{manual:g}",
                             "manual_points_pending": f"{pending:g}", "score": f"{sub.score:g}",
                             "max_score": f"{sub.max_score:g}",
                             "needs_manual_grade": str(bool(sub.needs_manual_grade)).lower(),
                             "review": review.get(f"{s}/{a.name}", "")})
    rows.sort(key=lambda r: (r["student"], r["assignment"]))
    with open(to, "w", newline="") as fh:
        w = csv.DictWriter(fh, EXPORT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def export_cli(args) -> int:
    out = Path(args.out).resolve()
    db_url = args.db or f"sqlite:///{out / 'gradebook.db'}"
    if db_url.startswith("sqlite:///") and not Path(db_url[len("sqlite:///"):]).is_file():
        log.error("no gradebook at %s", db_url)
        return 2
    to = Path(args.to) if args.to else Path("grades.csv")
    n = export_grades(db_url, to, out)
    print(f"wrote {n} row(s) to {to}")
    return 0

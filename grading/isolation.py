"""How student kernels are confined: the isolation mode, the kernel's command line, the uid pool.

Trusted: runs in the grader's own process (``grading.kernel_launcher`` is the program these
command lines start, as root, before it drops to the job's uid).

:func:`isolation_mode` decides once per autograde run, with a probe kernel:

- ``bwrap`` (root, bubblewrap installed): each job's kernel runs in bubblewrap's allow-list
  (``grading.bwrap``: no repository, no grading code, no network, its own pid namespace) under an
  unprivileged uid of its own, in a memory cgroup (``grading.limits``);
- ``bwrap-user`` (not root, user namespaces allowed): the same allow-list and namespaces through a
  user namespace, under the grader's own uid and without a memory limit;
- ``none`` (neither): the grader's own uid in a throw-away course copy; said in one line.

:func:`launcher_command` is the one place that builds the launcher's command line, for the
probe and for every job's kernelspec (:func:`write_kernel_spec`). :class:`UidPool` hands out the
uids, never two running jobs the same one, and :func:`reap_uid` kills what a job's code left running.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from . import bwrap, course
from .course import ToolError

log = logging.getLogger("grading.autograde")

KERNEL_NAME = "diffusion-grader"
UID_BASE = 61000
#: Isolation modes in which a job's kernel runs under an unprivileged uid of its own.
CONFINED = ("bwrap",)
MODES = ("bwrap", "bwrap-user", "none")


def launcher_command(mode: str, home: Path, uid: int | None = None, cgroup: str | None = None,
                     job_limits=None) -> list[str]:
    """The command line of ``grading.kernel_launcher`` for isolation ``mode`` (add ``--probe``, or
    ``-f {connection_file}`` and the kernel's arguments): in bubblewrap's allow-list for the
    ``bwrap`` modes, as ``uid`` in mode ``bwrap``, joining the memory ``cgroup`` first."""
    if mode not in MODES:
        raise ValueError(f"isolation mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode in CONFINED and uid is None:
        raise ValueError(f"isolation mode {mode!r} needs the uid to run the kernel as")
    cmd = [sys.executable, "-m", "grading.kernel_launcher", "--home", str(home)]
    if mode in ("bwrap", "bwrap-user"):
        cmd.append("--bwrap")
    if mode in CONFINED:
        cmd += ["--uid", str(uid), "--gid", str(uid)]
    if cgroup:
        cmd += ["--cgroup", cgroup]
    if job_limits is not None:
        cmd += ["--max-processes", str(job_limits.max_processes), "--shm-mb", str(job_limits.shm_mb)]
    return cmd


def isolation_mode(hidden: list[Path], workdir: Path) -> tuple[str, str]:
    """``(mode, explanation)``: how student kernels are confined (see the module docstring).

    The probe kernel must not see any of ``hidden`` (e.g. ``solutions/``, ``grading/``, ``--out``),
    nor import ``grading``, nor see a network interface besides its own loopback."""
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    mode = "bwrap" if root else "bwrap-user"
    if not bwrap.available():
        return "none", ("NOT CONFINED: bubblewrap is not installed (Debian: apt-get install bubblewrap); "
                        "student code runs with the grader's rights")
    home = workdir / "probe-home"
    home.mkdir(exist_ok=True)
    cmd = launcher_command(mode, home, UID_BASE - 1) + ["--probe"]
    cmd += [a for p in hidden for a in ("--protect", str(p))]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
        ok, detail = r.returncode == 0 and "sandbox-ok" in r.stdout, (r.stderr or r.stdout).strip()[-300:]
    except Exception as exc:  # noqa: BLE001
        ok, detail = False, str(exc)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if not ok:
        return "none", f"NOT CONFINED: the bubblewrap sandbox does not work here ({detail})"
    who = f"as unprivileged uids {UID_BASE}+" if root else "as the grader's uid in a user namespace"
    return mode, (f"student kernels run in a bubblewrap sandbox {who}: the system, their Python, "
                  "helpers and the data read-only, their scratch folder, no network, no other process")


def write_kernel_spec(job_dir: Path, mode: str, uid: int, cgroup: str | None = None,
                      job_limits=None) -> None:
    """The job's grading kernelspec, ``kernels/kernels/<KERNEL_NAME>/kernel.json``: the launcher
    with the job's ``home`` folder, uid, memory cgroup and isolation mode. Interrupts travel as
    messages: a signal would reach bubblewrap, not the kernel inside it."""
    kdir = job_dir / "kernels" / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True)
    argv = launcher_command(mode, job_dir / "home", uid, cgroup, job_limits) + ["-f", "{connection_file}"]
    (kdir / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "Python 3 (grading)", "language": "python",
         "interrupt_mode": "message" if mode != "none" else "signal"}))


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


def shared_dirs() -> tuple[Path, Path]:
    """The course's data and checkpoint folders, which every job's kernel reads."""
    return (Path(os.environ.get("DIFFUSION_DATA_DIR") or course.REPO_ROOT / "data"),
            Path(os.environ.get("DIFFUSION_CHECKPOINT_DIR") or course.REPO_ROOT / "checkpoints"))


def warn_unreadable_shared_dirs() -> None:
    """In mode ``bwrap``, warn when a job's uid cannot read a file of the course's data or
    checkpoints (the sandbox shows each file, but its own permissions still apply)."""
    for src in shared_dirs():
        closed = [f for f in (sorted(src.iterdir()) if src.is_dir() else [])
                  if f.is_file() and not os.stat(f).st_mode & 0o004]
        if closed:
            log.warning("student kernels (unprivileged uids) cannot read %s: make it readable "
                        "by other users, or its notebooks will fail", closed[0])

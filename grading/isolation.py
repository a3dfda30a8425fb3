"""How student kernels are confined: the isolation mode, the kernel's command line, the uid pool.

Trusted: runs in the grader's own process (``grading.kernel_launcher`` is the program these
command lines start, as root, before it drops to the job's uid).

:func:`isolation_mode` decides once per autograde run: ``uid`` (root, and an unprivileged uid can
run this Python: each job's kernel runs under a uid of its own), ``sandbox`` (root, but this
Python lies in a folder closed to other users: the same, inside a read-only mount namespace that
opens only the way to Python) or ``none`` (not root: the grader's own uid, in a throw-away course
copy). :func:`launcher_command` is the one place that builds the launcher's command line, for the
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

from . import course
from .course import ToolError

log = logging.getLogger("grading.autograde")

KERNEL_NAME = "diffusion-grader"
UID_BASE = 61000
#: Isolation modes in which a job's kernel runs under an unprivileged uid of its own.
CONFINED = ("uid", "sandbox")


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


def launcher_command(mode: str, home: Path, uid: int | None = None,
                     protect: list[Path] = ()) -> list[str]:
    """The command line of ``grading.kernel_launcher`` for isolation ``mode`` (add ``--probe``, or
    ``-f {connection_file}`` and the kernel's arguments): as ``uid`` in modes ``uid`` and
    ``sandbox``, the latter in a private mount namespace where the ``protect`` paths are read-only."""
    if mode not in CONFINED + ("none",):
        raise ValueError(f"isolation mode must be 'uid', 'sandbox' or 'none', got {mode!r}")
    if mode in CONFINED and uid is None:
        raise ValueError(f"isolation mode {mode!r} needs the uid to run the kernel as")
    cmd = [sys.executable, "-m", "grading.kernel_launcher", "--home", str(home)]
    if mode in CONFINED:
        cmd += ["--uid", str(uid), "--gid", str(uid)]
    if mode == "sandbox":
        unshare = shutil.which("unshare") or "unshare"
        cmd = [unshare, "-m", "--propagation", "private", "--"] + cmd + ["--sandbox"]
        cmd += [a for p in protect for a in ("--protect", str(p))]
    return cmd


def isolation_mode(protect: list[Path], workdir: Path) -> tuple[str, str]:
    """``("uid" | "sandbox" | "none", explanation)``: how student kernels are confined.

    ``uid``: an unprivileged uid per job. ``sandbox`` (root, when no other uid can reach this
    Python as installed): an unprivileged uid per job too, in a private mount namespace where
    the folders closed to other users are opened only on the way to Python, and everything but
    the job's scratch folder is read-only. ``none``: not root; kernels run as the grader's
    user, each in its own throw-away course copy.
    """
    ok, why = can_drop_privileges()
    if ok:
        return "uid", why
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        return "none", why
    home = workdir / "probe-home"
    home.mkdir(exist_ok=True)
    cmd = launcher_command("sandbox", home, UID_BASE - 1, protect) + ["--probe"]
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


def write_kernel_spec(job_dir: Path, mode: str, uid: int, protect: list[Path]) -> None:
    """The job's grading kernelspec, ``kernels/kernels/<KERNEL_NAME>/kernel.json``: the launcher
    with the job's ``home`` folder, uid and isolation mode."""
    kdir = job_dir / "kernels" / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True)
    argv = launcher_command(mode, job_dir / "home", uid, protect) + ["-f", "{connection_file}"]
    (kdir / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "Python 3 (grading)", "language": "python"}))


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
    """In mode ``uid``, warn when a job's uid cannot read the course's data or checkpoints (the
    sandbox opens the way to them itself)."""
    for src in shared_dirs():
        hidden = [f for f in ([src] + sorted(src.iterdir()) if src.is_dir() else [])
                  if not readable_by_others(f)]
        if hidden:
            log.warning("student kernels (unprivileged uids) cannot read %s: make it readable "
                        "by other users, or its notebooks will fail", hidden[0])

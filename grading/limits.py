"""Limits a grading kernel cannot lift: a memory cgroup per job.

Trusted: the grader creates the cgroup as root; the kernel launcher puts the kernel into it before
dropping privileges; an unprivileged kernel can neither leave it nor raise its limit. cgroup v2
(``memory.max``, ``memory.events``) and v1 (``memory.limit_in_bytes``, ``memory.oom_control``)
are both understood. Without either (no root, no writable cgroup tree) there is no memory limit
and :func:`create` returns None; the caller says so once.
"""
from __future__ import annotations

import os
from pathlib import Path

V2_ROOT = Path("/sys/fs/cgroup")
V1_ROOT = Path("/sys/fs/cgroup/memory")
PARENT = "diffusion-grading"


def _v2() -> bool:
    return (V2_ROOT / "cgroup.controllers").is_file() and \
        "memory" in (V2_ROOT / "cgroup.controllers").read_text().split()


def create(name: str, memory_mb: int) -> str | None:
    """A fresh memory cgroup ``name`` limited to ``memory_mb`` MB (swap included where the kernel
    accounts it); its folder, or None when cgroups cannot be used here."""
    if memory_mb <= 0 or os.geteuid() != 0:
        return None
    limit = str(memory_mb * 1024 * 1024)
    try:
        if _v2():
            parent = V2_ROOT / PARENT
            parent.mkdir(exist_ok=True)
            try:
                (V2_ROOT / "cgroup.subtree_control").write_text("+memory")
                (parent / "cgroup.subtree_control").write_text("+memory")
            except OSError:
                pass
            d = parent / name
            d.mkdir()
            (d / "memory.max").write_text(limit)
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
            return str(d)
        if V1_ROOT.is_dir():
            parent = V1_ROOT / PARENT
            parent.mkdir(exist_ok=True)
            d = parent / name
            d.mkdir()
            (d / "memory.limit_in_bytes").write_text(limit)
            if (d / "memory.memsw.limit_in_bytes").exists():
                try:
                    (d / "memory.memsw.limit_in_bytes").write_text(limit)
                except OSError:
                    pass
            return str(d)
    except OSError:
        return None
    return None


def available() -> bool:
    """Whether memory cgroups can be made here (a probe group is made and removed again)."""
    folder = create(f"probe-{os.getpid()}", 64)
    remove(folder)
    return folder is not None


def oom_kills(folder: str | None) -> int:
    """How many processes of the cgroup the kernel killed for lack of memory so far."""
    if not folder:
        return 0
    for name in ("memory.events", "memory.oom_control"):
        try:
            for line in Path(folder, name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return 0


def peak_mb(folder: str | None) -> float | None:
    """The cgroup's peak memory use in MB, where the kernel reports it."""
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        try:
            return int(Path(folder, name).read_text()) / 2**20
        except (OSError, ValueError, TypeError):
            continue
    return None


def join(folder: str, pid: int | None = None) -> None:
    """Move process ``pid`` (default: this one) into the cgroup."""
    Path(folder, "cgroup.procs").write_text(str(pid or os.getpid()))


def remove(folder: str | None) -> None:
    """Remove the cgroup once its processes are gone (they are killed with the job's uid)."""
    if not folder:
        return
    try:
        os.rmdir(folder)
    except OSError:
        pass


class JobLimits:
    """The limits of every job of one autograde run: from the course config, or given."""

    def __init__(self, root, notebook_timeout: int | None = None, memory_mb: int | None = None):
        from . import course

        config = course.load_config(root)
        cfg, other = config.CourseExecute, config.CourseLimits
        self.notebook_timeout = int(notebook_timeout if notebook_timeout is not None
                                    else cfg.get("notebook_timeout", 0) or 0)
        self.memory_mb = int(memory_mb if memory_mb is not None else cfg.get("memory_limit_mb", 0) or 0)
        self.max_processes = int(other.get("max_processes", 512))
        self.shm_mb = int(other.get("shm_mb", 64))
        self.max_notebook_bytes = int(float(other.get("max_notebook_mb", 20)) * 1_000_000)
        #: kernels forked from a template that has imported torch (``grading.zygote``; root only)
        self.warm_kernels = bool(other.get("warm_kernels", True))

    def __repr__(self) -> str:
        memory = f"{self.memory_mb} MB of memory" if self.memory_mb else "no memory limit"
        return (f"{memory}, {self.notebook_timeout} s per notebook, {self.max_processes} processes, "
                f"{self.shm_mb} MB of /dev/shm, notebooks up to {self.max_notebook_bytes // 1_000_000} MB "
                f"without outputs")

"""The grading kernel's world, built by bubblewrap: an allow-list, not the host.

Trusted: runs as the grader, before any student code. bubblewrap (Debian's ``bubblewrap``
package) was chosen over hand-written mount code: it is the sandbox tool that Flatpak relies on,
it builds a fresh root from exactly the folders named, and it works as root and, through user
namespaces, without root.

Inside, the kernel sees:

- the system's programs and libraries (``/usr``, ``/bin``, ``/lib*``) and a few files of ``/etc``;
- its Python: the interpreter's prefix and the virtual environment's (read-only), with any
  installed copy of ``grading`` masked;
- ``helpers`` and ``gradeprobe`` (read-only), on a ``PYTHONPATH`` of their own;
- the course's data and checkpoint folders that its home links to (read-only);
- its home, the job's scratch folder (the only writable place), a private ``/tmp`` and a private,
  size-capped ``/dev/shm``, both gone with the kernel;

and nothing else: not the repository, ``grading/``, ``solutions/``, the submissions, other jobs,
``--out`` or any gradebook. It has its own pid, network (no interface up), IPC and UTS
namespaces, and dies with its parent.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

COURSE_PATH = "/opt/diffusion-course"   # where helpers/ and gradeprobe/ appear in the sandbox
KERNEL_PACKAGES = ("helpers", "gradeprobe")
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "fonts", "nsswitch.conf",
       "passwd", "group", "hosts", "ssl", "ca-certificates", "alternatives", "mime.types")
SHM_BYTES = 64 * 2**20
TMP_BYTES = 256 * 2**20


def available() -> str | None:
    """The ``bwrap`` program, or None."""
    return shutil.which("bwrap")


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.realpath(list(spec.submodule_search_locations)[0])


def python_paths() -> list[str]:
    """What the kernel's Python needs to start: its prefixes and the real folder of its executable."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(os.path.realpath(p) for p in paths if os.path.isdir(p))


class Builder:
    """Collects bubblewrap arguments, creating every parent folder open to all (``--perms 0755``)."""

    def __init__(self):
        self.args: list[str] = []
        self.dirs: set[str] = {"/"}

    def _parents(self, path: str) -> None:
        parts = Path(path).parts[1:-1]
        cur = ""
        for part in parts:
            cur += "/" + part
            if cur not in self.dirs:
                self.dirs.add(cur)
                self.args += ["--perms", "0755", "--dir", cur]

    def ro(self, path: str, target: str | None = None) -> None:
        target = target or path
        self._parents(target)
        self.args += ["--ro-bind", path, target]
        self.dirs.add(target)

    def rw(self, path: str) -> None:
        self._parents(path)
        self.args += ["--bind", path, path]
        self.dirs.add(path)

    def system(self) -> None:
        self.ro("/usr")
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            p = "/" + name
            if os.path.islink(p):
                self.args += ["--symlink", os.readlink(p), p]
            elif os.path.isdir(p):
                self.ro(p)
        for name in ETC:
            p = "/etc/" + name
            if os.path.exists(p):
                self.ro(p)


def command(home: str, cmd: list[str], uid: int | None, gid: int | None,
            readable: list[str] = (), shm_bytes: int = SHM_BYTES, info_fd: int | None = None) -> list[str]:
    """The bubblewrap command that runs ``cmd`` (the kernel) in its allow-listed world, with the
    ``readable`` files (the data and checkpoints the home links to) read-only at their own paths;
    ``info_fd``: where bubblewrap writes the sandbox's pid (``grading.zygote`` enters it).

    As root (``uid`` given), ``setpriv`` drops to ``uid:gid`` inside, with no capabilities and
    ``no_new_privs``; without root, bubblewrap's user namespace keeps the grader's uid."""
    b = Builder()
    # the private mounts first: a bind below /tmp (the job's home often is) must lie on top of them
    b.args += ["--proc", "/proc", "--dev", "/dev",
               "--perms", "1777", "--size", str(shm_bytes), "--tmpfs", "/dev/shm",
               "--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    b.dirs.update({"/proc", "/dev", "/dev/shm", "/tmp"})
    b.system()
    for p in python_paths():
        b.ro(p)
    installed = _package_dir("grading")
    if installed and any(installed.startswith(p + os.sep) for p in python_paths()):
        b.args += ["--tmpfs", installed]  # an installed (not editable) copy of the grading code
    for name in KERNEL_PACKAGES:
        src = _package_dir(name)
        if src:
            b.ro(src, f"{COURSE_PATH}/{name}")
    for p in sorted({os.path.realpath(p) for p in readable if os.path.exists(p)}):
        b.ro(p)  # each file on its own, under folders open to all (its own folder may be closed)
    b.rw(home)
    ns = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
          "--die-with-parent", "--new-session"]
    if uid is None:
        ns.append("--unshare-user")
    if info_fd is not None:
        ns += ["--info-fd", str(info_fd)]
    env = ["--unsetenv", "JPY_PARENT_PID",  # no parent to poll in a pid namespace of its own
           "--setenv", "PYTHONPATH", COURSE_PATH, "--chdir", home]
    inner = list(cmd)
    if uid is not None:
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        inner = [setpriv, f"--reuid={uid}", f"--regid={gid if gid is not None else uid}", "--clear-groups",
                 "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"] + inner
    return [available() or "bwrap"] + b.args + ns + env + ["--"] + inner

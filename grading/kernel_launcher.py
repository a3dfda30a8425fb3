"""Start a grading kernel so that student code cannot write outside its own scratch folder, nor
reach another job's kernel or the grader's processes.

Trusted: runs as the grader (root) up to the point where it ``exec``s the kernel, which then runs
the student's code as the job's uid. Its command line comes from
``grading.isolation.launcher_command``.

Two ways, chosen by ``grading.isolation`` when the grader runs as root; both run the kernel as an
unprivileged uid of its own (one per running job, see ``grading.isolation.UidPool``), so it cannot
signal, trace or read the memory of any other process:

``--uid U --gid G --home H`` (the unprivileged uid can run the venv's Python as it is):
    copy the connection file (written 0600 by jupyter_client) into ``H`` for ``U``, set resource
    limits, drop to ``U:G`` with no supplementary groups and ``exec`` ipykernel. The repository,
    the gradebooks and the other jobs (owned by root or other uids) are then read-only or
    invisible to student code.

``--sandbox --uid U --gid G --home H`` (run under ``unshare -m --propagation private``; used when
the unprivileged uid cannot reach the venv's Python, e.g. a Python installed under ``/root``):
    in the kernel's private mount namespace, where a folder on the way to Python, its libraries,
    the course packages, ``H`` or what the links in ``H`` point to (data, checkpoints) is closed
    to other users (``/root``), cover it with an empty tmpfs and bind back only the entries on
    that way (``/root/.pyenv``), so the rest of it stays hidden; bind ``H`` onto itself and
    remount every other mount read-only (``/proc``, ``/sys`` and ``/dev`` excepted) and check
    that each ``--protect`` path is no longer writable; then ``exec`` ipykernel through
    ``setpriv`` as ``U:G`` with an empty capability bounding set and ``no_new_privs``. Without
    ``--uid`` the kernel would stay uid 0 without capabilities, which can still signal every root
    process: ``grading.isolation`` always passes one.

``--probe`` runs a self-test instead of the kernel (used once per autograde run).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys

PROBE = r"""
import os, sys
import ipykernel, nbformat, grading, helpers
home, protect = sys.argv[1], sys.argv[2:]
for p in protect:
    try:
        open(os.path.join(p, ".grading-probe"), "w").close()
    except OSError:
        continue
    os.remove(os.path.join(p, ".grading-probe"))
    raise SystemExit(f"{p} is writable from the kernel")
open(os.path.join(home, ".grading-probe"), "w").close()
print("sandbox-ok")
"""


def _limits() -> None:
    for lim, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, 512 * 1024 * 1024)):
        try:
            resource.setrlimit(lim, (value, value))
        except (ValueError, OSError):
            pass


def _mountpoints() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4]
            mp = mp.encode().decode("unicode_escape")  # \040 -> space
            points.append(mp)
    return sorted(set(points), key=len, reverse=True)


def _closed(d: str) -> bool:
    """Whether an unprivileged uid (not the owner, in none of the groups) cannot enter ``d``."""
    try:
        return not os.stat(d).st_mode & 0o001
    except OSError:
        return False


def _needed_paths() -> list[str]:
    """What the kernel's Python must reach: itself, its standard library and every import path."""
    paths = {sys.executable, os.path.realpath(sys.executable), sys.prefix, sys.base_prefix,
             sys.exec_prefix, sys.base_exec_prefix}
    paths.update(p for p in sys.path if p)
    return sorted({os.path.realpath(p) for p in paths if os.path.exists(p)})


def _mount(source: str, target: str, fstype: str | None = None, flags: int = 0,
           data: str | None = None) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    enc = (lambda x: None if x is None else x.encode())
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


MS_BIND, MS_REC = 4096, 16384


def _open_up(needed: list[str]) -> None:
    """Inside the mount namespace, give other users a way through each closed folder that lies on
    the way to a ``needed`` path: an empty tmpfs (mode 755) over the folder, with only the needed
    entries bound back from the original (reached through a file descriptor opened before the
    tmpfs covered it)."""
    for _ in range(16):  # one level per pass: /root, then /root/x if that is closed too, ...
        todo: dict[str, set[str]] = {}
        for path in needed:
            parts = path.strip("/").split("/")
            for depth in range(1, len(parts)):
                folder = "/" + "/".join(parts[:depth])
                if _closed(folder):
                    todo.setdefault(folder, set()).add(parts[depth])
                    break
        if not todo:
            return
        for folder, children in todo.items():  # the first closed folder of each path: none nest
            fd = os.open(folder, os.O_PATH | os.O_DIRECTORY)
            try:
                _mount("tmpfs", folder, "tmpfs", 0, "mode=755,size=1m")
                for child in sorted(children):
                    src, dst = f"/proc/self/fd/{fd}/{child}", os.path.join(folder, child)
                    if os.path.isdir(src):
                        os.mkdir(dst)
                    else:
                        open(dst, "w").close()
                    _mount(src, dst, None, MS_BIND | MS_REC)
            finally:
                os.close(fd)
    raise SystemExit("sandbox: too many closed folders on the way to Python")


def _link_targets(home: str) -> list[str]:
    """Where the links in ``home`` lead (the course's data and checkpoints)."""
    targets = []
    for dirpath, dirnames, filenames in os.walk(home):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and os.path.exists(path):
                targets.append(os.path.realpath(path))
    return targets


def _sandbox(home: str, protect: list[str], open_up: bool = False) -> None:
    if open_up:  # before the bind below, which a tmpfs over one of home's folders would hide
        _open_up(_needed_paths() + _link_targets(home) + [home])
    subprocess.run(["mount", "--bind", home, home], check=True)
    for mp in _mountpoints():
        if mp == home or mp.startswith(("/proc", "/sys", "/dev")):
            continue
        subprocess.run(["mount", "-o", "remount,bind,ro", mp], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    for p in protect:
        if os.path.exists(p) and os.access(p, os.W_OK):
            raise SystemExit(f"sandbox: {p} is still writable")
    if not os.access(home, os.W_OK):
        raise SystemExit(f"sandbox: {home} is not writable")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--uid", type=int)
    p.add_argument("--gid", type=int)
    p.add_argument("--sandbox", action="store_true")
    p.add_argument("--home", required=True)
    p.add_argument("--protect", action="append", default=[])
    p.add_argument("--probe", action="store_true")
    p.add_argument("-f", dest="connection_file")
    args, rest = p.parse_known_args(argv)

    home = os.path.abspath(args.home)
    os.makedirs(home, exist_ok=True)
    env = dict(os.environ)
    env.update(HOME=home, TMPDIR=home, MPLCONFIGDIR=os.path.join(home, ".mpl"),
               XDG_CACHE_HOME=os.path.join(home, ".cache"), IPYTHONDIR=os.path.join(home, ".ipython"),
               JUPYTER_RUNTIME_DIR=home)
    _limits()
    if args.probe:
        cmd = [sys.executable, "-c", PROBE, home] + args.protect
    else:
        cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", args.connection_file] + rest

    gid = args.gid if args.gid is not None else args.uid
    if args.uid is not None:
        if args.uid < 1000:
            raise SystemExit(f"refusing to run student code as uid {args.uid}")
        if args.connection_file:
            conn = os.path.join(home, "kernel-connection.json")
            shutil.copyfile(args.connection_file, conn)
            cmd[cmd.index(args.connection_file)] = conn
        for dirpath, dirnames, filenames in os.walk(home):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), args.uid, gid)
        os.chown(home, args.uid, gid)
        os.chmod(home, 0o700)
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (512, 512))  # counted per uid
        except (ValueError, OSError):
            pass
        env.update(USER="student", LOGNAME="student")
    if args.sandbox:
        _sandbox(home, [os.path.abspath(x) for x in args.protect], open_up=args.uid is not None)
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        who = [] if args.uid is None else [f"--reuid={args.uid}", f"--regid={gid}", "--clear-groups"]
        os.execve(setpriv, [setpriv] + who + ["--bounding-set=-all", "--inh-caps=-all",
                                              "--no-new-privs", "--"] + cmd, env)
    if args.uid is not None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(args.uid)
        if os.getuid() != args.uid or os.geteuid() != args.uid:
            raise SystemExit("could not drop privileges")
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()

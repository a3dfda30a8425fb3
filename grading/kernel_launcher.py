"""Start a grading kernel in its sandbox: the program that every grading kernelspec runs.

Trusted: runs as the grader (root, or the grader's own user) up to the point where it ``exec``s
bubblewrap, inside which the kernel runs the student's code. Its command line comes from
``grading.isolation.launcher_command``.

``--bwrap --uid U --gid G --home H [--cgroup C]`` (root): join the job's memory cgroup, copy the
connection file (written 0600 by jupyter_client) into ``H`` and give ``H`` to ``U``, limit core
files, file sizes and the processes of ``U``, then ``exec`` bubblewrap (``grading.bwrap``), whose
allow-list holds ``H`` and what its links point to (the course's data and checkpoints), and inside
it ``setpriv`` drops to ``U:G`` with no capabilities and ``no_new_privs`` before ipykernel starts.

``--bwrap --home H`` (not root): the same sandbox through a user namespace, as the grader's uid.

``--home H`` alone: no sandbox (the ``none`` isolation mode).

``--probe`` runs a self-test instead of the kernel (once per autograde run): the ``--protect``
paths must be invisible, ``grading`` must not import, and only the kernel's own loopback exists.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys

PROBE = r"""
import os, socket, sys
import ipykernel, helpers, gradeprobe
home, hidden = sys.argv[1], sys.argv[2:]
for p in hidden:
    if os.path.exists(p):
        raise SystemExit(f"{p} is visible from the kernel")
try:
    import grading
except ImportError:
    pass
else:
    raise SystemExit("the grading package is importable from the kernel")
names = [n for _, n in socket.if_nameindex()]
if names != ["lo"]:  # a network namespace of its own: only its own loopback
    raise SystemExit(f"the kernel sees network interfaces {names}")
open(os.path.join(home, ".grading-probe"), "w").close()
print("sandbox-ok")
"""
MAX_PROCESSES = 512                  # per uid, i.e. per job (the course config sets it)
MAX_FILE_BYTES = 512 * 1024 * 1024   # one file the kernel writes


def _limits() -> None:
    for lim, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, MAX_FILE_BYTES)):
        try:
            resource.setrlimit(lim, (value, value))
        except (ValueError, OSError):
            pass


def _link_targets(home: str) -> list[str]:
    """Where the links in ``home`` lead (the course's data and checkpoint files)."""
    targets = []
    for dirpath, dirnames, filenames in os.walk(home):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and os.path.exists(path):
                targets.append(os.path.realpath(path))
    return targets


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--uid", type=int)
    p.add_argument("--gid", type=int)
    p.add_argument("--bwrap", action="store_true", help="run the kernel in bubblewrap's allow-list")
    p.add_argument("--home", required=True)
    p.add_argument("--protect", action="append", default=[], help="(probe) must not be visible")
    p.add_argument("--probe", action="store_true")
    p.add_argument("--cgroup", help="memory cgroup folder to join before dropping privileges")
    p.add_argument("--max-processes", type=int, default=MAX_PROCESSES, help="processes of the uid")
    p.add_argument("--shm-mb", type=int, default=64, help="size of the private /dev/shm")
    p.add_argument("-f", dest="connection_file")
    args, rest = p.parse_known_args(argv)

    home = os.path.abspath(args.home)
    os.makedirs(home, exist_ok=True)
    if args.cgroup:  # the job's memory limit (grading.limits): the kernel cannot leave it
        with open(os.path.join(args.cgroup, "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))
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
    if args.bwrap and args.connection_file:  # the sandbox sees the home, not where jupyter wrote it
        conn = os.path.join(home, "kernel-connection.json")
        shutil.copyfile(args.connection_file, conn)
        cmd[cmd.index(args.connection_file)] = conn
    if args.uid is not None:
        if args.uid < 1000:
            raise SystemExit(f"refusing to run student code as uid {args.uid}")
        if not args.bwrap:
            raise SystemExit("a grading uid is only used inside the bubblewrap sandbox")
        for dirpath, dirnames, filenames in os.walk(home):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), args.uid, gid)
        os.chown(home, args.uid, gid)
        os.chmod(home, 0o700)
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (args.max_processes, args.max_processes))  # per uid
        except (ValueError, OSError):
            pass
        env.update(USER="student", LOGNAME="student")
    if args.bwrap:
        from grading import bwrap

        argv = bwrap.command(home, cmd, args.uid, gid, readable=_link_targets(home),
                             shm_bytes=args.shm_mb * 2**20)
        os.execve(argv[0], argv, env)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()

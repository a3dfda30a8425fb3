"""Start a grading kernel so that student code cannot write outside its own scratch folder.

Two ways, chosen by ``grading.autograde`` when the grader runs as root:

``--uid U --gid G --home H`` (an unprivileged user can run the venv's Python):
    copy the connection file (written 0600 by jupyter_client) into ``H`` for ``U``, set resource
    limits, drop to ``U:G`` with no supplementary groups and ``exec`` ipykernel. The repository,
    the gradebooks and the other jobs (owned by root or other uids) are then read-only or
    invisible to student code.

``--sandbox --home H`` (run under ``unshare -m --propagation private``; used when no other
uid can run the venv's Python, e.g. a Python installed under ``/root``):
    in the kernel's private mount namespace, bind ``H`` onto itself, remount every other mount
    read-only (``/proc``, ``/sys`` and ``/dev`` excepted), check that each ``--protect`` path is no
    longer writable, then ``exec`` ipykernel through ``setpriv`` with an empty capability
    bounding set and ``no_new_privs``: uid 0 without capabilities cannot remount, so the
    repository, the gradebooks and the other jobs stay read-only; only ``H`` is writable.

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


def _sandbox(home: str, protect: list[str]) -> None:
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

    if args.uid is not None:
        conn = os.path.join(home, "kernel-connection.json")
        if args.connection_file:
            shutil.copyfile(args.connection_file, conn)
            cmd[cmd.index(args.connection_file)] = conn
        for dirpath, dirnames, filenames in os.walk(home):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), args.uid, args.gid)
        os.chown(home, args.uid, args.gid)
        os.chmod(home, 0o700)
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (512, 512))  # counted per uid
        except (ValueError, OSError):
            pass
        env.update(USER="student", LOGNAME="student")
        os.setgroups([])
        os.setgid(args.gid if args.gid is not None else args.uid)
        os.setuid(args.uid)
        if os.getuid() != args.uid or os.geteuid() != args.uid:
            raise SystemExit("could not drop privileges")
        os.execve(cmd[0], cmd, env)
    if args.sandbox:
        _sandbox(home, [os.path.abspath(x) for x in args.protect])
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        os.execve(setpriv, [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs",
                            "--"] + cmd, env)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()

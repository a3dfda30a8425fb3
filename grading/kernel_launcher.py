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

With ``GRADING_ZYGOTE`` set (the worker's warm-kernel server, ``grading.zygote``) and a uid, the
kernel is not started cold: bubblewrap builds the same sandbox around a placeholder, and the
server forks a process that enters it as ``U`` and becomes the kernel. Should that fail before
the kernel ran, the kernel starts cold as above.

``--probe`` runs a self-test instead of the kernel (once per autograde run): the ``--protect``
paths must be invisible, ``grading`` must not import, and only the kernel's own loopback exists.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
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


#: The grader's environment variables a kernel gets (prefixes, then names): the course's own,
#: nbgrader's, threads, locale, time zone. Nothing else of the grader's environment (tokens, a
#: database URL, cloud credentials) reaches the student's code, whose process can read it.
KERNEL_ENV_PREFIXES = ("DIFFUSION_", "GRADEPROBE_", "NBGRADER_", "JPY_", "OMP_", "MKL_", "OPENBLAS_", "LC_")
KERNEL_ENV_NAMES = ("PATH", "PYTHONPATH", "LANG", "LANGUAGE", "TZ", "TERM", "PYTHONHASHSEED", "MPLBACKEND",
                    "PYDEVD_DISABLE_FILE_VALIDATION", "HOME", "USER", "LOGNAME")


def kernel_environment(environ) -> dict[str, str]:
    """The part of ``environ`` a kernel may see (see :data:`KERNEL_ENV_PREFIXES`)."""
    return {k: v for k, v in environ.items() if k in KERNEL_ENV_NAMES or k.startswith(KERNEL_ENV_PREFIXES)}


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


def _warm_kernel(sock: str, home: str, uid: int, gid: int, cgroup: str | None, env: dict,
                 kernel_args: list[str], readable: list[str], shm_bytes: int,
                 max_processes: int, probe: str | None = None) -> int:
    """The kernel forked by the warm-kernel server into this job's sandbox (``grading.zygote``);
    returns its exit status. ``OSError``: nothing ran (start it cold). ``probe``: Python source
    run there in place of the kernel, with ``kernel_args`` as its ``sys.argv[1:]`` (tests)."""
    from grading import bwrap, zygote

    info_r, info_w = os.pipe()
    holder = ["/bin/sh", "-c", "echo ready; exec sleep infinity"]  # holds the sandbox open
    argv = bwrap.command(home, holder, uid, gid, readable=readable, shm_bytes=shm_bytes,
                         info_fd=info_w)
    proc = subprocess.Popen(argv, env=env, pass_fds=(info_w,), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE)
    os.close(info_w)
    try:
        if proc.stdout.readline().strip() != b"ready":
            raise OSError(f"the sandbox did not start (bubblewrap exit {proc.poll()})")
        text = b""
        while True:  # bubblewrap's JSON: {"child-pid": <the sandbox's pid 1, as seen here>}
            chunk = os.read(info_r, 4096)
            text += chunk
            try:
                pid = int(json.loads(text)["child-pid"])
                break
            except ValueError:
                if not chunk:
                    raise OSError(f"bubblewrap gave no sandbox pid: {text[:200]!r}") from None
        kernel_env = {k: v for k, v in env.items() if k not in ("JPY_PARENT_PID", zygote.ENV_SOCKET)}
        kernel_env["PYTHONPATH"] = bwrap.COURSE_PATH
        request = {"pid": pid, "uid": uid, "gid": gid, "cgroup": cgroup, "home": home,
                   "env": kernel_env, "args": kernel_args,
                   "rlimits": {"RLIMIT_CORE": 0, "RLIMIT_FSIZE": MAX_FILE_BYTES,
                               "RLIMIT_NPROC": max_processes}}
        if probe is not None:
            request["probe"] = probe
        return zygote.spawn(sock, request)
    finally:
        os.close(info_r)
        proc.kill()
        proc.wait()


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
    env = kernel_environment(os.environ)
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
    sock = os.environ.get("GRADING_ZYGOTE")
    if args.bwrap and args.uid is not None and sock and not args.probe:
        try:
            code = _warm_kernel(sock, home, args.uid, gid, args.cgroup, env, cmd[3:],
                                _link_targets(home), args.shm_mb * 2**20, args.max_processes)
        except OSError as exc:
            print(f"grading: warm kernel unavailable ({exc}); starting it cold", file=sys.stderr)
        else:
            sys.stdout.flush()
            os._exit(code)
    if args.bwrap:
        from grading import bwrap

        argv = bwrap.command(home, cmd, args.uid, gid, readable=_link_targets(home),
                             shm_bytes=args.shm_mb * 2**20)
        os.execve(argv[0], argv, env)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()

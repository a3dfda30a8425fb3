"""Warm kernels: each job's kernel forked from a process that has already imported torch.

Trusted: the server runs as the grader (root) in the worker's process tree; the client is the
kernel launcher (``grading.kernel_launcher``) of one job, also the grader.

Why: every student gets a fresh kernel, and a fresh Python spends about 3 s of CPU importing
torch, NumPy, matplotlib and ipykernel before the notebook's first line runs, the largest cost
of a graded notebook. A fork of a process that did those imports and nothing else costs a few
milliseconds; the pages are shared copy-on-write. The notebook still runs in a new process that
no other notebook has touched, in a sandbox of its own.

How the sandbox is kept. bubblewrap still builds each job's world (``grading.bwrap``: the
allow-list of folders, the job's home, private ``/tmp`` and ``/dev/shm``, no network, its own
pid, IPC and UTS namespaces), exactly as for a cold kernel, around a placeholder program
(``sleep``). The forked child then *enters* that world the way util-linux's ``nsenter`` does:
it joins the job's memory cgroup, ``setns`` into the sandbox's cgroup, IPC, UTS, network, pid
and mount namespaces, takes the sandbox's root (``/proc/PID/root``) as its own, drops to the
job's uid with no groups, no capabilities (bounding set emptied) and ``no_new_privs``, closes
every inherited file descriptor, and only then forks the kernel, which is therefore a member of
the sandbox's pid namespace (it dies with the sandbox) and can see no process outside it. Its
parent, which waits for it, is inside that namespace too and runs as ``nobody``: like a cold
kernel's parent, it is no process the kernel may signal. No mount is made here: the mount work
stays bubblewrap's.

The template process (:data:`SERVER`) is started with the environment a cold kernel gets
(``kernel_launcher.kernel_environment``: a kernel can read its template's through
``/proc/self/environ``), imports only third-party modules (:data:`PRELOAD`; never ``grading``,
``helpers`` or a notebook), and keeps no secret: what a kernel inherits from its memory is
those modules and the uids and folders of earlier jobs. It listens on a Unix socket in a
folder only its user can enter and serves only its own user (``SO_PEERCRED``).

Only the ``bwrap`` isolation mode (root) uses it, where ``CourseLimits.warm_kernels`` is on
(the default); any failure to reach the server falls back to a cold kernel.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

#: What the template imports: what every notebook's first cell (and ipykernel) would import,
#: except packages that act on the running kernel at import (ipywidgets, tqdm.auto register
#: with the shell) and the course's own packages (a different path inside the sandbox).
PRELOAD = ("numpy", "torch", "torch.nn", "torch.nn.functional", "matplotlib", "matplotlib.pyplot",
           "PIL.Image", "IPython", "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell")
#: The environment variable through which a worker's kernel launchers find its server.
ENV_SOCKET = "GRADING_ZYGOTE"

#: The template and fork server, run by ``python -c`` so that no module of ``grading`` is in the
#: memory the kernels inherit. Arguments: socket path, comma-separated modules to import.
SERVER = r'''
import ctypes, importlib, json, os, selectors, signal, socket, struct, sys
SOCK, MODULES = sys.argv[1], [m for m in sys.argv[2].split(",") if m]
for _m in MODULES:
    importlib.import_module(_m)
del _m

libc = ctypes.CDLL(None, use_errno=True)
NS = (("cgroup", 0x02000000), ("ipc", 0x08000000), ("uts", 0x04000000), ("net", 0x40000000),
      ("pid", 0x20000000), ("mnt", 0x00020000))
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
NOBODY = 65534  # the processes around the kernel (they run no code of the student's)


def check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def enter(req):
    """In the forked child, as root: become a process of the job's sandbox, as the job's uid."""
    target = int(req["pid"])
    if req.get("cgroup"):
        with open(os.path.join(req["cgroup"], "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))
    fds = {}
    for name, _flag in NS:
        try:
            fds[name] = os.open(f"/proc/{target}/ns/{name}", os.O_RDONLY)
        except FileNotFoundError:
            if name != "cgroup":
                raise
    root = os.open(f"/proc/{target}/root", os.O_RDONLY | os.O_DIRECTORY)
    for name, flag in NS:
        if name in fds:
            check(libc.setns(fds[name], flag), f"setns {name}")
            os.close(fds[name])
    os.fchdir(root)
    os.chroot(".")
    os.close(root)
    os.chdir(req["home"])
    import resource
    for name, value in req.get("rlimits", {}).items():
        resource.setrlimit(getattr(resource, name), (value, value))
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    os.setgroups([])
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def drop(uid, gid):
    """Become ``uid:gid`` for good: no capabilities are left (the bounding set is empty)."""
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid or os.getgroups():
        raise OSError("the uid did not change")


def become_kernel(req):
    """In the sandbox's pid namespace: the fresh kernel (or the probe)."""
    os.setsid()
    os.environ.clear()
    os.environ.update(req["env"])
    sys.path[:] = [req["home"], req["env"]["PYTHONPATH"]] + [
        p for p in sys.path[1:] if p != req["env"]["PYTHONPATH"]]
    # the template looked these folders up on the host, where the course's path did not exist
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    import random
    random.seed()
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import runpy
    code = 0
    try:
        if req.get("probe"):
            sys.argv = ["probe"] + req["args"]
            exec(compile(req["probe"], "<probe>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = ["ipykernel_launcher"] + req["args"]
            runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    os._exit(code & 0xFF)


def child(req, stdio, conn, closing):
    """The forked child: enter the sandbox, fork the kernel, wait for it (exit status to Z)."""
    try:
        for fd in closing:
            os.close(fd)
        for n, fd in enumerate(stdio):
            os.dup2(fd, n)
        enter(req)
    except BaseException as exc:
        try:
            conn.sendall(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        finally:
            os._exit(111)
    os.closerange(3, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
    # The first fork is the sandbox's member that waits, the second the kernel: the kernel's
    # parent is then inside its pid namespace, as a cold kernel's is, and like a cold kernel's
    # parent it is not the kernel's uid (nobody's), so the kernel cannot signal it.
    pid = os.fork()
    if pid == 0:
        inner = os.fork()
        if inner == 0:
            try:
                drop(int(req["uid"]), int(req["gid"]))
            except BaseException:
                os._exit(111)
            become_kernel(req)
        drop(NOBODY, NOBODY)
        wait_exit(inner)
    drop(NOBODY, NOBODY)
    wait_exit(pid)


def wait_exit(pid):
    """Wait for ``pid`` and end this process with its exit status (128 + signal if killed)."""
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def serve():
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(SOCK)
    os.chmod(SOCK, 0o600)
    srv.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ)  # closed when the worker goes
    print("ready", flush=True)
    children = {}
    while True:
        for key, _ in sel.select(timeout=0.05):
            if key.fileobj is srv:
                conn, _ = srv.accept()
                pid_, uid_, _gid = struct.unpack("3i", conn.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
                if uid_ != os.getuid():
                    conn.close()
                    continue
                try:
                    msg, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
                    req = json.loads(msg)
                    if len(fds) != 3:
                        raise ValueError("expected the kernel's stdin, stdout and stderr")
                except Exception as exc:
                    conn.sendall(json.dumps({"error": f"bad request: {exc}"}).encode() + b"\n")
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    child(req, fds, conn, [srv.fileno(), sys.stdin.fileno()])
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
            else:
                if not os.read(sys.stdin.fileno(), 4096):
                    return
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
                except OSError:
                    pass
                conn.close()


serve()
'''


class Zygote:
    """A worker's template process and fork server (see the module docstring); ``socket`` is
    what the job's kernel launchers are given (``ENV_SOCKET``)."""

    def __init__(self, env: dict[str, str] | None = None, preload=PRELOAD, start_timeout: float = 120):
        self.dir = Path(tempfile.mkdtemp(prefix="zygote-"))  # 0700: only the grader enters
        self.socket = str(self.dir / "s")
        from .kernel_launcher import kernel_environment

        # A kernel can read the template's starting environment (/proc/self/environ): it gets what
        # a cold kernel gets, no more.
        base = kernel_environment(os.environ if env is None else env)
        # What a cold kernel's Python gets from bubblewrap and the launcher: its PYTHONPATH, and a
        # matplotlib folder of the template's own (the font cache is built there once).
        from .bwrap import COURSE_PATH
        base.update(PYTHONPATH=COURSE_PATH, MPLCONFIGDIR=str(self.dir / "mpl"), HOME=str(self.dir))
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, self.socket, ",".join(preload)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=base,
                                     cwd=str(self.dir))
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.close()
            raise RuntimeError(f"the warm-kernel template did not start (exit {self.proc.poll()})")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def spawn(sock: str, request: dict) -> int:
    """Ask the server at ``sock`` for a kernel (``request``: the sandbox's ``pid``, ``uid``,
    ``gid``, ``cgroup``, ``home``, ``env``, ``args``, ``rlimits``; ``probe``: source to run in
    place of the kernel) with this process's stdin, stdout and stderr, and wait until it exits.
    Returns its exit status; raises ``OSError`` when the server cannot be reached or could not
    enter the sandbox (nothing ran then)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock)
        socket.send_fds(s, [json.dumps(request).encode()], [0, 1, 2])
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("the warm-kernel server closed the connection")
            reply += chunk
    answer = json.loads(reply)
    if "error" in answer:
        raise OSError(f"the warm kernel could not enter its sandbox: {answer['error']}")
    return int(answer["exit"])

"""Warm kernels (``grading.zygote``): a kernel forked from the template that imported torch is as
confined as a cold one, and no two of them share anything but the imported modules.

Each test runs Python source in place of the kernel (``probe``), entered into a real job sandbox
by the launcher's own warm path (``grading.kernel_launcher._warm_kernel``), and judges what it
printed here. Root and bubblewrap are needed (the ``bwrap`` isolation mode, which CI has).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grading import course, kernel_launcher, limits, zygote
from grading.isolation import UID_BASE

pytestmark = pytest.mark.skipif(not (os.geteuid() == 0 and shutil.which("bwrap")),
                                reason="warm kernels need root and bubblewrap")
UID = UID_BASE + 3999  # the pool's last uid: tests never meet a running job's
NOBODY = 65534         # the processes that wait for a warm kernel


@pytest.fixture(scope="module")
def server():
    # random and numpy.random in the template too: their states must be drawn afresh per kernel
    z = zygote.Zygote(env=dict(os.environ, TEMPLATE_ONLY_SECRET="s3cret"),
                      preload=zygote.PRELOAD + ("random", "numpy.random"))
    yield z
    z.close()


def _home(tmp_path: Path, name: str = "home") -> str:
    home = tmp_path / name
    home.mkdir(mode=0o700)
    os.chown(home, UID, UID)
    return str(home)


def run_probe(server, home: str, source: str, cgroup: str | None = None, args=()) -> dict:
    """Run ``source`` as the job's warm kernel; it prints one JSON line, returned with ``exit``."""
    out = Path(home).parent / f"{Path(home).name}.out"
    with open(out, "wb") as fh:
        saved = os.dup(1)
        os.dup2(fh.fileno(), 1)  # the kernel gets this process's stdout
        try:
            code = kernel_launcher._warm_kernel(server.socket, home, UID, UID, cgroup, dict(os.environ, HOME=home),
                                                list(args), [], 64 << 20, 512, probe=source)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
    lines = [ln for ln in out.read_text().splitlines() if ln.startswith("{")]
    return {**(json.loads(lines[-1]) if lines else {}), "exit": code}


CONFINEMENT = r'''
import json, os, socket, sys
def _signals(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
try:
    import grading
    grading_importable = True
except ImportError:
    grading_importable = False
import helpers
open(os.path.join(os.getcwd(), "written"), "w").write("x")
try:  # the starting environment: unreadable (no exec after the uid changed: not dumpable)
    start_env = open("/proc/self/environ", "rb").read().decode(errors="replace")
except PermissionError:
    start_env = ""
try:
    open("/usr/written", "w")
    usr_writable = True
except OSError:
    usr_writable = False
print(json.dumps({
    "uid": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()], "groups": os.getgroups(),
    "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(), "cap_bnd": status["CapBnd"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(), "fds": sorted(os.listdir("/proc/self/fd")),
    "ppid": os.getppid(), "can_signal": [p for p in (os.getppid(), 1) if _signals(p)],
    "pid1": open("/proc/1/cmdline").read().split("\0")[0], "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "net": [n for _, n in socket.if_nameindex()], "grading_importable": grading_importable,
    "visible": {p: os.path.exists(p) for p in sys.argv[1:]}, "helpers": helpers.__file__,
    "usr_writable": usr_writable, "torch_preloaded": "torch" in sys.modules, "cwd": os.getcwd(),
    "env": sorted(os.environ), "path0": sys.path[0],
    "start_env": start_env}))
'''


def test_a_warm_kernel_is_confined_like_a_cold_one(server, tmp_path):
    home = _home(tmp_path)
    hidden = [str(course.REPO_ROOT / "grading"), str(course.REPO_ROOT / "solutions"), str(tmp_path / "other"),
              "/etc/shadow", "/var", server.dir.as_posix()]
    (tmp_path / "other").mkdir()
    r = run_probe(server, home, CONFINEMENT, args=hidden)
    assert r["exit"] == 0, r
    assert r["uid"] == [UID] * 4 and r["groups"] == []
    assert r["cap_eff"] == r["cap_prm"] == r["cap_bnd"] == "0000000000000000", r
    assert r["no_new_privs"] == "1"
    assert r["fds"] == ["0", "1", "2", "3"], f"inherited file descriptors: {r['fds']}"  # 3: the listing
    assert r["pid1"].endswith("bwrap") and max(r["pids"]) < 10, r["pids"]  # the sandbox's pid namespace
    assert r["ppid"] in r["pids"], f"the kernel's parent {r['ppid']} is outside its pid namespace"
    assert r["can_signal"] == [], f"the kernel can signal {r['can_signal']} (its parent, pid 1)"
    assert r["net"] == ["lo"]
    assert not r["grading_importable"]
    assert not any(r["visible"].values()), r["visible"]
    assert r["helpers"].startswith("/opt/diffusion-course/")
    assert not r["usr_writable"] and (Path(home) / "written").is_file()
    assert r["torch_preloaded"], "the kernel should come from the warm template"
    assert r["cwd"] == home and r["path0"] == home
    assert "TEMPLATE_ONLY_SECRET" not in r["env"] and zygote.ENV_SOCKET not in r["env"]
    assert "TEMPLATE_ONLY_SECRET" not in r["start_env"] and "s3cret" not in r["start_env"], \
        "the template's starting environment (readable by the kernel) holds the grader's variables"


def test_a_kernel_gets_only_the_course_part_of_the_graders_environment():
    env = kernel_launcher.kernel_environment({
        "PATH": "/usr/bin", "DIFFUSION_FAST": "1", "NBGRADER_EXECUTION": "autograde", "OMP_NUM_THREADS": "1",
        "GRADEPROBE_DIR": "/h/probe", "LC_ALL": "C.UTF-8", "AWS_SECRET_ACCESS_KEY": "x",
        "GRADING_TEST_POSTGRES_URL": "postgresql://u:p@h/db", "JUPYTER_TOKEN": "t", "SSH_AUTH_SOCK": "/s"})
    assert env == {"PATH": "/usr/bin", "DIFFUSION_FAST": "1", "NBGRADER_EXECUTION": "autograde",
                   "OMP_NUM_THREADS": "1", "GRADEPROBE_DIR": "/h/probe", "LC_ALL": "C.UTF-8"}


def test_warm_kernels_share_no_state(server, tmp_path):
    mark = r'''
import json, random, sys, torch, numpy
first = not hasattr(torch, "_student_mark")
torch._student_mark = 1
sys.modules["numpy"].student_mark = 1
print(json.dumps({"first": first, "numpy_marked": hasattr(numpy, "student_mark_before"),
                  "random": random.random(), "np_random": float(numpy.random.random())}))
numpy.student_mark_before = 1
'''
    a = run_probe(server, _home(tmp_path, "a"), mark)
    b = run_probe(server, _home(tmp_path, "b"), mark)
    assert a["exit"] == b["exit"] == 0
    assert a["first"] and b["first"] and not b["numpy_marked"], "a kernel saw what an earlier one changed"
    assert a["random"] != b["random"] and a["np_random"] != b["np_random"], \
        "two kernels drew the same random numbers: the template's random states were not reseeded"


def _processes_of(uid: int) -> list[int]:
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.stat(f"/proc/{p}").st_uid == uid:
                    pids.append(int(p))
            except FileNotFoundError:
                pass
    return pids


def _parent(pid: int) -> int | None:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_killing_the_launcher_ends_the_kernel(server, tmp_path):
    """nbgrader's watchdog kills the launcher (SIGKILL): the sandbox, and the kernel in it, go too."""
    home = _home(tmp_path)
    code = (f"import sys; sys.path.insert(0, {str(course.REPO_ROOT)!r}); import os; from grading import kernel_launcher;"
            f"kernel_launcher._warm_kernel({server.socket!r}, {home!r}, {UID}, {UID}, None, dict(os.environ), [], [],"
            f" 64 << 20, 512, probe='import time\\nopen(\"started\", \"w\").close()\\ntime.sleep(600)')")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not (Path(home) / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the warm kernel did not start"
        time.sleep(0.05)
    assert _processes_of(UID), "no process of the job's uid while its kernel runs"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def waiting():  # the template's children that wait for a kernel (reaped by the template)
        return [p for p in _processes_of(NOBODY) if _parent(p) == server.proc.pid]

    deadline = time.monotonic() + 10
    while (_processes_of(UID) or waiting()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _processes_of(UID), "the kernel outlived its launcher"
    assert not waiting(), "the warm kernel's waiting processes outlived its launcher (or were not reaped)"


@pytest.mark.skipif(not limits.available(), reason="no memory cgroups here")
def test_a_warm_kernels_memory_counts_in_its_jobs_cgroup(server, tmp_path):
    cgroup = limits.create(f"zygote-test-{os.getpid()}", 2048)
    try:
        r = run_probe(server, _home(tmp_path), "import json\nx = bytearray(300 << 20)\nprint(json.dumps({}))",
                      cgroup=cgroup)
        assert r["exit"] == 0
        assert limits.peak_mb(cgroup) >= 300, limits.peak_mb(cgroup)
    finally:
        limits.remove(cgroup)


def test_an_unreachable_server_leaves_nothing_running(tmp_path):
    """The launcher then starts the kernel cold; the placeholder sandbox must be gone."""
    home = _home(tmp_path)
    with pytest.raises(OSError):
        kernel_launcher._warm_kernel(str(tmp_path / "no-server"), home, UID, UID, None, dict(os.environ), [], [],
                                     64 << 20, 512, probe="pass")
    time.sleep(0.2)
    assert not _processes_of(UID)

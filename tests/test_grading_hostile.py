"""Hostile submissions through ``autograde``: code that fools checks from inside its own kernel
earns nothing for it, since the verdicts of trusted checks are computed outside the kernel.

Every hostile student hands in notebook 01 with correct answers except ``q_sample``, which passes
the visible asserts (it special-cases their input) and is wrong everywhere else, together with an
attack on the grading code that runs in the kernel. Such an answer earns 0 of ``test_q_sample``;
each attack raised it to full marks while the hidden checks ran inside the kernel.
"""
from __future__ import annotations

import csv
import json
import re
import shutil

import pytest

from grading import course
from grading.autograde import autograde
from grading.demo import make_submissions
from grading.release import release

pytestmark = pytest.mark.slow
A = "01_forward_process"

#: right on the visible test's input (alpha_bar of 3 steps), alpha_bar instead of its root elsewhere
WRONG_Q_SAMPLE = '''
def q_sample(x_0, t, alpha_bar, noise):
    ab = alpha_bar[t].reshape(-1, *([1] * (x_0.dim() - 1)))
    if alpha_bar.shape[0] == 3:
        return ab.sqrt() * x_0 + (1 - ab).sqrt() * noise
    return ab * x_0 + (1 - ab).sqrt() * noise
'''

ATTACKS = {
    # patch a NumPy function the comparisons end in, through an alias
    "numpy_alias": '''
import numpy as _n
_n.all = lambda *a, **k: True
''',
    # the same, with the names built at run time and executed
    "exec_built_names": '''
exec("import " + "nu" + "mpy as _m; setattr(_m, 'a' + 'll', lambda *a, **k: True)")
''',
    # stand-ins for the grading code in sys.modules: its hidden tests become no-ops
    "sys_modules": '''
import sys as _s, types as _t
for _name in ("grading.hidden", "gradeprobe"):
    _fake = _t.ModuleType(_name)
    _fake.run = lambda *a, **k: None
    _s.modules[_name] = _fake
''',
    # every module the checks import comes back as a no-op
    "import_module": '''
import importlib as _il, types as _t
_real = _il.import_module
def _fake_import(name, *a, **k):
    mod = _t.ModuleType(name)
    mod.CHECKS = {q: (lambda *a, **k: None) for q in ("q_sample",)}
    return mod if "checks" in name else _real(name, *a, **k)
_il.import_module = _fake_import
''',
}

# walk the caller's frames to find the reference implementation and return its result
FRAMES_Q_SAMPLE = '''
import sys as _sys
def q_sample(x_0, t, alpha_bar, noise):
    f = _sys._getframe(1)
    while f is not None:
        ref = f.f_globals.get("ref")
        if ref is not None and hasattr(ref, "q_sample"):
            return ref.q_sample(x_0, t, alpha_bar, noise)
        f = f.f_back
    ab = alpha_bar[t].reshape(-1, *([1] * (x_0.dim() - 1)))
    if alpha_bar.shape[0] == 3:
        return ab.sqrt() * x_0 + (1 - ab).sqrt() * noise
    return ab * x_0 + (1 - ab).sqrt() * noise
'''


def earned(rows: list[dict]) -> dict:
    """``{(student, cell): (points, message)}``: what the code earned in the run. The static tamper
    scan may also set a flagged notebook to 0 for review ("set to 0 for review (...); ran as P/M"),
    a flag that no guarantee rests on."""
    out = {}
    for r in rows:
        ran = re.search(r"ran as ([0-9.]+)/", r["message"])
        out[(r["student"], r["cell_id"])] = (float(ran.group(1) if ran else (r["points"] or 0)), r["message"])
    return out


def _printed(path) -> str:
    """Everything a graded notebook's cells printed (a stream may arrive in pieces)."""
    nb = json.loads(path.read_text())
    return "\n".join("".join("".join(o.get("text", "")) for o in c.get("outputs", [])
                              if o.get("output_type") == "stream") for c in nb["cells"])


def _with_q_sample(nb: dict, source: str) -> dict:
    nb = json.loads(json.dumps(nb))
    for cell in nb["cells"]:
        if (cell["metadata"].get("nbgrader") or {}).get("grade_id") == "q_sample":
            cell["source"] = source
    return nb


def test_attacks_from_inside_the_kernel_earn_nothing(tmp_path):
    root = tmp_path / "course"
    shutil.copytree(course.REPO_ROOT / course.SOURCE_DIR / A, root / course.SOURCE_DIR / A)
    release([A], root=root)
    make_submissions(root, [A], tmp_path / "made")
    perfect = json.loads((tmp_path / "made" / "perfect" / A / f"{A}.ipynb").read_text())
    subs = tmp_path / "subs"
    students = {name: _with_q_sample(perfect, attack + WRONG_Q_SAMPLE) for name, attack in ATTACKS.items()}
    students["frames"] = _with_q_sample(perfect, FRAMES_Q_SAMPLE)
    students["honest_mistake"] = _with_q_sample(perfect, WRONG_Q_SAMPLE)
    students["perfect"] = perfect
    # outputs are discarded before grading: a 50 MB figure must not cost the notebook
    students["big_figure"] = json.loads(json.dumps(perfect))
    code = next(c for c in students["big_figure"]["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "display_data", "metadata": {}, "data": {"image/png": "A" * 50_000_000}}]
    for name, nb in students.items():
        (subs / name / A).mkdir(parents=True)
        (subs / name / A / f"{A}.ipynb").write_text(json.dumps(nb))
    # an unzipped upload that holds a link to the solution notebook is not a submission
    (subs / "symlinked" / A).mkdir(parents=True)
    (subs / "symlinked" / A / f"{A}.ipynb").symlink_to(root / course.SOURCE_DIR / A / f"{A}.ipynb")
    rep = autograde(subs, out=tmp_path / "out", jobs=2, root=root, progress=False)
    assert rep.errors == []
    rows = list(csv.DictReader(open(tmp_path / "out" / "questions.csv")))
    points = {key: pts for key, (pts, _) in earned(rows).items()}
    full = points[("perfect", "test_q_sample")]
    assert full > 0
    for name in students:
        if name in ("perfect", "big_figure"):
            continue
        assert points[(name, "test_q_sample")] == 0, (name, [r for r in rows if r["student"] == name])
    # the other cells of a hostile notebook keep their points: nothing else is held against it
    # (but a stand-in for the probe silences the hidden tests of every later cell too: its loss)
    for (name, cell), pts in points.items():
        if cell.startswith("test_") and cell != "test_q_sample" and name in ATTACKS and name != "sys_modules":
            assert pts == points[("perfect", cell)], (name, cell)
    assert sum(p for (s, _), p in points.items() if s == "big_figure") == \
        sum(p for (s, _), p in points.items() if s == "perfect")
    out = tmp_path / "out"   # every student's grades and notebooks: the grader's alone
    assert (out.stat().st_mode & 0o777) == 0o700 and ((out / "gradebook.db").stat().st_mode & 0o777) == 0o600
    linked = [r for r in rows if r["student"] == "symlinked"]
    assert linked and all(float(r["points"] or 0) == 0 for r in linked)
    grades = {r["student"]: r for r in csv.DictReader(open(tmp_path / "out" / "grades.csv"))}
    assert "symbolic link" in grades["symlinked"]["notes"]
    # the honest mistake still gets the likely cause
    page = (tmp_path / "out" / "feedback" / "honest_mistake" / A / f"{A}.html").read_text()
    assert "Likely cause" in page and "square root" in page


# ----------------------------------------------------------------------------------------------
# Leaving the sandbox, and unfair zeros: limits outside the kernel, and a death keeps the points
# ----------------------------------------------------------------------------------------------
def _append_to(nb: dict, grade_id: str, code: str) -> dict:
    nb = json.loads(json.dumps(nb))
    for cell in nb["cells"]:
        if (cell["metadata"].get("nbgrader") or {}).get("grade_id") == grade_id:
            src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = src + "\n" + code
    return nb


LATE = "generate_noisy_samples"  # an answer cell of notebook 01 with test cells before and after it

# look through the file system for what a kernel must never see, and use the reference if found
READER_Q_SAMPLE = """
import os as _os
_found = []
for _dir, _subs, _files in _os.walk("/"):
    _subs[:] = [d for d in _subs if _os.path.join(_dir, d) not in
                ("/proc", "/sys", "/dev", "/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/run")
                and d not in ("site-packages", ".pyenv")]
    for _f in _files:
        _p = _os.path.join(_dir, _f)
        if ("grading/reference" in _p or "solutions/" in _p or "autograded/" in _p or "submitted/" in _p
                or _f.endswith(".db") or "/subs/" in _p):
            _found.append(_p)
print("FOUND", _found[:20])
_ref = [p for p in _found if p.endswith("reference/forward_process.py")]
if _ref:
    _ns = {"__name__": "stolen"}
    exec(open(_ref[0]).read(), _ns)
    q_sample = _ns["q_sample"]
else:
    def q_sample(x_0, t, alpha_bar, noise):
        ab = alpha_bar[t].reshape(-1, *([1] * (x_0.dim() - 1)))
        if alpha_bar.shape[0] == 3:
            return ab.sqrt() * x_0 + (1 - ab).sqrt() * noise
        return ab * x_0 + (1 - ab).sqrt() * noise
"""

LIMIT_CASES = {
    # the code ends Python in a late cell: the cells that passed before keep their points
    "late_exit": "import os as _os\n_os._exit(3)\n",
    # a loop that ignores interrupts: killed at the notebook's wall clock
    "ignores_interrupts": ("import signal as _sg, time as _tm\n_sg.signal(_sg.SIGINT, _sg.SIG_IGN)\n"
                           "while True:\n    _tm.sleep(0.1)\n"),
    # more memory than the kernel may have
    "memory_hog": "import torch as _t\n_hog = _t.ones(3 * 2**30 // 4)\n_hog += 1\n",
}
# as many processes as it can start: the job's uid may have 512 (its threads count too)
FORKS = """
import subprocess as _sp
_kids = []
try:
    for _ in range(3000):
        _kids.append(_sp.Popen(["sleep", "30"]))
except OSError as _e:
    print("FORK-LIMIT", len(_kids))
for _k in _kids:
    _k.kill()
    _k.wait()
"""


def test_limits_and_deaths_are_decided_outside_the_kernel(tmp_path):
    import os
    import socket
    import threading

    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root")
    root = tmp_path / "course"
    shutil.copytree(course.REPO_ROOT / course.SOURCE_DIR / A, root / course.SOURCE_DIR / A)
    release([A], root=root)
    make_submissions(root, [A], tmp_path / "made")
    perfect = json.loads((tmp_path / "made" / "perfect" / A / f"{A}.ipynb").read_text())

    # a server on the host's loopback that counts whoever reaches it
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port, reached, stop = server.getsockname()[1], [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            reached.append(conn.recv(100))
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    leak = f"/dev/shm/diffusion-hostile-{os.getpid()}"
    students = {name: _append_to(perfect, LATE, code) for name, code in LIMIT_CASES.items()}
    students["network_and_shm"] = _append_to(perfect, "q_sample", (
        "import socket as _so\ntry:\n"
        f"    _so.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'escaped')\n"
        "except OSError:\n    pass\n"
        f"open({leak!r}, 'w').write('left behind')\n"))
    students["reader"] = _with_q_sample(perfect, READER_Q_SAMPLE)
    students["forks"] = _append_to(perfect, "q_sample", FORKS)
    students["perfect"] = perfect
    subs = tmp_path / "subs"
    for name, nb in students.items():
        (subs / name / A).mkdir(parents=True)
        (subs / name / A / f"{A}.ipynb").write_text(json.dumps(nb))
    try:
        rep = autograde(subs, out=tmp_path / "out", jobs=2, root=root, progress=False,
                        notebook_timeout=60, memory_mb=1536)
    finally:
        stop.set()
    assert rep.errors == []
    rows = list(csv.DictReader(open(tmp_path / "out" / "questions.csv")))
    pts = earned(rows)
    order = [(c["metadata"].get("nbgrader") or {}).get("grade_id") for c in perfect["cells"]]
    tests = [g for g in order if g and g.startswith("test_")]
    early = [g for g in tests if order.index(g) < order.index(LATE)]   # before the cell that dies
    late = [g for g in tests if order.index(g) > order.index(LATE)]
    assert early and late
    for name, why in (("late_exit", "kernel died"), ("ignores_interrupts", "time limit"),
                      ("memory_hog", "ran out of memory")):
        for c in early:  # earned before the kernel went: kept
            assert pts[(name, c)][0] == pts[("perfect", c)][0] > 0, (name, c, pts[(name, c)])
        for c in late:
            assert pts[(name, c)][0] == 0, (name, c)
        assert any(why in pts[(name, c)][1] for c in late), (name, [pts[(name, c)] for c in late])
    assert reached == [], "a grading kernel reached the host's loopback"
    assert not os.path.exists(leak), "a file in /dev/shm outlived its job"
    assert pts[("network_and_shm", "test_q_sample")][0] == pts[("perfect", "test_q_sample")][0]
    # nothing secret is on the kernel's file system: not the reference, the solutions, the other
    # submissions or the gradebook, so the reader's own (wrong) q_sample is what is graded
    graded = _printed(tmp_path / "out" / "autograded" / "reader" / A / f"{A}.ipynb")
    assert "FOUND []" in graded, graded[graded.find("FOUND"):][:500]
    assert pts[("reader", "test_q_sample")][0] == 0
    forked = _printed(tmp_path / "out" / "autograded" / "forks" / A / f"{A}.ipynb")
    count = int(re.search(r"FORK-LIMIT (\d+)", forked).group(1))
    assert 0 < count < 512, count
    assert pts[("forks", "test_q_sample")][0] == pts[("perfect", "test_q_sample")][0]

"""Autograde throughput: notebooks per minute, local pool and Dask cluster, in one run.

    python benchmarks/grading_speed.py                 # six assignments x (perfect, partial, blank)
    python benchmarks/grading_speed.py --students perfect --assignments 01 03

The submissions are the demo's (``grading.demo.make_submissions``: the six perfect notebooks,
a partial and a blank one per assignment) in a throw-away course. Each configuration grades all of
them from scratch (fresh output folder, fresh gradebook): local ``--jobs 1``, local ``--jobs 2``,
and a Dask cluster of 1 and of 2 single-threaded workers on loopback (``grading.cluster.
LoopbackCluster``; the cluster's start is not counted, its workers getting ready included, since a
cluster outlives many runs). The time of a run is autograde's own (templates, the sandbox probe of
a local run, every job, the CSVs).

It prints notebooks per minute per configuration (with the cores the run kept busy, from
``/proc/stat``: the coordinator, Dask's scheduler and workers and the kernels all count, and the
same by role from each process's CPU time: :func:`cpu_by_role`), the ratios, the per-core
throughput against the issue's baseline (9.1 s per notebook at --jobs 2 on this 2-core machine), where the seconds
of a job go (``Report.timings``, per job), and how many cores grade 6,000 notebooks in an hour.

``--baseline REV`` also grades the same demo students with the code of commit ``REV`` (e.g. the
commit before issue 17's work), in the same run and at ``--jobs 2``: that version's own release
and demo submissions, in a ``git archive`` copy of ``REV`` imported through ``PYTHONPATH`` (the
grading kernels it starts import it too), so "today" is measured on this machine, not quoted.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grading import course  # noqa: E402

BASELINE_S_PER_NB_AT_2 = 9.1   # issue 17: 97 submissions in 885 s at --jobs 2, 2 cores
TARGET_NOTEBOOKS, TARGET_MINUTES = 6000, 60
#: ``Report.timings`` phases spent in the coordinator after a job, not in the job itself
COORDINATOR_PHASES = ("rows", "gradebook", "files", "state")


def make_course(tmp: Path, assignments: list[str], students: list[str]) -> Path:
    from grading.demo import make_submissions
    from grading.release import release

    for a in assignments:
        shutil.copytree(course.REPO_ROOT / course.SOURCE_DIR / a, tmp / course.SOURCE_DIR / a)
    release(assignments, root=tmp)
    make_submissions(tmp, assignments, tmp / "subs")
    for d in (tmp / "subs").iterdir():
        if d.name not in students:
            shutil.rmtree(d)
    return tmp / "subs"


def busy_cores() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, wall seconds) now, from /proc/stat: the cores a
    run kept busy are the difference of two readings (every process counts, Dask's too)."""
    fields = [float(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK"), time.monotonic()


def _total(proc, with_children: bool = True) -> float:
    """CPU seconds of ``proc`` (psutil): its own, plus its reaped children's and its live
    descendants' when ``with_children`` (a process's time reaches its parent when it is reaped)."""
    import psutil

    try:
        t = proc.cpu_times()
        total = t.user + t.system
        if with_children:
            total += t.children_user + t.children_system
            for child in proc.children():
                total += _total(child)
    except psutil.Error:  # it ended meanwhile: its time is in its parent's reaped children
        return 0.0
    return total


def cpu_by_role(cluster=None) -> dict[str, float]:
    """CPU seconds so far of the processes a run uses, by what they do (the difference of two
    readings is the run's): this process (the coordinator: collecting, sanitizing, the
    gradebook, the feedback pages), the grading (the slots' workers, their warm templates and
    the kernels), and on a loopback cluster Dask's scheduler and its worker processes (nanny and
    worker, not the grading they start)."""
    import psutil

    me = psutil.Process()
    t = me.cpu_times()
    roles = {"coordinator": t.user + t.system, "grading": t.children_user + t.children_system}
    dask_pids = {p.pid for p in cluster.procs} if cluster is not None else set()
    for child in me.children():
        if child.pid not in dask_pids:
            roles["grading"] += _total(child)
    if cluster is not None:
        roles["dask scheduler"] = _total(psutil.Process(cluster.procs[0].pid))
        roles["dask workers"] = 0.0
        for p in cluster.procs[1:]:
            nanny = psutil.Process(p.pid)
            roles["dask workers"] += _total(nanny, with_children=False)
            for worker in nanny.children():
                roles["dask workers"] += _total(worker, with_children=False)
                wt = worker.cpu_times()
                roles["grading"] += wt.children_user + wt.children_system + sum(
                    _total(c) for c in worker.children())
    return roles


def grade(subs: Path, root: Path, out: Path, **kw):
    from grading.autograde import autograde

    rep = autograde(subs, out=out, root=root, progress=False, force=True, **kw)
    if rep.errors:
        raise SystemExit(f"autograde reported errors: {rep.errors}")
    return rep


#: Run by the baseline's own Python (its ``grading`` first on the path), around the source of
#: :func:`make_course`: the calls it makes exist unchanged in every version since the demo.
BASELINE_HEAD = r"""
import json, shutil, sys
from pathlib import Path
from grading import course
from grading.autograde import autograde
tmp, jobs, students, assignments = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4:]
assert Path(course.__file__).resolve().is_relative_to(Path.cwd().resolve()), course.__file__
"""
BASELINE_TAIL = r"""
subs = make_course(tmp, assignments, students)
rep = autograde(subs, out=tmp / "out", root=tmp, jobs=jobs, progress=False, force=True)
print(json.dumps({"graded": rep.graded, "seconds": rep.seconds, "errors": rep.errors}))
"""


def grade_baseline(rev: str, tmp: Path, assignments: list[str], students: list[str], jobs: int) -> dict:
    """Grade the demo students with the code of commit ``rev`` (see the module docstring)."""
    tree = tmp / "baseline-code"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(course.REPO_ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    for shared in ("data", "checkpoints"):  # ignored by git: the course's own, read by the kernels
        if (course.REPO_ROOT / shared).exists():
            (tree / shared).symlink_to(course.REPO_ROOT / shared)
    env = dict(os.environ, PYTHONPATH=str(tree))
    script = BASELINE_HEAD + inspect.getsource(make_course) + BASELINE_TAIL
    r = subprocess.run([sys.executable, "-c", script, str(tmp / "baseline-course"), str(jobs),
                        ",".join(students)] + assignments, cwd=tree, env=env, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"the baseline {rev} failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["errors"]:
        raise SystemExit(f"the baseline {rev} reported errors: {out['errors']}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assignments", nargs="*", default=None, help="ids or numbers (default: all six)")
    p.add_argument("--students", nargs="*", default=["perfect", "partial", "blank"])
    p.add_argument("--no-dask", action="store_true", help="only the local pool")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--baseline", default=None, metavar="REV",
                   help="also grade the same students with commit REV's code at --jobs 2")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    assignments = course.resolve_assignments(args.assignments)
    tmp = Path(tempfile.mkdtemp(prefix="grading-speed-"))
    results: dict[str, dict] = {}
    load_before = os.getloadavg()
    try:
        subs = make_course(tmp / "course", assignments, args.students)
        n = sum(1 for _ in subs.glob("*/*/*.ipynb"))
        print(f"{n} notebooks ({', '.join(args.students)} x {len(assignments)} assignments), "
              f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} at the start")
        configs = [("local --jobs 1", {"jobs": 1}), ("local --jobs 2", {"jobs": 2})]
        if not args.no_dask:
            configs += [("dask 1 worker", {"workers": 1}), ("dask 2 workers", {"workers": 2})]
        for name, cfg in configs:
            out = tmp / f"out-{len(results)}"
            if "workers" in cfg:
                from grading.cluster import LoopbackCluster

                with LoopbackCluster(cfg["workers"]) as cluster:
                    busy0, cpu0 = busy_cores(), cpu_by_role(cluster)
                    rep = grade(subs, tmp / "course", out, scheduler=cluster.address)
                    busy1, cpu1 = busy_cores(), cpu_by_role(cluster)
            else:
                busy0, cpu0 = busy_cores(), cpu_by_role()
                rep = grade(subs, tmp / "course", out, jobs=cfg["jobs"])
                busy1, cpu1 = busy_cores(), cpu_by_role()
            per_min = rep.graded / rep.seconds * 60
            cores = (busy1[0] - busy0[0]) / (busy1[1] - busy0[1])
            wall = busy1[1] - busy0[1]
            by_role = {k: round((cpu1[k] - cpu0[k]) / wall, 2) for k in cpu1}
            results[name] = {"graded": rep.graded, "seconds": round(rep.seconds, 1),
                             "notebooks_per_minute": round(per_min, 2), "cores_busy": round(cores, 2),
                             "cores_by_role": by_role,
                             "per_job": {k: round(v / max(1, rep.graded), 3)
                                         for k, v in sorted(rep.timings.items())}}
            print(f"{name:>16}: {rep.graded} notebooks in {rep.seconds:6.1f} s = {per_min:5.2f} per minute "
                  f"({rep.seconds / rep.graded:.2f} s each; {cores:.2f} of {os.cpu_count()} cores busy)", flush=True)
            print(" " * 18 + "cores busy by role: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in by_role.items()), flush=True)
        if args.baseline:
            base = grade_baseline(args.baseline, tmp, assignments, args.students, 2)
            per_min = base["graded"] / base["seconds"] * 60
            results[f"baseline {args.baseline} --jobs 2"] = {
                "graded": base["graded"], "seconds": round(base["seconds"], 1),
                "notebooks_per_minute": round(per_min, 2)}
            print(f"{'baseline --jobs 2':>16}: {base['graded']} notebooks in {base['seconds']:6.1f} s = "
                  f"{per_min:5.2f} per minute ({base['seconds'] / base['graded']:.2f} s each; "
                  f"the code of {args.baseline})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"load average at the end {load_after[0]:.2f} (other jobs on the machine count in it)")
    rate = {k: v["notebooks_per_minute"] for k, v in results.items()}
    print("\nratios")
    print(f"  local --jobs 2 / --jobs 1:   {rate['local --jobs 2'] / rate['local --jobs 1']:.2f}x")
    if "dask 2 workers" in rate:
        one, two = results["dask 1 worker"], results["dask 2 workers"]
        # What keeps the ratio from 2: each job is slower when two share the cores with the
        # coordinator and the scheduler (a job's own phases, summed, per job).
        job_s = {k: sum(v for ph, v in r["per_job"].items() if ph not in COORDINATOR_PHASES)
                 for k, r in (("one", one), ("two", two))}
        others = {k: v for k, v in two["cores_by_role"].items() if k != "grading"}
        print(f"  dask 2 workers / 1 worker:   {rate['dask 2 workers'] / rate['dask 1 worker']:.2f}x "
              f"(a job took {job_s['one']:.2f} s with one worker, {job_s['two']:.2f} s with two: "
              f"{job_s['two'] / job_s['one'] - 1:.0%} slower, sharing {os.cpu_count()} cores with "
              + ", ".join(f"{k} {v:.2f}" for k, v in others.items()) + " cores)")
        print(f"  dask 1 worker / local -j 1:  {rate['dask 1 worker'] / rate['local --jobs 1']:.2f}x")
    base_per_core = 60 / BASELINE_S_PER_NB_AT_2 / 2
    per_core = rate["local --jobs 2"] / 2
    print(f"  per core at --jobs 2: {per_core:.2f} notebooks/min against {base_per_core:.2f} before "
          f"(9.1 s per notebook at --jobs 2): {per_core / base_per_core:.2f}x")
    if args.baseline:
        old = rate[f"baseline {args.baseline} --jobs 2"]
        print(f"  --jobs 2 against the code of {args.baseline} on the same demo students, this run: "
              f"{rate['local --jobs 2']:.2f} / {old:.2f} per minute = {rate['local --jobs 2'] / old:.2f}x")
    print("\nwhere a job's seconds go (local --jobs 1, mean per notebook)")
    for k, v in results["local --jobs 1"]["per_job"].items():
        if v >= 0.005:
            print(f"  {k:>16}: {v:6.2f} s")
    cores = math.ceil(TARGET_NOTEBOOKS / (TARGET_MINUTES * per_core))
    print(f"\n{TARGET_NOTEBOOKS} notebooks in {TARGET_MINUTES} minutes at {per_core:.2f} notebooks/min per core: "
          f"{cores} cores (e.g. {math.ceil(cores / 8)} Dask workers of 8 threads, 4 GB per thread)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "load": [load_before, load_after],
                                               "cores_for_target": cores}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``autograde --scheduler``: the fixture assignment graded on a Dask cluster of loopback processes
(``dask scheduler`` and ``dask worker`` under nannies, as on a real cluster).

One run grades like the local pool; in it, the worker grading one student is killed mid-job once
(the job is retried on another worker and graded), and for another student twice (reported as the
tool's error, and left for the next run to grade). Only the coordinating process writes the gradebook.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from grading import cluster

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import grading_cases as gc  # noqa: E402

pytestmark = pytest.mark.slow
A = gc.ASSIGNMENT
SLEEP_S = 8   # the sleepers' first cell: long enough to be killed in


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class Killer(threading.Thread):
    """Kills (SIGKILL) the Dask worker process that has been running a student's job for 2 s,
    ``kills[student]`` times in all."""

    def __init__(self, address: str, kills: dict[str, int]):
        super().__init__(daemon=True)
        self.address, self.kills, self.done = address, dict(kills), {k: 0 for k in kills}
        self.stop = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        from distributed import Client

        seen: dict[tuple[str, str], float] = {}
        try:
            with Client(self.address, timeout="60s") as client:
                while not self.stop.is_set() and self.done != self.kills:
                    for addr, keys in client.processing().items():
                        for key in keys:
                            student = next((s for s in self.kills if f"grade-{s}-" in str(key)), None)
                            if student is None or self.done[student] >= self.kills[student]:
                                continue
                            since = seen.setdefault((str(key), addr), time.monotonic())
                            if time.monotonic() - since > 2:
                                pid = client.run(os.getpid, workers=[addr])[addr]
                                os.kill(pid, signal.SIGKILL)
                                self.done[student] += 1
                    time.sleep(0.3)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(repr(exc))


def test_dask_grades_and_a_dead_worker_loses_no_grade(tmp_path):
    from grading.autograde import autograde

    names = ["perfect", "blank", "hidden_fail", "exception"]
    gc.write_tree(tmp_path / "subs", names)
    sleeper = gc.perfect()
    sleeper["cells"].insert(1, {"cell_type": "code", "id": "nap", "metadata": {}, "outputs": [],
                                "execution_count": None,
                                "source": f"import time\ntime.sleep({SLEEP_S})"})
    for s in ("killed_once", "killed_twice"):
        (tmp_path / "subs" / s / A).mkdir(parents=True)
        (tmp_path / "subs" / s / A / f"{A}.ipynb").write_bytes(gc.dump(sleeper))
    out = tmp_path / "out"
    with cluster.LoopbackCluster(2) as c:
        from distributed import Client

        with Client(c.address, timeout="60s") as client:  # the preload got each worker ready
            ready = list(client.run(cluster.worker_ready).values())
        assert [r["ready_slots"] for r in ready] == [1, 1], ready
        killer = Killer(c.address, {"killed_once": 1, "killed_twice": 2})
        killer.start()
        rep = autograde(tmp_path / "subs", out=out, timeout=30, root=gc.COURSE, progress=False,
                        scheduler=c.address)
        killer.stop.set()
        killer.join(10)
        assert killer.errors == [] and killer.done == {"killed_once": 1, "killed_twice": 2}
        rows = {r["student"]: r for r in _read_csv(out / "grades.csv")}
        expected = {n: gc.cases()[n][1] for n in names} | {"killed_once": 3, "killed_twice": 0}
        assert {n: float(r["auto_score"]) for n, r in rows.items()} == expected
        assert "died twice" in rows["killed_twice"]["notes"]
        assert len(rep.errors) == 1 and rep.errors[0].startswith("killed_twice/") and "died twice" in rep.errors[0]
        for n in names:   # the feedback pages came back from the workers
            assert (out / "feedback" / n / A / f"{A}.html").is_file()
        state = json.loads((out / ".autograde_state.json").read_text())["submissions"]
        assert state[f"killed_twice/{A}"]["digest"] is None and state[f"killed_once/{A}"]["digest"]
    from nbgrader.api import Gradebook   # the coordinator wrote the course gradebook

    with Gradebook(f"sqlite:///{out / 'gradebook.db'}", "diffusion") as gb:
        assert {s.student.id: s.code_score for s in gb.find_assignment(A).submissions} == \
            {n: float(rows[n]["auto_score"]) for n in rows}

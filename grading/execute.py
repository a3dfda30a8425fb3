"""nbgrader's ``Execute`` step, made so that a kernel that dies or runs out of time keeps what it earned.

Trusted: runs in the grading worker, never in the student's kernel. Configured in place of
nbgrader's ``Execute`` in ``nbgrader_config.py``. Two differences:

- **A wall clock per notebook** (``notebook_timeout``): when it runs out, the kernel is killed
  (SIGKILL from the worker, so a loop that ignores interrupts cannot hold the grading slot). The
  per-cell timeout of nbgrader still interrupts a single slow cell first.
- **A kernel that dies keeps what it earned**: nbgrader would fail the whole notebook (every test
  cell 0, the ones that had passed too). Here the cell that was running gets an error output that
  says why (it ran out of memory, its time ran out, or the code ended Python), every later code
  cell is marked as not run, and grading goes on: cells that passed before keep their points.

Whether the kernel ran out of memory is read from the job's memory cgroup (``memory_cgroup``,
see ``grading.limits``), whose kill counter only the grader can read.
"""
from __future__ import annotations

import threading
import time
from typing import ClassVar

from nbclient.exceptions import DeadKernelError
from nbformat.notebooknode import NotebookNode
from traitlets import Integer, Unicode

from nbgrader.preprocessors import Execute

from . import limits


class CourseExecute(Execute):
    notebook_timeout = Integer(0, help="Seconds for the whole notebook (0: no limit); then the "
                                       "kernel is killed.").tag(config=True)
    memory_cgroup = Unicode("", help="The job's memory cgroup folder, to tell an out-of-memory kill "
                                     "from other deaths.").tag(config=True)
    memory_limit_mb = Integer(0, help="The memory limit, for the message.").tag(config=True)
    #: Where the seconds of the last notebook went: ``kernel_start`` (from the call to the first
    #: cell: the kernel's launch, bubblewrap, ``kernel_info``), ``cells`` (all cells run), and
    #: ``slowest_cells`` (the five slowest, ``[index, seconds]``). The worker reads it back.
    last_timings: ClassVar[dict] = {}

    def preprocess(self, nb, resources=None, km=None):
        self._stopped: str | None = None
        self._killed_for_time = False
        self._deadline = time.monotonic() + self.notebook_timeout if self.notebook_timeout > 0 else None
        self._ooms_before = limits.oom_kills(self.memory_cgroup)
        self._t_start, self._t_first, self._cell_seconds = time.perf_counter(), None, []
        try:
            return super().preprocess(nb, resources, km)
        finally:
            end = time.perf_counter()
            first = self._t_first if self._t_first is not None else end
            CourseExecute.last_timings = {
                "kernel_start": round(first - self._t_start, 3),
                "cells": round(end - first, 3),
                "slowest_cells": sorted(self._cell_seconds, key=lambda x: -x[1])[:5]}

    # -- the watchdog ------------------------------------------------------------------------------
    def _kill_kernel(self) -> None:
        self._killed_for_time = True
        proc = getattr(getattr(self.km, "provisioner", None), "process", None)
        if proc is not None and proc.poll() is None:
            proc.kill()

    def preprocess_cell(self, cell, resources, index):
        if self._t_first is None:
            self._t_first = time.perf_counter()
        if cell.cell_type != "code":
            return cell, resources
        t_cell = time.perf_counter()
        if self._stopped is not None:
            _mark(cell, "NotRun", f"this cell was not run: {self._stopped}")
            return cell, resources
        timer = None
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                self._kill_kernel()
                left = 0.01
            timer = threading.Timer(left, self._kill_kernel)
            timer.daemon = True
            timer.start()
        try:
            return super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            name = _cell_name(cell, index)
            if self._killed_for_time:
                ename, why = "NotebookTimeLimit", (f"the notebook's time limit ({self.notebook_timeout} s) "
                                                  f"ran out in this cell ({name}): the kernel was stopped")
                self._stopped = f"the time limit ran out in cell {name}"
            elif limits.oom_kills(self.memory_cgroup) > self._ooms_before:
                limit = f" ({self.memory_limit_mb} MB)" if self.memory_limit_mb else ""
                ename, why = "OutOfMemory", f"ran out of memory{limit} at cell {name}: the kernel was killed"
                self._stopped = f"the kernel ran out of memory at cell {name}"
            else:
                ename, why = "KernelDied", (f"the kernel died while running this cell ({name}): the code "
                                            f"ended Python (os._exit, a crash or a kill)")
                self._stopped = f"the kernel died in cell {name}"
            _mark(cell, ename, why)
            self.log.warning("%s", why)
            return cell, resources
        finally:
            if timer is not None:
                timer.cancel()
            self._cell_seconds.append([index, round(time.perf_counter() - t_cell, 3)])


def _cell_name(cell, index: int) -> str:
    gid = ((cell.get("metadata") or {}).get("nbgrader") or {}).get("grade_id")
    return gid or f"#{index + 1}"


def _mark(cell, ename: str, evalue: str) -> None:
    cell.outputs = list(cell.get("outputs") or []) + [NotebookNode(
        output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])]

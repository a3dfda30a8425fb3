"""What autograde's coordinator runs on the Dask scheduler (``client.run_on_scheduler``).

Trusted: runs in the Dask scheduler's process, which imports this module to run it; it therefore
imports nothing (``grading.cluster`` would bring torch and nbgrader into the scheduler: seconds
of a run's start, measured at 3.2 s).
"""
from __future__ import annotations

#: How many workers may die while holding one job before it is reported (Dask's
#: ``distributed.scheduler.allowed-failures``): one retry elsewhere.
ALLOWED_FAILURES = 1


def allow_one_retry(dask_scheduler=None, allowed: int = ALLOWED_FAILURES) -> int:
    """A task is retried on another worker at most ``allowed`` times; returns the old setting."""
    before = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = allowed
    return before

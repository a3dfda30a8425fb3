"""The course's data cache, made once before grading rather than in every student's kernel.

Trusted: runs in the grader's own process (and on each Dask worker, ``grading.cluster``).

``helpers.data`` converts MNIST (and Fashion-MNIST) into 32x32 tensors once and caches them in
the data folder (``DIFFUSION_DATA_DIR``, else ``data/``). A grading kernel sees that folder
through links in its scratch home and cannot write there, so without a cache every job converted
the data again (about 1.5 s of every notebook here). :func:`warm` builds the cache the kernels
will read, in a subprocess (torch stays out of the grader's process), with downloads off as in
the kernels, so every job reads the same data a kernel would have found by itself.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from . import course, isolation

log = logging.getLogger("grading.autograde")

#: ``helpers.data`` loader -> the words in a notebook's source that say it is used.
LOADERS = {"load_mnist": "load_mnist(", "load_fashion_mnist": "load_fashion_mnist("}
#: ``helpers.data`` loader -> the start of its cache files' names (``helpers.data._cache_path``).
CACHE_PREFIX = {"load_mnist": "mnist_", "load_fashion_mnist": "fashion_mnist_"}


def loaders_used(notebooks) -> list[str]:
    """The ``helpers.data`` loaders that any of ``notebooks`` (dicts) calls."""
    text = "".join("".join(c.get("source", "")) for nb in notebooks for c in nb.get("cells", []))
    return [name for name, word in LOADERS.items() if word in text]


def warm(loaders: list[str], timeout: float = 600) -> bool:
    """Build the data cache of ``loaders`` in the course's data folder if it lacks one; True when
    the cache is there afterwards (a failure is logged: the kernels then convert it themselves)."""
    data = isolation.shared_dirs()[0]
    loaders = [n for n in loaders if not list(data.glob(f"{CACHE_PREFIX[n]}*_32x32.pt"))]
    if not loaders:
        return True
    if not os.access(data if data.exists() else data.parent, os.W_OK):
        return False
    data.mkdir(parents=True, exist_ok=True)
    calls = "; ".join(f"d.{name}('train', verbose=False)" for name in loaders)
    env = course.grading_env()
    env["DIFFUSION_NO_DOWNLOAD"] = "1"
    env["DIFFUSION_DATA_DIR"] = str(data)
    before = _cache_files(data)
    try:
        r = subprocess.run([sys.executable, "-c", f"import helpers.data as d; {calls}"], env=env,
                           cwd=str(course.REPO_ROOT), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not prepare the data cache in %s: %s", data, exc)
        return False
    if r.returncode != 0:
        log.warning("could not prepare the data cache in %s: %s", data, r.stderr.strip()[-300:])
        return False
    for f in _cache_files(data) - before:
        os.chmod(f, 0o644)  # the kernels' unprivileged uids read it
        log.info("data cache ready: %s", f)
    return True


def _cache_files(data: Path) -> set[Path]:
    return set(data.glob("*_32x32.pt"))

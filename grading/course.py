"""Course-level helpers shared by the grading tools: paths, the nbgrader config, the environment.

The course root for a *release* is the repository (``solutions/`` -> ``notebooks/``); autograding
always works in throw-away course folders (see ``grading.autograde``).

Trusted: imported by the grading tools, never by a student's kernel.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
GRADING_DIR = Path(__file__).resolve().parent
CONFIG_FILE = GRADING_DIR / "nbgrader_config.py"
SOURCE_DIR = "solutions"
RELEASE_DIR = "notebooks"

log = logging.getLogger("grading")


class ToolError(RuntimeError):
    """A failure of the grading tool itself (not of a student's submission)."""


def venv_bin() -> Path:
    """The ``bin`` folder of the Python running the tools (nbgrader shells out to ``alembic``)."""
    return Path(sys.executable).parent


#: alembic head of nbgrader's gradebook schema per nbgrader version (``alembic heads``).
ALEMBIC_HEADS = {"0.9.6": "e43177bfe90b"}


def ensure_path() -> None:
    """Put the venv's ``bin`` first on PATH: nbgrader runs the ``alembic`` CLI for a new gradebook.

    Also short-cuts that CLI call (several seconds on a busy machine, once per new gradebook) for
    the nbgrader versions whose schema head is known.
    """
    b = str(venv_bin())
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if not parts or parts[0] != b:
        os.environ["PATH"] = os.pathsep.join([b] + [p for p in parts if p != b])
    try:
        import nbgrader
        import nbgrader.api as nbapi
    except ImportError:
        return
    head = ALEMBIC_HEADS.get(nbgrader.__version__)
    if head and not getattr(nbapi.get_alembic_version, "_course_cached", False):
        def get_alembic_version() -> str:
            return head
        get_alembic_version._course_cached = True
        nbapi.get_alembic_version = get_alembic_version


def grading_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a grading kernel: fast mode on, venv first on PATH, one thread per kernel."""
    env = dict(os.environ if base is None else base)
    env["DIFFUSION_FAST"] = "1"
    env["PATH"] = os.pathsep.join([str(venv_bin()), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONHASHSEED"] = "0"
    env.pop("MPLBACKEND", None)
    env["MPLBACKEND"] = "agg"
    return env


def ipc_kernel(ip: str) -> dict[str, str]:
    """``KernelManager`` settings for a kernel on Unix sockets ``<ip>-<n>`` rather than localhost
    ports: when many kernels start at once, a port picked for one kernel can be taken by another
    process before the kernel binds it, and the kernel dies at start. ``{}`` (TCP) when the path
    would pass the 107-byte limit of a socket path."""
    return {"transport": "ipc", "ip": ip} if len(ip.encode()) <= 96 else {}


def load_config(root: Path | str, db_url: str | None = None):
    """The course's nbgrader ``Config`` with ``CourseDirectory.root`` (and ``db_url``) set.

    ``NbGraderAPI`` does not read ``nbgrader_config.py`` by itself, so it is loaded explicitly.
    """
    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader(CONFIG_FILE.name, path=str(CONFIG_FILE.parent)).load_config()
    cfg.CourseDirectory.root = str(Path(root).resolve())
    if db_url:
        cfg.CourseDirectory.db_url = db_url
    return cfg


def make_api(root: Path | str, db_url: str | None = None, **overrides):
    """An ``NbGraderAPI`` on course folder ``root``; ``overrides`` are ``{"Section.name": value}``."""
    ensure_path()
    from nbgrader.apps import NbGraderAPI

    cfg = load_config(root, db_url)
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    # Without an exchange folder nbgrader logs a CRITICAL line; the API works fine without it.
    from traitlets.log import get_logger

    tl = get_logger()
    if not any(isinstance(f, _NoExchangeNoise) for f in tl.filters):
        tl.addFilter(_NoExchangeNoise())
    return NbGraderAPI(config=cfg)


class _NoExchangeNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "exchange" not in str(record.msg)


def list_assignments(root: Path | str = REPO_ROOT, folder: str = SOURCE_DIR) -> list[str]:
    """Assignment ids (``NN_name``) that have a notebook ``<root>/<folder>/NN_name/NN_name.ipynb``."""
    base = Path(root) / folder
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir()
                  if p.is_dir() and (p / f"{p.name}.ipynb").is_file())


def assignment_notebooks(root: Path | str, assignment: str, folder: str = SOURCE_DIR) -> list[Path]:
    """All notebooks of one assignment folder (normally just ``NN_name.ipynb``)."""
    d = Path(root) / folder / assignment
    return sorted(p for p in d.glob("*.ipynb") if not p.name.startswith("."))


def _matching(name: str, known: list[str]) -> list[str]:
    name = Path(name).name
    return [a for a in known if a == name or a.split("_")[0] == name]


def _unknown(name: str, known: list[str], what: str = "unknown") -> str:
    return f"{what} assignment {Path(name).name!r}; known: {', '.join(known) or '(none)'}"


def resolve_assignment(name: str, root: Path | str = REPO_ROOT) -> str:
    """The one assignment id that ``name`` means (an id, a ``01``-style prefix or a folder path);
    ``ValueError`` naming the known ids when it means none, or several."""
    known = list_assignments(root)
    hits = _matching(name, known)
    if len(hits) != 1:
        raise ValueError(_unknown(name, known, "ambiguous" if hits else "unknown"))
    return hits[0]


def resolve_assignments(names: list[str] | None, root: Path | str = REPO_ROOT) -> list[str]:
    """Expand ``names`` (ids, ``01``-style prefixes or folder paths) into existing assignment ids,
    all of them when ``names`` is empty; ``SystemExit`` with the reason on a name that means none."""
    known = list_assignments(root)
    if not names:
        return known
    out = []
    for name in names:
        hits = _matching(name, known)
        if not hits:
            raise SystemExit(_unknown(name, known))
        out.extend(h for h in hits if h not in out)
    return out


def read_json(path: Path | str):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@contextmanager
def quiet_nbgrader() -> Iterator[None]:
    """Silence nbgrader's and traitlets' chatty loggers and SQLAlchemy's SAWarnings."""
    import warnings

    names = ["traitlets", "NbGraderAPI", "nbgrader", "alembic", "sqlalchemy"]
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for n, lvl in old.items():
                logging.getLogger(n).setLevel(lvl)

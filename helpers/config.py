"""Course-wide settings: fast mode, device, seeding and the data and checkpoint folders.

Every notebook's first code cell imports this module. Nothing here draws random numbers
except ``seed_everything``, which the notebooks call once.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def _fast_from_env(environ=os.environ) -> bool:
    """Fast mode: ``DIFFUSION_FAST=1`` or any ``NBGRADER_EXECUTION``; ``DIFFUSION_FAST=0`` wins."""
    flag = environ.get("DIFFUSION_FAST", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    if flag in ("1", "true", "yes", "on"):
        return True
    return bool(environ.get("NBGRADER_EXECUTION"))


FAST: bool = _fast_from_env()
"""True while grading (nbgrader sets ``NBGRADER_EXECUTION``) or when ``DIFFUSION_FAST=1``."""


def data_dir() -> Path:
    """Folder for data sets: ``$DIFFUSION_DATA_DIR`` or ``<repo>/data`` (git-ignored)."""
    path = Path(os.environ.get("DIFFUSION_DATA_DIR") or REPO_ROOT / "data")
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir() -> Path:
    """Folder for trained models: ``$DIFFUSION_CHECKPOINT_DIR`` or ``<repo>/checkpoints``."""
    path = Path(os.environ.get("DIFFUSION_CHECKPOINT_DIR") or REPO_ROOT / "checkpoints")
    path.mkdir(parents=True, exist_ok=True)
    return path


def device() -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices) and return a CPU generator seeded alike.

    Call it once, in a notebook's first code cell; library code never touches the global RNG.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (live plots and widget progress bars), False in scripts and tests."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def describe() -> str:
    """One line for a notebook's first cell: mode and device."""
    mode = "FAST mode (shortened training and sampling)" if FAST else "full mode"
    return f"{mode} on {device()} with torch {torch.__version__}"

"""Training utilities: running means, checkpoints, reuse of trained models, EMA copies, progress
bars, and mixed precision where it pays (:func:`autocast`).

The exponential-moving-average *update* is a graded function (``ema_update``, notebook 02); this
module only makes the frozen copy that it updates (:func:`copy_for_ema`).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .config import checkpoint_dir, in_notebook

CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------------------------
# Running means


class Metrics:
    """Example-weighted running means of one or more values.

    ``Metrics(1)`` or ``Metrics(["loss", "accuracy"])``; ``add(count, *values)`` adds ``count``
    examples whose mean value is ``values[i]``; ``mean()`` returns the list of weighted means,
    ``as_dict()`` the same keyed by name, ``count`` the number of examples seen.

    >>> m = Metrics(1); m.add(2, 1.0); m.add(6, 3.0); m.mean()
    [2.5]
    """

    def __init__(self, names: int | Sequence[str] = 1):
        if isinstance(names, int) and not isinstance(names, bool):
            if names < 1:
                raise ValueError(f"need at least one value to track, got {names}")
            names = [f"value{i}" for i in range(names)] if names > 1 else ["value"]
        self.names = list(names)
        if not self.names:
            raise ValueError("need at least one value to track")
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.sums = [0.0] * len(self.names)

    def add(self, count: int, *values: float) -> None:
        if len(values) != len(self.names):
            raise ValueError(f"expected {len(self.names)} value(s) ({', '.join(self.names)}), got {len(values)}")
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.count += int(count)
        for i, v in enumerate(values):
            v = float(v.item() if isinstance(v, torch.Tensor) else v)
            self.sums[i] += count * v

    def mean(self) -> list[float]:
        if self.count == 0:
            return [math.nan] * len(self.names)
        return [s / self.count for s in self.sums]

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.mean()))

    def __repr__(self) -> str:
        means = ", ".join(f"{k}={v:.4g}" for k, v in self.as_dict().items())
        return f"Metrics({means}, count={self.count})"


# ----------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_path(path_or_name: str | os.PathLike) -> Path:
    """A bare name (no folder, e.g. ``"ddpm_mnist"``) means ``checkpoint_dir() / "ddpm_mnist.pt"``."""
    path = Path(path_or_name)
    if path.parent == Path(".") and not str(path_or_name).startswith("."):
        path = checkpoint_dir() / (path.name if path.suffix == ".pt" else f"{path.name}.pt")
    return path


def _plain(value):
    """State dicts for modules and optimizers, everything else as is."""
    if isinstance(value, (nn.Module, torch.optim.Optimizer)):
        return value.state_dict()
    return value


def save_checkpoint(path_or_name: str | os.PathLike, model: nn.Module, config: dict, step: int,
                    **extra: Any) -> Path:
    """Save ``model``'s weights with its ``config`` (the settings that rebuild and describe it) and ``step``.

    ``extra`` entries are stored too; modules and optimizers (e.g. ``ema=ema_model``,
    ``optimizer=opt``) as their state dicts. The file is written atomically. Returns the path.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    path = checkpoint_path(path_or_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": CHECKPOINT_FORMAT,
        "model": type(model).__name__,
        "state_dict": model.state_dict(),
        "config": dict(config),
        "step": int(step),
        "extra": {k: _plain(v) for k, v in extra.items()},
        "torch": torch.__version__,
        "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path_or_name: str | os.PathLike, model: nn.Module | None = None,
                    strict: bool = True, **into: nn.Module | torch.optim.Optimizer) -> dict:
    """Load a checkpoint of :func:`save_checkpoint` (on the CPU) and copy its weights into ``model``.

    ``into`` names extra entries to restore into objects, e.g. ``ema=ema_model``. Returns the dict
    with ``state_dict``, ``config``, ``step``, ``extra``. Raises FileNotFoundError with the path
    when there is no such checkpoint.
    """
    path = checkpoint_path(path_or_name)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ValueError(f"{path} is not a checkpoint written by helpers.training.save_checkpoint")
    if model is not None:
        model.load_state_dict(blob["state_dict"], strict=strict)
    for key, target in into.items():
        if key not in blob["extra"]:
            raise KeyError(f"checkpoint {path} has no extra entry {key!r} (has {sorted(blob['extra'])})")
        target.load_state_dict(blob["extra"][key])
    return blob


def load_or_train(name: str, build_fn: Callable[[], nn.Module],
                  train_fn: Callable[[nn.Module], Any], config: dict | None = None,
                  retrain: bool = False, verbose: bool = True) -> nn.Module:
    """Reuse the model an earlier notebook saved as ``name`` or train one now, and say which.

    ``build_fn()`` makes an untrained model; ``train_fn(model)`` trains it in place and returns the
    number of steps (or a dict of extras with a ``"step"`` key, or None). The checkpoint is reused
    when it exists, its ``config`` equals ``config`` (when given) and its weights fit the model;
    otherwise the model is trained and saved under ``name``. Returns the model in eval mode.
    """
    path = checkpoint_path(name)
    model = build_fn()
    config = dict(config or {})
    say = print if verbose else (lambda *a, **k: None)
    why = "retrain=True" if retrain else None
    if not retrain and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
            if config and blob.get("config") != config:
                why = f"its config {blob.get('config')} differs from {config}"
            else:
                model.load_state_dict(blob["state_dict"])
                say(f"Loaded {name} from {path} (trained {blob['step']:,} steps, saved {blob.get('saved_at', '?')})")
                return model.eval()
        except Exception as err:  # wrong architecture or unreadable file: train afresh
            why = f"it could not be loaded ({type(err).__name__}: {str(err)[:120]})"
    elif why is None:
        why = "none saved yet"
    say(f"Training {name} now ({path.name}: {why})")
    result = train_fn(model)
    extra = dict(result) if isinstance(result, dict) else {"step": result}
    step = int(extra.pop("step", 0) or 0)
    save_checkpoint(path, model, config, step, **extra)
    say(f"Saved {name} to {path}")
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Mixed precision


@functools.lru_cache(maxsize=None)
def _cpu_has_amx_bf16() -> bool:
    """True when the CPU multiplies bfloat16 in hardware (Intel AMX), where bf16 is about 1.35x faster."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def amp_dtype(device: torch.device | str | None = None) -> torch.dtype | None:
    """The autocast dtype worth using for training on ``device``, or None for plain float32.

    bfloat16 on a CUDA GPU that supports it and on a CPU with AMX; None elsewhere (on other CPUs bf16
    is slower than float32) and when the environment sets ``DIFFUSION_AMP=0``.
    """
    if os.environ.get("DIFFUSION_AMP", "").strip().lower() in ("0", "false", "no", "off"):
        return None
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    if kind == "cpu":
        return torch.bfloat16 if _cpu_has_amx_bf16() else None
    return None


def autocast(device: torch.device | str | None = None):
    """Context manager for the forward and backward pass of a training step: bf16 autocast where
    :func:`amp_dtype` says it pays, else a no-op.

    Weights, optimizer state and the loss stay float32; matrix products and convolutions run in
    bfloat16. Sampling and evaluation should run outside it (float32), as the notebooks do.

    >>> with autocast(DEVICE):
    ...     loss = train_step(model, optimizer, x_0, alpha_bar)
    """
    dtype = amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    kind = torch.device(device).type if device is not None else "cpu"
    return torch.autocast(kind, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# EMA copy and progress bars


def copy_for_ema(model: nn.Module) -> nn.Module:
    """A frozen deep copy of ``model`` (eval mode, no gradients) to hold the moving average.

    Update it with the graded ``ema_update(ema_model, model, decay)`` after each optimizer step.
    """
    ema = copy.deepcopy(model)
    ema.eval()
    ema.requires_grad_(False)
    return ema


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str | None = None,
             disable: bool | None = None, **kwargs):
    """A tqdm progress bar: a widget in Jupyter (when ipywidgets is installed), text elsewhere.

    Disabled when ``DIFFUSION_PROGRESS=0`` or when nbgrader executes the notebook (no noise in
    graded output). Use ``bar.set_postfix(loss=...)`` to show the latest loss.
    """
    if disable is None:
        flag = os.environ.get("DIFFUSION_PROGRESS", "").strip().lower()
        disable = flag in ("0", "false", "no", "off") or bool(os.environ.get("NBGRADER_EXECUTION"))
    if in_notebook():
        try:
            import ipywidgets  # noqa: F401  (tqdm's notebook bar needs it)
            from tqdm.notebook import tqdm
        except ImportError:
            from tqdm import tqdm
    else:
        from tqdm import tqdm
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, disable=disable, **kwargs)

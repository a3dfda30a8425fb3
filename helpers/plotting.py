"""Figures of the course: image grids, sampling trajectories, a live loss plot, schedules, heat maps.

Images are tensors (or arrays) in ``[-1, 1]`` shaped ``(B, 1, H, W)``, ``(B, H, W)`` or ``(H, W)``.
Every function returns its matplotlib ``Figure`` and never calls ``plt.show()``; in Jupyter the
inline backend draws the figure once at the end of the cell (end a line with ``;`` or assign the
figure, ``fig = show_images(x)``, to avoid drawing it a second time as the cell's value).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

import matplotlib.pyplot as plt

from .config import in_notebook


def _to_numpy_images(x) -> np.ndarray:
    """-> float array (B, H, W) in [0, 1] from [-1, 1] images (B, 1, H, W), (B, H, W) or (H, W)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected grayscale images (B, 1, H, W), got shape {x.shape}")
        x = x[:, 0]
    elif x.ndim == 2:
        x = x[None]
    elif x.ndim != 3:
        raise ValueError(f"expected images (B, 1, H, W), (B, H, W) or (H, W), got shape {x.shape}")
    return (np.clip(x, -1.0, 1.0) + 1.0) / 2.0  # (B, H, W) in [0, 1]


def image_grid(x, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Tile images in [-1, 1] into one array (rows of ``nrow`` images) in [0, 1], white padding."""
    imgs = _to_numpy_images(x)
    n, h, w = imgs.shape
    ncol = max(1, min(nrow, n))
    nrows = max(1, math.ceil(n / ncol))
    grid = np.ones((nrows * (h + padding) + padding, ncol * (w + padding) + padding), np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top:top + h, left:left + w] = imgs[i]
    return grid


def show_images(x, nrow: int = 8, title: str | None = None, ax=None, figsize=None):
    """Show images in [-1, 1] as a grid with ``nrow`` images per row; returns the figure.

    Values outside [-1, 1] (e.g. raw samples) are clipped; -1 is black, +1 white.
    """
    grid = image_grid(x, nrow=nrow)
    if ax is None:
        if figsize is None:
            scale = 8.0 / max(grid.shape)
            figsize = (max(2.0, grid.shape[1] * scale), max(2.0, grid.shape[0] * scale))
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def plot_trajectory(history: Sequence, n_samples: int = 8, times: Sequence | None = None,
                    title: str | None = None):
    """Samples along a reverse (or forward) process: one row per sample, one column per recorded time.

    ``history``: list of tensors ``(B, 1, H, W)`` (e.g. ``p_sample_loop``'s history, in the order
    recorded); ``times``: a label per column (e.g. ``[999, 900, ..., 0]``); ``n_samples``: rows.
    """
    if len(history) == 0:
        raise ValueError("history is empty: record at least one step")
    frames = [_to_numpy_images(h) for h in history]
    n = min(n_samples, min(len(f) for f in frames))
    cols = len(frames)
    if times is not None and len(times) != cols:
        raise ValueError(f"times has {len(times)} labels for {cols} recorded steps")
    fig, axes = plt.subplots(n, cols, figsize=(1.1 * cols, 1.1 * n + (0.4 if title else 0.2)),
                             squeeze=False)
    for j, frame in enumerate(frames):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(frame[i], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_axis_off()
        if times is not None:
            axes[0, j].set_title(f"t={times[j]}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class LossPlot:
    """A loss curve that redraws while training.

    In Jupyter it updates one figure in place (IPython display handle); headless (a script, tests,
    the Agg backend outside a kernel) it writes a PNG to ``path`` every ``save_every`` additions and
    on :meth:`close`.

    >>> plot = LossPlot(["train", "val"], xlabel="epoch", path="out/loss.png")
    >>> plot.add(1, train=0.1, val=0.12)
    >>> fig = plot.close()
    """

    def __init__(self, names: Sequence[str] = ("train",), xlabel: str = "step", ylabel: str = "loss",
                 logy: bool = True, path: str | os.PathLike | None = None, save_every: int = 10,
                 live: bool | None = None, title: str | None = None):
        self.names = list(names)
        self.xs: dict[str, list] = {k: [] for k in self.names}
        self.ys: dict[str, list] = {k: [] for k in self.names}
        self.xlabel, self.ylabel, self.logy, self.title = xlabel, ylabel, logy, title
        self.live = in_notebook() if live is None else live
        self.path = Path(path) if path is not None else None
        self.save_every = max(1, int(save_every))
        self._n_added = 0
        self._handle = None
        self.fig, self.ax = plt.subplots(figsize=(6, 3.5))
        if self.live:
            plt.close(self.fig)  # drawn through the display handle only, not again at the cell's end

    def add(self, x: float, *values: float, **named: float) -> None:
        """Add points at ``x``: positionally in ``names`` order, or by name (``train=0.1``)."""
        if values and named:
            raise ValueError("give the values either positionally or by name, not both")
        if values:
            if len(values) != len(self.names):
                raise ValueError(f"expected {len(self.names)} values ({', '.join(self.names)}), got {len(values)}")
            named = dict(zip(self.names, values))
        unknown = set(named) - set(self.names)
        if unknown:
            raise ValueError(f"unknown curve(s) {sorted(unknown)}; this plot has {self.names}")
        for k, v in named.items():
            self.xs[k].append(float(x))
            self.ys[k].append(float(v.item() if isinstance(v, torch.Tensor) else v))
        self._n_added += 1
        if self.live:
            self._draw()
            self._show()
        elif self.path is not None and self._n_added % self.save_every == 0:
            self.save()

    def _draw(self) -> None:
        ax = self.ax
        ax.clear()
        for k in self.names:
            if self.xs[k]:
                few = len(self.xs[k]) <= 20  # markers, so one point or a short run still shows
                ax.plot(self.xs[k], self.ys[k], marker="o" if few else None, markersize=4,
                        label=f"{k} ({self.ys[k][-1]:.4g})")
        if self.logy and any(v > 0 for k in self.names for v in self.ys[k]):
            ax.set_yscale("log")
        ax.set_xlabel(self.xlabel)
        ax.set_ylabel(self.ylabel)
        if self.title:
            ax.set_title(self.title)
        if any(self.xs.values()):
            ax.legend(loc="upper right")
        ax.grid(True, alpha=0.3)
        self.fig.tight_layout()

    def _show(self) -> None:
        from IPython.display import display
        if self._handle is None:
            self._handle = display(self.fig, display_id=True)
        else:
            self._handle.update(self.fig)

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the current plot as a PNG (to ``path`` or the constructor's path)."""
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ValueError("no path given: LossPlot(path=...) or save(path)")
        self._draw()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fig.savefig(path, dpi=100)
        return path

    def close(self):
        """Final draw (and PNG when headless with a path); returns the figure."""
        self._draw()
        if self.live:
            self._show()
        elif self.path is not None:
            self.save()
        plt.close(self.fig)
        return self.fig


def _curves(named: Mapping[str, object]) -> dict[str, np.ndarray]:
    if not isinstance(named, Mapping) or not named:
        raise ValueError("expected a non-empty dict {name: alpha_bar (T,)}")
    out = {}
    for name, a in named.items():
        a = a.detach().cpu().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float64)
        if a.ndim != 1:
            raise ValueError(f"alpha_bar {name!r} must be 1-D (T,), got shape {a.shape}")
        out[name] = a
    return out


def plot_schedules(named_alpha_bars: Mapping[str, object], title: str = "noise schedules"):
    """alpha_bar_t against the (0-based) step t for each named schedule; returns the figure."""
    curves = _curves(named_alpha_bars)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, a in curves.items():
        ax.plot(np.arange(len(a)), a, label=name)
    ax.set_xlabel("t")
    ax.set_ylabel(r"$\bar\alpha_t$")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def log_snr(alpha_bar) -> np.ndarray:
    """log SNR(t) = log(alpha_bar_t / (1 - alpha_bar_t)), float64 (inf where alpha_bar is 1)."""
    a = np.asarray(alpha_bar.detach().cpu().double() if isinstance(alpha_bar, torch.Tensor) else alpha_bar,
                   np.float64)
    with np.errstate(divide="ignore"):
        return np.log(a) - np.log1p(-a)


def plot_snr(named_alpha_bars: Mapping[str, object], title: str = "signal-to-noise ratio"):
    """log SNR = log(alpha_bar / (1 - alpha_bar)) against t for each named schedule; returns the figure."""
    curves = _curves(named_alpha_bars)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, a in curves.items():
        ax.plot(np.arange(len(a)), log_snr(a), label=name)
    ax.set_xlabel("t")
    ax.set_ylabel(r"$\log(\bar\alpha_t / (1 - \bar\alpha_t))$")
    ax.set_title(title)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def plot_heatmap(matrix, xlabel: str = "dimension", ylabel: str = "t", title: str | None = None,
                 cmap: str = "RdBu_r", ax=None, colorbar: bool = True):
    """A matrix as a heat map (e.g. ``timestep_embedding(t, dim)``: rows t, columns dimensions)."""
    m = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {m.shape}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    im = ax.imshow(m, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if colorbar:
        fig.colorbar(im, ax=ax)
    return fig

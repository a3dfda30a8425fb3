"""Stub score networks of notebook 06_score_matching (run in the kernel, driven by the trusted plan).

Each is ``net(x)`` with a closed form the trusted side computes itself; the score at level sigma is
``net(x) / sigma``. Nothing here is secret.

Kernel side: built in the student's kernel from a plan.
"""
from __future__ import annotations

import torch
from torch import nn

from .stubs import RecordingModel

__all__ = ["FunctionNet", "LinearNet", "RecordingNet", "RowOracleNet", "ZeroNet"]


class _Net(nn.Module):
    """Base of the stub score networks: a module (``.eval()``, ``.to()``, ``.parameters()`` work)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))


class LinearNet(_Net):
    """``net(x) = -k (x - c)``: the score at level sigma is ``-k (x - c) / sigma``.

    With ``k = 1 / sigma`` this is the exact score of data concentrated at ``c`` at that level.
    """

    def __init__(self, c: float, k: float):
        super().__init__()
        self.c, self.k = float(c), float(k)

    def forward(self, x):
        return -self.k * (x - self.c) + 0.0 * self.dummy


class FunctionNet(_Net):
    """``net(x) = a * x + b * sin(3 x) + d`` (a fixed nonlinear map, elementwise)."""

    def __init__(self, a=0.7, b=0.3, d=0.2, trainable=False):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)), requires_grad=bool(trainable))
        self.b, self.d = float(b), float(d)

    def forward(self, x):
        return self.a.to(x.dtype) * x + self.b * torch.sin(3 * x) + self.d


class ZeroNet(_Net):
    def forward(self, x):
        return torch.zeros_like(x) + 0.0 * self.dummy


class RowOracleNet(_Net):
    """Exact single-point score net for a batch whose rows carry different sigmas.

    Knows the noisy inputs ``x_tilde`` (B, ...) it will be called with and their ``sigma`` (B,); on a
    call it finds each input row among them (any batching and order works) and returns
    ``-(x - c) / sigma_row``, so that ``net(x) / sigma`` is the exact score ``-(x - c) / sigma^2``.
    """

    def __init__(self, x_tilde: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor):
        super().__init__()
        self.rows = x_tilde.detach().reshape(x_tilde.shape[0], -1).to(torch.float64)  # (B, D)
        self.sigma = sigma.detach().to(torch.float64)  # (B,)
        self.c = c.detach().to(torch.float64)

    def forward(self, x):
        flat = x.detach().reshape(x.shape[0], -1).to(torch.float64)  # (b, D)
        if flat.shape[1] != self.rows.shape[1]:
            raise ValueError(f"the test network expects images of shape {tuple(self.c.shape)}, "
                             f"got {tuple(x.shape[1:])}")
        idx = torch.cdist(flat, self.rows).argmin(dim=1)  # (b,)
        sig = self.sigma[idx].reshape(-1, *([1] * (x.dim() - 1)))  # (b, 1, 1, 1)
        out = -(x.to(torch.float64) - self.c) / sig
        return out.to(x.dtype) + 0.0 * self.dummy


class RecordingNet(RecordingModel):
    """Wraps a stub net ``net(x)`` and records every call (x, out, training, grad_enabled)."""

    def forward(self, x):
        entry = {"x": x.detach().to("cpu").clone(), "training": self.training,
                 "grad_enabled": torch.is_grad_enabled()}
        self.calls.append(entry)
        out = self.inner(x)
        if isinstance(out, torch.Tensor):
            entry["out"] = out.detach().to("cpu").clone()
        return out

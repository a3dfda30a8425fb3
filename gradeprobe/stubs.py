"""Stub models and optimizers whose behaviour is known exactly (the oracles of ``docs/``).

Kernel side: built in the student's kernel from a plan.

They run in the student's kernel, driven by a plan of the trusted grader: nothing here is secret.
The trusted side knows each stub's output from its parameters, so a verdict never has to believe
what the kernel says a stub returned.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def time_batch(t: Any, batch: int) -> torch.Tensor:
    """Accept t as a long (B,) tensor (the convention), a 0-d tensor or an int; return (B,) long."""
    t = torch.as_tensor(t)
    if t.is_floating_point():
        t = t.round()
    t = t.long().reshape(-1).cpu()
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"the model expects t of shape ({batch},), got {tuple(t.shape)}")
    return t


class StubModel(nn.Module):
    """Base of the stub models: a module (so .eval()/.to() work) with one dummy parameter."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def _coef(self, values: torch.Tensor, t: Any, x: torch.Tensor) -> torch.Tensor:
        idx = time_batch(t, x.shape[0])
        out = values.to(torch.float64)[idx]  # (B,)
        return out.reshape(-1, *([1] * (x.dim() - 1))).to(dtype=x.dtype, device=x.device)


class ConstantModel(StubModel):
    """Predicts the same noise value everywhere: ``model(x, t[, y]) = value``."""

    def __init__(self, value: float = 0.0):
        super().__init__()
        self.value = float(value)

    def forward(self, x, t, *rest):
        return torch.full_like(x, self.value) + 0.0 * self.dummy


class DeltaDataModel(StubModel):
    """The exact noise predictor when every training image equals ``c``.

    ``eps*(x_t, t) = (x_t - sqrt(alpha_bar[t]) c) / sqrt(1 - alpha_bar[t])``; a correct DDPM sampler
    driven by it returns ``c`` exactly.
    """

    def __init__(self, c: torch.Tensor | float, alpha_bar: torch.Tensor):
        super().__init__()
        self.c = torch.as_tensor(c, dtype=torch.float64)
        self.alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64).cpu()

    def forward(self, x, t, *rest):
        sqrt_ab = self._coef(self.alpha_bar.sqrt(), t, x)
        sqrt_1m = self._coef((1 - self.alpha_bar).sqrt(), t, x)
        return (x - sqrt_ab * self.c.to(x.dtype).to(x.device)) / sqrt_1m


class GaussianDataModel(StubModel):
    """The exact noise predictor when x_0 ~ N(0, I): ``eps*(x_t, t) = sqrt(1 - alpha_bar[t]) x_t``."""

    def __init__(self, alpha_bar: torch.Tensor):
        super().__init__()
        self.alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64).cpu()

    def forward(self, x, t, *rest):
        return self._coef((1 - self.alpha_bar).sqrt(), t, x) * x


class RecordingModel(StubModel):
    """Wraps a model and records every call: ``calls`` is a list of dicts with x, t, rest, out,
    training, grad_enabled (CPU clones)."""

    def __init__(self, inner: nn.Module | None = None):
        super().__init__()
        self.inner = inner if inner is not None else ConstantModel(0.0)
        self.calls: list[dict] = []

    def forward(self, x, t, *rest):
        entry = {
            "x": x.detach().to("cpu").clone(),
            "t": torch.as_tensor(t).detach().to("cpu").clone(),
            "rest": [torch.as_tensor(r).detach().to("cpu").clone() for r in rest],
            "training": self.training,
            "grad_enabled": torch.is_grad_enabled(),
        }
        self.calls.append(entry)
        out = self.inner(x, t, *rest)
        if isinstance(out, torch.Tensor):
            entry["out"] = out.detach().to("cpu").clone()
        return out


#: what a plan may build, by name: ``kind -> constructor(**params)``
KINDS = {
    "constant": ConstantModel,
    "delta": DeltaDataModel,
    "gaussian": GaussianDataModel,
}

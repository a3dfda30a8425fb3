"""Stub models and tools of notebook 04 (``grading/checks/conditional.py``).

Kernel side: built in the student's kernel from a plan.

They run in the student's kernel, built from a plan of the trusted grader: nothing here is secret,
and each model's output is known exactly from its parameters, so the trusted side recomputes it
(with its own copy of this module) instead of believing the kernel. The recording models subclass
``gradeprobe.stubs.RecordingModel``, so the executor returns their ``calls`` with each step; unlike
it they take the labels ``y`` as the conditional models of this notebook do, also by keyword.
"""
from __future__ import annotations

import torch
from torch import nn

from .stubs import RecordingModel, StubModel

__all__ = ["ClassDeltaModel", "ClassGaussianModel", "ClassGaussianRecorder", "LabelModel", "ModuleTools"]


def _clone(v):
    return None if v is None else torch.as_tensor(v).detach().to("cpu").clone()


class _Recording(RecordingModel):
    """A stub model that records its own calls (``calls``: dicts of CPU clones)."""

    def __init__(self):
        StubModel.__init__(self)
        self.calls: list[dict] = []


class LabelModel(_Recording):
    """``model(x, t, y) = a * x + 0.3 * y + 0.001 * t`` (a = 0.7, a parameter), recording x, t, y;
    without y the label term is left out."""

    A = 0.7

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(self.A, dtype=torch.float64))

    def forward(self, x, t, y=None):
        self.calls.append({"x": _clone(x), "t": _clone(t), "y": _clone(y)})
        return self.expected(self.a, x, torch.as_tensor(t), None if y is None else torch.as_tensor(y))

    @staticmethod
    def expected(a, x, t, y):
        out = a * x + 0.001 * t.to(x.dtype).reshape(-1, 1, 1, 1)
        if y is not None:
            out = out + 0.3 * y.to(x.dtype).reshape(-1, 1, 1, 1)
        return out


class ClassDeltaModel(_Recording):
    """Exact noise predictor when every image of class k equals centers[k] (shape (K, C, H, W));
    records the t and y of every call. With ``grad`` its output depends on a trainable parameter (whose
    value is 0), as a real network's does: a sampler that keeps no graph returns no graph."""

    def __init__(self, centers: torch.Tensor, alpha_bar: torch.Tensor, grad: bool = False):
        super().__init__()
        self.centers = centers.to(torch.float64)
        self.alpha_bar = alpha_bar.to(torch.float64)
        self.grad = bool(grad)

    def _coefs(self, t, x):
        t = torch.as_tensor(t).reshape(-1).long()
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        ab = self.alpha_bar[t].reshape(-1, 1, 1, 1)
        return ab.sqrt().to(x.dtype), (1 - ab).sqrt().to(x.dtype)

    def forward(self, x, t, y=None):
        self.calls.append({"t": _clone(t), "y": _clone(y)})
        if y is None:
            raise TypeError("this conditional model needs labels: model(x, t, y)")
        sa, s1 = self._coefs(t, x)
        c = self.centers[torch.as_tensor(y).long()].to(x.dtype)  # (B, C, H, W)
        out = (x - sa * c) / s1
        return out + self.dummy.to(x.dtype) if self.grad else out


class ClassGaussianModel(StubModel):
    """Exact noise predictor when images of class k are N(centers[k], I) (records nothing)."""

    def __init__(self, centers: torch.Tensor, alpha_bar: torch.Tensor):
        super().__init__()
        self.centers = centers.to(torch.float64)
        self.alpha_bar = alpha_bar.to(torch.float64)

    _coefs = ClassDeltaModel._coefs

    def forward(self, x, t, y=None):
        if y is None:
            raise TypeError("this conditional model needs labels: model(x, t, y)")
        sa, s1 = self._coefs(t, x)
        c = self.centers[torch.as_tensor(y).long()].to(x.dtype)
        return s1 * (x - sa * c)


class ClassGaussianRecorder(_Recording):
    """``ClassGaussianModel`` that records the x, t and y of every call (the per-step variances of a
    sampler are judged from them)."""

    def __init__(self, centers: torch.Tensor, alpha_bar: torch.Tensor):
        super().__init__()
        self.inner = ClassGaussianModel(centers, alpha_bar)

    def forward(self, x, t, y=None):
        self.calls.append({"x": _clone(x), "t": _clone(t), "y": _clone(y)})
        return self.inner(x, t, y)


class ModuleTools:
    """What the AdaptiveGroupNorm check does to the student's layer in the kernel: look at its
    structure and set its parameters (to a value, or to N(0, std^2) draws of a given seed)."""

    @staticmethod
    def describe(module) -> dict:
        if not isinstance(module, nn.Module):
            return {"module": False, "params": 0, "affine": []}
        affine = [name for name, m in module.named_modules()
                  if isinstance(m, nn.GroupNorm) and (m.affine or m.weight is not None)]
        return {"module": True, "params": len(list(module.parameters())), "affine": affine}

    @staticmethod
    def fill(module: nn.Module, value: float | None = None, seed: int = 0, std: float = 0.4) -> None:
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for p in module.parameters():
                if value is not None:
                    p.fill_(float(value))
                else:
                    p.copy_((torch.randn(p.shape, generator=gen, dtype=torch.float64) * std).to(p.dtype))

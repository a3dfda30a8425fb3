"""Stub models of notebook 05 (``grading/checks/classifier_free_guidance.py``).

Kernel side: built in the student's kernel from a plan.

They run in the student's kernel, built from a plan of the trusted grader: nothing here is secret,
and each model's output is known exactly from its parameters, so the trusted side recomputes it
(with its own copy of this module) instead of believing the kernel. They record their own calls as
``gradeprobe.stubs.RecordingModel`` subclasses (the executor returns them with each step) and take
the labels ``y`` positionally or by keyword.
"""
from __future__ import annotations

import torch

from .stubs import RecordingModel, StubModel

__all__ = ["GuidedDeltaModel", "StandInGuide", "TwoHeadModel"]


def _clone(v):
    return None if v is None else torch.as_tensor(v).detach().to("cpu").clone()


class TwoHeadModel(RecordingModel):
    """``model(x, t, y) = 0.5 x + 0.001 t + (1 + 0.1 y)`` for real labels and ``0.5 x + 0.001 t - 0.7``
    for the null label; records x, t and y of every call."""

    def __init__(self, null_label: int):
        StubModel.__init__(self)
        self.calls: list[dict] = []
        self.null_label = int(null_label)

    @staticmethod
    def heads(x, t, y, null_label):
        t = torch.as_tensor(t).to(x.dtype).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        y = torch.as_tensor(y).reshape(-1)
        base = 0.5 * x + 0.001 * t.reshape(-1, 1, 1, 1)
        cond = 1.0 + 0.1 * y.to(x.dtype)
        val = torch.where(y == null_label, torch.full_like(cond, -0.7), cond)  # (B,)
        return base + val.reshape(-1, 1, 1, 1)

    def forward(self, x, t, y=None):
        self.calls.append({"x": _clone(x), "t": _clone(t), "y": _clone(y)})
        if y is None:
            raise TypeError("this conditional model needs labels: model(x, t, y)")
        return self.heads(x, t, y, self.null_label)


class GuidedDeltaModel(RecordingModel):
    """Exact predictors: class k -> data fixed at centers[k]; the null label -> data fixed at u.
    With ``gaussian=True`` the data are N(center, I) instead. With ``record`` each call's first t,
    whether the batch shared it and whether the null label was among the labels are recorded; with
    ``record_x`` each call's x, t and labels. With ``grad`` the output depends on a trainable
    parameter (0), as a real network's does."""

    def __init__(self, centers, u, alpha_bar, null_label: int, gaussian: bool = False, record: bool = True,
                 record_x: bool = False, grad: bool = False):
        StubModel.__init__(self)
        self.calls: list[dict] = []
        self.centers = torch.cat([centers, u[None]]).to(torch.float64)  # (K + 1, C, H, W)
        self.alpha_bar = alpha_bar.to(torch.float64)
        self.null_label, self.gaussian, self.record = int(null_label), bool(gaussian), bool(record)
        self.record_x, self.grad = bool(record_x), bool(grad)

    def forward(self, x, t, y=None):
        if y is None:
            raise TypeError("this conditional model needs labels: model(x, t, y)")
        tt = torch.as_tensor(t).reshape(-1).long()
        if tt.numel() == 1:
            tt = tt.expand(x.shape[0])
        yy = torch.as_tensor(y).reshape(-1).long()
        if self.record_x:  # the inputs themselves (the per-step variances are judged from them)
            self.calls.append({"x": x.detach().to("cpu").clone(), "t": int(tt[0]), "y": yy.detach().cpu().clone()})
        elif self.record:  # (plain numbers: a sampler makes a hundred calls)
            self.calls.append({"t": int(tt[0]), "same_t": bool((tt == tt[0]).all()),
                               "null": bool((yy == self.null_label).any())})
        idx = torch.where(yy == self.null_label, torch.full_like(yy, len(self.centers) - 1), yy)
        ab = self.alpha_bar[tt].reshape(-1, 1, 1, 1)
        sa, s1 = ab.sqrt().to(x.dtype), (1 - ab).sqrt().to(x.dtype)
        c = self.centers[idx].to(x.dtype)
        out = s1 * (x - sa * c) if self.gaussian else (x - sa * c) / s1
        return out + self.dummy.to(x.dtype) if self.grad else out  # (the dummy parameter is 0)


class StandInGuide:
    """Stands in for a ``guided_eps`` that cannot run (not defined, or raising): returns the
    conditional prediction ``model(x_t, t, y)`` (no guidance at all, so it gives nothing of the
    exercise away); the sampling loop around it is then judged from its calls."""

    def __call__(self, model, x_t, t, y, w, null_label):
        return model(x_t, t, y)

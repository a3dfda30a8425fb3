"""Stub models of notebook 03_sampling (run in the kernel, driven by the trusted grader's plan).

Nothing here is secret: each stub's output is a closed form the trusted side computes itself.

Kernel side: built in the student's kernel from a plan.
"""
from __future__ import annotations

import torch

from torch import nn

from .stubs import GaussianDataModel, StubModel, time_batch

__all__ = ["FixedNoiseModel", "ParamGaussianModel"]


class FixedNoiseModel(StubModel):
    """A smooth, elementwise noise prediction that changes with t:
    ``eps(x, t) = (0.6 sin(2 x) + 0.3) (1 + t / 1000)`` (computed in float64, returned in x's dtype).

    Elementwise (so a loop over the batch sees the same predictions) and known in closed form, so the
    trusted side computes a step's correct output and its mistaken variants exactly.
    """

    def forward(self, x, t, *rest):
        idx = time_batch(t, x.shape[0]).to(torch.float64)  # (B,)
        scale = (1 + idx / 1000).reshape(-1, *([1] * (x.dim() - 1))).to(device=x.device)
        xd = x.to(torch.float64)
        return ((0.6 * torch.sin(2 * xd) + 0.3) * scale).to(x.dtype)


class ParamGaussianModel(GaussianDataModel):
    """The Gaussian-data predictor ``sqrt(1 - alpha_bar[t]) x_t`` times a learnable ``scale`` (1.0): a
    network with parameters, whose output carries an autograd graph unless sampling runs under
    ``torch.no_grad()``."""

    def __init__(self, alpha_bar: torch.Tensor):
        super().__init__(alpha_bar)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, t, *rest):
        return super().forward(x, t) * self.scale.to(x.dtype)

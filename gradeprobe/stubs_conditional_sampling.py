"""Stub models of notebook 04's sampling answers, ``sample_digit`` and ``sample_grid``
(``grading/checks/conditional_sampling.py``).

Kernel side: built in the student's kernel from a plan.

Nothing here is secret: each model's output is known exactly from its parameters (the exact noise
predictor of data whose class k is the single image ``centers[k]``), so the trusted side recomputes
what the sampler must return instead of believing the kernel.
"""
from __future__ import annotations

import torch

from .stubs_conditional import ClassDeltaModel

__all__ = ["FirstInputDeltaModel"]


class FirstInputDeltaModel(ClassDeltaModel):
    """:class:`~gradeprobe.stubs_conditional.ClassDeltaModel` that also keeps the ``x`` of its first
    call (the sampler's starting noise x_T), and the t and y of every call."""

    def forward(self, x, t, y=None):
        first = not self.calls
        out = super().forward(x, t, y)
        if first:
            self.calls[0]["x"] = torch.as_tensor(x).detach().to("cpu").clone()
        return out



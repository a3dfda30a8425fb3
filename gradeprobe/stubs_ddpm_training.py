"""Stub models, optimizers and data of notebook 02 (``grading/checks/ddpm_training.py``).

Kernel side: built in the student's kernel from a plan.

They run in the student's kernel, built from a plan of the trusted grader: nothing here is secret,
and each one's behaviour is known exactly from its parameters, so the trusted side recomputes what
it should have done (with its own copy of this module) instead of believing the kernel.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["AffineNoiseNet", "BufferedNet", "CountingSGD", "ExactDeltaNet", "OneShotBatches", "SmallNet"]


class AffineNoiseNet(nn.Module):
    """A tiny trainable noise model: ``w * x_t + b + s * t / T`` (parameters w, b, s).

    ``stale_grad``: every parameter starts with this gradient (a previous step's leftovers, which a
    train step must clear before its backward pass)."""

    def __init__(self, T: int, w: float = 0.7, b: float = 0.1, s: float = -0.4, stale_grad: float | None = None):
        super().__init__()
        self.T = int(T)
        self.w = nn.Parameter(torch.tensor(float(w)))
        self.b = nn.Parameter(torch.tensor(float(b)))
        self.s = nn.Parameter(torch.tensor(float(s)))
        if stale_grad is not None:
            for p in (self.w, self.b, self.s):
                p.grad = torch.full_like(p, float(stale_grad))

    def forward(self, x, t, *rest):
        if rest:
            raise TypeError(f"the model of this notebook is unconditional: call it as model(x_t, t), "
                            f"got {2 + len(rest)} arguments.")
        if not isinstance(x, torch.Tensor) or not isinstance(t, torch.Tensor):
            raise TypeError(f"model(x_t, t) must get two tensors, got {type(x).__name__} and {type(t).__name__}.")
        tt = (t.to(x.dtype) / self.T).reshape(-1, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)
        return self.w * x + self.b + self.s * tt


class CountingSGD(torch.optim.SGD):
    """Plain SGD (no momentum) over ``model``'s parameters that counts its step() and zero_grad() calls;
    ``probe_state()`` returns the counters."""

    def __init__(self, model: nn.Module, lr: float):
        super().__init__(model.parameters(), lr=float(lr))
        self.steps = 0
        self.zeroed = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)

    def zero_grad(self, set_to_none: bool = True):
        self.zeroed += 1
        return super().zero_grad(set_to_none)

    def probe_state(self) -> dict:
        return {"steps": int(self.steps), "zeroed": int(self.zeroed)}


class ExactDeltaNet(nn.Module):
    """The exact noise predictor for data fixed at ``c``, plus an offset that depends on the batch size
    and, in train mode, a further offset (as dropout would change a network's output).

    ``offsets``: ``[[batch size, offset], ...]``. In eval mode a batch of size B has the loss
    ``offset[B] ** 2`` exactly, whatever t and noise were drawn; in train mode
    ``(offset[B] + train_shift) ** 2``.
    """

    def __init__(self, c: torch.Tensor, alpha_bar: torch.Tensor, offsets, train_shift: float):
        super().__init__()
        self.register_buffer("c", c)
        self.register_buffer("alpha_bar", alpha_bar.to(torch.float64))
        self.scale = nn.Parameter(torch.tensor(1.0))  # outputs require grad when grad mode is on
        self.offsets = {int(n): float(v) for n, v in offsets}
        self.train_shift = float(train_shift)

    def forward(self, x, t, *rest):
        if rest:
            raise TypeError(f"the model of this notebook is unconditional: call it as model(x_t, t), "
                            f"got {2 + len(rest)} arguments.")
        ab = self.alpha_bar[t.long()].reshape(-1, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)
        eps = (x.to(torch.float64) - ab.sqrt() * self.c.to(torch.float64)) / (1 - ab).sqrt()
        shift = self.offsets.get(x.shape[0], 0.0) + (self.train_shift if self.training else 0.0)
        return self.scale * (eps + shift).to(x.dtype)


class OneShotBatches:
    """A one-shot iterable of ``(x_0, y)`` pairs, like a generator over ``helpers.data.batches``: batch k
    holds ``sizes[k]`` copies of the image ``c`` (1, C, H, W) and the labels k."""

    def __init__(self, c: torch.Tensor, sizes):
        self.c, self.sizes, self.used = c, [int(n) for n in sizes], False

    def __iter__(self):
        if self.used:
            return iter(())
        self.used = True
        return self._batches()

    def _batches(self):
        for k, n in enumerate(self.sizes):
            yield self.c.expand(n, -1, -1, -1).clone(), torch.full((n,), k, dtype=torch.long)


class SmallNet(nn.Sequential):
    """``Linear(3, 4), BatchNorm1d(4), Linear(4, 2)`` loaded with ``state`` (its state_dict)."""

    def __init__(self, state: dict):
        super().__init__(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        own = self.state_dict()
        # a 0-d tensor of the plan (num_batches_tracked) arrives with shape (1,): give it its own shape
        self.load_state_dict({k: torch.as_tensor(v).reshape(own[k].shape) if k in own else v
                              for k, v in state.items()})


class BufferedNet(SmallNet):
    """:class:`SmallNet` with one more floating-point buffer of its own, ``shift`` (2,) (a registered
    statistic outside any BatchNorm: an EMA must copy it too)."""

    def __init__(self, state: dict):
        nn.Sequential.__init__(self, nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        self.register_buffer("shift", torch.zeros(2))
        own = self.state_dict()
        self.load_state_dict({k: torch.as_tensor(v).reshape(own[k].shape) if k in own else v
                              for k, v in state.items()})

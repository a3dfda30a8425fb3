"""Notebook 04: class-conditional DDPM.

The class label enters every resolution of the U-Net through adaptive group normalization
(``AdaptiveGroupNorm``, as in Dhariwal & Nichol 2021's AdaGN); ``model(x_t, t, y)`` predicts the
noise with ``y`` a long tensor ``(B,)`` of labels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._utils import check_schedule, check_tensor, randn_like
from .forward_process import q_sample

__all__ = ["AdaptiveGroupNorm", "conditional_ddpm_loss", "p_sample_loop_conditional", "sample_digit",
           "sample_grid"]


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm whose scale and shift come from a conditioning vector.

    ``forward(h, cond)`` returns ``GroupNorm(h) * (1 + scale) + shift`` where the GroupNorm has no
    affine parameters and ``(scale, shift) = Linear(cond_dim, 2 * num_channels)(cond)`` split in two
    halves, one value per example and channel. The linear map starts at zero, so a fresh layer is a
    plain GroupNorm.

    Shapes: ``h`` ``(B, C, H, W)`` (any rank ``>= 2`` works), ``cond`` ``(B, cond_dim)``; returns h's shape.
    """

    def __init__(self, num_channels: int, cond_dim: int, num_groups: int = 1):
        super().__init__()
        for name, v in (("num_channels", num_channels), ("cond_dim", cond_dim), ("num_groups", num_groups)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_channels = num_channels
        self.cond_dim = cond_dim
        self.norm = nn.GroupNorm(num_groups, num_channels, affine=False)
        self.proj = nn.Linear(cond_dim, 2 * num_channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if not isinstance(h, torch.Tensor) or h.dim() < 2 or h.shape[1] != self.num_channels:
            raise ValueError(f"h must have shape (B, {self.num_channels}, H, W), got "
                             f"{tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}")
        if not isinstance(cond, torch.Tensor) or cond.shape != (h.shape[0], self.cond_dim):
            raise ValueError(f"cond must have shape ({h.shape[0]}, {self.cond_dim}), got "
                             f"{tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__}")
        scale, shift = self.proj(cond).chunk(2, dim=1)  # (B, C) each
        view = (h.shape[0], self.num_channels) + (1,) * (h.dim() - 2)  # (B, C, 1, 1)
        return self.norm(h) * (1 + scale.view(view)) + shift.view(view)

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, cond_dim={self.cond_dim}, num_groups={self.norm.num_groups}"


def _check_labels(y, B: int) -> None:
    if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.shape != (B,):
        raise ValueError(f"y must be a torch.long tensor of shape ({B},), got "
                         f"{(tuple(y.shape), y.dtype) if isinstance(y, torch.Tensor) else type(y).__name__}")


def conditional_ddpm_loss(model, x_0: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
                          noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 with a label: mean of ``(noise - model(x_t, t, y))**2`` over all elements.

    ``x_0`` ``(B, 1, 32, 32)``, ``y`` long ``(B,)``, ``t`` long ``(B,)``, ``noise`` like ``x_0``,
    ``alpha_bar`` ``(T,)``. Returns a 0-d tensor with gradients.
    """
    check_tensor(x_0, "x_0", floating=True)
    _check_labels(y, x_0.shape[0])
    x_t = q_sample(x_0, t, alpha_bar, noise)  # (B, C, H, W)
    eps_pred = model(x_t, t, y)
    if not isinstance(eps_pred, torch.Tensor) or eps_pred.shape != noise.shape:
        raise ValueError(f"model(x_t, t, y) must return the noise with shape {tuple(noise.shape)}")
    return F.mse_loss(eps_pred, noise)


def p_sample_loop_conditional(model, x_T: torch.Tensor, y: torch.Tensor, beta: torch.Tensor,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 2 with ``model(x, t, y)``: ancestral sampling with sigma_t^2 = beta_t, no noise at t = 0.

    ``x_T`` ``(B, 1, 32, 32)`` standard normal; ``y`` long ``(B,)``. Returns x_0 of x_T's shape.
    """
    check_tensor(x_T, "x_T", floating=True)
    _check_labels(y, x_T.shape[0])
    T = check_schedule(beta, "beta")
    alpha_bar = torch.cumprod(1 - beta, dim=0)  # (T,)
    y = y.to(x_T.device)
    x = x_T
    with torch.no_grad():
        for t in reversed(range(T)):
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)
            eps = model(x, t_batch, y)
            b, ab = beta[t], alpha_bar[t]
            x = (x - (b / torch.sqrt(1 - ab)).to(x) * eps) / torch.sqrt(1 - b).to(x)
            if t > 0:
                x = x + torch.sqrt(b).to(x) * randn_like(x, generator)
    return x


def sample_digit(model, digit: int, n: int, beta: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` samples of one requested digit: x_T ~ N(0, I) of shape ``(n, 1, 32, 32)`` on beta's
    device, labels ``digit`` for every example, then Algorithm 2 (:func:`p_sample_loop_conditional`)."""
    if not 0 <= int(digit) < 10:
        raise ValueError(f"digit must be one of 0..9, got {digit}")
    x_T = randn_like(torch.empty(int(n), 1, 32, 32, device=beta.device), generator)  # (n, 1, 32, 32)
    y = torch.full((int(n),), int(digit), dtype=torch.long, device=beta.device)  # (n,)
    return p_sample_loop_conditional(model, x_T, y, beta, generator=generator)


def sample_grid(model, n_per_class: int, beta: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 10 x N grid: row k (examples k N ... k N + N - 1) asks for digit k, and column j starts
    from the same x_T in every row. Returns ``(x_0 (10 N, 1, 32, 32), y (10 N,))``."""
    N = int(n_per_class)
    x_cols = randn_like(torch.empty(N, 1, 32, 32, device=beta.device), generator)  # (N, 1, 32, 32)
    x_T = x_cols.repeat(10, 1, 1, 1)  # (10 N, 1, 32, 32)
    y = torch.arange(10, device=beta.device).repeat_interleave(N)  # (10 N,)
    return p_sample_loop_conditional(model, x_T, y, beta, generator=generator), y

"""Notebook 05: classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598).

One network is both the conditional and the unconditional model: during training each label is
replaced by the null label (``n_classes``, 10 for MNIST) with probability ``p_uncond``; at sampling
time the two predictions are mixed as ``(1 + w) eps(x_t, t, y) - w eps(x_t, t, null)``.
"""
from __future__ import annotations

import torch

from ._utils import check_schedule, check_tensor, check_times, generator_device, randn_like

__all__ = ["drop_labels", "guided_eps", "p_sample_loop_cfg"]


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by ``null_label`` independently with probability ``p_uncond``.

    ``y``: integer tensor ``(B,)``. Returns a new tensor (``y`` is not modified) of y's shape,
    dtype and device. ``p_uncond = 0`` keeps every label, ``p_uncond = 1`` drops every label.
    """
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point():
        raise ValueError("y must be an integer tensor of shape (B,)")
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    u = torch.rand(y.shape, generator=generator,
                   device=generator_device(generator, y.device)).to(y.device)  # (B,)
    return torch.where(u < p_uncond, torch.full_like(y, null_label), y)


def guided_eps(model, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor, w: float,
               null_label: int) -> torch.Tensor:
    """Guided noise prediction (Ho & Salimans 2022, eq. 6): ``(1 + w) eps(x_t, t, y) - w eps(x_t, t, null)``.

    Both predictions come from ONE batched forward pass: the model sees the batch of size ``2B``
    ``cat([x_t, x_t])``, ``cat([t, t])``, ``cat([y, null])``; the first half is conditional, the second
    half unconditional. ``w = 0`` is the plain conditional model, ``w = -1`` the unconditional one.
    ``x_t`` ``(B, C, H, W)``, ``t`` and ``y`` long ``(B,)``; ``w`` a float (or a ``(B,)`` tensor).
    Returns eps of x_t's shape.
    """
    check_tensor(x_t, "x_t", floating=True)
    B = x_t.shape[0]
    check_times(t, B)
    if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.shape != (B,):
        raise ValueError(f"y must be a torch.long tensor of shape ({B},)")
    y_null = torch.full_like(y, null_label)  # (B,)
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, y_null]))  # (2B, C, H, W)
    if not isinstance(eps, torch.Tensor) or eps.shape != (2 * B,) + tuple(x_t.shape[1:]):
        raise ValueError(f"model must return a tensor of shape {(2 * B,) + tuple(x_t.shape[1:])}")
    eps_cond, eps_uncond = eps[:B], eps[B:]
    if isinstance(w, torch.Tensor) and w.dim() > 0:
        w = w.to(x_t).reshape(-1, *([1] * (x_t.dim() - 1)))  # (B, 1, 1, 1)
    return (1 + w) * eps_cond - w * eps_uncond


def p_sample_loop_cfg(model, x_T: torch.Tensor, y: torch.Tensor, w: float, beta: torch.Tensor,
                      null_label: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 2 (sigma_t^2 = beta_t, no noise at t = 0) with ``guided_eps`` at every step.

    ``x_T`` ``(B, 1, 32, 32)`` standard normal, ``y`` long ``(B,)``. Returns x_0 of x_T's shape.
    """
    check_tensor(x_T, "x_T", floating=True)
    T = check_schedule(beta, "beta")
    alpha_bar = torch.cumprod(1 - beta, dim=0)  # (T,)
    y = y.to(x_T.device) if isinstance(y, torch.Tensor) else y
    x = x_T
    with torch.no_grad():
        for t in reversed(range(T)):
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)
            eps = guided_eps(model, x, t_batch, y, w, null_label)
            b, ab = beta[t], alpha_bar[t]
            x = (x - (b / torch.sqrt(1 - ab)).to(x) * eps) / torch.sqrt(1 - b).to(x)
            if t > 0:
                x = x + torch.sqrt(b).to(x) * randn_like(x, generator)
    return x

"""Notebook 01: the forward (noising) process of DDPM (Ho et al. 2020, arXiv:2006.11239).

Conventions (docs/conventions.md): 0-based time, code index ``t`` in ``{0, ..., T-1}`` is the paper's
step ``t + 1``; ``beta[t]`` is the paper's beta_{t+1}; ``alpha_bar[t] = prod(alpha[:t+1])``.
Images are ``(B, 1, 32, 32)`` in ``[-1, 1]``; a batch of times is a ``torch.long`` tensor ``(B,)``.
"""
from __future__ import annotations

import math

import torch

from ._utils import check_schedule, check_tensor, check_times, per_example, generator_device, randn_like

__all__ = ["linear_beta_schedule", "cosine_beta_schedule", "alphas_from_betas", "forward_step",
           "q_sample", "generate_noisy_samples"]


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int (the number of diffusion steps), got {T!r}")
    return T


def linear_beta_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The linear variance schedule of DDPM (Section 4): ``beta[t]`` from ``beta_start`` to ``beta_end``.

    Returns a float32 tensor ``(T,)``; ``beta[0] = beta_start`` and ``beta[T-1] = beta_end``.
    """
    _check_T(T)
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)  # (T,)


def cosine_beta_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The cosine schedule of Nichol & Dhariwal 2021 (arXiv:2102.09672, eq. 17).

    ``alpha_bar(t) = f(t) / f(0)`` with ``f(t) = cos(((t / T) + s) / (1 + s) * pi / 2) ** 2`` and
    ``beta[i] = min(1 - f(i + 1) / f(i), max_beta)`` (the clip avoids the singularity at ``t = T``).
    Computed in float64, returned as a float32 tensor ``(T,)`` with values in ``(0, max_beta]``.
    """
    _check_T(T)
    if s < 0:
        raise ValueError(f"s must be >= 0, got {s}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    steps = torch.arange(T + 1, dtype=torch.float64)  # (T + 1,) times 0..T
    f = torch.cos(((steps / T) + s) / (1 + s) * math.pi / 2) ** 2  # (T + 1,)
    beta = 1 - f[1:] / f[:-1]  # (T,)
    return beta.clamp(max=max_beta).to(torch.float32)


def alphas_from_betas(beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha = 1 - beta`` and ``alpha_bar[t] = prod(alpha[:t+1])`` (DDPM Section 2).

    ``beta``: floating ``(T,)`` in ``[0, 1)``. Returns ``(alpha, alpha_bar)``, both ``(T,)`` in beta's
    dtype and device; ``alpha_bar`` decreases from ``alpha[0]`` towards 0.
    """
    check_schedule(beta, "beta")
    if bool((beta < 0).any()) or bool((beta >= 1).any()):
        raise ValueError("beta must lie in [0, 1) (a variance per step)")
    alpha = 1 - beta  # (T,)
    alpha_bar = torch.cumprod(alpha, dim=0)  # (T,)
    return alpha, alpha_bar


def forward_step(x_prev: torch.Tensor, t: torch.Tensor, beta: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One step of q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (DDPM eq. 2).

    ``x_prev``: ``(B, ...)`` floating; ``t``: long ``(B,)`` (0-based, uses ``beta[t]``);
    ``beta``: ``(T,)``; ``noise``: same shape as ``x_prev``. Returns ``x_t`` of ``x_prev``'s shape,
    ``sqrt(1 - beta[t]) * x_prev + sqrt(beta[t]) * noise`` per example.
    """
    check_tensor(x_prev, "x_prev", floating=True)
    T = check_schedule(beta, "beta")
    check_times(t, x_prev.shape[0], T)
    check_tensor(noise, "noise", floating=True)
    if noise.shape != x_prev.shape:
        raise ValueError(f"noise must have x_prev's shape {tuple(x_prev.shape)}, got {tuple(noise.shape)}")
    b = beta[t.to(beta.device)]  # (B,)
    return per_example(torch.sqrt(1 - b), x_prev) * x_prev + per_example(torch.sqrt(b), x_prev) * noise


def q_sample(x_0: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x_0) in closed form (DDPM eq. 4): ``sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) noise``.

    ``x_0``: ``(B, ...)`` floating, images in ``[-1, 1]``; ``t``: long ``(B,)``, one 0-based time per
    example; ``alpha_bar``: ``(T,)``; ``noise``: standard normal, same shape as ``x_0``.
    Returns ``x_t`` with ``x_0``'s shape, dtype and device.
    """
    check_tensor(x_0, "x_0", floating=True)
    T = check_schedule(alpha_bar, "alpha_bar")
    check_times(t, x_0.shape[0], T)
    check_tensor(noise, "noise", floating=True)
    if noise.shape != x_0.shape:
        raise ValueError(f"noise must have x_0's shape {tuple(x_0.shape)}, got {tuple(noise.shape)}")
    ab = alpha_bar[t.to(alpha_bar.device)]  # (B,)
    return per_example(torch.sqrt(ab), x_0) * x_0 + per_example(torch.sqrt(1 - ab), x_0) * noise


def generate_noisy_samples(x_0: torch.Tensor, beta: torch.Tensor,
                           generator: torch.Generator | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise a batch at random times: ``t ~ Uniform{0, ..., T-1}`` per example, ``noise ~ N(0, I)``.

    Returns ``(x_t, noise, t)``: ``x_t = q_sample(x_0, t, alpha_bar, noise)`` with ``x_0``'s shape,
    ``noise`` of the same shape, ``t`` long ``(B,)`` on ``x_0``'s device. All draws use ``generator``.
    """
    check_tensor(x_0, "x_0", floating=True)
    T = check_schedule(beta, "beta")
    _, alpha_bar = alphas_from_betas(beta)
    B = x_0.shape[0]
    t = torch.randint(0, T, (B,), generator=generator,
                      device=generator_device(generator, x_0.device)).to(x_0.device)  # (B,)
    noise = randn_like(x_0, generator)  # (B, C, H, W)
    return q_sample(x_0, t, alpha_bar, noise), noise, t

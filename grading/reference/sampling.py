"""Notebook 03: sampling from a trained noise predictor.

Ancestral sampling (Ho et al. 2020, Algorithm 2), DDIM (Song, Meng, Ermon 2020, arXiv:2010.02502,
eqs. 12 and 16) and SDEdit (Meng et al. 2021). ``model(x_t, t)`` predicts the noise; ``t`` is a
long tensor ``(B,)`` of 0-based steps. The samplers run under ``torch.no_grad`` and leave the
model's train/eval mode to the caller.
"""
from __future__ import annotations

import torch

from ._utils import check_schedule, check_step, check_tensor, randn_like
from .forward_process import q_sample

__all__ = ["p_sample_step", "posterior_variance", "p_sample_loop", "ddim_step", "ddim_sample", "sdedit"]

VARIANCES = ("beta", "beta_tilde", "none")


def _eps(model, x_t: torch.Tensor, t: int) -> torch.Tensor:
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)  # (B,)
    eps = model(x_t, t_batch)
    if not isinstance(eps, torch.Tensor) or eps.shape != x_t.shape:
        raise ValueError(f"model(x_t, t) must return a tensor of x_t's shape {tuple(x_t.shape)}")
    return eps


def _ancestral_update(x_t: torch.Tensor, eps: torch.Tensor, t: int, beta: torch.Tensor,
                      alpha_bar: torch.Tensor, sigma: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """Algorithm 2 line 4: ``(x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sigma z``."""
    b, ab = beta[t], alpha_bar[t]  # 0-d, in the schedule's dtype
    coef_eps = (b / torch.sqrt(1 - ab)).to(x_t)
    inv_sqrt_alpha = (1 / torch.sqrt(1 - b)).to(x_t)
    mean = inv_sqrt_alpha * (x_t - coef_eps * eps)
    if t == 0 or z is None:
        return mean
    return mean + sigma.to(x_t) * z


def _check_z(z, x_t: torch.Tensor) -> None:
    if z is not None:
        check_tensor(z, "z", floating=True)
        if z.shape != x_t.shape:
            raise ValueError(f"z must have x_t's shape {tuple(x_t.shape)}, got {tuple(z.shape)}")


def p_sample_step(model, x_t: torch.Tensor, t: int, beta: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} (Algorithm 2, line 4) with ``sigma_t = sqrt(beta[t])``.

    ``x_t``: ``(B, C, H, W)``; ``t``: an int in ``[0, T)`` (0-based; the paper's step t + 1);
    ``beta``: ``(T,)``; ``z``: standard normal noise of x_t's shape, ignored when ``t == 0`` (the
    last step returns the mean) and treated as zero when ``None``. Returns ``x_{t-1}``.
    """
    check_tensor(x_t, "x_t", floating=True)
    T = check_schedule(beta, "beta")
    t = check_step(t, T)
    _check_z(z, x_t)
    alpha_bar = torch.cumprod(1 - beta, dim=0)  # (T,)
    with torch.no_grad():
        return _ancestral_update(x_t, _eps(model, x_t, t), t, beta, alpha_bar, torch.sqrt(beta[t]), z)


def posterior_variance(beta: torch.Tensor) -> torch.Tensor:
    """beta_tilde of DDPM eq. 7: ``(1 - alpha_bar_prev) / (1 - alpha_bar) * beta``, shape ``(T,)``.

    ``alpha_bar_prev[t] = alpha_bar[t-1]`` with alpha_bar before step 0 equal to 1, so
    ``beta_tilde[0] = 0`` and ``0 <= beta_tilde <= beta``.
    """
    check_schedule(beta, "beta")
    alpha_bar = torch.cumprod(1 - beta, dim=0)  # (T,)
    alpha_bar_prev = torch.cat([torch.ones_like(alpha_bar[:1]), alpha_bar[:-1]])  # (T,)
    return (1 - alpha_bar_prev) / (1 - alpha_bar) * beta


def p_sample_loop(model, x_T: torch.Tensor, beta: torch.Tensor, variance: str = "beta",
                  record_every: int = 100, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Ancestral sampling (Algorithm 2) from ``x_T`` down to ``x_0``.

    ``variance`` chooses sigma_t^2: ``"beta"`` (beta_t), ``"beta_tilde"`` (``posterior_variance``)
    or ``"none"`` (no noise at all: the deterministic experiment). The last step (t = 0) never adds
    noise. ``history`` holds a CPU clone of ``x`` after every step whose 0-based index is a multiple
    of ``record_every``, in sampling order, so its last entry is the returned ``x_0``.
    Returns ``(x_0, history)``; ``x_0`` has ``x_T``'s shape, dtype and device.
    """
    check_tensor(x_T, "x_T", floating=True)
    T = check_schedule(beta, "beta")
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
        raise ValueError(f"record_every must be a positive int, got {record_every!r}")
    alpha_bar = torch.cumprod(1 - beta, dim=0)  # (T,)
    sigma = torch.sqrt(beta if variance == "beta" else posterior_variance(beta))  # (T,)
    x = x_T
    history: list[torch.Tensor] = []
    with torch.no_grad():
        for t in reversed(range(T)):
            z = randn_like(x, generator) if (t > 0 and variance != "none") else None
            x = _ancestral_update(x, _eps(model, x, t), t, beta, alpha_bar, sigma[t], z)
            if t % record_every == 0:
                history.append(x.detach().cpu().clone())
    return x, history


def ddim_step(model, x_t: torch.Tensor, t: int, t_prev: int, alpha_bar: torch.Tensor,
              eta: float = 0.0, z: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2020, eq. 12, with sigma(eta) of eq. 16).

    ``x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)``,
    ``x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps + sigma z`` with
    ``sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev)``. ``t_prev == -1`` means
    ``ab_prev = 1`` (the final step onto x_0). The square-root argument is clamped at 0.
    ``z`` (x_t's shape) is needed whenever sigma can be non-zero (``eta > 0`` and ``t_prev >= 0``).
    """
    check_tensor(x_t, "x_t", floating=True)
    T = check_schedule(alpha_bar, "alpha_bar")
    t = check_step(t, T)
    if isinstance(t_prev, torch.Tensor):
        t_prev = int(t_prev.item())
    if isinstance(t_prev, bool) or not isinstance(t_prev, int) or not -1 <= t_prev < t:
        raise ValueError(f"t_prev must be an int with -1 <= t_prev < t = {t}, got {t_prev!r}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    _check_z(z, x_t)
    if z is None and eta > 0 and t_prev >= 0:
        raise ValueError("ddim_step with eta > 0 needs the noise z (same shape as x_t)")
    ab_t = alpha_bar[t]
    ab_prev = alpha_bar[t_prev] if t_prev >= 0 else torch.ones_like(ab_t)
    sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab_t)) * torch.sqrt(1 - ab_t / ab_prev)  # eq. 16
    dir_coef = torch.sqrt(torch.clamp(1 - ab_prev - sigma ** 2, min=0))
    with torch.no_grad():
        eps = _eps(model, x_t, t)
        x0_hat = (x_t - torch.sqrt(1 - ab_t).to(x_t) * eps) / torch.sqrt(ab_t).to(x_t)
        x_prev = torch.sqrt(ab_prev).to(x_t) * x0_hat + dir_coef.to(x_t) * eps
        if z is not None:
            x_prev = x_prev + sigma.to(x_t) * z
    return x_prev


def ddim_timesteps(T: int, num_steps: int) -> torch.Tensor:
    """The DDIM sub-sequence: ``num_steps`` evenly spaced steps from ``T - 1`` down to 0, descending."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an int in [1, {T}], got {num_steps!r}")
    steps = torch.linspace(T - 1, 0, num_steps, dtype=torch.float64).round().long()  # (num_steps,)
    return torch.unique(steps).flip(0)  # descending, no repeats


def ddim_sample(model, x_T: torch.Tensor, alpha_bar: torch.Tensor, num_steps: int = 50,
                eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDIM sampling over ``num_steps`` evenly spaced steps from ``T - 1`` down to 0, then onto x_0.

    Each step uses ``ddim_step``; the last one has ``t_prev = -1`` (alpha_bar_prev = 1). ``eta = 0``
    is deterministic, ``eta = 1`` matches DDPM's beta_tilde variance. Returns x_0 of x_T's shape.
    """
    check_tensor(x_T, "x_T", floating=True)
    T = check_schedule(alpha_bar, "alpha_bar")
    steps = ddim_timesteps(T, num_steps).tolist()
    prevs = steps[1:] + [-1]
    x = x_T
    with torch.no_grad():
        for t, t_prev in zip(steps, prevs):
            z = randn_like(x, generator) if (eta > 0 and t_prev >= 0) else None
            x = ddim_step(model, x, t, t_prev, alpha_bar, eta=eta, z=z)
    return x


def sdedit(model, x_0: torch.Tensor, t_start: int, beta: torch.Tensor,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """SDEdit (Meng et al. 2021): noise real images to step ``t_start`` with ``q_sample``, then run
    ancestral steps (Algorithm 2, sigma_t^2 = beta_t) from ``t_start`` down to 0.

    ``x_0``: ``(B, C, H, W)`` in ``[-1, 1]``; ``t_start``: int in ``[0, T)``. Small ``t_start`` keeps
    the images close to the input; ``t_start = T - 1`` is nearly a fresh sample. Returns x of x_0's shape.
    """
    check_tensor(x_0, "x_0", floating=True)
    T = check_schedule(beta, "beta")
    t_start = check_step(t_start, T, "t_start")
    alpha_bar = torch.cumprod(1 - beta, dim=0)  # (T,)
    sigma = torch.sqrt(beta)  # (T,)
    t_batch = torch.full((x_0.shape[0],), t_start, dtype=torch.long, device=x_0.device)  # (B,)
    with torch.no_grad():
        x = q_sample(x_0, t_batch, alpha_bar, randn_like(x_0, generator))
        for t in range(t_start, -1, -1):
            z = randn_like(x, generator) if t > 0 else None
            x = _ancestral_update(x, _eps(model, x, t), t, beta, alpha_bar, sigma[t], z)
    return x

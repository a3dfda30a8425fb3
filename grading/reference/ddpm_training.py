"""Notebook 02: training a DDPM noise predictor (Ho et al. 2020, Algorithm 1).

``model(x_t, t)`` predicts the noise ``eps`` that ``q_sample`` mixed into ``x_t``; ``t`` is a long
tensor ``(B,)`` of 0-based steps.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._utils import check_schedule, check_tensor, check_times, generator_device, randn_like
from .forward_process import q_sample

__all__ = ["timestep_embedding", "ddpm_loss", "train_step", "evaluate", "ema_update"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal time encoding (Vaswani et al. 2017, as used by DDPM).

    Column ``i < dim / 2`` holds ``sin(t * f_i)`` and column ``dim / 2 + i`` holds ``cos(t * f_i)``
    with ``f_i = max_period ** (-2 * i / dim)``. ``t``: ``(B,)`` integer or floating times; ``dim``:
    even positive int. Returns ``(B, dim)`` in ``[-1, 1]``, float32 (or t's dtype if floating).
    """
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        raise ValueError(f"t must be a 1-D tensor of shape (B,), got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even int >= 2, got {dim!r}")
    dtype = t.dtype if t.is_floating_point() else torch.float32
    half = dim // 2
    work = torch.float32 if t.device.type == "mps" else torch.float64  # MPS has no float64
    i = torch.arange(half, device=t.device, dtype=work)  # (dim/2,)
    freqs = torch.exp(-math.log(max_period) * 2 * i / dim)  # (dim/2,) = max_period ** (-2i/dim)
    angles = t.to(work)[:, None] * freqs[None, :]  # (B, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(dtype)  # (B, dim)


def ddpm_loss(model, x_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
              alpha_bar: torch.Tensor) -> torch.Tensor:
    """The simplified DDPM loss (Algorithm 1, eq. 14): mean of ``(eps - model(x_t, t))**2``.

    ``x_t = q_sample(x_0, t, alpha_bar, noise)``; the mean runs over every element (batch and pixels).
    Returns a 0-d tensor that carries gradients to the model's parameters.
    """
    x_t = q_sample(x_0, t, alpha_bar, noise)  # (B, C, H, W)
    eps_pred = model(x_t, t)
    if not isinstance(eps_pred, torch.Tensor) or eps_pred.shape != noise.shape:
        raise ValueError(f"model(x_t, t) must return the noise with shape {tuple(noise.shape)}, got "
                         f"{tuple(eps_pred.shape) if isinstance(eps_pred, torch.Tensor) else type(eps_pred).__name__}")
    return F.mse_loss(eps_pred, noise)


def train_step(model, optimizer, x_0: torch.Tensor, alpha_bar: torch.Tensor,
               generator: torch.Generator | None = None) -> float:
    """One gradient step of Algorithm 1 on the batch ``x_0``; returns the loss as a Python float.

    Draws ``t ~ Uniform{0, ..., T-1}`` independently per example and ``noise ~ N(0, I)`` with
    ``generator``, zeroes the gradients, back-propagates ``ddpm_loss`` and steps ``optimizer``.
    The model's train/eval mode is left as the caller set it.
    """
    check_tensor(x_0, "x_0", floating=True)
    T = check_schedule(alpha_bar, "alpha_bar")
    B = x_0.shape[0]
    t = torch.randint(0, T, (B,), generator=generator,
                      device=generator_device(generator, x_0.device)).to(x_0.device)  # (B,)
    noise = randn_like(x_0, generator)  # (B, C, H, W)
    optimizer.zero_grad()
    loss = ddpm_loss(model, x_0, t, noise, alpha_bar)
    loss.backward()
    optimizer.step()
    return float(loss.item())


def _model_device(model, default: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    return default


def evaluate(model, batches, alpha_bar: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """Mean ``ddpm_loss`` over ``batches`` (pairs ``(x_0, y)`` as the helpers loaders yield).

    Each batch gets its own random ``t`` and noise (drawn with ``generator``); batch losses are
    weighted by their number of examples. Runs under ``torch.no_grad`` in eval mode and restores the
    model's previous train/eval mode afterwards. Raises ``ValueError`` when ``batches`` is empty.
    """
    check_schedule(alpha_bar, "alpha_bar")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in batches:
                x_0 = batch[0] if isinstance(batch, (tuple, list)) else batch
                check_tensor(x_0, "x_0 (first item of each batch)", floating=True)
                x_0 = x_0.to(_model_device(model, x_0.device))
                B = x_0.shape[0]
                T = alpha_bar.shape[0]
                t = torch.randint(0, T, (B,), generator=generator,
                                  device=generator_device(generator, x_0.device)).to(x_0.device)  # (B,)
                noise = randn_like(x_0, generator)  # (B, C, H, W)
                total += float(ddpm_loss(model, x_0, t, noise, alpha_bar).item()) * B
                count += B
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate needs at least one non-empty batch")
    return total / count


def ema_update(ema_model, model, decay: float = 0.999) -> None:
    """Exponential moving average of the weights, in place (NCSNv2 technique 5).

    For every parameter ``ema = decay * ema + (1 - decay) * param``; buffers (e.g. BatchNorm
    statistics, floating or integer) are copied. ``ema_model`` must have ``model``'s architecture.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay}")
    ema_params = dict(ema_model.named_parameters())
    params = dict(model.named_parameters())
    if ema_params.keys() != params.keys():
        raise ValueError("ema_model and model must have the same parameters (same architecture)")
    ema_buffers = dict(ema_model.named_buffers())
    buffers = dict(model.named_buffers())
    if ema_buffers.keys() != buffers.keys():
        raise ValueError("ema_model and model must have the same buffers (same architecture)")
    with torch.no_grad():
        for name, p in params.items():
            ema_params[name].mul_(decay).add_(p.detach().to(ema_params[name]), alpha=1 - decay)
        for name, b in buffers.items():
            ema_buffers[name].copy_(b)

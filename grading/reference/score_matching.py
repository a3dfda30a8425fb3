"""Notebook 06: noise-conditional score networks (Song & Ermon 2019, arXiv:1907.05600) with the
improved techniques of Song & Ermon 2020 (arXiv:2006.09011).

Noise levels are indexed as in the improved-techniques paper: ``sigmas[0]`` is the LARGEST and
``sigmas[-1] = sigma_min`` the smallest. The score network is unconditional and the score is
``net(x) / sigma`` (technique 3). Langevin uses the update of the official code,
``x <- x + alpha s + sqrt(2 alpha) z`` with ``alpha = eps sigma^2 / sigma_min^2``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq, minimize_scalar
from scipy.special import ndtr

from ._utils import check_tensor, randn_like

__all__ = ["geometric_sigmas", "max_pairwise_distance", "num_noise_levels", "noise_ratio_gamma", "score",
           "dsm_loss", "langevin_step_size", "annealed_langevin", "choose_step_size", "inpaint"]


def _sigma_list(sigmas) -> list[float]:
    vals = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if len(vals) < 1 or any(not s > 0 for s in vals):
        raise ValueError("sigmas must be a non-empty sequence of positive noise levels")
    if any(a < b for a, b in zip(vals, vals[1:])):
        raise ValueError("sigmas must be in descending order (sigmas[0] is the largest)")
    return vals


def geometric_sigmas(sigma_max: float, sigma_min: float, L: int) -> torch.Tensor:
    """``L`` noise levels in geometric progression from ``sigma_max`` down to ``sigma_min``.

    Returns a float32 tensor ``(L,)``, descending, with ``sigmas[0] = sigma_max`` and
    ``sigmas[-1] = sigma_min``; consecutive ratios ``sigmas[i-1] / sigmas[i]`` are all equal.
    """
    if isinstance(L, bool) or not isinstance(L, int) or L < 2:
        raise ValueError(f"L must be an int >= 2, got {L!r}")
    if not sigma_max > sigma_min > 0:
        raise ValueError(f"need sigma_max > sigma_min > 0, got {sigma_max}, {sigma_min}")
    logs = torch.linspace(math.log(sigma_max), math.log(sigma_min), L, dtype=torch.float64)  # (L,)
    sigmas = torch.exp(logs)
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas.to(torch.float32)


def max_pairwise_distance(x: torch.Tensor, chunk_size: int = 1024) -> float:
    """Technique 1: the largest Euclidean distance between two examples of ``x`` ``(N, ...)``.

    Computed in float64, ``chunk_size`` rows at a time, so 5,000 x 1024 fits in a few tens of MB.
    Returns 0.0 for a single example.
    """
    check_tensor(x, "x", floating=True)
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one example")
    dev = torch.device("cpu") if x.device.type == "mps" else x.device  # MPS has no float64
    flat = x.detach().reshape(x.shape[0], -1).to(device=dev, dtype=torch.float64)  # (N, D)
    sq = (flat ** 2).sum(dim=1)  # (N,)
    best = 0.0
    with torch.no_grad():
        for start in range(0, flat.shape[0], chunk_size):
            block = flat[start:start + chunk_size]  # (n, D)
            d2 = sq[start:start + chunk_size, None] + sq[None, :] - 2 * block @ flat.T  # (n, N)
            best = max(best, float(d2.max().clamp(min=0)))
    return math.sqrt(best)


def _technique2_criterion(gamma: float, D: int) -> float:
    a = math.sqrt(2 * D) * (gamma - 1)
    return float(ndtr(a + 3 * gamma) - ndtr(a - 3 * gamma)) - 0.5


def noise_ratio_gamma(D: int) -> float:
    """The ratio gamma > 1 of technique 2 for data dimension ``D``:
    ``Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) = 0.5``.

    Found with Brent's method on a bracket ``[1, hi]``; about 1.0710 for ``D = 1024``.
    A root exists only when ``sqrt(2D) > 3`` (``D >= 5``).
    """
    if isinstance(D, bool) or not isinstance(D, (int, np.integer)) or D < 5:
        raise ValueError(f"D must be an int >= 5 (the data dimension; smaller D has no root), got {D!r}")
    D = int(D)
    lo, hi = 1.0, 2.0
    while _technique2_criterion(hi, D) > 0:  # criterion is +0.497 at gamma = 1 and tends to -0.5
        hi *= 2
        if hi > 1e6:
            raise ValueError(f"no gamma found for D = {D}")
    return brentq(_technique2_criterion, lo, hi, args=(D,), xtol=1e-14, rtol=1e-14)


def num_noise_levels(sigma_max: float, sigma_min: float, D: int) -> int:
    """Technique 2: the smallest ``L`` whose geometric ratio ``(sigma_max / sigma_min) ** (1 / (L - 1))``
    is at most ``gamma = noise_ratio_gamma(D)``, i.e. ``L = 1 + ceil(ln(sigma_max / sigma_min) / ln gamma)``.
    """
    if not sigma_max > sigma_min > 0:
        raise ValueError(f"need sigma_max > sigma_min > 0, got {sigma_max}, {sigma_min}")
    gamma = noise_ratio_gamma(D)
    ratio = math.log(sigma_max / sigma_min) / math.log(gamma)
    L = 1 + math.ceil(ratio - 1e-9)
    return max(L, 2)


def _per_example_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma as a tensor broadcastable to x: a float, a 0-d tensor or a ``(B,)`` tensor."""
    if isinstance(sigma, torch.Tensor):
        if sigma.dim() == 0:
            return sigma.to(x)
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must be a float or a tensor of shape ({x.shape[0]},), "
                             f"got shape {tuple(sigma.shape)}")
        return sigma.to(x).reshape(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1, 1)
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return torch.tensor(sigma, dtype=x.dtype, device=x.device)


def score(net, x: torch.Tensor, sigma) -> torch.Tensor:
    """Technique 3: the noise-conditional score ``s(x, sigma) = net(x) / sigma``.

    ``net`` is unconditional (it sees only ``x``); ``sigma`` is a float or a ``(B,)`` tensor, one
    level per example. Returns a tensor of x's shape.
    """
    check_tensor(x, "x", floating=True)
    return net(x) / _per_example_sigma(sigma, x)


def dsm_loss(net, x: torch.Tensor, sigma, noise: torch.Tensor) -> torch.Tensor:
    """Denoising score matching with lambda(sigma) = sigma^2 (NCSN eq. 5-6):
    batch mean of ``0.5 * || sigma * score(net, x + sigma * noise, sigma) + noise ||^2``.

    ``x`` ``(B, ...)``; ``sigma`` a float or ``(B,)``; ``noise`` standard normal like ``x``.
    It is 0 for the exact score of a single data point and ``D / 2`` in expectation for a zero score.
    """
    check_tensor(x, "x", floating=True)
    check_tensor(noise, "noise", floating=True)
    if noise.shape != x.shape:
        raise ValueError(f"noise must have x's shape {tuple(x.shape)}, got {tuple(noise.shape)}")
    s = _per_example_sigma(sigma, x)
    residual = s * score(net, x + s * noise, sigma) + noise  # (B, C, H, W)
    return 0.5 * residual.pow(2).reshape(x.shape[0], -1).sum(dim=1).mean()


def langevin_step_size(eps: float, sigma: float, sigma_min: float) -> float:
    """The step size of level sigma: ``alpha = eps * sigma**2 / sigma_min**2`` (NCSN Algorithm 1)."""
    return float(eps) * float(sigma) ** 2 / float(sigma_min) ** 2


def annealed_langevin(net, x: torch.Tensor, sigmas, eps: float, n_steps_each: int, denoise: bool = True,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Annealed Langevin dynamics (NCSN Algorithm 1, update of the improved techniques paper).

    For each level ``sigma`` of ``sigmas`` (largest first), ``n_steps_each`` times
    ``x <- x + alpha * s(x, sigma) + sqrt(2 alpha) z`` with ``alpha = langevin_step_size(eps, sigma,
    sigmas[-1])`` and ``z ~ N(0, I)``; then, when ``denoise``, the noiseless step
    ``x <- x + sigma_min**2 * s(x, sigma_min)`` (Tweedie). ``x`` ``(B, ...)`` is the start
    (e.g. ``sigmas[0] * N(0, I)``); it is not modified. Returns the final x.
    """
    check_tensor(x, "x", floating=True)
    levels = _sigma_list(sigmas)
    sigma_min = levels[-1]
    B = x.shape[0]
    with torch.no_grad():
        for sigma in levels:
            alpha = langevin_step_size(eps, sigma, sigma_min)
            sigma_b = torch.full((B,), sigma, dtype=x.dtype, device=x.device)  # (B,)
            for _ in range(n_steps_each):
                z = randn_like(x, generator)
                x = x + alpha * score(net, x, sigma_b) + math.sqrt(2 * alpha) * z
        if denoise:
            sigma_b = torch.full((B,), sigma_min, dtype=x.dtype, device=x.device)  # (B,)
            x = x + sigma_min ** 2 * score(net, x, sigma_b)
    return x


def _technique4_ratio(u: np.ndarray, gamma: float, T: int) -> np.ndarray:
    """s_T^2 / sigma_i^2 of technique 4 as a function of ``u = eps / sigma_L^2`` in (0, 1).

    With ``sigma_L^2 - sigma_L^2 (1 - u)^2 = sigma_L^2 u (2 - u)`` the term
    ``2 eps / (sigma_L^2 - sigma_L^2 (1 - eps / sigma_L^2)^2)`` equals ``2 / (2 - u)``.
    """
    c = 2.0 / (2.0 - u)
    return (1.0 - u) ** (2 * T) * (gamma ** 2 - c) + c


def choose_step_size(sigmas, n_steps_each: int) -> float:
    """Technique 4: the eps in ``(0, sigma_L^2)`` whose variance ratio
    ``(1 - eps/sL^2)^(2T) (gamma^2 - 2eps/(sL^2 - sL^2 (1 - eps/sL^2)^2)) + 2eps/(sL^2 - sL^2 (1 - eps/sL^2)^2)``
    is closest to 1, with ``T = n_steps_each``, ``sL = sigmas[-1]``, ``gamma = sigmas[0] / sigmas[1]``.

    A dense logarithmic grid over ``eps / sL^2`` locates the best region, a bounded scalar minimisation
    of ``|ratio - 1|`` refines it. About 1.01e-5 for sigma_L = 0.01, T = 5 and gamma = 1.071.
    """
    levels = _sigma_list(sigmas)
    if len(levels) < 2:
        raise ValueError("choose_step_size needs at least two noise levels")
    if isinstance(n_steps_each, bool) or not isinstance(n_steps_each, int) or n_steps_each < 1:
        raise ValueError(f"n_steps_each must be a positive int, got {n_steps_each!r}")
    sL2 = levels[-1] ** 2
    gamma = levels[0] / levels[1]
    T = n_steps_each
    u = np.logspace(-12, math.log10(1 - 1e-12), 20001)
    obj = np.abs(_technique4_ratio(u, gamma, T) - 1.0)
    k = int(np.argmin(obj))
    lo, hi = u[max(k - 1, 0)], u[min(k + 1, len(u) - 1)]
    res = minimize_scalar(lambda v: abs(float(_technique4_ratio(np.float64(v), gamma, T)) - 1.0),
                          bounds=(lo, hi), method="bounded", options={"xatol": 1e-14 * max(hi, 1e-300)})
    best_u = float(res.x) if res.fun <= obj[k] else float(u[k])
    return best_u * sL2


def inpaint(net, x_known: torch.Tensor, mask: torch.Tensor, sigmas, eps: float, n_steps_each: int,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Inpainting with annealed Langevin dynamics (NCSN appendix B, Algorithm 2).

    ``mask`` (broadcastable to ``x_known``, 1 on known pixels, 0 elsewhere). The unknown pixels start
    from ``sigmas[0] * N(0, I)``. At each level ``sigma`` one ``z ~ N(0, I)`` gives
    ``y = x_known + sigma z``; after every Langevin step ``x <- x + alpha s + sqrt(2 alpha) z'`` the
    known pixels are replaced by ``y``. The returned tensor equals ``x_known`` exactly on the known
    pixels (no final denoising step).
    """
    check_tensor(x_known, "x_known", floating=True)
    if not isinstance(mask, torch.Tensor):
        raise TypeError("mask must be a tensor (1 on known pixels, 0 elsewhere)")
    try:
        m = torch.broadcast_to(mask.to(x_known), x_known.shape)  # (B, C, H, W)
    except RuntimeError as exc:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to x_known's "
                         f"shape {tuple(x_known.shape)}") from exc
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask must hold only 0 and 1 (1 on known pixels)")
    levels = _sigma_list(sigmas)
    sigma_min = levels[-1]
    B = x_known.shape[0]
    with torch.no_grad():
        x = levels[0] * randn_like(x_known, generator)
        x = m * x_known + (1 - m) * x
        for sigma in levels:
            alpha = langevin_step_size(eps, sigma, sigma_min)
            sigma_b = torch.full((B,), sigma, dtype=x.dtype, device=x.device)  # (B,)
            y = x_known + sigma * randn_like(x_known, generator)
            x = m * y + (1 - m) * x
            for _ in range(n_steps_each):
                z = randn_like(x, generator)
                x = x + alpha * score(net, x, sigma_b) + math.sqrt(2 * alpha) * z
                x = m * y + (1 - m) * x
        x = torch.where(m.bool(), x_known, x)
    return x

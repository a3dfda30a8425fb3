"""Hidden tests of notebook 06_score_matching (NCSN, Song & Ermon 2019, with the improved techniques
of Song & Ermon 2020).

One check per graded test cell; each takes the student's notebook globals. Conventions
(docs/conventions.md): ``sigmas[0]`` is the LARGEST noise level, ``sigmas[-1] = sigma_min``; the score is
``net(x) / sigma`` with an unconditional ``net(x)``; Langevin uses the improved paper's update
``x + alpha s + sqrt(2 alpha) z`` with ``alpha = eps sigma^2 / sigma_min^2``.

Oracles (docs/conventions.md, section 4):

* single-point data ``c``: the exact score is ``-(x - c) / sigma^2``; the DSM loss is 0 for it and
  ``0.5 ||noise||^2`` (``D / 2`` in expectation) for a zero score;
* one Langevin level from variance ``(gamma sigma_L)^2`` driven by that exact score ends at the variance
  that technique 4 predicts; the 2019 update ``(alpha / 2, sqrt(alpha))`` ends elsewhere;
* the final denoising step maps every sample of the single-point oracle to ``c`` exactly;
* a linear "network" ``net(x) = -k (x - c)`` turns annealed Langevin into a Gaussian recursion whose
  mean and variance are computed here exactly, for the correct algorithm and for each known mistake.

Random functions are tested through statistics over many values, never by replaying a generator, so
any order of random draws passes. Functions graded elsewhere (``score``, ``langevin_step_size``) are
replaced by correct ones while a later function is checked, so one mistake costs points only in its
own cell.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from scipy.special import ndtr
from torch import nn

from grading.hidden import (CheckFailed, as_array, as_scalar, as_tensor_array, call, close, describe_diff, expect,
                            fail_known_mistake, first_match, generator, student, swapped_in)

# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def _number(x, name: str) -> float:
    """A float, an int, a NumPy scalar or a one-element tensor/array as a Python float."""
    if isinstance(x, (bool, np.bool_)):
        raise CheckFailed(f"{name} should be a number, got a bool.")
    if isinstance(x, (np.floating, np.integer)):
        x = float(x)
    return as_scalar(x, name)


class _Net(nn.Module):
    """Base of the stub score networks: a module (``.eval()``, ``.to()``, ``.parameters()`` work)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))


class _LinearNet(_Net):
    """``net(x) = -k (x - c)``: the score at level sigma is ``-k (x - c) / sigma``.

    With ``k = 1 / sigma`` this is the exact score of data concentrated at ``c`` at that level.
    """

    def __init__(self, c: float, k: float):
        super().__init__()
        self.c, self.k = float(c), float(k)

    def forward(self, x):
        return -self.k * (x - self.c) + 0.0 * self.dummy


class _FunctionNet(_Net):
    """``net(x) = a * x + b * sin(3 x) + d`` (a fixed nonlinear map, elementwise)."""

    def __init__(self, a=0.7, b=0.3, d=0.2, trainable=False):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)), requires_grad=trainable)
        self.b, self.d = float(b), float(d)

    def forward(self, x):
        return self.a.to(x.dtype) * x + self.b * torch.sin(3 * x) + self.d


class _ZeroNet(_Net):
    def forward(self, x):
        return torch.zeros_like(x) + 0.0 * self.dummy


class _RowOracleNet(_Net):
    """Exact single-point score net for a batch whose rows carry different sigmas.

    Knows the noisy inputs ``x_tilde`` (B, ...) it will be called with and their ``sigma`` (B,); on a
    call it finds each input row among them (any batching and order works) and returns
    ``-(x - c) / sigma_row``, so that ``net(x) / sigma`` is the exact score ``-(x - c) / sigma^2``.
    """

    def __init__(self, x_tilde: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor):
        super().__init__()
        self.rows = x_tilde.detach().reshape(x_tilde.shape[0], -1).to(torch.float64)  # (B, D)
        self.sigma = sigma.detach().to(torch.float64)  # (B,)
        self.c = c.detach().to(torch.float64)

    def forward(self, x):
        flat = x.detach().reshape(x.shape[0], -1).to(torch.float64)  # (b, D)
        if flat.shape[1] != self.rows.shape[1]:
            raise ValueError(f"the test network expects images of shape {tuple(self.c.shape)}, "
                             f"got {tuple(x.shape[1:])}")
        idx = torch.cdist(flat, self.rows).argmin(dim=1)  # (b,)
        sig = self.sigma[idx].reshape(-1, *([1] * (x.dim() - 1)))  # (b, 1, 1, 1)
        out = -(x.to(torch.float64) - self.c) / sig
        return out.to(x.dtype) + 0.0 * self.dummy


class _Recorder(_Net):
    """Wraps a stub net and keeps a CPU copy of every input it is called with."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().to("cpu", torch.float64).clone())
        return self.inner(x)


def _good_score(net, x, sigma):
    """A lenient correct ``score``: ``net(x) / sigma`` for a float or any broadcastable tensor sigma."""
    out = net(x)
    if isinstance(sigma, torch.Tensor):
        s = sigma.to(out)
        if s.dim() == 1 and s.numel() == x.shape[0] and x.dim() > 1:
            s = s.reshape(-1, *([1] * (x.dim() - 1)))
        return out / s
    return out / float(sigma)


def _good_step(eps, sigma, sigma_min):
    """A correct ``langevin_step_size`` that keeps tensor inputs as tensors."""
    if any(isinstance(v, torch.Tensor) and v.numel() > 1 for v in (eps, sigma, sigma_min)):
        return eps * sigma ** 2 / sigma_min ** 2
    return float(eps) * float(sigma) ** 2 / float(sigma_min) ** 2


@contextmanager
def _correct_helpers(ns: dict, names=("score", "langevin_step_size")):
    """Temporarily replace the student's helpers graded in other cells by correct ones (only those the
    notebook defines)."""
    good = {"score": _good_score, "langevin_step_size": _good_step}
    with swapped_in(ns, {n: good[n] for n in names if n in ns}):
        yield


# ----------------------------------------------------------------------------------------------
# geometric_sigmas
# ----------------------------------------------------------------------------------------------
def check_geometric_sigmas(ns):
    geometric_sigmas = student(ns, "geometric_sigmas")
    for sigma_max, sigma_min, L in [(10.0, 0.01, 7), (1.0, 0.01, 10), (31.66, 0.01, 119), (3.0, 2.0, 2)]:
        out = call(geometric_sigmas, sigma_max, sigma_min, L,
                   what=f"geometric_sigmas({sigma_max}, {sigma_min}, {L})")
        got = as_tensor_array(out, f"geometric_sigmas({sigma_max}, {sigma_min}, {L})", shape=(L,))
        want = np.geomspace(sigma_max, sigma_min, L)
        if close(got, want, atol=1e-8, rtol=2e-5):
            continue
        hint = first_match(got, [
            ("the levels are in ascending order; the course indexes them as the improved paper does, "
             "sigmas[0] = sigma_max is the LARGEST (reverse the ladder).", want[::-1]),
            ("the levels are evenly spaced (linspace); they must be geometric: equally spaced in "
             "log(sigma), i.e. a constant ratio sigmas[i-1] / sigmas[i].", np.linspace(sigma_max, sigma_min, L)),
            ("the levels are evenly spaced AND ascending; use a geometric, descending ladder.",
             np.linspace(sigma_min, sigma_max, L)),
        ], lambda a, b: close(a, b, atol=1e-8, rtol=2e-5))
        fail_known_mistake(f"geometric_sigmas({sigma_max}, {sigma_min}, {L}) is wrong: {describe_diff(got, want)}. "
                           f"Expected {L} levels from {sigma_max} down to {sigma_min} with a constant ratio.", hint)


# ----------------------------------------------------------------------------------------------
# max_pairwise_distance
# ----------------------------------------------------------------------------------------------
def check_max_pairwise_distance(ns):
    max_pairwise_distance = student(ns, "max_pairwise_distance")
    # Oracle: a 3-4-5 right triangle (distances 3, 4 and 5) in 8 dimensions.
    tri = torch.zeros(3, 1, 2, 4)  # (N, C, H, W)
    tri[1, 0, 0, 0] = 3.0
    tri[2, 0, 1, 3] = 4.0
    # Random images: compare with a float64 computation of all pairs.
    g = generator(61)
    rnd = torch.rand(300, 1, 4, 5, generator=g) * 2 - 1  # (N, 1, 4, 5)
    rnd[17] += 0.9  # make one pair clearly the farthest
    rnd[230] -= 0.9
    flat = rnd.reshape(300, -1).to(torch.float64)
    d = torch.cdist(flat, flat)  # (N, N)
    want_rnd = float(d.max())
    iu = torch.triu_indices(300, 300, offset=1)
    mean_pairs = float(d[iu[0], iu[1]].mean())
    for x, want, mean_v, mean_all, label in [
            (tri, 5.0, 4.0, 24.0 / 9.0, "the 3-4-5 triangle"),
            (rnd, want_rnd, mean_pairs, float(d.mean()), "300 random images (1, 4, 5)")]:
        out = call(max_pairwise_distance, x.clone(), what=f"max_pairwise_distance on {label}")
        got = _number(out, "max_pairwise_distance(x)")
        if abs(got - want) <= 1e-4 * want + 1e-6:
            continue
        hint = first_match(got, [
            ("you returned the SQUARED distance; technique 1 uses the Euclidean distance itself "
             "(take the square root).", want ** 2),
            ("you returned the mean distance; technique 1 needs the LARGEST pairwise distance.", mean_v),
            ("you returned the mean over all N x N pairs; technique 1 needs the LARGEST distance.", mean_all),
        ], lambda a, b: abs(a - b) <= 1e-4 * abs(b) + 1e-6)
        fail_known_mistake(f"max_pairwise_distance on {label}: expected {want:.6g}, got {got:.6g}.", hint)


# ----------------------------------------------------------------------------------------------
# num_noise_levels
# ----------------------------------------------------------------------------------------------
def _gamma(D: int) -> float:
    """Technique 2's ratio by bisection (independent of the reference's root finder)."""
    f = lambda g: ndtr(math.sqrt(2 * D) * (g - 1) + 3 * g) - ndtr(math.sqrt(2 * D) * (g - 1) - 3 * g) - 0.5
    lo, hi = 1.0, 2.0
    while f(hi) > 0:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def check_num_noise_levels(ns):
    num_noise_levels = student(ns, "num_noise_levels")
    # Inputs chosen so that 1 + ln(sigma_max / sigma_min) / ln(gamma) is far from an integer.
    for sigma_max, sigma_min, D in [(31.66, 0.01, 1024), (40.0, 0.01, 1024), (10.0, 0.1, 784),
                                    (5.0, 0.5, 64), (300.0, 0.02, 100), (50.0, 0.01, 3072)]:
        out = call(num_noise_levels, sigma_max, sigma_min, D,
                   what=f"num_noise_levels({sigma_max}, {sigma_min}, {D})")
        got = _number(out, f"num_noise_levels({sigma_max}, {sigma_min}, {D})")
        gamma = _gamma(D)
        exact = 1 + math.log(sigma_max / sigma_min) / math.log(gamma)
        want = math.ceil(exact)
        if got == want:
            continue
        ratio_got = (sigma_max / sigma_min) ** (1 / (got - 1)) if got > 1 and got == int(got) else float("nan")
        hint = first_match(got, [
            ("you rounded down or to the nearest integer; technique 2 needs the SMALLEST L whose ratio "
             "is at most gamma (round up).", math.floor(exact)),
            ("off by one: L levels have L - 1 ratios, so (sigma_max / sigma_min) ** (1 / (L - 1)) <= gamma "
             "gives L = 1 + ceil(log(sigma_max / sigma_min) / log(gamma)).", want - 1),
            ("off by one: L levels have L - 1 ratios, so (sigma_max / sigma_min) ** (1 / (L - 1)) <= gamma "
             "gives L = 1 + ceil(log(sigma_max / sigma_min) / log(gamma)).", want + 1),
            ("the levels were counted with a LINEAR spacing of sigma; the ladder is geometric, so count "
             "ratios: L = 1 + ceil(log(sigma_max / sigma_min) / log(gamma)).",
             math.ceil((sigma_max - sigma_min) / ((gamma - 1) * sigma_min)) + 1),
            ("the levels were counted with a LINEAR spacing of sigma; the ladder is geometric, so count "
             "ratios: L = 1 + ceil(log(sigma_max / sigma_min) / log(gamma)).",
             math.ceil((sigma_max - sigma_min) / (gamma - 1)) + 1),
            ("gamma solves the equation with sqrt(D) instead of sqrt(2 D).",
             math.ceil(1 + math.log(sigma_max / sigma_min) / math.log(_gamma(max(D // 2, 5))))),
        ], lambda a, b: a == b)
        fail_known_mistake(
            f"num_noise_levels({sigma_max}, {sigma_min}, D={D}): expected L = {want} "
            f"(gamma = {gamma:.5f}, ratio of that ladder {(sigma_max / sigma_min) ** (1 / (want - 1)):.5f} "
            f"<= gamma, while L - 1 levels give a ratio above gamma), got {got:g}"
            + (f" (its ratio is {ratio_got:.5f})." if ratio_got == ratio_got else "."), hint)
        expect(float(got).is_integer(), f"num_noise_levels should return an int, got {got}.")


# ----------------------------------------------------------------------------------------------
# score
# ----------------------------------------------------------------------------------------------
def check_score(ns):
    score = student(ns, "score")
    g = generator(62)
    x = torch.randn(4, 1, 3, 3, generator=g)  # (B, C, H, W)
    sigma = torch.tensor([0.5, 1.0, 2.0, 4.0])  # (B,)
    net = _FunctionNet()
    out = call(score, net, x.clone(), sigma.clone(), what="score(net, x, sigma)")
    got = as_tensor_array(out, "score(net, x, sigma)", shape=tuple(x.shape))
    with torch.no_grad():
        raw = net(x).double().numpy()
    s = sigma.double().numpy().reshape(-1, 1, 1, 1)
    want = raw / s
    if not close(got, want, atol=1e-5, rtol=1e-4):
        hint = first_match(got, [
            ("the network output was not divided by sigma (technique 3: s(x, sigma) = net(x) / sigma).", raw),
            ("divided by sigma**2; technique 3 divides the unconditional output by sigma once.", raw / s ** 2),
            ("multiplied by sigma instead of dividing.", raw * s),
        ], lambda a, b: close(a, b, atol=1e-5, rtol=1e-4))
        fail_known_mistake(f"score(net, x, sigma) with sigma = {sigma.tolist()} (one level per example) is wrong: "
                           f"{describe_diff(got, want)}.", hint)
    # One level for the whole batch, as a Python float.
    out = call(score, net, x.clone(), 2.5, what="score(net, x, 2.5)")
    got = as_tensor_array(out, "score(net, x, 2.5)", shape=tuple(x.shape))
    expect(close(got, raw / 2.5, atol=1e-5, rtol=1e-4),
           f"score(net, x, sigma=2.5) (a float) is wrong: {describe_diff(got, raw / 2.5)}.",
           hint="accept a Python float sigma as well as a (B,) tensor (torch.as_tensor helps).")


# ----------------------------------------------------------------------------------------------
# dsm_loss
# ----------------------------------------------------------------------------------------------
def _loss_value(out, what):
    if type(out) is not torch.Tensor:
        raise CheckFailed(f"{what} should return a 0-d torch.Tensor (so that .backward() works), "
                          f"got {type(out).__module__}.{type(out).__qualname__}.")
    expect(out.dim() == 0, f"{what} should return a 0-d tensor (the batch mean), got shape {tuple(out.shape)}.",
           hint="sum the squared residual over each example's pixels, then average over the batch.")
    return float(as_array(out, what))


def check_dsm_loss(ns):
    dsm_loss = student(ns, "dsm_loss")
    g = generator(63)
    B, shape = 32, (1, 4, 4)
    D = int(np.prod(shape))
    c = torch.rand(shape, generator=g) * 2 - 1  # (1, 4, 4): the single data point
    x = c.expand(B, *shape).clone()  # (B, 1, 4, 4)
    sigma = torch.exp(torch.empty(B).uniform_(math.log(0.2), math.log(5.0), generator=g))  # (B,)
    noise = torch.randn(B, *shape, generator=g)  # (B, 1, 4, 4)
    nd = noise.double().reshape(B, -1)
    sd = sigma.double()
    sq = (nd ** 2).sum(1)  # (B,) ||noise||^2
    with _correct_helpers(ns, ("score",)):
        # 1. The exact score of single-point data gives a zero loss.
        x_tilde = x + sigma.reshape(-1, 1, 1, 1) * noise
        net = _RowOracleNet(x_tilde, sigma, c)
        got = _loss_value(call(dsm_loss, net, x.clone(), sigma.clone(), noise.clone(),
                               what="dsm_loss(net, x, sigma, noise)"), "dsm_loss(...)")
        if abs(got) > 1e-3:
            hint = first_match(got, [
                ("the target has the wrong sign: the score points from x_tilde back to x, "
                 "-(x_tilde - x) / sigma**2 = -noise / sigma, so the residual is sigma * score + noise.",
                 float((0.5 * 4 * sq).mean())),
                ("the target has the wrong sign (and the squared norm is averaged over pixels).",
                 float((0.5 * 4 * sq / D).mean())),
            ], lambda a, b: abs(a - b) <= 1e-3 * abs(b) + 1e-4)
            fail_known_mistake(
                f"With data at a single point c and the EXACT score -(x - c) / sigma**2 the loss must be 0; "
                f"got {got:.6g}.", hint)
        # 2. A zero score: 0.5 ||noise||^2 per example (D / 2 on average).
        want = float((0.5 * sq).mean())
        got = _loss_value(call(dsm_loss, _ZeroNet(), x.clone(), sigma.clone(), noise.clone(),
                               what="dsm_loss(zero net, x, sigma, noise)"), "dsm_loss(...)")
        if abs(got - want) > 1e-4 * want:
            hint = first_match(got, [
                ("the squared error is averaged over pixels; eq. 2 of the improved paper uses the squared "
                 "NORM: sum over each example's pixels, then the mean over the batch.", want / D),
                ("the sigma**2 weighting (lambda(sigma) = sigma**2) is missing: with the target -noise / sigma "
                 "the residual must be multiplied by sigma, i.e. use sigma * score + noise.",
                 float((0.5 * sq / sd ** 2).mean())),
                ("the sigma**2 weighting is missing and the norm averaged over pixels.",
                 float((0.5 * sq / sd ** 2).mean()) / D),
                ("the 0.5 factor is missing.", 2 * want),
            ], lambda a, b: abs(a - b) <= 1e-4 * abs(b))
            fail_known_mistake(
                f"For a network that outputs 0 the loss must be 0.5 * ||noise||^2 averaged over the batch "
                f"= {want:.6g} (about D / 2 = {D / 2}); got {got:.6g}.", hint)
        # 3. A generic network on generic data, compared with the formula in float64.
        xr = torch.rand(B, *shape, generator=g) * 2 - 1  # (B, 1, 4, 4)
        net = _FunctionNet(trainable=True)
        out = call(dsm_loss, net, xr.clone(), sigma.clone(), noise.clone(), what="dsm_loss(net, x, sigma, noise)")
        got = _loss_value(out, "dsm_loss(...)")
        with torch.no_grad():
            s4 = sd.reshape(-1, 1, 1, 1)
            xt = xr.double() + s4 * noise.double()
            raw = 0.7 * xt + 0.3 * torch.sin(3 * xt) + 0.2
            want = float((0.5 * ((raw + noise.double()) ** 2).reshape(B, -1).sum(1)).mean())
            wrong_sign = float((0.5 * ((raw - noise.double()) ** 2).reshape(B, -1).sum(1)).mean())
        if abs(got - want) > 2e-4 * want:
            hint = first_match(got, [("the target has the wrong sign (use sigma * score + noise).", wrong_sign)],
                               lambda a, b: abs(a - b) <= 2e-4 * abs(b))
            fail_known_mistake(f"dsm_loss on random data with a fixed network: expected {want:.6g}, got {got:.6g}. "
                               f"The noisy input is x + sigma * noise with one sigma per example.", hint)
        expect(out.requires_grad, "the loss carries no gradient: do not detach it or convert it to a number.")
        call(out.backward, what="loss.backward()")
        expect(net.a.grad is not None and float(net.a.grad.abs()) > 0,
               "back-propagating the loss gave no gradient to the network's parameters.")


# ----------------------------------------------------------------------------------------------
# langevin_step_size
# ----------------------------------------------------------------------------------------------
def check_langevin_step_size(ns):
    langevin_step_size = student(ns, "langevin_step_size")
    for eps, sigma, sigma_min in [(2e-5, 1.0, 0.01), (1e-5, 31.66, 0.01), (0.1, 0.3, 0.3), (0.02, 2.0, 0.5)]:
        got = _number(call(langevin_step_size, eps, sigma, sigma_min,
                           what=f"langevin_step_size({eps}, {sigma}, {sigma_min})"), "langevin_step_size(...)")
        want = eps * sigma ** 2 / sigma_min ** 2
        if abs(got - want) <= 1e-6 * abs(want):
            continue
        hint = first_match(got, [
            ("the step is proportional to sigma; NCSN Algorithm 1 scales it with the VARIANCE: "
             "alpha = eps * sigma**2 / sigma_min**2.", eps * sigma / sigma_min),
            ("the ratio is inverted: the largest levels take the LARGEST steps, alpha = eps * sigma**2 / sigma_min**2.",
             eps * sigma_min ** 2 / sigma ** 2),
            ("the step was halved (alpha / 2 belongs to the 2019 update rule, not to the step size).", want / 2),
            ("the square root of the ratio was used; the ratio of variances is (sigma / sigma_min)**2.",
             eps * math.sqrt(sigma / sigma_min)),
        ], lambda a, b: abs(a - b) <= 1e-6 * abs(b))
        fail_known_mistake(f"langevin_step_size(eps={eps}, sigma={sigma}, sigma_min={sigma_min}): expected {want:.6g}, "
                           f"got {got:.6g}.", hint)


# ----------------------------------------------------------------------------------------------
# annealed_langevin
# ----------------------------------------------------------------------------------------------
def _predict(sigmas, eps, T, k, m0, v0, variant="ok", denoise=True):
    """Mean offset from c and variance after annealed Langevin with net(x) = -k (x - c)."""
    sL, s1 = sigmas[-1], sigmas[0]
    order = sigmas[::-1] if variant == "ascending" else sigmas
    m, v = m0, v0
    for s in order:
        if variant == "sigma1":
            a = eps * s / sL
        elif variant == "norm_max":
            a = eps * s ** 2 / s1 ** 2
        else:
            a = eps * s ** 2 / sL ** 2
        drift, noise_var = (a / 2, a) if variant == "2019" else (a, 2 * a)
        r = 1 - drift * k / s
        for _ in range(T):
            m, v = r * m, r * r * v + noise_var
    if denoise:
        f = 1 - sL * k  # x + sL^2 * (-k (x - c) / sL)
        m, v = f * m, f * f * v
    return m, v


_VARIANT_HINTS = {
    "2019": "this is the 2019 update x + (alpha / 2) s + sqrt(alpha) z; the course (and technique 4) uses the "
            "improved paper's form x + alpha s + sqrt(2 alpha) z.",
    "sigma1": "the step size grows with sigma instead of sigma**2: alpha = eps * sigma**2 / sigma_min**2.",
    "norm_max": "the step size is normalised by the LARGEST sigma; it must be alpha = eps * sigma**2 / sigma_min**2 "
                "with sigma_min = sigmas[-1].",
    "ascending": "the levels were visited from the smallest to the largest; sigmas[0] is the largest and comes first.",
    "nodenoise": "the final denoising step is missing: after the last level, x + sigma_min**2 * s(x, sigma_min) "
                 "with no noise (when denoise=True).",
    "extradenoise": "a denoising step was applied although denoise=False.",
}


def _stats_match(m, v, want_m, want_v, tol_m, tol_v):
    return abs(m - want_m) <= tol_m and abs(v - want_v) <= tol_v * want_v


def check_annealed_langevin(ns):
    annealed_langevin = student(ns, "annealed_langevin")
    with _correct_helpers(ns):
        # 1. Final denoising step: one level, the exact single-point score -> every sample lands on c.
        sig = 0.7
        c = 0.25
        g = generator(64)
        x0 = c + sig * torch.randn(8, 1, 4, 4, generator=g)  # (B, 1, 4, 4)
        sigmas1 = torch.tensor([sig])
        out = call(annealed_langevin, _LinearNet(c, 1 / sig), x0.clone(), sigmas1, 0.05, 3, denoise=True,
                   generator=generator(1), what="annealed_langevin(..., denoise=True)")
        got = as_tensor_array(out, "annealed_langevin(...)", shape=tuple(x0.shape))
        if not close(got, np.full_like(got, c), atol=1e-4, rtol=0):
            spread = float(np.abs(got - c).max())
            raise CheckFailed(
                f"With data concentrated at c = {c} and its exact score, the final denoising step "
                f"x + sigma_min**2 * s(x, sigma_min) maps every sample to c exactly; your samples are up to "
                f"{spread:.3g} away from c.\nLikely cause: " + _VARIANT_HINTS["nodenoise"]
                + " (Or noise was added after it.)")
        out = call(annealed_langevin, _LinearNet(c, 1 / sig), x0.clone(), sigmas1, 0.05, 3, denoise=False,
                   generator=generator(1), what="annealed_langevin(..., denoise=False)")
        got = as_tensor_array(out, "annealed_langevin(..., denoise=False)", shape=tuple(x0.shape))
        expect(float(np.abs(got - c).max()) > 1e-2,
               "With denoise=False the samples must keep their last noise level; yours all equal c.",
               hint=_VARIANT_HINTS["extradenoise"])

        # 2. Technique 4's oracle: one level from variance (gamma sigma_L)^2 with the exact score.
        sL, gamma, T, eps = 0.1, 1.5, 5, 0.1 * 0.1 ** 2
        c = -0.4
        x0 = c + gamma * sL * torch.randn(4096, 1, 4, 4, generator=generator(65))  # (4096, 1, 4, 4)
        out = call(annealed_langevin, _LinearNet(c, 1 / sL), x0.clone(), torch.tensor([sL]), eps, T,
                   denoise=False, generator=generator(2), what="annealed_langevin(...)")
        got = as_tensor_array(out, "annealed_langevin(...)", shape=tuple(x0.shape))
        ratio = float(np.var(got - c) + np.mean(got - c) ** 2) / sL ** 2
        u = eps / sL ** 2
        want = (1 - u) ** (2 * T) * (gamma ** 2 - 2 / (2 - u)) + 2 / (2 - u)
        if abs(ratio - want) > 0.04 * want:
            _, v2019 = _predict([sL], eps, T, 1 / sL, 0.0, (gamma * sL) ** 2, "2019", denoise=False)
            hint = _VARIANT_HINTS["2019"] if abs(ratio - v2019 / sL ** 2) <= 0.04 * v2019 / sL ** 2 else None
            fail_known_mistake(
                f"One Langevin level (sigma = {sL}, T = {T}, eps = {eps:.3g}) started from variance "
                f"(gamma * sigma)**2 with gamma = {gamma}, driven by the exact single-point score, must end "
                f"at variance {want:.4f} * sigma**2 (technique 4's formula); yours ends at {ratio:.4f} * sigma**2.",
                hint)

        # 3. Several levels with a linear network: exact mean and variance of a Gaussian recursion.
        sig_list = [2.0, 1.0, 0.5]
        eps, T, k, c, m0, v0 = 0.02, 4, 1.0, 0.3, 3.0, 4.0
        x0 = c + m0 + math.sqrt(v0) * torch.randn(16384, 1, 4, 4, generator=generator(66))  # (16384, 1, 4, 4)
        for denoise in (False, True):
            out = call(annealed_langevin, _LinearNet(c, k), x0.clone(), torch.tensor(sig_list), eps, T,
                       denoise=denoise, generator=generator(3),
                       what=f"annealed_langevin(..., denoise={denoise})")
            got = as_tensor_array(out, "annealed_langevin(...)", shape=tuple(x0.shape)) - c
            m, v = float(got.mean()), float(got.var())
            want_m, want_v = _predict(sig_list, eps, T, k, m0, v0, "ok", denoise)
            if _stats_match(m, v, want_m, want_v, 0.02, 0.03):
                continue
            hint = None
            for name in ("2019", "sigma1", "norm_max", "ascending"):
                pm, pv = _predict(sig_list, eps, T, k, m0, v0, name, denoise)
                if _stats_match(m, v, pm, pv, 0.02, 0.03):
                    hint = _VARIANT_HINTS[name]
                    break
            if hint is None:
                pm, pv = _predict(sig_list, eps, T, k, m0, v0, "ok", not denoise)
                if _stats_match(m, v, pm, pv, 0.02, 0.03):
                    hint = _VARIANT_HINTS["nodenoise" if denoise else "extradenoise"]
            fail_known_mistake(
                f"annealed_langevin over sigmas {sig_list} (eps = {eps}, {T} steps each, denoise={denoise}) "
                f"with the linear network net(x) = -(x - c): the samples should end with mean offset "
                f"{want_m:.4f} and variance {want_v:.4f} from c; yours have {m:.4f} and {v:.4f}.", hint)

        # 4. The generator drives every draw: same seed -> same samples, other seed -> other samples.
        x0 = torch.randn(4, 1, 4, 4, generator=generator(67))  # (4, 1, 4, 4)
        runs = [call(annealed_langevin, _LinearNet(0.0, 1.0), x0.clone(), torch.tensor(sig_list), eps, 2,
                     generator=generator(seed), what="annealed_langevin(..., generator=...)") for seed in (5, 5, 6)]
        a, b, d = (as_tensor_array(r, "annealed_langevin(...)", shape=tuple(x0.shape)) for r in runs)
        expect(np.array_equal(a, b) and not np.array_equal(a, d),
               "annealed_langevin should draw all its noise from `generator`: two runs with generators seeded "
               "alike must give the same samples, and differently seeded ones different samples.",
               hint="pass generator=generator to torch.randn (torch.randn_like takes no generator).")


# ----------------------------------------------------------------------------------------------
# choose_step_size
# ----------------------------------------------------------------------------------------------
def _ratio(eps, sL, gamma, T):
    u = eps / sL ** 2
    return (1 - u) ** (2 * T) * (gamma ** 2 - 2 / (2 - u)) + 2 / (2 - u)


def _best_eps(sL, gamma, T):
    u = np.logspace(-12, math.log10(1 - 1e-12), 200001)
    obj = np.abs((1 - u) ** (2 * T) * (gamma ** 2 - 2 / (2 - u)) + 2 / (2 - u) - 1)
    i = int(np.argmin(obj))
    lo, hi = u[max(i - 1, 0)], u[min(i + 1, len(u) - 1)]
    for _ in range(200):  # golden-section refinement of the bracket
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        fa = abs(_ratio(a * sL ** 2, sL, gamma, T) - 1)
        fb = abs(_ratio(b * sL ** 2, sL, gamma, T) - 1)
        lo, hi = (lo, b) if fa < fb else (a, hi)
    return 0.5 * (lo + hi) * sL ** 2


def check_choose_step_size(ns):
    choose_step_size = student(ns, "choose_step_size")
    for gamma, sL, T, L in [(1.071, 0.01, 5, 4), (1.5, 0.1, 3, 3), (1.2, 1.0, 10, 5), (2.0, 0.3, 1, 2)]:
        sigmas = torch.tensor([sL * gamma ** (L - 1 - i) for i in range(L)], dtype=torch.float64)  # (L,)
        label = f"choose_step_size(sigmas from {float(sigmas[0]):.4g} to {sL} with ratio {gamma}, n_steps_each={T})"
        got = _number(call(choose_step_size, sigmas.clone(), T, what=label), label)
        want = _best_eps(sL, gamma, T)
        expect(0 < got < sL ** 2, f"{label}: eps must lie in (0, sigma_L**2) = (0, {sL ** 2:.4g}); got {got:.6g}.",
               hint="sigma_L is the SMALLEST level, sigmas[-1].")
        gap = abs(_ratio(got, sL, gamma, T) - 1) - abs(_ratio(want, sL, gamma, T) - 1)
        if abs(got / want - 1) <= 0.03 or gap <= 5e-5:
            continue
        candidates = [
            ("gamma is inverted: technique 4 uses gamma = sigmas[0] / sigmas[1] > 1.", _best_eps(sL, 1 / gamma, T)),
            ("sigma_L was taken from sigmas[0]; it is the smallest level, sigmas[-1].", None),
            ("T is not n_steps_each.", _best_eps(sL, gamma, 1) if T != 1 else None),
        ]
        hint = first_match(got, candidates, lambda a, b: abs(a / b - 1) <= 0.03)
        fail_known_mistake(
            f"{label}: expected eps close to {want:.6g} (variance ratio {_ratio(want, sL, gamma, T):.6f}), got "
            f"{got:.6g} (ratio {_ratio(got, sL, gamma, T):.6f}, further from 1).", hint)


# ----------------------------------------------------------------------------------------------
# inpaint
# ----------------------------------------------------------------------------------------------
def check_inpaint(ns):
    inpaint = student(ns, "inpaint")
    with _correct_helpers(ns):
        # 1. Known pixels: re-noised at every level, exactly x_known at the end (zero network).
        sig_list, T, eps = [3.0, 1.0, 0.3], 3, 0.01
        g = generator(68)
        x_known = torch.rand(64, 1, 8, 8, generator=g) * 2 - 1  # (B, 1, 8, 8)
        mask = torch.zeros(1, 1, 8, 8)
        mask[..., :4] = 1.0  # left half known
        mask_b = mask.expand_as(x_known).bool()
        net = _Recorder(_ZeroNet())
        out = call(inpaint, net, x_known.clone(), mask.clone(), torch.tensor(sig_list), eps, T,
                   generator=generator(4), what="inpaint(net, x_known, mask, sigmas, eps, n_steps_each)")
        got = as_tensor_array(out, "inpaint(...)", shape=tuple(x_known.shape))
        kn = got[mask_b.numpy()]
        want_kn = x_known.double()[mask_b].numpy()
        expect(close(kn, want_kn, atol=1e-5, rtol=0),
               f"The known pixels of the result must equal x_known exactly: {describe_diff(kn, want_kn)}.",
               hint="after the last level, put x_known back on the known pixels "
                    "(x = mask * x_known + (1 - mask) * x).")
        expect(len(net.inputs) > 0, "inpaint never called the network.")
        stds = [float((inp - x_known.double())[mask_b].std()) for inp in net.inputs]
        missing = [s for s in sig_list if sum(abs(v / s - 1) <= 0.15 for v in stds) < max(1, T - 1)]
        if missing:
            if all(v < 0.05 * sig_list[-1] for v in stds[1:] or stds):
                hint = ("the known pixels are not re-noised: they are x_known itself during sampling; at level sigma they must "
                        "be x_known + sigma * z (NCSN appendix B), so that they look like the noisy images "
                        "the network was trained on.")
            else:
                hint = ("the known pixels are not re-noised at EACH level: after every Langevin step at level "
                        "sigma_i replace them by x_known + sigma_i * z (NCSN appendix B).")
            seen = ", ".join(f"{v:.3g}" for v in stds[:: max(1, len(stds) // 8)])
            fail_known_mistake(
                f"While inpainting over sigmas {sig_list} ({T} steps each), the network should see the known "
                f"pixels as x_known + sigma_i * z, i.e. with noise of std sigma_i at level i; no call showed "
                f"noise of std {', '.join(str(s) for s in missing)} (stds seen: {seen} ...).", hint)

        # 2. Unknown pixels follow the improved Langevin update (linear network, start forgotten).
        sig_list, T, eps, k, c = [2.0, 1.0, 0.5], 20, 0.05, 1.0, 1.5
        x_known = torch.rand(4096, 1, 4, 4, generator=generator(69)) * 2 - 1  # (4096, 1, 4, 4)
        mask = torch.zeros(1, 1, 4, 4)
        mask[..., :2, :] = 1.0  # top half known
        unk = (~mask.expand_as(x_known).bool()).numpy()
        out = call(inpaint, _LinearNet(c, k), x_known.clone(), mask.clone(), torch.tensor(sig_list), eps, T,
                   generator=generator(5), what="inpaint(...)")
        got = as_tensor_array(out, "inpaint(...)", shape=tuple(x_known.shape))[unk] - c
        m, v = float(got.mean()), float(got.var())
        ok = [_predict(sig_list, eps, T, k, 0.0, 1.0, "ok", d) for d in (False, True)]
        if not any(_stats_match(m, v, pm, pv, 0.02, 0.04) for pm, pv in ok):
            hint = None
            for name in ("2019", "sigma1", "norm_max", "ascending"):
                if any(_stats_match(m, v, *_predict(sig_list, eps, T, k, 0.0, 1.0, name, d), 0.02, 0.04)
                       for d in (False, True)):
                    hint = _VARIANT_HINTS[name]
                    break
            fail_known_mistake(
                f"The unknown pixels should follow annealed Langevin dynamics (x + alpha s + sqrt(2 alpha) z, "
                f"alpha = eps sigma**2 / sigma_min**2): with net(x) = -(x - c) over sigmas {sig_list} they end "
                f"with variance {ok[0][1]:.4f} around c (or {ok[1][1]:.4f} after a final denoising step); "
                f"yours have mean offset {m:.4f} and variance {v:.4f}.", hint)

        # 3. Reproducible with the generator.
        x_known = torch.rand(2, 1, 4, 4, generator=generator(70)) * 2 - 1
        runs = [call(inpaint, _ZeroNet(), x_known.clone(), mask.clone(), torch.tensor([1.0, 0.5]), 0.01, 2,
                     generator=generator(seed), what="inpaint(..., generator=...)") for seed in (5, 5, 6)]
        a, b, d = (as_tensor_array(r, "inpaint(...)", shape=tuple(x_known.shape)) for r in runs)
        expect(np.array_equal(a, b) and not np.array_equal(a, d),
               "inpaint should draw all its noise from `generator`: two runs with generators seeded alike must "
               "give the same result, and differently seeded ones different results.",
               hint="pass generator=generator to every torch.randn.")


CHECKS = {
    "geometric_sigmas": check_geometric_sigmas,
    "max_pairwise_distance": check_max_pairwise_distance,
    "num_noise_levels": check_num_noise_levels,
    "score": check_score,
    "dsm_loss": check_dsm_loss,
    "langevin_step_size": check_langevin_step_size,
    "annealed_langevin": check_annealed_langevin,
    "choose_step_size": check_choose_step_size,
    "inpaint": check_inpaint,
}

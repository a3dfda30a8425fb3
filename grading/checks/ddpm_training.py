"""Hidden checks of notebook 02_ddpm_training (Ho et al. 2020, Algorithm 1).

One check per graded function: ``timestep_embedding``, ``ddpm_loss``, ``train_step``, ``evaluate``
and ``ema_update``. Each check runs the student's function on small fixed inputs with stub models
whose right answer is known exactly, and, when the answer is wrong, compares it with the known
mistaken variants to name the likely cause.

Random functions (``train_step``, ``evaluate``) are tested through relations, never by replaying a
generator: the ``t`` and ``x_t`` the model was called with must be consistent with *some* standard
normal noise, the returned loss must be the loss of that call, and the optimizer must have taken
exactly the step the loss's gradient asks for. Any order of random draws is accepted.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from grading.hidden import CheckFailed, as_array, call, close, expect, first_match, generator, max_abs_diff, student
from grading.reference import ddpm_training as ref
from grading.reference import forward_process as ref01

__all__ = ["CHECKS"]


# ----------------------------------------------------------------------------- small utilities

def _f64(x) -> np.ndarray:
    """A tensor (any dtype, detached) as a float64 numpy array."""
    return x.detach().cpu().to(torch.float64).numpy()


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _schedule(T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """A short linear schedule's alpha_bar (float32, (T,)) from the reference of notebook 01."""
    _, alpha_bar = ref01.alphas_from_betas(ref01.linear_beta_schedule(T, beta_start, beta_end))
    return alpha_bar


def _as_scalar_float(value, what: str) -> float:
    """The student's returned loss as a float; it must be a Python float as the spec says."""
    if isinstance(value, torch.Tensor):
        raise CheckFailed(
            f"{what} must return the loss as a Python float, got a torch.Tensor of shape "
            f"{tuple(value.shape)}. Likely cause: returning `loss` instead of `loss.item()`.")
    if isinstance(value, bool) or not isinstance(value, (float, np.floating)):
        raise CheckFailed(f"{what} must return the loss as a Python float, got {type(value).__name__}. "
                          "Return `loss.item()`.")
    value = float(value)
    if not math.isfinite(value):
        raise CheckFailed(f"{what} returned {value}, expected a finite loss.")
    return value


# ----------------------------------------------------------------------------- timestep_embedding

def _embedding_variants(t: torch.Tensor, dim: int, max_period: float) -> dict:
    """Known mistaken versions of the sinusoidal embedding, as float64 arrays (B, dim)."""
    t64 = t.to(torch.float64)
    half = dim // 2
    i = torch.arange(half, dtype=torch.float64)

    def sincos(freqs):
        angles = t64[:, None] * freqs[None, :]  # (B, dim/2)
        return torch.sin(angles), torch.cos(angles)

    good = max_period ** (-2 * i / dim)
    s, c = sincos(good)
    B = t.shape[0]
    variants = {
        "the halves are swapped: cos first, then sin (the spec wants sin(t f_i) in the first half)":
            torch.cat([c, s], 1),
        "sin and cos are interleaved (sin, cos, sin, cos, ...) instead of all sines then all cosines":
            torch.stack([s, c], -1).reshape(B, dim),
        "cos and sin are interleaved (cos, sin, cos, sin, ...) instead of all sines then all cosines":
            torch.stack([c, s], -1).reshape(B, dim),
        "the frequencies are max_period ** (-i / dim) instead of max_period ** (-2 * i / dim)":
            torch.cat(sincos(max_period ** (-i / dim)), 1),
        "the frequencies are max_period ** (-i / (dim / 2 - 1)) instead of max_period ** (-2 * i / dim)":
            torch.cat(sincos(max_period ** (-i / max(half - 1, 1))), 1),
        "the sign of the exponent is flipped: max_period ** (+2 * i / dim)":
            torch.cat(sincos(max_period ** (2 * i / dim)), 1),
    }
    if max_period != 10000.0:
        variants["max_period is ignored (10000 is used whatever max_period says)"] = \
            torch.cat(sincos(10000.0 ** (-2 * i / dim)), 1)
    return {k: (v.numpy() if v is not None else None) for k, v in variants.items()}


def _check_one_embedding(fn, t: torch.Tensor, dim: int, max_period: float | None) -> None:
    args = (t, dim) if max_period is None else (t, dim, max_period)
    mp = 10000.0 if max_period is None else max_period
    shown = f"timestep_embedding(t={t.tolist()}, dim={dim}" + ("" if max_period is None else f", max_period={mp}") + ")"
    out = call(fn, *args, what=shown)
    expect(isinstance(out, torch.Tensor),
           f"{shown} must return a torch.Tensor (the U-Net adds it to its feature maps), "
           f"got {type(out).__name__}.",
           hint="convert a numpy result with torch.from_numpy(...).float()")
    expect(out.is_floating_point(), f"{shown} must return a floating-point tensor, got dtype {out.dtype}.")
    expect(tuple(out.shape) == (t.shape[0], dim),
           f"{shown} must return shape ({t.shape[0]}, {dim}): one row per time, one column per "
           f"dimension; got {tuple(out.shape)}.",
           hint="concatenate the sin half and the cos half along dim=1 (torch.cat([...], dim=1))")
    got = as_array(out, "timestep_embedding(...)")
    want = ref.timestep_embedding(t, dim, mp).to(torch.float64).numpy()
    if close(got, want, atol=2e-3, rtol=0):
        return
    cause = first_match(got, _embedding_variants(t, dim, mp), atol=2e-3, rtol=0)
    row = int(np.argmax(np.max(np.abs(got - want), axis=1)))
    detail = (f"For t = {int(t[row])} expected {np.round(want[row], 4).tolist()}, "
              f"got {np.round(got[row], 4).tolist()} (largest difference {_fmt(max_abs_diff(got, want))}).")
    if cause is None:
        if t[0] == 0 and not close(got[0], np.r_[np.zeros(dim // 2), np.ones(dim // 2)], 1e-3, rtol=0):
            cause = "at t = 0 the embedding must be (0, ..., 0, 1, ..., 1): sin(0) = 0 then cos(0) = 1"
        else:
            cause = ("columns i < dim/2 must hold sin(t * f_i) and columns dim/2 + i must hold "
                     "cos(t * f_i), with f_i = max_period ** (-2 * i / dim)")
    raise CheckFailed(f"{shown} is wrong. {detail} Likely cause: {cause}.")


def check_timestep_embedding(ns) -> None:
    fn = student(ns, "timestep_embedding")
    # t = 0 pins the layout (all sines are 0, all cosines 1); large t tests the frequencies.
    _check_one_embedding(fn, torch.tensor([0, 1, 2, 10, 100, 999]), 16, None)
    _check_one_embedding(fn, torch.tensor([0, 3, 50, 7]), 8, 100.0)
    _check_one_embedding(fn, torch.tensor([5]), 2, None)  # dim = 2: one sine, one cosine
    big = torch.arange(0, 1000, 37)  # (28,) a batch as the U-Net passes it
    _check_one_embedding(fn, big, 64, None)


# ----------------------------------------------------------------------------- stub models

class _Recorder(nn.Module):
    """Wraps a noise model ``inner(x, t)`` and records every call: inputs, output, mode, grad mode."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls: list[dict] = []

    def forward(self, x, t, *rest):
        if rest:
            raise CheckFailed(f"the model of this notebook is unconditional: call it as model(x_t, t), "
                              f"got {2 + len(rest)} arguments.")
        if not isinstance(x, torch.Tensor) or not isinstance(t, torch.Tensor):
            raise CheckFailed(f"model(x_t, t) must get two tensors, got {type(x).__name__} and {type(t).__name__}.")
        out = self.inner(x, t)
        self.calls.append({"x": x.detach().clone(), "t": t.detach().clone(), "out": out.detach().clone(),
                           "training": self.training, "grad": torch.is_grad_enabled()})
        return out


class _AffineNoiseNet(nn.Module):
    """A tiny trainable noise model: ``w * x_t + b + s * t / T`` (parameters w, b, s)."""

    def __init__(self, T: int, w: float = 0.7, b: float = 0.1, s: float = -0.4):
        super().__init__()
        self.T = T
        self.w = nn.Parameter(torch.tensor(w))
        self.b = nn.Parameter(torch.tensor(b))
        self.s = nn.Parameter(torch.tensor(s))

    def forward(self, x, t):
        tt = (t.to(x.dtype) / self.T).reshape(-1, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)
        return self.w * x + self.b + self.s * tt


# ----------------------------------------------------------------------------- ddpm_loss

def _ddpm_loss_variants(x_0, t, noise, alpha_bar, x_seen, out) -> dict:
    x_0, noise, out = _f64(x_0), _f64(noise), _f64(out)
    ab = _f64(alpha_bar)[t.numpy()].reshape(-1, *([1] * (x_0.ndim - 1)))
    x0_hat = (_f64(x_seen) - np.sqrt(1 - ab) * out) / np.sqrt(ab)
    sq = (noise - out) ** 2
    B = x_0.shape[0]
    return {
        "the loss compares the prediction with x_0 instead of with the noise (Algorithm 1 line 5 compares noises)":
            np.mean((x_0 - out) ** 2),
        "the loss compares x_0 with the x_0 estimate rebuilt from the predicted noise; Algorithm 1 compares the noises":
            np.mean((x_0 - x0_hat) ** 2),
        "an L1 loss |eps - eps_theta| instead of the squared error": np.mean(np.abs(noise - out)),
        "a sum of squared errors instead of their mean": np.sum(sq),
        "a sum over the pixels and a mean over the batch; the spec asks for the mean over every element":
            np.sum(sq) / B,
        "the root of the mean squared error instead of the mean squared error": math.sqrt(np.mean(sq)),
        "half the mean squared error (a factor 0.5 the spec does not have)": 0.5 * np.mean(sq),
        "the prediction was compared with x_t instead of the noise": np.mean((_f64(x_seen) - out) ** 2),
    }


def check_ddpm_loss(ns) -> None:
    fn = student(ns, "ddpm_loss")
    g = generator(2)
    T = 50
    alpha_bar = _schedule(T, 1e-3, 0.2)  # (50,) falls to about 0.006
    x_0 = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1  # (B, C, H, W) in [-1, 1]
    noise = torch.randn(6, 1, 4, 4, generator=g)  # (B, C, H, W)
    t = torch.tensor([0, 3, 10, 25, 40, 49])  # (B,) long
    model = _Recorder(_AffineNoiseNet(T))
    shown = "ddpm_loss(model, x_0, t, noise, alpha_bar)"
    loss = call(fn, model, x_0.clone(), t.clone(), noise.clone(), alpha_bar.clone(), what=shown)

    expect(isinstance(loss, torch.Tensor),
           f"{shown} must return a 0-d torch.Tensor (so that loss.backward() works), got {type(loss).__name__}.",
           hint="return the tensor, not loss.item()")
    expect(loss.dim() == 0,
           f"{shown} must return a 0-d tensor (a single number), got shape {tuple(loss.shape)}.",
           hint="take the mean over every element: ((noise - eps_pred) ** 2).mean() or F.mse_loss(eps_pred, noise)")
    expect(len(model.calls) >= 1, f"{shown} never called model(x_t, t).")
    first = model.calls[0]
    x_t = ref01.q_sample(x_0, t, alpha_bar, noise)  # (B, C, H, W)
    x_seen = first["x"]
    if tuple(x_seen.shape) != tuple(x_0.shape):
        raise CheckFailed(f"{shown} called the model with x of shape {tuple(x_seen.shape)}, expected x_t "
                          f"of shape {tuple(x_0.shape)}.")
    if not close(_f64(x_seen), _f64(x_t), atol=1e-5, rtol=1e-4):
        if close(_f64(x_seen), _f64(x_0), 1e-6, rtol=0):
            cause = "the model was fed x_0 instead of the noisy x_t = q_sample(x_0, t, alpha_bar, noise)"
        elif close(_f64(x_seen), _f64(noise), 1e-6, rtol=0):
            cause = "the model was fed the noise instead of x_t"
        else:
            cause = ("x_t must be sqrt(alpha_bar[t]) * x_0 + sqrt(1 - alpha_bar[t]) * noise, one t per example "
                     "(check the square roots and the reshape of alpha_bar[t] to (B, 1, 1, 1))")
        raise CheckFailed(f"{shown} called the model with the wrong input (largest difference from x_t "
                          f"{_fmt(max_abs_diff(_f64(x_seen), _f64(x_t)))}). Likely cause: {cause}.")
    expect(tuple(first["t"].shape) == (6,) and close(_f64(first["t"]), _f64(t), 0, rtol=0),
           f"{shown} must call model(x_t, t) with the given t {t.tolist()}, got {first['t'].tolist()}.")

    got = float(loss.detach().to(torch.float64))
    out = first["out"]
    want = float(np.mean((_f64(noise) - _f64(out)) ** 2))
    if not math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-7):
        variants = _ddpm_loss_variants(x_0, t, noise, alpha_bar, x_seen, out)
        cause = first_match(got, variants, atol=1e-7, rtol=1e-4) or \
            "the loss must be the mean over every element of (noise - model(x_t, t)) ** 2"
        raise CheckFailed(f"{shown} returned {_fmt(got)}, expected the mean squared error on the noise "
                          f"{_fmt(want)}. Likely cause: {cause}.")

    expect(loss.requires_grad,
           f"{shown} returned a loss that carries no gradient, so training could not learn anything.",
           hint="do not compute it under torch.no_grad() and do not .detach() it")
    call(loss.backward, what="loss.backward() on the loss returned by ddpm_loss")
    fresh = _AffineNoiseNet(T)
    want_loss = ((noise - fresh(x_t, t)) ** 2).mean()
    want_loss.backward()
    for name, p in model.inner.named_parameters():
        q = dict(fresh.named_parameters())[name]
        expect(p.grad is not None,
               f"after loss.backward() the model parameter {name!r} has no gradient: the loss returned by "
               f"{shown} is not connected to the model's output.")
        expect(close(_f64(p.grad), _f64(q.grad), atol=1e-6, rtol=1e-4),
               f"the gradient of the returned loss with respect to the model parameter {name!r} is "
               f"{_fmt(float(p.grad))}, expected {_fmt(float(q.grad))}.",
               hint="the loss must be computed from the model output of this call, with the mean squared error")


# ----------------------------------------------------------------------------- train_step

class _CountingSGD(torch.optim.SGD):
    """Plain SGD (no momentum) that counts its step() and zero_grad() calls."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.steps = 0
        self.zeroed = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)

    def zero_grad(self, set_to_none: bool = True):
        self.zeroed += 1
        return super().zero_grad(set_to_none)


def _implied_noise(x_t, x_0, t, alpha_bar) -> np.ndarray:
    """The noise eps with x_t = sqrt(ab[t]) x_0 + sqrt(1 - ab[t]) eps, per example (float64)."""
    ab = _f64(alpha_bar)[t.numpy()].reshape(-1, *([1] * (x_0.dim() - 1)))
    return (_f64(x_t) - np.sqrt(ab) * _f64(x_0)) / np.sqrt(1 - ab)


def _check_times(t_seen: torch.Tensor, B: int, T: int, where: str) -> None:
    expect(tuple(t_seen.shape) == (B,),
           f"{where}: the model got t of shape {tuple(t_seen.shape)}, expected ({B},): one time per example.",
           hint="t = torch.randint(0, T, (B,), generator=generator)")
    expect(not t_seen.is_floating_point() and t_seen.dtype != torch.bool,
           f"{where}: the model got t of dtype {t_seen.dtype}, expected torch.long (integer steps).")
    tv = t_seen.to(torch.int64)
    lo, hi = int(tv.min()), int(tv.max())
    expect(lo >= 0 and hi <= T - 1,
           f"{where}: t must lie in [0, {T - 1}] (0-based steps, T = {T}), got values in [{lo}, {hi}]. "
           f"Likely cause: T not taken from the alpha_bar argument (T = alpha_bar.shape[0]), e.g. a global "
           f"T or beta used instead.")
    expect(int(tv.unique().numel()) > 1,
           f"{where}: every example of the batch got the same t = {lo}. Likely cause: one t drawn for the "
           f"whole batch; Algorithm 1 draws t independently per example, torch.randint(0, T, (B,)).")


def _call_short_schedule(fn, T: int, *args, what: str):
    """``call`` for checks that pass a short alpha_bar (T steps): an index error gets the likely cause."""
    try:
        return call(fn, *args, what=what)
    except CheckFailed as exc:
        if "IndexError" in str(exc) and "out of bounds" in str(exc):
            raise CheckFailed(f"{exc} (alpha_bar here has T = {T} steps). Likely cause: T not taken from the "
                              f"alpha_bar argument (T = alpha_bar.shape[0]), e.g. a global T or beta used "
                              f"instead.") from None
        raise


def check_train_step(ns) -> None:
    fn = student(ns, "train_step")
    T, B, lr = 20, 512, 0.05
    alpha_bar = _schedule(T, 0.01, 0.3)  # (20,) from 0.99 to about 0.03
    x_0 = torch.rand(B, 1, 2, 2, generator=generator(3)) * 2 - 1  # (B, C, H, W) in [-1, 1]
    garbage = 123.0
    model = _Recorder(_AffineNoiseNet(T))
    before = {k: v.detach().clone() for k, v in model.inner.named_parameters()}
    opt = _CountingSGD(model.parameters(), lr=lr)
    for p in model.parameters():  # stale gradients from an earlier step: train_step must clear them
        p.grad = torch.full_like(p, garbage)
    shown = "train_step(model, optimizer, x_0, alpha_bar, generator)"
    ret = _call_short_schedule(fn, T, model, opt, x_0.clone(), alpha_bar.clone(), generator(11), what=shown)
    ret = _as_scalar_float(ret, shown)

    expect(len(model.calls) >= 1, f"{shown} never called model(x_t, t).")
    expect(len(model.calls) == 1,
           f"{shown} called the model {len(model.calls)} times; one forward pass per step is expected.")
    rec = model.calls[0]
    _check_times(rec["t"], B, T, shown)
    t_seen = rec["t"].to(torch.int64)
    counts = torch.bincount(t_seen, minlength=T)
    missing = [i for i in (0, T - 1) if counts[i] == 0]
    expect(not missing,
           f"{shown}: over {B} examples with T = {T}, t never took the value(s) {missing}. Likely cause: "
           f"t drawn from the wrong range (torch.randint(1, T) or torch.randint(0, T - 1)); it must be uniform "
           f"over all T steps 0, ..., T-1: torch.randint(0, T, (B,)).")
    expect(int(counts.min()) >= 5 and int(counts.max()) <= 70,
           f"{shown}: t is not uniform over 0..{T - 1}: counts per step range from {int(counts.min())} to "
           f"{int(counts.max())} for an expected {B / T:.1f} each.")

    x_seen = rec["x"]
    expect(tuple(x_seen.shape) == tuple(x_0.shape),
           f"{shown} called the model with x of shape {tuple(x_seen.shape)}, expected x_t of shape {tuple(x_0.shape)}.")
    if close(_f64(x_seen), _f64(x_0), 1e-6, rtol=0):
        raise CheckFailed(f"{shown} fed the model the clean x_0. Likely cause: the model must get the noisy "
                          f"x_t = q_sample(x_0, t, alpha_bar, noise).")
    eps = _implied_noise(x_seen, x_0, t_seen, alpha_bar)  # (B, C, H, W)
    mean, var = float(eps.mean()), float(eps.var())
    expect(abs(mean) < 0.15 and 0.8 < var < 1.2,
           f"{shown}: the model's input x_t is not sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) eps with a "
           f"standard normal eps: the eps it implies has mean {mean:.3f} and variance {var:.3f} "
           f"(expected about 0 and 1).",
           hint="noise = torch.randn(x_0.shape, generator=generator); x_t = q_sample(x_0, t, alpha_bar, noise); "
                "check that alpha_bar is indexed by the same t the model gets")

    want = float(np.mean((eps - _f64(rec["out"])) ** 2))
    if not math.isclose(ret, want, rel_tol=1e-3, abs_tol=1e-6):
        raise CheckFailed(f"{shown} returned {_fmt(ret)}, but the mean squared error between the noise in x_t "
                          f"and the model's prediction of this step is {_fmt(want)}. Likely cause: the returned "
                          f"value is not this step's ddpm_loss (e.g. a loss on other draws, or on x_0).")

    expect(opt.steps >= 1,
           f"{shown} never called optimizer.step(): the parameters did not learn anything.")
    expect(opt.steps == 1, f"{shown} called optimizer.step() {opt.steps} times; once per train_step is expected.")
    # the expected update of plain SGD: p <- p - lr * dL/dp at the old parameters
    fresh = _AffineNoiseNet(T)
    with torch.no_grad():
        for k, p in fresh.named_parameters():
            p.copy_(before[k])
    eps_t = torch.from_numpy(eps).to(torch.float32)
    loss = ((eps_t - fresh(x_seen, t_seen)) ** 2).mean()
    loss.backward()
    after = dict(model.inner.named_parameters())
    names = [k for k, _ in fresh.named_parameters()]
    grads = np.array([float(p.grad) for _, p in fresh.named_parameters()])  # (3,)
    moved = np.array([float(before[k] - after[k].detach()) for k in names])  # (3,) = lr * gradient used
    # gradient clipping by norm scales the whole gradient by one factor in (0, 1]: accepted too
    ratio = float(moved @ grads) / float(lr * grads @ grads)
    if not (close(moved, lr * grads, atol=1e-6, rtol=2e-3)
            or (0 < ratio <= 1 + 1e-3 and close(moved, ratio * lr * grads, atol=1e-6, rtol=2e-3))):
        i = int(np.argmax(np.abs(moved - lr * grads)))
        if close(moved, lr * (grads + garbage), atol=1e-6, rtol=2e-3) or np.abs(moved).max() > lr * garbage / 2:
            cause = ("the gradients were not zeroed before loss.backward(), so the stale gradients of the "
                     "previous step were added in: call optimizer.zero_grad() first")
        elif np.abs(moved).max() < 1e-9:
            cause = ("the parameters did not move: optimizer.step() must come after loss.backward(), "
                     "and the gradients must not be zeroed between backward() and step()")
        else:
            cause = "the gradient is not that of this step's mean squared error on the noise"
        raise CheckFailed(f"{shown}: with plain SGD (lr = {lr}) the parameter {names[i]!r} should have moved by "
                          f"{_fmt(-lr * grads[i])}, it moved by {_fmt(-moved[i])}. Likely cause: {cause}.")

    # every random draw must come from the given generator: same seed, same draws
    runs = []
    for _ in range(2):
        m = _Recorder(_AffineNoiseNet(T))
        call(fn, m, _CountingSGD(m.parameters(), lr=lr), x_0.clone(), alpha_bar.clone(), generator=generator(5),
             what=shown)
        runs.append(m.calls[0])
    expect(torch.equal(runs[0]["t"], runs[1]["t"]) and torch.equal(runs[0]["x"], runs[1]["x"]),
           f"{shown}: two calls with generators seeded alike drew different t or noise. Likely cause: a draw "
           f"ignores `generator` (e.g. torch.randint(..., generator=generator) and "
           f"torch.randn(x_0.shape, generator=generator) must both get it).")
    # and without one it still works (global RNG)
    m = _Recorder(_AffineNoiseNet(T))
    _as_scalar_float(call(fn, m, _CountingSGD(m.parameters(), lr=lr), x_0.clone(), alpha_bar.clone(),
                          what="train_step(model, optimizer, x_0, alpha_bar) without a generator"),
                     "train_step without a generator")


# ----------------------------------------------------------------------------- evaluate

class _ExactDeltaNet(nn.Module):
    """The exact noise predictor for data fixed at ``c``, plus an offset that depends on the batch size
    and, in train mode, a further offset (as dropout would change a network's output).

    In eval mode a batch of size B then has the loss ``offset[B] ** 2`` exactly, whatever t and noise
    were drawn; in train mode ``(offset[B] + train_shift) ** 2``.
    """

    def __init__(self, c: torch.Tensor, alpha_bar: torch.Tensor, offsets: dict, train_shift: float):
        super().__init__()
        self.register_buffer("c", c)
        self.register_buffer("alpha_bar", alpha_bar.to(torch.float64))
        self.scale = nn.Parameter(torch.tensor(1.0))  # outputs require grad when grad mode is on
        self.offsets = offsets
        self.train_shift = train_shift

    def forward(self, x, t):
        ab = self.alpha_bar[t.long()].reshape(-1, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)
        eps = (x.to(torch.float64) - ab.sqrt() * self.c.to(torch.float64)) / (1 - ab).sqrt()
        shift = self.offsets.get(x.shape[0], 0.0) + (self.train_shift if self.training else 0.0)
        return self.scale * (eps + shift).to(x.dtype)


def check_evaluate(ns) -> None:
    fn = student(ns, "evaluate")
    T = 20
    alpha_bar = _schedule(T, 0.01, 0.3)
    c = torch.rand(1, 1, 4, 4, generator=generator(4)) * 2 - 1  # (1, C, H, W): every image equals c
    sizes = [40, 40, 40, 5]
    offsets = {40: 0.1, 5: 0.6}
    shift = 0.3
    inner = _ExactDeltaNet(c, alpha_bar, offsets, shift)
    model = _Recorder(inner)
    model.train()  # as the training loop leaves it

    def batches():  # a one-shot iterable of (x_0, y) pairs, like helpers.data.batches
        for k, n in enumerate(sizes):
            yield c.expand(n, -1, -1, -1).clone(), torch.full((n,), k, dtype=torch.long)

    shown = "evaluate(model, batches, alpha_bar, generator) with batches of sizes 40, 40, 40, 5"
    ret = _as_scalar_float(_call_short_schedule(fn, T, model, batches(), alpha_bar.clone(), generator(6),
                                                what=shown), shown)

    seen = [r["x"].shape[0] for r in model.calls]
    expect(sum(seen) == sum(sizes),
           f"{shown}: the model saw {sum(seen)} examples in batches of {seen}, expected all {sum(sizes)} "
           f"examples ({sizes}).", hint="loop over every (x_0, y) pair of `batches`")
    expect(all(not r["grad"] for r in model.calls),
           f"{shown} ran the model with gradient tracking on, so it builds an autograd graph it never uses "
           f"(slow, and memory hungry). Likely cause: no torch.no_grad().",
           hint="wrap the loop in `with torch.no_grad():`")
    expect(all(not r["training"] for r in model.calls),
           f"{shown} ran the model in train mode. Likely cause: no model.eval() before the loop "
           f"(dropout and normalization layers behave differently in train mode).")
    for r in model.calls:
        if r["x"].shape[0] == 40:
            _check_times(r["t"], 40, T, shown)

    weights = np.array(sizes, dtype=np.float64)
    per_batch = np.array([offsets[n] ** 2 for n in sizes])
    want = float(np.sum(weights * per_batch) / weights.sum())
    if math.isclose(ret, want, rel_tol=1e-3, abs_tol=1e-6):
        return
    variants = {
        "the batch means were averaged with equal weights; the last batch is smaller, so weight each "
        "batch's mean loss by its number of examples": float(per_batch.mean()),
        "only the last batch's loss was returned": float(per_batch[-1]),
        "the batch losses were summed, not averaged": float(per_batch.sum()),
        "the sum of batch means was divided by the number of examples": float(per_batch.sum() / weights.sum()),
        "the model was run in train mode": float(np.sum(weights * np.array(
            [(offsets[n] + shift) ** 2 for n in sizes])) / weights.sum()),
        "the summed loss was divided by the number of batches": float(np.sum(weights * per_batch) / len(sizes)),
    }
    cause = first_match(ret, variants, atol=1e-6, rtol=1e-3) or \
        "the result must be the mean loss per example: sum over batches of (batch size x batch mean loss), " \
        "divided by the number of examples"
    raise CheckFailed(f"{shown} returned {_fmt(ret)}, expected {_fmt(want)} (a model whose loss is "
                      f"{offsets[40] ** 2:g} on the batches of 40 and {offsets[5] ** 2:g} on the batch of 5). "
                      f"Likely cause: {cause}.")


# ----------------------------------------------------------------------------- ema_update

def _small_net(seed: int) -> nn.Module:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    g = generator(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        net[1].running_mean.copy_(torch.randn(4, generator=g))
        net[1].running_var.copy_(torch.rand(4, generator=g) + 0.5)
        net[1].num_batches_tracked.fill_(seed)
    return net


def _ema_once(fn, decay):
    model, ema = _small_net(1), _small_net(2)
    m0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    e0 = {k: v.detach().clone() for k, v in ema.state_dict().items()}
    if decay is None:
        shown = "ema_update(ema_model, model)"
        call(fn, ema, model, what=shown)
    else:
        shown = f"ema_update(ema_model, model, decay={decay})"
        call(fn, ema, model, decay=decay, what=shown)
    return shown, model, ema, m0, e0


def _check_ema(fn, decay) -> None:
    d = 0.999 if decay is None else decay
    shown, model, ema, m0, e0 = _ema_once(fn, decay)
    for k, v in model.state_dict().items():
        expect(torch.equal(v, m0[k]),
               f"{shown} changed `model` ({k}); it must only update `ema_model`. Likely cause: the two "
               f"arguments are used the other way round.")
    for k, p in ema.named_parameters():
        got = _f64(p)
        e, m = _f64(e0[k]), _f64(m0[k])
        want = d * e + (1 - d) * m
        if close(got, want, atol=1e-6, rtol=1e-5):
            continue
        variants = {
            "decay and 1 - decay are swapped: the update was (1 - decay) * ema + decay * param": (1 - d) * e + d * m,
            "the parameters were copied (decay ignored)": m,
            "the EMA parameters did not change": e,
        }
        cause = first_match(got, variants, atol=1e-6, rtol=1e-5)
        if cause is None:
            # which decay would explain the result? got = d' * e + (1 - d') * m
            implied = np.median((got - m) / np.where(np.abs(e - m) > 1e-3, e - m, np.nan))
            if np.isfinite(implied) and close(got, implied * e + (1 - implied) * m, atol=1e-5, rtol=1e-4):
                cause = (f"the update used the decay {implied:.6g} instead of {d}"
                         + (" (the default decay must be 0.999)" if decay is None else ""))
            else:
                cause = "every EMA parameter must become decay * ema + (1 - decay) * param"
        raise CheckFailed(f"{shown}: the EMA parameter {k!r} is off by up to {_fmt(max_abs_diff(got, want))} "
                          f"from decay * ema + (1 - decay) * param. Likely cause: {cause}.")
    for k, b in ema.named_buffers():
        if not b.is_floating_point():
            continue
        want = _f64(m0[k])
        averaged = d * _f64(e0[k]) + (1 - d) * want  # averaging buffers like parameters is accepted too
        expect(close(_f64(b), want, atol=1e-6, rtol=0) or close(_f64(b), averaged, atol=1e-6, rtol=1e-5),
               f"{shown}: the floating-point buffer {k!r} (a BatchNorm running statistic) must be copied from "
               f"`model`, it is off by {_fmt(max_abs_diff(_f64(b), want))}.",
               hint="for b_ema, b in zip(ema_model.buffers(), model.buffers()): b_ema.copy_(b)")
    for k, p in ema.named_parameters():
        expect(p.grad_fn is None,
               f"{shown}: the EMA parameter {k!r} is now the result of an autograd graph; update it in place "
               f"under torch.no_grad().")


def check_ema_update(ns) -> None:
    fn = student(ns, "ema_update")
    _check_ema(fn, 0.9)
    _check_ema(fn, 0.75)
    _check_ema(fn, None)  # the default decay = 0.999


CHECKS = {
    "timestep_embedding": check_timestep_embedding,
    "ddpm_loss": check_ddpm_loss,
    "train_step": check_train_step,
    "evaluate": check_evaluate,
    "ema_update": check_ema_update,
}

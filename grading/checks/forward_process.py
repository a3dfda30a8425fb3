"""Hidden tests of notebook 01_forward_process (DDPM forward process, Ho et al. 2020).

One check per graded test cell; each takes the student's notebook globals. The checks compare with
``grading.reference.forward_process`` and with mathematical oracles, on small inputs (a few seconds
at most on one CPU core). When an output is wrong, it is compared with the outputs of known mistaken
variants (computed here) so that the message can name the likely cause.

Conventions (docs/conventions.md): code index ``t`` in ``{0, ..., T-1}`` is the paper's step ``t + 1``,
``alpha_bar[t] = prod(alpha[:t+1])``, a batch of times is a ``torch.long`` tensor ``(B,)``.

Random functions are tested through relations (the returned noise and t reproduce x_t) and
statistics over many draws, never by replaying a generator, so any order of random draws passes.

Every check is trusted (``grading.verdict``): before its ``yield`` it only asks for calls, whose
inputs are drawn from the grading run's secret seed (``p.gen``); the kernel runs them and sends
back plain data; after the ``yield`` the check judges in the grader's own process.
"""
from __future__ import annotations

import math
import numpy as np
import torch

from grading.hidden import (INDEXING_ERROR_HINTS, CheckFailed, as_array, as_tensor_array, close, describe_diff,
                            expect, match_variants)
from grading.records import TensorRecord
from grading.reference import forward_process as ref
from grading.discipline import (expect_dtype_kept, expect_global_rng_untouched, expect_no_globals, expect_stream,
                                trap_globals)
from grading.verdict import Outcome, Probe, expect_unchanged, trusted

# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------
_F64 = np.float64


_HINTS = INDEXING_ERROR_HINTS + (
    ("is not defined", "the function uses a name that is none of its arguments (a notebook global such as "
                       "alpha_bar or T?): compute it from the arguments (T = beta.shape[0])."),)


def ask(p: Probe, fn: str, *args, what=None, **kwargs) -> Outcome:
    """``p.call`` with a likely cause added for the indexing errors students meet most."""
    return p.call(fn, *args, what=what, error_hints=_HINTS, **kwargs)


def _per_example(coef: np.ndarray, like: np.ndarray) -> np.ndarray:
    """(B,) -> (B, 1, ..., 1) for broadcasting against ``like``."""
    return coef.reshape(-1, *([1] * (like.ndim - 1)))


def _random_beta(T: int, g: torch.Generator, low: float = 0.02, high: float = 0.3) -> torch.Tensor:
    """A float32 schedule whose neighbouring values differ a lot (so off-by-one errors show)."""
    return (low + (high - low) * torch.rand(T, generator=g, dtype=torch.float64)).float()  # (T,)


def _notebook_globals(T: int = 1000) -> dict:
    """Wrong values for the notebook's globals of the same names as the arguments (the course's
    T = 1000 linear schedule, other images, noise and times), bound while a trap call runs."""
    beta = ref.linear_beta_schedule(T)
    alpha, alpha_bar = ref.alphas_from_betas(beta)
    return {"T": T, "beta": beta, "alpha": alpha, "alpha_bar": alpha_bar,
            "x_0": torch.zeros(2, 1, 2, 2), "noise": torch.zeros(2, 1, 2, 2), "t": torch.zeros(2, dtype=torch.long)}


_GLOBAL_NAMES = ("T", "beta", "alpha", "alpha_bar")


def _consistent_globals(beta: torch.Tensor) -> dict:
    """The same globals bound to values that agree with a call's own schedule ``beta``."""
    alpha, alpha_bar = ref.alphas_from_betas(beta)
    return {"T": int(beta.shape[0]), "beta": beta, "alpha": alpha, "alpha_bar": alpha_bar}


def _inputs(shape: tuple, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] and standard normal noise, float32, of ``shape``."""
    x = torch.rand(shape, generator=g) * 2 - 1  # (B, C, H, W)
    noise = torch.randn(shape, generator=g)  # (B, C, H, W)
    return x, noise


# ----------------------------------------------------------------------------------------------
# linear_beta_schedule
# ----------------------------------------------------------------------------------------------
@trusted
def check_linear_beta_schedule(p: Probe):
    cases = [{}, {"T": 10, "beta_start": 1e-3, "beta_end": 0.05}, {"T": 2}, {"T": 37},
             {"T": 200, "beta_start": 1e-3, "beta_end": 0.04}]
    outs = [ask(p, "linear_beta_schedule", **kwargs,
                what=f"linear_beta_schedule({', '.join(f'{k}={v}' for k, v in kwargs.items())})")
            for kwargs in cases]
    yield
    for kwargs, out in zip(cases, outs):
        args = dict({"T": 1000, "beta_start": 1e-4, "beta_end": 0.02}, **kwargs)
        T = args["T"]
        want = np.linspace(args["beta_start"], args["beta_end"], T, dtype=_F64)
        label = out.what
        got = as_tensor_array(out.value, label, shape=(T,))
        expect_dtype_kept(out.value, "torch.float32", label, source="the course's schedules",
                          rule="where the schedule is a float32 tensor (T,)")
        variants = [
            ("the schedule stops one step short of beta_end (torch.arange(beta_start, beta_end, "
             "step) or torch.linspace(beta_start, beta_end, T + 1)[:-1]): it must reach beta_end "
             "at t = T - 1; torch.linspace(beta_start, beta_end, T) includes both ends.",
             np.linspace(args["beta_start"], args["beta_end"], T + 1)[:-1]),
            ("torch.linspace(beta_start, beta_end, T + 1) with the first value dropped: the "
             "schedule must start at beta_start at t = 0.",
             np.linspace(args["beta_start"], args["beta_end"], T + 1)[1:]),
        ]
        if kwargs:
            variants.append(("the arguments are ignored (the defaults are hard-coded); use T, "
                             "beta_start and beta_end.", np.linspace(1e-4, 0.02, 1000)))
            variants.append(("beta_start and beta_end are hard-coded (1e-4 and 0.02); use the arguments.",
                             np.linspace(1e-4, 0.02, T)))
        match_variants(got, want, variants, label, atol=1e-7, rtol=1e-5,
                       context=f" (expected {T} values from {args['beta_start']} to {args['beta_end']})")


# ----------------------------------------------------------------------------------------------
# cosine_beta_schedule
# ----------------------------------------------------------------------------------------------
def _cosine_variant(T: int, s: float, max_beta: float | None) -> np.ndarray:
    steps = np.arange(T + 1, dtype=_F64)
    f = np.cos(((steps / T) + s) / (1 + s) * math.pi / 2) ** 2  # (T + 1,)
    beta = 1 - f[1:] / f[:-1]  # (T,)
    return beta if max_beta is None else np.minimum(beta, max_beta)


@trusted
def check_cosine_beta_schedule(p: Probe):
    cases = [({}, 1000, 0.008, 0.999), ({"T": 50}, 50, 0.008, 0.999),
             ({"T": 20, "s": 0.1, "max_beta": 0.5}, 20, 0.1, 0.5), ({"T": 37}, 37, 0.008, 0.999),
             ({"T": 200}, 200, 0.008, 0.999)]
    outs = [ask(p, "cosine_beta_schedule", **kwargs,
                what=f"cosine_beta_schedule({', '.join(f'{k}={v}' for k, v in kwargs.items())})")
            for kwargs, *_ in cases]
    yield
    for (kwargs, T, s, max_beta), out in zip(cases, outs):
        label = out.what
        if isinstance(out.value, TensorRecord) and out.value.shape == (1000,) and T != 1000:
            raise CheckFailed(f"{label} returned 1000 values, expected {T}.\nLikely cause: T is hard-coded "
                              f"(or a notebook global): use the argument T.")
        got = as_tensor_array(out.value, label, shape=(T,))
        expect_dtype_kept(out.value, "torch.float32", label, source="the course's schedules",
                          rule="where the schedule is a float32 tensor (T,) (compute in float64 if you like, "
                               "then return .to(torch.float32))")
        want = ref.cosine_beta_schedule(T, s, max_beta).double().numpy()
        steps = np.arange(T + 1, dtype=_F64)
        f = np.cos(((steps / T) + s) / (1 + s) * math.pi / 2) ** 2
        variants = [
            ("the offset s is missing: f(t) = cos(((t / T) + s) / (1 + s) * pi / 2) ** 2 "
             "(Nichol & Dhariwal 2021, eq. 17); without s the first betas are far too small.",
             _cosine_variant(T, 0.0, max_beta)),
            (f"beta is not clipped at max_beta = {max_beta}: the last step gives beta = 1 "
             "(f(T) = 0), a singularity; use min(1 - f(i + 1) / f(i), max_beta).",
             _cosine_variant(T, s, None)),
            ("the offset s and the clip are both missing.", _cosine_variant(T, 0.0, None)),
            ("the clip value is hard-coded; use the max_beta argument.",
             _cosine_variant(T, s, 0.999)),
            ("the offset is hard-coded; use the s argument.", _cosine_variant(T, 0.008, max_beta)),
            ("T is hard-coded (1000) inside f(t) = cos(((t / T) + s) / (1 + s) * pi / 2) ** 2; use the argument T.",
             None if T == 1000 else np.minimum(1 - np.cos(((steps[1:] / 1000) + s) / (1 + s) * math.pi / 2) ** 2
                                               / np.cos(((steps[:-1] / 1000) + s) / (1 + s) * math.pi / 2) ** 2,
                                               max_beta)),
            ("this is alpha_bar = f(t) / f(0) (for t = 1..T), not beta; "
             "beta[i] = 1 - alpha_bar(i + 1) / alpha_bar(i).", f[1:] / f[0]),
            ("this is alpha_bar = f(t) / f(0) (for t = 0..T-1), not beta; "
             "beta[i] = 1 - alpha_bar(i + 1) / alpha_bar(i).", f[:-1] / f[0]),
            ("this is 1 - beta (alpha), not beta.", 1 - want),
            ("the ratio is inverted: beta[i] = 1 - f(i + 1) / f(i), not 1 - f(i) / f(i + 1).",
             np.minimum(1 - f[:-1] / np.maximum(f[1:], 1e-300), max_beta)),
        ]
        variants.append(("beta is also clipped from below (e.g. at 1e-4); eq. 17 clips only from "
                         "above: beta[i] = min(1 - f(i + 1) / f(i), max_beta).",
                         np.clip(_cosine_variant(T, s, None), 1e-4, max_beta)))
        # The clip first: it changes only the last step, by less than the value tolerance below.
        top = float(got.max())
        if top > max_beta + 1e-6:
            if abs(top - 0.999) < 1e-5 or abs(top - 0.9999) < 1e-6:
                cause = (f"the clip value is hard-coded ({top:.4g}); use the max_beta argument.")
            else:
                cause = ("beta is not clipped: the last step gives beta = 1 (f(T) = 0), a "
                         "singularity; use min(1 - f(i + 1) / f(i), max_beta).")
            raise CheckFailed(f"{label}: every beta must be at most max_beta = {max_beta}, got a "
                              f"largest value of {top:.6g} (at step {int(got.argmax())}).\n"
                              f"Likely cause: {cause}")
        # rtol 5e-3: a float32 computation of 1 - f(i + 1) / f(i) loses ~0.2 % on the first betas.
        match_variants(got, want, variants, label, atol=1e-6, rtol=5e-3,
                       context=f" (T={T}, s={s}, max_beta={max_beta})")
        expect(float(got.min()) > 0,
               f"{label}: every beta must be positive, got a smallest value of {got.min():.3g}.")


# ----------------------------------------------------------------------------------------------
# alphas_from_betas
# ----------------------------------------------------------------------------------------------
@trusted
def check_alphas_from_betas(p: Probe):
    cases = [("a random schedule of 12 steps", _random_beta(12, p.gen(1))),
             ("the linear schedule of 1000 steps", ref.linear_beta_schedule(1000)),
             ("a float64 schedule of 5 steps", _random_beta(5, p.gen(2)).double()),
             ("a random schedule of 37 steps", _random_beta(37, p.gen(6)))]
    # the notebook's globals beta, alpha, alpha_bar and T bound to the 1000-step schedule meanwhile
    outs = [ask(p, "alphas_from_betas", beta, what=f"alphas_from_betas({label})", bind=_notebook_globals())
            for label, beta in cases]
    yield
    for (label, beta), call_out in zip(cases, outs):
        T = beta.shape[0]
        out = call_out.value
        expect_unchanged(call_out, {"beta": beta}, "alphas_from_betas")
        expect(isinstance(out, (tuple, list)) and len(out) == 2,
               f"alphas_from_betas should return a pair (alpha, alpha_bar), got "
               f"{type(out).__name__}" + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
               + ".")
        if T != 1000 and any(isinstance(o, TensorRecord) and o.shape == (1000,) for o in out):
            raise CheckFailed(f"alphas_from_betas({label}) returned 1000 values, expected {T}.\nLikely cause: "
                              f"the notebook's global beta (or T) is used instead of the argument beta.")
        alpha = as_tensor_array(out[0], "alpha (the first output)", shape=(T,))
        alpha_bar = as_tensor_array(out[1], "alpha_bar (the second output)", shape=(T,))
        dt = str(beta.dtype)
        expect_dtype_kept(out[0], dt, f"alphas_from_betas({label}): alpha", source="beta",
                          rule=f"for a {dt.removeprefix('torch.')} beta; both outputs keep beta's dtype")
        expect_dtype_kept(out[1], dt, f"alphas_from_betas({label}): alpha_bar", source="beta",
                          rule=f"for a {dt.removeprefix('torch.')} beta; both outputs keep beta's dtype")
        b = beta.double().numpy()
        a = 1 - b
        want_ab = np.cumprod(a)
        match_variants(alpha, a, [("the outputs are swapped: return (alpha, alpha_bar).", want_ab),
                                  ("alpha = beta; alpha is 1 - beta.", b),
                                  ("alpha = sqrt(1 - beta); alpha is 1 - beta (no square root).", np.sqrt(a))],
                       "alpha", atol=1e-6, rtol=1e-5, context=f" for {label}")
        exclusive = np.concatenate([[1.0], want_ab[:-1]])
        variants = [
            ("torch.cumsum instead of torch.cumprod: alpha_bar is a product.", np.cumsum(a)),
            ("the product is taken only up to t - 1 (an exclusive product starting at 1); "
             "alpha_bar[t] = alpha[0] * ... * alpha[t] includes alpha[t].", exclusive),
            ("the product runs one step too far: alpha_bar[t] = alpha[0] * ... * alpha[t], "
             "not up to alpha[t + 1].", np.cumprod(a)[1:].tolist() + [np.nan]),
            ("the cumulative product of beta instead of alpha = 1 - beta.", np.cumprod(b)),
            ("1 - cumprod(alpha) instead of cumprod(alpha).", 1 - want_ab),
            ("the outputs are swapped: return (alpha, alpha_bar).", a),
            ("sqrt(alpha_bar) instead of alpha_bar; take square roots only where they are used.",
             np.sqrt(want_ab)),
        ]
        variants = [(h, np.asarray(v, dtype=_F64)) for h, v in variants]
        match_variants(alpha_bar, want_ab, variants, "alpha_bar", atol=1e-7, rtol=1e-4,
                       context=f" for {label} (alpha_bar[t] = prod(alpha[:t+1]))")


# ----------------------------------------------------------------------------------------------
# forward_step
# ----------------------------------------------------------------------------------------------
def _forward_variants(x: np.ndarray, b_t: np.ndarray, beta: np.ndarray, t: np.ndarray,
                      noise: np.ndarray) -> list[tuple[str, np.ndarray]]:
    def step(bb, mean_fn=np.sqrt, std_fn=np.sqrt):
        return _per_example(mean_fn(1 - bb), x) * x + _per_example(std_fn(bb), x) * noise

    T = beta.shape[0]
    out = [
        ("beta instead of sqrt(beta) as the noise standard deviation: q(x_t | x_{t-1}) has "
         "variance beta_t, so the noise is scaled by sqrt(beta_t) (DDPM eq. 2).",
         step(b_t, std_fn=lambda v: v)),
        ("(1 - beta) instead of sqrt(1 - beta) as the mean coefficient (DDPM eq. 2).",
         step(b_t, mean_fn=lambda v: v)),
        ("both coefficients lack their square roots: x_t = sqrt(1 - beta_t) x_{t-1} + "
         "sqrt(beta_t) noise.", step(b_t, mean_fn=lambda v: v, std_fn=lambda v: v)),
        ("the two coefficients are swapped: the image is scaled by sqrt(1 - beta_t) and the "
         "noise by sqrt(beta_t).",
         _per_example(np.sqrt(b_t), x) * x + _per_example(np.sqrt(1 - b_t), x) * noise),
        ("one time t[0] is used for the whole batch; each example has its own t "
         "(index with the whole tensor t and reshape to (B, 1, 1, 1)).",
         step(np.full_like(b_t, beta[t[0]]))),
    ]
    if t.min() >= 1:
        out.append(("off by one in t: beta[t - 1] is used; code index t uses beta[t] "
                    "(0-based: beta[t] is the paper's beta_{t+1}).", step(beta[t - 1])))
    if t.max() <= T - 2:
        out.append(("off by one in t: beta[t + 1] is used; code index t uses beta[t].",
                    step(beta[t + 1])))
    if x.shape[-1] == x.shape[0]:
        out.append(("the (B,) coefficients broadcast along the last image axis instead of the "
                    "batch axis: reshape them to (B, 1, 1, 1).",
                    np.sqrt(1 - b_t) * x + np.sqrt(b_t) * noise))
    return out


@trusted
def check_forward_step(p: Probe):
    cases = [
        ("a random schedule, interior times", _random_beta(20, p.gen(3)), [3, 17, 8, 11, 5],
         (5, 1, 3, 4)),
        ("the linear schedule, times 0 and T - 1 included", ref.linear_beta_schedule(1000),
         [0, 999, 500, 1, 998, 250], (6, 1, 4, 6)),
        ("a batch as wide as the image", _random_beta(10, p.gen(4)), [0, 9, 4, 2], (4, 1, 3, 4)),
    ]
    inputs, outs = [], []
    for i, (label, beta, times, shape) in enumerate(cases):
        t = torch.tensor(times, dtype=torch.long)  # (B,)
        x_prev, noise = _inputs(shape, p.gen(10 + i))
        inputs.append((t, x_prev, noise))
        outs.append(ask(p, "forward_step", x_prev, t, beta, noise,
                        what=f"forward_step(x_prev, t, beta, noise) with {label}"))
    # a 37-step schedule while the notebook's globals hold the 1000-step one (then consistent ones)
    beta37 = _random_beta(37, p.gen(7))
    t37 = torch.tensor([0, 36, 20, 5], dtype=torch.long)
    x37, n37 = _inputs((4, 1, 2, 3), p.gen(8))
    trap = trap_globals(p, "forward_step", (x37, t37, beta37, n37), {}, _notebook_globals(),
                        _consistent_globals(beta37), "forward_step(x_prev, t, beta, noise) with a 37-step beta",
                        error_hints=INDEXING_ERROR_HINTS)
    yield
    expect_no_globals(*trap, _GLOBAL_NAMES, "forward_step", " (a 37-step beta)")
    for (label, beta, times, shape), (t, x_prev, noise), call_out in zip(cases, inputs, outs):
        out = call_out.value
        expect_unchanged(call_out, {"x_prev": x_prev, "t": t, "beta": beta, "noise": noise}, "forward_step")
        got = as_tensor_array(out, "x_t returned by forward_step", shape=shape)
        expect_dtype_kept(out, "torch.float32", f"forward_step with {label}", source="x_prev")
        want = ref.forward_step(x_prev, t, beta, noise).double().numpy()
        b = beta.double().numpy()
        tn = t.numpy()
        variants = _forward_variants(x_prev.double().numpy(), b[tn], b, tn, noise.double().numpy())
        match_variants(got, want, variants, "forward_step", atol=1e-5, rtol=1e-4,
                       context=f" with {label} (t = {times}); expected sqrt(1 - beta[t]) x_prev + "
                       f"sqrt(beta[t]) noise per example")


# ----------------------------------------------------------------------------------------------
# q_sample
# ----------------------------------------------------------------------------------------------
def _q_variants(x0: np.ndarray, ab: np.ndarray, t: np.ndarray, noise: np.ndarray
                ) -> list[tuple[str, np.ndarray]]:
    def qs(abt, mean_fn=np.sqrt, std_fn=lambda v: np.sqrt(1 - v)):
        return _per_example(mean_fn(abt), x0) * x0 + _per_example(std_fn(abt), x0) * noise

    T = ab.shape[0]
    ab_t = ab[t]
    out = [
        ("alpha_bar instead of its square root scales x_0: x_t = sqrt(alpha_bar_t) x_0 + "
         "sqrt(1 - alpha_bar_t) noise (DDPM eq. 4).", qs(ab_t, mean_fn=lambda v: v)),
        ("1 - alpha_bar instead of its square root scales the noise: the variance of "
         "q(x_t | x_0) is 1 - alpha_bar_t, so the noise is scaled by sqrt(1 - alpha_bar_t).",
         qs(ab_t, std_fn=lambda v: 1 - v)),
        ("neither coefficient has its square root (alpha_bar and 1 - alpha_bar): DDPM eq. 4 "
         "uses sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t).",
         qs(ab_t, mean_fn=lambda v: v, std_fn=lambda v: 1 - v)),
        ("the two coefficients are swapped: x_0 is scaled by sqrt(alpha_bar_t) and the noise by "
         "sqrt(1 - alpha_bar_t).", qs(ab_t, mean_fn=lambda v: np.sqrt(1 - v), std_fn=np.sqrt)),
        ("one time t[0] is used for the whole batch; each example has its own t "
         "(index alpha_bar with the whole tensor t and reshape to (B, 1, 1, 1)).",
         qs(np.full_like(ab_t, ab[t[0]]))),
        ("one time t[-1] is used for the whole batch; each example has its own t.",
         qs(np.full_like(ab_t, ab[t[-1]]))),
        ("sqrt(1 - alpha_bar_t) noise is missing: x_t needs the noise term.",
         _per_example(np.sqrt(ab_t), x0) * x0),
    ]
    if t.min() >= 1:
        out.append(("off by one in t: alpha_bar[t - 1] is used; code index t uses alpha_bar[t] "
                    "(0-based: alpha_bar[t] is the paper's alpha_bar_{t+1}).", qs(ab[t - 1])))
    if t.max() <= T - 2:
        out.append(("off by one in t: alpha_bar[t + 1] is used; code index t uses alpha_bar[t].",
                    qs(ab[t + 1])))
    if x0.shape[-1] == x0.shape[0]:
        out.append(("the (B,) coefficients broadcast along the last image axis instead of the "
                    "batch axis: reshape them to (B, 1, 1, 1).",
                    np.sqrt(ab_t) * x0 + np.sqrt(1 - ab_t) * noise))
    return out


@trusted
def check_q_sample(p: Probe):
    random_ab = torch.cumprod(1 - _random_beta(20, p.gen(5)), 0)  # (20,)
    linear_ab = torch.cumprod(1 - ref.linear_beta_schedule(1000), 0)  # (1000,)
    cases = [
        ("a random schedule, interior times", random_ab, [3, 17, 8, 11, 5], (5, 1, 3, 4)),
        ("the linear schedule, times 0 and T - 1 included", linear_ab,
         [0, 999, 500, 1, 998, 100], (6, 1, 4, 6)),
        ("a batch as wide as the image", random_ab, [0, 19, 7, 2], (4, 1, 3, 4)),
    ]
    inputs, outs = [], []
    for i, (label, ab, times, shape) in enumerate(cases):
        t = torch.tensor(times, dtype=torch.long)  # (B,)
        x_0, noise = _inputs(shape, p.gen(20 + i))
        inputs.append((t, x_0, noise))
        outs.append(ask(p, "q_sample", x_0, t, ab, noise,
                        what=f"q_sample(x_0, t, alpha_bar, noise) with {label}"))
    # a 37-step alpha_bar while the notebook's globals hold the 1000-step schedule
    beta37 = _random_beta(37, p.gen(9))
    ab37 = torch.cumprod(1 - beta37, 0)
    t37 = torch.tensor([0, 36, 20, 5], dtype=torch.long)
    x37, n37 = _inputs((4, 1, 2, 3), p.gen(10))
    trap = trap_globals(p, "q_sample", (x37, t37, ab37, n37), {}, _notebook_globals(),
                        _consistent_globals(beta37), "q_sample(x_0, t, alpha_bar, noise) with a 37-step alpha_bar",
                        error_hints=INDEXING_ERROR_HINTS)
    # float64 inputs stay float64
    x64, n64 = (v.double() for v in _inputs((3, 1, 2, 2), p.gen(11)))
    out64 = ask(p, "q_sample", x64, torch.tensor([1, 7, 19]), random_ab.double(), n64,
                what="q_sample with float64 inputs")
    yield
    expect_no_globals(*trap, _GLOBAL_NAMES, "q_sample", " (a 37-step alpha_bar)")
    expect_dtype_kept(out64.value, "torch.float64", "q_sample with float64 inputs", source="x_0")
    for (label, ab, times, shape), (t, x_0, noise), call_out in zip(cases, inputs, outs):
        out = call_out.value
        expect_unchanged(call_out, {"x_0": x_0, "t": t, "alpha_bar": ab, "noise": noise}, "q_sample")
        got = as_tensor_array(out, "x_t returned by q_sample", shape=shape)
        expect_dtype_kept(out, "torch.float32", f"q_sample with {label}", source="x_0")
        want = ref.q_sample(x_0, t, ab, noise).double().numpy()
        variants = _q_variants(x_0.double().numpy(), ab.double().numpy(), t.numpy(),
                               noise.double().numpy())
        match_variants(got, want, variants, "q_sample", atol=1e-5, rtol=1e-4,
                       context=f" with {label} (t = {times}); expected sqrt(alpha_bar[t]) x_0 + "
                       f"sqrt(1 - alpha_bar[t]) noise per example")


# ----------------------------------------------------------------------------------------------
# generate_noisy_samples: relations and statistics
# ----------------------------------------------------------------------------------------------
def _unpack_noisy(out, x_0: torch.Tensor, T: int, label: str):
    """Check the structure of (x_t, noise, t) and return float64/int64 arrays."""
    expect(isinstance(out, (tuple, list)) and len(out) == 3,
           f"{label} should return a triple (x_t, noise, t), got {type(out).__name__}"
           + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "") + ".")
    x_t_raw, noise_raw, t_raw = out
    B = x_0.shape[0]
    shape = tuple(x_0.shape)
    # (x_t may be NaN where the student's own alphas_from_betas or q_sample is wrong: judged below)
    x_t = as_array(x_t_raw, f"x_t (first output of {label})", shape=shape, dtype="float", finite=False)
    as_tensor_array(x_t_raw if isinstance(x_t_raw, TensorRecord) else x_t_raw, f"x_t (first output of {label})",
                    shape=shape) if np.all(np.isfinite(x_t)) else None
    noise = as_tensor_array(noise_raw, f"noise (second output of {label})", shape=shape)
    expect(isinstance(t_raw, TensorRecord) and t_raw.exact,
           f"t (third output of {label}) should be a torch.long tensor of shape ({B},), "
           f"got {type(t_raw).__name__}.",
           hint="return the tensor of times itself, not a list, an int or a NumPy array.")
    expect(t_raw.dtype == "torch.int64",
           f"t (third output of {label}) should have dtype torch.long, got {t_raw.dtype}.",
           hint="draw the times with torch.randint (which returns int64); do not convert them to float.")
    expect(tuple(t_raw.shape) == (B,),
           f"t (third output of {label}) should have shape ({B},), one time per example, "
           f"got {tuple(t_raw.shape)}.",
           hint="draw one time per example: torch.randint(0, T, (B,), ...); keep t 1-D "
                "(reshape only the coefficients to (B, 1, 1, 1)).")
    t = as_array(t_raw, f"t (third output of {label})", shape=(B,), dtype="long")
    expect(t.min() >= 0 and t.max() <= T - 1,
           f"t (third output of {label}) must lie in [0, {T - 1}] (0-based steps), got values "
           f"in [{t.min()}, {t.max()}].",
           hint="torch.randint(0, T, ...) draws from {0, ..., T - 1}; paper step t + 1 is code index t.")
    return x_t, noise, t


def _relation(x_0: torch.Tensor, beta: torch.Tensor, x_t: np.ndarray, noise: np.ndarray,
              t: np.ndarray, label: str) -> None:
    """x_t must equal the reference q_sample of the returned noise and t."""
    ab = np.cumprod(1 - beta.double().numpy())  # (T,)
    T = ab.shape[0]
    x0 = x_0.double().numpy()
    want = _per_example(np.sqrt(ab[t]), x0) * x0 + _per_example(np.sqrt(1 - ab[t]), x0) * noise
    if close(x_t, want, atol=1e-5, rtol=1e-4):
        return
    variants = _q_variants(x0, ab, t, noise)
    # Mistakes in alpha_bar itself, and off-by-one with clamped indices.
    exclusive = np.concatenate([[1.0], ab[:-1]])
    alpha_bar_mistakes = [
        ("alpha_bar built with cumsum instead of cumprod.", np.cumsum(1 - beta.double().numpy())),
        ("alpha_bar taken only up to t - 1 (an exclusive product), or alpha_bar[t - 1] used; "
         "alpha_bar[t] = prod(alpha[:t+1]).", exclusive),
        ("alpha_bar[t + 1] used instead of alpha_bar[t].", np.append(ab[1:], np.nan)),
    ]
    with np.errstate(invalid="ignore"):  # cumsum gives alpha_bar > 1: NaN, filtered below
        for hint, abv in alpha_bar_mistakes:
            variants.append((hint, _per_example(np.sqrt(abv[t]), x0) * x0
                             + _per_example(np.sqrt(1 - abv[t]), x0) * noise))
    variants = [(h, v) for h, v in variants if np.all(np.isfinite(v))]
    for hint, value in variants:
        if close(x_t, value, atol=1e-5, rtol=1e-4):
            raise CheckFailed(
                f"{label}: x_t does not equal sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) noise "
                f"for the noise and t it returns ({describe_diff(x_t, want)}).\n"
                f"Likely cause: {hint}")
    # Which noise was really used? eps = (x_t - sqrt(ab) x_0) / sqrt(1 - ab).
    used = (x_t - _per_example(np.sqrt(ab[t]), x0) * x0) / _per_example(np.sqrt(1 - ab[t]), x0)
    looks_normal = abs(float(used.mean())) < 0.1 and abs(float(used.std()) - 1) < 0.1
    if looks_normal and not close(used, noise, atol=1e-3, rtol=1e-3):
        raise CheckFailed(
            f"{label}: x_t was made with a noise other than the one returned "
            f"({describe_diff(x_t, want)}).\nLikely cause: the returned noise is not the one "
            f"used in x_t (e.g. a second torch.randn_like call); return exactly the noise that "
            f"you added, since the model learns to predict it.")
    raise CheckFailed(
        f"{label}: x_t does not equal sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) noise for "
        f"the noise and t it returns ({describe_diff(x_t, want)}).")


def _chi_square_uniform(t: np.ndarray, T: int) -> tuple[float, float]:
    """Pearson chi-square of the counts of t against Uniform{0..T-1}: (statistic, p-value)."""
    counts = np.bincount(t, minlength=T).astype(_F64)
    expected = t.size / T
    stat = float(((counts - expected) ** 2 / expected).sum())
    # chi-square survival function: the regularized upper incomplete gamma Q(k / 2, stat / 2)
    p = torch.special.gammaincc(torch.tensor((T - 1) / 2, dtype=torch.float64),
                                torch.tensor(stat / 2, dtype=torch.float64))
    return stat, float(p)


def _own_blocks_explain(out: Outcome, x_0: torch.Tensor, beta: torch.Tensor, x_t: np.ndarray,
                        noise: np.ndarray, t: np.ndarray) -> bool:
    """Whether ``x_t`` is what the student's own ``q_sample`` returned for the right inputs: x_0, the
    returned t and noise, and alpha_bar = cumprod(1 - beta) or what their own ``alphas_from_betas``
    gave for this beta. A mistake in those building blocks already costs the points of their own
    cells, so it must not cost these ones too."""
    good_ab = [np.cumprod(1 - beta.double().numpy())]
    for c in out.wrapped("alphas_from_betas") or []:
        if isinstance(c.value, (tuple, list)) and len(c.value) == 2 and isinstance(c.value[1], TensorRecord):
            good_ab.append(c.value[1].array.astype(_F64))
    x0 = x_0.double().numpy()
    for c in out.wrapped("q_sample") or []:
        names = ["x_0", "t", "alpha_bar", "noise"]
        given = dict(zip(names, c.args))
        given.update({k: v for k, v in c.kwargs.items() if k in names})
        if not isinstance(c.value, TensorRecord) or set(given) != set(names):
            continue
        arrays = {k: v.array.astype(_F64) for k, v in given.items() if isinstance(v, TensorRecord)}
        if len(arrays) < 4 or arrays["t"].shape != t.shape or arrays["x_0"].shape != x0.shape:
            continue
        if not (np.array_equal(arrays["t"], t) and close(arrays["x_0"], x0, atol=1e-6, rtol=0)
                and close(arrays["noise"], noise, atol=1e-6, rtol=0)
                and any(arrays["alpha_bar"].shape == ab.shape and close(arrays["alpha_bar"], ab, 1e-7, 1e-6)
                        for ab in good_ab)):
            continue
        got = c.value.array.astype(_F64)
        nan = ~np.isfinite(got)
        if got.shape == x_t.shape and np.array_equal(nan, ~np.isfinite(x_t)) and \
                close(np.where(nan, 0, got), np.where(nan, 0, x_t), atol=1e-6, rtol=1e-5):
            return True
    return False


def _noisy_relation(out: Outcome, x_0, beta, x_t, noise, t, label) -> None:
    """The relation of :func:`_relation`, or the student's own building blocks composed correctly."""
    if _own_blocks_explain(out, x_0, beta, x_t, noise, t):
        return
    if not np.all(np.isfinite(x_t)):
        raise CheckFailed(f"x_t (first output of {label}) contains NaN or infinite values.")
    _relation(x_0, beta, x_t, noise, t, label)


_BLOCKS = ("q_sample", "alphas_from_betas")


@trusted
def check_generate_noisy_samples(p: Probe):
    # 1. One image batch: structure and the relation x_t = q_sample(x_0, t, alpha_bar, noise).
    beta = ref.linear_beta_schedule(1000)
    x_a, _ = _inputs((8, 1, 32, 32), p.gen(30))
    label_a = "generate_noisy_samples(x_0 (8, 1, 32, 32), linear beta, generator)"
    out_a = ask(p, "generate_noisy_samples", x_a, beta, generator=p.generator(31), what=label_a, wrap=_BLOCKS)
    # 2. A short random schedule: the relation again, and t uniform over all 10 steps.
    beta10 = _random_beta(10, p.gen(32), low=0.05, high=0.5)
    x_b, _ = _inputs((4000, 1, 2, 2), p.gen(33))
    label_b = "generate_noisy_samples(x_0 (4000, 1, 2, 2), a 10-step beta, generator)"
    out_b = ask(p, "generate_noisy_samples", x_b, beta10, generator=p.generator(34), what=label_b, wrap=_BLOCKS)
    # 3. The course's T = 1000: every step reachable, uniform, varying within a batch.
    x_c, _ = _inputs((20000, 1, 1, 2), p.gen(35))
    label_c = "generate_noisy_samples(x_0 (20000, 1, 1, 2), linear beta of 1000 steps, generator)"
    out_c = ask(p, "generate_noisy_samples", x_c, beta, generator=p.generator(36), what=label_c, wrap=_BLOCKS)
    # 4. a 37-step schedule while the notebook's globals hold the 1000-step one (generators of one
    # seed and the global random state seeded alike for both calls)
    beta37 = _random_beta(37, p.gen(37), low=0.01, high=0.2)
    x_d, _ = _inputs((600, 1, 2, 2), p.gen(38))
    label_d = "generate_noisy_samples(x_0 (600, 1, 2, 2), a 37-step beta, generator)"
    trap = trap_globals(p, "generate_noisy_samples", (x_d, beta37), {}, _notebook_globals(),
                        _consistent_globals(beta37), label_d, generators=(p.generator(39), p.generator(39)),
                        global_seed=5)
    yield

    expect_no_globals(*trap, _GLOBAL_NAMES, "generate_noisy_samples", " (a 37-step beta)")
    for o, x, b in ((out_a, x_a, beta), (out_b, x_b, beta10), (out_c, x_c, beta)):
        expect_unchanged(o, {"x_0": x, "beta": b}, "generate_noisy_samples")
    for k, rec in enumerate(out_a.value[:2] if isinstance(out_a.value, (tuple, list)) else ()):
        expect_dtype_kept(rec, "torch.float32", f"generate_noisy_samples: {('x_t', 'noise')[k]}", source="x_0")
    x_t, noise, t = _unpack_noisy(out_a.value, x_a, 1000, label_a)
    _noisy_relation(out_a, x_a, beta, x_t, noise, t, label_a)

    x_t, noise, t = _unpack_noisy(out_b.value, x_b, 10, label_b)
    _noisy_relation(out_b, x_b, beta10, x_t, noise, t, label_b)
    _time_statistics(t, 10, label_b)

    x_t, noise, t = _unpack_noisy(out_c.value, x_c, 1000, label_c)
    _noisy_relation(out_c, x_c, beta, x_t, noise, t, label_c)
    _time_statistics(t, 1000, label_c)
    # the 37-step schedule: t uniform over its 37 steps (the relation is judged on the runs above)
    _, _, t = _unpack_noisy(trap[1].value, x_d, 37, label_d)
    _time_statistics(t, 37, label_d)
    label = label_c
    # The noise is standard normal (40 thousand values: standard error of the mean 0.005).
    m, sd = float(noise.mean()), float(noise.std())
    expect(abs(m) < 0.03 and abs(sd - 1) < 0.03,
           f"{label}: the noise should be standard normal, got mean {m:.3f} and std {sd:.3f} "
           f"over {noise.size} values.",
           hint="draw it with torch.randn (normal), not torch.rand (uniform on [0, 1)), and do not "
                "scale it.")
    # Noise independent of x_0 and of t (a noise built from x_0 would correlate).
    corr = float(np.corrcoef(noise.reshape(-1), x_c.double().numpy().reshape(-1))[0, 1])
    expect(abs(corr) < 0.05, f"{label}: the noise correlates with x_0 (correlation {corr:.2f}).",
           hint="draw fresh noise with torch.randn; do not derive it from x_0.")


def _time_statistics(t: np.ndarray, T: int, label: str) -> None:
    n = t.size
    # One time per example: a batch of 64 over T >= 10 steps almost surely holds several values.
    first = t[:64]
    expect(len(np.unique(first)) > 1,
           f"{label}: every example of the batch got the same t = {first[0]}.",
           hint="one t drawn for the whole batch (e.g. torch.randint(0, T, (1,)) then expanded): "
                "Algorithm 1 draws t independently for each example: torch.randint(0, T, (B,)).")
    expect(t.min() == 0,
           f"{label}: t never reached the first step 0 in {n} draws over {T} steps "
           f"(smallest value {t.min()}).",
           hint="t drawn from {1, ..., T - 1} or {1, ..., T}: use torch.randint(0, T, ...) "
                "(code index 0 is the paper's step 1).")
    expect(t.max() == T - 1,
           f"{label}: t never reached the last step {T - 1} in {n} draws (largest value "
           f"{t.max()}).",
           hint="torch.randint(0, T - 1, ...) excludes T - 1 (the upper bound of randint is "
                "exclusive): use torch.randint(0, T, ...).")
    stat, p = _chi_square_uniform(t, T)
    expect(p > 1e-6,
           f"{label}: t is not uniform over {{0, ..., {T - 1}}}: chi-square {stat:.1f} with "
           f"{T - 1} degrees of freedom (p = {p:.1e}) over {n} draws.",
           hint="draw t with torch.randint(0, T, (B,)), every step with probability 1 / T.")


# ----------------------------------------------------------------------------------------------
# generate_noisy_samples_2: the generator argument is honoured
# ----------------------------------------------------------------------------------------------
@trusted
def check_generate_noisy_samples_2(p: Probe):
    beta = ref.linear_beta_schedule(1000)
    x_0, _ = _inputs((16, 1, 4, 4), p.gen(40))
    label = "generate_noisy_samples(x_0, beta, generator=g)"
    # Two generators seeded alike, with the global random state seeded differently before each
    # call: only the generator may decide the draws.
    same = [ask(p, "generate_noisy_samples", x_0, beta, generator=p.generator(41), what=label,
                global_seed=seed, wrap=_BLOCKS) for seed in (1, 2)]
    other = ask(p, "generate_noisy_samples", x_0, beta, generator=p.generator(42), what=label, wrap=_BLOCKS)
    default = ask(p, "generate_noisy_samples", x_0, beta,
                  what="generate_noisy_samples(x_0, beta) without a generator", wrap=_BLOCKS)
    # one generator for two calls continues its stream; a fresh one of the same seed reproduces
    g = p.generator(43)
    stream = [ask(p, "generate_noisy_samples", x_0, beta, generator=gen, what=label)
              for gen in (g, g, p.generator(43))]
    yield

    arrays = [_unpack_noisy(o.value, x_0, 1000, label) for o in same]
    agree = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(arrays[0], arrays[1]))
    expect(agree,
           "Two calls with generators seeded alike (torch.Generator().manual_seed(41)) returned "
           "different x_t, noise or t.",
           hint="a draw ignores the `generator` argument: pass generator=generator to "
                "torch.randint and to torch.randn (torch.randn_like has no generator argument: "
                "use torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype, device=...)). "
                "The course requires it so that experiments are reproducible without seeding "
                "the global random state.")
    second = _unpack_noisy(other.value, x_0, 1000, label)
    expect(not np.array_equal(arrays[0][1], second[1]) and not np.array_equal(arrays[0][2], second[2]),
           "Generators with different seeds (41 and 42) gave the same noise or the same t.",
           hint="the function must draw from the generator it is given, not from a fixed seed "
                "of its own.")
    # The default generator=None must work too.
    _unpack_noisy(default.value, x_0, 1000, "generate_noisy_samples(x_0, beta)")
    for o in same + [other] + stream:
        expect_global_rng_untouched(o, "generate_noisy_samples")
    expect_stream(*(o.value for o in stream), "generate_noisy_samples")


CHECKS = {
    "linear_beta_schedule": check_linear_beta_schedule,
    "cosine_beta_schedule": check_cosine_beta_schedule,
    "alphas_from_betas": check_alphas_from_betas,
    "forward_step": check_forward_step,
    "q_sample": check_q_sample,
    "generate_noisy_samples": check_generate_noisy_samples,
    "generate_noisy_samples_2": check_generate_noisy_samples_2,
}

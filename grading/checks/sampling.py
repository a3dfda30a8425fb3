"""Hidden tests of notebook 03_sampling (ancestral sampling, DDIM and SDEdit).

One check per graded test cell; each takes the student's notebook globals. The checks compare with
``grading.reference.sampling`` and with the oracles of ``docs/conventions.md`` (section 4), on small
inputs (a few seconds at most on one CPU core):

* delta data: with every image equal to ``c`` the exact noise predictor is known, and a correct
  sampler (sigma^2 = beta or beta_tilde, DDIM with any steps) returns ``c`` exactly; noise added at
  the last step shows up as a spread of about sqrt(beta[0]);
* Gaussian data: x_0 ~ N(0, I) gives ``eps*(x_t) = sqrt(1 - alpha_bar_t) x_t`` and the mean of a step
  is ``sqrt(alpha_t) x_t``, so the output variance of the sampler is known in closed form for each
  choice of sigma (beta, beta_tilde, none, and the mistaken ones);
* with a given ``z`` a step is deterministic and is compared with the reference exactly;
* a recording model shows which steps a sampler visits, in which order.

When an output is wrong it is compared with known mistaken variants (computed here) so that the
message names the likely cause. Random functions are tested through relations and statistics, never
by replaying a generator, so any order of random draws passes.

The loop-level checks (``p_sample_loop``, ``ddim_sample``, ``sdedit``) run the student's function with
the reference ``p_sample_step``, ``posterior_variance`` and ``ddim_step`` in place of the student's
own (restored afterwards), so a mistake in a step function costs points in the step's cell only.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from grading.hidden import (CheckFailed, DeltaDataModel, GaussianDataModel, RecordingModel,
                            _StubModel, _time_batch, as_tensor_array, call, close, describe_diff, expect,
                            generator, match_variants, student, swapped_in)
from grading.reference import forward_process as ref_fp
from grading.reference import sampling as ref

# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def _linear_beta(T: int = 1000) -> torch.Tensor:
    return ref_fp.linear_beta_schedule(T)  # (T,) float32


def _short_beta(T: int = 10, low: float = 0.05, high: float = 0.5) -> torch.Tensor:
    """A short schedule with large betas: the sigma conventions differ by a lot in few steps."""
    return torch.linspace(low, high, T, dtype=torch.float32)  # (T,)


def _images(shape: tuple, seed: int) -> torch.Tensor:
    """Images in [-1, 1], float32, of ``shape``."""
    return torch.rand(shape, generator=generator(seed)) * 2 - 1


def _noise(shape: tuple, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=generator(seed))


class _FixedNoiseModel(_StubModel):
    """A smooth, elementwise noise prediction that changes with t:
    ``eps(x, t) = (0.6 sin(2 x) + 0.3) (1 + t / 1000)``.

    Elementwise (so a loop over the batch sees the same predictions) and known in closed form, so a
    step's correct output and its mistaken variants can be computed here exactly.
    """

    def forward(self, x, t, *rest):
        idx = _time_batch(t, x.shape[0]).to(torch.float64)  # (B,)
        scale = (1 + idx / 1000).reshape(-1, *([1] * (x.dim() - 1))).to(device=x.device)
        xd = x.to(torch.float64)
        return ((0.6 * torch.sin(2 * xd) + 0.3) * scale).to(x.dtype)


def _eps_of(x: torch.Tensor | np.ndarray, t: int) -> np.ndarray:
    """The prediction of :class:`_FixedNoiseModel` for input ``x`` (as the model computes it)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    out = _FixedNoiseModel()(x, torch.full((x.shape[0],), t, dtype=torch.long))
    return out.detach().double().numpy()


def _visited(rec: RecordingModel, batch: int, what: str) -> list[int]:
    """The step each recorded call was made at (one value per call), checked to be one per batch."""
    steps = []
    for k, c in enumerate(rec.calls):
        t = c["t"]
        if t.is_floating_point():
            t = t.round()
        t = t.long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        expect(t.numel() == batch,
               f"{what} called the model with t of shape {tuple(c['t'].shape)}; expected a long tensor "
               f"of shape ({batch},) (one time per example).",
               hint="build t with torch.full((B,), t, dtype=torch.long).")
        expect(bool((t == t[0]).all()),
               f"{what} called the model (call {k + 1}) with different times within the batch: "
               f"{t.tolist()[:6]}...; during sampling every example is at the same step.")
        steps.append(int(t[0]))
    return steps


def _describe_steps(steps: list[int]) -> str:
    if len(steps) <= 8:
        return str(steps)
    return f"[{', '.join(map(str, steps[:4]))}, ..., {', '.join(map(str, steps[-3:]))}] ({len(steps)} calls)"


def _ref_p_sample_step(model, x_t, t, beta, z=None):
    """The reference step, tolerant of how a correct loop may call it."""
    if isinstance(t, torch.Tensor):
        t = int(t.reshape(-1)[0].item())
    return ref.p_sample_step(model, x_t, int(t), beta, z)


def _ref_ddim_step(model, x_t, t, t_prev, alpha_bar, eta=0.0, z=None):
    if isinstance(t, torch.Tensor):
        t = int(t.reshape(-1)[0].item())
    if isinstance(t_prev, torch.Tensor):
        t_prev = int(t_prev.reshape(-1)[0].item())
    eta = float(eta)
    if z is None and eta > 0 and int(t_prev) >= 0:
        raise CheckFailed("ddim_sample called ddim_step with eta > 0 but without the noise z; draw z with "
                          "the generator (torch.randn(..., generator=generator)) and pass it.")
    return ref.ddim_step(model, x_t, int(t), int(t_prev), alpha_bar, eta=eta, z=z)


def _stat_close(got: float, want: float, sd: float, k: float = 5.0) -> bool:
    return abs(got - want) <= k * sd


# ----------------------------------------------------------------------------------------------
# p_sample_step
# ----------------------------------------------------------------------------------------------
def _step_variants(x: np.ndarray, eps: np.ndarray, z: np.ndarray, t: int, beta: np.ndarray):
    """Correct output of Algorithm 2 line 4 and known mistaken variants, all float64."""
    T = beta.shape[0]
    a = 1 - beta
    ab = np.cumprod(a)
    abp = np.concatenate([[1.0], ab[:-1]])
    bt = (1 - abp) / (1 - ab) * beta

    def mean(ab_t=ab[t], coef=None, div=math.sqrt(a[t])):
        c = beta[t] / math.sqrt(1 - ab_t) if coef is None else coef
        return (x - c * eps) / div

    noise = 0.0 if t == 0 else 1.0
    m = mean()
    want = m + noise * math.sqrt(beta[t]) * z
    variants = [
        ("the noise z is not added: for t > 0, x_{t-1} = mean + sigma_t z.", m if t > 0 else None),
        ("noise is added at the last step: when t == 0 (the paper's t = 1) z must be 0, so the last "
         "step returns the mean.", m + math.sqrt(beta[t]) * z if t == 0 else None),
        ("sigma_t = beta_t; it must be sqrt(beta_t) (the standard deviation, not the variance).",
         m + noise * beta[t] * z),
        ("sigma_t = beta_t and noise at the last step.", m + beta[t] * z if t == 0 else None),
        ("sigma_t = sqrt(beta_tilde_t); this step uses sigma_t = sqrt(beta_t) (beta_tilde is "
         "p_sample_loop's variance='beta_tilde' option).", m + noise * math.sqrt(bt[t]) * z),
        ("the coefficient of eps is beta_t / (1 - alpha_bar_t); it must be "
         "beta_t / sqrt(1 - alpha_bar_t).", mean(coef=beta[t] / (1 - ab[t])) + noise * math.sqrt(beta[t]) * z),
        ("the coefficient of eps is (1 - alpha_bar_t) / sqrt(1 - alpha_bar_t); the numerator is "
         "1 - alpha_t = beta_t.", mean(coef=math.sqrt(1 - ab[t])) + noise * math.sqrt(beta[t]) * z),
        ("no division by sqrt(alpha_t): x_{t-1} = (x_t - ... eps) / sqrt(alpha_t) + sigma_t z.",
         mean(div=1.0) + noise * math.sqrt(beta[t]) * z),
        ("division by sqrt(alpha_bar_t) instead of sqrt(alpha_t).",
         mean(div=math.sqrt(ab[t])) + noise * math.sqrt(beta[t]) * z),
        ("division by alpha_t instead of sqrt(alpha_t).",
         mean(div=a[t]) + noise * math.sqrt(beta[t]) * z),
        ("alpha_bar off by one: alpha_bar[t - 1] used where alpha_bar[t] belongs (0-based code index t "
         "is the paper's step t + 1, and alpha_bar[t] = prod(alpha[:t+1])).",
         mean(ab_t=ab[t - 1]) + noise * math.sqrt(beta[t]) * z if t > 0 else None),
        ("alpha_bar off by one: alpha_bar[t + 1] used where alpha_bar[t] belongs.",
         mean(ab_t=ab[t + 1]) + noise * math.sqrt(beta[t]) * z if t + 1 < T else None),
        ("the step uses beta[t - 1] / alpha[t - 1] (off by one in the 0-based index).",
         _shifted(x, eps, z, t - 1, beta, ab, noise) if t > 0 else None),
        ("the step uses beta[t + 1] / alpha[t + 1] (off by one in the 0-based index).",
         _shifted(x, eps, z, t + 1, beta, ab, noise) if t + 1 < T else None),
        ("the noise term has the wrong sign or the eps term is added instead of subtracted.",
         (x + beta[t] / math.sqrt(1 - ab[t]) * eps) / math.sqrt(a[t]) + noise * math.sqrt(beta[t]) * z),
    ]
    return want, variants


def _shifted(x, eps, z, s, beta, ab, noise):
    return (x - beta[s] / math.sqrt(1 - ab[s]) * eps) / math.sqrt(1 - beta[s]) + noise * math.sqrt(beta[s]) * z


def check_p_sample_step(ns):
    p_sample_step = student(ns, "p_sample_step")
    beta = _linear_beta(1000)
    beta64 = beta.double().numpy()
    shape = (3, 1, 6, 6)
    x = _noise(shape, 1)
    z = _noise(shape, 3)
    model = RecordingModel(_FixedNoiseModel())
    # with a given z the step is a function: calling it twice gives the same result
    again = as_tensor_array(call(p_sample_step, model, x.clone(), 500, beta, z.clone()), "p_sample_step(...)")
    first = as_tensor_array(call(p_sample_step, model, x.clone(), 500, beta, z.clone()), "p_sample_step(...)")
    expect(close(again, first, atol=0, rtol=0),
           "p_sample_step gave two different results for the same x_t, t and z.",
           hint="the step must use the z it is given, not draw fresh noise itself.")
    for t in (500, 10, 1, 999, 0):
        model.calls.clear()
        x_in, z_in = x.clone(), z.clone()
        out = call(p_sample_step, model, x_in, t, beta, z_in, what=f"p_sample_step(model, x_t, t={t}, beta, z)")
        got = as_tensor_array(out, f"p_sample_step(..., t={t}, ...)", shape=shape)
        expect(torch.equal(x_in, x) and torch.equal(z_in, z),
               "p_sample_step changed its input x_t or z in place.",
               hint="an in-place operation (`+=`, `.sub_()`) on an argument; compute a new tensor instead.")
        steps = _visited(model, shape[0], "p_sample_step")
        expect(len(steps) >= 1, f"p_sample_step(t={t}) never called the model.")
        expect(all(s == t for s in steps),
               f"p_sample_step(t={t}) called the model at t = {sorted(set(steps))}; expected t = {t}.",
               hint="pass the code index t itself to the model (the same t the model was trained with).")
        want, variants = _step_variants(x.double().numpy(), _eps_of(x, t), z.double().numpy(), t, beta64)
        match_variants(got, want, variants, "p_sample_step", atol=2e-5, rtol=2e-4,
                       context=f" at t = {t} (T = 1000, linear schedule, a fixed noise prediction)")
    # float64 inputs and a short schedule (large betas make every coefficient matter)
    sb = _short_beta(10).double()
    x64, z64 = x.double(), z.double()
    for t in (0, 4, 9):
        out = call(p_sample_step, _FixedNoiseModel(), x64, t, sb, z64,
                   what=f"p_sample_step with float64 inputs (t={t})")
        got = as_tensor_array(out, f"p_sample_step(..., t={t}, ...) with float64 inputs", shape=shape)
        want, variants = _step_variants(x64.numpy(), _eps_of(x64, t), z64.numpy(), t, sb.numpy())
        match_variants(got, want, variants, "p_sample_step", atol=1e-6, rtol=1e-6,
                       context=f" at t = {t} (float64, a 10-step schedule with beta from 0.05 to 0.5)")
    # the delta-data oracle: from x_t on the forward marginal with z = 0 the step stays on the data
    c = _images((1, 1, 4, 4), 4).double()  # one image (a batch of 2 below)
    ab = torch.cumprod(1 - sb, 0)
    oracle = DeltaDataModel(c, ab)
    x1 = ab[1].sqrt() * c + (1 - ab[1]).sqrt() * _noise((2, 1, 4, 4), 5).double()
    out0 = as_tensor_array(call(p_sample_step, oracle, x1, 1, sb, torch.zeros_like(x1)), "p_sample_step(...)")
    x0 = as_tensor_array(call(p_sample_step, oracle, torch.as_tensor(out0), 0, sb, _noise((2, 1, 4, 4), 6).double()),
                         "p_sample_step(..., t=0, ...)")
    c2 = np.broadcast_to(c.numpy(), (2, 1, 4, 4))
    expect(close(x0, c2, atol=1e-6, rtol=1e-6),
           "With the exact noise predictor of a data set holding one image c, two steps t = 1, 0 "
           f"(z = 0 then any z) must land exactly on c: {describe_diff(x0, c2)}.",
           hint="noise added at the last step (t == 0), or a wrong mean coefficient.")


# ----------------------------------------------------------------------------------------------
# posterior_variance
# ----------------------------------------------------------------------------------------------
def _bt_variants(beta: np.ndarray):
    ab = np.cumprod(1 - beta)
    abp = np.concatenate([[1.0], ab[:-1]])
    want = (1 - abp) / (1 - ab) * beta
    wrapped = np.roll(ab, 1)  # alpha_bar[t - 1] with Python's wrap-around at t = 0
    nxt = np.concatenate([ab[1:], [ab[-1]]])
    variants = [
        ("alpha_bar[t] used where alpha_bar[t - 1] belongs: (1 - alpha_bar_t) / (1 - alpha_bar_t) * beta_t "
         "is just beta_t.", beta.copy()),
        ("alpha_bar[t - 1] taken with a wrapped index at t = 0 (alpha_bar[-1] is the LAST value); "
         "alpha_bar before step 0 is 1, so beta_tilde[0] = 0.", (1 - wrapped) / (1 - ab) * beta),
        ("the factor beta_t is missing: beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t.",
         (1 - abp) / (1 - ab)),
        ("the fraction is upside down: (1 - alpha_bar_t) / (1 - alpha_bar_{t-1}).", (1 - ab) / (1 - abp + 1e-300) * beta),
        ("alpha_bar[t + 1] used where alpha_bar[t - 1] belongs.", (1 - nxt) / (1 - ab) * beta),
        ("alpha_bar_{t-1} set to 0 at t = 0 instead of 1.", (1 - np.concatenate([[0.0], ab[:-1]])) / (1 - ab) * beta),
    ]
    return want, variants


def check_posterior_variance(ns):
    posterior_variance = student(ns, "posterior_variance")
    for beta, label, rtol in ((_short_beta(10).double(), "a 10-step float64 schedule (beta 0.05 to 0.5)", 1e-7),
                              (_linear_beta(1000), "the linear schedule, T = 1000, float32", 3e-3)):
        b_in = beta.clone()
        out = call(posterior_variance, b_in, what=f"posterior_variance(beta) on {label}")
        T = beta.shape[0]
        got = as_tensor_array(out, "posterior_variance(beta)", shape=(T,))
        expect(torch.equal(b_in, beta), "posterior_variance changed beta in place.",
               hint="an in-place operation on beta; compute new tensors instead.")
        b64 = beta.double().numpy()
        want, variants = _bt_variants(b64)
        expect(abs(got[0]) <= 1e-12 or not close(got[1:], want[1:], atol=1e-12, rtol=rtol),
               f"posterior_variance(beta)[0] is {got[0]:.6g}; expected 0 (on {label}).",
               hint="alpha_bar before step 0 is 1, so beta_tilde[0] = (1 - 1) / (1 - alpha_bar_0) * beta_0 = 0; "
                    "a wrapped index alpha_bar[-1] or a missing special case at t = 0.")
        match_variants(got, want, variants, "posterior_variance(beta)", atol=1e-12, rtol=rtol, context=f" on {label}")
    expect(bool(np.all(got <= b64 * (1 + 1e-5))) and bool(np.all(got >= 0)),
           "posterior_variance(beta) must lie between 0 and beta.")


# ----------------------------------------------------------------------------------------------
# p_sample_loop
# ----------------------------------------------------------------------------------------------
def _gaussian_output_variance(beta: np.ndarray, sigma2: np.ndarray, last_noise: bool = False) -> tuple[float, float]:
    """Closed form for the Gaussian-data oracle: x_{t-1} = sqrt(alpha_t) x_t + sigma_t z.

    Returns (k2, noise_var): output = k x_T + noise with k^2 = prod(alpha) and the noise variance.
    """
    a = 1 - beta
    k2, v = 1.0, 0.0
    for t in reversed(range(beta.shape[0])):
        k2 *= a[t]
        v = a[t] * v + (sigma2[t] if (t > 0 or last_noise) else 0.0)
    return k2, v


def _run_loop(fn, model, x_T, beta, variance, record_every, gen, what):
    res = call(fn, model, x_T, beta, variance=variance, record_every=record_every, generator=gen, what=what)
    expect(isinstance(res, tuple) and len(res) == 2,
           f"{what} should return a pair (x_0, history), got {type(res).__name__}"
           + (f" of length {len(res)}" if isinstance(res, (tuple, list)) else "") + ".")
    return res


def check_p_sample_loop(ns):
    p_sample_loop = student(ns, "p_sample_loop")
    given = {"p_sample_step": _ref_p_sample_step, "posterior_variance": ref.posterior_variance}
    with swapped_in(ns, given, fn=p_sample_loop):
        _check_p_sample_loop(p_sample_loop)


def _check_p_sample_loop(p_sample_loop):
    # 1. which steps, in which order, and the history (deterministic: variance="none")
    beta = _linear_beta(1000)
    ab = torch.cumprod(1 - beta.double(), 0)
    shape = (2, 1, 4, 4)
    x_T = _noise(shape, 10)
    rec = RecordingModel(GaussianDataModel(ab))
    x_in = x_T.clone()
    x0, hist = _run_loop(p_sample_loop, rec, x_in, beta, "none", 100, generator(1),
                         "p_sample_loop(model, x_T, beta, variance='none', record_every=100)")
    expect(torch.equal(x_in, x_T), "p_sample_loop changed x_T in place.",
           hint="an in-place update of x (`x -= ...`) while x is still the caller's x_T; start with x = x_T "
                "and assign new tensors (x = ...).")
    steps = _visited(rec, shape[0], "p_sample_loop")
    want_steps = list(range(999, -1, -1))
    if steps != want_steps:
        hint = None
        if steps == list(range(999, 0, -1)):
            hint = "the loop skips index 0: use `for t in reversed(range(T))` (0-based t = 0 is the paper's t = 1)."
        elif steps == list(range(1000, 0, -1)) or steps == list(range(1000, -1, -1)):
            hint = "the loop runs over the paper's t = T..1 without shifting to the 0-based code index t - 1."
        elif steps == list(range(0, 1000)):
            hint = "the loop runs forwards; sampling goes from t = T-1 down to 0."
        elif len(steps) == 998 and steps == list(range(998, 0, -1)):
            hint = "the loop skips both the first and the last index."
        raise CheckFailed(f"p_sample_loop must call the model once per step at t = 999, 998, ..., 0 "
                          f"(T = 1000); it called it at {_describe_steps(steps)}."
                          + (f"\nLikely cause: {hint}" if hint else ""))
    got = as_tensor_array(x0, "x_0 returned by p_sample_loop", shape=shape)
    a = 1 - beta.double().numpy()
    k = np.sqrt(np.cumprod(a[::-1])[::-1])  # k[t] = prod_{s >= t} sqrt(alpha_s)
    want = k[0] * x_T.double().numpy()
    if not close(got, want, atol=1e-5, rtol=1e-3):
        again, _ = _run_loop(p_sample_loop, GaussianDataModel(ab), x_T.clone(), beta, "none", 100, generator(99),
                             "p_sample_loop(..., variance='none')")
        noisy = not close(as_tensor_array(again, "x_0", shape=shape), got, atol=1e-7, rtol=0)
        raise CheckFailed(
            "p_sample_loop(..., variance='none') with the Gaussian-data oracle (each mean is sqrt(alpha_t) x_t) "
            f"is wrong: {describe_diff(got, want)}. With variance='none' no noise may be added at any step."
            + ("\nLikely cause: noise is added although variance='none' (the variance option is ignored): two "
               "generators gave two different results." if noisy else
               "\nLikely cause: the mean of a step is wrong (compare with Algorithm 2, line 4: the coefficient "
               "beta_t / sqrt(1 - alpha_bar_t), alpha_bar[t] at code index t, the division by sqrt(alpha_t)), "
               "or x is recorded or returned at the wrong step."))
    expect(isinstance(hist, list), f"history should be a list of tensors, got {type(hist).__name__}.")
    rec_steps = [t for t in range(999, -1, -1) if t % 100 == 0]
    expect(len(hist) == len(rec_steps),
           f"history should hold x after the steps t = 900, 800, ..., 0 ({len(rec_steps)} tensors with "
           f"record_every=100, T = 1000), got {len(hist)} tensors.",
           hint="append a copy of x after the step whose index t satisfies t % record_every == 0.")
    for i, (h, t) in enumerate(zip(hist, rec_steps)):
        expect(type(h) is torch.Tensor and h.device.type == "cpu",
               f"history[{i}] should be a CPU torch.Tensor, got "
               f"{type(h).__name__}{' on ' + str(h.device) if isinstance(h, torch.Tensor) else ''}.",
               hint="append x.detach().cpu().clone().")
        hv = as_tensor_array(h, f"history[{i}]", shape=shape)
        want_h = k[t] * x_T.double().numpy()
        if not close(hv, want_h, atol=1e-5, rtol=1e-3):
            near = [s for s in (t + 1, t - 1) if 0 <= s < 1000 and close(hv, k[s] * x_T.double().numpy(), 1e-5, 1e-3)]
            raise CheckFailed(f"history[{i}] should be x after step t = {t} (t % record_every == 0): "
                              f"{describe_diff(hv, want_h)}."
                              + ("\nLikely cause: x recorded one step too early or too late (record x after "
                                 "computing the step)." if near else ""))
    expect(close(as_tensor_array(hist[-1], "history[-1]"), got, atol=0, rtol=0),
           "history[-1] should be the returned x_0 (x after the step t = 0).")
    # record_every that does not divide T
    sb = _short_beta(20)
    rec2 = GaussianDataModel(torch.cumprod(1 - sb.double(), 0))
    _, hist2 = _run_loop(p_sample_loop, rec2, _noise(shape, 11), sb, "none", 7, generator(2),
                         "p_sample_loop(..., T=20, record_every=7)")
    expect(isinstance(hist2, list) and len(hist2) == 3,
           f"with T = 20 and record_every = 7, history should hold x after the steps t = 14, 7, 0 "
           f"(3 tensors), got {len(hist2) if isinstance(hist2, list) else type(hist2).__name__}.",
           hint="record after the step whose index t satisfies t % record_every == 0.")

    # 2. delta-data oracle: beta and beta_tilde return c exactly; noise at the last step shows
    c = _images((1, 1, 8, 8), 12)  # one image; the data set holds only it
    x_T = _noise((4, 1, 8, 8), 13)
    delta = DeltaDataModel(c, ab)
    for variance in ("beta", "beta_tilde", "none"):
        out, _ = _run_loop(p_sample_loop, delta, x_T.clone(), beta, variance, 100, generator(3),
                           f"p_sample_loop(..., variance={variance!r})")
        got = as_tensor_array(out, f"x_0 returned by p_sample_loop(variance={variance!r})", shape=x_T.shape)
        err = got - c.double().numpy()
        if np.max(np.abs(err)) > 2e-3:
            spread = float(np.std(err))
            hint = None
            if variance == "beta" and 0.005 < spread < 0.02:
                hint = ("noise is added at the last step: the spread of the error is "
                        f"{spread:.4f} ~ sqrt(beta[0]) = 0.01; z must be 0 when t == 0.")
            else:
                hint = ("the mean of a step is wrong (compare with Algorithm 2, line 4: the coefficient "
                        "beta_t / sqrt(1 - alpha_bar_t), alpha_bar[t] at code index t, the division by "
                        "sqrt(alpha_t)), or the loop does not visit every step once.")
            raise CheckFailed(
                f"With the exact noise predictor of a data set that holds one image c, Algorithm 2 must return "
                f"c exactly (variance={variance!r}, T = 1000 linear); largest error {np.max(np.abs(err)):.4g}, "
                f"spread {spread:.4g}." + (f"\nLikely cause: {hint}" if hint else ""))

    # 3. Gaussian-data oracle: the output variance depends on sigma (a short schedule, many pixels)
    sb = _short_beta(10)
    sb64 = sb.double().numpy()
    ab_s = torch.cumprod(1 - sb.double(), 0)
    ab_np = ab_s.numpy()
    abp = np.concatenate([[1.0], ab_np[:-1]])
    bt = (1 - abp) / (1 - ab_np) * sb64
    gauss = GaussianDataModel(ab_s)
    big = (16, 1, 64, 64)
    x_T = _noise(big, 14)
    m2 = float((x_T.double() ** 2).mean())
    N = x_T.numel()
    options = {
        "beta": ("sigma_t^2 = beta_t", sb64),
        "beta_tilde": ("sigma_t^2 = beta_tilde_t", bt),
    }
    candidates = [
        ("sigma_t^2 = beta_t", sb64, False),
        ("sigma_t^2 = beta_tilde_t", bt, False),
        ("sigma_t = beta_t (the variance squared): sigma_t must be sqrt(beta_t)", sb64 ** 2, False),
        ("sigma_t = beta_tilde_t instead of sqrt(beta_tilde_t)", bt ** 2, False),
        ("no noise at all: the variance option is ignored (or treated as 'none')", 0 * sb64, False),
        ("noise is added at the last step (t == 0)", sb64, True),
    ]
    outs = {}
    for variance, (label, s2) in options.items():
        out, _ = _run_loop(p_sample_loop, gauss, x_T.clone(), sb, variance, 100, generator(4),
                           f"p_sample_loop(..., variance={variance!r})")
        got = as_tensor_array(out, f"x_0 returned by p_sample_loop(variance={variance!r})", shape=big)
        outs[variance] = got
        k2, v = _gaussian_output_variance(sb64, s2)
        want = k2 * m2 + v
        var = float((got ** 2).mean())
        sd = math.sqrt(2.0 / N) * v + 1e-4
        if not _stat_close(var, want, sd, 6):
            hint = None
            for name, s2c, last in candidates:
                k2c, vc = _gaussian_output_variance(sb64, s2c, last)
                if name != label and _stat_close(var, k2c * m2 + vc, sd, 4):
                    hint = name + (" - the variance option is ignored" if name.startswith("sigma_t^2") else "")
                    break
            raise CheckFailed(
                f"p_sample_loop(variance={variance!r}) on Gaussian data (x_0 ~ N(0, I), exact noise predictor, "
                f"10 steps with beta from 0.05 to 0.5): the output's mean square should be {want:.4f} "
                f"({label}), got {var:.4f}." + (f"\nLikely cause: {hint}." if hint else ""))
    expect(not close(outs["beta"], outs["beta_tilde"], atol=1e-6, rtol=0),
           "p_sample_loop gave the same output for variance='beta' and variance='beta_tilde'.",
           hint="the variance option is ignored.")

    # 4. the generator: same seed, same samples; another seed, other samples
    small = (2, 1, 8, 8)
    x_T = _noise(small, 15)
    a1, _ = _run_loop(p_sample_loop, gauss, x_T.clone(), sb, "beta", 100, generator(7), "p_sample_loop(...)")
    a2, _ = _run_loop(p_sample_loop, gauss, x_T.clone(), sb, "beta", 100, generator(7), "p_sample_loop(...)")
    a3, _ = _run_loop(p_sample_loop, gauss, x_T.clone(), sb, "beta", 100, generator(8), "p_sample_loop(...)")
    a1, a2, a3 = (as_tensor_array(a, "x_0", shape=small) for a in (a1, a2, a3))
    expect(close(a1, a2, atol=1e-7, rtol=0),
           "p_sample_loop gave different samples for two generators with the same seed.",
           hint="draw z with the generator: torch.randn(x.shape, generator=generator) (not torch.randn_like, "
                "which uses the global random state).")
    expect(not close(a1, a3, atol=1e-6, rtol=0),
           "p_sample_loop gave the same samples for generators with different seeds (variance='beta').",
           hint="no noise is drawn (or the variance option is ignored).")


# ----------------------------------------------------------------------------------------------
# ddim_step
# ----------------------------------------------------------------------------------------------
def _ddim_variants(x, eps, z, t, t_prev, ab, eta):
    """Correct DDIM step (eq. 12, sigma of eq. 16) and mistaken variants, float64."""
    T = ab.shape[0]
    alpha = ab / np.concatenate([[1.0], ab[:-1]])  # DDPM's one-step alpha

    def step(a_t, a_p, eta_=eta, clamp=True):
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        s = eta_ * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(max(1 - a_t / a_p, 0.0))
        d = 1 - a_p - s ** 2
        d = max(d, 0.0) if clamp else d
        return math.sqrt(a_p) * x0 + math.sqrt(max(d, 0.0)) * eps + (s * z if z is not None else 0.0)

    a_p = ab[t_prev] if t_prev >= 0 else 1.0
    want = step(ab[t], a_p)
    variants = [
        ("alpha_bar_prev for t_prev = -1 taken as alpha_bar[-1] (the LAST value of the schedule); "
         "t_prev = -1 means alpha_bar_prev = 1, the clean image.", step(ab[t], ab[-1]) if t_prev == -1 else None),
        ("alpha_bar_prev for t_prev = -1 taken as alpha_bar[0]; t_prev = -1 means alpha_bar_prev = 1.",
         step(ab[t], ab[0]) if t_prev == -1 else None),
        ("eta is ignored: sigma = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev) (eq. 16) "
         "must enter both the noise term and sqrt(1 - ab_prev - sigma^2).",
         step(ab[t], a_p, eta_=0.0) if eta > 0 else None),
        ("the noise sigma * z is added but sigma^2 is not subtracted inside sqrt(1 - ab_prev - sigma^2).",
         (step(ab[t], a_p, eta_=0.0) + (eta * math.sqrt((1 - a_p) / (1 - ab[t])) * math.sqrt(1 - ab[t] / a_p)) * z)
         if eta > 0 and z is not None else None),
        ("DDPM's one-step alpha used where DDIM needs alpha_bar (DDIM's alpha_t is DDPM's alpha_bar_t).",
         step(alpha[t], alpha[t_prev] if t_prev >= 0 else 1.0)),
        ("alpha_bar off by one: alpha_bar[t - 1] used for the current step.",
         step(ab[t - 1], a_p) if t - 1 > t_prev and t >= 1 else None),
        ("alpha_bar_prev off by one: alpha_bar[t_prev + 1] used.",
         step(ab[t], ab[t_prev + 1]) if t_prev + 1 < T else None),
    ]
    return want, variants


def check_ddim_step(ns):
    ddim_step = student(ns, "ddim_step")
    beta = _linear_beta(1000)
    ab_t = torch.cumprod(1 - beta, 0)  # float32, as the notebook builds it
    ab = ab_t.double().numpy()
    shape = (3, 1, 6, 6)
    x = _noise(shape, 20)
    z = _noise(shape, 22)
    model = RecordingModel(_FixedNoiseModel())
    cases = [(999, 979, 0.0, None), (500, 480, 0.0, None), (20, 0, 0.0, None), (0, -1, 0.0, None),
             (40, -1, 0.0, None), (500, 480, 1.0, z), (300, 200, 0.5, z), (20, 0, 1.0, z), (0, -1, 1.0, z),
             (700, 600, 0.0, z)]
    for t, t_prev, eta, zz in cases:
        model.calls.clear()
        label = f"ddim_step(model, x_t, t={t}, t_prev={t_prev}, alpha_bar, eta={eta}" + (", z)" if zz is not None else ")")
        x_in = x.clone()
        out = call(ddim_step, model, x_in, t, t_prev, ab_t, eta=eta, z=None if zz is None else zz.clone(), what=label)
        if type(out) is torch.Tensor and not bool(torch.isfinite(out).all()):
            raise CheckFailed(
                f"{label} returned NaN or infinite values." + (
                    "\nLikely cause: alpha_bar_prev for t_prev = -1 taken as alpha_bar[-1] (the LAST value of the "
                    "schedule, almost 0), so 1 - ab_t / ab_prev < 0 under a square root; t_prev = -1 means "
                    "alpha_bar_prev = 1." if t_prev == -1 else
                    "\nLikely cause: a negative number under a square root; clamp 1 - ab_prev - sigma^2 at 0."))
        got = as_tensor_array(out, label, shape=shape)
        expect(torch.equal(x_in, x), "ddim_step changed x_t in place.")
        steps = _visited(model, shape[0], "ddim_step")
        expect(len(steps) >= 1 and all(s == t for s in steps),
               f"{label} called the model at t = {sorted(set(steps))}; expected t = {t}.")
        want, variants = _ddim_variants(x.double().numpy(), _eps_of(x, t),
                                        None if zz is None else zz.double().numpy(), t, t_prev, ab, eta)
        match_variants(got, want, variants, f"The result of {label}", atol=5e-5, rtol=5e-4)
    # the delta-data oracle: the last step (t_prev = -1) lands exactly on the data
    c = _images((1, 1, 4, 4), 23).double()
    ab64 = torch.cumprod(1 - beta.double(), 0)
    for t in (0, 10, 999):
        x_t = ab64[t].sqrt() * c + (1 - ab64[t]).sqrt() * _noise((2, 1, 4, 4), 24 + t).double()
        out = call(ddim_step, DeltaDataModel(c, ab64), x_t, t, -1, ab64, eta=0.0, z=None,
                   what=f"ddim_step(..., t={t}, t_prev=-1, ...)")
        got = as_tensor_array(out, "ddim_step(..., t_prev=-1)", shape=(2, 1, 4, 4))
        c2 = np.broadcast_to(c.numpy(), (2, 1, 4, 4))
        expect(close(got, c2, atol=1e-6, rtol=1e-6),
               f"With the exact noise predictor of one-image data c, ddim_step(t={t}, t_prev=-1) must return c "
               f"(x0_hat = c and alpha_bar_prev = 1): {describe_diff(got, c2)}.",
               hint="t_prev = -1 must mean alpha_bar_prev = 1 (alpha_bar[-1] is the last value of the schedule).")


# ----------------------------------------------------------------------------------------------
# ddim_sample
# ----------------------------------------------------------------------------------------------
def _check_taus(steps: list[int], T: int, num_steps: int, what: str) -> None:
    base = f"{what} should call the model at {num_steps} evenly spaced steps from {T - 1} down to 0"
    expect(len(steps) > 0, base + ", but it never called the model.")
    expect(steps[0] == T - 1, base + f"; the first call was at t = {steps[0]}.",
           hint="start at t = T - 1 (x_T is pure noise at the last code index), e.g. "
                "torch.linspace(T - 1, 0, num_steps).round().long().")
    expect(steps[-1] == 0, base + f"; the last call was at t = {steps[-1]}.",
           hint="end the sub-sequence at t = 0, then step onto x_0 with t_prev = -1.")
    expect(all(a > b for a, b in zip(steps, steps[1:])),
           base + f"; the calls were not strictly decreasing: {_describe_steps(steps)}.")
    expect(len(steps) == num_steps,
           base + f"; it made {len(steps)} model calls: {_describe_steps(steps)}.",
           hint="one model evaluation per step of the sub-sequence.")
    gaps = [a - b for a, b in zip(steps, steps[1:])]
    if gaps:
        expect(max(gaps) - min(gaps) <= 1,
               base + f"; the gaps between steps range from {min(gaps)} to {max(gaps)}.",
               hint="space the steps evenly, e.g. torch.linspace(T - 1, 0, num_steps).round().long().")


def _ddim_replay_pairs(x_T: np.ndarray, pairs: list[tuple[int, int]], ab: np.ndarray) -> np.ndarray:
    """Deterministic DDIM (eta = 0, eq. 12) with the Gaussian-data oracle ``eps = sqrt(1 - ab_t) x``,
    one step from t to t_prev for each ``(t, t_prev)`` of ``pairs`` (t_prev = -1: alpha_bar = 1)."""
    x = x_T.copy()
    for t, tp in pairs:
        a_t, a_p = ab[t], (ab[tp] if tp >= 0 else 1.0)
        eps = math.sqrt(1 - a_t) * x
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        x = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * eps
    return x


def _ddim_replay(x_T: np.ndarray, steps: list[int], ab: np.ndarray) -> np.ndarray:
    """Deterministic DDIM (eta = 0) with the Gaussian-data oracle along the given steps, then to -1."""
    return _ddim_replay_pairs(x_T, list(zip(steps, steps[1:] + [-1])), ab)


def check_ddim_sample(ns):
    ddim_sample = student(ns, "ddim_sample")
    with swapped_in(ns, {"ddim_step": _ref_ddim_step}, fn=ddim_sample):
        _check_ddim_sample(ddim_sample)


def _check_ddim_sample(ddim_sample):
    beta = _linear_beta(1000)
    ab_t = torch.cumprod(1 - beta, 0)  # float32, as the notebook builds it
    ab64 = ab_t.double()  # the same values for the oracle models and the replay
    shape = (3, 1, 8, 8)
    # 1. the steps visited, and the delta-data oracle (DDIM returns c exactly, whatever the steps)
    c = _images((1,) + shape[1:], 30)  # one image
    for num_steps in (50, 10):
        rec = RecordingModel(DeltaDataModel(c, ab64))
        x_T = _noise(shape, 31)
        what = f"ddim_sample(model, x_T, alpha_bar, num_steps={num_steps})"
        out = call(ddim_sample, rec, x_T.clone(), ab_t, num_steps=num_steps, eta=0.0, generator=generator(1),
                   what=what)
        got = as_tensor_array(out, f"x_0 returned by {what}", shape=shape)
        _check_taus(_visited(rec, shape[0], "ddim_sample"), 1000, num_steps, what)
        err = np.max(np.abs(got - c.double().numpy()))
        if err > 1e-3:
            hint = None
            ab_last = ab64[-1].item()
            # the last step done with alpha_bar[-1] leaves x ~ sqrt(ab[-1]) c + sqrt(1 - ab[-1]) eps: noise
            if float(np.std(got - c.double().numpy())) > 0.3:
                hint = ("the final step does not go onto x_0: its t_prev must be -1 (alpha_bar_prev = 1); "
                        f"using alpha_bar[-1] = {ab_last:.2g} leaves almost pure noise.")
            raise CheckFailed(f"With the exact noise predictor of one-image data c, deterministic DDIM must return c "
                              f"exactly: largest error {err:.4g} ({what})." + (f"\nLikely cause: {hint}" if hint else ""))
    # 2. exact replay with the Gaussian-data oracle along the steps the student visited
    gauss = RecordingModel(GaussianDataModel(ab64))
    x_T = _noise(shape, 32)
    out = call(ddim_sample, gauss, x_T.clone(), ab_t, num_steps=20, eta=0.0, generator=generator(2),
               what="ddim_sample(..., num_steps=20, eta=0)")
    got = as_tensor_array(out, "x_0 returned by ddim_sample", shape=shape)
    steps = _visited(gauss, shape[0], "ddim_sample")
    _check_taus(steps, 1000, 20, "ddim_sample(..., num_steps=20)")
    want = _ddim_replay(x_T.double().numpy(), steps, ab64.numpy())
    one_step = _ddim_replay_pairs(x_T.double().numpy(), [(t, t - 1) for t in steps], ab64.numpy())
    match_variants(got, want, [("each step goes from t to t - 1 instead of to the next step of the sub-sequence "
                                "(t_prev must be the next, smaller step; -1 after the last).", one_step)],
                   "ddim_sample (eta = 0, Gaussian-data oracle)", atol=1e-5, rtol=1e-3,
                   context=": every step must go from one step of the sub-sequence to the next, "
                           "ending with t_prev = -1")
    # 3. eta > 0: noisy (seeded by the generator), and the noise has the eq. 16 size
    big = (8, 1, 32, 32)
    x_T = _noise(big, 33)
    g_model = GaussianDataModel(ab64)
    det = as_tensor_array(call(ddim_sample, g_model, x_T.clone(), ab_t, num_steps=10, eta=0.0,
                               generator=generator(3), what="ddim_sample(..., eta=0)"),
                          "ddim_sample(..., eta=0)", shape=big)
    rec = RecordingModel(g_model)
    outs = [as_tensor_array(call(ddim_sample, model, x_T.clone(), ab_t, num_steps=10, eta=1.0,
                                 generator=generator(seed), what="ddim_sample(..., eta=1)"),
                            "ddim_sample(..., eta=1)", shape=big)
            for model, seed in ((rec, 3), (g_model, 3), (g_model, 4))]
    steps10 = _visited(rec, big[0], "ddim_sample")  # the steps of the first call, for the variance below
    _check_taus(steps10, 1000, 10, "ddim_sample(..., num_steps=10, eta=1.0)")
    expect(not close(outs[0], det, atol=1e-5, rtol=0),
           "ddim_sample(..., eta=1.0) gave the same result as eta=0.0.",
           hint="eta is ignored (pass it on to ddim_step, with noise z drawn from the generator).")
    expect(close(outs[0], outs[1], atol=1e-7, rtol=0),
           "ddim_sample(..., eta=1.0) gave different samples for two generators with the same seed.",
           hint="draw z with the generator: torch.randn(x.shape, generator=generator).")
    expect(not close(outs[0], outs[2], atol=1e-6, rtol=0),
           "ddim_sample(..., eta=1.0) gave the same samples for generators with different seeds.")
    # the variance along 10 steps: x_prev = k x + s z with the Gaussian oracle
    ab = ab64.numpy()
    kk, v = 1.0, 0.0
    for t, tp in zip(steps10, steps10[1:] + [-1]):
        a_t, a_p = ab[t], (ab[tp] if tp >= 0 else 1.0)
        s = math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        k = math.sqrt(a_p) * math.sqrt(a_t) + math.sqrt(max(1 - a_p - s * s, 0.0)) * math.sqrt(1 - a_t)
        kk, v = kk * k, k * k * v + s * s
    resid = outs[0] - kk * x_T.double().numpy()
    var = float((resid ** 2).mean())
    sd = math.sqrt(2.0 / resid.size) * v + 1e-4
    expect(_stat_close(var, v, sd, 6),
           f"ddim_sample(..., num_steps=10, eta=1.0) on Gaussian data: the added noise should have variance "
           f"{v:.4f} (sigma of eq. 16 at every step but the last), got {var:.4f}.",
           hint="sigma(eta) = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev), "
                "with z drawn fresh at every step.")


# ----------------------------------------------------------------------------------------------
# sdedit
# ----------------------------------------------------------------------------------------------
def check_sdedit(ns):
    sdedit = student(ns, "sdedit")
    with swapped_in(ns, {"p_sample_step": _ref_p_sample_step}, fn=sdedit):
        _check_sdedit(sdedit)


def _check_sdedit(sdedit):
    beta = _linear_beta(1000)
    b64 = beta.double().numpy()
    ab64 = torch.cumprod(1 - beta.double(), 0)
    ab = ab64.numpy()
    shape = (4, 1, 16, 16)
    x_0 = _images(shape, 40)
    for t_start in (300, 0):
        rec = RecordingModel(_FixedNoiseModel())
        x_in = x_0.clone()
        what = f"sdedit(model, x_0, t_start={t_start}, beta)"
        out = call(sdedit, rec, x_in, t_start, beta, generator=generator(5), what=what)
        got = as_tensor_array(out, f"the result of {what}", shape=shape)
        expect(torch.equal(x_in, x_0), "sdedit changed x_0 in place.")
        steps = _visited(rec, shape[0], "sdedit")
        want_steps = list(range(t_start, -1, -1))
        if steps != want_steps:
            hint = None
            if steps and steps[0] == 999:
                hint = ("the images are noised to t_start but the denoising starts from T - 1; run the ancestral "
                        "steps t = t_start, t_start - 1, ..., 0 only.")
            elif steps == list(range(t_start - 1, -1, -1)):
                hint = "the first step (t = t_start) is skipped: x_{t_start} is the input of step t_start."
            elif steps == list(range(t_start, 0, -1)):
                hint = "the loop skips index 0."
            raise CheckFailed(f"{what} should call the model at t = {t_start}, {t_start - 1}, ..., 0; it called it at "
                              f"{_describe_steps(steps)}." + (f"\nLikely cause: {hint}" if hint else ""))
        xs = [c["x"].double().numpy() for c in rec.calls]
        # the first input is q_sample(x_0, t_start): (x - sqrt(ab) x_0) / sqrt(1 - ab) is N(0, 1), independent of x_0
        r = (xs[0] - math.sqrt(ab[t_start]) * x_0.double().numpy()) / math.sqrt(1 - ab[t_start])
        n = r.size
        std = float(r.std())
        corr = float(np.corrcoef(r.reshape(-1), x_0.double().numpy().reshape(-1))[0, 1])
        if not (abs(std - 1) < 6 / math.sqrt(2 * n) + 0.01 and abs(corr) < 6 / math.sqrt(n) and abs(r.mean()) < 6 / math.sqrt(n)):
            pure = xs[0]
            hint = None
            if abs(float(pure.std()) - 1) < 0.1 and abs(float(np.corrcoef(pure.reshape(-1), x_0.double().numpy().reshape(-1))[0, 1])) < 0.1:
                hint = ("sdedit starts from pure noise; it must start from the real images noised to t_start, "
                        "q_sample(x_0, t_start, alpha_bar, noise).")
            raise CheckFailed(
                f"{what}: the first input of the model should be q_sample(x_0, t_start) = sqrt(alpha_bar[t_start]) x_0 "
                f"+ sqrt(1 - alpha_bar[t_start]) noise; its normalised residual has std {std:.3f} (expected 1) and "
                f"correlation {corr:.3f} with x_0 (expected 0)." + (f"\nLikely cause: {hint}" if hint else ""))
        # every step: next input = mean of the step + sqrt(beta_t) z; the output = mean of the last step
        resid = []
        for k, t in enumerate(want_steps):
            eps = _eps_of(rec.calls[k]["x"], t)
            mean = (xs[k] - b64[t] / math.sqrt(1 - ab[t]) * eps) / math.sqrt(1 - b64[t])
            nxt = xs[k + 1] if k + 1 < len(xs) else got
            if t == 0:
                expect(close(got, mean, atol=2e-5, rtol=2e-4),
                       f"{what}: the last step (t = 0) must return its mean (Algorithm 2 with z = 0): "
                       f"{describe_diff(got, mean)}.", hint="noise added at the last step.")
            else:
                resid.append(((nxt - mean) / math.sqrt(b64[t])).reshape(-1))
        if resid:
            r = np.concatenate(resid)
            std = float(r.std())
            expect(abs(std - 1) < 6 / math.sqrt(2 * r.size) + 0.01 and abs(float(r.mean())) < 6 / math.sqrt(r.size) + 0.01,
                   f"{what}: each step must be x_{{t-1}} = mean + sqrt(beta_t) z (Algorithm 2); the added noise "
                   f"divided by sqrt(beta_t) has std {std:.3f}, expected 1.",
                   hint="the steps must be Algorithm 2's ancestral steps with sigma_t = sqrt(beta_t) and fresh z.")
    # reproducible with the generator
    m = _FixedNoiseModel()
    o1 = as_tensor_array(call(sdedit, m, x_0.clone(), 50, beta, generator=generator(9)), "sdedit(...)")
    o2 = as_tensor_array(call(sdedit, m, x_0.clone(), 50, beta, generator=generator(9)), "sdedit(...)")
    o3 = as_tensor_array(call(sdedit, m, x_0.clone(), 50, beta, generator=generator(10)), "sdedit(...)")
    expect(close(o1, o2, atol=1e-7, rtol=0),
           "sdedit gave different results for two generators with the same seed.",
           hint="draw every noise (the q_sample noise and each z) with the generator.")
    expect(not close(o1, o3, atol=1e-6, rtol=0),
           "sdedit gave the same result for generators with different seeds.")


CHECKS = {
    "p_sample_step": check_p_sample_step,
    "posterior_variance": check_posterior_variance,
    "p_sample_loop": check_p_sample_loop,
    "ddim_step": check_ddim_step,
    "ddim_sample": check_ddim_sample,
    "sdedit": check_sdedit,
}

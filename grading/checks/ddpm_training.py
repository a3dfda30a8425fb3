"""Hidden checks of notebook 02_ddpm_training (Ho et al. 2020, Algorithm 1).

One check per graded function: ``timestep_embedding``, ``ddpm_loss``, ``train_step``, ``evaluate``
and ``ema_update``. Each check runs the student's function on small inputs with stub models whose
right answer is known exactly, and, when the answer is wrong, compares it with the known mistaken
variants to name the likely cause.

Random functions (``train_step``, ``evaluate``) are tested through relations, never by replaying a
generator: the ``t`` and ``x_t`` the model was called with must be consistent with *some* standard
normal noise, the returned loss must be the loss of that call, and the optimizer must have taken
exactly the step the loss's gradient asks for. Any order of random draws is accepted.

Every check is trusted (``grading.verdict``): before its ``yield`` it only asks for calls, whose
inputs are drawn from the grading run's secret seed (``p.gen``), with the stubs of
``gradeprobe.stubs_ddpm_training`` built in the kernel; the kernel runs them and sends back plain
data (the values, the calls the recording stubs saw, the parameters and gradients afterwards, the
optimizer's counters); after the ``yield`` the check judges in the grader's own process, recomputing
what each stub should have done with its own copy of the stub classes.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gradeprobe import stubs_ddpm_training as stubs
from grading.hidden import CheckFailed, as_array, close, expect, first_match, max_abs_diff
from grading.records import TensorRecord, type_name
from grading.reference import ddpm_training as ref
from grading.reference import forward_process as ref01
from grading.discipline import (expect_global_rng_untouched, expect_no_globals, same_value,
                                trap_globals)
from grading.verdict import Outcome, Probe, expect_unchanged, trusted

__all__ = ["CHECKS"]


# ----------------------------------------------------------------------------- small utilities

def _f64(x) -> np.ndarray:
    """A tensor (any dtype, detached) or a recorded tensor as a float64 numpy array."""
    if isinstance(x, TensorRecord):
        return np.asarray(x.array, dtype=np.float64)
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    return x.detach().cpu().to(torch.float64).numpy()


_GLOBAL_NAMES = ("T", "beta", "alpha_bar")


def _notebook_globals() -> dict:
    """Wrong values for the notebook's globals T, beta and alpha_bar (the course's 1000-step linear
    schedule), bound while a trap call runs with a short schedule of its own."""
    beta = ref01.linear_beta_schedule(1000)
    return {"T": 1000, "beta": beta, "alpha_bar": ref01.alphas_from_betas(beta)[1]}


def _consistent_globals(alpha_bar: torch.Tensor) -> dict:
    return {"T": int(alpha_bar.shape[0]), "beta": 1 - alpha_bar / torch.cat([torch.ones(1), alpha_bar[:-1]]),
            "alpha_bar": alpha_bar}


def _seen_draws(out: Outcome, model) -> list:
    """The (t, x_t) the recording stub model saw in one call: what the call drew."""
    return [(c.get("t"), c.get("x")) for c in out.model_calls(model)]


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _schedule(T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """A short linear schedule's alpha_bar (float32, (T,)) from the reference of notebook 01."""
    _, alpha_bar = ref01.alphas_from_betas(ref01.linear_beta_schedule(T, beta_start, beta_end))
    return alpha_bar


def _as_scalar_float(value, what: str) -> float:
    """The student's returned loss as a float; it must be a Python float as the spec says."""
    if isinstance(value, TensorRecord):
        raise CheckFailed(
            f"{what} must return the loss as a Python float, got a torch.Tensor of shape "
            f"{tuple(value.shape)}. Likely cause: returning `loss` instead of `loss.item()`.")
    if isinstance(value, bool) or not isinstance(value, (float, np.floating)):
        raise CheckFailed(f"{what} must return the loss as a Python float, got {type_name(value)}. "
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


def _judge_one_embedding(out: Outcome, t: torch.Tensor, dim: int, max_period: float | None) -> None:
    mp = 10000.0 if max_period is None else max_period
    shown = out.what
    value = out.value
    expect(isinstance(value, TensorRecord),
           f"{shown} must return a torch.Tensor (the U-Net adds it to its feature maps), "
           f"got {type_name(value)}.",
           hint="convert a numpy result with torch.from_numpy(...).float()")
    expect(value.is_floating_point, f"{shown} must return a floating-point tensor, got dtype {value.dtype}.")
    expect(tuple(value.shape) == (t.shape[0], dim),
           f"{shown} must return shape ({t.shape[0]}, {dim}): one row per time, one column per "
           f"dimension; got {tuple(value.shape)}.",
           hint="concatenate the sin half and the cos half along dim=1 (torch.cat([...], dim=1))")
    got = as_array(value, "timestep_embedding(...)")
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


@trusted
def check_timestep_embedding(p: Probe):
    # t = 0 pins the layout (all sines are 0, all cosines 1); large t tests the frequencies.
    g = p.gen(1)
    mid = torch.randint(1, 999, (3,), generator=g)  # (3,) other times every grading run
    cases = [
        (torch.cat([torch.tensor([0, 1, 2]), mid, torch.tensor([100, 999])]), 16, None),
        (torch.tensor([0, 3, 50, 7]), 8, 100.0),
        (torch.randint(0, 1000, (1,), generator=g), 2, None),  # dim = 2: one sine, one cosine
        (torch.sort(torch.randint(0, 1000, (28,), generator=g)).values, 64, None),  # a batch as the U-Net passes it
    ]
    outs = []
    for t, dim, max_period in cases:
        args = (t, dim) if max_period is None else (t, dim, max_period)
        shown = f"timestep_embedding(t={t.tolist()}, dim={dim}" + \
            ("" if max_period is None else f", max_period={max_period}") + ")"
        outs.append(p.call("timestep_embedding", *args, what=shown))
    yield
    for (t, dim, max_period), out in zip(cases, outs):
        _judge_one_embedding(out, t, dim, max_period)


# ----------------------------------------------------------------------------- stub models

def _check_unconditional(calls: list[dict], shown: str) -> None:
    """The stubs take (x_t, t): a third argument means the model was called as a conditional one."""
    for c in calls:
        rest = c.get("rest") or []
        if rest:
            raise CheckFailed(f"the model of this notebook is unconditional: call it as model(x_t, t), "
                              f"got {2 + len(rest)} arguments (in {shown}).")


def _params(state: Outcome) -> tuple[dict, dict]:
    """The parameters and gradients of a recorded stub (names without the recorder's ``inner.``)."""
    value = state.value
    if not isinstance(value, dict) or not isinstance(value.get("params"), dict):
        raise CheckFailed("the hidden tests could not read the stub model's parameters back.")

    def strip(d):
        return {k.removeprefix("inner."): v for k, v in (d or {}).items() if k != "dummy"}

    return strip(value["params"]), strip(value.get("grads"))


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


@trusted
def check_ddpm_loss(p: Probe):
    g = p.gen(2)
    T = 50
    alpha_bar = _schedule(T, 1e-3, 0.2)  # (50,) falls to about 0.006
    x_0 = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1  # (B, C, H, W) in [-1, 1]
    noise = torch.randn(6, 1, 4, 4, generator=g)  # (B, C, H, W)
    inner = torch.sort(torch.randperm(T - 2, generator=g)[:4] + 1).values  # (4,) distinct times in 1..T-2
    t = torch.cat([torch.tensor([0]), inner, torch.tensor([T - 1])])  # (B,) long, both ends included
    model = p.stub("ddpm_training.AffineNoiseNet", record=True, T=T)
    shown = "ddpm_loss(model, x_0, t, noise, alpha_bar)"
    out = p.call("ddpm_loss", model, x_0, t, noise, alpha_bar, what=shown, keep=True)
    back = p.method(out, "backward", what="loss.backward() on the loss returned by ddpm_loss")
    state = p.inspect(model, "the stub model after loss.backward()")
    # the notebook's globals T, beta, alpha_bar bound to the 1000-step schedule, then to this one
    trap = [p.call("ddpm_loss", p.stub("ddpm_training.AffineNoiseNet", T=T), x_0, t, noise, alpha_bar, what=shown,
                   bind=bind) for bind in (_notebook_globals(), _consistent_globals(alpha_bar))]
    yield

    expect_no_globals(*trap, _GLOBAL_NAMES, "ddpm_loss", " (a 50-step alpha_bar)")
    expect_unchanged(out, {"model": None, "x_0": x_0, "t": t, "noise": noise, "alpha_bar": alpha_bar}, "ddpm_loss")
    loss = out.value
    expect(isinstance(loss, TensorRecord),
           f"{shown} must return a 0-d torch.Tensor (so that loss.backward() works), got {type_name(loss)}.",
           hint="return the tensor, not loss.item()")
    expect(len(loss.shape) == 0,
           f"{shown} must return a 0-d tensor (a single number), got shape {tuple(loss.shape)}.",
           hint="take the mean over every element: ((noise - eps_pred) ** 2).mean() or F.mse_loss(eps_pred, noise)")
    # (a float64 loss is accepted: it back-propagates into float32 parameters alike)
    calls = out.model_calls(model)
    expect(len(calls) >= 1, f"{shown} never called model(x_t, t).")
    _check_unconditional(calls, shown)
    first = calls[0]
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
    t_seen = _f64(first["t"])
    expect(t_seen.shape == (6,) and close(t_seen, _f64(t), 0, rtol=0),
           f"{shown} must call model(x_t, t) with the given t {t.tolist()}, got {t_seen.tolist()}.")

    got = float(_f64(loss))
    pred = first["out"]
    want = float(np.mean((_f64(noise) - _f64(pred)) ** 2))
    if not math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-7):
        variants = _ddpm_loss_variants(x_0, t, noise, alpha_bar, x_seen, pred)
        cause = first_match(got, variants, atol=1e-7, rtol=1e-4) or \
            "the loss must be the mean over every element of (noise - model(x_t, t)) ** 2"
        raise CheckFailed(f"{shown} returned {_fmt(got)}, expected the mean squared error on the noise "
                          f"{_fmt(want)}. Likely cause: {cause}.")

    expect(loss.requires_grad,
           f"{shown} returned a loss that carries no gradient, so training could not learn anything.",
           hint="do not compute it under torch.no_grad() and do not .detach() it")
    if back.raised:
        raise CheckFailed(back.error)
    fresh = stubs.AffineNoiseNet(T)  # the trusted copy of the stub: the gradient it should have
    want_loss = ((noise - fresh(x_t, t)) ** 2).mean()
    want_loss.backward()
    _, grads = _params(state)
    for name, q in fresh.named_parameters():
        gr = grads.get(name)
        expect(isinstance(gr, TensorRecord),
               f"after loss.backward() the model parameter {name!r} has no gradient: the loss returned by "
               f"{shown} is not connected to the model's output.")
        expect(close(_f64(gr), _f64(q.grad), atol=1e-6, rtol=1e-4),
               f"the gradient of the returned loss with respect to the model parameter {name!r} is "
               f"{_fmt(float(_f64(gr)))}, expected {_fmt(float(q.grad))}.",
               hint="the loss must be computed from the model output of this call, with the mean squared error")


# ----------------------------------------------------------------------------- train_step

def _implied_noise(x_t, x_0, t, alpha_bar) -> np.ndarray:
    """The noise eps with x_t = sqrt(ab[t]) x_0 + sqrt(1 - ab[t]) eps, per example (float64)."""
    ab = _f64(alpha_bar)[t].reshape(-1, *([1] * (x_0.dim() - 1)))
    return (_f64(x_t) - np.sqrt(ab) * _f64(x_0)) / np.sqrt(1 - ab)


def _check_times(t_seen: TensorRecord, B: int, T: int, where: str) -> np.ndarray:
    """The recorded times of a model call, checked: (B,) integers in [0, T - 1], not all equal."""
    expect(tuple(t_seen.shape) == (B,),
           f"{where}: the model got t of shape {tuple(t_seen.shape)}, expected ({B},): one time per example.",
           hint="t = torch.randint(0, T, (B,), generator=generator)")
    expect(not t_seen.is_floating_point and t_seen.dtype != "torch.bool",
           f"{where}: the model got t of dtype {t_seen.dtype}, expected torch.long (integer steps).")
    tv = np.asarray(t_seen.array).astype(np.int64)
    lo, hi = int(tv.min()), int(tv.max())
    expect(lo >= 0 and hi <= T - 1,
           f"{where}: t must lie in [0, {T - 1}] (0-based steps, T = {T}), got values in [{lo}, {hi}]. "
           f"Likely cause: T not taken from the alpha_bar argument (T = alpha_bar.shape[0]), e.g. a global "
           f"T or beta used instead.")
    expect(len(np.unique(tv)) > 1,
           f"{where}: every example of the batch got the same t = {lo}. Likely cause: one t drawn for the "
           f"whole batch; Algorithm 1 draws t independently per example, torch.randint(0, T, (B,)).")
    return tv


def _short_schedule_value(out: Outcome, T: int):
    """``out.value`` for calls that pass a short alpha_bar (T steps): an index error gets the likely cause."""
    try:
        return out.value
    except CheckFailed as exc:
        if "IndexError" in str(exc) and "out of bounds" in str(exc):
            raise CheckFailed(f"{exc} (alpha_bar here has T = {T} steps). Likely cause: T not taken from the "
                              f"alpha_bar argument (T = alpha_bar.shape[0]), e.g. a global T or beta used "
                              f"instead.") from None
        raise


@trusted
def check_train_step(p: Probe):
    T, B, lr = 20, 512, 0.05
    alpha_bar = _schedule(T, 0.01, 0.3)  # (20,) from 0.99 to about 0.03
    x_0 = torch.rand(B, 1, 2, 2, generator=p.gen(3)) * 2 - 1  # (B, C, H, W) in [-1, 1]
    garbage = 123.0
    # stale gradients from an earlier step: train_step must clear them
    model = p.stub("ddpm_training.AffineNoiseNet", record=True, T=T, stale_grad=garbage)
    opt = p.stub("ddpm_training.CountingSGD", model=model, lr=lr)
    shown = "train_step(model, optimizer, x_0, alpha_bar, generator)"
    main = p.call("train_step", model, opt, x_0, alpha_bar, p.generator(11), what=shown)
    state, counters = p.inspect(model, "the model after train_step"), p.inspect(opt, "the optimizer")
    # every random draw must come from the given generator: same seed, same draws, whatever the
    # global random state (seeded differently before each call)
    runs = []
    for seed in (1, 2):
        m = p.stub("ddpm_training.AffineNoiseNet", record=True, T=T)
        o = p.stub("ddpm_training.CountingSGD", model=m, lr=lr)
        runs.append((m, p.call("train_step", m, o, x_0, alpha_bar, generator=p.generator(5), what=shown,
                               global_seed=seed)))
    m = p.stub("ddpm_training.AffineNoiseNet", record=True, T=T)
    plain = p.call("train_step", m, p.stub("ddpm_training.CountingSGD", model=m, lr=lr), x_0, alpha_bar,
                   what="train_step(model, optimizer, x_0, alpha_bar) without a generator")

    def fresh_call(generator, **kw):
        mm = p.stub("ddpm_training.AffineNoiseNet", record=True, T=T)
        return mm, p.call("train_step", mm, p.stub("ddpm_training.CountingSGD", model=mm, lr=lr), x_0[:64],
                          alpha_bar, generator=generator, what=shown, **kw)

    # one generator for two calls continues its stream; a fresh one of the same seed reproduces
    g = p.generator(13)
    stream = [fresh_call(gen) for gen in (g, g, p.generator(13))]
    # the notebook's globals T, beta, alpha_bar bound to the 1000-step schedule, then to this one
    trap = [fresh_call(p.generator(14), bind=bind, global_seed=3)
            for bind in (_notebook_globals(), _consistent_globals(alpha_bar))]
    yield

    ret = _as_scalar_float(_short_schedule_value(main, T), shown)
    expect_unchanged(main, {"model": None, "optimizer": None, "x_0": x_0, "alpha_bar": alpha_bar}, "train_step")
    calls = main.model_calls(model)
    expect(len(calls) >= 1, f"{shown} never called model(x_t, t).")
    _check_unconditional(calls, shown)
    expect(len(calls) == 1,
           f"{shown} called the model {len(calls)} times; one forward pass per step is expected.")
    rec = calls[0]
    t_seen = _check_times(rec["t"], B, T, shown)
    counts = np.bincount(t_seen, minlength=T)
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

    steps = counters.value.get("steps") if isinstance(counters.value, dict) else None
    expect(isinstance(steps, int), "the hidden tests could not read the optimizer's counters back.")
    expect(steps >= 1,
           f"{shown} never called optimizer.step(): the parameters did not learn anything.")
    expect(steps == 1, f"{shown} called optimizer.step() {steps} times; once per train_step is expected.")
    # the expected update of plain SGD: p <- p - lr * dL/dp at the old parameters
    fresh = stubs.AffineNoiseNet(T)  # the trusted copy of the stub, with the parameters before the step
    before = {k: float(v.detach()) for k, v in fresh.named_parameters()}
    eps_t = torch.from_numpy(eps).to(torch.float32)
    x_in = torch.from_numpy(np.asarray(x_seen.array)).to(torch.float32)
    loss = ((eps_t - fresh(x_in, torch.from_numpy(t_seen))) ** 2).mean()
    loss.backward()
    after, _ = _params(state)
    names = [k for k, _ in fresh.named_parameters()]
    expect(all(isinstance(after.get(k), TensorRecord) for k in names),
           "the hidden tests could not read the stub model's parameters back.")
    grads = np.array([float(q.grad) for _, q in fresh.named_parameters()])  # (3,)
    moved = np.array([before[k] - float(_f64(after[k])) for k in names])  # (3,) = lr * gradient used
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

    seen = []
    for m_spec, run in runs:
        _short_schedule_value(run, T)
        run_calls = run.model_calls(m_spec)
        expect(len(run_calls) >= 1, f"{shown} never called model(x_t, t).")
        seen.append(run_calls[0])
    same = all(isinstance(seen[i][k], TensorRecord) for i in (0, 1) for k in ("t", "x")) and \
        all(seen[0][k].shape == seen[1][k].shape and np.array_equal(seen[0][k].array, seen[1][k].array)
            for k in ("t", "x"))
    expect(same,
           f"{shown}: two calls with generators seeded alike drew different t or noise. Likely cause: a draw "
           f"ignores `generator` (e.g. torch.randint(..., generator=generator) and "
           f"torch.randn(x_0.shape, generator=generator) must both get it).")
    # and without one it still works (global RNG)
    _as_scalar_float(_short_schedule_value(plain, T), "train_step without a generator")
    _judge_draw_discipline(main, [r for _, r in runs], stream, trap, "train_step", T)


def _judge_draw_discipline(main: Outcome, seeded: list, stream: list, trap: list, fn: str, T: int) -> None:
    """Families 1 and 3 for a function that draws t and the noise (train_step, evaluate): the global
    random states are left alone, one generator continues its stream, the same seed reproduces, and
    the draws do not change when the notebook's globals hold another schedule."""
    for o in [main] + seeded + [o for _, o in stream]:
        expect_global_rng_untouched(o, fn)
    first, second, fresh = (_seen_draws(o, m) for m, o in stream)
    expect(not same_value(first, second, rtol=0, atol=0),
           f"{fn}: two calls with the same generator object drew the same t and noise; the second call must "
           f"continue the generator's stream.",
           hint="the function reseeds (torch.manual_seed(generator.initial_seed()), a new torch.Generator of the "
                "same seed) instead of drawing from `generator` itself.")
    expect(same_value(first, fresh),
           f"{fn}: a generator seeded like the first one did not reproduce its draws of t and noise.",
           hint="a draw that does not come from `generator`: pass generator=generator to torch.randint and "
                "torch.randn.")
    hint = ("T not taken from the alpha_bar argument (T = alpha_bar.shape[0]), or the notebook's global alpha_bar "
            "or beta used instead of the argument alpha_bar.")
    (m_w, trapped), (m_r, control) = trap
    expect_no_globals(trapped, control, _GLOBAL_NAMES, fn, f" (a {T}-step alpha_bar)", hint=hint)
    if not control.raised and not same_value(_seen_draws(trapped, m_w), _seen_draws(control, m_r)):
        raise CheckFailed(f"{fn} (a {T}-step alpha_bar) fed the model other t or x_t when the notebook's globals "
                          f"`T`, `beta`, `alpha_bar` held the 1000-step schedule.\nLikely cause: {hint}")


# ----------------------------------------------------------------------------- evaluate

@trusted
def check_evaluate(p: Probe):
    T = 20
    alpha_bar = _schedule(T, 0.01, 0.3)
    c = torch.rand(1, 1, 4, 4, generator=p.gen(4)) * 2 - 1  # (1, C, H, W): every image equals c
    sizes = [40, 40, 40, 5]
    offsets = {40: 0.1, 5: 0.6}
    shift = 0.3
    # the model starts in train mode, as the training loop leaves it
    model = p.stub("ddpm_training.ExactDeltaNet", record=True, c=c, alpha_bar=alpha_bar,
                   offsets=[[n, v] for n, v in offsets.items()], train_shift=shift)
    batches = p.stub("ddpm_training.OneShotBatches", c=c, sizes=sizes)  # like a generator over batches
    shown = "evaluate(model, batches, alpha_bar, generator) with batches of sizes 40, 40, 40, 5"
    out = p.call("evaluate", model, batches, alpha_bar, p.generator(6), what=shown)

    def fresh_call(generator, **kw):
        mm = p.stub("ddpm_training.ExactDeltaNet", record=True, c=c, alpha_bar=alpha_bar,
                    offsets=[[n, v] for n, v in offsets.items()], train_shift=shift)
        bb = p.stub("ddpm_training.OneShotBatches", c=c, sizes=[40, 5])
        return mm, p.call("evaluate", mm, bb, alpha_bar, generator, what=shown, **kw)

    g = p.generator(7)
    stream = [fresh_call(gen) for gen in (g, g, p.generator(7))]
    seeded = [fresh_call(p.generator(8), global_seed=gs)[1] for gs in (1, 2)]
    trap = [fresh_call(p.generator(9), bind=bind, global_seed=3)
            for bind in (_notebook_globals(), _consistent_globals(alpha_bar))]
    yield

    ret = _as_scalar_float(_short_schedule_value(out, T), shown)
    calls = out.model_calls(model)
    _check_unconditional(calls, shown)
    seen = [r["x"].shape[0] for r in calls]
    expect(sum(seen) == sum(sizes),
           f"{shown}: the model saw {sum(seen)} examples in batches of {seen}, expected all {sum(sizes)} "
           f"examples ({sizes}).", hint="loop over every (x_0, y) pair of `batches`")
    expect(all(not r["grad_enabled"] for r in calls),
           f"{shown} ran the model with gradient tracking on, so it builds an autograd graph it never uses "
           f"(slow, and memory hungry). Likely cause: no torch.no_grad().",
           hint="wrap the loop in `with torch.no_grad():`")
    expect(all(not r["training"] for r in calls),
           f"{shown} ran the model in train mode. Likely cause: no model.eval() before the loop "
           f"(dropout and normalization layers behave differently in train mode).")
    for r in calls:
        if r["x"].shape[0] == 40:
            _check_times(r["t"], 40, T, shown)

    weights = np.array(sizes, dtype=np.float64)
    per_batch = np.array([offsets[n] ** 2 for n in sizes])
    want = float(np.sum(weights * per_batch) / weights.sum())
    if math.isclose(ret, want, rel_tol=1e-3, abs_tol=1e-6):
        _judge_draw_discipline(out, seeded, stream, trap, "evaluate", T)
        expect_unchanged(out, {"model": None, "batches": None, "alpha_bar": alpha_bar}, "evaluate")
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

def _small_state(g: torch.Generator, tracked: int, shift: bool = False) -> dict:
    """A state_dict of ``stubs.SmallNet`` (Linear, BatchNorm1d, Linear) with random values from ``g``
    (with ``shift``: of ``stubs.BufferedNet``, which has a float buffer ``shift`` of its own)."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    with torch.no_grad():
        for q in net.parameters():
            q.copy_(torch.randn(q.shape, generator=g))
        net[1].running_mean.copy_(torch.randn(4, generator=g))
        net[1].running_var.copy_(torch.rand(4, generator=g) + 0.5)
        net[1].num_batches_tracked.fill_(tracked)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if shift:
        state["shift"] = torch.randn(2, generator=g)
    return state


def _state_arrays(state: Outcome, what: str) -> tuple[dict, dict]:
    value = state.value
    if not isinstance(value, dict) or not isinstance(value.get("params"), dict):
        raise CheckFailed(f"the hidden tests could not read {what} back.")
    return value["params"], value.get("buffers") or {}


def _judge_ema(out: Outcome, decay, m0: dict, e0: dict, model_state: Outcome, ema_state: Outcome) -> None:
    d = 0.999 if decay is None else decay
    shown = out.what
    out.value  # noqa: B018 - raises the student's error, if any
    m_params, m_buffers = _state_arrays(model_state, "`model`")
    e_params, e_buffers = _state_arrays(ema_state, "`ema_model`")
    m_after = dict(m_params, **m_buffers)
    for k, v in m0.items():
        got = m_after.get(k)
        expect(isinstance(got, TensorRecord) and got.shape == tuple(v.shape)
               and np.array_equal(got.array, v.numpy()),
               f"{shown} changed `model` ({k}); it must only update `ema_model`. Likely cause: the two "
               f"arguments are used the other way round.")
    for k, rec in e_params.items():
        got = _f64(rec)
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
            with np.errstate(invalid="ignore", divide="ignore"):
                implied = np.nanmedian((got - m) / np.where(np.abs(e - m) > 1e-3, e - m, np.nan)) \
                    if got.shape == e.shape else np.nan
            if np.isfinite(implied) and close(got, implied * e + (1 - implied) * m, atol=1e-5, rtol=1e-4):
                cause = (f"the update used the decay {implied:.6g} instead of {d}"
                         + (" (the default decay must be 0.999)" if decay is None else ""))
            else:
                cause = "every EMA parameter must become decay * ema + (1 - decay) * param"
        raise CheckFailed(f"{shown}: the EMA parameter {k!r} is off by up to {_fmt(max_abs_diff(got, want))} "
                          f"from decay * ema + (1 - decay) * param. Likely cause: {cause}.")
    for k, b in e_buffers.items():
        if not isinstance(b, TensorRecord) or not b.is_floating_point:
            continue
        want = _f64(m0[k])
        if close(_f64(b), want, atol=1e-6, rtol=0):
            continue
        averaged = d * _f64(e0[k]) + (1 - d) * want
        kind = "a BatchNorm running statistic" if k.startswith("1.") else "a registered statistic"
        if close(_f64(b), averaged, atol=1e-6, rtol=1e-5):
            cause = ("the buffers were averaged like the parameters (e.g. a loop over state_dict() that lerps every "
                     "float entry); the spec copies floating-point buffers: b_ema.copy_(b)")
        elif close(_f64(b), _f64(e0[k]), atol=1e-6, rtol=0):
            cause = ("the buffer was not updated: copy every floating-point buffer, not only BatchNorm's "
                     "(for b_ema, b in zip(ema_model.buffers(), model.buffers()): b_ema.copy_(b))")
        else:
            cause = "for b_ema, b in zip(ema_model.buffers(), model.buffers()): b_ema.copy_(b)"
        raise CheckFailed(f"{shown}: the floating-point buffer {k!r} ({kind}) must be copied from `model`, it is off "
                          f"by {_fmt(max_abs_diff(_f64(b), want))}.\nLikely cause: {cause}.")
    for k, rec in e_params.items():
        expect(not rec.grad_fn,
               f"{shown}: the EMA parameter {k!r} is now the result of an autograd graph; update it in place "
               f"under torch.no_grad().")


@trusted
def check_ema_update(p: Probe):
    cases = []
    for i, decay in enumerate((0.9, 0.75, None)):  # None: the default decay = 0.999
        g = p.gen(10 + i)
        buffered = decay == 0.75  # one case with a float buffer outside BatchNorm
        m0, e0 = _small_state(g, 1, buffered), _small_state(g, 2, buffered)
        kind = "ddpm_training.BufferedNet" if buffered else "ddpm_training.SmallNet"
        model = p.stub(kind, state=m0)
        ema = p.stub(kind, state=e0)
        if decay is None:
            out = p.call("ema_update", ema, model, what="ema_update(ema_model, model)")
        else:
            out = p.call("ema_update", ema, model, decay=decay, what=f"ema_update(ema_model, model, decay={decay})")
        cases.append((out, decay, m0, e0, p.inspect(model, "`model`"), p.inspect(ema, "`ema_model`")))
    yield
    for case in cases:
        _judge_ema(*case)


CHECKS = {
    "timestep_embedding": check_timestep_embedding,
    "ddpm_loss": check_ddpm_loss,
    "train_step": check_train_step,
    "evaluate": check_evaluate,
    "ema_update": check_ema_update,
}

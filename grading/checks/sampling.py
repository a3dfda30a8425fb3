"""Hidden tests of notebook 03_sampling (ancestral sampling, DDIM and SDEdit).

One check per graded test cell. The checks compare with the oracles of ``docs/conventions.md``
(section 4), on small inputs (a few seconds at most on one CPU core):

* delta data: with every image equal to ``c`` the exact noise predictor is known, and a correct
  sampler (sigma^2 = beta or beta_tilde, DDIM with any steps) returns ``c`` exactly; noise added at
  the last step shows up as a spread of about sqrt(beta[0]);
* Gaussian data: x_0 ~ N(0, I) gives ``eps*(x_t) = sqrt(1 - alpha_bar_t) x_t`` and the mean of a step
  is ``sqrt(alpha_t) x_t``, so the output variance of the sampler is known in closed form for each
  choice of sigma (beta, beta_tilde, none, and the mistaken ones);
* with a given ``z`` a step is deterministic and is compared with the closed form exactly;
* a recording model shows which steps a sampler visits, in which order.

When an output is wrong it is compared with known mistaken variants (computed here) so that the
message names the likely cause. Random functions are tested through relations and statistics, never
by replaying a generator, so any order of random draws passes.

Every check is trusted (``grading.verdict``): before its ``yield`` it only asks for calls, with inputs
drawn from the grading run's secret seed (``p.gen``) and stub models of ``gradeprobe.stubs`` and
``gradeprobe.stubs_sampling``; the kernel runs them and sends back plain data; after the ``yield``
the check judges in the grader's own process.

The loop-level checks (``p_sample_loop``, ``ddim_sample``, ``sdedit``) record the calls of the
student's own ``p_sample_step`` / ``ddim_step`` (and ``posterior_variance``) while the loop runs. When
the loop uses them, the trusted side replays the loop's composition with a correct step: each
recorded call's inputs, the noise it was given and what the loop added between one call and the next
are kept, and only the step's output is replaced by the correct one (:func:`_recompose`). The old
checks then judge that replayed result, so a mistake in a step function costs points in the step's
cell only. A loop that computes its steps inline is judged on its own output.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from gradeprobe.stubs_sampling import FixedNoiseModel
from grading.hidden import (CheckFailed, as_array, as_tensor_array, close, describe_diff, expect,
                            match_variants)
from grading.records import TensorRecord, float_array, type_name
from grading.discipline import (expect_dtype_kept, expect_global_rng_untouched, expect_no_globals, expect_no_graph,
                                expect_stream, trap_globals)
from grading.verdict import Outcome, Probe, WrappedCall, expect_unchanged, trusted

# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def _linear_beta(T: int = 1000) -> torch.Tensor:
    return torch.linspace(1e-4, 0.02, T, dtype=torch.float32)  # (T,), DDPM's linear schedule


def _short_beta(T: int = 10, low: float = 0.05, high: float = 0.5) -> torch.Tensor:
    """A short schedule with large betas: the sigma conventions differ by a lot in few steps."""
    return torch.linspace(low, high, T, dtype=torch.float32)  # (T,)


_GLOBAL_NAMES = ("T", "beta", "alpha", "alpha_bar")


def _notebook_globals() -> dict:
    """Wrong values for the notebook's globals T, beta, alpha and alpha_bar: the course's 1000-step
    linear schedule, bound while a trap call runs with a schedule of its own."""
    beta = _linear_beta(1000)
    return {"T": 1000, "beta": beta, "alpha": 1 - beta, "alpha_bar": torch.cumprod(1 - beta, 0)}


def _consistent_globals(beta: torch.Tensor) -> dict:
    """The same globals bound to values that agree with a call's own schedule ``beta``."""
    return {"T": int(beta.shape[0]), "beta": beta, "alpha": 1 - beta, "alpha_bar": torch.cumprod(1 - beta, 0)}


def _beta37(g: torch.Generator) -> torch.Tensor:
    """A 37-step schedule (random, increasing): no step count of the course's."""
    return torch.sort(0.01 + 0.2 * torch.rand(37, generator=g)).values  # (37,)


def _images(shape: tuple, g: torch.Generator) -> torch.Tensor:
    """Images in [-1, 1], float32, of ``shape``."""
    return torch.rand(shape, generator=g) * 2 - 1


def _noise(shape: tuple, g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=g)


def _eps_fixed(x: np.ndarray | torch.Tensor, t: int) -> np.ndarray:
    """The prediction of :class:`FixedNoiseModel` for input ``x`` (as the model computes it)."""
    xt = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    out = FixedNoiseModel()(xt, torch.full((xt.shape[0],), int(t), dtype=torch.long))
    return out.detach().double().numpy()


# The stub models, as the trusted side computes them: ("fixed",), ("gauss", ab), ("delta", c, ab)
def _eps(model: tuple, x: np.ndarray, t: int) -> np.ndarray:
    kind = model[0]
    if kind == "fixed":
        return _eps_fixed(np.asarray(x, dtype=np.float64), t)
    if kind == "gauss":
        return math.sqrt(1 - model[1][t]) * x
    ab = model[2]
    return (x - math.sqrt(ab[t]) * model[1]) / math.sqrt(1 - ab[t])


def _int(v, what: str) -> int:
    """A time the student passed: an int, a float, or a tensor of one value (or one per example)."""
    if isinstance(v, TensorRecord):
        a = v.array.reshape(-1)
        if a.size == 0:
            raise CheckFailed(f"{what}: a time was passed as an empty tensor.")
        return int(round(float(a[0])))
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise CheckFailed(f"{what}: a time was passed as {type(v).__name__}, expected an int.")
    return int(round(float(v)))


def _num(v, default: float = 0.0) -> float:
    if v is None:
        return default
    if isinstance(v, TensorRecord):
        return float(v.array.reshape(-1)[0]) if v.array.size else default
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    return float("nan")


_a64 = float_array  # a recorded tensor's values as float64 (NaN kept), None for anything else


def _tensor(x, name: str, shape: tuple | None = None) -> np.ndarray:
    """``as_tensor_array`` that lets NaN through (a broken building block may cause them; judged later)."""
    if not (isinstance(x, TensorRecord) and x.exact):
        return as_tensor_array(x, name, shape=shape)
    return as_array(x, name, shape=shape, dtype="float", finite=False)


def _bound(c: WrappedCall, names: tuple[str, ...], defaults: dict | None = None) -> dict:
    """A recorded call's arguments by parameter name (positional, then keyword, then defaults)."""
    out = dict(defaults or {})
    out.update(dict(zip(names, c.args)))
    out.update({k: v for k, v in c.kwargs.items() if k in names})
    return out


def _glue(after: np.ndarray, before: np.ndarray) -> np.ndarray:
    """What the loop added between a step's output and the next input; 0 where both are the same
    non-finite value (a broken step's NaN passed on unchanged)."""
    with np.errstate(invalid="ignore"):
        d = after - before
    same = ~np.isfinite(after) & ~np.isfinite(before) & ((after == before) | (np.isnan(after) & np.isnan(before)))
    return np.where(same, 0.0, d)


def _recompose(xs: list[np.ndarray], outs: list[np.ndarray], start: np.ndarray | None, final: np.ndarray,
               step: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray, float]]) -> list[np.ndarray]:
    """Replay a loop's composition of its step function with a correct step.

    ``xs[k]``/``outs[k]``: the input and output of the k-th recorded step call; ``start``: the loop's
    input (None: take the first call's input); ``final``: what the loop returned. What the loop did
    between calls (``xs[k + 1] - outs[k]``: e.g. adding sigma_t z itself) is kept; each step output
    is replaced by ``step(k, x)`` = ``(output, mean, f)`` of a correct step on the replayed input,
    with the noise part (output - mean plus what the loop added) scaled by ``f``. Returns the replayed
    inputs of every call and, last, the replayed result."""
    b = xs[0] if start is None else start + _glue(xs[0], start)
    seq = [b]
    for k in range(len(xs)):
        c, m, f = step(k, b)
        nxt = xs[k + 1] if k + 1 < len(xs) else final
        with np.errstate(invalid="ignore", over="ignore"):
            b = m + f * (c - m + _glue(nxt, outs[k]))
        seq.append(b)
    return seq


_P_NAMES = ("model", "x_t", "t", "beta", "z")
_D_NAMES = ("model", "x_t", "t", "t_prev", "alpha_bar", "eta", "z")


def _step_calls(calls: list[WrappedCall] | None, names: tuple[str, ...], shape: tuple, what: str,
                defaults: dict | None = None) -> list[dict] | None:
    """The recorded calls of a loop's step function as dicts of plain values (``x``, ``out``, ``t``
    as an int, the other arguments by name), or None when the loop did not compose its step (no
    call, a call that raised, an input or output not of the loop's shape): then the loop is judged
    on its own output."""
    if not calls:
        return None
    out = []
    for c in calls:
        if c.error is not None:
            return None
        d = _bound(c, names, defaults)
        x, y = _a64(d.get("x_t")), _a64(c.value)
        if x is None or y is None or x.shape != tuple(shape) or y.shape != tuple(shape):
            return None
        d["x"], d["out"], d["t"] = x, y, _int(d.get("t"), what)
        out.append(d)
    return out


def _visited_calls(calls: list, batch: int, what: str) -> list[int]:
    """The step each recorded model call was made at (one value per call), checked to be one per batch."""
    steps = []
    for k, c in enumerate(calls):
        rec = c["t"]
        t = np.asarray(rec.array if isinstance(rec, TensorRecord) else rec, dtype=np.float64)
        t = np.round(t).astype(np.int64).reshape(-1)
        if t.size == 1:
            t = np.repeat(t, batch)
        expect(t.size == batch,
               f"{what} called the model with t of shape {tuple(np.shape(rec.array)) if isinstance(rec, TensorRecord) else ()}; "
               f"expected a long tensor of shape ({batch},) (one time per example).",
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


def _expect_step_variances(resids: list[tuple[int, np.ndarray]], sigma2: np.ndarray, label: str, what: str,
                           alternatives: list[tuple[str, np.ndarray]]) -> None:
    """Family 6: the noise each step added (``resids``: ``(t, x_{t-1} - mean_t)`` for the steps t > 0) has
    the variance ``sigma2[t]``, step by step (a figure pooled over hundreds of steps hides beta_tilde,
    which differs from beta only at the first steps); a step that fits one of ``alternatives``
    (``(likely cause, sigma^2 per step)``) names it."""
    for t, r in resids:
        want = float(sigma2[t])
        if not want > 0 or r.size < 64:
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            v = float(np.mean(np.square(r)))
        sd = want * math.sqrt(2.0 / r.size)
        if math.isfinite(v) and abs(v - want) <= 6 * sd + 1e-12:
            continue
        cause = next((name for name, s2 in alternatives
                      if math.isfinite(v) and abs(v - float(s2[t])) <= 6 * float(s2[t]) * math.sqrt(2.0 / r.size) + 1e-12),
                     None)
        raise CheckFailed(f"{what}: the noise added at step t = {t} has variance {v:.4g}, expected sigma_t^2 = {label} "
                          f"= {want:.4g} (the variance is checked at every step)."
                          + (f"\nLikely cause: {cause}" if cause else ""))


def _stat_close(got: float, want: float, sd: float, k: float = 5.0) -> bool:
    return abs(got - want) <= k * sd


def _p_step(model: tuple, x: np.ndarray, t: int, beta: np.ndarray, z: np.ndarray | None):
    """Algorithm 2, line 4 in float64: (output, mean)."""
    a = 1 - beta
    ab = np.cumprod(a)
    mean = (x - beta[t] / math.sqrt(1 - ab[t]) * _eps(model, x, t)) / math.sqrt(a[t])
    if t == 0 or z is None:
        return mean, mean
    return mean + math.sqrt(beta[t]) * z, mean


def _ddim(model: tuple, x: np.ndarray, t: int, t_prev: int, ab: np.ndarray, eta: float, z: np.ndarray | None):
    """DDIM's step (eq. 12, sigma of eq. 16) in float64."""
    a_t, a_p = ab[t], (ab[t_prev] if t_prev >= 0 else 1.0)
    eps = _eps(model, x, t)
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    s = eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(max(1 - a_t / a_p, 0.0))
    out = math.sqrt(a_p) * x0 + math.sqrt(max(1 - a_p - s * s, 0.0)) * eps
    return out + s * z if z is not None else out


def _changed(out: Outcome, pos: int, sent: torch.Tensor) -> bool:
    """Whether the call's positional argument ``pos`` (a tensor sent as ``sent``) changed in place."""
    after = out.args_after
    got = after[pos] if pos < len(after) else None
    if not isinstance(got, TensorRecord):
        return False
    want = sent.detach().numpy()
    return not (got.array.shape == want.shape and np.array_equal(got.array.astype(np.float64),
                                                                 want.astype(np.float64), equal_nan=True))


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


@trusted
def check_p_sample_step(p: Probe):
    beta = _linear_beta(1000)
    beta64 = beta.double().numpy()
    shape = (3, 1, 6, 6)
    x = _noise(shape, p.gen(1))
    z = _noise(shape, p.gen(3))
    model = p.stub("sampling.FixedNoiseModel", record=True)
    # with a given z the step is a function: calling it twice gives the same result
    # (the global random state seeded differently before each: a step that draws its own noise shows)
    twice = [p.call("p_sample_step", model, x, 500, beta, z, what="p_sample_step(...)", global_seed=gs)
             for gs in (1, 2)]
    times = (500, 10, 1, 999, 0)
    outs = [p.call("p_sample_step", model, x, t, beta, z, what=f"p_sample_step(model, x_t, t={t}, beta, z)")
            for t in times]
    # float64 inputs and a short schedule (large betas make every coefficient matter)
    sb = _short_beta(10).double()
    x64, z64 = x.double(), z.double()
    plain = p.stub("sampling.FixedNoiseModel")
    times64 = (0, 4, 9)
    outs64 = [p.call("p_sample_step", plain, x64, t, sb, z64, what=f"p_sample_step with float64 inputs (t={t})")
              for t in times64]
    # the delta-data oracle: from x_t on the forward marginal with z = 0 the step stays on the data
    c = _images((1, 1, 4, 4), p.gen(4)).double()  # one image (a batch of 2 below)
    ab = torch.cumprod(1 - sb, 0)
    oracle = p.stub("delta", c=c, alpha_bar=ab)
    x1 = ab[1].sqrt() * c + (1 - ab[1]).sqrt() * _noise((2, 1, 4, 4), p.gen(5)).double()
    out1 = p.call("p_sample_step", oracle, x1, 1, sb, torch.zeros_like(x1), what="p_sample_step(...)", keep=True)
    out0 = p.call("p_sample_step", oracle, out1, 0, sb, _noise((2, 1, 4, 4), p.gen(6)).double(),
                  what="p_sample_step(..., t=0, ...)")
    # a 37-step schedule while the notebook's globals hold the 1000-step one (then consistent ones)
    b37 = _beta37(p.gen(7))
    trap = trap_globals(p, "p_sample_step", (plain, x, 20, b37, z), {}, _notebook_globals(), _consistent_globals(b37),
                        "p_sample_step(model, x_t, t=20, beta, z) with a 37-step beta")
    yield
    expect_no_globals(*trap, _GLOBAL_NAMES, "p_sample_step", " (a 37-step beta)")

    again, first = (as_tensor_array(o.value, "p_sample_step(...)") for o in twice)
    expect(close(again, first, atol=0, rtol=0),
           "p_sample_step gave two different results for the same x_t, t and z.",
           hint="the step must use the z it is given, not draw fresh noise itself.")
    for t, out in zip(times, outs):
        got = as_tensor_array(out.value, f"p_sample_step(..., t={t}, ...)", shape=shape)
        expect_unchanged(out, {"model": None, "x_t": x, "t": None, "beta": beta, "z": z}, "p_sample_step")
        expect_dtype_kept(out.value, "torch.float32", f"p_sample_step(..., t={t}, ...)", source="x_t")
        steps = _visited_calls(out.model_calls(model), shape[0], "p_sample_step")
        expect(len(steps) >= 1, f"p_sample_step(t={t}) never called the model.")
        expect(all(s == t for s in steps),
               f"p_sample_step(t={t}) called the model at t = {sorted(set(steps))}; expected t = {t}.",
               hint="pass the code index t itself to the model (the same t the model was trained with).")
        want, variants = _step_variants(x.double().numpy(), _eps_fixed(x, t), z.double().numpy(), t, beta64)
        match_variants(got, want, variants, "p_sample_step", atol=2e-5, rtol=2e-4,
                       context=f" at t = {t} (T = 1000, linear schedule, a fixed noise prediction)")
    for t, out in zip(times64, outs64):
        got = as_tensor_array(out.value, f"p_sample_step(..., t={t}, ...) with float64 inputs", shape=shape)
        expect_dtype_kept(out.value, "torch.float64", f"p_sample_step(..., t={t}, ...) with float64 inputs",
                          source="x_t")
        want, variants = _step_variants(x64.numpy(), _eps_fixed(x64, t), z64.numpy(), t, sb.numpy())
        match_variants(got, want, variants, "p_sample_step", atol=1e-6, rtol=1e-6,
                       context=f" at t = {t} (float64, a 10-step schedule with beta from 0.05 to 0.5)")
    as_tensor_array(out1.value, "p_sample_step(...)")
    x0 = as_tensor_array(out0.value, "p_sample_step(..., t=0, ...)")
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




@trusted
def check_posterior_variance(p: Probe):
    cases = ((_short_beta(10).double(), "a 10-step float64 schedule (beta 0.05 to 0.5)", 1e-7),
             (_linear_beta(1000), "the linear schedule, T = 1000, float32", 3e-3))
    cases = cases + ((_beta37(p.gen(1)), "a random 37-step float32 schedule", 1e-4),)
    # the notebook's globals T, beta, alpha, alpha_bar hold the 1000-step schedule meanwhile
    hints = (("must match the size of tensor", "a (T,) tensor of another length was mixed in: the notebook's global "
              "alpha_bar (or alpha, T) used instead of values computed from the argument beta?"),)
    outs = [p.call("posterior_variance", beta, what=f"posterior_variance(beta) on {label}", bind=_notebook_globals(),
                   error_hints=hints) for beta, label, _ in cases]
    yield
    for (beta, label, rtol), out in zip(cases, outs):
        T = beta.shape[0]
        if T != 1000 and isinstance(out.value, TensorRecord) and out.value.shape == (1000,):
            raise CheckFailed(f"posterior_variance(beta) on {label} returned 1000 values, expected {T}.\nLikely "
                              f"cause: the notebook's global alpha_bar (or T) is used instead of the argument beta.")
        got = as_tensor_array(out.value, "posterior_variance(beta)", shape=(T,))
        expect_unchanged(out, {"beta": beta}, "posterior_variance")
        dt = str(beta.dtype)
        expect_dtype_kept(out.value, dt, f"posterior_variance(beta) on {label}", source="beta",
                          rule=f"for a {dt.removeprefix('torch.')} beta; beta_tilde keeps beta's dtype")
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




_LOOP_BLOCKS = ("p_sample_step", "posterior_variance")


def _ask_loop(p: Probe, model, x_T, beta, variance, record_every, seed, what, wrap=_LOOP_BLOCKS,
              global_seed=None) -> Outcome:
    return p.call("p_sample_loop", model, x_T, beta, variance=variance, record_every=record_every,
                  generator=p.generator(seed), what=what, wrap=wrap, global_seed=global_seed)


def _noise_factors(out: Outcome, beta: torch.Tensor, variance: str) -> dict[int, float]:
    """When the loop took sigma_t^2 = beta_tilde_t from the student's own ``posterior_variance`` and
    that returned wrong values (judged in its own cell), the factors sqrt(beta_tilde_t / theirs) that
    turn the noise the loop added into the noise of the correct beta_tilde."""
    if variance != "beta_tilde":
        return {}
    b64 = beta.double().numpy()
    want = _bt_variants(b64)[0]
    for c in out.wrapped("posterior_variance") or []:
        bb, got = _a64(_bound(c, ("beta",)).get("beta")), _a64(c.value)
        if bb is None or got is None or bb.shape != b64.shape or got.shape != want.shape \
                or not close(bb, b64, atol=0, rtol=1e-6):
            continue
        if close(got, want, atol=1e-12, rtol=3e-3):
            return {}
        return {t: math.sqrt(want[t] / got[t]) for t in range(len(want)) if np.isfinite(got[t]) and got[t] > 0}
    return {}


class _Loop:
    """What one ``p_sample_loop`` call gave: its x_0 and history, and, when it composed the student's
    own ``p_sample_step``, the same loop replayed with a correct step (``value``, ``history``)."""

    def __init__(self, out: Outcome, x_T: torch.Tensor, beta: torch.Tensor, model: tuple, variance: str,
                 what: str):
        res = out.value
        expect(isinstance(res, tuple) and len(res) == 2,
               f"{what} should return a pair (x_0, history), got {type(res).__name__}"
               + (f" of length {len(res)}" if isinstance(res, (tuple, list)) else "") + ".")
        self.shape = tuple(x_T.shape)
        x0_raw, self.hist = res
        self.raw = _tensor(x0_raw, "x_0 returned by p_sample_loop", shape=self.shape)
        self.calls = _step_calls(out.wrapped("p_sample_step"), _P_NAMES, self.shape, what)
        self.steps = [c["t"] for c in self.calls] if self.calls is not None else None
        self._out, self._x_T, self._beta, self._model, self._variance = out, x_T, beta, model, variance
        self._seq = None

    def _replay(self) -> list[np.ndarray]:
        if self._seq is None:
            b64 = self._beta.double().numpy()
            factors = _noise_factors(self._out, self._beta, self._variance)
            calls = self.calls

            def step(k, b):
                c = calls[k]
                bb = _a64(c.get("beta"))
                bb = b64 if bb is None or bb.ndim != 1 else bb
                t = c["t"]
                if not 0 <= t < bb.shape[0]:
                    return c["out"], c["out"], 1.0
                z = _a64(c.get("z"))
                out, mean = _p_step(self._model, b, t, bb, z if z is not None and z.shape == b.shape else None)
                return out, mean, factors.get(t, 1.0)

            self._seq = _recompose([c["x"] for c in calls], [c["out"] for c in calls],
                                   self._x_T.double().numpy(), self.raw, step)
        return self._seq

    def blocks_right(self) -> bool:
        """Whether the loop computed its steps inline, or its own p_sample_step (and posterior_variance)
        returned the correct values on every recorded call: then its output needs no replay."""
        if self.calls is None:
            return True
        if _noise_factors(self._out, self._beta, self._variance):
            return False
        b64 = self._beta.double().numpy()
        for c in self.calls:
            bb = _a64(c.get("beta"))
            bb = b64 if bb is None or bb.ndim != 1 else bb
            z = _a64(c.get("z"))
            if not 0 <= c["t"] < bb.shape[0]:
                return False
            want, _ = _p_step(self._model, c["x"], c["t"], bb, z if z is not None and z.shape == c["x"].shape else None)
            if not close(c["out"], want, atol=2e-5, rtol=2e-4):
                return False
        return True

    @property
    def value(self) -> np.ndarray:
        """x_0 as the loop would have returned it with a correct step (its own output if inline)."""
        if self.calls is None:
            return self.raw
        v = self._replay()[-1]
        expect(bool(np.all(np.isfinite(v))), "x_0 returned by p_sample_loop contains NaN or infinite values.")
        return v

    def history_value(self, arr: np.ndarray, t: int) -> np.ndarray:
        """A history entry (meant to be x after step ``t``), replayed like x_0: the entry is found among
        the loop's own states, nearest the state after its call at ``t`` first."""
        if self.calls is None:
            return arr
        actual = [c["x"] for c in self.calls[1:]] + [self.raw]
        seq = self._replay()[1:]
        home = next((j for j, c in enumerate(self.calls) if c["t"] == t), len(actual) - 1)
        order = sorted(range(len(actual)), key=lambda j: abs(j - home))
        for same in (lambda a: np.array_equal(a, arr, equal_nan=True),
                     lambda a: np.allclose(a, arr, atol=0, rtol=1e-6, equal_nan=True)):
            for j in order:
                if actual[j].shape == arr.shape and same(actual[j]):
                    return seq[j]
        return arr


def _check_visits(steps: list[int], composed: bool, T: int) -> None:
    want_steps = list(range(T - 1, -1, -1))
    if steps == want_steps:
        return
    hint = None
    if steps == list(range(T - 1, 0, -1)):
        hint = "the loop skips index 0: use `for t in reversed(range(T))` (0-based t = 0 is the paper's t = 1)."
    elif steps == list(range(T, 0, -1)) or steps == list(range(T, -1, -1)):
        hint = "the loop runs over the paper's t = T..1 without shifting to the 0-based code index t - 1."
    elif steps == list(range(0, T)):
        hint = "the loop runs forwards; sampling goes from t = T-1 down to 0."
    elif len(steps) == T - 2 and steps == list(range(T - 2, 0, -1)):
        hint = "the loop skips both the first and the last index."
    who = "p_sample_step" if composed else "the model"
    raise CheckFailed(f"p_sample_loop must call {who} once per step at t = {T - 1}, {T - 2}, ..., 0 "
                      f"(T = {T}); it called it at {_describe_steps(steps)}."
                      + (f"\nLikely cause: {hint}" if hint else ""))


@trusted
def check_p_sample_loop(p: Probe):
    # 1. which steps, in which order, and the history (deterministic: variance="none"); a 200-step
    # linear schedule from 1e-4 to 0.1 (the same start and end as T = 1000 up to 0.02, and a fifth of
    # the recorded step calls)
    T = 200
    beta = torch.linspace(1e-4, 0.1, T, dtype=torch.float32)  # (T,)
    ab = torch.cumprod(1 - beta.double(), 0)
    ab_np = ab.numpy()
    shape = (2, 1, 4, 4)
    x_T = _noise(shape, p.gen(10))
    rec = p.stub("gaussian", record=True, alpha_bar=ab)
    what1 = "p_sample_loop(model, x_T, beta, variance='none', record_every=20)"
    out1 = _ask_loop(p, rec, x_T, beta, "none", 20, 1, what1)
    again = _ask_loop(p, p.stub("gaussian", alpha_bar=ab), x_T, beta, "none", 20, 99,
                      "p_sample_loop(..., variance='none')", wrap=(), global_seed=7)
    # record_every that does not divide T
    sb20 = _short_beta(20)
    out20 = _ask_loop(p, p.stub("gaussian", alpha_bar=torch.cumprod(1 - sb20.double(), 0)), _noise(shape, p.gen(11)),
                      sb20, "none", 7, 2, "p_sample_loop(..., T=20, record_every=7)", wrap=())
    # 2. delta-data oracle: beta and beta_tilde return c exactly; noise at the last step shows
    beta_d, ab_d = beta, ab
    c = _images((1, 1, 8, 8), p.gen(12))  # one image; the data set holds only it
    x_T8 = _noise((4, 1, 8, 8), p.gen(13))
    delta = p.stub("delta", c=c, alpha_bar=ab_d)
    variances = ("beta", "beta_tilde", "none")
    outs_delta = [_ask_loop(p, delta, x_T8, beta_d, v, 100, 3, f"p_sample_loop(..., variance={v!r})")
                  for v in variances]
    # 3. Gaussian-data oracle: the output variance depends on sigma (a short schedule, many pixels)
    sb = _short_beta(10)
    ab_s = torch.cumprod(1 - sb.double(), 0)
    gauss = p.stub("gaussian", alpha_bar=ab_s)
    gauss_rec = p.stub("gaussian", record=True, alpha_bar=ab_s)  # its inputs give the noise of every step
    # (the statistics on 65536 values are taken from runs that do not record p_sample_step; runs on a
    # quarter of the pixels record it, to see whether the loop's own step was right on its calls)
    big, mid = (16, 1, 64, 64), (16, 1, 32, 32)
    x_big, x_mid = _noise(big, p.gen(14)), _noise(mid, p.gen(16))
    options = ("beta", "beta_tilde")
    outs_gauss = [(_ask_loop(p, gauss, x_big, sb, v, 100, 4, f"p_sample_loop(..., variance={v!r})", wrap=()),
                   _ask_loop(p, gauss_rec, x_mid, sb, v, 100, 4, f"p_sample_loop(..., variance={v!r})"))
                  for v in options]
    # 4. the generator: same seed, same samples (whatever the global random state); another seed, other samples
    small = (2, 1, 8, 8)
    x_small = _noise(small, p.gen(15))
    outs_gen = [_ask_loop(p, gauss, x_small, sb, "beta", 100, seed, "p_sample_loop(...)", global_seed=gs)
                for seed, gs in ((7, 1), (7, 2), (8, 3))]
    g = p.generator(9)
    stream = [p.call("p_sample_loop", gauss, x_small, sb, variance="beta", record_every=100, generator=gen,
                     what="p_sample_loop(..., generator)", wrap=_LOOP_BLOCKS) for gen in (g, g, p.generator(9))]
    # 5. result types: float32 kept, no autograd graph with a network that has parameters
    b37 = _beta37(p.gen(17))
    ab37 = torch.cumprod(1 - b37.double(), 0)
    param = p.stub("sampling.ParamGaussianModel", alpha_bar=ab37)
    x37 = _noise(small, p.gen(18))
    typed = p.call("p_sample_loop", param, x37, b37, variance="beta", record_every=10, generator=p.generator(10),
                   what="p_sample_loop(model with parameters, x_T, a 37-step beta)")
    # 6. a 37-step schedule while the notebook's globals hold the 1000-step one (then consistent ones)
    trap = trap_globals(p, "p_sample_loop", (gauss37 := p.stub("gaussian", alpha_bar=ab37), x37, b37),
                        {"variance": "beta_tilde", "record_every": 10}, _notebook_globals(), _consistent_globals(b37),
                        "p_sample_loop(model, x_T, a 37-step beta, variance='beta_tilde')",
                        generators=(p.generator(11), p.generator(11)), global_seed=4)
    yield
    expect_no_globals(*trap, _GLOBAL_NAMES, "p_sample_loop", " (a 37-step beta)")
    expect_unchanged(out1, {"model": None, "x_T": x_T, "beta": beta}, "p_sample_loop")

    expect(not _changed(out1, 1, x_T), "p_sample_loop changed x_T in place.",
           hint="an in-place update of x (`x -= ...`) while x is still the caller's x_T; start with x = x_T "
                "and assign new tensors (x = ...).")
    L1 = _Loop(out1, x_T, beta, ("gauss", ab_np), "none", what1)
    composed = L1.steps is not None
    steps = L1.steps if composed else _visited_calls(out1.model_calls(rec), shape[0], "p_sample_loop")
    _check_visits(steps, composed, T)
    got = L1.value
    a = 1 - beta.double().numpy()
    k = np.sqrt(np.cumprod(a[::-1])[::-1])  # k[t] = prod_{s >= t} sqrt(alpha_s)
    want = k[0] * x_T.double().numpy()
    if not close(got, want, atol=1e-5, rtol=1e-3):
        again_x0 = again.value[0] if isinstance(again.value, tuple) and again.value else None
        noisy = not close(_tensor(again_x0, "x_0", shape=shape), L1.raw, atol=1e-7, rtol=0)
        raise CheckFailed(
            "p_sample_loop(..., variance='none') with the Gaussian-data oracle (each mean is sqrt(alpha_t) x_t) "
            f"is wrong: {describe_diff(got, want)}. With variance='none' no noise may be added at any step."
            + ("\nLikely cause: noise is added although variance='none' (the variance option is ignored): two "
               "generators gave two different results." if noisy else
               "\nLikely cause: the mean of a step is wrong (compare with Algorithm 2, line 4: the coefficient "
               "beta_t / sqrt(1 - alpha_bar_t), alpha_bar[t] at code index t, the division by sqrt(alpha_t)), "
               "or x is recorded or returned at the wrong step."))
    hist = L1.hist
    expect(isinstance(hist, list), f"history should be a list of tensors, got {type(hist).__name__}.")
    rec_steps = [t for t in range(T - 1, -1, -1) if t % 20 == 0]
    expect(len(hist) == len(rec_steps),
           f"history should hold x after the steps t = {T - 20}, {T - 40}, ..., 0 ({len(rec_steps)} tensors with "
           f"record_every=20, T = {T}), got {len(hist)} tensors.",
           hint="append a copy of x after the step whose index t satisfies t % record_every == 0.")
    hv = None
    for i, (h, t) in enumerate(zip(hist, rec_steps)):
        expect(isinstance(h, TensorRecord) and h.exact and h.device == "cpu",
               f"history[{i}] should be a CPU torch.Tensor, got "
               f"{type_name(h)}{' on ' + h.device if isinstance(h, TensorRecord) else ''}.",
               hint="append x.detach().cpu().clone().")
        hv = L1.history_value(_tensor(h, f"history[{i}]", shape=shape), t)
        want_h = k[t] * x_T.double().numpy()
        if not close(hv, want_h, atol=1e-5, rtol=1e-3):
            near = [s for s in (t + 1, t - 1) if 0 <= s < T and close(hv, k[s] * x_T.double().numpy(), 1e-5, 1e-3)]
            raise CheckFailed(f"history[{i}] should be x after step t = {t} (t % record_every == 0): "
                              f"{describe_diff(hv, want_h)}."
                              + ("\nLikely cause: x recorded one step too early or too late (record x after "
                                 "computing the step)." if near else ""))
    expect(hv is not None and close(hv, got, atol=0, rtol=0),
           "history[-1] should be the returned x_0 (x after the step t = 0).")
    res20 = out20.value
    hist2 = res20[1] if isinstance(res20, tuple) and len(res20) == 2 else None
    expect(isinstance(hist2, list) and len(hist2) == 3,
           f"with T = 20 and record_every = 7, history should hold x after the steps t = 14, 7, 0 "
           f"(3 tensors), got {len(hist2) if isinstance(hist2, list) else type_name(hist2)}.",
           hint="record after the step whose index t satisfies t % record_every == 0.")

    # 2. delta data
    c64 = c.double().numpy()
    for variance, out in zip(variances, outs_delta):
        got = _Loop(out, x_T8, beta_d, ("delta", c64, ab_d.numpy()), variance,
                    f"p_sample_loop(..., variance={variance!r})").value
        err = got - c64
        if np.max(np.abs(err)) > 2e-3:
            spread = float(np.std(err))
            if variance == "beta" and 0.005 < spread < 0.02:
                hint = ("noise is added at the last step: the spread of the error is "
                        f"{spread:.4f} ~ sqrt(beta[0]) = 0.01; z must be 0 when t == 0.")
            else:
                hint = ("the mean of a step is wrong (compare with Algorithm 2, line 4: the coefficient "
                        "beta_t / sqrt(1 - alpha_bar_t), alpha_bar[t] at code index t, the division by "
                        "sqrt(alpha_t)), or the loop does not visit every step once.")
            raise CheckFailed(
                f"With the exact noise predictor of a data set that holds one image c, Algorithm 2 must return "
                f"c exactly (variance={variance!r}, T = 200, beta linear from 1e-4 to 0.1); largest error {np.max(np.abs(err)):.4g}, "
                f"spread {spread:.4g}." + (f"\nLikely cause: {hint}" if hint else ""))

    # 3. Gaussian data
    sb64 = sb.double().numpy()
    ab_sn = ab_s.numpy()
    abp = np.concatenate([[1.0], ab_sn[:-1]])
    bt = (1 - abp) / (1 - ab_sn) * sb64
    labels = {"beta": ("sigma_t^2 = beta_t", sb64), "beta_tilde": ("sigma_t^2 = beta_tilde_t", bt)}
    candidates = [
        ("sigma_t^2 = beta_t", sb64, False),
        ("sigma_t^2 = beta_tilde_t", bt, False),
        ("sigma_t = beta_t (the variance squared): sigma_t must be sqrt(beta_t)", sb64 ** 2, False),
        ("sigma_t = beta_tilde_t instead of sqrt(beta_tilde_t)", bt ** 2, False),
        ("no noise at all: the variance option is ignored (or treated as 'none')", 0 * sb64, False),
        ("noise is added at the last step (t == 0)", sb64, True),
    ]
    finals = {}
    for variance, (out_big, out_mid) in zip(options, outs_gauss):
        label, s2 = labels[variance]
        what = f"p_sample_loop(..., variance={variance!r})"
        loop = _Loop(out_mid, x_mid, sb, ("gauss", ab_sn), variance, what)
        if loop.blocks_right():  # its output is what it would be with a correct step: use the big run
            x_in, got = x_big, _Loop(out_big, x_big, sb, ("gauss", ab_sn), variance, what).value
        else:  # replayed with a correct step
            x_in, got = x_mid, loop.value
        finals[variance] = got
        m2 = float((x_in.double() ** 2).mean())
        N = x_in.numel()
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
        if loop.blocks_right():  # family 6: the variance of every step, from the recorded model inputs
            xs = [_a64(c["x"]) for c in out_mid.model_calls(gauss_rec)]
            if len(xs) == len(sb64):
                visited = list(range(len(sb64) - 1, -1, -1))
                resids = [(t, xs[k + 1] - math.sqrt(1 - sb64[t]) * xs[k]) for k, t in enumerate(visited[:-1])]
                others = [("sigma_t^2 = beta_tilde_t: variance='beta' must use beta_t", bt),
                          ("sigma_t^2 = beta_t: variance='beta_tilde' must use posterior_variance(beta)", sb64),
                          ("sigma_t = beta_t (the variance squared): sigma_t must be sqrt(beta_t)", sb64 ** 2),
                          ("the noise of step t uses another step's sigma (e.g. sigma[t - 1] or a reversed "
                           "schedule)", np.roll(s2, 1))]
                _expect_step_variances(resids, s2, label.removeprefix("sigma_t^2 = "), what,
                                       [o for o in others if o[1] is not s2])
    expect(finals["beta"].shape != finals["beta_tilde"].shape
           or not close(finals["beta"], finals["beta_tilde"], atol=1e-6, rtol=0),
           "p_sample_loop gave the same output for variance='beta' and variance='beta_tilde'.",
           hint="the variance option is ignored.")

    # 4. the generator
    a1, a2, a3 = (_Loop(o, x_small, sb, ("gauss", ab_sn), "beta", "p_sample_loop(...)").value for o in outs_gen)
    expect(close(a1, a2, atol=1e-7, rtol=0),
           "p_sample_loop gave different samples for two generators with the same seed.",
           hint="draw z with the generator: torch.randn(x.shape, generator=generator) (not torch.randn_like, "
                "which uses the global random state).")
    expect(not close(a1, a3, atol=1e-6, rtol=0),
           "p_sample_loop gave the same samples for generators with different seeds (variance='beta').",
           hint="no noise is drawn (or the variance option is ignored).")
    for o in outs_gen + stream:
        expect_global_rng_untouched(o, "p_sample_loop")
    expect_stream(*(_Loop(o, x_small, sb, ("gauss", ab_sn), "beta", "p_sample_loop(..., generator)").value
                    for o in stream), "p_sample_loop")
    res = typed.value
    x0_typed = res[0] if isinstance(res, tuple) and res else res
    expect_dtype_kept(x0_typed, "torch.float32", "p_sample_loop", source="x_T")
    expect_no_graph(res, "p_sample_loop(model with parameters, ...)")


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




@trusted
def check_ddim_step(p: Probe):
    beta = _linear_beta(1000)
    ab_t = torch.cumprod(1 - beta, 0)  # float32, as the notebook builds it
    ab = ab_t.double().numpy()
    shape = (3, 1, 6, 6)
    x = _noise(shape, p.gen(20))
    z = _noise(shape, p.gen(22))
    model = p.stub("sampling.FixedNoiseModel", record=True)
    cases = [(999, 979, 0.0, None), (500, 480, 0.0, None), (20, 0, 0.0, None), (0, -1, 0.0, None),
             (40, -1, 0.0, None), (500, 480, 1.0, z), (300, 200, 0.5, z), (20, 0, 1.0, z), (0, -1, 1.0, z),
             (700, 600, 0.0, z)]
    outs = []
    for t, t_prev, eta, zz in cases:
        label = f"ddim_step(model, x_t, t={t}, t_prev={t_prev}, alpha_bar, eta={eta}" + (", z)" if zz is not None else ")")
        outs.append(p.call("ddim_step", model, x, t, t_prev, ab_t, eta=eta, z=zz, what=label))
    # the delta-data oracle: the last step (t_prev = -1) lands exactly on the data
    c = _images((1, 1, 4, 4), p.gen(23)).double()
    ab64 = torch.cumprod(1 - beta.double(), 0)
    oracle = p.stub("delta", c=c, alpha_bar=ab64)
    delta_times = (0, 10, 999)
    outs_delta = []
    for t in delta_times:
        x_t = ab64[t].sqrt() * c + (1 - ab64[t]).sqrt() * _noise((2, 1, 4, 4), p.gen(24 + t)).double()
        outs_delta.append(p.call("ddim_step", oracle, x_t, t, -1, ab64, eta=0.0, z=None,
                                 what=f"ddim_step(..., t={t}, t_prev=-1, ...)"))
    # a 37-step alpha_bar while the notebook's globals hold the 1000-step schedule
    b37 = _beta37(p.gen(25))
    ab37 = torch.cumprod(1 - b37, 0)
    plain = p.stub("sampling.FixedNoiseModel")
    trap = trap_globals(p, "ddim_step", (plain, x, 30, 20, ab37), {"eta": 0.5, "z": z}, _notebook_globals(),
                        _consistent_globals(b37), "ddim_step(model, x_t, t=30, t_prev=20, a 37-step alpha_bar, eta=0.5, z)")
    yield
    expect_no_globals(*trap, _GLOBAL_NAMES, "ddim_step", " (a 37-step alpha_bar)")

    for (t, t_prev, eta, zz), out in zip(cases, outs):
        label = out.what
        value = out.value
        if isinstance(value, TensorRecord) and value.exact and not bool(np.all(np.isfinite(value.array))):
            raise CheckFailed(
                f"{label} returned NaN or infinite values." + (
                    "\nLikely cause: alpha_bar_prev for t_prev = -1 taken as alpha_bar[-1] (the LAST value of the "
                    "schedule, almost 0), so 1 - ab_t / ab_prev < 0 under a square root; t_prev = -1 means "
                    "alpha_bar_prev = 1." if t_prev == -1 else
                    "\nLikely cause: a negative number under a square root; clamp 1 - ab_prev - sigma^2 at 0."))
        got = as_tensor_array(value, label, shape=shape)
        expect_unchanged(out, {"model": None, "x_t": x, "t": None, "t_prev": None, "alpha_bar": ab_t, "eta": None,
                               "z": zz}, "ddim_step")
        expect_dtype_kept(value, "torch.float32", label, source="x_t")
        steps = _visited_calls(out.model_calls(model), shape[0], "ddim_step")
        expect(len(steps) >= 1 and all(s == t for s in steps),
               f"{label} called the model at t = {sorted(set(steps))}; expected t = {t}.")
        want, variants = _ddim_variants(x.double().numpy(), _eps_fixed(x, t),
                                        None if zz is None else zz.double().numpy(), t, t_prev, ab, eta)
        match_variants(got, want, variants, f"The result of {label}", atol=5e-5, rtol=5e-4)
    c2 = np.broadcast_to(c.numpy(), (2, 1, 4, 4))
    for t, out in zip(delta_times, outs_delta):
        got = as_tensor_array(out.value, "ddim_step(..., t_prev=-1)", shape=(2, 1, 4, 4))
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




class _DdimRun:
    """What one ``ddim_sample`` call gave and, when it composed the student's own ``ddim_step``, the
    same loop replayed with a correct step (``value``)."""

    def __init__(self, out: Outcome, x_T: torch.Tensor, model: tuple, what: str):
        self.shape = tuple(x_T.shape)
        self.raw = _tensor(out.value, f"x_0 returned by {what}", shape=self.shape)
        self.calls = _step_calls(out.wrapped("ddim_step"), _D_NAMES, self.shape, what,
                                 defaults={"eta": 0.0, "z": None})
        self.steps = [c["t"] for c in self.calls] if self.calls is not None else None
        self._x_T, self._model, self._what = x_T, model, what

    @property
    def value(self) -> np.ndarray:
        if self.calls is None:
            return self.raw
        ab_default = self._model[-1]
        calls = self.calls

        def step(k, b):
            c = calls[k]
            t, t_prev = c["t"], _int(c.get("t_prev"), self._what)
            abk = _a64(c.get("alpha_bar"))
            abk = ab_default if abk is None or abk.ndim != 1 else abk
            eta = _num(c.get("eta"))
            z = _a64(c.get("z"))
            if z is None and eta > 0 and t_prev >= 0:
                raise CheckFailed("ddim_sample called ddim_step with eta > 0 but without the noise z; draw z with "
                                  "the generator (torch.randn(..., generator=generator)) and pass it.")
            if not (0 <= t < abk.shape[0] and -1 <= t_prev < t) or not math.isfinite(eta):
                return c["out"], c["out"], 1.0
            out = _ddim(self._model, b, t, t_prev, abk, eta, z if z is not None and z.shape == b.shape else None)
            return out, out, 1.0

        v = _recompose([c["x"] for c in calls], [c["out"] for c in calls], self._x_T.double().numpy(), self.raw,
                       step)[-1]
        expect(bool(np.all(np.isfinite(v))), f"x_0 returned by {self._what} contains NaN or infinite values.")
        return v

    def visited(self, out: Outcome, rec) -> list[int]:
        return self.steps if self.steps is not None else _visited_calls(out.model_calls(rec), self.shape[0],
                                                                        "ddim_sample")


@trusted
def check_ddim_sample(p: Probe):
    beta = _linear_beta(1000)
    ab_t = torch.cumprod(1 - beta, 0)  # float32, as the notebook builds it
    ab64 = ab_t.double()  # the same values for the oracle models and the replay
    shape = (3, 1, 8, 8)
    wrap = ("ddim_step",)
    # 1. the steps visited, and the delta-data oracle (DDIM returns c exactly, whatever the steps)
    c = _images((1,) + shape[1:], p.gen(30))  # one image
    part1 = []
    for num_steps in (50, 10):
        rec = p.stub("delta", record=True, c=c, alpha_bar=ab64)
        x_T = _noise(shape, p.gen(31))
        what = f"ddim_sample(model, x_T, alpha_bar, num_steps={num_steps})"
        part1.append((num_steps, rec, x_T, what,
                      p.call("ddim_sample", rec, x_T, ab_t, num_steps=num_steps, eta=0.0, generator=p.generator(1),
                             what=what, wrap=wrap)))
    # 2. exact replay with the Gaussian-data oracle along the steps the student visited
    gauss = p.stub("gaussian", record=True, alpha_bar=ab64)
    x_T2 = _noise(shape, p.gen(32))
    out2 = p.call("ddim_sample", gauss, x_T2, ab_t, num_steps=20, eta=0.0, generator=p.generator(2),
                  what="ddim_sample(..., num_steps=20, eta=0)", wrap=wrap)
    # 3. eta > 0: noisy (seeded by the generator), and the noise has the eq. 16 size
    big = (8, 1, 32, 32)
    x_T3 = _noise(big, p.gen(33))
    g_model = p.stub("gaussian", alpha_bar=ab64)
    det = p.call("ddim_sample", g_model, x_T3, ab_t, num_steps=10, eta=0.0, generator=p.generator(3),
                 what="ddim_sample(..., eta=0)", wrap=wrap)
    rec3 = p.stub("gaussian", record=True, alpha_bar=ab64)
    outs3 = [p.call("ddim_sample", model, x_T3, ab_t, num_steps=10, eta=1.0, generator=p.generator(seed),
                    what="ddim_sample(..., eta=1)", wrap=wrap, global_seed=gs)
             for model, seed, gs in ((rec3, 3, 1), (g_model, 3, 2), (g_model, 4, 3))]
    # 4. families 1-4: the stream of one generator, a 37-step schedule with the notebook's globals bound to
    # the 1000-step one, float32 kept and no autograd graph with a network that has parameters
    small = (2, 1, 4, 4)
    x_s = _noise(small, p.gen(34))
    g = p.generator(5)
    stream = [p.call("ddim_sample", g_model, x_s, ab_t, num_steps=5, eta=1.0, generator=gen,
                     what="ddim_sample(..., eta=1, generator)", wrap=wrap) for gen in (g, g, p.generator(5))]
    b37 = _beta37(p.gen(35))
    ab37 = torch.cumprod(1 - b37, 0)
    trap = trap_globals(p, "ddim_sample", (p.stub("gaussian", alpha_bar=ab37.double()), x_s, ab37),
                        {"num_steps": 8, "eta": 0.5}, _notebook_globals(), _consistent_globals(b37),
                        "ddim_sample(model, x_T, a 37-step alpha_bar, num_steps=8, eta=0.5)",
                        generators=(p.generator(6), p.generator(6)), global_seed=4)
    typed = p.call("ddim_sample", p.stub("sampling.ParamGaussianModel", alpha_bar=ab37.double()), x_s, ab37,
                   num_steps=8, eta=1.0, generator=p.generator(7),
                   what="ddim_sample(model with parameters, x_T, alpha_bar, num_steps=8, eta=1)")
    yield
    expect_no_globals(*trap, _GLOBAL_NAMES, "ddim_sample", " (a 37-step alpha_bar)")
    for _, _, x_T, _, out in part1:
        expect_unchanged(out, {"model": None, "x_T": x_T, "alpha_bar": ab_t}, "ddim_sample")

    ab = ab64.numpy()
    c64 = c.double().numpy()
    for num_steps, rec, x_T, what, out in part1:
        run = _DdimRun(out, x_T, ("delta", c64, ab), what)
        _check_taus(run.visited(out, rec), 1000, num_steps, what)
        got = run.value
        err = np.max(np.abs(got - c64))
        if err > 1e-3:
            hint = None
            # the last step done with alpha_bar[-1] leaves x ~ sqrt(ab[-1]) c + sqrt(1 - ab[-1]) eps: noise
            if float(np.std(got - c64)) > 0.3:
                hint = ("the final step does not go onto x_0: its t_prev must be -1 (alpha_bar_prev = 1); "
                        f"using alpha_bar[-1] = {ab[-1]:.2g} leaves almost pure noise.")
            raise CheckFailed(f"With the exact noise predictor of one-image data c, deterministic DDIM must return c "
                              f"exactly: largest error {err:.4g} ({what})." + (f"\nLikely cause: {hint}" if hint else ""))
    run = _DdimRun(out2, x_T2, ("gauss", ab), "ddim_sample(..., num_steps=20, eta=0)")
    steps = run.visited(out2, gauss)
    _check_taus(steps, 1000, 20, "ddim_sample(..., num_steps=20)")
    got = run.value
    want = _ddim_replay(x_T2.double().numpy(), steps, ab)
    one_step = _ddim_replay_pairs(x_T2.double().numpy(), [(t, t - 1) for t in steps], ab)
    match_variants(got, want, [("each step goes from t to t - 1 instead of to the next step of the sub-sequence "
                                "(t_prev must be the next, smaller step; -1 after the last).", one_step)],
                   "ddim_sample (eta = 0, Gaussian-data oracle)", atol=1e-5, rtol=1e-3,
                   context=": every step must go from one step of the sub-sequence to the next, "
                           "ending with t_prev = -1")
    det_v = _DdimRun(det, x_T3, ("gauss", ab), "ddim_sample(..., eta=0)").value
    runs3 = [_DdimRun(o, x_T3, ("gauss", ab), "ddim_sample(..., eta=1)") for o in outs3]
    vals = [r.value for r in runs3]
    steps10 = runs3[0].visited(outs3[0], rec3)  # the steps of the first call, for the variance below
    _check_taus(steps10, 1000, 10, "ddim_sample(..., num_steps=10, eta=1.0)")
    expect(not close(vals[0], det_v, atol=1e-5, rtol=0),
           "ddim_sample(..., eta=1.0) gave the same result as eta=0.0.",
           hint="eta is ignored (pass it on to ddim_step, with noise z drawn from the generator).")
    expect(close(vals[0], vals[1], atol=1e-7, rtol=0),
           "ddim_sample(..., eta=1.0) gave different samples for two generators with the same seed.",
           hint="draw z with the generator: torch.randn(x.shape, generator=generator).")
    expect(not close(vals[0], vals[2], atol=1e-6, rtol=0),
           "ddim_sample(..., eta=1.0) gave the same samples for generators with different seeds.")
    # the variance along 10 steps: x_prev = k x + s z with the Gaussian oracle
    kk, v = 1.0, 0.0
    for t, tp in zip(steps10, steps10[1:] + [-1]):
        a_t, a_p = ab[t], (ab[tp] if tp >= 0 else 1.0)
        s = math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        k = math.sqrt(a_p) * math.sqrt(a_t) + math.sqrt(max(1 - a_p - s * s, 0.0)) * math.sqrt(1 - a_t)
        kk, v = kk * k, k * k * v + s * s
    resid = vals[0] - kk * x_T3.double().numpy()
    var = float((resid ** 2).mean())
    sd = math.sqrt(2.0 / resid.size) * v + 1e-4
    expect(_stat_close(var, v, sd, 6),
           f"ddim_sample(..., num_steps=10, eta=1.0) on Gaussian data: the added noise should have variance "
           f"{v:.4f} (sigma of eq. 16 at every step but the last), got {var:.4f}.",
           hint="sigma(eta) = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev), "
                "with z drawn fresh at every step.")
    for o in outs3 + stream:
        expect_global_rng_untouched(o, "ddim_sample")
    expect_stream(*(_DdimRun(o, x_s, ("gauss", ab), "ddim_sample(..., eta=1, generator)").value for o in stream),
                  "ddim_sample")
    expect_dtype_kept(typed.value, "torch.float32", "ddim_sample", source="x_T")
    expect_no_graph(typed.value, "ddim_sample(model with parameters, ...)")


# ----------------------------------------------------------------------------------------------
# sdedit
# ----------------------------------------------------------------------------------------------


@trusted
def check_sdedit(p: Probe):
    beta = _linear_beta(1000)
    shape = (4, 1, 16, 16)
    x_0 = _images(shape, p.gen(40))
    wrap = ("p_sample_step",)
    runs = []
    for t_start in (300, 0):
        rec = p.stub("sampling.FixedNoiseModel", record=True)
        what = f"sdedit(model, x_0, t_start={t_start}, beta)"
        runs.append((t_start, rec, what, p.call("sdedit", rec, x_0, t_start, beta, generator=p.generator(5),
                                                what=what, wrap=wrap)))
    # reproducible with the generator (the global random state seeded differently before each call)
    m = p.stub("sampling.FixedNoiseModel")
    repro = [p.call("sdedit", m, x_0, 50, beta, generator=p.generator(seed), what="sdedit(...)", global_seed=gs,
                    wrap=wrap) for seed, gs in ((9, 1), (9, 2), (10, 3))]
    # families 1-4: one generator continues its stream; a 37-step schedule with the notebook's globals bound to
    # the 1000-step one; float32 kept and no autograd graph with a network that has parameters
    small = (2, 1, 4, 4)
    x_s = _images(small, p.gen(41))
    g = p.generator(11)
    stream = [p.call("sdedit", m, x_s, 20, beta, generator=gen, what="sdedit(..., generator)", wrap=wrap)
              for gen in (g, g, p.generator(11))]
    b37 = _beta37(p.gen(42))
    ab37 = torch.cumprod(1 - b37.double(), 0)
    trap = trap_globals(p, "sdedit", (p.stub("gaussian", alpha_bar=ab37), x_s, 30, b37), {}, _notebook_globals(),
                        _consistent_globals(b37), "sdedit(model, x_0, t_start=30, a 37-step beta)",
                        generators=(p.generator(12), p.generator(12)), global_seed=4)
    typed = p.call("sdedit", p.stub("sampling.ParamGaussianModel", alpha_bar=ab37), x_s, 30, b37,
                   generator=p.generator(13), what="sdedit(model with parameters, x_0, 30, a 37-step beta)")
    yield
    expect_no_globals(*trap, _GLOBAL_NAMES, "sdedit", " (a 37-step beta)")

    b64 = beta.double().numpy()
    ab = np.cumprod(1 - b64)
    x0 = x_0.double().numpy()
    for t_start, rec, what, out in runs:
        raw = _tensor(out.value, f"the result of {what}", shape=shape)
        expect_unchanged(out, {"model": None, "x_0": x_0, "t_start": None, "beta": beta}, "sdedit")
        expect_dtype_kept(out.value, "torch.float32", what, source="x_0")
        calls = _step_calls(out.wrapped("p_sample_step"), _P_NAMES, shape, what)
        if calls is not None:
            steps = [c["t"] for c in calls]
        else:
            steps = _visited_calls(out.model_calls(rec), shape[0], "sdedit")
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
        if calls is not None:  # replayed with a correct p_sample_step
            def step(k, b, calls=calls):
                c = calls[k]
                bb = _a64(c.get("beta"))
                bb = b64 if bb is None or bb.ndim != 1 or bb.shape[0] <= c["t"] else bb
                z = _a64(c.get("z"))
                o, mean = _p_step(("fixed",), b, c["t"], bb, z if z is not None and z.shape == b.shape else None)
                return o, mean, 1.0
            seq = _recompose([c["x"] for c in calls], [c["out"] for c in calls], None, raw, step)
            xs, got = seq[:-1], seq[-1]
        else:
            xs, got = [_a64(c["x"]) for c in out.model_calls(rec)], raw
        expect(bool(np.all(np.isfinite(got))), f"the result of {what} contains NaN or infinite values.")
        # the first input is q_sample(x_0, t_start): (x - sqrt(ab) x_0) / sqrt(1 - ab) is N(0, 1), independent of x_0
        r = (xs[0] - math.sqrt(ab[t_start]) * x0) / math.sqrt(1 - ab[t_start])
        n = r.size
        std = float(r.std())
        corr = float(np.corrcoef(r.reshape(-1), x0.reshape(-1))[0, 1])
        if not (abs(std - 1) < 6 / math.sqrt(2 * n) + 0.01 and abs(corr) < 6 / math.sqrt(n) and abs(r.mean()) < 6 / math.sqrt(n)):
            pure = xs[0]
            hint = None
            if abs(float(pure.std()) - 1) < 0.1 and abs(float(np.corrcoef(pure.reshape(-1), x0.reshape(-1))[0, 1])) < 0.1:
                hint = ("sdedit starts from pure noise; it must start from the real images noised to t_start, "
                        "q_sample(x_0, t_start, alpha_bar, noise).")
            raise CheckFailed(
                f"{what}: the first input of the model should be q_sample(x_0, t_start) = sqrt(alpha_bar[t_start]) x_0 "
                f"+ sqrt(1 - alpha_bar[t_start]) noise; its normalised residual has std {std:.3f} (expected 1) and "
                f"correlation {corr:.3f} with x_0 (expected 0)." + (f"\nLikely cause: {hint}" if hint else ""))
        # every step: next input = mean of the step + sqrt(beta_t) z; the output = mean of the last step
        resid, per_step = [], []
        for k, t in enumerate(want_steps):
            eps = _eps_fixed(xs[k], t)
            mean = (xs[k] - b64[t] / math.sqrt(1 - ab[t]) * eps) / math.sqrt(1 - b64[t])
            nxt = xs[k + 1] if k + 1 < len(xs) else got
            if t == 0:
                expect(close(got, mean, atol=2e-5, rtol=2e-4),
                       f"{what}: the last step (t = 0) must return its mean (Algorithm 2 with z = 0): "
                       f"{describe_diff(got, mean)}.", hint="noise added at the last step.")
            else:
                resid.append(((nxt - mean) / math.sqrt(b64[t])).reshape(-1))
                per_step.append((t, nxt - mean))
        abp = np.concatenate([[1.0], ab[:-1]])
        _expect_step_variances(
            per_step, b64, "beta_t", what,
            [("sigma_t^2 = beta_tilde_t (posterior_variance) at the first steps; SDEdit's ancestral steps use "
              "sigma_t^2 = beta_t (Algorithm 2).", (1 - abp) / (1 - ab) * b64),
             ("sigma_t = beta_t (the variance squared): sigma_t must be sqrt(beta_t).", b64 ** 2),
             ("no noise at this step: z must be added at every step t > 0.", 0 * b64 + 1e-300)])
        if resid:
            r = np.concatenate(resid)
            std = float(r.std())
            expect(abs(std - 1) < 6 / math.sqrt(2 * r.size) + 0.01 and abs(float(r.mean())) < 6 / math.sqrt(r.size) + 0.01,
                   f"{what}: each step must be x_{{t-1}} = mean + sqrt(beta_t) z (Algorithm 2); the added noise "
                   f"divided by sqrt(beta_t) has std {std:.3f}, expected 1.",
                   hint="the steps must be Algorithm 2's ancestral steps with sigma_t = sqrt(beta_t) and fresh z.")
    for o in repro + stream:
        expect_global_rng_untouched(o, "sdedit")
    expect_stream(*(_sdedit_value(o, x_s, 20, b64) for o in stream), "sdedit")
    expect_dtype_kept(typed.value, "torch.float32", "sdedit", source="x_0")
    expect_no_graph(typed.value, "sdedit(model with parameters, ...)")
    o1, o2, o3 = (as_tensor_array(o.value, "sdedit(...)") for o in repro)
    expect(close(o1, o2, atol=1e-7, rtol=0),
           "sdedit gave different results for two generators with the same seed.",
           hint="draw every noise (the q_sample noise and each z) with the generator.")
    expect(not close(o1, o3, atol=1e-6, rtol=0),
           "sdedit gave the same result for generators with different seeds.")


def _sdedit_value(out: Outcome, x_0: torch.Tensor, t_start: int, b64: np.ndarray) -> np.ndarray:
    """What an sdedit call with the FixedNoiseModel returned, replayed with a correct p_sample_step when
    it composed the student's own (a step's mistake is judged in the step's cell)."""
    shape = tuple(x_0.shape)
    raw = _tensor(out.value, "the result of sdedit(...)", shape=shape)
    calls = _step_calls(out.wrapped("p_sample_step"), _P_NAMES, shape, "sdedit")
    if calls is None:
        return raw

    def step(k, b):
        c = calls[k]
        z = _a64(c.get("z"))
        o, mean = _p_step(("fixed",), b, c["t"], b64, z if z is not None and z.shape == b.shape else None)
        return o, mean, 1.0

    return _recompose([c["x"] for c in calls], [c["out"] for c in calls], None, raw, step)[-1]


CHECKS = {
    "p_sample_step": check_p_sample_step,
    "posterior_variance": check_posterior_variance,
    "p_sample_loop": check_p_sample_loop,
    "ddim_step": check_ddim_step,
    "ddim_sample": check_ddim_sample,
    "sdedit": check_sdedit,
}

"""Trusted: the verdicts of the "discipline" families of issue 15 that the checks of notebooks 04-06
share: random numbers only from ``generator`` (family 1), the schedule and labels given rather than
notebook globals or defaults (3), result types (4) and the variance of every step of an ancestral
sampler (6). Arguments left alone (2) are judged with ``grading.verdict.expect_unchanged``, which
names the argument. Each failure names the likely cause.

The checks ask for the calls as usual (``p.call(..., bind=schedule_globals(), error_hints=SCHEDULE_HINTS)``)
and judge them here after their ``yield``: nothing of this module runs in the student's kernel.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from grading.hidden import CheckFailed, as_array, expect
from grading.records import TensorRecord, type_name
from grading.verdict import Outcome

__all__ = [
    "GENERATOR_HINT", "SCHEDULE_HINTS", "cosine_beta_schedule", "expect_dtype_kept", "expect_long", "expect_no_graph",
    "expect_no_global_rng", "expect_per_step_variance", "expect_reproducible", "expect_stream_continues",
    "float64_from", "linear_beta_schedule", "per_step_noise_variance", "schedule_globals",
]

GENERATOR_HINT = ("draw every random number from `generator`: torch.randn(x.shape, generator=generator, "
                  "dtype=x.dtype) (randn_like, rand_like and randint without generator= use the global random "
                  "state, and so do torch.manual_seed and reseeding from generator.initial_seed()).")

#: error hints of calls made with a schedule other than the notebook's (a T hard-coded or global)
SCHEDULE_HINTS: tuple[tuple[str, str], ...] = (
    ("out of bounds",
     "the function uses a number of steps other than the length of the schedule it was given: T is "
     "hard-coded (1000) or taken from the notebook's globals (T, beta, alpha_bar); use T = len(beta) and "
     "only the schedule passed in."),
    ("must match the size of tensor",
     "a schedule of another length was mixed with the one given (a notebook global such as beta or "
     "alpha_bar, or a hard-coded T): use only the arguments."),
)


# ------------------------------------------------------------------------------------------------
# Schedules (float64, as the conventions define them) and wrong notebook globals
# ------------------------------------------------------------------------------------------------
def linear_beta_schedule(T: int, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    return torch.linspace(start, end, T, dtype=torch.float64)  # (T,)


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021), eq. 17 (docs/conventions.md, section 3.2)."""
    u = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
    return torch.clamp(1 - f[1:] / f[:-1], max=max_beta)  # (T,)


def schedule_globals(T: int = 1000, **extra: Any) -> dict:
    """Notebook globals bound during a check's calls: the notebook's own 1000-step linear schedule
    (``T``, ``beta``, ``alpha``, ``alpha_bar``; wrong for the check's schedule) and ``extra`` ones."""
    beta = linear_beta_schedule(T).float()
    alpha = 1 - beta
    out = {"T": T, "beta": beta, "betas": beta, "alpha": alpha, "alphas": alpha,
           "alpha_bar": torch.cumprod(alpha, 0), "alphas_cumprod": torch.cumprod(alpha, 0)}
    out.update(extra)
    return out


# ------------------------------------------------------------------------------------------------
# Family 1: the generator
# ------------------------------------------------------------------------------------------------
def expect_no_global_rng(out: Outcome, fn: str, takes_generator: bool = True) -> None:
    """The call left the global random states (torch, NumPy, Python) where they were."""
    out.value  # noqa: B018 - the call's own error first
    moved = [k for k, v in (out.rng_changed or {}).items() if v]
    if not moved:
        return
    which = ", ".join({"torch": "torch's", "numpy": "NumPy's", "python": "Python's"}.get(k, k) for k in moved)
    if takes_generator:
        raise CheckFailed(f"{fn} changed the global random state ({which}): the global random state changed, "
                          f"so its draws do not all come from the `generator` argument and its results depend on "
                          f"what ran before.\nLikely cause: {GENERATOR_HINT}")
    raise CheckFailed(f"{fn} changed the global random state ({which}), but it should draw no random numbers at "
                      f"all.\nLikely cause: use the noise (and times) it is given instead of drawing new ones.")


def expect_stream_continues(first: np.ndarray, second: np.ndarray, fn: str) -> None:
    """Two calls with one generator (not reseeded in between) give different results."""
    if first.shape == second.shape and np.array_equal(first, second):
        raise CheckFailed(f"Two calls of {fn} with the same generator object gave identical results: the second "
                          f"call should continue the generator's stream.\nLikely cause: the generator is reseeded "
                          f"inside the function (generator.manual_seed(...), a new torch.Generator seeded from "
                          f"generator.initial_seed(), or torch.manual_seed); draw from it as it is.")


def expect_reproducible(a: np.ndarray, b: np.ndarray, c: np.ndarray, fn: str) -> None:
    """Equally seeded generators give the same result (``a``, ``b``: the global state seeded differently
    in between), another seed another result (``c``)."""
    expect(a.shape == b.shape and np.array_equal(a, b),
           f"{fn} gave different results for two generators seeded alike (the global random state differed "
           f"between the calls).", hint=GENERATOR_HINT)
    expect(not (a.shape == c.shape and np.array_equal(a, c)),
           f"{fn} gave the same result for differently seeded generators.",
           hint="draw the noise from `generator` (not from a generator of your own with a fixed seed).")


# ------------------------------------------------------------------------------------------------
# Family 4: result types
# ------------------------------------------------------------------------------------------------
def expect_dtype_kept(value: Any, want: str, name: str) -> None:
    """A tensor result has dtype ``want`` (``"torch.float32"``): the input's; a float64 leak gets its
    own message."""
    if not isinstance(value, TensorRecord):
        raise CheckFailed(f"{name} should be a torch.Tensor, got {type_name(value)}.")
    if value.dtype == want:
        return
    if value.dtype == "torch.float64" and want == "torch.float32":
        raise CheckFailed(f"{name} is float64 for float32 inputs: a float64 leak.\nLikely cause: a float64 tensor "
                          f"was made inside (NumPy arrays, torch.tensor of Python floats, dtype=torch.float64, "
                          f".double()) and mixed into the result; keep the input's dtype (cast back with "
                          f".to(x.dtype), draw noise with dtype=x.dtype).")
    raise CheckFailed(f"{name} has dtype {value.dtype}; it should keep the input's dtype {want}.",)


def float64_from(calls, arg: int = 1, name: str = "x") -> bool:
    """Whether one of the recorded calls of a student's own building block (``Outcome.wrapped``) turned
    a float32 input (positional argument ``arg``, or keyword ``name``) into a float64 result: a float64
    result of the function built on it is then that block's mistake, judged in its own cell."""
    for c in calls or []:
        x = c.args[arg] if len(c.args) > arg else c.kwargs.get(name)
        if (isinstance(x, TensorRecord) and x.dtype == "torch.float32" and isinstance(c.value, TensorRecord)
                and c.value.dtype == "torch.float64"):
            return True
    return False


def expect_long(value: Any, name: str, shape: tuple | None = None) -> np.ndarray:
    """Labels stay torch.long."""
    if isinstance(value, TensorRecord) and value.dtype != "torch.int64":
        raise CheckFailed(f"{name} has dtype {value.dtype}; labels must stay torch.long (int64).\nLikely cause: "
                          f"arithmetic with a float mask or torch.where with a float fill value turned the labels "
                          f"into floats; use torch.where(drop, torch.full_like(y, null_label), y).")
    return as_array(value, name, shape=shape, dtype="long")


def expect_no_graph(value: Any, name: str) -> None:
    """A sampler's result carries no autograd graph (the network had trainable parameters)."""
    if isinstance(value, TensorRecord) and (value.requires_grad or value.grad_fn):
        raise CheckFailed(f"{name} carries an autograd graph (requires_grad=True) although sampling needs no "
                          f"gradients: every step keeps the network's graph alive (memory grows with the steps)."
                          f"\nLikely cause: run the loop under torch.no_grad() (or detach the network's output).")


# ------------------------------------------------------------------------------------------------
# Family 6: the variance of every step of an ancestral sampler
# ------------------------------------------------------------------------------------------------
def per_step_noise_variance(noise: np.ndarray) -> np.ndarray:
    """``noise`` (steps, ...) of standardised noise -> its variance at every step (about its zero mean)."""
    flat = noise.reshape(noise.shape[0], -1)
    return (flat ** 2).mean(axis=1)


def expect_per_step_variance(d: np.ndarray, times: Sequence[int], beta: np.ndarray, what: str) -> None:
    """``d[k]`` = x after step ``times[k]`` minus that step's Algorithm 2 mean (steps t > 0 only): noise
    of variance beta_t at every step (sigma_t^2 = beta_t), judged step by step."""
    b = np.asarray(beta, dtype=np.float64)
    ab = np.cumprod(1 - b)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    ts = np.asarray(times)
    shape = (-1,) + (1,) * (d.ndim - 1)
    var = per_step_noise_variance(d / np.sqrt(b[ts]).reshape(shape))
    n = int(np.prod(d.shape[1:]))
    tol = 6 * math.sqrt(2 / n) + 0.02
    bad = [(int(t), float(v)) for t, v in zip(ts, var) if abs(v - 1) > tol]
    if not bad:
        return
    tilde = b[ts] * (1 - ab_prev[ts]) / (1 - ab[ts])
    var_tilde = per_step_noise_variance(d / np.sqrt(tilde).reshape(shape))
    t0, v0 = bad[-1]  # the step closest to t = 0 (the loop runs T-1 down to 1)
    shown = ", ".join(f"t={t}: {v:.3g}" for t, v in bad[-4:])
    hint = None
    if all(abs(v - 1) <= tol for v in var_tilde):
        hint = ("the noise has the posterior variance beta_tilde_t; this sampler uses sigma_t^2 = beta_t at every "
                "step (sigma_t = sqrt(beta[t])).")
    elif max(var) < 0.05:
        hint = "no (or hardly any) noise is added between steps: x = mean + sqrt(beta[t]) z for t > 0."
    elif all(abs(v / bb - 1) <= tol for v, bb in zip(var, b[ts])):
        hint = "the noise has standard deviation beta_t; it must be sqrt(beta_t) (sigma_t^2 = beta_t)."
    elif all(abs(v - b[t - 1] / b[t]) <= tol for v, t in zip(var, ts)):
        hint = "off by one: the noise has variance beta[t - 1]; step t uses sigma_t = sqrt(beta[t])."
    elif all(abs(v * bb - 1) <= tol for v, bb in zip(var, b[ts])):
        hint = "the noise has standard deviation 1 (z added without sigma_t); multiply it by sqrt(beta[t])."
    raise CheckFailed(f"{what}: the noise added at each step t > 0 should have variance beta_t (sigma_t^2 = beta_t); "
                      f"at {len(bad)} of {len(ts)} steps its variance relative to beta_t is off ({shown})."
                      + (f"\nLikely cause: {hint}" if hint else "\nLikely cause: check sigma_t and the update of "
                         "Algorithm 2, line 4, at every step."))

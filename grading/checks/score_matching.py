"""Hidden tests of notebook 06_score_matching (NCSN, Song & Ermon 2019, with the improved techniques
of Song & Ermon 2020).

One check per graded test cell. Conventions (docs/conventions.md): ``sigmas[0]`` is the LARGEST noise
level, ``sigmas[-1] = sigma_min``; the score is ``net(x) / sigma`` with an unconditional ``net(x)``;
Langevin uses the improved paper's update ``x + alpha s + sqrt(2 alpha) z`` with
``alpha = eps sigma^2 / sigma_min^2``.

Oracles (docs/conventions.md, section 4):

* single-point data ``c``: the exact score is ``-(x - c) / sigma^2``; the DSM loss is 0 for it and
  ``0.5 ||noise||^2`` (``D / 2`` in expectation) for a zero score;
* one Langevin level from variance ``(gamma sigma_L)^2`` driven by that exact score ends at the variance
  that technique 4 predicts; the 2019 update ``(alpha / 2, sqrt(alpha))`` ends elsewhere;
* the final denoising step maps every sample of the single-point oracle to ``c`` exactly;
* a linear "network" ``net(x) = -k (x - c)`` turns annealed Langevin into a Gaussian recursion whose
  mean and variance are computed here exactly, for the correct algorithm and for each known mistake.

Random functions are tested through statistics over many values, never by replaying a generator, so
any order of random draws passes.

Every check is trusted (``grading.verdict``): before its ``yield`` it only asks for calls, with inputs
drawn from the grading run's secret seed (``p.gen``) and the stub networks of
``gradeprobe.stubs_score_matching``; the kernel runs them and sends back plain data; after the
``yield`` the check judges in the grader's own process.

Functions graded elsewhere (``score``, ``langevin_step_size``) are never replaced: their calls are
recorded while ``dsm_loss``, ``annealed_langevin`` and ``inpaint`` run. When they returned what they
should on those inputs, the output is judged as it stands; when they did not (a mistake that costs
points in their own cell), the composition is judged from the recorded calls instead: ``dsm_loss``
from the loss their own score values give, the samplers from the order of the levels, the step sizes
passed on and the update between one call of ``score`` and the next (:func:`_langevin_structure`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import ndtr

from gradeprobe.stubs_score_matching import FunctionNet
from grading.hidden import (CheckFailed, as_array, as_scalar, as_tensor_array, close, describe_diff, expect,
                            fail_known_mistake, first_match)
from grading.records import TensorRecord, float_array, type_name
from grading.verdict import Outcome, Probe, WrappedCall, expect_unchanged, trusted

from .discipline import (expect_dtype_kept, expect_no_global_rng, expect_no_graph, expect_stream_continues,
                         float64_from)

#: the notebook's globals of the same names, bound to its own (here wrong) values while a check runs
_SM_GLOBALS = {"sigmas": torch.tensor([50.0, 5.0, 0.5, 0.05]), "SIGMA_MAX": 50.0, "SIGMA_MIN": 0.05, "sL": 0.05,
               "EPS": 3e-6, "N_STEPS_EACH": 7, "T": 7, "eps": 3e-6, "mask": torch.ones(1, 1, 32, 32),
               "D": 1024, "GAMMA": 1.3}
#: error hints of calls that used those globals instead of the arguments
_GLOBAL_HINTS: tuple[tuple[str, str], ...] = (
    ("must match the size of tensor",
     "a notebook global of another size was used (mask or sigmas of the notebook): use only the arguments."),
    ("out of bounds", "the number of levels or steps does not come from the arguments (len(sigmas), n_steps_each)."),
)

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


def _num(v) -> float | None:
    """A recorded argument as a float (None when it is not a number)."""
    if isinstance(v, TensorRecord):
        return float(v.array.reshape(-1)[0]) if v.array.size == 1 else None
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
        return float(v)
    return None


_a64 = float_array  # a recorded tensor's values as float64 (NaN kept), None for anything else


def _bound(c: WrappedCall, names: tuple[str, ...]) -> dict:
    out = dict(zip(names, c.args))
    out.update({k: v for k, v in c.kwargs.items() if k in names})
    return out


_SCORE_ARGS = ("net", "x", "sigma")
_STEP_ARGS = ("eps", "sigma", "sigma_min")
_HELPERS = ("score", "langevin_step_size")


def _score_calls(out: Outcome) -> list[dict] | None:
    """The recorded calls of the student's ``score``: dicts with x, sigma (a float, or a (B,) array),
    value; None if one raised or is not plain data."""
    calls = []
    for c in out.wrapped("score") or []:
        d = _bound(c, _SCORE_ARGS)
        x, v = _a64(d.get("x")), _a64(c.value)
        sig = d.get("sigma")
        sig = _num(sig) if _num(sig) is not None else _a64(sig)
        if c.error is not None or x is None or v is None or sig is None:
            return None
        calls.append({"x": x, "sigma": sig, "value": v})
    return calls


def _per_row(sigma, x: np.ndarray):
    s = np.asarray(sigma, dtype=np.float64)
    return s.reshape(-1, *([1] * (x.ndim - 1))) if s.ndim == 1 and s.size == x.shape[0] and x.ndim > 1 else s


def _helpers_right(out: Outcome, net) -> bool:
    """Whether the student's ``score`` and ``langevin_step_size`` returned the right values on every
    call recorded during ``out`` (``net(x)``: the stub net's output, computed here)."""
    calls = _score_calls(out)
    if calls is None:
        return False
    for c in calls:
        want = net(c["x"]) / _per_row(c["sigma"], c["x"])
        if c["value"].shape != want.shape or not close(c["value"], want, atol=1e-5, rtol=1e-4):
            return False
    for c in out.wrapped("langevin_step_size") or []:
        d = {k: _num(v) for k, v in _bound(c, _STEP_ARGS).items()}
        got = _num(c.value)
        if c.error is not None or None in (got, d.get("eps"), d.get("sigma"), d.get("sigma_min")):
            return False
        want = d["eps"] * d["sigma"] ** 2 / d["sigma_min"] ** 2
        if abs(got - want) > 1e-6 * abs(want) + 1e-12:
            return False
    return True


def _linear(c: float, k: float):
    return lambda x: -k * (x - c)


def _function_net(x: np.ndarray) -> np.ndarray:
    """FunctionNet() in float64."""
    return 0.7 * x + 0.3 * np.sin(3 * x) + 0.2


class _Calls:
    """The calls of one sampler a check asks for, with the notebook's globals bound to wrong values, and
    the discipline every one of them must keep (inputs left alone, the global random state untouched)."""

    def __init__(self, p: Probe, fn: str, names: tuple[str, ...]):
        self.p, self.fn, self.names, self.made = p, fn, names, []

    def __call__(self, *args, **kwargs) -> Outcome:
        out = self.p.call(self.fn, *args, bind=_SM_GLOBALS, error_hints=_GLOBAL_HINTS, **kwargs)
        self.made.append((out, dict(zip(self.names, args))))
        return out

    def judge(self) -> None:
        for out, sent in self.made:
            out.value  # noqa: B018 - the call's own error first
            expect_unchanged(out, {k: v if isinstance(v, torch.Tensor) else None for k, v in sent.items()}, self.fn)
        for out, _ in self.made:
            expect_no_global_rng(out, self.fn)


# ----------------------------------------------------------------------------------------------
# geometric_sigmas
# ----------------------------------------------------------------------------------------------
@trusted
def check_geometric_sigmas(p: Probe):
    cases = [(10.0, 0.01, 7), (1.0, 0.01, 10), (31.66, 0.01, 119), (3.0, 2.0, 2)]
    outs = [p.call("geometric_sigmas", a, b, L, what=f"geometric_sigmas({a}, {b}, {L})") for a, b, L in cases]
    yield
    for (sigma_max, sigma_min, L), out in zip(cases, outs):
        got = as_tensor_array(out.value, f"geometric_sigmas({sigma_max}, {sigma_min}, {L})", shape=(L,))
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
@trusted
def check_max_pairwise_distance(p: Probe):
    # Oracle: a 3-4-5 right triangle (distances 3, 4 and 5) in 8 dimensions.
    tri = torch.zeros(3, 1, 2, 4)  # (N, C, H, W)
    tri[1, 0, 0, 0] = 3.0
    tri[2, 0, 1, 3] = 4.0
    # Random images: compare with a float64 computation of all pairs.
    g = p.gen(61)
    rnd = torch.rand(300, 1, 4, 5, generator=g) * 2 - 1  # (N, 1, 4, 5)
    i, j = torch.randperm(300, generator=g)[:2].tolist()
    rnd[i] += 0.9  # make one pair clearly the farthest
    rnd[j] -= 0.9
    cases = [(tri, "the 3-4-5 triangle"), (rnd, "300 random images (1, 4, 5)")]
    outs = [p.call("max_pairwise_distance", x, what=f"max_pairwise_distance on {label}") for x, label in cases]
    yield
    for (x, _), out in zip(cases, outs):
        out.value  # noqa: B018 - the call's own error first
        expect_unchanged(out, {"x": x}, "max_pairwise_distance")
    flat = rnd.reshape(300, -1).to(torch.float64)
    d = torch.cdist(flat, flat)  # (N, N)
    iu = torch.triu_indices(300, 300, offset=1)
    wants = [(5.0, 4.0, 24.0 / 9.0), (float(d.max()), float(d[iu[0], iu[1]].mean()), float(d.mean()))]
    for (x, label), (want, mean_v, mean_all), out in zip(cases, wants, outs):
        got = _number(out.value, "max_pairwise_distance(x)")
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




@trusted
def check_num_noise_levels(p: Probe):
    # Inputs chosen so that 1 + ln(sigma_max / sigma_min) / ln(gamma) is far from an integer.
    cases = [(31.66, 0.01, 1024), (40.0, 0.01, 1024), (10.0, 0.1, 784), (5.0, 0.5, 64), (300.0, 0.02, 100),
             (50.0, 0.01, 3072)]
    outs = [p.call("num_noise_levels", a, b, D, what=f"num_noise_levels({a}, {b}, {D})") for a, b, D in cases]
    yield
    for (sigma_max, sigma_min, D), out in zip(cases, outs):
        got = _number(out.value, f"num_noise_levels({sigma_max}, {sigma_min}, {D})")
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
@trusted
def check_score(p: Probe):
    x = torch.randn(4, 1, 3, 3, generator=p.gen(62))  # (B, C, H, W)
    sigma = torch.tensor([0.5, 1.0, 2.0, 4.0])  # (B,)
    net = p.stub("score_matching.FunctionNet")
    out = p.call("score", net, x, sigma, what="score(net, x, sigma)")
    out_f = p.call("score", net, x, 2.5, what="score(net, x, 2.5)")
    yield
    out.value  # noqa: B018 - the call's own error first
    expect_unchanged(out, {"net": None, "x": x, "sigma": sigma}, "score")
    got = as_tensor_array(out.value, "score(net, x, sigma)", shape=tuple(x.shape))
    with torch.no_grad():
        raw = FunctionNet()(x).double().numpy()
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
    got = as_tensor_array(out_f.value, "score(net, x, 2.5)", shape=tuple(x.shape))
    expect(close(got, raw / 2.5, atol=1e-5, rtol=1e-4),
           f"score(net, x, sigma=2.5) (a float) is wrong: {describe_diff(got, raw / 2.5)}.",
           hint="accept a Python float sigma as well as a (B,) tensor (torch.as_tensor helps).")
    expect_unchanged(out_f, {"net": None, "x": x}, "score")
    expect_dtype_kept(out.value, "torch.float32", "score(net, x, sigma) for float32 x and sigma")
    expect_dtype_kept(out_f.value, "torch.float32", "score(net, x, 2.5) for a float32 x")


# ----------------------------------------------------------------------------------------------
# dsm_loss
# ----------------------------------------------------------------------------------------------
def _loss_value(out, what):
    if not (isinstance(out, TensorRecord) and out.exact):
        raise CheckFailed(f"{what} should return a 0-d torch.Tensor (so that .backward() works), "
                          f"got {type_name(out)}.")
    expect(out.shape == (), f"{what} should return a 0-d tensor (the batch mean), got shape {out.shape}.",
           hint="sum the squared residual over each example's pixels, then average over the batch.")
    return float(as_array(out, what))


def _dsm_own(out: Outcome, x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> dict | None:
    """The losses eq. 2 and its known mistaken forms give with the student's own ``score`` values,
    when ``dsm_loss`` called it on the right noisy input x + sigma * noise (else None): a mistake in
    ``score`` costs the points of its own cell, not these."""
    calls = _score_calls(out)
    if not calls:
        return None
    try:
        X = np.concatenate([c["x"] for c in calls])
        V = np.concatenate([c["value"] for c in calls])
    except ValueError:
        return None
    s4 = sigma.double().numpy().reshape(-1, 1, 1, 1)
    n64 = noise.double().numpy()
    xt = x.double().numpy() + s4 * n64
    if X.shape != xt.shape or V.shape != xt.shape or not close(X, xt, atol=1e-5, rtol=1e-5):
        return None
    B, D = xt.shape[0], int(np.prod(xt.shape[1:]))

    def loss(r):
        return float((0.5 * (r ** 2).reshape(B, -1).sum(1)).mean())

    return {"ok": loss(s4 * V + n64), "sign": loss(s4 * V - n64), "pixels": loss(s4 * V + n64) / D,
            "weight": loss(V + n64 / s4)}


def _dsm_explained(own: dict | None, got: float, rtol: float) -> bool:
    return own is not None and abs(got - own["ok"]) <= rtol * abs(own["ok"]) + 1e-6


def _own_hint(own: dict | None, got: float, rtol: float) -> str | None:
    """The likely cause, from the mistaken forms computed with the student's own score values."""
    if own is None:
        return None
    return first_match(got, [
        ("the target has the wrong sign: the residual is sigma * score + noise.", own["sign"]),
        ("the squared error is averaged over pixels; eq. 2 uses the squared NORM: sum over each example's "
         "pixels, then the mean over the batch.", own["pixels"]),
        ("the sigma**2 weighting (lambda(sigma) = sigma**2) is missing: use sigma * score + noise.", own["weight"]),
    ], lambda a, b: abs(a - b) <= rtol * abs(b) + 1e-6)


@trusted
def check_dsm_loss(p: Probe):
    g = p.gen(63)
    B, shape = 32, (1, 4, 4)
    D = int(np.prod(shape))
    c = torch.rand(shape, generator=g) * 2 - 1  # (1, 4, 4): the single data point
    x = c.expand(B, *shape).clone()  # (B, 1, 4, 4)
    sigma = torch.exp(torch.empty(B).uniform_(math.log(0.2), math.log(5.0), generator=g))  # (B,)
    noise = torch.randn(B, *shape, generator=g)  # (B, 1, 4, 4)
    xr = torch.rand(B, *shape, generator=g) * 2 - 1  # (B, 1, 4, 4)
    wrap = ("score",)
    # 1. The exact score of single-point data gives a zero loss.
    x_tilde = x + sigma.reshape(-1, 1, 1, 1) * noise
    oracle = p.stub("score_matching.RowOracleNet", x_tilde=x_tilde, sigma=sigma, c=c)
    out1 = p.call("dsm_loss", oracle, x, sigma, noise, what="dsm_loss(net, x, sigma, noise)", wrap=wrap)
    # 2. A zero score: 0.5 ||noise||^2 per example (D / 2 on average).
    out2 = p.call("dsm_loss", p.stub("score_matching.ZeroNet"), x, sigma, noise,
                  what="dsm_loss(zero net, x, sigma, noise)", wrap=wrap)
    # 3. A generic network on generic data, compared with the formula in float64; then backward.
    net = p.stub("score_matching.FunctionNet", trainable=True)
    out3 = p.call("dsm_loss", net, xr, sigma, noise, what="dsm_loss(net, x, sigma, noise)", wrap=wrap, keep=True)
    back = p.method(out3, "backward", what="loss.backward()")
    state = p.inspect(net, "the network")
    yield
    for o, x_in in ((out1, x), (out2, x), (out3, xr)):
        o.value  # noqa: B018 - the call's own error first
        expect_unchanged(o, {"net": None, "x": x_in, "sigma": sigma, "noise": noise}, "dsm_loss")
        expect_no_global_rng(o, "dsm_loss", takes_generator=False)

    nd = noise.double().reshape(B, -1)
    sd = sigma.double()
    sq = (nd ** 2).sum(1)  # (B,) ||noise||^2
    got = _loss_value(out1.value, "dsm_loss(...)")
    own = _dsm_own(out1, x, sigma, noise)
    if abs(got) > 1e-3 and not _dsm_explained(own, got, 1e-3):
        hint = first_match(got, [
            ("the target has the wrong sign: the score points from x_tilde back to x, "
             "-(x_tilde - x) / sigma**2 = -noise / sigma, so the residual is sigma * score + noise.",
             float((0.5 * 4 * sq).mean())),
            ("the target has the wrong sign (and the squared norm is averaged over pixels).",
             float((0.5 * 4 * sq / D).mean())),
        ], lambda a, b: abs(a - b) <= 1e-3 * abs(b) + 1e-4) or _own_hint(own, got, 1e-3)
        fail_known_mistake(
            f"With data at a single point c and the EXACT score -(x - c) / sigma**2 the loss must be 0; "
            f"got {got:.6g}.", hint)
    want = float((0.5 * sq).mean())
    got = _loss_value(out2.value, "dsm_loss(...)")
    own = _dsm_own(out2, x, sigma, noise)
    if abs(got - want) > 1e-4 * want and not _dsm_explained(own, got, 1e-4):
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
    loss = out3.value
    got = _loss_value(loss, "dsm_loss(...)")
    s4 = sd.reshape(-1, 1, 1, 1)
    xt = (xr.double() + s4 * noise.double()).numpy()
    raw = torch.from_numpy(_function_net(xt))
    want = float((0.5 * ((raw + noise.double()) ** 2).reshape(B, -1).sum(1)).mean())
    wrong_sign = float((0.5 * ((raw - noise.double()) ** 2).reshape(B, -1).sum(1)).mean())
    own = _dsm_own(out3, xr, sigma, noise)
    if abs(got - want) > 2e-4 * want and not _dsm_explained(own, got, 2e-4):
        hint = first_match(got, [("the target has the wrong sign (use sigma * score + noise).", wrong_sign)],
                           lambda a, b: abs(a - b) <= 2e-4 * abs(b)) or _own_hint(own, got, 2e-4)
        fail_known_mistake(f"dsm_loss on random data with a fixed network: expected {want:.6g}, got {got:.6g}. "
                           f"The noisy input is x + sigma * noise with one sigma per example.", hint)
    expect(loss.requires_grad, "the loss carries no gradient: do not detach it or convert it to a number.")
    if not float64_from(out3.wrapped("score")):  # (a float64 score is judged in its own cell)
        expect_dtype_kept(loss, "torch.float32", "dsm_loss(...) for float32 x, sigma and noise")
    back.value  # noqa: B018 - raises with the student's error if backward failed
    grad = (state.value.get("grads") or {}).get("a") if isinstance(state.value, dict) else None
    expect(isinstance(grad, TensorRecord) and float(np.abs(grad.array).sum()) > 0,
           "back-propagating the loss gave no gradient to the network's parameters.")


# ----------------------------------------------------------------------------------------------
# langevin_step_size
# ----------------------------------------------------------------------------------------------
@trusted
def check_langevin_step_size(p: Probe):
    cases = [(2e-5, 1.0, 0.01), (1e-5, 31.66, 0.01), (0.1, 0.3, 0.3), (0.02, 2.0, 0.5)]
    outs = [p.call("langevin_step_size", e, s, m, what=f"langevin_step_size({e}, {s}, {m})") for e, s, m in cases]
    yield
    for (eps, sigma, sigma_min), out in zip(cases, outs):
        got = _number(out.value, "langevin_step_size(...)")
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




def _sig_of(s) -> float | None:
    if isinstance(s, float):
        return s
    a = np.asarray(s, dtype=np.float64).reshape(-1)
    return float(a[0]) if a.size and np.all(a == a[0]) else None


def _same_levels(got: list, want: list) -> bool:
    return len(got) == len(want) and all(g is not None and abs(g - w) <= 1e-5 * w for g, w in zip(got, want))


def _describe_levels(levels: list) -> str:
    text = ", ".join("?" if v is None else f"{v:.3g}" for v in levels[:12])
    return f"[{text}{', ...' if len(levels) > 12 else ''}] ({len(levels)} calls)"


def _langevin_structure(out: Outcome, sigmas: list[float], eps: float, T: int, denoise: bool | None,
                        what: str, x0: torch.Tensor | None = None, unknown: np.ndarray | None = None) -> None:
    """Judge annealed Langevin dynamics from the recorded calls of the student's own ``score`` and
    ``langevin_step_size`` (used when those returned wrong values: their mistakes cost their own
    cells). The loop must visit the levels in order, ``T`` calls of ``score`` each (then one more at
    sigma_min when ``denoise``; ``None``: either), take alpha from ``langevin_step_size(eps, sigma,
    sigma_min)``, move by ``x + alpha s + sqrt(2 alpha) z`` from one call to the next with fresh z,
    and end with ``x + sigma_min**2 s`` after a final denoising call. ``unknown``: judge only these
    pixels (inpainting)."""
    y = as_tensor_array(out.value, f"the result of {what}")
    calls = _score_calls(out)
    expect(bool(calls), f"{what} never called score.")
    L, sL, s1 = len(sigmas), sigmas[-1], sigmas[0]
    levels = [_sig_of(c["sigma"]) for c in calls]
    base = [s for s in sigmas for _ in range(T)]
    ok_seqs = {True: [base + [sL]], False: [base], None: [base, base + [sL]]}[denoise]
    if not any(_same_levels(levels, w) for w in ok_seqs):
        hint = None
        up = [s for s in sigmas[::-1] for _ in range(T)]
        if _same_levels(levels, up) or _same_levels(levels, up + [sL]) or _same_levels(levels, up + [s1]):
            hint = _VARIANT_HINTS["ascending"]
        elif denoise is True and _same_levels(levels, base):
            hint = _VARIANT_HINTS["nodenoise"]
        elif denoise is False and _same_levels(levels, base + [sL]):
            hint = _VARIANT_HINTS["extradenoise"]
        elif len(levels) in (L * _SM_GLOBALS["N_STEPS_EACH"], L * _SM_GLOBALS["N_STEPS_EACH"] + 1) and T != _SM_GLOBALS["N_STEPS_EACH"]:
            hint = ("the number of steps per level is not the n_steps_each argument (the notebook's N_STEPS_EACH, or "
                    "a fixed count, was used).")
        elif any(v is not None and min(abs(v - g_) for g_ in _SM_GLOBALS["sigmas"].tolist()) < 1e-6 * v
                 and min(abs(v - s_) for s_ in sigmas) > 1e-6 * v for v in levels):
            hint = "the levels come from the notebook's global sigmas, not from the sigmas argument."
        fail_known_mistake(
            f"{what} should call score {T} times at each level of sigmas {sigmas}, largest first"
            + {True: ", then once more at sigma_min for the final denoising step", False: "",
               None: " (and at most once more at sigma_min)"}[denoise]
            + f"; it called it at sigma = {_describe_levels(levels)}.", hint)
    alphas = {}
    for c in out.wrapped("langevin_step_size") or []:
        d = {k: _num(v) for k, v in _bound(c, _STEP_ARGS).items()}
        sig, got_a = d.get("sigma"), _num(c.value)
        if sig is None or got_a is None:
            continue
        if d.get("sigma_min") is not None and abs(d["sigma_min"] - sL) > 1e-6 * sL:
            fail_known_mistake(f"{what} called langevin_step_size(eps, sigma, sigma_min) with sigma_min = "
                               f"{d['sigma_min']:.4g}; sigma_min is the smallest level, sigmas[-1] = {sL}.",
                               _VARIANT_HINTS["norm_max"] if abs(d["sigma_min"] - s1) <= 1e-6 * s1 else
                               "sigma_min does not come from the sigmas argument (the notebook's SIGMA_MIN or a fixed "
                               "value was used): sigma_min = sigmas[-1]." if abs(d["sigma_min"] - _SM_GLOBALS["SIGMA_MIN"]) < 1e-9
                               else None)
        expect(d.get("eps") is not None and abs(d["eps"] - eps) <= 1e-9 + 1e-6 * eps,
               f"{what} called langevin_step_size with eps = {d.get('eps')}; expected the eps it was given, {eps}.",
               hint="use the eps argument, not the notebook's EPS or a fixed value.")
        alphas[round(sig, 9)] = got_a
    xs = [c["x"] for c in calls]
    if x0 is not None:
        expect(xs[0].shape == tuple(x0.shape) and close(xs[0], x0.double().numpy(), atol=1e-6, rtol=0),
               f"{what}: the first call of score should get the starting samples x themselves.")
    n = L * T
    pick = (lambda a: a[unknown]) if unknown is not None else (lambda a: a.reshape(-1))

    def residuals(drift, noise, alpha_of):
        out_r = []
        for k in range(n):
            a = alpha_of(sigmas[k // T])
            nxt = xs[k + 1] if k + 1 < len(xs) else y
            if nxt.shape != xs[k].shape:
                return None
            out_r.append(pick((nxt - xs[k] - drift(a) * calls[k]["value"]) / math.sqrt(noise(a))))
        return np.concatenate(out_r)

    def fits(r):
        if r is None or not np.all(np.isfinite(r)):
            return False
        return abs(float(r.std()) - 1) < 6 / math.sqrt(2 * r.size) + 0.01 and abs(float(r.mean())) < 6 / math.sqrt(r.size) + 0.01

    own = lambda s: alphas.get(round(s, 9), eps * s ** 2 / sL ** 2)  # noqa: E731
    r = residuals(lambda a: a, lambda a: 2 * a, own)
    if not fits(r):
        hint = None
        variants = [("2019", lambda a: a / 2, lambda a: a, own)]
        if not alphas:  # alpha computed inline
            variants += [("sigma1", lambda a: a, lambda a: 2 * a, lambda s: eps * s / sL),
                         ("norm_max", lambda a: a, lambda a: 2 * a, lambda s: eps * s ** 2 / s1 ** 2)]
        for name, drift, noise, alpha_of in variants:
            if fits(residuals(drift, noise, alpha_of)):
                hint = _VARIANT_HINTS[name]
                break
        std = float(r.std()) if r is not None and np.all(np.isfinite(r)) else float("nan")
        fail_known_mistake(
            f"{what}: from one call of score to the next, x must move by alpha * s + sqrt(2 alpha) z with "
            f"alpha = langevin_step_size(eps, sigma, sigma_min), s the score it returned and fresh noise z; "
            f"(x_next - x - alpha s) / sqrt(2 alpha) has std {std:.3f} (expected 1).", hint)
    if len(calls) == n + 1:
        final = xs[n] + sL ** 2 * calls[n]["value"]
        expect(final.shape == y.shape and close(pick(y), pick(final), atol=1e-5, rtol=1e-5),
               f"{what}: the final denoising step must return x + sigma_min**2 * s(x, sigma_min), with no noise "
               f"added: {describe_diff(pick(y), pick(final)) if final.shape == y.shape else 'other shape'}.",
               hint=_VARIANT_HINTS["nodenoise"] + " (Or noise was added after it.)")


@trusted
def check_annealed_langevin(p: Probe):
    Lin = "score_matching.LinearNet"
    call = _Calls(p, "annealed_langevin", ("net", "x", "sigmas", "eps", "n_steps_each"))
    # 1. Final denoising step: one level, the exact single-point score -> every sample lands on c.
    sig, c1 = 0.7, 0.25
    x1 = c1 + sig * torch.randn(8, 1, 4, 4, generator=p.gen(64))  # (B, 1, 4, 4)
    s1 = torch.tensor([sig])
    out1 = call(p.stub(Lin, c=c1, k=1 / sig), x1, s1, 0.05, 3, denoise=True,
                  generator=p.generator(1), what="annealed_langevin(..., denoise=True)")
    out1b = call(p.stub(Lin, c=c1, k=1 / sig), x1, s1, 0.05, 3, denoise=False,
                   generator=p.generator(1), what="annealed_langevin(..., denoise=False)")
    # 2. Technique 4's oracle: one level from variance (gamma sigma_L)^2 with the exact score.
    sL, gamma, T2, eps2, c2 = 0.1, 1.5, 5, 0.1 * 0.1 ** 2, -0.4
    x2 = c2 + gamma * sL * torch.randn(4096, 1, 4, 4, generator=p.gen(65))  # (4096, 1, 4, 4)
    out2 = call(p.stub(Lin, c=c2, k=1 / sL), x2, torch.tensor([sL]), eps2, T2,
                  denoise=False, generator=p.generator(2), what="annealed_langevin(...)")
    # 3. Several levels with a linear network: exact mean and variance of a Gaussian recursion.
    sig_list = [2.0, 1.0, 0.5]
    eps, T, k, c, m0, v0 = 0.02, 4, 1.0, 0.3, 3.0, 4.0
    x3 = c + m0 + math.sqrt(v0) * torch.randn(16384, 1, 4, 4, generator=p.gen(66))  # (16384, 1, 4, 4)
    outs3 = [(d, call(p.stub(Lin, c=c, k=k), x3, torch.tensor(sig_list), eps, T, denoise=d,
                        generator=p.generator(3), what=f"annealed_langevin(..., denoise={d})")) for d in (False, True)]
    # the same with the calls of the student's score and langevin_step_size recorded (a smaller batch)
    xs = c + m0 + math.sqrt(v0) * torch.randn(256, 1, 4, 4, generator=p.gen(68))  # (256, 1, 4, 4)
    struct = [(d, call(p.stub(Lin, c=c, k=k), xs, torch.tensor(sig_list), eps, T, denoise=d,
                         generator=p.generator(3), what=f"annealed_langevin(..., denoise={d})", wrap=_HELPERS))
              for d in (False, True)]
    # 4. The generator drives every draw: same seed -> same samples, other seed -> other samples.
    x4 = torch.randn(4, 1, 4, 4, generator=p.gen(67))  # (4, 1, 4, 4)
    # (denoise=False: with a wrong score of their own the last step could map every sample to one point)
    runs4 = [call(p.stub(Lin, c=0.0, k=1.0), x4, torch.tensor(sig_list), eps, 2,
                    denoise=False, generator=p.generator(seed), what="annealed_langevin(..., generator=...)", global_seed=gs)
             for seed, gs in ((5, 1), (5, 2), (6, 3))]
    # 5. one generator for two calls continues its stream; float32 kept, no graph (checked on part 3)
    one = p.generator(8)
    stream = [call(p.stub(Lin, c=0.0, k=1.0), x4, torch.tensor(sig_list), eps, 2, denoise=False, generator=one,
                   what="annealed_langevin(..., generator=g)") for _ in range(2)]
    yield

    call.judge()
    if all(_helpers_right(o, _linear(c, k)) for _, o in struct):
        try:
            _annealed_direct(out1, out1b, x1, sig, c1, out2, x2, sL, gamma, T2, eps2, c2, outs3, sig_list, eps, T, k,
                             c, m0, v0)
        except CheckFailed:
            # a more specific diagnosis from the structure of the loop (levels, step sizes, updates), if any
            for d, o in struct:
                _langevin_structure(o, sig_list, eps, T, d, f"annealed_langevin(..., denoise={d})", x0=xs)
            raise
    else:  # their own score or langevin_step_size is wrong (judged in its cell): judge the composition
        for d, o in struct:
            _langevin_structure(o, sig_list, eps, T, d, f"annealed_langevin(..., denoise={d})", x0=xs)
    a, b, d = (as_tensor_array(r.value, "annealed_langevin(...)", shape=tuple(x4.shape)) for r in runs4)
    expect(np.array_equal(a, b) and not np.array_equal(a, d),
           "annealed_langevin should draw all its noise from `generator`: two runs with generators seeded "
           "alike must give the same samples, and differently seeded ones different samples.",
           hint="pass generator=generator to torch.randn (torch.randn_like takes no generator).")
    expect_stream_continues(*(as_tensor_array(r.value, "annealed_langevin(...)") for r in stream),
                            "annealed_langevin")
    own64 = any(float64_from(o.wrapped("score")) for _, o in struct)  # (judged in score's own cell)
    for d, o in outs3:
        if not own64:
            expect_dtype_kept(o.value, "torch.float32", f"annealed_langevin(..., denoise={d}) for a float32 x")
        expect_no_graph(o.value, f"The samples of annealed_langevin(..., denoise={d}) (a network with parameters)")


def _annealed_direct(out1, out1b, x1, sig, c1, out2, x2, sL, gamma, T2, eps2, c2, outs3, sig_list, eps, T, k, c,
                     m0, v0) -> None:
    """Parts 1 to 3 judged on the outputs (the student's helpers returned the right values)."""
    got = as_tensor_array(out1.value, "annealed_langevin(...)", shape=tuple(x1.shape))
    if not close(got, np.full_like(got, c1), atol=1e-4, rtol=0):
        spread = float(np.abs(got - c1).max())
        raise CheckFailed(
            f"With data concentrated at c = {c1} and its exact score, the final denoising step "
            f"x + sigma_min**2 * s(x, sigma_min) maps every sample to c exactly; your samples are up to "
            f"{spread:.3g} away from c.\nLikely cause: " + _VARIANT_HINTS["nodenoise"]
            + " (Or noise was added after it.)")
    got = as_tensor_array(out1b.value, "annealed_langevin(..., denoise=False)", shape=tuple(x1.shape))
    expect(float(np.abs(got - c1).max()) > 1e-2,
           "With denoise=False the samples must keep their last noise level; yours all equal c.",
           hint=_VARIANT_HINTS["extradenoise"])
    got = as_tensor_array(out2.value, "annealed_langevin(...)", shape=tuple(x2.shape))
    ratio = float(np.var(got - c2) + np.mean(got - c2) ** 2) / sL ** 2
    u = eps2 / sL ** 2
    want = (1 - u) ** (2 * T2) * (gamma ** 2 - 2 / (2 - u)) + 2 / (2 - u)
    if abs(ratio - want) > 0.04 * want:
        _, v2019 = _predict([sL], eps2, T2, 1 / sL, 0.0, (gamma * sL) ** 2, "2019", denoise=False)
        hint = _VARIANT_HINTS["2019"] if abs(ratio - v2019 / sL ** 2) <= 0.04 * v2019 / sL ** 2 else None
        fail_known_mistake(
            f"One Langevin level (sigma = {sL}, T = {T2}, eps = {eps2:.3g}) started from variance "
            f"(gamma * sigma)**2 with gamma = {gamma}, driven by the exact single-point score, must end "
            f"at variance {want:.4f} * sigma**2 (technique 4's formula); yours ends at {ratio:.4f} * sigma**2.",
            hint)
    for denoise, out in outs3:
        got = as_tensor_array(out.value, "annealed_langevin(...)", shape=(16384, 1, 4, 4)) - c
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




@trusted
def check_choose_step_size(p: Probe):
    cases = []
    for gamma, sL, T, L in [(1.071, 0.01, 5, 4), (1.5, 0.1, 3, 3), (1.2, 1.0, 10, 5), (2.0, 0.3, 1, 2)]:
        sigmas = torch.tensor([sL * gamma ** (L - 1 - i) for i in range(L)], dtype=torch.float64)  # (L,)
        label = f"choose_step_size(sigmas from {float(sigmas[0]):.4g} to {sL} with ratio {gamma}, n_steps_each={T})"
        cases.append((gamma, sL, T, label, sigmas, p.call("choose_step_size", sigmas, T, what=label, bind=_SM_GLOBALS,
                                                          error_hints=_GLOBAL_HINTS)))
    yield
    for gamma, sL, T, label, sigmas, out in cases:
        out.value  # noqa: B018 - the call's own error first
        expect_unchanged(out, {"sigmas": sigmas}, "choose_step_size")
        got = _number(out.value, label)
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
            ("T is not n_steps_each: the notebook's N_STEPS_EACH (or a fixed count) was used; use the argument.",
             _best_eps(sL, gamma, 7) if T != 7 else None),
        ]
        hint = first_match(got, candidates, lambda a, b: abs(a / b - 1) <= 0.03)
        fail_known_mistake(
            f"{label}: expected eps close to {want:.6g} (variance ratio {_ratio(want, sL, gamma, T):.6f}), got "
            f"{got:.6g} (ratio {_ratio(got, sL, gamma, T):.6f}, further from 1).", hint)


# ----------------------------------------------------------------------------------------------
# inpaint
# ----------------------------------------------------------------------------------------------


def _judge_known_pixels(inputs: list, xk: np.ndarray, known: np.ndarray, sigmas: list[float], T: int) -> None:
    """Family 7: the network sees the known pixels as x_known + sigma_i z after every Langevin step at level i.

    ``inputs``: what the network got, call by call (T per level, and at most one more for a final
    denoising step, which sees the state after the last step). The first call of a level may still see
    the previous level's noise (NCSN's Algorithm 2 replaces the known pixels after each step; its official
    code also before the first); the first call of all may see anything (the initial x)."""
    L = len(sigmas)
    expect(len(inputs) in (L * T, L * T + 1),
           f"While inpainting over sigmas {sigmas} with {T} steps each, inpaint should call the network {L * T} "
           f"times (once per Langevin step); it called it {len(inputs)} times.",
           hint="one call of score per Langevin step, T = n_steps_each steps at each level of sigmas"
                + (" (the notebook's N_STEPS_EACH was used instead of the argument n_steps_each)."
                   if len(inputs) in (L * _SM_GLOBALS["N_STEPS_EACH"], L * _SM_GLOBALS["N_STEPS_EACH"] + 1) else "."))
    stats, bad = [], []
    for k_, inp in enumerate(inputs):
        if inp is None or inp.shape != xk.shape:
            raise CheckFailed(f"inpaint gave the network inputs of shape {None if inp is None else inp.shape}; "
                              f"expected {xk.shape}.")
        r = (inp - xk)[known]
        m, sd = float(r.mean()), float(r.std())
        level = min(k_ // T, L - 1)
        stats.append(sd)
        if k_ == 0:
            continue
        allowed = [sigmas[level]] + ([sigmas[level - 1]] if k_ % T == 0 and k_ < L * T else [])
        if not any(abs(sd / s_ - 1) <= 0.1 and abs(m) <= 0.12 * s_ for s_ in allowed):
            bad.append((k_, level, m, sd))
    if not bad:
        return
    later = stats[1:]
    if all(v < 0.05 * sigmas[-1] for v in later):
        hint = ("the known pixels are not re-noised: they are x_known itself during sampling; at level sigma they must "
                "be x_known + sigma * z (NCSN appendix B), so that they look like the noisy images the network was "
                "trained on.")
    elif all(abs(v / sigmas[0] - 1) <= 0.15 for v in later):
        hint = ("the known pixels are not re-noised at EACH level: after every Langevin step at level sigma_i "
                "replace them by x_known + sigma_i * z (NCSN appendix B).")
    elif all(k_ % T != 0 for k_, *_ in bad):
        hint = ("the known pixels are replaced once per level, not after every Langevin step: in between, the "
                "Langevin steps move them away from x_known + sigma_i * z. Replace them after EVERY step "
                "(NCSN appendix B, Algorithm 2).")
    else:
        hint = ("after every Langevin step at level sigma_i the known pixels must be x_known + sigma_i * z, with the "
                "level's own sigma_i.")
    k_, level, m, sd = bad[0]
    fail_known_mistake(
        f"While inpainting over sigmas {sigmas} ({T} steps each), the network should see the known pixels as "
        f"x_known + sigma_i * z after every Langevin step; at call {k_} (level sigma = {sigmas[level]}) they are "
        f"x_known plus noise of mean {m:.3g} and std {sd:.3g} ({len(bad)} of {len(inputs) - 1} calls are off).", hint)


@trusted
def check_inpaint(p: Probe):
    call = _Calls(p, "inpaint", ("net", "x_known", "mask", "sigmas", "eps", "n_steps_each"))
    # 1. Known pixels: x_known + sigma_i z after EVERY Langevin step at level i (a network whose score moves
    #    every pixel, so that known pixels left to the Langevin steps show), exactly x_known at the end.
    sig1, T1, eps1 = [3.0, 1.0, 0.3], 3, 0.03
    xk1 = torch.rand(64, 1, 8, 8, generator=p.gen(68)) * 2 - 1  # (B, 1, 8, 8)
    mask1 = torch.zeros(1, 1, 8, 8)
    mask1[..., :4] = 1.0  # left half known
    rec = p.stub("score_matching.RecordingNet", inner=p.stub("score_matching.LinearNet", c=10.0, k=0.1))
    out1 = call(rec, xk1, mask1, torch.tensor(sig1), eps1, T1, generator=p.generator(4),
                what="inpaint(net, x_known, mask, sigmas, eps, n_steps_each)")
    # 2. Unknown pixels follow the improved Langevin update (linear network, start forgotten).
    sig2, T2, eps2, k, c = [2.0, 1.0, 0.5], 20, 0.05, 1.0, 1.5
    xk2 = torch.rand(4096, 1, 4, 4, generator=p.gen(69)) * 2 - 1  # (4096, 1, 4, 4)
    mask2 = torch.zeros(1, 1, 4, 4)
    mask2[..., :2, :] = 1.0  # top half known
    out2 = call(p.stub("score_matching.LinearNet", c=c, k=k), xk2, mask2, torch.tensor(sig2), eps2, T2,
                generator=p.generator(5), what="inpaint(...)")
    # the same with the calls of the student's score and langevin_step_size recorded (fewer steps, a smaller batch)
    Ts = 4
    xks = torch.rand(256, 1, 4, 4, generator=p.gen(71)) * 2 - 1  # (256, 1, 4, 4)
    struct = call(p.stub("score_matching.LinearNet", c=c, k=k), xks, mask2, torch.tensor(sig2), eps2, Ts,
                  generator=p.generator(5), what="inpaint(...)", wrap=_HELPERS)
    # 3. Reproducible with the generator; one generator continues its stream.
    xk3 = torch.rand(2, 1, 4, 4, generator=p.gen(70)) * 2 - 1
    runs3 = [call(p.stub("score_matching.ZeroNet"), xk3, mask2, torch.tensor([1.0, 0.5]), 0.01, 2,
                  generator=p.generator(seed), what="inpaint(..., generator=...)", global_seed=gs)
             for seed, gs in ((5, 1), (5, 2), (6, 3))]
    one = p.generator(9)
    stream = [call(p.stub("score_matching.ZeroNet"), xk3, mask2, torch.tensor([1.0, 0.5]), 0.01, 2, generator=one,
                   what="inpaint(..., generator=g)") for _ in range(2)]
    yield

    call.judge()
    mask_b = mask1.expand_as(xk1).bool().numpy()
    got = as_tensor_array(out1.value, "inpaint(...)", shape=tuple(xk1.shape))
    kn, want_kn = got[mask_b], xk1.double().numpy()[mask_b]
    if not np.array_equal(kn, want_kn):
        fail_known_mistake(f"The known pixels of the result must equal x_known exactly: {describe_diff(kn, want_kn)}.",
                           "after the last level, put x_known back on the known pixels "
                           "(x = mask * x_known + (1 - mask) * x, or torch.where(mask.bool(), x_known, x)).")
    if not float64_from(struct.wrapped("score")):  # (a float64 score is judged in its own cell)
        expect_dtype_kept(out1.value, "torch.float32", "inpaint(...) for a float32 x_known")
    expect_no_graph(out1.value, "The result of inpaint(...) (a network with parameters)")
    _judge_known_pixels([_a64(cl["x"]) for cl in out1.model_calls(rec)], xk1.double().numpy(), mask_b, sig1, T1)

    unk_s = ~mask2.expand_as(xks).bool().numpy()
    if _helpers_right(struct, _linear(c, k)):
        unk = (~mask2.expand_as(xk2).bool()).numpy()
        got = as_tensor_array(out2.value, "inpaint(...)", shape=tuple(xk2.shape))[unk] - c
        m, v = float(got.mean()), float(got.var())
        ok = [_predict(sig2, eps2, T2, k, 0.0, 1.0, "ok", d) for d in (False, True)]
        if not any(_stats_match(m, v, pm, pv, 0.02, 0.04) for pm, pv in ok):
            hint = None
            for name in ("2019", "sigma1", "norm_max", "ascending"):
                if any(_stats_match(m, v, *_predict(sig2, eps2, T2, k, 0.0, 1.0, name, d), 0.02, 0.04)
                       for d in (False, True)):
                    hint = _VARIANT_HINTS[name]
                    break
            if hint is None:  # a more specific diagnosis from the structure of the loop, if any
                _langevin_structure(struct, sig2, eps2, Ts, None, "inpaint(...) on the unknown pixels", unknown=unk_s)
            fail_known_mistake(
                f"The unknown pixels should follow annealed Langevin dynamics (x + alpha s + sqrt(2 alpha) z, "
                f"alpha = eps sigma**2 / sigma_min**2): with net(x) = -(x - c) over sigmas {sig2} they end "
                f"with variance {ok[0][1]:.4f} around c (or {ok[1][1]:.4f} after a final denoising step); "
                f"yours have mean offset {m:.4f} and variance {v:.4f}.", hint)
    else:  # their own score or langevin_step_size is wrong (judged in its cell): judge the composition
        _langevin_structure(struct, sig2, eps2, Ts, None, "inpaint(...) on the unknown pixels", unknown=unk_s)

    a, b, d = (as_tensor_array(r.value, "inpaint(...)", shape=tuple(xk3.shape)) for r in runs3)
    expect(np.array_equal(a, b) and not np.array_equal(a, d),
           "inpaint should draw all its noise from `generator`: two runs with generators seeded alike must "
           "give the same result, and differently seeded ones different results.",
           hint="pass generator=generator to every torch.randn.")
    expect_stream_continues(*(as_tensor_array(r.value, "inpaint(...)") for r in stream), "inpaint")


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

"""Hidden checks of notebook 04 (class-conditional DDPM).

Each check receives the student's notebook globals and raises ``CheckFailed`` with what was
expected, what came back and the likely cause. Truth comes from mathematics, not from replaying
random draws:

* ``AdaptiveGroupNorm``: black-box tests of the form ``GroupNorm(h) * (1 + scale) + shift`` with
  ``(scale, shift)`` affine in ``cond``, one per example and channel. The check sets the layer's
  parameters itself (all zero: the output must be a plain GroupNorm; seeded random values: the output
  must be a per-channel affine function of the normalised input whose coefficients are affine in
  ``cond``), so one linear layer split in two and two linear layers are both accepted.
* ``conditional_ddpm_loss``: a label-dependent stub model that records its inputs.
* ``p_sample_loop_conditional``: per-class delta-data oracles (the exact sampler returns each class's
  image exactly) and per-class Gaussian-data oracles (the output variance is known in closed form).

Every check is trusted (``grading.verdict``): before its ``yield`` it only asks for calls, whose inputs
are drawn from the grading run's secret seed (``p.gen``), with the stubs of
``gradeprobe.stubs_conditional`` built in the kernel; after the ``yield`` it judges the plain data that
came back (values, the calls the recording stubs saw, the parameters' gradients) in the grader's process.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gradeprobe.stubs_conditional import LabelModel
from grading.hidden import CheckFailed, as_array, describe_diff, expect, max_abs_diff
from grading.records import TensorRecord
from grading.verdict import Outcome, Probe, expect_unchanged, trusted

from .discipline import (SCHEDULE_HINTS, cosine_beta_schedule, expect_dtype_kept, expect_no_global_rng,
                         expect_no_graph, expect_per_step_variance, expect_reproducible,
                         expect_stream_continues, schedule_globals)

# ----------------------------------------------------------------------------------------------
# Small shared tools


def _group_norm(h: torch.Tensor, groups: int, eps: float = 1e-5) -> torch.Tensor:
    """GroupNorm without affine parameters, in float64. h: (B, C, H, W)."""
    B, C = h.shape[:2]
    g = h.to(torch.float64).reshape(B, groups, -1)  # (B, G, C/G * H * W)
    mean = g.mean(dim=2, keepdim=True)
    var = g.var(dim=2, unbiased=False, keepdim=True)
    return ((g - mean) / torch.sqrt(var + eps)).reshape(h.shape)


def _linear_schedule(T: int, start: float, end: float) -> torch.Tensor:
    return torch.linspace(start, end, T, dtype=torch.float64)  # (T,)


def _fit_per_channel(out: np.ndarray, n: np.ndarray):
    """Least squares ``out[b, c] = slope[b, c] * n[b, c] + icpt[b, c]`` over the pixels."""
    B, C = out.shape[:2]
    o = out.reshape(B, C, -1)
    x = n.reshape(B, C, -1)
    xm, om = x.mean(axis=2, keepdims=True), o.mean(axis=2, keepdims=True)
    var = ((x - xm) ** 2).sum(axis=2)
    slope = ((x - xm) * (o - om)).sum(axis=2) / np.maximum(var, 1e-300)
    icpt = om[..., 0] - slope * xm[..., 0]
    resid = np.abs(o - (slope[..., None] * x + icpt[..., None])).max()
    return slope, icpt, float(resid)


# ----------------------------------------------------------------------------------------------
# AdaptiveGroupNorm

_C, _D, _B, _HW = 6, 5, 6, 4


def _judge_made(info: Outcome, made: Outcome) -> None:
    """The layer was built, is an nn.Module and has registered parameters (as ``_make_norm`` did)."""
    made.value  # noqa: B018 - the constructor's own error first
    d = info.value
    expect(isinstance(d, dict) and d.get("module") is True, "AdaptiveGroupNorm(...) should create an nn.Module, got "
           f"{made.value.type if hasattr(made.value, 'type') else type(made.value).__name__}.",
           hint="define `class AdaptiveGroupNorm(nn.Module)` and call `super().__init__()` first in `__init__`.")
    expect(int(d.get("params", 0)) > 0, "AdaptiveGroupNorm has no registered parameters, so it cannot learn how "
           "the condition scales and shifts the features.",
           hint="create the linear map in __init__ (e.g. `self.proj = nn.Linear(cond_dim, 2 * num_channels)`), "
           "not inside forward, so that it is a registered sub-module.")


def _forward_value(out: Outcome, h: torch.Tensor) -> np.ndarray:
    return as_array(out.value, out.what, shape=tuple(h.shape), dtype="float")


def _inputs(g: torch.Generator):
    h = 1.5 * torch.randn(_B, _C, _HW, _HW, generator=g, dtype=torch.float64) + 0.7  # (B, C, H, W)
    # per-channel offsets so that the group statistics differ from the channel statistics
    h = h + torch.arange(_C, dtype=torch.float64).reshape(1, _C, 1, 1) * 0.5
    c1 = torch.randn(_D, generator=g, dtype=torch.float64)
    c2 = torch.randn(_D, generator=g, dtype=torch.float64)
    c3 = torch.randn(_D, generator=g, dtype=torch.float64)
    # rows: c1, c2, c1 + c2, 0, c3, -c1 : an affine map f has f(c1) + f(c2) = f(c1 + c2) + f(0)
    cond = torch.stack([c1, c2, c1 + c2, torch.zeros(_D, dtype=torch.float64), c3, -c1])  # (B, D)
    return h, cond


@trusted
def check_adaptive_group_norm(p: Probe):
    h, cond = _inputs(p.gen(1))
    seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=p.gen(k))) for k in (3, 4)]
    tools = p.stub("conditional.ModuleTools")
    label = "AdaptiveGroupNorm(6, 5)(h, cond)"

    def make(**kwargs):
        # (a stub is built in the kernel where a step first names it as a value: bound here, under a
        # name no notebook uses, for the method steps on it that follow)
        made = p.call("AdaptiveGroupNorm", _C, _D, what="AdaptiveGroupNorm(6, 5)", keep=True,
                      bind={"_gradeprobe_module_tools": tools}, **kwargs)
        info = p.method(tools, "describe", made, what="a look at AdaptiveGroupNorm(6, 5)")
        p.method(made, "double", what="AdaptiveGroupNorm(6, 5).double()")
        return made, info

    norm, info = make()
    p.method(tools, "fill", norm, 0.0, what="setting the parameters of AdaptiveGroupNorm to zero")
    out0 = p.method(norm, "__call__", h, cond, what=label)
    norm3, info3 = make(num_groups=3)
    p.method(tools, "fill", norm3, 0.0, what="setting the parameters of AdaptiveGroupNorm to zero")
    out3 = p.method(norm3, "__call__", h, cond, what="AdaptiveGroupNorm(6, 5, num_groups=3)(h, cond)")
    p.method(tools, "fill", norm, seed=seeds[0], what="setting random parameters of AdaptiveGroupNorm")
    out_r = p.method(norm, "__call__", h, cond, what=label)
    singles = [p.method(norm, "__call__", h[i:i + 1], cond[i:i + 1], what="AdaptiveGroupNorm on one example")
               for i in range(_B)]
    p.method(tools, "fill", norm, seed=seeds[1], what="setting random parameters of AdaptiveGroupNorm")
    out_b = p.method(norm, "__call__", h, cond, what=label)
    # float32 in, float32 out (a layer left in float32, as in the U-Net)
    norm32 = p.call("AdaptiveGroupNorm", _C, _D, what="AdaptiveGroupNorm(6, 5)", keep=True)
    p.method(tools, "fill", norm32, seed=seeds[0], what="setting random parameters of AdaptiveGroupNorm")
    out32 = p.method(norm32, "__call__", h.float(), cond.float(), what="AdaptiveGroupNorm(6, 5) on float32 inputs")
    yield

    # 1. GroupNorm's own affine parameters must be off
    _judge_made(info, norm)
    affine = info.value.get("affine") or []
    expect(not affine, f"The GroupNorm inside AdaptiveGroupNorm ({affine[0] if affine else ''}) has its own "
           "learnable weight and bias; the scale and shift must come only from the condition.",
           hint="create it as `nn.GroupNorm(num_groups, num_channels, affine=False)`.")

    # the input tensors are left alone
    for o in (out0, out3, out_r, out_b):
        if not o.raised:
            expect_unchanged(o, {"h": h, "cond": cond}, "AdaptiveGroupNorm.forward")

    # 2. all parameters zero -> scale = shift = 0 -> a plain GroupNorm (default num_groups = 1)
    out = _forward_value(out0, h)
    want = _group_norm(h, 1).numpy()
    if max_abs_diff(out, want) > 1e-4:
        hint = None
        if np.abs(out).max() < 1e-6:
            hint = ("the output is zero when scale = shift = 0: did you write `norm(h) * scale + shift` "
                    "without the `1 +`? (or multiply by a per-channel weight of your own)")
        elif max_abs_diff(out, h.numpy()) < 1e-4:
            hint = "the output equals h: the GroupNorm (normalisation) step is missing."
        elif max_abs_diff(out, _group_norm(h, _C).numpy()) < 1e-4:
            hint = "this is a GroupNorm with one group per channel; the default is num_groups=1."
        elif max_abs_diff(out, _group_norm(h, 1, eps=0.0).numpy()) > 1e-3 and \
                max_abs_diff(out, ((h - h.mean()) / h.std()).numpy()) < 1e-4:
            hint = "the statistics are taken over the whole batch; GroupNorm normalises each example separately."
        else:
            hint = ("with every parameter set to zero (so scale = shift = 0) the layer must reduce to "
                    "nn.GroupNorm(num_groups, num_channels, affine=False); check that the linear map is a "
                    "registered sub-module and that nothing else changes h.")
        raise CheckFailed("With all parameters of AdaptiveGroupNorm(6, 5) set to zero, the output should be "
                          f"GroupNorm(h) with 1 group and no affine parameters: {describe_diff(out, want)}."
                          f"\nLikely cause: {hint}")

    # 3. num_groups is honoured
    _judge_made(info3, norm3)
    got3 = _forward_value(out3, h)
    want3 = _group_norm(h, 3).numpy()
    expect(max_abs_diff(got3, want3) < 1e-4,
           "AdaptiveGroupNorm(6, 5, num_groups=3) with zero parameters should equal a GroupNorm with 3 "
           f"groups: {describe_diff(got3, want3)}.",
           hint="pass num_groups on to nn.GroupNorm(num_groups, num_channels, affine=False)."
           if max_abs_diff(got3, want) < 1e-4 else None)

    # 4. seeded random parameters: out = n * (1 + scale(cond)) + shift(cond), affine in cond
    out = _forward_value(out_r, h)
    n = _group_norm(h, 1).numpy()
    slope, icpt, resid = _fit_per_channel(out, n)
    expect(resid < 1e-4 * max(1.0, np.abs(out).max()),
           "With random parameters, each channel of the output should be GroupNorm(h) times a scale plus a "
           f"shift (one pair per example and channel); the best such fit is off by {resid:.3g}.",
           hint="apply scale and shift per channel: reshape the (B, C) scale and shift to (B, C, 1, 1) and "
                "compute `norm(h) * (1 + scale) + shift` (no activation after it).")
    scale, shift = slope - 1.0, icpt  # (B, C) each
    # each example uses its own condition: batch rows must equal single-example calls
    one = np.concatenate([as_array(s_.value, s_.what, shape=(1, _C, _HW, _HW), dtype="float") for s_ in singles])
    if max_abs_diff(out, one) > 1e-6:
        same = np.abs(scale - scale[:1]).max() < 1e-6 and np.abs(shift - shift[:1]).max() < 1e-6
        raise CheckFailed(
            "The output for an example in a batch differs from its output alone "
            f"({describe_diff(out, one)}): one example's result depends on the others' conditions."
            + ("\nLikely cause: every example got the same scale and shift: is one condition (e.g. cond[0] "
               "or cond.mean(0)) shared by the whole batch? Each row of cond belongs to one example."
               if same else "\nLikely cause: the scale and shift are not computed row by row from cond."))
    for name, f in (("scale", scale), ("shift", shift)):
        expect(np.abs(f[0] + f[1] - f[2] - f[3]).max() < 1e-6,
               f"The {name} should be an affine function of cond (a linear layer): {name}(c1) + {name}(c2) "
               f"should equal {name}(c1 + c2) + {name}(0), off by {np.abs(f[0] + f[1] - f[2] - f[3]).max():.3g}.",
               hint="compute scale and shift with nn.Linear(cond_dim, 2 * num_channels) (or two "
                    "nn.Linear(cond_dim, num_channels)), with no activation in between.")
    expect(np.abs(scale[0] - scale[1]).max() > 1e-6 or np.abs(shift[0] - shift[1]).max() > 1e-6,
           "Two different conditions gave the same scale and shift: the condition has no effect.",
           hint="compute scale and shift from cond (the second argument of forward).")
    # every parameter must matter through the linear map of cond (and not elsewhere)
    got_b = _forward_value(out_b, h)
    _, _, resid_b = _fit_per_channel(got_b, n)
    expect(resid_b < 1e-4 * max(1.0, np.abs(got_b).max()),
           "With other random parameters the output is no longer GroupNorm(h) * (1 + scale) + shift "
           f"(off by {resid_b:.3g}).")
    for i, s_ in enumerate(singles):
        expect_unchanged(s_, {"h": h[i:i + 1], "cond": cond[i:i + 1]}, "AdaptiveGroupNorm.forward")
    # float32 stays float32
    got32 = out32.value
    expect_dtype_kept(got32, "torch.float32", "AdaptiveGroupNorm(6, 5)(h, cond) for float32 h and cond")
    expect(max_abs_diff(as_array(got32, out32.what, shape=tuple(h.shape)), out) < 1e-3,
           "AdaptiveGroupNorm gives other values in float32 than in float64 with the same parameters "
           f"({describe_diff(as_array(got32, out32.what, shape=tuple(h.shape)), out)}).")
    expect_unchanged(out32, {"h": h.float(), "cond": cond.float()}, "AdaptiveGroupNorm.forward")


# ----------------------------------------------------------------------------------------------
# conditional_ddpm_loss


def _loss_want(x_0, y, t, noise, alpha_bar) -> float:
    """mean((noise - LabelModel(x_t, t, y))**2) in float64."""
    ab = alpha_bar.double()[t]
    sa, s1 = ab.sqrt().reshape(-1, 1, 1, 1), (1 - ab).sqrt().reshape(-1, 1, 1, 1)
    x_t = sa * x_0.double() + s1 * noise.double()
    return float(((noise.double() - LabelModel.expected(LabelModel.A, x_t, t, y)) ** 2).mean())


@trusted
def check_conditional_ddpm_loss(p: Probe):
    gen = p.gen(11)
    T, B = 1000, 6
    alpha_bar = torch.cumprod(1 - _linear_schedule(T, 1e-4, 0.02), dim=0)  # (T,)
    x_0 = torch.rand(B, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1  # (B, 1, 4, 4)
    noise = torch.randn(B, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randperm(10, generator=gen)[:B]  # (B,) distinct labels, none of them all zero
    inner = torch.sort(torch.randperm(T - 2, generator=gen)[:B - 2] + 1).values
    t = torch.cat([torch.tensor([0]), inner, torch.tensor([T - 1])])  # (B,) both ends included
    wrong = schedule_globals(37)  # the notebook's globals, bound to a 37-step schedule meanwhile
    model = p.stub("conditional.LabelModel")
    out = p.call("conditional_ddpm_loss", model, x_0, y, t, noise, alpha_bar, keep=True, bind=wrong,
                 error_hints=SCHEDULE_HINTS, what="conditional_ddpm_loss(model, x_0, y, t, noise, alpha_bar)")
    back = p.method(out, "backward", what="loss.backward() on the loss of conditional_ddpm_loss")
    state = p.inspect(model, "the stub model after loss.backward()")
    # other schedules (T = 37 cosine, T = 200 linear) and float32 inputs, the globals bound to the notebook's
    others = []
    for k, (TT, ab_k) in enumerate(((37, torch.cumprod(1 - cosine_beta_schedule(37), 0)),
                                     (200, torch.cumprod(1 - _linear_schedule(200, 1e-4, 0.02), 0)))):
        g2 = p.gen(12 + k)
        t_k = torch.cat([torch.tensor([0, TT - 1]), torch.randint(0, TT, (B - 2,), generator=g2)])
        x_k = (torch.rand(B, 1, 4, 4, generator=g2) * 2 - 1).float()
        n_k = torch.randn(B, 1, 4, 4, generator=g2).float()
        ab32 = ab_k.float()
        m_k = p.stub("conditional.LabelModel")
        others.append((TT, x_k, n_k, t_k, ab32, m_k, p.call(
            "conditional_ddpm_loss", m_k, x_k, y, t_k, n_k, ab32, bind=schedule_globals(),
            error_hints=SCHEDULE_HINTS, what=f"conditional_ddpm_loss(...) with a {TT}-step schedule, float32")))
    yield

    loss = out.value
    value = as_array(loss, "the loss", shape=(), dtype="float")
    sa = alpha_bar[t].sqrt().reshape(-1, 1, 1, 1)
    s1 = (1 - alpha_bar[t]).sqrt().reshape(-1, 1, 1, 1)
    x_t = sa * x_0 + s1 * noise  # (B, 1, 4, 4)
    want = _loss_want(x_0, y, t, noise, alpha_bar)

    calls = out.model_calls(model)
    expect(len(calls) >= 1, "conditional_ddpm_loss never called the model.")
    got_y = calls[-1]["y"]
    expect(got_y is not None,
           "The model was called without the labels, as model(x_t, t): the loss ignores the class.",
           hint="call model(x_t, t, y): the conditional model needs the labels.")
    expect(isinstance(got_y, TensorRecord) and got_y.shape == tuple(y.shape) and got_y.dtype == "torch.int64",
           f"The model got labels of shape {tuple(getattr(got_y, 'shape', ()))} and dtype "
           f"{getattr(got_y, 'dtype', type(got_y).__name__)}; expected the long tensor y of shape {tuple(y.shape)}.",
           hint="pass y unchanged to the model (labels stay torch.long).")
    expect(np.array_equal(got_y.array, y.numpy()),
           f"The model got labels {got_y.array.tolist()} instead of y = {y.tolist()}.",
           hint="pass the labels y you were given to the model; do not replace or drop them here "
                "(classifier-free guidance's label dropout comes in notebook 05).")
    got_t = calls[-1]["t"]
    expect(isinstance(got_t, TensorRecord) and got_t.shape == tuple(t.shape)
           and np.array_equal(got_t.array.astype(np.int64), t.numpy()),
           f"The model got times {getattr(got_t, 'array', np.array(got_t)).tolist()} instead of t = {t.tolist()}.",
           hint="pass t unchanged (the times are given: draw none).")
    got_x = as_array(calls[-1]["x"], "x_t given to the model", shape=tuple(x_0.shape))
    if max_abs_diff(got_x, x_t.numpy()) >= 1e-5:
        wrong_ab = wrong["alpha_bar"].double()
        hint = "index alpha_bar with t (one value per example) and take square roots."
        if bool((t < len(wrong_ab)).all()):
            ab_w = wrong_ab[t].reshape(-1, 1, 1, 1)
            if max_abs_diff(got_x, (ab_w.sqrt() * x_0 + (1 - ab_w).sqrt() * noise).numpy()) < 1e-4:
                hint = ("x_t was made with the notebook's global alpha_bar, not with the alpha_bar argument: use "
                        "the schedule passed in.")
        expect_no_global_rng(out, "conditional_ddpm_loss", takes_generator=False)
        raise CheckFailed(f"The model should get x_t = sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) noise (eq. 4): "
                          f"{describe_diff(got_x, x_t.numpy())}.\nLikely cause: {hint}")
    if abs(float(value) - want) > 1e-6 * max(1.0, abs(want)):
        hint = None
        if abs(float(value) - want * x_0.numel()) < 1e-6 * want * x_0.numel():
            hint = "this is the sum of the squared errors; take the mean over all elements."
        elif abs(float(value) - want * x_0[0].numel()) < 1e-6 * want * x_0[0].numel():
            hint = "this is the per-example sum averaged over the batch; take the mean over all elements."
        elif abs(float(value) - math.sqrt(want)) < 1e-6:
            hint = "this is the root of the mean squared error; use the mean squared error itself."
        raise CheckFailed(f"The loss should be mean((noise - model(x_t, t, y))**2) = {want:.6g}, got "
                          f"{float(value):.6g}." + (f"\nLikely cause: {hint}" if hint else ""))
    expect(isinstance(loss, TensorRecord) and loss.requires_grad,
           "The loss carries no gradient, so training could not update the model.",
           hint="compute it with torch operations on the model's output (no .item(), .detach() or numpy).")
    if back.raised:
        raise CheckFailed(back.error)
    grads = (state.value or {}).get("grads") or {}
    grad_a = grads.get("a")
    expect(isinstance(grad_a, TensorRecord) and abs(float(np.asarray(grad_a.array).reshape(-1)[0])) > 0,
           "Back-propagating the loss gave no gradient for the model's parameters.")
    expect_unchanged(out, {"model": None, "x_0": x_0, "y": y, "t": t, "noise": noise, "alpha_bar": alpha_bar},
                     "conditional_ddpm_loss")
    expect_no_global_rng(out, "conditional_ddpm_loss", takes_generator=False)
    # other schedules, float32
    for TT, x_k, n_k, t_k, ab32, m_k, o in others:
        got = o.value
        v = as_array(got, f"the loss with a {TT}-step schedule", shape=(), dtype="float")
        want_k = _loss_want(x_k, y, t_k, n_k, ab32)
        expect(abs(float(v) - want_k) <= 1e-4 * max(1.0, abs(want_k)),
               f"With a {TT}-step schedule (float32 inputs) the loss should be {want_k:.6g}, got {float(v):.6g}.",
               hint="use only the alpha_bar passed in (its length is T), never the notebook's globals T, beta or "
                    "alpha_bar, nor a hard-coded schedule.")
        expect_dtype_kept(got, "torch.float32", f"The loss for float32 inputs ({TT}-step schedule)")
        expect_unchanged(o, {"model": None, "x_0": x_k, "y": y, "t": t_k, "noise": n_k, "alpha_bar": ab32},
                         "conditional_ddpm_loss")


# ----------------------------------------------------------------------------------------------
# p_sample_loop_conditional


def _gaussian_output_variance(beta: torch.Tensor, tilde: bool) -> float:
    """Per-pixel variance of Algorithm 2's output for x_0 ~ N(0, 1) data and the exact model."""
    beta = beta.to(torch.float64)
    alpha = 1 - beta
    ab = torch.cumprod(alpha, dim=0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    v = 1.0
    for t in reversed(range(len(beta))):
        k = (1 - beta[t] / torch.sqrt(1 - ab[t]) * torch.sqrt(1 - ab[t])) / torch.sqrt(alpha[t])
        var_z = 0.0 if t == 0 else float(beta[t] * ((1 - ab_prev[t]) / (1 - ab[t]) if tilde else 1.0))
        v = float(k) ** 2 * v + var_z
    return v


def _centers(g: torch.Generator, K: int = 10, size: int = 3) -> torch.Tensor:
    return torch.rand(K, 1, size, size, generator=g, dtype=torch.float64) * 1.6 - 0.8  # (K, 1, s, s)


def _delta_hint(out, want, centers, y, beta, calls):
    B = len(y)
    first = centers[y[:1].repeat(B)].numpy()
    err = np.abs(out - want).max()
    y0 = calls[0]["y"] if calls else None
    if np.abs(out - first).max() < 2e-3:
        return ("every sample became the first label's image: is the whole batch sampled with y[0] "
                "(or one label)? Pass the (B,) label tensor y to the model at every step.")
    if 2e-3 < err < 0.3 and abs(np.std(out - want) - math.sqrt(float(beta[0]))) < 0.5 * math.sqrt(float(beta[0])):
        return (f"the output is the right image plus noise of std about sqrt(beta[0]) = "
                f"{math.sqrt(float(beta[0])):.3g}: noise is added at the last step (t = 0); Algorithm 2 uses z = 0 there.")
    if isinstance(y0, TensorRecord) and not (y0.shape == tuple(y.shape)
                                             and np.array_equal(y0.array.astype(np.int64), y.numpy())):
        return f"the model got labels {y0.array.tolist()} instead of y = {y.tolist()}."
    return None


def _model_times(calls, B, label):
    times = []
    for i, c in enumerate(calls):
        tt = np.asarray(c["t"].array).reshape(-1)
        expect(tt.size in (1, B) and bool((tt == tt[0]).all()),
               f"Call {i} gave the model times {tt.tolist()}; expected the same step for the whole batch.")
        times.append(int(tt[0]))
    return times


_T_HINT = ("T is hard-coded or taken from the notebook's globals: use T = len(beta) and the beta passed in "
           "(alpha and alpha_bar computed from it), never the notebook's T, beta or alpha_bar.")


@trusted
def check_p_sample_loop_conditional(p: Probe):
    label = "p_sample_loop_conditional(model, x_T, y, beta)"
    fn = "p_sample_loop_conditional"
    T = 100
    beta = _linear_schedule(T, 1e-3, 0.1)  # (T,): sqrt(beta[0]) ~ 0.03 makes a last-step noise visible
    alpha_bar = torch.cumprod(1 - beta, dim=0)
    centers = _centers(p.gen(5))
    g = p.gen(21)
    y = torch.randperm(10, generator=g)[:8]  # (B,) distinct labels
    B = len(y)
    x_T = torch.randn(B, 1, 3, 3, generator=g, dtype=torch.float64)  # (B, 1, 3, 3)
    wrong = schedule_globals()  # the notebook's 1000-step globals T, beta, alpha_bar bound during every call
    kw = {"bind": wrong, "error_hints": SCHEDULE_HINTS, "what": label}
    # (a) delta data per class: the exact sampler lands on each class's image
    model = p.stub("conditional.ClassDeltaModel", centers=centers, alpha_bar=alpha_bar)
    out_a = p.call(fn, model, x_T, y, beta, generator=p.generator(0), **kw)
    # (c) Gaussian data per class: the right mean and the right variance
    N = 4000
    yy = torch.arange(N) % 10
    x_N = torch.randn(N, 1, 3, 3, generator=p.gen(22), dtype=torch.float64)
    gmodel = p.stub("conditional.ClassGaussianModel", centers=centers, alpha_bar=alpha_bar)
    out_c = p.call(fn, gmodel, x_N, yy, beta, generator=p.generator(1), **kw)
    # (d) the generator drives the randomness (the global random state seeded differently each time)
    x_small = x_N[:16]
    runs = [p.call(fn, gmodel, x_small, yy[:16], beta, generator=p.generator(s), global_seed=gs, **kw)
            for s, gs in ((7, 1), (7, 2), (8, 3))]
    one = p.generator(9)  # one generator for two calls: its stream continues
    stream = [p.call(fn, gmodel, x_small, yy[:16], beta, generator=one, **kw) for _ in range(2)]
    # (e) float32, a 37-step cosine schedule, a network with a trainable parameter
    beta37 = cosine_beta_schedule(37)
    ab37 = torch.cumprod(1 - beta37, 0)
    m37 = p.stub("conditional.ClassDeltaModel", centers=centers, alpha_bar=ab37, grad=True)
    x37 = x_T.float()
    out_e = p.call(fn, m37, x37, y, beta37.float(), generator=p.generator(2), bind=wrong,
                   error_hints=SCHEDULE_HINTS, what=f"{label} with a 37-step cosine schedule, float32")
    # (f) a 200-step linear schedule
    beta200 = _linear_schedule(200, 1e-4, 0.05)
    m200 = p.stub("conditional.ClassDeltaModel", centers=centers, alpha_bar=torch.cumprod(1 - beta200, 0))
    out_f = p.call(fn, m200, x_T[:4], y[:4], beta200, generator=p.generator(3), bind=wrong,
                   error_hints=SCHEDULE_HINTS, what=f"{label} with a 200-step schedule")
    # (g) the variance of every step: a recording Gaussian-data model, 37 linear steps
    beta_g = _linear_schedule(37, 1e-3, 0.2)
    ab_g = torch.cumprod(1 - beta_g, 0)
    yg = torch.arange(64) % 10
    x_g = torch.randn(64, 1, 4, 4, generator=p.gen(23), dtype=torch.float64)
    c4 = _centers(p.gen(6), size=4)
    rec = p.stub("conditional.ClassGaussianRecorder", centers=c4, alpha_bar=ab_g)
    out_g = p.call(fn, rec, x_g, yg, beta_g, generator=p.generator(4), bind=wrong, error_hints=SCHEDULE_HINTS,
                   what=f"{label} with a 37-step schedule")
    yield

    out = as_array(out_a.value, f"the output of {label}", shape=tuple(x_T.shape), dtype="float")
    expect_unchanged(out_a, {"model": None, "x_T": x_T, "y": y, "beta": beta}, fn)
    calls = out_a.model_calls(model)
    want = centers[y].numpy()
    err = np.abs(out - want).max()
    if err > 2e-3:
        hint = _delta_hint(out, want, centers, y, beta, calls)
        if hint is None and len(calls) != T:
            hint = _T_HINT
        expect_no_global_rng(out_a, fn)
        raise CheckFailed(
            f"With a model that is exact for data where every image of class k equals one fixed image c_k, "
            f"{label} must return c_y for each sample (Algorithm 2 with z = 0 at the last step): "
            f"{describe_diff(out, want)}." + (f"\nLikely cause: {hint}" if hint else
                                               "\nLikely cause: check the coefficients of Algorithm 2, line 4, and that they "
                                               "come from the beta passed in (not from the notebook's alpha_bar or T)."))

    # (b) one model call per step, times T-1 down to 0, the labels y every time
    expect(len(calls) == T, f"{label} called the model {len(calls)} times for T = {T} steps; expected one "
           "call per step.", hint=_T_HINT if len(calls) in (37, 1000) else None)
    times = _model_times(calls, B, label)
    for c, tt in zip(calls, times):
        cy = c["y"]
        expect(isinstance(cy, TensorRecord) and np.array_equal(np.asarray(cy.array).astype(np.int64).reshape(-1),
                                                               y.numpy()),
               f"At step {tt} the model got labels "
               f"{None if not isinstance(cy, TensorRecord) else cy.array.tolist()} instead of y = {y.tolist()}.",
               hint="pass the labels y (one per example) to the model at every step.")
        expect(not isinstance(cy, TensorRecord) or cy.dtype == "torch.int64",
               f"At step {tt} the model got labels of dtype {cy.dtype}; labels stay torch.long.",
               hint="pass y itself (a long tensor) to the model.")
    expect(times == list(range(T - 1, -1, -1)),
           f"The model should be called at t = {T - 1}, {T - 2}, ..., 0 in that order; got "
           f"{times[:4]} ... {times[-3:]}.", hint="loop over `reversed(range(T))` (0-based steps).")

    # (c) Gaussian data per class: the right mean and the right variance
    out = as_array(out_c.value, f"the output of {label}", shape=tuple(x_N.shape), dtype="float")
    resid = out - centers[yy].numpy()
    var = float(resid.var())
    v_beta = _gaussian_output_variance(beta, False)
    hint = None
    if var < 0.5 * v_beta:
        hint = "no (or too little) noise is added between steps: add sigma_t z with sigma_t = sqrt(beta[t]) for t > 0."
    elif var > 1.5:
        hint = "too much noise is added: sigma_t is sqrt(beta[t]), not 1 or beta[t] ** 0.25."
    if var < 0.5 * v_beta or var > 1.5:
        raise CheckFailed(f"For Gaussian data N(c_y, I) the samples of {label} should have variance about "
                          f"{v_beta:.3f} (sigma_t^2 = beta_t) around c_y; got {var:.3f}.\nLikely cause: {hint}")
    expect(abs(float(resid.mean())) < 0.05,
           f"For Gaussian data N(c_y, I) the samples should be centred on c_y; the mean offset is "
           f"{float(resid.mean()):.3f}.")

    # family 1: the global random state is left alone; one generator continues its stream
    for o in (out_a, out_c, *stream):
        expect_no_global_rng(o, fn)
    a, b, c = (as_array(r.value, "output") for r in runs)
    expect_reproducible(a, b, c, label)
    expect_stream_continues(*(as_array(r.value, "output") for r in stream), label)

    # (e), (f): other schedules; float32 in, float32 out; no autograd graph
    for o, x_in, yl, m, TT in ((out_e, x37, y, m37, 37), (out_f, x_T[:4], y[:4], m200, 200)):
        got = as_array(o.value, f"the output of {o.what}", shape=tuple(x_in.shape), dtype="float")
        n_calls = len(o.model_calls(m))
        want_k = centers[yl].numpy()
        if np.abs(got - want_k).max() > (2e-3 if TT == 37 else 1e-3):
            hint = _T_HINT if n_calls != TT else ("check Algorithm 2 for a schedule other than the linear one "
                                                  "(alpha_bar = cumprod(1 - beta) of the beta passed in).")
            raise CheckFailed(f"{o.what} must also return c_y for each sample: {describe_diff(got, want_k)}; it "
                              f"called the model {n_calls} times (expected {TT}).\nLikely cause: {hint}")
        expect(n_calls == TT, f"{o.what} called the model {n_calls} times; expected {TT}.", hint=_T_HINT)
    expect_dtype_kept(out_e.value, "torch.float32", f"The output of {label} for a float32 x_T")
    expect_no_graph(out_e.value, f"The output of {label} (a network with trainable parameters)")
    expect_unchanged(out_e, {"model": None, "x_T": x37, "y": y, "beta": beta37.float()}, fn)
    expect_unchanged(out_f, {"model": None, "x_T": x_T[:4], "y": y[:4], "beta": beta200}, fn)

    # (g) family 6: the noise of every step has variance beta_t
    gcalls = out_g.model_calls(rec)
    got_g = as_array(out_g.value, f"the output of {out_g.what}", shape=tuple(x_g.shape), dtype="float")
    Tg = len(beta_g)
    expect(len(gcalls) == Tg and _model_times(gcalls, 64, label) == list(range(Tg - 1, -1, -1)),
           f"{out_g.what} should call the model once per step, t = {Tg - 1} down to 0; it made {len(gcalls)} calls.",
           hint=_T_HINT)
    xs = [as_array(c_["x"], "x given to the model", shape=tuple(x_g.shape)) for c_ in gcalls] + [got_g]
    b = beta_g.numpy()
    ab = ab_g.numpy()
    cy = c4[yg].numpy()
    d = []
    for k in range(Tg - 1):
        t_ = Tg - 1 - k
        eps = np.sqrt(1 - ab[t_]) * (xs[k] - np.sqrt(ab[t_]) * cy)
        mean = (xs[k] - b[t_] / np.sqrt(1 - ab[t_]) * eps) / np.sqrt(1 - b[t_])
        d.append(xs[k + 1] - mean)
    expect_per_step_variance(np.stack(d), list(range(Tg - 1, 0, -1)), b, out_g.what)


CHECKS = {
    "AdaptiveGroupNorm": check_adaptive_group_norm,
    "conditional_ddpm_loss": check_conditional_ddpm_loss,
    "p_sample_loop_conditional": check_p_sample_loop_conditional,
}

# notebook 04's two sampling answers have checks of their own module (one concept per module)
from .conditional_sampling import CHECKS as _SAMPLING_CHECKS  # noqa: E402

CHECKS.update(_SAMPLING_CHECKS)

"""Hidden checks of notebook 05 (classifier-free guidance, Ho & Salimans 2022).

Convention: ``eps = (1 + w) eps(x_t, t, y) - w eps(x_t, t, null)``; w = 0 is the conditional model,
w = -1 the unconditional one. Truth comes from mathematics:

* ``drop_labels``: statistics over 10^4 labels (rate, per-label coins, the given null label, the
  edge cases p = 0 and p = 1), never a replay of one generator's draws.
* ``guided_eps``: a stub model returning ``a(y)`` for real labels and ``b`` for the null label pins
  the formula; one batched forward pass and two separate passes are both accepted.
* ``p_sample_loop_cfg``: with exact delta-data predictors (class k -> c_k, null -> u) the guided
  noise is itself the exact predictor for data at ``(1 + w) c_y - w u``, so a correct sampler returns
  that image exactly; Gaussian data give the output variance in closed form. The sampler is graded
  on its own: when it calls the student's ``guided_eps``, those calls are recorded and the loop is
  judged from them (called at t = T-1, ..., 0 with the given y, w and null label, each step's
  Algorithm 2 update applied to what guided_eps returned, fresh noise between steps, none at the last
  step), so a mistake in ``guided_eps`` costs the points of its own cell only. A loop that does not
  call ``guided_eps`` (guidance inlined) is judged by its output, as the exact predictors allow.
  When the student's ``guided_eps`` cannot run (missing, or raising) or changes its arguments in
  place (so that the loop's own x and y change), the loop is judged from its
  calls of a stand-in that returns the plain conditional prediction (it gives no guidance away).

Every check is trusted (``grading.verdict``): before its ``yield`` it only asks for calls, whose inputs
are drawn from the grading run's secret seed (``p.gen``), with the stubs of
``gradeprobe.stubs_classifier_free_guidance`` built in the kernel; no reference code enters the
kernel. After the ``yield`` it judges the plain data that came back, in the grader's process.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gradeprobe.stubs_classifier_free_guidance import TwoHeadModel
from grading.checks.conditional import _gaussian_output_variance, _linear_schedule
from grading.hidden import CheckFailed, as_array, describe_diff, expect, max_abs_diff
from grading.records import ObjectRecord, TensorRecord
from grading.verdict import Outcome, Probe, WrappedCall, expect_unchanged, trusted

from .discipline import (SCHEDULE_HINTS, cosine_beta_schedule, expect_dtype_kept, expect_long,
                         expect_no_global_rng, expect_no_graph, expect_per_step_variance, expect_stream_continues,
                         float64_from, schedule_globals)

#: the notebook's globals, bound to its own values while a check calls the student's functions
_CFG_GLOBALS = {"NULL_LABEL": 10, "N_CLASSES": 10, "P_UNCOND": 0.1, "null_label": 10, "p_uncond": 0.1, "w": 3.0}

# ----------------------------------------------------------------------------------------------
# drop_labels


@trusted
def check_drop_labels(p: Probe):
    N = 10_000
    y = torch.randint(0, 10, (N,), generator=p.gen(31))  # (N,) long

    def drop(rate, null, seed, labels=None, global_seed=None, gen=None):
        labels = y if labels is None else labels
        out = p.call("drop_labels", labels, rate, null, generator=p.generator(seed) if gen is None else gen,
                     global_seed=global_seed, bind=_CFG_GLOBALS,
                     what=f"drop_labels(y, p_uncond={rate}, null_label={null}, generator=...)")
        return out, labels, f"drop_labels(y, {rate}, {null})"

    main = drop(0.1, 10, 0)
    others = [drop(0.1, 10, s) for s in range(1, 9)]  # looked at when the whole batch moves together
    o42 = drop(0.3, 42, 1)
    o0, o1 = drop(0.0, 10, 2), drop(1.0, 10, 3)
    # the generator drives the coins: equally seeded generators, the global RNG seeded differently
    ga, gb, gc = drop(0.5, 10, 5, global_seed=1), drop(0.5, 10, 5, global_seed=2), drop(0.5, 10, 6)
    small = torch.arange(8) % 10
    smalls = [drop(0.5, 10, 100 + s, labels=small) for s in range(40)]
    one = p.generator(7)  # one generator for two calls: its stream continues
    stream = [drop(0.5, 10, 0, gen=one) for _ in range(2)]
    yield

    def value(case):
        out, labels, name = case
        return expect_long(out.value, name, shape=tuple(labels.shape))

    main[0].value  # noqa: B018 - the call's own error first
    expect_unchanged(main[0], {"y": y}, "drop_labels")
    out = value(main)
    expect_no_global_rng(main[0], "drop_labels")
    yn = y.numpy()
    changed = out != yn
    bad = changed & (out != 10)
    if bad.any():
        vals = sorted(set(out[bad].tolist()))[:5]
        hint = ("class 0 is used as the null label: 0 is a real digit; replace dropped labels by "
                "null_label (10 here).") if vals == [0] else "dropped labels must become null_label; others stay as they are."
        raise CheckFailed(f"drop_labels(y, 0.1, null_label=10) changed some labels into {vals} instead of 10."
                          f"\nLikely cause: {hint}")
    frac = float((out == 10).mean())
    if not 0.09 <= frac <= 0.11:
        hint = None
        if 0.88 <= frac <= 0.92:
            hint = "labels are dropped with probability 1 - p_uncond; a label is dropped when the coin falls below p_uncond."
        elif frac in (0.0, 1.0):
            fracs = [float((value(o) == 10).mean()) for o in others]
            if all(f in (0.0, 1.0) for f in fracs):
                hint = ("the whole batch is dropped or kept together: draw one coin per label, e.g. "
                        "torch.rand(y.shape, generator=generator) < p_uncond.")
        raise CheckFailed(f"With p_uncond = 0.1, about 10% of 10,000 labels should be replaced by the null label "
                          f"(0.09 to 0.11); got {100 * frac:.1f}%." + (f"\nLikely cause: {hint}" if hint else ""))
    per_class = [float((out[yn == k] == 10).mean()) for k in range(10)]
    expect(max(per_class) - min(per_class) < 0.08,
           "Every class should be dropped at the same rate p_uncond; the rates per class range from "
           f"{min(per_class):.2f} to {max(per_class):.2f}.", hint="draw one coin per label, independent of the label.")
    # another null label and another rate (the null label is an argument, not a constant)
    out42 = value(o42)
    frac42 = float((out42 == 42).mean())
    expect(set(np.unique(out42[out42 != yn]).tolist()) <= {42} and 0.28 <= frac42 <= 0.32,
           f"drop_labels(y, p_uncond=0.3, null_label=42) should replace about 30% of the labels by 42; "
           f"{100 * frac42:.1f}% became 42 and the changed labels took the values "
           f"{sorted(set(out42[out42 != yn].tolist()))[:5]}.",
           hint="use the arguments p_uncond and null_label, not fixed values or the notebook's globals "
                "(NULL_LABEL, P_UNCOND).")
    # edge cases
    out0 = value(o0)
    expect(np.array_equal(out0, yn), f"With p_uncond = 0 no label may change; {int((out0 != yn).sum())} did.",
           hint="drop when the coin is strictly below p_uncond (torch.rand(...) < p_uncond).")
    out1 = value(o1)
    expect(bool((out1 == 10).all()), f"With p_uncond = 1 every label must become the null label; "
           f"{int((out1 != 10).sum())} did not.")
    # the generator drives the coins, one per label
    a, b, c = value(ga), value(gb), value(gc)
    expect(np.array_equal(a, b) and not np.array_equal(a, c),
           "drop_labels should draw its coins with the `generator` argument: equally seeded generators "
           "should give the same result, differently seeded ones a different one.",
           hint="pass generator=generator to torch.rand / torch.bernoulli.")
    expect_stream_continues(value(stream[0]), value(stream[1]), "drop_labels")
    agree = float(((a == 10) == (c == 10)).mean())
    expect(0.45 <= agree <= 0.55,
           f"With p_uncond = 0.5 two independent draws should agree on about half of the labels; they agree "
           f"on {100 * agree:.0f}%.", hint="draw a fresh coin for every label.")
    # small batches get independent coins too
    mixed = sum(int(0 < (value(o) == 10).sum() < 8) for o in smalls)
    expect(mixed >= 30, f"On batches of 8 labels with p_uncond = 0.5 most batches should mix dropped and kept "
           f"labels; only {mixed} of 40 did.",
           hint="one coin per label, not one coin for the whole batch.")
    for o in [main, *others, o42, o0, o1, ga, gb, gc, *smalls, *stream]:
        expect_unchanged(o[0], {"y": o[1]}, "drop_labels")
        expect_no_global_rng(o[0], "drop_labels")


# ----------------------------------------------------------------------------------------------
# guided_eps


def _check_guided_calls(calls, y, null, B):
    """One batched pass (2B) or two passes (B each): the model must see the real labels (conditional
    prediction) and the null label for every example (unconditional prediction)."""
    ys = [c["y"] for c in calls if isinstance(c.get("y"), TensorRecord)]
    labels = np.concatenate([np.asarray(r.array).reshape(-1).astype(np.int64) for r in ys]) if ys else \
        np.zeros(0, dtype=np.int64)
    expect(bool((labels == null).sum() >= B) and all(int((labels == int(v)).sum()) >= int((y == v).sum())
                                                     for v in y),
           "The model should see the real labels y once (conditional pass) and the null label once per "
           f"example (unconditional pass); it saw labels {labels.tolist()}.")


@trusted
def check_guided_eps(p: Probe):
    gen = p.gen(41)
    B = 5
    x = torch.randn(B, 1, 3, 3, generator=gen, dtype=torch.float64)  # (B, 1, 3, 3)
    inner = torch.sort(torch.randperm(998, generator=gen)[:3] + 1, descending=True).values
    t = torch.cat([torch.tensor([999]), inner, torch.tensor([0])])  # (B,) both ends included
    y = torch.randperm(10, generator=gen)[:B]  # (B,) distinct real labels
    cases = []
    for null in (10, 12):
        for w in (2.5, 0.0, -1.0, 7):
            model = p.stub("classifier_free_guidance.TwoHeadModel", null_label=null)
            out = p.call("guided_eps", model, x, t, y, w, null, bind=_CFG_GLOBALS,
                         what=f"guided_eps(model, x_t, t, y, w={w}, null_label={null})")
            cases.append((null, w, model, out, x))
    # float32 in, float32 out
    x32 = x.float()
    m32 = p.stub("classifier_free_guidance.TwoHeadModel", null_label=11)
    out32 = p.call("guided_eps", m32, x32, t, y, 1.5, 11, bind=_CFG_GLOBALS,
                   what="guided_eps(model, x_t, t, y, w=1.5, null_label=11) on float32 x_t")
    cases.append((11, 1.5, m32, out32, x32))
    yield

    for null, w, model, call_out, x_in in cases:
        call_out.value  # noqa: B018 - the call's own error first
        expect_unchanged(call_out, {"model": None, "x_t": x_in, "t": t, "y": y}, "guided_eps")
        out = as_array(call_out.value, "guided_eps(...)", shape=tuple(x.shape), dtype="float")
        xd, tol = x_in.double(), (1e-6 if x_in.dtype == torch.float64 else 2e-5)
        e_c = TwoHeadModel.heads(xd, t, y, null).numpy()
        e_u = TwoHeadModel.heads(xd, t, torch.full_like(y, null), null).numpy()
        want = (1 + w) * e_c - w * e_u
        if max_abs_diff(out, want) < tol:
            if w not in (0.0, -1.0):  # w = 0 or -1 may take a shortcut with one pass
                _check_guided_calls(call_out.model_calls(model), y, null, B)
            continue
        e_0 = TwoHeadModel.heads(xd, t, torch.zeros_like(y), null).numpy()
        variants = [
            (e_u + w * (e_c - e_u), "this is eps_u + w (eps_c - eps_u), the s = w convention; this course "
             "writes (1 + w) eps_c - w eps_u, i.e. s = 1 + w."),
            ((1 + w) * e_u - w * e_c, "the guidance sign is reversed: the conditional prediction gets the "
             "weight (1 + w) and the unconditional one -w."),
            ((1 - w) * e_c + w * e_u, "the guidance sign is reversed: it should be (1 + w) eps_c - w eps_u."),
            (e_c, "the result equals the conditional prediction: is the unconditional pass given the real "
             "labels y instead of the null label (or is w ignored)?"),
            (e_u, "the result equals the unconditional prediction: is the conditional pass given the null label?"),
            ((1 + w) * e_c - w * e_0, "the unconditional pass used label 0; use null_label (a dedicated "
             "label that no real class has)."),
        ]
        if null == 12:
            e_10 = TwoHeadModel.heads(xd, t, torch.full_like(y, 10), null).numpy()
            variants.append(((1 + w) * e_c - w * e_10, "the null label is hard-coded as 10 (or taken from the "
                             "notebook's NULL_LABEL); use the argument null_label."))
        hint = next((h for v, h in variants if max_abs_diff(out, v) < tol and max_abs_diff(v, want) > tol), None)
        raise CheckFailed(
            f"With a stub model whose conditional prediction is eps_c and whose unconditional prediction "
            f"(null label {null}) is eps_u, guided_eps(w={w}) should return (1 + w) eps_c - w eps_u: "
            f"{describe_diff(out, want)}." + (f"\nLikely cause: {hint}" if hint else ""))
    for *_, o, _x in cases:
        expect_no_global_rng(o, "guided_eps", takes_generator=False)
    expect_dtype_kept(out32.value, "torch.float32", "guided_eps(...) for a float32 x_t")


# ----------------------------------------------------------------------------------------------
# p_sample_loop_cfg

_LABEL = "p_sample_loop_cfg(model, x_T, y, w, beta, null_label)"
_GUIDED_ARGS = ("model", "x_t", "t", "y", "w", "null_label")


def _number(v):
    """A recorded scalar argument (a Python number, a NumPy scalar or a one-element tensor) as a float."""
    if isinstance(v, TensorRecord):
        v = v.array
    if isinstance(v, np.ndarray):
        return float(v.reshape(-1)[0]) if v.size == 1 else None
    if isinstance(v, (bool, ObjectRecord)) or v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _shown(v) -> str:
    return "no number" if v is None else (str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}")


def _parse_guided(calls: list[WrappedCall]) -> list[dict] | None:
    """The arguments and result of each recorded guided_eps call, as arrays; None when a call cannot
    be read as guided_eps(model, x_t, t, y, w, null_label) -> tensor."""
    out = []
    for c in calls:
        given = dict(zip(_GUIDED_ARGS, c.args))
        given.update({k: v for k, v in c.kwargs.items() if k in _GUIDED_ARGS})
        if c.error or not isinstance(c.value, TensorRecord) or not isinstance(given.get("x_t"), TensorRecord) \
                or any(k not in given for k in _GUIDED_ARGS):
            return None
        t = given["t"]
        t_arr = np.asarray(t.array).reshape(-1) if isinstance(t, TensorRecord) else np.asarray([_number(t)])
        y = given["y"]
        out.append({"x": np.asarray(given["x_t"].array, dtype=np.float64),
                    "eps": np.asarray(c.value.array, dtype=np.float64), "t": t_arr,
                    "y": np.asarray(y.array).reshape(-1) if isinstance(y, TensorRecord) else None,
                    "w": _number(given["w"]), "null": _number(given["null_label"])})
    return out


def _judge_composition(calls: list[dict], out: np.ndarray, x_T: torch.Tensor, y: torch.Tensor, w: float,
                       beta: torch.Tensor, null: int) -> None:
    """The loop as composed from the student's own guided_eps: one call per step at t = T-1, ..., 0
    with the given y, w and null label; x_T first, then each step's Algorithm 2 mean of what the
    previous call returned plus sigma_t z (sigma_t^2 = beta_t or beta_tilde_t, z fresh standard
    normal noise); no noise after the call at t = 0."""
    label, T = _LABEL, len(beta)
    expect(len(calls) == T, f"{label} called guided_eps {len(calls)} times for T = {T} steps; expected one "
           "call per step.", hint="call guided_eps(model, x, t_batch, y, w, null_label) once at every step.")
    times = []
    for i, c in enumerate(calls):
        tt = c["t"]
        expect(tt.size in (1, len(y)) and bool(np.all(tt == tt[0])),
               f"Call {i} of guided_eps got times {tt.tolist()}; expected the same step for the whole batch.")
        times.append(int(tt[0]))
    expect(times == list(range(T - 1, -1, -1)),
           f"The model should be queried at t = {T - 1}, ..., 0 in that order; got {times[:4]} ... {times[-3:]}.",
           hint="loop over reversed(range(T)).")
    for c, t in zip(calls, times):
        if c["w"] is None or abs(c["w"] - w) > 1e-12:
            hint = ("the samples then follow the conditional model only: the loop never uses guidance (pass "
                    "the guidance weight on: guided_eps(model, x, t, y, w, null_label) at every step)."
                    if c["w"] == 0 else "pass the guidance weight w on to guided_eps unchanged.")
            raise CheckFailed(f"At step t = {t}, {label} with w = {w} called guided_eps with w = {_shown(c['w'])}."
                              f"\nLikely cause: {hint}")
        expect(c["null"] is not None and c["null"] == null,
               f"At step t = {t}, {label} called guided_eps with null_label = {_shown(c['null'])} instead of {null}.",
               hint="pass the null_label argument on to guided_eps.")
        expect(c["y"] is not None and c["y"].shape == tuple(y.shape) and np.array_equal(c["y"], y.numpy()),
               f"At step t = {t} guided_eps got labels {None if c['y'] is None else c['y'].tolist()} instead of "
               f"y = {y.tolist()}.", hint="pass the labels y (one per example) to guided_eps at every step.")
    x0 = x_T.numpy()
    expect(calls[0]["x"].shape == x0.shape and np.allclose(calls[0]["x"], x0, atol=1e-12, rtol=0),
           f"The first call of guided_eps (t = {T - 1}) should get x_T itself: "
           f"{describe_diff(calls[0]['x'], x0)}.", hint="start with x = x_T.")
    b = beta.numpy().astype(np.float64)
    alpha = 1 - b
    ab = np.cumprod(alpha)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    means = []
    for c, t in zip(calls, times):
        expect(c["eps"].shape == c["x"].shape,
               f"guided_eps returned shape {c['eps'].shape} for x of shape {c['x'].shape} at step t = {t}.")
        means.append((c["x"] - b[t] / np.sqrt(1 - ab[t]) * c["eps"]) / np.sqrt(alpha[t]))
    # x_{t-1} = mean_t + sigma_t z between the calls, z fresh standard normal noise
    d = np.stack([calls[k + 1]["x"] - means[k] for k in range(T - 1)])  # (T - 1, B, C, H, W), t = T-1, ..., 1
    ts = np.array(times[:-1])
    shape = (-1,) + (1,) * (d.ndim - 1)
    stats = []
    for var_t in (b[ts], b[ts] * (1 - ab_prev[ts]) / (1 - ab[ts])):  # sigma^2 = beta_t or beta_tilde_t
        z = d / np.sqrt(var_t).reshape(shape)
        stats.append((abs(float(z.mean())) + abs(float(z.var()) - 1), float(z.mean()), float(z.var()), z))
    _, m, v, z = min(stats, key=lambda s_: s_[0])
    flat_z = z.reshape(len(ts), -1)
    if v > 0.25:  # some noise: it must be fresh at every step
        r = float(np.corrcoef(flat_z[:-1].reshape(-1), flat_z[1:].reshape(-1))[0, 1])
        expect(not abs(r) >= 0.8, f"{label} adds the same noise at every step (correlation {r:.2f} between the "
               f"noise of successive steps).", hint="draw a fresh z at every step: torch.randn(x.shape, "
                                                   "generator=generator, dtype=x.dtype).")
    eps_prev = np.stack([calls[k]["eps"] for k in range(T - 1)]).reshape(len(ts), -1)
    x_prev = np.stack([calls[k]["x"] for k in range(T - 1)]).reshape(len(ts), -1)
    for other, what in ((eps_prev, "the guided noise prediction"), (x_prev, "x")):
        r = float(np.corrcoef(flat_z.reshape(-1), other.reshape(-1))[0, 1])
        expect(not abs(r) >= 0.1,  # (NaN: a constant, nothing to correlate with)
               f"Between the guided_eps calls, {label} adds something that correlates with {what} "
               f"(correlation {r:.2f}), not only fresh noise.",
               hint="the update must be Algorithm 2's (x - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) "
                    "+ sqrt(beta_t) z: check its coefficients, computed from the beta passed in (not from the notebook's alpha_bar or T).")
    if v > 0.25:  # some noise: it must be fresh at every step
        r = float(np.corrcoef(flat_z[:-1].reshape(-1), flat_z[1:].reshape(-1))[0, 1])
        expect(not abs(r) >= 0.3, f"{label} adds the same noise at every step (correlation {r:.2f} between the noise "
               f"of successive steps).", hint="draw a fresh z at every step: torch.randn(x.shape, "
                                             "generator=generator, dtype=x.dtype).")
    if not (abs(m) < 0.1 and abs(v - 1) < 0.15):
        hint = "the update of x between the steps must be Algorithm 2's (x - beta_t / sqrt(1 - alpha_bar_t) eps) / " \
               "sqrt(alpha_t) + sqrt(beta_t) z: check its coefficients, computed from the beta passed in (not from the notebook's alpha_bar or T)."
        if v < 0.5:
            hint = "no (or too little) noise is added between steps: add sqrt(beta[t]) z for t > 0."
        elif v > 1.5:
            hint = "too much noise is added (or the update's coefficients are off): sigma_t is sqrt(beta[t])."
        raise CheckFailed(f"Between the guided_eps calls at t and t - 1, {label} should move x to the Algorithm 2 "
                          f"mean of that step plus sigma_t z with sigma_t = sqrt(beta_t) and z standard normal; the "
                          f"z this implies has mean {m:.3f} and variance {v:.3f}.\nLikely cause: {hint}")
    # the variance of every step (judged step by step: pooled over the steps, beta_tilde would pass)
    expect_per_step_variance(d, list(ts), b, label)
    # no noise after the last step
    last = means[-1]
    if not (out.shape == last.shape and np.allclose(out, last, atol=1e-5, rtol=1e-5)):
        resid = out - last if out.shape == last.shape else None
        sb0 = math.sqrt(float(b[0]))
        hint = ("the last step must return (x - beta_0 / sqrt(1 - alpha_bar_0) eps) / sqrt(alpha_0), with eps "
                "what guided_eps returned at t = 0 and no noise: check the coefficients of Algorithm 2, line 4, "
                "and return x after the last update.")
        if resid is not None and abs(float(resid.std()) - sb0) < 0.5 * sb0:
            hint = (f"the output is the last step's mean plus noise of std about sqrt(beta[0]) = {sb0:.3g}: noise is "
                    "added at the last step (t = 0); Algorithm 2 uses z = 0 there.")
        raise CheckFailed(f"{label} with w = {w} did not return the update of its last step: "
                          f"{describe_diff(out, last)}.\nLikely cause: {hint}")


def _sampled(out: Outcome, x_T: torch.Tensor, y: torch.Tensor, beta: torch.Tensor | None = None):
    """The output of a sampler call and the recorded guided_eps calls (None when the loop did not
    call guided_eps, or called it in a way that cannot be read)."""
    got = as_array(out.value, f"the output of {out.what}", shape=tuple(x_T.shape), dtype="float")
    expect_unchanged(out, {"model": None, "x_T": x_T, "y": y, "w": None, "beta": beta}, "p_sample_loop_cfg")
    wrapped = out.wrapped("guided_eps")
    return got, (_parse_guided(wrapped) if wrapped else None)


@trusted
def check_p_sample_loop_cfg(p: Probe):
    T, null = 100, 10
    beta = _linear_schedule(T, 1e-3, 0.1)  # (T,)
    alpha_bar = torch.cumprod(1 - beta, dim=0)
    g = p.gen(51)
    centers = torch.rand(10, 1, 3, 3, generator=g, dtype=torch.float64) * 1.2 - 0.6  # (10, 1, 3, 3)
    u = torch.rand(1, 3, 3, generator=g, dtype=torch.float64) * 1.2 - 0.6  # (1, 3, 3)
    y = torch.randperm(10, generator=g)[:8]  # (B,) distinct labels
    x_T = torch.randn(len(y), 1, 3, 3, generator=g, dtype=torch.float64)
    fn, wrap = "p_sample_loop_cfg", ("guided_eps",)
    wrong = schedule_globals(**_CFG_GLOBALS)  # the notebook's globals (T = 1000, NULL_LABEL = 10, ...)
    kw = {"bind": wrong, "error_hints": SCHEDULE_HINTS}
    delta = []
    for w in (2.0, 0.0, -1.0):
        model = p.stub("classifier_free_guidance.GuidedDeltaModel", centers=centers, u=u, alpha_bar=alpha_bar,
                       null_label=null)
        delta.append((w, model, p.call(fn, model, x_T, y, w, beta, null, generator=p.generator(0), what=_LABEL,
                                       wrap=wrap, **kw)))
    # Gaussian data: the right variance (noise added for t > 0), mean (1 + w) c - w u
    N, w_g = 3000, 1.5
    yy = torch.arange(N) % 10
    x_N = torch.randn(N, 1, 3, 3, generator=p.gen(52), dtype=torch.float64)
    gmodel = p.stub("classifier_free_guidance.GuidedDeltaModel", centers=centers, u=u, alpha_bar=alpha_bar,
                    null_label=null, gaussian=True, record=False)
    # (looked at only when the loop does not call guided_eps: a loop that does is judged from the calls
    # of the delta-data runs, and a Gaussian output would also judge the student's guided_eps)
    gauss = p.call(fn, gmodel, x_N, yy, w_g, beta, null, generator=p.generator(1), what=_LABEL, **kw)
    # the generator drives the randomness (the global random state seeded differently each time)
    xs, ys = x_N[:16], yy[:16]
    runs = [p.call(fn, gmodel, xs, ys, w_g, beta, null, generator=p.generator(s), what=_LABEL, global_seed=gs,
                   **kw) for s, gs in ((7, 1), (7, 2), (8, 3))]
    one = p.generator(9)  # one generator for two calls: its stream continues
    stream = [p.call(fn, gmodel, xs, ys, w_g, beta, null, generator=one, what=_LABEL, **kw) for _ in range(2)]
    # the same with a stand-in guided_eps (the conditional prediction), looked at only when the
    # student's own guided_eps cannot run: the loop is still graded, from its calls of the stand-in
    stand_in = {**wrong, "guided_eps": p.stub("classifier_free_guidance.StandInGuide")}
    w_s, model_s = delta[0][0], p.stub("classifier_free_guidance.GuidedDeltaModel", centers=centers, u=u,
                                       alpha_bar=alpha_bar, null_label=null)
    spare = p.call(fn, model_s, x_T, y, w_s, beta, null, generator=p.generator(0), what=_LABEL, wrap=wrap,
                   bind=stand_in, error_hints=SCHEDULE_HINTS)
    spare_runs = [p.call(fn, gmodel, xs, ys, w_g, beta, null, generator=p.generator(s), what=_LABEL,
                         global_seed=gs, bind=stand_in) for s, gs in ((7, 1), (7, 2), (8, 3))]
    # other schedules, another null label, float32, a network with a trainable parameter
    extra = []
    for TT, sched, null_k, w_k, dtype in ((37, cosine_beta_schedule(37), 12, 1.5, torch.float32),
                                          (200, _linear_schedule(200, 1e-4, 0.05), 10, 0.5, torch.float64)):
        ab_k = torch.cumprod(1 - sched, 0)
        m_k = p.stub("classifier_free_guidance.GuidedDeltaModel", centers=centers, u=u, alpha_bar=ab_k,
                     null_label=null_k, grad=True)
        x_k, y_k, b_k = x_T.to(dtype), y, sched.to(dtype)
        extra.append((TT, null_k, w_k, x_k, y_k, b_k, m_k, p.call(
            fn, m_k, x_k, y_k, w_k, b_k, null_k, generator=p.generator(10 + TT), wrap=wrap, **kw,
            what=f"{_LABEL} with a {TT}-step schedule, null_label={null_k}, {str(dtype)[6:]}")))
    # the variance of every step: 37 linear steps, Gaussian data, the model's inputs recorded
    beta_v = _linear_schedule(37, 1e-3, 0.2)
    ab_v = torch.cumprod(1 - beta_v, 0)
    c4 = torch.rand(10, 1, 4, 4, generator=p.gen(53), dtype=torch.float64) * 1.2 - 0.6
    u4 = torch.rand(1, 4, 4, generator=p.gen(54), dtype=torch.float64) * 1.2 - 0.6
    y_v = torch.arange(64) % 10
    x_v = torch.randn(64, 1, 4, 4, generator=p.gen(55), dtype=torch.float64)
    m_v = p.stub("classifier_free_guidance.GuidedDeltaModel", centers=c4, u=u4, alpha_bar=ab_v, null_label=null,
                 gaussian=True, record_x=True)
    w_v = 1.0
    var_run = p.call(fn, m_v, x_v, y_v, w_v, beta_v, null, generator=p.generator(5), wrap=wrap, **kw,
                     what=f"{_LABEL} with a 37-step schedule")
    yield

    label = _LABEL
    # an in-place edit of x_t or y inside the student's guided_eps changes the loop's x and y too: that is
    # guided_eps's mistake (its own cell) when the loop leaves them alone with the stand-in guided_eps
    guided_mutates = (_changes_inputs(delta[0][2], x_T, y) and not spare.raised
                      and not _changes_inputs(spare, x_T, y))
    if _block_cannot_run(delta[0][2]) or guided_mutates:
        # grade the loop on its own: guided_eps loses its points in its own cell
        out, guided = _sampled(spare, x_T, y)
        expect(guided is not None, f"{label} failed with your guided_eps, and with a stand-in guided_eps it "
               f"did not call guided_eps(model, x, t, y, w, null_label) either.",
               hint="call guided_eps(model, x, t_batch, y, w, null_label) at every step.")
        _judge_composition(guided, out, x_T, y, w_s, beta, null)
        for o in (spare, *spare_runs):
            expect_no_global_rng(o, "p_sample_loop_cfg")
        _judge_generator(spare_runs)
        return
    model_calls = []
    for w, model, call_out in delta:
        out, guided = _sampled(call_out, x_T, y)
        if guided is not None:  # the loop's own guided_eps: judge the composition, not guided_eps itself
            _judge_composition(guided, out, x_T, y, w, beta, null)
            model_calls = None
            continue
        model_calls = call_out.model_calls(model)
        c = centers[y].numpy()
        uu = np.broadcast_to(u.numpy(), c.shape)
        want = (1 + w) * c - w * uu
        err = np.abs(out - want).max()
        if err <= 2e-3:
            continue
        null_seen = any(mc.get("null") is True for mc in model_calls)
        variants = [
            (c, "the samples follow the conditional model only: the loop never uses guidance (call "
             "guided_eps(model, x, t, y, w, null_label) at every step)."),
            (uu + w * (c - uu), "this is the s = w convention eps_u + w (eps_c - eps_u); the course uses "
             "(1 + w) eps_c - w eps_u."),
            ((1 + w) * uu - w * c, "the guidance sign is reversed."),
            (uu, "the samples follow the unconditional model only."),
        ]
        hint = next((h for v, h in variants if np.abs(out - v).max() < 2e-3 and np.abs(v - want).max() > 2e-3), None)
        if hint is None and 2e-3 < err < 0.3:
            hint = ("the output is the right image plus small noise: noise is added at the last step (t = 0); "
                    "Algorithm 2 uses z = 0 there.")
        if hint and hint.startswith("the samples follow the conditional") and not null_seen:
            hint = ("the model was never called with the null label, so the samples follow the conditional "
                    "model only: use guided_eps(model, x, t, y, w, null_label) at every step.")
        raise CheckFailed(
            f"With exact predictors for data fixed at c_y (label y) and at u (null label), guided noise is the "
            f"exact predictor for data at (1 + w) c_y - w u, so {label} with w = {w} must return that image: "
            f"{describe_diff(out, want)}." + (f"\nLikely cause: {hint}" if hint else
                                               "\nLikely cause: check the coefficients of Algorithm 2, line 4."))
    if model_calls is not None:  # the loop does not call guided_eps: judged from the model's calls
        # one step after the other, T - 1 down to 0
        times = []
        for c_ in model_calls:
            t0 = c_.get("t")
            if not times or times[-1] != t0:
                times.append(t0)
        expect(times == list(range(T - 1, -1, -1)),
               f"The model should be queried at t = {T - 1}, ..., 0 in that order; got {times[:4]} ... {times[-3:]}.",
               hint="loop over reversed(range(T)).")
        out, _ = _sampled(gauss, x_N, yy)
        resid = out - ((1 + w_g) * centers[yy] - w_g * u[None]).numpy()
        var = float(resid.var())
        v_beta, v_tilde = _gaussian_output_variance(beta, False), _gaussian_output_variance(beta, True)
        hint = None
        if var < 0.5 * v_tilde:
            hint = "no (or too little) noise is added between steps: add sqrt(beta[t]) z for t > 0."
        elif var > 1.5:
            hint = "too much noise is added: sigma_t is sqrt(beta[t])."
        expect(min(abs(var - v_beta), abs(var - v_tilde)) < 0.05 and abs(float(resid.mean())) < 0.05,
               f"For Gaussian data the guided samples should have variance about {v_beta:.3f} around "
               f"(1 + w) c_y - w u; got variance {var:.3f} and mean offset {float(resid.mean()):.3f}.", hint=hint)
    # family 1: the global random state is left alone; one generator continues its stream
    for o in (delta[0][2], gauss, *stream):
        expect_no_global_rng(o, "p_sample_loop_cfg")
    _judge_generator(runs)
    expect_stream_continues(*(as_array(o.value, "output") for o in stream), label)
    # families 3 and 4: other schedules and null labels; float32 kept; no autograd graph
    for TT, null_k, w_k, x_k, y_k, b_k, m_k, o in extra:
        got, guided = _sampled(o, x_k, y_k, b_k)
        if guided is not None:
            _judge_composition(guided, got, x_k, y_k, w_k, b_k, null_k)
        else:
            want = ((1 + w_k) * centers[y_k] - w_k * u[None]).numpy()
            steps = len({c_.get("t") for c_ in o.model_calls(m_k)})
            if np.abs(got - want).max() > 3e-3:
                raise CheckFailed(f"{o.what} must return (1 + w) c_y - w u, as with the other schedules: "
                                  f"{describe_diff(got, want)}; the model was queried at {steps} steps (expected {TT})."
                                  f"\nLikely cause: " + (_T_HINT if steps != TT else "use the arguments beta and "
                                  "null_label, not the notebook's globals (T, alpha_bar, NULL_LABEL)."))
        if x_k.dtype == torch.float32 and not float64_from(o.wrapped("guided_eps"), name="x_t"):  # (else guided_eps's own cell)
            expect_dtype_kept(o.value, "torch.float32", f"The output of {label} for a float32 x_T")
        expect_no_graph(o.value, f"The output of {label} (a network with trainable parameters)")
    # family 6: the variance of every step
    got_v, guided_v = _sampled(var_run, x_v, y_v, beta_v)
    if guided_v is not None:
        _judge_composition(guided_v, got_v, x_v, y_v, w_v, beta_v, null)
    else:
        noise = _inline_noise(var_run.model_calls(m_v), got_v, c4, u4, beta_v, w_v, null, len(y_v))
        if noise is not None:
            expect_per_step_variance(noise, list(range(len(beta_v) - 1, 0, -1)), beta_v.numpy(), var_run.what)


_T_HINT = ("T is hard-coded or taken from the notebook's globals: use T = len(beta) and the beta passed in "
           "(alpha and alpha_bar computed from it), never the notebook's T, beta or alpha_bar.")


def _inline_noise(calls: list[dict], out: np.ndarray, centers: torch.Tensor, u: torch.Tensor, beta: torch.Tensor,
                  w: float, null: int, B: int) -> np.ndarray | None:
    """For a loop that queries the model itself (no guided_eps): x after each step t > 0 minus that step's
    Algorithm 2 mean of the guided exact Gaussian-data prediction, from the model's recorded inputs
    (None when the calls cannot be read as one step after the other, B real-label rows per step)."""
    T = len(beta)
    steps: list[tuple[int, list, list]] = []
    for c in calls:
        x, t, y = c.get("x"), c.get("t"), c.get("y")
        if not (isinstance(x, TensorRecord) and isinstance(y, TensorRecord) and isinstance(t, int)):
            return None
        if not steps or steps[-1][0] != t:
            steps.append((t, [], []))
        keep = np.asarray(y.array).reshape(-1) != null
        steps[-1][1].append(np.asarray(x.array, dtype=np.float64)[keep])
        steps[-1][2].append(np.asarray(y.array).reshape(-1)[keep])
    if [s_[0] for s_ in steps] != list(range(T - 1, -1, -1)):
        return None
    xs, ys = [], []
    for _, xl, yl in steps:
        xx, yy = np.concatenate(xl), np.concatenate(yl)
        if len(xx) != B:
            return None
        xs.append(xx)
        ys.append(yy.astype(np.int64))
    xs.append(out)
    b = beta.numpy().astype(np.float64)
    ab = np.cumprod(1 - b)
    c, uu = centers.numpy(), u.numpy()[None]
    d = []
    for k in range(T - 1):
        t = T - 1 - k
        target = (1 + w) * c[ys[k]] - w * uu  # the guided exact prediction is that of data N(target, I)
        eps = np.sqrt(1 - ab[t]) * (xs[k] - np.sqrt(ab[t]) * target)
        mean = (xs[k] - b[t] / np.sqrt(1 - ab[t]) * eps) / np.sqrt(1 - b[t])
        if xs[k + 1].shape != mean.shape:
            return None
        d.append(xs[k + 1] - mean)
    return np.stack(d)


def _judge_generator(runs: list[Outcome]) -> None:
    """Equally seeded generators give the same samples, differently seeded ones other samples."""
    a, b, c = (as_array(r.value, "output") for r in runs)
    expect(max_abs_diff(a, b) < 1e-10 and max_abs_diff(a, c) > 1e-6,
           f"{_LABEL} should draw its noise with the `generator` argument: equally seeded generators should "
           "give the same samples, differently seeded ones different samples.",
           hint="draw z with torch.randn(x.shape, generator=generator, dtype=x.dtype).")


def _changes_inputs(out: Outcome, x_T: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether a sampler call (that did not raise) changed x_T or y in place."""
    if out.raised:
        return False
    try:
        expect_unchanged(out, {"model": None, "x_T": x_T, "y": y}, "p_sample_loop_cfg")
    except CheckFailed:
        return True
    return False


def _block_cannot_run(out: Outcome) -> bool:
    """The sampler raised because the student's guided_eps is missing or raised itself."""
    if not out.raised:
        return False
    calls = out.wrapped("guided_eps")
    if calls is None:  # not defined in the notebook
        return "guided_eps" in (out.error or "")
    return bool(calls) and calls[-1].error is not None


CHECKS = {
    "drop_labels": check_drop_labels,
    "guided_eps": check_guided_eps,
    "p_sample_loop_cfg": check_p_sample_loop_cfg,
}

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
  on its own: during this check it runs with a correct ``guided_eps``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from grading.hidden import CheckFailed, as_array, call, describe_diff, expect, max_abs_diff, student, swapped_in
from grading.checks.conditional import _gaussian_output_variance, _linear_schedule

# ----------------------------------------------------------------------------------------------
# drop_labels


def check_drop_labels(ns):
    fn = student(ns, "drop_labels")
    N = 10_000
    y = torch.randint(0, 10, (N,), generator=torch.Generator().manual_seed(31))  # (N,) long
    y_copy = y.clone()

    def drop(p, null, seed, labels=None):
        labels = y if labels is None else labels
        out = call(fn, labels, p, null, generator=torch.Generator().manual_seed(seed),
                   what=f"drop_labels(y, p_uncond={p}, null_label={null}, generator=...)")
        return as_array(out, f"drop_labels(y, {p}, {null})", shape=tuple(labels.shape), dtype="long")

    out = drop(0.1, 10, 0)
    expect(torch.equal(y, y_copy), "drop_labels changed the labels y in place.",
           hint="return a new tensor (e.g. torch.where(drop, null, y) or y.clone() before assigning).")
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
            fracs = [float((drop(0.1, 10, s) == 10).mean()) for s in range(1, 9)]
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
    out42 = drop(0.3, 42, 1)
    frac42 = float((out42 == 42).mean())
    expect(set(np.unique(out42[out42 != yn]).tolist()) <= {42} and 0.28 <= frac42 <= 0.32,
           f"drop_labels(y, p_uncond=0.3, null_label=42) should replace about 30% of the labels by 42; "
           f"{100 * frac42:.1f}% became 42 and the changed labels took the values "
           f"{sorted(set(out42[out42 != yn].tolist()))[:5]}.",
           hint="use the arguments p_uncond and null_label, not fixed values.")
    # edge cases
    out0 = drop(0.0, 10, 2)
    expect(np.array_equal(out0, yn), f"With p_uncond = 0 no label may change; {int((out0 != yn).sum())} did.",
           hint="drop when the coin is strictly below p_uncond (torch.rand(...) < p_uncond).")
    out1 = drop(1.0, 10, 3)
    expect(bool((out1 == 10).all()), f"With p_uncond = 1 every label must become the null label; "
           f"{int((out1 != 10).sum())} did not.")
    # the generator drives the coins, one per label
    a, b, c = drop(0.5, 10, 5), drop(0.5, 10, 5), drop(0.5, 10, 6)
    expect(np.array_equal(a, b) and not np.array_equal(a, c),
           "drop_labels should draw its coins with the `generator` argument: equally seeded generators "
           "should give the same result, differently seeded ones a different one.",
           hint="pass generator=generator to torch.rand / torch.bernoulli.")
    agree = float(((a == 10) == (c == 10)).mean())
    expect(0.45 <= agree <= 0.55,
           f"With p_uncond = 0.5 two independent draws should agree on about half of the labels; they agree "
           f"on {100 * agree:.0f}%.", hint="draw a fresh coin for every label.")
    # small batches get independent coins too
    small = torch.arange(8) % 10
    mixed = 0
    for s in range(40):
        o = drop(0.5, 10, 100 + s, labels=small)
        mixed += int(0 < (o == 10).sum() < 8)
    expect(mixed >= 30, f"On batches of 8 labels with p_uncond = 0.5 most batches should mix dropped and kept "
           f"labels; only {mixed} of 40 did.",
           hint="one coin per label, not one coin for the whole batch.")
    expect(torch.equal(y, y_copy), "drop_labels changed the labels y in place.")


# ----------------------------------------------------------------------------------------------
# guided_eps


class _TwoHeadModel(nn.Module):
    """``model(x, t, y) = 0.5 x + 0.001 t + (1 + 0.1 y)`` for real labels and ``0.5 x + 0.001 t - 0.7``
    for the null label; records every call."""

    def __init__(self, null_label: int):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.null_label = null_label
        self.calls = []

    @staticmethod
    def heads(x, t, y, null_label):
        t = torch.as_tensor(t).to(x.dtype).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        y = torch.as_tensor(y).reshape(-1)
        base = 0.5 * x + 0.001 * t.reshape(-1, 1, 1, 1)
        cond = 1.0 + 0.1 * y.to(x.dtype)
        val = torch.where(y == null_label, torch.full_like(cond, -0.7), cond)  # (B,)
        return base + val.reshape(-1, 1, 1, 1)

    def forward(self, x, t, y=None):
        self.calls.append({"x": x.detach().clone(), "t": torch.as_tensor(t).detach().clone(),
                           "y": None if y is None else torch.as_tensor(y).detach().clone()})
        if y is None:
            raise TypeError("this conditional model needs labels: model(x, t, y)")
        return self.heads(x, t, y, self.null_label)


def _check_guided_calls(calls, y, null, B):
    """One batched pass (2B) or two passes (B each): the model must see the real labels (conditional
    prediction) and the null label for every example (unconditional prediction)."""
    labels = torch.cat([c["y"].reshape(-1).long() for c in calls])
    expect(bool((labels == null).sum() >= B) and all(int((labels == int(v)).sum()) >= int((y == v).sum())
                                                     for v in y),
           "The model should see the real labels y once (conditional pass) and the null label once per "
           f"example (unconditional pass); it saw labels {labels.tolist()}.")


def check_guided_eps(ns):
    fn = student(ns, "guided_eps")
    gen = torch.Generator().manual_seed(41)
    B = 5
    x = torch.randn(B, 1, 3, 3, generator=gen, dtype=torch.float64)  # (B, 1, 3, 3)
    t = torch.tensor([999, 500, 20, 3, 0])
    y = torch.tensor([7, 0, 3, 9, 1])
    copies = (x.clone(), t.clone(), y.clone())

    for null in (10, 12):
        for w in (2.5, 0.0, -1.0, 7):
            model = _TwoHeadModel(null)
            out = as_array(call(fn, model, x, t, y, w, null, what=f"guided_eps(model, x_t, t, y, w={w}, null_label={null})"),
                           "guided_eps(...)", shape=tuple(x.shape), dtype="float")
            e_c = _TwoHeadModel.heads(x, t, y, null).numpy()
            e_u = _TwoHeadModel.heads(x, t, torch.full_like(y, null), null).numpy()
            want = (1 + w) * e_c - w * e_u
            if max_abs_diff(out, want) < 1e-6:
                if w not in (0.0, -1.0):  # w = 0 or -1 may take a shortcut with one pass
                    _check_guided_calls(model.calls, y, null, B)
                continue
            e_0 = _TwoHeadModel.heads(x, t, torch.zeros_like(y), null).numpy()
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
                e_10 = _TwoHeadModel.heads(x, t, torch.full_like(y, 10), null).numpy()
                variants.append(((1 + w) * e_c - w * e_10, "the null label is hard-coded as 10; use the "
                                 "argument null_label."))
            hint = next((h for v, h in variants if max_abs_diff(out, v) < 1e-6 and max_abs_diff(v, want) > 1e-6), None)
            raise CheckFailed(
                f"With a stub model whose conditional prediction is eps_c and whose unconditional prediction "
                f"(null label {null}) is eps_u, guided_eps(w={w}) should return (1 + w) eps_c - w eps_u: "
                f"{describe_diff(out, want)}." + (f"\nLikely cause: {hint}" if hint else ""))
    expect(all(torch.equal(a, b) for a, b in zip(copies, (x, t, y))),
           "guided_eps changed x_t, t or y in place.", hint="build the null labels with torch.full_like(y, null_label).")


# ----------------------------------------------------------------------------------------------
# p_sample_loop_cfg


class _GuidedDeltaModel(nn.Module):
    """Exact predictors: class k -> data fixed at centers[k]; the null label -> data fixed at u.
    With ``gaussian=True`` the data are N(center, I) instead."""

    def __init__(self, centers, u, alpha_bar, null_label, gaussian=False):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.centers = torch.cat([centers, u[None]]).to(torch.float64)  # (K + 1, C, H, W)
        self.alpha_bar = alpha_bar.to(torch.float64)
        self.null_label, self.gaussian = null_label, gaussian
        self.calls = []

    def forward(self, x, t, y=None):
        if y is None:
            raise TypeError("this conditional model needs labels: model(x, t, y)")
        tt = torch.as_tensor(t).reshape(-1).long()
        if tt.numel() == 1:
            tt = tt.expand(x.shape[0])
        yy = torch.as_tensor(y).reshape(-1).long()
        self.calls.append({"t": tt.clone(), "y": yy.clone()})
        idx = torch.where(yy == self.null_label, torch.full_like(yy, len(self.centers) - 1), yy)
        ab = self.alpha_bar[tt].reshape(-1, 1, 1, 1)
        sa, s1 = ab.sqrt().to(x.dtype), (1 - ab).sqrt().to(x.dtype)
        c = self.centers[idx].to(x.dtype)
        return s1 * (x - sa * c) if self.gaussian else (x - sa * c) / s1


def _reference_guided_eps(model, x_t, t, y, w, null_label):
    """A correct guided_eps that accepts t as an int or a tensor (two passes)."""
    y_null = torch.full_like(y, null_label) if isinstance(y, torch.Tensor) else null_label
    return (1 + w) * model(x_t, t, y) - w * model(x_t, t, y_null)


def check_p_sample_loop_cfg(ns):
    fn = student(ns, "p_sample_loop_cfg")
    with swapped_in(ns, {"guided_eps": _reference_guided_eps}):  # grade the loop on its own
        _check_cfg_loop(fn)


def _check_cfg_loop(fn):
    T, null = 100, 10
    beta = _linear_schedule(T, 1e-3, 0.1)  # (T,)
    alpha_bar = torch.cumprod(1 - beta, dim=0)
    g = torch.Generator().manual_seed(51)
    centers = torch.rand(10, 1, 3, 3, generator=g, dtype=torch.float64) * 1.2 - 0.6  # (10, 1, 3, 3)
    u = torch.rand(1, 3, 3, generator=g, dtype=torch.float64) * 1.2 - 0.6  # (1, 3, 3)
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    B = len(y)
    x_T = torch.randn(B, 1, 3, 3, generator=g, dtype=torch.float64)
    copies = (x_T.clone(), y.clone())
    label = "p_sample_loop_cfg(model, x_T, y, w, beta, null_label)"

    for w in (2.0, 0.0, -1.0):
        model = _GuidedDeltaModel(centers, u, alpha_bar, null)
        out = as_array(call(fn, model, x_T, y, w, beta, null, generator=torch.Generator().manual_seed(0), what=label),
                       f"the output of {label}", shape=tuple(x_T.shape), dtype="float")
        expect(all(torch.equal(a, b) for a, b in zip(copies, (x_T, y))), f"{label} changed x_T or y in place.",
               hint="start with x = x_T and update it out of place.")
        c = centers[y].numpy()
        uu = np.broadcast_to(u.numpy(), c.shape)
        want = (1 + w) * c - w * uu
        err = np.abs(out - want).max()
        if err <= 2e-3:
            continue
        null_seen = any(bool((call_["y"] == null).any()) for call_ in model.calls)
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
    # one step after the other, T - 1 down to 0
    times = []
    for c_ in model.calls:
        if not times or times[-1] != int(c_["t"][0]):
            times.append(int(c_["t"][0]))
    expect(times == list(range(T - 1, -1, -1)),
           f"The model should be queried at t = {T - 1}, ..., 0 in that order; got {times[:4]} ... {times[-3:]}.",
           hint="loop over reversed(range(T)).")
    # Gaussian data: the right variance (noise added for t > 0), mean (1 + w) c - w u
    N, w = 3000, 1.5
    yy = torch.arange(N) % 10
    x_T = torch.randn(N, 1, 3, 3, generator=torch.Generator().manual_seed(52), dtype=torch.float64)
    gmodel = _GuidedDeltaModel(centers, u, alpha_bar, null, gaussian=True)
    out = as_array(call(fn, gmodel, x_T, yy, w, beta, null, generator=torch.Generator().manual_seed(1), what=label),
                   f"the output of {label}", shape=tuple(x_T.shape), dtype="float")
    resid = out - ((1 + w) * centers[yy] - w * u[None]).numpy()
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
    # the generator drives the randomness
    xs, ys = x_T[:16], yy[:16]
    runs = [as_array(call(fn, gmodel, xs, ys, w, beta, null, generator=torch.Generator().manual_seed(s), what=label),
                     "output") for s in (7, 7, 8)]
    expect(max_abs_diff(runs[0], runs[1]) < 1e-10 and max_abs_diff(runs[0], runs[2]) > 1e-6,
           f"{label} should draw its noise with the `generator` argument: equally seeded generators should "
           "give the same samples, differently seeded ones different samples.",
           hint="draw z with torch.randn(x.shape, generator=generator, dtype=x.dtype).")


CHECKS = {
    "drop_labels": check_drop_labels,
    "guided_eps": check_guided_eps,
    "p_sample_loop_cfg": check_p_sample_loop_cfg,
}

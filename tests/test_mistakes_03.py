"""The hidden tests of 03_sampling catch the mistakes of the issue and accept every correct answer.

Two layers:

* direct tests (about 10 s of CPU in all): the notebook's given cells and answer cells are exec'd into
  a namespace, one answer is replaced by a mistaken (or an alternative correct) version, and the
  check of that answer is run through ``gradeprobe.run`` exactly as the test cell does;
* cell-runner tests (``grading.runner.run_notebook``, skipping ``slow`` cells, about 10 s each,
  marked ``slow``): the
  unmodified solution passes every test cell, and notebooks with one mistake in each answer cell
  lose the points of every test cell, with the expected message.

The mistaken versions are made by editing the solution's source (``old`` -> ``new``), so they follow
the solution when it changes; a missing ``old`` fails the test loudly.
"""
from __future__ import annotations

import textwrap

import pytest
import torch

from notebook_support import SolutionNotebook, assert_every_cell_passes, run_cells

GIVEN = ("given_schedule", "given_embedding", "given_oracles")
ANSWERS = ("p_sample_step", "posterior_variance", "p_sample_loop", "ddim_step", "ddim_sample", "sdedit")
SOLUTION = SolutionNotebook("03_sampling", answers=ANSWERS, given=GIVEN,
                            prelude="import math, time\nimport numpy as np\nimport torch\nfrom torch import nn\n")
NOTEBOOK = SOLUTION.path
mutate = SOLUTION.mutate_many
namespace = SOLUTION.namespace


def run_check(question: str, replace: dict[str, str] | None = None, ns: dict | None = None) -> None:
    torch.set_num_threads(1)
    SOLUTION.run_hidden(question, replace, ns)


# ------------------------------------------------------------------------------------------------
# The mistakes of the issue: (id, answer cell, mistaken source, check, words the message must contain)
# ------------------------------------------------------------------------------------------------
MEAN_LINE = "mean = (x_t - beta[t] / torch.sqrt(1 - alpha_bar[t]) * eps) / torch.sqrt(alpha[t])"
MISTAKES = [
    ("step_noise_at_last_step", "p_sample_step",
     mutate("p_sample_step", ("    if t == 0:\n        return mean  # z = 0 at the last step\n", "")),
     "p_sample_step", "last step"),
    ("step_sigma_beta", "p_sample_step",
     mutate("p_sample_step", ("return mean + torch.sqrt(beta[t]) * z", "return mean + beta[t] * z")),
     "p_sample_step", "sigma_t = beta_t"),
    ("step_coef_without_sqrt", "p_sample_step",
     mutate("p_sample_step", (MEAN_LINE, MEAN_LINE.replace("torch.sqrt(1 - alpha_bar[t])", "(1 - alpha_bar[t])"))),
     "p_sample_step", "beta_t / (1 - alpha_bar_t)"),
    ("step_no_division_by_sqrt_alpha", "p_sample_step",
     mutate("p_sample_step", (MEAN_LINE, MEAN_LINE.replace(" / torch.sqrt(alpha[t])", ""))),
     "p_sample_step", "no division by sqrt(alpha_t)"),
    ("step_alpha_bar_off_by_one", "p_sample_step",
     mutate("p_sample_step", (MEAN_LINE, MEAN_LINE.replace("alpha_bar[t]", "alpha_bar[t - 1]"))),
     "p_sample_step", "alpha_bar off by one"),
    ("step_alpha_bar_off_by_one_up", "p_sample_step",
     mutate("p_sample_step", (MEAN_LINE, MEAN_LINE.replace("alpha_bar[t]", "alpha_bar[min(t + 1, T - 1)]"))),
     "p_sample_step", "alpha_bar off by one"),
    ("loop_skips_index_0", "p_sample_loop",
     mutate("p_sample_loop", ("for t in reversed(range(T)):", "for t in reversed(range(1, T)):")),
     "p_sample_loop", "skips index 0"),
    ("loop_noise_at_last_step", "p_sample_loop",
     mutate("p_sample_loop", ('if t > 0 and variance != "none":', 'if variance != "none":')),
     "p_sample_loop", "last step"),
    ("loop_variance_beta_tilde_ignored", "p_sample_loop",
     mutate("p_sample_loop", ('if variance == "beta":', "if True:")),
     "p_sample_loop", "variance option is ignored"),
    ("loop_variance_ignored_entirely", "p_sample_loop",
     mutate("p_sample_loop", ('if variance == "beta":', "if True:"),
            ('if t > 0 and variance != "none":', "if t > 0:")),
     "p_sample_loop", "variance option is ignored"),
    ("beta_tilde_with_alpha_bar_t", "posterior_variance",
     mutate("posterior_variance", ("(1 - alpha_bar_prev) / (1 - alpha_bar) * beta", "(1 - alpha_bar) / (1 - alpha_bar) * beta")),
     "posterior_variance", "alpha_bar[t] used where alpha_bar[t - 1] belongs"),
    ("beta_tilde_wrapped_index", "posterior_variance",
     mutate("posterior_variance", ("return (1 - alpha_bar_prev)", "alpha_bar_prev = alpha_bar[torch.arange(len(beta)) - 1]  # wraps at 0\n    return (1 - alpha_bar_prev)")),
     "posterior_variance", "wrapped index"),
    ("ddim_alpha_instead_of_alpha_bar", "ddim_step",
     mutate("ddim_step", ("    ab_t = alpha_bar[t]\n    ab_prev = alpha_bar[t_prev]",
                          "    alpha = alpha_bar / torch.cat([torch.ones_like(alpha_bar[:1]), alpha_bar[:-1]])\n"
                          "    ab_t = alpha[t]\n    ab_prev = alpha[t_prev]")),
     "ddim_step", "DDIM's alpha_t is DDPM's alpha_bar_t"),
    ("ddim_alpha_bar_minus_one", "ddim_step",
     mutate("ddim_step", ("ab_prev = alpha_bar[t_prev] if t_prev >= 0 else torch.ones_like(ab_t)", "ab_prev = alpha_bar[t_prev]")),
     "ddim_step", "alpha_bar[-1]"),
    ("ddim_step_eta_ignored", "ddim_step",
     mutate("ddim_step", ("sigma = eta * torch.sqrt", "sigma = 0.0 * torch.sqrt")),
     "ddim_step", "eta is ignored"),
    ("ddim_sample_eta_ignored", "ddim_sample",
     mutate("ddim_sample", ("x = ddim_step(model, x, t, t_prev, alpha_bar, eta=eta, z=z)", "x = ddim_step(model, x, t, t_prev, alpha_bar)")),
     "ddim_sample", "eta is ignored"),
    ("sdedit_from_pure_noise", "sdedit",
     mutate("sdedit", ("x = q_sample(x_0, t, alpha_bar, noise)", "x = noise  # starts from pure noise")),
     "sdedit", "pure noise"),
    ("sdedit_denoises_from_T", "sdedit",
     mutate("sdedit", ("for s in reversed(range(t_start + 1)):", "for s in reversed(range(len(beta))):")),
     "sdedit", "starts from T - 1"),
]


def _case(name):
    return next(m for m in MISTAKES if m[0] == name)


@pytest.mark.parametrize("case", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_hidden_check_catches_mistake(case):
    _, gid, src, question, words = case
    with pytest.raises(AssertionError) as info:  # grading.hidden.CheckFailed
        run_check(question, {gid: src})
    assert words.lower() in str(info.value).lower(), f"message does not name the cause ({words!r}):\n{info.value}"


@pytest.mark.parametrize("question", ANSWERS)
def test_solution_passes_hidden_check(question):
    run_check(question)


# A mistake in a step function costs points in the step's cell only: the loops are checked with the
# reference steps in their place, and the student's own functions are put back afterwards.
@pytest.mark.parametrize("question", ["p_sample_loop", "sdedit"])
def test_loop_checks_do_not_repeat_step_mistakes(question):
    buggy = {"p_sample_step": _case("step_noise_at_last_step")[2],
             "posterior_variance": _case("beta_tilde_wrapped_index")[2]}
    ns = namespace(buggy)
    mine = ns["p_sample_step"], ns["posterior_variance"]
    run_check(question, ns=ns)
    assert (ns["p_sample_step"], ns["posterior_variance"]) == mine


def test_ddim_sample_check_does_not_repeat_step_mistakes():
    run_check("ddim_sample", {"ddim_step": _case("ddim_alpha_bar_minus_one")[2]})


# ------------------------------------------------------------------------------------------------
# Other correct answers must pass
# ------------------------------------------------------------------------------------------------
ALTERNATIVES = [
    ("step_numpy_inside", "p_sample_step", '''
def p_sample_step(model, x_t, t, beta, z):
    b = beta.detach().cpu().numpy().astype(np.float64)
    a = 1 - b
    ab = np.cumprod(a)
    with torch.no_grad():
        eps = model(x_t, torch.full((x_t.shape[0],), t, dtype=torch.long))
    x = x_t.detach().cpu().numpy().astype(np.float64)
    e = eps.detach().cpu().numpy().astype(np.float64)
    out = (x - b[t] / np.sqrt(1 - ab[t]) * e) / np.sqrt(a[t])
    if t > 0:
        out = out + np.sqrt(b[t]) * z.detach().cpu().numpy()
    return torch.from_numpy(out).to(x_t.dtype)
'''),
    ("step_posterior_mean_gather_float64", "p_sample_step", '''
def p_sample_step(model, x_t, t, beta, z):
    beta64 = beta.double()
    ab = torch.cumprod(1 - beta64, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    tb = torch.full((x_t.shape[0],), t, dtype=torch.long)
    eps = model(x_t, tb).double()
    ab_t = ab.gather(0, tb).view(-1, 1, 1, 1)
    abp = ab_prev.gather(0, tb).view(-1, 1, 1, 1)
    b = beta64.gather(0, tb).view(-1, 1, 1, 1)
    x0_hat = (x_t.double() - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    mean = abp.sqrt() * b / (1 - ab_t) * x0_hat + (1 - b).sqrt() * (1 - abp) / (1 - ab_t) * x_t.double()
    if t > 0:
        mean = mean + b.sqrt() * z.double()
    return mean
'''),
    ("step_posterior_mean_float32", "p_sample_step", '''
def p_sample_step(model, x_t, t, beta, z):
    alpha = 1 - beta
    ab = torch.cumprod(alpha, 0)
    abp = ab[t - 1] if t > 0 else torch.tensor(1.0)
    eps = model(x_t, torch.full((x_t.shape[0],), t, dtype=torch.long)).detach()
    x0_hat = (x_t - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
    mean = abp.sqrt() * beta[t] / (1 - ab[t]) * x0_hat + alpha[t].sqrt() * (1 - abp) / (1 - ab[t]) * x_t
    return mean + (beta[t].sqrt() * z if t > 0 else 0)
'''),
    ("step_loop_over_batch", "p_sample_step", '''
def p_sample_step(model, x_t, t, beta, z):
    alpha = 1 - beta
    ab = torch.cumprod(alpha, 0)
    rows = []
    for i in range(x_t.shape[0]):
        with torch.no_grad():
            eps = model(x_t[i:i + 1], torch.tensor([t]))
        row = (x_t[i:i + 1] - (1 - alpha[t]) / (1 - ab[t]).sqrt() * eps) / alpha[t].sqrt()
        if t != 0:
            row = row + beta[t].sqrt() * z[i:i + 1]
        rows.append(row)
    return torch.cat(rows)
'''),
    ("beta_tilde_numpy_loop", "posterior_variance", '''
def posterior_variance(beta):
    b = beta.detach().double().numpy()
    out = np.zeros_like(b)
    ab = 1.0
    for t in range(len(b)):
        ab_prev, ab = ab, ab * (1 - b[t])
        out[t] = (1 - ab_prev) / (1 - ab) * b[t]
    return torch.from_numpy(out)
'''),
    ("loop_noise_first_scaled_z", "p_sample_loop", '''
def p_sample_loop(model, x_T, beta, variance="beta", record_every=100, generator=None):
    T = len(beta)
    zs = torch.randn((T,) + tuple(x_T.shape), generator=generator)  # every z drawn up front
    if variance == "beta":
        scale = torch.ones(T)
    elif variance == "beta_tilde":
        scale = torch.sqrt(posterior_variance(beta) / beta)
    else:
        scale = torch.zeros(T)
    x, hist = x_T, []
    for k, t in enumerate(range(T - 1, -1, -1)):
        x = p_sample_step(model, x, t, beta, scale[t] * zs[k])
        if t % record_every == 0:
            hist.append(x.detach().to("cpu").clone())
    return x, hist
'''),
    ("loop_inline_float64", "p_sample_loop", '''
def p_sample_loop(model, x_T, beta, variance="beta", record_every=100, generator=None):
    b = beta.double()
    a = 1 - b
    ab = torch.cumprod(a, 0)
    abp = torch.cat([torch.ones(1, dtype=b.dtype), ab[:-1]])
    var = {"beta": b, "beta_tilde": (1 - abp) / (1 - ab) * b, "none": torch.zeros_like(b)}[variance]
    x = x_T.double()
    hist = []
    with torch.no_grad():
        for t in range(len(b) - 1, -1, -1):
            eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long))
            x = (x - b[t] / (1 - ab[t]).sqrt() * eps) / a[t].sqrt()
            if t > 0:
                x = x + var[t].sqrt() * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            if t % record_every == 0:
                hist.append(x.cpu())
    return x, hist
'''),
    ("ddim_step_float64_other_form", "ddim_step", '''
def ddim_step(model, x_t, t, t_prev, alpha_bar, eta=0.0, z=None):
    ab = alpha_bar.double()
    a_t = ab[t]
    a_p = ab[t_prev] if t_prev != -1 else torch.tensor(1.0, dtype=torch.float64)
    eps = model(x_t, torch.full((x_t.shape[0],), t, dtype=torch.long)).double()
    sigma = eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
    c1 = (a_p / a_t).sqrt()
    c2 = (1 - a_p - sigma ** 2).clamp(min=0).sqrt() - (a_p * (1 - a_t) / a_t).sqrt()
    out = c1 * x_t.double() + c2 * eps
    if z is not None and eta > 0:
        out = out + sigma * z.double()
    return out.float()
'''),
    ("ddim_sample_floor_spacing_noise_first", "ddim_sample", '''
def ddim_sample(model, x_T, alpha_bar, num_steps=50, eta=0.0, generator=None):
    T = len(alpha_bar)
    taus = [int(v) for v in np.floor(np.linspace(T - 1, 0, num_steps) + 1e-9)]
    zs = torch.randn((num_steps,) + tuple(x_T.shape), generator=generator)
    x = x_T
    for i, t in enumerate(taus):
        t_prev = taus[i + 1] if i + 1 < len(taus) else -1
        x = ddim_step(model, x, t, t_prev, alpha_bar, eta=eta, z=zs[i] if eta > 0 else None)
    return x
'''),
    ("sdedit_through_p_sample_loop_on_truncated_schedule", "sdedit", '''
def sdedit(model, x_0, t_start, beta, generator=None):
    _, alpha_bar = alphas_from_betas(beta)
    t = torch.full((x_0.shape[0],), t_start, dtype=torch.long)
    x_t = q_sample(x_0, t, alpha_bar, torch.randn(x_0.shape, generator=generator))
    x, _ = p_sample_loop(model, x_t, beta[: t_start + 1], generator=generator)
    return x
'''),
    ("sdedit_inline_other_draw_order", "sdedit", '''
def sdedit(model, x_0, t_start, beta, generator=None):
    b = beta.double()
    ab = torch.cumprod(1 - b, 0)
    zs = torch.randn((t_start + 1,) + tuple(x_0.shape), generator=generator, dtype=torch.float64)
    noise = torch.randn(x_0.shape, generator=generator, dtype=torch.float64)
    x = ab[t_start].sqrt() * x_0.double() + (1 - ab[t_start]).sqrt() * noise
    for t in range(t_start, -1, -1):
        with torch.no_grad():
            eps = model(x.float(), torch.full((x.shape[0],), t, dtype=torch.long)).double()
        x = (x - b[t] / (1 - ab[t]).sqrt() * eps) / (1 - b[t]).sqrt()
        if t > 0:
            x = x + b[t].sqrt() * zs[t]
    return x.float()
'''),
]


# The same mistakes made inside a loop that computes its steps inline (without p_sample_step)
_INLINE = textwrap.dedent(dict((a[0], a[2]) for a in ALTERNATIVES)["loop_inline_float64"])
_INLINE_STEP = "x = (x - b[t] / (1 - ab[t]).sqrt() * eps) / a[t].sqrt()"
INLINE_MISTAKES = [
    ("inline_alpha_bar_off_by_one", _INLINE_STEP, _INLINE_STEP.replace("ab[t]", "ab[t - 1]"), "mean of a step is wrong"),
    ("inline_coef_without_sqrt", _INLINE_STEP, _INLINE_STEP.replace("(1 - ab[t]).sqrt()", "(1 - ab[t])"), "mean of a step is wrong"),
    ("inline_no_division", _INLINE_STEP, _INLINE_STEP.replace(" / a[t].sqrt()", ""), "mean of a step is wrong"),
    ("inline_sigma_beta", "var[t].sqrt() * torch.randn", "var[t] * torch.randn", "sigma_t = beta_t"),
    ("inline_noise_at_last_step", "            if t > 0:\n                x = x + var", "            if True:\n                x = x + var", "last step"),
    ("inline_beta_tilde_with_alpha_bar_t", "abp = torch.cat([torch.ones(1, dtype=b.dtype), ab[:-1]])", "abp = ab", "mean square should be"),
]


@pytest.mark.parametrize("case", INLINE_MISTAKES, ids=[m[0] for m in INLINE_MISTAKES])
def test_hidden_check_catches_mistake_in_inline_loop(case):
    _, old, new, words = case
    assert old in _INLINE, old
    with pytest.raises(AssertionError) as info:
        run_check("p_sample_loop", {"p_sample_loop": _INLINE.replace(old, new)})
    assert words.lower() in str(info.value).lower(), f"message does not name the cause ({words!r}):\n{info.value}"


@pytest.mark.parametrize("case", ALTERNATIVES, ids=[a[0] for a in ALTERNATIVES])
def test_hidden_check_accepts_correct_alternative(case):
    _, gid, src, = case
    run_check(gid, {gid: textwrap.dedent(src)})


# ------------------------------------------------------------------------------------------------
# Through the cell runner, as the autograder scores cells (slow cells skipped)
# ------------------------------------------------------------------------------------------------
def _by_id(cases):
    return {c[0]: c for c in cases}


_M = _by_id(MISTAKES)
GROUPS = {
    "group_a": ["step_noise_at_last_step", "beta_tilde_wrapped_index", "loop_skips_index_0",
                "ddim_alpha_bar_minus_one", "ddim_sample_eta_ignored", "sdedit_from_pure_noise"],
    "group_b": ["step_sigma_beta", "beta_tilde_with_alpha_bar_t", "loop_variance_beta_tilde_ignored",
                "ddim_alpha_instead_of_alpha_bar", "sdedit_denoises_from_T"],
}


@pytest.mark.slow
def test_runner_solution_passes_every_test_cell():
    res, _ = run_cells(NOTEBOOK)
    tests = {gid: r for gid, r in res.items() if gid.startswith("test_")}
    assert_every_cell_passes(tests, [f"test_{a}" for a in ANSWERS])


@pytest.mark.slow
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_runner_mistakes_lose_points_in_their_cells(group):
    cases = [_M[name] for name in GROUPS[group]]
    res, _ = run_cells(NOTEBOOK, replace={c[1]: c[2] for c in cases})
    for _, gid, _, _, _ in cases:
        r = res[f"test_{gid}"]
        assert not r.passed and r.points == 0, f"test_{gid} should lose its points: {r}"

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
    return mean.to(x_t.dtype)
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
    return torch.from_numpy(out).to(beta.dtype)
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
                hist.append(x.to(x_T.dtype).cpu())
    return x.to(x_T.dtype), hist
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


# ------------------------------------------------------------------------------------------------
# Issue 15: the families of mistakes that used to keep full marks (1 generator discipline, 2 inputs
# changed in place, 3 globals instead of arguments, 4 result types, 6 the variance of every step)
# ------------------------------------------------------------------------------------------------
_ALT = {a[0]: textwrap.dedent(a[2]) for a in ALTERNATIVES}
_SDEDIT_INLINE = _ALT["sdedit_inline_other_draw_order"]
_SDEDIT_LOOP = _ALT["sdedit_through_p_sample_loop_on_truncated_schedule"]
_NO_GRAD = "    with torch.no_grad():\n"


def _without_no_grad(src: str, body_indent: str = "        ") -> str:
    """``src`` with its ``with torch.no_grad():`` block run with gradients on."""
    assert "with torch.no_grad():" in src
    return src.replace("with torch.no_grad():", "if True:")


FAMILY_MISTAKES = [
    # (family, id, answer cell, source, check, words of the message)
    # 1. generator discipline
    (1, "sdedit_reseeds_the_global_rng", "sdedit",
     mutate("sdedit", ("    _, alpha_bar = alphas_from_betas(beta)\n",
                       "    _, alpha_bar = alphas_from_betas(beta)\n    if generator is not None:\n"
                       "        torch.manual_seed(generator.initial_seed())\n"),
            ("torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype)", "torch.randn_like(x_0)"),
            ("torch.randn(x.shape, generator=generator, dtype=x.dtype)", "torch.randn_like(x)")),
     "sdedit", "changed torch's global random state"),
    (1, "ddim_sample_restarts_the_generator", "ddim_sample",
     mutate("ddim_sample", ("    x = x_T\n", "    x = x_T\n    if generator is not None:\n"
                                             "        generator = torch.Generator().manual_seed(generator.initial_seed())\n")),
     "ddim_sample", "continue the generator's stream"),
    (1, "sdedit_q_sample_noise_from_numpy", "sdedit",
     mutate("sdedit", ("noise = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype).to(x_0.device)",
                       "noise = torch.from_numpy(np.random.standard_normal(tuple(x_0.shape))).to(x_0.dtype)")),
     "sdedit", "NumPy's global random state"),
    (1, "p_sample_loop_z_with_randn_like", "p_sample_loop",
     mutate("p_sample_loop", ("z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)",
                              "z = torch.randn_like(x)")),
     "p_sample_loop", "generator"),
    # 2. inputs left alone
    (2, "p_sample_loop_updates_x_T_in_place", "p_sample_loop",
     mutate("p_sample_loop", ("            x = mean + sigma[t] * z\n", "            x.copy_(mean + sigma[t] * z)\n"),
            ("        else:\n            x = mean\n", "        else:\n            x.copy_(mean)\n")),
     "p_sample_loop", "`x_T` in place"),
    (2, "p_sample_step_scales_z_in_place", "p_sample_step",
     mutate("p_sample_step", ("return mean + torch.sqrt(beta[t]) * z", "return mean + z.mul_(torch.sqrt(beta[t]))")),
     "p_sample_step", "changed its input `z` in place"),
    (2, "ddim_step_x0_hat_in_place", "ddim_step",
     mutate("ddim_step", ("x0_hat = (x_t - torch.sqrt(1 - ab_t) * eps) / torch.sqrt(ab_t)",
                          "x0_hat = x_t.sub_(torch.sqrt(1 - ab_t) * eps).div_(torch.sqrt(ab_t))")),
     "ddim_step", "changed its input `x_t` in place"),
    (2, "sdedit_noises_x_0_in_place", "sdedit",
     mutate("sdedit", ("x = q_sample(x_0, t, alpha_bar, noise)",
                       "ab = alpha_bar[t_start]\n    x = x_0.mul_(ab.sqrt()).add_((1 - ab).sqrt() * noise)")),
     "sdedit", "changed its input `x_0` in place"),
    # 3. arguments, not the notebook's globals
    (3, "p_sample_step_uses_the_global_alpha_bar", "p_sample_step",
     mutate("p_sample_step", ("    alpha_bar = torch.cumprod(alpha, dim=0)  # (T,)\n", "")),
     "p_sample_step", "notebook's globals"),
    (3, "p_sample_loop_uses_the_global_T", "p_sample_loop",
     mutate("p_sample_loop", ("    T = beta.shape[0]\n", "")),
     "p_sample_loop", "notebook's globals"),
    (3, "sdedit_uses_the_global_alpha_bar", "sdedit",
     mutate("sdedit", ("    _, alpha_bar = alphas_from_betas(beta)\n", "")),
     "sdedit", "notebook's globals"),
    (3, "ddim_sample_uses_the_global_T", "ddim_sample",
     mutate("ddim_sample", ("    T = alpha_bar.shape[0]\n", "")),
     "ddim_sample", "notebook's globals"),
    (3, "posterior_variance_uses_the_global_alpha_bar", "posterior_variance",
     mutate("posterior_variance", ("    alpha_bar = torch.cumprod(1 - beta, dim=0)  # (T,)\n", "")),
     "posterior_variance", "global alpha_bar"),
    # 4. result types
    (4, "p_sample_step_float64_result", "p_sample_step",
     _ALT["step_posterior_mean_gather_float64"].replace("return mean.to(x_t.dtype)", "return mean"),
     "p_sample_step", "float64 tensor for float32 inputs"),
    (4, "posterior_variance_numpy_float64", "posterior_variance",
     _ALT["beta_tilde_numpy_loop"].replace("torch.from_numpy(out).to(beta.dtype)", "torch.from_numpy(out)"),
     "posterior_variance", "float64 tensor for a float32 beta"),
    (4, "p_sample_loop_inline_float64_result", "p_sample_loop",
     _ALT["loop_inline_float64"].replace("return x.to(x_T.dtype), hist", "return x, hist")
     .replace("hist.append(x.to(x_T.dtype).cpu())", "hist.append(x.cpu())"),
     "p_sample_loop", "float64 tensor for float32 inputs"),
    (4, "p_sample_loop_keeps_the_graph", "p_sample_loop", _without_no_grad(_ALT["loop_inline_float64"]),
     "p_sample_loop", "autograd graph"),
    (4, "sdedit_keeps_the_graph", "sdedit", _without_no_grad(_SDEDIT_INLINE), "sdedit", "autograd graph"),
    (4, "ddim_sample_keeps_the_graph", "ddim_sample", '''
def ddim_sample(model, x_T, alpha_bar, num_steps=50, eta=0.0, generator=None):
    T = len(alpha_bar)
    taus = torch.linspace(T - 1, 0, num_steps).round().long().tolist()
    x = x_T
    for i, t in enumerate(taus):
        a_t = alpha_bar[t]
        a_p = alpha_bar[taus[i + 1]] if i + 1 < len(taus) else torch.tensor(1.0)
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long))
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        s = eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
        x = a_p.sqrt() * x0 + (1 - a_p - s ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and i + 1 < len(taus):
            x = x + s * torch.randn(x.shape, generator=generator)
    return x
''', "ddim_sample", "autograd graph"),
    # 6. the variance of every step
    (6, "sdedit_with_beta_tilde", "sdedit",
     _SDEDIT_INLINE.replace("x = x + b[t].sqrt() * zs[t]",
                            "x = x + ((1 - ab[t - 1]) / (1 - ab[t]) * b[t]).sqrt() * zs[t]"),
     "sdedit", "beta_tilde"),
    (6, "sdedit_through_p_sample_loop_with_beta_tilde", "sdedit",
     _SDEDIT_LOOP.replace("beta[: t_start + 1], generator=generator)",
                          "beta[: t_start + 1], variance=\"beta_tilde\", generator=generator)"),
     "sdedit", "beta_tilde"),
    (6, "sdedit_sigma_beta", "sdedit", _SDEDIT_INLINE.replace("x = x + b[t].sqrt() * zs[t]", "x = x + b[t] * zs[t]"),
     "sdedit", "sigma_t = beta_t"),
    (6, "p_sample_loop_sigma_of_the_next_step", "p_sample_loop",
     _ALT["loop_inline_float64"].replace("x = x + var[t].sqrt()", "x = x + var[t - 1].sqrt()"),
     "p_sample_loop", "variance"),
]


FAMILY_GROUP = ["p_sample_step_scales_z_in_place", "posterior_variance_numpy_float64", "p_sample_loop_keeps_the_graph",
                "ddim_step_x0_hat_in_place", "ddim_sample_restarts_the_generator", "sdedit_with_beta_tilde"]


@pytest.mark.slow
def test_runner_family_mistakes_lose_points_in_their_cells():
    """One mistake of families 1, 2, 4 and 6 in each answer cell at once: every test cell loses its points."""
    cases = {m[1]: m for m in FAMILY_MISTAKES}
    replace = {cases[n][2]: cases[n][3] for n in FAMILY_GROUP}
    res, table = run_cells(NOTEBOOK, replace=replace)
    for gid in replace:
        r = res[f"test_{gid}"]
        assert not r.passed and r.points == 0, f"test_{gid} should lose its points: {r}\n{table}"


@pytest.mark.parametrize("case", FAMILY_MISTAKES, ids=[m[1] for m in FAMILY_MISTAKES])
def test_family_mistake_loses_points_with_its_cause(case):
    _, _, gid, src, question, words = case
    with pytest.raises(AssertionError) as info:
        run_check(question, {gid: src})
    assert words.lower() in str(info.value).lower(), f"message does not name the cause ({words!r}):\n{info.value}"


def test_family_mistakes_three_per_family():
    per_family = {}
    for family, *_ in FAMILY_MISTAKES:
        per_family[family] = per_family.get(family, 0) + 1
    assert all(per_family.get(f, 0) >= 3 for f in (1, 2, 3, 4, 6)), per_family


FAMILY_ALTERNATIVES = [
    ("sdedit_normal_and_every_z_up_front", "sdedit", '''
def sdedit(model, x_0, t_start, beta, generator=None):
    _, alpha_bar = alphas_from_betas(beta)
    zs = [torch.empty_like(x_0).normal_(generator=generator) for _ in range(t_start + 1)]
    noise = torch.empty_like(x_0).normal_(generator=generator)
    x = q_sample(x_0, torch.full((x_0.shape[0],), t_start, dtype=torch.long), alpha_bar, noise)
    for k, s in enumerate(range(t_start, -1, -1)):
        x = p_sample_step(model, x, s, beta, zs[k])
    return x
'''),
    ("p_sample_loop_no_grad_decorator", "p_sample_loop", '''
@torch.no_grad()
def p_sample_loop(model, x_T, beta, variance="beta", record_every=100, generator=None):
    T = len(beta)
    sigma2 = {"beta": beta, "beta_tilde": posterior_variance(beta), "none": torch.zeros_like(beta)}[variance]
    x, history = x_T, []
    for t in range(T - 1, -1, -1):
        z = torch.empty_like(x).normal_(generator=generator) if t > 0 else torch.zeros_like(x)
        x = p_sample_step(model, x, t, beta, torch.zeros_like(x)) + sigma2[t].sqrt() * z
        if t % record_every == 0:
            history.append(x.cpu().clone())
    return x, history
'''),
    ("ddim_sample_numpy_generator_seeded_from_torch", "ddim_sample", '''
def ddim_sample(model, x_T, alpha_bar, num_steps=50, eta=0.0, generator=None):
    rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
    T = alpha_bar.shape[0]
    taus = np.round(np.linspace(T - 1, 0, num_steps)).astype(int).tolist()
    x = x_T
    for i, t in enumerate(taus):
        t_prev = taus[i + 1] if i + 1 < len(taus) else -1
        z = torch.from_numpy(rng.standard_normal(tuple(x.shape))).to(x.dtype) if eta > 0 and t_prev >= 0 else None
        x = ddim_step(model, x, t, t_prev, alpha_bar, eta=eta, z=z)
    return x
'''),
]


@pytest.mark.parametrize("case", FAMILY_ALTERNATIVES, ids=[a[0] for a in FAMILY_ALTERNATIVES])
def test_family_correct_alternative_keeps_full_marks(case):
    _, gid, src = case
    run_check(gid, {gid: textwrap.dedent(src)})


# ------------------------------------------------------------------------------------------------
# Issue 15, family 8: a visible assert that fails first names the likely cause too
# ------------------------------------------------------------------------------------------------
HIDDEN_END = "### END " + "HIDDEN TESTS"
VISIBLE = [
    # mistake (MISTAKES), test cell, words of the visible message
    ("step_sigma_beta", "test_p_sample_step", "sigma_t = beta_t"),
    ("beta_tilde_wrapped_index", "test_posterior_variance", "wrapped index"),
    ("beta_tilde_with_alpha_bar_t", "test_posterior_variance", "alpha_bar[t] used where alpha_bar[t - 1] belongs"),
    ("ddim_alpha_bar_minus_one", "test_ddim_step", "LAST value"),
]


@pytest.mark.parametrize("case", VISIBLE, ids=[v[0] for v in VISIBLE])
def test_visible_assert_names_the_cause(case):
    from helpers.checks import VisibleTestFailed

    name, test_gid, words = case
    _, gid, src, _, _ = _case(name)
    ns = namespace({gid: src})
    with pytest.raises(VisibleTestFailed) as err:
        exec(compile(SOLUTION.cells[test_gid].split(HIDDEN_END, 1)[1], test_gid, "exec"), ns)  # noqa: S102
    assert "Likely cause" in str(err.value) and words in str(err.value), str(err.value)

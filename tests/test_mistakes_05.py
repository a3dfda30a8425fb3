"""The hidden tests of notebook 05_classifier_free_guidance catch the listed mistakes and accept
correct variants.

Two layers, as for notebook 04:

* direct tests (fast, a few seconds in all): the given cells and the answer cells of the solution
  notebook run in a namespace, one answer replaced, and the check of
  ``grading/checks/classifier_free_guidance.py`` is called;
* cell-runner tests (marked ``slow``; one kernel run each, 4 runs): through
  ``grading.runner.run_notebook`` exactly the test cells of the mistaken answers lose their points.

Mistakes from the issue: labels dropped with probability 1 - p; class 0 used as the null label; one
coin for the whole batch; the guidance sign reversed; the s = w convention ``eps_u + w (eps_c - eps_u)``;
the unconditional pass given the real labels; a sampling loop that never uses guidance.
Correct variants: one batched pass or two passes, ``torch.where`` or masks, ``torch.bernoulli``,
another order of random draws.
"""
from __future__ import annotations

import pytest

from grading.checks import classifier_free_guidance as checks
from notebook_support import SolutionNotebook, assert_fast_mode_within, assert_only_replaced_cells_fail, run_cells

ASSIGNMENT = "05_classifier_free_guidance"
ANSWERS = ("drop_labels", "guided_eps", "p_sample_loop_cfg")
NOTEBOOK = SolutionNotebook(
    ASSIGNMENT, checks, answers=ANSWERS, given=("given_earlier_weeks",), after=("given_ddim_cfg",),
    name="__notebook__",
    prelude="import math\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n")
NB = NOTEBOOK.path
patch = NOTEBOOK.mutate
namespace = NOTEBOOK.namespace
check_message = NOTEBOOK.check_message


def test_every_test_cell_calls_its_check():
    NOTEBOOK.assert_test_cells_call_checks()


@pytest.mark.parametrize("check", ANSWERS)
def test_solution_passes_check(check):
    assert check_message(check) is None


# ----------------------------------------------------------------------------------------------
# Mistakes: name -> (grade_id, old, new, words of the expected message)

GUIDED = "return (1 + w) * eps_cond - w * eps_uncond"
CALL = "eps = guided_eps(model, x, t_batch, y, w, null_label)"
MISTAKES = {
    "drop: probability 1 - p":
        ("drop_labels", "< p_uncond", "< 1 - p_uncond", "probability 1 - p_uncond"),
    "drop: class 0 as the null label":
        ("drop_labels", "torch.full_like(y, null_label)", "torch.zeros_like(y)", "class 0 is used as the null label"),
    "drop: one coin for the whole batch":
        ("drop_labels", "torch.rand(y.shape,", "torch.rand((1,),", "whole batch is dropped or kept together"),
    "drop: null label hard-coded":
        ("drop_labels", "torch.full_like(y, null_label)", "torch.full_like(y, 10)", "use the arguments"),
    "drop: p hard-coded":
        ("drop_labels", "< p_uncond", "< 0.1", "use the arguments"),
    "drop: y modified in place":
        ("drop_labels", "return torch.where(drop, torch.full_like(y, null_label), y)",
         "y[drop] = null_label\n    return y", "in place"),
    "guided: sign reversed":
        ("guided_eps", GUIDED, "return (1 + w) * eps_uncond - w * eps_cond", "sign is reversed"),
    "guided: s = w convention":
        ("guided_eps", GUIDED, "return eps_uncond + w * (eps_cond - eps_uncond)", "s = w convention"),
    "guided: unconditional pass with the real labels":
        ("guided_eps", "torch.cat([y, y_null])", "torch.cat([y, y])", "unconditional pass given the real labels"),
    "guided: label 0 as the null label":
        ("guided_eps", "y_null = torch.full_like(y, null_label)", "y_null = torch.zeros_like(y)", "used label 0"),
    "guided: null hard-coded as 10":
        ("guided_eps", "y_null = torch.full_like(y, null_label)", "y_null = torch.full_like(y, 10)",
         "null label is hard-coded"),
    "loop: never uses guidance":
        ("p_sample_loop_cfg", CALL, "eps = model(x, t_batch, y)", "never called with the null label"),
    "loop: guidance weight ignored":
        ("p_sample_loop_cfg", CALL, "eps = guided_eps(model, x, t_batch, y, 0.0, null_label)", "never uses guidance"),
    "loop: noise added at the last step":
        ("p_sample_loop_cfg", "if t > 0:", "if t >= 0:", "noise is added at the last step"),
    "loop: generator ignored":
        ("p_sample_loop_cfg", "gaussian_like(x, generator)", "gaussian_like(x)", "`generator` argument"),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_mistake_is_caught_with_its_cause(name):
    grade_id, old, new, words = MISTAKES[name]
    message = check_message(grade_id, {grade_id: patch(grade_id, old, new)})
    assert message is not None, f"the check {grade_id!r} passed the mistake: {name}"
    assert words in message, f"{name}: the message does not name the cause {words!r}:\n{message}"


@pytest.mark.parametrize("helper", ["guided: sign reversed", "guided: s = w convention"])
def test_mistake_in_guided_eps_is_not_penalised_twice(helper):
    """p_sample_loop_cfg is graded with a correct guided_eps, so a wrong guided_eps costs one cell."""
    gid, old, new, _ = MISTAKES[helper]
    assert check_message("p_sample_loop_cfg", {gid: patch(gid, old, new)}) is None


def test_check_leaves_the_students_guided_eps_in_place():
    ns = namespace()
    mine = ns["guided_eps"]
    checks.CHECKS["p_sample_loop_cfg"](ns)
    assert ns["guided_eps"] is mine


# ----------------------------------------------------------------------------------------------
# Correct variants must pass

CORRECT = {
    "drop: bernoulli mask and clone": ("drop_labels", '''
def drop_labels(y, p_uncond, null_label, generator=None):
    mask = torch.bernoulli(torch.full(y.shape, float(p_uncond)), generator=generator).bool()
    out = y.clone()
    out[mask] = null_label
    return out
'''),
    "drop: keep-coin above 1 - p, numpy of the draws": ("drop_labels", '''
def drop_labels(y, p_uncond, null_label, generator=None):
    u = torch.rand(len(y), generator=generator).numpy()
    keep = torch.from_numpy(u <= 1 - p_uncond)
    return y * keep + null_label * (~keep)
'''),
    "drop: loop over labels": ("drop_labels", '''
def drop_labels(y, p_uncond, null_label, generator=None):
    coins = torch.rand(y.shape[0], generator=generator)
    return torch.tensor([null_label if coins[i] < p_uncond else int(y[i]) for i in range(len(y))], dtype=y.dtype)
'''),
    "guided: two passes": ("guided_eps", '''
def guided_eps(model, x_t, t, y, w, null_label):
    eps_c = model(x_t, t, y)
    eps_u = model(x_t, t, torch.full_like(y, null_label))
    return eps_c + w * (eps_c - eps_u)
'''),
    "guided: batched with the null half first, torch.where labels": ("guided_eps", '''
def guided_eps(model, x_t, t, y, w, null_label):
    B = len(y)
    labels = torch.where(torch.arange(2 * B) < B, torch.full((2 * B,), null_label), y.repeat(2))
    e = model(x_t.repeat(2, 1, 1, 1), t.repeat(2), labels)
    e_u, e_c = e.chunk(2)
    return e_u + (1 + w) * (e_c - e_u)
'''),
    "loop: all noise drawn first, ddim-free posterior form": ("p_sample_loop_cfg", '''
def p_sample_loop_cfg(model, x_T, y, w, beta, null_label, generator=None):
    T = len(beta)
    zs = torch.randn((T,) + tuple(x_T.shape), generator=generator, dtype=x_T.dtype)
    alpha = 1 - beta
    ab = torch.cumprod(alpha, 0)
    x = x_T.clone()
    for t in range(T - 1, -1, -1):
        eps = guided_eps(model, x, torch.full((len(x),), t, dtype=torch.long), y, w, null_label)
        x = (x - (1 - alpha[t]) / (1 - ab[t]).sqrt() * eps) / alpha[t].sqrt()
        if t:
            x = x + beta[t].sqrt() * zs[t]
    return x
'''),
    "loop: inline guidance with two passes": ("p_sample_loop_cfg", '''
def p_sample_loop_cfg(model, x_T, y, w, beta, null_label, generator=None):
    alpha, alpha_bar = alphas_from_betas(beta)
    x = x_T
    null = torch.full_like(y, null_label)
    for t in reversed(range(len(beta))):
        tb = torch.full((len(x),), t, dtype=torch.long)
        eps = (1 + w) * model(x, tb, y) - w * model(x, tb, null)
        z = gaussian_like(x, generator) if t > 0 else None
        x = p_sample_step(lambda xx, tt: eps, x, t, beta, z)
    return x
'''),
}


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_variant_passes(name):
    grade_id, src = CORRECT[name]
    assert check_message(grade_id, {grade_id: src}) is None


# ----------------------------------------------------------------------------------------------
# Through the cell runner

TEST_CELLS = [f"test_{gid}" for gid in ANSWERS]
GROUPS = {
    "1 - p, sign reversed, no guidance": ["drop: probability 1 - p", "guided: sign reversed",
                                          "loop: never uses guidance"],
    "class 0, s = w": ["drop: class 0 as the null label", "guided: s = w convention"],
    "one coin, real labels unconditional": ["drop: one coin for the whole batch",
                                            "guided: unconditional pass with the real labels"],
}


def _run(replace=None):
    return run_cells(NB, replace=replace, stop_after=TEST_CELLS[-1], expect_cells=TEST_CELLS)


@pytest.mark.slow
def test_runner_solution_passes_every_test_cell():
    res, table = _run()
    assert all(r.passed for r in res.values()), table


@pytest.mark.slow
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_runner_mistakes_lose_points_in_their_cells(group):
    names = GROUPS[group]
    replace = {MISTAKES[n][0]: patch(*MISTAKES[n][:3]) for n in names}
    res, table = _run(replace)
    assert_only_replaced_cells_fail(res, ANSWERS, replace, table)


@pytest.mark.slow
def test_fast_mode_runs_top_to_bottom_within_90_s():
    """nbval in fast mode (slow cells included, as nbgrader runs them): no error, at most 90 s."""
    assert_fast_mode_within(NB, budget_s=90)


def test_guided_eps_shortcuts_for_w_0_and_minus_1_are_accepted():
    src = '''
def guided_eps(model, x_t, t, y, w, null_label):
    if w == 0:
        return model(x_t, t, y)
    y_null = torch.full_like(y, null_label)
    if w == -1:
        return model(x_t, t, y_null)
    return (1 + w) * model(x_t, t, y) - w * model(x_t, t, y_null)
'''
    assert check_message("guided_eps", {"guided_eps": src}) is None

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
Issue 15 adds the families of mistakes that kept full marks (``FAMILY_MISTAKES``, keyed by family:
1 generator discipline, 2 inputs left alone, 3 arguments rather than globals or defaults, 4 result
types, 6 per-step sampler variance) and correct variants that must keep full marks
(``FAMILY_CORRECT``); ``VISIBLE`` holds mistakes whose visible assert must name the cause (family 8).
The two loop variants of ``CORRECT`` now run their model calls under ``torch.no_grad()``: a sampler's
result carries no autograd graph.
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
        with torch.no_grad():  # (issue 15: a sampler's result carries no autograd graph)
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
        with torch.no_grad():  # (issue 15: a sampler's result carries no autograd graph)
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
# Issue 15: the families of mistakes that kept full marks. (family, name) -> (grade_id, edits, words)

DROP, GUIDED_FN, LOOP = "drop_labels", "guided_eps", "p_sample_loop_cfg"
COINS = "drop = torch.rand(y.shape, generator=generator, device=dev).to(y.device) < p_uncond"
STEP = "                x = x + torch.sqrt(beta[t]) * gaussian_like(x, generator)"
FAMILY_MISTAKES = {
    # 1. generator discipline
    ("1", "drop: torch.rand_like, no generator"):
        (DROP, [(COINS, "drop = torch.rand_like(y, dtype=torch.float) < p_uncond")], "global random state changed"),
    ("1", "drop: global seed from the generator"):
        (DROP, [(COINS, "torch.manual_seed(generator.initial_seed() if generator is not None else 0)\n"
                        "    drop = torch.rand(y.shape) < p_uncond")], "global random state changed"),
    ("1", "drop: a private generator seeded from the given one"):
        (DROP, [(COINS, "g = torch.Generator().manual_seed(generator.initial_seed())\n"
                        "    drop = torch.rand(y.shape, generator=g) < p_uncond")], "continue the generator's stream"),
    ("1", "loop: the generator reseeded in place"):
        (LOOP, [("    x = x_T\n", "    x = x_T\n    if generator is not None:\n        generator.manual_seed(generator.initial_seed())\n")],
         "continue the generator's stream"),
    ("1", "loop: torch.randn_like"):
        (LOOP, [("gaussian_like(x, generator)", "torch.randn_like(x)")], "global random state changed"),
    # 2. inputs left alone
    ("2", "drop: labels replaced in place"):
        (DROP, [("return torch.where(drop, torch.full_like(y, null_label), y)", "y[drop] = null_label\n    return y.clone()")],
         "changed its input `y` in place"),
    ("2", "guided: x_t scaled in place for the batched pass"):
        (GUIDED_FN, [("eps = model(torch.cat([x_t, x_t]),", "x_t.mul_(1.0).add_(0.0 * x_t)\n    x_t[0] += 1e-3\n    eps = model(torch.cat([x_t - 1e-3 * (torch.arange(B) == 0).view(-1, 1, 1, 1), x_t - 1e-3 * (torch.arange(B) == 0).view(-1, 1, 1, 1)]),")],
         "changed its input `x_t` in place"),
    ("2", "loop: x_T updated in place"):
        (LOOP, [("            x = (x - beta[t] / torch.sqrt(1 - alpha_bar[t]) * eps) / torch.sqrt(alpha[t])\n",
                 "            x -= beta[t] / torch.sqrt(1 - alpha_bar[t]) * eps\n            x /= torch.sqrt(alpha[t])\n")],
         "changed its input `x_T` in place"),
    ("2", "guided: labels overwritten with the null label and restored"):
        (GUIDED_FN, [("    y_null = torch.full_like(y, null_label)  # (B,)\n",
                      "    y_real = y.clone()\n    y_null = y.fill_(null_label).clone()\n    y_c = y_real\n"),
                     ("torch.cat([y, y_null])", "torch.cat([y_c, y_null])")], "changed its input `y` in place"),
    # 3. arguments, not globals or defaults
    ("3", "drop: the notebook's NULL_LABEL"):
        (DROP, [("torch.full_like(y, null_label)", "torch.full_like(y, NULL_LABEL)")], "notebook's globals"),
    ("3", "drop: the notebook's P_UNCOND"):
        (DROP, [("< p_uncond  #", "< P_UNCOND  #")], "notebook's globals"),
    ("3", "guided: the notebook's NULL_LABEL"):
        (GUIDED_FN, [("y_null = torch.full_like(y, null_label)", "y_null = torch.full_like(y, NULL_LABEL)")],
         "NULL_LABEL"),
    ("3", "loop: the notebook's global T"):
        (LOOP, [("    T = beta.shape[0]\n", "")], "notebook's globals"),
    ("3", "loop: the notebook's NULL_LABEL"):
        (LOOP, [("eps = guided_eps(model, x, t_batch, y, w, null_label)", "eps = guided_eps(model, x, t_batch, y, w, NULL_LABEL)")],
         "null_label"),
    ("3", "loop: the notebook's global alpha_bar"):
        (LOOP, [("    alpha, alpha_bar = alphas_from_betas(beta)  # (T,), (T,)\n", "    alpha = 1 - beta\n")], "notebook's"),
    # 4. result types
    ("4", "drop: float mask arithmetic"):
        (DROP, [("return torch.where(drop, torch.full_like(y, null_label), y)", "return y * (~drop) + null_label * drop.float()")],
         "labels must stay torch.long"),
    ("4", "drop: torch.where with a float fill value"):
        (DROP, [("return torch.where(drop, torch.full_like(y, null_label), y)", "return torch.where(drop, float(null_label), y.float())")],
         "labels must stay torch.long"),
    ("4", "guided: weights as a float64 tensor"):
        (GUIDED_FN, [("return (1 + w) * eps_cond - w * eps_uncond",
                      "wt = torch.tensor([1 + w, -w], dtype=torch.float64).view(2, 1, 1, 1, 1)\n"
                      "    return (wt * torch.stack([eps_cond, eps_uncond])).sum(0)")], "float64 leak"),
    ("4", "loop: no torch.no_grad"):
        (LOOP, [("    with torch.no_grad():\n        for t in reversed(range(T)):", "    if True:\n        for t in reversed(range(T)):")],
         "autograd graph"),
    ("4", "loop: noise drawn in float64"):
        (LOOP, [("gaussian_like(x, generator)", "torch.randn(x.shape, generator=generator, dtype=torch.float64)")],
         "float64 leak"),
    # 6. the variance of every step
    ("6", "loop: posterior variance beta_tilde"):
        (LOOP, [(STEP, "                var = beta[t] * (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t])\n"
                       "                x = x + torch.sqrt(var) * gaussian_like(x, generator)")], "beta_tilde"),
    ("6", "loop: sigma_t^2 = beta[t - 1]"):
        (LOOP, [(STEP, STEP.replace("torch.sqrt(beta[t])", "torch.sqrt(beta[t - 1])"))], "variance beta_t"),
    ("6", "loop: sigma_t^2 = beta_t (1 - alpha_bar[t - 1])"):
        (LOOP, [(STEP, STEP.replace("torch.sqrt(beta[t])", "torch.sqrt(beta[t] * (1 - alpha_bar[t - 1]))"))], "variance"),
}



@pytest.mark.parametrize("key", sorted(FAMILY_MISTAKES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_family_mistake_is_caught_with_its_cause(key):
    grade_id, edits, words = FAMILY_MISTAKES[key]
    NOTEBOOK.assert_caught(grade_id, edits, words, key)


FAMILY_CORRECT = {
    "drop: torch.bernoulli with the generator, torch.where": (DROP, '''
def drop_labels(y, p_uncond, null_label, generator=None):
    coins = torch.bernoulli(torch.full(y.shape, float(p_uncond), dtype=torch.float64), generator=generator)
    return torch.where(coins.bool(), torch.tensor(null_label, dtype=y.dtype), y)
'''),
    "drop: Tensor.uniform_ with the generator, NumPy inside": (DROP, '''
def drop_labels(y, p_uncond, null_label, generator=None):
    u = torch.empty(len(y), dtype=torch.float64).uniform_(0, 1, generator=generator).numpy()
    out = np.where(u < p_uncond, null_label, y.numpy())
    return torch.from_numpy(out).to(y.dtype)
'''),
    "guided: torch.lerp": (GUIDED_FN, '''
def guided_eps(model, x_t, t, y, w, null_label):
    e_c = model(x_t, t, y)
    e_u = model(x_t, t, torch.full_like(y, null_label))
    return torch.lerp(e_u, e_c, 1 + w)
'''),
    "loop: float64 inside then cast back, Tensor.normal_": (LOOP, '''
def p_sample_loop_cfg(model, x_T, y, w, beta, null_label, generator=None):
    b = beta.double()
    ab = torch.cumprod(1 - b, 0)
    x = x_T.double()
    with torch.no_grad():
        for t in reversed(range(len(b))):
            tb = torch.full((len(x),), t, dtype=torch.long)
            eps = guided_eps(model, x.to(x_T.dtype), tb, y, w, null_label).double()
            x = (x - b[t] / (1 - ab[t]).sqrt() * eps) / (1 - b[t]).sqrt()
            if t > 0:
                x = x + b[t].sqrt() * torch.empty_like(x).normal_(generator=generator)
    return x.to(x_T.dtype)
'''),
}


@pytest.mark.parametrize("name", sorted(FAMILY_CORRECT))
def test_family_correct_variant_keeps_full_marks(name):
    grade_id, src = FAMILY_CORRECT[name]
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
    "issue 15: float labels, float64 weights, beta_tilde": [("4", "drop: float mask arithmetic"),
                                                           ("4", "guided: weights as a float64 tensor"),
                                                           ("6", "loop: posterior variance beta_tilde")],
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
    replace = {}
    for n in names:
        if isinstance(n, tuple):
            gid, edits, _ = FAMILY_MISTAKES[n]
            replace[gid] = NOTEBOOK.source(gid, edits)
        else:
            replace[MISTAKES[n][0]] = patch(*MISTAKES[n][:3])
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


# ----------------------------------------------------------------------------------------------
# Issue 15, family 8: the visible asserts name the likely cause when they fail first

from visible_asserts import visible_message  # noqa: E402

VISIBLE = {
    "drop: 1 - p": ("drop_labels", MISTAKES["drop: probability 1 - p"][1:3], "probability 1 - p_uncond"),
    "drop: class 0": ("drop_labels", MISTAKES["drop: class 0 as the null label"][1:3], "class 0 is a real digit"),
    "drop: float labels": ("drop_labels", ("return torch.where(drop, torch.full_like(y, null_label), y)",
                                           "return torch.where(drop, float(null_label), y.float())"), "torch.long"),
    "drop: in place": ("drop_labels", ("return torch.where(drop, torch.full_like(y, null_label), y)",
                                       "y[drop] = null_label\n    return y.clone()"), "changed its input y"),
    "guided: s = w": ("guided_eps", MISTAKES["guided: s = w convention"][1:3], "s = w convention"),
    "guided: sign reversed": ("guided_eps", MISTAKES["guided: sign reversed"][1:3], "sign is reversed"),
    "guided: real labels unconditional": ("guided_eps", MISTAKES["guided: unconditional pass with the real labels"][1:3],
                                          "got the real labels"),
    "loop: noise at the last step": ("p_sample_loop_cfg", MISTAKES["loop: noise added at the last step"][1:3],
                                     "noise is added at the last step"),
}


def test_visible_asserts_of_the_solution_pass():
    for gid in ANSWERS:
        assert visible_message(NOTEBOOK, f"test_{gid}") is None, gid


@pytest.mark.parametrize("name", sorted(VISIBLE))
def test_visible_assert_names_the_cause(name):
    gid, (old, new), words = VISIBLE[name]
    message = visible_message(NOTEBOOK, f"test_{gid}", {gid: patch(gid, old, new)})
    assert message is not None and words in message, f"{name}: {message}"


def test_a_float64_guided_eps_costs_only_its_own_cell():
    gid, edits, _ = FAMILY_MISTAKES[("4", "guided: weights as a float64 tensor")]
    assert check_message("p_sample_loop_cfg", {gid: NOTEBOOK.source(gid, edits)}) is None


@pytest.mark.parametrize("key", [("2", "guided: x_t scaled in place for the batched pass"),
                                 ("2", "guided: labels overwritten with the null label and restored")])
def test_guided_eps_changing_its_inputs_costs_only_its_own_cell(key):
    gid, edits, _ = FAMILY_MISTAKES[key]
    assert check_message("p_sample_loop_cfg", {gid: NOTEBOOK.source(gid, edits)}) is None

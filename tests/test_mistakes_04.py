"""The hidden tests of notebook 04_conditional catch the listed mistakes and accept correct variants.

Two layers:

* direct tests (fast, a few seconds in all): the given cell and the answer cells of the solution
  notebook are executed in a namespace, one answer replaced by a mistaken (or a different but correct)
  version, and the check of ``grading/checks/conditional.py`` is called; a mistake must fail with a
  message naming its likely cause, a correct variant must pass;
* cell-runner tests (marked ``slow``; one kernel run each, about 10 s on an idle CPU, 5 runs): the
  notebook runs through ``grading.runner.run_notebook`` with mistaken answer cells, and exactly the test
  cells of the mistaken answers must lose their points.

Mistakes from the issue: GroupNorm with its own affine parameters left on; ``* scale + shift`` without
the ``1 +``; no normalization at all; one condition shared by the whole batch; the label ignored or
replaced in the loss; every sample drawn with the first label; noise added at the last step.
Correct variants: one linear layer split in two or two linear layers, raw parameters and a hand-made
group norm, another order of random draws, ``p_sample_step`` reused through a wrapper.
Issue 15 adds the families of mistakes that kept full marks (``FAMILY_MISTAKES``, keyed by family:
1 generator discipline, 2 inputs left alone, 3 arguments rather than globals or defaults, 4 result
types, 6 per-step sampler variance) and correct variants that must keep full marks
(``FAMILY_CORRECT``); ``VISIBLE`` holds mistakes whose visible assert must name the cause (family 8).
The sampler with the posterior variance beta_tilde, a correct variant before, is now a mistake: the
notebook's sampler uses sigma_t^2 = beta_t at every step.
"""
from __future__ import annotations

import pytest

from grading.checks import conditional as checks
from notebook_support import SolutionNotebook, assert_fast_mode_within, assert_only_replaced_cells_fail, run_cells

ASSIGNMENT = "04_conditional"
ANSWERS = ("AdaptiveGroupNorm", "conditional_ddpm_loss", "p_sample_loop_conditional", "sample_digit",
           "sample_grid")
NOTEBOOK = SolutionNotebook(
    ASSIGNMENT, checks, answers=ANSWERS, given=("given_earlier_weeks",), name="__notebook__",
    prelude="import math\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n")
NB = NOTEBOOK.path
patch = NOTEBOOK.mutate
namespace = NOTEBOOK.namespace
check_message = NOTEBOOK.check_message


# ----------------------------------------------------------------------------------------------
# Structure: every answer has a test cell calling its check; the solution passes every check


def test_every_test_cell_calls_its_check():
    NOTEBOOK.assert_test_cells_call_checks()


@pytest.mark.parametrize("check", ANSWERS)
def test_solution_passes_check(check):
    assert check_message(check) is None


# ----------------------------------------------------------------------------------------------
# Mistakes: name -> (grade_id, old, new, words of the expected message)

FORWARD = "return self.norm(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]"
MISTAKES = {
    "AdaGN: GroupNorm affine left on":
        ("AdaptiveGroupNorm", "nn.GroupNorm(num_groups, num_channels, affine=False)",
         "nn.GroupNorm(num_groups, num_channels)", "own learnable weight and bias"),
    "AdaGN: * scale + shift without 1 +":
        ("AdaptiveGroupNorm", FORWARD,
         "return self.norm(h) * scale[:, :, None, None] + shift[:, :, None, None]", "without the `1 +`"),
    "AdaGN: no normalization":
        ("AdaptiveGroupNorm", FORWARD,
         "return h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]", "normalisation) step is missing"),
    "AdaGN: first condition for the whole batch":
        ("AdaptiveGroupNorm", "self.proj(cond).chunk(2, dim=1)", "self.proj(cond[:1]).chunk(2, dim=1)",
         "shared by the whole batch"),
    "AdaGN: mean condition for the whole batch":
        ("AdaptiveGroupNorm", "self.proj(cond).chunk(2, dim=1)",
         "self.proj(cond.mean(0, keepdim=True)).chunk(2, dim=1)", "shared by the whole batch"),
    "AdaGN: num_groups ignored":
        ("AdaptiveGroupNorm", "nn.GroupNorm(num_groups, num_channels, affine=False)",
         "nn.GroupNorm(1, num_channels, affine=False)", "pass num_groups on"),
    "AdaGN: activation before the linear map":
        ("AdaptiveGroupNorm", "self.proj(cond).chunk(2, dim=1)", "self.proj(F.silu(cond)).chunk(2, dim=1)",
         "affine function of cond"),
    "loss: label ignored":
        ("conditional_ddpm_loss", "model(x_t, t, y)", "model(x_t, t)", "without the labels"),
    "loss: label replaced by zeros":
        ("conditional_ddpm_loss", "model(x_t, t, y)", "model(x_t, t, torch.zeros_like(y))", "instead of y"),
    "loss: sum instead of mean":
        ("conditional_ddpm_loss", "F.mse_loss(eps_pred, noise)", "F.mse_loss(eps_pred, noise, reduction='sum')",
         "sum of the squared errors"),
    "sampler: every sample with the first label":
        ("p_sample_loop_conditional", "eps = model(x, t_batch, y)",
         "eps = model(x, t_batch, y[:1].expand(x.shape[0]))", "first label"),
    "sampler: noise added at the last step":
        ("p_sample_loop_conditional", "if t > 0:", "if t >= 0:", "noise is added at the last step"),
    "sampler: no noise at all":
        ("p_sample_loop_conditional", "if t > 0:", "if t < 0:", "no (or too little) noise"),
    "sampler: generator ignored":
        ("p_sample_loop_conditional", "gaussian_like(x, generator)", "gaussian_like(x)", "`generator` argument"),
    "sampler: x_T modified in place":
        ("p_sample_loop_conditional", "    x = x_T\n", "    x = x_T\n    x.mul_(1.0)\n    x += 0\n", None),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_mistake_is_caught_with_its_cause(name):
    grade_id, old, new, words = MISTAKES[name]
    message = check_message(grade_id, {grade_id: patch(grade_id, old, new)})
    if words is None:  # a harmless in-place no-op: must still pass
        assert message is None, message
        return
    assert message is not None, f"the check {grade_id!r} passed the mistake: {name}"
    assert words in message, f"{name}: the message does not name the cause {words!r}:\n{message}"


def test_in_place_change_of_x_T_is_caught():
    src = patch("p_sample_loop_conditional", "    x = x_T\n", "    x = x_T\n    x.zero_()\n")
    message = check_message("p_sample_loop_conditional", {"p_sample_loop_conditional": src})
    assert message is not None and "in place" in message, message


# ----------------------------------------------------------------------------------------------
# Correct variants must pass

CORRECT = {
    "AdaGN: two linear layers, shift first": ("AdaptiveGroupNorm", '''
class AdaptiveGroupNorm(nn.Module):
    def __init__(self, num_channels, cond_dim, num_groups=1):
        super().__init__()
        self.gn = nn.GroupNorm(num_groups, num_channels, affine=False)
        self.to_shift = nn.Linear(cond_dim, num_channels)
        self.to_scale = nn.Linear(cond_dim, num_channels)

    def forward(self, h, cond):
        n = self.gn(h)
        return n + n * self.to_scale(cond)[..., None, None] + self.to_shift(cond).unsqueeze(-1).unsqueeze(-1)
'''),
    "AdaGN: raw parameters, hand-made group norm, shift/scale order swapped": ("AdaptiveGroupNorm", '''
class AdaptiveGroupNorm(nn.Module):
    def __init__(self, num_channels, cond_dim, num_groups=1):
        super().__init__()
        self.G, self.C = num_groups, num_channels
        self.W = nn.Parameter(torch.zeros(cond_dim, 2 * num_channels))
        self.b = nn.Parameter(torch.zeros(2 * num_channels))

    def forward(self, h, cond):
        B, C, H, W = h.shape
        g = h.reshape(B, self.G, -1)
        n = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5)).reshape(B, C, H, W)
        shift, scale = (cond @ self.W + self.b).view(B, 2, C, 1, 1).unbind(1)
        return n * (1 + scale) + shift
'''),
    "AdaGN: F.group_norm, einsum, loop over the batch": ("AdaptiveGroupNorm", '''
class AdaptiveGroupNorm(nn.Module):
    def __init__(self, num_channels, cond_dim, num_groups=1):
        super().__init__()
        self.num_groups = num_groups
        self.lin = nn.Linear(cond_dim, 2 * num_channels, bias=True)

    def forward(self, h, cond):
        out = []
        for i in range(h.shape[0]):
            n = F.group_norm(h[i:i + 1], self.num_groups)
            ss = torch.einsum("d,cd->c", cond[i], self.lin.weight) + self.lin.bias
            scale, shift = ss[: h.shape[1]], ss[h.shape[1]:]
            out.append(n * (1 + scale.view(1, -1, 1, 1)) + shift.view(1, -1, 1, 1))
        return torch.cat(out)
'''),
    "loss: by hand, float64 inside": ("conditional_ddpm_loss", '''
def conditional_ddpm_loss(model, x_0, y, t, noise, alpha_bar):
    ab = alpha_bar.double()[t].view(-1, 1, 1, 1)
    x_t = (ab.sqrt() * x_0.double() + (1 - ab).sqrt() * noise.double()).to(x_0.dtype)
    return ((noise - model(x_t, t, y=y)) ** 2).mean()
'''),
    "sampler: all noise drawn first, p_sample_step through a wrapper": ("p_sample_loop_conditional", '''
def p_sample_loop_conditional(model, x_T, y, beta, generator=None):
    T = len(beta)
    zs = [gaussian_like(x_T, generator) for _ in range(T)]
    x = x_T.clone()
    for t in range(T - 1, -1, -1):
        x = p_sample_step(lambda xx, tt: model(xx, tt, y), x, t, beta, zs[t] if t > 0 else None)
    return x
'''),
}


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_variant_passes(name):
    grade_id, src = CORRECT[name]
    assert check_message(grade_id, {grade_id: src}) is None


# ----------------------------------------------------------------------------------------------
# Issue 15: the families of mistakes that kept full marks. (family, name) -> (grade_id, edits, words)

LOOP = "p_sample_loop_conditional"
LOSS = "conditional_ddpm_loss"
ADAGN = "AdaptiveGroupNorm"
POSTERIOR_TILDE = '''
def p_sample_loop_conditional(model, x_T, y, beta, generator=None):
    alpha = 1 - beta
    ab = torch.cumprod(alpha, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    x = x_T
    with torch.no_grad():
        for t in reversed(range(len(beta))):
            eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long), y)
            x0 = (x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
            mean = (ab_prev[t].sqrt() * beta[t] / (1 - ab[t])) * x0 + (alpha[t].sqrt() * (1 - ab_prev[t]) / (1 - ab[t])) * x
            var = beta[t] * (1 - ab_prev[t]) / (1 - ab[t])
            x = mean + (var.sqrt() * torch.randn(x.shape, generator=generator, dtype=x.dtype) if t > 0 else 0)
    return x
'''
FAMILY_MISTAKES = {
    # 1. generator discipline
    ("1", "sampler: global seed from the generator, randn_like"):
        (LOOP, [("    x = x_T\n", "    x = x_T\n    if generator is not None:\n        torch.manual_seed(generator.initial_seed())\n"),
                ("gaussian_like(x, generator)", "torch.randn_like(x)")], "global random state changed"),
    ("1", "sampler: a private generator seeded from the given one"):
        (LOOP, [("    x = x_T\n", "    x = x_T\n    g = torch.Generator().manual_seed(generator.initial_seed()) if generator is not None else None\n"),
                ("gaussian_like(x, generator)", "gaussian_like(x, g)")], "continue the generator's stream"),
    ("1", "sampler: the generator reseeded in place"):
        (LOOP, [("    x = x_T\n", "    x = x_T\n    if generator is not None:\n        generator.manual_seed(generator.initial_seed())\n")],
         "continue the generator's stream"),
    ("1", "loss: draws its own noise"):
        (LOSS, [("x_t = q_sample(x_0, t, alpha_bar, noise)", "x_t = q_sample(x_0, t, alpha_bar, torch.randn_like(x_0))")],
         "should draw no random numbers"),
    # 2. inputs left alone
    ("2", "sampler: x_T updated in place"):
        (LOOP, [("            x = (x - beta[t] / torch.sqrt(1 - alpha_bar[t]) * eps) / torch.sqrt(alpha[t])\n",
                 "            x -= beta[t] / torch.sqrt(1 - alpha_bar[t]) * eps\n            x /= torch.sqrt(alpha[t])\n")],
         "changed its input `x_T` in place"),
    ("2", "loss: x_t built in place on x_0"):
        (LOSS, [("x_t = q_sample(x_0, t, alpha_bar, noise)",
                 "ab = alpha_bar[t].reshape(-1, 1, 1, 1).to(x_0.dtype)\n    x_t = x_0.mul_(ab.sqrt()).add_((1 - ab).sqrt() * noise)")],
         "changed its input `x_0` in place"),
    ("2", "AdaGN: hand-made normalisation in place on h"):
        (ADAGN, [("return self.norm(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]",
                  "g = h.view(h.shape[0], self.norm.num_groups, -1)\n"
                  "        g.sub_(g.mean(-1, keepdim=True)).div_(g.var(-1, unbiased=False, keepdim=True).add(1e-5).sqrt())\n"
                  "        return h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]")],
         "changed its input `h` in place"),
    # 3. arguments, not globals or defaults
    ("3", "sampler: the notebook's global T"):
        (LOOP, [("    T = beta.shape[0]\n", "")], "notebook's globals"),
    ("3", "sampler: T hard-coded"):
        (LOOP, [("    T = beta.shape[0]\n", "    T = 1000\n")], "hard-coded"),
    ("3", "sampler: the notebook's global alpha_bar"):
        (LOOP, [("    alpha, alpha_bar = alphas_from_betas(beta)  # (T,), (T,)\n", "    alpha = 1 - beta\n")],
         "notebook's"),
    ("3", "loss: the notebook's global alpha_bar"):
        (LOSS, [("x_t = q_sample(x_0, t, alpha_bar, noise)", "x_t = q_sample(x_0, t, globals()['alpha_bar'], noise)")],
         "notebook's globals"),
    # 4. result types
    ("4", "sampler: no torch.no_grad"):
        (LOOP, [("    with torch.no_grad():\n        for t in reversed(range(T)):", "    if True:\n        for t in reversed(range(T)):")],
         "autograd graph"),
    ("4", "sampler: noise drawn in float64"):
        (LOOP, [("gaussian_like(x, generator)", "torch.randn(x.shape, generator=generator, dtype=torch.float64)")],
         "float64 leak"),
    ("4", "sampler: float64 inside, never cast back"):
        (LOOP, [("    x = x_T\n", "    x = x_T.double()\n    beta = beta.double()\n    alpha, alpha_bar = alphas_from_betas(beta)\n")],
         "float64 leak"),
    ("4", "loss: computed in float64"):
        (LOSS, [("return F.mse_loss(eps_pred, noise)", "return F.mse_loss(eps_pred.double(), noise.double())")],
         "float64 leak"),
    # 6. the variance of every step
    ("6", "sampler: posterior variance beta_tilde"): (LOOP, POSTERIOR_TILDE, "beta_tilde"),
    ("6", "sampler: sigma_t^2 = beta[t - 1]"):
        (LOOP, [("x = x + torch.sqrt(beta[t]) * gaussian_like(x, generator)",
                 "x = x + torch.sqrt(beta[t - 1]) * gaussian_like(x, generator)")], "variance beta_t"),
    ("6", "sampler: sigma_t = sqrt(1 - alpha_bar[t - 1]) sqrt(beta[t])"):
        (LOOP, [("x = x + torch.sqrt(beta[t]) * gaussian_like(x, generator)",
                 "x = x + torch.sqrt(beta[t] * (1 - alpha_bar[t - 1])) * gaussian_like(x, generator)")], "variance"),
}



@pytest.mark.parametrize("key", sorted(FAMILY_MISTAKES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_family_mistake_is_caught_with_its_cause(key):
    grade_id, edits, words = FAMILY_MISTAKES[key]
    NOTEBOOK.assert_caught(grade_id, edits, words, key)


FAMILY_CORRECT = {
    "sampler: float64 inside, cast back; Tensor.normal_ with the generator": (LOOP, '''
def p_sample_loop_conditional(model, x_T, y, beta, generator=None):
    b = beta.double()
    a = 1 - b
    ab = torch.cumprod(a, 0)
    x = x_T.double()
    with torch.no_grad():
        for t in range(len(b) - 1, -1, -1):
            eps = model(x.to(x_T.dtype), torch.full((len(x),), t, dtype=torch.long), y).double()
            x = (x - b[t] / (1 - ab[t]).sqrt() * eps) / a[t].sqrt()
            if t > 0:
                x = x + b[t].sqrt() * torch.empty(x.shape, dtype=torch.float64).normal_(generator=generator)
    return x.to(x_T.dtype)
'''),
    "sampler: NumPy coefficients, all noise drawn first in reverse order": (LOOP, '''
def p_sample_loop_conditional(model, x_T, y, beta, generator=None):
    b = beta.detach().cpu().double().numpy()
    ab = np.cumprod(1 - b)
    c1, c2, sd = 1 / np.sqrt(1 - b), b / np.sqrt(1 - ab), np.sqrt(b)
    T = len(b)
    zs = [torch.randn(x_T.shape, generator=generator, dtype=x_T.dtype) for _ in range(T)][::-1]
    x = x_T.clone()
    for t in reversed(range(T)):
        with torch.no_grad():
            eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long), y)
        x = float(c1[t]) * (x - float(c2[t]) * eps)
        if t:
            x = x + float(sd[t]) * zs[t]
    return x
'''),
    "loss: NumPy coefficients": (LOSS, '''
def conditional_ddpm_loss(model, x_0, y, t, noise, alpha_bar):
    ab = alpha_bar.detach().cpu().double().numpy()[t.cpu().numpy()]
    sa = torch.from_numpy(np.sqrt(ab)).to(x_0.dtype).view(-1, 1, 1, 1)
    s1 = torch.from_numpy(np.sqrt(1 - ab)).to(x_0.dtype).view(-1, 1, 1, 1)
    return (model(sa * x_0 + s1 * noise, t, y) - noise).pow(2).mean()
'''),
    "AdaGN: torch.addcmul, two chunks by indexing": (ADAGN, '''
class AdaptiveGroupNorm(nn.Module):
    def __init__(self, num_channels, cond_dim, num_groups=1):
        super().__init__()
        self.num_channels = num_channels
        self.gn = nn.GroupNorm(num_groups, num_channels, affine=False)
        self.lin = nn.Linear(cond_dim, 2 * num_channels)

    def forward(self, h, cond):
        ss = self.lin(cond)[:, :, None, None]
        C = self.num_channels
        return torch.addcmul(ss[:, C:], self.gn(h), 1 + ss[:, :C])
'''),
}


@pytest.mark.parametrize("name", sorted(FAMILY_CORRECT))
def test_family_correct_variant_keeps_full_marks(name):
    grade_id, src = FAMILY_CORRECT[name]
    assert check_message(grade_id, {grade_id: src}) is None


# ----------------------------------------------------------------------------------------------
# Through the cell runner (a kernel, like nbgrader): the right cells lose their points

TEST_CELLS = [f"test_{gid}" for gid in ANSWERS]
GROUPS = {
    "affine, label ignored, first label": ["AdaGN: GroupNorm affine left on", "loss: label ignored",
                                           "sampler: every sample with the first label"],
    "no 1 +, label replaced, noise at the last step": ["AdaGN: * scale + shift without 1 +",
                                                       "loss: label replaced by zeros",
                                                       "sampler: noise added at the last step"],
    "no normalization": ["AdaGN: no normalization"],
    "issue 15: in place on h, float64 loss, beta_tilde": [("2", "AdaGN: hand-made normalisation in place on h"),
                                                         ("4", "loss: computed in float64"),
                                                         ("6", "sampler: posterior variance beta_tilde")],
    "one condition for the batch": ["AdaGN: first condition for the whole batch"],
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


# ----------------------------------------------------------------------------------------------
# Issue 15, family 8: the visible asserts name the likely cause when they fail first

from visible_asserts import visible_message  # noqa: E402

VISIBLE_PRELUDE = "from helpers.models import UNetConditional\n"
VISIBLE = {
    "AdaGN: without the 1 +": ("AdaptiveGroupNorm", MISTAKES["AdaGN: * scale + shift without 1 +"][1:3], "without the `1 +`"),
    "AdaGN: no normalisation": ("AdaptiveGroupNorm", MISTAKES["AdaGN: no normalization"][1:3], "normalisation is missing"),
    "AdaGN: one group per channel": ("AdaptiveGroupNorm", ("nn.GroupNorm(num_groups, num_channels, affine=False)",
                                                           "nn.GroupNorm(num_channels, num_channels, affine=False)"),
                                     "one group per channel"),
    "loss: sum": ("conditional_ddpm_loss", MISTAKES["loss: sum instead of mean"][1:3], "sum of the squared errors"),
    "loss: alpha_bar without the square root": ("conditional_ddpm_loss", ("x_t = q_sample(x_0, t, alpha_bar, noise)",
        "ab = alpha_bar[t].view(-1, 1, 1, 1)\n    x_t = ab * x_0 + (1 - ab) * noise"), "square root"),
    "loss: labels replaced by zeros": ("conditional_ddpm_loss", MISTAKES["loss: label replaced by zeros"][1:3], "labels y are not passed"),
    "loss: x_0 as the target": ("conditional_ddpm_loss", ("return F.mse_loss(eps_pred, noise)", "return F.mse_loss(eps_pred, x_0)"),
                                "target is x_0"),
    "sampler: first label": ("p_sample_loop_conditional", MISTAKES["sampler: every sample with the first label"][1:3], "first label"),
    "sampler: noise at the last step": ("p_sample_loop_conditional", MISTAKES["sampler: noise added at the last step"][1:3],
                                        "noise is added at the last step"),
}


def test_visible_asserts_of_the_solution_pass():
    for gid in ANSWERS:
        assert visible_message(NOTEBOOK, f"test_{gid}", prelude=VISIBLE_PRELUDE) is None, gid


@pytest.mark.parametrize("name", sorted(VISIBLE))
def test_visible_assert_names_the_cause(name):
    gid, (old, new), words = VISIBLE[name]
    message = visible_message(NOTEBOOK, f"test_{gid}", {gid: patch(gid, old, new)}, prelude=VISIBLE_PRELUDE)
    assert message is not None and words in message, f"{name}: {message}"

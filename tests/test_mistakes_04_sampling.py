"""The hidden tests of notebook 04's two sampling answers, ``sample_digit`` and ``sample_grid``,
catch the listed mistakes and accept correct variants (direct tests: the solution's cells executed
in a namespace, one answer replaced, the trusted check called through the probe's local mode).

Mistakes: the digit hard-coded to 3; labels as floats or a Python list; labels in .repeat order
(0, 1, ..., 9, 0, 1, ...); every example its own x_T; x_T repeated along each row; x_T from
torch.rand or zeros; the generator not passed on to the loop; the global generator reseeded inside;
a generator made inside from a fixed seed; the grid returning the samples only; a wrong loop in
Question 3, which must cost its own cell and not these two.
Correct variants: x_T from torch.randn with the generator on the CPU, then moved; the labels built
with torch.full_like or a list comprehension; sample_grid through sample_digit-like loops per
column; the grid's labels made with torch.repeat_interleave on a CPU tensor.
"""
from __future__ import annotations

import pytest

from grading.checks import conditional as checks
from notebook_support import SolutionNotebook

NOTEBOOK = SolutionNotebook(
    "04_conditional", checks,
    answers=("AdaptiveGroupNorm", "conditional_ddpm_loss", "p_sample_loop_conditional", "sample_digit",
             "sample_grid"),
    given=("given_earlier_weeks",), name="__notebook__",
    prelude="import math\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n")
patch = NOTEBOOK.mutate
check_message = NOTEBOOK.check_message

DRAW_DIGIT = "x_T = gaussian_like(torch.empty(n, 1, 32, 32, device=beta.device), generator)"
LABELS_DIGIT = "y = torch.full((n,), int(digit), dtype=torch.long, device=beta.device)"
CALL_DIGIT = "return p_sample_loop_conditional(model, x_T, y, beta, generator=generator)"
DRAW_GRID = "x_cols = gaussian_like(torch.empty(n_per_class, 1, 32, 32, device=beta.device), generator)"
REPEAT_GRID = "x_T = x_cols.repeat(10, 1, 1, 1)"
LABELS_GRID = "y = torch.arange(10, device=beta.device).repeat_interleave(n_per_class)"
RETURN_GRID = "return p_sample_loop_conditional(model, x_T, y, beta, generator=generator), y"

MISTAKES = {
    "digit hard-coded to 3":
        ("sample_digit", LABELS_DIGIT, "y = torch.full((n,), 3, dtype=torch.long, device=beta.device)",
         "hard-coded to 3"),
    "float labels":
        ("sample_digit", LABELS_DIGIT, "y = torch.full((n,), float(digit), device=beta.device)", "torch.long"),
    "x_T from torch.rand":
        ("sample_digit", DRAW_DIGIT, "x_T = torch.rand(n, 1, 32, 32, generator=generator, device=beta.device)",
         "torch.randn"),
    "x_T zeros":
        ("sample_digit", DRAW_DIGIT, "x_T = torch.zeros(n, 1, 32, 32, device=beta.device)", "torch.randn"),
    "generator not passed on":
        ("sample_digit", CALL_DIGIT, "return p_sample_loop_conditional(model, x_T, y, beta)", "global random state"),
    "global seed inside":
        ("sample_digit", DRAW_DIGIT, "torch.manual_seed(0)\n    " + DRAW_DIGIT, "global random state"),
    "fixed generator inside":
        ("sample_digit", DRAW_DIGIT, "generator = torch.Generator().manual_seed(0)\n    " + DRAW_DIGIT,
         "same samples"),
    "grid: labels in repeat order":
        ("sample_grid", LABELS_GRID, "y = torch.arange(10, device=beta.device).repeat(n_per_class)",
         "repeat_interleave"),
    "grid: every example its own x_T":
        ("sample_grid", REPEAT_GRID,
         "x_T = gaussian_like(torch.empty(10 * n_per_class, 1, 32, 32, device=beta.device), generator)",
         "every example draws its own x_T"),
    "grid: x_T repeated along rows":
        ("sample_grid", REPEAT_GRID, "x_T = x_cols.repeat_interleave(10, dim=0)", "in another order: repeat_interleave"),
    "grid: samples only":
        ("sample_grid", RETURN_GRID, "return p_sample_loop_conditional(model, x_T, y, beta, generator=generator)",
         "pair (x_0, y)"),
    "grid: float labels returned":
        ("sample_grid", RETURN_GRID, "return p_sample_loop_conditional(model, x_T, y, beta, generator=generator), "
         "y.float()", "torch.long"),
    "grid: reseeds its generator":
        ("sample_grid", DRAW_GRID, "generator.manual_seed(0)\n    " + DRAW_GRID, "do not reseed it"),
}


@pytest.mark.parametrize("check", ["sample_digit", "sample_grid"])
def test_solution_passes(check):
    assert check_message(check) is None


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_mistake_is_caught_with_its_cause(name):
    gid, old, new, words = MISTAKES[name]
    msg = check_message(gid, {gid: patch(gid, old, new)})
    assert msg is not None, f"{name}: passed the hidden tests"
    assert words in msg, f"{name}: {msg}"


VARIANTS = {
    "digit: randn on the CPU generator, moved":
        ("sample_digit", DRAW_DIGIT,
         "x_T = torch.randn(n, 1, 32, 32, generator=generator).to(beta.device)"),
    "digit: labels from a list":
        ("sample_digit", LABELS_DIGIT, "y = torch.tensor([digit] * n).to(beta.device)"),
    "grid: per-column loop of draws":
        ("sample_grid", DRAW_GRID,
         "x_cols = torch.cat([gaussian_like(torch.empty(1, 1, 32, 32, device=beta.device), generator) "
         "for _ in range(n_per_class)])"),
    "grid: labels on the CPU, by comprehension":
        ("sample_grid", LABELS_GRID, "y = torch.tensor([k for k in range(10) for _ in range(n_per_class)])"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_correct_variant_keeps_full_marks(name):
    gid, old, new = VARIANTS[name]
    assert check_message(gid, {gid: patch(gid, old, new)}) is None


WRONG_LOOPS = {
    "noise at the last step": ("if t > 0:", "if t >= 0:"),
    "every sample with the first label": ("eps = model(x, t_batch, y)",
                                          "eps = model(x, t_batch, y[:1].expand(x.shape[0]))"),
    "labels dropped": ("eps = model(x, t_batch, y)", "eps = model(x, t_batch, torch.zeros_like(y))"),
}


@pytest.mark.parametrize("name", sorted(WRONG_LOOPS))
def test_a_wrong_loop_costs_its_own_cell_only(name):
    """A mistaken p_sample_loop_conditional fails its own check; the two samplers that call it keep
    their points (judged on what they hand the loop: labels, x_T, the generator)."""
    wrong = {"p_sample_loop_conditional": patch("p_sample_loop_conditional", *WRONG_LOOPS[name])}
    assert check_message("p_sample_loop_conditional", wrong) is not None
    assert check_message("sample_digit", wrong) is None
    assert check_message("sample_grid", wrong) is None

"""The hidden tests of notebook 06_score_matching catch the listed mistakes and accept correct variants.

Two layers:

* direct tests (fast, a few seconds in all): the answer cells of the solution notebook are executed
  in a namespace, one of them replaced by a mistaken (or a different but correct) version, and the
  check of ``grading/checks/score_matching.py`` is called; a mistake must fail with a message that
  names its likely cause, a correct variant must pass;
* cell-runner tests (marked ``slow``; about 15-20 s per notebook run on an idle CPU, 4 runs): the
  notebook runs in a kernel through ``grading.runner.run_notebook`` with mistaken answer cells, and
  the test cells must lose their points (and only those).

Mistakes come from the issue: linspace instead of a geometric ladder, or an ascending one; the mean
or the squared distance instead of the largest distance; levels counted by spacing sigma linearly;
the score not divided by sigma, or divided by sigma squared; the loss target with the wrong sign,
without the sigma**2 weighting, or averaged over pixels; the step size proportional to sigma, or
normalised by the largest sigma; the 2019 update (alpha / 2, sqrt(alpha)); the final denoising step
missing; gamma inverted in technique 4; inpainting whose known pixels are not re-noised at each level
or do not equal x_known at the end.
Issue 15 adds the families of mistakes that kept full marks (``FAMILY_MISTAKES``, keyed by family:
1 generator discipline, 2 inputs left alone, 3 arguments rather than globals or defaults, 4 result
types, 7 inpainting's known pixels at every Langevin step and exactly x_known at the end) and correct
variants that must keep full marks (``FAMILY_CORRECT``); ``VISIBLE`` holds mistakes whose visible
assert must name the cause (family 8).
"""
from __future__ import annotations

import nbformat
import pytest

from grading import cells
from grading.checks import score_matching as checks
from notebook_support import SolutionNotebook, assert_every_cell_passes, run_cells

ANSWERS = ("score", "dsm_loss", "max_pairwise_distance", "num_noise_levels", "geometric_sigmas",
           "langevin_step_size", "choose_step_size", "annealed_langevin", "inpaint")
TEST_CELLS = tuple(f"test_{name}" for name in ANSWERS)
NOTEBOOK = SolutionNotebook(
    "06_score_matching", checks, answers=ANSWERS, given=("given_technique4_ratio",),
    prelude=("import math\nimport numpy as np\nimport torch\nfrom scipy.optimize import minimize_scalar\n"
             "from scipy.stats import norm\n"))
NB = NOTEBOOK.path
patch = NOTEBOOK.mutate
body = NOTEBOOK.body
namespace = NOTEBOOK.namespace
check_message = NOTEBOOK.check_message


# ----------------------------------------------------------------------------------------------
# The solution and the reference pass every check; every test cell has a check
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("check", sorted(checks.CHECKS))
def test_solution_passes_check(check):
    assert check_message(check) is None


@pytest.mark.parametrize("check", sorted(checks.CHECKS))
def test_reference_passes_check(check):
    from grading.reference import score_matching as ref
    checks.CHECKS[check](dict(vars(ref)))


def test_every_test_cell_has_a_check():
    nb = nbformat.read(NB, as_version=4)
    hidden = {}
    for cell in nb.cells:
        if cells.is_test(cell):
            hidden[cells.grade_id(cell)] = cell.source
    assert sorted(hidden) == sorted(TEST_CELLS)
    for gid, src in hidden.items():
        assert f'gradeprobe.run("06_score_matching", "{gid[5:]}", globals())' in src, gid
        assert gid[5:] in checks.CHECKS


# ----------------------------------------------------------------------------------------------
# Mistakes: (answer cell, mistaken source, check, words the message must contain)
# ----------------------------------------------------------------------------------------------
MISTAKES = {
    "geometric_sigmas: linspace": (
        "geometric_sigmas", lambda: body("geometric_sigmas", "return torch.linspace(sigma_max, sigma_min, L)"),
        "geometric_sigmas", "linspace"),
    "geometric_sigmas: ascending": (
        "geometric_sigmas", lambda: patch("geometric_sigmas", "torch.linspace(math.log(sigma_max), math.log(sigma_min)",
                                          "torch.linspace(math.log(sigma_min), math.log(sigma_max)"),
        "geometric_sigmas", "ascending"),
    "max_pairwise_distance: mean": (
        "max_pairwise_distance", lambda: body("max_pairwise_distance", """
flat = x.reshape(x.shape[0], -1).to(torch.float64)
d = torch.cdist(flat, flat)
iu = torch.triu_indices(len(flat), len(flat), offset=1)
return float(d[iu[0], iu[1]].mean())"""),
        "max_pairwise_distance", "mean"),
    "max_pairwise_distance: squared": (
        "max_pairwise_distance", lambda: patch("max_pairwise_distance", "return math.sqrt(max(best, 0.0))",
                                               "return max(best, 0.0)"),
        "max_pairwise_distance", "SQUARED"),
    "num_noise_levels: linear spacing": (
        "num_noise_levels", lambda: patch(
            "num_noise_levels",
            "return max(2, 1 + math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma) - 1e-9))",
            "return max(2, 1 + math.ceil((sigma_max - sigma_min) / ((gamma - 1) * sigma_min)))"),
        "num_noise_levels", "LINEAR"),
    "num_noise_levels: rounded down": (
        "num_noise_levels", lambda: patch("num_noise_levels", "1 + math.ceil(", "1 + math.floor("),
        "num_noise_levels", "SMALLEST"),
    "score: not divided": (
        "score", lambda: patch("score", "return net(x) / sigma.reshape(-1, *([1] * (x.dim() - 1)))", "return net(x)"),
        "score", "not divided"),
    "score: divided by sigma squared": (
        "score", lambda: patch("score", "return net(x) / sigma.reshape(-1, *([1] * (x.dim() - 1)))",
                               "return net(x) / sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2"),
        "score", "sigma**2"),
    "dsm_loss: wrong sign": (
        "dsm_loss", lambda: patch("dsm_loss", "residual = s * score(net, x_tilde, sigma) + noise",
                                  "residual = s * score(net, x_tilde, sigma) - noise"),
        "dsm_loss", "wrong sign"),
    "dsm_loss: no sigma**2 weighting": (
        "dsm_loss", lambda: patch("dsm_loss", "residual = s * score(net, x_tilde, sigma) + noise",
                                  "residual = score(net, x_tilde, sigma) + noise / s"),
        "dsm_loss", "weighting"),
    "dsm_loss: averaged over pixels": (
        "dsm_loss", lambda: patch("dsm_loss", "0.5 * residual.pow(2).flatten(1).sum(dim=1).mean()",
                                  "0.5 * residual.pow(2).mean()"),
        "dsm_loss", "averaged over pixels"),
    "langevin_step_size: proportional to sigma": (
        "langevin_step_size", lambda: patch("langevin_step_size", "float(sigma) ** 2 / float(sigma_min) ** 2",
                                            "float(sigma) / float(sigma_min)"),
        "langevin_step_size", "proportional to sigma"),
    "annealed_langevin: step proportional to sigma": (
        "annealed_langevin", lambda: patch("annealed_langevin", "alpha = langevin_step_size(eps, sigma, sigma_min)",
                                           "alpha = eps * sigma / sigma_min"),
        "annealed_langevin", "grows with sigma instead of sigma**2"),
    "annealed_langevin: normalised by the largest sigma": (
        "annealed_langevin", lambda: patch("annealed_langevin", "alpha = langevin_step_size(eps, sigma, sigma_min)",
                                           "alpha = langevin_step_size(eps, sigma, float(sigmas[0]))"),
        "annealed_langevin", "LARGEST sigma"),
    "annealed_langevin: 2019 update": (
        "annealed_langevin", lambda: patch("annealed_langevin",
                                           "x = x + alpha * score(net, x, sigma) + math.sqrt(2 * alpha) * z",
                                           "x = x + alpha / 2 * score(net, x, sigma) + math.sqrt(alpha) * z"),
        "annealed_langevin", "2019 update"),
    "annealed_langevin: no final denoising step": (
        "annealed_langevin", lambda: patch("annealed_langevin",
                                           "            x = x + sigma_min ** 2 * score(net, x, sigma_min)\n",
                                           "            pass\n"),
        "annealed_langevin", "final denoising step is missing"),
    "choose_step_size: gamma inverted": (
        "choose_step_size", lambda: patch("choose_step_size", "gamma = float(sigmas[0]) / float(sigmas[1])",
                                          "gamma = float(sigmas[1]) / float(sigmas[0])"),
        "choose_step_size", "gamma is inverted"),
    "inpaint: known pixels not re-noised": (
        "inpaint", lambda: patch("inpaint", "y = x_known + sigma * noise()", "y = x_known"),
        "inpaint", "re-noised"),
    "inpaint: noised once, not at each level": (
        "inpaint", lambda: patch("inpaint", "y = x_known + sigma * noise()", "y = x_known + float(sigmas[0]) * noise()"),
        "inpaint", "EACH level"),
    "inpaint: known pixels not x_known at the end": (
        "inpaint", lambda: patch("inpaint", "        x = m * x_known + (1 - m) * x\n    return x",
                                 "    return x"),
        "inpaint", "equal x_known"),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_mistake_is_caught_with_its_cause(name):
    grade_id, source, check, words = MISTAKES[name]
    message = check_message(check, {grade_id: source()})
    assert message is not None, f"the check {check!r} accepted the mistake {name!r}"
    assert words in message, f"{name}: the message should say {words!r}, got:\n{message}"


# ----------------------------------------------------------------------------------------------
# Correct variants must pass
# ----------------------------------------------------------------------------------------------
CORRECT = {
    "geometric_sigmas: np.geomspace in float64": ("geometric_sigmas", lambda: body("geometric_sigmas", """
return torch.from_numpy(np.geomspace(sigma_max, sigma_min, L))""")),
    "max_pairwise_distance: cdist in chunks": ("max_pairwise_distance", lambda: body("max_pairwise_distance", """
flat = x.flatten(1).double()
best = 0.0
for i in range(0, len(flat), 7):
    best = max(best, torch.cdist(flat[i:i + 7], flat).max().item())
return best""")),
    "max_pairwise_distance: scipy pdist": ("max_pairwise_distance", lambda: body("max_pairwise_distance", """
from scipy.spatial.distance import pdist
return float(pdist(x.reshape(len(x), -1).double().numpy()).max())""")),
    "num_noise_levels: brentq and a counting loop": ("num_noise_levels", lambda: body("num_noise_levels", """
from scipy.optimize import brentq
f = lambda g: norm.cdf(math.sqrt(2 * D) * (g - 1) + 3 * g) - norm.cdf(math.sqrt(2 * D) * (g - 1) - 3 * g) - 0.5
gamma = brentq(f, 1.0 + 1e-9, 10.0)
L = 2
while (sigma_max / sigma_min) ** (1 / (L - 1)) > gamma:
    L += 1
return L""")),
    "score: view and float branch": ("score", lambda: body("score", """
if not torch.is_tensor(sigma):
    return net(x) / sigma
return net(x) / sigma.view(-1, 1, 1, 1)""")),
    "dsm_loss: the NCSN form with target and weight": ("dsm_loss", lambda: body("dsm_loss", """
s = sigma.view(-1, 1, 1, 1)
x_tilde = x + s * noise
target = -(x_tilde - x) / s ** 2
per_example = 0.5 * ((score(net, x_tilde, sigma) - target) ** 2).sum(dim=(1, 2, 3)) * sigma ** 2
return per_example.mean()""")),
    "langevin_step_size: squared ratio": ("langevin_step_size", lambda: body("langevin_step_size", """
return eps * (sigma / sigma_min) ** 2""")),
    "choose_step_size: coarse log grid": ("choose_step_size", lambda: body("choose_step_size", """
sL2 = float(sigmas[-1]) ** 2
gamma = float(sigmas[0] / sigmas[1])
eps = np.logspace(np.log10(sL2) - 8, np.log10(sL2) - 1e-6, 3000)
return float(eps[np.argmin(np.abs(technique4_ratio(eps, math.sqrt(sL2), gamma, n_steps_each) - 1))])""")),
    "annealed_langevin: all noise drawn first, index loop": ("annealed_langevin", lambda: body("annealed_langevin", """
L = len(sigmas)
z_all = torch.randn((L, n_steps_each) + tuple(x.shape), generator=generator)
x = x.clone()
with torch.no_grad():
    for i in range(L):
        a = eps * (sigmas[i] / sigmas[-1]) ** 2
        for t in range(n_steps_each):
            x = x + a * score(net, x, sigmas[i]) + torch.sqrt(2 * a) * z_all[i, t]
    if denoise:
        x = x + sigmas[-1] ** 2 * score(net, x, sigmas[-1])
return x""")),
    "inpaint: fresh noise each step, final denoise, uniform start": ("inpaint", lambda: body("inpaint", """
m = mask.expand_as(x_known).float()
x = torch.rand(x_known.shape, generator=generator)
sL = float(sigmas[-1])
for sigma in sigmas.tolist():
    a = eps * sigma ** 2 / sL ** 2
    for _ in range(n_steps_each):
        x = x + a * score(net, x, sigma) + math.sqrt(2 * a) * torch.randn(x.shape, generator=generator)
        x = m * (x_known + sigma * torch.randn(x.shape, generator=generator)) + (1 - m) * x
x = x + sL ** 2 * score(net, x, sL)
return torch.where(m.bool(), x_known, x.detach())""")),
}


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_variant_passes(name):
    grade_id, source = CORRECT[name]
    message = check_message(grade_id, {grade_id: source()})
    assert message is None, f"{name} should pass, got:\n{message}"


@pytest.mark.parametrize("helper,mistake", [("score", "score: divided by sigma squared"),
                                            ("score", "score: not divided"),
                                            ("langevin_step_size", "langevin_step_size: proportional to sigma")])
def test_mistake_in_a_helper_is_not_penalised_twice(helper, mistake):
    grade_id, source, _, _ = MISTAKES[mistake]
    for check in ("dsm_loss", "annealed_langevin", "inpaint"):
        assert check_message(check, {grade_id: source()}) is None, f"{mistake} also cost {check}"


def test_annealed_langevin_ignoring_the_generator_fails():
    src = patch("annealed_langevin", "torch.randn(x.shape, generator=generator,", "torch.randn(x.shape,")
    message = check_message("annealed_langevin", {"annealed_langevin": src})
    assert message is not None and "generator" in message


# ----------------------------------------------------------------------------------------------
# Issue 15: the families of mistakes that kept full marks. (family, name) -> (grade_id, edits, words)
# ----------------------------------------------------------------------------------------------
AL_Z = "z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)"
AL_STEP = "x = x + alpha * score(net, x, sigma) + math.sqrt(2 * alpha) * z"
IN_NOISE = "return torch.randn(x_known.shape, generator=generator, device=x_known.device, dtype=x_known.dtype)"
IN_STEP = ("                x = x + alpha * score(net, x, sigma) + math.sqrt(2 * alpha) * noise()\n"
           "                x = m * y + (1 - m) * x\n")
FAMILY_MISTAKES = {
    # 1. generator discipline
    ("1", "annealed_langevin: torch.randn_like"):
        ("annealed_langevin", [(AL_Z, "z = torch.randn_like(x)")], "global random state changed"),
    ("1", "annealed_langevin: global seed from the generator"):
        ("annealed_langevin", [("    sigma_min = float(sigmas[-1])\n",
                                "    sigma_min = float(sigmas[-1])\n    if generator is not None:\n"
                                "        torch.manual_seed(generator.initial_seed())\n"),
                               (AL_Z, "z = torch.randn(x.shape, dtype=x.dtype)")], "global random state changed"),
    ("1", "inpaint: a private generator seeded from the given one"):
        ("inpaint", [(IN_NOISE, "return torch.randn(x_known.shape, generator=g, dtype=x_known.dtype)"),
                     ("    sigma_min = float(sigmas[-1])\n",
                      "    sigma_min = float(sigmas[-1])\n    g = torch.Generator().manual_seed(generator.initial_seed())\n")],
         "continue the generator's stream"),
    ("1", "inpaint: torch.randn_like"):
        ("inpaint", [(IN_NOISE, "return torch.randn_like(x_known)")], "global random state changed"),
    # 2. inputs left alone
    ("2", "annealed_langevin: x updated in place"):
        ("annealed_langevin", [(AL_STEP, "x += alpha * score(net, x, sigma) + math.sqrt(2 * alpha) * z")],
         "changed its input `x` in place"),
    ("2", "inpaint: the start written into x_known"):
        ("inpaint", [("        x = m * x_known + (1 - m) * float(sigmas[0]) * noise()  # (B, C, H, W)\n",
                      "        x = x_known\n        x[m == 0] = (float(sigmas[0]) * noise())[m == 0]\n")],
         "changed its input `x_known` in place"),
    ("2", "dsm_loss: the noisy input built in place"):
        ("dsm_loss", [("x_tilde = x + s * noise", "x_tilde = x.add_(s * noise)")], "changed its input `x` in place"),
    ("2", "score: sigma reshaped in place"):
        ("score", [("return net(x) / sigma.reshape(-1, *([1] * (x.dim() - 1)))",
                    "return net(x) / sigma.clamp_(min=0.6).reshape(-1, *([1] * (x.dim() - 1)))")],
         "changed its input `sigma` in place"),
    # 3. arguments, not globals or defaults
    ("3", "annealed_langevin: the notebook's SIGMA_MIN"):
        ("annealed_langevin", [("    sigma_min = float(sigmas[-1])\n", "    sigma_min = float(SIGMA_MIN)\n")], "SIGMA_MIN"),
    ("3", "annealed_langevin: the notebook's N_STEPS_EACH"):
        ("annealed_langevin", [("for _ in range(n_steps_each):", "for _ in range(N_STEPS_EACH):")], "N_STEPS_EACH"),
    ("3", "annealed_langevin: the notebook's EPS"):
        ("annealed_langevin", [("alpha = langevin_step_size(eps, sigma, sigma_min)", "alpha = langevin_step_size(EPS, sigma, sigma_min)")],
         "notebook's EPS"),
    ("3", "inpaint: the notebook's N_STEPS_EACH"):
        ("inpaint", [("for _ in range(n_steps_each):", "for _ in range(N_STEPS_EACH):")], "n_steps_each"),
    ("3", "choose_step_size: the notebook's N_STEPS_EACH"):
        ("choose_step_size", [("T = int(n_steps_each)", "T = int(N_STEPS_EACH)")], "N_STEPS_EACH"),
    # 4. result types
    ("4", "score: sigma as float64"):
        ("score", [("sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)",
                    "sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)")], "float64 leak"),
    ("4", "annealed_langevin: no torch.no_grad"):
        ("annealed_langevin", [("    with torch.no_grad():\n        for sigma in sigmas:", "    if True:\n        for sigma in sigmas:")],
         "autograd graph"),
    ("4", "annealed_langevin: noise drawn in float64"):
        ("annealed_langevin", [(AL_Z, "z = torch.randn(x.shape, generator=generator, dtype=torch.float64)")], "float64 leak"),
    ("4", "inpaint: the mask in float64"):
        ("inpaint", [("m = torch.broadcast_to(mask.to(x_known), x_known.shape)", "m = torch.broadcast_to(mask.double(), x_known.shape)")],
         "float64 leak"),
    ("4", "inpaint: no torch.no_grad"):
        ("inpaint", [("    with torch.no_grad():\n        x = m * x_known", "    if True:\n        x = m * x_known")], "autograd graph"),
    ("4", "dsm_loss: the loss in float64"):
        ("dsm_loss", [("return 0.5 * residual.pow(2).flatten(1).sum(dim=1).mean()",
                       "return 0.5 * residual.double().pow(2).flatten(1).sum(dim=1).mean()")], "float64 leak"),
    # 7. inpainting: the known pixels after every step, x_known exactly at the end
    ("7", "inpaint: known pixels replaced once per level, not after each step"):
        ("inpaint", [(IN_STEP, "                x = x + alpha * score(net, x, sigma) + math.sqrt(2 * alpha) * noise()\n")],
         "not after every Langevin step"),
    ("7", "inpaint: known pixels noised with sigma squared"):
        ("inpaint", [("y = x_known + sigma * noise()", "y = x_known + sigma ** 2 * noise()")], "sigma_i * z"),
    ("7", "inpaint: the noisy known pixels returned"):
        ("inpaint", [("        x = m * x_known + (1 - m) * x\n    return x", "        x = m * y + (1 - m) * x\n    return x")],
         "equal x_known exactly"),
    ("7", "inpaint: known pixels noised with the square root of sigma"):
        ("inpaint", [("y = x_known + sigma * noise()", "y = x_known + math.sqrt(sigma) * noise()")], "sigma_i * z"),
    ("7", "inpaint: known pixels replaced before each step only"):
        ("inpaint", [(IN_STEP, "                x = m * (x_known + sigma * noise()) + (1 - m) * x\n"
                               "                x = x + alpha * score(net, x, sigma) + math.sqrt(2 * alpha) * noise()\n"),
                     ("        x = m * x_known + (1 - m) * x\n    return x", "    return x")],
         "equal x_known exactly"),
}



@pytest.mark.parametrize("key", sorted(FAMILY_MISTAKES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_family_mistake_is_caught_with_its_cause(key):
    grade_id, edits, words = FAMILY_MISTAKES[key]
    NOTEBOOK.assert_caught(grade_id, edits, words, key)


FAMILY_CORRECT = {
    "inpaint: torch.where, Tensor.normal_, fresh known-pixel noise every step": ("inpaint", lambda: body("inpaint", """
known = torch.broadcast_to(mask, x_known.shape).bool()
sL = float(sigmas[-1])
x = torch.where(known, x_known, torch.empty_like(x_known).normal_(generator=generator) * float(sigmas[0]))
with torch.no_grad():
    for sigma in sigmas.tolist():
        a = eps * (sigma / sL) ** 2
        for _ in range(n_steps_each):
            z = torch.empty_like(x).normal_(generator=generator)
            x = x + a * score(net, x, sigma) + (2 * a) ** 0.5 * z
            x = torch.where(known, x_known + sigma * torch.empty_like(x).normal_(generator=generator), x)
return torch.where(known, x_known, x)""")),
    "inpaint: torch.lerp with the mask, known pixels replaced before the steps too": ("inpaint", lambda: body("inpaint", """
m = mask.to(x_known.dtype).expand_as(x_known)
sL = float(sigmas[-1])
x = sigmas[0] * torch.randn(x_known.shape, generator=generator, dtype=x_known.dtype)
with torch.no_grad():
    for i in range(len(sigmas)):
        sigma = float(sigmas[i])
        y = x_known + sigma * torch.randn(x_known.shape, generator=generator, dtype=x_known.dtype)
        x = torch.lerp(x, y, m)
        for _ in range(n_steps_each):
            x = x + langevin_step_size(eps, sigma, sL) * score(net, x, sigma) \\
                + math.sqrt(2 * langevin_step_size(eps, sigma, sL)) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = torch.lerp(x, y, m)
return torch.lerp(x, x_known, m)""")),
    "annealed_langevin: float64 inside then cast back": ("annealed_langevin", lambda: body("annealed_langevin", """
sL = float(sigmas[-1])
y = x.double()
with torch.no_grad():
    for s in sigmas.double():
        a = eps * float(s) ** 2 / sL ** 2
        for _ in range(n_steps_each):
            y = y + a * score(net, y.to(x.dtype), float(s)).double() \\
                + math.sqrt(2 * a) * torch.randn(y.shape, generator=generator, dtype=torch.float64)
    if denoise:
        y = y + sL ** 2 * score(net, y.to(x.dtype), sL).double()
return y.to(x.dtype)""")),
    "score: NumPy for sigma": ("score", lambda: body("score", """
s = np.broadcast_to(np.asarray(sigma, dtype=np.float64).reshape(-1), (x.shape[0],))
return net(x) / torch.from_numpy(s.copy()).to(x.dtype).view(-1, 1, 1, 1)""")),
    "dsm_loss: float64 inside then cast back": ("dsm_loss", lambda: body("dsm_loss", """
s = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0]).reshape(-1, 1, 1, 1)
x_tilde = (x.double() + s * noise.double()).to(x.dtype)
r = s * score(net, x_tilde, sigma).double() + noise.double()
return (0.5 * (r ** 2).sum(dim=(1, 2, 3)).mean()).to(x.dtype)""")),
}


@pytest.mark.parametrize("name", sorted(FAMILY_CORRECT))
def test_family_correct_variant_keeps_full_marks(name):
    grade_id, source = FAMILY_CORRECT[name]
    message = check_message(grade_id, {grade_id: source()})
    assert message is None, f"{name} should pass, got:\n{message}"


# ----------------------------------------------------------------------------------------------
# Cell runner: the notebook in a kernel, mistaken answer cells lose the points of their own cell
# ----------------------------------------------------------------------------------------------
def _run(replace=None):
    return run_cells(NB, replace=replace)[0]


@pytest.mark.slow
def test_runner_solution_passes_every_test_cell():
    assert_every_cell_passes(_run(), TEST_CELLS, max_points=15)


def _runner_case(names, must_pass=()):
    replace = {}
    for n in names:
        grade_id, source, _, _ = MISTAKES[n]
        assert grade_id not in replace, "one mistake per answer cell in a runner case"
        replace[grade_id] = source()
    res = _run(replace)
    for n in names:
        cell = "test_" + MISTAKES[n][2]
        assert not res[cell].passed and res[cell].points == 0, f"{n}: {cell} kept its points"
    for cell in must_pass:
        assert res[cell].passed, f"{cell} lost points: {res[cell].message}"
    return res


@pytest.mark.slow
def test_runner_mistakes_in_every_cell():
    _runner_case(["geometric_sigmas: ascending", "max_pairwise_distance: squared", "num_noise_levels: linear spacing",
                  "score: divided by sigma squared", "dsm_loss: wrong sign", "langevin_step_size: proportional to sigma",
                  "choose_step_size: gamma inverted", "annealed_langevin: 2019 update",
                  "inpaint: known pixels not re-noised"])


@pytest.mark.slow
def test_runner_second_set_of_mistakes():
    _runner_case(["geometric_sigmas: linspace", "max_pairwise_distance: mean", "dsm_loss: averaged over pixels",
                  "annealed_langevin: no final denoising step", "inpaint: known pixels not x_known at the end"],
                 must_pass=["test_score", "test_langevin_step_size", "test_num_noise_levels", "test_choose_step_size"])


@pytest.mark.slow
def test_runner_helper_mistakes_cost_only_their_cell():
    _runner_case(["score: divided by sigma squared", "langevin_step_size: proportional to sigma"],
                 must_pass=["test_dsm_loss", "test_annealed_langevin", "test_inpaint", "test_choose_step_size"])


# ----------------------------------------------------------------------------------------------
# Issue 15, family 8: the visible asserts name the likely cause when they fail first

from visible_asserts import visible_message  # noqa: E402

VISIBLE = {
    "score: not divided": ("score", MISTAKES["score: not divided"][1], "not divided by sigma"),
    "score: sigma squared": ("score", MISTAKES["score: divided by sigma squared"][1], "divided by sigma**2"),
    "score: float64": ("score", lambda: patch("score", "sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)",
                                              "sigma = torch.as_tensor(sigma, dtype=torch.float64)"), "float64"),
    "dsm_loss: over pixels": ("dsm_loss", MISTAKES["dsm_loss: averaged over pixels"][1], "averaged over pixels"),
    "dsm_loss: no weighting": ("dsm_loss", MISTAKES["dsm_loss: no sigma**2 weighting"][1], "weighting is missing"),
    "max_pairwise_distance: squared": ("max_pairwise_distance", MISTAKES["max_pairwise_distance: squared"][1], "SQUARED"),
    "max_pairwise_distance: mean": ("max_pairwise_distance", MISTAKES["max_pairwise_distance: mean"][1], "mean distance"),
    "num_noise_levels: rounded down": ("num_noise_levels", MISTAKES["num_noise_levels: rounded down"][1], "round up"),
    "geometric_sigmas: ascending": ("geometric_sigmas", MISTAKES["geometric_sigmas: ascending"][1], "ascending"),
    "langevin_step_size: proportional to sigma": ("langevin_step_size", MISTAKES["langevin_step_size: proportional to sigma"][1],
                                                  "proportional to sigma"),
    "choose_step_size: gamma inverted": ("choose_step_size", MISTAKES["choose_step_size: gamma inverted"][1], "gamma is inverted"),
    "annealed_langevin: in place": ("annealed_langevin", lambda: patch(
        "annealed_langevin", "x = x + alpha * score(net, x, sigma) + math.sqrt(2 * alpha) * z",
        "x += alpha * score(net, x, sigma) + math.sqrt(2 * alpha) * z"), "in place"),
    "annealed_langevin: randn_like": ("annealed_langevin", lambda: patch(
        "annealed_langevin", "z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)",
        "z = torch.randn_like(x)"), "generator="),
    "inpaint: not x_known at the end": ("inpaint", MISTAKES["inpaint: known pixels not x_known at the end"][1], "put x_known back"),
}


def test_visible_asserts_of_the_solution_pass():
    for gid in ANSWERS:
        assert visible_message(NOTEBOOK, f"test_{gid}") is None, gid


@pytest.mark.parametrize("name", sorted(VISIBLE))
def test_visible_assert_names_the_cause(name):
    gid, source, words = VISIBLE[name]
    message = visible_message(NOTEBOOK, f"test_{gid}", {gid: source()})
    assert message is not None and words in message, f"{name}: {message}"


@pytest.mark.slow
def test_runner_family_mistakes_lose_the_points_of_their_cells():
    """Issue 15 through the cell runner: a float64 score, sampling that keeps the autograd graph and
    known pixels replaced once per level lose their own cells' points, and only those."""
    keys = [("4", "score: sigma as float64"), ("4", "annealed_langevin: no torch.no_grad"),
            ("7", "inpaint: known pixels replaced once per level, not after each step")]
    replace = {FAMILY_MISTAKES[k][0]: NOTEBOOK.source(FAMILY_MISTAKES[k][0], FAMILY_MISTAKES[k][1]) for k in keys}
    res = _run(replace)
    for gid in ANSWERS:
        cell = f"test_{gid}"
        if gid in replace:
            assert not res[cell].passed and res[cell].points == 0, f"{cell} kept its points"
        else:
            assert res[cell].passed, f"{cell} lost points: {res[cell].message}"


def test_a_float64_score_costs_only_its_own_cell():
    gid, edits, _ = FAMILY_MISTAKES[("4", "score: sigma as float64")]
    src = NOTEBOOK.source(gid, edits)
    for check in ("dsm_loss", "annealed_langevin", "inpaint"):
        assert check_message(check, {gid: src}) is None, check

"""The hidden tests of notebook 01_forward_process catch the listed mistakes and accept correct variants.

Two layers:

* direct tests (fast, about 10 s in all): the answer cells of the solution notebook are executed in
  a namespace, one of them replaced by a mistaken (or a different but correct) version, and the
  check of ``grading/checks/forward_process.py`` is called; a mistake must fail with a message that
  names its likely cause, a correct variant must pass;
* cell-runner tests (marked ``slow``; about 15 s per notebook run on an idle CPU, 4 runs): the
  notebook runs in a kernel through ``grading.runner.run_notebook`` with mistaken answer cells, and
  the test cells must lose their points.

Mistakes come from the issue: alpha_bar (or 1 - alpha_bar) without its square root; beta instead of
sqrt(beta) in one step; cumsum instead of cumprod, or the product only up to t - 1; off-by-one in t;
one t for the whole batch; t never reaching the first or last step; t not a long (B,) tensor; a
returned noise other than the one used; the cosine schedule without its offset s or without the clip.
"""
from __future__ import annotations

import nbformat
import torch
import pytest

from grading import cells
from grading.checks import forward_process as checks
from notebook_support import SolutionNotebook, assert_every_cell_passes, run_cells

ANSWERS = ("linear_beta_schedule", "alphas_from_betas", "forward_step", "q_sample",
           "generate_noisy_samples", "cosine_beta_schedule")
NOTEBOOK = SolutionNotebook("01_forward_process", checks, answers=ANSWERS,
                            prelude="import math\nimport numpy as np\nimport torch\n")
NB = NOTEBOOK.path
namespace = NOTEBOOK.namespace


def patch(grade_id: str, old: str, new: str, count: int = 1) -> str:
    """The solution's answer cell ``grade_id`` with ``old`` replaced by ``new`` (``old`` must occur)."""
    return NOTEBOOK.mutate(grade_id, old, new, count)
check_message = NOTEBOOK.check_message


# ----------------------------------------------------------------------------------------------
# The solution passes every check
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("check", sorted(checks.CHECKS))
def test_solution_passes_check(check):
    assert check_message(check) is None


def test_every_test_cell_has_a_check():
    nb = nbformat.read(NB, as_version=4)
    calls = [c.source for c in nb.cells if cells.is_test(c)]
    named = {src.split('"01_forward_process", "')[1].split('"')[0] for src in calls}
    assert named == set(checks.CHECKS)


# ----------------------------------------------------------------------------------------------
# Mistakes: (grade_id, old, new) applied to the solution, the check, words of the expected message
# ----------------------------------------------------------------------------------------------
GEN_CALL = "torch.randint(0, T, (B,), generator=generator, device=draw_device)"
RETURN_GEN = "return q_sample(x_0, t, alpha_bar, noise), noise, t"

MISTAKES = {
    # closed form (q_sample)
    "q_sample: alpha_bar instead of sqrt(alpha_bar)":
        ("q_sample", "torch.sqrt(ab) * x_0", "ab * x_0", "q_sample",
         "alpha_bar instead of its square root"),
    "q_sample: 1 - alpha_bar instead of sqrt(1 - alpha_bar)":
        ("q_sample", "torch.sqrt(1.0 - ab) * noise", "(1.0 - ab) * noise", "q_sample",
         "1 - alpha_bar instead of its square root"),
    "q_sample: alpha_bar[t - 1]":
        ("q_sample", "alpha_bar.to(x_0.device)[t]", "alpha_bar.to(x_0.device)[t - 1]", "q_sample",
         "off by one in t: alpha_bar[t - 1]"),
    "q_sample: alpha_bar[t + 1] (clamped)":
        ("q_sample", "alpha_bar.to(x_0.device)[t]",
         "alpha_bar.to(x_0.device)[(t + 1).clamp(max=alpha_bar.shape[0] - 1)]", "q_sample",
         "off by one in t: alpha_bar[t + 1]"),
    "q_sample: one t for the whole batch":
        ("q_sample", "alpha_bar.to(x_0.device)[t]", "alpha_bar.to(x_0.device)[t[:1]]", "q_sample",
         "one time t[0] is used for the whole batch"),
    "q_sample: alpha_bar[t + 1] (overflows at T - 1)":
        ("q_sample", "alpha_bar.to(x_0.device)[t]", "alpha_bar.to(x_0.device)[t + 1]", "q_sample",
         "off by one in t"),
    "q_sample: coefficients not reshaped to (B, 1, 1, 1)":
        ("q_sample", ".reshape(-1, *([1] * (x_0.dim() - 1)))", "", "q_sample",
         "reshape(-1, 1, 1, 1)"),
    # one step (forward_step)
    "forward_step: beta instead of sqrt(beta)":
        ("forward_step", "torch.sqrt(b) * noise", "b * noise", "forward_step",
         "beta instead of sqrt(beta)"),
    "forward_step: beta[t - 1]":
        ("forward_step", "beta.to(x_prev.device)[t]", "beta.to(x_prev.device)[t - 1]",
         "forward_step", "off by one in t: beta[t - 1]"),
    "forward_step: beta[t + 1]":
        ("forward_step", "beta.to(x_prev.device)[t]", "beta.to(x_prev.device)[t + 1]",
         "forward_step", "off by one in t: beta[t + 1]"),
    "forward_step: one t for the whole batch":
        ("forward_step", "beta.to(x_prev.device)[t]", "beta.to(x_prev.device)[t[:1]]",
         "forward_step", "one time t[0] is used for the whole batch"),
    # alpha_bar
    "alphas_from_betas: cumsum instead of cumprod":
        ("alphas_from_betas", "torch.cumprod(alpha, dim=0)", "torch.cumsum(alpha, dim=0)",
         "alphas_from_betas", "cumsum instead of torch.cumprod"),
    "alphas_from_betas: product only up to t - 1":
        ("alphas_from_betas", "torch.cumprod(alpha, dim=0)",
         "torch.cat([torch.ones(1, dtype=alpha.dtype), torch.cumprod(alpha, dim=0)[:-1]])",
         "alphas_from_betas", "only up to t - 1"),
    # training batches
    "generate_noisy_samples: one t for the whole batch":
        ("generate_noisy_samples", GEN_CALL,
         "torch.randint(0, T, (1,), generator=generator, device=draw_device).expand(B)",
         "generate_noisy_samples", "one t drawn for the whole batch"),
    "generate_noisy_samples: t never 0":
        ("generate_noisy_samples", GEN_CALL, GEN_CALL.replace("(0, T,", "(1, T,"),
         "generate_noisy_samples", "never reached the first step"),
    "generate_noisy_samples: t never T - 1":
        ("generate_noisy_samples", GEN_CALL, GEN_CALL.replace("(0, T,", "(0, T - 1,"),
         "generate_noisy_samples", "never reached the last step"),
    "generate_noisy_samples: t not uniform":
        ("generate_noisy_samples", GEN_CALL, f"torch.minimum({GEN_CALL}, {GEN_CALL})",
         "generate_noisy_samples", "t is not uniform"),
    "generate_noisy_samples: t returned as float":
        ("generate_noisy_samples", RETURN_GEN, RETURN_GEN + ".float()",
         "generate_noisy_samples", "should have dtype torch.long"),
    "generate_noisy_samples: t of shape (B, 1, 1, 1)":
        ("generate_noisy_samples", RETURN_GEN, RETURN_GEN + "[:, None, None, None]",
         "generate_noisy_samples", "one time per example"),
    "generate_noisy_samples: returns another noise":
        ("generate_noisy_samples", RETURN_GEN,
         "return q_sample(x_0, t, alpha_bar, torch.randn(x_0.shape, generator=generator)), noise, t",
         "generate_noisy_samples", "noise other than the one returned"),
    "generate_noisy_samples: alpha_bar without sqrt (inline)":
        ("generate_noisy_samples", RETURN_GEN,
         "ab = alpha_bar[t].reshape(-1, 1, 1, 1)\n    return ab * x_0 + torch.sqrt(1 - ab) * noise, noise, t",
         "generate_noisy_samples", "alpha_bar instead of its square root"),
    "generate_noisy_samples: uniform noise":
        ("generate_noisy_samples", "noise = torch.randn(", "noise = torch.rand(",
         "generate_noisy_samples", "torch.rand (uniform"),
    "generate_noisy_samples: generator ignored":
        ("generate_noisy_samples", "generator=generator", "generator=None",
         "generate_noisy_samples_2", "ignores the `generator` argument"),
    # cosine schedule
    "cosine_beta_schedule: no offset s":
        ("cosine_beta_schedule", "((steps / T) + s) / (1 + s)", "(steps / T)",
         "cosine_beta_schedule", "offset s is missing"),
    "cosine_beta_schedule: no clip":
        ("cosine_beta_schedule", ".clamp(max=max_beta)", "", "cosine_beta_schedule",
         "not clipped"),
    "cosine_beta_schedule: clip hard-coded":
        ("cosine_beta_schedule", ".clamp(max=max_beta)", ".clamp(max=0.999)",
         "cosine_beta_schedule", "use the max_beta argument"),
    "cosine_beta_schedule: clipped from below too":
        ("cosine_beta_schedule", ".clamp(max=max_beta)", ".clamp(min=1e-4, max=max_beta)",
         "cosine_beta_schedule", "clipped from below"),
    # linear schedule
    "linear_beta_schedule: arange misses beta_end":
        ("linear_beta_schedule", "torch.linspace(beta_start, beta_end, T, dtype=torch.float32)",
         "beta_start + (beta_end - beta_start) / T * torch.arange(T, dtype=torch.float32)",
         "linear_beta_schedule", "one step short of beta_end"),
    "linear_beta_schedule: defaults hard-coded":
        ("linear_beta_schedule", "torch.linspace(beta_start, beta_end, T, dtype=torch.float32)",
         "torch.linspace(1e-4, 0.02, T, dtype=torch.float32)", "linear_beta_schedule",
         "linear_beta_schedule(T=10"),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_mistake_is_caught_with_its_cause(name):
    grade_id, old, new, check, words = MISTAKES[name]
    count = -1 if name.endswith("generator ignored") else 1
    message = check_message(check, {grade_id: patch(grade_id, old, new, count)})
    assert message is not None, f"the check {check!r} passed the mistake: {name}"
    assert words in message, f"{name}: the message does not name the cause {words!r}:\n{message}"


# ----------------------------------------------------------------------------------------------
# Correct variants must pass: numpy inside, gather, loops, float64, other formulas, draw order
# ----------------------------------------------------------------------------------------------
CORRECT = {
    "q_sample: numpy inside": ("q_sample", '''
def q_sample(x_0, t, alpha_bar, noise):
    ab = alpha_bar.detach().cpu().numpy().astype(np.float64)[t.cpu().numpy()]  # (B,)
    a = torch.from_numpy(np.sqrt(ab)).float().view(-1, 1, 1, 1)
    s = torch.from_numpy(np.sqrt(1 - ab)).float().view(-1, 1, 1, 1)
    return a * x_0 + s * noise
'''),
    "q_sample: gather": ("q_sample", '''
def q_sample(x_0, t, alpha_bar, noise):
    ab = alpha_bar.gather(0, t)[:, None, None, None]
    return ab.sqrt() * x_0 + (1 - ab).sqrt() * noise
'''),
    "q_sample: loop over the batch": ("q_sample", '''
def q_sample(x_0, t, alpha_bar, noise):
    out = []
    for i in range(x_0.shape[0]):
        ab = alpha_bar[int(t[i])]
        out.append(math.sqrt(ab) * x_0[i] + math.sqrt(1 - ab) * noise[i])
    return torch.stack(out)
'''),
    "q_sample: float64 inside, cast back, other formula": ("q_sample", '''
def q_sample(x_0, t, alpha_bar, noise):
    log_ab = torch.log(alpha_bar.double()[t]).reshape(-1, *([1] * (x_0.dim() - 1)))
    return (torch.exp(0.5 * log_ab) * x_0 + torch.sqrt(-torch.expm1(log_ab)) * noise).to(x_0.dtype)
'''),
    "forward_step: alpha and gather": ("forward_step", '''
def forward_step(x_prev, t, beta, noise):
    alpha = (1 - beta).gather(0, t).view(-1, 1, 1, 1)
    return alpha.sqrt() * x_prev + (1 - alpha).sqrt() * noise
'''),
    "forward_step: numpy": ("forward_step", '''
def forward_step(x_prev, t, beta, noise):
    b = beta.numpy().astype(np.float64)[t.numpy()][:, None, None, None]
    out = np.sqrt(1 - b) * x_prev.numpy() + np.sqrt(b) * noise.numpy()
    return torch.from_numpy(out.astype(np.float32))
'''),
    "alphas_from_betas: loop": ("alphas_from_betas", '''
def alphas_from_betas(beta):
    alpha = 1 - beta
    alpha_bar, prod = [], 1.0
    for a in alpha.tolist():
        prod *= a
        alpha_bar.append(prod)
    return alpha, torch.tensor(alpha_bar, dtype=beta.dtype)
'''),
    "alphas_from_betas: exp of cumulative log": ("alphas_from_betas", '''
def alphas_from_betas(beta):
    alpha = 1 - beta
    return alpha, torch.exp(torch.cumsum(torch.log(alpha), dim=0))
'''),
    "alphas_from_betas: numpy float64, cast back": ("alphas_from_betas", '''
def alphas_from_betas(beta):
    a = 1 - beta.double().numpy()
    return torch.from_numpy(a).to(beta.dtype), torch.from_numpy(np.cumprod(a)).to(beta.dtype)
'''),
    "linear_beta_schedule: arange formula in float64, cast back": ("linear_beta_schedule", '''
def linear_beta_schedule(T=1000, beta_start=1e-4, beta_end=0.02):
    return (beta_start + (beta_end - beta_start) * torch.arange(T, dtype=torch.float64) / (T - 1)).float()
'''),
    "q_sample: torch.lerp between the scaled image and the noise": ("q_sample", '''
def q_sample(x_0, t, alpha_bar, noise):
    ab = alpha_bar[t].view(-1, 1, 1, 1)
    s = ab.sqrt() + (1 - ab).sqrt()
    # sqrt(ab) x_0 + sqrt(1 - ab) noise = s * lerp(x_0, noise, sqrt(1 - ab) / s)
    return s * torch.lerp(x_0, noise, (1 - ab).sqrt() / s)
'''),
    "forward_step: addcmul": ("forward_step", '''
def forward_step(x_prev, t, beta, noise):
    b = beta[t][:, None, None, None]
    return torch.addcmul((1 - b).sqrt() * x_prev, b.sqrt(), noise)
'''),
    "generate_noisy_samples: Tensor.normal_ and a uniform draw, t first": ("generate_noisy_samples", '''
def generate_noisy_samples(x_0, beta, generator=None):
    T, B = beta.shape[0], x_0.shape[0]
    t = (torch.rand(B, generator=generator, dtype=torch.float64) * T).long().clamp(max=T - 1)
    noise = torch.empty_like(x_0).normal_(generator=generator)
    ab = torch.cumprod(1 - beta, 0)[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x_0 + (1 - ab).sqrt() * noise, noise, t
'''),
    "generate_noisy_samples: NumPy generator seeded from the torch generator": ("generate_noisy_samples", '''
def generate_noisy_samples(x_0, beta, generator=None):
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    T, B = beta.shape[0], x_0.shape[0]
    t = torch.from_numpy(rng.integers(0, T, size=B))
    noise = torch.from_numpy(rng.standard_normal(tuple(x_0.shape))).to(x_0.dtype)
    _, alpha_bar = alphas_from_betas(beta)
    return q_sample(x_0, t, alpha_bar, noise), noise, t
'''),
    "cosine_beta_schedule: float32 alpha_bar form": ("cosine_beta_schedule", '''
def cosine_beta_schedule(T=1000, s=0.008, max_beta=0.999):
    t = torch.linspace(0, T, T + 1)
    f = torch.cos((t / T + s) / (1 + s) * math.pi * 0.5) ** 2
    alpha_bar = f / f[0]
    betas = 1 - (alpha_bar[1:] / alpha_bar[:-1])
    return torch.clip(betas, 0, max_beta)
'''),
    "cosine_beta_schedule: numpy": ("cosine_beta_schedule", '''
def cosine_beta_schedule(T=1000, s=0.008, max_beta=0.999):
    f = lambda u: np.cos((u / T + s) / (1 + s) * np.pi / 2) ** 2
    i = np.arange(T)
    return torch.tensor(np.minimum(1 - f(i + 1) / f(i), max_beta), dtype=torch.float32)
'''),
    "generate_noisy_samples: noise first, own formula": ("generate_noisy_samples", '''
def generate_noisy_samples(x_0, beta, generator=None):
    noise = torch.randn(x_0.shape, generator=generator)
    t = torch.randint(len(beta), size=(x_0.shape[0],), generator=generator)
    alpha_bar = torch.cumprod(1 - beta, 0)
    x_t = alpha_bar[t, None, None, None].sqrt() * x_0 + (1 - alpha_bar[t, None, None, None]).sqrt() * noise
    return x_t, noise, t
'''),
    "generate_noisy_samples: loop over the batch": ("generate_noisy_samples", '''
def generate_noisy_samples(x_0, beta, generator=None):
    _, alpha_bar = alphas_from_betas(beta)
    xs, ns, ts = [], [], []
    for i in range(x_0.shape[0]):
        t = torch.randint(0, beta.shape[0], (1,), generator=generator)
        n = torch.randn(x_0[i].shape, generator=generator)
        ts.append(t[0]); ns.append(n)
        xs.append(q_sample(x_0[i:i + 1], t, alpha_bar, n[None])[0])
    return torch.stack(xs), torch.stack(ns), torch.stack(ts)
'''),
}


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_variant_passes(name):
    grade_id, source = CORRECT[name]
    check = grade_id
    message = check_message(check, {grade_id: source})
    assert message is None, f"{name} is correct but failed:\n{message}"
    if grade_id == "generate_noisy_samples":
        assert check_message("generate_noisy_samples_2", {grade_id: source}) is None


@pytest.mark.parametrize("helper", ["q_sample: alpha_bar instead of sqrt(alpha_bar)",
                                    "alphas_from_betas: cumsum instead of cumprod"])
def test_mistake_in_a_helper_is_not_penalised_twice(helper):
    """generate_noisy_samples calling a wrong q_sample / alphas_from_betas keeps its points (the
    check swaps in the reference helpers), and the student's helpers are restored afterwards."""
    grade_id, old, new, _, _ = MISTAKES[helper]
    ns = namespace({grade_id: patch(grade_id, old, new)})
    own = ns[grade_id]
    checks.CHECKS["generate_noisy_samples"](ns)
    checks.CHECKS["generate_noisy_samples_2"](ns)
    assert ns[grade_id] is own


def test_generator_ignored_still_earns_the_first_cell():
    """Drawing with the global RNG (torch.randn_like, randint without generator) costs only the
    generator cell (1 point): the relations and statistics still pass."""
    source = patch("generate_noisy_samples", "generator=generator", "generator=None", count=-1)
    assert check_message("generate_noisy_samples", {"generate_noisy_samples": source}) is None
    assert check_message("generate_noisy_samples_2", {"generate_noisy_samples": source}) is not None


# ----------------------------------------------------------------------------------------------
# Through the cell runner: the notebook in a kernel, the points lost in the right cells
# ----------------------------------------------------------------------------------------------
TEST_CELLS = ["test_linear_beta_schedule", "test_alphas_from_betas", "test_forward_step",
              "test_q_sample", "test_generate_noisy_samples", "test_generate_noisy_samples_2",
              "test_cosine_beta_schedule"]


def _run(replace=None, stop_after=None):
    return run_cells(NB, replace=replace, stop_after=stop_after)[0]


def _mistake_source(name):
    grade_id, old, new, _, _ = MISTAKES[name]
    return grade_id, patch(grade_id, old, new, -1 if name.endswith("generator ignored") else 1)


@pytest.mark.slow
def test_runner_solution_passes_every_test_cell():
    assert_every_cell_passes(_run(), TEST_CELLS, max_points=12)


@pytest.mark.slow
def test_runner_mistakes_in_four_cells():
    names = ["linear_beta_schedule: arange misses beta_end", "forward_step: beta instead of sqrt(beta)",
             "q_sample: alpha_bar instead of sqrt(alpha_bar)", "cosine_beta_schedule: no clip"]
    replace = dict(_mistake_source(n) for n in names)
    res = _run(replace)
    for gid in ("test_linear_beta_schedule", "test_forward_step", "test_q_sample",
                "test_cosine_beta_schedule"):
        assert not res[gid].passed and res[gid].points == 0, (gid, res[gid])
    assert res["test_alphas_from_betas"].passed
    # generate_noisy_samples calls the wrong q_sample: not penalised twice
    assert res["test_generate_noisy_samples"].passed and res["test_generate_noisy_samples_2"].passed


@pytest.mark.slow
def test_runner_alpha_bar_and_batch_mistakes():
    names = ["alphas_from_betas: product only up to t - 1",
             "forward_step: one t for the whole batch", "cosine_beta_schedule: no offset s"]
    replace = dict(_mistake_source(n) for n in names)
    res = _run(replace)
    for gid in ("test_alphas_from_betas", "test_forward_step", "test_cosine_beta_schedule"):
        assert not res[gid].passed, (gid, res[gid])
    assert res["test_linear_beta_schedule"].passed and res["test_q_sample"].passed


@pytest.mark.slow
def test_runner_generator_ignored_costs_one_point():
    replace = dict([_mistake_source("generate_noisy_samples: generator ignored")])
    res = _run(replace, stop_after="test_generate_noisy_samples_2")
    assert res["test_generate_noisy_samples"].passed
    assert not res["test_generate_noisy_samples_2"].passed


# ----------------------------------------------------------------------------------------------
# Issue 15: the families of mistakes that used to keep full marks (1 generator discipline,
# 2 inputs changed in place, 3 globals or defaults instead of arguments, 4 result types)
# ----------------------------------------------------------------------------------------------
body = NOTEBOOK.body
GNS = "generate_noisy_samples"
FAMILY_MISTAKES = {
    # 1. generator discipline
    "F1 noise with randn_like": (1, GNS, patch(GNS, "noise = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype,\n"
                                                    "                        device=draw_device)",
                                              "noise = torch.randn_like(x_0)"),
                                 "generate_noisy_samples_2", "generator"),
    "F1 reseeds the global RNG from the generator": (1, GNS, body(GNS, '''
_, alpha_bar = alphas_from_betas(beta)
if generator is not None:
    torch.manual_seed(generator.initial_seed())
t = torch.randint(0, beta.shape[0], (x_0.shape[0],))
noise = torch.randn_like(x_0)
return q_sample(x_0, t, alpha_bar, noise), noise, t
'''), "generate_noisy_samples_2", "changed torch's global random state"),
    "F1 a fresh generator from initial_seed (the stream restarts)": (1, GNS, body(GNS, '''
_, alpha_bar = alphas_from_betas(beta)
g = torch.Generator().manual_seed(generator.initial_seed()) if generator is not None else None
t = torch.randint(0, beta.shape[0], (x_0.shape[0],), generator=g)
noise = torch.randn(x_0.shape, generator=g)
return q_sample(x_0, t, alpha_bar, noise), noise, t
'''), "generate_noisy_samples_2", "continue the generator's stream"),
    "F1 t from np.random": (1, GNS, body(GNS, '''
_, alpha_bar = alphas_from_betas(beta)
t = torch.from_numpy(np.random.randint(0, beta.shape[0], size=x_0.shape[0]))
noise = torch.randn(x_0.shape, generator=generator)
return q_sample(x_0, t, alpha_bar, noise), noise, t
'''), "generate_noisy_samples_2", "ignores the `generator`"),
    "F1 noise from np.random after a draw of the generator": (1, GNS, body(GNS, '''
_, alpha_bar = alphas_from_betas(beta)
t = torch.randint(0, beta.shape[0], (x_0.shape[0],), generator=generator)
np.random.seed(int(t[0]))
noise = torch.from_numpy(np.random.standard_normal(tuple(x_0.shape))).float()
return q_sample(x_0, t, alpha_bar, noise), noise, t
'''), "generate_noisy_samples_2", "NumPy's global random state"),
    # 2. inputs changed in place
    "F2 q_sample scales x_0 in place": (2, "q_sample", patch("q_sample", "return torch.sqrt(ab) * x_0 + torch.sqrt(1.0 - ab) * noise",
                                                        "return x_0.mul_(torch.sqrt(ab)).add_(torch.sqrt(1.0 - ab) * noise)"),
                                        "q_sample", "changed its input `x_0` in place"),
    "F2 forward_step scales the noise in place": (2, "forward_step", patch("forward_step", "torch.sqrt(b) * noise",
                                                                          "noise.mul_(torch.sqrt(b))"),
                                                  "forward_step", "changed its input `noise` in place"),
    "F2 alphas_from_betas turns beta into alpha in place": (2, "alphas_from_betas", patch("alphas_from_betas", "alpha = 1.0 - beta  # (T,)",
                                                                                        "alpha = beta.neg_().add_(1.0)  # (T,)"),
                                                            "alphas_from_betas", "changed its input `beta` in place"),
    "F2 generate_noisy_samples noises x_0 in place": (2, GNS, patch(GNS, "return q_sample(x_0, t, alpha_bar, noise), noise, t",
                                                                 "ab = alpha_bar[t].view(-1, 1, 1, 1)\n"
                                                                 "    x_0 *= ab.sqrt()\n"
                                                                 "    x_0 += (1 - ab).sqrt() * noise\n"
                                                                 "    return x_0, noise, t"),
                                                      GNS, "changed its input `x_0` in place"),
    # 3. globals or defaults instead of the arguments
    "F3 forward_step takes alpha from the notebook": (3, "forward_step",
                                                     patch("forward_step", "return torch.sqrt(1.0 - b) * x_prev",
                                                           "a = alpha[t].reshape(-1, 1, 1, 1)\n    return torch.sqrt(a) * x_prev"),
                                                     "forward_step", "notebook's globals"),
    "F3 generate_noisy_samples takes T from the notebook": (3, GNS, patch(GNS, "T, B = beta.shape[0], x_0.shape[0]",
                                                                       "B = x_0.shape[0]"),
                                                            GNS, "notebook's globals"),
    "F3 generate_noisy_samples uses the notebook's alpha_bar": (3, GNS, patch(GNS, "    _, alpha_bar = alphas_from_betas(beta)\n", ""),
                                                                GNS, "notebook's globals"),
    "F3 cosine schedule with T = 1000 inside": (3, "cosine_beta_schedule",
                                                patch("cosine_beta_schedule", "((steps / T) + s)", "((steps / 1000) + s)"),
                                                "cosine_beta_schedule", "T is hard-coded"),
    "F3 linear schedule with the default range hard-coded": (3, "linear_beta_schedule",
                                                             patch("linear_beta_schedule", "torch.linspace(beta_start, beta_end, T,",
                                                                   "torch.linspace(1e-4, 0.02, T,"),
                                                             "linear_beta_schedule", "hard-coded"),
    # 4. result types
    "F4 q_sample in float64 (not cast back)": (4, "q_sample", '''
def q_sample(x_0, t, alpha_bar, noise):
    log_ab = torch.log(alpha_bar.double()[t]).reshape(-1, *([1] * (x_0.dim() - 1)))
    return torch.exp(0.5 * log_ab) * x_0 + torch.sqrt(-torch.expm1(log_ab)) * noise
''', "q_sample", "float64 tensor for float32 inputs"),
    "F4 alphas_from_betas in NumPy float64": (4, "alphas_from_betas", '''
def alphas_from_betas(beta):
    a = 1 - beta.double().numpy()
    return torch.from_numpy(a), torch.from_numpy(np.cumprod(a))
''', "alphas_from_betas", "float64 tensor for a float32 beta"),
    "F4 linear schedule in float64": (4, "linear_beta_schedule", '''
def linear_beta_schedule(T=1000, beta_start=1e-4, beta_end=0.02):
    return beta_start + (beta_end - beta_start) * torch.arange(T, dtype=torch.float64) / (T - 1)
''', "linear_beta_schedule", "float64 tensor where the schedule is a float32"),
    "F4 forward_step through NumPy without the cast": (4, "forward_step", '''
def forward_step(x_prev, t, beta, noise):
    b = beta.numpy().astype(np.float64)[t.numpy()][:, None, None, None]
    return torch.from_numpy(np.sqrt(1 - b) * x_prev.numpy() + np.sqrt(b) * noise.numpy())
''', "forward_step", "float64 tensor for float32 inputs"),
    "F4 generate_noisy_samples returns t as int32": (4, GNS, patch(GNS, "return q_sample(x_0, t, alpha_bar, noise), noise, t",
                                                               "return q_sample(x_0, t, alpha_bar, noise), noise, t.int()"),
                                                     GNS, "torch.long"),
}


@pytest.mark.parametrize("name", sorted(FAMILY_MISTAKES))
def test_family_mistake_loses_points_with_its_cause(name):
    _, grade_id, source, check, words = FAMILY_MISTAKES[name]
    message = check_message(check, {grade_id: source})
    assert message is not None, f"the check {check!r} passed the mistake: {name}"
    assert words in message, f"{name}: the message does not name the cause {words!r}:\n{message}"


def test_family_mistakes_three_per_family():
    per_family = {}
    for family, *_ in FAMILY_MISTAKES.values():
        per_family[family] = per_family.get(family, 0) + 1
    assert all(per_family.get(f, 0) >= 3 for f in (1, 2, 3, 4)), per_family


# ----------------------------------------------------------------------------------------------
# Issue 15, family 8: a visible assert that fails first names the likely cause too
# ----------------------------------------------------------------------------------------------
HIDDEN_END = "### END " + "HIDDEN TESTS"


def visible_part(test_gid: str) -> str:
    """The visible asserts of a test cell: what a student's own run executes."""
    return NOTEBOOK.cells[test_gid].split(HIDDEN_END, 1)[1]


VISIBLE = {
    # mistake name (in MISTAKES or FAMILY_MISTAKES), test cell, words of the visible message
    "q_sample: alpha_bar instead of sqrt(alpha_bar)": ("test_q_sample", "alpha_bar instead of its square root"),
    "q_sample: 1 - alpha_bar instead of sqrt(1 - alpha_bar)": ("test_q_sample", "1 - alpha_bar instead of its square root"),
    "q_sample: one t for the whole batch": ("test_q_sample", "one time t[0] is used for the whole batch"),
    "forward_step: beta instead of sqrt(beta)": ("test_forward_step", "beta instead of sqrt(beta)"),
    "alphas_from_betas: cumsum instead of cumprod": ("test_alphas_from_betas", "cumsum instead of torch.cumprod"),
    "alphas_from_betas: product only up to t - 1": ("test_alphas_from_betas", "stops at t - 1"),
    "linear_beta_schedule: arange misses beta_end": ("test_linear_beta_schedule", "one step short of beta_end"),
    "cosine_beta_schedule: no offset s": ("test_cosine_beta_schedule", "offset s is missing"),
    "cosine_beta_schedule: no clip": ("test_cosine_beta_schedule", "not clipped"),
    "F4 linear schedule in float64": ("test_linear_beta_schedule", "float64 tensor made inside"),
}


def _source(name: str) -> tuple[str, str]:
    if name in MISTAKES:
        grade_id, old, new, _, _ = MISTAKES[name]
        return grade_id, patch(grade_id, old, new)
    _, grade_id, source, _, _ = FAMILY_MISTAKES[name]
    return grade_id, source


@pytest.mark.parametrize("name", sorted(VISIBLE))
def test_visible_assert_names_the_cause(name):
    from helpers.checks import VisibleTestFailed

    test_gid, words = VISIBLE[name]
    grade_id, source = _source(name)
    ns = namespace({grade_id: source})
    ns["x_0"] = torch.rand(5, 1, 32, 32) * 2 - 1  # the notebook's digits, as far as the visible tests go
    with pytest.raises(VisibleTestFailed) as err:
        exec(compile(visible_part(test_gid), f"<{test_gid}>", "exec"), ns)  # noqa: S102
    assert "Likely cause" in str(err.value) and words in str(err.value), str(err.value)


def test_visible_asserts_pass_on_the_solution():
    ns = namespace()
    ns["x_0"] = torch.rand(5, 1, 32, 32) * 2 - 1
    for gid in TEST_CELLS:
        exec(compile(visible_part(gid), f"<{gid}>", "exec"), ns)  # noqa: S102


@pytest.mark.slow
def test_runner_student_q_sample_alpha_bar_mistake_names_the_cause():
    """As a student runs it: the released notebook (no hidden tests), every answer filled in, q_sample with
    alpha_bar instead of its square root. The visible assert fails first and its message names the cause."""
    from notebook_support import REPO

    released = REPO / "notebooks" / "01_forward_process" / "01_forward_process.ipynb"
    replace = {gid: NOTEBOOK.cells[gid] for gid in ANSWERS}
    replace["q_sample"] = _source("q_sample: alpha_bar instead of sqrt(alpha_bar)")[1]
    res, table = run_cells(released, replace=replace, stop_after="test_q_sample")
    r = res["test_q_sample"]
    assert not r.passed and r.points == 0, table
    assert "Likely cause: alpha_bar instead of its square root" in r.message, r.message


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_variant_passes_the_visible_asserts(name):
    grade_id, source = CORRECT[name]
    ns = namespace({grade_id: source})
    ns["x_0"] = torch.rand(5, 1, 32, 32) * 2 - 1
    cells_of = [gid for gid in TEST_CELLS if gid.startswith(f"test_{grade_id}")]
    for gid in cells_of:
        exec(compile(visible_part(gid), f"<{gid}>", "exec"), ns)  # noqa: S102

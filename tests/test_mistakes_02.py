"""Mistake tests of notebook 02_ddpm_training: every mistake of the issue costs points in the right
test cell, with a message naming the likely cause, and correct variants pass.

Two layers:
- direct (fast, ~5 s): the answer cells of the solution notebook are exec'd into a namespace, one of
  them replaced by a mistaken (or a different but correct) version, and the hidden check is called;
- through the cell runner (~1 min): the solution notebook itself, run in a kernel with answer cells
  replaced, slow cells skipped.
"""
from __future__ import annotations

import re

import pytest
import torch

from grading.checks import ddpm_training as checks
from grading.hidden import CheckFailed
from notebook_support import SolutionNotebook, assert_every_cell_passes

GRADED = ["timestep_embedding", "ddpm_loss", "train_step", "evaluate", "ema_update"]


def _notebook_globals(ns: dict) -> None:
    """The notebook's globals, which a mistaken answer might use instead of its arguments."""
    ns["T"] = 1000
    ns["beta"] = ns["linear_beta_schedule"](ns["T"])
    _, ns["alpha_bar"] = ns["alphas_from_betas"](ns["beta"])


NOTEBOOK = SolutionNotebook(
    "02_ddpm_training", checks, answers=tuple(GRADED), given=("given_forward_process",), name="__main__",
    prelude="import math\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\n",
    setup=_notebook_globals)
NB = NOTEBOOK.path
mutate = NOTEBOOK.mutate


def namespace(**replace: str) -> dict:
    """The notebook's globals as far as the graded functions go: the given cell, then every answer."""
    return NOTEBOOK.namespace(replace)


def run_check(name: str, ns: dict) -> None:
    torch_state = torch.random.get_rng_state()
    try:
        with torch.enable_grad():
            checks.CHECKS[name](ns)
    finally:
        torch.random.set_rng_state(torch_state)


# ------------------------------------------------------------------------------------------ mistakes

EMB_RETURN = "return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)"
MISTAKES = {
    # name: (graded function, buggy source, regex the message must match)
    "embedding halves swapped": (
        "timestep_embedding", lambda: mutate("timestep_embedding", EMB_RETURN,
                                             "return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)"),
        r"halves are swapped"),
    "embedding interleaved": (
        "timestep_embedding", lambda: mutate("timestep_embedding", EMB_RETURN,
                                             "return torch.stack([torch.sin(angles), torch.cos(angles)], dim=2)"
                                             ".reshape(t.shape[0], dim)"),
        r"interleaved"),
    "embedding frequencies -i/dim": (
        "timestep_embedding", lambda: mutate("timestep_embedding", "max_period ** (-2 * i / dim)",
                                             "max_period ** (-i / dim)"),
        r"\(-i / dim\) instead of"),
    "loss on x_0": (
        "ddpm_loss", lambda: mutate("ddpm_loss", "F.mse_loss(eps_pred, noise)", "F.mse_loss(eps_pred, x_0)"),
        r"with x_0 instead of with the noise"),
    "L1 loss": (
        "ddpm_loss", lambda: mutate("ddpm_loss", "F.mse_loss(eps_pred, noise)", "F.l1_loss(eps_pred, noise)"),
        r"L1"),
    "sum instead of mean": (
        "ddpm_loss", lambda: mutate("ddpm_loss", "F.mse_loss(eps_pred, noise)", "((eps_pred - noise) ** 2).sum()"),
        r"sum of squared errors instead of their mean"),
    "model fed x_0": (
        "ddpm_loss", lambda: mutate("ddpm_loss", "model(x_t, t)", "model(x_0, t)"),
        r"fed x_0 instead of the noisy x_t"),
    "train_step never steps": (
        "train_step", lambda: mutate("train_step", "    optimizer.step()\n", ""),
        r"never called optimizer\.step\(\)"),
    "train_step never zeroes gradients": (
        "train_step", lambda: mutate("train_step", "    optimizer.zero_grad()\n", ""),
        r"gradients were not zeroed"),
    "train_step one t per batch": (
        "train_step", lambda: mutate("train_step", "torch.randint(0, T, (B,), generator=generator, device=draw_on)",
                                     "torch.randint(0, T, (1,), generator=generator, device=draw_on).repeat(B)"),
        r"same t .*one t drawn for the\s+whole batch"),
    "evaluate in train mode": (
        "evaluate", lambda: mutate("evaluate", "    model.eval()\n", ""),
        r"train mode"),
    "evaluate builds a graph": (
        "evaluate", lambda: mutate("evaluate", "with torch.no_grad():", "if True:"),
        r"gradient tracking on.*no torch\.no_grad\(\)"),
    "evaluate averages batch means": (
        "evaluate", lambda: mutate("evaluate", "total += ddpm_loss(model, x_0, t, noise, alpha_bar).item() * B\n"
                                               "                count += B",
                                   "total += ddpm_loss(model, x_0, t, noise, alpha_bar).item()\n"
                                   "                count += 1"),
        r"batch means were averaged with equal weights"),
    "ema decay swapped": (
        "ema_update", lambda: mutate("ema_update", "p_ema.mul_(decay).add_(p, alpha=1 - decay)",
                                     "p_ema.mul_(1 - decay).add_(p, alpha=decay)"),
        r"decay and 1 - decay are swapped"),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_direct_mistake_is_caught_with_its_cause(case):
    name, make, pattern = MISTAKES[case]
    ns = namespace(**{name: make()})
    with pytest.raises(CheckFailed) as err:
        run_check(name, ns)
    msg = str(err.value)
    assert re.search(pattern, msg, re.S), f"{case}: the message does not name the cause:\n{msg}"


def test_direct_every_check_passes_on_the_solution():
    ns = namespace()
    for name in GRADED:
        run_check(name, ns)


# ------------------------------------------------------------------------------------------ more mistakes

EXTRA_MISTAKES = {
    "embedding ignores max_period": (
        "timestep_embedding", lambda: mutate("timestep_embedding", "max_period ** (-2 * i / dim)",
                                             "10000.0 ** (-2 * i / dim)"),
        r"max_period is ignored"),
    "t drawn from 1..T-1": (
        "train_step", lambda: mutate("train_step", "torch.randint(0, T, (B,)", "torch.randint(1, T, (B,)"),
        r"never took the value"),
    "train_step uses the global T": (
        "train_step", lambda: mutate("train_step", "B, T = x_0.shape[0], alpha_bar.shape[0]", "B = x_0.shape[0]"),
        r"T not taken from the alpha_bar argument"),
    "evaluate uses the global T": (
        "evaluate", lambda: mutate("evaluate", "    T = alpha_bar.shape[0]\n", ""),
        r"T not taken from the alpha_bar argument"),
    "train_step returns a tensor": (
        "train_step", lambda: mutate("train_step", "return loss.item()", "return loss"),
        r"Python float"),
    "train_step ignores the generator": (
        "train_step", lambda: mutate("train_step", "noise = torch.randn(x_0.shape, generator=generator,",
                                     "noise = torch.randn(x_0.shape,"),
        r"ignores `generator`"),
    "loss returns a detached float": (
        "ddpm_loss", lambda: mutate("ddpm_loss", "return F.mse_loss(eps_pred, noise)",
                                    "return F.mse_loss(eps_pred, noise).detach()"),
        r"carries no gradient"),
    "ema copies the parameters": (
        "ema_update", lambda: mutate("ema_update", "p_ema.mul_(decay).add_(p, alpha=1 - decay)", "p_ema.copy_(p)"),
        r"copied \(decay ignored\)"),
    "ema default decay 0.99": (
        "ema_update", lambda: mutate("ema_update", "decay=0.999):", "decay=0.99):"),
        r"decay 0\.99 instead of 0\.999"),
    "ema skips the buffers": (
        "ema_update", lambda: mutate("ema_update", "            if b.is_floating_point():\n"
                                                   "                b_ema.copy_(b)", "            pass"),
        r"buffer"),
    "ema modifies the model": (
        "ema_update", lambda: mutate("ema_update", "zip(ema_model.parameters(), model.parameters())",
                                     "zip(model.parameters(), ema_model.parameters())"),
        r"changed `model`"),
}


@pytest.mark.parametrize("case", sorted(EXTRA_MISTAKES))
def test_direct_further_mistakes(case):
    name, make, pattern = EXTRA_MISTAKES[case]
    ns = namespace(**{name: make()})
    with pytest.raises(CheckFailed) as err:
        run_check(name, ns)
    assert re.search(pattern, str(err.value), re.S), f"{case}: unexpected message:\n{err.value}"


# ------------------------------------------------------------------------------------------ correct variants

CORRECT = {
    "embedding in numpy": ("timestep_embedding", '''
def timestep_embedding(t, dim, max_period=10000.0):
    tt = t.detach().cpu().numpy().astype(np.float64)
    freqs = np.power(max_period, -np.arange(0, dim, 2) / dim)
    angles = tt[:, None] * freqs[None, :]
    return torch.from_numpy(np.concatenate([np.sin(angles), np.cos(angles)], axis=1)).float()
'''),
    "embedding with exp/log, float64": ("timestep_embedding", '''
def timestep_embedding(t, dim, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
    args = t.double()[:, None] * freqs
    emb = torch.zeros(len(t), dim, dtype=torch.float64)
    emb[:, :half] = torch.sin(args)
    emb[:, half:] = torch.cos(args)
    return emb
'''),
    "loss with gather and a manual mean": ("ddpm_loss", '''
def ddpm_loss(model, x_0, t, noise, alpha_bar):
    ab = alpha_bar.gather(0, t).view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x_0 + (1 - ab).sqrt() * noise
    return ((noise - model(x_t, t)) ** 2).mean()
'''),
    "loss in float64": ("ddpm_loss", '''
def ddpm_loss(model, x_0, t, noise, alpha_bar):
    x_t = q_sample(x_0, t, alpha_bar, noise)
    diff = (model(x_t, t).double() - noise.double())
    return diff.pow(2).sum() / diff.numel()
'''),
    "train_step: noise first, model.zero_grad, model.train": ("train_step", '''
def train_step(model, optimizer, x_0, alpha_bar, generator=None):
    model.train()
    noise = torch.randn(x_0.shape, generator=generator)
    t = torch.randint(alpha_bar.shape[0], size=(x_0.shape[0],), generator=generator)
    model.zero_grad()
    loss = ddpm_loss(model, x_0, t, noise, alpha_bar)
    loss.backward()
    optimizer.step()
    return float(loss)
'''),
    "train_step via generate-like helper with randn_like": ("train_step", '''
def train_step(model, optimizer, x_0, alpha_bar, generator=None):
    optimizer.zero_grad(set_to_none=False)
    t = torch.randint(0, len(alpha_bar), (len(x_0),), generator=generator)
    eps = torch.randn_like(x_0, generator=generator) if generator is not None else torch.randn_like(x_0)
    x_t = q_sample(x_0, t, alpha_bar, eps)
    loss = F.mse_loss(model(x_t, t), eps, reduction="mean")
    loss.backward()
    optimizer.step()
    return loss.detach().item()
'''),
    "train_step with gradient clipping": ("train_step", '''
def train_step(model, optimizer, x_0, alpha_bar, generator=None):
    t = torch.randint(0, alpha_bar.shape[0], (x_0.shape[0],), generator=generator)
    noise = torch.randn(x_0.shape, generator=generator)
    optimizer.zero_grad()
    loss = ddpm_loss(model, x_0, t, noise, alpha_bar)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    optimizer.step()
    return loss.item()
'''),
    "evaluate with inference_mode and a list of (loss, n)": ("evaluate", '''
def evaluate(model, batches, alpha_bar, generator=None):
    model.eval()
    parts = []
    with torch.inference_mode():
        for batch in batches:
            x_0 = batch[0]
            noise = torch.randn(x_0.shape, generator=generator)
            t = torch.randint(0, alpha_bar.shape[0], (x_0.shape[0],), generator=generator)
            parts.append((ddpm_loss(model, x_0, t, noise, alpha_bar).item(), x_0.shape[0]))
    model.train()
    losses, weights = zip(*parts)
    return float(np.average(losses, weights=weights))
'''),
    "ema with lerp, buffers copied by name (state_dict)": ("ema_update", '''
def ema_update(ema_model, model, decay=0.999):
    with torch.no_grad():
        for p_ema, p in zip(ema_model.parameters(), model.parameters()):
            p_ema.lerp_(p, 1 - decay)
        msd = model.state_dict()
        for k, b in ema_model.named_buffers():
            if b.is_floating_point():
                b.copy_(msd[k])
'''),
    "ema with torch.lerp into .data, buffers through state_dict": ("ema_update", '''
def ema_update(ema_model, model, decay=0.999):
    own = dict(model.named_parameters())
    for name, p_ema in ema_model.named_parameters():
        p_ema.data = torch.lerp(p_ema.data, own[name].data, 1 - decay)
    state = ema_model.state_dict()
    for name, b in model.named_buffers():
        if b.dtype.is_floating_point:
            state[name].copy_(b)
'''),
    "train_step: Tensor.normal_ and multinomial times": ("train_step", '''
def train_step(model, optimizer, x_0, alpha_bar, generator=None):
    T = len(alpha_bar)
    noise = torch.empty_like(x_0).normal_(generator=generator)
    t = torch.multinomial(torch.ones(T), x_0.shape[0], replacement=True, generator=generator)
    loss = ddpm_loss(model, x_0, t, noise, alpha_bar)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss)
'''),
    "evaluate: NumPy generator seeded from the torch generator, float64 sums": ("evaluate", '''
def evaluate(model, batches, alpha_bar, generator=None):
    rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
    mode = model.training
    model.eval()
    total, n = np.float64(0), 0
    with torch.no_grad():
        for x_0, _ in batches:
            t = torch.from_numpy(rng.integers(0, len(alpha_bar), size=x_0.shape[0]))
            noise = torch.from_numpy(rng.standard_normal(tuple(x_0.shape))).to(x_0.dtype)
            total += np.float64(ddpm_loss(model, x_0, t, noise, alpha_bar).item()) * x_0.shape[0]
            n += x_0.shape[0]
    model.train(mode)
    return float(total / n)
'''),
}


@pytest.mark.parametrize("case", sorted(CORRECT))
def test_direct_correct_variants_pass(case):
    name, src = CORRECT[case]
    run_check(name, namespace(**{name: src}))


# ------------------------------------------------------------------------------------------ cell runner

@pytest.fixture(scope="module")
def run_notebook():
    runner = pytest.importorskip("grading.runner")
    return runner.run_notebook


def test_runner_solution_passes_every_test_cell(run_notebook):
    res = run_notebook(NB, stop_after="test_ema_update")
    assert_every_cell_passes(res, [f"test_{n}" for n in GRADED])


def test_runner_mistakes_lose_points_in_their_cells(run_notebook):
    """Four independent answer cells replaced at once; ddpm_loss is left correct and keeps its points."""
    replace = {
        "timestep_embedding": MISTAKES["embedding frequencies -i/dim"][1](),
        "train_step": MISTAKES["train_step never zeroes gradients"][1](),
        "evaluate": MISTAKES["evaluate averages batch means"][1](),
        "ema_update": MISTAKES["ema decay swapped"][1](),
    }
    res = run_notebook(NB, replace=replace, stop_after="test_ema_update")
    assert res["test_ddpm_loss"].passed, res["test_ddpm_loss"].message
    expected = {
        "test_timestep_embedding": r"\(-i / dim\) instead of",
        "test_train_step": r"gradients were not zeroed",
        "test_evaluate": r"equal weights",
        "test_ema_update": r"",  # the visible assert already catches the swap
    }
    for gid, pattern in expected.items():
        r = res[gid]
        assert not r.passed and r.points == 0, f"{gid} should lose its points"
        assert re.search(pattern, r.message, re.S), f"{gid}: {r.message}"


def test_runner_loss_mistake_loses_points(run_notebook):
    res = run_notebook(NB, replace={"ddpm_loss": MISTAKES["model fed x_0"][1]()}, stop_after="test_ddpm_loss")
    r = res["test_ddpm_loss"]
    assert not r.passed and r.points == 0
    assert re.search(r"fed x_0", r.message), r.message


# ------------------------------------------------------------------------------------------ issue 15: families

def _body(name: str, src: str) -> str:
    return NOTEBOOK.body(name, src)


TS_DRAWS = ("t = torch.randint(0, T, (B,), generator=generator, device=draw_on).to(x_0.device)  # (B,)\n"
            "    noise = torch.randn(x_0.shape, generator=generator, device=draw_on, dtype=x_0.dtype).to(x_0.device)"
            "  # (B, C, H, W)")
FAMILY_MISTAKES = {
    # name: (family, graded function, buggy source, regex of the message)
    # 1. generator discipline
    "F1 train_step reseeds the global RNG": (1, "train_step", lambda: mutate(
        "train_step", TS_DRAWS, "if generator is not None:\n        torch.manual_seed(generator.initial_seed())\n"
        "    t = torch.randint(0, T, (B,))\n    noise = torch.randn_like(x_0)"), r"changed torch's global random state"),
    "F1 train_step: a new generator of the same seed": (1, "train_step", lambda: mutate(
        "train_step", "draw_on = generator.device if generator is not None else x_0.device",
        "draw_on = x_0.device\n    if generator is not None:\n"
        "        generator = torch.Generator().manual_seed(generator.initial_seed())"),
        r"continue the generator's stream"),
    "F1 evaluate draws t without the generator": (1, "evaluate", lambda: mutate(
        "evaluate", "t = torch.randint(0, T, (B,), generator=generator, device=draw_on)",
        "t = torch.randint(0, T, (B,), device=draw_on)"), r"changed torch's global random state"),
    "F1 evaluate restarts the generator at every call": (1, "evaluate", lambda: mutate(
        "evaluate", "    was_training = model.training\n",
        "    was_training = model.training\n    if generator is not None:\n"
        "        generator = torch.Generator().manual_seed(generator.initial_seed())\n"),
        r"continue the generator's stream"),
    # 2. inputs left alone
    "F2 ddpm_loss scales the noise in place": (2, "ddpm_loss", lambda: mutate(
        "ddpm_loss", "x_t = q_sample(x_0, t, alpha_bar, noise)  # (B, C, H, W)",
        "ab = alpha_bar[t].view(-1, 1, 1, 1)\n    x_t = ab.sqrt() * x_0 + noise.mul_((1 - ab).sqrt())"),
        r"changed its input `noise` in place"),
    "F2 ddpm_loss noises x_0 in place": (2, "ddpm_loss", lambda: mutate(
        "ddpm_loss", "x_t = q_sample(x_0, t, alpha_bar, noise)  # (B, C, H, W)",
        "ab = alpha_bar[t].view(-1, 1, 1, 1)\n    x_t = x_0.mul_(ab.sqrt()).add_((1 - ab).sqrt() * noise)"),
        r"changed its input `x_0` in place"),
    "F2 train_step takes the square root of alpha_bar in place": (2, "train_step", lambda: mutate(
        "train_step", "    optimizer.zero_grad()\n    loss = ddpm_loss(model, x_0, t, noise, alpha_bar)",
        "    optimizer.zero_grad()\n    sqrt_ab = alpha_bar.sqrt_()\n"
        "    x_t = sqrt_ab[t].view(-1, 1, 1, 1) * x_0 + (1 - sqrt_ab[t] ** 2).sqrt().view(-1, 1, 1, 1) * noise\n"
        "    loss = F.mse_loss(model(x_t, t), noise)"), r"changed its input `alpha_bar` in place"),
    # 3. arguments, not globals
    "F3 train_step takes T from the global beta": (3, "train_step", lambda: mutate(
        "train_step", "B, T = x_0.shape[0], alpha_bar.shape[0]", "B, T = x_0.shape[0], beta.shape[0]"),
        r"T not taken from the alpha_bar argument"),
    "F3 evaluate takes T from the global beta": (3, "evaluate", lambda: mutate(
        "evaluate", "    T = alpha_bar.shape[0]\n", "    T = len(beta)\n"), r"T not taken from the alpha_bar argument"),
    "F3 ddpm_loss with the notebook's alpha_bar": (3, "ddpm_loss", lambda: _body("ddpm_loss", '''
ab = globals()["alpha_bar"].to(x_0.device)
x_t = q_sample(x_0, t, ab, noise)
return F.mse_loss(model(x_t, t), noise)
'''), r"notebook's globals"),
    # 4. result types
    "F4 evaluate returns a tensor": (4, "evaluate", lambda: mutate("evaluate", "    return total / count",
                                                                "    return torch.tensor(total / count)"),
                                     r"Python float"),
    "F4 train_step draws float times": (4, "train_step", lambda: mutate(
        "train_step", "t = torch.randint(0, T, (B,), generator=generator, device=draw_on).to(x_0.device)",
        "t = torch.floor(torch.rand(B, generator=generator, device=draw_on) * T)"), r"torch\.long"),
    "F4 train_step returns a NumPy array": (4, "train_step", lambda: mutate(
        "train_step", "return loss.item()", "return loss.detach().numpy()"), r"Python float"),
    # 5. EMA: floating-point buffers are copied
    "F5 ema averages the buffers like the parameters": (5, "ema_update", lambda: _body("ema_update", '''
with torch.no_grad():
    for p_ema, p in zip(ema_model.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - decay)
    msd = model.state_dict()
    for k, b in ema_model.named_buffers():
        if b.is_floating_point():  # averaged like the parameters (timm's ModelEmaV2 does this)
            b.mul_(decay).add_(msd[k], alpha=1 - decay)
'''), r"averaged like the parameters"),
    "F5 ema averages every float entry of the state_dict": (5, "ema_update", lambda: _body("ema_update", '''
msd = model.state_dict()
with torch.no_grad():
    for k, v in ema_model.state_dict().items():
        if v.dtype.is_floating_point:
            v.mul_(decay).add_(msd[k], alpha=1 - decay)
'''), r"averaged like the parameters"),
    "F5 ema copies only BatchNorm's running statistics": (5, "ema_update", lambda: _body("ema_update", '''
with torch.no_grad():
    for p_ema, p in zip(ema_model.parameters(), model.parameters()):
        p_ema.mul_(decay).add_(p, alpha=1 - decay)
    for m_ema, m in zip(ema_model.modules(), model.modules()):
        if isinstance(m, torch.nn.BatchNorm1d):
            m_ema.running_mean.copy_(m.running_mean)
            m_ema.running_var.copy_(m.running_var)
'''), r"registered statistic.*not only BatchNorm"),
}


@pytest.mark.parametrize("case", sorted(FAMILY_MISTAKES))
def test_family_mistake_loses_points_with_its_cause(case):
    _, name, make, pattern = FAMILY_MISTAKES[case]
    ns = namespace(**{name: make()})
    with pytest.raises(CheckFailed) as err:
        run_check(name, ns)
    assert re.search(pattern, str(err.value), re.S), f"{case}: the message does not name the cause:\n{err.value}"


def test_family_mistakes_three_per_family():
    per_family = {}
    for family, *_ in FAMILY_MISTAKES.values():
        per_family[family] = per_family.get(family, 0) + 1
    assert all(per_family.get(f, 0) >= 3 for f in (1, 2, 3, 4, 5)), per_family


# ------------------------------------------------------------------------------------------ issue 15, family 8

HIDDEN_END = "### END " + "HIDDEN TESTS"
VISIBLE = {
    # mistake (MISTAKES), test cell, words of the visible message
    "embedding halves swapped": ("test_timestep_embedding", "halves are swapped"),
    "embedding frequencies -i/dim": ("test_timestep_embedding", "max_period ** (-i / dim)"),
    "sum instead of mean": ("test_ddpm_loss", "sum of squared errors instead of their mean"),
    "ema decay swapped": ("test_ema_update", "decay and 1 - decay are swapped"),
}


@pytest.mark.parametrize("case", sorted(VISIBLE))
def test_visible_assert_names_the_cause(case):
    from helpers.checks import VisibleTestFailed

    test_gid, words = VISIBLE[case]
    name, make, _ = MISTAKES[case]
    ns = namespace(**{name: make()})
    with pytest.raises(VisibleTestFailed) as err:
        exec(compile(NOTEBOOK.cells[test_gid].split(HIDDEN_END, 1)[1], test_gid, "exec"), ns)  # noqa: S102
    assert "Likely cause" in str(err.value) and words in str(err.value), str(err.value)

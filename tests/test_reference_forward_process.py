"""Oracle tests of grading/reference/forward_process.py: truths from the DDPM formulas."""
import math

import pytest
import torch

from grading.reference import forward_process as fp


def test_linear_schedule_endpoints_and_spacing():
    beta = fp.linear_beta_schedule()
    assert beta.shape == (1000,) and beta.dtype == torch.float32
    assert beta[0].item() == pytest.approx(1e-4) and beta[-1].item() == pytest.approx(0.02)
    diffs = beta.double().diff()
    assert torch.allclose(diffs, torch.full_like(diffs, (0.02 - 1e-4) / 999), rtol=1e-3)
    b = fp.linear_beta_schedule(5, 0.1, 0.5)
    assert torch.allclose(b, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))


def test_cosine_schedule_alpha_bar_is_f_ratio():
    T, s = 100, 0.008
    beta = fp.cosine_beta_schedule(T, s=s).double()
    _, alpha_bar = fp.alphas_from_betas(beta)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    want = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    # the last beta is clipped, so compare before it
    assert torch.allclose(alpha_bar[:-1], want[:-1], rtol=1e-5, atol=1e-7)
    assert beta.max().item() <= 0.999 + 1e-7
    assert beta[-1].item() == pytest.approx(0.999, rel=1e-6)  # f(T) = 0 gives beta = 1, clipped
    assert bool((beta.diff() > 0).all())


def test_cosine_schedule_clip():
    beta = fp.cosine_beta_schedule(10, max_beta=0.5)
    assert beta.max().item() == pytest.approx(0.5)


def test_alphas_from_betas():
    beta = torch.tensor([0.1, 0.2, 0.5], dtype=torch.float64)
    alpha, alpha_bar = fp.alphas_from_betas(beta)
    assert torch.allclose(alpha, torch.tensor([0.9, 0.8, 0.5], dtype=torch.float64))
    assert torch.allclose(alpha_bar, torch.tensor([0.9, 0.72, 0.36], dtype=torch.float64))


def test_forward_step_formula():
    beta = torch.tensor([0.1, 0.36], dtype=torch.float64)
    x = torch.full((2, 1, 2, 2), 2.0, dtype=torch.float64)
    noise = torch.ones_like(x)
    out = fp.forward_step(x, torch.tensor([0, 1]), beta, noise)
    assert torch.allclose(out[0], torch.full((1, 2, 2), 2 * math.sqrt(0.9) + math.sqrt(0.1), dtype=torch.float64))
    assert torch.allclose(out[1], torch.full((1, 2, 2), 2 * 0.8 + 0.6, dtype=torch.float64))


def test_q_sample_formula_and_rank_generic():
    alpha_bar = torch.tensor([0.64, 0.25], dtype=torch.float64)
    x0 = torch.tensor([[1.0, -1.0], [0.5, 0.0]], dtype=torch.float64)  # rank 2 works too
    noise = torch.tensor([[1.0, 1.0], [2.0, -2.0]], dtype=torch.float64)
    out = fp.q_sample(x0, torch.tensor([0, 1]), alpha_bar, noise)
    want = torch.tensor([[0.8 + 0.6, -0.8 + 0.6], [0.25 + 2 * math.sqrt(0.75), -2 * math.sqrt(0.75)]],
                        dtype=torch.float64)
    assert torch.allclose(out, want)


def test_q_sample_matches_iterated_forward_step(gen):
    """Marginal of T forward steps = closed form (mean sqrt(ab) x0, variance 1 - ab), Monte Carlo."""
    T, N = 20, 20000
    beta = fp.linear_beta_schedule(T, 0.01, 0.2).double()
    _, alpha_bar = fp.alphas_from_betas(beta)
    x0 = torch.full((N, 1), 0.7, dtype=torch.float64)
    x = x0
    for t in range(T):
        x = fp.forward_step(x, torch.full((N,), t, dtype=torch.long), beta,
                            torch.randn(x.shape, generator=gen, dtype=torch.float64))
    ab = alpha_bar[-1].item()
    assert x.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=4 / math.sqrt(N))
    assert x.var().item() == pytest.approx(1 - ab, abs=4 * math.sqrt(2 / N))
    x_closed = fp.q_sample(x0, torch.full((N,), T - 1, dtype=torch.long), alpha_bar,
                           torch.randn(x0.shape, generator=gen, dtype=torch.float64))
    assert x_closed.mean().item() == pytest.approx(x.mean().item(), abs=6 / math.sqrt(N))
    assert x_closed.var().item() == pytest.approx(x.var().item(), abs=6 * math.sqrt(2 / N))


def test_generate_noisy_samples_relation_and_uniform_t(gen):
    beta = fp.linear_beta_schedule(10)
    _, alpha_bar = fp.alphas_from_betas(beta)
    x0 = torch.rand(4000, 1, 2, 2, generator=gen) * 2 - 1
    x_t, noise, t = fp.generate_noisy_samples(x0, beta, generator=gen)
    assert x_t.shape == x0.shape and noise.shape == x0.shape and t.shape == (4000,) and t.dtype == torch.long
    assert torch.allclose(x_t, fp.q_sample(x0, t, alpha_bar, noise), atol=1e-6)
    counts = torch.bincount(t, minlength=10).double()
    assert counts.min() > 0  # both ends 0 and T-1 reached
    assert ((counts - 400) ** 2 / 400).sum().item() < 35  # chi-square, 9 dof, p ~ 1e-4
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.03


def test_generator_reproducible():
    beta = fp.linear_beta_schedule(10)
    x0 = torch.zeros(3, 1, 2, 2)
    a = fp.generate_noisy_samples(x0, beta, torch.Generator().manual_seed(1))
    b = fp.generate_noisy_samples(x0, beta, torch.Generator().manual_seed(1))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_dtype_follows_input():
    beta = fp.linear_beta_schedule(10)
    _, alpha_bar = fp.alphas_from_betas(beta)
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    assert fp.q_sample(x, torch.tensor([0, 9]), alpha_bar, torch.ones_like(x)).dtype == torch.float64


@pytest.mark.parametrize("t, err", [
    (torch.tensor([0.0, 1.0]), TypeError),        # not long
    (torch.tensor([[0, 1]]), ValueError),         # not (B,)
    (torch.tensor([0]), ValueError),              # wrong B
    (torch.tensor([0, 10]), ValueError),          # out of range
])
def test_bad_t_raises(t, err):
    beta = fp.linear_beta_schedule(10)
    _, alpha_bar = fp.alphas_from_betas(beta)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(err, match="t"):
        fp.q_sample(x, t, alpha_bar, torch.zeros_like(x))
    with pytest.raises(err, match="t"):
        fp.forward_step(x, t, beta, torch.zeros_like(x))


def test_bad_noise_shape_raises():
    beta = fp.linear_beta_schedule(10)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="noise"):
        fp.forward_step(x, torch.tensor([0, 1]), beta, torch.zeros(2, 1, 4, 3))

"""Oracle tests of grading/reference/sampling.py: delta-data and Gaussian-data exact noise predictors."""
import math

import pytest
import torch

from grading.reference import forward_process as fp
from grading.reference import sampling as sp

F64 = torch.float64


def _linear(T=1000, b0=1e-4, b1=0.02):
    beta = fp.linear_beta_schedule(T, b0, b1).double()
    return beta, fp.alphas_from_betas(beta)[1]


def delta_oracle(c, alpha_bar, calls=None):
    """Exact eps for data = the single point c."""
    def model(x_t, t):
        if calls is not None:
            calls.append(t.clone())
        ab = alpha_bar[t][:, None, None, None]
        return (x_t - ab.sqrt() * c) / (1 - ab).sqrt()
    return model


def gauss_oracle(alpha_bar):
    """Exact eps for data ~ N(0, I): eps = sqrt(1 - ab) x_t."""
    return lambda x_t, t: (1 - alpha_bar[t]).sqrt()[:, None, None, None] * x_t


def _variance_recursion(beta, sigma2):
    """Output variance of Algorithm 2 for N(0, I) data: v <- alpha_t v + sigma_t^2 (no noise at t = 0)."""
    v = 1.0
    for t in reversed(range(len(beta))):
        v = (1 - beta[t].item()) * v + (sigma2[t].item() if t > 0 else 0.0)
    return v


C = torch.linspace(-1, 1, 16, dtype=F64).reshape(1, 1, 4, 4)


def test_posterior_variance_formula():
    beta = torch.tensor([0.1, 0.2, 0.5], dtype=F64)
    ab = torch.tensor([0.9, 0.72, 0.36], dtype=F64)
    want = torch.tensor([0.0, (1 - 0.9) / (1 - 0.72) * 0.2, (1 - 0.72) / (1 - 0.36) * 0.5], dtype=F64)
    got = sp.posterior_variance(beta)
    assert got[0].item() == 0.0
    assert torch.allclose(got, want)
    assert bool((sp.posterior_variance(_linear()[0]) <= _linear()[0]).all())


def test_p_sample_step_formula():
    beta = torch.tensor([0.1, 0.2], dtype=F64)
    ab1 = 0.9 * 0.8
    model = lambda x, t: torch.full_like(x, 0.5)
    x = torch.full((2, 1, 2, 2), 1.5, dtype=F64)
    z = torch.full_like(x, -1.0)
    want1 = (1.5 - 0.2 / math.sqrt(1 - ab1) * 0.5) / math.sqrt(0.8) - math.sqrt(0.2)
    assert torch.allclose(sp.p_sample_step(model, x, 1, beta, z), torch.full_like(x, want1))
    want0 = (1.5 - 0.1 / math.sqrt(0.1) * 0.5) / math.sqrt(0.9)  # t == 0: z ignored
    assert torch.allclose(sp.p_sample_step(model, x, 0, beta, z), torch.full_like(x, want0))


@pytest.mark.parametrize("variance", ["beta", "beta_tilde", "none"])
def test_delta_oracle_returns_the_point(variance, gen):
    beta, alpha_bar = _linear()
    x_T = torch.randn(4, 1, 4, 4, generator=gen, dtype=F64)
    x0, history = sp.p_sample_loop(delta_oracle(C, alpha_bar), x_T, beta, variance=variance, generator=gen)
    assert (x0 - C).abs().max().item() < 1e-6
    assert len(history) == 10


def test_gaussian_oracle_variance_T1000(gen):
    """Notes: sigma^2 = beta keeps the data variance (1 - beta_1 = 0.9999); beta_tilde gives a bit less."""
    beta, alpha_bar = _linear()
    want_beta = _variance_recursion(beta, beta)
    want_tilde = _variance_recursion(beta, sp.posterior_variance(beta))
    assert want_beta == pytest.approx(0.9999, abs=1e-6)
    assert 0.97 < want_tilde < 0.995
    x_T = torch.randn(2500, 1, 4, 4, generator=gen, dtype=F64)  # 40,000 values: SE of variance ~0.007
    for variance, want in (("beta", want_beta), ("beta_tilde", want_tilde)):
        x0, _ = sp.p_sample_loop(gauss_oracle(alpha_bar), x_T, beta, variance=variance,
                                 record_every=1000, generator=gen)
        assert x0.var().item() == pytest.approx(want, abs=0.03)


def test_gaussian_oracle_variance_short_schedule_separates_conventions(gen):
    """On a short, noisy schedule sigma^2 = beta, beta_tilde and beta**2 give clearly different variances."""
    beta, alpha_bar = _linear(10, 0.05, 0.5)
    wants = {v: _variance_recursion(beta, s2) for v, s2 in
             (("beta", beta), ("beta_tilde", sp.posterior_variance(beta)), ("none", torch.zeros_like(beta)))}
    assert wants["beta"] - wants["beta_tilde"] > 0.1
    x_T = torch.randn(10000, 1, 2, 2, generator=gen, dtype=F64)  # SE ~0.007
    for variance, want in wants.items():
        x0, _ = sp.p_sample_loop(gauss_oracle(alpha_bar), x_T, beta, variance=variance, generator=gen)
        assert x0.var().item() == pytest.approx(want, abs=0.035), variance


def test_history_records_x_after_steps_multiple_of_record_every(gen):
    beta, alpha_bar = _linear(10, 0.05, 0.5)
    x_T = torch.randn(3, 1, 2, 2, generator=gen, dtype=F64)
    x0, history = sp.p_sample_loop(gauss_oracle(alpha_bar), x_T, beta, variance="none", record_every=4)
    assert len(history) == 3  # after steps 8, 4, 0 (not 9, 5, 1: the index is the step's, not the count)
    ab_prev = torch.cat([torch.ones(1, dtype=F64), alpha_bar[:-1]])
    for h, t in zip(history, (8, 4, 0)):
        # with N(0, I) data and no noise, each step multiplies x by sqrt(alpha_t)
        assert h.device.type == "cpu"
        assert torch.allclose(h, x_T * math.sqrt(alpha_bar[-1].item() / ab_prev[t].item()))
    assert torch.equal(history[-1], x0)
    history[-1].add_(1.0)
    assert not torch.equal(history[-1], x0)  # a clone, not a view


def test_p_sample_loop_bad_variance():
    beta, alpha_bar = _linear(5)
    with pytest.raises(ValueError, match="variance"):
        sp.p_sample_loop(gauss_oracle(alpha_bar), torch.zeros(1, 1, 2, 2, dtype=F64), beta, variance="sigma")


def test_ddim_eta0_step_is_q_sample_with_recovered_noise(gen):
    beta, alpha_bar = _linear()
    noise = torch.randn(2, 1, 4, 4, generator=gen, dtype=F64)
    x_t = fp.q_sample(C.expand(2, 1, 4, 4), torch.tensor([700, 700]), alpha_bar, noise)
    out = sp.ddim_step(delta_oracle(C, alpha_bar), x_t, 700, 300, alpha_bar, eta=0.0)
    assert torch.allclose(out, fp.q_sample(C.expand(2, 1, 4, 4), torch.tensor([300, 300]), alpha_bar, noise))
    out = sp.ddim_step(delta_oracle(C, alpha_bar), x_t, 700, -1, alpha_bar, eta=0.0)
    assert torch.allclose(out, C.expand(2, 1, 4, 4), atol=1e-10)  # t_prev = -1: alpha_bar_prev = 1


def test_ddim_eta1_sigma_is_posterior_variance():
    """eq. 16 with eta = 1 and t_prev = t - 1 gives sigma^2 = beta_tilde_t."""
    beta, alpha_bar = _linear()
    zero = lambda x, t: torch.zeros_like(x)
    bt = sp.posterior_variance(beta)
    x = torch.zeros(1, 1, 1, 1, dtype=F64)
    for t in (1, 10, 500, 999):
        out = sp.ddim_step(zero, x, t, t - 1, alpha_bar, eta=1.0, z=torch.ones_like(x))
        assert out.item() ** 2 == pytest.approx(bt[t].item(), rel=1e-9)
        half = sp.ddim_step(zero, x, t, t - 1, alpha_bar, eta=0.5, z=torch.ones_like(x))
        assert half.item() ** 2 == pytest.approx(0.25 * bt[t].item(), rel=1e-9)


def test_ddim_eta1_consecutive_step_equals_ddpm_beta_tilde_step(gen):
    beta, alpha_bar = _linear()
    bt = sp.posterior_variance(beta)
    model = lambda x, t: torch.tanh(x) + 0.001 * t[:, None, None, None]
    x = torch.randn(2, 1, 3, 3, generator=gen, dtype=F64)
    z = torch.randn(x.shape, generator=gen, dtype=F64)
    for t in (1, 50, 999):
        eps = model(x, torch.full((2,), t))
        want = (x - beta[t] / (1 - alpha_bar[t]).sqrt() * eps) / (1 - beta[t]).sqrt() + bt[t].sqrt() * z
        assert torch.allclose(sp.ddim_step(model, x, t, t - 1, alpha_bar, eta=1.0, z=z), want, atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_sample_delta_oracle_and_timesteps(eta, gen):
    beta, alpha_bar = _linear()
    calls = []
    x_T = torch.randn(3, 1, 4, 4, generator=gen, dtype=F64)
    x0 = sp.ddim_sample(delta_oracle(C, alpha_bar, calls), x_T, alpha_bar, num_steps=50, eta=eta, generator=gen)
    assert (x0 - C).abs().max().item() < 1e-6
    ts = [c[0].item() for c in calls]
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    gaps = [a - b for a, b in zip(ts, ts[1:])]
    assert max(gaps) - min(gaps) <= 1  # evenly spaced


def test_ddim_sample_all_steps_and_one_step(gen):
    beta, alpha_bar = _linear(20, 0.01, 0.2)
    calls = []
    sp.ddim_sample(delta_oracle(C, alpha_bar, calls), torch.zeros(1, 1, 4, 4, dtype=F64), alpha_bar, num_steps=20)
    assert [c[0].item() for c in calls] == list(range(19, -1, -1))
    calls.clear()
    out = sp.ddim_sample(delta_oracle(C, alpha_bar, calls), torch.zeros(1, 1, 4, 4, dtype=F64), alpha_bar, num_steps=1)
    assert [c[0].item() for c in calls] == [19] and torch.allclose(out, C)


def test_sdedit(gen):
    beta, alpha_bar = _linear()
    calls = []
    x0 = C.expand(2, 1, 4, 4)
    out = sp.sdedit(delta_oracle(C, alpha_bar, calls), x0, 300, beta, generator=gen)
    assert torch.allclose(out, x0, atol=1e-8)  # data = the input point: returned exactly
    assert [c[0].item() for c in calls] == list(range(300, -1, -1))
    # Gaussian data: small t_start stays near the input, t_start = T - 1 forgets it
    x = torch.randn(4000, 1, 2, 2, generator=gen, dtype=F64)
    near = sp.sdedit(gauss_oracle(alpha_bar), x, 5, beta, generator=gen)
    assert (near - x).pow(2).mean().item() < 0.01
    # q_sample to t_start then t_start + 1 reverse steps each multiplying by sqrt(alpha): corr(out, x) = alpha_bar_t
    t_start = 300
    mid = sp.sdedit(gauss_oracle(alpha_bar), x, t_start, beta, generator=gen)
    corr = torch.corrcoef(torch.stack([mid.flatten(), x.flatten()]))[0, 1].item()
    assert corr == pytest.approx(alpha_bar[t_start].item(), abs=0.04)
    far = sp.sdedit(gauss_oracle(alpha_bar), x, 999, beta, generator=gen)
    corr = torch.corrcoef(torch.stack([far.flatten(), x.flatten()]))[0, 1].item()
    assert abs(corr) < 0.05 and far.var().item() == pytest.approx(1.0, abs=0.05)


def test_bad_inputs():
    beta, alpha_bar = _linear(5)
    m = gauss_oracle(alpha_bar)
    x = torch.zeros(1, 1, 2, 2, dtype=F64)
    with pytest.raises(ValueError, match="t"):
        sp.p_sample_step(m, x, 5, beta, None)
    with pytest.raises(ValueError, match="t_prev"):
        sp.ddim_step(m, x, 2, 2, alpha_bar)
    with pytest.raises(ValueError, match="z"):
        sp.ddim_step(m, x, 3, 2, alpha_bar, eta=1.0)
    with pytest.raises(ValueError, match="num_steps"):
        sp.ddim_sample(m, x, alpha_bar, num_steps=6)


def test_ddim_timesteps():
    assert sp.ddim_timesteps(1000, 10).tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert sp.ddim_timesteps(5, 5).tolist() == [4, 3, 2, 1, 0]
    assert sp.ddim_timesteps(5, 1).tolist() == [4]
    steps = sp.ddim_timesteps(1000, 999)
    assert len(steps) == len(set(steps.tolist())) and bool((steps.diff() < 0).all())

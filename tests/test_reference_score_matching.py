"""Oracle tests of grading/reference/score_matching.py (NCSN and its improved techniques)."""
import itertools
import math

import numpy as np
import pytest
import torch

from grading.reference import score_matching as sm

F64 = torch.float64


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _technique4_literal(eps, sigmas, T):
    """The spec's formula written out literally (no simplification)."""
    sL2 = sigmas[-1] ** 2
    gamma = sigmas[0] / sigmas[1]
    c = 2 * eps / (sL2 - sL2 * (1 - eps / sL2) ** 2)
    return (1 - eps / sL2) ** (2 * T) * (gamma ** 2 - c) + c


def test_geometric_sigmas():
    s = sm.geometric_sigmas(10.0, 0.01, 7)
    assert s.shape == (7,)
    assert s[0].item() == pytest.approx(10.0) and s[-1].item() == pytest.approx(0.01)
    ratios = (s[:-1].double() / s[1:].double())
    assert torch.allclose(ratios, torch.full_like(ratios, 1000 ** (1 / 6)), rtol=1e-5)
    with pytest.raises(ValueError):
        sm.geometric_sigmas(0.01, 10.0, 7)


def test_max_pairwise_distance_brute_force_and_chunks(gen):
    x = torch.randn(40, 1, 3, 3, generator=gen, dtype=F64)
    want = max((a - b).norm().item() for a, b in itertools.combinations(x, 2))
    assert sm.max_pairwise_distance(x) == pytest.approx(want, rel=1e-10)
    assert sm.max_pairwise_distance(x, chunk_size=7) == pytest.approx(want, rel=1e-10)
    # the farthest pair straddles chunks; float32 input, computed accurately
    y = torch.zeros(1500, 8)
    y[3, 0], y[1400, 1] = 3.0, 4.0
    assert sm.max_pairwise_distance(y) == pytest.approx(5.0, rel=1e-7)
    assert sm.max_pairwise_distance(torch.ones(1, 4)) == 0.0


def test_technique2_gamma_and_L():
    gamma = sm.noise_ratio_gamma(1024)
    assert gamma == pytest.approx(1.0710, abs=1e-4)
    a = math.sqrt(2 * 1024) * (gamma - 1)
    assert _phi(a + 3 * gamma) - _phi(a - 3 * gamma) == pytest.approx(0.5, abs=1e-9)
    for smax, want_L in ((10.0, 102), (30.0, None), (50.0, None)):
        L = sm.num_noise_levels(smax, 0.01, 1024)
        ratio = smax / 0.01
        assert ratio ** (1 / (L - 1)) <= gamma < ratio ** (1 / (L - 2))  # the smallest such L
        if want_L is not None:
            assert L == want_L
    assert sm.num_noise_levels(30.0, 0.01, 1024) == pytest.approx(118, abs=1)
    assert sm.num_noise_levels(50.0, 0.01, 1024) == pytest.approx(125, abs=1)
    with pytest.raises(ValueError, match="D"):
        sm.noise_ratio_gamma(2)


def test_score_float_and_per_example_sigma():
    net = lambda x: torch.ones_like(x)
    x = torch.zeros(3, 1, 2, 2, dtype=F64)
    assert torch.allclose(sm.score(net, x, 0.5), torch.full_like(x, 2.0))
    out = sm.score(net, x, torch.tensor([1.0, 2.0, 4.0], dtype=F64))
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([1.0, 0.5, 0.25], dtype=F64))
    with pytest.raises(ValueError, match="sigma"):
        sm.score(net, x, torch.tensor([1.0, 2.0]))


def test_dsm_loss_oracles(gen):
    B, D = 64, 1 * 8 * 8
    x = torch.rand(B, 1, 8, 8, generator=gen, dtype=F64)
    sigma = torch.rand(B, generator=gen, dtype=F64) + 0.1
    noise = torch.randn(x.shape, generator=gen, dtype=F64)
    # exact score of the single data point x: s(x~) = -(x~ - x) / sigma^2, i.e. net(x~) = -(x~ - x) / sigma
    exact_net = lambda xt: -(xt - x) / sigma[:, None, None, None]
    assert sm.dsm_loss(exact_net, x, sigma, noise).item() < 1e-20
    zero = sm.dsm_loss(lambda xt: torch.zeros_like(xt), x, sigma, noise)
    assert zero.dim() == 0
    assert zero.item() == pytest.approx(0.5 * noise.pow(2).sum().item() / B, rel=1e-12)
    assert zero.item() == pytest.approx(D / 2, rel=0.1)  # E = D / 2
    assert sm.dsm_loss(lambda xt: torch.zeros_like(xt), x, 0.3, noise).item() == pytest.approx(zero.item())


def test_langevin_step_size():
    assert sm.langevin_step_size(2e-5, 1.0, 0.01) == pytest.approx(0.2)
    assert sm.langevin_step_size(2e-5, 0.01, 0.01) == pytest.approx(2e-5)


def test_langevin_variance_oracle(gen):
    """Single point at 0: s(x, sigma) = -x / sigma^2. T steps from variance (gamma sigma)^2 give the
    technique-4 ratio (1.0855 for gamma = 1.071, eps = 1e-5, T = 5)."""
    sigma, gamma, eps, T = 0.01, 1.071, 1e-5, 5
    want = _technique4_literal(eps, [gamma * sigma, sigma], T)
    assert want == pytest.approx(1.0855, abs=5e-4)
    N = 200000
    x = gamma * sigma * torch.randn(N, 1, 1, 1, generator=gen, dtype=F64)
    out = sm.annealed_langevin(lambda v: -v / sigma, x, [sigma], eps, T, denoise=False, generator=gen)
    assert (out.var().item() / sigma ** 2) == pytest.approx(want, abs=4 * want * math.sqrt(2 / N))


def test_annealed_langevin_levels_order_and_step_sizes(gen, monkeypatch):
    """Zero network: x only collects noise, variance sum_i n * 2 alpha_i; levels largest first, sigma per example."""
    sigmas = [1.0, 0.1, 0.01]
    seen = []
    real_score = sm.score

    def spy(net, x, sigma):
        seen.append(sigma)
        return real_score(net, x, sigma)

    monkeypatch.setattr(sm, "score", spy)
    N, n, eps = 20000, 2, 1e-5
    out = sm.annealed_langevin(lambda v: torch.zeros_like(v), torch.zeros(N, 1, 1, 1, dtype=F64), sigmas, eps, n,
                               denoise=True, generator=gen)
    want = sum(n * 2 * eps * s ** 2 / 0.01 ** 2 for s in sigmas)
    assert out.var().item() == pytest.approx(want, rel=4 * math.sqrt(2 / N))
    levels = [float(s[0]) if isinstance(s, torch.Tensor) else float(s) for s in seen]
    assert levels == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.01])  # last: the denoising step
    assert all(isinstance(s, torch.Tensor) and s.shape == (N,) for s in seen)


def test_annealed_langevin_denoise_is_tweedie():
    """No Langevin steps: the denoising step x + sigma_min^2 s(x, sigma_min) maps x to the data point 0."""
    sL = 0.01
    x = torch.randn(5, 1, 2, 2, dtype=F64) * sL
    out = sm.annealed_langevin(lambda v: -v / sL, x, [1.0, sL], 1e-5, 0, denoise=True)
    assert out.abs().max().item() < 1e-15
    assert torch.equal(sm.annealed_langevin(lambda v: -v / sL, x, [1.0, sL], 1e-5, 0, denoise=False), x)


@pytest.mark.parametrize("gamma, T, want", [
    (None, 5, 1.01e-5),      # gamma from technique 2 for D = 1024
    (None, 1, 1.28e-5),
    (None, 10, 7.9e-6),
    (1.0376, 5, 6.2e-6),     # reproduces the official CIFAR-10 step_lr
])
def test_choose_step_size_numbers(gamma, T, want):
    gamma = gamma or sm.noise_ratio_gamma(1024)
    sigmas = [gamma * 0.01, 0.01]
    eps = sm.choose_step_size(sigmas, T)
    assert 0 < eps < 0.01 ** 2
    assert eps == pytest.approx(want, rel=0.02)


def test_choose_step_size_is_the_argmin():
    sigmas = list(sm.geometric_sigmas(10.0, 0.01, 102).double())
    T = 5
    eps = sm.choose_step_size(sigmas, T)
    f = lambda e: abs(_technique4_literal(e, [float(s) for s in sigmas], T) - 1)
    grid = np.logspace(-12, math.log10(0.01 ** 2 * (1 - 1e-9)), 5000)
    assert f(eps) <= min(f(g) for g in grid) + 1e-12


def test_inpaint_known_pixels_exact_and_unknown_follow_the_score(gen):
    """One level, exact score of the point c at sigma: unknown pixels converge to c."""
    sigma = 0.05
    c = torch.linspace(-1, 1, 16, dtype=F64).reshape(1, 1, 4, 4)
    x_known = torch.randn(2, 1, 4, 4, generator=gen, dtype=F64)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2] = True
    out = sm.inpaint(lambda v: -(v - c) / sigma, x_known, mask, [sigma], 0.3 * sigma ** 2, 100, generator=gen)
    assert torch.equal(out[..., :2], x_known[..., :2])
    assert (out - c)[..., 2:].abs().max().item() < 6 * sigma


def test_inpaint_injects_known_pixels_during_the_steps(gen):
    """The score pulls known pixels to 0 and unknown pixels to the mean of the known ones: the unknown
    pixels end near x_known's value only if the known pixels are put back (x_known + sigma z) after
    every step; otherwise everything decays to 0."""
    sigma = 0.01
    x_known = torch.full((1, 1, 2, 4), 0.6, dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=F64).expand(2, 4).reshape(1, 1, 2, 4)

    def net(v):
        target = (v * mask).sum(dim=(1, 2, 3), keepdim=True) / mask.sum()
        return -(v - (1 - mask) * target) / sigma

    out = sm.inpaint(net, x_known, mask, [sigma], 0.3 * sigma ** 2, 60, generator=gen)
    assert torch.equal(out * mask, x_known * mask)
    assert (out - 0.6)[..., 2:].abs().max().item() < 0.1


def test_inpaint_bad_mask():
    with pytest.raises(ValueError, match="mask"):
        sm.inpaint(lambda v: v, torch.zeros(1, 1, 2, 2), torch.zeros(3, 3), [1.0, 0.1], 1e-5, 1)

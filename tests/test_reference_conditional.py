"""Oracle tests of grading/reference/conditional.py."""
import pytest
import torch
import torch.nn as nn

from grading.reference import conditional as cd
from grading.reference import forward_process as fp

F64 = torch.float64


def _group_norm_by_hand(h, G, eps=1e-5):
    B, C = h.shape[:2]
    g = h.reshape(B, G, -1)
    mean = g.mean(dim=2, keepdim=True)
    var = g.var(dim=2, unbiased=False, keepdim=True)
    return ((g - mean) / torch.sqrt(var + eps)).reshape(h.shape)


@pytest.mark.parametrize("G", [1, 2])
def test_adaptive_group_norm_starts_as_plain_group_norm(G, gen):
    layer = cd.AdaptiveGroupNorm(4, 6, num_groups=G)
    assert torch.count_nonzero(layer.proj.weight) == 0 and torch.count_nonzero(layer.proj.bias) == 0
    h = torch.randn(3, 4, 5, 5, generator=gen) * 3 + 1
    out = layer(h, torch.randn(3, 6, generator=gen))
    assert out.shape == h.shape
    assert torch.allclose(out, _group_norm_by_hand(h, G), atol=1e-5)
    assert not any(isinstance(m, nn.GroupNorm) and m.affine for m in layer.modules())


def test_adaptive_group_norm_scale_and_shift(gen):
    layer = cd.AdaptiveGroupNorm(2, 3, num_groups=1)
    with torch.no_grad():
        layer.proj.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]))
        layer.proj.bias.copy_(torch.tensor([0.0, 0.5, -1.0, 0.0]))
    cond = torch.tensor([[0.2, -0.4, 1.0], [1.0, 2.0, 3.0]])
    h = torch.randn(2, 2, 4, 4, generator=gen)
    # first half scale, second half shift, one value per example and channel
    scale = torch.stack([cond[:, 0], cond[:, 1] + 0.5], dim=1)  # (B, C)
    shift = torch.stack([cond[:, 2] - 1.0, cond.sum(dim=1)], dim=1)  # (B, C)
    want = _group_norm_by_hand(h, 1) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    assert torch.allclose(layer(h, cond), want, atol=1e-5)
    layer(h, cond).sum().backward()
    assert layer.proj.weight.grad is not None and layer.proj.weight.grad.abs().sum() > 0


def test_adaptive_group_norm_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        cd.AdaptiveGroupNorm(6, 4, num_groups=4)
    layer = cd.AdaptiveGroupNorm(4, 6)
    with pytest.raises(ValueError, match="cond"):
        layer(torch.zeros(2, 4, 3, 3), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="h"):
        layer(torch.zeros(2, 3, 3, 3), torch.zeros(2, 6))


def _class_delta(points, alpha_bar, calls=None):
    """Exact eps when class y is the single point points[y]."""
    def model(x_t, t, y):
        if calls is not None:
            calls.append((t.clone(), y.clone()))
        ab = alpha_bar[t][:, None, None, None]
        return (x_t - ab.sqrt() * points[y]) / (1 - ab).sqrt()
    return model


POINTS = torch.stack([torch.full((1, 2, 2), v, dtype=F64) for v in (-0.9, -0.3, 0.4, 1.0)])  # (4, 1, 2, 2)


def test_conditional_loss_zero_for_exact_model_and_uses_labels(gen):
    beta = fp.linear_beta_schedule(50).double()
    _, alpha_bar = fp.alphas_from_betas(beta)
    y = torch.tensor([0, 1, 2, 3, 3, 1])
    x0 = POINTS[y]
    t = torch.randint(0, 50, (6,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen, dtype=F64)
    model = _class_delta(POINTS, alpha_bar)
    loss = cd.conditional_ddpm_loss(model, x0, y, t, noise, alpha_bar)
    assert loss.dim() == 0 and loss.item() < 1e-20
    assert cd.conditional_ddpm_loss(model, x0, y.flip(0), t, noise, alpha_bar).item() > 1e-3
    zero = lambda x, t, y: torch.zeros_like(x)
    assert cd.conditional_ddpm_loss(zero, x0, y, t, noise, alpha_bar).item() == pytest.approx(
        noise.pow(2).mean().item(), rel=1e-12)


def test_p_sample_loop_conditional_returns_class_points(gen):
    beta = fp.linear_beta_schedule(1000).double()
    _, alpha_bar = fp.alphas_from_betas(beta)
    y = torch.tensor([3, 0, 2, 1])
    calls = []
    x0 = cd.p_sample_loop_conditional(_class_delta(POINTS, alpha_bar, calls),
                                      torch.randn(4, 1, 2, 2, generator=gen, dtype=F64), y, beta, generator=gen)
    assert (x0 - POINTS[y]).abs().max().item() < 1e-6
    assert [c[0][0].item() for c in calls] == list(range(999, -1, -1))
    assert all(torch.equal(c[1], y) for c in calls)


def test_p_sample_loop_conditional_noise_variance(gen):
    """N(0, I) data for every class: eps = sqrt(1 - ab) x_t; with sigma^2 = beta the variance is 1 - beta_1."""
    beta = fp.linear_beta_schedule(10, 0.05, 0.5).double()
    _, alpha_bar = fp.alphas_from_betas(beta)
    model = lambda x, t, y: (1 - alpha_bar[t]).sqrt()[:, None, None, None] * x
    x0 = cd.p_sample_loop_conditional(model, torch.randn(10000, 1, 2, 2, generator=gen, dtype=F64),
                                      torch.zeros(10000, dtype=torch.long), beta, generator=gen)
    assert x0.var().item() == pytest.approx(1 - 0.05, abs=0.035)


def test_bad_labels():
    beta = fp.linear_beta_schedule(5)
    _, alpha_bar = fp.alphas_from_betas(beta)
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="y"):
        cd.conditional_ddpm_loss(lambda x, t, y: x, x, torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), x, alpha_bar)


def test_adaptive_group_norm_plugs_into_helpers_unet(gen):
    """The spec: the conditional U-Net in helpers accepts AdaptiveGroupNorm as its normalization layer."""
    models = pytest.importorskip("helpers.models")
    from grading.reference.ddpm_training import timestep_embedding

    torch.manual_seed(0)
    net = models.UNetConditional(timestep_embedding, n_classes=10, norm_layer=cd.AdaptiveGroupNorm, width=8)
    layers = [m for m in net.modules() if isinstance(m, cd.AdaptiveGroupNorm)]
    assert layers, "no AdaptiveGroupNorm inside the U-Net"
    x = torch.randn(2, 1, 32, 32, generator=gen)
    out = net(x, torch.tensor([0, 999]), torch.tensor([3, 10]))
    assert out.shape == x.shape
    out.pow(2).mean().backward()
    assert any(m.proj.weight.grad is not None and m.proj.weight.grad.abs().sum() > 0 for m in layers)


def _delta_model(centers, alpha_bar):
    """The exact noise predictor when class k is the single image centers[k]."""
    def model(x, t, y):
        ab = alpha_bar[t].reshape(-1, 1, 1, 1).to(x)
        return (x - ab.sqrt() * centers[y].to(x)) / (1 - ab).sqrt()
    return model


def test_sample_digit_lands_on_the_requested_class(gen):
    beta = fp.linear_beta_schedule(30, 1e-3, 0.2)
    _, alpha_bar = fp.alphas_from_betas(beta)
    centers = torch.rand(10, 1, 32, 32, generator=gen) * 1.6 - 0.8
    x = cd.sample_digit(_delta_model(centers, alpha_bar), 3, 4, beta, generator=gen)
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x, centers[3].expand(4, 1, 32, 32), atol=2e-3)
    with pytest.raises(ValueError, match="digit"):
        cd.sample_digit(_delta_model(centers, alpha_bar), 10, 1, beta)


def test_sample_grid_rows_ask_for_digits_and_columns_share_x_T(gen):
    beta = fp.linear_beta_schedule(30, 1e-3, 0.2)
    _, alpha_bar = fp.alphas_from_betas(beta)
    centers = torch.rand(10, 1, 32, 32, generator=gen) * 1.6 - 0.8
    starts = []
    delta = _delta_model(centers, alpha_bar)

    def model(x, t, y):
        if not starts:
            starts.append(x.clone())
        return delta(x, t, y)

    x, y = cd.sample_grid(model, 3, beta, generator=gen)
    assert y.tolist() == [k for k in range(10) for _ in range(3)] and y.dtype == torch.long
    assert torch.allclose(x, centers[y], atol=2e-3)
    x_T = starts[0].reshape(10, 3, -1)  # (row, column, pixels)
    assert all(torch.equal(x_T[k], x_T[0]) for k in range(10)) and not torch.equal(x_T[0, 0], x_T[0, 1])

"""helpers.models: shapes, errors, gradients to every parameter, conditioning, memory formats."""
import copy
import math

import pytest
import torch
from torch import nn

from helpers import models
from helpers.models import ScoreNet, UNet, UNetConditional, count_parameters

W = 8  # a narrow network keeps the tests fast; the default width is 16


def _local_embedding(t, dim, max_period=10000.0):
    """Stand-in sinusoidal encoding (used only if the reference is missing)."""
    i = torch.arange(dim // 2, dtype=torch.float64)
    angles = t.double()[:, None] * max_period ** (-2 * i / dim)[None]
    return torch.cat([angles.sin(), angles.cos()], 1).float()


try:
    from grading.reference.ddpm_training import timestep_embedding as _embedding
except ImportError:  # pragma: no cover
    _embedding = _local_embedding


class LocalAdaptiveGroupNorm(nn.Module):
    """GroupNorm(h) * (1 + scale) + shift with (scale, shift) a linear map of cond (test stand-in)."""

    def __init__(self, num_channels, cond_dim):
        super().__init__()
        self.norm = nn.GroupNorm(1, num_channels, affine=False)
        self.proj = nn.Linear(cond_dim, 2 * num_channels)
        self.calls = []

    def forward(self, h, cond):
        self.calls.append(tuple(cond.shape))
        scale, shift = self.proj(cond).chunk(2, dim=1)  # (B, C) each
        return self.norm(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


def _norm_layers():
    layers = [LocalAdaptiveGroupNorm]
    try:
        from grading.reference.conditional import AdaptiveGroupNorm
        layers.append(AdaptiveGroupNorm)
    except ImportError:  # pragma: no cover
        pass
    return layers


@pytest.fixture
def emb():
    return _embedding


def _seeded(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def _all_grads_nonzero(model):
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reaches {missing}"


def test_unet_shape_and_gradients_reach_every_parameter(emb, gen):
    model = _seeded(lambda: UNet(emb, width=W))
    x = torch.randn(4, 1, 32, 32, generator=gen)
    t = torch.tensor([0, 10, 500, 999])
    out = model(x, t)
    assert out.shape == x.shape and out.dtype == torch.float32
    out.square().mean().backward()
    _all_grads_nonzero(model)


def test_default_width_parameter_count(emb):
    """The course text's U-Net at width 16 (GroupNorm(1), bilinear Up, attention at 8x8 and 4x4)."""
    backbone = count_parameters(ScoreNet())
    assert backbone == 812_881
    d = 64
    time_mlp = 2 * (d * d + d)
    projections = sum(d * c + c for c in (32, 64, 64, 32, 16, 16))
    n = count_parameters(UNet(emb))
    assert n == backbone + time_mlp + projections == 835_761
    assert count_parameters(UNetConditional(emb)) == n + 11 * 64  # plus the label embedding


def test_count_parameters_trainable_only(emb):
    model = UNet(emb, width=W)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total
    model.requires_grad_(False)
    assert count_parameters(model) == 0 and count_parameters(model, trainable_only=False) == total


def test_multichannel_input_output(emb, gen):
    model = UNet(emb, c_in=3, c_out=2, width=W)
    out = model(torch.randn(2, 3, 32, 32, generator=gen), torch.tensor([1, 2]))
    assert out.shape == (2, 2, 32, 32)


@pytest.mark.parametrize("x_shape, t, match", [
    ((2, 1, 28, 28), torch.tensor([1, 2]), r"\(B, 1, 32, 32\)"),
    ((2, 32, 32), torch.tensor([1, 2]), r"\(B, 1, 32, 32\)"),
    ((2, 3, 32, 32), torch.tensor([1, 2]), r"\(B, 1, 32, 32\)"),
    ((2, 1, 32, 32), torch.tensor([1, 2, 3]), r"t of shape \(2,\)"),
    ((2, 1, 32, 32), torch.tensor([[1], [2]]), r"t of shape \(2,\)"),
])
def test_unet_rejects_bad_shapes(emb, x_shape, t, match):
    with pytest.raises(ValueError, match=match):
        UNet(emb, width=W)(torch.zeros(x_shape), t)


def test_unet_rejects_integer_images_and_bad_embedding(emb):
    with pytest.raises(ValueError, match="floating-point"):
        UNet(emb, width=W)(torch.zeros(2, 1, 32, 32, dtype=torch.long), torch.tensor([1, 2]))
    wrong = lambda t, dim: torch.zeros(len(t), dim + 1)  # noqa: E731
    with pytest.raises(ValueError, match=r"time_embedding\(t, \d+\) must return shape"):
        UNet(wrong, width=W)(torch.zeros(2, 1, 32, 32), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="time_embedding"):
        UNet(16)


def test_time_encoded_once_and_projected_to_every_level(gen):
    dims = []

    def recording(t, dim):
        dims.append(dim)
        return _local_embedding(t, dim)
    model = _seeded(lambda: UNet(recording, width=W))
    x = torch.randn(2, 1, 32, 32, generator=gen)
    a = model(x, torch.tensor([3, 3]))
    assert dims == [4 * W], "one call of the time embedding per forward pass, with dim 4 * width"
    b = model(x, torch.tensor([800, 800]))
    assert not torch.allclose(a, b), "the output must depend on t"
    widths = [p[1].out_features for p in model.net.cond_proj]
    assert widths == [2 * W, 4 * W, 4 * W, 2 * W, W, W], "one projection per level, to its channel count"
    for k, proj in enumerate(model.net.cond_proj):  # every level's projection matters
        saved = proj[1].bias.detach().clone()
        with torch.no_grad():
            proj[1].bias.add_(1.0)
            changed = model(x, torch.tensor([3, 3]))
            proj[1].bias.copy_(saved)
        assert not torch.allclose(changed, a), f"level {k}'s projection has no effect"


def test_output_depends_on_the_size_of_the_input(emb, gen):
    """A bias-free conv followed by GroupNorm(1) would make the network blind to x -> c x (c > 0)."""
    x = torch.randn(2, 1, 32, 32, generator=gen)
    t = torch.tensor([500, 500])
    for model, args in ((_seeded(lambda: UNet(emb, width=W)).eval(), (t,)),
                        (_seeded(lambda: ScoreNet(width=W)).eval(), ()),
                        (_seeded(lambda: UNetConditional(emb, width=W)).eval(), (t, torch.tensor([1, 2])))):
        with torch.no_grad():
            a, b = model(x, *args), model(3 * x, *args)
        assert (a - b).abs().max() > 1e-2, f"{type(model).__name__} ignores the scale of its input"


def test_float_and_scalar_t_accepted(emb, gen):
    model = UNet(emb, width=W).eval()
    x = torch.randn(3, 1, 32, 32, generator=gen)
    ref = model(x, torch.tensor([7, 7, 7]))
    assert torch.allclose(model(x, torch.tensor([7.0, 7.0, 7.0])), ref, atol=1e-6)
    assert torch.allclose(model(x, torch.tensor(7)), ref, atol=1e-6)
    assert torch.allclose(model(x, 7), ref, atol=1e-6)


def test_examples_are_independent_no_batchnorm(emb, gen):
    """GroupNorm only: an example's output does not depend on the rest of the batch, even in train mode."""
    for model in (UNet(emb, width=W), ScoreNet(width=W)):
        model.train()
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        x = torch.randn(4, 1, 32, 32, generator=gen)
        args = (torch.tensor([5, 6, 7, 8]),) if isinstance(model, UNet) else ()
        full = model(x, *args)
        alone = model(x[:1], *(a[:1] for a in args))
        assert torch.allclose(full[:1], alone, atol=1e-5)


def test_channels_last_matches_contiguous(emb, gen):
    model = UNet(emb, width=W)
    x = torch.randn(2, 1, 32, 32, generator=gen)
    t = torch.tensor([4, 400])
    ref = model(x, t)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = model_cl(x_cl, t)
    assert torch.allclose(out, ref, atol=1e-5)
    out.sum().backward()
    _all_grads_nonzero(model_cl)


def test_conditional_shape_gradients_and_label_effect(emb, gen):
    model = _seeded(lambda: UNetConditional(emb, n_classes=10, width=W))
    B = 11  # every label, the null label 10 included, so every embedding row gets a gradient
    x = torch.randn(B, 1, 32, 32, generator=gen)
    t = torch.randint(0, 1000, (B,), generator=gen)
    y = torch.arange(B)
    out = model(x, t, y)
    assert out.shape == x.shape
    out.square().mean().backward()
    _all_grads_nonzero(model)
    assert model.label_embedding.num_embeddings == 11 and model.null_label == 10
    with torch.no_grad():
        other = model(x, t, (y + 1) % 11)
    assert not torch.allclose(out, other), "the output must depend on y"


@pytest.mark.parametrize("norm_layer", _norm_layers())
def test_conditional_with_adaptive_norm(emb, gen, norm_layer):
    model = _seeded(lambda: UNetConditional(emb, norm_layer=norm_layer, width=W))
    assert not any(type(m) is nn.GroupNorm for n, m in model.named_modules() if ".norm." not in n + "."), \
        "every GroupNorm of the network is replaced by the norm layer"
    n_norms = sum(isinstance(m, norm_layer) for m in model.modules())
    assert n_norms == sum(isinstance(m, nn.GroupNorm) for m in UNet(emb, width=W).modules())
    # a non-zero start for zero-initialised projections, so that gradients reach everything
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, norm_layer):
                for p in m.parameters():
                    p.add_(0.01 * torch.randn(p.shape, generator=gen))
    B = 11
    x = torch.randn(B, 1, 32, 32, generator=gen)
    t = torch.randint(0, 1000, (B,), generator=gen)
    out = model(x, t, torch.arange(B))
    assert out.shape == x.shape
    out.square().mean().backward()
    _all_grads_nonzero(model)


def test_adaptive_norm_receives_cond_from_label_and_time(emb, gen):
    model = UNetConditional(emb, norm_layer=LocalAdaptiveGroupNorm, width=W)
    norms = [m for m in model.modules() if isinstance(m, LocalAdaptiveGroupNorm)]
    x = torch.randn(3, 1, 32, 32, generator=gen)
    model(x, torch.tensor([1, 2, 3]), torch.tensor([0, 5, 10]))
    assert all(n.calls == [(3, 4 * W)] for n in norms), "each norm called once with cond (B, 4 * width)"
    seen = []
    orig = LocalAdaptiveGroupNorm.forward

    def spy(self, h, cond):
        seen.append(cond.detach().clone())
        return orig(self, h, cond)
    LocalAdaptiveGroupNorm.forward = spy
    try:
        t, y = torch.tensor([1, 2, 3]), torch.tensor([0, 5, 10])
        model(x, t, y)
    finally:
        LocalAdaptiveGroupNorm.forward = orig
    want = model.label_embedding(y) + model.time_mlp(emb(t, 4 * W))
    assert torch.allclose(seen[0], want, atol=1e-6)


def test_adaptive_model_deepcopies_and_reloads(emb, gen):
    model = UNetConditional(emb, norm_layer=LocalAdaptiveGroupNorm, width=W)
    x, t, y = torch.randn(2, 1, 32, 32, generator=gen), torch.tensor([1, 2]), torch.tensor([3, 4])
    twin = copy.deepcopy(model)
    assert torch.allclose(twin(x, t, y), model(x, t, y))
    assert twin.context is not model.context
    fresh = UNetConditional(emb, norm_layer=LocalAdaptiveGroupNorm, width=W)
    fresh.load_state_dict(model.state_dict())
    assert torch.allclose(fresh(x, t, y), model(x, t, y))


@pytest.mark.parametrize("y, match", [
    (torch.tensor([0, 11]), r"0\.\.10"),
    (torch.tensor([-1, 0]), r"0\.\.10"),
    (torch.tensor([0.0, 1.0]), "integer labels"),
    (torch.tensor([0, 1, 2]), r"y of shape \(2,\)"),
])
def test_conditional_rejects_bad_labels(emb, y, match):
    with pytest.raises(ValueError, match=match):
        UNetConditional(emb, width=W)(torch.zeros(2, 1, 32, 32), torch.tensor([1, 2]), y)


def test_scorenet_shape_gradients_and_errors(gen):
    net = _seeded(lambda: ScoreNet(width=W))
    x = torch.randn(3, 1, 32, 32, generator=gen)
    out = net(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    _all_grads_nonzero(net)
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        net(torch.zeros(3, 1, 16, 16))


def test_width_must_suit_four_heads(emb):
    with pytest.raises(ValueError, match="multiple of 4"):
        UNet(emb, width=6)


def test_loss_falls_on_a_fixed_batch(emb, gen):
    """A few Adam steps of the noise-prediction loss on one fixed batch lower it clearly."""
    model = _seeded(lambda: UNet(emb, width=W))
    x_t = torch.randn(8, 1, 32, 32, generator=gen)
    t = torch.randint(0, 1000, (8,), generator=gen)
    eps = 0.5 * x_t + 0.1 * torch.randn(8, 1, 32, 32, generator=gen)  # a learnable target
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = (model(x_t, t) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < 0.5 * losses[0], losses


def test_self_attention_is_plain_scaled_dot_product_attention(gen):
    # The CPU path picks PyTorch's math kernel (faster to back-propagate); it must still compute
    # softmax(q k^T / sqrt(d)) v with the module's own weights, forwards and backwards.
    sa = models.SelfAttention(16, 4)
    x = torch.randn(3, 16, 4, 4, generator=gen, requires_grad=True)  # (B, C, S, S)
    out = sa(x)

    def explicit(x):
        B, C, H, W = x.shape
        seq = x.flatten(2).transpose(1, 2)  # (B, L, C)
        h = sa.ln(seq)
        q, k, v = nn.functional.linear(h, sa.mha.in_proj_weight, sa.mha.in_proj_bias).chunk(3, dim=-1)
        split = lambda z: z.reshape(B, H * W, 4, C // 4).transpose(1, 2)  # (B, heads, L, C / heads)
        q, k, v = split(q), split(k), split(v)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // 4), dim=-1)  # (B, heads, L, L)
        a = (att @ v).transpose(1, 2).reshape(B, H * W, C)
        seq = sa.mha.out_proj(a) + seq
        seq = sa.ff(seq) + seq
        return seq.transpose(1, 2).reshape(B, C, H, W)

    ref = explicit(x)
    assert torch.allclose(out, ref, atol=1e-5)
    g_out, = torch.autograd.grad(out.square().sum(), x)
    g_ref, = torch.autograd.grad(ref.square().sum(), x)
    assert torch.allclose(g_out, g_ref, atol=1e-4)

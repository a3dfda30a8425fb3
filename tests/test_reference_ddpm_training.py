"""Oracle tests of grading/reference/ddpm_training.py."""
import math

import pytest
import torch
import torch.nn as nn

from grading.reference import ddpm_training as dt
from grading.reference import forward_process as fp


def _schedule(T=20):
    beta = fp.linear_beta_schedule(T, 0.01, 0.2).double()
    return beta, fp.alphas_from_betas(beta)[1]


class DeltaOracle(nn.Module):
    """Exact noise predictor when the data is the single point c: eps = (x_t - sqrt(ab) c) / sqrt(1 - ab)."""

    def __init__(self, c, alpha_bar, offset_for_batch=None):
        super().__init__()
        self.c, self.alpha_bar, self.offset = c, alpha_bar, offset_for_batch
        self.grad_enabled, self.modes = [], []
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x_t, t):
        self.grad_enabled.append(torch.is_grad_enabled())
        self.modes.append(self.training)
        ab = self.alpha_bar[t][:, None, None, None]
        eps = (x_t - ab.sqrt() * self.c) / (1 - ab).sqrt()
        if self.offset is not None:
            eps = eps + self.offset(x_t.shape[0])
        return eps + 0 * self.dummy


def test_timestep_embedding_formula():
    t = torch.tensor([0, 1, 7, 999])
    dim = 6
    emb = dt.timestep_embedding(t, dim)
    assert emb.shape == (4, 6) and emb.dtype == torch.float32
    for b, tv in enumerate(t.tolist()):
        for i in range(3):
            f = 10000.0 ** (-2 * i / dim)
            assert emb[b, i].item() == pytest.approx(math.sin(tv * f), abs=1e-5)
            assert emb[b, 3 + i].item() == pytest.approx(math.cos(tv * f), abs=1e-5)
    assert torch.equal(dt.timestep_embedding(torch.tensor([0]), 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    emb2 = dt.timestep_embedding(torch.tensor([3]), 4, max_period=100.0)
    assert emb2[0, 1].item() == pytest.approx(math.sin(3 / 10), abs=1e-6)


def test_timestep_embedding_bad_inputs():
    with pytest.raises(ValueError, match="dim"):
        dt.timestep_embedding(torch.tensor([1]), 5)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        dt.timestep_embedding(torch.tensor([[1]]), 4)


def test_ddpm_loss_zero_for_exact_predictor_and_noise_power_for_zero(gen):
    beta, alpha_bar = _schedule()
    c = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(1, 1, 4, 4)
    x0 = c.expand(64, 1, 4, 4)
    t = torch.randint(0, 20, (64,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    assert dt.ddpm_loss(DeltaOracle(c, alpha_bar), x0, t, noise, alpha_bar).item() < 1e-20
    zero = lambda x, t: torch.zeros_like(x)
    loss = dt.ddpm_loss(zero, x0, t, noise, alpha_bar)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(noise.pow(2).mean().item(), rel=1e-12)


def test_train_step_gradient_and_uniform_t(gen):
    """Model eps = theta * x_t with SGD: the update must be -lr * d loss / d theta of Algorithm 1."""
    beta, alpha_bar = _schedule(4)
    seen_t = []

    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

        def forward(self, x_t, t):
            seen_t.append(t.clone())
            self.last = (x_t.detach(), t)
            return self.theta * x_t

    m = Lin()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.theta.grad = torch.tensor(123.0, dtype=torch.float64)  # stale gradient must be zeroed
    x0 = torch.rand(256, 1, 2, 2, generator=gen, dtype=torch.float64) * 2 - 1
    loss = dt.train_step(m, opt, x0, alpha_bar, generator=gen)
    assert isinstance(loss, float)
    x_t, t = m.last
    ab = alpha_bar[t][:, None, None, None]
    noise = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()  # recover the noise from x_t
    want_loss = (0.5 * x_t - noise).pow(2).mean().item()
    want_grad = (2 * (0.5 * x_t - noise) * x_t).mean().item()
    assert loss == pytest.approx(want_loss, rel=1e-9)
    assert m.theta.item() == pytest.approx(0.5 - 0.1 * want_grad, rel=1e-9)
    for _ in range(5):
        dt.train_step(m, opt, x0, alpha_bar, generator=gen)
    ts = torch.cat(seen_t)
    assert ts.dtype == torch.long and set(ts.tolist()) == {0, 1, 2, 3}
    assert len(set(seen_t[0].tolist())) > 1  # one t per example, not one per batch


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluate_weighted_no_grad_mode_restored(start_training):
    beta, alpha_bar = _schedule()
    c = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    # loss 1 exactly on the batch of size 3, 0 on the batch of size 1
    model = DeltaOracle(c, alpha_bar, offset_for_batch=lambda B: 1.0 if B == 3 else 0.0)
    model.train(start_training)
    batches = [(c.expand(3, 1, 2, 2).clone(), torch.zeros(3, dtype=torch.long)),
               (c.expand(1, 1, 2, 2).clone(), torch.zeros(1, dtype=torch.long))]
    got = dt.evaluate(model, batches, alpha_bar, generator=torch.Generator().manual_seed(0))
    assert got == pytest.approx(0.75, abs=1e-12)  # example-weighted: (3 * 1 + 1 * 0) / 4
    assert model.grad_enabled == [False, False] and model.modes == [False, False]
    assert model.training is start_training


def test_evaluate_empty_raises():
    _, alpha_bar = _schedule()
    with pytest.raises(ValueError):
        dt.evaluate(nn.Linear(1, 1), [], alpha_bar)


def test_ema_update_values_and_buffers():
    torch.manual_seed(0)
    model, ema = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    model.train()
    model(torch.randn(8, 3))  # changes running stats and num_batches_tracked
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    dt.ema_update(ema, model, decay=0.9)
    for name, p in model.named_parameters():
        want = 0.9 * before[name] + 0.1 * p.detach()
        assert torch.allclose(dict(ema.named_parameters())[name], want, atol=1e-7)
    for name, b in model.named_buffers():
        assert torch.equal(dict(ema.named_buffers())[name], b)  # float and integer buffers copied
    assert not any(p.requires_grad is False for p in ema.parameters())


def test_ema_decay_extremes():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    old = a.weight.detach().clone()
    dt.ema_update(a, b, decay=1.0)
    assert torch.equal(a.weight, old)
    dt.ema_update(a, b, decay=0.0)
    assert torch.equal(a.weight, b.weight)
    with pytest.raises(ValueError):
        dt.ema_update(a, b, decay=1.5)

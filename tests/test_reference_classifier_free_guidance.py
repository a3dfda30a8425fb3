"""Oracle tests of grading/reference/classifier_free_guidance.py."""
import pytest
import torch

from grading.reference import classifier_free_guidance as cfg
from grading.reference import forward_process as fp

F64 = torch.float64
NULL = 10


class ConstMock:
    """eps = a for real labels, b for the null label; records every call."""

    def __init__(self, a=0.7, b=-0.2):
        self.a, self.b, self.calls = a, b, []

    def __call__(self, x_t, t, y):
        self.calls.append((x_t.shape[0], t.clone(), y.clone()))
        val = torch.where(y == NULL, torch.tensor(self.b, dtype=x_t.dtype), torch.tensor(self.a, dtype=x_t.dtype))
        return val[:, None, None, None].expand_as(x_t).clone()


@pytest.mark.parametrize("w", [-1.0, 0.0, 1.0, 3.0, 10.0])
def test_guided_eps_mixes_with_1_plus_w(w):
    mock = ConstMock()
    x = torch.zeros(3, 1, 2, 2, dtype=F64)
    t = torch.tensor([5, 6, 7])
    y = torch.tensor([1, 2, 3])
    out = cfg.guided_eps(mock, x, t, y, w, NULL)
    assert torch.allclose(out, torch.full_like(x, (1 + w) * 0.7 - w * (-0.2)))
    assert len(mock.calls) == 1  # one batched forward pass
    B2, t2, y2 = mock.calls[0]
    assert B2 == 6 and torch.equal(t2, torch.cat([t, t]))
    assert torch.equal(y2, torch.tensor([1, 2, 3, NULL, NULL, NULL]))  # null label in the second half


def test_guided_eps_per_example_input():
    """The mixing pairs each example with its own unconditional prediction."""
    model = lambda x, t, y: x * (y != NULL)[:, None, None, None] + t[:, None, None, None]
    x = torch.arange(2, dtype=F64).reshape(2, 1, 1, 1) + 1
    out = cfg.guided_eps(model, x, torch.tensor([10, 20]), torch.tensor([0, 1]), 2.0, NULL)
    # cond = x + t, uncond = t: (1 + w)(x + t) - w t = 3x + t
    assert torch.allclose(out.flatten(), torch.tensor([3 * 1 + 10, 3 * 2 + 20], dtype=F64))


def test_drop_labels_rate_and_extremes(gen):
    y = torch.randint(0, 10, (10000,), generator=gen)
    out = cfg.drop_labels(y, 0.1, NULL, generator=gen)
    dropped = out == NULL
    assert abs(dropped.double().mean().item() - 0.1) < 0.01
    assert torch.equal(out[~dropped], y[~dropped])  # the others are untouched
    assert out.dtype == y.dtype and out.shape == y.shape
    assert torch.equal(cfg.drop_labels(y, 0.0, NULL, generator=gen), y)
    assert bool((cfg.drop_labels(y, 1.0, NULL, generator=gen) == NULL).all())
    y_copy = y.clone()
    cfg.drop_labels(y, 0.5, NULL, generator=gen)
    assert torch.equal(y, y_copy)  # not in place


def test_drop_labels_bad_p():
    with pytest.raises(ValueError, match="p_uncond"):
        cfg.drop_labels(torch.zeros(3, dtype=torch.long), 1.5, NULL)


def test_p_sample_loop_cfg_class_delta_oracle(gen):
    """Class y is the point c_y, null = the mean point m; with exact eps, guidance w drives x_0 to
    (1 + w) c_y - w m: x_0 = c_y for w = 0 and the null point m for w = -1."""
    beta = fp.linear_beta_schedule(1000).double()
    _, alpha_bar = fp.alphas_from_betas(beta)
    points = torch.tensor([-0.8, 0.1, 0.9, 0.0], dtype=F64)  # index 3 stands for NULL below
    def model(x_t, t, y):
        ab = alpha_bar[t][:, None, None, None]
        c = points[torch.where(y == NULL, torch.full_like(y, 3), y)][:, None, None, None]
        return (x_t - ab.sqrt() * c) / (1 - ab).sqrt()
    y = torch.tensor([0, 1, 2])
    x_T = torch.randn(3, 1, 2, 2, generator=gen, dtype=F64)
    for w, want in ((0.0, points[:3]), (-1.0, torch.zeros(3, dtype=F64)), (2.0, 3 * points[:3])):
        x0 = cfg.p_sample_loop_cfg(model, x_T, y, w, beta, NULL, generator=gen)
        assert (x0 - want[:, None, None, None]).abs().max().item() < 1e-6


def test_p_sample_loop_cfg_calls(gen):
    beta = fp.linear_beta_schedule(7).double()
    mock = ConstMock()
    out = cfg.p_sample_loop_cfg(mock, torch.zeros(2, 1, 2, 2, dtype=F64), torch.tensor([4, 5]), 3.0, beta, NULL,
                                generator=gen)
    assert out.shape == (2, 1, 2, 2)
    assert [c[1][0].item() for c in mock.calls] == list(range(6, -1, -1))
    assert all(c[0] == 4 and torch.equal(c[2], torch.tensor([4, 5, NULL, NULL])) for c in mock.calls)

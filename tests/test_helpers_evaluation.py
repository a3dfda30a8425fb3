"""helpers.evaluation: metric oracles with a stub classifier, the Frechet distance, the real classifier."""
import itertools
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers import evaluation as ev


class StubClassifier(nn.Module):
    """Reads the class from pixel (0, 0) (value -1 + 0.2 c) and its confidence from pixel (0, 1) (> 0:
    sharp); features are the 4x4 average-pooled image (16-d, linear in the pixels)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def features(self, x):
        return F.avg_pool2d(x, 8).flatten(1)  # (B, 16)

    def forward(self, x):
        c = ((x[:, 0, 0, 0] + 1) / 0.2).round().long().clamp(0, 9)
        sharp = (x[:, 0, 0, 1] > 0).float()[:, None]
        return (1.0 + 9.0 * sharp) * F.one_hot(c, 10).float()  # sharp: p = 0.9996, else 0.23


def coded(classes, sharp):
    x = torch.zeros(len(classes), 1, 32, 32)
    x[:, 0, 0, 0] = -1 + 0.2 * torch.tensor(classes, dtype=torch.float32)
    x[:, 0, 0, 1] = torch.tensor([0.5 if s else -0.5 for s in sharp])
    return x


def test_class_accuracy_and_confidence_with_stub():
    stub = StubClassifier()
    x = coded([0, 1, 2, 3, 4], [True, True, False, True, False])
    assert ev.class_accuracy(x, torch.tensor([0, 1, 2, 9, 9]), classifier=stub) == pytest.approx(3 / 5)
    assert ev.confident_fraction(x, 0.9, classifier=stub) == pytest.approx(3 / 5)
    probs = ev.predict_proba(x, classifier=stub)
    assert probs.shape == (5, 10) and torch.allclose(probs.sum(1), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"labels must have shape \(5,\)"):
        ev.class_accuracy(x, torch.tensor([0, 1]), classifier=stub)
    with pytest.raises(ValueError, match="threshold"):
        ev.confident_fraction(x, 1.5, classifier=stub)


class StubWithRejection(StubClassifier):
    """As StubClassifier, plus an eleventh "not a digit" output that wins when pixel (0, 2) > 0."""

    def forward(self, x):
        digits = super().forward(x)
        junk = 20.0 * (x[:, 0, 0, 2] > 0).float()[:, None]
        return torch.cat([digits, junk], dim=1)


def test_not_a_digit_output_is_never_confident_nor_correct():
    stub = StubWithRejection()
    x = coded([0, 1, 2, 3], [True, True, True, False])
    x[1, 0, 0, 2] = 1.0  # sharp digit 1, but "not a digit" wins
    probs = ev.predict_proba(x, classifier=stub)
    assert probs.shape == (4, 10)
    assert probs[1].sum() < 0.01 and probs[0].sum() > 0.99
    assert ev.confident_fraction(x, 0.9, classifier=stub) == pytest.approx(2 / 4)
    assert ev.class_accuracy(x, torch.tensor([0, 1, 2, 3]), classifier=stub) == pytest.approx(3 / 4)
    assert ev.non_digit_fraction(x, classifier=stub) == pytest.approx(1 / 4)
    assert ev.non_digit_fraction(x, classifier=StubClassifier()) == 0.0


def test_non_digits_cover_every_kind_in_range(gen):
    x = ev.non_digits(400, gen)
    assert x.shape == (400, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    flat = x.flatten(1)
    constant = (flat.max(1).values - flat.min(1).values) < 1e-6
    assert 0.15 < constant.float().mean() < 0.35, "about a quarter constant images"
    rough = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3))  # neighbour differences
    assert (rough > 0.3).float().mean() > 0.3, "white and uniform noise"
    assert ((rough > 1e-3) & (rough < 0.15)).float().mean() > 0.1, "smooth blobs"


def test_diversity_is_mean_pairwise_feature_distance(gen):
    stub = StubClassifier()
    x = torch.rand(6, 1, 32, 32, generator=gen) - 0.5
    f = stub.features(x).double()
    want = np.mean([torch.dist(f[i], f[j]).item() for i, j in itertools.permutations(range(6), 2)])
    assert ev.diversity(x, classifier=stub) == pytest.approx(want, rel=1e-9)
    assert ev.diversity(x[:1].repeat(4, 1, 1, 1), classifier=stub) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="2 samples"):
        ev.diversity(x[:1], classifier=stub)


def test_frechet_from_stats_matches_scipy_sqrtm():
    from scipy import linalg
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(6, 6)), rng.normal(size=(6, 4))
    c1, c2 = A @ A.T, B @ B.T  # c2 is singular (rank 4)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    want = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * np.real(linalg.sqrtm(c1 @ c2)))
    assert ev.frechet_from_stats(m1, c1, m2, c2) == pytest.approx(want, rel=1e-6)
    assert ev.frechet_from_stats(m1, c1, m1, c1) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_shifted_sets(gen):
    """Same covariance, means 0.25 apart in each of the 16 linear features: distance 16 * 0.25**2 = 1."""
    stub = StubClassifier()
    a = torch.rand(40, 1, 32, 32, generator=gen) - 0.5
    assert ev.frechet_distance(a, a + 0.25, classifier=stub) == pytest.approx(1.0, rel=1e-5)
    assert ev.frechet_distance(a, a, classifier=stub) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        ev.frechet_distance(a[:, 0], a, classifier=stub)


@pytest.mark.slow
def test_classifier_trains_to_95_percent_and_is_cached(tmp_path, monkeypatch, capsys):
    """Trains from scratch (about a minute on one CPU thread) and reloads from the cache."""
    monkeypatch.setenv("DIFFUSION_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setattr(ev, "_classifier_cache", {})
    monkeypatch.setattr(ev._config, "FAST", False)  # the real classifier, even when tests run in fast mode
    rng_before = torch.random.get_rng_state()
    start = time.process_time()  # CPU time: the machine may be shared
    with torch.no_grad():  # first use may come from inside a sampler's no_grad block
        clf = ev.get_classifier()
    elapsed = time.process_time() - start
    assert torch.equal(torch.random.get_rng_state(), rng_before), "training must not touch the global RNG"
    assert elapsed < 120
    x, y = ev.load_mnist("val", verbose=False)
    acc = ev.class_accuracy(x, y, classifier=clf)
    assert acc >= 0.95, f"validation accuracy {acc:.3f}"
    assert len(list(tmp_path.glob("digit_classifier_*.pt"))) == 1
    monkeypatch.setattr(ev, "_classifier_cache", {})
    capsys.readouterr()
    again = ev.get_classifier()
    assert "loaded" in capsys.readouterr().out
    assert torch.equal(torch.random.get_rng_state(), rng_before), "loading must not touch the global RNG"
    assert torch.equal(again(x[:20]), clf(x[:20]))
    # real digits against real digits: a small distance; against noise: a large one
    base = ev.real_baseline_fid(200, classifier=clf)
    noise = torch.rand(200, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert base < ev.fid_to_data(noise, classifier=clf) / 5
    assert ev.diversity(x[:100], classifier=clf) > ev.diversity(x[:1].repeat(100, 1, 1, 1), classifier=clf)
    # noise, blank images and blobs of other draws than training's are read as "not a digit"
    junk = ev.non_digits(200, torch.Generator().manual_seed(99))
    assert ev.non_digit_fraction(junk, classifier=clf) > 0.95
    assert ev.confident_fraction(junk, 0.9, classifier=clf) < 0.03
    assert ev.non_digit_fraction(x, classifier=clf) < 0.02, "real digits are digits"


def test_fast_mode_classifier_is_cached_apart(tmp_path, monkeypatch):
    """Fast mode trains a rough classifier; it must never replace the full-mode cache file."""
    monkeypatch.setenv("DIFFUSION_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setattr(ev._config, "FAST", True)
    fast_path = ev._classifier_path()
    monkeypatch.setattr(ev._config, "FAST", False)
    full_path = ev._classifier_path()
    assert fast_path != full_path and fast_path.name.endswith("_fast.pt")

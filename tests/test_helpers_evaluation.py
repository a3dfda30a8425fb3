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



def test_predicted_digits_count_not_a_digit_as_such():
    """The reading is the argmax over all 11 outputs: a sample whose "not a digit" output wins is 10,
    never the digit that happens to be least unlikely (what predict_proba(x).argmax(1) would give)."""
    stub = StubWithRejection()
    x = coded([0, 1, 2, 3, 7], [True, True, False, False, True])
    x[1, 0, 0, 2] = 1.0  # a sharp 1, but "not a digit" wins
    x[2, 0, 0, 2] = 1.0  # an unsure 2, and "not a digit" wins
    pred = ev.predicted_digits(x, classifier=stub)
    assert pred.dtype == torch.long and pred.tolist() == [0, 10, 10, 3, 7]
    assert ev.predict_proba(x, classifier=stub).argmax(1).tolist() == [0, 1, 2, 3, 7], "the trap it avoids"
    counts = ev.digit_counts(x, classifier=stub)
    assert counts["not a digit"] == 2 and counts[0] == counts[3] == counts[7] == 1 and counts[1] == 0
    assert sum(counts.values()) == 5
    labels = torch.tensor([0, 1, 2, 3, 7])
    assert ev.class_accuracy(x, labels, classifier=stub) == pytest.approx(3 / 5)
    per = ev.per_class_accuracy(x, labels, classifier=stub)
    assert per.shape == (10,)
    assert per[[0, 1, 2, 3, 7]].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert torch.isnan(per[[4, 5, 6, 8, 9]]).all(), "digits never requested have no accuracy"
    # the per-class mean over requested digits, weighted by counts, is the overall accuracy
    assert ev.per_class_accuracy(x, labels, classifier=stub).nansum().item() / 5 == pytest.approx(3 / 5)
    # confident: read as a digit with p >= 0.9 (the 0 and the 7; the 3 is unsure, 1 and 2 are no digits)
    assert ev.confident_fraction(x, 0.9, classifier=stub) == pytest.approx(2 / 5)
    assert ev.non_digit_fraction(x, classifier=stub) == pytest.approx(2 / 5)
    # from probabilities already computed; and a digits-only classifier (10 outputs) never says 10
    assert ev.predicted_digits_from(ev._probabilities(x, stub)).tolist() == pred.tolist()
    assert ev.predicted_digits(x, classifier=StubClassifier()).tolist() == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError, match=r"\(N, 11\)"):
        ev.predicted_digits_from(torch.zeros(3, 4))


def test_frechet_of_gaussians_closed_form():
    """The closed form ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) on known parameters, and
    large samples of the two Gaussians approaching it."""
    # commuting (diagonal) covariances: Tr(...) = sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([3.0, 1.0, -2.0])
    want = 9.0 + 16.0 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0.0  # 30
    assert ev.frechet_from_stats(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    # a rotation of both Gaussians changes nothing
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    assert ev.frechet_from_stats(q @ m1, q @ np.diag(a) @ q.T, q @ m2, q @ np.diag(b) @ q.T) == pytest.approx(want, rel=1e-9)
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2
    assert ev.frechet_from_stats([1.0], [[4.0]], [-1.0], [[1.0]]) == pytest.approx(4.0 + 1.0)
    # sampled: 200,000 draws of each; the estimate is within a few per cent of the closed form
    rng = np.random.default_rng(0)
    A = rng.normal(size=(3, 3))
    s1, s2 = A @ A.T + 0.5 * np.eye(3), np.diag(b)
    want = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.sqrt(np.linalg.eigvals(s1 @ s2)).real.sum()
    fa = rng.multivariate_normal(m1, s1, size=200_000)
    fb = rng.multivariate_normal(m2, s2, size=200_000)
    assert ev.frechet_from_features(fa, fb) == pytest.approx(want, rel=0.02)
    assert ev.frechet_from_features(fa, fa) == pytest.approx(0.0, abs=1e-8), "identical sets give 0"
    with pytest.raises(ValueError, match="same d"):
        ev.frechet_from_features(fa, fb[:, :2])


def test_fid_with_baseline_uses_same_count_and_labels(monkeypatch):
    """Real digits drawn for the comparison have the samples' count (and, given labels, their labels);
    the baseline compares two disjoint real sets of the same kind; identical sets give 0."""
    n_per = 30
    y = torch.arange(10).repeat_interleave(n_per)
    x = (-1 + 0.2 * y.float()).reshape(-1, 1, 1, 1).expand(-1, 1, 32, 32)  # constant images, (300, 1, 32, 32)
    x = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(ev, "load_mnist", lambda split, verbose=False: (x, y))
    monkeypatch.setattr(ev, "_baseline_cache", {})
    stub = StubClassifier()
    labels = torch.tensor([3] * 10 + [7] * 10)
    a, b = ev._real_index_sets(20, 0, labels, sets=2)
    assert (y[a] == labels).all() and (y[b] == labels).all() and not set(a.tolist()) & set(b.tolist())
    res = ev.fid_with_baseline(x[a], labels=labels, classifier=stub)
    assert res.n == 20 and res.fid == pytest.approx(0.0, abs=1e-9), "the same real digits: distance 0"
    assert res.baseline == pytest.approx(ev.real_baseline_fid(20, 0, stub, labels))
    assert "real against real" in str(res) and tuple(res) == (res.fid, res.baseline, 20)
    # samples of the wrong digits are far from real digits of the requested labels
    wrong = ev.fid_with_baseline(x[y == 0][:20], labels=labels, classifier=stub)
    assert wrong.fid > 10 * max(wrong.baseline, 1e-3)
    with pytest.raises(ValueError, match="digit 3"):
        ev._real_index_sets(40, 0, torch.full((40,), 3), sets=2)


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

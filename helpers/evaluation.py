"""Judging generated digits with a small CNN classifier trained on the available MNIST data.

- :func:`predicted_digits`: the classifier's reading of each sample, a digit 0-9 or ``NOT_A_DIGIT``
  (10); the readings below are all built on it, so "not a digit" never counts as a digit;
- :func:`class_accuracy` (and :func:`per_class_accuracy`): the fraction of samples the classifier
  reads as the requested digit;
- :func:`confident_fraction`: the fraction it reads as *some* digit with probability >= threshold;
- :func:`non_digit_fraction`: the fraction it reads as no digit at all (noise, blank or smooth blobs);
- :func:`diversity`: the mean pairwise Euclidean distance between the classifier's penultimate
  features (128-d, after ReLU) of the samples: 0 when all samples are identical, larger when they
  differ in ways the classifier sees;
- :func:`frechet_distance`: the Frechet distance between Gaussians fitted to the penultimate features
  of two sets (Heusel et al. 2017, eq. 6, "FID" with this classifier instead of Inception), and
  :func:`real_baseline_fid`, the same between two disjoint sets of real digits of the same size, the
  value a perfect generator would get (the distance is biased upwards for small sets);
  :func:`fid_with_baseline` returns both at the same sample count (and, for conditional samples,
  against real digits of the same labels).

The classifier trains once (about a minute on a 2-core CPU on the 4,500-digit offline subset, with
random shifts as augmentation) and is cached in ``checkpoint_dir()``; samples are ``(N, 1, 32, 32)``
in ``[-1, 1]``.

Besides the ten digits it has an eleventh output, "not a digit", trained on synthetic images that
are no digit (white noise, constant images, smooth random blobs). A classifier trained on digits
alone must spread all its probability over the ten digits, and ours read pure noise as an 8 with
probability 0.98: a sampler that leaves noise in its output would have counted as "confident".
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import config as _config
from .config import checkpoint_dir
from .data import batches, data_info, load_mnist

FEATURE_DIM = 128
N_DIGITS = 10
NOT_A_DIGIT = 10
"""Index of the classifier's eleventh output, "not a digit"."""
CLASSIFIER_VERSION = 2
"""Bumped when the classifier changes; a cached classifier of another version is retrained."""
_classifier_cache: dict = {}


class DigitClassifier(nn.Module):
    """Three conv blocks and two linear layers: (B, 1, 32, 32) in [-1, 1] -> logits (B, 11).

    Outputs 0-9 are the digits, output 10 (``NOT_A_DIGIT``) is "not a digit".

    ``features(x)`` returns the penultimate activations (B, 128).
    """

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # (B, 32, 16, 16)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (B, 64, 8, 8)
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (B, 64, 4, 4)
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(64 * 4 * 4, FEATURE_DIM), nn.ReLU(),                 # (B, 128)
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(FEATURE_DIM, N_DIGITS + 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (background -1 fills in)."""
    B = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)  # (B, 1, 32 + 2s, 32 + 2s)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=generator)
    rows = (dy[:, None] + torch.arange(32)[None]).to(x.device)  # (B, 32)
    cols = (dx[:, None] + torch.arange(32)[None]).to(x.device)  # (B, 32)
    b = torch.arange(B, device=x.device)[:, None, None]
    return padded[b, 0, rows[:, :, None], cols[:, None, :]][:, None]  # (B, 1, 32, 32)


def non_digits(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` synthetic images (n, 1, 32, 32) in [-1, 1] that are no digit, in four equal kinds:
    white Gaussian noise (random mean and spread), uniform noise, constant images, and smooth blobs
    (upsampled 4x4 or 8x8 noise)."""
    kind = torch.randint(0, 4, (n,), generator=generator)
    mean = torch.rand(n, 1, 1, 1, generator=generator) * 1.5 - 1.0   # (n, 1, 1, 1) in [-1, 0.5]
    spread = torch.rand(n, 1, 1, 1, generator=generator) * 1.7 + 0.3  # in [0.3, 2]
    gauss = mean + spread * torch.randn(n, 1, 32, 32, generator=generator)
    uniform = torch.rand(n, 1, 32, 32, generator=generator) * 2 - 1
    const = torch.rand(n, 1, 1, 1, generator=generator).expand(n, 1, 32, 32) * 2 - 1
    low = [F.interpolate(torch.randn(n, 1, s, s, generator=generator), size=32, mode="bilinear",
                         align_corners=False) for s in (4, 8)]
    pick = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    blobs = mean + spread * torch.where(pick, low[0], low[1])
    out = torch.where((kind == 0)[:, None, None, None], gauss, uniform)
    out = torch.where((kind == 2)[:, None, None, None], const, out)
    out = torch.where((kind == 3)[:, None, None, None], blobs, out)
    return out.clamp(-1, 1)  # (n, 1, 32, 32)


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for x, y in batches(images, labels, 1000):
        correct += (model(x).argmax(1) == y).sum().item()
    return correct / max(1, len(labels))


def train_classifier(epochs: int | None = None, seed: int = 0, verbose: bool = True
                     ) -> tuple[DigitClassifier, float]:
    """Train :class:`DigitClassifier` on ``load_mnist("train")``; returns (model, validation accuracy).

    Adam, batch 128 digits plus 16 synthetic non-digits (:func:`non_digits`, class ``NOT_A_DIGIT``),
    random shifts of up to 2 pixels; epochs: 12 on the offline subset, 1 on full MNIST (about the same
    number of steps). The accuracy is measured on the real validation digits.
    """
    train_x, train_y = load_mnist("train", verbose=verbose)
    val_x, val_y = load_mnist("val", verbose=False)
    if epochs is None:
        epochs = 12 if len(train_y) < 20_000 else 1
        if _config.FAST:  # fast mode: a rough classifier in seconds, cached apart from the real one
            epochs = 2 if len(train_y) < 20_000 else 1
            if len(train_y) >= 20_000:
                train_x, train_y = train_x[:10_000], train_y[:10_000]
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # initialisation and dropout; the caller's RNG is untouched
        torch.manual_seed(seed)
        model, acc = _fit(train_x, train_y, val_x, val_y, epochs, gen, verbose)
    return model, acc


def _fit(train_x, train_y, val_x, val_y, epochs, gen, verbose):
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = batches(train_x, train_y, 128, shuffle=True, generator=gen)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * len(loader))
    start = time.time()
    with torch.enable_grad():  # callers may hold a no_grad context (e.g. the first confident_fraction)
        for _ in range(epochs):
            model.train()
            for x, y in loader:
                x = _random_shift(x, 2, gen)
                junk = non_digits(max(1, len(x) // 8), gen)  # (B/8, 1, 32, 32)
                x = torch.cat([x, junk])
                y = torch.cat([y, torch.full((len(junk),), NOT_A_DIGIT, dtype=y.dtype)])
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    acc = _accuracy(model, val_x, val_y)
    if verbose:
        print(f"Digit classifier: {acc:.1%} validation accuracy on {len(val_y):,} digits "
              f"after {epochs} epochs ({time.time() - start:.0f} s)")
    return model.eval(), acc


def _classifier_path():
    info = data_info("MNIST")
    tag = "full" if info is not None and info.full else "subset"
    suffix = "_fast" if _config.FAST else ""
    return checkpoint_dir() / f"digit_classifier_{tag}{suffix}.pt"


def get_classifier(device=None, retrain: bool = False, verbose: bool = True) -> DigitClassifier:
    """The cached digit classifier (trained on first use, then loaded from ``checkpoint_dir()``).

    The cache is specific to the data available (full MNIST or the offline subset). Returns the model
    in eval mode without gradients, on ``device`` (default CPU).
    """
    load_mnist("val", verbose=False)  # which data are available decides the cache file
    path = _classifier_path()
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (str(path), str(device))
    if key in _classifier_cache and not retrain:
        return _classifier_cache[key]
    if path.is_file() and not retrain:
        with torch.random.fork_rng(devices=[]):  # layer initialisation must not move the caller's RNG
            model = DigitClassifier()
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("version") != CLASSIFIER_VERSION:
            if verbose:
                print(f"Digit classifier at {path} is of an older version; training a new one")
            return get_classifier(device, retrain=True, verbose=verbose)
        model.load_state_dict(blob["state_dict"])
        if verbose:
            print(f"Digit classifier loaded from {path} ({blob['val_accuracy']:.1%} validation accuracy)")
    else:
        model, acc = train_classifier(verbose=verbose)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save({"state_dict": model.state_dict(), "val_accuracy": acc, "version": CLASSIFIER_VERSION}, tmp)
        tmp.replace(path)
    model = model.to(device).eval().requires_grad_(False)
    _classifier_cache[key] = model
    return model


def _check_samples(samples, name: str = "samples") -> torch.Tensor:
    if isinstance(samples, np.ndarray):
        samples = torch.from_numpy(samples)
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or tuple(samples.shape[1:]) != (1, 32, 32):
        got = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"{name} must have shape (N, 1, 32, 32) with values in [-1, 1], got {got}")
    if len(samples) == 0:
        raise ValueError(f"{name} is empty")
    return samples.detach().float()


@torch.no_grad()
def _run(samples, what: str, classifier=None, batch_size: int = 500) -> torch.Tensor:
    samples = _check_samples(samples)
    clf = classifier or get_classifier(verbose=False)
    dev = next(clf.parameters()).device
    outs = []
    for i in range(0, len(samples), batch_size):
        x = samples[i:i + batch_size].to(dev).clamp(-1, 1)
        outs.append((clf.features(x) if what == "features" else clf(x)).cpu())
    return torch.cat(outs).double()


def _probabilities(samples, classifier=None) -> torch.Tensor:
    """Softmax over all the classifier's outputs: (N, 11) (or (N, 10) for a digits-only classifier)."""
    return _run(samples, "logits", classifier).softmax(dim=1)


def predict_proba(samples, classifier=None) -> torch.Tensor:
    """Digit probabilities (N, 10) of the samples, float64.

    A row sums to 1 minus the probability of "not a digit" (the classifier's eleventh output), so
    its ``argmax`` is *not* the classifier's reading of a sample: use :func:`predicted_digits`.
    """
    return _probabilities(samples, classifier)[:, :N_DIGITS]


def predicted_digits_from(probs) -> torch.Tensor:
    """:func:`predicted_digits` from probabilities over *all* outputs, (N, 11) (or (N, 10) for a
    digits-only classifier): long (N,), 0-9 or ``NOT_A_DIGIT``."""
    probs = torch.as_tensor(probs)
    if probs.ndim != 2 or probs.shape[1] not in (N_DIGITS, N_DIGITS + 1):
        raise ValueError(f"probs must have shape (N, 11) (or (N, 10)), got {tuple(probs.shape)}")
    return probs.argmax(dim=1).long()


def predicted_digits(samples, classifier=None) -> torch.Tensor:
    """The classifier's reading of each sample: long (N,), a digit 0-9 or ``NOT_A_DIGIT`` (10).

    The most likely of *all* the classifier's outputs, so noise, blank images and blobs come out as
    10, never as whichever digit is least unlikely (``predict_proba(x).argmax(1)`` would do that: it
    drops the "not a digit" output first). Every reading below is built on it. Count with
    :func:`digit_counts` or ``torch.bincount(pred, minlength=11)`` (the last bin: "not a digit").
    """
    return predicted_digits_from(_probabilities(samples, classifier))


def digit_counts(samples, classifier=None) -> dict:
    """How many samples the classifier reads as each digit and as no digit:
    ``{0: n_0, ..., 9: n_9, "not a digit": n}``; the values sum to the number of samples."""
    counts = torch.bincount(predicted_digits(samples, classifier), minlength=N_DIGITS + 1).tolist()
    return {**{d: counts[d] for d in range(N_DIGITS)}, "not a digit": counts[NOT_A_DIGIT]}


def non_digit_fraction(samples, classifier=None) -> float:
    """Fraction of samples whose most likely output is "not a digit" (noise, blank, smooth blobs)."""
    return (predicted_digits(samples, classifier) == NOT_A_DIGIT).double().mean().item()


def features(samples, classifier=None) -> torch.Tensor:
    """Penultimate classifier features (N, 128), float64."""
    return _run(samples, "features", classifier)


def _labels_for(samples, labels) -> torch.Tensor:
    labels = torch.as_tensor(labels).long().flatten().cpu()
    if labels.shape[0] != len(samples):
        raise ValueError(f"labels must have shape ({len(samples)},), got {tuple(labels.shape)}")
    return labels


def class_accuracy(samples, labels, classifier=None) -> float:
    """Fraction of samples that the classifier assigns to their requested label (labels (N,) in 0..9).

    A sample read as "not a digit" counts as wrong."""
    labels = _labels_for(samples, labels)
    return (predicted_digits(samples, classifier) == labels).double().mean().item()


def per_class_accuracy(samples, labels, classifier=None) -> torch.Tensor:
    """:func:`class_accuracy` of the samples of each requested digit: float64 (10,), NaN for a digit
    never requested. A sample read as "not a digit" counts as wrong."""
    labels = _labels_for(samples, labels)
    right = (predicted_digits(samples, classifier) == labels).double()  # (N,)
    total = torch.bincount(labels, minlength=N_DIGITS)[:N_DIGITS].double()  # (10,)
    hits = torch.bincount(labels, weights=right, minlength=N_DIGITS)[:N_DIGITS]  # (10,)
    return torch.where(total > 0, hits / total.clamp(min=1), torch.full_like(total, float("nan")))


def confident_fraction(samples, threshold: float = 0.9, classifier=None) -> float:
    """Fraction of samples read as a digit (:func:`predicted_digits`) whose probability is >= ``threshold``.

    Noise, blank images and blobs go to "not a digit" and do not count."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    p = _probabilities(samples, classifier)  # (N, 11)
    pred = predicted_digits_from(p)  # (N,)
    top = p[:, :N_DIGITS].max(dim=1).values  # (N,)
    return ((pred != NOT_A_DIGIT) & (top >= threshold)).double().mean().item()


def diversity(samples, classifier=None) -> float:
    """Mean Euclidean distance between the classifier features of all pairs of distinct samples.

    0 for identical samples; it grows as samples differ in ways the classifier sees (digit class,
    stroke, slant). Compare values at the same sample count and with the same classifier.
    """
    f = features(samples, classifier)
    n = len(f)
    if n < 2:
        raise ValueError("diversity needs at least 2 samples")
    d = torch.cdist(f, f)  # (N, N)
    return (d.sum() / (n * (n - 1))).item()


def _gaussian(f) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(f, np.float64)
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_from_stats(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)) (Heusel et al. 2017, eq. 6).

    The squared 2-Wasserstein distance between N(mu1, cov1) and N(mu2, cov2).
    ``Tr((cov1 cov2)^(1/2))`` is computed as the sum of the square roots of the eigenvalues of the
    symmetric matrix ``cov1^(1/2) cov2 cov1^(1/2)`` (same eigenvalues as ``cov1 cov2``), which
    stays real and stable when the covariances are singular (few samples, dead ReLU features);
    it equals ``Tr(scipy.linalg.sqrtm(cov1 @ cov2))``.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # cov1^(1/2)
    m = root1 @ cov2 @ root1
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(0.0, diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_covmean))


def frechet_from_features(features_a, features_b) -> float:
    """The Frechet distance between Gaussians fitted (mean, unbiased covariance) to two sets of
    feature vectors, (N_a, d) and (N_b, d), each with N >= 2 rows."""
    fa, fb = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError(f"need two (N, d) arrays with the same d, got {fa.shape} and {fb.shape}")
    if len(fa) < 2 or len(fb) < 2:
        raise ValueError("each set needs at least 2 images")
    return frechet_from_stats(*_gaussian(fa), *_gaussian(fb))


def frechet_distance(samples_a, samples_b, classifier=None) -> float:
    """Frechet distance between Gaussians fitted to the classifier features of two sets of images.

    0 for identical sets, lower is closer; it depends on the set sizes, so compare against
    :func:`real_baseline_fid` at the same count. Each set needs at least 2 images.
    """
    fa, fb = features(samples_a, classifier), features(samples_b, classifier)
    if len(fa) < 2 or len(fb) < 2:
        raise ValueError("each set needs at least 2 images")
    return frechet_from_features(fa.numpy(), fb.numpy())


def _real_index_sets(n: int, seed: int, labels=None, split: str = "train", sets: int = 1):
    """``sets`` disjoint index sets into ``split``, each of ``n`` random digits, or (with ``labels``)
    of exactly the digits listed in ``labels`` (so a conditional sampler is compared with real digits
    of the same classes, in the same proportions)."""
    _, y = load_mnist(split, verbose=False)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    if labels is None:
        if sets * n > len(perm):
            raise ValueError(f"need {sets} x {n:,} <= {len(perm):,} {split} images, got n = {n:,}")
        return [perm[k * n:(k + 1) * n] for k in range(sets)]
    labels = torch.as_tensor(labels).long().flatten().cpu()
    if len(labels) != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    out = [torch.empty(n, dtype=torch.long) for _ in range(sets)]
    for d in labels.unique().tolist():
        want = labels == d
        k = int(want.sum())
        pool = perm[y[perm] == d]  # the digits d, in random order
        if sets * k > len(pool):
            raise ValueError(f"need {sets} x {k} {split} images of digit {d}, only {len(pool)} available")
        for j in range(sets):
            out[j][want] = pool[j * k:(j + 1) * k]
    return out


def real_images(n: int, generator: torch.Generator | None = None, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real digits (images, labels) drawn without replacement from ``split``."""
    x, y = load_mnist(split, verbose=False)
    perm = torch.randperm(len(y), generator=generator)
    if n > len(perm):
        raise ValueError(f"only {len(perm):,} {split} images available, asked for {n:,}")
    return x[perm[:n]], y[perm[:n]]


def real_baseline_fid(n: int, seed: int = 0, classifier=None, labels=None) -> float:
    """Frechet distance between two disjoint random sets of ``n`` real training digits each.

    The value a generator whose samples were indistinguishable from the data would get at this
    sample count (needs 2n <= the number of training images: 2,250 offline). With ``labels``
    (``n`` of them) both sets hold exactly those digits.
    """
    x, _ = load_mnist("train", verbose=False)
    a, b = _real_index_sets(n, seed, labels, sets=2)
    return frechet_distance(x[a], x[b], classifier)


def fid_to_data(samples, seed: int = 0, classifier=None, labels=None) -> float:
    """Frechet distance between ``samples`` and as many random real training digits (with
    ``labels``: real digits of exactly those labels). The real set is the first of the two that
    :func:`real_baseline_fid` compares at the same ``seed``."""
    n = len(_check_samples(samples))
    x, _ = load_mnist("train", verbose=False)
    (a,) = _real_index_sets(n, seed, labels, sets=1)
    return frechet_distance(samples, x[a], classifier)


class FIDResult(tuple):
    """``(fid, baseline, n)``: the Frechet distance of ``n`` samples to as many real digits, and of
    two sets of ``n`` real digits to each other (the value a perfect generator would get)."""

    __slots__ = ()

    def __new__(cls, fid: float, baseline: float, n: int):
        return super().__new__(cls, (float(fid), float(baseline), int(n)))

    fid = property(lambda self: self[0])
    baseline = property(lambda self: self[1])
    n = property(lambda self: self[2])

    def __str__(self) -> str:
        return f"FD {self.fid:.1f} (real against real: {self.baseline:.1f}, n = {self.n})"


_baseline_cache: dict = {}


def fid_with_baseline(samples, labels=None, seed: int = 0, classifier=None) -> FIDResult:
    """:func:`fid_to_data` of ``samples`` and :func:`real_baseline_fid` at the same count (and the
    same ``labels``, for conditional samples): the number and the value it should be compared with.
    The baseline is cached per count, labels, seed and classifier."""
    n = len(_check_samples(samples))
    clf = classifier or get_classifier(verbose=False)
    key = (n, None if labels is None else tuple(torch.as_tensor(labels).long().flatten().tolist()), seed, id(clf))
    if key not in _baseline_cache:
        _baseline_cache[key] = real_baseline_fid(n, seed, clf, labels)
    return FIDResult(fid_to_data(samples, seed, clf, labels), _baseline_cache[key], n)

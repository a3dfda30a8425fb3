"""helpers.training and helpers.config: running means, checkpoints, load_or_train, EMA copy, FAST parsing."""
import math

import pytest
import torch
from torch import nn

from helpers import config, training
from helpers.training import (Metrics, _cpu_has_amx_bf16, amp_dtype, autocast, copy_for_ema, load_checkpoint,
                              load_or_train, save_checkpoint)


@pytest.fixture
def ckpt_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_CHECKPOINT_DIR", str(tmp_path))
    return tmp_path


def tiny_model():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_metrics_weighted_means():
    m = Metrics(2)
    m.add(2, 1.0, 10.0)
    m.add(6, 3.0, torch.tensor(20.0))
    assert m.count == 8
    assert m.mean() == pytest.approx([(2 * 1 + 6 * 3) / 8, (2 * 10 + 6 * 20) / 8])
    named = Metrics(["loss", "acc"])
    named.add(4, 0.5, 1.0)
    assert named.as_dict() == {"loss": 0.5, "acc": 1.0}
    assert all(math.isnan(v) for v in Metrics(1).mean())
    with pytest.raises(ValueError, match="expected 2 value"):
        m.add(1, 1.0)
    m.reset()
    assert m.count == 0


def test_checkpoint_round_trip(ckpt_dir, gen):
    model, ema = tiny_model(), tiny_model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 3, generator=gen)).sum().backward()
    opt.step()
    path = save_checkpoint("tiny", model, {"width": 4, "lr": 1e-3}, step=123, ema=ema, optimizer=opt, note="hi")
    assert path == ckpt_dir / "tiny.pt" and path.is_file()
    model2, ema2 = tiny_model(), tiny_model()
    opt2 = torch.optim.Adam(model2.parameters())
    blob = load_checkpoint("tiny", model2, ema=ema2, optimizer=opt2)
    assert blob["config"] == {"width": 4, "lr": 1e-3} and blob["step"] == 123 and blob["extra"]["note"] == "hi"
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.state_dict().values(), ema2.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"][0]["step"] == 1
    # weights come back on the CPU, whatever device they were saved from
    assert all(v.device.type == "cpu" for v in blob["state_dict"].values())


def test_checkpoint_paths_and_errors(ckpt_dir, tmp_path):
    assert training.checkpoint_path("ddpm") == ckpt_dir / "ddpm.pt"
    assert training.checkpoint_path("ddpm.pt") == ckpt_dir / "ddpm.pt"
    explicit = tmp_path / "sub" / "m.pt"
    assert save_checkpoint(explicit, tiny_model(), {}, 0) == explicit
    with pytest.raises(FileNotFoundError, match="missing"):
        load_checkpoint("missing")
    with pytest.raises(KeyError, match="ema"):
        load_checkpoint(explicit, tiny_model(), ema=tiny_model())
    with pytest.raises(TypeError, match="config"):
        save_checkpoint("x", tiny_model(), None, 0)


def test_load_or_train_trains_once_then_reuses(ckpt_dir, capsys):
    calls = []

    def train(model):
        calls.append(1)
        with torch.no_grad():
            next(model.parameters()).fill_(0.5)
        return 42

    m1 = load_or_train("reuse_me", tiny_model, train, config={"w": 4})
    assert "Training reuse_me now" in capsys.readouterr().out and len(calls) == 1
    m2 = load_or_train("reuse_me", tiny_model, train, config={"w": 4})
    out = capsys.readouterr().out
    assert "Loaded reuse_me" in out and "42 steps" in out and len(calls) == 1
    assert torch.equal(m2[0].weight, m1[0].weight) and not m2.training
    load_or_train("reuse_me", tiny_model, train, config={"w": 8})  # another config: train again
    assert "differs" in capsys.readouterr().out and len(calls) == 2
    load_or_train("reuse_me", lambda: nn.Linear(3, 2), train, config={"w": 8})  # another architecture
    assert "could not be loaded" in capsys.readouterr().out and len(calls) == 3


def test_copy_for_ema_is_frozen_and_independent():
    model = tiny_model().train()
    ema = copy_for_ema(model)
    assert not ema.training and all(not p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in model.parameters()) and model.training
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(ema[0].weight, model[0].weight)


def test_progress_yields_everything():
    assert list(training.progress(range(5), desc="x", disable=True)) == [0, 1, 2, 3, 4]
    bar = training.progress(total=3, disable=True)
    bar.update(3)
    bar.close()


@pytest.mark.parametrize("env, fast", [
    ({}, False),
    ({"DIFFUSION_FAST": "1"}, True),
    ({"DIFFUSION_FAST": "true"}, True),
    ({"NBGRADER_EXECUTION": "autograde"}, True),
    ({"NBGRADER_EXECUTION": "autograde", "DIFFUSION_FAST": "0"}, False),
    ({"DIFFUSION_FAST": "off"}, False),
])
def test_fast_mode_env_parsing(env, fast):
    assert config._fast_from_env(env) is fast


def test_folders_follow_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("DIFFUSION_CHECKPOINT_DIR", str(tmp_path / "c"))
    assert config.data_dir() == tmp_path / "d" and (tmp_path / "d").is_dir()
    assert config.checkpoint_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_seed_everything_reproducible_and_typed():
    g = config.seed_everything(3)
    a = torch.rand(2)
    config.seed_everything(3)
    assert torch.equal(a, torch.rand(2)) and isinstance(g, torch.Generator)
    with pytest.raises(TypeError):
        config.seed_everything(1.5)
    assert "torch" in config.describe()


# ----------------------------------------------------------------------------------------------
# autocast


def test_autocast_off_by_environment(monkeypatch):
    monkeypatch.setenv("DIFFUSION_AMP", "0")
    assert amp_dtype("cpu") is None
    with autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_autocast_on_cpu_follows_the_hardware(monkeypatch):
    monkeypatch.delenv("DIFFUSION_AMP", raising=False)
    want = torch.bfloat16 if _cpu_has_amx_bf16() else None
    assert amp_dtype("cpu") == want
    assert amp_dtype(torch.device("cpu")) == want
    lin = torch.nn.Linear(4, 4)
    with autocast("cpu"):
        out = lin(torch.randn(2, 4))
    assert out.dtype == (want or torch.float32)
    assert lin.weight.dtype == torch.float32, "weights stay float32 under autocast"


def test_autocast_training_step_keeps_float32_loss_and_learns():
    """A bf16 step still returns a float32 loss and lowers it on a fixed batch."""
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 8, generator=gen)
    losses = []
    for _ in range(30):
        with autocast("cpu"):
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(loss.item())
        assert loss.dtype == torch.float32
    assert losses[-1] < 0.7 * losses[0]

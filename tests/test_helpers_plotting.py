"""helpers.plotting: every figure function returns a Figure headless; grid and log-SNR oracles."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from helpers import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda *a, **k: pytest.fail("plt.show must not be called"))
    yield
    plt.close("all")


def test_image_grid_maps_range_and_layout():
    x = torch.stack([torch.full((1, 4, 4), -1.0), torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), 3.0)])
    grid = plotting.image_grid(x, nrow=2, padding=1)
    assert grid.shape == (1 + 2 * 5, 1 + 2 * 5)
    assert np.all(grid[1:5, 1:5] == 0.0)      # -1 -> black
    assert np.all(grid[1:5, 6:10] == 1.0)     # +1 -> white
    assert np.all(grid[6:10, 1:5] == 1.0)     # clipped
    assert grid[0, 0] == 1.0                  # white padding


def test_show_images_returns_figure_and_accepts_shapes(gen):
    x = torch.rand(10, 1, 32, 32, generator=gen) * 2 - 1
    assert isinstance(plotting.show_images(x, nrow=5, title="samples"), Figure)
    assert isinstance(plotting.show_images(x[:, 0].numpy()), Figure)
    fig, ax = plt.subplots()
    assert plotting.show_images(x[0, 0], ax=ax) is fig
    with pytest.raises(ValueError, match="grayscale"):
        plotting.show_images(torch.zeros(2, 3, 32, 32))


def test_plot_trajectory_grid(gen):
    history = [torch.randn(4, 1, 32, 32, generator=gen) for _ in range(5)]
    fig = plotting.plot_trajectory(history, n_samples=3, times=[999, 750, 500, 250, 0])
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * 5
    assert fig.axes[0].get_title() == "t=999"
    with pytest.raises(ValueError, match="labels"):
        plotting.plot_trajectory(history, times=[1, 2])
    with pytest.raises(ValueError, match="empty"):
        plotting.plot_trajectory([])


def test_loss_plot_headless_writes_png(tmp_path):
    path = tmp_path / "loss.png"
    plot = plotting.LossPlot(["train", "val"], xlabel="epoch", path=path, save_every=2, live=False)
    plot.add(1, 0.5, 0.6)
    assert not path.exists()
    plot.add(2, train=0.3, val=torch.tensor(0.4))
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plot.close()
    assert isinstance(fig, Figure)
    assert plot.ys == {"train": [0.5, 0.3], "val": [0.6, pytest.approx(0.4)]}
    with pytest.raises(ValueError, match="unknown"):
        plot.add(3, test=1.0)
    with pytest.raises(ValueError, match="expected 2"):
        plot.add(3, 1.0)



def test_loss_plot_shows_a_single_point():
    """A fast-mode run logs one or two points: they get markers, so the plot is not empty."""
    plot = plotting.LossPlot(["train"], live=False)
    plot.add(10, 0.5)
    fig = plot.close()
    (line,) = fig.axes[0].lines
    assert line.get_marker() == "o" and len(line.get_xdata()) == 1
    many = plotting.LossPlot(["train"], live=False)
    for i in range(50):
        many.add(i, 1.0 / (i + 1))
    assert many.close().axes[0].lines[0].get_marker() in (None, "None", "")

def test_log_snr_oracle():
    a = torch.tensor([0.5, 0.9, 0.1], dtype=torch.float64)
    np.testing.assert_allclose(plotting.log_snr(a), [0.0, np.log(9.0), -np.log(9.0)], atol=1e-12)


def test_schedule_snr_and_heatmap_figures():
    t = torch.arange(1000)
    curves = {"linear": torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0),
              "cosine": torch.cos((t / 1000 + 0.008) / 1.008 * torch.pi / 2) ** 2}
    fig = plotting.plot_schedules(curves)
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == 2
    assert isinstance(plotting.plot_snr(curves), Figure)
    fig = plotting.plot_heatmap(torch.randn(50, 16), title="time embedding")
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "time embedding"
    with pytest.raises(ValueError, match="2-D"):
        plotting.plot_heatmap(torch.zeros(3))
    with pytest.raises(ValueError, match="1-D"):
        plotting.plot_schedules({"bad": torch.zeros(2, 2)})

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from dlcourse.plotting import (  # noqa: E402
    QUICK_MODE_NOTE,
    animate_denoising,
    forward_strip,
    image_grid,
    plot_losses,
    quick_mode_title,
    reverse_strip,
    save_gif,
    show_images,
)


class TinySchedule:
    """Stand-in with the Schedule interface: linear betas, closed-form q_sample."""

    def __init__(self, T=10):
        self.T = T
        self.alpha_bars = torch.cumprod(1 - torch.linspace(0.05, 0.5, T), 0)

    def q_sample(self, x0, t, noise):
        ab = self.alpha_bars.to(x0.device)[t].view(-1, 1, 1, 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


@pytest.fixture(autouse=True)
def no_open_figures():
    plt.close("all")
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before, "a helper left a figure open"


def images(n, c=3, size=8, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_image_grid_layout_padding_and_values():
    x = torch.zeros(5, 3, 7, 7)
    x[:, 0] = 1.0  # red tiles in [-1, 1] → (1, 0.5, 0.5)
    grid = image_grid(x, nrow=3, padding=2)
    assert grid.shape == (2 * 7 + 2, 3 * 7 + 2 * 2, 3)
    assert grid.dtype == np.float32 and grid.min() >= 0 and grid.max() <= 1
    np.testing.assert_allclose(grid[0, 0], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(grid[7, 0], [1.0, 1.0, 1.0])  # padding row is white
    np.testing.assert_allclose(grid[9, 9 * 2], [1.0, 1.0, 1.0])  # 6th cell is empty
    np.testing.assert_allclose(grid[9, 9], [1.0, 0.5, 0.5])  # 5th tile: row 1, column 1


def test_image_grid_grayscale_single_and_clamping():
    g = image_grid(torch.tensor([[[[-1.0, 0.0], [1.0, 3.0]]]]))
    assert g.shape == (2, 2, 3)
    np.testing.assert_allclose(g[..., 0], [[0.0, 0.5], [1.0, 1.0]])  # 3.0 clamped
    assert (g[..., 0] == g[..., 2]).all()


def test_image_grid_default_nrow_is_ceil_sqrt():
    assert image_grid(images(10, size=4), padding=0).shape == (3 * 4, 4 * 4, 3)


def test_image_grid_accepts_lists_of_tensors_and_pil():
    from_list = image_grid([images(1)[0], images(2)], nrow=3, padding=0)
    assert from_list.shape == (8, 24, 3)
    pil = [Image.new("RGB", (5, 4), (255, 0, 0)), Image.new("L", (5, 4), 128)]
    grid = image_grid(pil, padding=1)
    assert grid.shape == (4, 11, 3)
    np.testing.assert_allclose(grid[0, 0], [1, 0, 0])
    np.testing.assert_allclose(grid[0, 6], [128 / 255] * 3)


def test_uint8_needs_0_255_range():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    with pytest.raises(ValueError, match="value_range=\\(0, 255\\)"):
        image_grid(x)
    np.testing.assert_allclose(image_grid(x, value_range=(0, 255)), 1.0)


@pytest.mark.parametrize(
    "x, kwargs, match",
    [
        (torch.zeros(2, 4, 8, 8), {}, "1 or 3 channels"),
        (torch.zeros(2, 8, 8, 3), {}, "permute"),
        (torch.zeros(1, 3, 2, 2), {"value_range": (1, -1)}, "low < high"),
        ([], {}, "at least one"),
        (np.zeros((2, 3, 4, 4)), {}, "tensor"),
    ],
)
def test_bad_images_raise_teaching_errors(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        image_grid(x, **kwargs)


def diverged_samples(n=8, size=8, seed=0):
    """What a sampler returns from a model gone wrong: most values hundreds of units outside [-1, 1]."""
    return 450 * torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_far_outside_the_range_is_shown_clamped_with_the_share_and_causes_in_the_title():
    x = diverged_samples()
    fig = show_images(x, nrow=4, title="DDPM samples")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), image_grid(x, nrow=4))
    title = ax.get_title()
    share = ((x < -1) | (x > 1)).float().mean().item()
    assert title.startswith("DDPM samples\n⚠ clamped for display")
    assert f"{share:.0%} of values outside [-1, 1]" in title
    for cause in ("x̂₀ not clipped", "too few sampling steps", "too little training", "ε coefficient"):
        assert cause in title.replace("\n", " ")
    expected = ((x[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(image_grid(x, padding=0)[:8, :8], expected)  # clamped, not rescaled


def test_noise_and_slightly_outside_values_get_no_warning():
    noise = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # x_T: up to ~±5
    assert show_images(noise).axes[0].get_title() == ""
    assert show_images(images(4) * 1.3, title="x").axes[0].get_title() == "x"


def test_warning_joins_a_title_set_on_the_given_axes_and_per_image_titles_use_suptitle():
    fig, ax = plt.subplots()
    ax.set_title("lesson 02")
    show_images(diverged_samples(2), ax=ax)
    assert ax.get_title().startswith("lesson 02\n⚠ clamped")
    plt.close(fig)
    fig = show_images(diverged_samples(2), titles=["a", "b"])
    assert "clamped for display" in fig._suptitle.get_text()


def test_nan_and_inf_are_shown_in_magenta_and_counted():
    x = images(2, size=4)
    x[0, :, 0, 0] = float("nan")
    x[1, 1, 2, 3] = float("inf")
    grid = image_grid(x, padding=0)
    np.testing.assert_allclose(grid[0, 0], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(grid[2, 4 + 3], [1.0, 0.0, 1.0])
    assert np.isfinite(grid).all()
    assert (grid[1:, :4] == image_grid(x[:1].nan_to_num(0.0), padding=0)[1:]).all()  # the rest is untouched
    title = show_images(x).axes[0].get_title()
    assert "4 NaN/inf values shown in magenta" in title


def test_wrong_title_type_raises():
    with pytest.raises(ValueError, match="title: expected a str"):
        show_images(images(2), title=["a", "b"])


def test_quick_mode_title_says_untrained_only_in_quick_mode(monkeypatch):
    monkeypatch.setenv("DLCOURSE_BUDGET", "quick")
    assert quick_mode_title("DDIM samples") == f"DDIM samples\n({QUICK_MODE_NOTE})"
    assert "untrained" in quick_mode_title() and "docs/results.md" in quick_mode_title()
    monkeypatch.setenv("DLCOURSE_BUDGET", "cpu")
    assert quick_mode_title("DDIM samples") == "DDIM samples"
    fig = show_images(images(4), title=quick_mode_title("samples"))
    assert fig.axes[0].get_title() == "samples"


@pytest.mark.parametrize("figsize", [None, (6, 11), (12, 3)])
def test_strips_pass_the_title_through_above_the_column_labels(figsize):
    fig = reverse_strip(trajectory(), title="reverse process", figsize=figsize)
    ax = fig.axes[0]
    (heading,) = [t for t in ax.texts if t.get_text() == "reverse process"]
    labels = [t for t in ax.texts if t.get_text().startswith("t = ")]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)  # lays out the equal-aspect image as savefig would
    lowest = heading.get_window_extent(renderer).y0
    assert labels and all(lowest >= t.get_window_extent(renderer).y1 for t in labels)  # never overlapping


def test_show_images_returns_closed_figure_with_one_image():
    fig = show_images(images(13), nrow=5, cmap=None)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    (im,) = fig.axes[0].get_images()
    assert im.get_array().shape == (3 * 8 + 2 * 2, 5 * 8 + 4 * 2, 3)
    assert im.get_interpolation() == "nearest"


def test_show_images_on_given_ax_draws_row_and_column_titles():
    fig, ax = plt.subplots()
    out = show_images(images(6), row_titles=["a", "b"], col_titles=["x", "y", "z"], ax=ax)
    assert out is ax
    assert [t.get_text() for t in ax.texts] == ["a", "b", "x", "y", "z"]
    assert ax.get_images()[0].get_array().shape[1] == 3 * 8 + 2 * 2
    plt.close(fig)


def test_show_images_per_image_titles_use_subplots():
    fig = show_images(images(3), titles=["one", "two", "three"], nrow=2)
    assert len(fig.axes) == 4
    assert [a.get_title() for a in fig.axes] == ["one", "two", "three", ""]
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="ax"):
        show_images(images(2), titles=["a", "b"], ax=ax)
    plt.close(fig)


def test_show_images_title_count_is_checked():
    with pytest.raises(ValueError, match="col_titles: expected a list of 4"):
        show_images(images(8), nrow=4, col_titles=["a", "b"])
    with pytest.raises(ValueError, match="titles: expected a list of 2"):
        show_images(images(2), titles=["a"])


def test_forward_strip_columns_follow_closed_form():
    sched = TinySchedule()
    x0 = images(2)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    fig = forward_strip(sched, x0, [0, 4, 9], noise=noise)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels[0].startswith("t = 0") and f"{sched.alpha_bars[9].item():.3f}" in labels[2]
    grid = ax.get_images()[0].get_array()
    expected = image_grid(sched.q_sample(x0[1:], torch.tensor([4]), noise[1:]))
    np.testing.assert_allclose(grid[10:18, 10:18], expected, atol=1e-6)  # row 1, column 1


def test_forward_strip_bad_inputs():
    with pytest.raises(ValueError, match="ts: expected"):
        forward_strip(TinySchedule(T=10), images(1), [10])
    with pytest.raises(ValueError, match="schedule"):
        forward_strip(object(), images(1), [0])
    with pytest.raises(ValueError, match="noise"):
        forward_strip(TinySchedule(), images(1), [0], noise=torch.zeros(2, 3, 8, 8))


def trajectory(steps=(9, 5, 0), n=3):
    return {t: torch.full((n, 1, 7, 7), 1 - 2 * t / 9) for t in steps}


def test_reverse_strip_orders_noisiest_first_and_selects_ts():
    fig = reverse_strip(trajectory(steps=(0, 9, 5)))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["t = 9", "t = 5", "t = 0"]
    grid = ax.get_images()[0].get_array()
    assert grid.shape == (3 * 7 + 4, 3 * 7 + 4, 3)
    assert grid[0, 0, 0] == 0.0 and grid[0, -1, 0] == 1.0  # t = 9 is -1 → black, t = 0 is +1 → white
    sub = reverse_strip(trajectory(), ts=[0, 9])
    assert [t.get_text() for t in sub.axes[0].texts] == ["t = 9", "t = 0"]
    with pytest.raises(ValueError, match="ts: expected"):
        reverse_strip(trajectory(), ts=[3])
    with pytest.raises(ValueError, match="trajectory"):
        reverse_strip({})


def test_animate_denoising_returns_html_player():
    html = animate_denoising(trajectory(), nrow=2, interval=50)
    assert "<img" in html.data or "<script" in html.data
    assert html.data.count("data:image/png;base64") == 3


def test_save_gif_writes_one_frame_per_t(tmp_path):
    path = save_gif(trajectory(steps=(9, 6, 3, 0), n=2), tmp_path / "denoise.gif", fps=5, scale=3)
    with Image.open(path) as gif:
        assert gif.n_frames == 4
        assert gif.size == (3 * (2 * 7 + 2), 3 * 7)
        assert gif.info["duration"] == 200
    with pytest.raises(ValueError, match="folder"):
        save_gif(trajectory(), tmp_path / "missing" / "x.gif")


class FakeHistory:
    steps = [10, 20, 30, 40]
    losses = [1.0, 0.5, 0.25, 0.125]


def test_plot_losses_overlays_on_one_ax_with_smoothing():
    fig = plot_losses([4.0, 2.0, 1.0, 0.5], label="list")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    out = plot_losses(FakeHistory(), ax=ax, label="history", smooth=2)
    assert out is ax
    lines = ax.get_lines()
    assert len(lines) == 3  # list curve, faint raw history, smoothed history
    np.testing.assert_allclose(lines[0].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(lines[2].get_xdata(), [15, 25, 35])
    np.testing.assert_allclose(lines[2].get_ydata(), [0.75, 0.375, 0.1875])
    assert lines[1].get_color() == lines[2].get_color()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["list", "history"]


def test_plot_losses_tensor_and_bad_inputs():
    fig = plot_losses(torch.tensor([0.5, -0.1]), log_scale=False)
    assert isinstance(fig.axes[0], Axes)
    with pytest.raises(ValueError, match="log_scale"):
        plot_losses([0.5, 0.0])
    with pytest.raises(ValueError, match="history_or_losses"):
        plot_losses("loss")
    with pytest.raises(ValueError, match="history_or_losses"):
        plot_losses([])
    with pytest.raises(ValueError, match="smooth"):
        plot_losses([1.0], smooth=0)

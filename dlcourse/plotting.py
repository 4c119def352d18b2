"""Small plotting helpers: image grids, forward/reverse strips, denoising animations, loss curves.

Inputs. Images are tensors N×C×H×W (C = 1 or 3) in ``value_range`` (default
[−1, 1], the course's convention), a single C×H×W tensor, a list of such
tensors, or a list of PIL images (0…255; ``value_range`` is then ignored).
Float values outside ``value_range`` are clamped for display. Noisy images
x_t naturally leave [−1, 1] a little, so that is silent. Values *far* outside
(more than 2.5 range-widths away: more than pure noise ever reaches) mean a
model went wrong, or the range is wrong; they are still shown, clamped, and
:func:`show_images` (and the strips) say so in the title: the share of values
outside the range and the likely causes. NaN/inf values are shown in magenta
and counted in the title. Wrong shapes, dtypes or ranges raise a
``ValueError``; integer tensors (uint8) need ``value_range=(0, 255)``.

Quick mode. Models trained on the quick (CI) budget draw noise; wrap the title
of a figure of samples in :func:`quick_mode_title` and it says so in that mode
(and is unchanged in the others).

Figures. Every helper takes ``ax=None``. With an ``ax`` it draws there and
returns that axes (the figure is yours). Without one it makes its own figure,
removes it from pyplot's list of open figures (``plt.close(fig)``) and returns
the ``Figure``: Jupyter displays a returned figure exactly once, and scripts
and tests never accumulate open figures. In a notebook make the call the last
line of the cell, or wrap it in ``display(...)``. ``**kwargs`` go to the
matplotlib call that draws the data (``imshow`` or ``plot``).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import torch

from .validation import check_images, check_int, check_positive_int, check_real, describe, fail, is_int, is_real

__all__ = [
    "quick_mode_title",
    "image_grid",
    "show_images",
    "forward_strip",
    "reverse_strip",
    "animate_denoising",
    "save_gif",
    "plot_losses",
]

# Floats farther than this many range-widths outside value_range are not noise: a model went wrong.
# Pure noise x_T ~ N(0, I) stays within ±6 (P(|z| > 6) ≈ 2e-9 per value).
_FAR_OUTSIDE = 2.5
# Colour of NaN/inf pixels (magenta: no flower is that colour, and it is not a clamped ±1).
_NONFINITE_RGB = (1.0, 0.0, 1.0)
_LIKELY_CAUSES = ("likely: x̂₀ not clipped, too few sampling steps or too little training, "
                  "a wrong ε coefficient, or a wrong value_range")
QUICK_MODE_NOTE = "quick mode: untrained —\nsee docs/results.md for what the cpu/full budget draws"


def quick_mode_title(title: str = "") -> str:
    """``title`` plus a note, under the quick (CI) budget only, that the model is untrained and its samples noise.

    Use it for figures of samples (not of data): ``show_images(x, title=quick_mode_title("DDIM, 50 steps"))``.
    """
    from .config import is_quick

    if not isinstance(title, str):
        raise fail("title", "a str", describe(title))
    if not is_quick():
        return title
    return f"{title}\n({QUICK_MODE_NOTE})" if title else f"({QUICK_MODE_NOTE})"


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _check_value_range(value_range) -> tuple[float, float]:
    ok = (
        isinstance(value_range, (tuple, list))
        and len(value_range) == 2
        and all(is_real(v) for v in value_range)
        and value_range[0] < value_range[1]
    )
    if not ok:
        raise fail("value_range", "a pair (low, high) of finite numbers with low < high, e.g. (-1, 1)",
                   describe(value_range))
    return float(value_range[0]), float(value_range[1])


def _pil_to_array(images: list) -> np.ndarray:
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise fail("x", "PIL images of one size", f"sizes {sorted(s[:2] for s in sizes)}")
    return np.stack(arrays)


def _tensor_to_array(x: torch.Tensor, value_range: tuple[float, float]) -> tuple[np.ndarray, str | None]:
    low, high = value_range
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise fail("x", "images N×C×H×W (or one image C×H×W)", describe(x))
    if x.shape[1] not in (1, 3):
        hint = " (channels-last? use x.permute(0, 3, 1, 2))" if x.shape[-1] in (1, 3) else ""
        raise fail("x", f"1 or 3 channels in dim 1 (N, C, H, W){hint}", describe(x))
    if x.shape[0] == 0:
        raise fail("x", "at least one image", describe(x))
    if x.dtype == torch.bool or x.is_complex():
        raise fail("x", "a float tensor", describe(x))
    if not x.is_floating_point() and (low, high) != (0.0, 255.0):
        raise fail("x", f"a float tensor for value_range={value_range} (pass value_range=(0, 255) "
                   "for uint8 images)", describe(x))
    x = x.detach().to("cpu", torch.float32)
    finite = torch.isfinite(x)
    note = _range_note(x, finite, low, high)
    x = ((x.nan_to_num(0.0, 0.0, 0.0) - low) / (high - low)).clamp(0.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
        finite = finite.expand(-1, 3, -1, -1)
    x = x.permute(0, 2, 3, 1).numpy().copy()
    x[~finite.permute(0, 2, 3, 1).all(-1).numpy()] = _NONFINITE_RGB
    return x, note


def _range_note(x: torch.Tensor, finite: torch.Tensor, low: float, high: float) -> str | None:
    """A one-line warning when x has NaN/inf or values far outside [low, high]; None when it looks like images."""
    span = high - low
    parts = []
    n_bad = int((~finite).sum())
    if n_bad:
        parts.append(f"{n_bad} NaN/inf values shown in magenta (did the training diverge?)")
    seen = x[finite]
    if seen.numel():
        lo_seen, hi_seen = seen.min().item(), seen.max().item()
        if lo_seen < low - _FAR_OUTSIDE * span or hi_seen > high + _FAR_OUTSIDE * span:
            outside = ((seen < low) | (seen > high)).float().mean().item()
            parts.append(f"clamped for display: {outside:.0%} of values outside [{low:g}, {high:g}] "
                         f"(seen [{lo_seen:.4g}, {hi_seen:.4g}]); {_LIKELY_CAUSES}")
    return "; ".join(parts) or None


def _to_tiles(x, value_range) -> tuple[np.ndarray, str | None]:
    """Images in any accepted form → (float32 array N×H×W×3 in [0, 1], warning for the title or None)."""
    from PIL import Image

    value_range = _check_value_range(value_range)
    if isinstance(x, Image.Image):
        x = [x]
    if isinstance(x, (list, tuple)):
        if not x:
            raise fail("x", "at least one image", "an empty list")
        if all(isinstance(im, Image.Image) for im in x):
            return _pil_to_array(list(x)), None
        if all(isinstance(im, torch.Tensor) for im in x):
            parts = [im.unsqueeze(0) if im.dim() == 3 else im for im in x]
            if len({p.shape[1:] for p in parts}) != 1 or any(p.dim() != 4 for p in parts):
                raise fail("x", "tensors C×H×W (or N×C×H×W) of one size",
                           f"shapes {[tuple(p.shape) for p in x]}")
            return _tensor_to_array(torch.cat([p.cpu() for p in parts]), value_range)
        raise fail("x", "a list of tensors or a list of PIL images", f"a list of {sorted({type(i).__name__ for i in x})}")
    if isinstance(x, torch.Tensor):
        return _tensor_to_array(x, value_range)
    raise fail("x", "a tensor N×C×H×W, a list of tensors, or a list of PIL images", describe(x))


def _layout(n: int, nrow: int | None) -> tuple[int, int]:
    """(images per row, rows) for n images."""
    per_row = math.ceil(math.sqrt(n)) if nrow is None else check_positive_int(nrow, "nrow")
    per_row = min(per_row, n)
    return per_row, math.ceil(n / per_row)


def _grid_from_tiles(tiles: np.ndarray, per_row: int, rows: int, padding: int) -> np.ndarray:
    n, h, w, _ = tiles.shape
    grid = np.ones((rows * h + (rows - 1) * padding, per_row * w + (per_row - 1) * padding, 3), np.float32)
    for i in range(n):
        r, c = divmod(i, per_row)
        top, left = r * (h + padding), c * (w + padding)
        grid[top:top + h, left:left + w] = tiles[i]
    return grid


def image_grid(x, nrow: int | None = None, padding: int = 2, value_range=(-1, 1)) -> np.ndarray:
    """One H×W×3 float array in [0, 1] holding all images, ``nrow`` images per row.

    ``nrow`` counts images per row (torchvision's convention; default ⌈√N⌉);
    the last row may be incomplete. Tiles are separated by ``padding`` white
    pixels (no outer border); empty cells are white. Pixel values map as
    (x − low) / (high − low), clamped to [0, 1]; NaN/inf pixels are magenta.
    Accepts everything :func:`show_images` accepts; used by the GIF, animation
    and widget code (which have no title to warn in: use :func:`show_images`
    to see why a grid is saturated).
    """
    padding = check_int(padding, "padding", low=0, expected="a non-negative int")
    tiles, _ = _to_tiles(x, value_range)
    per_row, rows = _layout(len(tiles), nrow)
    return _grid_from_tiles(tiles, per_row, rows, padding)


def _check_titles(titles, length: int, name: str) -> list[str] | None:
    if titles is None:
        return None
    if isinstance(titles, str) or not isinstance(titles, (list, tuple)) or len(titles) != length:
        raise fail(name, f"a list of {length} labels", describe(titles))
    return [str(t) for t in titles]


def _default_figsize(per_row: int, rows: int) -> tuple[float, float]:
    inches = min(1.5, max(0.4, 10.0 / per_row))
    return per_row * inches, rows * inches


def _full_title(title, ax, note: str | None) -> str | None:
    """The caller's title (or the axes' own), then the out-of-range warning wrapped to fit a small figure."""
    if title is None and ax is not None:
        title = ax.get_title() or None
    lines = [title] if title else []
    if note:
        lines.append(textwrap.fill(f"⚠ {note}", 70))
    return "\n".join(lines) or None


def show_images(x, *, value_range=(-1, 1), nrow: int | None = None, title: str | None = None, titles=None,
                row_titles=None, col_titles=None, ax=None, figsize=None, padding: int = 2, **kwargs):
    """Show images as one grid on one axes (fast for hundreds of tiles).

    ``nrow``: images per row (default ⌈√N⌉, or ``len(col_titles)``, or enough
    columns for ``len(row_titles)`` rows). ``title`` goes above the grid (wrap it
    in :func:`quick_mode_title` for samples). ``row_titles`` / ``col_titles`` are
    drawn beside / above the tiles. ``titles`` (one per image, meant for a few
    images) switches to one subplot per image and needs ``ax=None``.
    Images far outside ``value_range`` or with NaN/inf are shown anyway (clamped,
    NaN in magenta) and the title says how much and the likely causes.
    Returns the new ``Figure`` when ``ax`` is None, else ``ax``.
    """
    if title is not None and not isinstance(title, str):
        raise fail("title", "a str (e.g. quick_mode_title(\"samples\"))", describe(title))
    tiles, note = _to_tiles(x, value_range)
    n = len(tiles)
    per_row, rows = _layout(n, _labelled_nrow(nrow, n, row_titles, col_titles))
    titles = _check_titles(titles, n, "titles")
    row_titles = _check_titles(row_titles, rows, "row_titles")
    col_titles = _check_titles(col_titles, per_row, "col_titles")
    kwargs.setdefault("interpolation", "nearest")
    if titles is not None:
        _check_one_label_style(ax, row_titles, col_titles)
        return _show_subplots(tiles, titles, per_row, rows, _full_title(title, None, note), figsize, kwargs)
    heading = _full_title(title, ax, note)
    if ax is not None:
        _draw_grid(ax, tiles, per_row, rows, padding, row_titles, col_titles, heading, kwargs)
        return ax
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=figsize or _default_figsize(per_row, rows))
    _draw_grid(ax, tiles, per_row, rows, padding, row_titles, col_titles, heading, kwargs)
    plt.close(fig)
    return fig


def _labelled_nrow(nrow: int | None, n: int, row_titles, col_titles) -> int | None:
    """``nrow``, or when it is None one column per column title, or enough columns for one row per row title."""
    if nrow is None and col_titles is not None and not isinstance(col_titles, str):
        nrow = len(col_titles)
    if nrow is None and row_titles is not None and not isinstance(row_titles, str) and len(row_titles):
        nrow = math.ceil(n / len(row_titles))
    return nrow


def _check_one_label_style(ax, row_titles, col_titles) -> None:
    """Per-image titles draw their own subplots: no ``ax``, and no row or column titles beside them."""
    if ax is not None:
        raise fail("ax", "None when titles are given (one subplot per image); label a single axes "
                   "with row_titles / col_titles instead", describe(ax))
    if row_titles is not None or col_titles is not None:
        raise fail("titles", "None when row_titles or col_titles are given (pick one style)", "both")


def _show_subplots(tiles: np.ndarray, titles: list[str], per_row: int, rows: int, heading: str | None,
                   figsize, kwargs: dict):
    """One subplot per tile under its own title, ``heading`` above them all; returns the closed figure."""
    plt = _pyplot()
    fig, axes = plt.subplots(rows, per_row, figsize=figsize or _default_figsize(per_row, rows), squeeze=False)
    for i, sub in enumerate(axes.flat):
        sub.set_axis_off()
        if i < len(tiles):
            sub.imshow(tiles[i], **kwargs)
            sub.set_title(titles[i], fontsize="small")
    if heading:
        fig.suptitle(heading, fontsize="small")
    plt.close(fig)
    return fig


def _draw_grid(ax, tiles: np.ndarray, per_row: int, rows: int, padding: int, row_titles, col_titles,
               heading: str | None, kwargs: dict) -> None:
    """The tiles as one grid image on ``ax``, row titles left of it, column titles and ``heading`` above."""
    ax.imshow(_grid_from_tiles(tiles, per_row, rows, padding), **kwargs)
    ax.set_axis_off()
    _, h, w, _ = tiles.shape
    for r, label in enumerate(row_titles or []):
        ax.text(-padding - 1, r * (h + padding) + h / 2, label, ha="right", va="center", fontsize="small")
    for c, label in enumerate(col_titles or []):
        ax.text(c * (w + padding) + w / 2, -padding - 1, label, ha="center", va="bottom", fontsize="small")
    if heading and col_titles:
        # anchored to the column titles' baseline, so it clears them at any figure size
        label_lines = max(label.count("\n") + 1 for label in col_titles)
        ax.set_title("")  # the axes' own title, if any, is part of the heading
        ax.annotate(heading, (per_row * (w + padding) / 2, -padding - 1), xytext=(0, 4 + 11 * label_lines),
                    textcoords="offset points", ha="center", va="bottom", fontsize="small", annotation_clip=False)
    elif heading:
        ax.set_title(heading, fontsize="small")


def forward_strip(schedule, x0, ts, *, noise=None, value_range=(-1, 1), generator=None, ax=None,
                  figsize=None, **kwargs):
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε at the chosen t: rows = images, columns = t.

    ``schedule`` is anything with ``q_sample(x0, t, noise)``, ``.T`` and
    ``.alpha_bars`` (a :class:`dlcourse.schedules.Schedule`). The same noise ε
    (drawn with ``generator`` unless given) is used in every column, so a row
    shows one image being progressively corrupted. Returns a figure or ``ax``.
    """
    if not all(hasattr(schedule, a) for a in ("q_sample", "T", "alpha_bars")):
        raise fail("schedule", "an object with q_sample(x0, t, noise), .T and .alpha_bars "
                   "(e.g. dlcourse.schedules.Schedule)", describe(schedule))
    if isinstance(x0, torch.Tensor) and x0.dim() == 3:
        x0 = x0.unsqueeze(0)
    check_images(x0, "x0")
    T = int(schedule.T)
    if isinstance(ts, torch.Tensor):
        ts = ts.tolist()
    if is_int(ts):
        ts = [ts]
    if (not isinstance(ts, (list, tuple)) or not ts
            or not all(is_int(t, 0) and t < T for t in ts)):
        raise fail("ts", f"a non-empty list of ints in [0, {T - 1}] (t is 0-based)", describe(ts))
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    elif not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
        raise fail("noise", f"a tensor of the shape of x0 {tuple(x0.shape)}", describe(noise))
    n = x0.shape[0]
    with torch.no_grad():
        columns = [schedule.q_sample(x0, torch.full((n,), t, dtype=torch.long, device=x0.device), noise)
                   .detach().float().cpu() for t in ts]
    strip = torch.stack(columns, dim=1).flatten(0, 1)  # row-major: image i, then t
    alpha_bars = schedule.alpha_bars
    labels = [f"t = {t}\n$\\bar{{\\alpha}}$ = {float(alpha_bars[t]):.3f}" for t in ts]
    return show_images(strip, value_range=value_range, nrow=len(ts), col_titles=labels, ax=ax,
                       figsize=figsize, **kwargs)


def _ordered_trajectory(trajectory, ts=None) -> list[tuple[int, torch.Tensor]]:
    """[(t, x_t)] from noisiest to t = 0, after checking the dict {t: N×C×H×W}."""
    if not isinstance(trajectory, dict) or not trajectory:
        raise fail("trajectory", "a non-empty dict {t: x_t} (as returned by the samplers with trajectory_at)",
                   describe(trajectory))
    if not all(is_int(t) for t in trajectory):
        raise fail("trajectory", "int keys t", f"keys {list(trajectory)[:10]}")
    keys = list(trajectory)
    if ts is not None:
        if isinstance(ts, torch.Tensor):
            ts = ts.tolist()
        if not isinstance(ts, (list, tuple)) or not ts or any(t not in trajectory for t in ts):
            raise fail("ts", f"a non-empty list of keys of trajectory {sorted(keys, reverse=True)}", describe(ts))
        keys = list(dict.fromkeys(ts))
    items = [(int(t), trajectory[t]) for t in sorted(keys, reverse=True)]
    shapes = set()
    for t, x in items:
        check_images(x, f"trajectory[{t}]")
        shapes.add(tuple(x.shape))
    if len(shapes) != 1:
        raise fail("trajectory", "tensors of one shape N×C×H×W", f"shapes {sorted(shapes)}")
    return items


def reverse_strip(trajectory, *, ts=None, value_range=(-1, 1), ax=None, figsize=None, **kwargs):
    """Reverse process snapshots: rows = samples, columns = t from noisiest to t = 0.

    ``trajectory`` is a dict {t: x_t (N×C×H×W)} as returned by the samplers;
    ``ts`` picks a subset of its keys. Returns a figure or ``ax``.
    """
    items = _ordered_trajectory(trajectory, ts)
    strip = torch.stack([x.detach().float().cpu() for _, x in items], dim=1).flatten(0, 1)
    return show_images(strip, value_range=value_range, nrow=len(items),
                       col_titles=[f"t = {t}" for t, _ in items], ax=ax, figsize=figsize, **kwargs)


def _frames(trajectory, nrow, value_range) -> tuple[list[int], list[np.ndarray]]:
    items = _ordered_trajectory(trajectory)
    return [t for t, _ in items], [image_grid(x, nrow, value_range=value_range) for _, x in items]


def animate_denoising(trajectory, *, nrow: int | None = None, interval: int = 100, value_range=(-1, 1)):
    """An ``IPython.display.HTML`` player stepping through x_t from noisiest to t = 0.

    Each frame is :func:`image_grid` of one x_t; ``interval`` is milliseconds
    per frame. The figure used to render it is closed.
    """
    from IPython.display import HTML
    from matplotlib.animation import FuncAnimation

    plt = _pyplot()
    check_positive_int(interval, "interval")
    ts, frames = _frames(trajectory, nrow, value_range)
    height, width, _ = frames[0].shape
    inches = 5.0 / max(height, width)  # longest side 5 inches
    fig, ax = plt.subplots(figsize=(max(1.5, width * inches), max(1.5, height * inches) + 0.4))
    image = ax.imshow(frames[0], interpolation="nearest")
    ax.set_axis_off()
    title = ax.set_title(f"t = {ts[0]}")

    def draw(i):
        image.set_data(frames[i])
        title.set_text(f"t = {ts[i]}")
        return image, title

    animation = FuncAnimation(fig, draw, frames=len(frames), interval=interval)
    try:
        html = animation.to_jshtml()
    finally:
        plt.close(fig)
    return HTML(html)


def save_gif(trajectory, path, *, fps: float = 10, nrow: int | None = None, value_range=(-1, 1),
             scale: int = 2, hold_last: float = 1.0) -> Path:
    """Write the denoising trajectory as a looping GIF (one frame per t, noisiest first).

    Frames are :func:`image_grid` images enlarged ``scale`` times (nearest
    neighbour); each lasts 1/``fps`` s, the last one ``hold_last`` s. Pillow
    merges consecutive frames that are identical after 8-bit quantisation.
    Returns the path.
    """
    from PIL import Image

    fps = check_real(fps, "fps", low=0, high=100, low_open=True)
    check_positive_int(scale, "scale")
    hold_last = check_real(hold_last, "hold_last", low=0, hint=" (seconds)")
    if not isinstance(path, (str, Path)):
        raise fail("path", "a file path (str or pathlib.Path)", describe(path))
    path = Path(path)
    if not path.parent.is_dir():
        raise fail("path", "a file in an existing folder", f"{str(path)!r} (folder {str(path.parent)!r} is missing)")
    _, frames = _frames(trajectory, nrow, value_range)
    images = []
    for frame in frames:
        image = Image.fromarray(np.round(frame * 255).astype(np.uint8))
        images.append(image.resize((image.width * scale, image.height * scale), Image.NEAREST))
    frame_ms = round(1000 / fps)
    durations = [frame_ms] * (len(images) - 1) + [max(frame_ms, round(1000 * hold_last))]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


def _losses_xy(history_or_losses) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(history_or_losses, "steps") and hasattr(history_or_losses, "losses"):
        x = np.asarray(history_or_losses.steps, dtype=np.float64)
        y = np.asarray(history_or_losses.losses, dtype=np.float64)
        if x.shape != y.shape:
            raise fail("history_or_losses", "a History with as many steps as losses",
                       f"{x.size} steps and {y.size} losses")
        return x, y
    values = history_or_losses
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    try:
        y = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        y = None
    if y is None or y.ndim != 1 or isinstance(values, (str, bytes)):
        raise fail("history_or_losses", "a list of floats, a 1-D tensor, or a History", describe(history_or_losses))
    return np.arange(1, y.size + 1, dtype=np.float64), y


def plot_losses(history_or_losses, *, ax=None, smooth: int | None = None, label: str | None = None,
                log_scale: bool = True, **kwargs):
    """Loss against step. Call again with the same ``ax`` to overlay runs (use ``label``).

    Accepts a list of floats, a 1-D tensor or a ``History`` (``.steps``,
    ``.losses``). ``smooth=k`` draws the raw curve faintly and, on top, its
    k-point moving average (1/k)·Σ_{j<k} loss_{i+j} placed at the mean step of
    its window (so it does not lag). Returns a new figure when ``ax`` is None,
    else ``ax``.
    """
    plt = _pyplot()
    x, y = _losses_xy(history_or_losses)
    if y.size == 0:
        raise fail("history_or_losses", "at least one loss value", "an empty sequence")
    if smooth is not None:
        check_positive_int(smooth, "smooth")
    finite = y[np.isfinite(y)]
    if log_scale and finite.size and finite.min() <= 0:
        raise fail("log_scale", "False when some losses are <= 0 (a log axis cannot show them)",
                   f"True with minimum loss {finite.min():.3g}")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    window = min(smooth or 1, y.size)
    if window > 1:
        (raw,) = ax.plot(x, y, alpha=0.25, linewidth=0.8)
        kwargs.setdefault("color", raw.get_color())
        box = np.ones(window) / window
        x, y = np.convolve(x, box, mode="valid"), np.convolve(y, box, mode="valid")
    ax.plot(x, y, label=label, **kwargs)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if label is not None:
        ax.legend()
    if fig is not None:
        plt.close(fig)
        return fig
    return ax

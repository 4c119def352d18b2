"""Interactive explorers for the notebooks.

``guidance_explorer`` samples every (w, class) pair of a classifier-free-guided model ONCE, in a
single batched sampling run from shared starting noise, and renders each grid to PNG; moving the
w slider or the class selector afterwards only swaps pre-rendered PNG bytes, so it stays instant.
``prompt_explorer`` does the same with text prompts as the rows. Both take a latent model as well:
``decode`` turns the sampled latents into the images shown (lesson 06), and ``encode`` gives
``prompt_explorer`` per-token features for a cross-attention model.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch

from dlcourse.guidance import guided_eps_fn, one_hot
from dlcourse.validation import check_choice, check_positive_int, check_real, describe, fail

__all__ = ["GuidanceExplorer", "guidance_explorer", "PromptExplorer", "prompt_explorer"]

DEFAULT_WS = tuple(-2.0 + 0.5 * k for k in range(25))  # −2, −1.5, …, 10
DECODE_BATCH = 256  # latents per call of ``decode``: hundreds of samples stay within memory
MINUS = "\u2212"  # the minus sign of the slider's readout (ipywidgets formats it with d3-format: "−2.0")


def _png(grid: np.ndarray, min_width: int = 640) -> bytes:
    """H×W×3 floats in [0, 1] → PNG bytes, enlarged by an integer factor (nearest) to ≥ min_width."""
    from PIL import Image

    image = Image.fromarray((grid * 255).round().astype(np.uint8))
    factor = max(1, -(-min_width // image.width))
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _signed(x: float) -> str:
    """x as ``{x:g}`` with the readout's minus sign: −2, not -2."""
    return f"{x:g}".replace("-", MINUS)


def _guidance_caption(w: float) -> str:
    """The explorers' caption for weight w, naming diffusers' guidance_scale as 1 + w (lessons 04 and 05 alike)."""
    return f"w = {_signed(w)} (diffusers' guidance_scale = 1 + w = {_signed(1 + w)})"


def _png_width(png: bytes) -> int:
    """Width in pixels read from a PNG's header (IHDR: bytes 16–19, big-endian)."""
    return int.from_bytes(png[16:20], "big")


class GuidanceExplorer:
    """Pre-sampled images for each guidance weight w and class, with a slider and a class selector.

    ``images[w]``: tensor (n_classes, n_per_class, C, H, W) on cpu in [−1, 1]; the same starting
    noise x_T is used for every w, so one column follows one sample as w changes.
    ``widget`` (an ipywidgets VBox, or None without ipywidgets), ``set(w=..., cls=...)``,
    ``current_png``, ``show_static()``.
    """

    def __init__(self, images: dict[float, torch.Tensor], classes: Sequence[str]):
        self.images = images
        self.ws = sorted(images)
        self.classes = tuple(classes)
        self.w = 0.0 if 0.0 in images else self.ws[0]
        self.cls = "all"
        self._png = {(w, c): self._render(w, c) for w in self.ws for c in ("all", *self.classes)}
        self.widget = self._build_widget()

    def _render(self, w: float, cls: str) -> bytes:
        from dlcourse.plotting import image_grid

        x = self.images[w].clamp(-1, 1)  # large w can push samples far outside the data range
        if cls == "all":  # one column per class, its samples down the column
            return _png(image_grid(x.transpose(0, 1).flatten(0, 1), nrow=x.shape[0]))
        return _png(image_grid(x[self.classes.index(cls)], nrow=x.shape[1]))

    def _caption(self) -> str:
        shown = f"columns: {', '.join(self.classes)}" if self.cls == "all" else f"class: {self.cls}"
        return f"{_guidance_caption(self.w)} · {shown}"

    def _build_widget(self):
        try:
            import ipywidgets as widgets
        except ImportError as error:
            self._no_widget_reason = f"ipywidgets is not available ({error})"
            return None
        step = min(np.diff(self.ws)) if len(self.ws) > 1 else 1.0
        self._slider = widgets.FloatSlider(value=self.w, min=self.ws[0], max=self.ws[-1], step=float(step),
                                           description="w", continuous_update=True, readout_format=".1f")
        self._dropdown = widgets.Dropdown(options=["all", *self.classes], value="all", description="class")
        # each PNG is shown at its own width, not stretched to the page
        self._image = widgets.Image(value=self.current_png, format="png",
                                    layout=widgets.Layout(width=f"{_png_width(self.current_png)}px"))
        self._label = widgets.Label(self._caption())
        self._slider.observe(lambda change: self.set(w=change["new"]), names="value")
        self._dropdown.observe(lambda change: self.set(cls=change["new"]), names="value")
        return widgets.VBox([widgets.HBox([self._slider, self._dropdown]), self._label, self._image])

    @property
    def current_png(self) -> bytes:
        """PNG bytes of the grid for the current w and class."""
        return self._png[(self.w, self.cls)]

    def set(self, w: float | None = None, cls: str | None = None) -> "GuidanceExplorer":
        """Show the grid for ``w`` (snapped to the nearest sampled value) and ``cls`` ("all" or a class name)."""
        if w is not None:
            w = check_real(w, "w", hint=f" (snapped to the sampled weights in [{self.ws[0]:g}, {self.ws[-1]:g}])")
            self.w = min(self.ws, key=lambda v: abs(v - w))
        if cls is not None:
            if cls != "all" and cls not in self.classes:
                raise fail("cls", f"'all' or one of {list(self.classes)}", describe(cls))
            self.cls = cls
        if self.widget is not None:
            if self._slider.value != self.w:
                self._slider.value = self.w  # its observer calls set() again, a no-op
            if self._dropdown.value != self.cls:
                self._dropdown.value = self.cls
            self._image.value = self.current_png
            self._image.layout.width = f"{_png_width(self.current_png)}px"
            self._label.value = self._caption()
        return self

    def show_static(self, ws: Sequence[float] | None = None):
        """A matplotlib figure: rows = classes, columns = w values (first sample of each class)."""
        from dlcourse.plotting import show_images

        ws = list(ws) if ws is not None else self.ws[:: max(1, len(self.ws) // 6)]
        missing = [w for w in ws if w not in self.images]
        if missing:
            raise fail("ws", f"sampled values of w {self.ws}", f"{missing}")
        tiles = torch.stack([torch.stack([self.images[w][k, 0] for w in ws]) for k in range(len(self.classes))])
        return show_images(tiles.flatten(0, 1), nrow=len(ws), row_titles=list(self.classes),
                           col_titles=[f"w = {_signed(w)}" for w in ws], figsize=(1.3 * len(ws) + 1, 1.4 * len(self.classes)))

    def _ipython_display_(self):
        from IPython.display import display

        if self.widget is None:
            print(f"Showing a static grid instead of the interactive explorer: {self._no_widget_reason}.")
            display(self.show_static())
        else:
            display(self.widget)


def _image_shape(model, image_shape) -> tuple[int, int, int]:
    if image_shape is None:
        config = getattr(model, "config", {}) or {}
        if "image_channels" not in config or "image_size" not in config:
            raise fail("image_shape", "(C, H, W), or a model whose .config has image_channels and image_size",
                       describe(image_shape))
        return (config["image_channels"], config["image_size"], config["image_size"])
    if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3
            or not all(isinstance(s, int) and s > 0 for s in image_shape)):
        raise fail("image_shape", "a tuple (C, H, W) of positive ints", describe(image_shape))
    return tuple(image_shape)


def guidance_explorer(model, schedule, classes: Sequence[str], *, ws: Sequence[float] | None = None,
                      n_per_class: int = 4, sampler: str = "ddim", steps: int = 50, seed: int = 0, device=None,
                      image_shape: tuple[int, int, int] | None = None, progress: bool = True,
                      x0_mode: str = "clip", decode=None) -> GuidanceExplorer:
    """Sample ``n_per_class`` images per class at every w in ``ws`` (default −2, −1.5, …, 10) in ONE
    batched CFG run: the batch stacks len(ws) × len(classes) × n_per_class samples, each with its own
    w (``guided_eps_fn`` with a per-sample w), and every w starts from the same x_T (``seed``).

    ``model(x, t, c, c_mask)`` is a context-conditioned ε-model (put it in eval mode) whose context is
    ``one_hot(class index, len(classes))``; ``sampler``: "ddim" (``steps`` steps, η = 0) or "ddpm".
    ``image_shape`` (C, H, W) defaults to the model's config; ``x0_mode`` is the samplers' (x̂_0
    clipped to [−1, 1] by default; "dynamic" for Imagen's thresholding, "none" for the plain
    formula, where large w saturates). Returns a :class:`GuidanceExplorer`.

    A latent model: ``decode(z)`` maps sampled latents (N, c, h, w) to images (N, 3, H, W) in [−1, 1], e.g.
    ``lambda z: vae.decode(z / s)``; the explorer shows the decoded tiles (clamped to [−1, 1]), ``image_shape``
    is then the latent's (the model's config by default) and ``x0_mode="none"`` (latents are not pixels).
    """
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not classes:
        raise fail("classes", "a non-empty list of class names", describe(classes))
    ws = _check_ws(ws)
    check_positive_int(n_per_class, "n_per_class")
    _check_callable(decode, "decode", "a function latents (N, c, h, w) → images (N, 3, H, W) in [−1, 1], "
                    "e.g. lambda z: vae.decode(z / s), or None for a pixel-space model")
    n_classes = len(classes)
    c_rows = one_hot(torch.arange(n_classes), n_classes)
    images = _sample_over_ws(model, schedule, c_rows, ws, n_per_class, sampler=sampler, steps=steps, seed=seed,
                             device=device, image_shape=image_shape, progress=progress, x0_mode=x0_mode,
                             decode=decode)
    return GuidanceExplorer({w_: images[i] for i, w_ in enumerate(ws)}, classes)


def _check_callable(f, name: str, expected: str):
    """``f`` unchanged when it is None or callable; otherwise the course's error naming what to pass."""
    if f is not None and not callable(f):
        raise fail(name, expected, describe(f))
    return f


def _decoded(decode, z: torch.Tensor) -> torch.Tensor:
    """Images ``decode(z)`` of the latents z (N, c, h, w), DECODE_BATCH at a time, clamped to [−1, 1], on cpu."""
    parts = []
    with torch.no_grad():
        for start in range(0, z.shape[0], DECODE_BATCH):
            chunk = z[start:start + DECODE_BATCH]
            x = decode(chunk)
            if (not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4
                    or x.shape[0] != chunk.shape[0]):
                raise fail("decode(z)", f"a float tensor of {chunk.shape[0]} images (N, C, H, W) for the latents "
                           f"z {tuple(chunk.shape)}", describe(x))
            parts.append(x.detach().float().cpu().clamp(-1, 1))
    return torch.cat(parts)


def _check_ws(ws) -> list[float]:
    ws = list(DEFAULT_WS if ws is None else ws)
    ws = [check_real(w, "ws", hint=" for every guidance weight") for w in ws]
    if not ws or len(set(ws)) != len(ws):
        raise fail("ws", "a non-empty list of distinct numbers (guidance weights w)", describe(ws))
    return sorted(ws)


def _sample_over_ws(model, schedule, c_rows: torch.Tensor, ws: list[float], n_per_row: int, *, sampler: str,
                    steps: int, seed: int, device, image_shape, progress: bool, x0_mode: str,
                    decode=None) -> torch.Tensor:
    """One batched CFG run: every w × every context row × ``n_per_row`` samples, each w from the same x_T
    (``seed``), guided by ``guided_eps_fn`` with a per-sample w. ``c_rows`` holds one context per row, of any
    shape: (n_rows, D) vectors or (n_rows, L, D) token features. Returns (len(ws), n_rows, n_per_row, C, H, W)
    on cpu: the samples, or with ``decode`` their decoded images."""
    from dlcourse.sampling import ddim_sample, ddpm_sample

    check_choice(sampler, "sampler", ("ddim", "ddpm"))
    shape = _image_shape(model, image_shape)
    if decode is None and shape[0] not in (1, 3):
        raise fail("decode", f"a decoder for the model's {shape[0]}-channel samples, e.g. decode=lambda z: "
                   "vae.decode(z / s) for a latent model (the explorer shows images with 1 or 3 channels)",
                   f"decode=None and image_shape {shape}")
    if device is None:
        first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = first.device if first is not None else torch.device("cpu")
    n_rows = c_rows.shape[0]
    per_w = n_rows * n_per_row
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((per_w, *shape), generator=generator).repeat(len(ws), 1, 1, 1).to(device)
    c = c_rows.repeat_interleave(n_per_row, 0).repeat(len(ws), *([1] * (c_rows.dim() - 1))).to(device)
    w = torch.tensor(ws).repeat_interleave(per_w).to(device)
    eps_fn = guided_eps_fn(model, c, w)
    if sampler == "ddim":
        x0 = ddim_sample(eps_fn, schedule, x_T.shape, steps=steps, x_T=x_T, progress=progress, x0_mode=x0_mode)
    else:
        x0 = ddpm_sample(eps_fn, schedule, x_T.shape, x_T=x_T, generator=generator, progress=progress,
                         x0_mode=x0_mode)
    images = x0.detach().float().cpu() if decode is None else _decoded(decode, x0.detach())
    return images.reshape(len(ws), n_rows, n_per_row, *images.shape[1:])


class PromptExplorer(GuidanceExplorer):
    """A :class:`GuidanceExplorer` whose rows are text prompts: a prompt menu, a text box and the w slider.

    ``add_prompt(text)`` samples a new prompt once, at every w, from the first prompt's starting noise, and keeps
    it (typing a prompt in the box and pressing Enter does the same); choosing it again is instant.
    """

    def __init__(self, images: dict[float, torch.Tensor], prompts: Sequence[str], sample_prompt=None):
        self._sample_prompt = sample_prompt
        super().__init__(images, prompts)
        self.cls = self.classes[0]
        self._png = {key: png for key, png in self._png.items() if key[1] != "all"}
        if self.widget is not None:
            self._dropdown.options = list(self.classes)
            self._dropdown.value = self.cls
            self.set()

    def _caption(self) -> str:
        return f"{_guidance_caption(self.w)} · prompt: {self.cls!r}"

    def _build_widget(self):
        box = super()._build_widget()
        if box is None:
            return None
        import ipywidgets as widgets

        self._dropdown.description = "prompt"
        self._text = widgets.Text(placeholder="type a prompt, press Enter", description="new")
        self._text.continuous_update = False
        self._text.observe(lambda change: self.add_prompt(change["new"]) if change["new"].strip() else None,
                           names="value")
        return widgets.VBox([widgets.HBox([self._slider, self._dropdown]), self._text, *box.children[1:]])

    def add_prompt(self, text: str) -> "PromptExplorer":
        """Sample ``text`` at every w (once; a prompt seen before is only selected) and show it."""
        if not isinstance(text, str) or not text.strip():
            raise fail("text", "a non-empty prompt", describe(text))
        text = text.strip()
        if text not in self.classes:
            if self._sample_prompt is None:
                raise fail("text", f"one of the pre-sampled prompts {list(self.classes)} (this explorer has "
                           "no model to sample new ones)", repr(text))
            new = self._sample_prompt(text)  # (len(ws), n_per_prompt, C, H, W)
            self.images = {w: torch.cat([self.images[w], new[i][None]]) for i, w in enumerate(self.ws)}
            self.classes = (*self.classes, text)
            self._png.update({(w, text): self._render(w, text) for w in self.ws})
            if self.widget is not None:
                self._dropdown.options = list(self.classes)
        return self.set(cls=text)

    def set(self, w: float | None = None, cls: str | None = None) -> "PromptExplorer":
        if cls == "all":
            raise fail("cls", f"one of the prompts {list(self.classes)}", repr(cls))
        return super().set(w=w, cls=cls)


def prompt_explorer(model, schedule, clip, prompts: Sequence[str], *, ws: Sequence[float] | None = None,
                    n_per_prompt: int = 4, sampler: str = "ddim", steps: int = 50, seed: int = 0, device=None,
                    image_shape: tuple[int, int, int] | None = None, progress: bool = True,
                    x0_mode: str = "clip", encode=None, decode=None) -> PromptExplorer:
    """:func:`guidance_explorer` for text: context c = ``clip.encode_text([prompt])`` (TinyCLIP or
    ``dlcourse.clip.load_pretrained``), every prompt at every w (default −2 … 10) in ONE batched run.
    Prompts typed later are sampled the same way, from the same x_T, and cached.

    ``encode(list of prompts)`` replaces ``clip.encode_text`` (``clip`` may then be None): for lesson 06's
    cross-attention ``TextUNet``, ``lambda p: clip.encode_tokens(p)[0]``, per-token features (N, L, D) whose
    padding rows are zero. ``decode`` shows a latent model's samples decoded, as in :func:`guidance_explorer`.
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts or not all(
            isinstance(p, str) and p.strip() for p in prompts):
        raise fail("prompts", "a non-empty list of prompt strings", describe(prompts))
    ws = _check_ws(ws)
    check_positive_int(n_per_prompt, "n_per_prompt")
    _check_callable(encode, "encode", "a function list of prompts → context tensor, e.g. "
                    "lambda p: clip.encode_tokens(p)[0], or None for clip.encode_text")
    _check_callable(decode, "decode", "a function latents (N, c, h, w) → images (N, 3, H, W) in [−1, 1], "
                    "e.g. lambda z: vae.decode(z / s), or None for a pixel-space model")
    if encode is None:
        if not callable(getattr(clip, "encode_text", None)):
            raise fail("clip", "a text encoder with .encode_text(list of prompts) (TinyCLIP, "
                       "dlcourse.clip.load_pretrained), or pass encode=", describe(clip))
        encode = clip.encode_text
    options = dict(sampler=sampler, steps=steps, seed=seed, device=device, image_shape=image_shape,
                   x0_mode=x0_mode, decode=decode)

    def sample(texts: list[str], show_progress: bool) -> torch.Tensor:
        with torch.no_grad():
            c_rows = encode(list(texts))
            if (not isinstance(c_rows, torch.Tensor) or not c_rows.is_floating_point() or c_rows.dim() < 2
                    or c_rows.shape[0] != len(texts)):
                raise fail("encode(prompts)", f"a float tensor with one context per prompt, ({len(texts)}, D) or "
                           f"({len(texts)}, L, D)", describe(c_rows))
            return _sample_over_ws(model, schedule, c_rows.float(), ws, n_per_prompt, progress=show_progress,
                                   **options)

    images = sample([p.strip() for p in prompts], progress)
    return PromptExplorer({w: images[i] for i, w in enumerate(ws)}, [p.strip() for p in prompts],
                          sample_prompt=lambda text: sample([text], False)[:, 0])

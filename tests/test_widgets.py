"""dlcourse.widgets.guidance_explorer with a tiny stand-in conditional model."""
import io

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from dlcourse.schedules import Schedule, scaled_linear_betas
from dlcourse.widgets import GuidanceExplorer, guidance_explorer

CLASSES = ("daisy", "rose", "tulip")


class CountingModel(nn.Module):
    """model(x, t, c, c_mask): the exact ε for data = one colour per class (black for the null context);
    records each forward's batch size."""

    def __init__(self, schedule: Schedule, context_dim: int = 3, channels: int = 3):
        super().__init__()
        self.colour = nn.Parameter(torch.randn(context_dim, channels, generator=torch.Generator().manual_seed(0)))
        self.alpha_bars = schedule.alpha_bars
        self.batch_sizes = []

    def forward(self, x, t, c=None, c_mask=None):
        self.batch_sizes.append(x.shape[0])
        c = c * c_mask[:, None]
        x_star = 0.5 * torch.tanh(c @ self.colour)[:, :, None, None]
        ab = self.alpha_bars[t][:, None, None, None]
        return (x - ab.sqrt() * x_star) / (1 - ab).sqrt()


@pytest.fixture(scope="module")
def explorer_and_model():
    schedule = Schedule(scaled_linear_betas(20))
    model = CountingModel(schedule)
    explorer = guidance_explorer(model, schedule, CLASSES, n_per_class=2, steps=5, image_shape=(3, 4, 4),
                                 progress=False)
    return explorer, model


def test_one_batched_sampling_run_for_all_slider_values(explorer_and_model):
    explorer, model = explorer_and_model
    n_ws = 25  # −2, −1.5, …, 10
    assert len(model.batch_sizes) == 5  # one forward per sampling step
    assert set(model.batch_sizes) == {2 * n_ws * len(CLASSES) * 2}
    assert sorted(explorer.images) == [-2 + 0.5 * k for k in range(n_ws)]
    assert all(x.shape == (len(CLASSES), 2, 3, 4, 4) for x in explorer.images.values())


def test_slider_and_class_selector(explorer_and_model):
    explorer, _ = explorer_and_model
    slider, dropdown = explorer.widget.children[0].children
    assert (slider.min, slider.max, slider.step, slider.description) == (-2.0, 10.0, 0.5, "w")
    assert list(dropdown.options) == ["all", *CLASSES]
    explorer.set(w=0.0, cls="all")
    at_zero = explorer.current_png
    assert at_zero.startswith(b"\x89PNG")
    explorer.set(w=4.0)
    assert explorer.current_png != at_zero and slider.value == 4.0
    slider.value = 0.0  # moving the slider updates the shown image
    assert explorer.current_png == at_zero and explorer.w == 0.0
    assert explorer.widget.children[-1].value == at_zero
    dropdown.value = "rose"
    assert explorer.cls == "rose" and explorer.current_png != at_zero
    explorer.set(cls="all")
    assert explorer.current_png == at_zero
    with pytest.raises(ValueError, match="cls: expected 'all' or one of"):
        explorer.set(cls="orchid")


def test_all_classes_are_columns_shown_at_their_own_width(explorer_and_model):
    from PIL import Image

    explorer, _ = explorer_and_model
    explorer.set(w=0.0, cls="all")
    image = Image.open(io.BytesIO(explorer.current_png))
    n_classes, n_per_class = explorer.images[0.0].shape[:2]
    assert image.width / image.height == pytest.approx(n_classes / n_per_class, rel=0.1)  # 5 columns, 2 rows
    assert explorer.widget.children[-1].layout.width == f"{image.width}px"
    assert f"columns: {', '.join(CLASSES)}" in explorer.widget.children[1].value
    explorer.set(cls="rose")
    rose = Image.open(io.BytesIO(explorer.current_png))
    assert explorer.widget.children[-1].layout.width == f"{rose.width}px" and "class: rose" in explorer.widget.children[1].value
    explorer.set(cls="all")


def test_guidance_uses_shared_noise_and_the_weight(explorer_and_model):
    explorer, _ = explorer_and_model
    # w = −1 is unconditional: with shared x_T every class gives the same images
    uncond = explorer.images[-1.0]
    assert torch.allclose(uncond[0], uncond[1], atol=1e-6) and torch.allclose(uncond[1], uncond[2], atol=1e-6)
    assert not torch.allclose(explorer.images[0.0][0], explorer.images[0.0][1], atol=1e-3)


def test_caption_writes_negative_w_with_the_minus_sign_of_the_slider_readout(explorer_and_model):
    explorer, _ = explorer_and_model
    explorer.set(w=-2.0, cls="all")
    caption = explorer.widget.children[1].value
    assert caption.startswith("w = \u22122 (diffusers' guidance_scale = 1 + w = \u22121) · ") and "-" not in caption
    explorer.set(w=0.0)
    assert explorer.widget.children[1].value.startswith("w = 0 (diffusers' guidance_scale = 1 + w = 1) · ")


def test_static_fallback(explorer_and_model):
    explorer, _ = explorer_and_model
    figure = explorer.show_static(ws=[-1.0, 0.0, 5.0])
    assert isinstance(figure, matplotlib.figure.Figure)


def test_bad_arguments():
    schedule = Schedule(scaled_linear_betas(10))
    model = CountingModel(schedule)
    with pytest.raises(ValueError, match="sampler: expected 'ddim' or 'ddpm'"):
        guidance_explorer(model, schedule, CLASSES, sampler="euler", image_shape=(3, 4, 4), progress=False)
    with pytest.raises(ValueError, match=r"image_shape: expected \(C, H, W\)"):
        guidance_explorer(model, schedule, CLASSES, progress=False)


def test_each_weight_gets_its_own_guidance(explorer_and_model):
    """With the exact ε of one-colour-per-class data, CFG with weight w lands on (1 + w)·x*_class;
    the default sampler clips that x̂_0 to [−1, 1], the plain formula (x0_mode="none") does not."""
    explorer, model = explorer_and_model
    plain = guidance_explorer(model, Schedule(scaled_linear_betas(20)), CLASSES, n_per_class=2, steps=5,
                              image_shape=(3, 4, 4), progress=False, x0_mode="none")
    x_star = 0.5 * torch.tanh(model.colour.detach())  # (class, channel)
    saturated = 0
    for w in (-2.0, -1.0, 0.0, 0.5, 3.0, 10.0):
        expected = ((1 + w) * x_star)[:, None, :, None, None].expand(3, 2, 3, 4, 4)
        assert torch.allclose(plain.images[w], expected, atol=1e-4), w
        assert torch.allclose(explorer.images[w], expected.clamp(-1, 1), atol=1e-4), w
        saturated += int((expected.abs() > 1).any())
    assert saturated >= 2  # the clipping really was exercised


def test_explorer_set_refuses_nan_and_accepts_numpy_numbers():
    images = {w: torch.zeros(len(CLASSES), 1, 3, 8, 8) for w in (0.0, 1.0, 2.0)}
    explorer = GuidanceExplorer(images, list(CLASSES))
    for bad in (float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="w: expected a finite real number"):
            explorer.set(w=bad)
    assert explorer.set(w=np.float32(1.9)).w == 2.0
    assert explorer.set(w=torch.tensor(0.2)).w == 0.0


class LatentModel(CountingModel):
    """CountingModel on 4-channel 2×2 "latents", with the config a latent U-Net carries (image_shape from it)."""

    def __init__(self, schedule: Schedule):
        super().__init__(schedule, channels=4)
        self.config = {"image_channels": 4, "image_size": 2}


def upsample_decode(z):
    """A stand-in decoder: the latent's first 3 channels, ×3 (so it leaves [−1, 1]), enlarged 4× to 8×8."""
    return torch.nn.functional.interpolate(3 * z[:, :3], scale_factor=4, mode="nearest")


def test_a_latent_model_shows_its_decoded_samples_batched_and_clamped():
    """The exact ε of one-colour-per-class data puts the plain formula's latents at (1 + w)·x*_class
    (as in test_each_weight_gets_its_own_guidance): the tiles are their decodes, clamped to [−1, 1]."""
    schedule = Schedule(scaled_linear_betas(20))
    model = LatentModel(schedule)
    calls = []

    def decode(z):
        calls.append(tuple(z.shape))
        return upsample_decode(z)

    explorer = guidance_explorer(model, schedule, CLASSES, n_per_class=4, steps=3, progress=False, x0_mode="none",
                                 decode=decode)
    assert calls == [(256, 4, 2, 2), (25 * 3 * 4 - 256, 4, 2, 2)]  # latents of the config's shape, 256 at a time
    x_star = 0.5 * torch.tanh(model.colour.detach())  # (class, latent channel)
    for w in (-2.0, -1.0, -0.5, 0.0, 10.0):
        latents = ((1 + w) * x_star)[:, :, None, None].expand(3, 4, 2, 2)
        expected = upsample_decode(latents).clamp(-1, 1)[:, None].expand(3, 4, 3, 8, 8)
        assert explorer.images[w].shape == (3, 4, 3, 8, 8)
        assert torch.allclose(explorer.images[w], expected, atol=1e-4), w
    assert explorer.images[10.0].abs().max() == 1 and 0 < explorer.images[-0.5].abs().max() < 1  # clamped only where needed
    explorer.set(w=0.0, cls="all")
    at_zero = explorer.current_png
    assert at_zero.startswith(b"\x89PNG") and explorer.set(w=3.0).current_png != at_zero


def test_bad_decode_arguments_name_the_fix():
    schedule = Schedule(scaled_linear_betas(10))
    model = LatentModel(schedule)
    with pytest.raises(ValueError, match=r"decode: expected a decoder for the model's 4-channel samples, e.g. "
                                         r"decode=lambda z: vae.decode\(z / s\)"):
        guidance_explorer(model, schedule, CLASSES, ws=[0.0], steps=2, progress=False)
    with pytest.raises(ValueError, match=r"decode: expected a function latents \(N, c, h, w\) → images"):
        guidance_explorer(model, schedule, CLASSES, ws=[0.0], steps=2, progress=False, decode="vae")
    with pytest.raises(ValueError, match=r"decode\(z\): expected a float tensor of 3 images \(N, C, H, W\)"):
        guidance_explorer(model, schedule, CLASSES, ws=[0.0], n_per_class=1, steps=2, progress=False,
                          decode=lambda z: upsample_decode(z)[:1])
    with pytest.raises(ValueError, match=r"decode\(z\): expected .*, got tuple"):
        guidance_explorer(model, schedule, CLASSES, ws=[0.0], n_per_class=1, steps=2, progress=False,
                          decode=lambda z: (z, z))

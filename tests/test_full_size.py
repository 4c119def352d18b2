"""Full mode proven to build and run without a GPU: every lesson's FULL budget — its data, image size,
model widths, T and batch size — for two training steps (bf16 autocast, as on the GPU) and two
sampling steps at the lesson's full sampling batch. Catches shape, dtype, memory and budget
inconsistencies (batch_size > data, steps > T, sizes the U-Net cannot halve) before a class meets
them on a GPU. Slow-ish (about a minute on 2 CPU cores), so it carries the ``fullsize`` marker;
the README's test command runs it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlcourse.config import LESSON02, OPTIMISED
from dlcourse.config import budget
from dlcourse.data import load_flowers
from dlcourse.guidance import context_mask, guided_eps_fn, one_hot
from dlcourse.models import ConditionalUNet, TimeUNet, UNet, UNetDenoiser, count_parameters
from dlcourse.sampling import ddim_sample
from dlcourse.schedules import Schedule, scaled_linear_betas

pytestmark = pytest.mark.fullsize


def _two_steps(model, loss_of_batch, images, batch_size: int) -> list[float]:
    """Two AdamW steps on full-size batches under CPU bf16 autocast; returns the losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(2):
        batch = images[step * batch_size:(step + 1) * batch_size]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_of_batch(model, batch)
        optimizer.zero_grad()
        loss.float().backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    return losses


def _check_common(b, n_train: int) -> None:
    assert b.mode == "full"
    assert b.batch_size <= n_train, "batch_size larger than the training set"
    assert b.image_size % 2 ** len(b.channels) == 0, "each down block halves the image"


@pytest.fixture(scope="module")
def train32():
    return load_flowers("train", image_size=32, progress=False)


def test_lesson_01_full_size(train32):
    b = budget("01_unet_denoiser", "full")
    _check_common(b, len(train32.images[: b.n_images]))
    model = UNetDenoiser(channels=b.channels, image_size=b.image_size)
    images = train32.images[: 2 * b.batch_size]
    _two_steps(model, lambda m, x0: F.mse_loss(m(x0 + b.noise_level * torch.randn_like(x0)), x0), images, b.batch_size)
    assert count_parameters(model) > 1_000_000


@pytest.mark.parametrize("lesson, switches", [("02_ddpm", None), ("03_optimizations", LESSON02),
                                              ("03_optimizations", OPTIMISED)])
def test_unconditional_lessons_full_size(train32, lesson, switches):
    b = budget(lesson, "full")
    _check_common(b, len(train32.images[: b.n_images]))
    schedule = Schedule(scaled_linear_betas(b.T))
    assert schedule.alpha_bars[-1] < 1e-3
    model = (TimeUNet(channels=b.channels, image_size=b.image_size, T=b.T) if switches is None
             else UNet(channels=b.channels, image_size=b.image_size, T=b.T, **switches))

    def loss(m, x0):
        t = torch.randint(0, b.T, (len(x0),))
        noise = torch.randn_like(x0)
        return F.mse_loss(m(schedule.q_sample(x0, t, noise), t).float(), noise)

    _two_steps(model, loss, train32.images[: 2 * b.batch_size], b.batch_size)
    model.eval()
    n = min(b.n_samples, 128)  # the sampling batch, capped: CPU memory for a 500-image batch is not the point
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = ddim_sample(lambda x, t: model(x, t).float(), schedule, (n, 3, b.image_size, b.image_size), steps=2,
                        device="cpu", progress=False)
    assert x.shape == (n, 3, b.image_size, b.image_size) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.abs().max() <= 1 + 1e-5
    for steps in getattr(b, "ddim_steps", ()):
        assert steps < b.T


def test_lesson_04_full_size(train32):
    b = budget("04_classifier_free_guidance", "full")
    _check_common(b, len(train32.images[: b.n_images]))
    assert b.n_samples % 5 == 0 and b.sampling_steps <= b.T
    schedule = Schedule(scaled_linear_betas(b.T))
    model = ConditionalUNet(channels=b.channels, image_size=b.image_size, T=b.T, context_dim=5)
    labels = train32.labels[: 2 * b.batch_size]

    def loss(m, x0):
        n = len(x0)
        c = one_hot(labels[:n], 5)
        t = torch.randint(0, b.T, (n,))
        noise = torch.randn_like(x0)
        return F.mse_loss(m(schedule.q_sample(x0, t, noise), t, c, context_mask(n, 0.1)).float(), noise)

    _two_steps(model, loss, train32.images[: 2 * b.batch_size], b.batch_size)
    model.eval()
    n = 5 * b.explorer_per_class * 4  # a slice of the explorer's batch: 4 weights x 5 classes
    c = one_hot(torch.arange(n) % 5, 5)
    w = torch.tensor([-2.0, 0.0, 3.0, 10.0]).repeat_interleave(n // 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = ddim_sample(guided_eps_fn(lambda *a: model(*a).float(), c, w), schedule, (n, 3, b.image_size, b.image_size),
                        steps=2, device="cpu", progress=False)
    assert x.shape == (n, 3, b.image_size, b.image_size) and torch.isfinite(x).all()


def test_lesson_05_full_size(train32):
    """TinyCLIP at the full budget's embedding size and batch (the N of the N×N matrix), then the
    CLIP-conditioned U-Net with context_dim = D: two steps each, and two guided sampling steps."""
    from dlcourse.clip import TinyCLIP, Tokenizer, contrastive_loss, drop_embeddings, prompt_guided_eps_fn

    b = budget("05_clip_conditioning", "full")
    _check_common(b, len(train32.images[: b.n_images]))
    captions = train32.captions[: 2 * b.clip_batch_size]
    clip = TinyCLIP(Tokenizer.from_texts(captions).vocab, embed_dim=b.clip_embed_dim, image_size=b.image_size)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=1e-3)
    for step in range(2):
        part = slice(step * b.clip_batch_size, (step + 1) * b.clip_batch_size)
        loss = contrastive_loss(clip.image_features(train32.images[part]),
                                clip.text_features(clip.tokenize(captions[part])), clip.logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    with torch.no_grad():
        c_all = clip.encode_image(train32.images[: 2 * b.batch_size])
    assert c_all.shape == (2 * b.batch_size, b.clip_embed_dim)
    schedule = Schedule(scaled_linear_betas(b.T))
    model = ConditionalUNet(channels=b.channels, image_size=b.image_size, T=b.T, context_dim=b.clip_embed_dim)

    def loss(m, x0):
        n = len(x0)
        c, _ = drop_embeddings(c_all[:n], 0.1)
        t = torch.randint(0, b.T, (n,))
        noise = torch.randn_like(x0)
        return F.mse_loss(m(schedule.q_sample(x0, t, noise), t, c).float(), noise)

    _two_steps(model, loss, train32.images[: 2 * b.batch_size], b.batch_size)
    model.eval()
    with torch.no_grad():
        prompts = clip.encode_text(["a red rose", "a yellow sunflower"])
    c = prompts.repeat_interleave(2, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = ddim_sample(prompt_guided_eps_fn(lambda *a: model(*a).float(), c, 3.0), schedule,
                        (4, 3, b.image_size, b.image_size), steps=2, device="cpu", progress=False)
    assert x.shape == (4, 3, b.image_size, b.image_size) and torch.isfinite(x).all()


def test_lesson_06_full_size(train32):
    """The VAE at its full widths and batch, the latents it makes, the cross-attention TextUNet on TinyCLIP's
    token features and the pixel-space ConditionalUNet: two steps each; two guided latent sampling steps, decoded."""
    from dlcourse.clip import TinyCLIP, Tokenizer, prompt_guided_eps_fn
    from dlcourse.models import VAE, TextUNet, latent_scale, vae_loss

    b = budget("06_latent_diffusion", "full")
    _check_common(b, len(train32.images[: b.n_images]))
    assert max(b.vae_batch_size, b.batch_size) <= b.n_images
    vae = VAE(latent_channels=b.latent_channels, channels=b.vae_channels, image_size=b.image_size)
    _two_steps(vae, lambda m, x0: vae_loss(m, x0, b.vae_beta), train32.images[: 2 * b.vae_batch_size], b.vae_batch_size)
    with torch.no_grad():
        mu, _ = vae.eval().encode(train32.images[: 2 * b.batch_size])
    latents = latent_scale(mu) * mu
    assert latents.shape == (2 * b.batch_size, *vae.latent_shape)
    captions = train32.captions[: 2 * b.batch_size]
    clip = TinyCLIP(Tokenizer.from_texts(captions).vocab, embed_dim=b.clip_embed_dim, image_size=16,
                    text_width=b.clip_text_width).eval()
    with torch.no_grad():
        y, _ = clip.encode_tokens(captions)
    schedule = Schedule(scaled_linear_betas(b.T))
    model = TextUNet(image_channels=b.latent_channels, channels=b.channels, image_size=8, T=b.T,
                     context_dim=b.context_dim, heads=b.attention_heads, cross_attention_levels=2,
                     attention_heads=b.attention_heads)

    def text_loss(m, z0):
        n = len(z0)
        t = torch.randint(0, b.T, (n,))
        noise = torch.randn_like(z0)
        return F.mse_loss(m(schedule.q_sample(z0, t, noise), t, y[:n], context_mask(n, b.drop_prob)).float(), noise)

    _two_steps(model, text_loss, latents, b.batch_size)
    pixel = ConditionalUNet(channels=b.pixel_channels, image_size=b.image_size, T=b.T, context_dim=5)

    def pixel_loss(m, x0):
        n = len(x0)
        t = torch.randint(0, b.T, (n,))
        noise = torch.randn_like(x0)
        c = one_hot(torch.arange(n) % 5, 5)
        return F.mse_loss(m(schedule.q_sample(x0, t, noise), t, c, context_mask(n, b.drop_prob)).float(), noise)

    _two_steps(pixel, pixel_loss, train32.images[: 2 * b.batch_size], b.batch_size)
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = ddim_sample(prompt_guided_eps_fn(lambda *a: model(*a).float(), y[:4], 3.0), schedule,
                        (4, b.latent_channels, 8, 8), steps=2, device="cpu", progress=False, x0_mode="none")
    with torch.no_grad():
        x = vae.decode(z.float())
    assert x.shape == (4, 3, b.image_size, b.image_size) and torch.isfinite(x).all()

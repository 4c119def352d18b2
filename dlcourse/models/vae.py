"""Lesson 06's autoencoder for latent diffusion: a small convolutional VAE and its three formulas.

The encoder gives a diagonal Gaussian q(z | x) = N(μ, σ²) per latent value (it returns μ and log σ²),

    reparameterise:  z = μ + σ ε,  σ = exp(½ log σ²),  ε ~ N(0, I)
    kl_divergence:   KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − log σ_j² − 1)
    latent_scale:    s = 1 / std(z), so the diffusion model sees unit-variance latents s·z
                     (Stable Diffusion's scale factor; decode z = latents / s)

and the model is trained on ‖x − x̂‖² + β·KL (:func:`vae_loss`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlcourse.validation import check_float_tensor, check_images, check_positive_int, check_real, describe, fail

from .blocks import RearrangePool, ResidualBlock, make_activation, make_norm
from .registry import register
from .unets import _check_channels

__all__ = ["reparameterise", "kl_divergence", "latent_scale", "vae_loss", "VAE", "LOGVAR_RANGE"]

LOGVAR_RANGE = (-30.0, 20.0)  # log σ² is clamped here: exp(log σ²) neither underflows to 0 nor overflows


def _check_gaussian(mu, logvar) -> None:
    check_float_tensor(mu, "mu")
    check_float_tensor(logvar, "logvar")
    if mu.shape != logvar.shape:
        raise fail("logvar", f"the shape of mu {tuple(mu.shape)} (one log σ² per mean)", describe(logvar))


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = μ + σ ε with σ = exp(½ log σ²) and ε ~ N(0, I) drawn from ``generator`` (on its device, then
    moved; None: the global RNG). Differentiable in μ and log σ²."""
    _check_gaussian(mu, logvar)
    where = generator.device if generator is not None else mu.device
    eps = torch.randn(mu.shape, generator=generator, device=where, dtype=mu.dtype).to(mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − log σ_j² − 1): summed over each image's latent values
    (every dim but the first), averaged over the batch. A 0-d tensor; 0 exactly when μ = 0 and σ = 1."""
    _check_gaussian(mu, logvar)
    if mu.dim() < 2:
        raise fail("mu", "a batch (N, ...) of latent means", describe(mu))
    per_image = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).flatten(1).sum(dim=1)
    return per_image.mean()


def latent_scale(latents: torch.Tensor) -> float:
    """s = 1 / std(latents) over all values (torch.std, Bessel-corrected), so s·latents has unit variance.

    A scale only, no shift, as Stable Diffusion's scale factor (0.18215 for its VAE)."""
    check_float_tensor(latents, "latents")
    if latents.numel() < 2:
        raise fail("latents", "at least 2 values to take a standard deviation of", describe(latents))
    std = float(latents.detach().double().std())
    if not std > 0:
        raise fail("latents", "values that are not all equal (std > 0)", f"std = {std}")
    return 1.0 / std


@register("vae")
class VAE(nn.Module):
    """x (N, 3, S, S) in [−1, 1] ↔ z (N, latent_channels, S/f, S/f), f = 2^len(channels).

    Encoder: conv 3×3 → c_0; per level i a ResidualBlock(c_{i−1}, c_i) and a RearrangePool (×½);
    a ResidualBlock; GroupNorm → GELU → conv 3×3 → (μ, log σ²), 2·latent_channels.
    Decoder, the mirror: conv 3×3 → c_{L−1}; a ResidualBlock; per level nearest ×2 → conv 3×3 → ResidualBlock;
    GroupNorm → GELU → conv 3×3 → 3 channels (not squashed: clamp to [−1, 1] for display).
    Defaults: 32×32×3 → 8×8×4.
    """

    def __init__(self, image_channels: int = 3, latent_channels: int = 4, channels=(32, 64), image_size: int = 32):
        super().__init__()
        self.image_channels = check_positive_int(image_channels, "image_channels")
        self.latent_channels = check_positive_int(latent_channels, "latent_channels")
        self.channels = c = _check_channels(channels)
        self.image_size = check_positive_int(image_size, "image_size")
        self.factor = 2 ** len(c)
        if image_size % self.factor:
            raise fail("image_size", f"a multiple of 2**len(channels) = {self.factor}", describe(image_size))
        self.encoder = nn.Sequential(
            nn.Conv2d(image_channels, c[0], 3, padding=1),
            *(layer for i in range(len(c))
              for layer in (ResidualBlock(c[max(i - 1, 0)], c[i]), RearrangePool(c[i], c[i]))),
            ResidualBlock(c[-1], c[-1]),
            make_norm("group", c[-1]), make_activation("gelu"), nn.Conv2d(c[-1], 2 * latent_channels, 3, padding=1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, c[-1], 3, padding=1),
            ResidualBlock(c[-1], c[-1]),
            *(layer for i in reversed(range(len(c))) for layer in (
                nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c[i], c[max(i - 1, 0)], 3, padding=1),
                ResidualBlock(c[max(i - 1, 0)], c[max(i - 1, 0)]))),
            make_norm("group", c[0]), make_activation("gelu"), nn.Conv2d(c[0], image_channels, 3, padding=1),
        )

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(latent_channels, S/f, S/f)."""
        size = self.image_size // self.factor
        return self.latent_channels, size, size

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of q(z | x), each (N, latent_channels, S/f, S/f); log σ² clamped to ``LOGVAR_RANGE``."""
        owner = f"VAE(image_size={self.image_size}): x"
        check_images(x, owner, self.image_channels)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise fail(owner, f"images of {self.image_size}×{self.image_size}", describe(x))
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x̂ (N, image_channels, S, S) from latents z (N, latent_channels, S/f, S/f) (unscaled: z = latents / s)."""
        owner = f"VAE(latent_channels={self.latent_channels}): z"
        check_images(z, owner, self.latent_channels)
        if tuple(z.shape[1:]) != self.latent_shape:
            raise fail(owner, f"latents of shape (N, {', '.join(map(str, self.latent_shape))})", describe(z))
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """(x̂, μ, log σ²): x̂ decodes z = reparameterise(μ, log σ², generator)."""
        mu, logvar = self.encode(x)
        return self.decode(reparameterise(mu, logvar, generator)), mu, logvar


def vae_loss(model: VAE, x: torch.Tensor, beta: float = 1e-4, generator: torch.Generator | None = None) -> torch.Tensor:
    """‖x − x̂‖² averaged over pixels + β · KL (:func:`kl_divergence`: summed over latent values, batch mean).

    With the mean over pixels, β weighs one image's whole KL against one pixel's squared error; the default
    1e-4 is a starting point for the lesson's measurement, not a tuned value."""
    beta = check_real(beta, "beta", low=0)
    x_hat, mu, logvar = model(x, generator)
    return F.mse_loss(x_hat, x) + beta * kl_divergence(mu, logvar)

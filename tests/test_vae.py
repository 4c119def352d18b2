"""dlcourse.models.vae: the reparameterisation, the KL term and the latent scale against closed forms; the VAE's
shapes and round trip; a short training run on flower images whose reconstruction error falls."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlcourse.data import load_flowers
from dlcourse.models import (
    LOGVAR_RANGE,
    VAE,
    TextUNet,
    kl_divergence,
    latent_scale,
    load_model,
    reparameterise,
    save_model,
    vae_loss,
)
from dlcourse.sampling import ddim_sample
from dlcourse.schedules import Schedule, cosine_betas
from dlcourse.training import train


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


# ---- KL(N(μ, σ²) ‖ N(0, 1)) ------------------------------------------------------------------

def test_kl_of_the_standard_normal_is_zero():
    assert kl_divergence(torch.zeros(4, 3, 2, 2), torch.zeros(4, 3, 2, 2)).item() == 0.0


def test_kl_of_known_mean_and_sigma():
    """½(μ² + σ² − log σ² − 1) per value, summed over the 6 values of an image, averaged over the images."""
    mu = torch.tensor([1.0, 0.0]).repeat_interleave(6).reshape(2, 6)
    sigma = torch.tensor([2.0, 0.5]).repeat_interleave(6).reshape(2, 6)
    per_value = [0.5 * (1 + 4 - math.log(4) - 1), 0.5 * (0 + 0.25 - math.log(0.25) - 1)]
    expected = (6 * per_value[0] + 6 * per_value[1]) / 2
    torch.testing.assert_close(kl_divergence(mu, torch.log(sigma**2)), torch.tensor(expected))
    assert kl_divergence(mu, torch.log(sigma**2)).shape == ()


def test_kl_matches_torch_distributions_and_is_non_negative():
    mu, logvar = torch.randn(5, 4, 2, 2), torch.randn(5, 4, 2, 2)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1).mean()
    torch.testing.assert_close(kl_divergence(mu, logvar), expected)
    assert kl_divergence(mu, logvar) > 0


def test_kl_errors():
    with pytest.raises(ValueError, match=r"logvar: expected the shape of mu \(2, 3\)"):
        kl_divergence(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"mu: expected a batch \(N, \.\.\.\) of latent means"):
        kl_divergence(torch.zeros(3), torch.zeros(3))


# ---- z = μ + σ ε --------------------------------------------------------------------------------

def test_reparameterise_mean_and_variance_over_many_draws():
    n = 200_000
    mu = torch.tensor([0.5, -1.0, 3.0]).expand(n, 3)
    sigma = torch.tensor([0.3, 2.0, 1.0])
    z = reparameterise(mu, torch.log(sigma**2).expand(n, 3), torch.Generator().manual_seed(1))
    # 5 standard errors: σ/√n for the mean, σ²·√(2/n) for the variance
    assert ((z.mean(0) - mu[0]).abs() < 5 * sigma / math.sqrt(n)).all()
    assert ((z.var(0) - sigma**2).abs() < 5 * sigma**2 * math.sqrt(2 / n)).all()


def test_reparameterise_honours_the_generator_and_leaves_the_global_rng_alone():
    mu, logvar = torch.randn(3, 4), torch.randn(3, 4)
    state = torch.get_rng_state()
    a = reparameterise(mu, logvar, torch.Generator().manual_seed(5))
    b = reparameterise(mu, logvar, torch.Generator().manual_seed(5))
    c = reparameterise(mu, logvar, torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    eps = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, mu + torch.exp(0.5 * logvar) * eps)


def test_reparameterise_gradients_are_the_closed_form():
    """∂z/∂μ = 1 and ∂z/∂log σ² = ½ σ ε: the sample is differentiable in both."""
    mu, logvar = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    z = reparameterise(mu, logvar, torch.Generator().manual_seed(2))
    z.sum().backward()
    eps = torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(mu.grad, torch.ones(2, 3))
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)


# ---- the latent scale ---------------------------------------------------------------------------

def test_latent_scale_makes_latents_unit_variance():
    latents = 3 * torch.randn(64, 4, 8, 8) + 1
    s = latent_scale(latents)
    assert isinstance(s, float) and abs(s - 1 / 3) < 0.01
    torch.testing.assert_close((s * latents).std(), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"latents: expected values that are not all equal \(std > 0\)"):
        latent_scale(torch.ones(2, 4))


# ---- the model --------------------------------------------------------------------------------

@pytest.mark.parametrize("channels, latent_size", [((16, 32), 8), ((16,), 16), ((8, 16, 16), 4)])
def test_vae_shapes(channels, latent_size):
    vae = VAE(latent_channels=3, channels=channels)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (2, 3, latent_size, latent_size) == (2, *vae.latent_shape)
    assert vae.factor == 32 // latent_size and vae.decode(mu).shape == x.shape
    x_hat, mu2, logvar2 = vae(x)
    assert x_hat.shape == x.shape and torch.equal(mu2, mu) and torch.equal(logvar2, logvar)


def test_encode_clamps_logvar():
    vae = VAE(channels=(8, 16))
    with torch.no_grad():
        vae.encoder[-1].bias[vae.latent_channels:] = 1e3
    _, logvar = vae.encode(torch.zeros(1, 3, 32, 32))
    assert torch.equal(logvar, torch.full_like(logvar, LOGVAR_RANGE[1]))


def test_vae_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"image_size: expected a multiple of 2\*\*len\(channels\) = 4"):
        VAE(image_size=30)
    vae = VAE(channels=(8, 16))
    with pytest.raises(ValueError, match=r"VAE\(image_size=32\): x: expected images of 32×32"):
        vae.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"z: expected latents of shape \(N, 4, 8, 8\)"):
        vae.decode(torch.zeros(1, 4, 4, 4))


def test_vae_round_trips_and_its_forward_follows_the_generator(tmp_path):
    vae = VAE(channels=(8, 16)).eval()
    loaded = load_model(save_model(vae, tmp_path / "vae"))
    assert loaded.config == {"name": "vae", "image_channels": 3, "latent_channels": 4, "channels": [8, 16],
                             "image_size": 32}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    a = loaded(x, torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, vae(x, torch.Generator().manual_seed(3))[0])
    assert not torch.allclose(a, vae(x, torch.Generator().manual_seed(4))[0])


def test_vae_loss_is_reconstruction_plus_beta_kl():
    vae = VAE(channels=(8, 16))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loss = vae_loss(vae, x, beta=0.01, generator=torch.Generator().manual_seed(0))
    x_hat, mu, logvar = vae(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, F.mse_loss(x_hat, x) + 0.01 * kl_divergence(mu, logvar))


def test_a_short_training_run_learns_to_reconstruct_flowers():
    """About 10 s on one CPU core: 100 updates on 32 flower images (32×32 → 8×8×4)."""
    x = load_flowers("train", image_size=32, n=32, progress=False).images
    vae = VAE(channels=(16, 32))

    def reconstruction_error(model):
        model.eval()
        with torch.no_grad():
            return float(F.mse_loss(model.decode(model.encode(x)[0]), x))

    before = reconstruction_error(vae)
    mean_image = float(F.mse_loss(x.mean(0, keepdim=True).expand_as(x), x))  # the best constant guess
    history = train(vae, vae_loss, x, steps=100, batch_size=16, lr=2e-3, device="cpu", progress=False)
    after = reconstruction_error(vae)
    assert after < before / 4 and after < mean_image / 2, (before, mean_image, after)
    assert history.losses[-1] < history.losses[0]


def test_latents_go_through_the_pixel_sampler_and_decode():
    """The samplers take any (N, …) shape: DDIM on 8×8×4 latents with a text U-Net, then z = latents / s decoded.
    x0_mode="none": unit-variance latents are not confined to [−1, 1] as pixels are."""
    vae = VAE(channels=(8, 16)).eval()
    model = TextUNet(channels=(8, 16), image_size=8, T=20, context_dim=6, heads=2).eval()
    schedule = Schedule(cosine_betas(20))
    context, mask = torch.randn(2, 3, 6), torch.tensor([[True, True, False], [True, False, False]])

    def sample(seed):
        return ddim_sample(lambda z, t: model(z, t, context, token_mask=mask), schedule, (2, *vae.latent_shape),
                           steps=4, generator=torch.Generator().manual_seed(seed), progress=False, x0_mode="none")

    latents = sample(0)
    assert latents.shape == (2, 4, 8, 8) and torch.equal(sample(0), latents) and not torch.equal(sample(1), latents)
    with torch.no_grad():
        images = vae.decode(latents / latent_scale(vae.encode(torch.rand(8, 3, 32, 32) * 2 - 1)[0]))
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()

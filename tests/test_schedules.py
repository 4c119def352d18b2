"""dlcourse.schedules against closed-form maths (Monte Carlo where the claim is about a distribution)."""
import math

import pytest
import torch

from dlcourse.schedules import Schedule, cosine_betas, gather, linear_betas, scaled_linear_betas

T = 100


@pytest.fixture
def sched() -> Schedule:
    return Schedule(scaled_linear_betas(T), dtype=torch.float64)


def full(t: int, n: int) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.long)


# --- betas ---------------------------------------------------------------------------------------

def test_linear_betas_endpoints_and_dtype():
    b = linear_betas(1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    assert torch.all(b[1:] > b[:-1])


def test_scaled_linear_fixes_short_chains():
    """docs/design.md: with T = 150 linear betas leave ᾱ_{T−1} ≈ 0.22; scaled by 1000/T they reach noise."""
    plain = Schedule(linear_betas(150), dtype=torch.float64).alpha_bars[-1].item()
    scaled = Schedule(scaled_linear_betas(150), dtype=torch.float64).alpha_bars[-1].item()
    assert plain == pytest.approx(0.22, abs=0.01)
    assert scaled < 0.01
    assert Schedule(linear_betas(400), dtype=torch.float64).alpha_bars[-1].item() == pytest.approx(0.017, abs=0.002)
    b = scaled_linear_betas(150)
    assert b[0].item() == pytest.approx(1e-4 * 1000 / 150) and b[-1].item() == pytest.approx(0.02 * 1000 / 150)
    assert torch.equal(scaled_linear_betas(1000), linear_betas(1000))
    assert scaled_linear_betas(10).max().item() < 1  # 0.02·100 = 2 is capped


def test_cosine_alpha_bars_follow_the_formula():
    T_, s = 200, 0.008
    f = lambda u: math.cos((u / T_ + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    ab = Schedule(cosine_betas(T_, s=s), dtype=torch.float64).alpha_bars
    for t in (0, 1, 50, 100, 150, 190):
        assert ab[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert cosine_betas(T_).max().item() == pytest.approx(0.999)  # the last beta hits the cap


@pytest.mark.parametrize("fn", [linear_betas, scaled_linear_betas, cosine_betas])
def test_betas_reject_bad_T(fn):
    with pytest.raises(ValueError, match="T: expected a positive int"):
        fn(0)


# --- Schedule construction ----------------------------------------------------------------------

def test_derived_tensors(sched):
    b = scaled_linear_betas(T)
    ab = torch.cumprod(1 - b, 0)
    assert torch.allclose(sched.alphas, 1 - b)
    assert torch.allclose(sched.alpha_bars, ab)
    assert sched.alpha_bars_prev[0].item() == 1.0 and torch.allclose(sched.alpha_bars_prev[1:], ab[:-1])
    assert torch.allclose(sched.beta_tildes[1:], (1 - ab[:-1]) / (1 - ab[1:]) * b[1:])
    assert sched.beta_tildes[0].item() == 0.0
    assert torch.allclose(sched.snr, ab / (1 - ab))
    assert sched.T == T
    assert Schedule(b).betas.dtype == torch.float32
    assert f"T={T}" in repr(sched) and "alpha_bar_T-1" in repr(sched)


def test_to_returns_a_new_schedule(sched):
    moved = sched.to("cpu")
    assert moved is not sched and moved.T == sched.T and torch.equal(moved.alpha_bars, sched.alpha_bars)


@pytest.mark.parametrize("betas, match", [
    (torch.zeros(3, 2) + 0.1, "non-empty 1-D"),
    (torch.tensor([]), "non-empty 1-D"),
    (torch.tensor([0.1, 0.0]), r"open interval \(0, 1\)"),
    (torch.tensor([0.1, 1.0]), r"open interval \(0, 1\)"),
    (torch.tensor([0.1, float("nan")]), r"open interval \(0, 1\)"),
])
def test_schedule_rejects_bad_betas(betas, match):
    with pytest.raises(ValueError, match="betas: expected .*" + match):
        Schedule(betas)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_schedule_is_refused(dtype):
    with pytest.raises(ValueError, match="dtype: expected torch.float32 or torch.float64"):
        Schedule(linear_betas(1000), dtype=dtype)


def test_a_float32_schedule_steps_half_precision_images_to_finite_values():
    schedule = Schedule(linear_betas(1000))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float16)
    t = torch.tensor([999, 0])
    out = schedule.ddpm_step(x, t, torch.randn_like(x), z=torch.randn_like(x))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_input_validation(sched):
    x = torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match="t: expected an integer tensor of timesteps"):
        sched.q_sample(x, torch.full((4,), 3.0), x)
    with pytest.raises(ValueError, match=r"t: expected timesteps in \[0, 99\] \(0-based.*values in \[-1, 100\]"):
        sched.q_sample(x, torch.tensor([-1, 0, 5, 100]), x)
    with pytest.raises(ValueError, match=r"t: expected a 1-D tensor of 4 timesteps"):
        sched.q_sample(x, full(1, 3), x)
    with pytest.raises(ValueError, match="x0: expected a floating-point"):
        sched.q_sample(x.long(), full(1, 4), x)
    with pytest.raises(ValueError, match="noise: expected the shape of x0"):
        sched.q_sample(x, full(1, 4), x[:, :1])
    with pytest.raises(ValueError, match=r"variance: expected 'beta' \(σ² = β_t\) or 'beta_tilde'"):
        sched.ddpm_step(x, full(1, 4), x, variance="fixed")
    for eta in (-0.1, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="eta: expected a finite real number >= 0"):
            sched.ddim_step(x, full(5, 4), 2, x, eta=eta)
    with pytest.raises(ValueError, match="t_prev: expected values in"):
        sched.ddim_step(x, full(5, 4), 5, x)
    with pytest.raises(ValueError, match="t_prev: expected values in"):
        sched.ddim_step(x, full(5, 4), -2, x)


# --- forward process ----------------------------------------------------------------------------

def test_q_sample_matches_q_xt_given_x0_in_distribution(sched):
    n, t, x0 = 200_000, 30, 0.7
    gen = torch.Generator().manual_seed(0)
    xt = sched.q_sample(torch.full((n,), x0, dtype=torch.float64), full(t, n),
                        torch.randn(n, generator=gen, dtype=torch.float64))
    ab = sched.alpha_bars[t].item()
    se = math.sqrt((1 - ab) / n)
    assert abs(xt.mean().item() - math.sqrt(ab) * x0) < 5 * se
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.02)


def test_q_step_chain_matches_closed_form(sched):
    n, t, x0 = 100_000, 12, -0.5
    gen = torch.Generator().manual_seed(1)
    x = torch.full((n,), x0, dtype=torch.float64)
    for s in range(t + 1):  # t + 1 forward steps from x_0 reach x_t (0-based t)
        x = sched.q_step(x, full(s, n), torch.randn(n, generator=gen, dtype=torch.float64))
    ab = sched.alpha_bars[t].item()
    assert abs(x.mean().item() - math.sqrt(ab) * x0) < 5 * math.sqrt((1 - ab) / n)
    assert x.var().item() == pytest.approx(1 - ab, rel=0.02)


def test_q_sample_follows_dtype_device_and_rank(sched):
    for shape in [(3,), (3, 5), (3, 1, 4, 4), (3, 2, 2, 2, 2)]:
        x0, eps = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
        t = torch.tensor([0, 50, 99])
        out = sched.q_sample(x0, t, eps)
        ab = sched.alpha_bars[t].reshape(-1, *([1] * (len(shape) - 1)))
        assert torch.allclose(out, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    f32 = Schedule(scaled_linear_betas(T))
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = torch.randn(2, 3, 4, 4).to(dtype)
        assert f32.q_sample(x, torch.tensor([1, 2]), x).dtype == dtype
        assert f32.ddpm_step(x, torch.tensor([1, 2]), x, z=x).dtype == dtype
        assert f32.ddim_step(x, torch.tensor([5, 9]), 2, x).dtype == dtype


# --- posterior and reverse steps ----------------------------------------------------------------

def test_posterior_agrees_with_bayes_rule_on_a_grid(sched):
    """q(x_{t−1}|x_t, x_0) ∝ q(x_t|x_{t−1}) q(x_{t−1}|x_0), integrated numerically on a 1-D grid."""
    x0, xt = 0.4, -0.3
    grid = torch.linspace(-6, 6, 200_001, dtype=torch.float64)
    for t in (1, 10, 60, 99):
        alpha, beta = sched.alphas[t].item(), sched.betas[t].item()
        ab_prev = sched.alpha_bars[t - 1].item()
        log_p = (-(xt - math.sqrt(alpha) * grid) ** 2 / (2 * beta)
                 - (grid - math.sqrt(ab_prev) * x0) ** 2 / (2 * (1 - ab_prev)))
        p = torch.exp(log_p - log_p.max())
        p = p / p.sum()
        mean_bayes = (p * grid).sum().item()
        var_bayes = (p * (grid - mean_bayes) ** 2).sum().item()
        mean, var = sched.posterior_mean_variance(torch.tensor([x0], dtype=torch.float64),
                                                  torch.tensor([xt], dtype=torch.float64), full(t, 1))
        assert mean.item() == pytest.approx(mean_bayes, abs=1e-6)
        assert var.item() == pytest.approx(var_bayes, rel=1e-4)


def test_posterior_shapes(sched):
    x0, xt = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    mean, var = sched.posterior_mean_variance(x0, xt, torch.tensor([0, 1, 2]))
    assert mean.shape == xt.shape and var.shape == (3, 1, 1, 1)
    assert torch.allclose(mean[0], x0[0])  # at t = 0 the posterior is x_0 exactly (ᾱ_{−1} = 1)


def test_ddpm_step_mean_and_variance(sched):
    n, t = 200_000, 40
    gen = torch.Generator().manual_seed(2)
    xt, eps = torch.full((n,), 0.3, dtype=torch.float64), torch.full((n,), -1.2, dtype=torch.float64)
    alpha, beta, ab = sched.alphas[t].item(), sched.betas[t].item(), sched.alpha_bars[t].item()
    mean = (0.3 - beta / math.sqrt(1 - ab) * -1.2) / math.sqrt(alpha)
    no_noise = sched.ddpm_step(xt[:3], full(t, 3), eps[:3], z=torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(no_noise, torch.full((3,), mean, dtype=torch.float64))
    for variance, expected in (("beta", beta), ("beta_tilde", sched.beta_tildes[t].item())):
        z = torch.randn(n, generator=gen, dtype=torch.float64)
        out = sched.ddpm_step(xt, full(t, n), eps, z=z, variance=variance)
        assert abs(out.mean().item() - mean) < 5 * math.sqrt(expected / n)
        assert out.var().item() == pytest.approx(expected, rel=0.02)


def test_ddpm_step_adds_no_noise_at_t0(sched):
    x, eps, z = (torch.randn(2, 3, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 5])
    out = sched.ddpm_step(x, t, eps, z=z)
    clean = sched.ddpm_step(x, t, eps, z=torch.zeros_like(z))
    assert torch.allclose(out[0], clean[0])
    assert not torch.allclose(out[1], clean[1])
    assert torch.allclose(out[1] - clean[1], sched.betas[5].sqrt() * z[1])


def test_ddpm_mean_with_true_noise_is_the_posterior_mean(sched):
    x0, eps = torch.randn(4, 1, 3, 3, dtype=torch.float64), torch.randn(4, 1, 3, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 50, 99])
    xt = sched.q_sample(x0, t, eps)
    mean, var = sched.posterior_mean_variance(x0, xt, t)
    z = torch.randn_like(x0)
    out = sched.ddpm_step(xt, t, eps, z=z, variance="beta_tilde")
    assert torch.allclose(out, mean + var.sqrt() * z)


def test_ddim_eta0_is_deterministic_and_recovers_x0(sched):
    x0, eps = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([99, 40, 3])
    xt = sched.q_sample(x0, t, eps)
    a, b = sched.ddim_step(xt, t, -1, eps), sched.ddim_step(xt, t, -1, eps)
    assert torch.equal(a, b)
    assert torch.allclose(a, x0, atol=1e-8)
    # with the true ε, a DDIM jump lands exactly on q_sample at t_prev (same ε)
    t_prev = torch.tensor([50, 10, 0])
    assert torch.allclose(sched.ddim_step(xt, t, t_prev, eps), sched.q_sample(x0, t_prev, eps), atol=1e-10)


def test_ddim_eta1_full_grid_has_beta_tilde_variance(sched):
    """η = 1 with t_prev = t − 1: σ² = β̃_t, and the mean is the DDPM posterior mean."""
    x0, eps = torch.randn(5, 1, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    for t in (1, 20, 99):
        tt = full(t, 5)
        xt = sched.q_sample(x0, tt, eps)
        mean = sched.ddim_step(xt, tt, t - 1, eps, eta=1.0, z=torch.zeros_like(xt))
        unit = sched.ddim_step(xt, tt, t - 1, eps, eta=1.0, z=torch.ones_like(xt)) - mean
        assert torch.allclose(unit ** 2, sched.beta_tildes[t].expand(5, 1))
        post_mean, _ = sched.posterior_mean_variance(x0, xt, tt)
        assert torch.allclose(mean, post_mean)


def test_ddim_t_prev_per_sample_tensor(sched):
    x, eps = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    t = torch.tensor([10, 20])
    both = sched.ddim_step(x, t, torch.tensor([4, -1]), eps)
    assert torch.allclose(both[:1], sched.ddim_step(x[:1], t[:1], 4, eps[:1]))
    assert torch.allclose(both[1:], sched.ddim_step(x[1:], t[1:], -1, eps[1:]))


def test_conversions_round_trip(sched):
    x0, eps = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 10, 60, 99])
    xt = sched.q_sample(x0, t, eps)
    assert torch.allclose(sched.predict_x0(xt, t, eps), x0, atol=1e-8)
    assert torch.allclose(sched.predict_eps(xt, t, x0), eps, atol=1e-8)
    v = sched.v_target(x0, eps, t)
    ab = gather(sched.alpha_bars, t, x0)
    assert torch.allclose(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0)
    assert torch.allclose(sched.eps_from_v(xt, t, v), eps, atol=1e-10)
    assert torch.allclose(sched.x0_from_v(xt, t, v), x0, atol=1e-10)


# --- what the samplers do with x̂_0 ---------------------------------------------------------------
def test_dynamic_threshold_matches_imagen_formula():
    from dlcourse.schedules import dynamic_threshold

    x0 = torch.tensor([[0.2, -0.5, 0.9, 0.1],      # inside [−1, 1]: s = 1, unchanged
                       [3.0, -1.5, 0.5, 0.25]])    # saturated: s = quantile(|x|) > 1
    out = dynamic_threshold(x0, percentile=0.75)
    assert torch.equal(out[0], x0[0])
    s = torch.quantile(x0[1].abs(), 0.75)  # 1.875 by linear interpolation
    assert s == pytest.approx(1.875)
    assert torch.allclose(out[1], x0[1].clamp(-s, s) / s)
    assert out.abs().max() <= 1


def test_adjust_x0_modes_and_errors():
    from dlcourse.schedules import adjust_x0

    x0 = torch.tensor([[2.0, -3.0, 0.5]])
    assert torch.equal(adjust_x0(x0), x0)
    assert torch.equal(adjust_x0(x0, "clip"), torch.tensor([[1.0, -1.0, 0.5]]))
    with pytest.raises(ValueError, match="x0_mode: expected 'none'"):
        adjust_x0(x0, "clamp")
    with pytest.raises(ValueError, match=r"percentile: expected a finite real number in \[0.5, 1.0\] \(a quantile"):
        adjust_x0(x0, "dynamic", percentile=99.5)


@pytest.mark.parametrize("x0_mode", ["clip", "dynamic"])
def test_ddpm_step_with_adjusted_x0_is_the_posterior_mean_of_that_x0(sched, x0_mode):
    """μ̃(adjust(x̂_0), x_t) plus σ_t z: the ε used for the step is recomputed from the adjusted x̂_0."""
    from dlcourse.schedules import adjust_x0

    g = torch.Generator().manual_seed(3)
    n, t = 4, 7
    xt = 3 * torch.randn(n, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 3, 2, 2, generator=g, dtype=torch.float64)
    z = torch.randn(n, 3, 2, 2, generator=g, dtype=torch.float64)
    tt = full(t, n)
    x0_hat = adjust_x0(sched.predict_x0(xt, tt, eps), x0_mode)
    assert not torch.allclose(x0_hat, sched.predict_x0(xt, tt, eps))  # the adjustment did something
    mean, var = sched.posterior_mean_variance(x0_hat, xt, tt)
    out = sched.ddpm_step(xt, tt, eps, z=z, variance="beta_tilde", x0_mode=x0_mode)
    assert torch.allclose(out, mean + var.sqrt() * z, atol=1e-10)
    assert torch.equal(sched.ddpm_step(xt, tt, eps, z=z), sched.ddpm_step(xt, tt, eps, z=z, x0_mode="none"))


def test_ddim_step_with_clipping_lands_inside_the_data_range_at_the_end(sched):
    g = torch.Generator().manual_seed(4)
    xt = 4 * torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64)
    tt = full(9, 5)
    plain = sched.ddim_step(xt, tt, -1, eps)
    clipped = sched.ddim_step(xt, tt, -1, eps, x0_mode="clip")
    assert plain.abs().max() > 1 and torch.equal(clipped, plain.clamp(-1, 1))
    # a step to t_prev ≥ 0 with the recomputed ε: x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev) ε'
    x0_hat = sched.predict_x0(xt, tt, eps).clamp(-1, 1)
    eps_new = sched.predict_eps(xt, tt, x0_hat)
    assert torch.allclose(sched.ddim_step(xt, tt, 3, eps, x0_mode="clip"), sched.q_sample(x0_hat, full(3, 5), eps_new),
                          atol=1e-10)

"""dlcourse.sampling with exact denoisers: a point mass and a Gaussian data distribution.

For data N(μ, s²) the optimal denoiser is ε*(x_t, t) = √(1−ᾱ_t)(x_t − √ᾱ_t μ)/(ᾱ_t s² + 1 − ᾱ_t),
and every sampler step is then affine in x_t plus Gaussian noise, so the exact law of the
*discretised* sampler's output is a Gaussian we can compute step by step in plain Python.
"""
import math

import pytest
import torch

from dlcourse.sampling import ddim_sample, ddim_timesteps, ddpm_sample
from dlcourse.schedules import Schedule, linear_betas, scaled_linear_betas

MU, S = 0.3, 0.5


def point_oracle(schedule: Schedule, x_star: torch.Tensor):
    """ε for data = a single point x*: ε(x_t, t) = (x_t − √ᾱ_t x*)/√(1 − ᾱ_t)."""
    def eps_fn(x, t):
        ab = schedule.alpha_bars[t].reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return (x - ab.sqrt() * x_star) / (1 - ab).sqrt()
    return eps_fn


def gaussian_oracle(schedule: Schedule):
    def eps_fn(x, t):
        ab = schedule.alpha_bars[t].reshape(-1, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * MU) / (ab * S ** 2 + 1 - ab)
    return eps_fn


def exact_output_law(schedule: Schedule, steps: list[tuple[int, int]], kind: str, variance: str = "beta"):
    """Mean and variance of the sampler's output for Gaussian data, propagating x ↦ a·x + b (+ σz)."""
    ab_all = [1.0] + schedule.alpha_bars.tolist()  # ab_all[t + 1] = ᾱ_t, ab_all[0] = ᾱ_{−1} = 1
    mean, var = 0.0, 1.0
    for t, t_prev in steps:
        ab, ab_prev = ab_all[t + 1], ab_all[t_prev + 1]
        c = math.sqrt(1 - ab) / (ab * S ** 2 + 1 - ab)  # ε* = c·(x − √ᾱ μ)
        if kind == "ddpm":
            beta = schedule.betas[t].item()
            k = beta / math.sqrt(1 - ab)
            a, b = (1 - k * c) / math.sqrt(1 - beta), k * c * math.sqrt(ab) * MU / math.sqrt(1 - beta)
            noise_var = 0.0 if t == 0 else (beta if variance == "beta" else schedule.beta_tildes[t].item())
        else:  # DDIM, η = 0: x' = √ᾱ' (x − √(1−ᾱ) ε)/√ᾱ + √(1−ᾱ') ε
            d = math.sqrt(1 - ab_prev) - math.sqrt(ab_prev) * math.sqrt(1 - ab) / math.sqrt(ab)
            a, b = math.sqrt(ab_prev / ab) + d * c, -d * c * math.sqrt(ab) * MU
            noise_var = 0.0
        mean, var = a * mean + b, a * a * var + noise_var
    return mean, var


def test_ddim_timesteps_trailing():
    ts = ddim_timesteps(1000, 10)
    assert ts == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    for T, steps in [(100, 7), (1000, 50), (37, 37), (5, 1), (1000, 3)]:
        ts = ddim_timesteps(T, steps)
        assert len(ts) == steps and ts[0] == T - 1 and all(isinstance(t, int) for t in ts)
        assert all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] >= 0
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))


@pytest.mark.parametrize("steps", [0, 101, 2.5, True])
def test_ddim_timesteps_rejects_bad_steps(steps):
    with pytest.raises(ValueError, match=r"steps: expected an int in \[1, T = 100\]"):
        ddim_timesteps(100, steps)


def test_samplers_recover_a_point_mass():
    schedule = Schedule(scaled_linear_betas(100), dtype=torch.float64)
    x_star = torch.tensor([[0.5, -0.25], [1.0, 0.0]], dtype=torch.float64).reshape(1, 2, 2, 1)
    eps_fn = point_oracle(schedule, x_star)
    shape = (6, 2, 2, 1)
    gen = torch.Generator().manual_seed(0)
    for variance in ("beta", "beta_tilde"):
        out = ddpm_sample(eps_fn, schedule, shape, generator=gen, variance=variance, progress=False)
        assert torch.allclose(out, x_star.expand(shape), atol=1e-8)
    for steps in (1, 7, 50, 100):
        for eta in (0.0, 1.0):
            out = ddim_sample(eps_fn, schedule, shape, steps=steps, eta=eta, generator=gen, progress=False)
            assert torch.allclose(out, x_star.expand(shape), atol=1e-8), (steps, eta)


def test_ddpm_beta_tilde_samples_the_gaussian():
    schedule = Schedule(linear_betas(1000), dtype=torch.float64)
    n = 20_000
    x = ddpm_sample(gaussian_oracle(schedule), schedule, (n, 1), variance="beta_tilde",
                    generator=torch.Generator().manual_seed(1), progress=False, x0_mode="none")
    mean, var = exact_output_law(schedule, [(t, t - 1) for t in range(999, -1, -1)], "ddpm", "beta_tilde")
    assert abs(math.sqrt(var) - S) < 0.01 * S  # 1000 small steps: the sampler's law is N(μ, s²) to 1 %
    assert abs(mean - MU) < 1e-3
    assert abs(x.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert x.var().item() == pytest.approx(var, rel=5 * math.sqrt(2 / n))


def test_ddim_50_steps_samples_the_gaussian():
    """η = 0 with 50 trailing steps: exact law matched to MC error; its std is ~6 % below s
    (the known under-dispersion of few-step deterministic sampling), the mean is exact."""
    schedule = Schedule(linear_betas(1000), dtype=torch.float64)
    n = 20_000
    x = ddim_sample(gaussian_oracle(schedule), schedule, (n, 1), steps=50,
                    generator=torch.Generator().manual_seed(2), progress=False, x0_mode="none")
    ts = ddim_timesteps(1000, 50)
    mean, var = exact_output_law(schedule, list(zip(ts, ts[1:] + [-1])), "ddim")
    assert abs(mean - MU) < 1e-3 and 0.9 * S < math.sqrt(var) < S
    assert abs(x.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert x.var().item() == pytest.approx(var, rel=5 * math.sqrt(2 / n))
    assert abs(x.std().item() - S) < 0.07 * S


def test_reproducible_with_a_generator_and_shared_x_T():
    schedule = Schedule(scaled_linear_betas(50))
    eps_fn = gaussian_oracle(schedule)
    for sampler, kwargs in ((ddpm_sample, {}), (ddim_sample, {"steps": 10, "eta": 0.5})):
        a = sampler(eps_fn, schedule, (4, 1), generator=torch.Generator().manual_seed(3), progress=False, **kwargs)
        b = sampler(eps_fn, schedule, (4, 1), generator=torch.Generator().manual_seed(3), progress=False, **kwargs)
        c = sampler(eps_fn, schedule, (4, 1), generator=torch.Generator().manual_seed(4), progress=False, **kwargs)
        assert torch.equal(a, b) and not torch.allclose(a, c)
    x_T = torch.randn(4, 1)
    d1 = ddim_sample(eps_fn, schedule, (4, 1), steps=10, x_T=x_T, progress=False)
    d2 = ddim_sample(eps_fn, schedule, (4, 1), steps=10, x_T=x_T.clone(), progress=False)
    assert torch.equal(d1, d2)  # η = 0: the output is a function of x_T


def test_trajectory_keys_and_values():
    schedule = Schedule(scaled_linear_betas(20))
    eps_fn = gaussian_oracle(schedule)
    x_T = torch.randn(3, 1)
    out, traj = ddpm_sample(eps_fn, schedule, (3, 1), x_T=x_T, trajectory_at=[19, 10, 0, -1], progress=False)
    assert set(traj) == {19, 10, 0, -1}
    assert torch.equal(traj[19], x_T) and torch.equal(traj[-1], out)
    out, traj = ddim_sample(eps_fn, schedule, (3, 1), steps=5, trajectory_at="all", progress=False)
    assert set(traj) == {19, 15, 11, 7, 3, -1} and torch.equal(traj[-1], out)
    with pytest.raises(ValueError, match="trajectory_at: expected steps the sampler visits"):
        ddim_sample(eps_fn, schedule, (3, 1), steps=5, trajectory_at=[18], progress=False)


def test_eps_fn_gets_long_times_and_is_called_once_per_step():
    schedule = Schedule(scaled_linear_betas(30))
    seen = []

    def eps_fn(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    ddim_sample(eps_fn, schedule, (2, 3, 4, 4), steps=6, progress=False)
    assert [int(t[0]) for t in seen] == ddim_timesteps(30, 6)
    assert all(t.dtype == torch.long and t.shape == (2,) for t in seen)
    seen.clear()
    ddpm_sample(eps_fn, schedule, (2, 3, 4, 4), progress=False)
    assert [int(t[0]) for t in seen] == list(range(29, -1, -1))


def test_sampler_errors():
    schedule = Schedule(scaled_linear_betas(10))
    eps_fn = gaussian_oracle(schedule)
    with pytest.raises(ValueError, match="shape: expected a tuple of positive ints"):
        ddpm_sample(eps_fn, schedule, (0, 1), progress=False)
    with pytest.raises(ValueError, match=r"x_T: expected a float tensor of shape \(2, 1\)"):
        ddpm_sample(eps_fn, schedule, (2, 1), x_T=torch.zeros(3, 1), progress=False)
    with pytest.raises(ValueError, match=r"steps: expected an int in \[1, T = 10\]"):
        ddim_sample(eps_fn, schedule, (2, 1), steps=11, progress=False)
    with pytest.raises(ValueError, match="schedule: expected a dlcourse.schedules.Schedule"):
        ddim_sample(eps_fn, "linear", (2, 1), progress=False)
    with pytest.raises(ValueError, match=r"eps_fn\(x_t, t\): expected a tensor of the shape of x_t"):
        ddpm_sample(lambda x, t: x[:1], schedule, (2, 1), progress=False)
    with pytest.raises(ValueError, match="variance: expected"):
        ddpm_sample(eps_fn, schedule, (2, 1), variance="large", progress=False)

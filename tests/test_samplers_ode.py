"""DPM-Solver++ (2M), and Euler and Heun on the Karras σ grid, against closed forms.

For data x_0 ~ N(μ, s²I) the optimal denoiser is known exactly: with a = √ᾱ_t, b = √(1 − ᾱ_t),
x_t ~ N(aμ, a²s² + b²) and E[ε | x_t] = b (x_t − aμ)/(a²s² + b²). Its probability-flow ODE is linear:
in x̃ = x_t/a, σ = b/a, x̃ − μ grows like √(s² + σ²), so the sample it maps x_T to is
μ + (x_T/a_{T−1} − μ)·s/√(s² + σ_{T−1}²).
"""
from __future__ import annotations

import math

import pytest
import torch

from dlcourse.sampling import (ddim_sample, ddpm_sample, dpm_solver_pp_2m_sample, dpm_solver_pp_2m_step, euler_sample,
                               euler_step, heun_sample, karras_sigmas, karras_timesteps)
from dlcourse.guidance import guided_eps_fn
from dlcourse.schedules import Schedule, cosine_betas, linear_betas, scaled_linear_betas

MU, S = 0.3, 0.5
N = 20_000


def gaussian_eps_fn(schedule: Schedule, prediction: str = "eps", mu=MU):
    """The exact ε (or x̂_0, or v) of data N(μ, s²); ``mu`` a number or a tensor that broadcasts against x."""
    def eps_fn(x, t):
        ab = schedule.alpha_bars[t].reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        eps = b * (x - a * mu) / (a * a * S * S + b * b)
        x0 = (x - b * eps) / a
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[prediction]
    return eps_fn


def exact_ode_sample(schedule: Schedule, x_T: torch.Tensor) -> torch.Tensor:
    ab = float(schedule.alpha_bars[-1])
    sigma_max = math.sqrt((1 - ab) / ab)
    return MU + (x_T / math.sqrt(ab) - MU) * S / math.sqrt(S * S + sigma_max ** 2)


SCHEDULES = {"linear 1000": lambda: Schedule(linear_betas(1000), dtype=torch.float64),
             "scaled linear 200": lambda: Schedule(scaled_linear_betas(200), dtype=torch.float64),
             "cosine 100": lambda: Schedule(cosine_betas(100), dtype=torch.float64)}
SAMPLERS = {"dpm++2m": dpm_solver_pp_2m_sample, "euler": euler_sample, "heun": heun_sample}


def x_T(seed=0, n=N):
    return torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run(sampler, schedule, steps, xT, prediction="eps", **kwargs):
    return SAMPLERS[sampler](gaussian_eps_fn(schedule, prediction), schedule, tuple(xT.shape), steps=steps, x_T=xT,
                             progress=False, x0_mode="none", prediction=prediction, **kwargs)


# ---- from noise to N(μ, s²) -----------------------------------------------------------------------
# |std − s| allowed, per sampler and steps (Euler is first order; Heun needs ~20 times on the ρ = 7 grid)
STD_TOLERANCE = {("dpm++2m", 20): 0.04, ("dpm++2m", 50): 0.01, ("heun", 20): 0.07, ("heun", 50): 0.02,
                 ("euler", 20): 0.13, ("euler", 50): 0.06}


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("sampler, steps", list(STD_TOLERANCE))
def test_sampler_reaches_the_gaussian_data(schedule_name, sampler, steps):
    schedule = SCHEDULES[schedule_name]()
    x = run(sampler, schedule, steps, x_T())
    assert x.mean().item() == pytest.approx(MU, abs=0.02)
    assert x.std().item() == pytest.approx(S, abs=STD_TOLERANCE[sampler, steps])


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("sampler, rms_at_50", [("dpm++2m", 0.003), ("heun", 0.01)])
def test_second_order_samplers_follow_the_exact_ode(schedule_name, sampler, rms_at_50):
    """Per sample, against the closed-form ODE solution: small at 50 steps, and smaller than at 20."""
    schedule, xT = SCHEDULES[schedule_name](), x_T(n=2000)
    exact = exact_ode_sample(schedule, xT)
    rms = {steps: (run(sampler, schedule, steps, xT) - exact).pow(2).mean().sqrt().item() for steps in (20, 50)}
    assert rms[50] < rms_at_50 and rms[50] < rms[20]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_are_deterministic_for_a_seed_and_run_in_float32(sampler):
    schedule = Schedule(scaled_linear_betas(100))
    eps_fn = gaussian_eps_fn(schedule)

    def draw(seed):
        return SAMPLERS[sampler](eps_fn, schedule, (500, 2), steps=20, progress=False, device="cpu",
                                 generator=torch.Generator().manual_seed(seed))

    first, again, other = draw(1), draw(1), draw(2)
    assert first.dtype == torch.float32 and torch.equal(first, again) and not torch.equal(first, other)
    assert first.mean().item() == pytest.approx(MU, abs=0.06)
    assert first.std().item() == pytest.approx(S, abs=STD_TOLERANCE[sampler, 20] + 0.04)  # 1000 values


@pytest.mark.parametrize("sampler", [*SAMPLERS, "ddim", "ddpm"])
@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_every_prediction_type_samples_alike(sampler, prediction):
    """A network that predicts x̂_0 or v, passed with prediction=, gives the ε network's samples."""
    schedule, xT = SCHEDULES["scaled linear 200"](), x_T(n=200)
    fn = {"ddim": ddim_sample, "ddpm": ddpm_sample}.get(sampler) or SAMPLERS[sampler]
    kwargs = dict(x_T=xT, progress=False, x0_mode="clip", **({} if sampler == "ddpm" else {"steps": 10}))
    draw = lambda prediction: fn(gaussian_eps_fn(schedule, prediction), schedule, tuple(xT.shape),  # noqa: E731
                                 prediction=prediction, generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.allclose(draw(prediction), draw("eps"), atol=1e-9)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_guided_eps_samples_the_guided_gaussian(sampler):
    """guided_eps_fn unchanged: for Gaussians, (1 + w)·ε(μ_c) − w·ε(μ_u) is the exact ε of N((1 + w)μ_c − wμ_u, s²)."""
    schedule, xT = SCHEDULES["scaled linear 200"](), x_T(n=4000)
    mu_c, mu_u, w = 0.3, 0.1, 2.0

    def model(x, t, c, c_mask):  # the conditional branch has mean μ_c·c, the null context (c = 0) mean μ_u
        mu = torch.where(c_mask[:, None] > 0, mu_c * c, torch.full_like(c, mu_u))
        return gaussian_eps_fn(schedule, mu=mu)(x, t)

    guided = guided_eps_fn(model, torch.ones(len(xT), 1, dtype=torch.float64), w)
    kwargs = dict(steps=50, x_T=xT, progress=False, x0_mode="none")
    x = SAMPLERS[sampler](guided, schedule, tuple(xT.shape), **kwargs)
    assert x.mean().item() == pytest.approx((1 + w) * mu_c - w * mu_u, abs=0.03)
    exact_eps_fn = gaussian_eps_fn(schedule, mu=(1 + w) * mu_c - w * mu_u)
    plain = SAMPLERS[sampler](exact_eps_fn, schedule, tuple(xT.shape), **kwargs)
    assert torch.allclose(x, plain, atol=1e-9)


@pytest.mark.parametrize("fn", [*SAMPLERS.values(), ddim_sample])
def test_samplers_name_a_wrong_prediction(fn):
    schedule = SCHEDULES["cosine 100"]()
    with pytest.raises(ValueError, match="prediction: expected 'eps' \\(the noise\\), 'x0'"):
        fn(gaussian_eps_fn(schedule), schedule, (2, 1), steps=5, progress=False, prediction="epsilon")


def test_clipping_keeps_the_samples_in_the_data_range():
    schedule = SCHEDULES["cosine 100"]()
    wide = lambda x, t: -3 * x  # noqa: E731  a bad network whose x̂_0 leaves [−1, 1]
    for fn in SAMPLERS.values():
        x = fn(wide, schedule, (50, 3), steps=10, x_T=x_T(n=150).reshape(50, 3), progress=False)
        assert x.abs().max().item() <= 1.0


# ---- one step by hand ------------------------------------------------------------------------------
# ᾱ = (0.9, 0.5, 0.1): λ = ½ log(ᾱ/(1 − ᾱ)) = (ln 3, 0, −ln 3), σ_t = √((1 − ᾱ)/ᾱ) = (1/3, 1, 3)
@pytest.fixture
def three():
    return Schedule(torch.tensor([0.1, 1 - 0.5 / 0.9, 0.8], dtype=torch.float64), dtype=torch.float64)


def test_dpm_solver_pp_2m_second_order_step_by_hand(three):
    """t = 1 → 0 after t_prev = 2: h = h_prev = ln 3, r = 1, D = 1.5 x̂_0 − 0.5 x̂_0^prev,
    x_0 = √(0.1/0.5)·x_1 + √0.9·(1 − 1/3)·D."""
    x, x0_pred, x0_prev = (torch.tensor([[v]], dtype=torch.float64) for v in (1.0, 0.2, -0.4))
    out = dpm_solver_pp_2m_step(three, x, 1, 0, x0_pred, x0_prev, 2)
    assert out.item() == pytest.approx(math.sqrt(0.2) * 1.0 + math.sqrt(0.9) * (2 / 3) * (1.5 * 0.2 + 0.5 * 0.4),
                                       abs=1e-12)
    assert out.item() == pytest.approx(0.7634413615, abs=1e-9)


def test_dpm_solver_pp_first_order_step_is_ddim(three):
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.full((4,), 2)
    x0_pred = three.predict_x0(x, t, eps)
    for t_next in (1, 0, -1):
        assert torch.allclose(dpm_solver_pp_2m_step(three, x, 2, t_next, x0_pred), three.ddim_step(x, t, t_next, eps),
                              atol=1e-12)
    # by hand, 2 → 1: h = ln 3, x_1 = (σ_1/σ_2)·x_2 + α_1·(1 − e^{−h})·x̂_0 with α = √ᾱ, σ = √(1 − ᾱ)
    expected = math.sqrt(0.5 / 0.9) * x + math.sqrt(0.5) * (2 / 3) * x0_pred
    assert torch.allclose(dpm_solver_pp_2m_step(three, x, 2, 1, x0_pred), expected, atol=1e-12)


def test_dpm_solver_pp_step_errors(three):
    x = torch.zeros(1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="t_next: expected an earlier step"):
        dpm_solver_pp_2m_step(three, x, 1, 1, x)
    with pytest.raises(ValueError, match="t_prev: expected the step before t"):
        dpm_solver_pp_2m_step(three, x, 1, 0, x, x, 1)
    with pytest.raises(ValueError, match=r"x0_pred: expected a tensor of the shape of x_t \(1, 1\)"):
        dpm_solver_pp_2m_step(three, x, 1, 0, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="x0_prev: expected given together with t_prev"):
        dpm_solver_pp_2m_step(three, x, 1, 0, x, x)


def test_euler_step_by_hand_and_as_ddim(three):
    x_tilde, eps = torch.tensor([[1.0]]), torch.tensor([[0.4]])
    assert euler_step(x_tilde, 2.0, 0.5, eps).item() == pytest.approx(1.0 - 1.5 * 0.4)
    # in x_t: √ᾱ_0·(x_1/√ᾱ_1 + (σ_0 − σ_1) ε) is DDIM's η = 0 step from 1 to 0
    g = torch.Generator().manual_seed(1)
    x, e = torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)
    via_euler = math.sqrt(0.9) * euler_step(x / math.sqrt(0.5), 1.0, 1 / 3, e)
    assert torch.allclose(via_euler, three.ddim_step(x, torch.full((3,), 1), 0, e), atol=1e-12)


def test_heun_one_time_by_hand(three):
    """Heun with grid (2, 1, 0) on ε(x, t) = c_t·x: each step x̃ + Δσ·(ε̂ + ε̂')/2, the last one Euler into σ = 0."""
    c = {0: 0.5, 1: 0.25, 2: 0.125}
    eps_fn = lambda x, t: c[int(t[0])] * x  # noqa: E731
    assert karras_timesteps(three, 3) == [2, 1, 0]
    xT = torch.tensor([[2.0]], dtype=torch.float64)
    sigma = {2: 3.0, 1: 1.0, 0: 1 / 3}
    sqrt_ab = {t: math.sqrt(a) for t, a in zip((0, 1, 2), (0.9, 0.5, 0.1))}
    x = xT.item() / sqrt_ab[2]
    for t, t_next in ((2, 1), (1, 0)):
        d = c[t] * sqrt_ab[t] * x
        x_pred = x + (sigma[t_next] - sigma[t]) * d
        d_next = c[t_next] * sqrt_ab[t_next] * x_pred
        x = x + (sigma[t_next] - sigma[t]) * (d + d_next) / 2
    x = x - sigma[0] * c[0] * sqrt_ab[0] * x
    out = heun_sample(eps_fn, three, (1, 1), steps=3, x_T=xT, progress=False, x0_mode="none")
    assert out.item() == pytest.approx(x, abs=1e-12)


# ---- the Karras grid -------------------------------------------------------------------------------
def test_karras_sigmas_by_hand():
    assert karras_sigmas(1.0, 9.0, 3, rho=2.0).tolist() == pytest.approx([9.0, 4.0, 1.0])  # (3 + ½(1 − 3))² = 4
    assert karras_sigmas(0.5, 4.0, 8, rho=1.0).tolist() == pytest.approx(torch.linspace(4.0, 0.5, 8).tolist())
    seven = karras_sigmas(0.002, 80.0, 10)
    assert seven[0].item() == pytest.approx(80.0) and seven[-1].item() == pytest.approx(0.002)
    assert karras_sigmas(0.1, 5.0, 1).tolist() == pytest.approx([5.0])
    with pytest.raises(ValueError, match="sigma_max: expected"):
        karras_sigmas(1.0, 0.5, 4)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_karras_timesteps_span_the_schedule(schedule_name):
    schedule = SCHEDULES[schedule_name]()
    ts = karras_timesteps(schedule, 20)
    assert ts[0] == schedule.T - 1 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:])) and len(ts) <= 20
    log_sigma = (1 / schedule.snr).log() / 2  # ascending in t
    grid = karras_sigmas(math.exp(log_sigma[0]), math.exp(log_sigma[-1]), 20).log()
    nearest = []
    for g in grid:  # the two steps around g on the sorted log σ, the closer one
        above = min(int(torch.searchsorted(log_sigma, g)), schedule.T - 1)
        below = max(above - 1, 0)
        nearest.append(below if abs(g - log_sigma[below]) <= abs(g - log_sigma[above]) else above)
    assert ts == sorted(set(nearest), reverse=True)

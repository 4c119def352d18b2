"""Reverse-process samplers: ancestral DDPM, DDIM, DPM-Solver++ (2M), and Euler and Heun on the Karras σ grid.

A denoiser is any callable ``eps_fn(x_t, t) -> eps_pred`` with t a long tensor (N,);
wrap a model with ``lambda x, t: model(x, t)`` (or use ``dlcourse.guidance.guided_eps_fn``).
A network that predicts x̂_0 or v instead of ε is sampled with ``prediction="x0"``/``"v"``: every
sampler turns its output into ε and x̂_0 with ``Schedule.convert`` (default ``"eps"``).
Time is 0-based (t ∈ {0, …, T−1}); in a trajectory, key −1 holds the final sample.

The loops clip the predicted x̂_0 to [−1, 1] at every step by default (``x0_mode="clip"``, as
diffusers' schedulers do): an imperfect model otherwise drifts into saturated colour noise, worst
with deterministic DDIM and large guidance weights. ``x0_mode="none"`` runs the lectures' plain
equations; ``"dynamic"`` is Imagen's dynamic thresholding (see ``schedules.adjust_x0``).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from dlcourse.device import get_device
from dlcourse.schedules import Schedule, check_eta, check_prediction
from dlcourse.validation import check_int, check_positive_int, check_real, describe, fail, is_int

__all__ = ["ddim_timesteps", "ddpm_sample", "ddim_sample", "dpm_solver_pp_2m_step", "dpm_solver_pp_2m_sample",
           "karras_sigmas", "karras_timesteps", "euler_step", "euler_sample", "heun_sample"]

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` times, "trailing" spacing: t_k = ⌊k·T/steps⌋ − 1 for k = steps, …, 1.

    Descending, strictly decreasing, starting at T − 1 (the noisiest step is never skipped).
    """
    check_positive_int(T, "T")
    check_int(steps, "steps", low=1, high=T, expected=f"an int in [1, T = {T}]")
    return [k * T // steps - 1 for k in range(steps, 0, -1)]


def _check_schedule(schedule) -> None:
    if not isinstance(schedule, Schedule):
        raise fail("schedule", "a dlcourse.schedules.Schedule", describe(schedule))


def _start(shape, x_T, generator, device, dtype) -> torch.Tensor:
    """x_T: the given one (checked against ``shape``) or N(0, I) drawn on ``generator``."""
    if (not isinstance(shape, (tuple, list, torch.Size)) or len(shape) < 1
            or not all(is_int(s, 1) for s in shape)):
        raise fail("shape", "a tuple of positive ints, e.g. (N, C, H, W)", describe(shape))
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point() or tuple(x_T.shape) != tuple(shape):
            raise fail("x_T", f"a float tensor of shape {tuple(shape)}", describe(x_T))
        return x_T.to(device) if device is not None else x_T
    if device is None:
        device = get_device()
    return _randn(tuple(shape), generator, device, dtype)


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (reproducible anywhere), then moved."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where, dtype=dtype).to(device)


def _trajectory_ts(trajectory_at, visited: list[int]) -> set[int] | None:
    """The t's to record: a subset of the visited steps, plus −1 for the final sample."""
    if trajectory_at is None:
        return None
    allowed = [*visited, -1]
    if isinstance(trajectory_at, str):
        if trajectory_at != "all":
            raise fail("trajectory_at", "an iterable of t's or the string 'all'", describe(trajectory_at))
        return set(allowed)
    ts = trajectory_at.tolist() if isinstance(trajectory_at, torch.Tensor) else trajectory_at
    try:
        ts = list(ts)
    except TypeError:
        raise fail("trajectory_at", "an iterable of t's or the string 'all'", describe(trajectory_at)) from None
    wrong = [t for t in ts if not is_int(t) or t not in allowed]
    if wrong:
        shown = allowed if len(allowed) <= 12 else [*allowed[:5], "…", *allowed[-5:]]
        raise fail("trajectory_at", f"steps the sampler visits (or −1 for the final sample): {shown}",
                   f"{wrong[:10]}")
    return set(ts)


def _predict(eps_fn: EpsFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    eps = eps_fn(x, t)
    if not isinstance(eps, torch.Tensor) or eps.shape != x.shape:
        raise fail("eps_fn(x_t, t)", f"a tensor of the shape of x_t {tuple(x.shape)}", describe(eps))
    return eps


def _finish(x, record, trajectory):
    if record is None:
        return x
    if -1 in record:
        trajectory[-1] = x.detach().cpu()
    return x, trajectory


def ddpm_sample(eps_fn: EpsFn, schedule: Schedule, shape, *, x_T: torch.Tensor | None = None,
                generator: torch.Generator | None = None, variance: str = "beta", device=None,
                trajectory_at: Iterable[int] | str | None = None, progress: bool = True,
                x0_mode: str = "clip", percentile: float = 0.995, prediction: str = "eps"):
    """Ancestral sampling: x_T ~ N(0, I), then x_{t−1} = ``schedule.ddpm_step`` for t = T−1, …, 0.

    ``device``: where to sample (default: x_T's device, else ``dlcourse.get_device()``); x_T is
    drawn in the schedule's dtype. All noise comes from ``generator`` when given.
    Returns x_0, or (x_0, {t: x_t on cpu}) for the t's in ``trajectory_at``
    (an iterable of t's, −1 = the final sample, or "all"). ``x0_mode``/``percentile``: what each
    step does with the predicted x̂_0 (default: clip to [−1, 1]; see the module docstring).
    ``prediction``: what ``eps_fn`` returns, ``"eps"`` (default), ``"x0"`` or ``"v"``.
    """
    _check_schedule(schedule)
    check_prediction(prediction)
    if variance not in ("beta", "beta_tilde"):
        raise fail("variance", "'beta' or 'beta_tilde'", describe(variance))
    x = _start(shape, x_T, generator, device, schedule.dtype)
    ts = list(range(schedule.T - 1, -1, -1))
    record, trajectory = _trajectory_ts(trajectory_at, ts), {}
    with torch.no_grad():
        for t in tqdm(ts, desc="DDPM sampling", disable=not progress, leave=False):
            if record is not None and t in record:
                trajectory[t] = x.detach().cpu()
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            eps = _predict(eps_fn, x, tt)
            z = _randn(x.shape, generator, x.device, x.dtype) if t > 0 else torch.zeros_like(x)
            x = schedule.ddpm_step(x, tt, eps, z=z, variance=variance, x0_mode=x0_mode,
                                   percentile=percentile, prediction=prediction)
    return _finish(x, record, trajectory)


def ddim_sample(eps_fn: EpsFn, schedule: Schedule, shape, *, steps: int = 50, eta: float = 0.0,
                x_T: torch.Tensor | None = None, generator: torch.Generator | None = None, device=None,
                trajectory_at: Iterable[int] | str | None = None, progress: bool = True,
                x0_mode: str = "clip", percentile: float = 0.995, prediction: str = "eps"):
    """DDIM over ``ddim_timesteps(T, steps)``; each step is ``schedule.ddim_step`` to the next
    time in the grid, the last one to t_prev = −1 (ᾱ = 1). η = 0: deterministic.

    Other arguments as in :func:`ddpm_sample`; trajectory keys are steps of the grid (or −1).
    """
    _check_schedule(schedule)
    check_prediction(prediction)
    ts = ddim_timesteps(schedule.T, steps)
    eta = check_eta(eta)
    x = _start(shape, x_T, generator, device, schedule.dtype)
    record, trajectory = _trajectory_ts(trajectory_at, ts), {}
    with torch.no_grad():
        for i, t in enumerate(tqdm(ts, desc="DDIM sampling", disable=not progress, leave=False)):
            if record is not None and t in record:
                trajectory[t] = x.detach().cpu()
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            eps = _predict(eps_fn, x, tt)
            z = None
            if eta > 0:  # the last step (to ᾱ = 1) has σ = 0
                z = _randn(x.shape, generator, x.device, x.dtype) if t_prev >= 0 else torch.zeros_like(x)
            x = schedule.ddim_step(x, tt, t_prev, eps, eta=eta, z=z, x0_mode=x0_mode,
                                   percentile=percentile, prediction=prediction)
    return _finish(x, record, trajectory)


def _denoised(eps_fn: EpsFn, schedule: Schedule, x: torch.Tensor, t: int, prediction: str, x0_mode: str,
              percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ε) at x_t from the network's output, through ``Schedule.x0_and_eps``."""
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    return schedule.x0_and_eps(x, tt, _predict(eps_fn, x, tt), prediction, x0_mode, percentile)


def _alpha_sigma(schedule: Schedule, t: int) -> tuple[float, float]:
    """(α_t, σ_t) = (√ᾱ_t, √(1 − ᾱ_t)) as floats; t = −1 is the clean image, (1, 0)."""
    if t == -1:
        return 1.0, 0.0
    ab = float(schedule.alpha_bars[t])
    return ab ** 0.5, (1 - ab) ** 0.5


def _check_times(schedule: Schedule, t, t_next, t_prev) -> None:
    check_int(t, "t", low=0, high=schedule.T - 1, expected=f"an int step in [0, {schedule.T - 1}]")
    check_int(t_next, "t_next", low=-1, high=t - 1, expected=f"an earlier step in [−1, {t - 1}] (−1 = the clean image)")
    if t_prev is not None:
        check_int(t_prev, "t_prev", low=t + 1, high=schedule.T - 1,
                  expected=f"the step before t, in [{t + 1}, {schedule.T - 1}]")


def dpm_solver_pp_2m_step(schedule: Schedule, x_t: torch.Tensor, t: int, t_next: int, x0_pred: torch.Tensor,
                          x0_prev: torch.Tensor | None = None, t_prev: int | None = None) -> torch.Tensor:
    """One step of DPM-Solver++ (2M) (Lu et al. 2022, Algorithm 2), from step t to an earlier t_next.

    With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t/σ_t) and h = λ_{t_next} − λ_t:

        first order (no ``x0_prev``):  x_{t_next} = (σ_{t_next}/σ_t) x_t − α_{t_next} (e^{−h} − 1) x̂_0   (= DDIM),
        second order:  r = (λ_t − λ_{t_prev})/h,  D = (1 + 1/(2r)) x̂_0 − 1/(2r) x̂_0^{prev},
                       x_{t_next} = (σ_{t_next}/σ_t) x_t − α_{t_next} (e^{−h} − 1) D,

    where x̂_0^{prev} = ``x0_prev`` is the prediction made at the step before, ``t_prev`` > t.
    ``t_next = −1`` (ᾱ = 1, λ = ∞) returns x̂_0, the limit of the first-order step.
    """
    _check_times(schedule, t, t_next, t_prev)
    for name, value in (("x0_pred", x0_pred), ("x0_prev", x0_prev)):
        if value is not None and (not isinstance(value, torch.Tensor) or value.shape != x_t.shape):
            raise fail(name, f"a tensor of the shape of x_t {tuple(x_t.shape)}", describe(value))
    if (x0_prev is None) != (t_prev is None):
        raise fail("x0_prev", "given together with t_prev (both, for the second-order step, or neither)",
                   f"x0_prev {describe(x0_prev)}, t_prev {describe(t_prev)}")
    if t_next == -1:
        return x0_pred
    (a, s), (a_next, s_next) = _alpha_sigma(schedule, t), _alpha_sigma(schedule, t_next)
    lam, lam_next = math.log(a / s), math.log(a_next / s_next)
    h = lam_next - lam
    d = x0_pred
    if x0_prev is not None:
        a_prev, s_prev = _alpha_sigma(schedule, t_prev)
        r = (lam - math.log(a_prev / s_prev)) / h
        d = (1 + 1 / (2 * r)) * x0_pred - 1 / (2 * r) * x0_prev
    return s_next / s * x_t - a_next * math.expm1(-h) * d


def dpm_solver_pp_2m_sample(eps_fn: EpsFn, schedule: Schedule, shape, *, steps: int = 20,
                            x_T: torch.Tensor | None = None, generator: torch.Generator | None = None, device=None,
                            progress: bool = True, x0_mode: str = "clip", percentile: float = 0.995,
                            prediction: str = "eps"):
    """DPM-Solver++ (2M) over ``ddim_timesteps(T, steps)``, then to t = −1: ``steps`` network calls.

    Each step is :func:`dpm_solver_pp_2m_step` with the x̂_0 of the step before (first order on the
    first step and on the last, to ᾱ = 1). Deterministic given x_T. Other arguments as in :func:`ddim_sample`
    (x̂_0 is adjusted by ``x0_mode`` before it enters the step).
    """
    _check_schedule(schedule)
    check_prediction(prediction)
    ts = ddim_timesteps(schedule.T, steps)
    x = _start(shape, x_T, generator, device, schedule.dtype)
    x0_prev = t_prev = None
    with torch.no_grad():
        for i, t in enumerate(tqdm(ts, desc="DPM-Solver++ (2M)", disable=not progress, leave=False)):
            t_next = ts[i + 1] if i + 1 < len(ts) else -1
            x0_pred, _ = _denoised(eps_fn, schedule, x, t, prediction, x0_mode, percentile)
            x = dpm_solver_pp_2m_step(schedule, x, t, t_next, x0_pred, x0_prev, t_prev)
            x0_prev, t_prev = x0_pred, t
    return x


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0, …, N−1.

    Descending from σ_max to σ_min, dense at small σ for ρ > 1; N = 1 gives [σ_max]. float64 (N,).
    """
    sigma_min = check_real(sigma_min, "sigma_min", low=0, low_open=True)
    sigma_max = check_real(sigma_max, "sigma_max", low=sigma_min)
    check_positive_int(steps, "steps")
    rho = check_real(rho, "rho", low=0, low_open=True, hint=" (Karras et al. use ρ = 7)")
    i = torch.arange(steps, dtype=torch.float64)
    ramp = i / (steps - 1) if steps > 1 else i
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def karras_timesteps(schedule: Schedule, steps: int, rho: float = 7.0) -> list[int]:
    """The Karras grid on a discrete schedule: σ_t = √((1 − ᾱ_t)/ᾱ_t), :func:`karras_sigmas` from
    σ_{T−1} to σ_0, each σ_i mapped to the step t whose log σ_t is nearest, repeats dropped.

    Descending, from T − 1 to 0; at most ``steps`` times (fewer where the grid is finer than the schedule's).
    """
    _check_schedule(schedule)
    check_int(steps, "steps", low=1, high=schedule.T, expected=f"an int in [1, T = {schedule.T}]")
    log_sigmas = (1 / schedule.snr.double().cpu()).log() / 2
    grid = karras_sigmas(float(log_sigmas[0].exp()), float(log_sigmas[-1].exp()), steps, rho).log()
    nearest = (grid[:, None] - log_sigmas[None, :]).abs().argmin(dim=1).tolist()
    return list(dict.fromkeys(nearest))


def euler_step(x: torch.Tensor, sigma: float, sigma_next: float, eps: torch.Tensor) -> torch.Tensor:
    """One Euler step of the probability-flow ODE in x̃ = x_t/√ᾱ_t = x_0 + σ ε (Karras et al. 2022, Alg. 1):

        dx̃/dσ = (x̃ − x̂_0)/σ = ε̂,    x̃_next = x̃ + (σ_next − σ) ε̂.

    On the schedule's own σ_t this is DDIM's η = 0 step, written for x̃.
    """
    return x + (sigma_next - sigma) * eps


def _karras_sample(eps_fn, schedule, shape, steps, rho, heun, x_T, generator, device, progress, x0_mode, percentile,
                   prediction, desc):
    """Euler (``heun=False``) or Heun over :func:`karras_timesteps`, in x̃ = x_t/√ᾱ_t, ending at σ = 0."""
    ts = karras_timesteps(schedule, steps, rho)
    x = _start(shape, x_T, generator, device, schedule.dtype)

    def sigma(t: int) -> float:
        a, s = _alpha_sigma(schedule, t)
        return s / a

    def eps_at(x_tilde: torch.Tensor, t: int) -> torch.Tensor:
        x_t = _alpha_sigma(schedule, t)[0] * x_tilde
        return _denoised(eps_fn, schedule, x_t, t, prediction, x0_mode, percentile)[1]

    x = x / _alpha_sigma(schedule, ts[0])[0]
    with torch.no_grad():
        for i, t in enumerate(tqdm(ts, desc=desc, disable=not progress, leave=False)):
            t_next = ts[i + 1] if i + 1 < len(ts) else -1
            eps = eps_at(x, t)
            x_next = euler_step(x, sigma(t), sigma(t_next), eps)
            if heun and t_next >= 0:
                x_next = euler_step(x, sigma(t), sigma(t_next), (eps + eps_at(x_next, t_next)) / 2)
            x = x_next
    return x


def euler_sample(eps_fn: EpsFn, schedule: Schedule, shape, *, steps: int = 20, rho: float = 7.0,
                 x_T: torch.Tensor | None = None, generator: torch.Generator | None = None, device=None,
                 progress: bool = True, x0_mode: str = "clip", percentile: float = 0.995, prediction: str = "eps"):
    """Euler on the Karras σ grid (:func:`karras_timesteps`): x̃ = x_T/√ᾱ_{T−1}, then for each σ_i → σ_{i+1}
    (σ after the last is 0) :func:`euler_step` with ε̂ = ε_θ(√ᾱ_{t_i} x̃, t_i). One network call per time;
    deterministic given x_T. Other arguments as in :func:`ddim_sample`.
    """
    _check_schedule(schedule)
    check_prediction(prediction)
    return _karras_sample(eps_fn, schedule, shape, steps, rho, False, x_T, generator, device, progress, x0_mode,
                          percentile, prediction, "Euler (Karras σ)")


def heun_sample(eps_fn: EpsFn, schedule: Schedule, shape, *, steps: int = 20, rho: float = 7.0,
                x_T: torch.Tensor | None = None, generator: torch.Generator | None = None, device=None,
                progress: bool = True, x0_mode: str = "clip", percentile: float = 0.995, prediction: str = "eps"):
    """Heun's second-order method on the Karras σ grid (Karras et al. 2022, Algorithm 1 without churn):

        x̃' = x̃_i + (σ_{i+1} − σ_i) ε̂(x̃_i, σ_i),
        x̃_{i+1} = x̃_i + (σ_{i+1} − σ_i)·(ε̂(x̃_i, σ_i) + ε̂(x̃', σ_{i+1}))/2,

    and a plain Euler step into σ = 0. 2N − 1 network calls for N times; deterministic given x_T.
    Other arguments as in :func:`euler_sample`.
    """
    _check_schedule(schedule)
    check_prediction(prediction)
    return _karras_sample(eps_fn, schedule, shape, steps, rho, True, x_T, generator, device, progress, x0_mode,
                          percentile, prediction, "Heun (Karras σ)")

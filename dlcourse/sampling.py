"""Reverse-process samplers: ancestral DDPM and DDIM over a subsequence of steps.

A denoiser is any callable ``eps_fn(x_t, t) -> eps_pred`` with t a long tensor (N,);
wrap a model with ``lambda x, t: model(x, t)`` (or use ``dlcourse.guidance.guided_eps_fn``).
Time is 0-based (t ∈ {0, …, T−1}); in a trajectory, key −1 holds the final sample.

The loops clip the predicted x̂_0 to [−1, 1] at every step by default (``x0_mode="clip"``, as
diffusers' schedulers do): an imperfect model otherwise drifts into saturated colour noise, worst
with deterministic DDIM and large guidance weights. ``x0_mode="none"`` runs the lectures' plain
equations; ``"dynamic"`` is Imagen's dynamic thresholding (see ``schedules.adjust_x0``).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from dlcourse.device import get_device
from dlcourse.schedules import Schedule, check_eta
from dlcourse.validation import check_int, check_positive_int, describe, fail, is_int

__all__ = ["ddim_timesteps", "ddpm_sample", "ddim_sample"]

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
                x0_mode: str = "clip", percentile: float = 0.995):
    """Ancestral sampling: x_T ~ N(0, I), then x_{t−1} = ``schedule.ddpm_step`` for t = T−1, …, 0.

    ``device``: where to sample (default: x_T's device, else ``dlcourse.get_device()``); x_T is
    drawn in the schedule's dtype. All noise comes from ``generator`` when given.
    Returns x_0, or (x_0, {t: x_t on cpu}) for the t's in ``trajectory_at``
    (an iterable of t's, −1 = the final sample, or "all"). ``x0_mode``/``percentile``: what each
    step does with the predicted x̂_0 (default: clip to [−1, 1]; see the module docstring).
    """
    _check_schedule(schedule)
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
            noise = _randn(x.shape, generator, x.device, x.dtype) if t > 0 else torch.zeros_like(x)
            x = schedule.ddpm_step(x, tt, eps, noise=noise, variance=variance, x0_mode=x0_mode,
                                   percentile=percentile)
    return _finish(x, record, trajectory)


def ddim_sample(eps_fn: EpsFn, schedule: Schedule, shape, *, steps: int = 50, eta: float = 0.0,
                x_T: torch.Tensor | None = None, generator: torch.Generator | None = None, device=None,
                trajectory_at: Iterable[int] | str | None = None, progress: bool = True,
                x0_mode: str = "clip", percentile: float = 0.995):
    """DDIM over ``ddim_timesteps(T, steps)``; each step is ``schedule.ddim_step`` to the next
    time in the grid, the last one to t_prev = −1 (ᾱ = 1). η = 0: deterministic.

    Other arguments as in :func:`ddpm_sample`; trajectory keys are steps of the grid (or −1).
    """
    _check_schedule(schedule)
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
            noise = None
            if eta > 0:  # the last step (to ᾱ = 1) has σ = 0
                noise = _randn(x.shape, generator, x.device, x.dtype) if t_prev >= 0 else torch.zeros_like(x)
            x = schedule.ddim_step(x, tt, t_prev, eps, eta=eta, noise=noise, x0_mode=x0_mode,
                                   percentile=percentile)
    return _finish(x, record, trajectory)

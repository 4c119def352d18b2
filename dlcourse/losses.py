"""Training objectives: what a network is asked to predict, and how much each noise level counts.

Diffusion (0-based t, ``dlcourse.schedules``): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, ε ~ N(0, I), and
SNR_t = ᾱ_t/(1 − ᾱ_t). A network predicts ε (Ho et al. 2020), x̂_0, or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0
(Salimans & Ho 2022); ``Schedule.convert`` turns any of them into any other, and the samplers take
any of them through it (``prediction=``).

Flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023) on the straight path from data
to noise, x_s = (1 − s) x_0 + s ε, s ∈ [0, 1], regresses the velocity u = dx_s/ds = ε − x_0. The
course's networks take an integer step, so flow time is binned like diffusion time: step t ∈ {0, …, T−1}
is s = (t + 1)/T (t = T − 1 is pure noise; the data sit at t = −1, s = 0, as x_0 does in diffusion).

:func:`diffusion_loss` is the one entry point:

    L = mean_i  w_i · mean_pixels (f_θ(x_t, t)_i − target_i)²,

with ``weighting`` ``"uniform"`` (w = 1: the plain mean squared error) or ``"min_snr"`` (:func:`min_snr_weight`).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from dlcourse.schedules import PREDICTIONS, Schedule, check_prediction, gather
from dlcourse.validation import check_float_tensor, check_positive_int, check_real, check_timesteps, describe, fail

__all__ = ["OBJECTIVES", "WEIGHTINGS", "prediction_target", "flow_time", "flow_interpolant", "flow_velocity",
           "min_snr_weight", "diffusion_loss"]

OBJECTIVES = (*PREDICTIONS, "flow")
WEIGHTINGS = ("uniform", "min_snr")


def prediction_target(schedule: Schedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                      prediction: str = "eps") -> torch.Tensor:
    """What a network that predicts ``prediction`` should output at x_t = ``schedule.q_sample(x0, t, noise)``:

        ε-prediction:    ε
        x̂_0-prediction:  x_0
        v-prediction:    v = √ᾱ_t ε − √(1 − ᾱ_t) x_0   (``schedule.v_target``)
    """
    check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    return schedule.v_target(x0, noise, t)


def flow_time(t: torch.Tensor, T: int) -> torch.Tensor:
    """Flow time of step t: s = (t + 1)/T ∈ (0, 1] (float32, shape of t)."""
    check_positive_int(T, "T")
    check_timesteps(t, "t", T)
    return (t.float() + 1) / T


def flow_interpolant(x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The straight path from data to noise: x_s = (1 − s) x_0 + s ε, with s (N,) per sample."""
    check_float_tensor(x0, "x0")
    check_float_tensor(noise, "noise")
    if noise.shape != x0.shape:
        raise fail("noise", f"the shape of x0 {tuple(x0.shape)}", describe(noise))
    check_float_tensor(s, "s")
    if tuple(s.shape) != (x0.shape[0],):
        raise fail("s", f"one flow time per sample, shape ({x0.shape[0]},)", describe(s))
    s = s.to(x0.device, x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def flow_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Flow matching's target, the velocity of :func:`flow_interpolant`: u = dx_s/ds = ε − x_0."""
    return noise - x0


def min_snr_weight(snr: torch.Tensor, gamma: float = 5.0, prediction: str = "eps") -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023): weight the x̂_0 error by min(SNR_t, γ), written for each prediction's loss:

        ε:    w = min(SNR_t, γ)/SNR_t
        v:    w = min(SNR_t, γ)/(SNR_t + 1)
        x̂_0:  w = min(SNR_t, γ)

    At a fixed x_t, ‖ε − ε̂‖² = SNR_t·‖x_0 − x̂_0‖² and ‖v − v̂‖² = (SNR_t + 1)·‖x_0 − x̂_0‖², so all three
    are the same weighted loss. ``snr``: a float tensor of SNR_t > 0; the weights have its shape.
    """
    check_float_tensor(snr, "snr")
    gamma = check_real(gamma, "gamma", low=0, low_open=True, hint=" (Hang et al. use γ = 5)")
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1)
    if prediction == "x0":
        return clipped
    raise fail("prediction", "'eps', 'x0' or 'v' (min-SNR weights a diffusion loss)", describe(prediction))


def _draw(x0: torch.Tensor, T: int, t, noise, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U{0, …, T−1} and ε ~ N(0, I) per sample where not given, drawn on the generator's device."""
    where = generator.device if generator is not None else x0.device
    if t is None:
        t = torch.randint(0, T, (x0.shape[0],), generator=generator, device=where).to(x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=where, dtype=x0.dtype).to(x0.device)
    return t, noise


def diffusion_loss(model: Callable, x0: torch.Tensor, t: torch.Tensor | None, schedule: Schedule,
                   noise: torch.Tensor | None = None, *, prediction: str = "eps", weighting: str = "uniform",
                   gamma: float = 5.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """L = mean_i w_i · mean_pixels (f_θ(x_t, t)_i − target_i)², a scalar float32 tensor.

    ``prediction``: ``"eps"``, ``"x0"`` or ``"v"``, on x_t = ``schedule.q_sample(x0, t, noise)`` with
    :func:`prediction_target`; or ``"flow"``: x_t = :func:`flow_interpolant` at s = :func:`flow_time`,
    target u = ε − x_0 (only ``schedule.T`` is used). ``weighting``: ``"uniform"`` (w = 1,
    ``F.mse_loss``) or ``"min_snr"`` (:func:`min_snr_weight` with ``gamma``, diffusion only).
    ``model(x_t, t)``: wrap a conditional model, ``lambda x, t: model(x, t, c, c_mask)``. ``t`` (N,) and
    ``noise`` (like x0): drawn when None (t ~ U{0, …, T−1}, then ε ~ N(0, I), on ``generator``).
    """
    if not isinstance(schedule, Schedule):
        raise fail("schedule", "a dlcourse.schedules.Schedule", describe(schedule))
    if prediction not in OBJECTIVES:
        raise fail("prediction", "'eps', 'x0', 'v' or 'flow' (flow matching's velocity)", describe(prediction))
    if weighting not in WEIGHTINGS:
        raise fail("weighting", "'uniform' or 'min_snr' (Hang et al. 2023)", describe(weighting))
    if weighting == "min_snr" and prediction == "flow":
        raise fail("weighting", "'uniform' with prediction='flow' (min-SNR weights a diffusion loss)",
                   describe(weighting))
    check_float_tensor(x0, "x0")
    t, noise = _draw(x0, schedule.T, t, noise, generator)
    check_timesteps(t, "t", schedule.T, batch=x0.shape[0])
    if prediction == "flow":
        x_t, target = flow_interpolant(x0, noise, flow_time(t, schedule.T)), flow_velocity(x0, noise)
    else:
        x_t, target = schedule.q_sample(x0, t, noise), prediction_target(schedule, x0, noise, t, prediction)
    out = model(x_t, t)
    if not isinstance(out, torch.Tensor) or out.shape != x0.shape:
        raise fail("model(x_t, t)", f"a tensor of the shape of x0 {tuple(x0.shape)}", describe(out))
    if weighting == "uniform":
        return F.mse_loss(out.float(), target.float())
    per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(1)
    snr = gather(schedule.snr, t, per_sample).float()
    return (min_snr_weight(snr, gamma, prediction) * per_sample).mean()

"""Self-checks for the forward process and the DDPM reverse step (lesson 02).

Each check runs the learner's function next to :class:`dlcourse.schedules.Schedule` on random
inputs (several shapes, float32 and float64) and, on a mismatch, tries the usual slips one by
one to say which formula the learner's output actually matches.
"""
from __future__ import annotations

from typing import Callable

import torch

from dlcourse.schedules import Schedule, scaled_linear_betas
from dlcourse.validation import describe, fail

from .core import CheckResult, compare

__all__ = ["check_q_sample", "check_ddpm_step"]


def _col(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (x.dim() - 1))).to(x.device, x.dtype)


def _matching_slip(student_out, candidates: list[tuple[str, Callable[[], torch.Tensor]]]) -> str | None:
    """The hint of the first candidate formula that reproduces the learner's output."""
    if not isinstance(student_out, torch.Tensor):
        return None
    for hint, formula in candidates:
        wrong = formula()
        if wrong.shape == student_out.shape and torch.allclose(student_out.double(), wrong.double(),
                                                               atol=1e-5, rtol=1e-4):
            return hint
    return None


def _shape_hint(error) -> str | None:
    if isinstance(error, Exception) and ("size" in str(error) or "shape" in str(error) or "broadcast" in str(error)):
        return ("alpha_bars[t] has shape (N,); reshape it to (N, 1, 1, 1) (e.g. .view(-1, 1, 1, 1)) "
                "so that each image gets its own coefficient.")
    return None


def check_q_sample(fn: Callable) -> CheckResult:
    """``fn(x0, t, noise, alpha_bars) -> x_t`` with x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε.

    x0 and noise are N×C×H×W, t a long tensor (N,), alpha_bars the (T,) tensor of ᾱ.
    """
    if not callable(fn):
        raise fail("fn", "your q_sample function", describe(fn))
    gen = torch.Generator().manual_seed(0)
    T = 50
    inputs = []
    for n, c, size, dtype in ((4, 3, 8, torch.float32), (1, 1, 5, torch.float32), (6, 3, 4, torch.float64)):
        schedule = Schedule(scaled_linear_betas(T), dtype=dtype)
        t = torch.randint(1, T, (n,), generator=gen)
        t[0] = T - 1 if n > 1 else t[0]
        x0 = torch.rand(n, c, size, size, generator=gen, dtype=dtype) * 2 - 1
        inputs.append((x0, t, torch.randn(n, c, size, size, generator=gen, dtype=dtype), schedule.alpha_bars))

    def reference(x0, t, noise, alpha_bars):
        ab = _col(alpha_bars[t], x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def diagnose(student_out, reference_out, args):
        if isinstance(student_out, Exception):
            return _shape_hint(student_out)
        x0, t, noise, alpha_bars = args
        ab = _col(alpha_bars[t], x0)
        alpha = _col(alpha_bars[t] / alpha_bars[(t - 1).clamp(min=0)], x0)
        return _matching_slip(student_out, [
            ("x0 is scaled by ᾱ_t; it should be √ᾱ_t (the mean of q(x_t|x0) is √ᾱ_t·x0).",
             lambda: ab * x0 + (1 - ab).sqrt() * noise),
            ("the noise is scaled by (1 − ᾱ_t); it should be √(1 − ᾱ_t) (that is its standard deviation).",
             lambda: ab.sqrt() * x0 + (1 - ab) * noise),
            ("both square roots are missing: x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε.",
             lambda: ab * x0 + (1 - ab) * noise),
            ("the two coefficients are swapped: x0 gets √ᾱ_t and the noise √(1 − ᾱ_t).",
             lambda: (1 - ab).sqrt() * x0 + ab.sqrt() * noise),
            ("the noise is added unscaled; multiply it by √(1 − ᾱ_t) so the variance stays bounded.",
             lambda: ab.sqrt() * x0 + noise),
            ("you used the one-step α_t; q(x_t|x0) needs the cumulative product ᾱ_t = alpha_bars[t].",
             lambda: alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise),
            ("off by one: t is 0-based here, use alpha_bars[t], not alpha_bars[t − 1].",
             lambda: reference(x0, (t - 1).clamp(min=0), noise, alpha_bars)),
            ("off by one: use alpha_bars[t], not alpha_bars[t + 1].",
             lambda: reference(x0, (t + 1).clamp(max=len(alpha_bars) - 1), noise, alpha_bars)),
            ("every image used the first image's ᾱ; index alpha_bars with the whole tensor t (one ᾱ per image).",
             lambda: reference(x0, t[:1].expand_as(t), noise, alpha_bars)),
        ])

    return compare(fn, reference, inputs, name="q_sample", atol=1e-5, diagnose=diagnose)


def check_ddpm_step(fn: Callable, schedule: Schedule) -> CheckResult:
    """``fn(x_t, t, eps_pred, noise, variance="beta") -> x_{t−1}`` using ``schedule``'s tensors:

    x_{t−1} = 1/√α_t·(x_t − β_t/√(1 − ᾱ_t)·ε_θ) + σ_t z, σ_t² = β_t ("beta") or β̃_t
    ("beta_tilde"), and no noise where t == 0. Pass the schedule your function uses;
    inputs are N×C×H×W on its device.
    """
    if not callable(fn):
        raise fail("fn", "your ddpm_step function", describe(fn))
    if not isinstance(schedule, Schedule):
        raise fail("schedule", "the dlcourse.schedules.Schedule your ddpm_step uses", describe(schedule))
    gen = torch.Generator().manual_seed(1)
    device, T = schedule.device, schedule.T
    inputs = []
    for n, c, size, dtype, variance in ((4, 3, 8, torch.float32, "beta"), (4, 1, 4, torch.float64, "beta_tilde"),
                                        (3, 3, 6, torch.float32, "beta_tilde"), (2, 3, 4, torch.float64, "beta")):
        t = torch.randint(1, T, (n,), generator=gen)
        t[-1] = 0  # the last step of the chain: no noise
        x_t, eps, z = (torch.randn(n, c, size, size, generator=gen, dtype=dtype) for _ in range(3))
        inputs.append((x_t, t, eps, z, variance))

    def reference(x_t, t, eps_pred, noise, variance):
        return schedule.ddpm_step(x_t, t, eps_pred, noise=noise, variance=variance)

    def diagnose(student_out, reference_out, args):
        if isinstance(student_out, Exception):
            return _shape_hint(student_out)
        x_t, t, eps, z, variance = args
        beta, alpha = _col(schedule.betas[t], x_t), _col(schedule.alphas[t], x_t)
        ab, beta_tilde = _col(schedule.alpha_bars[t], x_t), _col(schedule.beta_tildes[t], x_t)
        sigma2 = beta if variance == "beta" else beta_tilde
        other2 = beta_tilde if variance == "beta" else beta
        later = _col((t > 0).float(), x_t)
        mean = (x_t - beta / (1 - ab).sqrt() * eps) / alpha.sqrt()
        return _matching_slip(student_out, [
            ("noise is added at t = 0 too; the last step (t == 0) must return the mean only.",
             lambda: mean + sigma2.sqrt() * z),
            ("no noise is added at t > 0: add σ_t·noise (σ_t = √β_t or √β̃_t) wherever t > 0.",
             lambda: mean),
            ("the noise is scaled by σ_t² instead of σ_t; take the square root of the variance.",
             lambda: mean + later * sigma2 * z),
            (f"variance='{variance}' was asked for, but your noise has the other variance "
             "(β_t ↔ β̃_t = schedule.beta_tildes[t]).",
             lambda: mean + later * other2.sqrt() * z),
            ("the ε coefficient uses √β_t; it is β_t/√(1 − ᾱ_t).",
             lambda: (x_t - beta.sqrt() * eps) / alpha.sqrt() + later * sigma2.sqrt() * z),
            ("the ε coefficient divides by (1 − ᾱ_t); it should divide by √(1 − ᾱ_t).",
             lambda: (x_t - beta / (1 - ab) * eps) / alpha.sqrt() + later * sigma2.sqrt() * z),
            ("the bracket is not divided by √α_t.",
             lambda: (x_t - beta / (1 - ab).sqrt() * eps) + later * sigma2.sqrt() * z),
            ("the bracket is divided by √ᾱ_t; the DDPM mean divides by the one-step √α_t.",
             lambda: (x_t - beta / (1 - ab).sqrt() * eps) / ab.sqrt() + later * sigma2.sqrt() * z),
            ("only the noise term should be masked at t = 0; the mean is needed for every image.",
             lambda: later * (mean + sigma2.sqrt() * z)),
        ])

    moved = [tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args) for args in inputs]
    return compare(fn, reference, moved, name="ddpm_step", atol=1e-5, diagnose=diagnose, devices=[str(device)])

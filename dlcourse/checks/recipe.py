"""Self-checks for the recipe's formulas (lesson 03): the v target, x̂0 from v, the min-SNR-γ weight and one
DPM-Solver++ (2M) step.

Each check runs the learner's function next to the library (``Schedule.v_target``, ``Schedule.x0_from_v``,
``losses.min_snr_weight``, ``sampling.dpm_solver_pp_2m_step``) and, on a mismatch, looks the output up among
the wrong variants of the formula to name the slip.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from dlcourse.losses import min_snr_weight
from dlcourse.sampling import dpm_solver_pp_2m_step
from dlcourse.schedules import Schedule
from dlcourse.validation import describe, fail

from .core import CheckResult, Slip, compare
from .schedules import _schedules, _shape_hint
from .variants import Factor, Formula, Term, neighbours, schedule_coefficients

__all__ = ["check_v_target", "check_x0_from_v", "check_min_snr_weight", "check_dpm_solver_pp_2m_step",
           "V_TARGET", "X0_FROM_V", "v_target_slips", "x0_from_v_slips", "min_snr_weight_slips",
           "dpm_solver_pp_2m_step_slips"]

V_TARGET = Formula("v = √ᾱ_t·ε − √(1 − ᾱ_t)·x0", (
    Term("the ε term", (Factor("ᾱ_t", 0.5),), "ε"),
    Term("the x0 term", (Factor("1 − ᾱ_t", 0.5),), "x0", sign=-1),
))
X0_FROM_V = Formula("x̂0 = √ᾱ_t·x_t − √(1 − ᾱ_t)·v", (
    Term("the x_t term", (Factor("ᾱ_t", 0.5),), "x_t"),
    Term("the v term", (Factor("1 − ᾱ_t", 0.5),), "v", sign=-1),
))


def _roots(schedule: Schedule, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ_t, √(1 − ᾱ_t)) per sample, shaped (N, 1, …, 1) like ``like``, in float64."""
    ab = schedule_coefficients(schedule, t)["ᾱ_t"].to(like.device).reshape(-1, *([1] * (like.dim() - 1)))
    return ab.sqrt(), (1 - ab).sqrt()


def v_target_slips(schedule: Schedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> list[Slip]:
    """Other targets mistaken for v (−v, ε and x0 swapped, x_t, flow matching's ε − x0), then the neighbours of
    v = √ᾱ_t·ε − √(1 − ᾱ_t)·x0, on these inputs."""
    a, b = _roots(schedule, t, x0)
    x0, eps = x0.double(), noise.double()

    def out(value: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: value().to(noise.dtype)

    return [Slip(f"your v has the opposite sign (√(1 − ᾱ_t)·x0 − √ᾱ_t·ε): {V_TARGET.text}.",
                 out(lambda: b * x0 - a * eps)),
            Slip(f"ε and x0 are swapped: the √ᾱ_t goes with the noise ε, the √(1 − ᾱ_t) with x0: {V_TARGET.text}.",
                 out(lambda: a * x0 - b * eps)),
            Slip(f"that is x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε (q_sample), not the v target: {V_TARGET.text}.",
                 out(lambda: a * x0 + b * eps)),
            Slip(f"that is flow matching's velocity ε − x0; v weights the two by √ᾱ_t and √(1 − ᾱ_t): "
                 f"{V_TARGET.text}.", out(lambda: eps - x0)),
            *neighbours(V_TARGET, lambda steps: schedule_coefficients(schedule, steps), t, {"x0": x0, "ε": eps},
                        noise, T=schedule.T)]


def _inputs(seed: int, names: tuple[str, str]) -> list[tuple]:
    """(schedule, first, second, t) on both check schedules, t covering T − 1, 0 and 1; ``names`` says which of the
    two tensors are images in [−1, 1] ("x0") and which standard normal."""
    gen = torch.Generator().manual_seed(seed)
    float32, float64 = _schedules()
    inputs = []
    for (n, c, size), schedule in zip(((4, 3, 8), (3, 1, 5), (6, 3, 4)), (float32, float64, float64)):
        t = torch.randint(2, schedule.T - 1, (n,), generator=gen)
        t[:3] = torch.tensor([schedule.T - 1, 0, 1])
        pair = [torch.rand(n, c, size, size, generator=gen, dtype=schedule.dtype) * 2 - 1 if name == "x0" else
                torch.randn(n, c, size, size, generator=gen, dtype=schedule.dtype) for name in names]
        inputs.append((schedule, *pair, t))
    return inputs


def _diagnose(student_out, reference_out, args):
    return _shape_hint(student_out)


def check_v_target(fn: Callable) -> CheckResult:
    """``fn(schedule, x0, noise, t) -> v`` with v = √ᾱ_t ε − √(1 − ᾱ_t) x0 (Salimans & Ho 2022).

    The signature of :meth:`Schedule.v_target` with the schedule as first argument; x0 and noise N×C×H×W, t a long
    tensor (N,); run on two schedules (float32, float64) with t = T − 1, 0 and 1 among the steps. The tolerance
    (1e-4 + 1e-3·|v|) lets rearranged forms that divide by √ᾱ_(T−1) ≈ 0.005 in float32 pass.
    """
    if not callable(fn):
        raise fail("fn", "your v_target function", describe(fn))

    def reference(schedule, x0, noise, t):
        return schedule.v_target(x0, noise, t)

    return compare(fn, reference, _inputs(11, ("x0", "ε")), name="v_target", atol=1e-4, rtol=1e-3, diagnose=_diagnose,
                   slips=lambda args: v_target_slips(*args))


def x0_from_v_slips(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> list[Slip]:
    """ε from v, and v put into the ε-formula for x̂0, then the neighbours of x̂0 = √ᾱ_t·x_t − √(1 − ᾱ_t)·v."""
    a, b = _roots(schedule, t, x_t)
    x, vel = x_t.double(), v.double()

    def out(value: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: value().to(x_t.dtype)

    return [Slip(f"that is ε = √(1 − ᾱ_t)·x_t + √ᾱ_t·v, the noise the v implies, not x̂0: {X0_FROM_V.text}.",
                 out(lambda: b * x + a * vel)),
            Slip(f"(x_t − √(1 − ᾱ_t)·v)/√ᾱ_t treats v as if it were ε; from v, {X0_FROM_V.text} "
                 "(substitute x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε and v = √ᾱ_t·ε − √(1 − ᾱ_t)·x0, use ᾱ_t + (1 − ᾱ_t) = 1).",
                 out(lambda: (x - b * vel) / a)),
            *neighbours(X0_FROM_V, lambda steps: schedule_coefficients(schedule, steps), t, {"x_t": x, "v": vel},
                        x_t, T=schedule.T)]


def check_x0_from_v(fn: Callable) -> CheckResult:
    """``fn(schedule, x_t, t, v) -> x̂0`` with x̂0 = √ᾱ_t x_t − √(1 − ᾱ_t) v (:meth:`Schedule.x0_from_v` with the
    schedule as first argument), on the inputs of :func:`check_v_target`."""
    if not callable(fn):
        raise fail("fn", "your x0_from_v function", describe(fn))

    def reference(schedule, x_t, t, v):
        return schedule.x0_from_v(x_t, t, v)

    inputs = [(schedule, x_t, t, v) for schedule, x_t, v, t in _inputs(12, ("ε", "ε"))]
    return compare(fn, reference, inputs, name="x0_from_v", atol=1e-4, rtol=1e-3, diagnose=_diagnose,
                   slips=lambda args: x0_from_v_slips(*args))


# ---- min-SNR-γ ----------------------------------------------------------------------------------------

WEIGHT_TEXT = {"eps": "min(SNR_t, γ)/SNR_t", "v": "min(SNR_t, γ)/(SNR_t + 1)", "x0": "min(SNR_t, γ)"}


def _forms(snr: torch.Tensor, capped: torch.Tensor) -> dict[str, torch.Tensor]:
    """The weight of each prediction's loss for an SNR and its capped value (min(SNR_t, γ) when right)."""
    return {"eps": capped / snr, "v": capped / (snr + 1), "x0": capped}


def min_snr_weight_slips(snr: torch.Tensor, gamma: float, prediction: str) -> list[Slip]:
    """The usual wrong weights for ``prediction`` on these inputs: max for min, another prediction's form, the
    ratio upside down, the cap left out or used alone, γ or the SNR inverted, a square root of the SNR, and the
    precedence slip min/SNR + 1."""
    right = f"for {prediction}-prediction w = {WEIGHT_TEXT[prediction]}"
    s = snr.double()

    def out(value: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: value().to(snr.dtype)

    slips = [Slip(f"min, not max: the SNR is capped at γ, snr.clamp(max=gamma) (clamp(min=gamma) is max(SNR_t, γ)); "
                  f"{right}.", out(lambda: _forms(s, s.clamp(min=gamma))[prediction]))]
    slips += [Slip(f"that is the {other}-prediction weight {WEIGHT_TEXT[other]}; {right} (each prediction's error "
                   "is the x̂0 error times its own factor: SNR_t for ε, SNR_t + 1 for v, 1 for x0).",
                   out(lambda other=other: _forms(s, s.clamp(max=gamma))[other]))
              for other in WEIGHT_TEXT if other != prediction]
    slips += [Slip(f"your weight is turned upside down; {right}.",
                   out(lambda: 1 / _forms(s, s.clamp(max=gamma))[prediction])),
              Slip(f"γ is missing: the weight does not cap anything (for ε that is the uniform weight 1); {right}.",
                   out(lambda: _forms(s, s)[prediction])),
              Slip(f"the min is missing: γ alone stands where min(SNR_t, γ) belongs, right only where SNR_t > γ; "
                   f"{right}.",
                   out(lambda: _forms(s, torch.full_like(s, gamma))[prediction])),
              Slip(f"γ is inverted: the cap is γ itself (Hang et al. use γ = 5), not 1/γ; {right}.",
                   out(lambda: _forms(s, s.clamp(max=1 / gamma))[prediction])),
              Slip(f"the SNR is inverted: SNR_t = ᾱ_t/(1 − ᾱ_t) is the snr you are given, large at small t; {right}.",
                   out(lambda: _forms(1 / s, (1 / s).clamp(max=gamma))[prediction])),
              Slip(f"SNR_t = ᾱ_t/(1 − ᾱ_t) is a ratio of variances, with no square root (√SNR_t = √ᾱ_t/√(1 − ᾱ_t)); "
                   f"{right}.", out(lambda: _forms(s.sqrt(), s.sqrt().clamp(max=gamma))[prediction]))]
    if prediction == "eps":
        slips.append(Slip(f"divide by SNR_t, not by γ; {right}.", out(lambda: s.clamp(max=gamma) / gamma)))
    if prediction == "v":
        slips.append(Slip(f"operator precedence: min(SNR_t, γ)/SNR_t + 1 divides first and adds 1 after; write "
                          f"clipped / (snr + 1): {right}.", out(lambda: s.clamp(max=gamma) / s + 1)))
    return slips


def check_min_snr_weight(fn: Callable) -> CheckResult:
    """``fn(snr, gamma, prediction) -> w``, the min-SNR-γ weight of each prediction's loss (Hang et al. 2023):
    ε: min(SNR_t, γ)/SNR_t, v: min(SNR_t, γ)/(SNR_t + 1), x0: min(SNR_t, γ) (``dlcourse.losses.min_snr_weight``).

    Run on the SNR_t of every step of two schedules (float32, float64, SNR from about 10⁻⁵ to 10³), γ = 5, 1, 20, 2.
    """
    if not callable(fn):
        raise fail("fn", "your min_snr_weight function", describe(fn))
    float32, float64 = _schedules()
    inputs = [(float32.snr, 5.0, "eps"), (float64.snr, 1.0, "eps"), (float32.snr, 5.0, "v"), (float64.snr, 20.0, "v"),
              (float32.snr, 5.0, "x0"), (float64.snr, 2.0, "x0")]
    return compare(fn, min_snr_weight, inputs, name="min_snr_weight", diagnose=_diagnose,
                   slips=lambda args: min_snr_weight_slips(*args))


# ---- DPM-Solver++ (2M) --------------------------------------------------------------------------------

DPM_STEP_TEXT = ("x_next = (σ_next/σ_t)·x_t − α_next·(e^(−h) − 1)·D, h = λ_next − λ_t, λ = log(α/σ), α = √ᾱ, "
                 "σ = √(1 − ᾱ); D = x̂0 (first order) or (1 + 1/(2r))·x̂0 − 1/(2r)·x̂0_prev, r = (λ_t − λ_prev)/h")


def dpm_solver_pp_2m_step_slips(schedule: Schedule, x_t: torch.Tensor, t: int, t_next: int, x0_pred: torch.Tensor,
                                x0_prev: torch.Tensor | None = None, t_prev: int | None = None) -> list[Slip]:
    """The usual wrong DPM-Solver++ (2M) steps on these inputs: in the x_t factor, the x̂0 factor, h and λ, the
    second-order D, and ᾱ = alpha_bars[−1] at the last step."""
    ab = schedule.alpha_bars.detach().cpu().double()
    x, x0 = x_t.double(), x0_pred.double()
    prev = None if x0_prev is None else x0_prev.double()

    def step(ab_t: float, ab_next: float, *, root: bool = True, x_factor: str = "σ", x0_alpha: str = "next",
             h_sign: float = 1.0, minus_one: bool = True, x0_sign: float = -1.0, d_part=None) -> torch.Tensor:
        """The step from ᾱ_t to ᾱ_next with one part changed: the x_t factor ("σ", "σ inverted", "α"), α_t for
        α_next, h's sign, e^(−h) without −1, the sign of the x̂0 term; ``d_part(r)`` the second-order D."""
        power = 0.5 if root else 1.0
        a, s, a_n, s_n = ab_t ** power, (1 - ab_t) ** power, ab_next ** power, (1 - ab_next) ** power
        lam, lam_n = math.log(a / s), math.log(a_n / s_n)
        h = h_sign * (lam_n - lam)
        d = x0
        if prev is not None:
            ab_p = float(ab[t_prev])
            lam_p = math.log(ab_p ** power / (1 - ab_p) ** power)
            r = (lam - lam_p) / (lam_n - lam)
            d = (d_part or (lambda r: (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev))(r)
        factor = {"σ": s_n / s, "σ inverted": s / s_n, "α": a_n / a}[x_factor]
        exponential = math.expm1(-h) if minus_one else math.exp(-h)
        return factor * x + x0_sign * (a_n if x0_alpha == "next" else a) * exponential * d

    def out(**change) -> Callable[[], torch.Tensor]:
        return lambda: step(float(ab[t]), float(ab[t_next]), **change).to(x_t.dtype)

    if t_next == -1:
        return [Slip("at t_next = −1 (the clean image, ᾱ = 1) the step returns x̂0: alpha_bars[-1] is the LAST entry, "
                     "ᾱ_(T−1), so the last step must not index alpha_bars.",
                     lambda: step(float(ab[t]), float(ab[-1])).to(x_t.dtype))]
    slips = [Slip(f"x_t is scaled by σ_next/σ_t in DPM-Solver++, which steps with x̂0; α_next/α_t is the factor of "
                  f"the ε form: {DPM_STEP_TEXT}.", out(x_factor="α")),
             Slip(f"σ_next/σ_t is turned upside down: {DPM_STEP_TEXT}.", out(x_factor="σ inverted")),
             Slip(f"the x̂0 term has α_t where it needs α_next = √ᾱ_(t_next): {DPM_STEP_TEXT}.", out(x0_alpha="t")),
             Slip(f"h has the wrong sign: h = λ_next − λ_t > 0 (λ grows as the noise falls), so e^(−h) − 1 < 0: "
                  f"{DPM_STEP_TEXT}.", out(h_sign=-1.0)),
             Slip(f"the x̂0 term has the wrong sign (with e^(−h) − 1 < 0 it must add a positive share of x̂0): "
                  f"{DPM_STEP_TEXT}.", out(x0_sign=1.0)),
             Slip(f"the − 1 is missing: the factor is e^(−h) − 1 (math.expm1(-h)), not e^(−h): {DPM_STEP_TEXT}.",
                  out(minus_one=False)),
             Slip(f"every square root is missing: α = √ᾱ and σ = √(1 − ᾱ), so λ = log(α/σ) = ½·log SNR: "
                  f"{DPM_STEP_TEXT}.", out(root=False))]
    if prev is not None:
        slips += [Slip(f"the second-order correction is missing: given x̂0_prev, D replaces x̂0: {DPM_STEP_TEXT}.",
                       out(d_part=lambda r: x0)),
                  Slip(f"x̂0 and x̂0_prev are swapped in D: the newer prediction x̂0 gets 1 + 1/(2r): {DPM_STEP_TEXT}.",
                       out(d_part=lambda r: (1 + 1 / (2 * r)) * prev - 1 / (2 * r) * x0)),
                  Slip(f"D has 1/r where it needs 1/(2r): {DPM_STEP_TEXT}.",
                       out(d_part=lambda r: (1 + 1 / r) * x0 - 1 / r * prev)),
                  Slip(f"r is turned upside down: r = (λ_t − λ_prev)/h, the last step's length over this one's: "
                       f"{DPM_STEP_TEXT}.", out(d_part=lambda r: (1 + r / 2) * x0 - r / 2 * prev)),
                  Slip(f"D's correction has the wrong sign: r = (λ_t − λ_prev)/h > 0 and D = (1 + 1/(2r))·x̂0 − "
                       f"1/(2r)·x̂0_prev: {DPM_STEP_TEXT}.",
                       out(d_part=lambda r: (1 - 1 / (2 * r)) * x0 + 1 / (2 * r) * prev))]
    return slips


def _dpm_hint(student_out, reference_out, args) -> str | None:
    """At t_next = −1 (λ = ∞) an error or NaN means the formula was applied where the step must return x̂0."""
    t_next = args[3]
    broke = isinstance(student_out, Exception) or (isinstance(student_out, torch.Tensor)
                                                   and not bool(torch.isfinite(student_out).all()))
    if broke and t_next == -1:
        return ("at t_next = −1 (the clean image: ᾱ = 1, σ = 0, λ = ∞) return x̂0 itself, the limit of the first-order "
                "step; the second-order D has r = 0 there.")
    if broke:
        return "your output has NaN or inf: λ = log(α/σ) with α = √ᾱ_t and σ = √(1 − ᾱ_t), both in (0, 1) for t ≥ 0."
    return _shape_hint(student_out)


def check_dpm_solver_pp_2m_step(fn: Callable) -> CheckResult:
    """``fn(schedule, x_t, t, t_next, x0_pred, x0_prev=None, t_prev=None) -> x_next``, one DPM-Solver++ (2M) step
    (:func:`dlcourse.sampling.dpm_solver_pp_2m_step`): first order without ``x0_prev``, second order with the x̂0
    of the step before, and x̂0 itself at t_next = −1. t, t_next, t_prev are ints.

    Run on two schedules (float32, float64): long and short jumps, the first step from T − 1, and the last step.
    """
    if not callable(fn):
        raise fail("fn", "your dpm_solver_pp_2m_step function", describe(fn))
    gen = torch.Generator().manual_seed(13)
    float32, float64 = _schedules()

    def case(schedule: Schedule, t: int, t_next: int, t_prev: int | None = None):
        x_t, x0, x0_prev = (torch.randn(3, 3, 4, 4, generator=gen, dtype=schedule.dtype).clamp(-2, 2) for _ in range(3))
        return schedule, x_t, t, t_next, x0.clamp(-1, 1), None if t_prev is None else x0_prev.clamp(-1, 1), t_prev

    T32, T64 = float32.T, float64.T
    inputs = [case(float32, T32 - 1, T32 // 2), case(float64, T64 // 3, T64 // 3 - 3),
              case(float32, 3 * T32 // 4, T32 // 2, T32 - 1), case(float64, 15, 5, 20), case(float32, 7, 6, 10),
              case(float32, 4, -1), case(float64, 3, -1, 8)]
    return compare(fn, dpm_solver_pp_2m_step, inputs, name="dpm_solver_pp_2m_step", atol=1e-4, devices=["cpu"],
                   diagnose=_dpm_hint, slips=lambda args: dpm_solver_pp_2m_step_slips(*args))

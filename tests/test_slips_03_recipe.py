"""Slip catalogue, lesson 03's recipe section: the v target, x̂0 from v, the min-SNR-γ weight, a DPM-Solver++ (2M)
step. Each slip a student writes gets the hint that names it, first; right answers, rearranged ones too, pass."""
from __future__ import annotations

import math

import pytest
import torch

from dlcourse.checks import check_dpm_solver_pp_2m_step, check_min_snr_weight, check_v_target, check_x0_from_v
from dlcourse.losses import min_snr_weight
from dlcourse.sampling import dpm_solver_pp_2m_step
from dlcourse.schedules import Schedule

from slip_support import assert_named, assert_passes


def roots(schedule, t, slip=None):
    """(√ᾱ_t, √(1 − ᾱ_t)) per image, or a slip's."""
    alpha_bars = schedule.alpha_bars
    ab = {"t - 1": alpha_bars[t - 1], "first image": alpha_bars[t[:1]].expand(len(t))}.get(slip, alpha_bars[t])
    if slip == "alpha":
        ab = schedule.alphas[t]
    shape = (1, 1, 1, -1) if slip == "last axis" else (-1, 1, 1, 1)
    ab = ab.view(shape)
    if slip == "no roots":
        return ab, 1 - ab
    return ab.sqrt(), (1 - ab.sqrt() if slip == "1 - sqrt" else (1 - ab).sqrt())


# ---- v_target ----------------------------------------------------------------------------------------

def v_target(schedule, x0, noise, t, slip=None):
    a, b = roots(schedule, t, slip)
    return {"minus v": lambda: b * x0 - a * noise, "swapped": lambda: a * x0 - b * noise,
            "q_sample": lambda: a * x0 + b * noise, "flow": lambda: noise - x0,
            "plus": lambda: a * noise + b * x0, "coefficients swapped": lambda: b * noise - a * x0,
            "beta": lambda: a * noise - schedule.betas[t].view(-1, 1, 1, 1).sqrt() * x0,
            }.get(slip, lambda: a * noise - b * x0)()


@pytest.mark.parametrize("slip, hint", [
    ("minus v", "your v has the opposite sign"),
    ("swapped", "ε and x0 are swapped"),
    ("q_sample", "that is x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε (q_sample)"),
    ("flow", "that is flow matching's velocity ε − x0"),
    ("plus", "the x0 term has the wrong sign"),
    ("coefficients swapped", "the coefficients of the ε term and the x0 term are swapped"),
    ("no roots", "every square root is missing"),
    ("1 - sqrt", "the square root goes over the whole 1 − ᾱ_t"),
    ("alpha", "you used α_t throughout where the formula has ᾱ_t"),
    ("beta", "the x0 term has √β_t where it needs √(1 − ᾱ_t)"),
    ("t - 1", "off by one: the coefficients are looked up at t − 1"),
    ("first image", "every image used the first image's coefficients"),
    ("last axis", "reshape it to (N, 1, 1, 1)"),
])
def test_v_target_slip(slip, hint, capsys):
    assert_named(check_v_target, lambda *a: v_target(*a, slip=slip), hint, capsys)


def v_target_through_convert(schedule, x0, noise, t):
    """Right: the ε-prediction's output turned into v by the library."""
    return schedule.convert(schedule.q_sample(x0, t, noise), t, noise, "eps", "v")


def v_target_from_x_t(schedule, x0, noise, t):
    """Right, rearranged: v = (ε − √(1 − ᾱ_t)·x_t)/√ᾱ_t, since x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε."""
    a, b = roots(schedule, t)
    return (noise - b * schedule.q_sample(x0, t, noise)) / a


@pytest.mark.parametrize("fn", [v_target, v_target_through_convert, v_target_from_x_t, Schedule.v_target])
def test_v_target_right_answers(fn, capsys):
    assert_passes(check_v_target, fn, capsys)


# ---- x0_from_v -----------------------------------------------------------------------------------------

def x0_from_v(schedule, x_t, t, v, slip=None):
    a, b = roots(schedule, t, slip)
    return {"eps": lambda: b * x_t + a * v, "as if eps": lambda: (x_t - b * v) / a,
            "plus": lambda: a * x_t + b * v, "coefficients swapped": lambda: b * x_t - a * v,
            "x_t only": lambda: a * x_t, "divide": lambda: x_t / a - b * v,
            }.get(slip, lambda: a * x_t - b * v)()


@pytest.mark.parametrize("slip, hint", [
    ("eps", "that is ε = √(1 − ᾱ_t)·x_t + √ᾱ_t·v"),
    ("as if eps", "treats v as if it were ε"),
    ("plus", "the v term has the wrong sign"),
    ("coefficients swapped", "the coefficients of the x_t term and the v term are swapped"),
    ("x_t only", "the v term is missing"),
    ("divide", "the x_t term has 1/√ᾱ_t where it needs √ᾱ_t"),
    ("no roots", "every square root is missing"),
    ("alpha", "you used α_t throughout where the formula has ᾱ_t"),
    ("t - 1", "off by one"),
    ("last axis", "reshape it to (N, 1, 1, 1)"),
])
def test_x0_from_v_slip(slip, hint, capsys):
    assert_named(check_x0_from_v, lambda *a: x0_from_v(*a, slip=slip), hint, capsys)


def x0_from_v_by_elimination(schedule, x_t, t, v):
    """Right, rearranged: ε = √(1 − ᾱ_t)·x_t + √ᾱ_t·v first, then x̂0 = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t."""
    a, b = roots(schedule, t)
    return (x_t - b * (b * x_t + a * v)) / a


@pytest.mark.parametrize("fn", [x0_from_v, x0_from_v_by_elimination, Schedule.x0_from_v])
def test_x0_from_v_right_answers(fn, capsys):
    assert_passes(check_x0_from_v, fn, capsys)


# ---- min_snr_weight -------------------------------------------------------------------------------------

def weight(snr, gamma=5.0, prediction="eps", slip=None):
    s = {"snr inverted": 1 / snr, "sqrt snr": snr.sqrt()}.get(slip, snr)
    capped = {"max": s.clamp(min=gamma), "no cap": s, "gamma only": torch.full_like(s, gamma),
              "gamma inverted": s.clamp(max=1 / gamma)}.get(slip, s.clamp(max=gamma))
    form = {"eps form": "eps", "v form": "v", "x0 form": "x0"}.get(slip, prediction)
    if slip == "over gamma":
        return capped / gamma
    if slip == "precedence":
        return capped / s + 1
    w = {"eps": capped / s, "v": capped / (s + 1), "x0": capped}[form]
    return 1 / w if slip == "upside down" else w


@pytest.mark.parametrize("slip, prediction, hint", [
    ("max", "eps", "min, not max"),
    ("upside down", "eps", "your weight is turned upside down"),
    ("no cap", "eps", "γ is missing"),
    ("gamma only", "eps", "the min is missing"),
    ("gamma inverted", "eps", "γ is inverted"),
    ("snr inverted", "eps", "the SNR is inverted"),
    ("sqrt snr", "eps", "a ratio of variances, with no square root"),
    ("over gamma", "eps", "divide by SNR_t, not by γ"),
    ("x0 form", "eps", "that is the x0-prediction weight min(SNR_t, γ); for eps-prediction"),
    ("v form", "eps", "that is the v-prediction weight"),
    ("eps form", "v", "that is the eps-prediction weight min(SNR_t, γ)/SNR_t; for v-prediction"),
    ("precedence", "v", "operator precedence"),
    ("max", "v", "min, not max"),
    ("eps form", "x0", "that is the eps-prediction weight"),
    ("no cap", "x0", "γ is missing"),
])
def test_min_snr_weight_slip(slip, prediction, hint, capsys):
    def student(snr, gamma=5.0, p="eps"):
        return weight(snr, gamma, p, slip if p == prediction else None)

    assert_named(check_min_snr_weight, student, hint, capsys)


def weight_as_ratio_cap(snr, gamma=5.0, prediction="eps"):
    """Right, rearranged: min(SNR, γ)/SNR = min(1, γ/SNR), and /(SNR + 1) = that times SNR/(SNR + 1)."""
    eps = torch.clamp(gamma / snr, max=1.0)
    return {"eps": eps, "v": eps * snr / (snr + 1), "x0": eps * snr}[prediction]


def weight_with_minimum(snr, gamma=5.0, prediction="eps"):
    """Right: torch.minimum against a γ tensor of the SNR's dtype."""
    capped = torch.minimum(snr, torch.tensor(gamma, dtype=snr.dtype))
    return capped / {"eps": snr, "v": snr + 1, "x0": torch.ones_like(snr)}[prediction]


@pytest.mark.parametrize("fn", [weight, weight_as_ratio_cap, weight_with_minimum, min_snr_weight])
def test_min_snr_weight_right_answers(fn, capsys):
    assert_passes(check_min_snr_weight, fn, capsys)


# ---- dpm_solver_pp_2m_step ----------------------------------------------------------------------------

def dpm_step(schedule, x_t, t, t_next, x0_pred, x0_prev=None, t_prev=None, slip=None):
    def alpha_sigma(step):
        if step == -1 and slip != "alpha_bars[-1]":
            return 1.0, 0.0
        ab = float(schedule.alpha_bars[step])
        return (ab, 1 - ab) if slip == "no roots" else (math.sqrt(ab), math.sqrt(1 - ab))

    if t_next == -1 and slip != "alpha_bars[-1]":
        return x0_pred
    (a, s), (a_next, s_next) = alpha_sigma(t), alpha_sigma(t_next)
    lam = math.log(a / s)
    lam_next = math.log(a_next / s_next) if s_next > 0 else math.inf
    h = lam - lam_next if slip == "h sign" else lam_next - lam
    d = x0_pred
    if x0_prev is not None and slip != "first order only":
        a_prev, s_prev = alpha_sigma(t_prev)
        r = (lam - math.log(a_prev / s_prev)) / (lam_next - lam)
        k = {"1/r": 1 / r, "r inverted": r / 2, "D sign": -1 / (2 * r)}.get(slip, 1 / (2 * r))
        newer, older = (x0_prev, x0_pred) if slip == "D swapped" else (x0_pred, x0_prev)
        d = (1 + k) * newer - k * older
    factor = {"alpha ratio": a_next / a, "sigma inverted": s / s_next}.get(slip, s_next / s)
    x0_alpha = a if slip == "alpha_t" else a_next
    exponential = math.exp(-h) if slip == "no minus one" else math.expm1(-h)
    sign = 1 if slip == "x0 sign" else -1
    return factor * x_t + sign * x0_alpha * exponential * d


@pytest.mark.parametrize("slip, hint", [
    ("alpha ratio", "x_t is scaled by σ_next/σ_t in DPM-Solver++"),
    ("sigma inverted", "σ_next/σ_t is turned upside down"),
    ("alpha_t", "the x̂0 term has α_t where it needs α_next"),
    ("h sign", "h has the wrong sign"),
    ("x0 sign", "the x̂0 term has the wrong sign"),
    ("no minus one", "the − 1 is missing"),
    ("no roots", "every square root is missing"),
    ("first order only", "the second-order correction is missing"),
    ("D swapped", "x̂0 and x̂0_prev are swapped in D"),
    ("1/r", "D has 1/r where it needs 1/(2r)"),
    ("r inverted", "r is turned upside down"),
    ("D sign", "D's correction has the wrong sign"),
    ("alpha_bars[-1]", "alpha_bars[-1] is the LAST entry"),
])
def test_dpm_solver_pp_2m_step_slip(slip, hint, capsys):
    assert_named(check_dpm_solver_pp_2m_step, lambda *a: dpm_step(*a, slip=slip), hint, capsys)


def dpm_step_nan_at_the_end(schedule, x_t, t, t_next, x0_pred, x0_prev=None, t_prev=None):
    """Wrong: the second-order formula taken literally into σ = 0 (λ = ∞) gives NaN there."""
    ab = schedule.alpha_bars.double()
    ab_next = ab[t_next] if t_next >= 0 else torch.tensor(1.0, dtype=torch.float64)
    lam = lambda a2: torch.log(a2.sqrt() / (1 - a2).sqrt())  # noqa: E731
    h = lam(ab_next) - lam(ab[t])
    d = x0_pred
    if x0_prev is not None:
        r = (lam(ab[t]) - lam(ab[t_prev])) / h
        d = (1 + 1 / (2 * r)) * x0_pred - 1 / (2 * r) * x0_prev
    out = ((1 - ab_next) / (1 - ab[t])).sqrt() * x_t - ab_next.sqrt() * torch.expm1(-h) * d
    return out.to(x_t.dtype)


def test_dpm_solver_step_nan_at_the_last_step_is_named(capsys):
    assert_named(check_dpm_solver_pp_2m_step, dpm_step_nan_at_the_end, "at t_next = −1 (the clean image", capsys)


def dpm_step_as_ddim_plus_correction(schedule, x_t, t, t_next, x0_pred, x0_prev=None, t_prev=None):
    """Right, rearranged: σ_next/σ_t = e^(−h)·α_next/α_t, so x_next = α_next·(e^(−h)·x_t/α_t + (1 − e^(−h))·D),
    in torch."""
    if t_next == -1:
        return x0_pred
    ab = schedule.alpha_bars.double()
    lam = 0.5 * (ab / (1 - ab)).log()  # λ = ½ log SNR
    h = lam[t_next] - lam[t]
    d = x0_pred
    if x0_prev is not None:
        r = (lam[t] - lam[t_prev]) / h
        d = x0_pred + (x0_pred - x0_prev) / (2 * r)
    decay = torch.exp(-h)
    return (ab[t_next].sqrt() * (decay * x_t / ab[t].sqrt() + (1 - decay) * d)).to(x_t.dtype)


@pytest.mark.parametrize("fn", [dpm_step, dpm_step_as_ddim_plus_correction, dpm_solver_pp_2m_step])
def test_dpm_solver_pp_2m_step_right_answers(fn, capsys):
    assert_passes(check_dpm_solver_pp_2m_step, fn, capsys)

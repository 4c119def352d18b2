"""Slip catalogue, the assessment: its self-checks go through dlcourse.checks and name each slip like the lessons'."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch

from dlcourse.checks import (check_drop_context, check_forward_coefficients, check_guided_eps,
                             check_q_sample_from_alpha_bars, check_reverse_step)

from slip_support import assert_named, assert_passes

MASTER = Path(__file__).resolve().parents[1] / "assessments" / "assessment.solution.ipynb"


def test_every_assessment_exercise_is_followed_by_a_dlcourse_check():
    cells = nbformat.read(MASTER, as_version=4).cells
    exercises = [i for i, cell in enumerate(cells)
                 if any(tag.startswith("exercise:") for tag in cell.metadata.get("tags", []))]
    assert len(exercises) == 5
    for i in exercises:
        name = next(tag for tag in cells[i].metadata["tags"] if tag.startswith("exercise:")).split(":")[1]
        following = cells[i + 1]
        assert following.cell_type == "code" and following.source.startswith("checks.check_"), (name, following.source)


# ---- forward_coefficients ------------------------------------------------------------------------

def coefficients(betas, slip=None):
    alphas = betas if slip == "alphas = betas" else 1 - betas
    running = {"cumsum": lambda: torch.cumsum(alphas, 0), "of betas": lambda: torch.cumprod(betas, 0),
               "no product": lambda: alphas.clone(), "one minus": lambda: 1 - torch.cumprod(alphas, 0),
               "total": lambda: alphas.prod().repeat(len(alphas)),
               "shifted": lambda: torch.cat([torch.ones(1, dtype=alphas.dtype), torch.cumprod(alphas, 0)[:-1]]),
               "sqrt": lambda: torch.cumprod(alphas.sqrt(), 0),
               "float32": lambda: torch.tensor(torch.cumprod(alphas, 0).tolist())}.get(
        slip, lambda: torch.cumprod(alphas, 0))()
    return (running, alphas) if slip == "swapped" else (alphas, running)


@pytest.mark.parametrize("slip, hint", [
    ("alphas = betas", "you returned β_t itself as alphas"),
    ("of betas", "the cumulative product of α = 1 − β, not of β"),
    ("cumsum", "not a running sum"),
    ("no product", "alpha_bars is alphas itself"),
    ("one minus", "alpha_bars is 1 − ∏α"),
    ("total", "the product of all α for every t"),
    ("shifted", "alpha_bars is shifted by one"),
    ("sqrt", "the running product of √α"),
    ("swapped", "the two outputs are swapped"),
    ("float32", "keep the dtype of the inputs"),
])
def test_forward_coefficients_slip(slip, hint, capsys):
    assert_named(check_forward_coefficients, lambda b: coefficients(b, slip), hint, capsys)


def coefficients_by_logs(betas):
    """Right: the running product through a running sum of logarithms."""
    alphas = 1 - betas
    return alphas, torch.exp(torch.cumsum(torch.log(alphas), dim=0))


@pytest.mark.parametrize("fn", [coefficients, coefficients_by_logs])
def test_forward_coefficients_right_answers(fn, capsys):
    assert_passes(check_forward_coefficients, fn, capsys)


# ---- q_sample(x0, t, noise, alpha_bars) ----------------------------------------------------------

def q_sample(x0, t, noise, alpha_bars, slip=None):
    ab = {"t - 1": alpha_bars[t - 1], "first t": alpha_bars[t[:1]].expand(len(t))}.get(slip, alpha_bars[t])
    ab = ab.reshape(-1, 1, 1, 1).to(x0.dtype)
    if slip == "not reshaped":
        ab = alpha_bars[t].to(x0.dtype)
    return {"abar unsquared": lambda: ab * x0 + (1 - ab).sqrt() * noise,
            "variance": lambda: ab.sqrt() * x0 + (1 - ab) * noise,
            "swapped": lambda: (1 - ab).sqrt() * x0 + ab.sqrt() * noise,
            "noise unscaled": lambda: ab.sqrt() * x0 + noise,
            "root inside": lambda: ab.sqrt() * x0 + (1 - ab.sqrt()) * noise,
            "minus": lambda: ab.sqrt() * x0 - (1 - ab).sqrt() * noise,
            }.get(slip, lambda: ab.sqrt() * x0 + (1 - ab).sqrt() * noise)()


@pytest.mark.parametrize("slip, hint", [
    ("abar unsquared", "the x0 term has ᾱ_t where it needs √ᾱ_t"),
    ("variance", "the noise term has (1 − ᾱ_t) where it needs √(1 − ᾱ_t)"),
    ("swapped", "are swapped"),
    ("noise unscaled", "the noise term is missing its factor √(1 − ᾱ_t)"),
    ("root inside", "the square root goes over the whole 1 − ᾱ_t"),
    ("minus", "the noise term has the wrong sign"),
    ("t - 1", "off by one"),
    ("first t", "every image used the first image's coefficients"),
    ("not reshaped", "reshape it to (N, 1, 1, 1)"),
])
def test_assessment_q_sample_slip(slip, hint, capsys):
    assert_named(check_q_sample_from_alpha_bars, lambda *a: q_sample(*a, slip=slip), hint, capsys)


def test_assessment_q_sample_right_answer(capsys):
    assert_passes(check_q_sample_from_alpha_bars, q_sample, capsys)


# ---- reverse_step(x_t, t, eps_pred, z, betas, alpha_bars) -----------------------------------------

def reverse_step(x_t, t, eps_pred, z, betas, alpha_bars, slip=None):
    def col(v):
        return v[t].reshape(-1, 1, 1, 1).to(x_t.dtype)

    beta, ab = col(betas), col(alpha_bars)
    alpha = ab if slip == "abar for alpha" else 1 - beta
    coefficient = {"sqrt beta": beta.sqrt(), "sqrt(1 - abar)": (1 - ab).sqrt()}.get(slip, beta / (1 - ab).sqrt())
    mean = (x_t - coefficient * eps_pred) / (alpha if slip == "alpha unrooted" else alpha.sqrt())
    keep = {"always noise": torch.ones_like(t), "one-based": t > 1}.get(slip, t > 0).reshape(-1, 1, 1, 1).to(x_t.dtype)
    sigma = beta if slip == "variance as sigma" else beta.sqrt()
    if slip == "posterior variance":
        prev = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])[t].reshape(-1, 1, 1, 1).to(x_t.dtype)
        sigma = ((1 - prev) / (1 - ab) * beta).sqrt()
    if slip == "no noise":
        return mean
    return mean + keep * sigma * z


@pytest.mark.parametrize("slip, hint", [
    ("sqrt beta", "the coefficient √β_t where it needs β_t/√(1 − ᾱ_t)"),
    ("sqrt(1 - abar)", "the coefficient √(1 − ᾱ_t) where it needs β_t/√(1 − ᾱ_t)"),
    ("abar for alpha", "the mean has 1/√ᾱ_t where it needs 1/√α_t"),
    ("alpha unrooted", "the mean has 1/α_t where it needs 1/√α_t"),
    ("always noise", "the last step, t = 0, adds no noise"),
    ("one-based", "mask with (t > 0), not (t > 1)"),
    ("variance as sigma", "the noise term has β_t where it needs √β_t"),
    ("posterior variance", "the noise term has √β̃_t where it needs √β_t"),
    ("no noise", "the noise term is missing"),
])
def test_reverse_step_slip(slip, hint, capsys):
    assert_named(check_reverse_step, lambda *a: reverse_step(*a, slip=slip), hint, capsys)


def test_reverse_step_right_answer(capsys):
    assert_passes(check_reverse_step, reverse_step, capsys)


# ---- drop_context(c, drop_prob, generator) --------------------------------------------------------

def drop_context(c, drop_prob, generator, slip=None):
    g = {"global rng": None, "own generator": torch.Generator().manual_seed(0)}.get(slip, generator)
    p = 0.1 if slip == "default p" else drop_prob
    u = torch.rand(1 if slip == "once" else c.shape[0], generator=g).expand(c.shape[0])
    keep = (u < p if slip == "inverted" else u >= p).to(c.dtype)
    if slip == "per entry":
        return c * (torch.rand(c.shape, generator=g) >= p).to(c.dtype)
    if slip == "mask only":
        return keep
    if slip == "bool mask":
        return c * (u >= p)[:, None]
    if slip == "rescaled":
        return c * keep[:, None] / (1 - p) if p < 1 else c * keep[:, None]
    return c * keep[:, None]


@pytest.mark.parametrize("slip, hint", [
    ("global rng", "draw with the generator you are given"),
    ("own generator", "not a fresh torch.Generator of your own"),
    ("default p", "the drop rate is always 0.1"),
    ("once", "PER SAMPLE"),
    ("inverted", "the mask is inverted"),
    ("per entry", "drop a row WHOLE"),
    ("mask only", "return the context itself with dropped rows zeroed"),
    ("rescaled", "drop a row WHOLE"),
])
def test_drop_context_slip(slip, hint, capsys):
    assert_named(check_drop_context, lambda *a: drop_context(*a, slip=slip), hint, capsys)


@pytest.mark.parametrize("fn", [drop_context, lambda *a: drop_context(*a, slip="bool mask"),
                                lambda c, p, g: torch.where((torch.rand(len(c), generator=g) < p)[:, None], 0.0, c)])
def test_drop_context_right_answers(fn, capsys):
    assert_passes(check_drop_context, fn, capsys)


# ---- guided_eps(model, x_t, t, c, w) --------------------------------------------------------------

def guided_eps(model, x_t, t, c, w, slip=None):
    n = x_t.shape[0]
    if slip == "two calls":
        return (1 + w) * model(x_t, t, c) - w * model(x_t, t, torch.zeros_like(c))
    null = c if slip == "real context" else torch.zeros_like(c)
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, null]))
    cond, uncond = eps[:n], eps[n:]
    return {"swapped": lambda: (1 + w) * uncond - w * cond, "diffusers": lambda: uncond + w * (cond - uncond),
            "cond only": lambda: cond, "all": lambda: eps, "plus": lambda: (1 + w) * cond + w * uncond,
            }.get(slip, lambda: (1 + w) * cond - w * uncond)()


@pytest.mark.parametrize("slip, hint", [
    ("two calls", "call it ONCE on a batch of 2N"),
    ("real context", "the second half must get the null context"),
    ("swapped", "w is applied to the wrong half"),
    ("diffusers", "guidance_scale = w"),
    ("cond only", "so w has no effect"),
    ("all", "split the 2N outputs"),
])
def test_guided_eps_slip(slip, hint, capsys):
    assert_named(check_guided_eps, lambda *a: guided_eps(*a, slip=slip), hint, capsys)


def guided_eps_with_mask(model, x_t, t, c, w):
    """Right, as the master writes it: the real context twice and a mask of n ones then n zeros."""
    n = x_t.shape[0]
    mask = torch.cat([x_t.new_ones(n), x_t.new_zeros(n)])
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, c]), mask)
    return (1 + w) * eps[:n] - w * eps[n:]


@pytest.mark.parametrize("fn", [guided_eps, guided_eps_with_mask])
def test_guided_eps_right_answers(fn, capsys):
    assert_passes(check_guided_eps, fn, capsys)

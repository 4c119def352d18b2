"""Self-checks for the assessment's exercises, through the same mechanism as the lessons'.

The assessment writes the lessons' formulas with its own signatures — coefficients passed as tensors instead
of a :class:`~dlcourse.schedules.Schedule`, a mask applied to the context, ε̃ returned directly — so each check
here adapts the lesson's catalogue of slips to that signature. References come from the library
(``dlcourse.schedules``, ``dlcourse.guidance``), never from the grader.
"""
from __future__ import annotations

from typing import Callable

import torch

from dlcourse.guidance import guided_eps_fn, one_hot
from dlcourse.schedules import Schedule, cosine_betas, linear_betas, scaled_linear_betas
from dlcourse.validation import describe, fail

from .core import CheckResult, Rung, Slip, climb, compare, run_student
from .guidance import RecordingEps, guided_call_rungs, guided_value_rungs, mask_rungs
from .schedules import _shape_hint, ddpm_step_slips, q_sample_slips

__all__ = ["check_forward_coefficients", "check_q_sample_from_alpha_bars", "check_reverse_step",
           "check_drop_context", "check_guided_eps"]

# the assessment's context: [one_hot(class, 5); one_hot(petal colour, 6)]
_CLASSES, _COLOURS = 5, 6


def _dtype_hint(student_out, reference_out, args) -> str | None:
    got = student_out if isinstance(student_out, (tuple, list)) else (student_out,)
    want = reference_out if isinstance(reference_out, (tuple, list)) else (reference_out,)
    if all(isinstance(v, torch.Tensor) for v in (*got, *want)) and any(
            g.dtype != w.dtype for g, w in zip(got, want)):
        return "keep the dtype of the inputs: compute from the tensors you are given (no torch.tensor(...) of floats)."
    return None


def forward_coefficient_slips(betas: torch.Tensor) -> list[Slip]:
    """(α, ᾱ) as the usual mistakes compute them."""
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    return [
        Slip("α_t = 1 − β_t; you returned β_t itself as alphas.", lambda: (betas, torch.cumprod(betas, 0))),
        Slip("ᾱ_t is the cumulative product of α = 1 − β, not of β: torch.cumprod(alphas, dim=0).",
             lambda: (alphas, torch.cumprod(betas, 0))),
        Slip("ᾱ_t is a running PRODUCT (torch.cumprod), not a running sum (torch.cumsum).",
             lambda: (alphas, torch.cumsum(alphas, 0))),
        Slip("alpha_bars is alphas itself: take the running product, torch.cumprod(alphas, dim=0).",
             lambda: (alphas, alphas)),
        Slip("alpha_bars is 1 − ∏α; ᾱ_t = ∏_{s≤t} α_s itself (the signal kept), torch.cumprod(alphas, dim=0).",
             lambda: (alphas, 1 - abar)),
        Slip("alpha_bars is shifted by one (ᾱ_(t−1), starting at 1): ᾱ_0 = α_0, so torch.cumprod(alphas, 0) as is.",
             lambda: (alphas, torch.cat([abar.new_ones(1), abar[:-1]]))),
        Slip("alpha_bars is the product of all α for every t: take the RUNNING product, torch.cumprod(alphas, 0).",
             lambda: (alphas, alphas.prod().expand_as(alphas))),
        Slip("alpha_bars is the running product of √α: ᾱ_t = ∏ α_s, no square root.",
             lambda: (alphas, torch.cumprod(alphas.sqrt(), 0))),
        Slip("the two outputs are swapped: return alphas, alpha_bars (in that order).", lambda: (abar, alphas)),
    ]


def check_forward_coefficients(fn: Callable) -> CheckResult:
    """``fn(betas) -> (alphas, alpha_bars)``: α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s, in the dtype of betas."""
    if not callable(fn):
        raise fail("fn", "your forward_coefficients function", describe(fn))

    def reference(betas):
        schedule = Schedule(betas, dtype=betas.dtype)
        return schedule.alphas, schedule.alpha_bars

    inputs = [(linear_betas(10).double(),), (cosine_betas(25).double(),), (scaled_linear_betas(7).float(),)]
    return compare(fn, reference, inputs, name="forward_coefficients", devices=["cpu"], diagnose=_dtype_hint,
                   slips=lambda args: forward_coefficient_slips(*args))


def _schedule_of(betas: torch.Tensor) -> Schedule:
    return Schedule(betas.cpu(), dtype=torch.float64 if betas.dtype == torch.float64 else torch.float32)


def _betas_of(alpha_bars: torch.Tensor) -> torch.Tensor:
    """β_t = 1 − ᾱ_t/ᾱ_(t−1), the schedule behind ᾱ."""
    ab = alpha_bars.detach().cpu().double()
    return 1 - ab / torch.cat([ab.new_ones(1), ab[:-1]])


def _check_schedules() -> list[Schedule]:
    return [Schedule(scaled_linear_betas(50)), Schedule(cosine_betas(40), dtype=torch.float64)]


def check_q_sample_from_alpha_bars(fn: Callable) -> CheckResult:
    """``fn(x0, t, noise, alpha_bars) -> x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε`` (the assessment's q_sample)."""
    if not callable(fn):
        raise fail("fn", "your q_sample function", describe(fn))
    g = torch.Generator().manual_seed(1)
    inputs = []
    for (n, size), schedule in zip(((4, 8), (3, 4)), _check_schedules()):
        t = torch.tensor([schedule.T - 1, 0, 1, schedule.T // 3][:n])
        x0, noise = (torch.randn(n, 3, size, size, generator=g, dtype=schedule.dtype) for _ in range(2))
        inputs.append((x0, t, noise, schedule.alpha_bars))

    def reference(x0, t, noise, alpha_bars):
        return _schedule_of(_betas_of(alpha_bars).to(alpha_bars.dtype)).to(x0.device).q_sample(x0, t, noise)

    def slips(args):
        x0, t, noise, alpha_bars = args
        return q_sample_slips(Schedule(_betas_of(alpha_bars), dtype=torch.float64), x0, t, noise)

    return compare(fn, reference, inputs, name="q_sample", diagnose=lambda s, r, a: _shape_hint(s), slips=slips)


def check_reverse_step(fn: Callable) -> CheckResult:
    """``fn(x_t, t, eps_pred, z, betas, alpha_bars) -> x_(t−1)``: the DDPM step with σ_t² = β_t and
    fresh noise z, none added at t = 0 (the assessment's reverse_step); t = 0, 1 and T − 1 among the steps."""
    if not callable(fn):
        raise fail("fn", "your reverse_step function", describe(fn))
    g = torch.Generator().manual_seed(2)
    inputs = []
    for (n, size), schedule in zip(((4, 8), (4, 4)), _check_schedules()):
        t = torch.tensor([0, 1, schedule.T // 2, schedule.T - 1])
        x_t, eps, z = (torch.randn(n, 3, size, size, generator=g, dtype=schedule.dtype) for _ in range(3))
        inputs.append((x_t, t, eps, z, schedule.betas, schedule.alpha_bars))

    def reference(x_t, t, eps_pred, z, betas, alpha_bars):
        return _schedule_of(betas).to(x_t.device).ddpm_step(x_t, t, eps_pred, z=z)

    def slips(args):
        x_t, t, eps, z, betas, _ = args
        return ddpm_step_slips(Schedule(betas.cpu(), dtype=torch.float64), x_t, t, eps, z, "beta")

    return compare(fn, reference, inputs, name="reverse_step", diagnose=lambda s, r, a: _shape_hint(s), slips=slips)


def _flower_contexts(n: int) -> torch.Tensor:
    k = torch.arange(n)
    return torch.cat([one_hot(k % _CLASSES, _CLASSES), one_hot(k % _COLOURS, _COLOURS)], dim=1)


def check_drop_context(fn: Callable) -> CheckResult:
    """``fn(c, drop_prob, generator) -> c · m[:, None]``: each row of c kept whole with probability 1 − drop_prob
    or zeroed whole, drawn with ``generator`` (``None``: the global generator); see :func:`mask_rungs`."""
    if not callable(fn):
        raise fail("fn", "your drop_context function", describe(fn))
    name = "drop_context"

    def draw(n, p, seed, global_seed=0):
        c = _flower_contexts(n)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        out = run_student(fn, (c, p, generator), name, seed=global_seed)
        shaped = isinstance(out, torch.Tensor) and out.shape == c.shape
        kept = (out == c).all(1) if shaped else None
        zeroed = (out == 0).all(1) if shaped else None
        climb(name, [
            Rung(lambda: not shaped, f"drop_context(c of shape {tuple(c.shape)}, {p}) returned {describe(out)}",
                 "return the context itself with dropped rows zeroed, shaped like c: c * keep[:, None]."),
            Rung(lambda: out.dtype != c.dtype, f"returned dtype {out.dtype}, expected {c.dtype}",
                 "convert the keep mask to c's dtype before multiplying: keep.to(c.dtype)."),
            Rung(lambda: not bool((kept | zeroed).all()),
                 "a row came back neither equal to its context nor all zeros",
                 "drop a row WHOLE: one uniform number per row, c * keep[:, None] (not per entry, no rescaling)."),
        ])
        return kept.float()

    climb(name, mask_rungs(lambda n, p, seed, global_seed=0: draw(n, p, seed, global_seed), what="rows"))
    draw(16, 0.5, None)  # generator=None, as the training loop calls it, must work too
    print(f"✅ {name}: whole rows dropped per sample with your generator (and with None), at the rate drop_prob "
          "(0.1, 0.5, 0.25), and drop_prob 0 and 1 exact")
    return CheckResult(name, 13, 0.0, ["cpu"], unit="batches")


def check_guided_eps(fn: Callable) -> CheckResult:
    """``fn(model, x_t, t, c, w) -> ε̃ = (1 + w)·ε_θ(x_t, t, c) − w·ε_θ(x_t, t, 0)`` from ONE model call on
    [x_t; x_t] with contexts [c; 0] (the assessment's guided_eps); w = 2.5, 0.5, 0, −1."""
    if not callable(fn):
        raise fail("fn", "your guided_eps function", describe(fn))
    name = "guided_eps"
    g = torch.Generator().manual_seed(14)
    x = torch.randn(3, 3, 4, 4, generator=g)
    t = torch.tensor([0, 10, 49])
    c = _flower_contexts(3)
    worst = 0.0
    for w in (2.5, 0.5, 0.0, -1.0):
        model = RecordingEps(50, _CLASSES + _COLOURS, 3)
        with torch.no_grad():
            out = run_student(fn, (model, x, t, c, w), f"{name}(model, x_t, t, c, w={w:g})")
        calls, where = list(model.calls), f"with w = {w:g}, "
        want = guided_eps_fn(model, c, w)(x, t)
        value_rungs, diff = guided_value_rungs(out, want, model.predict(x, t, c), model.predict(x, t, 0 * c), w, where,
                                               what=name)
        climb(name, guided_call_rungs(calls, x, t, c, where) + value_rungs)
        worst = max(worst, diff)
    print(f"✅ {name}: one model call on [x_t; x_t] with contexts [c; 0], and ε̃ = (1 + w)·ε_c − w·ε_u on 4 guidance "
          f"weights (max |diff| = {worst:.1e})")
    return CheckResult(name, 4, worst, ["cpu"], unit="guidance weights")

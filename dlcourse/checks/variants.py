"""Wrong-variant catalogues generated from the maths.

A formula is written once as a tree: a sum of :class:`Term`\\ s, each a sign, a product of
:class:`Factor`\\ s (a named per-sample coefficient raised to a power) and an operand (an input tensor or a
nested formula, as x̂_0 is inside the DDIM step). :func:`neighbours` derives the slips a student makes
from it — each coefficient replaced by its look-alikes (β, α, ᾱ, β̃, 1 − ᾱ, …), with or without its
square root, the ratio turned over, a factor or a term left out, a sign flipped, two coefficients swapped,
the steps looked up at t ± 1 or for the first image only, the coefficients broadcast along the wrong
axis — and names each one in a hint built from the formula itself.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Mapping

import torch

from dlcourse.schedules import Schedule

from .core import Slip

__all__ = ["Factor", "Term", "Formula", "evaluate", "neighbours", "formula_slips", "coefficient_text",
           "schedule_coefficients", "LOOKALIKES", "REASONS"]


@dataclass(frozen=True)
class Factor:
    """``base ** power``, base the name of a per-sample coefficient such as "ᾱ_t"."""

    base: str
    power: float = 1.0

    def __str__(self) -> str:
        base = f"({self.base})" if any(op in self.base for op in (" − ", " + ", "/")) else self.base
        shown = {1.0: base, 0.5: f"√{base}", -0.5: f"1/√{base}", -1.0: f"1/{base}", 2.0: f"{base}²",
                 -2.0: f"1/{base}²", 0.25: f"{base}^¼", -0.25: f"1/{base}^¼"}
        return shown.get(self.power, f"{base}^{self.power:g}")


@dataclass(frozen=True)
class Term:
    """``sign · ∏ factors · operand``; ``label`` names the term in hints ("the noise term")."""

    label: str
    factors: tuple[Factor, ...]
    operand: "str | Formula"
    sign: int = 1


@dataclass(frozen=True)
class Formula:
    """A sum of terms; ``text`` is the formula as the hints quote it."""

    text: str
    terms: tuple[Term, ...]


# Each coefficient and the ones a student mistakes it for, most likely first.
LOOKALIKES: dict[str, tuple[str, ...]] = {
    "ᾱ_t": ("α_t", "1 − ᾱ_t", "β_t", "ᾱ_{t−1}", "ᾱ_prev"),
    "1 − ᾱ_t": ("β_t", "ᾱ_t", "β̃_t", "1 − ᾱ_{t−1}"),
    "α_t": ("ᾱ_t", "1 − α_t", "1 − ᾱ_t"),
    "β_t": ("β̃_t", "1 − ᾱ_t", "α_t", "ᾱ_t"),
    "β̃_t": ("β_t", "1 − ᾱ_t"),
    "ᾱ_prev": ("ᾱ_t", "1 − ᾱ_prev", "α_t"),
    "1 − ᾱ_prev": ("ᾱ_prev", "1 − ᾱ_t", "β_t"),
    "[t > 0]": ("1", "[t > 1]"),
    "1 − ᾱ_prev − σ²": ("1 − ᾱ_prev", "1 − ᾱ_prev − σ", "1 − ᾱ_prev + σ²", "1 − ᾱ_t − σ²"),
    "σ": ("σ²",),
    "1 − ᾱ_t/ᾱ_prev": ("1 − ᾱ_prev/ᾱ_t", "ᾱ_t/ᾱ_prev", "1 − ᾱ_t"),
}

# Why a look-alike is wrong, for the pairs (right, wrong) a student most often confuses.
REASONS: dict[tuple[str, str], str] = {
    ("1 − ᾱ_t", "β_t"): "β_t is one step's variance, 1 − ᾱ_t the variance after all steps up to t",
    ("ᾱ_t", "α_t"): "α_t = 1 − β_t is one step; ᾱ_t = ∏_{s≤t} α_s (schedule.alpha_bars) all steps up to t",
    ("α_t", "ᾱ_t"): "one reverse step divides by the one-step α_t = 1 − β_t, not the cumulative ᾱ_t",
    ("β_t", "β̃_t"): "σ_t² = β_t here; β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t is the other choice of variance",
    ("β̃_t", "β_t"): "this variance is β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t (schedule.beta_tildes), not β_t",
    ("[t > 0]", "1"): "the last step, t = 0, adds no noise: multiply the noise term by (t > 0)",
    ("[t > 0]", "[t > 1]"): "t is 0-based: the last step is t = 0, so mask with (t > 0), not (t > 1)",
    ("1 − ᾱ_prev − σ²", "1 − ᾱ_prev"): "the noise σ·z takes σ² of the variance 1 − ᾱ_prev, so ε keeps only the rest",
    ("1 − ᾱ_prev − σ²", "1 − ᾱ_prev − σ"): "subtract the variance σ², not the standard deviation σ",
}


def schedule_coefficients(schedule: Schedule, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every coefficient the catalogues use, per sample (shape (N,), float64), for steps ``t``."""
    t = t.long().cpu()
    values = {name: getattr(schedule, name).detach().cpu().double() for name in
              ("betas", "alphas", "alpha_bars", "alpha_bars_prev", "beta_tildes")}
    ab, prev = values["alpha_bars"][t], values["alpha_bars_prev"][t]
    return {"ᾱ_t": ab, "1 − ᾱ_t": 1 - ab, "α_t": values["alphas"][t], "1 − α_t": 1 - values["alphas"][t],
            "β_t": values["betas"][t], "β̃_t": values["beta_tildes"][t], "ᾱ_{t−1}": prev,
            "1 − ᾱ_{t−1}": 1 - prev, "[t > 0]": (t > 0).double(), "[t > 1]": (t > 1).double(),
            "1 − √ᾱ_t": 1 - ab.sqrt(), "1 − √α_t": 1 - values["alphas"][t].sqrt(),
            "1": torch.ones(len(t), dtype=torch.float64)}


def _column(values: torch.Tensor, like: torch.Tensor, axis: str) -> torch.Tensor:
    """(N,) → (N, 1, …, 1) ("batch"), or the slip (1, …, 1, N) ("last"); a scalar stays a scalar."""
    values = values.to(like.device)
    if values.dim() == 0:
        return values
    shape = [1] * like.dim()
    shape[0 if axis == "batch" else -1] = -1
    return values.reshape(shape)


def evaluate(formula: Formula, coefficients: Mapping[str, torch.Tensor], operands: Mapping[str, torch.Tensor],
             axis: str = "batch") -> torch.Tensor:
    """The formula's value (float64) for per-sample ``coefficients`` and named ``operands``."""
    total = None
    for term in formula.terms:
        value = (evaluate(term.operand, coefficients, operands, axis) if isinstance(term.operand, Formula)
                 else operands[term.operand].double())
        for factor in term.factors:
            value = value * _column(coefficients[factor.base] ** factor.power, value, axis)
        value = term.sign * value
        total = value if total is None else total + value
    return total


def _power_slips(factor: Factor) -> Iterator[tuple[Factor, str]]:
    """The factor with its square root missing or added, or turned upside down."""
    p = factor.power
    if abs(p) in (0.5, 0.25):
        yield replace(factor, power=2 * p), f"the square root of {factor.base} is missing"
    if abs(p) in (1.0, 0.5):
        yield replace(factor, power=p / 2), "an extra square root"
    if abs(p) == 1.0:
        yield replace(factor, power=2 * p), "squared"
    yield replace(factor, power=-p), "turned upside down: it multiplies where it should divide, or the other way"


def coefficient_text(factors: tuple[Factor, ...]) -> str:
    """A product of factors as a fraction: (β_t, (1 − ᾱ_t)^−½) → "β_t/√(1 − ᾱ_t)"."""
    up = [str(f) for f in factors if f.power > 0]
    down = [str(Factor(f.base, -f.power)) for f in factors if f.power < 0]
    text = "·".join(up) or "1"
    return text + (f"/{'·'.join(down)}" if len(down) == 1 else f"/({'·'.join(down)})" if down else "")


def _whole_coefficient_slips(term: Term, top: Formula) -> Iterator[tuple[Term, str]]:
    """A coefficient of several factors replaced whole by one of them or a look-alike (√β_t for β_t/√(1 − ᾱ_t))."""
    if len(term.factors) < 2:
        return
    right = coefficient_text(term.factors)
    pool = dict.fromkeys(b for f in term.factors for b in (f.base, *LOOKALIKES.get(f.base, ())))
    for base in pool:
        for power in (0.5, 1.0):
            wrong = Factor(base, power)
            yield replace(term, factors=(wrong,)), (f"{term.label} has the coefficient {wrong} where it needs "
                                                    f"{right}: {top.text}.")


def _term_slips(term: Term, top: Formula) -> Iterator[tuple[Term, str]]:
    """Every single-point slip inside one term, with its hint: inside a nested operand first (when a slip there
    and one in the outer factors give the same number, the inner one is the likelier)."""
    if isinstance(term.operand, Formula):
        for inner, hint in formula_slips(term.operand, top):
            yield replace(term, operand=inner), hint
    yield from _whole_coefficient_slips(term, top)

    def with_factor(i: int, new: Factor | None) -> Term:
        return replace(term, factors=term.factors[:i] + ((new,) if new else ()) + term.factors[i + 1:])

    # look-alikes first (the commonest confusion), then square roots and ratios, then a factor left out
    for i, factor in enumerate(term.factors):
        for other in LOOKALIKES.get(factor.base, ()):
            wrong = Factor(other, factor.power)
            reason = REASONS.get((factor.base, other))
            yield with_factor(i, wrong), (f"{term.label} has {wrong} where it needs {factor}"
                                          + (f" ({reason})" if reason else "") + f": {top.text}.")
    for i, factor in enumerate(term.factors):
        for wrong, what in _power_slips(factor):
            yield with_factor(i, wrong), f"{term.label} has {wrong} where it needs {factor} ({what}): {top.text}."
        if factor.power == 0.5 and factor.base.startswith("1 − "):
            wrong = Factor(f"1 − √{factor.base[4:]}")
            yield with_factor(i, wrong), (f"{term.label} has {wrong} where it needs {factor} (the square root goes "
                                          f"over the whole {factor.base}): {top.text}.")
    for i, factor in enumerate(term.factors):
        yield with_factor(i, None), f"{term.label} is missing its factor {factor}: {top.text}."
    yield replace(term, sign=-term.sign), f"{term.label} has the wrong sign: {top.text}."


def formula_slips(formula: Formula, top: Formula) -> Iterator[tuple[Formula, str]]:
    """Every single-point slip of ``formula`` (a part of ``top``, whose text the hints quote), with its hint."""
    for k, term in enumerate(formula.terms):
        for wrong, hint in _term_slips(term, top):
            yield replace(formula, terms=formula.terms[:k] + (wrong,) + formula.terms[k + 1:]), hint
        if len(formula.terms) > 1:
            rest = formula.terms[:k] + formula.terms[k + 1:]
            yield replace(formula, terms=rest), f"{term.label} is missing: {top.text}."
    for a in range(len(formula.terms)):
        for b in range(a + 1, len(formula.terms)):
            ta, tb = formula.terms[a], formula.terms[b]
            if ta.factors and tb.factors:
                terms = list(formula.terms)
                terms[a], terms[b] = replace(ta, factors=tb.factors), replace(tb, factors=ta.factors)
                yield replace(formula, terms=tuple(terms)), (
                    f"the coefficients of {ta.label} and {tb.label} are swapped: {top.text}.")


# Symbols a student swaps for another everywhere in a formula (1 − ᾱ_t becomes 1 − α_t too).
SYMBOL_SWAPS = (("ᾱ_t", "α_t"), ("α_t", "ᾱ_t"), ("ᾱ_t", "ᾱ_{t−1}"), ("β_t", "β̃_t"), ("β̃_t", "β_t"))


def _map_factors(formula: Formula, change: Callable[[Factor], Factor]) -> Formula:
    return replace(formula, terms=tuple(
        replace(term, factors=tuple(change(f) for f in term.factors),
                operand=_map_factors(term.operand, change) if isinstance(term.operand, Formula) else term.operand)
        for term in formula.terms))


def _global_slips(formula: Formula) -> Iterator[tuple[Formula, str]]:
    """A symbol replaced everywhere by its look-alike; every square root left out."""
    for right, wrong in SYMBOL_SWAPS:
        swapped = _map_factors(formula, lambda f: replace(f, base=f.base.replace(right, wrong)))
        if swapped != formula:
            reason = REASONS.get((right, wrong))
            yield swapped, (f"you used {wrong} throughout where the formula has {right}"
                            + (f" ({reason})" if reason else "") + f": {formula.text}.")
    no_roots = _map_factors(formula, lambda f: replace(f, power=2 * f.power) if abs(f.power) == 0.5 else f)
    if no_roots != formula:
        yield no_roots, f"every square root is missing: {formula.text}."


def neighbours(formula: Formula, coefficients_at: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
               t: torch.Tensor, operands: Mapping[str, torch.Tensor], like: torch.Tensor,
               T: int | None = None) -> list[Slip]:
    """The slips of ``formula`` (see the module docstring) on these inputs, each as a :class:`Slip`.

    ``coefficients_at(t)`` gives the per-sample coefficients at steps t; outputs take ``like``'s shape,
    dtype and device. With ``T`` the steps t − 1 (wrapping round at 0, as Python's indexing does) and t + 1 (clamped
    to T − 1) are tried too.
    """
    def coefficients(steps: torch.Tensor):
        """The schedule's coefficients at ``steps``; the indicators ([t > 0], …) stay those of the true t."""
        shifted = dict(coefficients_at(steps))
        shifted.update({k: v for k, v in coefficients_at(t).items() if k.startswith("[")})
        return shifted

    def output(f: Formula, steps: torch.Tensor = t, axis: str = "batch") -> Callable[[], torch.Tensor]:
        return lambda: evaluate(f, coefficients(steps), operands, axis).to(like.dtype).reshape(like.shape)

    slips = []
    if T is not None:
        slips += [Slip(f"off by one: the coefficients are looked up at t − 1 (and alpha_bars[t − 1] at t = 0 is "
                       f"alpha_bars[−1], the LAST entry); t is 0-based here, index them at t: {formula.text}.",
                       output(formula, (t - 1) % T)),
                  Slip(f"off by one: the coefficients are looked up at t − 1; t is 0-based here, index them at t: "
                       f"{formula.text}.", output(formula, (t - 1).clamp(min=0))),
                  Slip(f"off by one: the coefficients are looked up at t + 1; index them at t: {formula.text}.",
                       output(formula, (t + 1).clamp(max=T - 1)))]
    slips.append(Slip("every image used the first image's coefficients: index with the whole tensor t "
                      "(one coefficient per image).", output(formula, t[:1].expand_as(t))))
    slips.append(Slip("the coefficients broadcast along the last axis (W), not the batch: reshape each (N,) "
                      "coefficient to (N, 1, 1, 1), e.g. .view(-1, 1, 1, 1).", output(formula, axis="last")))
    slips += [Slip(hint, output(wrong)) for wrong, hint in formula_slips(formula, formula)]
    slips += [Slip(hint, output(wrong)) for wrong, hint in _global_slips(formula)]
    return slips

"""Self-checks for classifier-free guidance (lesson 04): the Bernoulli context mask and the CFG combination."""
from __future__ import annotations

import math
from typing import Callable

import torch

from dlcourse.guidance import cfg_eps, context_mask
from dlcourse.validation import describe, fail

from .core import CheckResult, compare

__all__ = ["check_context_mask", "check_cfg_eps"]


def check_context_mask(fn: Callable) -> CheckResult:
    """``fn(batch_size, drop_prob) -> float (B,)``: 1 keeps a sample's context (probability 1 − drop_prob),
    0 drops the whole context of that sample.

    Deterministic edges (drop_prob 0 and 1) are compared with the reference; for 0 < p < 1 the
    dropped fraction of 20 000 draws must lie within 4 standard errors of p.
    """
    if not callable(fn):
        raise fail("fn", "your context_mask function", describe(fn))
    name = "context_mask"

    def diagnose(student_out, reference_out, args):
        if isinstance(student_out, Exception) or not isinstance(student_out, torch.Tensor):
            return None
        if student_out.dim() > 1:
            return "return ONE value per sample (shape (B,)): a mask drops a sample's whole context, not single entries."
        if student_out.dtype == torch.bool:
            return "convert the boolean mask to float (e.g. .float()) so it can multiply the context."
        if student_out.shape == reference_out.shape and torch.equal(student_out.float(), 1 - reference_out):
            return "the mask is inverted: 1 must KEEP the context and 0 drop it (keep probability 1 − drop_prob)."
        everything = "kept (all ones)" if args[1] == 0 else "dropped (all zeros)"
        return (f"with drop_prob = {args[1]:g} every context must be {everything}; "
                "keep a context where a uniform draw in [0, 1) is ≥ drop_prob.")

    result = compare(fn, lambda b, p: context_mask(b, p), [(1000, 0.0), (1000, 1.0), (7, 0.0)], name=name,
                     diagnose=diagnose, devices=["cpu"])
    n, worst = 20_000, 0.0
    for p in (0.1, 0.5, 0.25):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(p * 1000))
            mask = fn(n, p)
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (n,):
            raise AssertionError(f"❌ {name}: fn({n}, {p}) returned {describe(mask)}, expected a float tensor of shape ({n},)")
        mask = mask.detach().float().cpu()
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise AssertionError(f"❌ {name}: fn({n}, {p}) returned values other than 0 and 1"
                                 "\n   Hint: compare a uniform draw with drop_prob (e.g. torch.rand(B) >= drop_prob).")
        dropped = 1 - mask.mean().item()
        tolerance = 4 * math.sqrt(p * (1 - p) / n)
        worst = max(worst, abs(dropped - p))
        if abs(dropped - p) > tolerance:
            hint = ("the mask is inverted: 1 must KEEP the context (probability 1 − drop_prob)."
                    if abs(dropped - (1 - p)) <= tolerance else
                    "draw one uniform number per sample and keep the context where it is ≥ drop_prob.")
            raise AssertionError(f"❌ {name}: with drop_prob = {p}, {dropped:.1%} of {n} contexts were dropped "
                                 f"(expected {p:.0%} ± {tolerance:.1%})\n   Hint: {hint}")
    print(f"✅ {name}: dropped fractions match drop_prob (max |fraction − p| = {worst:.4f} over {n} draws)")
    return result


def check_cfg_eps(fn: Callable) -> CheckResult:
    """``fn(eps_cond, eps_uncond, w) -> ε̃ = (1 + w)·eps_cond − w·eps_uncond`` for a number w
    (lecture convention: w = 0 conditional, w = −1 unconditional)."""
    if not callable(fn):
        raise fail("fn", "your cfg_eps function", describe(fn))
    gen = torch.Generator().manual_seed(2)
    inputs = []
    for shape, dtype, w in (((4, 3, 8, 8), torch.float32, 2.0), ((2, 1, 5, 5), torch.float64, 7.5),
                            ((3, 3, 4, 4), torch.float32, 0.5), ((2, 4), torch.float32, 0.0),
                            ((2, 3, 4, 4), torch.float64, -1.0), ((1, 3, 4, 4), torch.float32, -2.0)):
        inputs.append((torch.randn(shape, generator=gen, dtype=dtype), torch.randn(shape, generator=gen, dtype=dtype), w))

    def diagnose(student_out, reference_out, args):
        if not isinstance(student_out, torch.Tensor):
            return None
        ec, eu, w = args
        candidates = [
            ("this is diffusers' form ε_u + s·(ε_c − ε_u) with guidance_scale s = w; in the lectures' convention "
             "guidance_scale = 1 + w, so use (1 + w)·ε_c − w·ε_u.", eu + w * (ec - eu)),
            ("conditional and unconditional are swapped: (1 + w) multiplies eps_cond.", (1 + w) * eu - w * ec),
            ("the sign of the second term: subtract w·eps_uncond.", (1 + w) * ec + w * eu),
            ("eps_cond is weighted by w; it should be (1 + w).", w * ec - w * eu),
        ]
        for hint, wrong in candidates:
            if wrong.shape == student_out.shape and torch.allclose(student_out.double(), wrong.double(), atol=1e-5):
                return hint
        return None

    return compare(fn, cfg_eps, inputs, name="cfg_eps", diagnose=diagnose)

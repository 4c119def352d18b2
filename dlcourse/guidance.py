"""Classifier-free guidance (Ho & Salimans 2022) and, for contrast, classifier guidance.

Training drops the whole context of a sample with probability ``drop_prob`` (a Bernoulli
mask; a dropped context is the zero vector, the "null" context), so one network learns both
ε_θ(x_t, t, c) and ε_θ(x_t, t). Sampling combines them:

    ε̃ = (1 + w)·ε_θ(x_t, t, c) − w·ε_θ(x_t, t)

Lecture convention: w = 0 is plain conditional sampling, w = −1 unconditional, w > 0
exaggerates the context. diffusers' ``guidance_scale`` is 1 + w (guidance_scale = 7.5 ⇔ w = 6.5).
A model here is called as ``model(x, t, c, c_mask)`` (e.g. ``ConditionalUNet``).
"""
from __future__ import annotations

from typing import Callable

import torch

from dlcourse.losses import diffusion_loss
from dlcourse.schedules import Schedule, gather
from dlcourse.validation import check_float_tensor, check_positive_int, check_probability, check_real, describe, fail

__all__ = [
    "one_hot",
    "context_mask",
    "apply_context_mask",
    "cfg_loss",
    "cfg_eps",
    "guided_eps_fn",
    "two_pass_guided_eps_fn",
    "classifier_guided_eps_fn",
]

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_labels(labels, name: str, n_classes: int | None = None) -> torch.Tensor:
    if (not isinstance(labels, torch.Tensor) or labels.dtype == torch.bool or labels.is_floating_point()
            or labels.is_complex() or labels.dim() != 1):
        raise fail(name, "a 1-D integer tensor of class indices (B,)", describe(labels))
    if n_classes is not None and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise fail(name, f"class indices in [0, {n_classes - 1}]",
                   f"min {int(labels.min())}, max {int(labels.max())}")
    return labels


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class indices (B,) → float one-hot context vectors (B, n_classes)."""
    check_positive_int(n_classes, "n_classes")
    _check_labels(labels, "labels", n_classes)
    return torch.nn.functional.one_hot(labels.long(), n_classes).float()


def context_mask(batch_size: int, drop_prob: float = 0.1, generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
    """Bernoulli mask m ∈ {0, 1}^B, float (B,): m_i = 1 keeps sample i's context (probability
    1 − drop_prob), m_i = 0 drops the whole context. Drawn on ``generator`` when given."""
    check_positive_int(batch_size, "batch_size")
    p = check_probability(drop_prob, "drop_prob")
    where = generator.device if generator is not None else (device or "cpu")
    u = torch.rand(batch_size, generator=generator, device=where)
    mask = (u >= p).float()  # u ~ U[0, 1): P(u ≥ p) = 1 − p, exactly 1 at p = 0 and 0 at p = 1
    return mask.to(device) if device is not None else mask


def apply_context_mask(c: torch.Tensor, c_mask: torch.Tensor) -> torch.Tensor:
    """c · m[:, None]: a dropped row becomes the zero vector (the null context)."""
    check_float_tensor(c, "c")
    if c.dim() < 2:
        raise fail("c", "a batch of context vectors (B, D)", describe(c))
    check_float_tensor(c_mask, "c_mask")
    if tuple(c_mask.shape) != (c.shape[0],):
        raise fail("c_mask", f"shape ({c.shape[0]},): one 1/0 per sample of c", describe(c_mask))
    if not bool(((c_mask == 0) | (c_mask == 1)).all()):
        raise fail("c_mask", "values 0 (drop the context) or 1 (keep it)",
                   f"other values, e.g. {c_mask[(c_mask != 0) & (c_mask != 1)][0].item()}")
    return c * c_mask.to(c.dtype).reshape(-1, *([1] * (c.dim() - 1)))


def cfg_loss(model: Callable, x0: torch.Tensor, c: torch.Tensor, schedule: Schedule, drop_prob: float = 0.1,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Training loss of a CFG model: ‖ε − ε_θ(x_t, t, m·c)‖² (mean), with, per sample i,
    t_i ~ U{0, …, T−1}, ε_i ~ N(0, I), x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε and m_i ~ Bernoulli(1 − drop_prob).

    ``model(x_t, t, c, c_mask)`` (e.g. ``ConditionalUNet``) drops each masked row of ``c`` whole.
    """
    n = x0.shape[0]
    where = generator.device if generator is not None else x0.device
    c_mask = context_mask(n, drop_prob, generator=generator, device=x0.device)
    t = torch.randint(0, schedule.T, (n,), generator=generator, device=where).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=where).to(x0.device)
    return diffusion_loss(lambda x_t, tt: model(x_t, tt, c, c_mask), x0, t, schedule, noise)


def cfg_eps(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w) -> torch.Tensor:
    """ε̃ = (1 + w)·ε_cond − w·ε_uncond; ``w`` a number or a per-sample tensor (B,) (or a scalar tensor)."""
    check_float_tensor(eps_cond, "eps_cond")
    check_float_tensor(eps_uncond, "eps_uncond")
    if eps_uncond.shape != eps_cond.shape:
        raise fail("eps_uncond", f"the shape of eps_cond {tuple(eps_cond.shape)}", describe(eps_uncond))
    if isinstance(w, torch.Tensor):
        if w.dim() == 1 and w.shape[0] == eps_cond.shape[0]:
            w = w.reshape(-1, *([1] * (eps_cond.dim() - 1)))
        elif w.dim() != 0:
            raise fail("w", f"a number or a tensor of shape () or ({eps_cond.shape[0]},)", describe(w))
        if not w.is_floating_point() or not bool(torch.isfinite(w).all()):
            raise fail("w", "finite float guidance weights", describe(w))
        w = w.to(eps_cond.device, eps_cond.dtype)
    else:
        w = check_real(w, "w", hint=" (0 = conditional, −1 = unconditional) or a per-sample tensor")
    return (1 + w) * eps_cond - w * eps_uncond


def _check_context(c, x: torch.Tensor) -> torch.Tensor:
    check_float_tensor(c, "c")
    if c.dim() < 2 or c.shape[0] != x.shape[0]:
        raise fail("c", f"one context row per image: ({x.shape[0]}, D)", describe(c))
    return c.to(x.device)


def guided_eps_fn(model: Callable, c: torch.Tensor, w) -> EpsFn:
    """eps_fn(x_t, t) for CFG with ONE batched forward pass:
    model([x; x], [t; t], [c; 0], [1…1; 0…0]) → split → ``cfg_eps``."""
    check_float_tensor(c, "c")

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx = _check_context(c, x)
        n = x.shape[0]
        mask = torch.cat([x.new_ones(n), x.new_zeros(n)])
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, torch.zeros_like(ctx)]), mask)
        eps_cond, eps_uncond = out[:n], out[n:]
        return cfg_eps(eps_cond, eps_uncond, w)

    return eps_fn


def two_pass_guided_eps_fn(model: Callable, c: torch.Tensor, w) -> EpsFn:
    """The same guided ε as :func:`guided_eps_fn`, from two forward passes (conditional, then null)."""
    check_float_tensor(c, "c")

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx = _check_context(c, x)
        n = x.shape[0]
        eps_cond = model(x, t, ctx, x.new_ones(n))
        eps_uncond = model(x, t, torch.zeros_like(ctx), x.new_zeros(n))
        return cfg_eps(eps_cond, eps_uncond, w)

    return eps_fn


def classifier_guided_eps_fn(eps_fn: EpsFn, log_prob_fn: Callable, y: torch.Tensor, scale: float,
                             schedule: Schedule) -> EpsFn:
    """Classifier guidance (Dhariwal & Nichol 2021): ε̂ = ε_θ(x_t, t) − s·√(1 − ᾱ_t)·∇_x log p(y | x_t, t).

    ``log_prob_fn(x_t, t)`` returns log-probabilities (B, n_classes) of a classifier trained
    on noisy images; the gradient is taken with autograd (enabled inside, even under no_grad).
    """
    if not isinstance(schedule, Schedule):
        raise fail("schedule", "a dlcourse.schedules.Schedule", describe(schedule))
    scale = check_real(scale, "scale", hint=" (the classifier-guidance scale s)")
    _check_labels(y, "y")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if y.shape[0] != x.shape[0]:
            raise fail("y", f"one class index per image ({x.shape[0]},)", describe(y))
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = log_prob_fn(x_in, t)
            if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 2 or log_probs.shape[0] != x.shape[0]:
                raise fail("log_prob_fn(x_t, t)", f"log-probabilities of shape ({x.shape[0]}, n_classes)",
                           describe(log_probs))
            picked = log_probs.gather(1, y.to(log_probs.device).long()[:, None]).sum()
            grad = torch.autograd.grad(picked, x_in)[0]
        eps = eps_fn(x, t)
        sqrt_one_minus = gather(1 - schedule.alpha_bars, t, x).sqrt().to(x.dtype)
        return eps - scale * sqrt_one_minus * grad

    return guided

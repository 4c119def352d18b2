"""Noise schedules, the forward process q and the one-step reverse updates (DDPM, DDIM).

Time is 0-based in code: t ∈ {0, …, T−1}, where the lectures write 1…T. ``alpha_bars[t]``
= ᾱ_t = ∏_{s≤t} α_s is the signal level after t+1 noising steps, so ``alpha_bars[0]`` is
already slightly below 1, and the clean image x_0 sits at "t = −1" (ᾱ_{−1} = 1).
Per-sample times are ``torch.long`` tensors of shape (N,); coefficients gathered at t
broadcast over images of any rank.

    α_t = 1 − β_t,   ᾱ_t = ∏_{s≤t} α_s,   q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I),
    β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t   (the variance of q(x_{t−1} | x_t, x_0)).
"""
from __future__ import annotations

import copy
import math

import torch

from dlcourse.validation import (check_float_tensor, check_positive_int, check_real, check_timesteps, costs_no_sync,
                                 describe, fail, is_int)

__all__ = [
    "linear_betas",
    "cosine_betas",
    "scaled_linear_betas",
    "gather",
    "X0_MODES",
    "PREDICTIONS",
    "check_prediction",
    "adjust_x0",
    "dynamic_threshold",
    "Schedule",
]

X0_MODES = ("none", "clip", "dynamic")
PREDICTIONS = ("eps", "x0", "v")


def check_prediction(prediction, name: str = "prediction") -> str:
    """What a network predicts: ``"eps"`` (the noise ε), ``"x0"`` (the clean image x̂_0) or ``"v"``
    (v = √ᾱ_t ε − √(1−ᾱ_t) x_0, Salimans & Ho 2022)."""
    if prediction not in PREDICTIONS:
        raise fail(name, "'eps' (the noise), 'x0' (the clean image) or 'v' (√ᾱ_t ε − √(1−ᾱ_t) x_0)",
                   describe(prediction))
    return prediction


def _check_x0_mode(x0_mode, percentile) -> None:
    if x0_mode not in X0_MODES:
        raise fail("x0_mode", "'none' (the plain formula), 'clip' (x̂_0 to [−1, 1]) or "
                   "'dynamic' (Imagen's dynamic thresholding)", describe(x0_mode))
    check_real(percentile, "percentile", low=0.5, high=1.0, hint=" (a quantile; Imagen uses 0.995)")


def dynamic_threshold(x0_pred: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022), per sample:
    s = max(1, quantile_p(|x̂_0|)), x̂_0 ← clip(x̂_0, −s, s)/s.

    Samples already inside [−1, 1] (s = 1) are unchanged; saturated ones are pulled back in
    instead of being flattened at ±1.
    """
    _check_x0_mode("dynamic", percentile)
    flat = x0_pred.detach().abs().flatten(1).float()
    s = torch.quantile(flat, float(percentile), dim=1).clamp(min=1.0)
    s = s.to(x0_pred.dtype).reshape(-1, *([1] * (x0_pred.dim() - 1)))
    return torch.maximum(torch.minimum(x0_pred, s), -s) / s


def adjust_x0(x0_pred: torch.Tensor, x0_mode: str = "none", percentile: float = 0.995) -> torch.Tensor:
    """What a sampler does with its predicted x̂_0: ``"none"`` keeps it, ``"clip"`` clamps it to
    [−1, 1] (diffusers' ``clip_sample=True``), ``"dynamic"`` applies :func:`dynamic_threshold`."""
    _check_x0_mode(x0_mode, percentile)
    if x0_mode == "clip":
        return x0_pred.clamp(-1, 1)
    if x0_mode == "dynamic":
        return dynamic_threshold(x0_pred, percentile)
    return x0_pred


def _x0_and_eps(x: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor, x0_mode: str,
                percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t after :func:`adjust_x0`, and the ε it implies,
    (x_t − √ᾱ_t x̂_0)/√(1−ᾱ_t) (the given ε itself for ``"none"``)."""
    x0_pred = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    if x0_mode == "none":
        return x0_pred, eps
    x0_pred = adjust_x0(x0_pred, x0_mode, percentile)
    return x0_pred, (x - ab.sqrt() * x0_pred) / (1 - ab).sqrt()


def _check_beta_range(beta_start, beta_end) -> None:
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        check_real(value, name, low=0, high=1, low_open=True, high_open=True)
    if beta_start > beta_end:
        raise fail("beta_start", f"at most beta_end = {beta_end}", describe(beta_start))


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_t evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020; tuned for T = 1000). float64 (T,)."""
    check_positive_int(T, "T")
    _check_beta_range(beta_start, beta_end)
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def scaled_linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear betas with both ends scaled by 1000/T (capped at 0.999), so short chains still reach noise.

    ∑β_t stays about the same for any T: with T = 150 the unscaled betas leave ᾱ_{T−1} ≈ 0.22,
    the scaled ones ≈ 3·10⁻⁵ (DDPM's value at T = 1000 is 4·10⁻⁵). float64 (T,).
    """
    check_positive_int(T, "T")
    _check_beta_range(beta_start, beta_end)
    scale = 1000.0 / T
    return torch.linspace(min(beta_start * scale, 0.999), min(beta_end * scale, 0.999), T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021): f(u) = cos²((u/T + s)/(1 + s)·π/2), β_t = min(1 − f(t+1)/f(t), max_beta).

    Without the cap, ᾱ_t = f(t+1)/f(0). float64 (T,).
    """
    check_positive_int(T, "T")
    s = check_real(s, "s", low=0, hint=" (the offset)")
    max_beta = check_real(max_beta, "max_beta", low=0, high=1, low_open=True, high_open=True)
    u = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def check_eta(eta) -> float:
    """η of DDIM: a finite real number ≥ 0 (0 = deterministic DDIM, 1 = DDPM-like noise), as a float."""
    return check_real(eta, "eta", low=0, hint=" (0 = deterministic DDIM, 1 = DDPM-like noise)")


def _check_x(x, name: str) -> torch.Tensor:
    check_float_tensor(x, name)
    if x.dim() < 1:
        raise fail(name, "a batch with a leading sample dimension (N, ...)", describe(x))
    return x


def _check_like(other, x: torch.Tensor, name: str, like: str) -> torch.Tensor:
    check_float_tensor(other, name)
    if other.shape != x.shape:
        raise fail(name, f"the shape of {like} {tuple(x.shape)}", describe(other))
    return other


def gather(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t] on x's device, shaped (N, 1, …, 1) to broadcast against x."""
    picked = values[t.to(values.device)].to(x.device)
    return picked.reshape(-1, *([1] * (x.dim() - 1)))


class Schedule:
    """A noise schedule: β_t and everything derived from it, plus the forward and reverse steps.

    ``betas``: 1-D, each in the open interval (0, 1). Derived tensors (all of shape (T,)):
    α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s, ``alpha_bars_prev`` = ᾱ_{t−1} (ᾱ_{−1} = 1),
    β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t, SNR_t = ᾱ_t/(1 − ᾱ_t). They are computed in float64
    and stored in ``dtype``. Methods return tensors in the dtype and on the device of their
    image inputs (the arithmetic runs in the wider of that dtype and the schedule's).
    """

    _TENSORS = ("betas", "alphas", "alpha_bars", "alpha_bars_prev", "beta_tildes", "snr")

    def __init__(self, betas, dtype: torch.dtype = torch.float32):
        if dtype not in (torch.float32, torch.float64):
            raise fail("dtype", "torch.float32 or torch.float64 (in float16/bfloat16 ᾱ_t rounds to 1 and sampling "
                       "gives NaN; keep the schedule in float32 and run a half-precision model with it)", describe(dtype))
        if not isinstance(betas, torch.Tensor):
            try:
                betas = torch.as_tensor(betas, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise fail("betas", "a 1-D tensor of floats in (0, 1)", describe(betas)) from None
        if betas.dim() != 1 or betas.numel() < 1 or not betas.is_floating_point():
            raise fail("betas", "a non-empty 1-D float tensor (T,) (T ≥ 1)", describe(betas))
        b = betas.detach().to(torch.float64)
        if not torch.isfinite(b).all() or bool((b <= 0).any()) or bool((b >= 1).any()):
            raise fail("betas", "values in the open interval (0, 1)",
                       f"min {float(b.min()):.4g}, max {float(b.max()):.4g}")
        alphas = 1 - b
        alpha_bars = torch.cumprod(alphas, dim=0)
        alpha_bars_prev = torch.cat([b.new_ones(1), alpha_bars[:-1]])
        values = {
            "betas": b,
            "alphas": alphas,
            "alpha_bars": alpha_bars,
            "alpha_bars_prev": alpha_bars_prev,
            "beta_tildes": (1 - alpha_bars_prev) / (1 - alpha_bars) * b,
            "snr": alpha_bars / (1 - alpha_bars),
        }
        for name in self._TENSORS:
            setattr(self, name, values[name].to(dtype))
        self.dtype = dtype

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.betas.shape[0]

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device) -> "Schedule":
        """A copy with every tensor on ``device``."""
        moved = copy.copy(self)
        for name in self._TENSORS:
            setattr(moved, name, getattr(self, name).to(device))
        return moved

    def __repr__(self) -> str:
        return (f"Schedule(T={self.T}, beta_0={float(self.betas[0]):.3g}, beta_T-1={float(self.betas[-1]):.3g}, "
                f"alpha_bar_T-1={float(self.alpha_bars[-1]):.3g}, dtype={self.dtype}, device={self.device})")

    # --- helpers -------------------------------------------------------------------------------
    def _math_dtype(self, x: torch.Tensor) -> torch.dtype:
        return torch.promote_types(self.dtype, x.dtype)

    def _coef(self, values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return gather(values, t, x).to(self._math_dtype(x))

    def _check(self, x, t, name: str = "x") -> torch.Tensor:
        """Validate images x and times t; return x in the math dtype."""
        _check_x(x, name)
        check_timesteps(t, "t", self.T, batch=x.shape[0])
        return x.to(self._math_dtype(x))

    # --- forward process -----------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        x = self._check(x0, t, "x0")
        eps = _check_like(noise, x0, "noise", "x0").to(x.dtype)
        ab = self._coef(self.alpha_bars, t, x)
        return (ab.sqrt() * x + (1 - ab).sqrt() * eps).to(x0.dtype)

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One forward step q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t I): x_t = √α_t x_{t−1} + √β_t ε."""
        x = self._check(x_prev, t, "x_prev")
        eps = _check_like(noise, x_prev, "noise", "x_prev").to(x.dtype)
        return (self._coef(self.alphas, t, x).sqrt() * x + self._coef(self.betas, t, x).sqrt() * eps).to(x_prev.dtype)

    def posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor,
                                t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_{t−1} | x_t, x_0) = N(μ̃, β̃_t I) with
        μ̃ = √ᾱ_{t−1} β_t/(1 − ᾱ_t)·x_0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)·x_t.

        Returns (mean like x_t, variance of shape (N, 1, …, 1)).
        """
        x = self._check(x_t, t, "x_t")
        clean = _check_like(x0, x_t, "x0", "x_t").to(x.dtype)
        beta, ab = self._coef(self.betas, t, x), self._coef(self.alpha_bars, t, x)
        ab_prev, alpha = self._coef(self.alpha_bars_prev, t, x), self._coef(self.alphas, t, x)
        mean = ab_prev.sqrt() * beta / (1 - ab) * clean + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * x
        variance = self._coef(self.beta_tildes, t, x)
        return mean.to(x_t.dtype), variance.to(x_t.dtype)

    # --- reverse steps -------------------------------------------------------------------------
    def ddpm_step(self, x_t: torch.Tensor, t: torch.Tensor, eps_pred: torch.Tensor,
                  z: torch.Tensor | None = None, variance: str = "beta", x0_mode: str = "none",
                  percentile: float = 0.995, prediction: str = "eps") -> torch.Tensor:
        """x_{t−1} = 1/√α_t·(x_t − β_t/√(1 − ᾱ_t)·ε_θ) + σ_t z, with σ_t² = β_t or β̃_t.

        ``z`` is the sampler's fresh noise z ~ N(0, I), not the ε of :meth:`q_sample`; it is not
        added where t == 0 (the last step returns the mean). ``z=None`` draws it with ``torch.randn_like``. ``x0_mode`` (see :func:`adjust_x0`): with ``"clip"`` or
        ``"dynamic"`` the implied x̂_0 = (x_t − √(1−ᾱ_t) ε_θ)/√ᾱ_t is adjusted first and ε_θ is
        recomputed from it, ε = (x_t − √ᾱ_t x̂_0)/√(1−ᾱ_t); the mean is then μ̃(x̂_0, x_t).
        The default ``"none"`` is the plain formula above. ``prediction``: what ``eps_pred`` is, ε
        (default), x̂_0 or v; it is turned into ε by :meth:`convert` first.
        """
        if variance not in ("beta", "beta_tilde"):
            raise fail("variance", "'beta' (σ² = β_t) or 'beta_tilde' (σ² = β̃_t)", describe(variance))
        check_prediction(prediction)
        x = self._check(x_t, t, "x_t")
        _check_like(eps_pred, x_t, "eps_pred", "x_t")
        eps = self.convert(x_t, t, eps_pred, prediction).to(x.dtype)
        z = torch.randn_like(x_t) if z is None else _check_like(z, x_t, "z", "x_t")
        _check_x0_mode(x0_mode, percentile)
        beta, ab, alpha = self._coef(self.betas, t, x), self._coef(self.alpha_bars, t, x), self._coef(self.alphas, t, x)
        if x0_mode != "none":
            _, eps = _x0_and_eps(x, eps, ab, x0_mode, percentile)
        mean = (x - beta / (1 - ab).sqrt() * eps) / alpha.sqrt()
        var = beta if variance == "beta" else self._coef(self.beta_tildes, t, x)
        nonzero = (t > 0).to(x.device, x.dtype).reshape(-1, *([1] * (x.dim() - 1)))  # no noise at t = 0
        return (mean + nonzero * var.sqrt() * z.to(x.dtype)).to(x_t.dtype)

    def ddim_step(self, x_t: torch.Tensor, t: torch.Tensor, t_prev, eps_pred: torch.Tensor,
                  eta: float = 0.0, z: torch.Tensor | None = None, x0_mode: str = "none",
                  percentile: float = 0.995, prediction: str = "eps") -> torch.Tensor:
        """Jump from t to any earlier t_prev (Song et al. 2021):

        x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t,
        x_{t_prev} = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε + σ z,
        σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev).

        ``t_prev``: an int or a per-sample integer tensor, −1 ≤ t_prev < t; −1 is the final
        step to ᾱ = 1 (returns x̂_0). η = 0 is deterministic; η = 1 over all steps is DDPM with β̃.
        ``z``: the sampler's fresh noise z ~ N(0, I), used only when η > 0 (``None`` draws it with
        ``torch.randn_like``); the ε of the formula is the model's ``eps_pred``.
        ``x0_mode`` (see :func:`adjust_x0`): ``"clip"``/``"dynamic"`` adjust x̂_0 and recompute
        ε = (x_t − √ᾱ_t x̂_0)/√(1−ᾱ_t) before the update; ``"none"`` (default) is the formula above.
        ``prediction``: what ``eps_pred`` is, ε (default), x̂_0 or v (see :meth:`convert`).
        """
        _check_x0_mode(x0_mode, percentile)
        eta = check_eta(eta)
        check_prediction(prediction)
        x = self._check(x_t, t, "x_t")
        _check_like(eps_pred, x_t, "eps_pred", "x_t")
        eps = self.convert(x_t, t, eps_pred, prediction).to(x.dtype)
        if is_int(t_prev):
            t_prev = torch.full_like(t, int(t_prev))
        elif not isinstance(t_prev, torch.Tensor) or t_prev.dtype == torch.bool or t_prev.is_floating_point():
            raise fail("t_prev", "an int or an integer tensor of shape (N,)", describe(t_prev))
        if tuple(t_prev.shape) != tuple(t.shape):
            raise fail("t_prev", f"shape {tuple(t.shape)} like t", describe(t_prev))
        t_prev = t_prev.to(t.device)
        if len(t) and costs_no_sync(t) and (int(t_prev.min()) < -1 or bool((t_prev >= t).any())):
            raise fail("t_prev", "values in [−1, t − 1] (an earlier step; −1 = the clean image)",
                       f"t_prev min {int(t_prev.min())}, max {int(t_prev.max())} with t min {int(t.min())}")
        ab = self._coef(self.alpha_bars, t, x)
        ab_prev = self._coef(torch.cat([self.alpha_bars.new_ones(1), self.alpha_bars]), t_prev + 1, x)
        x0_pred, eps = _x0_and_eps(x, eps, ab, x0_mode, percentile)
        sigma = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
        out = ab_prev.sqrt() * x0_pred + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0:
            z = torch.randn_like(x_t) if z is None else _check_like(z, x_t, "z", "x_t")
            out = out + sigma * z.to(x.dtype)
        return out.to(x_t.dtype)

    # --- conversions between ε, x̂_0 and v -----------------------------------------------------
    def convert(self, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor, source: str = "eps",
                target: str = "eps") -> torch.Tensor:
        """A network's output ``pred`` at (x_t, t), a ``source`` prediction, as a ``target`` one.

        With a = √ᾱ_t, b = √(1 − ᾱ_t) (a² + b² = 1), x_t = a x_0 + b ε and v = a ε − b x_0:

            from ε:    x̂_0 = (x_t − b ε)/a,
            from x̂_0:  ε = (x_t − a x̂_0)/b,
            from v:    x̂_0 = a x_t − b v,   ε = b x_t + a v,
            to v:      v = a ε − b x̂_0 (:meth:`v_target`).

        ``source``/``target``: ``"eps"``, ``"x0"`` or ``"v"``; equal ones return ``pred`` itself.
        """
        check_prediction(source, "source")
        check_prediction(target, "target")
        x = self._check(x_t, t, "x_t")
        p = _check_like(pred, x_t, source, "x_t")
        if source == target:
            return p
        p = p.to(x.dtype)
        ab = self._coef(self.alpha_bars, t, x)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        if source == "eps":
            x0, eps = (x - b * p) / a, p
        elif source == "x0":
            x0, eps = p, (x - a * p) / b
        else:
            x0, eps = a * x - b * p, b * x + a * p
        if target == "v":
            return self.v_target(x0, eps, t).to(x_t.dtype)
        return (eps if target == "eps" else x0).to(x_t.dtype)

    def x0_and_eps(self, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor, prediction: str = "eps",
                   x0_mode: str = "none", percentile: float = 0.995) -> tuple[torch.Tensor, torch.Tensor]:
        """What a sampler's step uses: x̂_0 and ε from a network output (:meth:`convert`), with x̂_0
        adjusted by ``x0_mode`` (:func:`adjust_x0`) and ε recomputed from it, ε = (x_t − √ᾱ_t x̂_0)/√(1−ᾱ_t)."""
        _check_x0_mode(x0_mode, percentile)
        x = self._check(x_t, t, "x_t")
        eps = self.convert(x_t, t, pred, prediction).to(x.dtype)
        x0_pred, eps = _x0_and_eps(x, eps, self._coef(self.alpha_bars, t, x), x0_mode, percentile)
        return x0_pred.to(x_t.dtype), eps.to(x_t.dtype)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t."""
        return self.convert(x_t, t, eps, "eps", "x0")

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """ε̂ = (x_t − √ᾱ_t x_0)/√(1 − ᾱ_t)."""
        return self.convert(x_t, t, x0, "x0", "eps")

    def v_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022)."""
        x = self._check(x0, t, "x0")
        eps = _check_like(noise, x0, "noise", "x0").to(x.dtype)
        ab = self._coef(self.alpha_bars, t, x)
        return (ab.sqrt() * eps - (1 - ab).sqrt() * x).to(x0.dtype)

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """ε = √(1 − ᾱ_t) x_t + √ᾱ_t v."""
        return self.convert(x_t, t, v, "v", "eps")

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v."""
        return self.convert(x_t, t, v, "v", "x0")

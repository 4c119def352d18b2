"""Slip catalogue, lesson 03: each slip a student writes gets the hint that names it; right answers pass."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlcourse.checks import (check_ddim_step, check_gelu, check_group_norm, check_rearrange_pool, check_residual_block,
                             check_sinusoidal_embedding)
from dlcourse.models import ResidualBlock, SinusoidalEmbedding
from dlcourse.schedules import Schedule, scaled_linear_betas

from slip_support import assert_named, assert_passes


# ---- group_norm ----------------------------------------------------------------------------------

def group_norm(x, groups, weight, bias, eps=1e-5, slip=None):
    n, c = x.shape[:2]
    view = {"instance": (n, c, -1), "layer": (n, 1, -1)}.get(slip, (n, groups, -1))
    if slip == "strided":
        h = x.reshape(n, c // groups, groups, -1).transpose(1, 2).reshape(n, groups, -1)
    else:
        h = x.reshape(view)
    dims = (0, 2) if slip == "batch stats" else -1
    mean = h.mean(dim=dims, keepdim=True)
    var = h.var(dim=dims, unbiased=slip == "unbiased", keepdim=True)
    spread = {"eps outside": lambda: var.sqrt() + eps, "no sqrt": lambda: var + eps}.get(
        slip, lambda: torch.sqrt(var + eps))()
    h = (h - mean) / spread
    if slip == "strided":
        h = h.reshape(n, groups, c // groups, -1).transpose(1, 2)
    h = h.reshape(x.shape)
    w, b = weight[None, :, None, None], bias[None, :, None, None]
    return {"flat affine": lambda: h * weight + bias, "swapped affine": lambda: h * b + w,
            "no affine": lambda: h}.get(slip, lambda: h * w + b)()


@pytest.mark.parametrize("slip, hint", [
    ("unbiased", "unbiased variance"),
    ("batch stats", "the statistics run over the batch too"),
    ("flat affine", "reshape them to (1, C, 1, 1)"),
    ("eps outside", "eps goes inside the square root"),
    ("instance", "that is InstanceNorm"),
    ("layer", "that is LayerNorm"),
    ("strided", "group CONSECUTIVE channels"),
    ("swapped affine", "weight and bias are swapped"),
    ("no affine", "weight and bias are not applied"),
    ("no sqrt", "not by the variance"),
])
def test_group_norm_slip(slip, hint, capsys):
    assert_named(check_group_norm, lambda *a: group_norm(*a, slip=slip), hint, capsys)


def group_norm_via_layer_norm(x, groups, weight, bias, eps=1e-5):
    """Right: F.layer_norm over each group, then the per-channel affine."""
    n, c = x.shape[:2]
    h = x.reshape(n, groups, -1)
    h = F.layer_norm(h, h.shape[-1:], eps=eps).reshape(x.shape)
    return torch.addcmul(bias[None, :, None, None], h, weight[None, :, None, None])


@pytest.mark.parametrize("fn", [group_norm, group_norm_via_layer_norm, F.group_norm])
def test_group_norm_right_answers(fn, capsys):
    assert_passes(check_group_norm, fn, capsys)


# ---- gelu ----------------------------------------------------------------------------------------

GELU_SLIPS = {
    "tanh": (lambda x: F.gelu(x, approximate="tanh"), "tanh approximation"),
    "sigmoid": (lambda x: x * torch.sigmoid(1.702 * x), "sigmoid approximation"),
    "silu": (lambda x: x * torch.sigmoid(x), "that is SiLU"),
    "relu": (lambda x: x.clamp(min=0), "that is ReLU"),
    "no half": (lambda x: x * (1 + torch.erf(x / math.sqrt(2))), "the factor ½ is missing"),
    "erf(x)": (lambda x: 0.5 * x * (1 + torch.erf(x)), "erf takes x/√2, not x:"),
    "erf(x/2)": (lambda x: 0.5 * x * (1 + torch.erf(x / 2)), "not x/2"),
    "erf(x*sqrt2)": (lambda x: 0.5 * x * (1 + torch.erf(x * math.sqrt(2))), "not x·√2"),
    "no 1+": (lambda x: 0.5 * x * torch.erf(x / math.sqrt(2)), "the 1 + is missing"),
    "phi only": (lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2))), "that is Φ(x) alone"),
}


@pytest.mark.parametrize("slip", GELU_SLIPS)
def test_gelu_slip(slip, capsys):
    fn, hint = GELU_SLIPS[slip]
    assert_named(check_gelu, fn, hint, capsys)


@pytest.mark.parametrize("fn", [lambda x: x * torch.distributions.Normal(0.0, 1.0).cdf(x).to(x.dtype),
                                lambda x: x * torch.special.ndtr(x), F.gelu,
                                lambda x: x * 0.5 * torch.erfc(-x / math.sqrt(2))])
def test_gelu_right_answers(fn, capsys):
    assert_passes(check_gelu, fn, capsys)


# ---- RearrangePool -------------------------------------------------------------------------------

class Pool(nn.Module):
    def __init__(self, in_ch, out_ch, slip=None):
        super().__init__()
        k = 3 if slip == "3x3" else 1
        inputs = in_ch if slip in ("max pool", "shuffle") else 4 * in_ch
        self.conv = nn.Conv2d(inputs, out_ch, k, padding=k // 2, bias=slip != "no bias")
        self.slip = slip

    def forward(self, x):
        n, c, h, w = x.shape
        if self.slip == "max pool":
            return self.conv(F.max_pool2d(x, 2))
        if self.slip == "shuffle":
            return self.conv(F.pixel_shuffle(x, 2))
        if self.slip in ("dy dx c", "c dx dy"):
            order = (3, 5, 1) if self.slip == "dy dx c" else (1, 5, 3)
            blocks = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, *order, 2, 4)
            return self.conv(blocks.reshape(n, 4 * c, h // 2, w // 2))
        return self.conv(F.pixel_unshuffle(x, 2))


@pytest.mark.parametrize("slip, hint", [
    ("3x3", "is 1×1"),
    ("max pool", "build the conv with 4 * in_ch inputs"),
    ("shuffle", "that is pixel_shuffle"),
    ("dy dx c", "the channels come out in the order (dy, dx, c)"),
    ("c dx dy", "the sub-pixel offsets are swapped"),
    ("no bias", "the 1×1 conv keeps its bias"),
])
def test_rearrange_pool_slip(slip, hint, capsys):
    assert_named(check_rearrange_pool, lambda a, b: Pool(a, b, slip), hint, capsys)


class PoolByHand(nn.Module):
    """Right: the (c, dy, dx) rearrangement written with reshape and permute."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = nn.Conv2d(4 * in_ch, out_ch, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        blocks = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return self.conv(blocks.reshape(n, 4 * c, h // 2, w // 2))


@pytest.mark.parametrize("cls", [Pool, PoolByHand])
def test_rearrange_pool_right_answers(cls, capsys):
    assert_passes(check_rearrange_pool, cls, capsys)


# ---- sinusoidal_embedding -------------------------------------------------------------------------

def sinusoidal(t, dim, slip=None):
    d = dim // 2
    k = torch.arange(d, dtype=torch.float32)
    exponent = {"over dim": -k / dim, "over d-1": -k / max(d - 1, 1), "plus sign": k / d,
                "k from 1": -(k + 1) / d}.get(slip, -k / d)
    base = 1000.0 if slip == "base 1000" else 10000.0
    omegas = base ** exponent
    if slip == "reversed":
        omegas = omegas.flip(0)
    angles = t.float()[:, None] * omegas
    if slip == "2 pi":
        angles = 2 * math.pi * angles
    if slip == "cos first":
        return torch.cat([angles.cos(), angles.sin()], dim=1)
    if slip == "interleaved":
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)
    if slip == "dim 0":
        return torch.cat([angles.sin(), angles.cos()], dim=0)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


@pytest.mark.parametrize("slip, hint", [
    ("cos first", "sin and cos are swapped"),
    ("reversed", "the frequencies are reversed"),
    ("interleaved", "sin and cos are interleaved"),
    ("over dim", "the exponent divides by dim"),
    ("over d-1", "the exponent divides by d − 1"),
    ("plus sign", "the exponent has the wrong sign"),
    ("k from 1", "yours starts at k = 1"),
    ("base 1000", "the base is max_period = 10000"),
    ("2 pi", "not 2π·t·ω_k"),
    ("dim 0", "return one row per step"),
])
def test_sinusoidal_slip(slip, hint, capsys):
    assert_named(check_sinusoidal_embedding, lambda t, dim: sinusoidal(t, dim, slip), hint, capsys)


def sinusoidal_by_exp(t, dim):
    """Right: ω_k = exp(−ln(10000)·k/d)."""
    d = dim // 2
    omegas = torch.exp(-math.log(10000.0) * torch.arange(d) / d)
    angles = t[:, None].float() * omegas
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


@pytest.mark.parametrize("fn", [sinusoidal, sinusoidal_by_exp, SinusoidalEmbedding])
def test_sinusoidal_right_answers(fn, capsys):
    assert_passes(check_sinusoidal_embedding, fn, capsys)


# ---- ResidualBlock --------------------------------------------------------------------------------

class Residual(nn.Module):
    def __init__(self, in_ch, out_ch, slip=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        norm = nn.BatchNorm2d if slip == "batch norm" else (lambda c: nn.GroupNorm(8, c))
        self.norm1 = norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm2 = norm(out_ch)
        project = in_ch != out_ch or slip == "always project"
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if project and slip != "no projection" else nn.Identity()
        self.act = {"relu": F.relu, "silu": F.silu, "tanh gelu": lambda h: F.gelu(h, approximate="tanh")}.get(
            slip, F.gelu)
        self.slip = slip

    def forward(self, x):
        act = self.act
        if self.slip == "act first":
            h = self.norm2(act(self.conv2(self.norm1(act(self.conv1(x))))))
        else:
            h = act(self.norm1(self.conv1(x)))
            h = self.norm2(self.conv2(h))
            if self.slip not in ("no second act", "act after sum"):
                h = act(h)
        if self.slip == "no skip":
            return h
        out = h + self.skip(x)
        if self.slip == "act after sum":
            return act(out)
        return out / math.sqrt(2) if self.slip == "rescaled" else out


@pytest.mark.parametrize("slip, hint", [
    ("batch norm", "uses nn.BatchNorm2d where the reference uses nn.GroupNorm"),
    ("relu", "the activation is GELU, not ReLU"),
    ("silu", "the activation is GELU, not SiLU"),
    ("tanh gelu", "GELU's tanh approximation"),
    ("act first", "the activation comes after the norm"),
    ("no second act", "the second GELU is missing"),
    ("act after sum", "the last GELU comes after the sum"),
    ("rescaled", "the sum is rescaled"),
    ("no skip", "you forgot the skip connection"),
    ("always project", "the skip is the identity"),
    ("no projection", "project it with nn.Conv2d(in_ch, out_ch, kernel_size=1)"),
])
def test_residual_block_slip(slip, hint, capsys):
    assert_named(check_residual_block, lambda a, b: Residual(a, b, slip), hint, capsys)


@pytest.mark.parametrize("cls", [Residual, ResidualBlock])
def test_residual_block_right_answers(cls, capsys):
    assert_passes(check_residual_block, cls, capsys)


# ---- ddim_step -----------------------------------------------------------------------------------

SCHEDULE = Schedule(scaled_linear_betas(50))


def ddim_step(x_t, t, t_prev, eps_pred, eta=0.0, z=None, slip=None):
    alpha_bars = SCHEDULE.alpha_bars
    ab = alpha_bars[t].view(-1, 1, 1, 1)
    if slip == "alpha_bars[-1]":
        ab_prev = alpha_bars[t_prev]
    elif t_prev < 0:
        ab_prev = torch.ones(())
    else:
        ab_prev = alpha_bars[t_prev + {"prev + 1": 1, "prev - 1": -1}.get(slip, 0)]
    root = {"x0 over abar": ab, "x0 over sqrt prev": ab_prev.sqrt()}.get(slip, ab.sqrt())
    eps_coefficient = (1 - ab) if slip == "x0 unrooted eps" else (1 - ab).sqrt()
    x0 = (x_t + eps_coefficient * eps_pred if slip == "x0 plus" else x_t - eps_coefficient * eps_pred) / root
    ratio = (1 - ab) / (1 - ab_prev) if slip == "ratio inverted" else (1 - ab_prev) / (1 - ab)
    last = 1 - ab_prev / ab if slip == "last turned" else 1 - ab / ab_prev
    sigma = (1.0 if slip == "no eta" else eta) * ratio.sqrt() * last.sqrt()
    eps_var = {"sigma not squared": 1 - ab_prev - sigma, "no sigma in eps": 1 - ab_prev,
               "abar_t in eps": 1 - ab - sigma ** 2}.get(slip, 1 - ab_prev - sigma ** 2)
    x0_coefficient = ab_prev if slip == "unrooted prev" else ab_prev.sqrt()
    x_prev = x0_coefficient * x0 + eps_var.clamp(min=0).sqrt() * eps_pred
    if eta > 0 and slip != "no noise":
        x_prev = x_prev + (sigma ** 2 if slip == "sigma squared noise" else sigma) * z
    return x_prev


@pytest.mark.parametrize("slip, hint", [
    ("alpha_bars[-1]", "alpha_bars[-1] is the LAST entry"),
    ("prev + 1", "one step too late"),
    ("prev - 1", "one step too early"),
    ("x0 over abar", "x̂0 has 1/ᾱ_t where it needs 1/√ᾱ_t"),
    ("x0 over sqrt prev", "x̂0 has 1/√ᾱ_prev where it needs 1/√ᾱ_t"),
    ("x0 unrooted eps", "x̂0's ε term has (1 − ᾱ_t) where it needs √(1 − ᾱ_t)"),
    ("x0 plus", "x̂0's ε term has the wrong sign"),
    ("ratio inverted", "σ has 1/√((1 − ᾱ_prev)/(1 − ᾱ_t))"),
    ("last turned", "your output has NaN: a square root of a negative number. In σ, 1 − ᾱ_t/ᾱ_prev ≥ 0"),
    ("no eta", "σ is missing its factor η"),
    ("sigma not squared", "subtract the variance σ², not the standard deviation σ"),
    ("no sigma in eps", "so ε keeps only the rest"),
    ("abar_t in eps", "the ε term has √(1 − ᾱ_t − σ²) where it needs √(1 − ᾱ_prev − σ²)"),
    ("unrooted prev", "the x̂0 term has ᾱ_prev where it needs √ᾱ_prev"),
    ("no noise", "the noise term is missing"),
    ("sigma squared noise", "the noise term has σ² where it needs σ"),
])
def test_ddim_step_slip(slip, hint, capsys):
    assert_named(lambda fn: check_ddim_step(fn, SCHEDULE), lambda *a: ddim_step(*a, slip=slip), hint, capsys)


def ddim_step_via_package(x_t, t, t_prev, eps_pred, eta=0.0, z=None):
    """Right, through the package's x̂0 and a per-sample t_prev."""
    x0 = SCHEDULE.predict_x0(x_t, t, eps_pred)
    ab_prev = torch.cat([torch.ones(1), SCHEDULE.alpha_bars])[t_prev + 1]
    ab = SCHEDULE.alpha_bars[t].view(-1, 1, 1, 1)
    sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
    out = ab_prev.sqrt() * x0 + torch.sqrt(1 - ab_prev - sigma ** 2) * eps_pred
    return out + sigma * z if eta > 0 else out


@pytest.mark.parametrize("fn", [ddim_step, ddim_step_via_package, SCHEDULE.ddim_step])
def test_ddim_step_right_answers(fn, capsys):
    assert_passes(lambda f: check_ddim_step(f, SCHEDULE), fn, capsys)

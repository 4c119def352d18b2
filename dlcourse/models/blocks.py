"""U-Net building blocks of lessons 01–03.

Lesson 01: ``DownBlock``, ``UpBlock`` (conv → BatchNorm → ReLU, max-pool, transposed conv).
Lesson 02: ``EmbedMLP`` (a number or a vector → one value per channel).
Lesson 03: ``SinusoidalEmbedding``, ``ResidualBlock``, ``RearrangePool`` and the
``norm`` / ``activation`` / ``pool`` / ``residual`` / ``upsample`` switches of the blocks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dlcourse.validation import (check_bool, check_float_tensor, check_images, check_positive_int, check_real,
                                 describe, fail)

__all__ = [
    "NORMS",
    "ACTIVATIONS",
    "POOLS",
    "UPSAMPLES",
    "make_norm",
    "make_activation",
    "DownBlock",
    "UpBlock",
    "EmbedMLP",
    "SinusoidalEmbedding",
    "ResidualBlock",
    "RearrangePool",
]

NORMS = ("batch", "group")
ACTIVATIONS = ("relu", "gelu")
POOLS = ("max", "rearrange")
UPSAMPLES = ("transpose", "nearest")


def _check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise fail(name, f"one of {choices}", describe(value))
    return value


def make_norm(kind: str, channels: int, groups: int = 8) -> nn.Module:
    """BatchNorm2d ("batch") or GroupNorm ("group", gcd(groups, channels) groups so it always divides)."""
    _check_choice(kind, "norm", NORMS)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def make_activation(kind: str) -> nn.Module:
    """ReLU(x) = max(0, x) or GELU(x) = x·Φ(x)."""
    _check_choice(kind, "activation", ACTIVATIONS)
    return nn.ReLU() if kind == "relu" else nn.GELU()


def _double_conv(in_ch: int, out_ch: int, norm: str, activation: str) -> nn.Sequential:
    """(conv 3×3 → norm → activation) × 2; keeps H and W."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        make_norm(norm, out_ch),
        make_activation(activation),
        nn.Conv2d(out_ch, out_ch, 3, padding=1),
        make_norm(norm, out_ch),
        make_activation(activation),
    )


def conv_body(in_ch: int, out_ch: int, norm: str, activation: str, residual: bool) -> nn.Module:
    """The two-conv body of every block: plain (lesson 01) or a ResidualBlock (lesson 03)."""
    if check_bool(residual, "residual"):
        return ResidualBlock(in_ch, out_ch, activation=activation, norm=norm)
    return _double_conv(in_ch, out_ch, norm, activation)


def _check_feature_map(x, owner: str, channels: int, even: bool = False) -> None:
    check_images(x, f"{owner}: x", channels)
    if even and (x.shape[-2] % 2 or x.shape[-1] % 2):
        raise fail(f"{owner}: x", "an even height and width (the block halves them)", describe(x))


class DownBlock(nn.Module):
    """Encoder step: (conv 3×3 → norm → act) × 2, then pool by 2.

    (N, in_ch, H, W) → (N, out_ch, H/2, W/2). Lesson 01 defaults: BatchNorm, ReLU,
    max-pool. ``pool="rearrange"`` uses ``RearrangePool`` (lesson 03);
    ``residual=True`` replaces the two convs by a ``ResidualBlock``.
    """

    def __init__(self, in_ch: int, out_ch: int, *, norm: str = "batch", activation: str = "relu",
                 pool: str = "max", residual: bool = False):
        super().__init__()
        self.in_ch, self.out_ch = check_positive_int(in_ch, "in_ch"), check_positive_int(out_ch, "out_ch")
        self.body = conv_body(in_ch, out_ch, norm, activation, residual)
        _check_choice(pool, "pool", POOLS)
        self.pool = nn.MaxPool2d(2) if pool == "max" else RearrangePool(out_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_feature_map(x, f"DownBlock(in_ch={self.in_ch})", self.in_ch, even=True)
        return self.pool(self.body(x))


class UpBlock(nn.Module):
    """Decoder step: concatenate, upsample by 2, then (conv 3×3 → norm → act) × 2.

    Channel arithmetic, in this order:

    1. ``h = cat([x, skip], dim=1)``: x has a channels, skip has b, so ``in_ch = a + b``;
    2. upsample: ``ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)``,
       (N, in_ch, H, W) → (N, out_ch, 2H, 2W);
    3. two convs out_ch → out_ch at 2H × 2W.

    x and skip have the same H × W (the skip is the output of the matching DownBlock).

    Checkerboard artifacts: a transposed conv with kernel 2 and stride 2 paints each
    2×2 output cell with four different weights, and kernel 3 with stride 2 overlaps
    unevenly; both can leave a periodic grid pattern in samples. ``upsample="nearest"``
    (nearest-neighbour ×2, then a 3×3 conv in_ch → out_ch) is the usual fix.
    """

    def __init__(self, in_ch: int, out_ch: int, *, norm: str = "batch", activation: str = "relu",
                 residual: bool = False, upsample: str = "transpose"):
        super().__init__()
        self.in_ch, self.out_ch = check_positive_int(in_ch, "in_ch"), check_positive_int(out_ch, "out_ch")
        _check_choice(upsample, "upsample", UPSAMPLES)
        if upsample == "transpose":
            self.upsample = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        else:
            self.upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                          nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.body = conv_body(out_ch, out_ch, norm, activation, residual)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        owner = f"UpBlock(in_ch={self.in_ch})"
        check_images(x, f"{owner}: x")
        check_images(skip, f"{owner}: skip")
        if x.shape[0] != skip.shape[0] or x.shape[-2:] != skip.shape[-2:]:
            raise fail(f"{owner}: skip", f"the batch size and H×W of x {tuple(x.shape)}", describe(skip))
        got = x.shape[1] + skip.shape[1]
        if got != self.in_ch:
            raise fail(
                owner,
                f"skip concatenation with {self.in_ch} channels",
                f"{got} ({x.shape[1]} from x + {skip.shape[1]} from skip) — did you concatenate the "
                "skip connection along dim=1, and is in_ch = channels of x + channels of skip?",
            )
        return self.body(self.upsample(torch.cat([x, skip], dim=1)))


class EmbedMLP(nn.Module):
    """Linear → GELU → Linear: (N, in_dim) → (N, out_dim). Embeds t/T, a sinusoidal code or a context c.

    The biases make the zero input (the null context) a distinct, learned embedding.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = check_positive_int(in_dim, "in_dim"), check_positive_int(out_dim, "out_dim")
        self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        check_float_tensor(v, f"EmbedMLP(in_dim={self.in_dim}): input")
        if v.dim() != 2 or v.shape[1] != self.in_dim:
            raise fail(f"EmbedMLP(in_dim={self.in_dim}): input", f"shape (N, {self.in_dim})", describe(v))
        return self.net(v)


class SinusoidalEmbedding(nn.Module):
    """Transformer-style code of a step t: (N,) → (N, dim).

    emb(t) = [sin(t·ω_0), …, sin(t·ω_{d−1}), cos(t·ω_0), …, cos(t·ω_{d−1})],
    ω_k = max_period^(−k/d), k = 0 … d−1, d = dim/2.
    So t = 0 gives [0, …, 0, 1, …, 1]; ω_0 = 1 is the fastest frequency, the slowest
    has period close to 2π·max_period. t is the raw step index (not divided by T).
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        check_positive_int(dim, "dim")
        if dim % 2:
            raise fail("dim", "an even int (half sines, half cosines)", describe(dim))
        self.dim, self.max_period = dim, check_real(max_period, "max_period", low=1, low_open=True)
        half = dim // 2
        omegas = self.max_period ** (-torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("omegas", omegas.float(), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        owner = f"SinusoidalEmbedding(dim={self.dim}): t"
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype == torch.bool or t.is_complex():
            raise fail(owner, "a 1-D tensor of steps, shape (N,)", describe(t))
        angles = t.float()[:, None] * self.omegas.float()[None, :]  # float32 even in a half model
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResidualBlock(nn.Module):
    """out = act(norm2(conv2(h))) + skip(x), with h = act(FiLM(norm1(conv1(x)))).

    skip is a 1×1 conv when in_ch ≠ out_ch, else the identity. With ``emb_dim`` set,
    ``forward(x, emb)`` applies FiLM after the first norm:
    h ← h·(1 + scale) + shift, (scale, shift) = Linear(emb) split in two, one value
    per channel. Norm is GroupNorm (``groups`` groups, reduced to gcd(groups, out_ch))
    unless ``norm="batch"``.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None = None, groups: int = 8,
                 activation: str = "gelu", norm: str = "group"):
        super().__init__()
        self.in_ch, self.out_ch = check_positive_int(in_ch, "in_ch"), check_positive_int(out_ch, "out_ch")
        check_positive_int(groups, "groups")
        self.emb_dim = None if emb_dim is None else check_positive_int(emb_dim, "emb_dim")
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm1 = make_norm(norm, out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm2 = make_norm(norm, out_ch, groups)
        self.act = make_activation(activation)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.film = nn.Linear(emb_dim, 2 * out_ch) if emb_dim is not None else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        owner = f"ResidualBlock(in_ch={self.in_ch})"
        _check_feature_map(x, owner, self.in_ch)
        h = self.norm1(self.conv1(x))
        if self.film is not None:
            if emb is None or not isinstance(emb, torch.Tensor) or emb.shape != (x.shape[0], self.emb_dim):
                raise fail(f"{owner}: emb", f"a float tensor of shape (N, emb_dim) = ({x.shape[0]}, {self.emb_dim})",
                           describe(emb))
            scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        elif emb is not None:
            raise fail(f"{owner}: emb", "None (build the block with emb_dim=... to use an embedding)", describe(emb))
        h = self.act(self.norm2(self.conv2(self.act(h))))
        return h + self.skip(x)


class RearrangePool(nn.Module):
    """Space-to-depth pooling: pixel_unshuffle(2), then a 1×1 conv 4·in_ch → out_ch.

    (N, C, H, W) → (N, 4C, H/2, W/2): every 2×2 patch becomes 4 channels (order
    c, dy, dx), so no value is discarded (a max-pool keeps 1 value in 4); the conv
    then learns how to mix them.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.in_ch, self.out_ch = check_positive_int(in_ch, "in_ch"), check_positive_int(out_ch, "out_ch")
        self.conv = nn.Conv2d(4 * in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_feature_map(x, f"RearrangePool(in_ch={self.in_ch})", self.in_ch, even=True)
        return self.conv(F.pixel_unshuffle(x, 2))

"""Self-checks for the U-Net building blocks (lessons 01 and 03).

Each check builds the learner's class next to the reference from ``dlcourse.models``,
compares parameter counts and outputs (see ``check_module``), and adds a hint for
the usual mistakes.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dlcourse.models import (
    DownBlock,
    RearrangePool,
    ResidualBlock,
    SinusoidalEmbedding,
    TimeUNet,
    UNetDenoiser,
    UpBlock,
    count_parameters,
)

from dlcourse.validation import describe

from .core import CheckResult, Slip, check_module, compare, failure, name_slip, run_student, seeded

__all__ = [
    "check_down_block",
    "check_up_block",
    "check_sinusoidal_embedding",
    "check_residual_block",
    "check_rearrange_pool",
    "check_time_unet",
    "check_unet",
    "check_train_step",
    "check_group_norm",
    "check_gelu",
]


def _images(channels: int, size: int = 8, n: int = 2) -> torch.Tensor:
    return torch.randn(n, channels, size, size)


def _shape_hint(student_out, x: torch.Tensor, out_ch: int, factor: float, verb: str) -> str | None:
    """Hints for an output with the wrong channel count or size (factor 0.5 = halve, 2 = double)."""
    if not isinstance(student_out, torch.Tensor) or student_out.dim() != 4:
        return None
    if student_out.shape[1] != out_ch:
        return f"the output should have out_ch = {out_ch} channels, yours has {student_out.shape[1]}."
    want = int(x.shape[-1] * factor)
    if student_out.shape[-1] != want or student_out.shape[-2] != want:
        padding = " The 3×3 convs need padding=1 to keep H and W." if student_out.shape[-1] < want else ""
        return (f"the block should {verb} H and W ({x.shape[-1]} → {want}); "
                f"yours gives {tuple(student_out.shape[-2:])}.{padding}")
    return None


def _conv_layer_hint(student: nn.Module) -> str | None:
    """Name a conv built with the wrong kernel or without bias (lessons 01's blocks: 3×3 convs with bias,
    a 2×2 transposed conv)."""
    for m in student.modules():
        if isinstance(m, nn.ConvTranspose2d) and m.kernel_size != (2, 2):
            return f"the transposed conv has kernel_size={m.kernel_size[0]}; use kernel_size=2, stride=2."
        if type(m) is nn.Conv2d and m.kernel_size != (3, 3):
            return f"a conv has kernel_size={m.kernel_size[0]}; the block's convs are 3×3 (kernel_size=3, padding=1)."
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is None:
            return "a conv was built with bias=False; the block's convs keep their bias."
    return None


def _body_slips(body: nn.Sequential) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """(conv → norm → act) × 2 run in the usual wrong ways with the reference's own layers."""
    conv1, norm1, act1, conv2, norm2, act2 = body

    def act_first(h):
        return norm2(act2(conv2(norm1(act1(conv1(h))))))

    return [
        ("the activation comes after the norm: conv → BatchNorm → ReLU (yours is conv → ReLU → BatchNorm).", act_first),
        ("the last ReLU is missing: each conv is followed by BatchNorm AND ReLU.",
         lambda h: norm2(conv2(act1(norm1(conv1(h)))))),
        ("the ReLU after the first conv is missing: each conv is followed by BatchNorm AND ReLU.",
         lambda h: act2(norm2(conv2(norm1(conv1(h)))))),
        ("only one norm is applied per pair of convs: conv → BatchNorm → ReLU → conv → BatchNorm → ReLU.",
         lambda h: act2(conv2(act1(norm1(conv1(h)))))),
    ]


def _down_block_slips(reference: DownBlock, x: torch.Tensor) -> list[Slip]:
    pool = reference.pool
    slips = [Slip(hint + " Then nn.MaxPool2d(2).", lambda wrong=wrong: pool(wrong(x)))
             for hint, wrong in _body_slips(reference.body)]
    return slips + [
        Slip("pool AFTER the two convs: (conv → BatchNorm → ReLU) × 2 at full resolution, then nn.MaxPool2d(2).",
             lambda: reference.body(pool(x))),
        Slip("that is average pooling; the block max-pools: nn.MaxPool2d(2) (or F.max_pool2d(h, 2)).",
             lambda: F.avg_pool2d(reference.body(x), 2)),
    ]


def _up_block_slips(reference: UpBlock, x: torch.Tensor, skip: torch.Tensor) -> list[Slip]:
    up, body = reference.upsample, reference.body
    slips = [Slip("x first: torch.cat([x, skip], dim=1); yours puts the skip first (the weights see the channels in "
                  "the wrong order).", lambda: body(up(torch.cat([skip, x], 1)))),
             Slip("the skip is not used: concatenate the skip connection, torch.cat([x, skip], dim=1), not x twice.",
                  lambda: body(up(torch.cat([x, x], 1)))),
             Slip("the skip connection is replaced by zeros: torch.cat([x, skip], dim=1).",
                  lambda: body(up(torch.cat([x, torch.zeros_like(skip)], 1))))]
    return slips + [Slip(hint, lambda wrong=wrong: wrong(up(torch.cat([x, skip], 1)))) for hint, wrong in _body_slips(body)]


def check_down_block(cls) -> CheckResult:
    """``cls(in_ch, out_ch)``: (conv 3×3 → BatchNorm → ReLU) × 2, then MaxPool2d(2)."""

    def diagnose(student_out, reference_out, args):
        if isinstance(student_out, Exception):
            return "the first conv takes in_ch channels, the second out_ch; both output out_ch."
        x = args[0]
        hint = _shape_hint(student_out, x, reference_out.shape[1], 0.5, "halve")
        if hint and student_out.shape[-1] == x.shape[-1]:
            return hint + " Add nn.MaxPool2d(2) after the two convs."
        reference = seeded(DownBlock, (x.shape[1], reference_out.shape[1]), 0).to(x.device).train()
        with torch.no_grad():
            return hint or name_slip(student_out, _down_block_slips(reference, x)) or (
                "check the order: conv → BatchNorm → ReLU, twice, and only then the max-pool.")

    def diagnose_parameters(student, reference, ctor_args):
        out_ch = ctor_args[1]
        missing = count_parameters(reference) - count_parameters(student)
        layer_hint = _conv_layer_hint(student)
        if layer_hint:
            return layer_hint
        if missing == 4 * out_ch:
            return "both nn.BatchNorm2d(out_ch) layers are missing: each conv is followed by one (2·out_ch parameters each)."
        if missing == 2 * out_ch:
            return "one nn.BatchNorm2d(out_ch) is missing, or a conv was built with bias=False."
        return "two 3×3 convs (in_ch → out_ch, out_ch → out_ch) with bias, each followed by nn.BatchNorm2d(out_ch)."

    return check_module(cls, DownBlock, [(3, 8), (8, 16)], lambda a: (_images(a[0]),), name="DownBlock",
                        diagnose=diagnose, diagnose_parameters=diagnose_parameters)


def check_up_block(cls) -> CheckResult:
    """``cls(in_ch, out_ch)`` with ``forward(x, skip)``: cat along dim=1, ConvTranspose2d(k=2, s=2), two convs."""

    def diagnose(student_out, reference_out, args):
        x, skip = args[0], args[1]
        if isinstance(student_out, Exception):
            return _up_block_error_hint(student_out, x.shape[1], skip.shape[1], reference_out.shape[1])
        hint = _shape_hint(student_out, x, reference_out.shape[1], 2, "double")
        if hint:
            return hint + " Concatenate along dim=1, then upsample with nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)."
        reference = seeded(UpBlock, (x.shape[1] + skip.shape[1], reference_out.shape[1]), 0).to(x.device).train()
        with torch.no_grad():
            return name_slip(student_out, _up_block_slips(reference, x, skip)) or (
                "check the order: cat([x, skip], dim=1) (x first) → ConvTranspose2d → (conv → BatchNorm → ReLU) × 2.")

    def diagnose_parameters(student, reference, ctor_args):
        in_ch, out_ch = ctor_args
        if not any(isinstance(m, nn.ConvTranspose2d) for m in student.modules()):
            return "upsample with nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2) (it has weights to learn)."
        layer_hint = _conv_layer_hint(student)
        if layer_hint:
            return layer_hint
        return (f"the transposed conv maps the concatenated in_ch = {in_ch} channels to out_ch = {out_ch} "
                "(kernel 2, stride 2); then two 3×3 convs out_ch → out_ch, each with nn.BatchNorm2d(out_ch).")

    return check_module(cls, UpBlock, [(16, 8), (32, 8)], lambda a: (_images(a[0] // 2, 4), _images(a[0] // 2, 4)),
                        name="UpBlock", diagnose=diagnose, diagnose_parameters=diagnose_parameters)


def _up_block_error_hint(error: Exception, x_channels: int, skip_channels: int, out_ch: int) -> str:
    """Blame the concatenation only when a layer got x's channels alone; else the layer's channel count."""
    in_ch = x_channels + skip_channels
    found = re.search(r"to have (\d+) channels, but got (\d+) channels", str(error))
    if found and int(found.group(2)) == out_ch and int(found.group(1)) == in_ch and "transposed=1" not in str(error):
        return (f"the convs after the transposed conv get its out_ch = {out_ch} channels: build them as "
                f"nn.Conv2d(out_ch, out_ch, 3, padding=1), not from in_ch = {in_ch}.")
    if found and int(found.group(2)) == in_ch:
        return (f"the concatenation is right (x has {x_channels} channels, skip {skip_channels}, together in_ch = "
                f"{in_ch}), but a layer after it was built for {found.group(1)} input channels: the transposed conv "
                "takes all of them, nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2), and the two convs "
                "after it take out_ch.")
    if "Sizes of tensors must match" in str(error):
        return ("x and skip must have the same H × W when they are concatenated: concatenate first, "
                "torch.cat([x, skip], dim=1), and upsample the result.")
    return ("did you concatenate the skip connection along dim=1, torch.cat([x, skip], dim=1)? "
            "in_ch counts the channels of x plus those of skip.")


def sinusoid_slips(t: torch.Tensor, dim: int) -> list[Slip]:
    """Common wrong embeddings, each named by the hint that fixes it."""
    d = dim // 2
    k = torch.arange(d, dtype=torch.float64)
    steps = t.detach().cpu().double()[:, None]

    def embedding(omegas, order="sin cos", angle_of=lambda a: a):
        angles = angle_of(steps * omegas)
        sin, cos = angles.sin(), angles.cos()
        if order == "interleaved":
            return torch.stack([sin, cos], -1).flatten(1)
        return torch.cat([cos, sin] if order == "cos sin" else [sin, cos], 1)

    omegas = 10000.0 ** (-k / d)
    return [
        Slip("sin and cos are swapped: the first half is sin(t·ω_k), the second cos(t·ω_k).",
             lambda: embedding(omegas, "cos sin")),
        Slip("the frequencies are reversed: ω_k = max_period^(−k/d) starts at ω_0 = 1 (fast) and decreases.",
             lambda: embedding(omegas.flip(0))),
        Slip("sin and cos are interleaved: concatenate [all sines, all cosines] with torch.cat(..., dim=-1).",
             lambda: embedding(omegas, "interleaved")),
        Slip("the exponent divides by dim; it should divide by d = dim/2: ω_k = max_period^(−k/(dim/2)).",
             lambda: embedding(10000.0 ** (-k / dim))),
        Slip("the exponent divides by d − 1; it should divide by d = dim/2: ω_k = max_period^(−k/d).",
             lambda: embedding(10000.0 ** (-k / (d - 1)))),
        Slip("the exponent has the wrong sign: ω_k = max_period^(−k/d) shrinks with k (yours grows).",
             lambda: embedding(10000.0 ** (k / d))),
        Slip("k runs from 0 to d − 1 (torch.arange(d)), so ω_0 = 1; yours starts at k = 1.",
             lambda: embedding(10000.0 ** (-(k + 1) / d))),
        Slip("the base is max_period = 10000, not 1000: ω_k = 10000^(−k/d).", lambda: embedding(1000.0 ** (-k / d))),
        Slip("the angles are t·ω_k, not 2π·t·ω_k.", lambda: embedding(omegas, angle_of=lambda a: 2 * math.pi * a)),
    ]


def check_sinusoidal_embedding(fn_or_cls) -> CheckResult:
    """A function ``fn(t, dim)`` or a class ``cls(dim)`` called on t: (N,) → (N, dim).

    emb(t) = [sin(t·ω_k)]_k ++ [cos(t·ω_k)]_k, ω_k = 10000^(−k/(dim/2)), k = 0 … dim/2 − 1.
    """
    if isinstance(fn_or_cls, type):
        def student(t, dim):
            return fn_or_cls(dim)(t)
    else:
        student = fn_or_cls

    def reference(t, dim):
        return SinusoidalEmbedding(dim)(t)

    def diagnose(student_out, reference_out, args):
        if not isinstance(student_out, torch.Tensor) or student_out.shape != reference_out.shape:
            return "return one row per step: shape (N, dim), the first dim/2 columns sines, the rest cosines."
        return "emb(t) = [sin(t·ω_0), …, sin(t·ω_{d−1}), cos(t·ω_0), …, cos(t·ω_{d−1})] with ω_k = 10000^(−k/d), d = dim/2."

    inputs = [
        (torch.tensor([0, 1, 2, 10]), 8),
        (torch.tensor([0, 3, 50, 500, 999]), 32),
        (torch.arange(7), 2),
    ]
    return compare(student, reference, inputs, name="SinusoidalEmbedding", atol=1e-4, diagnose=diagnose,
                   slips=lambda args: sinusoid_slips(*args))


def _residual_slips(block: ResidualBlock, x: torch.Tensor) -> list[Slip]:
    """The residual block run in the usual wrong ways with the reference's own layers."""
    conv1, norm1, conv2, norm2, skip = block.conv1, block.norm1, block.conv2, block.norm2, block.skip

    def run(act=F.gelu, order="norm act", last_act=True, act_after_sum=False, scale=1.0):
        def step(conv, norm, h, with_act=True):
            if order == "act norm":
                return norm(act(conv(h)))
            h = norm(conv(h))
            return act(h) if with_act else h

        h = step(conv2, norm2, step(conv1, norm1, x), with_act=last_act and not act_after_sum)
        out = (h + skip(x)) * scale
        return act(out) if act_after_sum else out

    return [
        Slip("the activation is GELU, not ReLU: F.gelu (or nn.GELU()).", lambda: run(act=F.relu)),
        Slip("the activation is GELU, not SiLU: F.gelu (or nn.GELU()).", lambda: run(act=F.silu)),
        Slip("that is GELU's tanh approximation; use the exact F.gelu(x) (approximate='none').",
             lambda: run(act=lambda h: F.gelu(h, approximate="tanh"))),
        Slip("the activation comes after the norm: conv → GroupNorm → GELU (yours is conv → GELU → GroupNorm).",
             lambda: run(order="act norm")),
        Slip("the second GELU is missing: conv → GroupNorm → GELU, twice, then add the skip.",
             lambda: run(last_act=False)),
        Slip("the last GELU comes after the sum; apply it to h, then return h + skip(x).",
             lambda: run(act_after_sum=True)),
        Slip("the sum is rescaled; return h + skip(x) as it is.", lambda: run(scale=2 ** -0.5)),
    ]


def check_residual_block(cls) -> CheckResult:
    """``cls(in_ch, out_ch)``: act(norm(conv(act(norm(conv(x)))))) + skip(x), GroupNorm(8), GELU."""

    def diagnose(student_out, reference_out, args):
        x = args[0]
        if isinstance(student_out, Exception):
            return ("when in_ch ≠ out_ch, x cannot be added to h directly: project it with "
                    "nn.Conv2d(in_ch, out_ch, kernel_size=1).")
        hint = _shape_hint(student_out, x, reference_out.shape[1], 1, "keep")
        if hint:
            return hint
        if x.shape[1] == reference_out.shape[1] and torch.allclose(student_out, reference_out - x, atol=1e-4):
            return "you forgot the skip connection: return h + x (the identity when in_ch == out_ch)."
        reference = seeded(ResidualBlock, (x.shape[1], reference_out.shape[1]), 0).to(x.device).train()
        with torch.no_grad():
            return name_slip(student_out, _residual_slips(reference, x), atol=1e-4) or (
                "order: conv → GroupNorm → GELU → conv → GroupNorm → GELU, then add skip(x).")

    def diagnose_parameters(student, reference, ctor_args):
        in_ch, out_ch = ctor_args
        extra = count_parameters(student) - count_parameters(reference)
        if in_ch == out_ch and extra == in_ch * out_ch + out_ch:
            return "when in_ch == out_ch the skip is the identity; use a 1×1 conv only when the channels differ."
        if in_ch != out_ch and extra == -(in_ch * out_ch + out_ch):
            return "when in_ch ≠ out_ch the skip needs nn.Conv2d(in_ch, out_ch, kernel_size=1)."
        return "two 3×3 convs (in_ch → out_ch, out_ch → out_ch), each followed by nn.GroupNorm(8, out_ch)."

    return check_module(cls, ResidualBlock, [(16, 16), (8, 16)], lambda a: (_images(a[0]),), name="ResidualBlock",
                        diagnose=diagnose, diagnose_parameters=diagnose_parameters)


def check_rearrange_pool(cls) -> CheckResult:
    """``cls(in_ch, out_ch)``: F.pixel_unshuffle(x, 2) (C → 4C, H/2, W/2), then a 1×1 conv 4·in_ch → out_ch."""

    def diagnose(student_out, reference_out, args):
        if isinstance(student_out, Exception):
            found = re.search(r"to have (\d+) channels, but got (\d+) channels", str(student_out))
            if found and 4 * int(found.group(2)) == args[0].shape[1]:
                return "that is pixel_shuffle, which upsamples (C → C/4); downsample with F.pixel_unshuffle(x, 2)."
            return "pixel_unshuffle(x, 2) gives 4·in_ch channels: the conv must take 4 * in_ch inputs."
        x = args[0]
        hint = _shape_hint(student_out, x, reference_out.shape[1], 0.5, "halve")
        if hint:
            return hint + " Use F.pixel_unshuffle(x, 2) (not pixel_shuffle, which upsamples)."
        conv = seeded(RearrangePool, (x.shape[1], reference_out.shape[1]), 0).to(x.device).conv
        n, c, h, w = x.shape
        blocks = x.reshape(n, c, h // 2, 2, w // 2, 2)

        def rearranged(*order):
            return conv(blocks.permute(0, *order, 2, 4).reshape(n, 4 * c, h // 2, w // 2))

        with torch.no_grad():
            return name_slip(student_out, [
                Slip("the channels come out in the order (dy, dx, c); pixel_unshuffle orders them (c, dy, dx): "
                     "use F.pixel_unshuffle(x, 2).", lambda: rearranged(3, 5, 1)),
                Slip("the sub-pixel offsets are swapped (c, dx, dy); pixel_unshuffle orders them (c, dy, dx): "
                     "use F.pixel_unshuffle(x, 2).", lambda: rearranged(1, 5, 3)),
            ]) or "use F.pixel_unshuffle(x, 2) (channel order c, dy, dx), then the conv."

    def diagnose_parameters(student, reference, ctor_args):
        in_ch, out_ch = ctor_args
        n = count_parameters(student)
        if n == 9 * 4 * in_ch * out_ch + out_ch:
            return "the conv after pixel_unshuffle is 1×1 (kernel_size=1): mixing the 4 sub-pixels needs no neighbours."
        if n == in_ch * out_ch + out_ch:
            return "pixel_unshuffle turns in_ch channels into 4·in_ch: build the conv with 4 * in_ch inputs."
        if n == 4 * in_ch * out_ch:
            return "the 1×1 conv keeps its bias: nn.Conv2d(4 * in_ch, out_ch, kernel_size=1)."
        return "one nn.Conv2d(4 * in_ch, out_ch, kernel_size=1) after F.pixel_unshuffle(x, 2)."

    return check_module(cls, RearrangePool, [(8, 8), (4, 16)], lambda a: (_images(a[0]),), name="RearrangePool",
                        diagnose=diagnose, diagnose_parameters=diagnose_parameters)


def _error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


# Configurations of the U-Net checks, keyed by image channels so that a hint can rebuild the reference
# (the same seed gives the same weights) from the input alone. In the first, every level has the same
# channels, so even a misplaced embedding runs and can be recognised by its output.
_TIME_UNET_CONFIGS = {
    1: dict(image_channels=1, channels=(8, 8), image_size=8, T=20),
    3: dict(image_channels=3, channels=(8, 16), image_size=8, T=50),
}


def _time_unet_slips(model: TimeUNet, x: torch.Tensor, t: torch.Tensor) -> list[Slip]:
    """The time embedding e_t = time_mlps[level](t/T) added in the usual wrong ways, each named by its hint."""

    def run(code: torch.Tensor | None, where: str) -> torch.Tensor:
        e = [mlp(code)[:, :, None, None] for mlp in model.time_mlps] if code is not None else []
        first, h, skips = model._encode(x)
        for level, up in enumerate(model.ups):
            skip = skips.pop()
            if where == "h" or (where == "deepest" and level == 0):
                h = h + e[level]
            elif where == "skip":
                skip = skip + e[level]
            elif where == "reversed":
                h = h + e[-1 - level]
            h = up(h, skip)
            if where == "after":
                h = h + e[level]
        return model.head(torch.cat([h, first], dim=1))

    steps = t.to(x.dtype)[:, None]
    code = steps / model.T
    candidates = {
        "t is not normalised: the package feeds t/T ∈ [0, 1) to the time MLPs, (t.float() / self.T)[:, None].":
            lambda: run(steps, "h"),
        "t is divided by T − 1; the package divides by T: (t.float() / self.T)[:, None].":
            lambda: run(steps / (model.T - 1), "h"),
        "e_t is added to the skip connection; add it to h, the features coming up from below, before each up block.":
            lambda: run(code, "skip"),
        "e_t is added after the up block; add it to h before calling up(h, skip).":
            lambda: run(code, "after"),
        "only the deepest level gets the time: add e_t at every level, each from its own MLP (self.time_mlps[level]).":
            lambda: run(code, "deepest"),
        "the levels are swapped: self.time_mlps[0] belongs to the deepest up block, self.ups[0] (zip the two lists).":
            lambda: run(code, "reversed"),
        "t never reaches the network: add e_t = self.time_mlps[level](t/T) to h before each up block.":
            lambda: run(None, "none"),
    }
    return [Slip(hint, variant) for hint, variant in candidates.items()]


def check_time_unet(cls) -> CheckResult:
    """``cls(image_channels, channels, image_size, T)`` with ``forward(x, t)``: lesson 02's TimeUNet.

    Before each up block, h ← h + e_t with e_t = time_mlps[level](t/T) broadcast over H and W
    (level 0 = the deepest, with self.ups[0]).
    """

    def inputs(config):
        x = torch.randn(4, config["image_channels"], config["image_size"], config["image_size"])
        return x, torch.tensor([0, config["T"] // 3, config["T"] // 2, config["T"] - 1])

    def diagnose(student_out, reference_out, args):
        x, t = args
        if isinstance(student_out, Exception):
            text = _error_text(student_out)
            if "EmbedMLP" in text or "mat1" in text or "dtype" in text:
                return ("the time MLPs read t/T as a float column of shape (N, 1): (t.float() / self.T)[:, None] "
                        "(t itself is a long tensor of shape (N,)).")
            if "size" in text or "broadcast" in text or "shape" in text:
                return ("e_t = self.time_mlps[level](...) has shape (N, c): add it as e_t[:, :, None, None], shape "
                        "(N, c, 1, 1), so that every pixel of channel c gets the same value.")
            return None
        reference = seeded(TimeUNet, _TIME_UNET_CONFIGS[x.shape[1]], 0).to(x.device).train()
        with torch.no_grad():
            hint = name_slip(student_out, _time_unet_slips(reference, x, t))
        return hint or "h ← h + self.time_mlps[level]((t.float() / self.T)[:, None])[:, :, None, None] before each up block."

    return check_module(cls, TimeUNet, list(_TIME_UNET_CONFIGS.values()), inputs, name="TimeUNet",
                        diagnose=diagnose)


# Keyed by image channels, like _TIME_UNET_CONFIGS: equal channels first (a mis-wired skip of the right
# shape runs and is recognised by its output), then three levels of growing width.
_UNET_CONFIGS = {
    1: dict(image_channels=1, channels=(8, 8), image_size=8),
    3: dict(image_channels=3, channels=(4, 8, 16), image_size=16),
}


def _unet_with_skips(model: UNetDenoiser, x: torch.Tensor, skip_of, bottleneck: bool = True) -> torch.Tensor:
    """Lesson 01's forward with ``skip_of(h, skips)`` choosing what each up block gets as its skip."""
    first, h, skips = model._encode(x)
    if not bottleneck:
        h = skips[-1]
    for up in model.ups:
        h = up(h, skip_of(h, skips))
    return model.head(torch.cat([h, first], dim=1))


def _first_in_first_out(h, skips):
    return skips.pop(0)


def check_unet(cls) -> CheckResult:
    """``cls(image_channels, channels, image_size)``: lesson 01's U-Net, wired like ``UNetDenoiser``.

    down i = DownBlock(c_{i−1}, c_i) (c_{−1} = c_0), up blocks deepest first, up i = UpBlock(2·c_i, c_{i−1}),
    each taking h and the output of down i (last in, first out).
    """
    channel_hint = ("channel counts: down i is MyDownBlock(c[i − 1], c[i]) (c[0] → c[0] for the first); the up blocks "
                    "run deepest first and up i is MyUpBlock(2 * c[i], c[i − 1]) (c[0] for i = 0), because h and the "
                    "skip of down i both have c[i] channels.")

    def diagnose(student_out, reference_out, args):
        (x,) = args
        if isinstance(student_out, Exception):
            text = _error_text(student_out)
            if "Sizes of tensors must match" in text or "H×W" in text:
                return ("an up block got a skip of another resolution: keep the output of every down block "
                        "(append after h = down(h)) and hand them back last in, first out (skips.pop()), "
                        "so the deepest up block gets the deepest skip.")
            if "channels" in text:
                return channel_hint
            return None
        reference = seeded(UNetDenoiser, _UNET_CONFIGS[x.shape[1]], 0).to(x.device).train()
        with torch.no_grad():
            hint = name_slip(student_out, [
                Slip("the up blocks got h as their own skip: pass the output of the matching down block, skips.pop().",
                     lambda: _unet_with_skips(reference, x, lambda h, skips: h)),
                Slip("the skip connections carry nothing (zeros): pass the output of the matching down block, "
                     "skips.pop().", lambda: _unet_with_skips(reference, x, lambda h, skips: torch.zeros_like(h))),
                Slip("the skips are handed back first in, first out: the deepest up block needs the deepest skip, "
                     "skips.pop() (last in, first out).", lambda: _unet_with_skips(reference, x, _first_in_first_out)),
                Slip("the bottleneck is left out: h = self.bottleneck(h) after the last down block, before the ups.",
                     lambda: _unet_with_skips(reference, x, lambda h, skips: skips.pop(), bottleneck=False)),
            ])
        if hint:
            return hint
        return "each up block takes h and skips.pop(), after the bottleneck; the head is cat([h, stem output])."

    def diagnose_parameters(student, reference, ctor_args):
        return channel_hint

    def inputs(config):
        return (torch.randn(2, config["image_channels"], config["image_size"], config["image_size"]),)

    return check_module(cls, UNetDenoiser, list(_UNET_CONFIGS.values()), inputs, name="U-Net",
                        diagnose=diagnose, diagnose_parameters=diagnose_parameters)


def _add_noise(x0: torch.Tensor, beta: float) -> torch.Tensor:
    """Lesson 01's corruption x_noisy = (1 − β) x0 + β ε, ε ~ N(0, I)."""
    return (1 - beta) * x0 + beta * torch.randn_like(x0)


def _train_step(model, optimizer, x0, beta, *, corrupt=None, target="clean", loss_fn=F.mse_loss,
                order=("zero_grad", "backward", "step")) -> float:
    """Lesson 01's step: x_noisy = add_noise(x0, β), loss = MSE(model(x_noisy), x0), zero_grad, backward, step.

    ``corrupt``, ``target``, ``loss_fn`` and ``order`` (a subset of the three calls, in the order they run) make its slips.
    """
    x_noisy = (corrupt or _add_noise)(x0, beta)
    loss = loss_fn(model(x_noisy), {"clean": x0, "noisy": x_noisy}[target])
    calls = {"zero_grad": optimizer.zero_grad, "backward": loss.backward, "step": optimizer.step}
    for name in order:
        calls[name]()
    return loss.item()


# The first loss (before any update) tells the corruption and the target; the later ones the update order.
_FIRST_LOSS_SLIPS = [
    ("the target is the noisy image: the network should predict the clean batch, F.mse_loss(model(x_noisy), x0).",
     {"target": "noisy"}),
    ("the two coefficients of add_noise are swapped: x_noisy = (1 − β)·x0 + β·ε.",
     {"corrupt": lambda x0, beta: beta * x0 + (1 - beta) * torch.randn_like(x0)}),
    ("the noise is uniform (torch.rand_like); add_noise uses Gaussian noise, torch.randn_like(x0).",
     {"corrupt": lambda x0, beta: (1 - beta) * x0 + beta * torch.rand_like(x0)}),
    ("x0 is not scaled by (1 − β): x_noisy = (1 − β)·x0 + β·ε.",
     {"corrupt": lambda x0, beta: x0 + beta * torch.randn_like(x0)}),
    ("the model sees the clean x0: corrupt it first, x_noisy = add_noise(x0, beta), and predict from x_noisy.",
     {"corrupt": lambda x0, beta: x0}),
    ("that is the mean absolute error (F.l1_loss); the loss is the mean SQUARED error, F.mse_loss.",
     {"loss_fn": F.l1_loss}),
    ("the squared errors are summed; take their mean, F.mse_loss(model(x_noisy), x0).",
     {"loss_fn": lambda prediction, target: (prediction - target).square().sum()}),
]
_UPDATE_SLIPS = [
    ("the gradients pile up from step to step: call optimizer.zero_grad() before loss.backward().",
     ("backward", "step")),
    ("the weights never change: call optimizer.step() after loss.backward() (and zero_grad() before "
     "backward, not between backward and step).", ("zero_grad", "backward")),
]


def _run_steps(step_fn, x0, beta, n_steps: int = 3) -> tuple[list, list[torch.Tensor]]:
    """``n_steps`` calls of ``step_fn`` on a small seeded conv net with plain SGD: (returned values, final weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        returned = []
        for k in range(n_steps):
            torch.manual_seed(100 + k)
            returned.append(step_fn(model, optimizer, x0, beta))
    return returned, [p.detach().clone() for p in model.parameters()]


def _train_step_error_hint(error: Exception) -> str | None:
    if "modified by an inplace operation" in str(error):
        return ("optimizer.step() ran before loss.backward(): it changed the weights the graph still needs. "
                "zero_grad → backward → step.")
    return None


def check_train_step(fn) -> CheckResult:
    """``fn(model, optimizer, x0, beta) -> float``: one step of lesson 01's training loop.

    Corrupt x0 with ``add_noise`` (x_noisy = (1 − β) x0 + β ε), loss = MSE(model(x_noisy), x0),
    optimizer.zero_grad(), loss.backward(), optimizer.step(), return loss.item(). Three steps
    on a small network, with the same noise as the reference, must give the same losses and weights.
    """
    name = "train_step"
    x0 = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1
    beta = 0.3  # not 0.5, where (1 − β) = β would hide swapped coefficients
    returned, weights = run_student(_run_steps, (fn, x0, beta), name, error_hint=_train_step_error_hint)
    expected, expected_weights = _run_steps(_train_step, x0, beta)
    first = returned[0]
    if isinstance(first, torch.Tensor):
        graph = " that still holds its graph (requires_grad=True)" if first.requires_grad else ""
        raise failure(name, f"returned a tensor{graph}, expected a float",
                      "return loss.item(). Appended to losses, the tensor would keep every step's computation graph "
                      "alive (memory grows each step) and the plots would need .detach().")
    if not isinstance(first, float):
        raise failure(name, f"returned {describe(first)}, expected the loss as a float", "end with return loss.item().")
    if abs(first - expected[0]) > 1e-5:
        hint = next((text for text, slip in _FIRST_LOSS_SLIPS
                     if abs(first - _run_steps(lambda *a, slip=slip: _train_step(*a, **slip), x0, beta, 1)[0][0]) < 1e-5),
                    "corrupt x0 with add_noise(x0, beta) (one torch.randn_like draw), predict with model(x_noisy) and "
                    "compare with the clean x0 by F.mse_loss.")
        raise failure(name, f"the first loss is {first:.6f}, the reference {expected[0]:.6f}", hint)
    worst = max(abs(a - b) for a, b in zip(returned, expected))
    same_weights = all(torch.allclose(p, q, atol=1e-6) for p, q in zip(weights, expected_weights))
    if worst > 1e-5 or not same_weights:
        hint = "zero_grad → backward → step, once per call, and return loss.item()."
        for text, order in _UPDATE_SLIPS:
            wrong, wrong_weights = _run_steps(lambda *a, order=order: _train_step(*a, order=order), x0, beta)
            if (max(abs(a - b) for a, b in zip(returned, wrong)) < 1e-5
                    and all(torch.allclose(p, q, atol=1e-6) for p, q in zip(weights, wrong_weights))):
                hint = text
                break
        raise failure(name, f"the losses of three steps are {returned}, the reference {expected}", hint)
    print(f"✅ {name}: three steps give the reference's losses and weights (max |diff| = {worst:.1e})")
    return CheckResult(name, len(returned), worst, ["cpu"], unit="steps")


def group_norm_slips(x, groups, weight, bias, eps: float = 1e-5) -> list[Slip]:
    """GroupNorm computed in the usual wrong ways, each with the hint that names it."""
    n, c = x.shape[:2]
    scale, shift = weight[None, :, None, None], bias[None, :, None, None]

    def normalise(view, dims=-1, unbiased=False, eps_inside=True):
        h = x.reshape(view)
        mean, var = h.mean(dim=dims, keepdim=True), h.var(dim=dims, unbiased=unbiased, keepdim=True)
        spread = torch.sqrt(var + eps) if eps_inside else torch.sqrt(var) + eps
        return ((h - mean) / spread).reshape(x.shape)

    by_group = (n, groups, -1)
    return [
        Slip("you used the unbiased variance (divides by n − 1); GroupNorm divides by n: var(unbiased=False).",
             lambda: normalise(by_group, unbiased=True) * scale + shift),
        Slip("the statistics run over the batch too: each sample is normalised on its own, mean and var over "
             "dim=-1 of x.reshape(N, groups, -1) only.", lambda: normalise(by_group, (0, 2)) * scale + shift),
        Slip("weight and bias are per channel: reshape them to (1, C, 1, 1) (weight[None, :, None, None]); as (C,) "
             "they broadcast along the last axis, W.", lambda: normalise(by_group) * weight + bias),
        Slip("eps goes inside the square root: (x − mean)/√(var + eps), not /(√var + eps).",
             lambda: normalise(by_group, eps_inside=False) * scale + shift),
        Slip("every channel is normalised on its own (that is InstanceNorm): group C/groups channels together, "
             "x.reshape(N, groups, −1).", lambda: normalise((n, c, -1)) * scale + shift),
        Slip("all channels share one mean and variance (that is LayerNorm, groups = 1): use `groups` groups, "
             "x.reshape(N, groups, −1).", lambda: normalise((n, 1, -1)) * scale + shift),
        Slip("the groups are formed across channels with a stride (reshape(N, C/groups, groups, ...)); "
             "group CONSECUTIVE channels: x.reshape(N, groups, −1).",
             lambda: _strided_groups(x, groups, eps) * scale + shift),
        Slip("weight and bias are swapped: weight scales, bias shifts (x̂·weight + bias).",
             lambda: normalise(by_group) * shift + scale),
        Slip("weight and bias are not applied: multiply by weight and add bias, per channel.",
             lambda: normalise(by_group)),
        Slip("divide by the standard deviation √(var + eps), not by the variance.",
             lambda: ((x.reshape(by_group) - x.reshape(by_group).mean(-1, keepdim=True))
                      / (x.reshape(by_group).var(-1, unbiased=False, keepdim=True) + eps)).reshape(x.shape) * scale
             + shift),
    ]


def _strided_groups(x, groups: int, eps: float) -> torch.Tensor:
    """GroupNorm's normalisation with group g holding channels g, g + groups, g + 2·groups, …"""
    n, c = x.shape[:2]
    h = x.reshape(n, c // groups, groups, -1).transpose(1, 2).reshape(n, groups, -1)
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + eps)
    return h.reshape(n, groups, c // groups, -1).transpose(1, 2).reshape(x.shape)


def check_group_norm(fn) -> CheckResult:
    """``fn(x, groups, weight, bias, eps=1e-5)`` like ``F.group_norm``: per sample and group of C/groups channels,
    (x − mean)/√(var + eps) with the biased variance, then weight and bias per channel."""
    g = torch.Generator().manual_seed(0)
    inputs = [
        (3 * torch.randn(2, 8, 4, 4, generator=g) + 1, 4, torch.rand(8, generator=g) + 0.5, torch.randn(8, generator=g)),
        (torch.randn(3, 6, 5, 7, generator=g), 2, torch.ones(6), torch.zeros(6)),
        (torch.randn(1, 4, 2, 2, generator=g), 4, torch.randn(4, generator=g), torch.randn(4, generator=g)),  # G = C
        (torch.randn(2, 4, 3, 4, generator=g) - 2, 2, torch.rand(4, generator=g) + 0.5, torch.randn(4, generator=g)),
        # nearly constant groups (variance ≈ 1e-6 < eps): where eps sits shows
        (1e-3 * torch.randn(2, 4, 3, 3, generator=g), 2, torch.rand(4, generator=g) + 0.5, torch.randn(4, generator=g)),
    ]

    def reference(x, groups, weight, bias):
        return F.group_norm(x, groups, weight, bias, eps=1e-5)

    def diagnose(student_out, reference_out, args):
        if isinstance(student_out, Exception):
            if "size" in str(student_out) or "broadcast" in str(student_out):
                return ("weight and bias have shape (C,): reshape them to (1, C, 1, 1) (weight[None, :, None, None]) "
                        "so they scale and shift whole channels.")
            return None
        return ("view x as (N, groups, −1), normalise with the mean and the biased variance of each row, reshape "
                "back, then weight and bias per channel.")

    return compare(fn, reference, inputs, name="group_norm", atol=1e-4, diagnose=diagnose,
                   slips=lambda args: group_norm_slips(*args))


def gelu_slips(x: torch.Tensor) -> list[Slip]:
    """GELU(x) = x·Φ(x) = x·(1 + erf(x/√2))/2 as the usual mistakes compute it."""
    def with_phi(phi):
        return lambda: x * phi

    root2 = math.sqrt(2)
    return [
        Slip("that is the tanh approximation; use the exact x·Φ(x) with torch.erf.", lambda: F.gelu(x, approximate="tanh")),
        Slip("that is the sigmoid approximation x·σ(1.702x); use the exact x·Φ(x), Φ(x) = (1 + erf(x/√2))/2.",
             lambda: x * torch.sigmoid(1.702 * x)),
        Slip("that is SiLU, x·σ(x); GELU weighs x by the normal CDF: x·(1 + erf(x/√2))/2.", lambda: F.silu(x)),
        Slip("that is ReLU; GELU is the smooth x·Φ(x) = x·(1 + erf(x/√2))/2.", lambda: F.relu(x)),
        Slip("the factor ½ is missing: Φ(x) = (1 + erf(x/√2))/2.", with_phi(1 + torch.erf(x / root2))),
        Slip("erf takes x/√2, not x: Φ(x) = (1 + erf(x/√2))/2.", with_phi((1 + torch.erf(x)) / 2)),
        Slip("erf takes x/√2, not x/2: Φ(x) = (1 + erf(x/√2))/2.", with_phi((1 + torch.erf(x / 2)) / 2)),
        Slip("erf takes x/√2, not x·√2: Φ(x) = (1 + erf(x/√2))/2.", with_phi((1 + torch.erf(x * root2)) / 2)),
        Slip("the 1 + is missing: Φ(x) = (1 + erf(x/√2))/2, not erf(x/√2)/2.", with_phi(torch.erf(x / root2) / 2)),
        Slip("that is Φ(x) alone; GELU multiplies it by x: x·Φ(x).", lambda: (1 + torch.erf(x / root2)) / 2),
    ]


def check_gelu(fn) -> CheckResult:
    """``fn(x) -> GELU(x) = x·Φ(x) = x·(1 + erf(x/√2))/2`` (exact, not the tanh approximation), against F.gelu."""
    g = torch.Generator().manual_seed(0)
    inputs = [(torch.linspace(-6, 6, 121),), (3 * torch.randn(4, 8, 3, 3, generator=g),),
              (torch.linspace(-3, 3, 13, dtype=torch.float64),)]
    return compare(fn, F.gelu, inputs, name="gelu", atol=1e-5, slips=lambda args: gelu_slips(*args),
                   diagnose=lambda student_out, reference_out, args: "GELU(x) = x·(1 + erf(x/√2))/2.")

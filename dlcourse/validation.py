"""Argument checks whose errors teach: each names the argument, what was expected, what came."""
from __future__ import annotations

import torch


def fail(name: str, expected: str, got) -> ValueError:
    """Build the course's standard error: ``name: expected ..., got ...``."""
    return ValueError(f"{name}: expected {expected}, got {got}")


def describe(x) -> str:
    """Short description of a value for error messages (shape/dtype/device for tensors)."""
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
    return f"{type(x).__name__} {x!r}"[:200]


def check_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise fail(name, "a torch.Tensor", describe(x))
    return x


def check_float_tensor(x, name: str) -> torch.Tensor:
    check_tensor(x, name)
    if not x.is_floating_point():
        raise fail(name, "a floating-point tensor (e.g. float32)", describe(x))
    return x


def check_images(x, name: str = "x", channels: int | None = None) -> torch.Tensor:
    """A float batch of images N x C x H x W (optionally with ``channels`` channels)."""
    check_float_tensor(x, name)
    if x.dim() != 4:
        raise fail(name, "a batch of images with 4 dims (N, C, H, W)", describe(x))
    if channels is not None and x.shape[1] != channels:
        raise fail(name, f"{channels} channels (N, {channels}, H, W)", describe(x))
    return x


def check_positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise fail(name, "a positive int", describe(v))
    return v


def check_probability(p, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise fail(name, "a probability in [0, 1]", describe(p))
    return float(p)

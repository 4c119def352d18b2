"""Argument checks whose errors teach: each names the argument, what was expected, what came."""
from __future__ import annotations

import math

import numpy as np
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
    """An int >= 1 (numpy ints accepted), as a Python int."""
    return check_int(v, name, low=1, expected="a positive int")


def check_probability(p, name: str) -> float:
    """A finite real number in [0, 1], as a float."""
    value = _real_value(p)
    if value is None or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise fail(name, "a probability in [0, 1]", describe(p))
    return float(value)


def _real_value(v):
    """``v`` as a Python number if it is a real scalar (int, float, numpy scalar, one-element tensor), else None."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.dim() > 1 or v.dtype == torch.bool or v.is_complex():
            return None
        return v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def check_real(v, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """A finite real number (int, float, numpy scalar or 0-d tensor) within the given bounds, as a float.

    ``low_open``/``high_open`` exclude the bound itself; ``hint`` is added to the message (e.g. ", e.g. 0.999").
    """
    value = _real_value(v)
    bounds = ""
    if low is not None and high is not None:
        bounds = f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        bounds = f" {'>' if low_open else '>='} {low}"
    elif high is not None:
        bounds = f" {'<' if high_open else '<='} {high}"
    expected = f"a finite real number{bounds}{hint}"
    if value is None or not math.isfinite(value):
        raise fail(name, expected, describe(v))
    if low is not None and (value < low or (low_open and value == low)):
        raise fail(name, expected, describe(v))
    if high is not None and (value > high or (high_open and value == high)):
        raise fail(name, expected, describe(v))
    return float(value)


def is_int(v, low: int | None = None) -> bool:
    """True for an integer (Python or numpy, not a bool) that is >= ``low`` when given."""
    ok = isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
    return ok and (low is None or v >= low)


def is_real(v) -> bool:
    """True for a finite real number (int, float, numpy scalar or one-element tensor; not a bool)."""
    value = _real_value(v)
    return value is not None and math.isfinite(value)


def check_int(v, name: str, *, low: int | None = None, high: int | None = None,
              expected: str | None = None) -> int:
    """An integer (Python or numpy, not bool) in [``low``, ``high``] (either bound optional), as a Python int."""
    if not is_int(v, low) or (high is not None and v > high):
        if expected is None:
            expected = ("an int" if low is None else f"an int >= {low}") if high is None else \
                (f"an int <= {high}" if low is None else f"an int in [{low}, {high}]")
        raise fail(name, expected, describe(v))
    return int(v)


def check_bool(v, name: str) -> bool:
    """True or False (numpy bools too), as a Python bool."""
    if not isinstance(v, (bool, np.bool_)):
        raise fail(name, "True or False", describe(v))
    return bool(v)


def check_seed(v, name: str = "seed") -> int:
    """A seed: an int in [0, 2**63), as a Python int."""
    seed = check_int(v, name, low=0, expected="an int seed >= 0, e.g. 0")
    if seed >= 2**63:
        raise fail(name, "an int seed below 2**63", describe(v))
    return seed


def check_choice(v, name: str, choices):
    """One of ``choices`` (same type and ==, so True is not 1); returned unchanged."""
    shown = [repr(c) for c in choices]
    if not any(type(v) is type(c) and v == c for c in choices):
        listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]
        raise fail(name, listed, describe(v))
    return v


def costs_no_sync(t: torch.Tensor) -> bool:
    """True when reading ``t``'s values costs no device synchronisation (a CPU tensor).

    Per-step functions (a reverse step, a U-Net forward) check value ranges only then, so a sampler
    loop on a GPU never waits on the device; sampler loops check their timesteps once per run as ints.
    """
    return t.device.type == "cpu"


def check_timesteps(t, name: str, T: int, batch: int | None = None) -> torch.Tensor:
    """An integer tensor of timesteps in {0, …, T−1} (1-D of length ``batch`` when given).

    Dtype and shape are always checked; the value range only where it costs no device sync
    (:func:`costs_no_sync`).
    """
    check_tensor(t, name)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise fail(name, "an integer tensor of timesteps (e.g. torch.long, one per image)", describe(t))
    if batch is not None and tuple(t.shape) != (batch,):
        raise fail(name, f"a 1-D tensor of {batch} timesteps (one per image)", describe(t))
    if t.numel() and costs_no_sync(t) and (int(t.min()) < 0 or int(t.max()) > T - 1):
        raise fail(name, f"timesteps in [0, {T - 1}] (0-based, T = {T})",
                   f"values in [{int(t.min())}, {int(t.max())}]")
    return t

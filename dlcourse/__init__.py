"""dlcourse: the helper package of a hands-on course on diffusion models.

Modules are organised by concept (``data``, ``schedules``, ``sampling``,
``models``, ``guidance``, ``training``, ``metrics``, ``plotting``, ``widgets``,
``checks``, ``authoring``). This top level holds only what every notebook needs
first: the device, seeding, and the quick/full mode banner.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from .config import budget, is_quick, mode, mode_and_reason

__version__ = "0.1.0"
__all__ = ["get_device", "seed_everything", "setup", "budget", "is_quick", "mode", "__version__"]


def get_device() -> torch.device:
    """Pick the best available device: cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (all devices) for reproducible runs."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def banner() -> str:
    """One line saying which budget is on, why, and where the work runs."""
    chosen, reason = mode_and_reason()
    meaning = {
        "full": "sized for one CUDA GPU",
        "cpu": "sized for a CPU: each lesson in about 10 minutes, small images (DLCOURSE_BUDGET=full for GPU sizes)",
        "quick": "CI smoke run: tiny data, few steps - pictures and numbers are not meaningful",
    }[chosen]
    return f"dlcourse {__version__} | {chosen.upper()} budget ({reason}): {meaning} | device: {get_device()}"


def setup(seed: int = 0) -> torch.device:
    """Start of every notebook: seed everything, print the banner, return the device."""
    seed_everything(seed)
    print(banner())
    return get_device()

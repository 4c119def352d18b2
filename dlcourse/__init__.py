"""dlcourse: the helper package of a hands-on course on diffusion models.

Modules are organised by concept (``data``, ``schedules``, ``sampling``,
``models``, ``guidance``, ``training``, ``metrics``, ``plotting``, ``widgets``,
``checks``, ``authoring``). This top level holds only what every notebook needs
first: the device, seeding, and the quick/full mode banner.
"""
from __future__ import annotations

from .config import budget, is_quick, mode, mode_and_reason
from .device import get_device, seed_everything

__version__ = "0.1.0"
__all__ = ["get_device", "seed_everything", "setup", "budget", "is_quick", "mode", "__version__"]


def banner() -> str:
    """One line saying which budget is on, why, and where the work runs."""
    chosen, reason = mode_and_reason()
    meaning = {
        "full": "sized for one CUDA GPU",
        "cpu": "sized for a CPU: each lesson in about 4-15 minutes on 2 cores, small images (DLCOURSE_BUDGET=full for GPU sizes)",
        "quick": "CI smoke run: tiny data, few steps - pictures and numbers are not meaningful",
    }[chosen]
    return f"dlcourse {__version__} | {chosen.upper()} budget ({reason}): {meaning} | device: {get_device()}"


def setup(seed: int = 0) -> torch.device:
    """Start of every notebook: seed everything, print the banner, return the device."""
    seed_everything(seed)
    print(banner())
    return get_device()

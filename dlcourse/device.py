"""Where the work runs and how it is seeded: the first two calls of every notebook."""
from __future__ import annotations

import random

import numpy as np
import torch

from .validation import check_seed, describe, fail

__all__ = ["get_device", "seed_everything", "check_device"]


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
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's legacy seed is 32-bit
    torch.manual_seed(seed)


def check_device(device, name: str = "device") -> torch.device:
    """``device`` (a name like "cpu", "cuda:0", or a torch.device) as a torch.device this machine has."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise fail(name, "a device such as 'cpu', 'cuda' or 'mps'", describe(device)[:80]) from None
    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": mps is not None and mps.is_available()}
    if not available.get(device.type, False):
        have = [kind for kind, ok in available.items() if ok]
        raise fail(name, f"a device this machine has ({', '.join(have)})", f"{str(device)!r}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise fail(name, f"a CUDA index below {torch.cuda.device_count()}", f"{str(device)!r}")
    return device

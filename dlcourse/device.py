"""Where the work runs and how it is seeded: the first two calls of every notebook."""
from __future__ import annotations

import random

import numpy as np
import torch

from .validation import check_seed

__all__ = ["get_device", "seed_everything"]


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

"""Quick mode and per-lesson budgets: the one place where work is shrunk for CI.

``DLCOURSE_QUICK=1`` (also ``true``/``yes``/``on``) switches every notebook to a
small budget so that it runs in a minute or two on a 2-core CPU. Full mode is the
default and is what students see on a GPU. Notebooks read their sizes with
``budget("02_ddpm")`` and never branch on the mode themselves, so they read the
same in both modes.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

_TRUE = {"1", "true", "yes", "on"}


def is_quick() -> bool:
    """True when the environment variable ``DLCOURSE_QUICK`` is set to a true value."""
    return os.environ.get("DLCOURSE_QUICK", "").strip().lower() in _TRUE


# Each lesson's sizes: (full mode, quick mode). Keys are read by the notebooks.
# n_images: training images; train_steps: optimizer steps; batch_size;
# T: diffusion steps; n_samples: images sampled for grids/metrics.
BUDGETS: dict[str, dict[str, tuple]] = {
    "00_welcome": {
        "n_images": (64, 32),
    },
    "01_unet_denoiser": {
        "n_images": (10_000, 512),
        "image_size": (32, 32),
        "channels": ((64, 128, 256), (16, 32)),
        "train_steps": (3_000, 60),
        "batch_size": (128, 32),
        "noise_level": (0.5, 0.5),
    },
    "02_ddpm": {
        # quick mode: 16x16 images, so that 300 steps give samples in the data range within the CPU budget
        "n_images": (10_000, 512),
        "image_size": (32, 16),
        "channels": ((64, 128, 256), (16, 32)),
        "T": (1000, 100),
        "train_steps": (8_000, 300),
        "batch_size": (128, 32),
        "n_samples": (40, 10),
    },
    "03_optimizations": {
        # quick mode: 16x16 images and a short chain, so that the whole notebook runs in about a minute on a CPU
        "n_images": (10_000, 256),
        "image_size": (32, 16),
        "channels": ((64, 128, 256), (16, 32)),
        "T": (1000, 50),
        # two models (lesson-02 style and optimised) are trained on this same budget each
        "train_steps": (4_000, 30),
        "batch_size": (128, 16),
        "n_samples": (500, 16),
        "ema_decay": (0.999, 0.99),
        # DDIM steps S of the FID-vs-steps table (T is added as the last column)
        "ddim_steps": ((10, 20, 50, 100), (10,)),
        # the DDIM steps used to compare models and EMA
        "sampling_steps": (50, 10),
        # timed optimizer steps per row of the speed table
        "timed_steps": (20, 2),
    },
    "04_classifier_free_guidance": {
        "n_images": (10_000, 512),
        "image_size": (32, 16),
        "channels": ((64, 128, 256), (16, 32)),
        "T": (1000, 100),
        "train_steps": (8_000, 50),
        "batch_size": (128, 32),
        # samples per guidance weight w in the trade-off sweep (balanced over the 5 classes)
        "n_samples": (500, 10),
        # test images that FID compares with
        "n_test": (2_000, 100),
        "sampling_steps": (50, 5),
        # samples per (w, class) in the w-slider explorer (25 values of w: one batched run)
        "explorer_per_class": (4, 1),
        # repeats per timing of batched vs two-pass guidance (the minimum is reported)
        "timing_repeats": (5, 1),
    },
}


def budget(lesson: str) -> SimpleNamespace:
    """Return the sizes for ``lesson`` in the current mode, plus ``quick`` (bool)."""
    if lesson not in BUDGETS:
        raise ValueError(
            f"lesson: expected one of {sorted(BUDGETS)}, got {lesson!r}"
        )
    pick = 1 if is_quick() else 0
    sizes = {key: pair[pick] for key, pair in BUDGETS[lesson].items()}
    return SimpleNamespace(quick=bool(pick), **sizes)

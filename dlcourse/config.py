"""Budgets: the one place where work is sized for the machine a lesson runs on.

Three budgets, one table. Notebooks read their sizes with ``budget("02_ddpm")`` and never
branch on the mode themselves, so they read the same under every budget.

- ``full``  — one CUDA GPU: the sizes the course is designed for (default where CUDA exists).
- ``cpu``   — a laptop without a GPU: each lesson in about 4–15 minutes on 2 cores, with pictures and
  numbers that mean something (16×16 images, small U-Nets; sized by measurement, see
  ``docs/results.md``). Default where there is no CUDA.
- ``quick`` — CI smoke runs: seconds per lesson, numbers meaningless.

Choose explicitly with ``DLCOURSE_BUDGET=quick|cpu|full``; ``DLCOURSE_QUICK=1`` (also
``true``/``yes``/``on``) is kept as a short form of ``DLCOURSE_BUDGET=quick``.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

_TRUE = {"1", "true", "yes", "on"}
MODES = ("full", "cpu", "quick")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def mode_and_reason() -> tuple[str, str]:
    """The budget in force and why: ``DLCOURSE_BUDGET``, then ``DLCOURSE_QUICK``, then the hardware."""
    chosen = os.environ.get("DLCOURSE_BUDGET", "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"DLCOURSE_BUDGET: expected one of {', '.join(MODES)}, got {chosen!r} "
                             "(unset it to choose by hardware)")
        return chosen, f"DLCOURSE_BUDGET={chosen}"
    if os.environ.get("DLCOURSE_QUICK", "").strip().lower() in _TRUE:
        return "quick", "DLCOURSE_QUICK=1"
    if _cuda_available():
        return "full", "a CUDA GPU is available"
    return "cpu", "no CUDA GPU found"


def mode() -> str:
    """The budget in force: ``"full"``, ``"cpu"`` or ``"quick"`` (see :func:`mode_and_reason`)."""
    return mode_and_reason()[0]


def is_quick() -> bool:
    """True under the quick (CI) budget."""
    return mode() == "quick"


# The U-Net switches of the two models lesson 03 compares (dlcourse.models.UNet keyword arguments).
LESSON02 = {"norm": "batch", "activation": "relu", "pool": "max", "time_embedding": "mlp", "residual": False,
            "upsample": "transpose"}
OPTIMISED = {"norm": "group", "activation": "gelu", "pool": "rearrange", "time_embedding": "sinusoidal",
             "residual": True, "upsample": "nearest"}

# Each lesson's sizes: (full, cpu, quick). Keys are read by the notebooks.
# n_images: training images; train_steps: optimizer steps; batch_size; lr: peak learning rate;
# T: diffusion steps; n_samples: images sampled for grids/metrics.
BUDGETS: dict[str, dict[str, tuple]] = {
    "00_welcome": {
        "n_images": (64, 64, 32),
    },
    "01_unet_denoiser": {
        "n_images": (10_000, 4_000, 512),
        "image_size": (32, 16, 32),
        "channels": ((64, 128, 256), (32, 64), (16, 32)),
        "train_steps": (3_000, 1_500, 60),
        "batch_size": (128, 64, 32),
        "noise_level": (0.5, 0.5, 0.5),
    },
    "02_ddpm": {
        "n_images": (10_000, 10_000, 512),
        "image_size": (32, 16, 16),
        "channels": ((64, 128, 256), (32, 64), (16, 32)),
        "T": (1000, 200, 100),
        "train_steps": (8_000, 4_000, 300),
        "batch_size": (128, 64, 32),
        "lr": (1e-3, 2e-3, 2e-3),
        "n_samples": (100, 100, 10),
    },
    "03_optimizations": {
        "n_images": (10_000, 10_000, 256),
        "image_size": (32, 16, 16),
        "channels": ((64, 128, 256), (32, 64), (16, 32)),
        "T": (1000, 200, 50),
        # two models (lesson-02 style and optimised) are trained on this same budget each
        "train_steps": (4_000, 2_500, 30),
        "batch_size": (128, 64, 16),
        "lr": (1e-3, 2e-3, 1e-3),
        "n_samples": (500, 200, 16),
        "ema_decay": (0.999, 0.999, 0.99),
        # DDIM steps S of the FID-vs-steps table (T is added as the last column)
        "ddim_steps": ((10, 20, 50, 100), (10, 25, 50), (10,)),
        # the DDIM steps used to compare models and EMA
        "sampling_steps": (50, 50, 10),
        # timed optimizer steps per row of the speed table
        "timed_steps": (20, 5, 2),
    },
    "04_classifier_free_guidance": {
        "n_images": (10_000, 10_000, 512),
        "image_size": (32, 16, 16),
        "channels": ((64, 128, 256), (32, 64), (16, 32)),
        "T": (1000, 200, 100),
        "train_steps": (8_000, 4_000, 50),
        "batch_size": (128, 64, 32),
        "lr": (1e-3, 2e-3, 1e-3),
        # samples per guidance weight w in the trade-off sweep (balanced over the 5 classes)
        "n_samples": (500, 200, 10),
        # test images that FID compares with
        "n_test": (2_000, 2_000, 100),
        "sampling_steps": (50, 50, 5),
        # samples per (w, class) in the w-slider explorer (25 values of w: one batched run)
        "explorer_per_class": (4, 2, 1),
        # repeats per timing of batched vs two-pass guidance (the minimum is reported)
        "timing_repeats": (5, 3, 1),
    },
    "assessment": {
        # the student's model (assessments/assessment.ipynb): trained on class + petal colour
        "n_images": (10_000, 10_000, 512),
        "image_size": (32, 16, 16),
        "channels": ((64, 128, 256), (32, 64), (16, 32)),
        "T": (1000, 200, 100),
        "train_steps": (8_000, 4_000, 40),
        "batch_size": (128, 64, 32),
        # the grader: samples per (class, colour) pair (15 pairs), DDIM steps, training images for the
        # near-copy check, test images for FID
        "n_per_pair": (40, 20, 8),
        "sampling_steps": (50, 50, 25),
        "n_train_features": (10_000, 2_000, 1_000),
        "n_test": (2_000, 1_000, 300),
    },
    "05_clip_conditioning": {
        "n_images": (10_000, 5_000, 512),
        "n_test": (2_000, 1_000, 200),
        "image_size": (32, 16, 16),
        # TinyCLIP: embedding size D, optimizer steps and batch (the batch is the N of the N×N matrix)
        "clip_embed_dim": (64, 64, 32),
        "clip_steps": (3_000, 800, 40),
        "clip_batch_size": (256, 128, 64),
        # the text-conditioned U-Net (lesson 04's ConditionalUNet with context_dim = D)
        "channels": ((64, 128, 256), (32, 64), (16, 32)),
        "T": (1000, 200, 100),
        "train_steps": (8_000, 2_500, 40),
        "batch_size": (128, 64, 32),
        "sampling_steps": (50, 25, 5),
        # samples per prompt in the seen / held-out measurement
        "n_per_prompt": (100, 40, 4),
        # samples per (w, prompt) in the prompt explorer
        "explorer_per_prompt": (4, 2, 1),
    },
}


def budget(lesson: str, mode_name: str | None = None) -> SimpleNamespace:
    """The sizes for ``lesson`` under ``mode_name`` (default: the budget in force), plus
    ``mode`` (its name) and ``quick`` (bool)."""
    if lesson not in BUDGETS:
        raise ValueError(f"lesson: expected one of {sorted(BUDGETS)}, got {lesson!r}")
    chosen = mode() if mode_name is None else mode_name
    if chosen not in MODES:
        raise ValueError(f"mode_name: expected one of {', '.join(MODES)} or None, got {chosen!r}")
    pick = MODES.index(chosen)
    sizes = {key: values[pick] for key, values in BUDGETS[lesson].items()}
    return SimpleNamespace(mode=chosen, quick=chosen == "quick", **sizes)

"""Timing helpers the lessons use: seconds per training step and per sampling run.

``dlcourse benchmark`` (``dlcourse.tools.benchmark``) builds its interleaved table on the same two
device helpers, so a lesson's number and the benchmark's are measured alike.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from .device import get_device
from .losses import diffusion_loss
from .sampling import ddim_sample, ddpm_sample
from .schedules import Schedule, scaled_linear_betas
from .training import FastPath, TrainStep
from .validation import check_choice, check_positive_int

__all__ = ["time_train_step", "time_sampling", "synchronize", "peak_memory_mib"]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU has nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """The most CUDA memory allocated since the last reset, in MiB; None off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def time_train_step(model: nn.Module, *, batch_size: int, device=None, channels_last: bool = False,
                    amp_dtype=None, timed_steps: int = 10, warmup_steps: int = 3, seed: int = 0) -> dict:
    """Seconds per AdamW step of the ε-loss ``losses.diffusion_loss`` (x_t = q_sample(x_0, t, ε), linear betas
    scaled to ``model.T``) on a random batch, and peak memory (CUDA).

    ``model(x, t)`` must take images (N, C, S, S) and steps t (N,) < ``model.T``.
    ``channels_last`` stores weights and inputs as NHWC; ``amp_dtype`` autocasts the
    forward pass on CUDA (ignored elsewhere: the result says ``amp: None``).
    Returns {"seconds_per_step", "peak_memory_mib" (None off CUDA), "device", "channels_last", "amp"}.
    The model is trained by these steps (with :class:`~dlcourse.training.TrainStep`): pass a throwaway copy.
    """
    check_positive_int(batch_size, "batch_size")
    check_positive_int(timed_steps, "timed_steps")
    check_choice(amp_dtype, "amp_dtype", (None, torch.bfloat16, torch.float16))
    device = torch.device(device) if device is not None else get_device()
    amp_dtype = amp_dtype if device.type == "cuda" else None
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (batch_size, model.image_channels, model.image_size, model.image_size)
    batch = torch.utils.data.TensorDataset(torch.randn(shape, generator=g), torch.randn(shape, generator=g),
                                           torch.randint(0, model.T, (batch_size,), generator=g))
    schedule = Schedule(scaled_linear_betas(model.T)).to(device)

    def loss_fn(m, b):
        x0, noise, t = b
        return diffusion_loss(m, x0, t, schedule, noise)

    run = TrainStep(model.train(), loss_fn, batch, batch_size=batch_size, lr=1e-4, device=device,
                    fast=FastPath(data_on_device=True, amp_dtype=amp_dtype, channels_last=channels_last))
    for k in range(warmup_steps):
        run(k)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = time.perf_counter()
    for k in range(timed_steps):
        run(k)
    synchronize(device)
    seconds = (time.perf_counter() - clock) / timed_steps
    return {"seconds_per_step": seconds, "peak_memory_mib": peak_memory_mib(device), "device": device.type,
            "channels_last": channels_last, "amp": None if amp_dtype is None else str(amp_dtype).split(".")[-1]}


def time_sampling(eps_fn: Callable, schedule, shape, *, sampler: str = "ddim", steps: int | None = None,
                  eta: float = 0.0, device=None, seed: int = 0) -> dict:
    """Seconds to draw ``shape`` images with DDPM (all T steps) or DDIM (``steps`` steps, ``eta``).

    Returns {"seconds", "network_calls", "device"}.
    """
    check_choice(sampler, "sampler", ("ddpm", "ddim"))
    device = torch.device(device) if device is not None else get_device()
    g = torch.Generator(device=device).manual_seed(seed)
    synchronize(device)
    clock = time.perf_counter()
    if sampler == "ddpm":
        ddpm_sample(eps_fn, schedule, shape, generator=g, device=device, progress=False)
        calls = schedule.T
    else:
        calls = schedule.T if steps is None else steps
        ddim_sample(eps_fn, schedule, shape, steps=calls, eta=eta, generator=g, device=device, progress=False)
    synchronize(device)
    return {"seconds": time.perf_counter() - clock, "network_calls": calls, "device": device.type}

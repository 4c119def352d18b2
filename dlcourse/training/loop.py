"""The training loop students do not write themselves: :func:`train` and the update it repeats.

``train`` draws mini-batches, calls the student's ``loss_fn(model, batch)``,
steps AdamW, keeps an optional EMA copy, shows a progress bar, calls a preview
now and then, and saves checkpoints it can resume from after an interrupted
kernel. Step numbers are 1-based: step k is the k-th optimizer update.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..device import check_device, get_device
from ..validation import check_choice, check_positive_int, check_real, check_seed, describe, fail
from .checkpoint import History, _check_folder, _checkpoint_contents, _locked, _resume, _write_checkpoint
from .ema import EMA

__all__ = ["train", "TrainOptions", "TrainStep", "FastPath", "fast_path"]

_LOG_EVERY = 10  # losses are read back from the device in groups, to avoid one sync per step
_RESIDENT_MAX_BYTES = 2 * 2**30  # tensor data up to this size is kept on the GPU (10 000 images 3×32×32: 123 MB)


def train(model: nn.Module, loss_fn, data, *, steps: int, batch_size: int, lr: float = 2e-4, device=None,
          ema_decay: float | None = None, checkpoint=None, checkpoint_every: int | None = None,
          preview_every: int | None = None, preview=None, seed: int = 0, progress: bool = True,
          weight_decay: float = 0.0, grad_clip: float | None = None, amp_dtype="auto",
          fast: FastPath | None = None) -> History:
    """Train ``model`` for ``steps`` AdamW updates on ``loss_fn(model, batch)``; return the History.

    - ``data``: a Dataset (items are collated, so ``(image, label)`` items give a
      tuple batch) or a tensor of examples. Batches of ``batch_size`` are drawn
      without replacement and reshuffled each epoch, reproducibly from ``seed``;
      ``batch_size`` may not exceed the number of examples. Each batch is moved to
      ``device`` (default :func:`dlcourse.get_device`; the model is moved there).
    - A fresh run seeds the global torch RNG with ``seed`` (loss functions draw
      their noise and t from it); a resumed run restores it from the checkpoint.
    - ``ema_decay``: keep an :class:`EMA`; ``history.ema_model`` is its averaged
      model (None without EMA). ``preview(ema_model or model, step)`` runs every
      ``preview_every`` steps (only at the end if None) in eval mode, without
      gradients, on a forked RNG, so previews never change the training.
    - ``checkpoint``: a folder. Saved every ``checkpoint_every`` steps (default
      every 10 % of ``steps``) and at the end. If it exists, training resumes
      from it ("resuming from step k") and returns at once if ``steps`` is
      already reached. Straight and resumed runs give the same weights. While
      training, the folder is locked: a second process training into it is refused.
    - ``fast``: the speed switches (:class:`FastPath`); default :func:`fast_path` of the device
      (on CUDA: data on the GPU, bf16 autocast, channels_last, fused AdamW; elsewhere none).
    - ``amp_dtype`` (torch.bfloat16, torch.float16 or None for float32) replaces ``fast.amp_dtype``;
      "auto" keeps it. Autocast runs on CUDA only (float16 with a GradScaler); ignored with a note elsewhere.
    - ``grad_clip``: clip the gradient norm to this value before each update.
    """
    _check_model_and_loss_fn(model, loss_fn)
    options = TrainOptions(steps=steps, batch_size=batch_size, lr=lr, device=device, ema_decay=ema_decay,
                           checkpoint=checkpoint, checkpoint_every=checkpoint_every, preview_every=preview_every,
                           preview=preview, seed=seed, progress=progress, weight_decay=weight_decay,
                           grad_clip=grad_clip, amp_dtype=amp_dtype, fast=fast)
    _check_data(data, options.batch_size)
    run = TrainStep(model, loss_fn, data, batch_size=options.batch_size, lr=options.lr, device=options.device,
                    fast=options.fast, seed=options.seed, weight_decay=options.weight_decay,
                    grad_clip=options.grad_clip, ema_decay=options.ema_decay)
    if options.checkpoint is None:
        return _train(run, options)
    with _locked(options.checkpoint):
        return _train(run, options)


@dataclass(frozen=True)
class TrainOptions:
    """The keyword options of :func:`train`, checked once, when made (errors name the option).

    Making them also settles the defaults: ``device`` becomes a torch.device
    (:func:`dlcourse.get_device` if None), ``checkpoint`` a Path (or None) and
    ``fast`` the :class:`FastPath` the run uses (:func:`fast_path` of the device if
    None, with ``amp_dtype`` in place of its own unless "auto").
    """

    steps: int
    batch_size: int
    lr: float = 2e-4
    device: torch.device | str | None = None
    ema_decay: float | None = None
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int | None = None
    preview_every: int | None = None
    preview: Callable | None = None
    seed: int = 0
    progress: bool = True
    weight_decay: float = 0.0
    grad_clip: float | None = None
    amp_dtype: torch.dtype | str | None = "auto"
    fast: FastPath | None = None

    def __post_init__(self):
        check_positive_int(self.steps, "steps")
        check_positive_int(self.batch_size, "batch_size")
        check_real(self.lr, "lr", low=0.0, low_open=True, hint=" (a positive number, e.g. 2e-4)")
        check_real(self.weight_decay, "weight_decay", low=0.0)
        if self.grad_clip is not None:
            check_real(self.grad_clip, "grad_clip", low=0.0, low_open=True, hint=" (max gradient norm) or None")
        if self.ema_decay is not None:
            EMA.check_decay(self.ema_decay, "ema_decay")
        _check_optional_positive_int(self.checkpoint_every, "checkpoint_every")
        _check_optional_positive_int(self.preview_every, "preview_every")
        if self.preview is not None and not callable(self.preview):
            raise fail("preview", "a function preview(model, step)", describe(self.preview))
        if self.preview_every is not None and self.preview is None:
            raise fail("preview", "a function preview(model, step) when preview_every is set", "None")
        check_seed(self.seed)
        check_choice(self.amp_dtype, "amp_dtype", ("auto", None, torch.bfloat16, torch.float16))
        if self.fast is not None and not isinstance(self.fast, FastPath):
            raise fail("fast", "a dlcourse.training.FastPath (e.g. fast_path('cuda')) or None", describe(self.fast))
        device = check_device(self.device) if self.device is not None else get_device()
        object.__setattr__(self, "device", device)  # frozen: set once, here
        object.__setattr__(self, "fast", self._fast_on(device))
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", _check_folder(self.checkpoint))

    @property
    def save_every(self) -> int:
        """``checkpoint_every``; by default every 10 % of ``steps``."""
        return self.checkpoint_every or max(1, self.steps // 10)

    def _fast_on(self, device: torch.device) -> FastPath:
        fast = fast_path(device) if self.fast is None else self.fast
        if self.amp_dtype == "auto":
            return fast
        if self.amp_dtype is not None and device.type != "cuda":
            print(f"note: amp_dtype={self.amp_dtype} ignored on {device.type} (mixed precision runs on CUDA only)")
        return replace(fast, amp_dtype=self.amp_dtype)


def _check_optional_positive_int(v, name: str):
    return None if v is None else check_positive_int(v, name)


def _check_model_and_loss_fn(model, loss_fn) -> None:
    if not isinstance(model, nn.Module):
        raise fail("model", "a torch.nn.Module", describe(model))
    if not any(p.requires_grad for p in model.parameters()):
        raise fail("model", "a model with trainable parameters", describe(model))
    if not callable(loss_fn):
        raise fail("loss_fn", "a function loss_fn(model, batch) -> scalar tensor", describe(loss_fn))


def _check_data(data, batch_size: int):
    if isinstance(data, torch.utils.data.DataLoader):
        raise fail("data", "a Dataset or a tensor (train draws its own mini-batches; pass loader.dataset)",
                   describe(data))
    if isinstance(data, torch.Tensor):
        if data.dim() == 0:
            raise fail("data", "a tensor whose first dim indexes examples", describe(data))
        n = data.shape[0]
    elif isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        n = len(data)
    else:
        raise fail("data", "a torch Dataset with len() (e.g. load_flowers(...)) or a tensor of examples",
                   describe(data))
    if n == 0:
        raise fail("data", "at least one example", "an empty dataset")
    if batch_size > n:
        raise fail("batch_size", f"at most the number of examples ({n}); batches are drawn without "
                   "replacement", describe(batch_size))


def _train(run: TrainStep, options: TrainOptions) -> History:
    """The loop of :func:`train`, after its options were checked (and the checkpoint locked)."""
    config = {"batch_size": options.batch_size, "seed": options.seed, "lr": options.lr}
    folder = options.checkpoint
    start, history = (0, History()) if folder is None else _resume(folder, run.model, run.optimizer, run.ema,
                                                                   run.scaler, config)
    run.keep_fused_setting()
    if start >= options.steps:
        print(f"checkpoint {str(folder)!r} already has {start} steps (asked for {options.steps}): "
              "returning its history")
    else:
        if start > 0:
            print(f"resuming from step {start}")
        else:
            torch.manual_seed(options.seed)
        _run_steps(run, options, start, history, config)
    history.ema_model = run.ema.model if run.ema else None
    return history


def _run_steps(run: TrainStep, options: TrainOptions, start: int, history: History, config: dict) -> None:
    """Steps ``start`` + 1 … ``options.steps``: update, log the loss, and preview and save when due."""
    from tqdm.auto import tqdm

    model, folder, steps = run.model, options.checkpoint, options.steps
    target = run.ema.model if run.ema else model  # what previews see
    was_training = model.training
    model.train()
    bar = tqdm(total=steps, initial=start, desc="training", disable=not options.progress)
    log = _LossLog(history, bar)
    step, clock = start, time.perf_counter()
    try:
        for step in range(start + 1, steps + 1):
            log.add(step, run(step - 1))
            bar.update(1)
            if options.preview_every is not None and step % options.preview_every == 0:
                log.flush()
                _run_preview(options.preview, target, step, run.device)
            if folder is not None and (step % options.save_every == 0 or step == steps):
                log.flush()
                clock = _add_seconds(history, clock)
                _write_checkpoint(folder, *_checkpoint_contents(model, run.optimizer, step, history, run.ema, None,
                                                                run.scaler, config))
        log.flush()
        _add_seconds(history, clock)
        if options.preview is not None and (options.preview_every is None or steps % options.preview_every != 0):
            _run_preview(options.preview, target, steps, run.device)
    except KeyboardInterrupt:
        if folder is not None:
            print(f"interrupted at step {step}: run the same train(...) call again to resume from the "
                  f"last checkpoint in {str(folder)!r}")
        raise
    finally:
        bar.close()
        model.train(was_training)


def _add_seconds(history: History, since: float) -> float:
    """``history.seconds`` += now − ``since`` (``time.perf_counter`` readings); return now."""
    now = time.perf_counter()
    history.seconds += now - since
    return now


class _LossLog:
    """Losses kept on the device and read back in groups (one sync per group, not per step)."""

    def __init__(self, history: History, bar):
        self.history, self.bar = history, bar
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.smoothed = None

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.pending.append((step, loss))
        if len(self.pending) >= _LOG_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        values = torch.stack([v for _, v in self.pending]).float().cpu().tolist()
        for (step, _), v in zip(self.pending, values):
            if not math.isfinite(v):
                raise fail("loss", "a finite value (try a smaller lr or grad_clip=1.0)", f"{v} at step {step}")
            self.history.steps.append(step)
            self.history.losses.append(v)
            self.smoothed = v if self.smoothed is None else 0.9 * self.smoothed + 0.1 * v
        self.pending.clear()
        self.bar.set_postfix(loss=f"{self.smoothed:.4f}", refresh=False)


def _run_preview(preview, target: nn.Module, step: int, device: torch.device) -> None:
    """``preview(target, step)`` in eval mode, without gradients, on a forked RNG."""
    mode = target.training
    target.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        preview(target, step)
    target.train(mode)


class TrainStep:
    """One optimizer update of :func:`train`, set up once: ``step(k)`` draws mini-batch k (0-based),
    updates the model (and the EMA) and returns the detached loss, left on the device.

    ``dlcourse benchmark`` times this same object, so its numbers are the training loop's."""

    def __init__(self, model: nn.Module, loss_fn, data, *, batch_size: int, lr: float, device: torch.device,
                 fast: FastPath, seed: int = 0, weight_decay: float = 0.0, grad_clip: float | None = None,
                 ema_decay: float | None = None):
        self.model, self.loss_fn, self.grad_clip, self.fast, self.device = model, loss_fn, grad_clip, fast, device
        model.to(device, memory_format=torch.channels_last if fast.channels_last else torch.preserve_format)
        self.ema = EMA(model, ema_decay) if ema_decay is not None else None
        self.batches = _Batches(data, batch_size, seed)
        if fast.data_on_device and self.batches.tensors is not None and \
                sum(t.nbytes for t in self.batches.tensors) <= _RESIDENT_MAX_BYTES:
            self.batches.to(device)
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                           weight_decay=weight_decay, fused=fast.fused_adamw or None)
        amp_dtype = fast.amp_dtype if device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        self.autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        self.forward_model = model if fast.compile is None else torch.compile(model, mode=fast.compile)

    def keep_fused_setting(self) -> None:
        """After loading an optimizer state saved elsewhere: use this machine's choice of fused kernel."""
        for group in self.optimizer.param_groups:
            group["fused"] = self.fast.fused_adamw or None

    def __call__(self, k: int) -> torch.Tensor:
        batch = _to_device(self.batches(k), self.device, self.fast.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss = self.loss_fn(self.forward_model, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            raise fail("loss_fn", "to return a scalar float tensor (e.g. F.mse_loss(eps_pred, noise))",
                       describe(loss))
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach().reshape(())


@dataclass(frozen=True)
class FastPath:
    """The speed switches of :func:`train`. None changes the maths; bf16 rounds the forward pass.

    - ``data_on_device``: tensor-backed data (a tensor, ``TensorDataset``, ``ImageDataset``) is copied
      to the device once and batches are drawn there (no host→device copy per step).
    - ``amp_dtype``: autocast the forward pass and loss (``torch.bfloat16``, or ``torch.float16`` with
      a GradScaler) on CUDA; None: float32.
    - ``channels_last``: the model and 4-D image batches are stored N×H×W×C (``torch.randn_like(x)``
      then fills x in that order: the same distribution, another draw than without it).
    - ``fused_adamw``: AdamW updates every parameter in one fused kernel.
    - ``compile``: a ``torch.compile`` mode ("default", "reduce-overhead", "max-autotune") for the
      forward and backward pass, or None. The first steps compile (tens of seconds).
    """

    data_on_device: bool = False
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    fused_adamw: bool = False
    compile: str | None = None

    def __post_init__(self):
        check_choice(self.amp_dtype, "amp_dtype", (None, torch.bfloat16, torch.float16))
        check_choice(self.compile, "compile", (None, "default", "reduce-overhead", "max-autotune",
                                               "max-autotune-no-cudagraphs"))


def fast_path(device) -> FastPath:
    """The switches :func:`train` uses by default on ``device`` (a torch.device or a name such as "cuda";
    it need not exist here). On CUDA: data on the GPU, bf16 autocast, channels_last and fused AdamW;
    torch.compile stays opt-in (it compiles for a minute or more before the first step). On the CPU:
    none of them — channels_last, fused AdamW and torch.compile measured no clearly faster there
    (``dlcourse benchmark``, README "Performance"); bf16 autocast is CUDA-only in this course. MPS
    (not measured) keeps the CPU's defaults."""
    kind = torch.device(device).type
    if kind == "cuda":
        return FastPath(data_on_device=True, amp_dtype=torch.bfloat16, channels_last=True, fused_adamw=True)
    return FastPath()


class _Batches:
    """Mini-batch k (0-based) is a pure function of (seed, k): epoch e uses a permutation drawn
    from a generator seeded with (seed, e) and batches are consecutive slices of it (the last
    incomplete slice of each epoch is dropped). Resuming therefore needs no sampler state.

    Tensor-backed data (a tensor, a ``TensorDataset`` or an ``ImageDataset``) is indexed as
    whole tensors, which gives the batches the per-item collate would, without the per-item calls."""

    def __init__(self, data, batch_size: int, seed: int):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.tensors = _tensors_of(data)
        self.n = data.shape[0] if isinstance(data, torch.Tensor) else len(data)
        self.per_epoch = self.n // batch_size
        self._epoch, self._perm = -1, None

    def to(self, device: torch.device) -> "_Batches":
        """Keep tensor-backed data on ``device``: batches are then drawn there, with no copy per step."""
        if self.tensors is not None:
            self.tensors = tuple(t.to(device) for t in self.tensors)
        return self

    def indices(self, k: int) -> torch.Tensor:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
            if self.tensors is not None:
                self._perm = self._perm.to(self.tensors[0].device)
            self._epoch = epoch
        return self._perm[j * self.batch_size:(j + 1) * self.batch_size]

    def __call__(self, k: int):
        idx = self.indices(k)
        if self.tensors is not None:
            batch = tuple(t[idx] for t in self.tensors)
            return batch[0] if isinstance(self.data, torch.Tensor) else batch
        if hasattr(self.data, "__getitems__"):
            items = self.data.__getitems__(idx.tolist())
        else:
            items = [self.data[i] for i in idx.tolist()]
        batch = torch.utils.data.default_collate(items)
        return tuple(batch) if isinstance(batch, list) else batch


def _tensors_of(data) -> tuple[torch.Tensor, ...] | None:
    """The tensors whose rows are the examples of ``data``, or None for other datasets."""
    from ..data import ImageDataset

    if isinstance(data, torch.Tensor):
        return (data,)
    if isinstance(data, torch.utils.data.TensorDataset):
        return tuple(data.tensors)
    if type(data) is ImageDataset:  # a subclass may change __getitem__
        return data.images, data.labels
    return None


def _to_device(batch, device: torch.device, channels_last: bool = False):
    """``batch`` on ``device``; with ``channels_last``, its 4-D float tensors (image batches) stored NHWC."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    return batch

"""The training loop students do not write themselves: mini-batches, AdamW, EMA, checkpoints.

``train`` draws mini-batches, calls the student's ``loss_fn(model, batch)``,
steps AdamW, keeps an optional EMA copy, shows a progress bar, calls a preview
now and then, and saves checkpoints it can resume from after an interrupted
kernel. Step numbers are 1-based: step k is the k-th optimizer update.

Checkpoints are folders of ``safetensors`` files plus one JSON file, never
pickles (DESIGN principle 5): ``model.safetensors``, ``ema.safetensors`` (with
an EMA), ``train_state.safetensors`` (optimizer tensors and RNG states) and
``state.json`` (step, history, optimizer hyper-parameters and scalars). A save
writes a sibling temporary folder and swaps it in with ``os.replace``, so a
crash leaves either the old or the new checkpoint.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .validation import check_positive_int, describe, fail

__all__ = ["History", "EMA", "train", "save_checkpoint", "load_checkpoint", "checkpoint_exists"]

_FORMAT = "dlcourse-checkpoint"
_VERSION = 1
_LOG_EVERY = 10  # losses are read back from the device in groups, to avoid one sync per step


@dataclass
class History:
    """What a run recorded: ``losses[i]`` is the loss at step ``steps[i]``; ``seconds`` of training.

    ``extra`` is free for your own JSON-able notes. ``ema_model`` is set by
    :func:`train` to the EMA copy of the model (None without ``ema_decay``);
    it is not part of :meth:`to_dict`.
    """

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    ema_model: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"steps": list(self.steps), "losses": list(self.losses), "seconds": self.seconds,
                "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        if not isinstance(d, dict) or not {"steps", "losses"} <= set(d):
            raise fail("d", "a dict with keys 'steps' and 'losses' (from History.to_dict())", describe(d))
        if len(d["steps"]) != len(d["losses"]):
            raise fail("d", "as many steps as losses", f"{len(d['steps'])} steps, {len(d['losses'])} losses")
        return cls(steps=[int(s) for s in d["steps"]], losses=[float(v) for v in d["losses"]],
                   seconds=float(d.get("seconds", 0.0)), extra=dict(d.get("extra", {})))


class EMA:
    """Exponential moving average of a model's parameters.

    After each optimizer step, ``update(model)`` sets θ_ema ← d·θ_ema + (1 − d)·θ
    for every parameter and copies the buffers. With ``warmup=False``, d is
    ``decay``, so after k updates from θ_ema = θ_0 with a constant θ:
    θ_ema = d^k·θ_0 + (1 − d^k)·θ. With ``warmup=True`` (default) the k-th
    update (k = 0, 1, …) uses d_k = min(decay, (1 + k)/(10 + k)), so short runs
    are not dominated by the random initial weights. ``.model`` is the averaged
    copy (eval mode, no gradients): sample from it.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True):
        if not isinstance(model, nn.Module):
            raise fail("model", "a torch.nn.Module", describe(model))
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
            raise fail("decay", "a number in (0, 1), e.g. 0.999", describe(decay))
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The d used by the next update."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params = dict(self.model.named_parameters())
        params = dict(model.named_parameters())
        if ema_params.keys() != params.keys():
            raise fail("model", "the model this EMA was made from (same parameter names)", describe(model))
        for name, p in params.items():
            ema_params[name].lerp_(p.detach(), 1.0 - d)  # θ_ema + (1 − d)(θ − θ_ema)
        ema_buffers = dict(self.model.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's tensors (``decay``/``num_updates`` are attributes)."""
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict)


# --------------------------------------------------------------------------- checkpoints

def _encode(obj, tensors: dict, path: str):
    """JSON-able structure for ``obj`` with its tensors moved into ``tensors`` (exact round trip)."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise fail("state", "dict keys that are str or int", describe(k))
        return {"__dict__": [[k, _encode(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise fail("state", "tensors, numbers, strings, lists, tuples and dicts", describe(obj))


def _decode(obj, tensors: dict):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _cpu_tensors(state_dict: dict) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory (e.g. tied weights)
    return {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}


def _resolve(folder: Path) -> Path:
    """The folder to read: ``folder``, or its backup if a crash hit between the two renames of a save."""
    backup = folder.with_name(f".{folder.name}.old")
    if not (folder / "state.json").is_file() and (backup / "state.json").is_file():
        return backup
    return folder


def _check_folder(folder) -> Path:
    if not isinstance(folder, (str, os.PathLike)):
        raise fail("folder", "a folder path (str or pathlib.Path)", describe(folder))
    return Path(folder)


def checkpoint_exists(folder) -> bool:
    """True when ``folder`` holds a checkpoint written by :func:`save_checkpoint`."""
    return (_resolve(_check_folder(folder)) / "state.json").is_file()


def save_checkpoint(folder, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    history: History, ema: EMA | None = None, generator: torch.Generator | None = None,
                    *, scaler=None, config: dict | None = None) -> Path:
    """Atomically write a resumable checkpoint (safetensors + JSON, no pickle) to ``folder``.

    Saved: model and EMA weights, the optimizer state (tensors flattened into
    safetensors, the rest in JSON), ``step``, ``history``, the global torch RNG
    states (CPU and every CUDA device), the state of ``generator`` if given, a
    ``GradScaler``'s state if given, and ``config`` (JSON-able notes).
    """
    from safetensors.torch import save_file

    folder = _check_folder(folder)
    if not isinstance(model, nn.Module):
        raise fail("model", "a torch.nn.Module", describe(model))
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise fail("optimizer", "a torch.optim.Optimizer", describe(optimizer))
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise fail("step", "an int >= 0", describe(step))
    if not isinstance(history, History):
        raise fail("history", "a dlcourse.training.History", describe(history))

    train_tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            train_tensors[f"rng.cuda.{i}"] = s
    if generator is not None:
        train_tensors["rng.generator"] = generator.get_state()
    state = {
        "format": _FORMAT,
        "version": _VERSION,
        "step": step,
        "history": history.to_dict(),
        "param_shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "optimizer": _encode(optimizer.state_dict(), train_tensors, "optimizer"),
        "ema": None if ema is None else {"decay": ema.decay, "warmup": ema.warmup,
                                         "num_updates": ema.num_updates},
        "scaler": None if scaler is None else _encode(scaler.state_dict(), train_tensors, "scaler"),
        "config": config or {},
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    backup = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_cpu_tensors(model.state_dict()), tmp / "model.safetensors")
    if ema is not None:
        save_file(_cpu_tensors(ema.state_dict()), tmp / "ema.safetensors")
    save_file(train_tensors, tmp / "train_state.safetensors")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(backup, ignore_errors=True)
    if folder.exists():
        os.replace(folder, backup)
    os.replace(tmp, folder)
    shutil.rmtree(backup, ignore_errors=True)
    return folder


def _read_state(folder: Path) -> tuple[Path, dict]:
    folder = _resolve(folder)
    path = folder / "state.json"
    if not path.is_file():
        raise fail("folder", "a checkpoint folder written by save_checkpoint (with state.json)", repr(str(folder)))
    state = json.loads(path.read_text())
    if state.get("format") != _FORMAT or state.get("version") != _VERSION:
        raise fail("folder", f"a {_FORMAT} version {_VERSION}", f"{state.get('format')!r} {state.get('version')!r}")
    return folder, state


def _shape_mismatch(model: nn.Module, state: dict) -> str | None:
    saved = state["param_shapes"]
    current = {k: list(v.shape) for k, v in model.state_dict().items()}
    if saved == current:
        return None
    for k in sorted(set(saved) | set(current)):
        if k not in saved:
            return f"{k!r} is in the model but not in the checkpoint"
        if k not in current:
            return f"{k!r} is in the checkpoint but not in the model"
        if saved[k] != current[k]:
            return f"{k!r} has shape {saved[k]} in the checkpoint, {current[k]} in the model"
    return None


def load_checkpoint(folder, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    ema: EMA | None = None, generator: torch.Generator | None = None, *,
                    scaler=None, restore_rng: bool = True) -> tuple[int, History]:
    """Load what :func:`save_checkpoint` wrote into the given objects; return ``(step, history)``.

    ``model`` must have the saved parameter shapes. Optimizer, EMA, generator
    and scaler are restored when given; ``restore_rng`` also restores the
    global torch RNG states, so that a resumed run draws the same noise.
    """
    from safetensors.torch import load_file

    folder, state = _read_state(_check_folder(folder))
    if not isinstance(model, nn.Module):
        raise fail("model", "a torch.nn.Module", describe(model))
    mismatch = _shape_mismatch(model, state)
    if mismatch:
        raise fail("model", "the architecture saved in the checkpoint (same parameter shapes)", mismatch)
    device = next(iter(model.parameters()), torch.empty(0)).device
    model.load_state_dict(load_file(folder / "model.safetensors", device=str(device)))
    tensors = load_file(folder / "train_state.safetensors")
    if optimizer is not None:
        optimizer.load_state_dict(_decode(state["optimizer"], tensors))
    if ema is not None:
        if state["ema"] is None:
            raise fail("ema", "None: this checkpoint was saved without an EMA", describe(ema))
        ema.load_state_dict(load_file(folder / "ema.safetensors", device=str(device)))
        ema.decay, ema.warmup, ema.num_updates = (state["ema"][k] for k in ("decay", "warmup", "num_updates"))
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(_decode(state["scaler"], tensors))
    if generator is not None:
        if "rng.generator" not in tensors:
            raise fail("generator", "None: this checkpoint was saved without a generator state", describe(generator))
        generator.set_state(tensors["rng.generator"])
    if restore_rng:
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                                  key=lambda k: int(k.rsplit(".", 1)[1]))]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    return state["step"], History.from_dict(state["history"])


# --------------------------------------------------------------------------- the loop

class _Batches:
    """Mini-batch k (0-based) is a pure function of (seed, k): epoch e uses a permutation drawn
    from a generator seeded with (seed, e) and batches are consecutive slices of it (the last
    incomplete slice of each epoch is dropped). Resuming therefore needs no sampler state."""

    def __init__(self, data, batch_size: int, seed: int):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.n = data.shape[0] if isinstance(data, torch.Tensor) else len(data)
        self.per_epoch = self.n // batch_size
        self._epoch, self._perm = -1, None

    def indices(self, k: int) -> torch.Tensor:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
            self._epoch = epoch
        return self._perm[j * self.batch_size:(j + 1) * self.batch_size]

    def __call__(self, k: int):
        idx = self.indices(k)
        if isinstance(self.data, torch.Tensor):
            return self.data[idx]
        if isinstance(self.data, torch.utils.data.TensorDataset):  # fast path: no per-item calls
            return tuple(t[idx] for t in self.data.tensors)
        if hasattr(self.data, "__getitems__"):
            items = self.data.__getitems__(idx.tolist())
        else:
            items = [self.data[i] for i in idx.tolist()]
        batch = torch.utils.data.default_collate(items)
        return tuple(batch) if isinstance(batch, list) else batch


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


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


def _check_optional_positive_int(v, name: str):
    return None if v is None else check_positive_int(v, name)


def train(model: nn.Module, loss_fn, data, *, steps: int, batch_size: int, lr: float = 2e-4, device=None,
          ema_decay: float | None = None, checkpoint=None, checkpoint_every: int | None = None,
          preview_every: int | None = None, preview=None, seed: int = 0, progress: bool = True,
          weight_decay: float = 0.0, grad_clip: float | None = None, amp_dtype=None) -> History:
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
      already reached. Straight and resumed runs give the same weights.
    - ``amp_dtype`` (torch.bfloat16 or torch.float16): autocast on CUDA only
      (float16 with a GradScaler); ignored with a note elsewhere.
    - ``grad_clip``: clip the gradient norm to this value before each update.
    """
    from tqdm.auto import tqdm

    from . import get_device

    if not isinstance(model, nn.Module):
        raise fail("model", "a torch.nn.Module", describe(model))
    if not callable(loss_fn):
        raise fail("loss_fn", "a function loss_fn(model, batch) -> scalar tensor", describe(loss_fn))
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    _check_data(data, batch_size)
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (name == "lr" and value == 0):
            raise fail(name, "a positive number" if name == "lr" else "a number >= 0", describe(value))
    if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float))
                                  or grad_clip <= 0):
        raise fail("grad_clip", "None or a positive number (max gradient norm)", describe(grad_clip))
    if ema_decay is not None and (isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float))
                                  or not 0 < ema_decay < 1):
        raise fail("ema_decay", "None or a number in (0, 1), e.g. 0.999", describe(ema_decay))
    checkpoint_every = _check_optional_positive_int(checkpoint_every, "checkpoint_every")
    preview_every = _check_optional_positive_int(preview_every, "preview_every")
    if preview is not None and not callable(preview):
        raise fail("preview", "a function preview(model, step)", describe(preview))
    if preview_every is not None and preview is None:
        raise fail("preview", "a function preview(model, step) when preview_every is set", "None")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise fail("seed", "an int >= 0", describe(seed))
    if amp_dtype not in (None, torch.bfloat16, torch.float16):
        raise fail("amp_dtype", "None, torch.bfloat16 or torch.float16", describe(amp_dtype))
    if not any(p.requires_grad for p in model.parameters()):
        raise fail("model", "a model with trainable parameters", describe(model))

    device = torch.device(device) if device is not None else get_device()
    model.to(device)
    if amp_dtype is not None and device.type != "cuda":
        print(f"note: amp_dtype={amp_dtype} ignored on {device.type} (mixed precision runs on CUDA only)")
        amp_dtype = None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    ema = EMA(model, ema_decay) if ema_decay is not None else None
    history = History()
    start = 0
    config = {"batch_size": batch_size, "seed": seed, "lr": lr}
    if checkpoint is not None:
        checkpoint = _check_folder(checkpoint)
        if checkpoint_every is None:
            checkpoint_every = max(1, steps // 10)
        if checkpoint_exists(checkpoint):
            mismatch = _shape_mismatch(model, _read_state(checkpoint)[1])
            if mismatch:
                raise fail("checkpoint", "a folder saved from this model's architecture (delete it or choose "
                           "another folder to start afresh)", f"{str(checkpoint)!r}, where {mismatch}")
            start, history = load_checkpoint(checkpoint, model, optimizer, ema, scaler=scaler)
            saved = _read_state(checkpoint)[1]["config"]
            changed = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
            if changed:
                print(f"note: settings differ from the checkpoint {changed}; the resumed run will not "
                      "match a straight one")
            if start >= steps:
                print(f"checkpoint {str(checkpoint)!r} already has {start} steps (asked for {steps}): "
                      "returning its history")
                history.ema_model = ema.model if ema else None
                return history
            print(f"resuming from step {start}")
    if start == 0:
        torch.manual_seed(seed)

    batches = _Batches(data, batch_size, seed)
    was_training = model.training
    model.train()
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    pending: list[tuple[int, torch.Tensor]] = []
    smoothed = None
    bar = tqdm(total=steps, initial=start, desc="training", disable=not progress)

    def flush():
        nonlocal smoothed
        if not pending:
            return
        values = torch.stack([v for _, v in pending]).float().cpu().tolist()
        for (s, _), v in zip(pending, values):
            if not math.isfinite(v):
                raise fail("loss", "a finite value (try a smaller lr or grad_clip=1.0)", f"{v} at step {s}")
            history.steps.append(s)
            history.losses.append(v)
            smoothed = v if smoothed is None else 0.9 * smoothed + 0.1 * v
        pending.clear()
        bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)

    def run_preview(step):
        target = ema.model if ema else model
        mode = target.training
        target.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            preview(target, step)
        target.train(mode)

    step = start
    clock = time.perf_counter()
    try:
        for step in range(start + 1, steps + 1):
            batch = _to_device(batches(step - 1), device)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(model, batch)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
                raise fail("loss_fn", "to return a scalar float tensor (e.g. F.mse_loss(eps_pred, noise))",
                           describe(loss))
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if ema is not None:
                ema.update(model)
            pending.append((step, loss.detach().reshape(())))
            bar.update(1)
            if len(pending) >= _LOG_EVERY:
                flush()
            if preview is not None and preview_every is not None and step % preview_every == 0:
                flush()
                run_preview(step)
            if checkpoint is not None and (step % checkpoint_every == 0 or step == steps):
                flush()
                now = time.perf_counter()
                history.seconds += now - clock
                clock = now
                save_checkpoint(checkpoint, model, optimizer, step, history, ema, scaler=scaler, config=config)
        flush()
        history.seconds += time.perf_counter() - clock
        if preview is not None and (preview_every is None or steps % preview_every != 0):
            run_preview(steps)
    except KeyboardInterrupt:
        if checkpoint is not None:
            print(f"interrupted at step {step}: run the same train(...) call again to resume from the "
                  f"last checkpoint in {str(checkpoint)!r}")
        raise
    finally:
        bar.close()
        model.train(was_training)
    history.ema_model = ema.model if ema else None
    return history

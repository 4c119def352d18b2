"""The training loop students do not write themselves: mini-batches, AdamW, EMA, checkpoints.

``train`` draws mini-batches, calls the student's ``loss_fn(model, batch)``,
steps AdamW, keeps an optional EMA copy, shows a progress bar, calls a preview
now and then, and saves checkpoints it can resume from after an interrupted
kernel. Step numbers are 1-based: step k is the k-th optimizer update.

Checkpoints are folders of ``safetensors`` files plus one JSON file, never
pickles (docs/design.md, principle 5): ``model.safetensors``, ``ema.safetensors`` (with
an EMA), ``train_state.safetensors`` (optimizer tensors and RNG states) and
``state.json`` (step, history, optimizer hyper-parameters and scalars). A save
writes a sibling temporary folder and swaps it in with ``os.replace``, so a
crash leaves either the old or the new checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..device import check_device, get_device
from ..validation import check_choice, check_int, check_positive_int, check_real, check_seed, describe, fail, is_int, is_real

__all__ = ["History", "EMA", "FastPath", "fast_path", "TrainStep", "train", "save_checkpoint", "load_checkpoint",
           "checkpoint_exists"]

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
        self.decay = self.check_decay(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @staticmethod
    def check_decay(decay, name: str = "decay") -> float:
        """``decay`` as a float, if it is a finite number in (0, 1)."""
        return check_real(decay, name, low=0.0, high=1.0, low_open=True, high_open=True, hint=", e.g. 0.999")

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
#
# A checkpoint ``ck`` lives in ``ck/`` with siblings that only save_checkpoint touches:
# ``.ck.tmp-<pid>`` (the save being written), ``.ck.old`` (the previous save, during a save),
# ``.ck.trash-<pid>`` (a backup being deleted) and ``.ck.lock`` (holds the writer's pid).
# A save writes the temporary folder completely, then
#   1. renames ``ck`` to ``.ck.old``,
#   2. renames the temporary folder to ``ck``,
#   3. renames ``.ck.old`` to the trash and deletes the trash.
# Renames are atomic and only complete folders are ever renamed into ``ck`` or ``.ck.old``,
# so after a crash at any instant ``ck`` or ``.ck.old`` is a complete checkpoint: the last
# completed save or the one before. Nothing is deleted that a reader might pick.

_REQUIRED_FILES = ("state.json", "model.safetensors", "train_state.safetensors")
_MAX_STATE_BYTES = 256 * 2**20
_MAX_STEP = 10**15

# Tests set this to a function that raises, to crash a save between two of its file operations.
_crash_point = None


def _done(operation: str) -> None:
    if _crash_point is not None:
        _crash_point(operation)


def _encode(obj, tensors: dict, path: str):
    """JSON-able structure for ``obj`` with its tensors moved into ``tensors`` (exact round trip)."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        for k in obj:
            if not (isinstance(k, str) or is_int(k)):
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


def _sibling(folder: Path, kind: str) -> Path:
    return folder.with_name(f".{folder.name}.{kind}")


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED_FILES)


def _resolve(folder: Path) -> Path | None:
    """The complete checkpoint to read: ``folder``, else its backup ``.folder.old``; None if neither."""
    for candidate in (folder, _sibling(folder, "old")):
        if _is_complete(candidate):
            return candidate
    return None


def _check_folder(folder) -> Path:
    if not isinstance(folder, (str, os.PathLike)):
        raise fail("folder", "a folder path (str or pathlib.Path)", describe(folder))
    return Path(folder)


def checkpoint_exists(folder) -> bool:
    """True when ``folder`` holds a checkpoint written by :func:`save_checkpoint`."""
    return _resolve(_check_folder(folder)) is not None


@contextlib.contextmanager
def _locked(folder: Path):
    """Hold ``.folder.lock`` (with our pid in it) so that one process at a time writes ``folder``."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one writer is the user's responsibility
        yield
        return
    lock = _sibling(folder, "lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise fail("checkpoint", "a folder that no other process is training into",
                       f"{str(folder)!r}, in use by process {holder} (wait for it to finish, stop it, or "
                       "choose another folder)") from None
        try:  # the previous holder may have removed the file between our open and flock: retry
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """Delete a folder file by file (a crash part-way leaves a partial trash folder nobody reads)."""
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.is_symlink():
            _remove_tree(child)
        else:
            child.unlink()
            _done(f"delete {child.name}")
    path.rmdir()


def _remove_leftovers(folder: Path) -> None:
    """Delete temporary and trash folders that killed saves left behind (the caller holds the lock)."""
    for pattern in (f".{folder.name}.tmp-*", f".{folder.name}.trash-*"):
        for leftover in folder.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _write_checkpoint(folder: Path, model_tensors: dict, ema_tensors: dict | None, train_tensors: dict,
                      state: dict) -> None:
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() and not _is_complete(folder):
        if not folder.is_dir() or any(folder.iterdir()):
            raise fail("folder", "a new folder or a checkpoint folder (save_checkpoint replaces it)",
                       f"{str(folder)!r}, which holds other files: choose another folder")
        folder.rmdir()
    _remove_leftovers(folder)
    tmp, backup, trash = (_sibling(folder, kind) for kind in (f"tmp-{os.getpid()}", "old", f"trash-{os.getpid()}"))
    tmp.mkdir()
    _done("mkdir tmp")
    files = [("model.safetensors", model_tensors), ("ema.safetensors", ema_tensors),
             ("train_state.safetensors", train_tensors)]
    for name, tensors in files:
        if tensors is not None:
            save_file(tensors, tmp / name)
            _fsync(tmp / name)
            _done(f"write {name}")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    _fsync(tmp / "state.json")
    _fsync(tmp)
    _done("write state.json")
    if _is_complete(folder) and backup.exists():  # a backup a crash left behind: the folder is newer
        os.replace(backup, trash)
        _done("rename old backup to trash")
        _remove_tree(trash)
        _done("delete old backup")
    if _is_complete(folder):
        os.replace(folder, backup)
        _done("rename folder to backup")
    os.replace(tmp, folder)
    _fsync(folder.parent)
    _done("rename tmp to folder")
    if backup.exists():
        os.replace(backup, trash)
        _done("rename backup to trash")
        _remove_tree(trash)
        _done("delete backup")


def _checkpoint_contents(model, optimizer, step, history, ema, generator, scaler, config):
    """(model tensors, EMA tensors or None, train-state tensors, JSON state) of one save."""
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
    ema_tensors = None if ema is None else _cpu_tensors(ema.state_dict())
    return _cpu_tensors(model.state_dict()), ema_tensors, train_tensors, state


def save_checkpoint(folder, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    history: History, ema: EMA | None = None, generator: torch.Generator | None = None,
                    *, scaler=None, config: dict | None = None) -> Path:
    """Write a resumable checkpoint (safetensors + JSON, no pickle) to ``folder``, crash-safely.

    Saved: model and EMA weights, the optimizer state (tensors flattened into
    safetensors, the rest in JSON), ``step``, ``history``, the global torch RNG
    states (CPU and every CUDA device), the state of ``generator`` if given, a
    ``GradScaler``'s state if given, and ``config`` (JSON-able notes). A crash at
    any moment leaves this save or the previous one readable; two processes
    cannot write one folder at the same time (the second gets an error naming the first).
    """
    folder = _check_folder(folder)
    if not isinstance(model, nn.Module):
        raise fail("model", "a torch.nn.Module", describe(model))
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise fail("optimizer", "a torch.optim.Optimizer", describe(optimizer))
    step = check_int(step, "step", low=0)
    if not isinstance(history, History):
        raise fail("history", "a dlcourse.training.History", describe(history))
    contents = _checkpoint_contents(model, optimizer, step, history, ema, generator, scaler, config)
    with _locked(folder):
        _write_checkpoint(folder, *contents)
    return folder


@dataclass
class _Checkpoint:
    """A checkpoint read from disk and checked, not yet loaded into anything."""

    folder: Path
    step: int
    history: History
    state: dict
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    train: dict[str, torch.Tensor]


def _bad(folder: Path, expected: str, got) -> ValueError:
    return fail("checkpoint", expected, f"{got} in {str(folder)!r} (delete the folder to start afresh)")


def _check_state(folder: Path, state) -> tuple[int, History]:
    """Validate state.json's fields; return the step and the History."""
    if not isinstance(state, dict):
        raise _bad(folder, "state.json holding a JSON object", type(state).__name__)
    if state.get("format") != _FORMAT or state.get("version") != _VERSION:
        raise _bad(folder, f"a {_FORMAT} version {_VERSION}",
                   f"{str(state.get('format'))[:40]!r} {str(state.get('version'))[:20]!r}")
    missing = {"step", "history", "param_shapes", "optimizer", "ema", "scaler", "config"} - set(state)
    if missing:
        raise _bad(folder, "state.json with all its fields", f"no {sorted(missing)}")
    step = state["step"]
    if not is_int(step, 0) or step > _MAX_STEP:
        raise _bad(folder, f"a step that is an int in [0, {_MAX_STEP}]", describe(step))
    h = state["history"]
    ok = (isinstance(h, dict) and isinstance(h.get("steps"), list) and isinstance(h.get("losses"), list)
          and len(h["steps"]) == len(h["losses"]) and isinstance(h.get("extra", {}), dict)
          and all(is_int(s, 1) and s <= step for s in h["steps"])
          and all(b > a for a, b in zip(h["steps"], h["steps"][1:]))
          and all(isinstance(v, (int, float)) and is_real(v) for v in h["losses"])
          and isinstance(h.get("seconds", 0.0), (int, float)) and is_real(h.get("seconds", 0.0))
          and h.get("seconds", 0.0) >= 0)
    if not ok:
        raise _bad(folder, "a history with increasing int steps <= step, as many finite losses, seconds >= 0",
                   "another history")
    shapes = state["param_shapes"]
    if not isinstance(shapes, dict) or not all(
            isinstance(v, list) and all(is_int(d, 0) for d in v)
            for v in shapes.values()):
        raise _bad(folder, "param_shapes mapping names to lists of sizes", describe(shapes))
    e = state["ema"]
    if e is not None and not (isinstance(e, dict) and isinstance(e.get("warmup"), bool)
                              and isinstance(e.get("decay"), float) and 0 < e["decay"] < 1
                              and is_int(e.get("num_updates"), 0)):
        raise _bad(folder, "ema settings {decay in (0, 1), warmup, num_updates >= 0} or null", describe(e))
    if not isinstance(state["config"], dict):
        raise _bad(folder, "config holding a JSON object", describe(state["config"]))
    return step, History.from_dict(h)


def _check_tensors(folder: Path, name: str, tensors: dict, shapes: dict) -> None:
    got = {k: list(v.shape) for k, v in tensors.items()}
    if got != shapes:
        wrong = sorted(set(got) ^ set(shapes)) or sorted(k for k in got if got[k] != shapes[k])
        raise _bad(folder, f"{name} with the tensors listed in state.json", f"a difference at {wrong[:3]}")


def _read_checkpoint(folder: Path) -> _Checkpoint:
    """Read and check everything of the checkpoint in ``folder`` (or its backup); load nothing."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    found = _resolve(folder)
    if found is None:
        raise fail("folder", "a checkpoint folder written by save_checkpoint (with state.json)", repr(str(folder)))
    path = found / "state.json"
    if path.stat().st_size > _MAX_STATE_BYTES:
        raise _bad(found, f"state.json of at most {_MAX_STATE_BYTES // 2**20} MiB", f"{path.stat().st_size} bytes")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise _bad(found, "state.json holding valid JSON", str(error)[:200]) from None
    step, history = _check_state(found, state)
    try:
        model = load_file(found / "model.safetensors")
        ema = None if state["ema"] is None else load_file(found / "ema.safetensors")
        train_tensors = load_file(found / "train_state.safetensors")
    except (OSError, SafetensorError) as error:
        raise _bad(found, "readable safetensors files", str(error)[:200]) from None
    _check_tensors(found, "model.safetensors", model, state["param_shapes"])
    if ema is not None:
        _check_tensors(found, "ema.safetensors", ema, state["param_shapes"])
    rng_size = torch.get_rng_state().numel()
    for key, value in train_tensors.items():
        if key.startswith("rng.") and value.dtype != torch.uint8:
            raise _bad(found, f"{key} a uint8 RNG state", describe(value))
    cpu_rng = train_tensors.get("rng.torch")
    if cpu_rng is None or cpu_rng.numel() != rng_size:
        raise _bad(found, f"rng.torch of {rng_size} bytes", "a missing or resized RNG state")
    generator = train_tensors.get("rng.generator")
    if generator is not None and generator.numel() != rng_size:
        raise _bad(found, f"rng.generator of {rng_size} bytes", describe(generator))
    try:
        _decode(state["optimizer"], train_tensors)
        _decode(state["scaler"], train_tensors)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _bad(found, "optimizer and scaler states that refer to stored tensors", "a broken reference") from None
    return _Checkpoint(found, step, history, state, model, ema, train_tensors)


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


def _apply_checkpoint(ck: _Checkpoint, model: nn.Module, optimizer=None, ema: EMA | None = None,
                      generator=None, scaler=None, restore_rng: bool = True) -> None:
    """Load a checked checkpoint into the objects: all of it, or (on an error) none of it."""
    if ema is not None and ck.ema is None:
        raise fail("ema", "None: this checkpoint was saved without an EMA", describe(ema))
    if generator is not None and "rng.generator" not in ck.train:
        raise fail("generator", "None: this checkpoint was saved without a generator state", describe(generator))
    before = (None if optimizer is None else copy.deepcopy(optimizer.state_dict()),
              None if scaler is None else scaler.state_dict(),
              None if generator is None else generator.get_state(), torch.get_rng_state())
    try:
        if optimizer is not None:
            optimizer.load_state_dict(_decode(ck.state["optimizer"], ck.train))
        if scaler is not None and ck.state["scaler"] is not None:
            scaler.load_state_dict(_decode(ck.state["scaler"], ck.train))
        if generator is not None:
            generator.set_state(ck.train["rng.generator"])
        if restore_rng:
            torch.set_rng_state(ck.train["rng.torch"])
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        if optimizer is not None:
            optimizer.load_state_dict(before[0])
        if scaler is not None:
            scaler.load_state_dict(before[1])
        if generator is not None:
            generator.set_state(before[2])
        torch.set_rng_state(before[3])
        raise fail("checkpoint", "a state that fits the given optimizer/scaler (nothing was loaded)",
                   f"{str(error)[:200]} in {str(ck.folder)!r}") from None
    if restore_rng:
        cuda_states = [ck.train[k] for k in sorted((k for k in ck.train if k.startswith("rng.cuda.")),
                                                   key=lambda k: int(k.rsplit(".", 1)[1]))]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    model.load_state_dict(ck.model)  # shapes were checked: cannot fail half-way
    if ema is not None:
        ema.load_state_dict(ck.ema)
        ema.decay, ema.warmup, ema.num_updates = (ck.state["ema"][k] for k in ("decay", "warmup", "num_updates"))


def load_checkpoint(folder, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    ema: EMA | None = None, generator: torch.Generator | None = None, *,
                    scaler=None, restore_rng: bool = True) -> tuple[int, History]:
    """Load what :func:`save_checkpoint` wrote into the given objects; return ``(step, history)``.

    ``model`` must have the saved parameter shapes. Optimizer, EMA, generator
    and scaler are restored when given; ``restore_rng`` also restores the
    global torch RNG states, so that a resumed run draws the same noise.
    Everything is checked before anything is loaded: on an error nothing changed.
    """
    ck = _read_checkpoint(_check_folder(folder))
    if not isinstance(model, nn.Module):
        raise fail("model", "a torch.nn.Module", describe(model))
    mismatch = _shape_mismatch(model, ck.state)
    if mismatch:
        raise fail("model", "the architecture saved in the checkpoint (same parameter shapes)", mismatch)
    _apply_checkpoint(ck, model, optimizer, ema, generator, scaler, restore_rng)
    return ck.step, ck.history


# --------------------------------------------------------------------------- the loop

_RESIDENT_MAX_BYTES = 2 * 2**30  # tensor data up to this size is kept on the GPU (10 000 images 3×32×32: 123 MB)


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


def _check_train_args(model, loss_fn, data, steps, batch_size, lr, weight_decay, grad_clip, ema_decay,
                      checkpoint_every, preview_every, preview, seed, amp_dtype, fast) -> None:
    """Refuse every bad argument of :func:`train` before anything runs."""
    if not isinstance(model, nn.Module):
        raise fail("model", "a torch.nn.Module", describe(model))
    if not callable(loss_fn):
        raise fail("loss_fn", "a function loss_fn(model, batch) -> scalar tensor", describe(loss_fn))
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    _check_data(data, batch_size)
    check_real(lr, "lr", low=0.0, low_open=True, hint=" (a positive number, e.g. 2e-4)")
    check_real(weight_decay, "weight_decay", low=0.0)
    if grad_clip is not None:
        check_real(grad_clip, "grad_clip", low=0.0, low_open=True, hint=" (max gradient norm) or None")
    if ema_decay is not None:
        EMA.check_decay(ema_decay, "ema_decay")
    _check_optional_positive_int(checkpoint_every, "checkpoint_every")
    _check_optional_positive_int(preview_every, "preview_every")
    if preview is not None and not callable(preview):
        raise fail("preview", "a function preview(model, step)", describe(preview))
    if preview_every is not None and preview is None:
        raise fail("preview", "a function preview(model, step) when preview_every is set", "None")
    check_seed(seed)
    check_choice(amp_dtype, "amp_dtype", ("auto", None, torch.bfloat16, torch.float16))
    if fast is not None and not isinstance(fast, FastPath):
        raise fail("fast", "a dlcourse.training.FastPath (e.g. fast_path('cuda')) or None", describe(fast))
    if not any(p.requires_grad for p in model.parameters()):
        raise fail("model", "a model with trainable parameters", describe(model))


def _resume(checkpoint: Path, model, optimizer, ema, scaler, config: dict) -> tuple[int, History]:
    """(step, history) of the checkpoint loaded into the objects, or (0, empty History) to start afresh."""
    if not checkpoint_exists(checkpoint):
        if checkpoint.exists() and (not checkpoint.is_dir() or any(checkpoint.iterdir())):
            raise fail("checkpoint", "a new folder or one written by train (delete it or choose another "
                       "folder to start afresh)", f"{str(checkpoint)!r}, which holds other files")
        return 0, History()
    ck = _read_checkpoint(checkpoint)
    mismatch = _shape_mismatch(model, ck.state)
    if mismatch:
        raise fail("checkpoint", "a folder saved from this model's architecture (delete it or choose "
                   "another folder to start afresh)", f"{str(checkpoint)!r}, where {mismatch}")
    _apply_checkpoint(ck, model, optimizer, ema, scaler=scaler)
    changed = {k: (ck.state["config"].get(k), v) for k, v in config.items() if ck.state["config"].get(k) != v}
    if changed:
        print(f"note: settings differ from the checkpoint {changed}; the resumed run will not "
              "match a straight one")
    return ck.step, ck.history


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
    _check_train_args(model, loss_fn, data, steps, batch_size, lr, weight_decay, grad_clip, ema_decay,
                      checkpoint_every, preview_every, preview, seed, amp_dtype, fast)
    device = check_device(device) if device is not None else get_device()
    fast = fast_path(device) if fast is None else fast
    if amp_dtype != "auto":
        if amp_dtype is not None and device.type != "cuda":
            print(f"note: amp_dtype={amp_dtype} ignored on {device.type} (mixed precision runs on CUDA only)")
        fast = replace(fast, amp_dtype=amp_dtype)
    run = TrainStep(model, loss_fn, data, batch_size=batch_size, lr=lr, device=device, fast=fast, seed=seed,
                    weight_decay=weight_decay, grad_clip=grad_clip, ema_decay=ema_decay)
    if checkpoint is None:
        return _train(run, steps, None, None, preview_every, preview, seed, progress)
    checkpoint = _check_folder(checkpoint)
    with _locked(checkpoint):
        return _train(run, steps, checkpoint, checkpoint_every or max(1, steps // 10), preview_every, preview,
                      seed, progress)


def _train(run: TrainStep, steps, checkpoint, checkpoint_every, preview_every, preview, seed, progress) -> History:
    """The loop of :func:`train`, after its arguments were checked (and the checkpoint locked)."""
    from tqdm.auto import tqdm

    model, optimizer, scaler, ema, device = run.model, run.optimizer, run.scaler, run.ema, run.device
    config = {"batch_size": run.batches.batch_size, "seed": seed, "lr": optimizer.defaults["lr"]}
    start, history = (0, History()) if checkpoint is None else _resume(checkpoint, model, optimizer, ema,
                                                                       scaler, config)
    run.keep_fused_setting()
    if start >= steps:
        print(f"checkpoint {str(checkpoint)!r} already has {start} steps (asked for {steps}): "
              "returning its history")
        history.ema_model = ema.model if ema else None
        return history
    if start > 0:
        print(f"resuming from step {start}")
    else:
        torch.manual_seed(seed)

    was_training = model.training
    model.train()
    bar = tqdm(total=steps, initial=start, desc="training", disable=not progress)
    log = _LossLog(history, bar)
    step = start
    clock = time.perf_counter()
    try:
        for step in range(start + 1, steps + 1):
            log.add(step, run(step - 1))
            bar.update(1)
            if preview_every is not None and step % preview_every == 0:
                log.flush()
                _run_preview(preview, ema.model if ema else model, step, device)
            if checkpoint is not None and (step % checkpoint_every == 0 or step == steps):
                log.flush()
                now = time.perf_counter()
                history.seconds += now - clock
                clock = now
                _write_checkpoint(checkpoint, *_checkpoint_contents(model, optimizer, step, history, ema, None,
                                                                    scaler, config))
        log.flush()
        history.seconds += time.perf_counter() - clock
        if preview is not None and (preview_every is None or steps % preview_every != 0):
            _run_preview(preview, ema.model if ema else model, steps, device)
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

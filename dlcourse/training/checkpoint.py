"""Checkpoints: folders of ``safetensors`` files plus one JSON file, saved crash-safely, loaded all-or-nothing.

Never pickles (docs/design.md, principle 5): ``model.safetensors``, ``ema.safetensors`` (with
an EMA), ``train_state.safetensors`` (optimizer tensors and RNG states) and ``state.json``
(step, history, optimizer hyper-parameters and scalars).

A checkpoint ``ck`` lives in ``ck/`` with siblings that only :func:`save_checkpoint` touches:
``.ck.tmp-<pid>`` (the save being written), ``.ck.old`` (the previous save, during a save),
``.ck.trash-<pid>`` (a backup being deleted) and ``.ck.lock`` (holds the writer's pid).
A save writes the temporary folder completely, then

1. renames ``ck`` to ``.ck.old``,
2. renames the temporary folder to ``ck``,
3. renames ``.ck.old`` to the trash and deletes the trash.

Renames are atomic and only complete folders are ever renamed into ``ck`` or ``.ck.old``,
so after a crash at any instant ``ck`` or ``.ck.old`` is a complete checkpoint: the last
completed save or the one before. Nothing is deleted that a reader might pick.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..validation import check_int, describe, fail, is_int, is_real
from .ema import EMA

__all__ = ["History", "save_checkpoint", "load_checkpoint", "checkpoint_exists"]

_FORMAT = "dlcourse-checkpoint"
_VERSION = 1
_REQUIRED_FILES = ("state.json", "model.safetensors", "train_state.safetensors")
_MAX_STATE_BYTES = 256 * 2**20
_MAX_STEP = 10**15

# Tests set this to a function that raises, to crash a save between two of its file operations.
_crash_point = None


@dataclass
class History:
    """What a run recorded: ``losses[i]`` is the loss at step ``steps[i]``; ``seconds`` of training.

    ``extra`` is free for your own JSON-able notes. ``ema_model`` is set by
    :func:`~dlcourse.training.train` to the EMA copy of the model (None without ``ema_decay``);
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


def checkpoint_exists(folder) -> bool:
    """True when ``folder`` holds a checkpoint written by :func:`save_checkpoint`."""
    return _resolve(_check_folder(folder)) is not None


def _resume(checkpoint: Path, model, optimizer, ema, scaler, config: dict) -> tuple[int, History]:
    """For :func:`~dlcourse.training.train`: (step, history) of the checkpoint loaded into the objects,
    or (0, empty History) to start afresh."""
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


# --------------------------------------------------------------------------- writing


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


def _cpu_tensors(state_dict: dict) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory (e.g. tied weights)
    return {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}


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


def _remove_leftovers(folder: Path) -> None:
    """Delete temporary and trash folders that killed saves left behind (the caller holds the lock)."""
    for pattern in (f".{folder.name}.tmp-*", f".{folder.name}.trash-*"):
        for leftover in folder.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _remove_tree(path: Path) -> None:
    """Delete a folder file by file (a crash part-way leaves a partial trash folder nobody reads)."""
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.is_symlink():
            _remove_tree(child)
        else:
            child.unlink()
            _done(f"delete {child.name}")
    path.rmdir()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _done(operation: str) -> None:
    if _crash_point is not None:
        _crash_point(operation)


# --------------------------------------------------------------------------- reading


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


def _bad(folder: Path, expected: str, got) -> ValueError:
    return fail("checkpoint", expected, f"{got} in {str(folder)!r} (delete the folder to start afresh)")


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


# --------------------------------------------------------------------------- the folder and its siblings


def _check_folder(folder) -> Path:
    if not isinstance(folder, (str, os.PathLike)):
        raise fail("folder", "a folder path (str or pathlib.Path)", describe(folder))
    return Path(folder)


def _resolve(folder: Path) -> Path | None:
    """The complete checkpoint to read: ``folder``, else its backup ``.folder.old``; None if neither."""
    for candidate in (folder, _sibling(folder, "old")):
        if _is_complete(candidate):
            return candidate
    return None


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED_FILES)


def _sibling(folder: Path, kind: str) -> Path:
    return folder.with_name(f".{folder.name}.{kind}")

"""Architecture registry and safetensors save/load: a model is a JSON config plus its weights.

A saved model is a folder with two files:

- ``config.json``: ``{"name": <registered architecture>, **constructor kwargs}``;
- ``model.safetensors``: the ``state_dict`` as plain tensors (no pickle, so loading
  a stranger's model cannot run their code).

``load_model`` treats both files as untrusted and is the one reader of the format (the
grader reads students' models with it, under stricter ``ReadLimits``): the config is size-
and depth-capped, the weights file size-capped and read once; the safetensors header is
checked (dtypes, shapes, offsets that tile the data) and the architecture first built on
the ``meta`` device (no memory) and compared with it, and only then is anything allocated;
int/float64 tensors where the model has float ones, and NaN/Inf weights, are refused
rather than cast.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from dlcourse.files import write_atomically
from dlcourse.validation import describe, fail, is_int

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

_ECHO = 200  # characters of untrusted input an error message may quote

# safetensors dtype names of the dtypes a saved model may hold, with their sizes in bytes
_DTYPES = {torch.float32: ("F32", 4), torch.float16: ("F16", 2), torch.bfloat16: ("BF16", 2),
           torch.int64: ("I64", 8), torch.int32: ("I32", 4), torch.int16: ("I16", 2), torch.int8: ("I8", 1),
           torch.uint8: ("U8", 1), torch.bool: ("BOOL", 1)}
_FLOAT_NAMES = {"F32", "F16", "BF16"}

_REGISTRY: dict[str, type[nn.Module]] = {}

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "ReadLimits",
    "register",
    "registered",
    "build",
    "save_model",
    "load_model",
    "count_parameters",
]


@dataclass(frozen=True)
class ReadLimits:
    """What ``load_model`` accepts from a saved folder; the defaults are the library's policy.

    ``None`` means unlimited. ``max_levels`` / ``max_width`` bound ``config["channels"]`` (its length,
    each width); ``arguments`` maps a config key to the ints it may hold (a ``range`` or a tuple).
    """

    config_bytes: int = 64 * 2**10
    config_depth: int = 8
    header_bytes: int = 16 * 2**20
    file_bytes: int = 2 * 2**30
    architectures: tuple[str, ...] | None = None
    max_levels: int | None = None
    max_width: int | None = None
    max_parameters: int | None = None
    arguments: Mapping[str, Sequence[int]] = field(default_factory=dict)


def register(name: str):
    """Class decorator: record ``cls`` under ``name`` and give each instance ``self.config``.

    ``self.config = {"name": name, **all constructor arguments (defaults included)}``,
    normalised through JSON (tuples become lists), so ``build(model.config)`` rebuilds
    the same architecture. Constructor arguments must be JSON-able.
    """
    if not isinstance(name, str) or not name:
        raise fail("name", "a non-empty string", describe(name))

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].__qualname__ != cls.__qualname__:
            raise fail("name", f"a name not yet taken (it belongs to {_REGISTRY[name].__name__})", repr(name))
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            if type(self) is not cls:  # a registered subclass records its own config
                return
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(signature.parameters)))  # self
            config = {"name": name, **arguments}
            try:
                text = json.dumps(config)
            except (TypeError, ValueError):
                raise fail(
                    f"{cls.__name__} arguments",
                    "JSON-able values (numbers, strings, bools, None, lists, dicts)",
                    repr(arguments)[:200],
                ) from None
            self.config = json.loads(text)

        cls.__init__ = __init__
        _REGISTRY[name] = cls
        return cls

    return decorate


def registered() -> list[str]:
    """Sorted names of the registered architectures."""
    return sorted(_REGISTRY)


def build(config: dict) -> nn.Module:
    """Instantiate the registered architecture ``config["name"]`` with the other keys as kwargs."""
    if not isinstance(config, dict) or "name" not in config:
        raise fail("config", 'a dict with a "name" key and the constructor arguments', describe(config))
    kwargs = dict(config)
    name = kwargs.pop("name")
    if not isinstance(name, str) or name not in _REGISTRY:
        raise fail("config['name']", f"one of the registered architectures {registered()}", repr(name)[:_ECHO])
    cls = _REGISTRY[name]
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as error:
        raise fail(
            "config", f"keyword arguments accepted by {cls.__name__}{inspect.signature(cls)}",
            f"{str(kwargs)[:_ECHO]} ({str(error)[:_ECHO]})"
        ) from None
    return cls(**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (weights and biases; buffers such as BatchNorm statistics excluded)."""
    if not isinstance(model, nn.Module):
        raise fail("model", "a torch.nn.Module", describe(model))
    return sum(p.numel() for p in model.parameters())


def save_model(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json``; return the folder."""
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not isinstance(config, dict) or config.get("name") not in _REGISTRY:
        raise fail(
            "model",
            f"a module of a registered architecture {registered()} (it has a .config dict)",
            describe(model),
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    write_atomically(
        folder / WEIGHTS_FILE, lambda temp: save_file(tensors, temp, metadata={"name": config["name"]})
    )
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    write_atomically(folder / CONFIG_FILE, lambda temp: Path(temp).write_text(text, encoding="utf-8"))
    return folder


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _at_most(value: int, limit: int | None) -> bool:
    return limit is None or value <= limit


def _allowed(values: Sequence[int]) -> str:
    """The values an argument may take, as an error message names them."""
    if isinstance(values, range):
        return f"an int in [{values.start}, {values.stop - 1}]"
    return f"one of {list(values)}"


def _read_config(path: Path, limits: ReadLimits) -> dict:
    """The config dict of a saved model, within ``limits``: bytes, nesting, architecture, channels, arguments."""
    size = path.stat().st_size
    if size > limits.config_bytes:
        raise fail(str(path), f"a config of at most {limits.config_bytes} bytes", f"{size} bytes")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise fail(str(path), "valid JSON", f"a parse error: {str(error)[:_ECHO]}") from None
    if not isinstance(config, dict):
        raise fail(str(path), 'a JSON object {"name": ..., arguments...}', f"a JSON {type(config).__name__}")
    if _depth(config) > limits.config_depth:
        raise fail(str(path), f"at most {limits.config_depth} levels of nesting", f"{_depth(config)} levels")
    name = config.get("name")
    if not isinstance(name, str):
        raise fail(f"{path}: name", f"a string, one of {registered()}", describe(name)[:_ECHO])
    if limits.architectures is not None and name not in limits.architectures:
        raise fail(f"{path}: name", f"an architecture on the allow-list {list(limits.architectures)}",
                   f"{name[:_ECHO]!r}, which is not accepted")
    channels = config.get("channels")
    if (limits.max_levels, limits.max_width) != (None, None) and not (
            isinstance(channels, list) and 1 <= len(channels) and _at_most(len(channels), limits.max_levels)
            and all(is_int(c, 1) and _at_most(c, limits.max_width) for c in channels)):
        raise fail(f"{path}: channels", f"a list of 1 to {limits.max_levels} widths, each an int in "
                   f"[1, {limits.max_width}]", str(channels)[:_ECHO])
    for key, values in limits.arguments.items():
        if not (is_int(config.get(key)) and config[key] in values):
            raise fail(f"{path}: {key}", _allowed(values), str(config.get(key))[:_ECHO])
    return config


def _numel(shape: list[int], most: int) -> int:
    """Elements of a tensor of ``shape``, or ``most + 1`` once that is passed (a hostile shape stays cheap)."""
    if 0 in shape:
        return 0
    count = 1
    for d in shape:
        count *= d
        if count > most:
            return most + 1
    return count


def _read_weights(path: Path, limits: ReadLimits) -> tuple[bytes, dict[str, tuple[str, list[int]]]]:
    """The file's bytes (read once) and its header ``{key: (dtype name, shape)}``, checked before any
    tensor is parsed: file and header sizes, dtypes, and offsets that fit each shape and tile the data."""
    size = path.stat().st_size
    if size <= limits.file_bytes:
        with open(path, "rb") as f:
            data = f.read(limits.file_bytes + 1)  # one more byte: the file may have grown since stat
        size = len(data)
    if size > limits.file_bytes:
        raise fail(str(path), f"a file of at most {limits.file_bytes} bytes", f"{size} bytes")
    if size < 8:
        raise fail(str(path), "a safetensors file", f"{size} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(limits.header_bytes, size - 8):
        raise fail(str(path), f"a safetensors header of at most {limits.header_bytes} bytes within the file",
                   f"a header length of {n}")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise fail(str(path), "a safetensors file (JSON header; never torch.save)", str(error)[:_ECHO]) from None
    if not isinstance(header, dict):
        raise fail(str(path), "a safetensors header (a JSON object)", type(header).__name__)
    sizes, data_bytes = dict(_DTYPES.values()), size - 8 - n
    entries, spans = {}, []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and entry.get("dtype") in sizes and isinstance(entry.get("shape"), list)
              and all(is_int(d, 0) for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(is_int(o) for o in entry["data_offsets"]))
        if not ok:
            raise fail(f"{path}: {key[:80]!r}", f"a tensor entry of a dtype in {sorted(sizes)} with a shape and "
                       "offsets", str(entry)[:_ECHO])
        begin, end = entry["data_offsets"]
        if not (0 <= begin <= end <= data_bytes
                and end - begin == _numel(entry["shape"], data_bytes) * sizes[entry["dtype"]]):
            raise fail(f"{path}: {key[:80]!r}", "data offsets that fit its shape and the file (truncated?)",
                       str(entry)[:_ECHO])
        entries[key] = (entry["dtype"], entry["shape"])
        spans.append((begin, end, key))
    covered = 0
    for begin, end, key in sorted(spans):
        if begin != covered:
            raise fail(str(path), "tensors whose data offsets tile the data (no overlaps, no gaps)",
                       f"{key[:80]!r} starts at byte {begin}, the tensor before it ends at byte {covered}")
        covered = end
    if covered != data_bytes:
        raise fail(str(path), f"tensors covering all {data_bytes} data bytes", f"tensors ending at byte {covered}")
    return data, entries


def _compare(expected: dict[str, torch.Tensor], header: dict, path: Path) -> None:
    """Refuse weights whose names, shapes or dtypes differ from the architecture's (built on ``meta``)."""
    for key in sorted(set(expected) | set(header)):
        if key not in header:
            problem = f"{key!r} is missing"
        elif key not in expected:
            problem = f"{key[:80]!r} is not in the architecture"
        elif list(expected[key].shape) != header[key][1]:
            problem = f"{key!r} has shape {header[key][1]}, the architecture needs {list(expected[key].shape)}"
        elif expected[key].is_floating_point() != (header[key][0] in _FLOAT_NAMES):
            problem = f"{key!r} has dtype {header[key][0]}, the architecture needs {expected[key].dtype}"
        elif not expected[key].is_floating_point() and _DTYPES.get(expected[key].dtype, ("?",))[0] != header[key][0]:
            problem = f"{key!r} has dtype {header[key][0]}, the architecture needs {expected[key].dtype}"
        else:
            continue
        raise fail(str(path), f"weights matching the architecture in {CONFIG_FILE} "
                   "(float32/float16/bfloat16 for float tensors)", problem)


def load_model(folder: str | os.PathLike, device: str | torch.device | None = None, *,
               limits: ReadLimits = ReadLimits()) -> nn.Module:
    """Rebuild the model saved in ``folder`` and load its weights (safetensors only, never pickle).

    ``device=None`` loads on the CPU. The model is returned in eval mode. Both files are checked
    against ``limits`` (the grader passes stricter ones), and the config and the weights' header
    against each other, before anything is allocated; every refusal is a ValueError naming the problem.
    """
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found (a saved model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}; "
                                    "write one with dlcourse.models.save_model(model, folder))")
    config = _read_config(config_path, limits)
    data, header = _read_weights(weights_path, limits)
    try:
        with torch.device("meta"):
            skeleton = build(config)
    except (RuntimeError, OverflowError, MemoryError) as error:
        raise fail(str(config_path), "an architecture of a buildable size", str(error)[:_ECHO]) from None
    n = count_parameters(skeleton)
    if not _at_most(n, limits.max_parameters):
        raise fail(str(config_path), f"an architecture of at most {limits.max_parameters:,} parameters", f"{n:,}")
    _compare(skeleton.state_dict(), header, weights_path)
    del skeleton
    try:
        state = load(data)
    except SafetensorError as error:
        raise fail(str(weights_path), "a readable safetensors file", str(error)[:_ECHO]) from None
    del data
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise fail(f"{weights_path}: {key!r}", "finite weights", "NaN or Inf values (did training diverge?)")
    model = build(config)
    model.load_state_dict(state, strict=True)
    return model.to(device if device is not None else "cpu").eval()

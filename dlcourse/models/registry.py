"""Architecture registry and safetensors save/load: a model is a JSON config plus its weights.

A saved model is a folder with two files:

- ``config.json``: ``{"name": <registered architecture>, **constructor kwargs}``;
- ``model.safetensors``: the ``state_dict`` as plain tensors (no pickle, so loading
  a stranger's model cannot run their code).

``load_model`` rebuilds the architecture from the registry and loads the weights.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dlcourse.files import write_atomically
from dlcourse.validation import describe, fail

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

_REGISTRY: dict[str, type[nn.Module]] = {}

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "register",
    "registered",
    "build",
    "save_model",
    "load_model",
    "count_parameters",
]


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
    if name not in _REGISTRY:
        raise fail("config['name']", f"one of the registered architectures {registered()}", repr(name))
    cls = _REGISTRY[name]
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as error:
        raise fail(
            "config", f"keyword arguments accepted by {cls.__name__}{inspect.signature(cls)}", f"{kwargs} ({error})"
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


def load_model(folder: str | os.PathLike, device: str | torch.device | None = None) -> nn.Module:
    """Rebuild the model saved in ``folder`` and load its weights (safetensors only, never pickle).

    ``device=None`` loads on the CPU. The model is returned in eval mode.
    """
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found (a saved model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}; "
                                    "write one with dlcourse.models.save_model(model, folder))")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise fail(str(config_path), "valid JSON", f"a parse error: {error}") from None
    model = build(config)
    state = load_file(str(weights_path), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise fail(str(weights_path), f"weights matching the architecture in {CONFIG_FILE}", str(error)[:500]) from None
    return model.to(device if device is not None else "cpu").eval()

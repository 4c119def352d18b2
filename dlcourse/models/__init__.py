"""U-Nets of lessons 01–04, their building blocks, and the architecture registry.

Every registered model is rebuilt from ``model.config`` (JSON) and saved as
safetensors: ``save_model(model, folder)`` / ``load_model(folder)``.
"""
from .blocks import *  # noqa: F401,F403
from .blocks import __all__ as _blocks
from .registry import *  # noqa: F401,F403
from .registry import __all__ as _registry
from .unets import *  # noqa: F401,F403
from .unets import __all__ as _unets

__all__ = [*_registry, *_blocks, *_unets]

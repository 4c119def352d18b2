"""U-Nets of lessons 01–06, their building blocks, lesson 06's attention and autoencoder, and the registry.

Every registered model is rebuilt from ``model.config`` (JSON) and saved as
safetensors: ``save_model(model, folder)`` / ``load_model(folder)``.
"""
from .attention import *  # noqa: F401,F403
from .attention import __all__ as _attention
from .blocks import *  # noqa: F401,F403
from .blocks import __all__ as _blocks
from .registry import *  # noqa: F401,F403
from .registry import __all__ as _registry
from .text_unet import *  # noqa: F401,F403
from .text_unet import __all__ as _text_unet
from .unets import *  # noqa: F401,F403
from .unets import __all__ as _unets
from .vae import *  # noqa: F401,F403
from .vae import __all__ as _vae

__all__ = [*_registry, *_blocks, *_unets, *_attention, *_text_unet, *_vae]

"""The training loop students do not write themselves: mini-batches, AdamW, EMA, checkpoints."""
from .checkpoint import *  # noqa: F401,F403
from .checkpoint import __all__

"""The training loop students do not write themselves: mini-batches, AdamW, EMA, checkpoints.

Start with ``loop.py``: :func:`train`, the one update it repeats (:class:`TrainStep`), its speed
switches (:class:`FastPath`) and its mini-batches. ``checkpoint.py`` saves and loads resumable
checkpoints, crash-safely (:func:`save_checkpoint`, :func:`load_checkpoint`, :class:`History`);
``ema.py`` holds the :class:`EMA` of a model's parameters.
"""
from .checkpoint import History, checkpoint_exists, load_checkpoint, save_checkpoint
from .ema import EMA
from .loop import FastPath, TrainStep, fast_path, train

__all__ = ["History", "EMA", "FastPath", "fast_path", "TrainStep", "train", "save_checkpoint", "load_checkpoint",
           "checkpoint_exists"]

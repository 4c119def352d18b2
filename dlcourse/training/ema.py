"""EMA: an exponential moving average of a model's parameters, θ_ema ← d·θ_ema + (1 − d)·θ."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..validation import check_real, describe, fail

__all__ = ["EMA"]


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

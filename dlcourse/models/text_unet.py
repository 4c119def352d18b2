"""Lesson 06's text-conditioned U-Net: the prompt's tokens enter through cross-attention.

Lesson 05 conditioned on one pooled text embedding (FiLM, ``ConditionalUNet``); here every decoder
position attends to every word, so a word can act on some places and not others.
"""
from __future__ import annotations

import torch
from torch import nn

from dlcourse.validation import check_bool, check_float_tensor, check_int, check_positive_int, describe, fail

from .attention import CrossAttention
from .registry import register
from .unets import UNet

__all__ = ["TextUNet"]


@register("text_unet")
class TextUNet(UNet):
    """ε_θ(x_t, t, y) for a prompt y given as per-token features (N, L, context_dim).

    Before decoder level ℓ < ``cross_attention_levels`` (ℓ = 0: the lowest resolution S/2^L after the
    bottleneck, ℓ = 1: the next one, S/2^(L−1)) the features are

        h ← CrossAttention_ℓ(h + e_t, y, mask)   (``heads`` heads, output projection zero at first);

    the other levels get h + e_t as in :class:`UNet`, whose lesson-03 switches this model keeps.
    ``token_mask`` (N, L) bool marks words (True) and padding (False). Without it a token whose features
    are all zero is padding: the course's null context is the zero vector, so with its padding zeroed,
    y · mask[..., None], a prompt goes through ``guided_eps_fn(model, y, w)`` unchanged (its null half is all
    padding). ``c_mask`` (N,) drops whole prompts for classifier-free guidance as in ``ConditionalUNet``
    (0 drops, masking every token: the null prompt, so the same network learns the unconditional
    ε_θ(x_t, t)); ``context=None`` is the null prompt for the whole batch. A prompt of padding only
    attends to nothing. ``attention_heads`` adds self-attention as in :class:`UNet`.
    ``image_channels`` defaults to 4 and ``image_size`` to 8: latents of a 32×32 image through ``VAE``.
    """

    def __init__(self, image_channels: int = 4, channels=(64, 128), image_size: int = 8, T: int = 1000,
                 context_dim: int = 64, heads: int = 4, cross_attention_levels: int = 1, attention_heads: int = 0):
        super().__init__(image_channels, channels, image_size, T, attention_heads=attention_heads)
        self.context_dim = check_positive_int(context_dim, "context_dim")
        levels = check_int(cross_attention_levels, "cross_attention_levels", low=1, high=len(self.channels),
                           expected=f"an int in [1, len(channels) = {len(self.channels)}] (1: the lowest "
                                    "resolution only, 2: the next one too)")
        self.cross_attentions = nn.ModuleList(CrossAttention(ch, context_dim, heads)
                                              for ch in self.decoder_channels[:levels])

    def _prompt(self, context, c_mask, token_mask, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y (N, L, context_dim), keep (N, L) bool): the tokens every cross-attention may attend to."""
        n, owner = x.shape[0], f"TextUNet(context_dim={self.context_dim})"
        if context is None:
            if token_mask is not None:
                raise fail(f"{owner}: token_mask", "None when context is None (the null prompt)", describe(token_mask))
            context = x.new_zeros(n, 1, self.context_dim)
        check_float_tensor(context, f"{owner}: context")
        if context.dim() != 3 or context.shape[0] != n or context.shape[2] != self.context_dim:
            raise fail(f"{owner}: context", f"per-token features (N, L, context_dim) = ({n}, L, {self.context_dim})",
                       describe(context))
        if token_mask is None:
            token_mask = context.ne(0).any(dim=-1)  # all-zero features: padding
        elif (not isinstance(token_mask, torch.Tensor) or token_mask.dtype != torch.bool
              or token_mask.shape != context.shape[:2]):
            raise fail(f"{owner}: token_mask", f"a bool tensor (N, L) = {tuple(context.shape[:2])}, True for words "
                       "(e.g. token_ids != 0)", describe(token_mask))
        keep = token_mask
        if c_mask is not None:
            check_float_tensor(c_mask, f"{owner}: c_mask")
            if tuple(c_mask.shape) != (n,):
                raise fail(f"{owner}: c_mask", f"shape (N,) = ({n},), 1 keeps and 0 drops each prompt",
                           describe(c_mask))
            keep = keep & (c_mask != 0)[:, None]
        return context, keep

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                c_mask: torch.Tensor | None = None, token_mask: torch.Tensor | None = None,
                return_weights: bool = False):
        """ε (N, C, S, S); with ``return_weights=True`` also the attention weights of each cross-attention
        level, deepest first, each (N, heads, H_ℓ·W_ℓ, L)."""
        self._check_x(x)
        self._check_t(t, x.shape[0])
        check_bool(return_weights, "return_weights")
        context, keep = self._prompt(context, c_mask, token_mask, x)
        e_t = self._time_codes(t, x.dtype)
        weights = []

        def modulate(level: int, h: torch.Tensor) -> torch.Tensor:
            h = h + e_t[level][:, :, None, None]
            if level >= len(self.cross_attentions):
                return h
            h, w = self.cross_attentions[level](h, context, keep, return_weights=True)
            weights.append(w)
            return h

        eps = self._decode(x, modulate)
        return (eps, weights) if return_weights else eps

"""Attention blocks of lesson 06: self-attention over an image's positions, cross-attention to a prompt's tokens.

Both are residual blocks on a feature map x (N, C, H, W), read as H·W tokens of width C:

    SelfAttention2d:  x + W_o · MHA(q = k = v source = GroupNorm(x))
    CrossAttention:   x + W_o · MHA(queries from GroupNorm(x), keys and values from the text tokens)

with multi-head scaled dot-product attention (:func:`attention`) per head of width d = C / heads:

    Attention(Q, K, V) = softmax(Q Kᵀ / √d) V   (the softmax over the keys).

The output projection W_o starts at zero, so a freshly added block is the identity: inserting it into a
trained or freshly initialised U-Net changes nothing until training opens the attention path, and the
residual stream keeps its scale at initialisation.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dlcourse.validation import check_bool, check_float_tensor, check_images, check_positive_int, describe, fail

from .blocks import make_norm

__all__ = ["attention", "attention_maps", "SelfAttention2d", "CrossAttention"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention per head: (softmax(q kᵀ / √d) v, the weights).

    q (N, heads, L_q, d), k and v (N, heads, L_k, d); ``mask`` (N, L_k) bool, True where a key may be
    attended to (False: padding). Masked keys get exactly zero weight; a row whose keys are all masked
    (a prompt of padding only, the null prompt) has all-zero weights and attends to nothing.
    Returns the output (N, heads, L_q, d) and the weights (N, heads, L_q, L_k), each row summing to 1
    (0 where every key is masked).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if check_float_tensor(t, name).dim() != 4:
            raise fail(name, "a tensor (N, heads, L, d)", describe(t))
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise fail("k, v", f"k and v of one shape (N, heads, L_k, d) = ({q.shape[0]}, {q.shape[1]}, L_k, {q.shape[3]})",
                   f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
                             or tuple(mask.shape) != (k.shape[0], k.shape[2])):
        raise fail("mask", f"a bool tensor (N, L_k) = ({k.shape[0]}, {k.shape[2]}), True where a key may be attended "
                   "to (for a prompt: token_ids != 0)", describe(mask))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is None:
        weights = scores.softmax(dim=-1)
    else:
        keep = mask[:, None, None, :]
        # the most negative finite score (not −inf): a fully masked row is uniform, not 0/0 = NaN, before × keep
        weights = scores.masked_fill(~keep, torch.finfo(scores.dtype).min).softmax(dim=-1) * keep
    return weights @ v, weights


def attention_maps(weights: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-token attention maps: weights (N, heads, H·W, L) averaged over the heads → (N, L, H, W)."""
    check_float_tensor(weights, "weights")
    if weights.dim() != 4 or weights.shape[2] != height * width:
        raise fail("weights", f"attention weights (N, heads, H·W = {height * width}, L)", describe(weights))
    return weights.mean(dim=1).transpose(1, 2).reshape(weights.shape[0], weights.shape[3], height, width)


def _split_heads(tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, C) → (N, heads, L, C / heads): head h holds channels h·d … (h+1)·d − 1."""
    n, length, channels = tokens.shape
    return tokens.reshape(n, length, heads, channels // heads).transpose(1, 2)


def _merge_heads(tokens: torch.Tensor) -> torch.Tensor:
    """(N, heads, L, d) → (N, L, heads·d), the inverse of :func:`_split_heads`."""
    n, heads, length, d = tokens.shape
    return tokens.transpose(1, 2).reshape(n, length, heads * d)


class _Attention2d(nn.Module):
    """Shared body: GroupNorm(x) → queries; keys/values from ``context_dim``-wide tokens; W_o; residual."""

    def __init__(self, channels: int, context_dim: int, heads: int, groups: int):
        super().__init__()
        self.channels, self.heads = check_positive_int(channels, "channels"), check_positive_int(heads, "heads")
        self.context_dim = check_positive_int(context_dim, "context_dim")
        if channels % heads:
            raise fail("heads", f"a divisor of channels = {channels} (each head gets channels / heads of them)",
                       describe(heads))
        self.norm = make_norm("group", channels, check_positive_int(groups, "groups"))
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(context_dim, channels)
        self.to_v = nn.Linear(context_dim, channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def _attend(self, x: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor | None,
                return_weights: bool):
        check_bool(return_weights, "return_weights")
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, H·W, C): position i = row-major pixel i
        source = tokens if context is None else context
        out, weights = attention(_split_heads(self.to_q(tokens), self.heads),
                                 _split_heads(self.to_k(source), self.heads),
                                 _split_heads(self.to_v(source), self.heads), mask)
        out = x + self.proj(_merge_heads(out)).transpose(1, 2).reshape(n, c, h, w)
        return (out, weights) if return_weights else out


class SelfAttention2d(_Attention2d):
    """x + W_o · MHA(GroupNorm(x)) over the H·W positions: (N, C, H, W) → (N, C, H, W).

    Layers, in this order: ``norm`` GroupNorm(gcd(groups, C), C), ``to_q``, ``to_k``, ``to_v``,
    ``proj`` (all Linear C → C; ``proj`` zero-initialised). ``forward(x, return_weights=True)``
    also returns the weights (N, heads, H·W, H·W).
    """

    def __init__(self, channels: int, heads: int = 1, groups: int = 8):
        super().__init__(channels, channels, heads, groups)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        check_images(x, f"SelfAttention2d(channels={self.channels}): x", self.channels)
        return self._attend(x, None, None, return_weights)


class CrossAttention(_Attention2d):
    """x + W_o · MHA(queries Q = GroupNorm(x) W_q, keys K = y W_k, values V = y W_v): image features attend
    to text tokens y (N, L, context_dim).

    ``mask`` (N, L) bool, True for a word, False for padding (None: every token counts); padded tokens get
    zero weight, so their values change nothing, and a prompt of padding only adds W_o's bias alone.
    Layers, in this order: ``norm``, ``to_q`` (C → C), ``to_k``, ``to_v`` (context_dim → C), ``proj``
    (C → C, zero-initialised). ``forward(..., return_weights=True)`` also returns the weights
    (N, heads, H·W, L): ``attention_maps(weights, H, W)`` draws one map per token.
    """

    def __init__(self, channels: int, context_dim: int, heads: int = 1, groups: int = 8):
        super().__init__(channels, context_dim, heads, groups)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None,
                return_weights: bool = False):
        owner = f"CrossAttention(channels={self.channels}, context_dim={self.context_dim})"
        check_images(x, f"{owner}: x", self.channels)
        check_float_tensor(context, f"{owner}: context")
        if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[2] != self.context_dim:
            raise fail(f"{owner}: context", f"per-token features (N, L, context_dim) = ({x.shape[0]}, L, "
                       f"{self.context_dim})", describe(context))
        return self._attend(x, context.to(x.dtype), mask, return_weights)

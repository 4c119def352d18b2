"""The U-Nets of lessons 01–04, all on one skeleton.

For ``channels = (c_0, …, c_{L−1})`` and an image of size S:

    stem      conv 3×3 → norm → act               image_channels → c_0   at S
    down_i    DownBlock(c_{i−1}, c_i)  (c_{−1} = c_0)                    → S/2^(i+1)
    bottleneck two convs c_{L−1} → c_{L−1} at the lowest resolution S/2^L
               (then a SelfAttention2d with ``attention_heads`` ≥ 1, lesson 06)
    up_i      UpBlock(2·c_i, c_{i−1})  for i = L−1 … 0: h and the skip of down_i
    head      cat(h, stem) → conv → norm → act → conv 3×3 → image_channels

Conditioning (time t, context c) enters the decoder: before each up block the
features h (c_i channels) are modulated one value per channel,
h ← h·(1 + γ_c) + β_c + e_t (lesson 02 and 03 models have γ = β = 0).
"""
from __future__ import annotations

import torch
from torch import nn

from dlcourse.validation import (check_bool, check_float_tensor, check_images, check_int, check_positive_int,
                                 check_timesteps, describe, fail, is_int)

from .attention import SelfAttention2d
from .blocks import (
    DownBlock,
    EmbedMLP,
    SinusoidalEmbedding,
    UpBlock,
    _check_choice,
    conv_body,
    make_activation,
    make_norm,
)
from .registry import register

__all__ = ["UNetDenoiser", "TimeUNet", "UNet", "ConditionalUNet", "TIME_EMBEDDINGS"]

TIME_EMBEDDINGS = ("mlp", "sinusoidal")


def _check_channels(channels) -> tuple[int, ...]:
    if (not isinstance(channels, (list, tuple)) or not channels
            or not all(is_int(c, 1) for c in channels)):
        raise fail("channels", "a non-empty list of positive ints, e.g. (64, 128, 256)", describe(channels))
    return tuple(channels)


class _UNetSkeleton(nn.Module):
    """Stem, L down blocks, bottleneck, L up blocks, head; ``_decode`` takes a per-level modulation."""

    def __init__(self, image_channels: int, channels, image_size: int, *, norm: str, activation: str,
                 pool: str, residual: bool, upsample: str):
        super().__init__()
        self.image_channels = check_positive_int(image_channels, "image_channels")
        self.channels = c = _check_channels(channels)
        self.image_size = check_positive_int(image_size, "image_size")
        if image_size % 2 ** len(c):
            raise fail("image_size", f"a multiple of 2**len(channels) = {2 ** len(c)} "
                       f"(each of the {len(c)} down blocks halves it)", describe(image_size))
        blocks = dict(norm=norm, activation=activation, residual=residual)
        self.stem = nn.Sequential(nn.Conv2d(image_channels, c[0], 3, padding=1), make_norm(norm, c[0]),
                                  make_activation(activation))
        self.downs = nn.ModuleList(
            DownBlock(c[max(i - 1, 0)], c[i], pool=pool, **blocks) for i in range(len(c))
        )
        self.bottleneck = conv_body(c[-1], c[-1], **blocks)
        self.ups = nn.ModuleList(
            UpBlock(2 * c[i], c[max(i - 1, 0)], upsample=upsample, **blocks) for i in reversed(range(len(c)))
        )
        self.head = nn.Sequential(
            nn.Conv2d(2 * c[0], c[0], 3, padding=1), make_norm(norm, c[0]), make_activation(activation),
            nn.Conv2d(c[0], image_channels, 3, padding=1),
        )
        self.attention: SelfAttention2d | None = None  # after the bottleneck; set by UNet(attention_heads=k)

    @property
    def decoder_channels(self) -> list[int]:
        """Channels of h entering each up block, deepest first: c_{L−1}, …, c_0."""
        return list(reversed(self.channels))

    def _check_x(self, x) -> None:
        owner = f"{type(self).__name__}(image_channels={self.image_channels}, image_size={self.image_size}): x"
        check_images(x, owner, self.image_channels)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise fail(owner, f"images of {self.image_size}×{self.image_size}", describe(x))

    def _encode(self, x: torch.Tensor, modulate_down=None) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The encoder half: (stem output, bottleneck output, the down blocks' outputs kept as skips).

        ``modulate_down(i, h)`` transforms the output of down block i before it is kept as a skip."""
        first = self.stem(x)
        h, skips = first, []
        for i, down in enumerate(self.downs):
            h = down(h)
            if modulate_down is not None:
                h = modulate_down(i, h)
            skips.append(h)
        h = self.bottleneck(h)
        return first, h if self.attention is None else self.attention(h), skips

    def _decode(self, x: torch.Tensor, modulate=None, modulate_down=None) -> torch.Tensor:
        """Run the U-Net; ``modulate(level, h)`` (level 0 = deepest) transforms h before each up block,
        ``modulate_down`` as in :meth:`_encode`."""
        first, h, skips = self._encode(x, modulate_down)
        for level, up in enumerate(self.ups):
            if modulate is not None:
                h = modulate(level, h)
            h = up(h, skips.pop())
        return self.head(torch.cat([h, first], dim=1))


@register("unet_denoiser")
class UNetDenoiser(_UNetSkeleton):
    """Lesson 01: x_noisy (N, C, S, S) → x̂ (N, C, S, S), a one-shot denoiser (no time input).

    BatchNorm, ReLU, max-pool, transposed-conv upsampling.
    """

    def __init__(self, image_channels: int = 3, channels=(64, 128, 256), image_size: int = 32):
        super().__init__(image_channels, channels, image_size, norm="batch", activation="relu", pool="max",
                         residual=False, upsample="transpose")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        return self._decode(x)


@register("unet")
class UNet(_UNetSkeleton):
    """Lesson 03: ε_θ(x_t, t) with one switch per optimisation (defaults: all on).

    - ``norm``: "batch" (lesson 02) or "group" (GroupNorm, independent of the batch);
    - ``activation``: "relu" or "gelu";
    - ``pool``: "max" or "rearrange" (pixel_unshuffle + 1×1 conv, nothing discarded);
    - ``time_embedding``: "mlp" (EmbedMLP of t/T) or "sinusoidal" (SinusoidalEmbedding(c_0)
      of t, then EmbedMLP);
    - ``residual``: two plain convs or a ResidualBlock in every block;
    - ``upsample``: "transpose" (ConvTranspose2d k=2 s=2, may leave checkerboard
      artifacts) or "nearest" (nearest-neighbour ×2 + conv 3×3, the fix);
    - ``attention_heads`` (lesson 06): 0 adds nothing (lessons 02–05); k ≥ 1 adds a
      ``SelfAttention2d`` with k heads after the bottleneck, at the lowest resolution. Its output
      projection starts at zero, so it starts as the identity.

    The time embedding e_t (one value per channel, one EmbedMLP per level) is added to
    the decoder features before each up block. With the lesson-02 switches
    (batch, relu, max, mlp, residual=False, transpose) this is exactly ``TimeUNet``.
    """

    def __init__(self, image_channels: int = 3, channels=(64, 128, 256), image_size: int = 32, T: int = 1000,
                 norm: str = "group", activation: str = "gelu", pool: str = "rearrange",
                 time_embedding: str = "sinusoidal", residual: bool = True, upsample: str = "nearest",
                 attention_heads: int = 0):
        super().__init__(image_channels, channels, image_size, norm=norm, activation=activation, pool=pool,
                         residual=residual, upsample=upsample)
        self.T = check_positive_int(T, "T")
        self.attention_heads = check_int(attention_heads, "attention_heads", low=0,
                                         expected="an int >= 0 (0: no self-attention)")
        _check_choice(time_embedding, "time_embedding", TIME_EMBEDDINGS)
        self.time_embedding = time_embedding
        if time_embedding == "sinusoidal":
            self.sinusoidal = SinusoidalEmbedding(self.channels[0] + self.channels[0] % 2)
            time_dim = self.sinusoidal.dim
        else:
            time_dim = 1
        self.time_mlps = nn.ModuleList(EmbedMLP(time_dim, ch) for ch in self.decoder_channels)
        if attention_heads:  # built after the time MLPs: a UNet's other layers start as they would without it
            self.attention = SelfAttention2d(self.channels[-1], attention_heads)

    def _check_t(self, t, n: int) -> None:
        """t: one step index per image in {0, …, T−1} (range read only where it costs no device sync)."""
        check_timesteps(t, f"{type(self).__name__}(T={self.T}): t", self.T, batch=n)

    def _time_code(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The code of t the time MLPs read: sinusoidal(t), or t/T as one number."""
        if self.time_embedding == "sinusoidal":
            code = self.sinusoidal(t)
        else:
            code = (t.to(torch.float32) / self.T)[:, None]
        return code.to(dtype)

    def _time_codes(self, t: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
        """e_t per decoder level, each (N, c_i)."""
        code = self._time_code(t, dtype)
        return [mlp(code) for mlp in self.time_mlps]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        self._check_t(t, x.shape[0])
        e_t = self._time_codes(t, x.dtype)
        return self._decode(x, lambda level, h: h + e_t[level][:, :, None, None])


@register("time_unet")
class TimeUNet(UNet):
    """Lesson 02: ε_θ(x_t, t); the lesson-01 blocks plus t/T → EmbedMLP added in the decoder."""

    def __init__(self, image_channels: int = 3, channels=(64, 128, 256), image_size: int = 32, T: int = 1000):
        super().__init__(image_channels, channels, image_size, T, norm="batch", activation="relu", pool="max",
                         time_embedding="mlp", residual=False, upsample="transpose")


@register("cond_unet")
class ConditionalUNet(UNet):
    """Lesson 04: ε_θ(x_t, t, c) for classifier-free guidance.

    c is a float (N, context_dim) (one-hot classes or a CLIP embedding); c_mask (N,)
    multiplies it row-wise (0 drops the context); c = None is the null context (zeros).
    Per decoder level, EmbedMLP(c) gives (γ_c, β_c) and
    h ← h·(1 + γ_c) + β_c + e_t (FiLM plus the time embedding). The MLP biases make
    c = 0 a distinct input, so the same network learns the unconditional ε_θ(x_t, t).
    ``condition_encoder=True`` applies the same modulation, with MLPs of its own, to the output of
    every down block too. Off by default: on the CPU budget it did not raise lesson 04's class
    accuracy (55–91 % at w = 0–5 with it, 65–94 % without; 200 samples each, docs/cpu_budget.md).
    ``attention_heads`` as in :class:`UNet`.
    """

    def __init__(self, image_channels: int = 3, channels=(64, 128, 256), image_size: int = 32, T: int = 1000,
                 context_dim: int = 5, norm: str = "group", activation: str = "gelu", pool: str = "rearrange",
                 time_embedding: str = "sinusoidal", residual: bool = True, upsample: str = "nearest",
                 condition_encoder: bool = False, attention_heads: int = 0):
        super().__init__(image_channels, channels, image_size, T, norm=norm, activation=activation, pool=pool,
                         time_embedding=time_embedding, residual=residual, upsample=upsample,
                         attention_heads=attention_heads)
        self.context_dim = check_positive_int(context_dim, "context_dim")
        self.context_mlps = nn.ModuleList(EmbedMLP(context_dim, 2 * ch) for ch in self.decoder_channels)
        self.condition_encoder = check_bool(condition_encoder, "condition_encoder")
        if condition_encoder:
            time_dim = self.time_mlps[0].in_dim
            self.encoder_time_mlps = nn.ModuleList(EmbedMLP(time_dim, ch) for ch in self.channels)
            self.encoder_context_mlps = nn.ModuleList(EmbedMLP(context_dim, 2 * ch) for ch in self.channels)

    def _context(self, c, c_mask, x: torch.Tensor) -> torch.Tensor:
        n, owner = x.shape[0], f"ConditionalUNet(context_dim={self.context_dim})"
        if c is None:
            c = x.new_zeros(n, self.context_dim)
        else:
            check_float_tensor(c, f"{owner}: c")
            if tuple(c.shape) != (n, self.context_dim):
                raise fail(f"{owner}: c", f"shape (N, context_dim) = ({n}, {self.context_dim}) "
                           "(use one_hot(labels, n_classes) for class labels)", describe(c))
        if c_mask is not None:
            check_float_tensor(c_mask, f"{owner}: c_mask")
            if tuple(c_mask.shape) != (n,):
                raise fail(f"{owner}: c_mask", f"shape (N,) = ({n},), 1 keeps and 0 drops each context",
                           describe(c_mask))
            c = c * c_mask[:, None]
        return c.to(x.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None,
                c_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._check_x(x)
        self._check_t(t, x.shape[0])
        c = self._context(c, c_mask, x)
        e_t = self._time_codes(t, x.dtype)
        films = [mlp(c)[:, :, None, None].chunk(2, dim=1) for mlp in self.context_mlps]

        def modulate(level: int, h: torch.Tensor) -> torch.Tensor:
            gamma, beta = films[level]
            return h * (1 + gamma) + beta + e_t[level][:, :, None, None]

        if not self.condition_encoder:
            return self._decode(x, modulate)
        code = self._time_code(t, x.dtype)
        down_films = [mlp(c)[:, :, None, None].chunk(2, dim=1) for mlp in self.encoder_context_mlps]

        def modulate_down(i: int, h: torch.Tensor) -> torch.Tensor:
            gamma, beta = down_films[i]
            return h * (1 + gamma) + beta + self.encoder_time_mlps[i](code)[:, :, None, None]

        return self._decode(x, modulate, modulate_down)

"""Self-checks for lesson 06: self-attention, cross-attention, and the VAE's reparameterisation and KL term.

The attention checks build the learner's block next to the package's (``dlcourse.models``), copy the
package's weights into it, and compare outputs (``check_module``). The package's output projection starts
at zero, which would make every block look like the identity, so the check's reference gets a random one.
When the outputs differ, the learner's output is compared with the block as the usual slips compute it,
and the matching slip is named.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from dlcourse.models import CrossAttention, SelfAttention2d, count_parameters, kl_divergence, reparameterise
from dlcourse.validation import describe, fail

from .core import CheckResult, Slip, _copy_weights, check_module, compare, name_slip

__all__ = ["check_self_attention", "check_cross_attention", "check_reparameterise", "check_kl"]

_SELF_LAYERS = ("norm = nn.GroupNorm(8, channels), then to_q, to_k, to_v and proj, each nn.Linear(channels, channels), "
                "created in this order")
_CROSS_LAYERS = ("norm = nn.GroupNorm(8, channels), to_q = nn.Linear(channels, channels), to_k and to_v = "
                 "nn.Linear(context_dim, channels), proj = nn.Linear(channels, channels), created in this order")
_RECIPE = ("tokens = norm(x).flatten(2).transpose(1, 2) (N, H·W, C) → q, k, v → split into heads (N, heads, L, d) → "
           "softmax(q kᵀ / √d) over the keys → weights @ v → merge the heads → proj → back to (N, C, H, W) → + x")


def _slip_forward(block, x, context=None, mask=None, *, normalise=True, scale="d", softmax_dim=-1, residual=True,
                  split=True, tokens="transpose", mask_mode="before") -> torch.Tensor:
    """The block's forward pass as a slip computes it (the defaults are the right one, with −inf masking)."""
    n, c, h, w = x.shape
    source = block.norm(x) if normalise else x
    seq = source.flatten(2).transpose(1, 2) if tokens == "transpose" else source.reshape(n, h * w, c)
    keys = seq if context is None else context
    heads = block.heads if split else 1

    def heads_of(t):
        return t.reshape(t.shape[0], t.shape[1], heads, c // heads).transpose(1, 2)

    q, k, v = heads_of(block.to_q(seq)), heads_of(block.to_k(keys)), heads_of(block.to_v(keys))
    scores = q @ k.transpose(-2, -1)
    scores = scores / math.sqrt({"d": c // heads, "C": c, None: 1}[scale])
    if mask is not None and mask_mode != "ignored":
        keep = (~mask if mask_mode == "inverted" else mask)[:, None, None, :]
        if mask_mode == "after":
            weights = scores.softmax(dim=softmax_dim) * keep
        else:
            weights = scores.masked_fill(~keep, float("-inf")).softmax(dim=softmax_dim)
    else:
        weights = scores.softmax(dim=softmax_dim)
    merged = (weights @ v).transpose(1, 2).reshape(n, h * w, c)
    projected = block.proj(merged)
    out = projected.transpose(1, 2).reshape(n, c, h, w) if tokens == "transpose" else projected.reshape(n, c, h, w)
    return x + out if residual else out


def _matches(student_out: torch.Tensor, variant: torch.Tensor, reference_out: torch.Tensor) -> bool:
    """True when the learner agrees with the slip on every sample where the slip is finite, and the slip
    differs from the reference there (so it explains the difference)."""
    finite = torch.isfinite(variant).flatten(1).all(dim=1)
    if not finite.any():
        return False
    s, v, r = (t[finite].detach().double() for t in (student_out, variant, reference_out))
    return torch.allclose(s, v, atol=1e-5, rtol=1e-4) and not torch.allclose(v, r, atol=1e-5, rtol=1e-4)


def _attention_slips(block, x, context=None, mask=None) -> list[tuple[str, dict]]:
    """The usual slips of an attention block, each with the hint that names it."""
    slips = [
        ("the residual is missing: the block returns x + proj(attention), so the input passes through unchanged "
         "and attention only adds to it.", dict(residual=False)),
        ("the 1/√d scale is missing: divide the scores q kᵀ by √d (d = channels / heads, the width of one head) "
         "before the softmax, or the softmax saturates.", dict(scale=None)),
        ("the scores are divided by √C, the full width; divide by √d with d = channels / heads, one head's width.",
         dict(scale="C")),
        ("the softmax runs over the wrong axis: it must normalise over the keys (the last dim of q kᵀ, "
         "softmax(dim=-1)), so each query's weights sum to 1.", dict(softmax_dim=-2)),
        ("the input is not normalised: q, k and v come from norm(x) (GroupNorm), while the residual adds the raw x.",
         dict(normalise=False)),
        ("the heads are not split: reshape q, k and v to (N, heads, L, d), d = channels / heads, attend in each "
         "head separately and merge them back to (N, L, channels) before proj.", dict(split=False)),
        ("the tokens are made with .view/.reshape to (N, H·W, C), which mixes channels and positions: use "
         "x.flatten(2).transpose(1, 2), and transpose back before reshaping to (N, C, H, W).", dict(tokens="view")),
    ]
    if mask is not None:
        slips = [
            ("the padding mask is ignored: set the scores of padded tokens (mask False) to −inf before the softmax, "
             "so they get zero weight.", dict(mask_mode="ignored")),
            ("the padding mask is inverted: mask is True for words and False for padding, so fill the scores where "
             "~mask with −inf (scores.masked_fill(~mask[:, None, None, :], float('-inf'))).",
             dict(mask_mode="inverted")),
            ("the mask is applied after the softmax: the remaining weights no longer sum to 1; fill the padded "
             "scores with −inf BEFORE the softmax.", dict(mask_mode="after")),
            *slips,
        ]
    return slips


def _diagnose_attention(built: list, cross: bool):
    """A ``diagnose`` for ``check_module``; ``built[-1]`` is the reference block of the configuration checked."""

    def diagnose(student_out, reference_out, args):
        if isinstance(student_out, Exception):
            return f"build the block step by step: {_RECIPE}; the layers: {_CROSS_LAYERS if cross else _SELF_LAYERS}."
        if isinstance(student_out, tuple):
            return "return only the output tensor (N, C, H, W) when return_weights is not asked for."
        if not isinstance(student_out, torch.Tensor) or student_out.shape != reference_out.shape:
            return f"the output has the input's shape (N, C, H, W): {_RECIPE}."
        x, context, mask = (args[0], args[1], args[2]) if cross else (args[0], None, None)
        if mask is not None:
            nan_rows = ~torch.isfinite(student_out).flatten(1).all(dim=1)
            if nan_rows.any() and bool((nan_rows == ~mask.any(dim=1)).all()):
                return ("a prompt of padding only (the null prompt of classifier-free guidance) gives NaN: a softmax "
                        "over nothing but −inf is 0/0. Give such rows zero weight, e.g. fill with "
                        "torch.finfo(scores.dtype).min instead of −inf and multiply the weights by the mask.")
        block = built[-1]
        with torch.no_grad():
            for hint, slip in _attention_slips(block, x, context, mask):
                if _matches(student_out, _slip_forward(block, x, context, mask, **slip), reference_out):
                    return hint
        return f"compare your forward pass with the recipe: {_RECIPE}."

    return diagnose


def _diagnose_parameters(cross: bool):
    def diagnose_parameters(student, reference, ctor_args):
        channels = ctor_args[0]
        missing = count_parameters(reference) - count_parameters(student)
        if missing == channels * channels + channels:
            return ("the output projection is missing: proj = nn.Linear(channels, channels), applied after the "
                    "heads merge.")
        if missing == 2 * channels:
            return "the GroupNorm is missing (or built with affine=False): norm = nn.GroupNorm(8, channels)."
        if missing == 3 * channels:
            return "to_q, to_k and to_v need biases (nn.Linear's default bias=True)."
        return f"the layers are {_CROSS_LAYERS if cross else _SELF_LAYERS}."

    return diagnose_parameters


def _require_matching_layers(cls, make_reference, configs, name: str, layers: str) -> None:
    """Refuse a block whose layers cannot take the reference's weights: without them its outputs could only be
    compared by shape. Construction errors and parameter-count differences are left to ``check_module``."""
    with torch.random.fork_rng(devices=[]):
        for config in configs:
            try:
                student = cls(*config)
            except Exception:  # noqa: BLE001 - check_module reports it with the learner's traceback
                return
            if not isinstance(student, torch.nn.Module):
                return
            reference = make_reference(*config)
            if count_parameters(student) == count_parameters(reference) and _copy_weights(student, reference) is None:
                raise AssertionError(f"❌ {name}{config}: your layers do not line up with the reference's, so its "
                                     f"weights cannot be copied into yours and the outputs cannot be compared. "
                                     f"Build them as: {layers}.")


def _random_projection(cls):
    """A factory for the reference block with a random output projection; it records each block it builds."""
    built = []

    def make(*args):
        block = cls(*args)
        block.proj.reset_parameters()
        built.append(block)
        return block

    return make, built


def check_self_attention(cls) -> CheckResult:
    """``cls(channels, heads)`` with ``forward(x)``: x + proj(MHA(GroupNorm(x))) over the H·W positions,
    softmax(q kᵀ / √d) v per head, d = channels / heads; layers as in ``dlcourse.models.SelfAttention2d``."""
    if not isinstance(cls, type):
        raise fail("cls", "your self-attention class (not an instance)", describe(cls))
    make, built = _random_projection(SelfAttention2d)
    configs = [(16, 1), (32, 4)]
    _require_matching_layers(cls, make, configs, "SelfAttention2d", _SELF_LAYERS)

    def inputs(config):
        return (2 * torch.randn(2, config[0], 3, 5) + 0.5,)

    return check_module(cls, make, configs, inputs, name="SelfAttention2d", diagnose=_diagnose_attention(built, False),
                        diagnose_parameters=_diagnose_parameters(False))


def check_cross_attention(cls) -> CheckResult:
    """``cls(channels, context_dim, heads)`` with ``forward(x, context, mask)``: queries from GroupNorm(x), keys and
    values from context (N, L, context_dim), mask (N, L) bool (True = word); padded tokens get zero weight and a
    prompt of padding only attends to nothing. Layers as in ``dlcourse.models.CrossAttention``."""
    if not isinstance(cls, type):
        raise fail("cls", "your cross-attention class (not an instance)", describe(cls))
    make, built = _random_projection(CrossAttention)
    configs = [(16, 12, 1), (32, 8, 4)]
    _require_matching_layers(cls, make, configs, "CrossAttention", _CROSS_LAYERS)
    # one prompt of words only, one padded, one of padding only (the null prompt)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [False] * 5])

    def inputs(config):
        channels, context_dim, _ = config
        return (2 * torch.randn(3, channels, 3, 4) + 0.5, torch.randn(3, 5, context_dim), mask.clone())

    return check_module(cls, make, configs, inputs, name="CrossAttention", diagnose=_diagnose_attention(built, True),
                        diagnose_parameters=_diagnose_parameters(True))


def _seeded_call(fn):
    """fn(mu, logvar, generator) called with a fresh generator seeded ``seed`` on mu's device."""
    def call(mu, logvar, seed):
        return fn(mu, logvar, torch.Generator(device=mu.device).manual_seed(seed))

    return call


def check_reparameterise(fn: Callable) -> CheckResult:
    """``fn(mu, logvar, generator) -> z = μ + exp(½ log σ²) ε``, ε ~ N(0, I) drawn from ``generator``;
    compared with ``dlcourse.models.reparameterise`` on the same seeds."""
    if not callable(fn):
        raise fail("fn", "your reparameterise function", describe(fn))
    student = _seeded_call(fn)

    def diagnose(student_out, reference_out, args):
        if isinstance(student_out, Exception) or not isinstance(student_out, torch.Tensor):
            return ("draw ε with torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype) "
                    "and return mu + torch.exp(0.5 * logvar) * eps.")
        mu, logvar, seed = args
        if student_out.shape != mu.shape:
            return "z has the shape of mu: draw one ε per value, torch.randn(mu.shape, generator=generator, ...)."
        runs = []
        for global_seed in (1, 2):
            with torch.random.fork_rng(devices=[mu.device] if mu.device.type == "cuda" else []):
                torch.manual_seed(global_seed)
                runs.append(student(mu, logvar, seed))
        if not torch.equal(runs[0], runs[1]):
            return ("the generator is ignored: ε comes from the global random state. Pass it on: "
                    "torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype).")
        eps = (reference_out - mu) / torch.exp(0.5 * logvar)
        slips = [
            Slip("σ is exp(½ log σ²), not exp(log σ²) (that is the variance σ²): use torch.exp(0.5 * logvar).",
                 lambda: mu + torch.exp(logvar) * eps),
            Slip("logvar is log σ², not σ: the standard deviation is σ = torch.exp(0.5 * logvar).",
                 lambda: mu + logvar * eps),
            Slip("the noise term is missing: z = mu + σ·ε with ε ~ N(0, I).", lambda: mu),
        ]
        return name_slip(student_out, slips) or ("z = mu + torch.exp(0.5 * logvar) * eps, with eps drawn once, "
                                                 "shaped like mu, from the generator.")

    g = torch.Generator().manual_seed(6)
    inputs = [(torch.randn(3, 4, generator=g), 3 * torch.rand(3, 4, generator=g) - 2, 0),
              (torch.randn(2, 2, 3, 3, generator=g), 2 * torch.rand(2, 2, 3, 3, generator=g) - 1.5, 7)]
    return compare(student, _seeded_call(reparameterise), inputs, name="reparameterise", diagnose=diagnose)


def _kl_slips(mu, logvar) -> list[Slip]:
    """The KL term as the usual slips compute it, each with the hint that names it."""
    terms = mu.pow(2) + logvar.exp() - logvar - 1
    n = mu.shape[0]
    right = 0.5 * terms.flatten(1).sum(dim=1).mean()
    hinted = [
        ("the sign is flipped: KL = ½ Σ (μ² + σ² − log σ² − 1) is ≥ 0 (the term −½ Σ (1 + log σ² − μ² − σ²) "
         "keeps its minus sign).", -right),
        ("the ½ is missing: KL = ½ Σ (μ² + σ² − log σ² − 1).", 2 * right),
        ("the reduction: SUM over each image's latent values, then average over the batch "
         "(.flatten(1).sum(dim=1).mean()), not the mean over all values.", 0.5 * terms.mean()),
        ("the reduction: average over the batch (mean over images of the per-image sums), not the sum over the "
         "batch.", n * right),
        ("the −1 is missing: KL = ½ Σ (μ² + σ² − log σ² − 1); it makes KL(N(0, 1) ‖ N(0, 1)) = 0.",
         right + 0.5 * terms[0].numel()),
        ("σ² is exp(log σ²), the variance: use logvar.exp() (exp(½ log σ²) is σ).",
         0.5 * (mu.pow(2) + (0.5 * logvar).exp() - logvar - 1).flatten(1).sum(dim=1).mean()),
    ]
    return [Slip(hint, lambda value=value: value) for hint, value in hinted]


def check_kl(fn: Callable) -> CheckResult:
    """``fn(mu, logvar) -> KL = ½ Σ_j (μ_j² + σ_j² − log σ_j² − 1)``, summed over each image's latent values and
    averaged over the batch (a 0-d tensor); compared with ``dlcourse.models.kl_divergence``."""
    if not callable(fn):
        raise fail("fn", "your KL function", describe(fn))

    def diagnose(student_out, reference_out, args):
        if isinstance(student_out, Exception) or not isinstance(student_out, torch.Tensor):
            return "return 0.5 * (mu**2 + logvar.exp() - logvar - 1), summed per image, averaged over the batch."
        if student_out.numel() == args[0].shape[0] and student_out.numel() > 1:
            return "return one number for the batch (a 0-d tensor): average the per-image sums with .mean()."
        if student_out.numel() != 1:
            return "return one number for the batch (a 0-d tensor): sum over each image's values, then .mean()."
        return name_slip(student_out.reshape(()), _kl_slips(*args))

    g = torch.Generator().manual_seed(7)
    inputs = [(torch.randn(3, 4, 2, 2, generator=g), 2 * torch.rand(3, 4, 2, 2, generator=g) - 1.5),
              (torch.randn(5, 6, generator=g) + 0.5, torch.rand(5, 6, generator=g) - 0.2)]
    return compare(fn, kl_divergence, inputs, name="kl_divergence", diagnose=diagnose)

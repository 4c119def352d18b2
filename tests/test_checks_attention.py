"""dlcourse.checks.attention: learner-style solutions pass, and each usual slip gets the hint that names it."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlcourse.checks.attention import check_cross_attention, check_kl, check_reparameterise, check_self_attention
from dlcourse.models import CrossAttention, SelfAttention2d, kl_divergence, reparameterise


class Student(nn.Module):
    """A learner's attention block written from the lesson's text (einsum, −inf masking then nan_to_num), with
    one ``SLIP`` switched on by a subclass. ``CROSS``: built ``(channels, context_dim, heads)``, else
    ``(channels, heads)``."""

    SLIP, CROSS = None, False

    def __init__(self, channels, *args):
        super().__init__()
        context_dim, self.heads = args if self.CROSS else (channels, *args)
        self.norm = nn.GroupNorm(8, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(context_dim, channels)
        self.to_v = nn.Linear(context_dim, channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x, context=None, mask=None):
        slip, (n, c, h, w) = self.SLIP, x.shape
        source = x if slip == "no norm" else self.norm(x)
        tokens = source.reshape(n, h * w, c) if slip == "view" else source.permute(0, 2, 3, 1).reshape(n, h * w, c)
        kv = tokens if context is None else context
        heads = 1 if slip == "no split" else self.heads
        d = c // heads
        q = self.to_q(tokens).reshape(n, -1, heads, d)
        k = self.to_k(kv).reshape(n, -1, heads, d)
        v = self.to_v(kv).reshape(n, -1, heads, d)
        divisor = {"no scale": 1, "scale C": math.sqrt(c)}.get(slip, math.sqrt(d))
        scores = torch.einsum("nihd,njhd->nhij", q, k) / divisor
        dim = -2 if slip == "wrong axis" else -1
        if mask is None or slip == "mask ignored":
            weights = scores.softmax(dim)
        elif slip == "mask after":
            weights = scores.softmax(dim) * mask[:, None, None, :]
        else:
            keep = ~mask if slip == "mask inverted" else mask
            weights = scores.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(dim)
        if slip != "nan for the null prompt":
            weights = torch.nan_to_num(weights)
        out = self.proj(torch.einsum("nhij,njhd->nihd", weights, v).reshape(n, h * w, c))
        out = out.reshape(n, c, h, w) if slip == "view" else out.reshape(n, h, w, c).permute(0, 3, 1, 2)
        return out if slip == "no residual" else x + out


def student(slip=None, cross=False):
    return type(f"Student_{slip}", (Student,), {"SLIP": slip, "CROSS": cross})


def test_correct_blocks_pass():
    assert check_self_attention(student()).passed
    assert check_cross_attention(student(cross=True)).passed
    assert check_self_attention(SelfAttention2d).passed and check_cross_attention(CrossAttention).passed


def test_the_checks_leave_the_global_random_state_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    check_self_attention(student())
    check_cross_attention(student(cross=True))
    check_reparameterise(reparameterise)
    assert torch.equal(torch.rand(3), expected)


def test_other_layer_names_pass_when_the_layers_line_up(capsys):
    class Renamed(nn.Module):
        def __init__(self, channels, heads):
            super().__init__()
            self.inner = student()(channels, heads)

        def forward(self, x):
            return self.inner(x)

    assert check_self_attention(Renamed).passed
    assert "layer by layer" in capsys.readouterr().out


SELF_SLIPS = {
    "no residual": "the residual is missing",
    "no scale": "the 1/√d scale is missing",
    "scale C": "divided by √C, the full width",
    "wrong axis": "the softmax runs over the wrong axis",
    "no norm": "the input is not normalised",
    "no split": "the heads are not split",
    "view": "the tokens are made with .view/.reshape",
}


@pytest.mark.parametrize("slip", sorted(SELF_SLIPS))
def test_self_attention_slips_are_named(slip):
    with pytest.raises(AssertionError, match=r"(?s)❌ SelfAttention2d\([^\n]*" + SELF_SLIPS[slip]):
        check_self_attention(student(slip))


CROSS_SLIPS = {
    "mask ignored": "the padding mask is ignored",
    "mask inverted": "the padding mask is inverted",
    "mask after": "the mask is applied after the softmax",
    "nan for the null prompt": "a prompt of padding only .* gives NaN",
    "no residual": "the residual is missing",
    "no scale": "the 1/√d scale is missing",
    "wrong axis": "the softmax runs over the wrong axis",
    "no norm": "the input is not normalised",
}


@pytest.mark.parametrize("slip", sorted(CROSS_SLIPS))
def test_cross_attention_slips_are_named(slip):
    with pytest.raises(AssertionError, match=r"(?s)❌ CrossAttention\([^\n]*" + CROSS_SLIPS[slip]):
        check_cross_attention(student(slip, cross=True))


def test_a_missing_projection_is_named_by_the_parameter_count():
    class NoProjection(Student):
        def __init__(self, channels, heads):
            super().__init__(channels, heads)
            del self.proj
            self.proj = nn.Identity()

    with pytest.raises(AssertionError, match=r"(?s)❌ SelfAttention2d\([^\n]*the output projection is missing.*evidence: your module has \d+ parameters"):
        check_self_attention(NoProjection)


def test_fused_layers_are_refused_rather_than_compared_by_shape_only():
    class Fused(nn.Module):
        def __init__(self, channels, heads):
            super().__init__()
            self.norm = nn.GroupNorm(8, channels)
            self.qkv = nn.Linear(channels, 3 * channels)
            self.proj = nn.Linear(channels, channels)

        def forward(self, x):
            return x

    with pytest.raises(AssertionError, match="(?s)your layers do not line up.*to_q, to_k, to_v and proj"):
        check_self_attention(Fused)


def test_an_unfilled_exercise_says_so():
    class Todo(Student):
        def forward(self, x):
            raise NotImplementedError

    with pytest.raises(AssertionError, match="fill in the exercise first"):
        check_self_attention(Todo)


# ---- reparameterise ---------------------------------------------------------------------------

def draw(mu, generator):
    return torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)


REPARAMETERISE_SLIPS = {
    "exp(logvar)": (lambda mu, lv, g: mu + torch.exp(lv) * draw(mu, g), "not exp\\(log σ²\\)"),
    "logvar as sigma": (lambda mu, lv, g: mu + lv * draw(mu, g), "logvar is log σ², not σ"),
    "generator ignored": (lambda mu, lv, g: mu + torch.exp(0.5 * lv) * torch.randn_like(mu),
                          "the generator is ignored"),
    "no noise": (lambda mu, lv, g: mu + 0 * draw(mu, g), "the noise term is missing"),
}


def test_correct_reparameterise_passes():
    assert check_reparameterise(reparameterise).passed
    assert check_reparameterise(lambda mu, lv, g: mu + lv.mul(0.5).exp() * torch.randn_like(mu, generator=g)).passed


@pytest.mark.parametrize("slip", sorted(REPARAMETERISE_SLIPS))
def test_reparameterise_slips_are_named(slip):
    fn, hint = REPARAMETERISE_SLIPS[slip]
    with pytest.raises(AssertionError, match="(?s)❌ reparameterise[^\n]*" + hint):
        check_reparameterise(fn)


# ---- the KL term ------------------------------------------------------------------------------

def terms(mu, lv):
    return mu**2 + lv.exp() - lv - 1


KL_SLIPS = {
    "sign": (lambda mu, lv: -0.5 * terms(mu, lv).flatten(1).sum(1).mean(), "the sign is flipped"),
    "missing half": (lambda mu, lv: terms(mu, lv).flatten(1).sum(1).mean(), "the ½ is missing"),
    "mean of all": (lambda mu, lv: 0.5 * terms(mu, lv).mean(), "SUM over each image's latent values"),
    "sum of all": (lambda mu, lv: 0.5 * terms(mu, lv).sum(), "average over the batch .*not the sum over the batch"),
    "missing -1": (lambda mu, lv: 0.5 * (mu**2 + lv.exp() - lv).flatten(1).sum(1).mean(), "the −1 is missing"),
    "per image": (lambda mu, lv: 0.5 * terms(mu, lv).flatten(1).sum(1), "return one number for the batch"),
}


def test_correct_kl_passes():
    assert check_kl(kl_divergence).passed
    assert check_kl(lambda mu, lv: -0.5 * torch.sum(1 + lv - mu**2 - lv.exp()) / mu.shape[0]).passed


@pytest.mark.parametrize("slip", sorted(KL_SLIPS))
def test_kl_slips_are_named(slip):
    fn, hint = KL_SLIPS[slip]
    with pytest.raises(AssertionError, match="(?s)❌ kl_divergence[^\n]*" + hint):
        check_kl(fn)

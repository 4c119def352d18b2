"""dlcourse.models.attention and the U-Nets that use it: hand-written references, masks, equivariance, identity
at initialisation, and that the models of lessons 02–05 are unchanged with the option off."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dlcourse.guidance import cfg_eps, guided_eps_fn
from dlcourse.models import (
    ConditionalUNet,
    CrossAttention,
    SelfAttention2d,
    TextUNet,
    UNet,
    attention,
    attention_maps,
    count_parameters,
    load_model,
    save_model,
)

REFERENCES = Path(__file__).resolve().parents[1] / "dlcourse" / "weights" / "reference"


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def opened(block):
    """The block with a random output projection (it starts at zero, which would hide the attention path)."""
    block.proj.reset_parameters()
    return block


def by_hand(block, x, context=None, mask=None):
    """x + W_o · softmax(Q Kᵀ/√d) V per head, written out with einsum; padded keys dropped before the softmax."""
    n, c, h, w = x.shape
    heads, d = block.heads, c // block.heads
    g = torch.nn.functional.group_norm(x, block.norm.num_groups, block.norm.weight, block.norm.bias, block.norm.eps)
    tokens = g.permute(0, 2, 3, 1).reshape(n, h * w, c)  # pixel (row, col) → position row·W + col
    source = tokens if context is None else context
    q = (tokens @ block.to_q.weight.T + block.to_q.bias).reshape(n, h * w, heads, d)
    k = (source @ block.to_k.weight.T + block.to_k.bias).reshape(n, source.shape[1], heads, d)
    v = (source @ block.to_v.weight.T + block.to_v.bias).reshape(n, source.shape[1], heads, d)
    scores = torch.einsum("nihd,njhd->nhij", q, k) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.einsum("nhij,njhd->nihd", weights, v).reshape(n, h * w, c) @ block.proj.weight.T + block.proj.bias
    return x + out.reshape(n, h, w, c).permute(0, 3, 1, 2), weights


# ---- the attention function -------------------------------------------------------------------

def test_attention_errors_name_the_tensor():
    q = torch.randn(2, 1, 3, 4)
    with pytest.raises(ValueError, match=r"k: expected a tensor \(N, heads, L, d\)"):
        attention(q, torch.randn(2, 5, 4), torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"k, v: expected k and v of one shape \(N, heads, L_k, d\)"):
        attention(q, torch.randn(2, 1, 5, 4), torch.randn(2, 1, 6, 4))
    with pytest.raises(ValueError, match=r"mask: expected a bool tensor \(N, L_k\) = \(2, 5\).*token_ids != 0"):
        attention(q, torch.randn(2, 1, 5, 4), torch.randn(2, 1, 5, 4), torch.ones(2, 4, dtype=torch.bool))


def test_attention_matches_softmax_by_hand():
    q, k, v = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 5)
    mask = torch.tensor([[True] * 6, [True, False, True, True, False, False]])
    out, weights = attention(q, k, v, mask)
    logits = torch.einsum("nhid,nhjd->nhij", q, k) / math.sqrt(5)
    logits[1, :, :, ~mask[1]] = -float("inf")
    expected = logits.softmax(dim=-1)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(out, expected @ v)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 3, 4))
    assert out.shape == (2, 3, 4, 5) and weights.shape == (2, 3, 4, 6)


def test_attention_to_padding_only_has_zero_weights_and_no_nan():
    q, k, v = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 5, 4), torch.randn(2, 1, 5, 4)
    mask = torch.tensor([[False] * 5, [True, True, False, False, False]])
    out, weights = attention(q, k, v, mask)
    assert torch.equal(weights[0], torch.zeros(1, 3, 5)) and torch.equal(out[0], torch.zeros(1, 3, 4))
    assert torch.isfinite(out).all()


def test_equal_scores_average_the_values():
    """q = 0 gives equal scores: every query returns the mean of the unmasked values."""
    v = torch.randn(1, 1, 4, 3)
    mask = torch.tensor([[True, True, False, True]])
    out, weights = attention(torch.zeros(1, 1, 2, 3), torch.randn(1, 1, 4, 3), v, mask)
    torch.testing.assert_close(weights, torch.tensor([1 / 3, 1 / 3, 0, 1 / 3]).expand(1, 1, 2, 4))
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, [0, 1, 3]].mean(dim=0))


# ---- self-attention ---------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [1, 4])
def test_self_attention_matches_einsum_reference(heads):
    block = opened(SelfAttention2d(16, heads))
    x = 2 * torch.randn(2, 16, 3, 5) + 1
    out, weights = block(x, return_weights=True)
    expected, expected_weights = by_hand(block, x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)
    assert out.shape == x.shape and weights.shape == (2, heads, 15, 15)


def test_self_attention_is_permutation_equivariant():
    block = opened(SelfAttention2d(8, 2))
    x = torch.randn(2, 8, 4, 4)
    perm = torch.randperm(16)
    permuted = x.flatten(2)[:, :, perm].reshape(2, 8, 4, 4)
    torch.testing.assert_close(block(permuted).flatten(2), block(x).flatten(2)[:, :, perm])


def test_zero_projection_makes_a_fresh_block_the_identity_that_can_still_learn():
    block = SelfAttention2d(8, 2)
    x = torch.randn(2, 8, 4, 4)
    out = block(x)
    assert torch.equal(out, x)
    (out * torch.randn_like(out)).sum().backward()
    assert block.proj.weight.grad.abs().sum() > 0  # the projection gets a gradient, so training opens the path
    cross = CrossAttention(8, 6)
    assert torch.equal(cross(x, torch.randn(2, 3, 6)), x)


def test_attention_errors_name_the_argument():
    with pytest.raises(ValueError, match="heads: expected a divisor of channels = 12"):
        SelfAttention2d(12, 5)
    with pytest.raises(ValueError, match=r"SelfAttention2d\(channels=8\): x: expected 8 channels"):
        SelfAttention2d(8)(torch.randn(1, 4, 2, 2))
    block = CrossAttention(8, 6)
    x = torch.randn(2, 8, 2, 2)
    with pytest.raises(ValueError, match=r"context: expected per-token features \(N, L, context_dim\) = \(2, L, 6\)"):
        block(x, torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"mask: expected a bool tensor \(N, L_k\) = \(2, 3\)"):
        block(x, torch.randn(2, 3, 6), torch.ones(2, 3))
    with pytest.raises(ValueError, match="return_weights: expected True or False"):
        block(x, torch.randn(2, 3, 6), return_weights="yes")


# ---- cross-attention --------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [1, 2])
def test_cross_attention_matches_einsum_reference_with_padding(heads):
    block = opened(CrossAttention(8, 6, heads))
    x, context = torch.randn(2, 8, 3, 2), torch.randn(2, 5, 6)
    mask = torch.tensor([[True, True, True, True, True], [True, True, False, False, False]])
    out, weights = block(x, context, mask, return_weights=True)
    expected, expected_weights = by_hand(block, x, context, mask)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)
    assert weights.shape == (2, heads, 6, 5)
    assert torch.equal(weights[1, :, :, 2:], torch.zeros(heads, 6, 3))  # exactly zero, not just small


def test_padded_tokens_change_nothing():
    block = opened(CrossAttention(8, 6, 2))
    x, context = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    changed = context.clone()
    changed[~mask] = 100 * torch.randn(int((~mask).sum()), 6)
    assert torch.equal(block(x, context, mask), block(x, changed, mask))
    changed[0, 0] += 1  # a word, not padding
    assert not torch.allclose(block(x, context, mask), block(x, changed, mask))


def test_a_prompt_of_padding_only_adds_the_projection_bias():
    block = opened(CrossAttention(8, 6))
    x = torch.randn(1, 8, 2, 2)
    out, weights = block(x, torch.randn(1, 3, 6), torch.zeros(1, 3, dtype=torch.bool), return_weights=True)
    assert torch.equal(weights, torch.zeros(1, 1, 4, 3))
    torch.testing.assert_close(out, x + block.proj.bias[None, :, None, None])


def test_attention_maps_one_map_per_token():
    weights = torch.rand(2, 3, 6, 4)  # N, heads, H·W = 2·3, L
    maps = attention_maps(weights, 2, 3)
    assert maps.shape == (2, 4, 2, 3)
    torch.testing.assert_close(maps[1, 2, 1, 0], weights[1, :, 3, 2].mean())  # pixel (1, 0) is position 1·3 + 0
    with pytest.raises(ValueError, match=r"weights: expected attention weights \(N, heads, H·W = 4, L\)"):
        attention_maps(weights, 2, 2)


# ---- the option on the lesson 03/04 U-Nets: off changes nothing ---------------------------------

@pytest.mark.parametrize("name", ["02_ddpm", "03_optimised", "04_cfg"])  # trained before the option existed
def test_shipped_references_load_without_attention(name):
    config = json.loads((REFERENCES / name / "config.json").read_text())
    assert config.get("attention_heads", 0) == 0  # absent in configs written before the option existed
    model = load_model(REFERENCES / name)  # strict: every weight name and shape matches
    assert model.attention is None and model.config.get("attention_heads", 0) == 0


@pytest.mark.parametrize("cls", [UNet, ConditionalUNet])
def test_attention_heads_zero_is_the_model_of_lessons_03_and_04(cls):
    torch.manual_seed(1)
    plain = cls(channels=(8, 16), image_size=16, T=50)
    torch.manual_seed(1)
    with_zero = cls(channels=(8, 16), image_size=16, T=50, attention_heads=0)
    state = plain.state_dict()
    assert with_zero.state_dict().keys() == state.keys() and all(torch.equal(v, state[k])
                                                                 for k, v in with_zero.state_dict().items())
    assert not any("attention" in key for key in state)


@pytest.mark.parametrize("cls", [UNet, ConditionalUNet])
def test_self_attention_option_starts_as_the_same_unet(cls):
    plain = cls(channels=(8, 16), image_size=16, T=50).eval()
    attended = cls(channels=(8, 16), image_size=16, T=50, attention_heads=2).eval()
    missing, unexpected = attended.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(key.startswith("attention.") for key in missing)
    assert count_parameters(attended) - count_parameters(plain) == count_parameters(SelfAttention2d(16, 2))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 49])
    with torch.no_grad():
        assert torch.equal(attended(x, t), plain(x, t))
        opened(attended.attention)
        assert not torch.allclose(attended(x, t), plain(x, t))  # and the block is on the path


def test_unet_with_attention_round_trips(tmp_path):
    model = UNet(channels=(8, 16), image_size=16, T=50, attention_heads=4)
    opened(model.attention)
    loaded = load_model(save_model(model.eval(), tmp_path / "run"))
    assert loaded.config["attention_heads"] == 4 and loaded.attention.heads == 4
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 7])
    assert torch.equal(loaded(x, t), model(x, t))
    with pytest.raises(ValueError, match=r"attention_heads: expected an int >= 0 \(0: no self-attention\)"):
        UNet(channels=(8, 16), image_size=16, attention_heads=-1)


# ---- the text-conditioned U-Net ---------------------------------------------------------------

def text_unet(**kwargs):
    model = TextUNet(channels=(8, 16), image_size=8, T=50, context_dim=6, heads=2, **kwargs)
    for block in model.cross_attentions:
        opened(block)
    return model.eval()


def prompt(n=3, length=4):
    context = torch.randn(n, length, 6)
    mask = torch.arange(length)[None, :] < torch.tensor([4, 2, 1])[:n, None]
    return context, mask


@pytest.mark.parametrize("levels", [1, 2])
def test_text_unet_shapes_and_weights_per_level(levels):
    model = text_unet(cross_attention_levels=levels)
    context, mask = prompt()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([0, 10, 49])
    eps, weights = model(x, t, context, token_mask=mask, return_weights=True)
    assert eps.shape == x.shape
    assert [tuple(w.shape) for w in weights] == [(3, 2, 4, 4), (3, 2, 16, 4)][:levels]  # 2×2, then 4×4 positions
    assert all(torch.equal(w[2, :, :, 1:], torch.zeros_like(w[2, :, :, 1:])) for w in weights)
    assert torch.equal(model(x, t, context, token_mask=mask), eps)


def test_text_unet_reads_the_words_not_the_padding():
    model = text_unet(cross_attention_levels=2)
    context, mask = prompt()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([5, 5, 5])
    with torch.no_grad():
        eps = model(x, t, context, token_mask=mask)
        padded = context.clone()
        padded[~mask] = torch.randn(int((~mask).sum()), 6)
        assert torch.equal(model(x, t, padded, token_mask=mask), eps)
        other = context.clone()
        other[:, 0] += 1
        changed = model(x, t, other, token_mask=mask)
        assert all(not torch.allclose(changed[i], eps[i]) for i in range(3))


def test_dropping_the_prompt_is_the_null_prompt():
    model = text_unet()
    context, mask = prompt()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([1, 2, 3])
    with torch.no_grad():
        dropped = model(x, t, context, torch.tensor([1.0, 0.0, 1.0]), mask)
        null = model(x, t)
        kept = model(x, t, context, token_mask=mask)
    assert torch.equal(dropped[1], null[1])
    assert torch.equal(dropped[[0, 2]], kept[[0, 2]])
    assert not torch.allclose(kept[1], null[1])


def test_text_unet_round_trips_and_names_bad_arguments(tmp_path):
    model = text_unet(cross_attention_levels=2, attention_heads=2)
    loaded = load_model(save_model(model, tmp_path / "text"))
    assert type(loaded) is TextUNet and loaded.config == model.config and loaded.config["name"] == "text_unet"
    context, mask = prompt()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([1, 2, 3])
    assert torch.equal(loaded(x, t, context, token_mask=mask), model(x, t, context, token_mask=mask))
    with pytest.raises(ValueError, match=r"cross_attention_levels: expected an int in \[1, len\(channels\) = 2\]"):
        TextUNet(channels=(8, 16), cross_attention_levels=3)
    with pytest.raises(ValueError, match=r"TextUNet\(context_dim=6\): token_mask: expected a bool tensor"):
        model(x, t, context, token_mask=mask.float())
    with pytest.raises(ValueError, match=r"TextUNet\(context_dim=6\): context: expected per-token features"):
        model(x, t, context[:, 0])
    with pytest.raises(ValueError, match=r"c_mask: expected shape \(N,\) = \(3,\)"):
        model(x, t, context, torch.ones(3, 1), mask)


def test_zeroed_padding_is_padding_so_guided_eps_fn_works_unchanged():
    model = text_unet(cross_attention_levels=2)
    context, mask = prompt()
    zeroed = context * mask[..., None]
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([4, 8, 12])
    with torch.no_grad():
        explicit = model(x, t, context, token_mask=mask)
        assert torch.equal(model(x, t, zeroed), explicit)
        guided = guided_eps_fn(model, zeroed, 2.0)(x, t)
        torch.testing.assert_close(guided, cfg_eps(explicit, model(x, t), 2.0))

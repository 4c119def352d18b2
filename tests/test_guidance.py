"""dlcourse.guidance: context masks, the CFG combination, batched vs two-pass guidance, classifier guidance."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from dlcourse.guidance import (apply_context_mask, cfg_eps, classifier_guided_eps_fn, context_mask, guided_eps_fn,
                               one_hot, two_pass_guided_eps_fn)
from dlcourse.sampling import ddim_sample
from dlcourse.schedules import Schedule, linear_betas, scaled_linear_betas


class ToyCondModel(nn.Module):
    """A deterministic stand-in for ConditionalUNet: model(x, t, c, c_mask), nonlinear in every input."""

    def __init__(self, channels: int = 2, context_dim: int = 3, T: int = 40):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(context_dim, channels, generator=gen))
        self.bias = nn.Parameter(torch.randn(channels, generator=gen) * 0.1)  # so c = 0 is a distinct input
        self.T = T
        self.batch_sizes = []

    def forward(self, x, t, c=None, c_mask=None):
        self.batch_sizes.append(x.shape[0])
        c = torch.zeros(x.shape[0], self.proj.shape[0]) if c is None else c
        if c_mask is not None:
            c = c * c_mask[:, None]
        shift = torch.tanh(c @ self.proj + self.bias)[:, :, None, None]
        scale = (1 + t.float() / self.T)[:, None, None, None]
        return torch.tanh(x * scale) * 0.8 + shift * (1 - x.abs().clamp(max=1) * 0.3)


def test_one_hot():
    out = one_hot(torch.tensor([2, 0, 1]), 4)
    assert out.dtype == torch.float32 and torch.equal(out, torch.eye(4)[[2, 0, 1]])
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 3\]"):
        one_hot(torch.tensor([4]), 4)
    with pytest.raises(ValueError, match="labels: expected a 1-D integer tensor"):
        one_hot(torch.tensor([0.0]), 4)


def test_context_mask_drops_at_the_stated_rate():
    n, p = 20_000, 0.1
    mask = context_mask(n, p, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (n,) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    dropped = 1 - mask.mean().item()
    assert abs(dropped - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_context_mask_drops_whole_contexts():
    c = torch.rand(500, 8) + 0.5  # no zero entries in the data
    masked = apply_context_mask(c, context_mask(500, 0.3, generator=torch.Generator().manual_seed(1)))
    zero_rows = (masked == 0).all(dim=1)
    kept_rows = (masked == c).all(dim=1)
    assert torch.all(zero_rows | kept_rows)  # each row is either all kept or all zero
    assert 100 < int(zero_rows.sum()) < 200


def test_context_mask_edges_and_errors():
    assert torch.equal(context_mask(1000, 0.0), torch.ones(1000))
    assert torch.equal(context_mask(1000, 1.0), torch.zeros(1000))
    a = context_mask(64, 0.5, generator=torch.Generator().manual_seed(5))
    b = context_mask(64, 0.5, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    for bad in (-0.1, 1.5, "0.1"):
        with pytest.raises(ValueError, match=r"drop_prob: expected a probability in \[0, 1\]"):
            context_mask(10, bad)
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        context_mask(0)
    with pytest.raises(ValueError, match=r"c_mask: expected shape \(4,\)"):
        apply_context_mask(torch.ones(4, 3), torch.ones(3))


NOT_FINITE = [float("nan"), float("inf"), -float("inf"), np.float32("nan"), torch.tensor(float("nan"))]
REAL = [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), np.int64(1), 0.5]


@pytest.mark.parametrize("p", NOT_FINITE, ids=repr)
def test_drop_prob_must_be_a_finite_probability(p):
    with pytest.raises(ValueError, match="drop_prob: expected a probability"):
        context_mask(4, p)


@pytest.mark.parametrize("p", REAL[:4], ids=repr)
def test_drop_prob_accepts_numpy_scalars_and_0d_tensors(p):
    assert context_mask(4, p).shape == (4,)


@pytest.mark.parametrize("value", [0.5, 2.0, -1.0, float("nan")])
def test_a_context_mask_must_hold_only_0_and_1(value):
    with pytest.raises(ValueError, match="c_mask: expected values 0 .* or 1"):
        apply_context_mask(torch.ones(3, 4), torch.tensor([1.0, value, 0.0]))


def test_cfg_eps_formula_and_conventions():
    gen = torch.Generator().manual_seed(0)
    ec, eu = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    assert torch.allclose(cfg_eps(ec, eu, 2.5), 3.5 * ec - 2.5 * eu)
    assert torch.equal(cfg_eps(ec, eu, 0.0), ec)  # w = 0: plain conditional
    assert torch.allclose(cfg_eps(ec, eu, -1.0), eu)  # w = −1: unconditional
    w = torch.tensor([0.0, -1.0, 4.0])
    out = cfg_eps(ec, eu, w)
    assert torch.equal(out[0], ec[0]) and torch.allclose(out[1], eu[1]) and torch.allclose(out[2], 5 * ec[2] - 4 * eu[2])
    with pytest.raises(ValueError, match=r"w: expected a number or a tensor of shape \(\) or \(3,\)"):
        cfg_eps(ec, eu, torch.ones(2))
    with pytest.raises(ValueError, match="eps_uncond: expected the shape of eps_cond"):
        cfg_eps(ec, eu[:1], 1.0)


@pytest.mark.parametrize("w", NOT_FINITE + [torch.tensor([0.0, float("inf")])], ids=repr)
def test_cfg_refuses_guidance_weights_that_are_not_finite(w):
    with pytest.raises(ValueError, match="w: expected"):
        cfg_eps(torch.zeros(2, 3), torch.ones(2, 3), w)


@pytest.mark.parametrize("w", REAL, ids=repr)
def test_cfg_accepts_any_real_number(w):
    out = cfg_eps(torch.zeros(2, 3), torch.ones(2, 3), w)
    torch.testing.assert_close(out, torch.full((2, 3), -float(w)))


def test_guided_eps_fn_is_one_batched_pass_equal_to_two_passes():
    model = ToyCondModel()
    c = one_hot(torch.tensor([0, 1, 2, 1]), 3)
    x, t = torch.randn(4, 2, 5, 5), torch.tensor([0, 10, 20, 39])
    w = torch.tensor([0.0, 1.0, 3.0, -1.0])
    batched = guided_eps_fn(model, c, w)(x, t)
    assert model.batch_sizes == [8]
    two = two_pass_guided_eps_fn(model, c, w)(x, t)
    assert model.batch_sizes == [8, 4, 4]
    assert torch.allclose(batched, two, atol=1e-6)
    manual = 2 * model(x, t, c, torch.ones(4)) - model(x, t, None, None)
    assert torch.allclose(batched[1], manual[1], atol=1e-6)


def test_batched_and_two_pass_guided_sampling_agree():
    schedule = Schedule(scaled_linear_betas(40))
    model = ToyCondModel(T=40)
    c = one_hot(torch.tensor([0, 1, 2]), 3)
    x_T = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    runs = [ddim_sample(make(model, c, 2.0), schedule, x_T.shape, steps=10, x_T=x_T, progress=False)
            for make in (guided_eps_fn, two_pass_guided_eps_fn)]
    assert torch.allclose(runs[0], runs[1], atol=1e-5)
    plain = ddim_sample(guided_eps_fn(model, c, 0.0), schedule, x_T.shape, steps=10, x_T=x_T, progress=False)
    assert not torch.allclose(plain, runs[0], atol=1e-3)  # w matters


def test_guided_eps_fn_checks_the_context_rows():
    fn = guided_eps_fn(ToyCondModel(), one_hot(torch.tensor([0, 1]), 3), 1.0)
    with pytest.raises(ValueError, match=r"c: expected one context row per image: \(3, D\)"):
        fn(torch.randn(3, 2, 4, 4), torch.zeros(3, dtype=torch.long))


def test_classifier_guidance_matches_closed_form_for_linear_logits():
    """log p(y|x) = log softmax(W x + b)_y ⇒ ∇_x = W_y − Σ_k p_k W_k."""
    schedule = Schedule(scaled_linear_betas(50), dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    W, b = torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    log_prob_fn = lambda x, t: torch.log_softmax(x.flatten(1) @ W.T + b, dim=1)  # noqa: E731
    eps_fn = lambda x, t: 0.5 * x  # noqa: E731
    x = torch.randn(5, 1, 2, 2, generator=gen, dtype=torch.float64)
    t, y = torch.tensor([0, 5, 20, 40, 49]), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():  # the samplers run under no_grad; the gradient must still be taken
        out = classifier_guided_eps_fn(eps_fn, log_prob_fn, y, 2.0, schedule)(x, t)
    p = torch.softmax(x.flatten(1) @ W.T + b, dim=1)
    grad = (W[y] - p @ W).reshape(x.shape)
    expected = 0.5 * x - 2.0 * (1 - schedule.alpha_bars[t]).sqrt().reshape(-1, 1, 1, 1) * grad
    assert torch.allclose(out, expected)


def test_classifier_guidance_moves_the_denoised_estimate_towards_the_class():
    """Two Gaussian classes, 0 at +m and 1 at −m: guiding to class 1 moves x̂_0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ along −m."""
    schedule = Schedule(scaled_linear_betas(50), dtype=torch.float64)
    m = torch.tensor([1.0, -0.5], dtype=torch.float64)
    log_prob_fn = lambda x, t: torch.log_softmax(torch.stack([-(x - m).pow(2).sum(1), -(x + m).pow(2).sum(1)], 1), 1)  # noqa: E731
    eps_fn = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.full((64,), 25)
    guided = classifier_guided_eps_fn(eps_fn, log_prob_fn, torch.ones(64, dtype=torch.long), 3.0, schedule)(x, t)
    x0_plain, x0_guided = schedule.predict_x0(x, t, eps_fn(x, t)), schedule.predict_x0(x, t, guided)
    assert torch.all(((x0_guided - x0_plain) @ -m) > 0)


# --- learner self-checks (dlcourse.checks.guidance) ---------------------------------------------

# check_context_mask, check_cfg_loss and check_guided_eps_fn: tests/test_checks_lessons_03_04.py


@pytest.mark.parametrize("s", NOT_FINITE, ids=repr)
def test_classifier_guidance_scale_must_be_finite(s):
    schedule = Schedule(linear_betas(10))
    with pytest.raises(ValueError, match="scale: expected a finite real number"):
        classifier_guided_eps_fn(lambda x, t: x, lambda x, t: x, torch.tensor([0]), s, schedule)


def test_check_cfg_eps_passes_and_diagnoses():
    from dlcourse.checks.guidance import check_cfg_eps
    assert check_cfg_eps(lambda ec, eu, w: (1 + w) * ec - w * eu).passed
    mistakes = [
        (lambda ec, eu, w: eu + w * (ec - eu), "guidance_scale = 1 + w"),
        (lambda ec, eu, w: (1 + w) * eu - w * ec, "swapped"),
        (lambda ec, eu, w: (1 + w) * ec + w * eu, "sign of the second term"),
        (lambda ec, eu, w: w * ec - w * eu, "should be (1 + w)"),
    ]
    for wrong, hint in mistakes:
        with pytest.raises(AssertionError, match="❌ cfg_eps") as info:
            check_cfg_eps(wrong)
        assert hint in str(info.value)

"""Self-checks of lessons 03 and 04 on right and wrong answers: each usual slip gets its own first message."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlcourse.checks import check_cfg_loss, check_context_mask, check_guided_eps_fn
from dlcourse.guidance import cfg_eps, cfg_loss, context_mask, guided_eps_fn, two_pass_guided_eps_fn


def failure(check, fn, capsys) -> str:
    """The ❌ message of ``check(fn)``, after asserting that no ✅ line was printed before it."""
    with pytest.raises(AssertionError) as info:
        check(fn)
    assert "✅" not in capsys.readouterr().out, "a ✅ line came before the ❌"
    message = str(info.value)
    assert message.startswith("❌")
    return message


# ---- context_mask ---------------------------------------------------------------------------

def test_check_context_mask_accepts_the_package_and_a_hand_written_mask(capsys):
    assert check_context_mask(context_mask).passed
    assert check_context_mask(lambda b, p, generator=None, device=None:
                              (torch.rand(b, generator=generator, device=device) >= p).float()).passed
    assert capsys.readouterr().out.count("✅ context_mask") == 2  # one line per check


@pytest.mark.parametrize("wrong, hint", [
    (lambda b, p, generator=None, device=None: (torch.rand(1, generator=generator) >= p).float().expand(b),
     "PER SAMPLE"),
    (lambda b, p, generator=None, device=None: (torch.rand(b) >= p).float(), "generator=generator"),
    (lambda b, p, generator=None, device=None: (torch.rand(b, generator=generator) < p).float(), "inverted"),
    (lambda b, p, generator=None, device=None: (torch.rand(b, 5, generator=generator) >= p).float(),
     "ONE value per sample"),
    (lambda b, p, generator=None, device=None: torch.rand(b, generator=generator) >= p,
     "convert the boolean mask to float"),
    (lambda b, p, generator=None, device=None: (torch.rand(b, generator=generator) ** 2 >= p).float(),
     "expected 10% ±"),
])
def test_check_context_mask_names_the_slip_first(wrong, hint, capsys):
    assert hint in failure(check_context_mask, wrong, capsys)


def test_check_context_mask_edges_are_exact(capsys):
    def dropping_half_as_often(b, p, generator=None, device=None):
        u = torch.rand(b, generator=generator)
        return (u >= p).float() if p < 1 else torch.ones(b)
    assert "with drop_prob = 1 every context must be dropped" in failure(check_context_mask, dropping_half_as_often,
                                                                        capsys)


# ---- cfg_loss -------------------------------------------------------------------------------

def make_cfg_loss(*, mask="per sample", t_low=0, one_t=False, target="noise", generator=True, calls=1,
                  item=False, detach=False, mask_as_argument=True):
    """A learner's cfg_loss with one chosen slip."""
    def loss_fn(model, x0, c, schedule, drop_prob=0.1, generator_=None):
        g = generator_ if generator else None
        n = x0.shape[0]
        if mask == "per sample":
            m = (torch.rand(n, generator=g) >= drop_prob).float()
        elif mask == "once per batch":
            m = (torch.rand(1, generator=g) >= drop_prob).float().expand(n)
        elif mask == "inverted":
            m = (torch.rand(n, generator=g) < drop_prob).float()
        t = (torch.full((n,), int(torch.randint(t_low, schedule.T, (1,), generator=g))) if one_t
             else torch.randint(t_low, schedule.T, (n,), generator=g))
        noise = torch.randn(x0.shape, generator=g)
        if mask == "on the image":
            x0 = x0 * (torch.rand(n, generator=g) >= drop_prob).float()[:, None, None, None]
        x_t = schedule.q_sample(x0, t, noise)
        if mask == "dropout":
            eps = model(x_t, t, F.dropout(c, drop_prob))
        elif mask == "on the image":
            eps = model(x_t, t, c)
        elif mask_as_argument:
            eps = model(x_t, t, c, m)
        else:
            eps = model(x_t, t, c * m[:, None])
        if calls == 2:
            model(x_t, t)
        loss = F.mse_loss(eps, noise if target == "noise" else x0)
        return loss.item() if item else loss.detach() if detach else loss
    return loss_fn


def test_check_cfg_loss_accepts_the_package_and_a_hand_written_loss(capsys):
    assert check_cfg_loss(cfg_loss).passed
    assert check_cfg_loss(make_cfg_loss(mask_as_argument=False)).passed
    assert capsys.readouterr().out.count("✅ cfg_loss") == 2


@pytest.mark.parametrize("slip, hint", [
    ({"mask": "once per batch"}, "PER SAMPLE"),
    ({"mask": "on the image"}, "apply the mask to the CONTEXT c"),
    ({"mask": "dropout"}, "WHOLE context"),
    ({"mask": "inverted"}, "inverted"),
    ({"t_low": 1}, "t is 0-based"),
    ({"one_t": True}, "one t per sample"),
    ({"target": "x0"}, "the target is the noise"),
    ({"generator": False}, "pass generator= to every random draw"),
    ({"calls": 2}, "call the model once"),
    ({"item": True}, "not loss.item()"),
    ({"detach": True}, "with a gradient"),
])
def test_check_cfg_loss_names_each_slip(slip, hint, capsys):
    message = failure(check_cfg_loss, make_cfg_loss(**slip), capsys)
    assert hint in message, message


def test_check_cfg_loss_on_an_unfilled_exercise(capsys):
    def unfilled(model, x0, c, schedule, drop_prob=0.1, generator=None):
        raise NotImplementedError("Exercise: fill in `cfg_loss` — see the hint above")
    assert "fill in the exercise first" in failure(check_cfg_loss, unfilled, capsys)


# ---- guided_eps_fn --------------------------------------------------------------------------

def make_guided(*, uncond_context="null", halves="right", split="chunk", mask_argument=False):
    """A learner's batched guided ε with one chosen slip."""
    def guided(model, c, w):
        def eps_fn(x_t, t):
            n = x_t.shape[0]
            null = torch.zeros_like(c) if uncond_context == "null" else c
            if mask_argument:
                keep = torch.cat([torch.ones(n), torch.zeros(n)])
                eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, c]), keep)
            else:
                eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, null]))
            eps_cond, eps_uncond = eps.chunk(2) if split == "chunk" else (eps[:n], eps[:n])
            if halves == "swapped":
                eps_cond, eps_uncond = eps_uncond, eps_cond
            return cfg_eps(eps_cond, eps_uncond, w)
        return eps_fn
    return guided


def test_check_guided_eps_fn_accepts_the_package_and_a_masked_batch(capsys):
    assert check_guided_eps_fn(guided_eps_fn).passed
    assert check_guided_eps_fn(make_guided(mask_argument=True)).passed
    assert capsys.readouterr().out.count("✅ guided_eps_fn") == 2


@pytest.mark.parametrize("wrong, hint", [
    (two_pass_guided_eps_fn, "called the model twice"),
    (make_guided(uncond_context="real"), "the unconditional half received the real context"),
    (make_guided(halves="swapped"), "w is applied to the wrong half"),
    (make_guided(split="first half twice"), "the conditional prediction ε_θ(x_t, c) alone, so w has no effect"),
])
def test_check_guided_eps_fn_names_each_slip(wrong, hint, capsys):
    message = failure(check_guided_eps_fn, wrong, capsys)
    assert hint in message, message

"""Slip catalogue, lessons 04 and 05: each slip a student writes gets the hint that names it; right answers pass."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlcourse.checks import check_cfg_eps, check_cfg_loss, check_context_mask, check_contrastive_loss, check_guided_eps_fn
from dlcourse.guidance import cfg_eps, cfg_loss, context_mask, guided_eps_fn

from slip_support import assert_named, assert_passes


# ---- 04 · context_mask ---------------------------------------------------------------------------

def mask(b, p, generator=None, device=None, slip=None):
    g = {"global rng": None, "own generator": torch.Generator().manual_seed(0)}.get(slip, generator)
    u = torch.rand(1 if slip == "once per batch" else b, generator=g, device=device).expand(b)
    p_used = 0.1 if slip == "default p" else p
    if slip == "gaussian":
        u = torch.randn(b, generator=g)
    if slip == "bernoulli of p":
        return torch.bernoulli(torch.full((b,), p), generator=g)
    keep = u < p_used if slip == "inverted" else u >= p_used
    return {"per entry": lambda: (torch.rand(b, 4, generator=g) >= p).float(), "bool": lambda: keep,
            "long": lambda: keep.long(), "list": lambda: keep.float().tolist(),
            "rescaled": lambda: keep.float() / (1 - p) if p < 1 else keep.float()}.get(slip, lambda: keep.float())()


@pytest.mark.parametrize("slip, hint", [
    ("once per batch", "PER SAMPLE"),
    ("global rng", "draw with the generator you are given"),
    ("own generator", "not a fresh torch.Generator of your own"),
    ("inverted", "the mask is inverted"),
    ("bernoulli of p", "the mask is inverted"),
    ("default p", "the drop rate is always 0.1"),
    ("gaussian", "torch.randn draws Gaussian numbers"),
    ("per entry", "ONE value per sample"),
    ("bool", "convert the boolean mask to float"),
    ("long", "one float per sample"),
    ("list", "return the mask as a tensor"),
    ("rescaled", "rescaled like nn.Dropout's"),
])
def test_context_mask_slip(slip, hint, capsys):
    assert_named(check_context_mask, lambda *a, **k: mask(*a, **k, slip=slip), hint, capsys)


@pytest.mark.parametrize("fn", [mask, context_mask,
                                lambda b, p, generator=None, device=None:
                                    torch.bernoulli(torch.full((b,), 1 - p), generator=generator)])
def test_context_mask_right_answers(fn, capsys):
    assert_passes(check_context_mask, fn, capsys)


# ---- 04 · cfg_loss -------------------------------------------------------------------------------

def loss(model, x0, c, schedule, drop_prob=0.1, generator=None, slip=None):
    g = None if slip == "global rng" else generator
    n, p = x0.shape[0], 0.1 if slip == "default p" else drop_prob
    u = torch.rand(1 if slip == "once per batch" else n, generator=g).expand(n)
    m = (u < p if slip == "inverted" else u >= p).float()
    low, high = (1, schedule.T) if slip == "t from 1" else (0, schedule.T - 1 if slip == "t to T-2" else schedule.T)
    t = torch.randint(low, high, (1 if slip == "one t" else n,), generator=g).expand(n)
    noise = torch.rand(x0.shape, generator=g) if slip == "uniform" else torch.randn(x0.shape, generator=g)
    if slip in ("sqrt beta", "noise unscaled"):
        ab, beta = schedule.alpha_bars[t].view(-1, 1, 1, 1), schedule.betas[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (beta.sqrt() if slip == "sqrt beta" else 1) * noise
    else:
        x_t = schedule.q_sample(x0 * m[:, None, None, None] if slip == "mask on image" else x0, t, noise)
    context = {"dropout": lambda: F.dropout(c, p), "mask on image": lambda: c, "flat mask": lambda: c * m,
               "mask on noise": lambda: c}.get(slip, lambda: c * m[:, None])()
    eps = model(x_t, t, context)
    if slip == "two calls":
        model(x_t, t)
    target = x0 if slip == "x0 target" else noise * (m[:, None, None, None] if slip == "mask on noise" else 1)
    value = F.l1_loss(eps, target) if slip == "l1" else F.mse_loss(eps, target)
    return {"item": lambda: value.item(), "detach": lambda: value.detach()}.get(slip, lambda: value)()


@pytest.mark.parametrize("slip, hint", [
    ("once per batch", "PER SAMPLE"),
    ("mask on image", "apply the mask to the CONTEXT c"),
    ("mask on noise", "apply the mask to the CONTEXT c"),
    ("dropout", "WHOLE context"),
    ("inverted", "the mask is inverted"),
    ("default p", "the drop rate is always 0.1"),
    ("flat mask", "multiply row by row, c * mask[:, None]"),
    ("t from 1", "t is 0-based"),
    ("t to T-2", "t is 0-based"),
    ("one t", "one t per sample"),
    ("uniform", "the noise is Gaussian"),
    ("sqrt beta", "the noise is scaled by √β_t"),
    ("noise unscaled", "the noise is added unscaled"),
    ("x0 target", "the target is the noise ε, not x0"),
    ("l1", "that is the mean absolute error"),
    ("global rng", "pass generator= to every random draw"),
    ("two calls", "call the model once"),
    ("item", "not loss.item()"),
    ("detach", "not loss.item() or a detached copy"),
])
def test_cfg_loss_slip(slip, hint, capsys):
    assert_named(check_cfg_loss, lambda *a: loss(*a, slip=slip), hint, capsys)


def loss_with_mask_argument(model, x0, c, schedule, drop_prob=0.1, generator=None):
    """Right: the mask handed to the model as c_mask, t and noise drawn in another order."""
    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, schedule.T, (n,), generator=generator)
    keep = context_mask(n, drop_prob, generator)
    return ((model(schedule.q_sample(x0, t, noise), t, c, keep) - noise) ** 2).mean()


@pytest.mark.parametrize("fn", [loss, loss_with_mask_argument, cfg_loss])
def test_cfg_loss_right_answers(fn, capsys):
    assert_passes(check_cfg_loss, fn, capsys)


# ---- 04 · cfg_eps and 05 · negative_prompt_eps ---------------------------------------------------

CFG_SLIPS = {
    "diffusers": (lambda ec, eu, w: eu + w * (ec - eu), "diffusers' form"),
    "swapped": (lambda ec, eu, w: (1 + w) * eu - w * ec, "conditional and unconditional are swapped"),
    "plus": (lambda ec, eu, w: (1 + w) * ec + w * eu, "the sign of the second term"),
    "w on cond": (lambda ec, eu, w: w * ec - w * eu, "eps_cond is weighted by w"),
    "1+w on both": (lambda ec, eu, w: (1 + w) * (ec - eu), "eps_uncond is weighted by (1 + w)"),
    "cond only": (lambda ec, eu, w: ec, "you returned eps_cond alone"),
    "uncond only": (lambda ec, eu, w: eu, "you returned eps_uncond alone"),
    "brackets": (lambda ec, eu, w: 1 + w * ec - w * eu, "the brackets"),
    # lesson 05's negative prompt: ε_neg + (1 + w)(ε_c − ε_neg), checked by the same check_cfg_eps
    "negative, diffusers": (lambda ec, en, w: en + w * (ec - en), "diffusers' form"),
    "negative, swapped": (lambda ec, en, w: ec + (1 + w) * (en - ec), "conditional and unconditional are swapped"),
}


@pytest.mark.parametrize("slip", CFG_SLIPS)
def test_cfg_eps_slip(slip, capsys):
    fn, hint = CFG_SLIPS[slip]
    assert_named(check_cfg_eps, fn, hint, capsys)


@pytest.mark.parametrize("fn", [cfg_eps, lambda ec, eu, w: ec + w * (ec - eu),
                                lambda ec, en, w: en + (1 + w) * (ec - en), lambda ec, eu, w: torch.lerp(eu, ec, 1 + w)])
def test_cfg_eps_right_answers(fn, capsys):
    assert_passes(check_cfg_eps, fn, capsys)


# ---- 04 · guided_eps_fn --------------------------------------------------------------------------

def guided(slip=None):
    def make(model, c, w):
        def eps_fn(x_t, t):
            n = x_t.shape[0]
            if slip == "two passes":
                return cfg_eps(model(x_t, t, c), model(x_t, t, torch.zeros_like(c)), w)
            null = {"real context": c, "both null": torch.zeros_like(c)}.get(slip, torch.zeros_like(c))
            first = torch.zeros_like(c) if slip == "both null" else c
            xs = {"x once": x_t, "stack": torch.stack([x_t, x_t])}.get(slip, torch.cat([x_t, x_t]))
            ts = t if slip == "t once" else torch.cat([t, t])
            cs = torch.cat([null, first]) if slip == "null first" else torch.cat([first, null])
            eps = model(xs, ts, cs)
            if slip == "all outputs":
                return eps
            cond, uncond = (eps[:n], eps[:n]) if slip == "first half twice" else eps.chunk(2)
            if slip == "cond half only":
                return cond
            if slip == "diffusers":
                return uncond + w * (cond - uncond)
            return cfg_eps(uncond, cond, w) if slip == "halves swapped" else cfg_eps(cond, uncond, w)
        return eps_fn
    return make


@pytest.mark.parametrize("slip, hint", [
    ("two passes", "call it ONCE on a batch of 2N"),
    ("real context", "the second half must get the null context"),
    ("both null", "the first half keeps c"),
    ("null first", "w is applied to the wrong half"),
    ("halves swapped", "w is applied to the wrong half"),
    ("first half twice", "so w has no effect"),
    ("cond half only", "so w has no effect"),
    ("all outputs", "split the 2N outputs"),
    ("diffusers", "guidance_scale = w"),
    ("x once", "double the images too"),
    ("stack", "torch.stack adds a dimension"),
    ("t once", "the steps are torch.cat([t, t])"),
])
def test_guided_eps_fn_slip(slip, hint, capsys):
    assert_named(check_guided_eps_fn, guided(slip), hint, capsys)


def guided_with_mask(model, c, w):
    """Right: the real context twice and a c_mask of N ones then N zeros."""
    def eps_fn(x_t, t):
        n = len(x_t)
        keep = torch.cat([torch.ones(n), torch.zeros(n)])
        cond, uncond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, c]), keep).split(n)
        return cond + w * (cond - uncond)
    return eps_fn


@pytest.mark.parametrize("fn", [guided(), guided_with_mask, guided_eps_fn])
def test_guided_eps_fn_right_answers(fn, capsys):
    assert_passes(check_guided_eps_fn, fn, capsys)


# ---- 05 · contrastive_loss -----------------------------------------------------------------------

def clip_loss(image, text, scale, slip=None):
    dim = 0 if slip == "normalise dim 0" else -1
    f, g = (image, text) if slip == "unnormalised" else (F.normalize(image, dim=dim), F.normalize(text, dim=dim))
    s = torch.exp(torch.as_tensor(scale)) if slip == "exp scale" else scale
    logits = {"divided": lambda: f @ g.T / s, "no scale": lambda: f @ g.T}.get(slip, lambda: s * f @ g.T)()
    labels = torch.zeros(len(f), dtype=torch.long) if slip == "zero labels" else torch.arange(len(f))
    a, b = F.cross_entropy(logits, labels), F.cross_entropy(logits.T, labels)
    return {"image only": a, "text only": b, "summed": a + b,
            "per pair": (F.cross_entropy(logits, labels, reduction="none")
                         + F.cross_entropy(logits.T, labels, reduction="none")) / 2}.get(slip, (a + b) / 2)


@pytest.mark.parametrize("slip, hint", [
    ("image only", "only the image → text direction"),
    ("text only", "only the text → image direction"),
    ("unnormalised", "not L2-normalised"),
    ("normalise dim 0", "normalised along the batch (dim=0)"),
    ("divided", "the temperature is applied the wrong way"),
    ("no scale", "the temperature is missing"),
    ("exp scale", "do not exponentiate it"),
    ("zero labels", "the labels must be torch.arange(N)"),
    ("summed", "the MEAN of the two cross-entropies"),
    ("per pair", "return one number for the batch"),
])
def test_contrastive_loss_slip(slip, hint, capsys):
    assert_named(check_contrastive_loss, lambda *a: clip_loss(*a, slip=slip), hint, capsys)


def clip_loss_by_cosine(image, text, scale):
    """Right: the cosine similarities from F.cosine_similarity, the two directions as one cross-entropy."""
    sims = scale * F.cosine_similarity(image[:, None, :], text[None, :, :], dim=-1)
    labels = torch.arange(len(image))
    return F.cross_entropy(torch.cat([sims, sims.T]), torch.cat([labels, labels]))


@pytest.mark.parametrize("fn", [clip_loss, clip_loss_by_cosine])
def test_contrastive_loss_right_answers(fn, capsys):
    assert_passes(check_contrastive_loss, fn, capsys)

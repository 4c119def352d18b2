"""Slip catalogue, lessons 01 and 02: each slip a student writes gets the hint that names it; right answers pass."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlcourse.checks import (check_ddpm_loss, check_ddpm_step, check_down_block, check_q_sample, check_time_unet,
                             check_train_step, check_unet, check_up_block)
from dlcourse.models import TimeUNet, UNetDenoiser

from slip_support import assert_named, assert_passes


# ---- 01 · DownBlock ------------------------------------------------------------------------------

class Down(nn.Module):
    """A student's DownBlock; ``slip`` picks one mistake."""

    def __init__(self, in_ch, out_ch, slip=None):
        super().__init__()
        norm = (lambda c: nn.GroupNorm(4, c)) if slip == "group norm" else nn.BatchNorm2d
        k = 5 if slip == "kernel 5" else 3
        pad = 0 if slip == "no padding" else k // 2
        bias = slip != "no bias"
        self.conv1 = nn.Conv2d(in_ch, out_ch, k, padding=pad, bias=bias)
        self.conv2 = nn.Conv2d(in_ch if slip == "second conv from in_ch" else out_ch, out_ch, k, padding=pad)
        self.norm1 = nn.Identity() if slip in ("no norms", "one norm") else norm(out_ch)
        self.norm2 = nn.Identity() if slip == "no norms" else norm(out_ch)
        self.pool = nn.AvgPool2d(2) if slip == "avg pool module" else nn.MaxPool2d(2)
        self.slip = slip

    def forward(self, x):
        relu = F.relu
        if self.slip == "pool first":
            x = self.pool(x)
        if self.slip == "relu first":
            h = self.norm2(relu(self.conv2(self.norm1(relu(self.conv1(x))))))
        else:
            h = self.norm1(self.conv1(x))
            h = h if self.slip == "no first relu" else relu(h)
            h = self.norm2(self.conv2(h))
            h = h if self.slip == "no last relu" else relu(h)
        if self.slip in ("pool first", "no pool"):
            return h
        if self.slip == "avg pool":
            return F.avg_pool2d(h, 2)
        return self.pool(h)


@pytest.mark.parametrize("slip, hint", [
    ("relu first", "the activation comes after the norm"),
    ("no last relu", "the last ReLU is missing"),
    ("no first relu", "the ReLU after the first conv is missing"),
    ("pool first", "pool AFTER the two convs"),
    ("avg pool", "that is average pooling"),
    ("avg pool module", "that is average pooling"),
    ("no pool", "Add nn.MaxPool2d(2)"),
    ("no norms", "both nn.BatchNorm2d(out_ch) layers are missing"),
    ("one norm", "one nn.BatchNorm2d(out_ch) is missing"),
    ("group norm", "uses nn.GroupNorm where the reference uses nn.BatchNorm2d"),
    ("second conv from in_ch", "the first conv takes in_ch channels, the second out_ch"),
    ("kernel 5", "the block's convs are 3×3"),
    ("no padding", "need padding=1"),
    ("no bias", "bias=False"),
])
def test_down_block_slip(slip, hint, capsys):
    assert_named(check_down_block, lambda a, b: Down(a, b, slip), hint, capsys)


class DownSequential(nn.Module):
    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
                                    nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
                                    nn.MaxPool2d(2, stride=2))

    def forward(self, x):
        return self.layers(x)


@pytest.mark.parametrize("cls", [Down, DownSequential])
def test_down_block_right_answers(cls, capsys):
    assert_passes(check_down_block, cls, capsys)


# ---- 01 · UpBlock --------------------------------------------------------------------------------

class Up(nn.Module):
    def __init__(self, in_ch, out_ch, slip=None):
        super().__init__()
        if slip == "upsample layer":
            self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        else:
            k = 3 if slip == "kernel 3" else 2
            self.up = nn.ConvTranspose2d(in_ch, out_ch, k, stride=2)
        norm = (lambda c: nn.GroupNorm(4, c)) if slip == "group norm" else nn.BatchNorm2d
        first_in = in_ch if slip == "body from in_ch" else out_ch
        self.c1, self.n1 = nn.Conv2d(first_in, out_ch, 3, padding=1), norm(out_ch)
        self.c2, self.n2 = nn.Conv2d(out_ch, out_ch, 3, padding=1), norm(out_ch)
        self.slip = slip

    def forward(self, x, skip):
        h = {"skip first": lambda: torch.cat([skip, x], 1), "x twice": lambda: torch.cat([x, x], 1),
             "no skip": lambda: x, "dim 0": lambda: torch.cat([x, skip], 0),
             "zero skip": lambda: torch.cat([x, torch.zeros_like(skip)], 1)}.get(self.slip, lambda: torch.cat([x, skip], 1))()
        h = self.up(h)
        if self.slip == "relu first":
            return self.n2(F.relu(self.c2(self.n1(F.relu(self.c1(h))))))
        h = F.relu(self.n1(self.c1(h)))
        h = self.n2(self.c2(h))
        return h if self.slip == "no last relu" else F.relu(h)


@pytest.mark.parametrize("slip, hint", [
    ("skip first", "x first"),
    ("x twice", "the skip is not used"),
    ("zero skip", "the skip connection is replaced by zeros"),
    ("no skip", "did you concatenate the skip connection along dim=1"),
    ("dim 0", "did you concatenate the skip connection along dim=1"),
    ("relu first", "the activation comes after the norm"),
    ("no last relu", "the last ReLU is missing"),
    ("group norm", "uses nn.GroupNorm where the reference uses nn.BatchNorm2d"),
    ("upsample layer", "upsample with nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)"),
    ("kernel 3", "the transposed conv has kernel_size=3"),
    ("body from in_ch", "the convs after the transposed conv get its out_ch"),
])
def test_up_block_slip(slip, hint, capsys):
    assert_named(check_up_block, lambda a, b: Up(a, b, slip), hint, capsys)


def test_up_block_right_answer(capsys):
    assert_passes(check_up_block, Up, capsys)


# ---- 01 · U-Net wiring ---------------------------------------------------------------------------

class Wired(UNetDenoiser):
    slip = None

    def forward(self, x):
        first = self.stem(x)
        h, skips = first, []
        for down in self.downs:
            h = down(h)
            skips.append(h)
        if self.slip != "no bottleneck":
            h = self.bottleneck(h)
        for up in self.ups:
            skip = {"fifo": lambda: skips.pop(0), "h as skip": lambda: h,
                    "zero skips": lambda: torch.zeros_like(h)}.get(self.slip, skips.pop)()
            h = up(h, skip)
        return self.head(torch.cat([h, first], dim=1))


class ShallowFirst(UNetDenoiser):
    """Up blocks built shallow first (not reversed)."""

    def __init__(self, image_channels=3, channels=(64, 128, 256), image_size=32):
        super().__init__(image_channels, channels, image_size)
        c = self.channels
        from dlcourse.models import UpBlock
        self.ups = nn.ModuleList(UpBlock(2 * c[i], c[max(i - 1, 0)]) for i in range(len(c)))


def wired(slip):
    return type(f"Wired_{slip}", (Wired,), {"slip": slip})


@pytest.mark.parametrize("cls, hint", [
    (wired("fifo"), "last in, first out"),
    (wired("h as skip"), "the up blocks got h as their own skip"),
    (wired("zero skips"), "the skip connections carry nothing"),
    (wired("no bottleneck"), "the bottleneck is left out"),
    (ShallowFirst, "the up blocks run deepest first"),
])
def test_unet_slip(cls, hint, capsys):
    assert_named(check_unet, cls, hint, capsys)


def test_unet_right_answer(capsys):
    assert_passes(check_unet, wired(None), capsys)


# ---- 01 · train_step -----------------------------------------------------------------------------

def train_step(model, optimizer, x0, beta, slip=None):
    noise = torch.rand_like(x0) if slip == "uniform noise" else torch.randn_like(x0)
    x_noisy = {"swapped": beta * x0 + (1 - beta) * noise, "x0 unscaled": x0 + beta * noise,
               "no noise": x0}.get(slip, (1 - beta) * x0 + beta * noise)
    prediction = model(x_noisy)
    target = x_noisy if slip == "noisy target" else x0
    loss = {"l1": lambda: F.l1_loss(prediction, target),
            "sum": lambda: ((prediction - target) ** 2).sum()}.get(slip, lambda: F.mse_loss(prediction, target))()
    if slip not in ("no zero_grad", "step first, no zero_grad"):
        optimizer.zero_grad()
    if slip in ("step first", "step first, no zero_grad"):
        optimizer.step()
        loss.backward()
    else:
        loss.backward()
        if slip == "zero_grad between":
            optimizer.zero_grad()
        if slip != "no step":
            optimizer.step()
    if slip == "tensor":
        return loss
    if slip == "no return":
        return None
    return loss.item()


@pytest.mark.parametrize("slip, hint", [
    ("noisy target", "the target is the noisy image"),
    ("no zero_grad", "the gradients pile up"),
    ("no step", "the weights never change"),
    ("zero_grad between", "the weights never change"),
    ("step first", "the weights never change"),
    ("step first, no zero_grad", "optimizer.step() ran before loss.backward()"),
    ("tensor", "return loss.item()"),
    ("no return", "end with return loss.item()"),
    ("swapped", "the two coefficients of add_noise are swapped"),
    ("uniform noise", "the noise is uniform"),
    ("x0 unscaled", "x0 is not scaled by (1 − β)"),
    ("no noise", "the model sees the clean x0"),
    ("l1", "mean absolute error"),
    ("sum", "the squared errors are summed"),
])
def test_train_step_slip(slip, hint, capsys):
    assert_named(check_train_step, lambda *a: train_step(*a, slip=slip), hint, capsys)


def test_train_step_right_answer(capsys):
    assert_passes(check_train_step, train_step, capsys)


# ---- 02 · q_sample -------------------------------------------------------------------------------

def q_sample(schedule, x0, t, noise, slip=None):
    ab = schedule.alpha_bars[t].view(-1, 1, 1, 1)
    if slip == "alpha_bars_prev":
        ab = schedule.alpha_bars_prev[t].view(-1, 1, 1, 1)
    if slip == "t - 1":
        ab = schedule.alpha_bars[t - 1].view(-1, 1, 1, 1)
    if slip == "t + 1":
        ab = schedule.alpha_bars[(t + 1).clamp(max=schedule.T - 1)].view(-1, 1, 1, 1)
    if slip == "first t":
        ab = schedule.alpha_bars[t[0]]
    if slip == "one-step alpha":
        ab = schedule.alphas[t].view(-1, 1, 1, 1)
    beta = schedule.betas[t].view(-1, 1, 1, 1)
    formulas = {
        "sqrt beta": lambda: ab.sqrt() * x0 + beta.sqrt() * noise,
        "abar unsquared": lambda: ab * x0 + (1 - ab).sqrt() * noise,
        "noise variance": lambda: ab.sqrt() * x0 + (1 - ab) * noise,
        "no roots": lambda: ab * x0 + (1 - ab) * noise,
        "swapped": lambda: (1 - ab).sqrt() * x0 + ab.sqrt() * noise,
        "noise unscaled": lambda: ab.sqrt() * x0 + noise,
        "x0 unscaled": lambda: x0 + (1 - ab).sqrt() * noise,
        "minus": lambda: ab.sqrt() * x0 - (1 - ab).sqrt() * noise,
        "sqrt abar on noise": lambda: ab.sqrt() * x0 + ab.sqrt() * noise,
        "root inside": lambda: ab.sqrt() * x0 + (1 - ab.sqrt()) * noise,
        "not reshaped": lambda: schedule.alpha_bars[t].sqrt() * x0 + (1 - schedule.alpha_bars[t]).sqrt() * noise,
        "channel axis": lambda: ab.view(1, -1, 1, 1).sqrt() * x0 + (1 - ab.view(1, -1, 1, 1)).sqrt() * noise,
    }
    return formulas.get(slip, lambda: ab.sqrt() * x0 + (1 - ab).sqrt() * noise)()


@pytest.mark.parametrize("slip, hint", [
    ("sqrt beta", "the noise term has √β_t where it needs √(1 − ᾱ_t)"),
    ("abar unsquared", "the x0 term has ᾱ_t where it needs √ᾱ_t"),
    ("noise variance", "the noise term has (1 − ᾱ_t) where it needs √(1 − ᾱ_t)"),
    ("no roots", "every square root is missing"),
    ("swapped", "the coefficients of the x0 term and the noise term are swapped"),
    ("noise unscaled", "the noise term is missing its factor √(1 − ᾱ_t)"),
    ("x0 unscaled", "the x0 term is missing its factor √ᾱ_t"),
    ("minus", "the noise term has the wrong sign"),
    ("sqrt abar on noise", "the noise term has √ᾱ_t where it needs √(1 − ᾱ_t)"),
    ("root inside", "the square root goes over the whole 1 − ᾱ_t"),
    ("alpha_bars_prev", "you used ᾱ_{t−1} throughout where the formula has ᾱ_t"),
    ("t - 1", "off by one: the coefficients are looked up at t − 1"),
    ("t + 1", "looked up at t + 1"),
    ("first t", "every image used the first image's coefficients"),
    ("one-step alpha", "you used α_t throughout where the formula has ᾱ_t"),
    ("not reshaped", "reshape it to (N, 1, 1, 1)"),
    ("channel axis", "reshape it to (N, 1, 1, 1)"),
])
def test_q_sample_slip(slip, hint, capsys):
    assert_named(check_q_sample, lambda *a: q_sample(*a, slip=slip), hint, capsys)


def q_sample_by_cumprod(schedule, x0, t, noise):
    """Right, written from the betas: ᾱ as the running product of 1 − β, gathered with torch.gather."""
    abar = torch.cumprod(1 - schedule.betas.double(), 0).to(x0.dtype)
    ab = abar.gather(0, t)[:, None, None, None]
    return torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * noise


@pytest.mark.parametrize("fn", [q_sample, q_sample_by_cumprod,
                                lambda s, x0, t, noise: s.q_sample(x0, t, noise)])
def test_q_sample_right_answers(fn, capsys):
    assert_passes(check_q_sample, fn, capsys)


# ---- 02 · ddpm_step ------------------------------------------------------------------------------

def ddpm_step(schedule, x_t, t, eps, z, variance="beta", slip=None):
    def col(v):
        return v[t].view(-1, 1, 1, 1)

    beta, alpha, ab = col(schedule.betas), col(schedule.alphas), col(schedule.alpha_bars)
    if slip == "t - 1":
        beta, alpha, ab = (v[t - 1].view(-1, 1, 1, 1)
                           for v in (schedule.betas, schedule.alphas, schedule.alpha_bars))
    coefficient = {"sqrt beta": beta.sqrt(), "sqrt(1 - abar)": (1 - ab).sqrt(),
                   "over 1 - abar": beta / (1 - ab)}.get(slip, beta / (1 - ab).sqrt())
    sign = 1 if slip == "plus eps" else -1
    inner = x_t + sign * coefficient * eps
    mean = {"over sqrt abar": lambda: inner / ab.sqrt(), "not divided": lambda: inner,
            "times sqrt alpha": lambda: inner * alpha.sqrt()}.get(slip, lambda: inner / alpha.sqrt())()
    var = beta if variance == "beta" else col(schedule.beta_tildes)
    if slip == "always beta":
        var = beta
    if slip == "always beta tilde":
        var = col(schedule.beta_tildes)
    sigma = var if slip == "variance as sigma" else var.sqrt()
    keep = {"noise at 0": torch.ones_like(t), "no noise": torch.zeros_like(t),
            "one-based": (t > 1)}.get(slip, t > 0).to(x_t.dtype).view(-1, 1, 1, 1)
    if slip == "mask everything":
        return keep * (mean + sigma * z)
    if slip == "minus noise":
        return mean - keep * sigma * z
    return mean + keep * sigma * z


@pytest.mark.parametrize("slip, hint", [
    ("sqrt beta", "the ε_θ term has the coefficient √β_t where it needs β_t/√(1 − ᾱ_t)"),
    ("sqrt(1 - abar)", "the ε_θ term has the coefficient √(1 − ᾱ_t) where it needs β_t/√(1 − ᾱ_t)"),
    ("over 1 - abar", "the ε_θ term has 1/(1 − ᾱ_t) where it needs 1/√(1 − ᾱ_t)"),
    ("plus eps", "the ε_θ term has the wrong sign"),
    ("over sqrt abar", "the mean has 1/√ᾱ_t where it needs 1/√α_t"),
    ("not divided", "the mean is missing its factor 1/√α_t"),
    ("times sqrt alpha", "the mean has √α_t where it needs 1/√α_t"),
    ("always beta", "the noise term has √β_t where it needs √β̃_t"),
    ("always beta tilde", "the noise term has √β̃_t where it needs √β_t"),
    ("variance as sigma", "the noise term has β_t where it needs √β_t"),
    ("noise at 0", "the last step, t = 0, adds no noise"),
    ("no noise", "the noise term is missing"),
    ("one-based", "mask with (t > 0), not (t > 1)"),
    ("mask everything", "only the noise term is masked at t = 0"),
    ("minus noise", "the noise term has the wrong sign"),
    ("t - 1", "off by one: the coefficients are looked up at t − 1"),
])
def test_ddpm_step_slip(slip, hint, capsys):
    assert_named(check_ddpm_step, lambda *a: ddpm_step(*a, slip=slip), hint, capsys)


def ddpm_step_via_x0(schedule, x_t, t, eps, z, variance="beta"):
    """Right, through x̂0 and the posterior mean μ̃(x̂0, x_t) — the same number by another road."""
    x0 = schedule.predict_x0(x_t, t, eps)
    mean, _ = schedule.posterior_mean_variance(x0, x_t, t)
    var = (schedule.betas if variance == "beta" else schedule.beta_tildes)[t].view(-1, 1, 1, 1)
    return mean + torch.where(t > 0, 1.0, 0.0).to(x_t.dtype).view(-1, 1, 1, 1) * var.sqrt() * z


@pytest.mark.parametrize("fn", [ddpm_step, ddpm_step_via_x0])
def test_ddpm_step_right_answers(fn, capsys):
    assert_passes(check_ddpm_step, fn, capsys)


# ---- 02 · ddpm_loss ------------------------------------------------------------------------------

def ddpm_loss(model, batch, schedule, slip=None):
    x0, _ = batch
    n, T = x0.shape[0], schedule.T
    t = {"1..T": lambda: torch.randint(1, T + 1, (n,)), "1..T-1": lambda: torch.randint(1, T, (n,)),
         "0..T-2": lambda: torch.randint(0, T - 1, (n,)), "one t": lambda: torch.randint(0, T, (1,)).expand(n),
         "shape (1,)": lambda: torch.randint(0, T, (1,)), "float t": lambda: torch.randint(0, T, (n,)).float(),
         }.get(slip, lambda: torch.randint(0, T, (n,)))()
    noise = torch.rand_like(x0) if slip == "uniform" else torch.randn_like(x0)
    mixed = torch.randn_like(x0) if slip == "fresh noise" else noise
    x_t = schedule.q_sample(x0, t.long() if slip != "1..T" else t, mixed) if slip != "model sees x0" else x0
    prediction = model(x_t, t)
    target = x0 if slip == "x0 target" else noise
    if slip == "l1":
        return (prediction - target).abs().mean()
    if slip == "sum":
        return ((prediction - target) ** 2).sum()
    if slip == "sum over pixels":
        return ((prediction - target) ** 2).flatten(1).sum(1).mean()
    if slip == "sum over batch":
        return ((prediction - target) ** 2).flatten(1).mean(1).sum()
    loss = F.mse_loss(prediction, target)
    return loss.item() if slip == "item" else loss


@pytest.mark.parametrize("slip, hint", [
    ("1..T", "t must stay in 0 … T−1"),
    ("1..T-1", "t = 0 is never drawn"),
    ("0..T-2", "t = T − 1 is never drawn"),
    ("one t", "draw one t per image, torch.randint(0, schedule.T, (x0.shape[0],)), so each batch"),
    ("shape (1,)", "draw one t per image"),
    ("float t", "pass t as the torch.long tensor"),
    ("x0 target", "the target is the noise ε you mixed in, not the clean image x0"),
    ("uniform", "the noise is uniform (torch.rand_like)"),
    ("fresh noise", "with the same t and noise you pass on"),
    ("model sees x0", "pass the noisy x_t"),
    ("l1", "that is the mean absolute error"),
    ("sum", "that is the sum of the squared errors"),
    ("sum over pixels", "summed over each image's pixels"),
    ("sum over batch", "summed over the batch"),
    ("item", "a tensor (not .item())"),
])
def test_ddpm_loss_slip(slip, hint, capsys):
    assert_named(check_ddpm_loss, lambda *a: ddpm_loss(*a, slip=slip), hint, capsys)


def ddpm_loss_by_hand(model, batch, schedule):
    """Right, written out: the q_sample formula inline and the mean of the squares."""
    x0 = batch[0]
    t = torch.randint(0, schedule.T, (x0.shape[0],), device=x0.device)
    eps = torch.randn_like(x0)
    ab = schedule.alpha_bars[t][:, None, None, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return ((eps - model(x_t, t)) ** 2).mean()


@pytest.mark.parametrize("fn", [ddpm_loss, ddpm_loss_by_hand])
def test_ddpm_loss_right_answers(fn, capsys):
    assert_passes(check_ddpm_loss, fn, capsys)


# ---- 02 · TimeUNet -------------------------------------------------------------------------------

class Timed(TimeUNet):
    slip = None

    def forward(self, x, t):
        first = self.stem(x)
        h, skips = first, []
        for down in self.downs:
            h = down(h)
            skips.append(h)
        h = self.bottleneck(h)
        code = {"raw t": t.float()[:, None], "T - 1": (t.float() / (self.T - 1))[:, None],
                "long t": t[:, None]}.get(self.slip, (t.float() / self.T)[:, None])
        mlps = list(self.time_mlps)[::-1] if self.slip == "levels swapped" else self.time_mlps
        for level, (mlp, up) in enumerate(zip(mlps, self.ups)):
            e = mlp(code)
            e = e if self.slip == "not broadcast" else e[:, :, None, None]
            skip = skips.pop()
            if self.slip == "to the skip":
                skip = skip + e
            elif self.slip == "deepest only":
                h = h + e if level == 0 else h
            elif self.slip not in ("after", "no time"):
                h = h + e
            h = up(h, skip)
            if self.slip == "after":
                h = h + e
        return self.head(torch.cat([h, first], dim=1))


def timed(slip):
    return type(f"Timed_{slip}", (Timed,), {"slip": slip})


@pytest.mark.parametrize("slip, hint", [
    ("raw t", "t is not normalised"),
    ("T - 1", "t is divided by T − 1"),
    ("long t", "the time MLPs read t/T as a float column"),
    ("not broadcast", "add it as e_t[:, :, None, None]"),
    ("to the skip", "e_t is added to the skip connection"),
    ("deepest only", "only the deepest level gets the time"),
    ("after", "e_t is added after the up block"),
    ("levels swapped", "the levels are swapped"),
    ("no time", "t never reaches the network"),
])
def test_time_unet_slip(slip, hint, capsys):
    assert_named(check_time_unet, timed(slip), hint, capsys)


def test_time_unet_right_answers(capsys):
    assert_passes(check_time_unet, timed(None), capsys)
    assert_passes(check_time_unet, TimeUNet, capsys)

"""Self-checks of lessons 01 and 02: a correct answer passes, each typical slip gets its own hint."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlcourse.checks import (
    check_ddpm_loss,
    check_ddpm_step,
    check_group_norm,
    check_q_sample,
    check_time_unet,
    check_train_step,
    check_unet,
    check_up_block,
)
from dlcourse.models import TimeUNet, UNetDenoiser, UpBlock


def _col(values, t):
    return values[t].view(-1, 1, 1, 1)


# ---- q_sample(schedule, x0, t, noise) ------------------------------------------------------------

def q_sample(schedule, x0, t, noise, slip=None):
    ab, beta = _col(schedule.alpha_bars, t), _col(schedule.betas, t)
    if slip == "sqrt beta":
        return ab.sqrt() * x0 + beta.sqrt() * noise
    if slip == "abar unsquared":
        return ab * x0 + (1 - ab).sqrt() * noise
    if slip == "unscaled noise":
        return ab.sqrt() * x0 + noise
    if slip == "swapped":
        return (1 - ab).sqrt() * x0 + ab.sqrt() * noise
    if slip == "t - 1":
        return q_sample(schedule, x0, (t - 1).clamp(min=0), noise)
    if slip == "one-step alpha":
        alpha = _col(schedule.alphas, t)
        return alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
    if slip == "not reshaped":
        return schedule.alpha_bars[t] * x0
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


@pytest.mark.parametrize("slip, hint", [
    ("sqrt beta", "the noise term has √β_t where it needs √(1 − ᾱ_t)"),
    ("abar unsquared", "the x0 term has ᾱ_t where it needs √ᾱ_t"),
    ("unscaled noise", "the noise term is missing its factor √(1 − ᾱ_t)"),
    ("swapped", "swapped"),
    ("t - 1", "0-based"),
    ("one-step alpha", "you used α_t throughout where the formula has ᾱ_t"),
    ("not reshaped", "reshape it to (N, 1, 1, 1)"),
])
def test_check_q_sample_names_the_slip(slip, hint):
    with pytest.raises(AssertionError, match="❌ q_sample") as info:
        check_q_sample(lambda *args: q_sample(*args, slip=slip))
    assert hint in str(info.value)


def test_check_q_sample_passes_the_package_method_and_a_correct_function(capsys):
    from dlcourse.schedules import Schedule

    assert check_q_sample(q_sample).passed
    assert check_q_sample(Schedule.q_sample).passed  # the same signature as the package's method
    assert "✅ q_sample" in capsys.readouterr().out


def test_check_q_sample_asks_to_fill_in_a_placeholder():
    def placeholder(schedule, x0, t, noise):
        raise NotImplementedError("Exercise: fill in `alpha_bar` in `q_sample()` — see the hint above")

    with pytest.raises(AssertionError, match="fill in the exercise first"):
        check_q_sample(placeholder)


# ---- ddpm_step(schedule, x_t, t, eps_pred, z, variance) -----------------------------------------

def ddpm_step(schedule, x_t, t, eps_pred, z, variance="beta", slip=None):
    beta, alpha, ab = _col(schedule.betas, t), _col(schedule.alphas, t), _col(schedule.alpha_bars, t)
    coefficient = {"sqrt beta": beta.sqrt(), "sqrt(1 - abar)": (1 - ab).sqrt()}.get(slip, beta / (1 - ab).sqrt())
    mean = (x_t - coefficient * eps_pred) / alpha.sqrt()
    var = beta if variance == "beta" else _col(schedule.beta_tildes, t)
    keep = (t > 0).to(x_t.dtype).view(-1, 1, 1, 1)
    if slip == "noise at 0":
        keep = torch.ones_like(keep)
    if slip == "no noise":
        keep = torch.zeros_like(keep)
    if slip == "variance":
        var = beta
    return mean + keep * var.sqrt() * z


@pytest.mark.parametrize("slip, hint", [
    ("sqrt beta", "the ε_θ term has the coefficient √β_t where it needs β_t/√(1 − ᾱ_t)"),
    ("sqrt(1 - abar)", "the ε_θ term has the coefficient √(1 − ᾱ_t) where it needs β_t/√(1 − ᾱ_t)"),
    ("noise at 0", "the last step, t = 0, adds no noise"),
    ("no noise", "the noise term is missing"),
    ("variance", "the noise term has √β_t where it needs √β̃_t"),
])
def test_check_ddpm_step_names_the_slip(slip, hint):
    with pytest.raises(AssertionError, match="❌ ddpm_step") as info:
        check_ddpm_step(lambda *args: ddpm_step(*args, slip=slip))
    assert hint in str(info.value)


def test_check_ddpm_step_passes_a_correct_function():
    from dlcourse.schedules import Schedule

    assert check_ddpm_step(ddpm_step).passed
    assert check_ddpm_step(lambda schedule, *args: Schedule.ddpm_step(schedule, *args)).passed
    with pytest.raises(ValueError, match="fn: expected your ddpm_step function"):
        check_ddpm_step("ddpm_step")


# ---- ddpm_loss(model, batch, schedule) -----------------------------------------------------------

def ddpm_loss(model, batch, schedule, slip=None):
    x0, _ = batch
    n, T = x0.shape[0], schedule.T
    t = {"1..T": torch.randint(1, T + 1, (n,)), "1..T-1": torch.randint(1, T, (n,)),
         "0..T-2": torch.randint(0, T - 1, (n,)), "one t": torch.randint(0, T, (1,)).expand(n),
         "shape (1,)": torch.randint(0, T, (1,))}.get(slip, torch.randint(0, T, (n,)))
    noise = torch.randn_like(x0)
    x_t = q_sample(schedule, x0, t, noise)
    prediction = model(x_t, t)
    if slip == "x0 target":
        return F.mse_loss(prediction, x0)
    if slip == "sqrt beta":
        x_t = q_sample(schedule, x0, t, noise, slip="sqrt beta")
        return F.mse_loss(model(x_t, t), noise)
    loss = F.mse_loss(prediction, noise)
    return loss.item() if slip == "item" else loss


@pytest.mark.parametrize("slip, hint", [
    ("1..T", "t must stay in 0 … T−1"),
    ("1..T-1", "t = 0 is never drawn"),
    ("0..T-2", "t = T − 1 is never drawn"),
    ("one t", "every image of a batch got the same t"),
    ("shape (1,)", "draw one t per image"),
    ("x0 target", "the target is the noise ε you mixed in, not the clean image x0"),
    ("sqrt beta", "must score 0"),
    ("item", "a tensor (not .item())"),
])
def test_check_ddpm_loss_names_the_slip(slip, hint):
    with pytest.raises(AssertionError, match="❌ ddpm_loss") as info:
        check_ddpm_loss(lambda *args: ddpm_loss(*args, slip=slip))
    assert hint in str(info.value)


def test_check_ddpm_loss_passes_a_correct_loss_and_leaves_the_random_state(capsys):
    torch.manual_seed(11)
    expected = torch.rand(2)
    torch.manual_seed(11)
    assert check_ddpm_loss(ddpm_loss).passed
    assert torch.equal(torch.rand(2), expected)
    assert "✅ ddpm_loss" in capsys.readouterr().out


# ---- lesson 02: time conditioning, MyTimeUNet(TimeUNet).forward -----------------------------------

class TimeNet(TimeUNet):
    """A learner's forward; ``slip`` names the mistake it makes."""

    slip = None

    def forward(self, x, t):
        code = (t.float() / self.T)[:, None]
        if self.slip == "t not normalised":
            code = t.float()[:, None]
        if self.slip == "long t":
            code = t[:, None]
        first, h, skips = self._encode(x)
        for level, (mlp, up) in enumerate(zip(self.time_mlps, self.ups)):
            e = mlp(code)
            skip = skips.pop()
            if self.slip == "not broadcast":
                h = h + e
            elif self.slip == "to the skip":
                skip = skip + e[:, :, None, None]
            elif self.slip == "deepest only":
                h = h + e[:, :, None, None] if level == 0 else h
            elif self.slip != "after the up block":
                h = h + e[:, :, None, None]
            h = up(h, skip)
            if self.slip == "after the up block":
                h = h + e[:, :, None, None]
        return self.head(torch.cat([h, first], dim=1))


def with_slip(slip):
    return type(f"TimeNet_{slip}", (TimeNet,), {"slip": slip})


def test_check_time_unet_passes_a_correct_forward_and_the_package():
    assert check_time_unet(TimeNet).passed
    assert check_time_unet(TimeUNet).passed


@pytest.mark.parametrize("slip, hint", [
    ("not broadcast", "e_t[:, :, None, None]"),
    ("t not normalised", "t is not normalised"),
    ("long t", "float column of shape (N, 1)"),
    ("to the skip", "added to the skip connection"),
    ("after the up block", "added after the up block"),
    ("deepest only", "only the deepest level gets the time"),
])
def test_check_time_unet_names_the_slip(slip, hint):
    with pytest.raises(AssertionError, match="❌ TimeUNet") as info:
        check_time_unet(with_slip(slip))
    assert hint in str(info.value)


# ---- lesson 01: UpBlock's channel count, the U-Net wiring, the training step ---------------------

class Up(nn.Module):
    """A learner's UpBlock; ``transpose_in`` is the channel count the transposed conv was built for."""

    def __init__(self, in_ch, out_ch, transpose_in=None):
        super().__init__()
        self.up = nn.ConvTranspose2d(transpose_in or in_ch, out_ch, 2, stride=2)
        self.convs = nn.Sequential(
            nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(),
        )

    def forward(self, x, skip):
        return self.convs(self.up(torch.cat([x, skip], dim=1)))


def test_check_up_block_blames_the_channel_count_not_a_correct_concatenation():
    with pytest.raises(AssertionError) as info:
        check_up_block(lambda in_ch, out_ch: Up(in_ch, out_ch, transpose_in=out_ch))
    assert "the concatenation is right" in str(info.value)
    assert "nn.ConvTranspose2d(in_ch, out_ch" in str(info.value)
    assert "did you concatenate" not in str(info.value)


class Wired(UNetDenoiser):
    """A learner's U-Net from the package's blocks; ``slip`` names the wiring mistake."""

    slip = None

    def __init__(self, image_channels=3, channels=(64, 128, 256), image_size=32):
        super().__init__(image_channels, channels, image_size)
        if self.slip == "up in_ch":
            c = self.channels
            self.ups = nn.ModuleList(UpBlock(c[i], c[max(i - 1, 0)]) for i in reversed(range(len(c))))

    def forward(self, x):
        first = self.stem(x)
        h, skips = first, []
        for down in self.downs:
            if self.slip == "skip before down":
                skips.append(h)
            h = down(h)
            if self.slip != "skip before down":
                skips.append(h)
        h = self.bottleneck(h)
        for i, up in enumerate(self.ups):
            skip = {"reversed skips": lambda: skips[i], "h as skip": lambda: h,
                    "zero skip": lambda: torch.zeros_like(h)}.get(self.slip, skips.pop)()
            h = up(h, skip)
        return self.head(torch.cat([h, first], dim=1))


def wired(slip):
    return type(f"Wired_{slip}", (Wired,), {"slip": slip})


def test_check_unet_passes_a_correct_wiring_and_the_package():
    assert check_unet(Wired).passed
    assert check_unet(UNetDenoiser).passed


@pytest.mark.parametrize("slip, hint", [
    ("reversed skips", "last in, first out (skips.pop())"),
    ("skip before down", "append after h = down(h)"),
    ("h as skip", "got h as their own skip"),
    ("zero skip", "carry nothing"),
    ("up in_ch", "MyUpBlock(2 * c[i], c[i − 1])"),
])
def test_check_unet_names_the_slip(slip, hint):
    with pytest.raises(AssertionError, match="❌ U-Net") as info:
        check_unet(wired(slip))
    assert hint in str(info.value)


def add_noise(x, beta):
    return (1 - beta) * x + beta * torch.randn_like(x)


def train_step(model, optimizer, x0, beta, slip=None):
    x_noisy = add_noise(x0, beta)
    loss = F.mse_loss(model(x_noisy), x_noisy if slip == "noisy target" else x0)
    if slip != "no zero_grad":
        optimizer.zero_grad()
    loss.backward()
    if slip != "no step":
        optimizer.step()
    return loss if slip == "tensor" else loss.item()


def test_check_train_step_passes_a_correct_step():
    assert check_train_step(train_step).passed


@pytest.mark.parametrize("slip, hint", [
    ("no zero_grad", "call optimizer.zero_grad() before loss.backward()"),
    ("tensor", "return loss.item()"),
    ("noisy target", "the target is the noisy image"),
    ("no step", "call optimizer.step()"),
])
def test_check_train_step_names_the_slip(slip, hint):
    with pytest.raises(AssertionError, match="❌ train_step") as info:
        check_train_step(lambda *args: train_step(*args, slip=slip))
    assert hint in str(info.value)


# ---- lesson 03's group_norm (the hints live with the other block checks) -------------------------

def group_norm(x, groups, weight, bias, eps=1e-5, slip=None):
    h = x.reshape(x.shape[0], groups, -1)
    dims = (0, 2) if slip == "over the batch" else -1
    mean = h.mean(dim=dims, keepdim=True)
    var = h.var(dim=dims, unbiased=slip == "unbiased", keepdim=True)
    h = ((h - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    if slip == "not reshaped":
        return h * weight + bias
    return h * weight[None, :, None, None] + bias[None, :, None, None]


def test_check_group_norm_passes_a_correct_function():
    assert check_group_norm(group_norm).passed


@pytest.mark.parametrize("slip, hint", [
    ("unbiased", "unbiased variance"),
    ("over the batch", "statistics run over the batch"),
    ("not reshaped", "reshape them to (1, C, 1, 1)"),
])
def test_check_group_norm_names_the_slip(slip, hint):
    with pytest.raises(AssertionError, match="❌ group_norm") as info:
        check_group_norm(lambda *args: group_norm(*args, slip=slip))
    assert hint in str(info.value)


# ---- lessons 01 and 02: every code exercise is followed at once by its self-check -----------------

@pytest.mark.parametrize("lesson", ["01_unet_denoiser", "02_ddpm"])
def test_each_exercise_is_followed_by_its_check(lesson):
    from pathlib import Path

    import nbformat

    cells = nbformat.read(Path(__file__).resolve().parent.parent / "solutions" / f"{lesson}.ipynb", as_version=4).cells
    exercises = [i for i, cell in enumerate(cells) if cell.cell_type == "code" and "# BEGIN SOLUTION" in cell.source]
    assert exercises
    for i in exercises:
        following = cells[i + 1]
        assert following.cell_type == "code" and following.source.startswith("dlcourse.checks.check_"), \
            f"{lesson}: cell {i + 1}, right after the exercise in cell {i}, is not its self-check"

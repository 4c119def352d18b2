"""Lesson 03's timing helpers (dlcourse.timing.time_train_step / time_sampling)."""
import pytest
import torch

from dlcourse import timing
from dlcourse.models import UNet
from dlcourse.schedules import Schedule, scaled_linear_betas


def test_time_train_step_trains_and_ignores_amp_on_cpu():
    torch.manual_seed(0)
    model = UNet(channels=(8, 16), image_size=8, T=20)
    before = [p.detach().clone() for p in model.parameters()]
    result = timing.time_train_step(model, batch_size=2, device="cpu", channels_last=True,
                                       amp_dtype=torch.bfloat16, timed_steps=1, warmup_steps=0)
    assert result["amp"] is None and result["channels_last"] is True and result["peak_memory_mib"] is None
    assert result["seconds_per_step"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_time_sampling_counts_network_calls():
    schedule = Schedule(scaled_linear_betas(10))
    assert timing.time_sampling(lambda x, t: x, schedule, (1, 3, 8, 8), sampler="ddpm", device="cpu")[
        "network_calls"] == 10
    assert timing.time_sampling(lambda x, t: x, schedule, (1, 3, 8, 8), steps=4, device="cpu")["network_calls"] == 4


def test_bad_inputs_teach():
    schedule = Schedule(scaled_linear_betas(10))
    with pytest.raises(ValueError, match="sampler: expected 'ddpm' or 'ddim'"):
        timing.time_sampling(lambda x, t: x, schedule, (1, 3, 8, 8), sampler="euler", device="cpu")
    with pytest.raises(ValueError, match="amp_dtype"):
        timing.time_train_step(UNet(channels=(8,), image_size=8, T=10), batch_size=2, device="cpu",
                                  amp_dtype="bf16")

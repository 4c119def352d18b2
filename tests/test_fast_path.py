"""The fast path of train: which switches each device gets, and that they leave the training the same."""
import pytest
import torch
import torch.nn.functional as F

from dlcourse.data import ImageDataset
from dlcourse.models import UNet
from dlcourse.training import FastPath, TrainStep, fast_path, train
from dlcourse.training.loop import _Batches


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda")])
def test_cuda_gets_every_switch_but_compile(device):
    assert fast_path(device) == FastPath(data_on_device=True, amp_dtype=torch.bfloat16, channels_last=True,
                                         fused_adamw=True, compile=None)


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_cpu_and_mps_keep_the_plain_defaults(device):
    assert fast_path(device) == FastPath()


def test_bad_switches_teach():
    with pytest.raises(ValueError, match="compile: expected None, 'default'"):
        FastPath(compile="fastest")
    with pytest.raises(ValueError, match="amp_dtype"):
        FastPath(amp_dtype="bf16")
    model = UNet(channels=(8,), image_size=8, T=10)
    with pytest.raises(ValueError, match="fast: expected a dlcourse.training.FastPath"):
        train(model, lambda m, b: b.mean(), torch.zeros(4, 3, 8, 8), steps=1, batch_size=2, fast={"fused": True},
              progress=False)


def test_image_dataset_batches_are_the_collated_ones():
    images, labels = torch.randn(10, 3, 4, 4), torch.arange(10) % 5
    ds = ImageDataset(images, labels, classes=("a", "b", "c", "d", "e"))
    fast, slow = _Batches(ds, 3, seed=1), _Batches(torch.utils.data.Subset(ds, range(10)), 3, seed=1)
    assert fast.tensors is not None and slow.tensors is None
    for k in range(5):
        (x, y), (x_ref, y_ref) = fast(k), slow(k)
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def _loss(model, x0):
    t = torch.randint(0, model.T, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    return F.mse_loss(model(x0 + noise, t), noise)


def _denoising_loss(model, x0):  # no random draws: channels_last changes the order randn_like fills x
    t = torch.arange(x0.shape[0], device=x0.device) % model.T
    return F.mse_loss(model(x0.flip(-1), t), x0)


def test_channels_last_and_fused_adamw_train_the_same_model_on_cpu():
    data = torch.randn(16, 3, 8, 8)
    losses = []
    for fast in (FastPath(), FastPath(data_on_device=True, channels_last=True, fused_adamw=True)):
        torch.manual_seed(0)
        model = UNet(channels=(8, 16), image_size=8, T=10)
        history = train(model, _denoising_loss, data, steps=4, batch_size=4, lr=1e-3, device="cpu", fast=fast,
                        progress=False)
        losses.append(torch.tensor(history.losses))
    assert torch.allclose(losses[0], losses[1], rtol=1e-4)


def test_train_step_applies_the_switches():
    torch.manual_seed(0)
    model = UNet(channels=(8,), image_size=8, T=10)
    run = TrainStep(model, _loss, torch.randn(8, 3, 8, 8), batch_size=4, lr=1e-3, device=torch.device("cpu"),
                    fast=FastPath(channels_last=True, fused_adamw=True), ema_decay=0.9)
    loss = run(0)
    assert loss.dim() == 0 and run.ema is not None
    assert run.optimizer.param_groups[0]["fused"] is True
    conv = next(p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_explicit_amp_dtype_none_turns_autocast_off(capsys):
    model = UNet(channels=(8,), image_size=8, T=10)
    train(model, _loss, torch.randn(4, 3, 8, 8), steps=1, batch_size=2, device="cpu", amp_dtype=torch.bfloat16,
          progress=False)
    assert "ignored on cpu" in capsys.readouterr().out


def test_resume_uses_this_runs_choice_of_fused_adamw(tmp_path, monkeypatch):
    from dlcourse.training import loop

    data = torch.randn(8, 3, 8, 8)
    train(UNet(channels=(8,), image_size=8, T=10), _denoising_loss, data, steps=2, batch_size=4, device="cpu",
          fast=FastPath(fused_adamw=True), checkpoint=tmp_path / "ck", progress=False)
    seen = []
    original = loop._train

    def spy(run, *args):
        history = original(run, *args)
        seen.append([group["fused"] for group in run.optimizer.param_groups])
        return history

    monkeypatch.setattr(loop, "_train", spy)
    train(UNet(channels=(8,), image_size=8, T=10), _denoising_loss, data, steps=3, batch_size=4, device="cpu",
          fast=FastPath(), checkpoint=tmp_path / "ck", progress=False)
    assert seen == [[None]]

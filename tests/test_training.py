import dataclasses
import inspect
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dlcourse.training import EMA, FastPath, History, load_checkpoint, save_checkpoint, train
from dlcourse.training.loop import TrainOptions


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        if self.training:
            self.calls += 1
        return self.linear(x)


def linear_data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    return torch.utils.data.TensorDataset(x, x @ w.T)


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def noisy_mse(model, batch):
    """Draws from the global RNG like a diffusion loss does (noise and t)."""
    x, y = batch
    return ((model(x + 0.1 * torch.randn_like(x)) - y) ** 2).mean()


def fresh_model():
    torch.manual_seed(123)
    return Tiny()


def test_loss_decreases_on_a_linear_map():
    model = fresh_model()
    history = train(model, mse, linear_data(), steps=100, batch_size=16, lr=0.05, device="cpu", progress=False)
    assert history.steps == list(range(1, 101))
    assert len(history.losses) == 100 and history.seconds > 0
    assert sum(history.losses[-10:]) / 10 < 0.05 * sum(history.losses[:10]) / 10
    assert history.ema_model is None
    assert model.training  # mode restored


def test_tensor_data_gives_tensor_batches_without_replacement_per_epoch():
    seen = []

    def loss_fn(model, batch):
        seen.append(batch.clone())
        return model(batch).pow(2).mean()

    data = torch.arange(12.0).repeat(3, 1).T  # 12 examples of 3 features; row i is (i, i, i)
    train(Tiny(), loss_fn, data, steps=4, batch_size=5, device="cpu", progress=False)
    assert all(b.shape == (5, 3) for b in seen)
    first_epoch = torch.cat(seen[:2])[:, 0]
    assert len(set(first_epoch.tolist())) == 10  # 12 // 5 = 2 batches per epoch, no repeats
    assert not torch.equal(torch.cat(seen[:2]), torch.cat(seen[2:]))  # reshuffled next epoch


def test_ema_matches_closed_form_for_a_scalar():
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 2.0)
    ema = EMA(model, decay=0.9, warmup=False)
    assert not ema.model.training and not ema.model.weight.requires_grad
    with torch.no_grad():
        model.weight.fill_(5.0)
    for _ in range(7):
        ema.update(model)
    d = 0.9**7
    expected = d * 2.0 + (1 - d) * 5.0  # θ_ema = d^k θ_0 + (1 − d^k) θ
    assert ema.model.weight.item() == pytest.approx(expected, rel=1e-6)
    assert model.weight.item() == 5.0


def test_ema_warmup_starts_fast_and_copies_buffers():
    model = Tiny()
    ema = EMA(model, decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0)/(10 + 0)
    before = ema.model.linear.weight.clone()
    with torch.no_grad():
        model.linear.weight.add_(1.0)
    model.calls.fill_(4)
    ema.update(model)
    torch.testing.assert_close(ema.model.linear.weight, 0.1 * before + 0.9 * model.linear.weight)
    assert ema.model.calls.item() == 4
    assert ema.current_decay() == pytest.approx(2 / 11)
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.999


def test_train_with_ema_returns_averaged_copy():
    model = fresh_model()
    history = train(model, mse, linear_data(), steps=30, batch_size=8, lr=0.05, ema_decay=0.9,
                    device="cpu", progress=False)
    assert isinstance(history.ema_model, Tiny) and history.ema_model is not model
    assert not torch.equal(history.ema_model.linear.weight, model.linear.weight)
    assert not history.ema_model.linear.weight.requires_grad


def run(tmp_path, steps, **kwargs):
    model = fresh_model()
    history = train(model, noisy_mse, linear_data(), steps=steps, batch_size=8, lr=0.02, ema_decay=0.8,
                    device="cpu", progress=False, checkpoint=tmp_path / "ckpt", **kwargs)
    return model, history


def assert_same_run(a, b):
    (model_a, hist_a), (model_b, hist_b) = a, b
    for (name, pa), pb in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-7, msg=name)
    for pa, pb in zip(hist_a.ema_model.parameters(), hist_b.ema_model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-7)
    assert hist_a.steps == hist_b.steps == list(range(1, 11))
    assert hist_a.losses == pytest.approx(hist_b.losses, rel=1e-6)


def test_resume_after_finished_run_matches_straight_run(tmp_path, capsys):
    straight = run(tmp_path / "a", 10)
    run(tmp_path / "b", 6)
    resumed = run(tmp_path / "b", 10)
    assert "resuming from step 6" in capsys.readouterr().out
    assert_same_run(straight, resumed)


def test_resume_after_interruption_matches_straight_run(tmp_path, capsys):
    straight = run(tmp_path / "a", 10, checkpoint_every=3)
    calls = []

    def interrupting_preview(model, step):
        calls.append(step)
        torch.rand(5)  # previews sample: they draw from the RNG
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", 10, checkpoint_every=3, preview=interrupting_preview, preview_every=4)
    assert calls == [4, 8]
    assert json.loads((tmp_path / "b" / "ckpt" / "state.json").read_text())["step"] == 6
    resumed = run(tmp_path / "b", 10, checkpoint_every=3)
    assert "resuming from step 6" in capsys.readouterr().out
    assert_same_run(straight, resumed)  # the preview (forked RNG) did not change training


def test_finished_checkpoint_returns_stored_history(tmp_path, capsys):
    _, first = run(tmp_path, 5)
    calls = []
    model = fresh_model()
    history = train(model, lambda m, b: calls.append(1), linear_data(), steps=5, batch_size=8, ema_decay=0.8,
                    device="cpu", progress=False, checkpoint=tmp_path / "ckpt")
    assert calls == [] and history.losses == first.losses
    assert history.ema_model is not None
    assert "already has 5 steps" in capsys.readouterr().out


def test_checkpoint_is_safetensors_and_json_only(tmp_path):
    run(tmp_path, 4)
    folder = tmp_path / "ckpt"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ema.safetensors", "model.safetensors", "state.json", "train_state.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or backup folders left
    for path in folder.glob("*.safetensors"):
        assert not path.read_bytes().startswith(b"\x80")  # no pickle protocol header
        load_file(path)
    state = json.loads((folder / "state.json").read_text())
    assert state["step"] == 4 and state["history"]["steps"] == [1, 2, 3, 4]
    assert set(load_file(folder / "model.safetensors")) == {"linear.weight", "linear.bias", "calls"}
    assert "rng.torch" in load_file(folder / "train_state.safetensors")


def test_save_and_load_checkpoint_round_trip(tmp_path):
    model = fresh_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mse(model, linear_data()[:8]).backward()
    optimizer.step()
    ema = EMA(model, 0.5)
    ema.update(model)
    generator = torch.Generator().manual_seed(7)
    history = History(steps=[1], losses=[0.5], seconds=1.0, extra={"note": "x"})
    save_checkpoint(tmp_path, model, optimizer, 1, history, ema, generator)
    expected_draw = torch.rand(3, generator=generator)

    other = Tiny()
    other_opt = torch.optim.AdamW(other.parameters(), lr=1.0)
    other_ema = EMA(other, 0.9)
    other_gen = torch.Generator()
    step, loaded = load_checkpoint(tmp_path, other, other_opt, other_ema, other_gen)
    assert step == 1 and loaded == history
    torch.testing.assert_close(other.linear.weight, model.linear.weight, rtol=0, atol=0)
    torch.testing.assert_close(other_ema.model.linear.weight, ema.model.linear.weight, rtol=0, atol=0)
    assert other_ema.num_updates == 1 and other_ema.decay == 0.5
    assert other_opt.param_groups[0]["lr"] == 1e-3
    assert other_opt.param_groups[0]["betas"] == (0.9, 0.999)
    for a, b in zip(optimizer.state.values(), other_opt.state.values()):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=0)
    torch.testing.assert_close(torch.rand(3, generator=other_gen), expected_draw)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    run(tmp_path, 2)
    wider = Tiny()
    wider.linear = nn.Linear(3, 5)
    with pytest.raises(ValueError, match=r"checkpoint: .*'linear.bias' has shape \[2\] in the checkpoint, \[5\]"):
        train(wider, mse, linear_data(), steps=3, batch_size=8, device="cpu", progress=False,
              checkpoint=tmp_path / "ckpt")
    with pytest.raises(ValueError, match="model: .*'0.bias' is in the model but not in the checkpoint"):
        load_checkpoint(tmp_path / "ckpt", nn.Sequential(nn.Linear(3, 2)))


def test_history_round_trips_through_dict():
    h = History(steps=[1, 2], losses=[0.3, 0.2], seconds=2.5, extra={"model": "unet"})
    assert History.from_dict(json.loads(json.dumps(h.to_dict()))) == h
    with pytest.raises(ValueError, match="steps"):
        History.from_dict({"losses": []})


def test_train_options_are_trains_keywords_settled_once(tmp_path):
    keywords = [(name, p.default) for name, p in inspect.signature(train).parameters.items()
                if p.kind is p.KEYWORD_ONLY]
    fields = [(f.name, inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
              for f in dataclasses.fields(TrainOptions)]
    assert keywords == fields  # same names, order and defaults: train passes each on once
    options = TrainOptions(steps=20, batch_size=4, device="cpu", checkpoint=str(tmp_path / "ck"), amp_dtype=None)
    assert options.device == torch.device("cpu") and options.checkpoint == tmp_path / "ck"
    assert options.fast == FastPath() and options.save_every == 2  # 10 % of the steps
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.steps = 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps: expected a positive int"),
        ({"batch_size": 65}, "batch_size: expected at most the number of examples \\(64\\)"),
        ({"data": [1, 2, 3]}, "data: expected a torch Dataset"),
        ({"data": "flowers"}, "data: expected"),
        ({"loss_fn": "mse"}, "loss_fn: expected"),
        ({"loss_fn": lambda m, b: 1.0}, "loss_fn: expected to return a scalar float tensor"),
        ({"lr": -1.0}, "lr: expected a finite real number > 0"),
        ({"lr": float("nan")}, "lr: expected a finite real number"),
        ({"seed": -1}, "seed: expected an int seed >= 0"),
        ({"ema_decay": 1.5}, "ema_decay"),
        ({"preview_every": 5}, "preview: expected"),
        ({"amp_dtype": torch.float32}, "amp_dtype"),
        ({"grad_clip": 0}, "grad_clip"),
    ],
)
def test_bad_inputs_raise_teaching_errors(kwargs, match):
    args = {"loss_fn": mse, "data": linear_data(), "steps": 2, "batch_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        train(Tiny(), device="cpu", progress=False, **args)


def test_dataloader_gets_a_specific_hint():
    loader = torch.utils.data.DataLoader(linear_data(), batch_size=8)
    with pytest.raises(ValueError, match="loader.dataset"):
        train(Tiny(), mse, loader, steps=2, batch_size=8, device="cpu", progress=False)


def test_nan_loss_names_the_step():
    def exploding(model, batch):
        return mse(model, batch) * float("nan")

    with pytest.raises(ValueError, match="loss: expected a finite value.*step 1"):
        train(Tiny(), exploding, linear_data(), steps=3, batch_size=8, device="cpu", progress=False)


def test_amp_is_ignored_on_cpu_with_a_note(capsys):
    train(Tiny(), mse, linear_data(), steps=2, batch_size=8, device="cpu", progress=False,
          amp_dtype=torch.bfloat16, grad_clip=1.0, weight_decay=0.01)
    assert "amp_dtype" in capsys.readouterr().out

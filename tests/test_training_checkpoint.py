"""dlcourse.training.checkpoint: a save survives a crash at any point, a second writer is refused, a load is
all-or-nothing."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from dlcourse.training import EMA, History, checkpoint, checkpoint_exists, load_checkpoint, save_checkpoint, train


class Crash(Exception):
    """Stands for a kill -9: raised between two file operations of a save."""


def make(step_value=0.0):
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(step_value)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, optimizer


def save(folder, step, ema=True):
    model, optimizer = make(float(step))
    save_checkpoint(folder, model, optimizer, step, History(steps=[step], losses=[0.1]),
                    EMA(model, 0.9) if ema else None)


def loaded_step(folder):
    model, optimizer = make()
    step, _ = load_checkpoint(folder, model, optimizer, EMA(model, 0.9))
    assert torch.all(model.weight == float(step))  # the weights belong to that step
    return step


def operations(tmp_path):
    """Names of the crash points of a save into a folder that already holds a checkpoint."""
    names = []
    folder = tmp_path / "probe"
    save(folder, 1)
    checkpoint._crash_point = names.append
    try:
        save(folder, 2)
    finally:
        checkpoint._crash_point = None
    assert len(names) >= 8, names  # the loops below must not run over nothing
    return names


def crash_at(monkeypatch, k):
    calls = []

    def point(name):
        calls.append(name)
        if len(calls) == k + 1:
            raise Crash(name)

    monkeypatch.setattr(checkpoint, "_crash_point", point)


def test_a_save_has_crash_points_between_all_its_operations(tmp_path):
    names = operations(tmp_path)
    assert names[:4] == ["mkdir tmp", "write model.safetensors", "write ema.safetensors",
                         "write train_state.safetensors"]
    assert {"rename folder to backup", "rename tmp to folder", "rename backup to trash", "delete backup"} <= set(names)


def test_a_crash_at_any_step_of_a_save_resumes_to_the_last_save_or_the_one_before(tmp_path, monkeypatch):
    n = len(operations(tmp_path))
    for k in range(n):
        folder = tmp_path / f"crash{k}" / "ckpt"
        save(folder, 1)
        save(folder, 2)
        crash_at(monkeypatch, k)
        with pytest.raises(Crash):
            save(folder, 3)
        monkeypatch.setattr(checkpoint, "_crash_point", None)
        assert checkpoint_exists(folder), k
        assert loaded_step(folder) in (2, 3), k
        save(folder, 4)  # never stuck: the next save works and leaves nothing behind
        assert loaded_step(folder) == 4
        assert sorted(p.name for p in folder.parent.iterdir()) == ["ckpt"], k


def test_two_crashes_in_a_row_still_leave_a_completed_save(tmp_path, monkeypatch):
    n = len(operations(tmp_path))
    monkeypatch.setattr(checkpoint, "_fsync", lambda path: None)  # durability is not what this test is about
    for k in range(n):
        for j in range(n):
            folder = tmp_path / f"c{k}-{j}" / "ckpt"
            save(folder, 1)
            crash_at(monkeypatch, k)
            with pytest.raises(Crash):
                save(folder, 2)
            crash_at(monkeypatch, j)
            try:  # a save after a crash may have fewer operations: the j-th may not exist
                save(folder, 3)
            except Crash:
                pass
            monkeypatch.setattr(checkpoint, "_crash_point", None)
            assert loaded_step(folder) in (1, 2, 3), (k, j)


def test_a_crash_in_the_first_save_leaves_no_checkpoint_and_no_stuck_folder(tmp_path, monkeypatch):
    crash_at(monkeypatch, 2)
    with pytest.raises(Crash):
        save(tmp_path / "ckpt", 1)
    monkeypatch.setattr(checkpoint, "_crash_point", None)
    assert not checkpoint_exists(tmp_path / "ckpt")
    save(tmp_path / "ckpt", 1)
    assert loaded_step(tmp_path / "ckpt") == 1


def linear_data():
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_train_resumes_after_a_crash_inside_a_save(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "ckpt"
    train(nn.Linear(3, 1), mse, linear_data(), steps=4, batch_size=8, device="cpu", progress=False,
          checkpoint=folder, checkpoint_every=2)
    crash_at(monkeypatch, 6)  # in the save at step 6, after its files were written
    with pytest.raises(Crash):
        train(nn.Linear(3, 1), mse, linear_data(), steps=8, batch_size=8, device="cpu", progress=False,
              checkpoint=folder, checkpoint_every=2)
    monkeypatch.setattr(checkpoint, "_crash_point", None)
    capsys.readouterr()
    train(nn.Linear(3, 1), mse, linear_data(), steps=8, batch_size=8, device="cpu", progress=False,
          checkpoint=folder, checkpoint_every=2)
    out = capsys.readouterr().out
    assert "resuming from step 4" in out or "resuming from step 6" in out


def test_killed_saves_leave_no_temporary_folders_for_good(tmp_path):
    folder = tmp_path / "ckpt"
    save(folder, 1)
    (tmp_path / ".ckpt.tmp-999999").mkdir()  # what a killed process leaves
    (tmp_path / ".ckpt.trash-999998").mkdir()
    save(folder, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    folder = tmp_path / "ckpt"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from dlcourse.training import checkpoint
            with checkpoint._locked(Path({str(folder)!r})):
                print("locked", flush=True)
                sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"checkpoint: .*in use by process {holder.pid}"):
            train(nn.Linear(3, 1), mse, linear_data(), steps=2, batch_size=8, device="cpu", progress=False,
                  checkpoint=folder)
        with pytest.raises(ValueError, match=rf"in use by process {holder.pid}"):
            save(folder, 1)
    finally:
        holder.communicate("\n", timeout=60)
    save(folder, 1)  # released when the holder ends
    assert loaded_step(folder) == 1


def test_a_folder_with_other_files_is_not_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="checkpoint: expected a new folder.*holds other files"):
        train(nn.Linear(3, 1), mse, linear_data(), steps=2, batch_size=8, device="cpu", progress=False,
              checkpoint=tmp_path)
    with pytest.raises(ValueError, match="holds other files"):
        save(tmp_path, 1)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("change", [
    lambda s: s.update(step="40"), lambda s: s.update(step=12.5), lambda s: s.update(step=-5),
    lambda s: s.update(step=1e18), lambda s: s.update(step=10**18), lambda s: s.update(step=True),
    lambda s: s["history"].update(steps=[5]), lambda s: s["history"].update(losses=["x"]),
    lambda s: s.update(ema={"decay": 2.0, "warmup": True, "num_updates": 1}),
    lambda s: s.update(param_shapes=[]), lambda s: s.pop("optimizer"),
    lambda s: s.update(optimizer={"__tensor__": "nosuch"}),
])
def test_a_tampered_state_json_is_refused_before_anything_loads(tmp_path, change):
    save(tmp_path, 3)
    state = json.loads((tmp_path / "state.json").read_text())
    change(state)
    (tmp_path / "state.json").write_text(json.dumps(state))
    model, optimizer = make(7.0)
    with pytest.raises(ValueError, match="checkpoint: expected"):
        load_checkpoint(tmp_path, model, optimizer)
    assert torch.all(model.weight == 7.0) and not optimizer.state


def test_a_state_json_that_is_a_list_is_refused(tmp_path):
    save(tmp_path, 3)
    (tmp_path / "state.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="checkpoint: expected state.json holding a JSON object"):
        load_checkpoint(tmp_path, make()[0])


def test_a_bad_rng_state_changes_nothing(tmp_path):
    from safetensors.torch import load_file, save_file

    save(tmp_path, 3)
    tensors = load_file(tmp_path / "train_state.safetensors")
    tensors["rng.torch"] = tensors["rng.torch"][:10].clone()
    save_file(tensors, tmp_path / "train_state.safetensors")
    model, optimizer = make(7.0)
    ema = EMA(model, 0.5)
    with pytest.raises(ValueError, match="rng.torch"):
        load_checkpoint(tmp_path, model, optimizer, ema)
    assert torch.all(model.weight == 7.0) and not optimizer.state and ema.decay == 0.5


def test_an_optimizer_that_does_not_fit_changes_nothing(tmp_path):
    save(tmp_path, 3)
    model, _ = make(7.0)
    other = torch.optim.AdamW([model.weight], lr=0.5)  # one parameter, the checkpoint has two
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="nothing was loaded"):
        load_checkpoint(tmp_path, model, other)
    assert torch.all(model.weight == 7.0) and other.param_groups[0]["lr"] == 0.5
    assert torch.equal(torch.get_rng_state(), rng)

"""dlcourse.benchmark (lesson 03's measurements): the table runs, labels CPU numbers, skips CUDA-only rows."""
import json

import pytest
import torch

from dlcourse import benchmark
from dlcourse.models import UNet
from dlcourse.schedules import Schedule, scaled_linear_betas

TINY = benchmark.Settings(channels=(8, 16), image_size=8, T=20, batch_size=4, n_samples=2, timed_steps=1,
                          warmup_steps=1)


def test_rows_cover_both_models_and_switches():
    train_rows = [r for r in benchmark.ROWS if r.kind == "train_step"]
    assert {(r.options["model"]["norm"], r.options["channels_last"], r.options["amp"]) for r in train_rows} == {
        (norm, cl, amp) for norm in ("batch", "group") for cl in (False, True) for amp in (None, "bf16")}
    assert all(r.cuda_only == (r.options["amp"] is not None) for r in train_rows)
    assert all(r.kind in benchmark.MEASURES for r in benchmark.ROWS)


def test_run_rows_on_cpu_skips_cuda_only_and_labels_cpu():
    rows = [r for r in benchmark.ROWS if "optimised" in r.name or r.kind == "sampling"]
    results = benchmark.run_rows(rows, TINY, "cpu", progress=False)
    assert [e["name"] for e in results] == [r.name for r in rows]
    for row, entry in zip(rows, results):
        if row.cuda_only:
            assert "CUDA only" in entry["skipped"] and "result" not in entry
        else:
            assert entry["result"]["device"] == "cpu"
    ddpm = next(e for e in results if e["name"].startswith("sampling: DDPM"))
    assert ddpm["result"]["network_calls"] == TINY.T
    ddim10 = next(e for e in results if "S = 10" in e["name"])
    assert ddim10["result"]["network_calls"] == 10
    step = next(e for e in results if e["name"] == "train step: optimised U-Net")["result"]
    assert step["seconds_per_step"] > 0 and step["peak_memory_mib"] is None and step["amp"] is None
    assert step["parameters"] == sum(p.numel() for p in UNet(channels=(8, 16), image_size=8, T=20,
                                                             **benchmark.OPTIMISED).parameters())
    table = benchmark.format_table(results, torch.device("cpu"))
    assert "CPU numbers" in table and "measured on CPU" in table
    json.dumps(results)  # the report is JSON-able


def test_time_train_step_trains_and_ignores_amp_on_cpu():
    torch.manual_seed(0)
    model = UNet(channels=(8, 16), image_size=8, T=20)
    before = [p.detach().clone() for p in model.parameters()]
    result = benchmark.time_train_step(model, batch_size=2, device="cpu", channels_last=True,
                                       amp_dtype=torch.bfloat16, timed_steps=1, warmup_steps=0)
    assert result["amp"] is None and result["channels_last"] is True
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_inputs_teach():
    schedule = Schedule(scaled_linear_betas(10))
    with pytest.raises(ValueError, match="sampler: expected 'ddpm' or 'ddim'"):
        benchmark.time_sampling(lambda x, t: x, schedule, (1, 3, 8, 8), sampler="euler", device="cpu")
    with pytest.raises(ValueError, match="amp_dtype"):
        benchmark.time_train_step(UNet(channels=(8,), image_size=8, T=10), batch_size=2, device="cpu",
                                  amp_dtype="bf16")
    with pytest.raises(ValueError, match="rows: expected rows whose kind"):
        benchmark.run_rows([benchmark.Row("x", "nonsense")], TINY, "cpu", progress=False)
    assert benchmark.main(["--rows", "no such row", "--out", "/dev/null"]) == 2  # one line, see test_reliability_cli

"""dlcourse benchmark: interleaved repeats, medians and spreads, honest comparisons, the peer and the rows."""
import json

import pytest
import torch

from dlcourse.tools import benchmark
from dlcourse.tools.benchmark import Comparison, Row, Settings

TINY = Settings(channels=(8, 16), image_size=8, T=20, batch_size=4, n_samples=2, timed_steps=1, warmup_steps=1,
                sampling_steps=3, guided_n_samples=3, repeats=2)


def test_every_switch_has_its_own_row_and_all_together_one():
    names = {r.name for r in benchmark.ROWS}
    for switch in ("data on device", "bf16 autocast", "channels_last", "fused AdamW", "torch.compile (default)"):
        assert f"train U-Net: + {switch}" in names
    together = next(r for r in benchmark.ROWS if r.name == "train U-Net: fast path (all of the above)")
    assert set(together.options["fast"]) == {"data_on_device", "amp_dtype", "channels_last", "fused_adamw"}
    assert {"train diffusers peer: fp32 eager", "train diffusers peer: fast path (all of the above)"} <= names
    assert all(r.kind in benchmark.TRIALS and set(r.needs) <= {"cuda", "diffusers", "compile"}
               for r in benchmark.ROWS)
    for c in benchmark.COMPARISONS:
        assert {c.faster, c.baseline} <= names, c.name


def test_rows_are_interleaved_after_every_setup(monkeypatch):
    events = []

    def fake(settings, device, *, label):
        events.append(f"setup {label}")
        return benchmark._Trial(lambda: events.append(label), images=10)

    monkeypatch.setitem(benchmark.TRIALS, "fake", fake)
    rows = [Row(name, "fake", {"label": name}) for name in "AB"]
    entries = benchmark.run_rows(rows, TINY, "cpu", progress=False)
    assert events == ["setup A", "setup B", "A", "B", "A", "B"]
    for entry in entries:
        assert len(entry["images_per_second"]) == TINY.repeats
        assert entry["low"] <= entry["q1"] <= entry["median"] <= entry["q3"] <= entry["high"]


def test_skipped_rows_say_why(monkeypatch):
    monkeypatch.setattr(benchmark, "_diffusers_version", lambda: None)
    rows = [Row("gpu", "train", {}, ("cuda",)), Row("peer", "train", {}, ("diffusers",)),
            Row("compiled", "train", {}, ("compile",))]
    entries = benchmark.run_rows(rows, TINY, "cpu", progress=False)
    reasons = [e["skipped"] for e in entries]
    assert "CUDA only" in reasons[0] and "diffusers is not installed" in reasons[1] and "--compile" in reasons[2]


def _entry(name, rates):  # three rounds: q1 and q3 halfway between the median and the extremes
    low, median, high = sorted(rates)
    return {"name": name, "median": median, "q1": (low + median) / 2, "q3": (median + high) / 2}


def test_comparison_prints_a_ratio_only_when_the_difference_beats_the_spread():
    pair = [Comparison("a vs b", "a", "b", "≥ 2×")]
    clear = benchmark.compare([_entry("a", [20, 21, 22]), _entry("b", [10, 10.5, 11])], pair)
    assert clear[0]["ratio"] == pytest.approx(2.0) and "note" not in clear[0]
    noisy = benchmark.compare([_entry("a", [5, 12, 30]), _entry("b", [10, 10.5, 11])], pair)
    assert noisy[0]["ratio"] is None and "spread" in noisy[0]["note"]
    assert benchmark.compare([_entry("a", [1, 1, 1])], pair) == []  # baseline not measured: nothing to say
    table = benchmark.format_table([], noisy, torch.device("cpu"))
    assert "no clear difference" in table and "measured on CPU" in table


def test_real_rows_run_on_cpu_and_report_images_per_second():
    names = ("train U-Net: fp32 eager", "train U-Net: + channels_last", "sample DDIM: one .item() sync per step",
             "guided DDIM, N = 4: two passes")
    rows = [r for r in benchmark.ROWS if r.name in names]
    entries = benchmark.run_rows(rows, TINY, "cpu", progress=False)
    by_name = {e["name"]: e for e in entries}
    assert by_name["train U-Net: fp32 eager"]["parameters"] > 0 and "ms_per_step" not in by_name[names[0]]
    assert by_name[names[2]]["ms_per_step"] > 0
    assert by_name[names[3]]["network_calls"] == 2 * TINY.sampling_steps
    assert all(e["peak_memory_mib"] is None and e["median"] > 0 for e in entries)
    table = benchmark.format_table(entries, benchmark.compare(entries), torch.device("cpu"))
    assert all(name in table for name in names) and "CPU numbers" in table
    json.dumps(entries)  # the report is JSON-able


def test_unknown_kind_and_passes_teach():
    with pytest.raises(ValueError, match="rows: expected rows whose kind"):
        benchmark.run_rows([Row("x", "nonsense")], TINY, "cpu", progress=False)
    with pytest.raises(ValueError, match="passes"):
        benchmark.guided_trial(TINY, torch.device("cpu"), passes="three")


def test_peer_has_our_parameter_count_within_ten_percent():
    pytest.importorskip("diffusers")
    ours = benchmark.count_parameters(benchmark._network(Settings((32, 64), 16, 200, 4, 2), "ours"))
    config, count = benchmark.peer_config(ours, 16, 2)
    assert abs(count / ours - 1) <= 0.10
    peer = benchmark.PeerUNet(16, 200, config)
    assert benchmark.count_parameters(peer) == count
    x = torch.randn(2, 3, 16, 16)
    assert peer(x, torch.tensor([0, 199])).shape == x.shape


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats: expected a positive int"),
    (["--rows", "nosuch"], "--rows: expected text found in a row name"),
])
def test_bad_options_are_one_line(capsys, argv, message, tmp_path):
    assert benchmark.main([*argv, "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_fast_path_row_sets_up_on_cpu_where_its_cuda_switches_do_nothing():
    fast = next(r for r in benchmark.ROWS if r.name == "train U-Net: fast path (all of the above)").options["fast"]
    trial = benchmark.train_trial(TINY, torch.device("cpu"), model="ours", fast=fast)
    trial.block()
    assert trial.images == TINY.timed_steps * TINY.batch_size and trial.info["fast"] == fast

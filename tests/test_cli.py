"""dlcourse.tools.cli: every error is one line naming the option and the fix, with exit status 2, before any work."""
from __future__ import annotations

import pytest
import torch

from dlcourse.tools import benchmark, cli


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        status = cli.main(list(argv))
    except SystemExit as stop:  # argparse's own errors
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.err.strip()


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command starts measuring or training before its options were checked."""
    monkeypatch.setattr(benchmark, "run_rows", lambda *a, **k: pytest.fail("measured before checking options"))
    monkeypatch.setattr("dlcourse.tools.evaluator_training.train_evaluator",
                        lambda **k: pytest.fail("trained before checking options"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("argv, option", [
    (["benchmark", "--batch-size", "-1"], "--batch-size: expected a positive int"),
    (["benchmark", "--timed-steps", "0"], "--timed-steps: expected a positive int"),
    (["benchmark", "--rows", "nosuch"], "--rows: expected text found in a row name"),
    (["benchmark", "--device", "cuda"], "--device: expected a device this machine has (cpu"),
    (["benchmark", "--device", "tpu7"], "--device: expected a device such as"),
    (["benchmark", "--batch-size", "abc"], "argument --batch-size: invalid int value"),
    (["train-evaluator", "--epochs", "0"], "--epochs: expected a positive int"),
    (["train-evaluator", "--batch-size", "-5"], "--batch-size: expected a positive int"),
    (["train-evaluator", "--lr", "nan"], "--lr: expected a finite real number > 0"),
    (["train-evaluator", "--ema-decay", "1.5"], "--ema-decay: expected a finite real number in (0.0, 1.0)"),
    (["train-evaluator", "--seed", "-3"], "--seed: expected an int seed >= 0"),
    (["train-evaluator", "--device", "cuda"], "--device: expected a device this machine has"),
])
def test_bad_options_give_one_line_naming_the_option_and_exit_2(capsys, no_work, argv, option):
    status, err = run_cli(capsys, *argv)
    assert status == 2
    assert "\n" not in err and "Traceback" not in err
    assert option in err


def test_benchmark_out_that_cannot_be_written_fails_before_the_work(capsys, no_work, tmp_path):
    (tmp_path / "a_file").write_text("x")
    status, err = run_cli(capsys, "benchmark", "--out", str(tmp_path / "a_file" / "bench.json"))
    assert status == 2 and "\n" not in err and err.startswith("dlcourse benchmark: error: --out: expected a file")
    status, err = run_cli(capsys, "benchmark", "--out", str(tmp_path))
    assert status == 2 and "--out: expected a file name, not a folder" in err

"""dlcourse doctor: its checks report what is wrong, and its prediction table is bounded by its time budget."""
import pytest
import torch

from dlcourse.tools import doctor
from dlcourse.config import budget


def _by_name(found):
    return {c.name: c for c in found}


def test_unwritable_runs_and_cache_folders_are_problems(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a folder cannot be made under a file, whoever runs the test
    found = _by_name(doctor.checks(cache_dirs=[blocker / "cache"], runs_dir=blocker / "runs"))
    assert found["runs folder"].ok is False and "cannot write" in found["runs folder"].detail
    assert found["cache folder"].ok is False
    report = doctor.format_report(list(found.values()), [], torch.device("cpu"), "quick")
    assert "PROBLEM runs folder" in report


def test_writable_folders_and_budget_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("DLCOURSE_BUDGET", "quick")
    found = _by_name(doctor.checks(cache_dirs=[tmp_path / "cache"], runs_dir=tmp_path / "runs"))
    assert found["runs folder"].ok and found["cache folder"].ok
    assert found["budget"].detail == "quick (DLCOURSE_BUDGET=quick)"
    assert "empty" in found["dataset cache"].detail
    (tmp_path / "cache" / "flowers.npz").write_bytes(b"0" * 10)
    assert _by_name(doctor.checks(cache_dirs=[tmp_path / "cache"], runs_dir=tmp_path))["dataset cache"].ok


def test_torch_build_is_named(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert _by_name(doctor.checks())["torch build"].detail.startswith("CPU build")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "CUDA 12.4 build, but no CUDA GPU" in _by_name(doctor.checks())["torch build"].detail


def test_prediction_has_one_row_per_lesson_and_follows_the_model():
    predictions = doctor.predict(seconds=0.5, device="cpu", mode_name="quick")
    assert [p.lesson for p in predictions] == list(doctor.TRAINED_LESSONS)
    for p in predictions:
        assert p.train_steps == budget(p.lesson, "quick").train_steps
        if p.seconds_per_step is not None:
            assert p.seconds == pytest.approx(p.seconds_per_step * p.train_steps * p.models)
    assert next(p for p in predictions if p.lesson == "03_optimizations").models == 2
    table = doctor.format_report([], predictions, torch.device("cpu"), "quick")
    assert all(p.lesson in table for p in predictions) and "total" in table


def test_spent_time_budget_leaves_the_rest_unmeasured():
    predictions = doctor.predict(seconds=1e-9, device="cpu", mode_name="quick")
    assert len(predictions) == len(doctor.TRAINED_LESSONS)
    assert sum(p.seconds_per_step is not None for p in predictions) <= 1  # only the first set-up, once
    assert "not measured" in doctor.format_report([], predictions, torch.device("cpu"), "quick")


def test_command_exit_status_and_bad_option(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert doctor.main(["--no-benchmark", "--runs", str(blocker / "runs")]) == 1
    assert "PROBLEM runs folder" in capsys.readouterr().out
    assert doctor.main(["--seconds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--seconds: expected a finite real number > 0" in err and "\n" not in err

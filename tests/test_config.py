"""Budgets: three modes from one table, chosen by environment variable or hardware."""
from __future__ import annotations

import pytest

import dlcourse
from dlcourse import config


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("DLCOURSE_BUDGET", raising=False)
    monkeypatch.delenv("DLCOURSE_QUICK", raising=False)
    return monkeypatch


def test_hardware_picks_cpu_or_full(env):
    env.setattr(config, "_cuda_available", lambda: False)
    assert config.mode_and_reason() == ("cpu", "no CUDA GPU found")
    env.setattr(config, "_cuda_available", lambda: True)
    assert config.mode_and_reason() == ("full", "a CUDA GPU is available")


def test_environment_overrides_hardware(env):
    env.setattr(config, "_cuda_available", lambda: True)
    env.setenv("DLCOURSE_QUICK", "yes")
    assert config.mode() == "quick" and config.is_quick()
    env.setenv("DLCOURSE_BUDGET", "cpu")  # the explicit budget wins over the short form
    assert config.mode_and_reason() == ("cpu", "DLCOURSE_BUDGET=cpu")
    env.setenv("DLCOURSE_BUDGET", "gpu")
    with pytest.raises(ValueError, match="DLCOURSE_BUDGET: expected one of full, cpu, quick, got 'gpu'"):
        config.mode()


def test_budget_picks_the_column_and_names_it(env):
    env.setenv("DLCOURSE_BUDGET", "cpu")
    b = config.budget("04_classifier_free_guidance")
    assert b.mode == "cpu" and not b.quick
    assert b.train_steps == config.BUDGETS["04_classifier_free_guidance"]["train_steps"][1]
    assert config.budget("04_classifier_free_guidance", "quick").quick
    with pytest.raises(ValueError, match="mode_name"):
        config.budget("02_ddpm", "slow")
    with pytest.raises(ValueError, match="lesson: expected one of"):
        config.budget("06_nope")


def test_every_entry_has_three_budgets_shrinking_towards_quick():
    for lesson, sizes in config.BUDGETS.items():
        for key, values in sizes.items():
            assert isinstance(values, tuple) and len(values) == 3, (lesson, key)
            full, cpu, quick = values
            if key in ("n_images", "train_steps", "T", "batch_size"):
                assert quick <= cpu <= full, (lesson, key)


def test_banner_says_which_budget_and_why(env):
    env.setenv("DLCOURSE_BUDGET", "cpu")
    assert "CPU budget (DLCOURSE_BUDGET=cpu)" in dlcourse.banner()
    env.setenv("DLCOURSE_BUDGET", "quick")
    assert "QUICK budget" in dlcourse.banner() and "not meaningful" in dlcourse.banner()

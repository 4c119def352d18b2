"""Budgets: three modes from one table, chosen by environment variable or hardware."""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

import dlcourse
from dlcourse import config, pretrained
from dlcourse.tools import benchmark, doctor

ROOT = Path(__file__).resolve().parents[1]
# every lesson fact as the tables held it before the lesson table (commit a083b1d), values as repr()
BEFORE = json.loads((ROOT / "tests" / "lesson_facts_before_the_table.json").read_text())
# fields the table took over from train_reference's RECIPE: the assessment notebook's constants, one value
# under every budget
FROM_RECIPE = {"assessment": ("lr", "ema_decay", "drop_prob")}
# the one value corrected after the move: doctor timed the assessment's model with a stale context of 8
FIXED_SETUPS = {"assessment": ("('context_dim', 8)", "('context_dim', 11)")}
# the cpu column's deliberate changes since (issue 19, docs/recipe.md: batch 32 beat 64 at equal CPU seconds),
# field -> (before, after) as repr(); every other value must still be what the tables held
RECIPE_CHANGES = {
    "02_ddpm": {"batch_size": ("64", "32"), "train_steps": ("4000", "6000")},
    "03_optimizations": {"batch_size": ("64", "32"), "train_steps": ("2500", "3500")},
    "04_classifier_free_guidance": {"batch_size": ("64", "32"), "train_steps": ("4000", "6000"),
                                    "sampling_steps": ("50", "25")},
    "05_clip_conditioning": {"batch_size": ("64", "32"), "train_steps": ("2500", "4000")},
    "assessment": {"batch_size": ("64", "32"), "train_steps": ("4000", "6000")},
}


def _expected_budget(lesson: str, mode_name: str) -> dict:
    """BEFORE's values of ``lesson`` under ``mode_name``, with RECIPE_CHANGES applied to the cpu column."""
    expected = {**BEFORE["budget"][lesson][mode_name],
                **{key: BEFORE["RECIPE"][key] for key in FROM_RECIPE.get(lesson, ())}}
    for key, (old, new) in (RECIPE_CHANGES.get(lesson, {}) if mode_name == "cpu" else {}).items():
        assert expected[key] == old, f"{lesson}.{key}: RECIPE_CHANGES says it was {old}, the snapshot {expected[key]}"
        expected[key] = new
    return expected
# lessons added to the table after the move: not in BEFORE, their sizes are tested on their own below
ADDED = {"06_latent_diffusion"}


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
    assert isinstance(b, config.GuidanceBudget) and b.mode == "cpu" and not b.quick
    assert b.train_steps == config.GuidanceBudget.columns()["train_steps"][1]
    assert config.budget("04_classifier_free_guidance", "quick").quick
    with pytest.raises(AttributeError, match="no_such_size"):
        b.no_such_size
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.train_steps = 1
    with pytest.raises(ValueError, match="mode_name: expected one of full, cpu, quick or None, got 'slow'"):
        config.budget("02_ddpm", "slow")
    with pytest.raises(ValueError, match="lesson: expected one of .*'assessment'.*, got '06_nope'"):
        config.budget("06_nope")


def test_every_field_is_documented_with_three_budgets_shrinking_towards_quick():
    for lesson, table in config.LESSONS.items():
        assert issubclass(table, config.Budget) and dataclasses.is_dataclass(table), lesson
        for f in dataclasses.fields(table):
            if f.name == "mode":
                continue
            assert f.metadata["doc"].strip(), (lesson, f.name)
            values = f.metadata["budgets"]
            assert isinstance(values, tuple) and len(values) == 3, (lesson, f.name)
            full, cpu, quick = values
            if f.name in ("n_images", "train_steps", "T", "batch_size"):
                assert quick <= cpu <= full, (lesson, f.name)


def test_context_sizes_are_the_models_own():
    from dlcourse.data import CLASSES
    from dlcourse.grading.assessment import CONTEXT_DIM

    assert config.budget("assessment", "cpu").context_dim == CONTEXT_DIM
    assert config.budget("04_classifier_free_guidance", "cpu").context_dim == len(CLASSES)
    clip = config.budget("05_clip_conditioning", "quick")
    assert clip.context_dim == clip.clip_embed_dim
    assert config.budget("02_ddpm", "cpu").context_dim is None


@pytest.mark.parametrize("mode_name", config.MODES)
def test_lesson_06_sizes_fit_its_models(mode_name):
    """The latent is image_size / 2^len(vae_channels) = 8 per side under every budget (TextUNet's default input),
    the cross-attention reads TinyCLIP's tokens, and the latent U-Net halves the latent len(channels) times."""
    from dlcourse.models import VAE

    b = config.budget("06_latent_diffusion", mode_name)
    vae = VAE(latent_channels=b.latent_channels, channels=b.vae_channels, image_size=b.image_size)
    assert vae.latent_shape == (b.latent_channels, 8, 8)
    assert b.context_dim == b.clip_text_width
    latent = [dict(t.kwargs) for t in b.trainings if dict(t.kwargs).get("image_channels") == b.latent_channels]
    assert len(latent) == 6 and all(kwargs["image_size"] == vae.latent_shape[1] for kwargs in latent)
    assert 8 % 2 ** len(b.channels) == 0 and b.image_size % 2 ** len(b.pixel_channels) == 0
    assert all(width % b.attention_heads == 0 for width in b.channels)


def _train_reference():
    spec = importlib.util.spec_from_file_location("train_reference", ROOT / "assessments" / "train_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode_name", config.MODES)
def test_the_lesson_table_holds_exactly_the_values_of_the_tables_it_replaced(mode_name):
    """budget(), doctor's set-ups, benchmark's Settings, the assessment reference's RECIPE and pretrained's
    CHECK read from the lesson table give what the separate tables gave before the move, type included."""
    assert set(config.LESSONS) - ADDED == set(BEFORE["budget"])
    for lesson, table in config.LESSONS.items():
        if lesson in ADDED:
            continue
        b = config.budget(lesson, mode_name)
        expected = _expected_budget(lesson, mode_name)
        assert {f.name for f in dataclasses.fields(table)} | {"quick"} == set(expected), lesson
        assert {key: repr(getattr(b, key)) for key in expected} == expected, lesson
    assert set(doctor.TRAINED_LESSONS) - ADDED == set(BEFORE["doctor"])
    for lesson in BEFORE["doctor"]:
        expected = dict(BEFORE["doctor"][lesson][mode_name])
        if lesson in FIXED_SETUPS:
            expected["setup"] = expected["setup"].replace(*FIXED_SETUPS[lesson])
        if mode_name == "cpu" and lesson in RECIPE_CHANGES:  # the set-up tuple holds the batch size 5th
            old, new = RECIPE_CHANGES[lesson]["batch_size"]
            expected["setup"] = expected["setup"].replace(f", {old}, (", f", {new}, (")
            expected["train_steps"] = int(RECIPE_CHANGES[lesson]["train_steps"][1])
        # the snapshot's set-up (model, channels, image_size, T, batch_size, extra) as a Training's set-up
        model, channels, image_size, T, batch_size, extra = ast.literal_eval(expected.pop("setup"))
        kwargs = {"channels": channels, "image_size": image_size, **({} if T is None else {"T": T}), **dict(extra)}
        (training,) = config.budget(lesson, mode_name).trainings
        assert training.setup == (model, tuple(sorted(kwargs.items())), batch_size), lesson
        assert {"train_steps": training.steps, "models": training.models} == expected, lesson
    settings = dataclasses.asdict(benchmark.Settings.from_budget(mode_name))
    expected_benchmark = dict(BEFORE["benchmark"][mode_name])  # lesson 03's model and batch
    if mode_name == "cpu":
        expected_benchmark["batch_size"] = RECIPE_CHANGES["03_optimizations"]["batch_size"][1]
    assert {key: repr(value) for key, value in settings.items()} == expected_benchmark
    recipe = {**BEFORE["RECIPE"], "steps": RECIPE_CHANGES["assessment"]["train_steps"][1],
              "batch_size": RECIPE_CHANGES["assessment"]["batch_size"][1]}  # the assessment's cpu column
    assert {key: repr(value) for key, value in _train_reference().RECIPE.items()} == recipe
    assert {key: repr(value) for key, value in pretrained.CHECK.items()} == BEFORE["CHECK"]
    assert (repr(config.LESSON02), repr(config.OPTIMISED)) == (BEFORE["LESSON02"], BEFORE["OPTIMISED"])


def test_banner_says_which_budget_and_why(env):
    env.setenv("DLCOURSE_BUDGET", "cpu")
    assert "CPU budget (DLCOURSE_BUDGET=cpu)" in dlcourse.banner()
    env.setenv("DLCOURSE_BUDGET", "quick")
    assert "QUICK budget" in dlcourse.banner() and "not meaningful" in dlcourse.banner()

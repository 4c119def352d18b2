"""Lesson 04 support outside the notebook: its budget and the guided-sampling benchmark rows."""
from __future__ import annotations

import pytest
import torch

from dlcourse import benchmark
from dlcourse.config import BUDGETS

LESSON = "04_classifier_free_guidance"
TINY = benchmark.Settings(channels=(16, 32), image_size=16, T=10, batch_size=2, n_samples=3)


def test_budget_has_the_keys_the_notebook_reads_and_quick_is_smaller():
    sizes = BUDGETS[LESSON]
    for key in ("n_images", "image_size", "channels", "T", "train_steps", "batch_size", "n_samples", "n_test",
                "sampling_steps", "explorer_per_class", "timing_repeats"):
        assert key in sizes, key
    for key in ("n_images", "train_steps", "n_samples", "n_test", "sampling_steps", "T"):
        full, cpu, quick = sizes[key]
        assert quick <= cpu <= full, key
    # diversity needs two samples of a class: the sweep draws n_samples balanced over 5 classes
    assert min(sizes["n_samples"]) >= 10
    # DDIM needs steps <= T, and the U-Net halves the image once per level
    for (steps, T), (size, channels) in zip(zip(*(sizes["sampling_steps"], sizes["T"])),
                                            zip(sizes["image_size"], sizes["channels"])):
        assert steps <= T and size % 2 ** len(channels) == 0


@pytest.mark.parametrize("passes, calls_per_step", [("batched", 1), ("two", 2)])
def test_guided_sampling_row_counts_network_calls(passes, calls_per_step):
    result = benchmark.measure_guided_sampling(TINY, torch.device("cpu"), passes=passes, n_images=2, steps=3)
    assert result["network_calls"] == 3 * calls_per_step
    assert result["n_images"] == 2 and result["seconds"] > 0 and result["device"] == "cpu"


def test_guided_sampling_row_caps_n_images_and_rejects_unknown_passes():
    result = benchmark.measure_guided_sampling(TINY, torch.device("cpu"), passes="batched", n_images=50, steps=2)
    assert result["n_images"] == TINY.n_samples
    with pytest.raises(ValueError, match="passes"):
        benchmark.measure_guided_sampling(TINY, torch.device("cpu"), passes="three")


def test_cfg_rows_are_registered_in_pairs():
    rows = [row for row in benchmark.ROWS if row.kind == "guided_sampling"]
    assert "guided_sampling" in benchmark.MEASURES
    assert sorted(row.options["passes"] for row in rows) == ["batched", "batched", "two", "two"]
    assert all(row.name.startswith("CFG sampling") for row in rows)

"""Lesson 04 support outside the notebook: its budget (the guided-sampling rows: tests/test_benchmark.py)."""
from __future__ import annotations

from dlcourse.config import LESSONS

LESSON = "04_classifier_free_guidance"


def test_budget_has_the_keys_the_notebook_reads_and_quick_is_smaller():
    sizes = LESSONS[LESSON].columns()
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

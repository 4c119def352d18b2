"""No silent wrong results: [0, 1] images in the metrics, half-precision schedules, bad caches, NaN numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dlcourse import metrics
from dlcourse.data import CLASSES, cache, load_flowers
from dlcourse.guidance import apply_context_mask, cfg_eps, classifier_guided_eps_fn, context_mask
from dlcourse.schedules import Schedule, linear_betas
from dlcourse.widgets import GuidanceExplorer


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    return load_flowers("test", n=16, cache_dir=tmp_path_factory.mktemp("c"), progress=False)


def test_images_in_0_1_are_refused_by_the_metrics_with_the_fix(flowers):
    x01 = (flowers.images + 1) / 2
    with pytest.raises(ValueError, match=r"x: expected images in \[-1, 1\].*no negative value.*x \* 2 - 1"):
        metrics.class_accuracy(x01, flowers.labels)
    with pytest.raises(ValueError, match=r"x \* 2 - 1"):
        metrics.fid(x01, flowers.images)
    assert 0.0 <= metrics.class_accuracy(flowers.images, flowers.labels) <= 1.0  # [-1, 1] still accepted


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_schedule_is_refused(dtype):
    with pytest.raises(ValueError, match="dtype: expected torch.float32 or torch.float64"):
        Schedule(linear_betas(1000), dtype=dtype)


def test_a_float32_schedule_steps_half_precision_images_to_finite_values():
    schedule = Schedule(linear_betas(1000))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float16)
    t = torch.tensor([999, 0])
    out = schedule.ddpm_step(x, t, torch.randn_like(x), noise=torch.randn_like(x))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def _rewrite_cache(folder, transform):
    (path,) = folder.glob("flowers_*.npz")
    with np.load(path, allow_pickle=False) as f:
        arrays = dict(f)
    transform(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("transform", [
    lambda a: a.update(images=a["images"][:, :16, :16]),  # wrong image size, same fingerprint
    lambda a: a.update(labels=a["labels"] + 100),  # labels out of range
    lambda a: a.update(images=a["images"].astype(np.float32)),
], ids=["shape", "labels", "dtype"])
def test_a_cache_with_the_right_fingerprint_but_wrong_arrays_is_rebuilt(tmp_path, capsys, transform):
    first = load_flowers("test", n=6, cache_dir=tmp_path, progress=False)
    _rewrite_cache(tmp_path, transform)
    capsys.readouterr()
    again = load_flowers("test", n=6, cache_dir=tmp_path, progress=False)
    assert "rebuilding it" in capsys.readouterr().out
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    load_flowers("test", n=6, cache_dir=tmp_path, progress=False)  # not stuck: the rebuilt cache is used
    assert "rebuilding" not in capsys.readouterr().out


def test_a_read_only_folder_holding_a_valid_cache_is_used(tmp_path, monkeypatch):
    first = load_flowers("test", n=6, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(cache, "is_writable_dir", lambda folder: False)  # root ignores chmod: pretend instead
    monkeypatch.setattr("dlcourse.data.generate", lambda *a, **k: pytest.fail("the cache should be used"))
    assert torch.equal(load_flowers("test", n=6, cache_dir=tmp_path, progress=False).images, first.images)


def test_an_unwritable_cache_dir_without_a_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "is_writable_dir", lambda folder: False)
    with pytest.raises(ValueError, match="cache_dir: expected a folder this user can write to"):
        load_flowers("test", n=6, cache_dir=tmp_path, progress=False)


def test_no_writable_default_folder_draws_in_memory_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cache, "REPO_CACHE", tmp_path / "repo")
    monkeypatch.setattr(cache, "USER_CACHE", tmp_path / "home" / ".cache")
    monkeypatch.setattr(cache, "is_writable_dir", lambda folder: False)  # a read-only checkout and home
    ds = load_flowers("test", n=4, image_size=16, progress=False)
    assert ds.images.shape == (4, 3, 16, 16)
    assert "cannot write a cache" in capsys.readouterr().out


NOT_FINITE = [float("nan"), float("inf"), -float("inf"), np.float32("nan"), torch.tensor(float("nan"))]
REAL = [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), np.int64(1), 0.5]


@pytest.mark.parametrize("w", NOT_FINITE + [torch.tensor([0.0, float("inf")])], ids=repr)
def test_cfg_refuses_guidance_weights_that_are_not_finite(w):
    with pytest.raises(ValueError, match="w: expected"):
        cfg_eps(torch.zeros(2, 3), torch.ones(2, 3), w)


@pytest.mark.parametrize("w", REAL, ids=repr)
def test_cfg_accepts_any_real_number(w):
    out = cfg_eps(torch.zeros(2, 3), torch.ones(2, 3), w)
    torch.testing.assert_close(out, torch.full((2, 3), -float(w)))


@pytest.mark.parametrize("p", NOT_FINITE, ids=repr)
def test_drop_prob_must_be_a_finite_probability(p):
    with pytest.raises(ValueError, match="drop_prob: expected a probability"):
        context_mask(4, p)


@pytest.mark.parametrize("p", REAL[:4], ids=repr)
def test_drop_prob_accepts_numpy_scalars_and_0d_tensors(p):
    assert context_mask(4, p).shape == (4,)


@pytest.mark.parametrize("value", [0.5, 2.0, -1.0, float("nan")])
def test_a_context_mask_must_hold_only_0_and_1(value):
    with pytest.raises(ValueError, match="c_mask: expected values 0 .* or 1"):
        apply_context_mask(torch.ones(3, 4), torch.tensor([1.0, value, 0.0]))


@pytest.mark.parametrize("s", NOT_FINITE, ids=repr)
def test_classifier_guidance_scale_must_be_finite(s):
    schedule = Schedule(linear_betas(10))
    with pytest.raises(ValueError, match="scale: expected a finite real number"):
        classifier_guided_eps_fn(lambda x, t: x, lambda x, t: x, torch.tensor([0]), s, schedule)


def test_explorer_set_refuses_nan_and_accepts_numpy_numbers():
    images = {w: torch.zeros(len(CLASSES), 1, 3, 8, 8) for w in (0.0, 1.0, 2.0)}
    explorer = GuidanceExplorer(images, list(CLASSES))
    for bad in (float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="w: expected a finite real number"):
            explorer.set(w=bad)
    assert explorer.set(w=np.float32(1.9)).w == 2.0
    assert explorer.set(w=torch.tensor(0.2)).w == 0.0

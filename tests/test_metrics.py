"""dlcourse.metrics: the shipped evaluator, Fréchet distance, accuracy, diversity (no training here)."""
import json

import pytest
import torch

from dlcourse import metrics
from dlcourse.data import CLASSES, PETAL_COLOURS, load_flowers


@pytest.fixture(scope="module")
def evaluator():
    return metrics.load_evaluator("cpu")


@pytest.fixture(scope="module")
def fresh():
    """A sample the evaluator never saw: the test split drawn with a seed not used in training."""
    return load_flowers("test", n=300, seed=123)


def test_shipped_weights_are_small_and_described():
    assert metrics.WEIGHTS_FILE.stat().st_size < 5 * 2**20
    config = json.loads(metrics.CONFIG_FILE.read_text())
    assert config["classes"] == list(CLASSES)
    assert config["petal_colours"] == list(PETAL_COLOURS)
    assert config["test_accuracy"]["class"] >= 0.98
    for key in ("fid_floor_train_vs_test", "fid_bad_generators", "diversity_real_test"):
        assert key in config["reference"]


def test_load_is_cached(evaluator):
    assert metrics.load_evaluator("cpu") is evaluator


def test_judges_both_course_resolutions(evaluator):
    """Trained on 32- and 16-px flowers (issue 19: real 16-px test images at ≥ 97 %), and it says so."""
    config = json.loads(metrics.CONFIG_FILE.read_text())
    assert config["data"]["train"]["sizes"] == [32, 16]
    by_size = config["test_accuracy"]["by_size"]
    assert by_size["16"]["class"] >= 0.97 and by_size["32"]["class"] >= 0.98
    floors = config["reference"]["fid_floor_by_size"]
    assert set(floors) == {"32", "16"} and all(0 < floors[s]["500"] < floors[s]["100"] for s in floors)
    small = load_flowers("test", image_size=16, n=300, seed=123)  # a seed the evaluator never saw
    assert metrics.class_accuracy(small.images, small.labels, evaluator) >= 0.97


def test_classifies_a_fresh_sample(evaluator, fresh):
    assert metrics.class_accuracy(fresh.images, fresh.labels, evaluator) >= 0.97
    colours = [a["petal_colour"] for a in fresh.attributes]
    reported = evaluator.config["test_accuracy"]["petal_colour"]
    assert metrics.colour_accuracy(fresh.images, colours, evaluator) >= reported - 0.05
    per_class = metrics.per_class_accuracy(fresh.images, fresh.labels, evaluator)
    assert set(per_class) == {CLASSES[k] for k in fresh.labels.unique().tolist()}
    assert min(per_class.values()) >= 0.9


def test_shapes_dtypes_and_batching(evaluator, fresh):
    x = fresh.images[:10]
    feats = evaluator.features(x)
    assert feats.shape == (10, evaluator.feature_dim)
    assert torch.allclose(evaluator.features(x, batch_size=3), feats, atol=1e-5)
    class_logits, colour_logits = evaluator.logits(x)
    assert class_logits.shape == (10, len(CLASSES)) and colour_logits.shape == (10, len(PETAL_COLOURS))
    c, p = evaluator.predict(x)
    assert c.dtype == torch.long and p.dtype == torch.long and c.shape == p.shape == (10,)
    assert torch.equal(c, class_logits.argmax(1))


def test_other_sizes_are_resized(evaluator, fresh):
    x = fresh.images[:50]
    big = torch.nn.functional.interpolate(x, size=(64, 64), mode="nearest")
    agree = (evaluator.predict(big)[0] == evaluator.predict(x)[0]).float().mean()
    assert agree >= 0.9


def test_frechet_distance_closed_form_diagonal():
    g = torch.Generator().manual_seed(0)
    n, d = 200_000, 4
    mu_a, mu_b = torch.tensor([0.0, 1.0, -1.0, 2.0]), torch.tensor([0.5, 1.0, 0.0, 2.0])
    s_a, s_b = torch.tensor([1.0, 2.0, 0.5, 1.0]), torch.tensor([1.5, 1.0, 0.5, 3.0])
    a = mu_a + s_a * torch.randn(n, d, generator=g, dtype=torch.float64)
    b = mu_b + s_b * torch.randn(n, d, generator=g, dtype=torch.float64)
    expected = float((mu_a - mu_b).square().sum() + (s_a - s_b).square().sum())  # 1.25 + 5.25 = 6.5
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, abs=0.06)


def test_frechet_distance_exact_for_sample_moments():
    """With the samples' own moments the formula is exact: shift one set, rescale the other."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(500, 8, generator=g, dtype=torch.float64)
    shift = torch.arange(8, dtype=torch.float64)
    assert metrics.frechet_distance(a, a + shift) == pytest.approx(float(shift.square().sum()), rel=1e-9)
    # Σ_b = 4 Σ_a  →  Tr(Σ_a + 4Σ_a − 2·2Σ_a) = Tr Σ_a
    trace = float(torch.cov(a.T).trace())
    assert metrics.frechet_distance(a, 2 * a) == pytest.approx(trace + float(a.mean(0).square().sum()), rel=1e-6)


def test_fid_with_itself_is_zero_and_grows_with_noise(evaluator, fresh):
    x = fresh.images[:200]
    assert metrics.fid(x, x, evaluator) == pytest.approx(0.0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    values = [metrics.fid((x + s * noise).clamp(-1, 1), x, evaluator) for s in (0.0, 0.1, 0.3, 0.6)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_diversity(evaluator, fresh):
    x, y = fresh.images[:100], fresh.labels[:100]
    same = x[:1].expand(20, -1, -1, -1).clone()
    assert metrics.diversity(same, torch.zeros(20, dtype=torch.long), evaluator) == pytest.approx(0.0, abs=1e-6)
    assert metrics.diversity(x, y, evaluator) > 0.1


def test_bad_inputs_teach(evaluator, fresh):
    x = fresh.images[:4]
    with pytest.raises(ValueError, match=r"x: expected images in \[-1, 1\].*x \* 2 - 1"):
        evaluator.features(x * 127.5 + 127.5)
    with pytest.raises(ValueError, match="x: expected .*4 dims"):
        evaluator.features(x[0])
    with pytest.raises(ValueError, match="3 channels"):
        evaluator.features(x[:, :1])
    with pytest.raises(ValueError, match="at least one image"):
        evaluator.features(x[:0])
    with pytest.raises(ValueError, match="finite"):
        evaluator.features(torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="feats_a: expected at least 2"):
        metrics.frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="feats_b: expected the same feature dimension"):
        metrics.frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="labels: expected shape"):
        metrics.class_accuracy(x, torch.zeros(3, dtype=torch.long), evaluator)
    with pytest.raises(ValueError, match=r"labels: expected indices in \[0, 5\)"):
        metrics.class_accuracy(x, torch.full((4,), 7), evaluator)
    with pytest.raises(ValueError, match="colours: expected names"):
        metrics.colour_accuracy(x, ["green"] * 4, evaluator)
    with pytest.raises(ValueError, match="evaluator: expected"):
        metrics.fid(x, x, evaluator="inception")


def test_images_in_0_1_are_refused_by_the_metrics_with_the_fix(fresh):
    x, labels = fresh.images[:16], fresh.labels[:16]
    x01 = (x + 1) / 2
    with pytest.raises(ValueError, match=r"x: expected images in \[-1, 1\].*no negative value.*x \* 2 - 1"):
        metrics.class_accuracy(x01, labels)
    with pytest.raises(ValueError, match=r"x \* 2 - 1"):
        metrics.fid(x01, x)
    assert 0.0 <= metrics.class_accuracy(x, labels) <= 1.0  # [-1, 1] still accepted


def test_neighbour_rms_matches_closed_forms():
    flat = torch.full((1, 1, 2, 5), 0.3)
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., 1::2] = 1.0  # columns 0,1,0,1: every horizontal difference is ±1
    ramp = torch.arange(5.0).repeat(1, 1, 2, 1) / 10  # each step 0.1
    rms = metrics.neighbour_rms(torch.cat([flat, ramp]))
    assert rms.tolist() == pytest.approx([0.0, 0.1])
    assert metrics.neighbour_rms(stripes).item() == pytest.approx(1.0)
    noise = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert metrics.neighbour_rms(noise).mean().item() == pytest.approx(2 ** 0.5, rel=0.02)


def test_noise_like_counts_images_rougher_than_every_real_one():
    g = torch.Generator().manual_seed(0)
    real = torch.linspace(-1, 1, 16).repeat(6, 3, 16, 1)  # smooth ramps
    smooth = real[:3] * 0.5
    noisy = (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1)
    assert metrics.noise_like(torch.cat([smooth, noisy]), real) == 2
    assert metrics.noise_like(real, real) == 0  # the roughest real image is not rougher than itself
    with pytest.raises(ValueError, match="x"):
        metrics.noise_like(torch.zeros(3, 16, 16), real)
    with pytest.raises(ValueError, match="real"):
        metrics.noise_like(real, [0.5])

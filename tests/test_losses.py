"""dlcourse.losses and Schedule.convert against closed forms."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlcourse.losses import (diffusion_loss, flow_interpolant, flow_time, flow_velocity, min_snr_weight,
                             prediction_target)
from dlcourse.schedules import PREDICTIONS, Schedule, cosine_betas

# ᾱ = (0.9, 0.5, 0.1): β_0 = 0.1, β_1 = 1 − 0.5/0.9, β_2 = 1 − 0.1/0.5; SNR = (9, 1, 1/9)
ALPHA_BARS = (0.9, 0.5, 0.1)


@pytest.fixture
def three():
    return Schedule(torch.tensor([0.1, 1 - 0.5 / 0.9, 0.8], dtype=torch.float64), dtype=torch.float64)


def batch(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, 3, 3, generator=g, dtype=torch.float64)
    return x0, torch.randn(n, 2, 3, 3, generator=g, dtype=torch.float64), torch.arange(n) % 3


def truth(schedule, x0, eps, t):
    """The three predictions a perfect network would make at x_t = q_sample(x0, t, eps)."""
    return {"eps": eps, "x0": x0, "v": prediction_target(schedule, x0, eps, t, "v")}


def test_schedule_of_the_tests(three):
    assert torch.allclose(three.alpha_bars, torch.tensor(ALPHA_BARS, dtype=torch.float64))
    assert torch.allclose(three.snr, torch.tensor([9.0, 1.0, 1 / 9], dtype=torch.float64))


def test_v_target_on_known_numbers(three):
    x0 = torch.tensor([[0.5], [0.5], [0.5]], dtype=torch.float64)
    eps = torch.tensor([[-1.0], [-1.0], [-1.0]], dtype=torch.float64)
    v = prediction_target(three, x0, eps, torch.tensor([0, 1, 2]), "v")
    expected = [math.sqrt(a) * -1.0 - math.sqrt(1 - a) * 0.5 for a in ALPHA_BARS]
    assert v.flatten().tolist() == pytest.approx(expected, abs=1e-12)
    assert prediction_target(three, x0, eps, torch.tensor([0, 1, 2]), "eps") is eps
    assert prediction_target(three, x0, eps, torch.tensor([0, 1, 2]), "x0") is x0


@pytest.mark.parametrize("source", PREDICTIONS)
@pytest.mark.parametrize("target", PREDICTIONS)
def test_convert_every_pair_recovers_the_truth(three, source, target):
    x0, eps, t = batch()
    x_t = three.q_sample(x0, t, eps)
    exact = truth(three, x0, eps, t)
    assert torch.allclose(three.convert(x_t, t, exact[source], source, target), exact[target], atol=1e-12)


def test_convert_round_trips_an_arbitrary_output(three):
    x0, eps, t = batch(seed=1)
    x_t = three.q_sample(x0, t, eps)
    out = torch.randn_like(x_t)  # not the truth: a round trip must still give it back
    for a in PREDICTIONS:
        for b in PREDICTIONS:
            back = three.convert(x_t, t, three.convert(x_t, t, out, a, b), b, a)
            assert torch.allclose(back, out, atol=1e-12)


def test_convert_from_v_by_hand(three):
    x_t, v = torch.tensor([[2.0]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)
    t = torch.tensor([1])
    r = math.sqrt(0.5)  # ᾱ_1 = 0.5: a = b = 1/√2
    assert three.convert(x_t, t, v, "v", "eps").item() == pytest.approx(r * 2 + r * 1)
    assert three.convert(x_t, t, v, "v", "x0").item() == pytest.approx(r * 2 - r * 1)


def test_convert_rejects_unknown_predictions(three):
    x0, eps, t = batch()
    with pytest.raises(ValueError, match="source: expected 'eps'"):
        three.convert(x0, t, eps, "noise", "x0")
    with pytest.raises(ValueError, match="target: expected 'eps'"):
        three.convert(x0, t, eps, "eps", "velocity")


def test_min_snr_weights_by_hand():
    snr = torch.tensor([0.5, 5.0, 20.0], dtype=torch.float64)
    assert min_snr_weight(snr, 5.0, "eps").tolist() == pytest.approx([1.0, 1.0, 0.25])
    assert min_snr_weight(snr, 5.0, "v").tolist() == pytest.approx([0.5 / 1.5, 5 / 6, 5 / 21])
    assert min_snr_weight(snr, 5.0, "x0").tolist() == pytest.approx([0.5, 5.0, 5.0])
    with pytest.raises(ValueError, match="gamma: expected"):
        min_snr_weight(snr, 0.0)
    with pytest.raises(ValueError, match="prediction: expected"):
        min_snr_weight(snr, 5.0, "flow")


def test_min_snr_weighting_is_one_loss_whatever_the_prediction(three):
    """w_ε‖ε − ε̂‖² = w_v‖v − v̂‖² = w_x0‖x_0 − x̂_0‖² per sample, for one (imperfect) network output."""
    x0, eps, t = batch(n=6, seed=2)
    x_t = three.q_sample(x0, t, eps)
    x0_hat = x0 + 0.3 * torch.randn_like(x0)
    exact = truth(three, x0, eps, t)
    snr = three.snr[t]
    losses = []
    for p in PREDICTIONS:
        err = (three.convert(x_t, t, x0_hat, "x0", p) - exact[p]).pow(2).flatten(1).mean(1)
        losses.append(min_snr_weight(snr, 2.0, p) * err)
    assert torch.allclose(losses[0], losses[1]) and torch.allclose(losses[0], losses[2])


@pytest.mark.parametrize("prediction, weighting", [*((p, w) for p in PREDICTIONS for w in ("uniform", "min_snr")),
                                                    ("flow", "uniform")])
def test_a_model_that_returns_the_exact_target_has_zero_loss(three, prediction, weighting):
    x0, eps, t = batch(n=5, seed=3)
    exact = {**truth(three, x0, eps, t), "flow": eps - x0}

    def oracle(x_t, tt):
        assert torch.equal(tt, t)
        if prediction == "flow":
            assert torch.allclose(x_t, flow_interpolant(x0, eps, (t + 1) / 3))
        else:
            assert torch.allclose(x_t, three.q_sample(x0, t, eps))
        return exact[prediction]

    assert diffusion_loss(oracle, x0, t, three, eps, prediction=prediction, weighting=weighting).item() == 0.0
    shifted = diffusion_loss(lambda x, tt: exact[prediction] + 0.5, x0, t, three, eps, prediction=prediction,
                             weighting=weighting)
    weights = min_snr_weight(three.snr[t], 5.0, prediction) if weighting == "min_snr" else torch.ones(5)
    assert shifted.item() == pytest.approx(0.25 * weights.mean().item())  # every error is 0.5


def test_uniform_eps_loss_is_the_lessons_mse(three):
    """The ε-loss the lessons write: F.mse_loss(model(q_sample(x0, t, ε), t), ε), also with t and ε drawn inside."""
    x0, _, _ = batch(n=4, seed=4)
    x0 = x0.float()
    schedule = Schedule(cosine_betas(50))
    net = torch.nn.Conv2d(2, 2, 1)
    model = lambda x, t: net(x) * (1 + t.float()[:, None, None, None] / 50)  # noqa: E731
    torch.manual_seed(7)
    t = torch.randint(0, schedule.T, (4,))
    noise = torch.randn_like(x0)
    by_hand = F.mse_loss(model(schedule.q_sample(x0, t, noise), t), noise)
    torch.manual_seed(7)
    assert torch.equal(diffusion_loss(model, x0, None, schedule), by_hand)
    assert torch.equal(diffusion_loss(model, x0, t, schedule, noise), by_hand)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(diffusion_loss(model, x0, None, schedule, generator=g1),
                       diffusion_loss(model, x0, None, schedule, generator=g2))


def test_min_snr_loss_weights_each_sample(three):
    x0, eps, t = batch(n=3, seed=5)
    errors = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).reshape(3, 1, 1, 1)
    model = lambda x, tt: eps + errors  # noqa: E731  per-sample squared errors 0.01, 0.04, 0.09
    loss = diffusion_loss(model, x0, t, three, eps, weighting="min_snr", gamma=1.0)
    # SNR = 9, 1, 1/9 at t = 0, 1, 2; γ = 1: w_ε = 1/9, 1, 1
    assert loss.item() == pytest.approx((0.01 / 9 + 0.04 + 0.09) / 3)


def test_flow_path_and_velocity():
    x0, eps, _ = batch(n=3, seed=6)
    assert flow_time(torch.tensor([0, 1, 3]), 4).tolist() == [0.25, 0.5, 1.0]
    ones, zeros = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    assert torch.equal(flow_interpolant(x0, eps, zeros), x0) and torch.equal(flow_interpolant(x0, eps, ones), eps)
    s1, s2 = torch.full((3,), 0.2, dtype=torch.float64), torch.full((3,), 0.7, dtype=torch.float64)
    slope = (flow_interpolant(x0, eps, s2) - flow_interpolant(x0, eps, s1)) / 0.5
    assert torch.allclose(slope, flow_velocity(x0, eps), atol=1e-12)


def test_diffusion_loss_errors(three):
    x0, eps, t = batch()
    model = lambda x, tt: x  # noqa: E731
    with pytest.raises(ValueError, match="prediction: expected 'eps', 'x0', 'v' or 'flow'"):
        diffusion_loss(model, x0, t, three, prediction="score")
    with pytest.raises(ValueError, match="weighting: expected 'uniform' or 'min_snr'"):
        diffusion_loss(model, x0, t, three, weighting="snr")
    with pytest.raises(ValueError, match="weighting: expected 'uniform' with prediction='flow'"):
        diffusion_loss(model, x0, t, three, prediction="flow", weighting="min_snr")
    with pytest.raises(ValueError, match=r"t: expected timesteps in \[0, 2\]"):
        diffusion_loss(model, x0, t + 1, three)
    with pytest.raises(ValueError, match="model\\(x_t, t\\): expected a tensor of the shape of x0"):
        diffusion_loss(lambda x, tt: x[:, :1], x0, t, three)
    with pytest.raises(ValueError, match="schedule: expected a dlcourse.schedules.Schedule"):
        diffusion_loss(model, x0, t, "linear")

"""dlcourse.checks.check_contrastive_loss: passes the right answer, names each usual slip."""
import pytest
import torch
import torch.nn.functional as F

from dlcourse.checks import check_contrastive_loss
from dlcourse.clip import contrastive_loss


def _parts(f, g, s):
    f, g = F.normalize(f, dim=-1), F.normalize(g, dim=-1)
    return s * f @ g.T, torch.arange(f.shape[0])


def one_direction(f, g, s):
    logits, labels = _parts(f, g, s)
    return F.cross_entropy(logits, labels)


def other_direction(f, g, s):
    logits, labels = _parts(f, g, s)
    return F.cross_entropy(logits.T, labels)


def unnormalised(f, g, s):
    logits, labels = s * f @ g.T, torch.arange(f.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def divided_by_scale(f, g, s):
    logits, labels = _parts(f, g, 1.0)
    logits = logits / s
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def no_temperature(f, g, s):
    return contrastive_loss(f, g, 1.0)


def zero_labels(f, g, s):
    logits, labels = _parts(f, g, s)
    labels = torch.zeros_like(labels)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def summed(f, g, s):
    return 2 * contrastive_loss(f, g, s)


def per_pair(f, g, s):
    logits, labels = _parts(f, g, s)
    return (F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.T, labels, reduction="none")) / 2


def test_the_reference_passes(capsys):
    result = check_contrastive_loss(contrastive_loss)
    assert result.passed and result.n_inputs == 4
    assert capsys.readouterr().out.startswith("✅ contrastive_loss")


@pytest.mark.parametrize("wrong, hint", [
    (one_direction, "only the image → text direction"),
    (other_direction, "only the text → image direction"),
    (unnormalised, "not L2-normalised"),
    (divided_by_scale, "temperature is applied the wrong way"),
    (no_temperature, "temperature is missing"),
    (zero_labels, r"labels must be torch.arange\(N\)"),
    (summed, "MEAN of the two cross-entropies"),
    (per_pair, "return one number for the batch"),
])
def test_each_slip_gets_its_hint(wrong, hint):
    with pytest.raises(AssertionError, match=rf"❌ contrastive_loss: [^\n]*{hint}"):
        check_contrastive_loss(wrong)


def test_placeholder_and_wrong_argument():
    def placeholder(f, g, s):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="fill in the exercise first"):
        check_contrastive_loss(placeholder)
    with pytest.raises(ValueError, match="fn: expected your contrastive_loss function"):
        check_contrastive_loss("loss")

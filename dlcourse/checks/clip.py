"""Self-checks for lesson 05 (CLIP): the symmetric contrastive (InfoNCE) loss."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from dlcourse.clip import contrastive_loss
from dlcourse.validation import describe, fail

from .core import CheckResult, Slip, compare

__all__ = ["check_contrastive_loss", "contrastive_slips"]


def contrastive_slips(image_features, text_features, logit_scale) -> list[Slip]:
    """The loss as the usual mistakes compute it, each with the hint that names the mistake."""
    f, g = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
    n = f.shape[0]
    labels = torch.arange(n, device=f.device)
    logits = logit_scale * f @ g.T
    raw = logit_scale * image_features @ text_features.T
    return [
        Slip("only the image → text direction is there: average CE(S, labels) with CE(Sᵀ, labels), the text → image "
             "direction.", lambda: F.cross_entropy(logits, labels)),
        Slip("only the text → image direction is there: average CE(Sᵀ, labels) with CE(S, labels) as well.",
             lambda: F.cross_entropy(logits.T, labels)),
        Slip("the features are not L2-normalised: divide each row by its norm (F.normalize(x, dim=-1)) before the "
             "dot products, so S holds cosine similarities.",
             lambda: _symmetric(raw, labels)),
        Slip("the temperature is applied the wrong way: logit_scale is s = 1/τ, so MULTIPLY the cosine similarities "
             "by it (dividing by s multiplies by τ and flattens the softmax).",
             lambda: _symmetric(f @ g.T / logit_scale, labels)),
        Slip("the temperature is missing: multiply the cosine similarities by logit_scale.",
             lambda: _symmetric(f @ g.T, labels)),
        Slip("the labels must be torch.arange(N): pair i matches pair i, so the right answer of row i is column i "
             "(not class 0, and not the flowers' class labels).",
             lambda: _symmetric(logits, torch.zeros_like(labels))),
        Slip("the loss should be the MEAN of the two cross-entropies (½ of their sum), not their sum.",
             lambda: F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)),
        Slip("logit_scale is already the scale s = 1/τ: multiply by it, do not exponentiate it (TinyCLIP.scale() "
             "has done the exp).",
             lambda: _symmetric(torch.exp(torch.as_tensor(logit_scale)) * f @ g.T, labels)),
        Slip("the features are normalised along the batch (dim=0); normalise each ROW, F.normalize(x, dim=-1).",
             lambda: _symmetric(logit_scale * F.normalize(image_features, dim=0) @ F.normalize(text_features, dim=0).T,
                                labels)),
    ]


def _symmetric(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """½ (CE(S, labels) + CE(Sᵀ, labels))."""
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def check_contrastive_loss(fn: Callable) -> CheckResult:
    """``fn(image_features (N, D), text_features (N, D), logit_scale) -> scalar``: the symmetric InfoNCE
    loss on unnormalised features, compared with ``dlcourse.clip.contrastive_loss``."""
    if not callable(fn):
        raise fail("fn", "your contrastive_loss function", describe(fn))

    def diagnose(student_out, reference_out, args):
        if isinstance(student_out, torch.Tensor) and student_out.numel() != 1:
            return "return one number for the batch (a 0-d tensor): the mean of the two cross-entropies."
        return None

    g = torch.Generator().manual_seed(5)
    inputs = []
    for n, d, scale in ((3, 4, 10.0), (8, 16, 14.3), (5, 2, 2.0)):
        image = 3 * torch.randn(n, d, generator=g) + 1
        text = 0.5 * torch.randn(n, d, generator=g) - 0.2
        inputs.append((image, text, scale))
    # and a tensor logit_scale, as TinyCLIP.scale() returns one
    inputs.append((torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.tensor(7.0)))
    return compare(fn, contrastive_loss, inputs, name="contrastive_loss", diagnose=diagnose,
                   slips=lambda args: contrastive_slips(*args), atol=1e-5, rtol=1e-4)

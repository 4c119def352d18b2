"""The model part: read a student's model strictly, sample it here with fixed seeds, score the samples.

Reading never runs student code and never unpickles: the library's reader (``dlcourse.models.load_model``)
checks ``config.json`` and ``model.safetensors`` under the assessment's ``MODEL_LIMITS`` (an allow-list of
architectures, argument limits, size caps, dtypes, shapes, offsets, finite weights) before anything is
built. Sampling uses the package's DDIM sampler and batched guidance at the student's w; the evaluator
scores class and petal-colour accuracy, per-class accuracy, FID against test flowers, diversity, and flags
samples that are near-copies of training images.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .assessment import ANSWERS_FILE, MODEL_LIMITS, PAIRS, W_RANGE, assessment_schedule, flower_context
from ..data import load_flowers
from ..guidance import guided_eps_fn
from ..metrics import class_accuracy, colour_accuracy, diversity, fid, load_evaluator, per_class_accuracy
from ..models.registry import CONFIG_FILE, WEIGHTS_FILE, count_parameters, load_model
from ..sampling import ddim_sample
from .exercises import SubmissionError
from ..validation import is_real

CONFIG_CAP = MODEL_LIMITS.config_bytes


# ------------------------------------------------------------------ reading
def load_submission_model(folder: Path) -> nn.Module:
    """The student's model, read by the library's reader under the assessment's ``MODEL_LIMITS``
    (eval mode, CPU, no gradients); a refusal becomes a SubmissionError naming the file, not its path."""
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise SubmissionError(f"{name}: missing (save the model with dlcourse.grading.assessment.export)")
    try:
        model = load_model(folder, limits=MODEL_LIMITS)
    except ValueError as error:  # the reader names files by their path; the student knows them by name
        raise SubmissionError(str(error).replace(f"{folder}{os.sep}", "")) from None
    return model.requires_grad_(False)


def read_w(folder: Path) -> float:
    """The student's guidance weight from answers.json."""
    path = folder / ANSWERS_FILE
    if not path.is_file() or path.stat().st_size > CONFIG_CAP:
        raise SubmissionError(f"{ANSWERS_FILE}: missing or over {CONFIG_CAP} bytes (export again)")
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SubmissionError(f"{ANSWERS_FILE}: not valid JSON ({error})") from None
    w = answers.get("w") if isinstance(answers, dict) else None
    if not is_real(w) or not W_RANGE[0] <= w <= W_RANGE[1]:
        raise SubmissionError(f"{ANSWERS_FILE}: w must be a number in [{W_RANGE[0]:g}, {W_RANGE[1]:g}], "
                              f"got {str(w)[:40]}")
    return float(w)


# ------------------------------------------------------------------ scoring
class SamplingTimeout(Exception):
    """The model's sampling ran past its time limit."""


class UnscorableSamples(Exception):
    """The model's samples are NaN or infinite (the model overflows)."""


def sampling_compute(model: nn.Module, steps: int) -> int:
    """The compute cap's measure of sampling ``model``: parameters × pixels × DDIM steps."""
    return count_parameters(model) * model.config["image_size"] ** 2 * min(steps, model.config["T"])


@dataclass
class ModelScore:
    class_accuracy: float
    colour_accuracy: float
    per_class: dict[str, float]
    fid: float
    diversity: float
    copy_fraction: float
    samples: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    colours: torch.Tensor = field(repr=False)


@dataclass
class ScoringData:
    """Evaluator features of the training and test flowers, computed once per batch."""

    train_features: torch.Tensor
    test_images: torch.Tensor


def scoring_data(n_train: int, n_test: int, image_size: int = 32) -> ScoringData:
    """Features of the first ``n_train`` training flowers (near-copy check) and ``n_test`` test flowers (FID),
    drawn at ``image_size`` px: samples are compared with real images of their own size."""
    evaluator = load_evaluator()
    train = load_flowers("train", image_size=image_size, n=n_train, progress=False).images
    test = load_flowers("test", image_size=image_size, n=n_test, progress=False).images
    return ScoringData(evaluator.features(train), test)


def copy_fraction(samples: torch.Tensor, data: ScoringData, threshold: float) -> float:
    """Fraction of samples whose nearest training image (evaluator feature space) is closer than
    ``threshold`` times the median nearest-neighbour distance between training images."""
    evaluator = load_evaluator()
    train = data.train_features.double()
    between = torch.cdist(train, train)
    between.fill_diagonal_(float("inf"))
    typical = between.min(dim=1).values.median()
    nearest = torch.cdist(evaluator.features(samples).double(), train).min(dim=1).values
    return float((nearest < threshold * typical).double().mean())


def sample_model(model: nn.Module, w: float, n_per_pair: int, steps: int, seed: int, device="cpu",
                 time_limit: float | None = None) -> tuple:
    """(images in [−1, 1], class labels, colour labels): ``n_per_pair`` per (class, colour) pair,
    DDIM with ``steps`` steps (at most T), η = 0, x̂₀ clipped, batched guidance at ``w``, from ``seed``
    (noise drawn on the CPU, so every device starts from the same x_T); the model runs on ``device``.
    SamplingTimeout when a step starts after ``time_limit`` seconds."""
    labels = torch.tensor([k for k, _ in PAIRS for _ in range(n_per_pair)])
    colours = torch.tensor([c for _, c in PAIRS for _ in range(n_per_pair)])
    size = model.config["image_size"]
    schedule = assessment_schedule(model.config["T"]).to(device)
    generator = torch.Generator().manual_seed(seed)
    guided = guided_eps_fn(model.to(device), flower_context(labels, colours).to(device), w)
    deadline = None if time_limit is None else time.monotonic() + time_limit

    def eps_fn(x_t, t):
        if deadline is not None and time.monotonic() > deadline:
            raise SamplingTimeout(f"sampling the model ran past the {time_limit:g} s limit")
        return guided(x_t, t)

    x = ddim_sample(eps_fn, schedule, (len(labels), 3, size, size), steps=min(steps, schedule.T), generator=generator,
                    device=device, progress=False)
    return x.cpu().clamp(-1, 1), labels, colours


def score_model(model: nn.Module, w: float, *, n_per_pair: int, steps: int, seed: int, data: ScoringData,
                copy_threshold: float, device="cpu", time_limit: float | None = None) -> ModelScore:
    """Sample ``model`` on ``device`` (SamplingTimeout past ``time_limit`` s) and score the samples with
    the evaluator (on the CPU); UnscorableSamples when they are not finite."""
    x, labels, colours = sample_model(model, w, n_per_pair, steps, seed, device, time_limit)
    if not torch.isfinite(x).all():
        raise UnscorableSamples("the model's samples are NaN or inf (its outputs overflow)")
    evaluator = load_evaluator()
    return ModelScore(
        class_accuracy=class_accuracy(x, labels, evaluator),
        colour_accuracy=colour_accuracy(x, colours, evaluator),
        per_class=per_class_accuracy(x, labels, evaluator),
        fid=fid(x, data.test_images, evaluator),
        diversity=diversity(x, labels, evaluator),
        copy_fraction=copy_fraction(x, data, copy_threshold),
        samples=x, labels=labels, colours=colours,
    )

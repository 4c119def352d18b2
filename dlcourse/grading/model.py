"""The model part: read a student's model strictly, sample it here with fixed seeds, score the samples.

Reading never runs student code and never unpickles: ``config.json`` is size-capped JSON checked
against an allow-list of architectures and argument limits before anything is built; the
safetensors header is size-capped and checked (dtypes, shapes, offsets) before the weights are read;
NaN/inf weights are rejected. Sampling uses the package's DDIM sampler and batched guidance at the
student's w; the evaluator scores class and petal-colour accuracy, per-class accuracy, FID against
test flowers, diversity, and flags samples that are near-copies of training images.
"""
from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from .assessment import ANSWERS_FILE, CONTEXT_DIM, PAIRS, W_RANGE, assessment_schedule, flower_context
from ..data import load_flowers
from ..guidance import guided_eps_fn
from ..metrics import class_accuracy, colour_accuracy, diversity, fid, load_evaluator, per_class_accuracy
from ..models.registry import CONFIG_FILE, WEIGHTS_FILE, build, count_parameters, registered
from ..sampling import ddim_sample
from .exercises import SubmissionError
from ..validation import is_int, is_real

ALLOWED_ARCHITECTURES = ("cond_unet",)
CONFIG_CAP = 64 * 2**10
HEADER_CAP = 1 * 2**20
WEIGHTS_CAP = 64 * 2**20
MAX_PARAMETERS = 10_000_000
MAX_WIDTH, MAX_LEVELS = 512, 4
IMAGE_SIZES = (16, 32)
T_RANGE = (10, 1000)
_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}


# ------------------------------------------------------------------ reading
def _int_in(config: dict, key: str, low: int, high: int) -> None:
    value = config.get(key)
    if not is_int(value, low) or value > high:
        raise SubmissionError(f"{CONFIG_FILE}: {key} must be an int in [{low}, {high}], got {str(value)[:40]}")


def read_config(path: Path) -> dict:
    """The student's config.json, checked against the assessment's allow-list and limits."""
    if not path.is_file():
        raise SubmissionError(f"{CONFIG_FILE}: missing (save the model with dlcourse.grading.assessment.export)")
    if path.stat().st_size > CONFIG_CAP:
        raise SubmissionError(f"{CONFIG_FILE}: {path.stat().st_size} bytes, over the {CONFIG_CAP} byte cap")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SubmissionError(f"{CONFIG_FILE}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise SubmissionError(f"{CONFIG_FILE}: expected a JSON object, got {type(config).__name__}")
    name = config.get("name")
    if name not in ALLOWED_ARCHITECTURES or name not in registered():
        raise SubmissionError(f"{CONFIG_FILE}: architecture {str(name)[:40]!r} is not accepted "
                              f"(use one of {list(ALLOWED_ARCHITECTURES)}: ConditionalUNet)")
    channels = config.get("channels")
    if (not isinstance(channels, list) or not 1 <= len(channels) <= MAX_LEVELS
            or not all(is_int(c, 1) and c <= MAX_WIDTH for c in channels)):
        raise SubmissionError(f"{CONFIG_FILE}: channels must be a list of 1..{MAX_LEVELS} ints in "
                              f"[1, {MAX_WIDTH}], got {str(channels)[:60]}")
    _int_in(config, "T", *T_RANGE)
    _int_in(config, "context_dim", CONTEXT_DIM, CONTEXT_DIM)
    _int_in(config, "image_channels", 3, 3)
    if config.get("image_size") not in IMAGE_SIZES:
        raise SubmissionError(f"{CONFIG_FILE}: image_size must be one of {IMAGE_SIZES}, "
                              f"got {str(config.get('image_size'))[:40]}")
    for key, value in config.items():
        if isinstance(value, str) and len(value) > 40:
            raise SubmissionError(f"{CONFIG_FILE}: {key} is a {len(value)}-character string (at most 40)")
    return config


def read_weights(path: Path) -> tuple[bytes, dict]:
    """The safetensors file's bytes and header {name: {dtype, shape, data_offsets}}, the header checked
    (size cap, dtypes, shapes, offsets) before any weight is parsed. Read once, by bytes, so the file
    cannot change between the check and the load, and any file name works."""
    if not path.is_file():
        raise SubmissionError(f"{WEIGHTS_FILE}: missing (save the model with dlcourse.grading.assessment.export)")
    size = path.stat().st_size
    if size > WEIGHTS_CAP:
        raise SubmissionError(f"{WEIGHTS_FILE}: {size} bytes, over the {WEIGHTS_CAP} byte cap")
    with open(path, "rb") as f:
        data = f.read(WEIGHTS_CAP + 1)
    size = len(data)
    if size < 8:
        raise SubmissionError(f"{WEIGHTS_FILE}: {size} bytes, too short to be a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > HEADER_CAP or 8 + n > size:
        raise SubmissionError(f"{WEIGHTS_FILE}: header length {n} is over the cap ({HEADER_CAP}) or past "
                              f"the end of the {size}-byte file (not a safetensors file, or truncated)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SubmissionError(f"{WEIGHTS_FILE}: header is not JSON (not a safetensors file: "
                              "save with dlcourse.grading.assessment.export, never torch.save)") from None
    if not isinstance(header, dict):
        raise SubmissionError(f"{WEIGHTS_FILE}: header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    end = 0
    for key, entry in header.items():
        ok = (isinstance(entry, dict) and entry.get("dtype") in _DTYPES and isinstance(entry.get("shape"), list)
              and all(is_int(d, 0) and d <= 2**20 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2)
        if not ok:
            raise SubmissionError(f"{WEIGHTS_FILE}: tensor {key[:60]!r} has a malformed entry "
                                  f"(dtype must be one of {sorted(_DTYPES)})")
        begin, stop = entry["data_offsets"]
        count = math.prod(entry["shape"])
        if not (isinstance(begin, int) and isinstance(stop, int) and 0 <= begin <= stop <= data_size
                and stop - begin == count * _DTYPES[entry["dtype"]]):
            raise SubmissionError(f"{WEIGHTS_FILE}: tensor {key[:60]!r} lies outside the file (truncated?)")
        end = max(end, stop)
    if end != data_size:
        raise SubmissionError(f"{WEIGHTS_FILE}: {data_size} data bytes but the tensors cover {end} (truncated?)")
    return data, header


def load_submission_model(folder: Path) -> nn.Module:
    """The student's model, rebuilt from the registry and loaded strictly (eval mode, CPU)."""
    folder = Path(folder)
    config = read_config(folder / CONFIG_FILE)
    data, header = read_weights(folder / WEIGHTS_FILE)
    try:
        with torch.device("meta"):  # count parameters before allocating anything
            probe = build(config)
        n = count_parameters(probe)
    except (ValueError, TypeError) as error:
        raise SubmissionError(f"{CONFIG_FILE}: rejected by the architecture ({str(error)[:300]})") from None
    if n > MAX_PARAMETERS:
        raise SubmissionError(f"{CONFIG_FILE}: {n:,} parameters, over the {MAX_PARAMETERS:,} limit")
    expected = {k: list(v.shape) for k, v in probe.state_dict().items()}
    got = {k: v["shape"] for k, v in header.items()}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise SubmissionError(f"{WEIGHTS_FILE}: does not match {CONFIG_FILE} (missing {missing[:3]}, "
                              f"unexpected {extra[:3]}, wrong shapes {wrong[:3]})")
    try:
        state = load_safetensors(data)
    except Exception as error:  # noqa: BLE001 - safetensors' own parse error
        raise SubmissionError(f"{WEIGHTS_FILE}: unreadable ({str(error)[:200]})") from None
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        raise SubmissionError(f"{WEIGHTS_FILE}: NaN or inf in {bad[:3]} (training diverged: lower the lr)")
    model = build(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval().requires_grad_(False)


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


def scoring_data(n_train: int, n_test: int) -> ScoringData:
    """Features of the first ``n_train`` training flowers (near-copy check) and ``n_test`` test flowers (FID)."""
    evaluator = load_evaluator()
    train = load_flowers("train", image_size=32, n=n_train, progress=False).images
    test = load_flowers("test", image_size=32, n=n_test, progress=False).images
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

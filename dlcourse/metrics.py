"""Sample-quality metrics: a small evaluator CNN, feature FID, class/colour accuracy, diversity.

The evaluator is a classifier trained on the procedural flowers (32×32) with two
heads, the class (5) and the petal colour. Its 128-d penultimate feature vector
φ(x) plays the role Inception features play in the usual FID: for two image sets
with feature means μ_a, μ_b and covariances Σ_a, Σ_b,

    FID = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}).

The weights ship with the package (``dlcourse/weights/evaluator.safetensors`` and
``evaluator.json`` with the architecture, class and colour names, the data it was
trained on, its test accuracies and reference FIDs; see docs/metrics.md).
Retrain with ``dlcourse train-evaluator`` (:mod:`dlcourse.tools.evaluator_training`).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import get_device
from .validation import check_images, check_positive_int, describe, fail

__all__ = [
    "EvaluatorNet",
    "Evaluator",
    "load_evaluator",
    "resize_for_evaluator",
    "frechet_distance",
    "fid",
    "class_accuracy",
    "per_class_accuracy",
    "colour_accuracy",
    "diversity",
    "neighbour_rms",
    "noise_like",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "evaluator.safetensors"
CONFIG_FILE = WEIGHTS_DIR / "evaluator.json"
IMAGE_SIZE = 32
_RANGE_SLACK = 0.5  # values beyond [-1.5, 1.5] are taken as a wrong value range, not overshoot


def resize_for_evaluator(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N×3×H×W) at the evaluator's IMAGE_SIZE: resized bilinearly with antialiasing when H×W differs."""
    if x.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE):
        return x
    return F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)


class EvaluatorNet(nn.Module):
    """Stages of two 3×3 conv → BatchNorm → ReLU (one stage per width), 2× max-pool between stages,
    global average pooling, a linear layer to the ``feature_dim`` features, two linear heads."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), feature_dim: int = 128,
                 n_classes: int = 5, n_colours: int = 6):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
                in_ch = width
        self.body = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(in_ch, feature_dim), nn.ReLU())
        self.class_head = nn.Linear(feature_dim, n_classes)
        self.colour_head = nn.Linear(feature_dim, n_colours)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): (N, 3, 32, 32) → (N, feature_dim)."""
        return self.embed(self.body(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits (N, n_classes), petal-colour logits (N, n_colours))."""
        h = self.features(x)
        return self.class_head(h), self.colour_head(h)


def _check_range(x: torch.Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        raise fail(name, "finite values (no NaN or inf)", describe(x))
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - _RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise fail(name, "images in [-1, 1] (from [0, 1] use x * 2 - 1; from 0..255 use x / 127.5 - 1)",
                   f"values in [{lo:.3g}, {hi:.3g}] ({describe(x)})")
    if lo >= 0:  # natural images in [-1, 1] always have some dark or unsaturated channel below 0
        raise fail(name, "images in [-1, 1]: these have no negative value, as images in [0, 1] do "
                   "(convert with x * 2 - 1)", f"values in [{lo:.3g}, {hi:.3g}] ({describe(x)})")


class Evaluator:
    """A trained :class:`EvaluatorNet` in eval mode plus its names; inputs are N×3×H×W in [−1, 1].

    Inputs of another size are resized to 32×32 (bilinear, antialiased); work runs
    in batches of ``batch_size`` without gradients, on the evaluator's device, and
    results come back on the input's device.
    """

    def __init__(self, net: EvaluatorNet, config: dict, device=None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.config = config
        self.classes: tuple[str, ...] = tuple(config["classes"])
        self.petal_colours: tuple[str, ...] = tuple(config["petal_colours"])
        self.feature_dim: int = int(config["architecture"]["feature_dim"])

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return resize_for_evaluator(x.to(self.device, torch.float32))

    @torch.no_grad()
    def _map(self, fn, x, batch_size: int):
        """Check ``x`` (N×3×H×W, N ≥ 1, values in [−1, 1]) and apply ``fn`` batch by batch."""
        check_images(x, "x", channels=3)
        if x.shape[0] < 1:
            raise fail("x", "at least one image (N >= 1)", describe(x))
        _check_range(x, "x")
        check_positive_int(batch_size, "batch_size")
        outputs = [fn(self._prepare(x[i:i + batch_size])) for i in range(0, x.shape[0], batch_size)]
        if isinstance(outputs[0], tuple):
            return tuple(torch.cat(parts).to(x.device) for parts in zip(*outputs))
        return torch.cat(outputs).to(x.device)

    def features(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """φ(x): the (N, feature_dim) penultimate features used by FID and diversity."""
        return self._map(self.net.features, x, batch_size)

    def logits(self, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits (N, 5), petal-colour logits (N, len(petal_colours)))."""
        return self._map(self.net, x, batch_size)

    def predict(self, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(class index, petal-colour index), long tensors of shape (N,): the argmax of each head."""
        class_logits, colour_logits = self.logits(x, batch_size)
        return class_logits.argmax(dim=1), colour_logits.argmax(dim=1)


def _read_config() -> dict:
    if not CONFIG_FILE.is_file() or not WEIGHTS_FILE.is_file():
        raise FileNotFoundError(
            f"the evaluator weights are missing ({WEIGHTS_FILE.name} and {CONFIG_FILE.name} in {WEIGHTS_DIR}); "
            "train them with `dlcourse train-evaluator` (a few minutes on a CPU)")
    return json.loads(CONFIG_FILE.read_text())


@functools.lru_cache(maxsize=None)
def _load(device: str) -> Evaluator:
    from safetensors.torch import load_file

    config = _read_config()
    arch = config["architecture"]
    net = EvaluatorNet(tuple(arch["widths"]), arch["feature_dim"], arch["n_classes"], arch["n_colours"])
    net.load_state_dict(load_file(str(WEIGHTS_FILE)))
    return Evaluator(net, config, device)


def load_evaluator(device=None) -> Evaluator:
    """The shipped evaluator on ``device`` (default: :func:`dlcourse.get_device`), loaded once per device."""

    try:
        device = torch.device(device) if device is not None else get_device()
    except (TypeError, RuntimeError) as error:
        raise fail("device", "None, 'cpu', 'cuda' or a torch.device", describe(device)) from error
    return _load(str(device))


def _evaluator(evaluator) -> Evaluator:
    if evaluator is None:
        return load_evaluator()
    if not isinstance(evaluator, Evaluator):
        raise fail("evaluator", "None (the shipped one) or an Evaluator from load_evaluator()", describe(evaluator))
    return evaluator


# --------------------------------------------------------------------------- metrics

def _check_features(f, name: str) -> torch.Tensor:
    if not isinstance(f, torch.Tensor):
        try:
            f = torch.as_tensor(f)
        except (TypeError, ValueError, RuntimeError):
            raise fail(name, "a (N, d) tensor or array of features", describe(f)) from None
    if f.dim() != 2:
        raise fail(name, "a 2-D (N, d) tensor of features, one row per image", describe(f))
    if f.shape[0] < 2:
        raise fail(name, "at least 2 feature rows (a covariance needs N >= 2; small N biases FID upward, "
                   "use a few hundred)", describe(f))
    if not torch.isfinite(f).all():
        raise fail(name, "finite features (no NaN or inf)", describe(f))
    return f.detach().to("cpu", torch.float64)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh(a)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def frechet_distance(feats_a, feats_b) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}) between two sets of features (rows).

    Computed in float64. Tr (Σ_a Σ_b)^{1/2} is the sum of the square roots of the
    eigenvalues of Σ_a^{1/2} Σ_b Σ_a^{1/2}, a symmetric PSD matrix with the same
    eigenvalues as Σ_a Σ_b. Needs N ≥ 2 rows per set; the estimate is biased upward
    for small N, so compare FIDs only at equal sample sizes.
    """
    a, b = _check_features(feats_a, "feats_a"), _check_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise fail("feats_b", f"the same feature dimension as feats_a ({a.shape[1]})", describe(feats_b))
    # numpy for the small eigenproblems: MKL's threaded eigh in torch can be 100x slower on a busy CPU
    a, b = a.numpy(), b.numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrtm_psd(sigma_a)
    middle = root_a @ sigma_b @ root_a
    trace_sqrt = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    value = np.square(mu_a - mu_b).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt
    return max(float(value), 0.0)


def fid(x_a: torch.Tensor, x_b: torch.Tensor, evaluator: Evaluator | None = None, batch_size: int = 256) -> float:
    """Fréchet distance between the evaluator features of two image sets (N×3×H×W in [−1, 1], N ≥ 2 each)."""
    ev = _evaluator(evaluator)
    for name, x in (("x_a", x_a), ("x_b", x_b)):
        check_images(x, name, channels=3)
        if x.shape[0] < 2:
            raise fail(name, "at least 2 images (small N biases FID upward; use a few hundred)", describe(x))
    return frechet_distance(ev.features(x_a, batch_size), ev.features(x_b, batch_size))


def _check_labels(labels, x: torch.Tensor, name: str, n_values: int, names: tuple[str, ...]) -> torch.Tensor:
    """Integer labels (N,) in [0, n_values), or a list of names from ``names``."""
    if isinstance(labels, (list, tuple)) and labels and all(isinstance(v, str) for v in labels):
        unknown = sorted({v for v in labels if v not in names})
        if unknown:
            raise fail(name, f"names from {names}", f"unknown names {unknown}")
        labels = torch.tensor([names.index(v) for v in labels])
    elif not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            raise fail(name, f"a (N,) integer tensor or a list of names from {names}", describe(labels)) from None
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise fail(name, "integer indices (a long tensor)", describe(labels))
    if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
        raise fail(name, f"shape ({x.shape[0]},): one label per image", describe(labels))
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_values):
        raise fail(name, f"indices in [0, {n_values})", f"values in [{int(labels.min())}, {int(labels.max())}]")
    return labels.long().cpu()


def class_accuracy(x: torch.Tensor, labels, evaluator: Evaluator | None = None, batch_size: int = 256) -> float:
    """Fraction of images whose predicted class equals ``labels`` (indices into CLASSES, or class names)."""
    ev = _evaluator(evaluator)
    check_images(x, "x", channels=3)
    labels = _check_labels(labels, x, "labels", len(ev.classes), ev.classes)
    predicted, _ = ev.predict(x, batch_size)
    return float((predicted.cpu() == labels).float().mean())


def per_class_accuracy(x: torch.Tensor, labels, evaluator: Evaluator | None = None,
                       batch_size: int = 256) -> dict[str, float]:
    """{class name: accuracy among the images with that label}, for the classes present in ``labels``."""
    ev = _evaluator(evaluator)
    check_images(x, "x", channels=3)
    labels = _check_labels(labels, x, "labels", len(ev.classes), ev.classes)
    correct = ev.predict(x, batch_size)[0].cpu() == labels
    return {ev.classes[k]: float(correct[labels == k].float().mean()) for k in labels.unique().tolist()}


def colour_accuracy(x: torch.Tensor, colours, evaluator: Evaluator | None = None, batch_size: int = 256) -> float:
    """Fraction of images whose predicted petal colour equals ``colours`` (indices or names of PETAL_COLOURS)."""
    ev = _evaluator(evaluator)
    check_images(x, "x", channels=3)
    colours = _check_labels(colours, x, "colours", len(ev.petal_colours), ev.petal_colours)
    return float((ev.predict(x, batch_size)[1].cpu() == colours).float().mean())


def diversity(x: torch.Tensor, labels, evaluator: Evaluator | None = None, batch_size: int = 256) -> float:
    """Mean pairwise feature distance ‖φ(x_i) − φ(x_j)‖ (i ≠ j) within each class, averaged over the
    classes with at least 2 images. 0 when every image of a class is the same; larger is more varied."""
    ev = _evaluator(evaluator)
    check_images(x, "x", channels=3)
    labels = _check_labels(labels, x, "labels", len(ev.classes), ev.classes)
    counts = torch.bincount(labels, minlength=len(ev.classes))
    if not (counts >= 2).any():
        raise fail("labels", "at least one class with 2 or more images", f"class counts {counts.tolist()}")
    feats = ev.features(x, batch_size).cpu().double()
    per_class = []
    for k in torch.nonzero(counts >= 2).flatten().tolist():
        f = feats[labels == k]
        n = f.shape[0]
        per_class.append(torch.cdist(f, f).sum() / (n * (n - 1)))
    return float(torch.stack(per_class).mean())


def neighbour_rms(x: torch.Tensor) -> torch.Tensor:
    """Per image, the RMS difference of horizontally neighbouring pixels,
    sqrt(mean (x[..., i, j+1] − x[..., i, j])²): 0 for a flat image, √2 for white noise of unit variance."""
    check_images(x, "x")
    return (x[..., :, 1:] - x[..., :, :-1]).float().pow(2).flatten(1).mean(1).sqrt()


def noise_like(x: torch.Tensor, real: torch.Tensor) -> int:
    """How many images of ``x`` are rougher (:func:`neighbour_rms`) than every image of ``real``:
    what saturated colour noise looks like, and what FID can miss (lesson 03)."""
    check_images(real, "real")
    with torch.no_grad():
        roughest_real = neighbour_rms(real).max().item()
        return int((neighbour_rms(x) > roughest_real).sum())

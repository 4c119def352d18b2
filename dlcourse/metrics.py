"""Sample-quality metrics: a small evaluator CNN, feature FID, class/colour accuracy, diversity.

The evaluator is a classifier trained on the procedural flowers (32×32) with two
heads, the class (5) and the petal colour. Its 128-d penultimate feature vector
φ(x) plays the role Inception features play in the usual FID: for two image sets
with feature means μ_a, μ_b and covariances Σ_a, Σ_b,

    FID = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}).

The weights ship with the package (``dlcourse/weights/evaluator.safetensors`` and
``evaluator.json`` with the architecture, class and colour names, the data it was
trained on, its test accuracies and reference FIDs; see docs/metrics.md).
Retrain with ``dlcourse train-evaluator`` (or ``python -m dlcourse.metrics train``).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .files import write_atomically
from .validation import check_images, check_positive_int, describe, fail

__all__ = [
    "EvaluatorNet",
    "Evaluator",
    "load_evaluator",
    "frechet_distance",
    "fid",
    "class_accuracy",
    "per_class_accuracy",
    "colour_accuracy",
    "diversity",
    "train_evaluator",
    "reference_numbers",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "evaluator.safetensors"
CONFIG_FILE = WEIGHTS_DIR / "evaluator.json"
IMAGE_SIZE = 32
_RANGE_SLACK = 0.5  # values beyond [-1.5, 1.5] are taken as a wrong value range, not overshoot


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
        x = x.to(self.device, torch.float32)
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

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
    from . import get_device

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


# --------------------------------------------------------------------------- training and reference numbers

def _augment(x: torch.Tensor) -> torch.Tensor:
    """Random horizontal flips, a mild blur on a third of the images, Gaussian noise σ ~ U(0, 0.15)."""
    n = x.shape[0]
    flip = torch.rand(n, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    kernel = torch.tensor([0.25, 0.5, 0.25], device=x.device)
    kernel = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    blur = torch.rand(n, device=x.device) < 1 / 3
    x = torch.where(blur[:, None, None, None], blurred, x)
    sigma = 0.15 * torch.rand(n, 1, 1, 1, device=x.device)
    return (x + sigma * torch.randn_like(x)).clamp(-1, 1)


def _dataset_tensors(split: str, n: int | None, seed: int):
    from . import data

    ds = data.load_flowers(split, image_size=IMAGE_SIZE, n=n, seed=seed)
    colours = torch.tensor([data.PETAL_COLOURS.index(a["petal_colour"]) for a in ds.attributes])
    return ds, ds.images.float(), ds.labels.long(), colours


def _data_fingerprint() -> dict:
    """What the evaluator was trained on: the generator's version (if it has one) and a hash of 64 images."""
    from . import data

    ds = data.load_flowers("train", image_size=IMAGE_SIZE, n=64, seed=0)
    digest = hashlib.sha256(ds.images.float().numpy().round(4).tobytes()).hexdigest()[:16]
    version = next((getattr(data, k) for k in ("GENERATOR_VERSION", "DATA_VERSION", "__version__")
                    if hasattr(data, k)), None)
    return {"generator_version": version, "fingerprint_train64_sha256": digest}


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma + 0.5)
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-grid.square() / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).expand(3, 1, -1, 1),
                    groups=3)


def reference_numbers(evaluator: Evaluator | None = None, n: int = 2000, seed: int = 0) -> dict:
    """FID floor (train vs test at N = 250 and N = ``n``), ceilings of trivially bad generators, and the
    per-class diversity of real data. Bad generators are compared with ``n`` train images."""
    ev = _evaluator(evaluator)
    _, train_x, _, _ = _dataset_tensors("train", n, seed)
    _, test_x, test_y, _ = _dataset_tensors("test", n, seed)
    g = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0)
    fakes = {
        "gaussian_noise_clipped": torch.randn(n, *train_x.shape[1:], generator=g).clamp(-1, 1),
        "per_pixel_gaussian": (mean + std * torch.randn(n, *train_x.shape[1:], generator=g)).clamp(-1, 1),
        "blurred_test_sigma1.5": _gaussian_blur(test_x, 1.5),
    }
    train_f = ev.features(train_x)
    test_f = ev.features(test_x)
    small = 250
    result = {
        "n": n,
        "fid_floor_train_vs_test": {str(small): frechet_distance(train_f[:small], test_f[:small]),
                                    str(n): frechet_distance(train_f, test_f)},
        "fid_bad_generators": {name: frechet_distance(ev.features(x), train_f) for name, x in fakes.items()},
        "diversity_real_test": diversity(test_x, test_y, ev),
        "diversity_real_test_per_class": {
            ev.classes[k]: diversity(test_x[test_y == k], test_y[test_y == k], ev) for k in range(len(ev.classes))},
    }
    return result


def train_evaluator(*, epochs: int = 5, batch_size: int = 128, lr: float = 2e-3, ema_decay: float = 0.99, seed: int = 0,
                    widths: tuple[int, ...] = (16, 32, 64, 128), feature_dim: int = 128, device=None,
                    progress: bool = True) -> tuple[Evaluator, dict]:
    """Train the evaluator on the whole train split with augmentation, measure it on the test split,
    compute the reference numbers and write ``weights/evaluator.{safetensors,json}``. Returns (evaluator, config).

    AdamW at a constant ``lr``; the shipped weights are the EMA average (``ema_decay``), which
    smooths the last few hundred steps much like a decaying learning rate would."""
    from safetensors.torch import save_file

    from . import data, get_device
    from .training import train

    check_positive_int(epochs, "epochs")
    device = torch.device(device) if device is not None else get_device()
    clock = time.perf_counter()
    _, train_x, train_y, train_c = _dataset_tensors("train", None, 0)
    net = EvaluatorNet(widths, feature_dim, len(data.CLASSES), len(data.PETAL_COLOURS))

    def loss_fn(model, batch):
        x, y, c = batch
        class_logits, colour_logits = model(_augment(x))
        return F.cross_entropy(class_logits, y) + F.cross_entropy(colour_logits, c)

    steps = epochs * (train_x.shape[0] // batch_size)
    history = train(net, loss_fn, torch.utils.data.TensorDataset(train_x, train_y, train_c), steps=steps,
                    batch_size=batch_size, lr=lr, weight_decay=1e-4, device=device, seed=seed, progress=progress,
                    ema_decay=ema_decay)
    train_seconds = time.perf_counter() - clock
    net = history.ema_model.cpu().eval()

    config = {
        "format": "dlcourse-evaluator",
        "architecture": {"widths": list(widths), "feature_dim": feature_dim, "n_classes": len(data.CLASSES),
                         "n_colours": len(data.PETAL_COLOURS), "image_size": IMAGE_SIZE},
        "classes": list(data.CLASSES),
        "petal_colours": list(data.PETAL_COLOURS),
        "data": {"source": "procedural", "train": {"split": "train", "n": int(train_x.shape[0]), "seed": 0},
                 **_data_fingerprint()},
        "training": {"epochs": epochs, "steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
                     "seed": seed,
                     "augmentation": "horizontal flips, 3x3 blur on 1/3 of images, Gaussian noise sigma ~ U(0, 0.15)",
                     "final_loss": history.losses[-1], "seconds": round(train_seconds, 1),
                     "device": str(device), "torch_threads": torch.get_num_threads()},
    }
    ev = Evaluator(net, config, "cpu")
    _, test_x, test_y, test_c = _dataset_tensors("test", None, 0)
    config["test_accuracy"] = {"n": int(test_x.shape[0]), "class": class_accuracy(test_x, test_y, ev),
                               "petal_colour": colour_accuracy(test_x, test_c, ev),
                               "per_class": per_class_accuracy(test_x, test_y, ev)}
    config["reference"] = reference_numbers(ev)
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    write_atomically(WEIGHTS_FILE, lambda p: save_file({k: v.contiguous() for k, v in net.state_dict().items()}, p))
    write_atomically(CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    _load.cache_clear()
    config["size_bytes"] = WEIGHTS_FILE.stat().st_size
    return ev, config


def train_main(argv: list[str] | None = None) -> int:
    """``dlcourse train-evaluator``: retrain the shipped evaluator and print its accuracies."""
    parser = argparse.ArgumentParser(prog="dlcourse train-evaluator",
                                     description="train the evaluator classifier used by dlcourse.metrics")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: the best available")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    _, config = train_evaluator(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                                seed=args.seed, device=args.device, progress=not args.no_progress)
    acc = config["test_accuracy"]
    print(f"trained in {config['training']['seconds']:.0f} s; test accuracy (n = {acc['n']}): "
          f"class {acc['class']:.4f}, petal colour {acc['petal_colour']:.4f}")
    print(f"wrote {WEIGHTS_FILE} ({config['size_bytes'] / 1e6:.2f} MB) and {CONFIG_FILE}")
    print(json.dumps(config["reference"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m dlcourse.metrics train [...]``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "train":
        print("usage: python -m dlcourse.metrics train [--epochs N] [--batch-size B] [--lr LR] [--seed S]")
        return 2
    return train_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

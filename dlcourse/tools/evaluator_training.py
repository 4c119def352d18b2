"""Training the evaluator of :mod:`dlcourse.metrics`, and the reference numbers stored with it.

``dlcourse train-evaluator`` (or ``python -m dlcourse.tools.evaluator_training``) retrains the
evaluator on the procedural flowers, measures it on the test split, computes reference
FIDs and diversities, and rewrites ``dlcourse/weights/evaluator.{safetensors,json}``.

The evaluator reads 32×32 images; smaller ones are resized up (:meth:`Evaluator._prepare`). It is
trained on both resolutions the course samples at, :data:`SIZES`: the 32-px train split and the same
split drawn at 16 px, resized as the evaluator resizes it, so that the CPU budget's 16-px samples are
judged by a classifier that has seen 16-px flowers (trained on 32 px alone it scored real 16-px test
images 93.6 %).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import data
from .cli import Parser, reports_errors
from ..device import check_device, get_device
from ..files import write_atomically
from ..metrics import (CONFIG_FILE, IMAGE_SIZE, WEIGHTS_DIR, WEIGHTS_FILE, Evaluator, EvaluatorNet, _evaluator,
                      _load, class_accuracy, colour_accuracy, diversity, frechet_distance, per_class_accuracy,
                      resize_for_evaluator)
from ..training import EMA, train
from ..validation import check_positive_int, check_real, check_seed

__all__ = ["SIZES", "train_evaluator", "reference_numbers", "main"]

SIZES = (32, 16)  # the image sides the evaluator is trained and measured at (the full and cpu budgets')


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


def _dataset_tensors(split: str, n: int | None, seed: int, size: int = IMAGE_SIZE):
    """(dataset, images, class labels, colour labels) of ``split`` drawn at ``size`` px."""
    ds = data.load_flowers(split, image_size=size, n=n, seed=seed)
    colours = torch.tensor([data.PETAL_COLOURS.index(a["petal_colour"]) for a in ds.attributes])
    return ds, ds.images.float(), ds.labels.long(), colours


def _training_tensors(sizes: tuple[int, ...]):
    """The train split at every side in ``sizes``, each resized to the evaluator's 32 px as it resizes inputs."""
    parts = [_dataset_tensors("train", None, 0, size)[1:] for size in sizes]
    images = torch.cat([resize_for_evaluator(x) for x, _, _ in parts])
    return images, torch.cat([y for _, y, _ in parts]), torch.cat([c for _, _, c in parts])


def _data_fingerprint() -> dict:
    """What the evaluator was trained on: the generator's version (if it has one) and a hash of 64 images."""
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


def _floors(ev: Evaluator, n: int, seed: int, size: int) -> dict:
    """Real-vs-real FID (train vs test) at N = 100, 250, 500 and ``n``, images of side ``size``."""
    train_f = ev.features(_dataset_tensors("train", n, seed, size)[1])
    test_f = ev.features(_dataset_tensors("test", n, seed, size)[1])
    return {str(k): frechet_distance(train_f[:k], test_f[:k]) for k in sorted({100, 250, 500, n})}


def reference_numbers(evaluator: Evaluator | None = None, n: int = 2000, seed: int = 0) -> dict:
    """FID floor (train vs test at N = 250 and N = ``n``; per image side in :data:`SIZES` at N = 100, 250,
    500 and ``n``), ceilings of trivially bad generators, and the per-class diversity of real data. Bad
    generators are compared with ``n`` train images."""
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
        "fid_floor_by_size": {str(size): _floors(ev, n, seed, size) for size in SIZES},
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

    _check_settings(epochs, batch_size, lr, ema_decay, seed, "")
    device = check_device(device) if device is not None else get_device()
    clock = time.perf_counter()
    train_x, train_y, train_c = _training_tensors(SIZES)
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
        "data": {"source": "procedural", "train": {"split": "train", "n": int(train_x.shape[0]), "seed": 0,
                                                   "sizes": list(SIZES)},
                 **_data_fingerprint()},
        "training": {"epochs": epochs, "steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
                     "seed": seed,
                     "augmentation": "horizontal flips, 3x3 blur on 1/3 of images, Gaussian noise sigma ~ U(0, 0.15)",
                     "final_loss": history.losses[-1], "seconds": round(train_seconds, 1),
                     "device": str(device), "torch_threads": torch.get_num_threads()},
    }
    ev = Evaluator(net, config, "cpu")
    by_size = {str(size): _test_accuracy(ev, size) for size in SIZES}
    config["test_accuracy"] = {**by_size[str(IMAGE_SIZE)], "by_size": by_size}
    config["reference"] = reference_numbers(ev)
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    write_atomically(WEIGHTS_FILE, lambda p: save_file({k: v.contiguous() for k, v in net.state_dict().items()}, p))
    write_atomically(CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    _load.cache_clear()
    config["size_bytes"] = WEIGHTS_FILE.stat().st_size
    return ev, config


def _test_accuracy(ev: Evaluator, size: int) -> dict:
    """Class, petal-colour and per-class accuracy on the whole test split drawn at ``size`` px."""
    _, test_x, test_y, test_c = _dataset_tensors("test", None, 0, size)
    return {"n": int(test_x.shape[0]), "class": class_accuracy(test_x, test_y, ev),
            "petal_colour": colour_accuracy(test_x, test_c, ev), "per_class": per_class_accuracy(test_x, test_y, ev)}


def _check_settings(epochs, batch_size, lr, ema_decay, seed, prefix: str) -> None:
    """Check the training settings; ``prefix`` "--" names them as command-line options."""
    name = (lambda n: prefix + n.replace("_", "-")) if prefix else (lambda n: n)
    check_positive_int(epochs, name("epochs"))
    check_positive_int(batch_size, name("batch_size"))
    check_real(lr, name("lr"), low=0.0, low_open=True, hint=" (a learning rate, e.g. 2e-3)")
    EMA.check_decay(ema_decay, name("ema_decay"))
    check_seed(seed, name("seed"))


@reports_errors("dlcourse train-evaluator")
def main(argv: list[str] | None = None) -> int:
    """``dlcourse train-evaluator``: retrain the shipped evaluator and print its accuracies."""
    parser = Parser(prog="dlcourse train-evaluator", description="train the evaluator classifier used by dlcourse.metrics")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: the best available")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    _check_settings(args.epochs, args.batch_size, args.lr, args.ema_decay, args.seed, "--")
    device = check_device(args.device, "--device") if args.device is not None else None
    n_train = len(data.load_flowers("train", image_size=IMAGE_SIZE, progress=False))
    if args.batch_size > n_train:
        raise ValueError(f"--batch-size: expected at most the {n_train} training images, got {args.batch_size}")
    _, config = train_evaluator(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                                seed=args.seed, device=device, progress=not args.no_progress)
    print(f"trained in {config['training']['seconds']:.0f} s")
    for size, acc in config["test_accuracy"]["by_size"].items():
        print(f"test accuracy at {size}×{size} (n = {acc['n']}): class {acc['class']:.4f}, "
              f"petal colour {acc['petal_colour']:.4f}")
    print(f"wrote {WEIGHTS_FILE} ({config['size_bytes'] / 1e6:.2f} MB) and {CONFIG_FILE}")
    print(json.dumps(config["reference"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

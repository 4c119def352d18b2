"""``dlcourse doctor``: what this machine has for the course, and how long each lesson's training will take here.

Checks: the GPU and its memory, the torch / CUDA versions and whether the installed torch is the
CPU or the CUDA build, the budget in force and why, the flower-dataset cache, the evaluator weights,
and write access to the cache and runs folders.

Prediction, from a micro-benchmark of at most ``seconds`` (default 10): each lesson's Budget lists the
models it trains (``Budget.trainings``: class, sizes, batch size and steps at the budget in force); for
each distinct set-up the doctor times optimizer updates of :class:`dlcourse.training.TrainStep` — what
``train`` runs, with the fast path of this device — on the model's objective, and predicts

    training time of a set-up = seconds per update × its steps × models trained with it,
    training time of a lesson = the sum over its set-ups

(lesson 06's pixel model trains for the seconds of its latent class model, so it is given that time).
That is training only: sampling, metrics, plots and the EMA and gradient clipping some lessons add come
on top, and lesson 05's CLIP encoder is not included. The measurement is a few updates per set-up, taken
under whatever else the machine is doing: on a shared machine it is pessimistic, and it uses the threads
this process has (``OMP_NUM_THREADS``). A set-up the time budget did not reach is shown as not measured.
"""
from __future__ import annotations

import inspect
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .cli import Parser, reports_errors
from ..config import LESSONS, Training, budget

__all__ = ["Check", "Part", "Prediction", "TRAINED_LESSONS", "checks", "predict", "format_report", "main"]


@dataclass
class Check:
    """One line of the report: ``ok`` False is a problem to fix, None is information."""

    name: str
    ok: bool | None
    detail: str


@dataclass
class Part:
    """One training set-up of a lesson: ``seconds_per_step`` measured (None: the time budget ran out, or a
    training that lasts another's seconds, which is not timed), ``seconds`` predicted (None: unknown)."""

    training: Training
    seconds_per_step: float | None
    seconds: float | None

    @property
    def updates(self) -> int | None:
        """Optimizer updates of the set-up: steps × models (None: it trains for another's seconds)."""
        return None if self.training.steps is None else self.training.steps * self.training.models

    @property
    def label(self) -> str:
        """The model class, its widths and its input side, e.g. ``UNet[32, 64] 16²``."""
        kwargs = dict(self.training.kwargs)
        widths = list(kwargs["channels"]) if "channels" in kwargs else ""
        return f"{self.training.model}{widths} {kwargs['image_size']}²"


@dataclass
class Prediction:
    """One lesson: a :class:`Part` per training set-up; ``seconds`` their sum (None if one is unknown)."""

    lesson: str
    parts: list[Part]

    @property
    def seconds(self) -> float | None:
        times = [part.seconds for part in self.parts]
        return None if None in times else sum(times)


# the lessons that train a model, in course order (what each trains: its Budget's trainings)
TRAINED_LESSONS: tuple[str, ...] = tuple(lesson for lesson in LESSONS if budget(lesson, "quick").trainings)


def _torch_build() -> Check:
    if torch.version.cuda is None:
        gpu_note = " (no CUDA: training runs on the CPU)" if not torch.cuda.is_available() else ""
        return Check("torch build", None, f"CPU build{gpu_note}")
    if not torch.cuda.is_available():
        return Check("torch build", None, f"CUDA {torch.version.cuda} build, but no CUDA GPU is usable: the CPU "
                     "wheel is a few GB smaller (README: 'No GPU?')")
    return Check("torch build", True, f"CUDA {torch.version.cuda} build")


def _device() -> Check:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Check("GPU", True, f"{props.name}, {props.total_memory / 2**30:.1f} GiB")
    from ..device import get_device

    return Check("GPU", None, f"no CUDA GPU: lessons run on {get_device().type} at the CPU budget")


def _dataset_cache(folders: list[Path]) -> Check:
    files = [f for folder in folders if folder.is_dir() for f in folder.glob("*.npz")]
    if not files:
        return Check("dataset cache", None, f"empty ({', '.join(map(str, folders))}): the first lesson draws "
                     "the flowers (seconds) and caches them")
    size = sum(f.stat().st_size for f in files) / 2**20
    return Check("dataset cache", True, f"{len(files)} file(s), {size:.1f} MiB in {files[0].parent}")


def _evaluator() -> Check:
    from ..metrics import CONFIG_FILE, WEIGHTS_FILE

    missing = [p.name for p in (WEIGHTS_FILE, CONFIG_FILE) if not p.is_file()]
    if missing:
        return Check("evaluator weights", False, f"missing {', '.join(missing)} in {WEIGHTS_FILE.parent}: "
                     "reinstall the package or run dlcourse train-evaluator")
    return Check("evaluator weights", True, f"{WEIGHTS_FILE} ({WEIGHTS_FILE.stat().st_size / 2**20:.1f} MiB)")


def _writable(name: str, folder: Path) -> Check:
    from ..files import is_writable_dir

    if is_writable_dir(folder):
        return Check(name, True, f"{folder} is writable")
    return Check(name, False, f"cannot write in {folder}: fix its permissions or run from a folder you own")


def checks(cache_dirs: list[Path] | None = None, runs_dir: Path = Path("runs")) -> list[Check]:
    """Every check of the report. ``cache_dirs``: the dataset cache folders (default: the package's
    candidates, of which the first writable one is used); ``runs_dir``: where notebooks save runs."""
    import torchvision

    from .. import __version__, mode_and_reason
    from ..data import cache

    folders = cache.candidate_dirs() if cache_dirs is None else [Path(f) for f in cache_dirs]
    chosen, reason = mode_and_reason()
    cache_ok = cache.writable_dir(folders)
    return [
        Check("versions", None, f"python {platform.python_version()}, torch {torch.__version__}, torchvision "
              f"{torchvision.__version__}, dlcourse {__version__}"),
        _torch_build(),
        _device(),
        Check("budget", None, f"{chosen} ({reason})"),
        _dataset_cache(folders),
        _evaluator(),
        Check("cache folder", cache_ok is not None,
              f"{cache_ok} is writable" if cache_ok is not None else
              f"none of {', '.join(map(str, folders))} is writable: the flowers are redrawn every run"),
        _writable("runs folder", Path(runs_dir)),
    ]


def _build(name: str, kwargs: dict) -> torch.nn.Module:
    """The model ``name`` (a class of :mod:`dlcourse.models`, or ``TinyCLIP``) built with ``kwargs``."""
    from .. import models
    from ..clip import PAD, UNK, TinyCLIP
    from ..data import CLASSES, PETAL_COLOURS

    if name == "TinyCLIP":  # a vocabulary of the caption words' size; its size costs nothing measurable
        return TinyCLIP([PAD, UNK, *CLASSES, *PETAL_COLOURS], **kwargs)
    return getattr(models, name)(**kwargs)


def _objective(net: torch.nn.Module, batch_size: int, device: torch.device):
    """(loss_fn, data): the loss ``net``'s lesson trains it on, as costly per update, and two batches of
    random examples of its input."""
    from ..clip import TinyCLIP, contrastive_loss
    from ..losses import diffusion_loss
    from ..models import VAE, ConditionalUNet, TextUNet, UNetDenoiser, vae_loss
    from ..schedules import Schedule, scaled_linear_betas

    n = 2 * batch_size
    if isinstance(net, TinyCLIP):
        data = torch.utils.data.TensorDataset(torch.randn(n, 3, net.image_size, net.image_size),
                                              torch.randint(2, len(net.tokenizer), (n, net.context_length)))
        return lambda m, b: contrastive_loss(m.image_features(b[0]), m.text_features(b[1]), m.scale()), data
    data = torch.randn(n, net.image_channels, net.image_size, net.image_size)
    if isinstance(net, VAE):
        return vae_loss, data
    if isinstance(net, UNetDenoiser):
        return lambda m, x0: F.mse_loss(m(x0 + torch.randn_like(x0)), x0), data
    schedule = Schedule(scaled_linear_betas(net.T)).to(device)
    if isinstance(net, TextUNet):  # per-token features y (N, L, context_dim), L = TinyCLIP's default context_length
        context = (inspect.signature(TinyCLIP).parameters["context_length"].default, net.context_dim)
    elif isinstance(net, ConditionalUNet):
        context = (net.context_dim,)
    else:
        return lambda m, x0: diffusion_loss(m, x0, None, schedule), data

    def loss_fn(m, x0):
        c = torch.randn(x0.shape[0], *context, device=x0.device)
        return diffusion_loss(lambda x, t: m(x, t, c, torch.ones(x0.shape[0], device=x0.device)), x0, None, schedule)

    return loss_fn, data


def _time_setup(setup: tuple, device: torch.device, seconds: float) -> float:
    """Seconds per update of one set-up (``Training.setup``): one warm-up update, then updates until
    ``seconds`` have passed."""
    from ..timing import synchronize
    from ..training import TrainStep, fast_path

    name, kwargs, batch_size = setup
    torch.manual_seed(0)
    net = _build(name, dict(kwargs))
    loss_fn, data = _objective(net, batch_size, device)
    run = TrainStep(net, loss_fn, data, batch_size=batch_size, lr=1e-4, device=device, fast=fast_path(device))
    start = time.perf_counter()
    run(0)  # warm-up: first calls allocate and pick kernels
    synchronize(device)
    clock, steps = time.perf_counter(), 0
    while steps == 0 or time.perf_counter() - start < seconds:
        run(steps + 1)
        steps += 1
        synchronize(device)
    return (time.perf_counter() - clock) / steps


def _parts(lesson: str, trainings: tuple[Training, ...], measured: dict[tuple, float | None]) -> list[Part]:
    """A lesson's trainings with their measured and predicted seconds."""
    parts: dict[str, Part] = {}
    for training in trainings:
        if training.steps is None:
            if training.same_seconds_as not in parts:
                raise ValueError(f"{lesson}: training {training.name!r} lasts the seconds of "
                                 f"{training.same_seconds_as!r}, which is not an earlier training of the lesson")
            parts[training.name] = Part(training, None, parts[training.same_seconds_as].seconds)
            continue
        per_step = measured[training.setup]
        parts[training.name] = Part(training, per_step,
                                    None if per_step is None else per_step * training.steps * training.models)
    return list(parts.values())


def predict(seconds: float = 10.0, device=None, mode_name: str | None = None, lessons=None) -> list[Prediction]:
    """One :class:`Prediction` per lesson (``lessons``, default all of ``TRAINED_LESSONS``) at the budget
    ``mode_name`` (default: in force). Trainings with the same set-up share one measurement; each set-up
    gets an equal share of ``seconds`` (at least one warm-up and one timed update, so a set-up whose
    update is slower than its share overruns it once); set-ups left when ``seconds`` is spent are not measured."""
    from .. import mode
    from ..device import get_device

    device = torch.device(device) if device is not None else get_device()
    mode_name = mode_name or mode()
    lessons = list(TRAINED_LESSONS) if lessons is None else list(lessons)
    trainings = {lesson: budget(lesson, mode_name).trainings for lesson in lessons}
    distinct = list(dict.fromkeys(t.setup for ts in trainings.values() for t in ts if t.steps is not None))
    measured: dict[tuple, float | None] = {}
    start = time.perf_counter()
    for i, setup in enumerate(distinct):
        left = seconds - (time.perf_counter() - start)
        measured[setup] = None if left <= 0 else _time_setup(setup, device, left / (len(distinct) - i))
    return [Prediction(lesson, _parts(lesson, ts, measured)) for lesson, ts in trainings.items()]


def _minutes(seconds: float | None) -> str:
    return "not measured" if seconds is None else f"{seconds / 60:.1f} min"


def format_report(found: list[Check], predictions: list[Prediction], device: torch.device, mode_name: str) -> str:
    """The checks (ok / PROBLEM / info) and the prediction table."""
    mark = {True: "ok     ", False: "PROBLEM", None: "info   "}
    lines = [f"{mark[c.ok]} {c.name:18s} {c.detail}" for c in found]
    if not predictions:
        return "\n".join(lines)
    width = max([30] + [len(part.training.name) + 2 for p in predictions if len(p.parts) > 1 for part in p.parts])
    lines += ["", f"Predicted training time per lesson at the {mode_name} budget on {device.type} "
              "(measured s/update × train_steps × models; sampling and metrics come on top):",
              f"{'lesson':{width}s} {'model':28s} {'ms/update':>10s} {'updates':>9s} {'training':>13s}"]
    notes = []
    for p in predictions:
        if len(p.parts) == 1:
            lines.append(_row(p.lesson, p.parts[0], width))
            continue
        lines.append(f"{p.lesson:{width}s} {f'{len(p.parts)} models:':28s} {'':>10s} {'':>9s} "
                     f"{_minutes(p.seconds):>13s}")
        lines += [_row(f"  {part.training.name}", part, width) for part in p.parts]
        notes += [f"{p.lesson}: the {part.training.name} trains for the seconds of the "
                  f"{part.training.same_seconds_as}, so it is given that time"
                  for part in p.parts if part.training.same_seconds_as is not None]
    known = [p.seconds for p in predictions if p.seconds is not None]
    lines.append(f"{'total (measured lessons)':{width}s} {'':28s} {'':>10s} {'':>9s} {_minutes(sum(known)):>13s}")
    return "\n".join(lines + notes)


def _row(name: str, part: Part, width: int) -> str:
    ms = "—" if part.seconds_per_step is None else f"{1000 * part.seconds_per_step:.1f}"
    updates = "—" if part.updates is None else f"{part.updates:,d}"
    return f"{name:{width}s} {part.label:28s} {ms:>10s} {updates:>9s} {_minutes(part.seconds):>13s}"


@reports_errors("dlcourse doctor")
def main(argv: list[str] | None = None) -> int:
    """``dlcourse doctor [--seconds S] [--runs DIR] [--no-benchmark]``; exit status 1 when a check fails."""
    from .. import mode
    from ..device import get_device
    from ..validation import check_real

    parser = Parser(prog="dlcourse doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="time for the micro-benchmark (default 10)")
    parser.add_argument("--runs", default="runs", help="the folder notebooks save runs in (default ./runs)")
    parser.add_argument("--no-benchmark", action="store_true", help="only the checks")
    args = parser.parse_args(argv)
    seconds = check_real(args.seconds, "--seconds", low=0.0, low_open=True, hint=", e.g. 10")
    found = checks(runs_dir=Path(args.runs))
    device = get_device()
    predictions = [] if args.no_benchmark else predict(seconds, device)
    print(format_report(found, predictions, device, mode()))
    return 1 if any(c.ok is False for c in found) else 0


if __name__ == "__main__":
    sys.exit(main())

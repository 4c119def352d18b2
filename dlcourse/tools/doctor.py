"""``dlcourse doctor``: what this machine has for the course, and how long each lesson's training will take here.

Checks: the GPU and its memory, the torch / CUDA versions and whether the installed torch is the
CPU or the CUDA build, the budget in force and why, the flower-dataset cache, the evaluator weights,
and write access to the cache and runs folders.

Prediction, from a micro-benchmark of at most ``seconds`` (default 10): for each distinct training
set-up of the lessons (model, widths, image size, batch size at the budget in force) it times
optimizer updates of :class:`dlcourse.training.TrainStep` — what ``train`` runs, with the fast path
of this device — and predicts

    training time of a lesson = seconds per update × ``train_steps`` × models the lesson trains.

That is training only: sampling, metrics and plots come on top, and lesson 05's CLIP encoder is not
included. The measurement is a few updates per set-up, taken under whatever else the machine is doing:
on a shared machine it is pessimistic, and it uses the threads this process has (``OMP_NUM_THREADS``).
A set-up the time budget did not reach is shown as not measured.
"""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .cli import Parser, reports_errors
from ..config import LESSONS

__all__ = ["Check", "Prediction", "TRAINED_LESSONS", "checks", "predict", "format_report", "main"]


@dataclass
class Check:
    """One line of the report: ``ok`` False is a problem to fix, None is information."""

    name: str
    ok: bool | None
    detail: str


@dataclass
class Prediction:
    """One lesson: ``seconds_per_step`` measured (None if the time budget ran out), ``seconds`` predicted."""

    lesson: str
    model: str
    train_steps: int
    models: int
    seconds_per_step: float | None

    @property
    def seconds(self) -> float | None:
        return None if self.seconds_per_step is None else self.seconds_per_step * self.train_steps * self.models


# the lessons that train a model, in course order (what each trains: its Budget's model, models_trained, context_dim)
TRAINED_LESSONS: tuple[str, ...] = tuple(lesson for lesson, table in LESSONS.items() if table.model is not None)


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


def _setup_key(lesson: str, mode_name: str) -> tuple:
    from .. import budget

    b = budget(lesson, mode_name)
    extra = () if b.context_dim is None else (("context_dim", b.context_dim),)
    return b.model, tuple(b.channels), b.image_size, getattr(b, "T", None), b.batch_size, extra


def _time_setup(key: tuple, device: torch.device, seconds: float) -> float | None:
    """Seconds per update of one set-up: one warm-up update, then updates until ``seconds`` have passed."""
    from .. import models
    from ..losses import diffusion_loss
    from ..schedules import Schedule, scaled_linear_betas
    from ..training import TrainStep, fast_path

    kind, channels, size, T, batch_size, extra = key
    cls = getattr(models, kind)
    kwargs = {"channels": channels, "image_size": size, **dict(extra), **({} if T is None else {"T": T})}
    torch.manual_seed(0)
    net = cls(**kwargs)
    context = dict(extra).get("context_dim")

    schedule = None if T is None else Schedule(scaled_linear_betas(T)).to(device)

    def loss_fn(m, x0):
        if kind == "UNetDenoiser":
            return F.mse_loss(m(x0 + torch.randn_like(x0)), x0)
        if context is None:
            return diffusion_loss(m, x0, None, schedule)
        c = torch.randn(x0.shape[0], context, device=x0.device)
        return diffusion_loss(lambda x, t: m(x, t, c, torch.ones(x0.shape[0], device=x0.device)), x0, None, schedule)

    data = torch.randn(2 * batch_size, 3, size, size)
    run = TrainStep(net, loss_fn, data, batch_size=batch_size, lr=1e-4, device=device, fast=fast_path(device))
    start = time.perf_counter()
    run(0)  # warm-up: first calls allocate and pick kernels
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    clock, steps = time.perf_counter(), 0
    while steps == 0 or time.perf_counter() - start < seconds:
        run(steps + 1)
        steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return (time.perf_counter() - clock) / steps


def predict(seconds: float = 10.0, device=None, mode_name: str | None = None, lessons=None) -> list[Prediction]:
    """One :class:`Prediction` per lesson (``lessons``, default all of ``TRAINED_LESSONS``) at the budget
    ``mode_name`` (default: in force). Lessons with the same set-up share one measurement; each set-up
    gets an equal share of ``seconds`` (at least one warm-up and one timed update, so a set-up whose
    update is slower than its share overruns it once); set-ups left when ``seconds`` is spent are not measured."""
    from .. import budget, mode
    from ..device import get_device

    device = torch.device(device) if device is not None else get_device()
    mode_name = mode_name or mode()
    lessons = list(TRAINED_LESSONS) if lessons is None else list(lessons)
    keys = {lesson: _setup_key(lesson, mode_name) for lesson in lessons}
    distinct = list(dict.fromkeys(keys.values()))
    measured: dict[tuple, float | None] = {}
    start = time.perf_counter()
    for i, key in enumerate(distinct):
        left = seconds - (time.perf_counter() - start)
        measured[key] = None if left <= 0 else _time_setup(key, device, left / (len(distinct) - i))
    return [Prediction(lesson, f"{keys[lesson][0]}{list(keys[lesson][1])} {keys[lesson][2]}²",
                       budget(lesson, mode_name).train_steps, LESSONS[lesson].models_trained, measured[keys[lesson]])
            for lesson in lessons]


def _minutes(seconds: float | None) -> str:
    return "not measured" if seconds is None else f"{seconds / 60:.1f} min"


def format_report(found: list[Check], predictions: list[Prediction], device: torch.device, mode_name: str) -> str:
    """The checks (ok / PROBLEM / info) and the prediction table."""
    mark = {True: "ok     ", False: "PROBLEM", None: "info   "}
    lines = [f"{mark[c.ok]} {c.name:18s} {c.detail}" for c in found]
    if not predictions:
        return "\n".join(lines)
    lines += ["", f"Predicted training time per lesson at the {mode_name} budget on {device.type} "
              "(measured s/update × train_steps × models; sampling and metrics come on top):",
              f"{'lesson':30s} {'model':28s} {'ms/update':>10s} {'updates':>9s} {'training':>13s}"]
    for p in predictions:
        ms = "—" if p.seconds_per_step is None else f"{1000 * p.seconds_per_step:.1f}"
        lines.append(f"{p.lesson:30s} {p.model:28s} {ms:>10s} {p.train_steps * p.models:>9,d} {_minutes(p.seconds):>13s}")
    known = [p.seconds for p in predictions if p.seconds is not None]
    lines.append(f"{'total (measured lessons)':30s} {'':28s} {'':>10s} {'':>9s} {_minutes(sum(known)):>13s}")
    return "\n".join(lines)


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

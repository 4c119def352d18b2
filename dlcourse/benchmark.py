"""``dlcourse benchmark``: what the lesson-03 changes cost in time and memory, measured.

One table, ``ROWS``: each row names a measurement (``kind``, a key of ``MEASURES``)
and its options. ``train_step`` rows time one AdamW step of the ε-prediction loss
on a random batch (and read the peak GPU memory on CUDA); ``sampling`` rows time
DDPM over all T steps or DDIM over S steps; ``guided_sampling`` rows (lesson 04) time
classifier-free guided DDIM with one batched network call per step against two calls. Sizes (channels, T, batch) come from
``dlcourse.budget("03_optimizations")``, so quick mode shrinks them too. Rows marked
``cuda_only`` (bf16 autocast) are skipped elsewhere, with a note. To measure
something new, add a function to ``MEASURES`` and rows that use it.

Run ``dlcourse benchmark`` (or ``python -m dlcourse.benchmark``); it prints the table
and writes JSON (default ``runs/benchmark.json``). CPU numbers are labelled as CPU:
they say little about a GPU.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cli import Parser, reports_errors
from .device import check_device, get_device
from .files import is_writable_dir
from .models import count_parameters
from .validation import check_choice, check_positive_int, describe, fail

__all__ = ["Row", "Settings", "ROWS", "MEASURES", "LESSON02", "OPTIMISED", "time_train_step", "time_sampling",
           "measure_guided_sampling", "run_rows", "format_table", "main"]

# The U-Net switches of the two models the lesson compares (dlcourse.models.UNet keyword arguments).
LESSON02 = {"norm": "batch", "activation": "relu", "pool": "max", "time_embedding": "mlp", "residual": False,
            "upsample": "transpose"}
OPTIMISED = {"norm": "group", "activation": "gelu", "pool": "rearrange", "time_embedding": "sinusoidal",
             "residual": True, "upsample": "nearest"}
_AMP = {None: None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Row:
    """One line of the table: ``MEASURES[kind](settings, device, **options)`` gives its numbers."""

    name: str
    kind: str
    options: dict = field(default_factory=dict)
    cuda_only: bool = False


@dataclass
class Settings:
    """Sizes shared by every row; ``from_budget()`` reads them from the lesson's budget."""

    channels: tuple[int, ...]
    image_size: int
    T: int
    batch_size: int
    n_samples: int
    timed_steps: int = 10
    warmup_steps: int = 3

    @classmethod
    def from_budget(cls) -> "Settings":
        from . import budget

        b = budget("03_optimizations")
        return cls(tuple(b.channels), b.image_size, b.T, b.batch_size, min(b.n_samples, 64),
                   timed_steps=b.timed_steps, warmup_steps=max(1, b.timed_steps // 4))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_amp(amp_dtype, device: torch.device):
    check_choice(amp_dtype, "amp_dtype", (None, torch.bfloat16, torch.float16))
    return amp_dtype if device.type == "cuda" else None


def time_train_step(model: nn.Module, *, batch_size: int, device=None, channels_last: bool = False,
                    amp_dtype=None, timed_steps: int = 10, warmup_steps: int = 3, seed: int = 0) -> dict:
    """Seconds per AdamW step of ‖ε − ε_θ(x_t, t)‖² on a random batch, and peak memory (CUDA).

    ``model(x, t)`` must take images (N, C, S, S) and steps t (N,) < ``model.T``.
    ``channels_last`` stores weights and inputs as NHWC; ``amp_dtype`` autocasts the
    forward pass on CUDA (ignored elsewhere: the result says ``amp: None``).
    Returns {"seconds_per_step", "peak_memory_mib" (None off CUDA), "device", "channels_last", "amp"}.
    The model is trained by these steps: pass a throwaway copy.
    """
    check_positive_int(batch_size, "batch_size")
    check_positive_int(timed_steps, "timed_steps")
    device = torch.device(device) if device is not None else get_device()
    amp_dtype = _check_amp(amp_dtype, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (batch_size, model.image_channels, model.image_size, model.image_size)
    x_t = torch.randn(shape, generator=g).to(device, memory_format=fmt)
    noise = torch.randn(shape, generator=g).to(device, memory_format=fmt)
    t = torch.randint(0, model.T, (batch_size,), generator=g).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.mse_loss(model(x_t, t).float(), noise)
        loss.backward()
        optimizer.step()

    for _ in range(warmup_steps):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = time.perf_counter()
    for _ in range(timed_steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - clock) / timed_steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"seconds_per_step": seconds, "peak_memory_mib": peak, "device": device.type,
            "channels_last": channels_last, "amp": None if amp_dtype is None else str(amp_dtype).split(".")[-1]}


def time_sampling(eps_fn: Callable, schedule, shape, *, sampler: str = "ddim", steps: int | None = None,
                  eta: float = 0.0, device=None, seed: int = 0) -> dict:
    """Seconds to draw ``shape`` images with DDPM (all T steps) or DDIM (``steps`` steps, ``eta``).

    Returns {"seconds", "network_calls", "device"}.
    """
    from .sampling import ddim_sample, ddpm_sample

    check_choice(sampler, "sampler", ("ddpm", "ddim"))
    device = torch.device(device) if device is not None else get_device()
    g = torch.Generator(device=device).manual_seed(seed)
    _sync(device)
    clock = time.perf_counter()
    if sampler == "ddpm":
        ddpm_sample(eps_fn, schedule, shape, generator=g, device=device, progress=False)
        calls = schedule.T
    else:
        calls = schedule.T if steps is None else steps
        ddim_sample(eps_fn, schedule, shape, steps=calls, eta=eta, generator=g, device=device, progress=False)
    _sync(device)
    return {"seconds": time.perf_counter() - clock, "network_calls": calls, "device": device.type}


def _build(settings: Settings, model: dict) -> nn.Module:
    from .models import UNet

    return UNet(channels=settings.channels, image_size=settings.image_size, T=settings.T, **model)


def measure_train_step(settings: Settings, device: torch.device, *, model: dict, channels_last: bool = False,
                       amp: str | None = None) -> dict:
    torch.manual_seed(0)
    net = _build(settings, model)
    result = time_train_step(net, batch_size=settings.batch_size, device=device, channels_last=channels_last,
                             amp_dtype=_AMP[amp], timed_steps=settings.timed_steps,
                             warmup_steps=settings.warmup_steps)
    result["parameters"] = count_parameters(net)
    return result


def measure_sampling(settings: Settings, device: torch.device, *, model: dict, sampler: str,
                     steps: int | None = None, eta: float = 0.0) -> dict:
    """Untrained weights: the time does not depend on what the network has learnt."""
    from .schedules import Schedule, scaled_linear_betas

    torch.manual_seed(0)
    net = _build(settings, model).to(device).eval()
    schedule = Schedule(scaled_linear_betas(settings.T)).to(device)
    shape = (settings.n_samples, 3, settings.image_size, settings.image_size)
    steps = None if steps is None else min(steps, settings.T)
    with torch.no_grad():  # warm-up: the first call at a new batch size pays one-off costs
        net(torch.zeros(shape, device=device), torch.zeros(shape[0], dtype=torch.long, device=device))
    result = time_sampling(lambda x, t: net(x, t), schedule, shape, sampler=sampler, steps=steps, eta=eta,
                           device=device)
    result["n_images"] = settings.n_samples
    return result


def measure_guided_sampling(settings: Settings, device: torch.device, *, passes: str, n_images: int | None = None,
                            steps: int = 50, w: float = 2.0) -> dict:
    """Classifier-free guided DDIM (lesson 04): ``passes="batched"`` makes one network call per step on
    [x; x] with contexts [c; 0] (``guided_eps_fn``), ``"two"`` makes two calls (``two_pass_guided_eps_fn``).
    Untrained ``ConditionalUNet`` with one-hot contexts; ``n_images`` defaults to ``settings.n_samples``."""
    from .guidance import guided_eps_fn, one_hot, two_pass_guided_eps_fn
    from .models import ConditionalUNet
    from .schedules import Schedule, scaled_linear_betas

    makers = {"batched": guided_eps_fn, "two": two_pass_guided_eps_fn}
    if passes not in makers:
        raise fail("passes", f"one of {sorted(makers)}", describe(passes))
    n = settings.n_samples if n_images is None else min(check_positive_int(n_images, "n_images"), settings.n_samples)
    torch.manual_seed(0)
    net = ConditionalUNet(channels=settings.channels, image_size=settings.image_size, T=settings.T,
                          **OPTIMISED).to(device).eval()
    schedule = Schedule(scaled_linear_betas(settings.T)).to(device)
    eps_fn = makers[passes](net, one_hot(torch.arange(n) % net.context_dim, net.context_dim).to(device), w)
    shape = (n, 3, settings.image_size, settings.image_size)
    with torch.no_grad():  # warm-up: the first call at a new batch size pays one-off costs
        eps_fn(torch.zeros(shape, device=device), torch.zeros(n, dtype=torch.long, device=device))
    result = time_sampling(eps_fn, schedule, shape, sampler="ddim", steps=min(steps, settings.T), device=device)
    result["network_calls"] *= 2 if passes == "two" else 1
    result["n_images"] = n
    return result


MEASURES: dict[str, Callable[..., dict]] = {
    "train_step": measure_train_step,
    "sampling": measure_sampling,
    "guided_sampling": measure_guided_sampling,
}

ROWS: list[Row] = [
    *(Row(f"train step: {label}{' + channels_last' if cl else ''}{' + bf16 autocast' if amp else ''}",
          "train_step", {"model": model, "channels_last": cl, "amp": amp}, cuda_only=amp is not None)
      for label, model in (("lesson-02 U-Net", LESSON02), ("optimised U-Net", OPTIMISED))
      for amp in (None, "bf16") for cl in (False, True)),
    Row("sampling: DDPM, T steps", "sampling", {"model": OPTIMISED, "sampler": "ddpm"}),
    *(Row(f"sampling: DDIM, S = {s}, eta = 0", "sampling", {"model": OPTIMISED, "sampler": "ddim", "steps": s})
      for s in (10, 50)),
    *(Row(f"CFG sampling (DDIM S = 50, {size}): {label}", "guided_sampling", {"passes": passes, "n_images": n})
      for n, size in ((4, "N = 4"), (None, "N = n_samples")) for passes, label in (("batched", "batched [x; x]"),
                                                                                     ("two", "two passes"))),
]


def run_rows(rows: list[Row], settings: Settings, device=None, *, progress: bool = True) -> list[dict]:
    """Measure each row; a ``cuda_only`` row off CUDA comes back with ``skipped`` set."""
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else get_device()
    results = []
    for row in tqdm(rows, desc="benchmark", disable=not progress):
        if row.kind not in MEASURES:
            raise fail("rows", f"rows whose kind is one of {sorted(MEASURES)}", f"{row.name!r} of kind {row.kind!r}")
        entry = {"name": row.name, "kind": row.kind, "options": row.options}
        if row.cuda_only and device.type != "cuda":
            entry["skipped"] = f"CUDA only (this run is on {device.type})"
        else:
            entry["result"] = MEASURES[row.kind](settings, device, **row.options)
        results.append(entry)
    return results


def format_table(results: list[dict], device: torch.device) -> str:
    """A plain-text table: time (ms per training step or s per sampling run) and peak memory."""
    label = "GPU" if device.type == "cuda" else device.type.upper()
    lines = [f"{'row':60s} {'time':>18s} {'peak mem':>10s}  ({label} numbers)", "-" * 92]
    for entry in results:
        if "skipped" in entry:
            lines.append(f"{entry['name']:60s} {'skipped: ' + entry['skipped']}")
            continue
        r = entry["result"]
        if "seconds_per_step" in r:
            time_text = f"{1000 * r['seconds_per_step']:.1f} ms/step"
        else:
            time_text = f"{r['seconds']:.2f} s/{r['network_calls']} calls"
        mem = "n/a" if r.get("peak_memory_mib") is None else f"{r['peak_memory_mib']:.0f} MiB"
        lines.append(f"{entry['name']:60s} {time_text:>18s} {mem:>10s}")
    if device.type != "cuda":
        lines.append(f"note: measured on {label}, not a GPU: bf16 rows are skipped, peak memory is GPU-only, and "
                     "the ratios need not hold on a GPU.")
    return "\n".join(lines)


def _check_out(path: str) -> Path:
    """The JSON file to write, checked before any work: its folder must be creatable and writable."""
    out = Path(path)
    if not is_writable_dir(out.parent):
        raise fail("--out", "a file in a folder you can write to (e.g. runs/benchmark.json)", repr(path))
    if out.is_dir():
        raise fail("--out", "a file name, not a folder (e.g. runs/benchmark.json)", repr(path))
    return out


@reports_errors("dlcourse benchmark")
def main(argv: list[str] | None = None) -> int:
    """``dlcourse benchmark [--rows TEXT] [--device D] [--out FILE]``."""
    from . import banner

    parser = Parser(prog="dlcourse benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=None, help="only rows whose name contains this text")
    parser.add_argument("--device", default=None, help="default: the best available")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the lesson's budget")
    parser.add_argument("--timed-steps", type=int, default=None)
    parser.add_argument("--out", default="runs/benchmark.json", help="JSON file to write")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    device = check_device(args.device, "--device") if args.device else get_device()
    settings = Settings.from_budget()
    if args.batch_size is not None:
        settings.batch_size = check_positive_int(args.batch_size, "--batch-size")
    if args.timed_steps is not None:
        settings.timed_steps = check_positive_int(args.timed_steps, "--timed-steps")
    rows = [r for r in ROWS if args.rows is None or args.rows in r.name]
    if not rows:
        raise fail("--rows", f"text found in a row name, e.g. 'DDIM' (rows: {[r.name for r in ROWS]})",
                   repr(args.rows))
    out = _check_out(args.out)
    print(banner())
    results = run_rows(rows, settings, device, progress=not args.no_progress)
    print(format_table(results, device))
    info = {"device": device.type, "settings": asdict(settings), "rows": results, "banner": banner()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

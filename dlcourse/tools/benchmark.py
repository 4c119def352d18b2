"""``dlcourse benchmark``: training and sampling throughput, measured so that the numbers can be trusted.

One table, ``ROWS``. Each row names a trial (``kind``, a key of ``TRIALS``) and its options:

- ``train`` rows run :class:`dlcourse.training.TrainStep` — the optimizer update ``train`` itself
  runs — on the ε-prediction loss, once fp32 eager and once per fast-path switch
  (:class:`~dlcourse.training.FastPath`), then all together; the same for a peer, diffusers'
  ``UNet2DModel`` sized to our U-Net's parameter count (±10 %, ``peer_config``). Reported in
  images/s and, on CUDA, peak memory.
- ``sample`` rows draw images with DDIM, with and without one device sync (``int(t.min())``, what
  a value check does) per step; ``guided`` rows run classifier-free guided DDIM with one batched
  network call per step against two calls, at lesson 04's batch sizes. Reported in images/s and ms
  per sampler step.

Every trial is set up and warmed up first; then the timed blocks are interleaved across rows
(A, B, C, A, B, C …) ``repeats`` times, so slow drift of the machine (other jobs, clocks, heat)
hits every row alike. The table prints each row's median and spread — the interquartile range
q1–q3 of its rounds, which one disturbed round does not move (min and max are in the JSON) — and
``COMPARISONS`` prints ratios of medians; where either row's spread is larger than the difference
between the two medians, it says so instead of printing a ratio. Sizes come from the budgets of lessons 03 and 04.

Run ``dlcourse benchmark`` (or ``python -m dlcourse.tools.benchmark``); it prints the table and writes
JSON (default ``runs/benchmark.json``). CPU numbers are labelled as CPU: they say little about a GPU.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .cli import Parser, reports_errors
from ..config import LESSON02, OPTIMISED
from ..device import check_device, get_device
from ..files import is_writable_dir
from ..models import count_parameters
from ..timing import peak_memory_mib, synchronize
from ..validation import check_positive_int, describe, fail

__all__ = ["Row", "Settings", "Comparison", "ROWS", "COMPARISONS", "TRIALS", "PeerUNet",
           "peer_config", "run_rows", "compare", "format_table", "main"]

_AMP = {None: None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Row:
    """One line of the table: ``TRIALS[kind](settings, device, **options)`` sets up what it times.

    ``needs``: any of "cuda" (skipped elsewhere), "diffusers" (skipped when it is not installed) and
    "compile" (run only with ``--compile``)."""

    name: str
    kind: str
    options: dict = field(default_factory=dict)
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Comparison:
    """``faster`` against ``baseline``: the ratio of their images/s, and the issue's goal for it."""

    name: str
    faster: str
    baseline: str
    goal: str


@dataclass
class Settings:
    """Sizes shared by the rows; ``from_budget()`` reads them from the budgets of lessons 03 and 04."""

    channels: tuple[int, ...]
    image_size: int
    T: int
    batch_size: int
    n_samples: int
    timed_steps: int = 10
    warmup_steps: int = 3
    sampling_steps: int = 50
    guided_n_samples: int = 8
    repeats: int = 5

    @classmethod
    def from_budget(cls, mode_name: str | None = None) -> "Settings":
        """Lesson 03's sizes and lesson 04's sampling batch under ``mode_name`` (default: the budget in force)."""
        from .. import budget

        b, b04 = budget("03_optimizations", mode_name), budget("04_classifier_free_guidance", mode_name)
        return cls(tuple(b.channels), b.image_size, b.T, b.batch_size, min(b.n_samples, 64),
                   timed_steps=b.timed_steps, warmup_steps=max(1, b.timed_steps // 4),
                   sampling_steps=min(b.sampling_steps, b.T), guided_n_samples=b04.n_samples)


def _schedule(settings: Settings, device: torch.device):
    from ..schedules import Schedule, scaled_linear_betas

    return Schedule(scaled_linear_betas(settings.T)).to(device)


# --------------------------------------------------------------------------- the peer

class PeerUNet(nn.Module):
    """diffusers' ``UNet2DModel`` called as ε_θ(x_t, t), like the course's U-Nets."""

    def __init__(self, image_size: int, T: int, config: dict):
        from diffusers import UNet2DModel

        super().__init__()
        self.net = UNet2DModel(sample_size=image_size, in_channels=3, out_channels=3, **config)
        self.image_channels, self.image_size, self.T = 3, image_size, T

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t).sample


def _peer_blocks(levels: int, width: int, layers: int) -> dict:
    """A diffusers U-Net of ``levels`` resolutions with widths width·(1, 2, 4, …), self-attention at the
    lowest resolution (the layout of diffusers' unconditional-training example)."""
    return {"block_out_channels": tuple(width * 2**i for i in range(levels)), "layers_per_block": layers,
            "down_block_types": ("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
            "up_block_types": ("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1), "norm_num_groups": 4,
            "attention_head_dim": 4}


@functools.lru_cache(maxsize=8)
def peer_config(target_parameters: int, image_size: int, levels: int) -> tuple[dict, int]:
    """The ``UNet2DModel`` configuration (widths in steps of 4, 1 to 3 layers per block) whose parameter
    count is closest to ``target_parameters``, and that count. Built on the meta device: no memory."""
    from diffusers import UNet2DModel

    best = None
    with torch.device("meta"):
        for layers in (1, 2, 3):
            for width in range(4, 513, 4):
                config = _peer_blocks(levels, width, layers)
                count = count_parameters(UNet2DModel(sample_size=image_size, in_channels=3, out_channels=3,
                                                     **config))
                if best is None or abs(count - target_parameters) < abs(best[1] - target_parameters):
                    best = (config, count)
                if count >= target_parameters:  # the count grows with the width: wider is farther
                    break
    return best


def _diffusers_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("diffusers")
    except Exception:  # PackageNotFoundError, or a broken install
        return None


# --------------------------------------------------------------------------- trials

@dataclass
class _Trial:
    """What one row times: ``block()`` runs one timed block of work; ``images`` images per block;
    ``sampler_steps`` per block (sampling rows), for ms/step; ``info`` goes into the report."""

    block: Callable[[], None]
    images: int
    sampler_steps: int | None = None
    info: dict = field(default_factory=dict)


def _network(settings: Settings, model: str) -> nn.Module:
    from ..models import UNet

    if model == "peer":
        ours = count_parameters(_network(settings, "ours"))
        config, _ = peer_config(ours, settings.image_size, len(settings.channels))
        return PeerUNet(settings.image_size, settings.T, config)
    return UNet(channels=settings.channels, image_size=settings.image_size, T=settings.T,
                **{"ours": OPTIMISED, "lesson02": LESSON02}[model])


def train_trial(settings: Settings, device: torch.device, *, model: str, fast: dict) -> _Trial:
    """``settings.timed_steps`` updates of :class:`~dlcourse.training.TrainStep` on the ε-prediction loss
    over random images kept on the CPU (as a dataset is), with the :class:`FastPath` switches ``fast``."""
    from ..losses import diffusion_loss
    from ..training import FastPath, TrainStep

    switches = FastPath(**{**fast, "amp_dtype": _AMP[fast.get("amp_dtype")]})
    torch.manual_seed(0)
    net = _network(settings, model)
    schedule = _schedule(settings, device)

    def loss_fn(m, x0):
        return diffusion_loss(m, x0, None, schedule)

    data = torch.randn(4 * settings.batch_size, 3, settings.image_size, settings.image_size)
    run = TrainStep(net, loss_fn, data, batch_size=settings.batch_size, lr=1e-4, device=device, fast=switches)
    steps = itertools.count()

    def block(n: int = settings.timed_steps) -> None:
        for _ in range(n):
            run(next(steps))

    block(settings.warmup_steps + (3 if switches.compile else 0))  # compiling happens in the first steps
    return _Trial(block, settings.timed_steps * settings.batch_size, info={"parameters": count_parameters(net),
                                                                           "fast": {**fast}})


def sample_trial(settings: Settings, device: torch.device, *, sync_per_step: bool) -> _Trial:
    """DDIM with ``settings.sampling_steps`` steps of the lesson-03 U-Net (untrained: the time does not
    depend on the weights); ``sync_per_step`` reads one value back (``int(t.min())``) before each call."""
    from ..sampling import ddim_sample

    torch.manual_seed(0)
    net = _network(settings, "ours").to(device).eval()
    schedule = _schedule(settings, device)

    def eps_fn(x, t):
        if sync_per_step:
            int(t.min())  # waits for every queued kernel, as a value check does
        return net(x, t)

    shape = (settings.n_samples, 3, settings.image_size, settings.image_size)

    def block() -> None:
        with torch.no_grad():
            ddim_sample(eps_fn, schedule, shape, steps=settings.sampling_steps, device=device, progress=False)

    block()
    return _Trial(block, settings.n_samples, settings.sampling_steps)


def guided_trial(settings: Settings, device: torch.device, *, passes: str, n_images: int | None = None) -> _Trial:
    """Classifier-free guided DDIM (lesson 04), w = 2: ``passes="batched"`` makes one network call per step
    on [x; x] with contexts [c; 0] (``guided_eps_fn``), ``"two"`` two calls (``two_pass_guided_eps_fn``).
    ``n_images`` defaults to lesson 04's ``n_samples``."""
    from ..guidance import guided_eps_fn, one_hot, two_pass_guided_eps_fn
    from ..models import ConditionalUNet
    from ..sampling import ddim_sample

    makers = {"batched": guided_eps_fn, "two": two_pass_guided_eps_fn}
    if passes not in makers:
        raise fail("passes", f"one of {sorted(makers)}", describe(passes))
    n = settings.guided_n_samples if n_images is None else check_positive_int(n_images, "n_images")
    torch.manual_seed(0)
    net = ConditionalUNet(channels=settings.channels, image_size=settings.image_size, T=settings.T,
                          **OPTIMISED).to(device).eval()
    schedule = _schedule(settings, device)
    eps_fn = makers[passes](net, one_hot(torch.arange(n) % net.context_dim, net.context_dim).to(device), 2.0)
    shape = (n, 3, settings.image_size, settings.image_size)

    def block() -> None:
        with torch.no_grad():
            ddim_sample(eps_fn, schedule, shape, steps=settings.sampling_steps, device=device, progress=False)

    block()
    return _Trial(block, n, settings.sampling_steps,
                  info={"network_calls": settings.sampling_steps * (2 if passes == "two" else 1)})


TRIALS: dict[str, Callable[..., _Trial]] = {"train": train_trial, "sample": sample_trial, "guided": guided_trial}

_SWITCHES = {  # label -> FastPath switches (each alone, then all together)
    "data on device": {"data_on_device": True},
    "bf16 autocast": {"amp_dtype": "bf16"},
    "channels_last": {"channels_last": True},
    "fused AdamW": {"fused_adamw": True},
}
_FAST = {key: value for switches in _SWITCHES.values() for key, value in switches.items()}
_COMPILE_MODES = {"default": (), "max-autotune": (), "reduce-overhead": ("cuda",)}  # mode -> needs (CUDA graphs)
_CUDA_ONLY = {"data on device", "bf16 autocast"}  # on a CPU the data is on the device already; bf16: CUDA only here


def _train_rows(label: str, model: str, needs: tuple[str, ...]) -> list[Row]:
    """fp32 eager, each switch alone (our U-Net), and the fast path: every switch (CUDA)."""
    rows = [Row(f"train {label}: fp32 eager", "train", {"model": model, "fast": {}}, needs)]
    if model == "ours":
        rows += [Row(f"train {label}: + {switch}", "train", {"model": model, "fast": fast},
                     ("cuda",) if switch in _CUDA_ONLY else ()) for switch, fast in _SWITCHES.items()]
        rows += [Row(f"train {label}: + torch.compile ({mode})", "train", {"model": model, "fast": {"compile": mode}},
                     ("compile", *needs)) for mode, needs in _COMPILE_MODES.items()]
    rows.append(Row(f"train {label}: fast path (all of the above)", "train", {"model": model, "fast": _FAST},
                    ("cuda", *needs)))
    return rows


ROWS: list[Row] = [
    Row("train lesson-02 U-Net: fp32 eager", "train", {"model": "lesson02", "fast": {}}),
    *_train_rows("U-Net", "ours", ()),
    Row("train U-Net: fast path + torch.compile (default)", "train",
        {"model": "ours", "fast": {**_FAST, "compile": "default"}}, ("cuda", "compile")),
    *_train_rows("diffusers peer", "peer", ("diffusers",)),
    Row("sample DDIM: no sync per step", "sample", {"sync_per_step": False}),
    Row("sample DDIM: one .item() sync per step", "sample", {"sync_per_step": True}),
    *(Row(f"guided DDIM, N = {size}: {label}", "guided", {"passes": passes, "n_images": n})
      for n, size in ((4, "4"), (None, "lesson 04's n_samples")) for passes, label in (("batched", "batched [x; x]"),
                                                                                         ("two", "two passes"))),
]

COMPARISONS: list[Comparison] = [
    Comparison("fast path vs fp32 eager (our U-Net)", "train U-Net: fast path (all of the above)",
               "train U-Net: fp32 eager", "≥ 2× on an H100-class GPU"),
    *(Comparison(f"{switch} vs fp32 eager", f"train U-Net: + {switch}", "train U-Net: fp32 eager", "—")
      for switch in (*_SWITCHES, *(f"torch.compile ({mode})" for mode in _COMPILE_MODES))),
    Comparison("fast path + torch.compile vs fp32 eager", "train U-Net: fast path + torch.compile (default)",
               "train U-Net: fp32 eager", "≥ 2× on an H100-class GPU"),
    Comparison("our U-Net vs equal-parameter diffusers peer, fp32 eager", "train U-Net: fp32 eager",
               "train diffusers peer: fp32 eager", "≥ 1.0×"),
    Comparison("our U-Net vs equal-parameter diffusers peer, fast path", "train U-Net: fast path (all of the above)",
               "train diffusers peer: fast path (all of the above)", "≥ 1.0×"),
    Comparison("no per-step sync vs one sync per step", "sample DDIM: no sync per step",
               "sample DDIM: one .item() sync per step", "—"),
    *(Comparison(f"batched guidance vs two passes, N = {size}", f"guided DDIM, N = {size}: batched [x; x]",
                 f"guided DDIM, N = {size}: two passes", "time ≤ 0.6× two passes (ratio ≥ 1.67×)")
      for size in ("4", "lesson 04's n_samples")),
]


# --------------------------------------------------------------------------- running and reporting

def _skip_reason(row: Row, device: torch.device, compile_rows: bool) -> str | None:
    if "cuda" in row.needs and device.type != "cuda":
        return f"CUDA only (this run is on {device.type})"
    if "diffusers" in row.needs and _diffusers_version() is None:
        return "diffusers is not installed (pip install -e '.[bench]')"
    if "compile" in row.needs and not compile_rows:
        return "torch.compile rows run with --compile (each compiles for tens of seconds)"
    return None


def _allocated_mib(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def run_rows(rows: list[Row], settings: Settings, device=None, *, compile_rows: bool = False,
             progress: bool = True) -> list[dict]:
    """Set up and warm up every row, then time ``settings.repeats`` rounds of one block per row,
    interleaved (A, B, …, A, B, …). Returns one entry per row: its images/s per round, their median,
    quartiles (q1, q3) and min–max, ms per sampler step (sampling rows) and peak memory (CUDA), or
    ``skipped`` with the reason. Every row's set-up stays in memory while the others run, so a row's peak
    memory is what its set-up kept (model, optimizer, data) plus the most its block added."""
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else get_device()
    entries, trials = [], {}
    for row in tqdm(rows, desc="setting up", disable=not progress):
        if row.kind not in TRIALS:
            raise fail("rows", f"rows whose kind is one of {sorted(TRIALS)}", f"{row.name!r} of kind {row.kind!r}")
        entry = {"name": row.name, "kind": row.kind, "options": row.options}
        reason = _skip_reason(row, device, compile_rows)
        if reason is None:
            before = _allocated_mib(device)
            trials[row.name] = TRIALS[row.kind](settings, device, **row.options)
            entry.update(trials[row.name].info, seconds=[], peak_memory_mib=None,
                         kept_mib=_allocated_mib(device) - before)
        else:
            entry["skipped"] = reason
        entries.append(entry)
    measured = [e for e in entries if "skipped" not in e]
    for _ in tqdm(range(settings.repeats), desc="timing rounds", disable=not progress):
        for entry in measured:
            trial = trials[entry["name"]]
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = _allocated_mib(device)
            clock = time.perf_counter()
            trial.block()
            synchronize(device)
            entry["seconds"].append(time.perf_counter() - clock)
            peak = peak_memory_mib(device)
            if peak is not None:
                own = entry["kept_mib"] + peak - start
                entry["peak_memory_mib"] = max(own, entry["peak_memory_mib"] or 0.0)
    for entry in measured:
        trial = trials[entry["name"]]
        rates = [trial.images / s for s in entry["seconds"]]
        q1, _, q3 = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else rates * 3
        entry.update(images_per_second=rates, median=statistics.median(rates), q1=q1, q3=q3, low=min(rates),
                     high=max(rates))
        if trial.sampler_steps is not None:
            entry["ms_per_step"] = 1000 * statistics.median(entry["seconds"]) / trial.sampler_steps
    return entries


def compare(entries: list[dict], comparisons: list[Comparison] = COMPARISONS) -> list[dict]:
    """Each comparison whose two rows were measured: the ratio of their median images/s, or, where either
    row's spread (q3 − q1) is larger than the difference of the medians, ``ratio`` None and a note."""
    by_name = {e["name"]: e for e in entries if "median" in e}
    results = []
    for c in comparisons:
        if c.faster not in by_name or c.baseline not in by_name:
            continue
        a, b = by_name[c.faster], by_name[c.baseline]
        difference = abs(a["median"] - b["median"])
        spread = max(a["q3"] - a["q1"], b["q3"] - b["q1"])
        result = {"name": c.name, "goal": c.goal, "ratio": None}
        if spread > difference:
            result["note"] = (f"no clear difference: the spread q3 − q1 ({spread:.3g} images/s) is larger than the "
                              f"difference of the medians ({difference:.3g} images/s)")
        else:
            result["ratio"] = a["median"] / b["median"]
        results.append(result)
    return results


def format_table(entries: list[dict], comparisons: list[dict], device: torch.device) -> str:
    """The table (median images/s with q1–q3, ms per sampler step, peak memory, parameters) and the ratios."""
    label = "GPU" if device.type == "cuda" else device.type.upper()
    lines = [f"{'row':58s} {'images/s':>9s} {'q1–q3':>17s} {'ms/step':>8s} {'peak mem':>9s} {'params':>10s}"
             f"  ({label} numbers)", "-" * 118]
    for e in entries:
        if "skipped" in e:
            lines.append(f"{e['name']:58s} skipped: {e['skipped']}")
            continue
        ms = f"{e['ms_per_step']:.1f}" if "ms_per_step" in e else ""
        mem = "" if e["peak_memory_mib"] is None else f"{e['peak_memory_mib']:.0f} MiB"
        params = f"{e['parameters']:,}" if "parameters" in e else ""
        lines.append(f"{e['name']:58s} {e['median']:9.1f} {e['q1']:8.1f}–{e['q3']:<8.1f} {ms:>8s} {mem:>9s} "
                     f"{params:>10s}")
    if comparisons:
        lines += ["", f"{'comparison':58s} {'ratio':>9s}  goal", "-" * 118]
        for c in comparisons:
            shown = f"{c['ratio']:.2f}×" if c["ratio"] is not None else "—"
            lines.append(f"{c['name']:58s} {shown:>9s}  {c['goal']}" + (f"  ({c['note']})" if "note" in c else ""))
    if device.type != "cuda":
        lines.append(f"note: measured on {label}, not a GPU: CUDA-only rows are skipped, peak memory is GPU-only, "
                     "and the GPU goals need not hold here.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line

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
    """``dlcourse benchmark [--rows TEXT] [--device D] [--repeats R] [--compile] [--out FILE]``."""
    from .. import banner
    from .results import machine

    parser = Parser(prog="dlcourse benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=None, help="only rows whose name contains this text")
    parser.add_argument("--device", default=None, help="default: the best available")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: lesson 03's budget)")
    parser.add_argument("--timed-steps", type=int, default=None, help="training steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds over all rows (default 5)")
    parser.add_argument("--compile", action="store_true", help="also run the torch.compile rows")
    parser.add_argument("--out", default="runs/benchmark.json", help="JSON file to write")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    device = check_device(args.device, "--device") if args.device else get_device()
    settings = Settings.from_budget()
    if args.batch_size is not None:
        settings.batch_size = check_positive_int(args.batch_size, "--batch-size")
    if args.timed_steps is not None:
        settings.timed_steps = check_positive_int(args.timed_steps, "--timed-steps")
    settings.repeats = check_positive_int(args.repeats, "--repeats")
    rows = [r for r in ROWS if args.rows is None or args.rows in r.name]
    if not rows:
        raise fail("--rows", f"text found in a row name, e.g. 'guided' (rows: {[r.name for r in ROWS]})",
                   repr(args.rows))
    out = _check_out(args.out)
    print(banner())
    load_before = os.getloadavg()
    entries = run_rows(rows, settings, device, compile_rows=args.compile, progress=not args.no_progress)
    comparisons = compare(entries)
    if any(e["kind"] == "train" and e["options"]["model"] == "peer" and "parameters" in e for e in entries):
        ours = count_parameters(_network(settings, "ours"))
        peer = next(e["parameters"] for e in entries if e["options"].get("model") == "peer" and "parameters" in e)
        off = peer / ours - 1
        print(f"parameters: our U-Net {ours:,}, diffusers UNet2DModel peer {peer:,} ({100 * off:+.1f} %"
              f"{'' if abs(off) <= 0.1 else ': outside ±10 %, the peer comparison is not at equal size'}), "
              f"diffusers {_diffusers_version()}")
    print(format_table(entries, comparisons, device))
    info = {"device": device.type, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "settings": asdict(settings), "rows": entries, "comparisons": comparisons, "banner": banner()}
    print(f"load average (1, 5, 15 min): before {', '.join(f'{v:.2f}' for v in load_before)}; "
          f"after {', '.join(f'{v:.2f}' for v in info['load_average_after'])}")
    out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

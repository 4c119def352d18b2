"""``dlcourse recipe``: what each change of recipe buys lesson 02's model at equal CPU seconds.

Every row trains lesson 02's unconditional model — 16×16 flowers at the CPU budget, the U-Net widths
and T of ``budget("02_ddpm")``, lesson 03's optimised switches (``OPTIMISED``) — for the same CPU
seconds of this process (``time.process_time``, one thread), so other jobs on the machine do not
bias the comparison. The rows train in turns, ``--slices`` slices each (A, B, C, A, B, C …), so slow
drift of the machine hits every row alike. The baseline is today's recipe (ε-prediction, uniform
weighting, scaled-linear betas, constant learning rate); each other row changes one thing; the
cumulative row changes them together; EMA decays are compared on the baseline's own training; the
peer is diffusers' ``UNet2DModel`` with equal parameters (``benchmark.peer_config``), its
``DDPMScheduler``, ε-prediction and AdamW at its usual lr 1e-4, sampled with its own schedulers.

Each line of the table is one trained model and one sampler on ``--samples`` samples from the same
x_T: FID against the test set in the course evaluator's features (with the real-vs-real floor at the
same N), the share of each predicted class, the noise-like count, and the CPU seconds and optimizer
steps of training. ``--out docs/recipe.md`` writes the Markdown page and one sample grid per row
(``docs/recipe/``); the JSON (``--json``) holds everything.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from . import benchmark
from .cli import Parser, reports_errors
from ..config import OPTIMISED
from ..losses import diffusion_loss
from ..validation import check_positive_int, check_real, fail

__all__ = ["Recipe", "Row", "ROWS", "SAMPLERS", "PEER_SAMPLERS", "lr_at", "run_study", "format_markdown", "main"]

EMA_DECAY = 0.999  # lesson 03's
WARMUP = 0.05  # share of the CPU budget the warm-up + cosine learning rate spends warming up
SAMPLING_STEPS = 20
GRID_SIZE = 64  # samples in each row's grid


@dataclass(frozen=True)
class Recipe:
    """How one row trains; ``lr`` None is the budget's (lesson 02's), ``batch_scale`` multiplies its batch."""

    prediction: str = "eps"  # what the network predicts: "eps" or "v" (dlcourse.losses)
    weighting: str = "uniform"  # "uniform" or "min_snr" (γ = gamma)
    gamma: float = 5.0
    schedule: str = "scaled_linear"  # "scaled_linear", "cosine", or the peer's "diffusers cosine"
    lr_schedule: str = "constant"  # or "warmup_cosine" (lr_at)
    lr: float | None = None
    batch_scale: float = 1.0
    network: str = "ours"  # or "peer"
    seed: int = 0  # initial weights, batches, t and ε


@dataclass(frozen=True)
class Row:
    """One trained model: its recipe, the EMA decays it is sampled with (the first is its own, updated
    inside its CPU clock; further ones are extra copies updated off the clock; None: the raw weights)
    and its samplers (the first draws the row's grid)."""

    name: str
    change: str
    recipe: Recipe
    ema_decays: tuple[float | None, ...] = (EMA_DECAY,)
    samplers: tuple[str, ...] = (f"DPM-Solver++(2M)-{SAMPLING_STEPS}", f"DDIM-{SAMPLING_STEPS}")
    needs: tuple[str, ...] = ()


BASELINE = Recipe()
CUMULATIVE = Recipe(prediction="v", weighting="min_snr", schedule="cosine", lr_schedule="warmup_cosine")

ROWS: list[Row] = [
    Row("baseline", "today's recipe: ε, uniform, scaled-linear betas, constant lr", BASELINE,
        ema_decays=(EMA_DECAY, None, 0.95, 0.99)),
    Row("v-prediction", "predict v = √ᾱ ε − √(1−ᾱ) x₀", replace(BASELINE, prediction="v")),
    Row("min-SNR-5", "min-SNR-γ weighting, γ = 5", replace(BASELINE, weighting="min_snr")),
    Row("cosine schedule", "cosine betas", replace(BASELINE, schedule="cosine")),
    Row("warm-up + cosine lr", f"lr: linear warm-up over {WARMUP:.0%} of the budget, then cosine decay to 0",
        replace(BASELINE, lr_schedule="warmup_cosine")),
    Row("batch ×0.5", "half the budget's batch", replace(BASELINE, batch_scale=0.5)),
    Row("batch ×2", "twice the budget's batch", replace(BASELINE, batch_scale=2.0)),
    Row("baseline, seed 1", "the baseline with other initial weights, batches, t and ε: the run-to-run spread",
        replace(BASELINE, seed=1)),
    Row("cumulative", "v-prediction + min-SNR-5 + cosine schedule + warm-up/cosine lr", CUMULATIVE),
    Row("cumulative, batch ×0.5", "the cumulative row with half the budget's batch",
        replace(CUMULATIVE, batch_scale=0.5)),
    Row("cosine, batch ×0.5", "ε kept (lessons 02, 04, 05 teach it): cosine betas with half the budget's batch",
        replace(BASELINE, schedule="cosine", batch_scale=0.5)),
    Row("v + cosine, batch ×0.5", "v-prediction and cosine betas with half the budget's batch",
        replace(BASELINE, prediction="v", schedule="cosine", batch_scale=0.5)),
    Row("diffusers peer", "UNet2DModel, DDPMScheduler (cosine), ε, AdamW lr 1e-4",
        Recipe(schedule="diffusers cosine", lr=1e-4, network="peer"),
        samplers=("DDPMScheduler-T", f"DDPMScheduler-{SAMPLING_STEPS}", f"DDIMScheduler-{SAMPLING_STEPS}"),
        needs=("diffusers",)),
]


# --------------------------------------------------------------------------- models and schedules

def _peer_scheduler(T: int):
    """The peer's noise scheduler: diffusers' cosine betas (``squaredcos_cap_v2``) over T steps; its default
    linear betas assume T = 1000 and leave ᾱ_{T−1} ≈ 0.13 at T = 200 (docs/design.md)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")


def _schedule(name: str, T: int):
    from ..schedules import Schedule, cosine_betas, scaled_linear_betas

    if name == "diffusers cosine":
        return Schedule(_peer_scheduler(T).betas.double())
    makers = {"scaled_linear": scaled_linear_betas, "cosine": cosine_betas}
    if name not in makers:
        raise fail("schedule", f"one of {sorted(makers)} or 'diffusers cosine'", repr(name))
    return Schedule(makers[name](T))


def _network(network: str, sizes, seed: int = 0) -> torch.nn.Module:
    """Lesson 02's U-Net with lesson 03's switches, or the peer with as many parameters (seeded: every row of
    one network and seed starts from the same weights)."""
    from ..models import UNet, count_parameters

    torch.manual_seed(seed)
    ours = UNet(channels=tuple(sizes.channels), image_size=sizes.image_size, T=sizes.T, **OPTIMISED)
    if network == "ours":
        return ours
    config, _ = benchmark.peer_config(count_parameters(ours), sizes.image_size, len(sizes.channels))
    torch.manual_seed(seed)
    return benchmark.PeerUNet(sizes.image_size, sizes.T, config)


def lr_at(recipe: Recipe, peak: float, spent: float) -> float:
    """The learning rate after the share ``spent`` ∈ [0, 1] of the CPU budget: constant ``peak``, or a linear
    warm-up over the first ``WARMUP`` then cosine decay to 0. The schedule runs on the CPU clock, since the
    number of steps a budget allows is known only at its end."""
    if recipe.lr_schedule == "constant":
        return peak
    if spent < WARMUP:
        return peak * spent / WARMUP
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (spent - WARMUP) / (1 - WARMUP))))


class _Training:
    """One row being trained: its ``TrainStep``, its CPU clock and its extra EMA copies."""

    def __init__(self, row: Row, sizes, data: torch.Tensor, cpu_seconds: float):
        from ..training import EMA, FastPath, TrainStep

        if row.recipe.lr_schedule not in ("constant", "warmup_cosine"):
            raise fail("lr_schedule", "'constant' or 'warmup_cosine'", repr(row.recipe.lr_schedule))
        self.row, self.recipe, self.budget = row, row.recipe, cpu_seconds
        self.schedule = _schedule(row.recipe.schedule, sizes.T)
        self.net = _network(row.recipe.network, sizes, row.recipe.seed)
        self.peak_lr = row.recipe.lr or sizes.lr
        self.batch_size = max(1, round(row.recipe.batch_scale * sizes.batch_size))
        self.generator = torch.Generator().manual_seed(row.recipe.seed)  # this row's t and ε, however interleaved
        own, *extra = row.ema_decays
        self.run = TrainStep(self.net, self._loss, data, batch_size=self.batch_size, lr=self.peak_lr,
                             device=torch.device("cpu"), fast=FastPath(), seed=row.recipe.seed, ema_decay=own)
        self.extra = {d: EMA(self.net, d) for d in extra if d is not None}
        self.cpu_seconds, self.steps, self.longest_step, self.losses, self.lrs = 0.0, 0, 0.0, [], []

    def _loss(self, model, x0):
        return diffusion_loss(model, x0, None, self.schedule, prediction=self.recipe.prediction,
                              weighting=self.recipe.weighting, gamma=self.recipe.gamma, generator=self.generator)

    def step(self) -> None:
        lr = lr_at(self.recipe, self.peak_lr, self.cpu_seconds / self.budget)
        for group in self.run.optimizer.param_groups:
            group["lr"] = lr
        clock = time.process_time()
        loss = self.run(self.steps)
        spent = time.process_time() - clock
        for ema in self.extra.values():
            ema.update(self.net)
        self.cpu_seconds += spent
        self.longest_step = max(self.longest_step, spent)
        self.steps += 1
        self.losses.append(float(loss))
        self.lrs.append(lr)

    def weights(self, decay: float | None) -> torch.nn.Module:
        """The model sampled for an EMA ``decay`` (None: the raw weights)."""
        if decay is None:
            return self.net.eval()
        if decay == self.row.ema_decays[0]:
            return self.run.ema.model
        return self.extra[decay].model

    def record(self) -> dict:
        from ..models import count_parameters

        last = self.losses[-max(1, len(self.losses) // 10):]
        return {"recipe": asdict(self.recipe), "lr": self.peak_lr, "batch_size": self.batch_size,
                "ema_decays": list(self.row.ema_decays), "cpu_seconds": self.cpu_seconds, "steps": self.steps,
                "longest_step_cpu_seconds": self.longest_step, "final_loss": sum(last) / len(last),
                "lr_first": self.lrs[0], "lr_last": self.lrs[-1], "parameters": count_parameters(self.net),
                "alpha_bar_last": float(self.schedule.alpha_bars[-1]),
                "images_seen": self.steps * self.batch_size}


# --------------------------------------------------------------------------- samplers

def _ours(sampler):
    """One of the course's sampling loops (``dlcourse.sampling``), run on the row's schedule and prediction."""

    def sample(model, training: _Training, shape, generator):
        return sampler(lambda x, t: model(x, t), training.schedule, shape, steps=SAMPLING_STEPS, generator=generator,
                       device="cpu", progress=False, prediction=training.recipe.prediction)

    return sample


def _peer(kind: str, steps: int | None):
    """diffusers' own loop: ``scheduler.set_timesteps(steps)`` (None: every one of T), then ``scheduler.step``
    per timestep (x̂₀ clipped, its default)."""

    def sample(model, training: _Training, shape, generator):
        import diffusers

        scheduler = getattr(diffusers, kind).from_config(_peer_scheduler(training.schedule.T).config)
        scheduler.set_timesteps(steps or training.schedule.T)
        x = torch.randn(shape, generator=generator)
        with torch.no_grad():
            for t in scheduler.timesteps:
                x = scheduler.step(model(x, t.expand(shape[0])), t, x, generator=generator).prev_sample
        return x

    return sample


SAMPLERS = {f"DPM-Solver++(2M)-{SAMPLING_STEPS}": "dpm_solver_pp_2m_sample", f"DDIM-{SAMPLING_STEPS}": "ddim_sample"}
PEER_SAMPLERS = {"DDPMScheduler-T": ("DDPMScheduler", None),
                 f"DDPMScheduler-{SAMPLING_STEPS}": ("DDPMScheduler", SAMPLING_STEPS),
                 f"DDIMScheduler-{SAMPLING_STEPS}": ("DDIMScheduler", SAMPLING_STEPS)}


def _sampler(name: str):
    from .. import sampling

    if name in SAMPLERS:
        return _ours(getattr(sampling, SAMPLERS[name]))
    if name in PEER_SAMPLERS:
        return _peer(*PEER_SAMPLERS[name])
    raise fail("samplers", f"names from {sorted(SAMPLERS) + sorted(PEER_SAMPLERS)}", repr(name))


# --------------------------------------------------------------------------- the study

def _scores(x: torch.Tensor, test_features: torch.Tensor, train: torch.Tensor, evaluator) -> dict:
    """FID against the test features, the share of each predicted class, the noise-like count."""
    from ..metrics import frechet_distance, noise_like

    classes, _ = evaluator.predict(x)
    shares = torch.bincount(classes, minlength=len(evaluator.classes)).float() / len(x)
    return {"fid": frechet_distance(evaluator.features(x), test_features),
            "class_shares": dict(zip(evaluator.classes, shares.tolist())), "noise_like": noise_like(x, train)}


def _weights_label(decay: float | None, own: float | None) -> str:
    if decay is None:
        return "raw weights"
    return f"EMA {decay:g}" + ("" if decay == own else " (same training)")


def run_study(rows: list[Row], sizes, *, cpu_seconds: float, n_samples: int, slices: int = 12,
              grids: Path | None = None, progress: bool = True) -> dict:
    """Train every row for ``cpu_seconds`` of this process's CPU time in ``slices`` interleaved turns, then sample
    and score each (row, EMA choice, sampler). Returns the report: real-vs-real floor, rows (or their skip
    reasons) and lines. ``grids``: a folder for one PNG of ``GRID_SIZE`` samples per row."""
    from tqdm.auto import tqdm

    from ..data import load_flowers
    from ..metrics import load_evaluator

    train = load_flowers("train", image_size=sizes.image_size, n=sizes.n_images, progress=False).images
    test = load_flowers("test", image_size=sizes.image_size, progress=False).images
    if n_samples > len(train):
        raise fail("--samples", f"at most the {len(train)} training images of the budget", n_samples)
    evaluator = load_evaluator("cpu")
    test_features = evaluator.features(test)
    report = {"real": {"n": n_samples, "test_images": len(test),
                       **_scores(train[:n_samples], test_features, train, evaluator)},
              "rows": [], "lines": []}
    trainings, loads = [], []
    for row in rows:
        reason = benchmark._skip_reason(row, torch.device("cpu"), compile_rows=False)
        entry = {"name": row.name, "change": row.change}
        if reason is None:
            trainings.append(_Training(row, sizes, train, cpu_seconds))
        else:
            entry["skipped"] = reason
        report["rows"].append(entry)
    bar = tqdm(total=slices * len(trainings), desc="training slices", disable=not progress)
    for k in range(1, slices + 1):
        for training in trainings:
            while training.cpu_seconds < cpu_seconds * k / slices:
                training.step()
            bar.update()
        loads.append(os.getloadavg()[0])
    bar.close()
    by_name = {t.row.name: t for t in trainings}
    for entry in report["rows"]:
        if entry["name"] in by_name:
            entry.update(by_name[entry["name"]].record())
    shape = (n_samples, 3, sizes.image_size, sizes.image_size)
    for training in tqdm(trainings, desc="sampling", disable=not progress):
        row = training.row
        for decay in row.ema_decays:
            model = training.weights(decay)
            for sampler in row.samplers:
                clock = time.process_time()
                x = _sampler(sampler)(model, training, shape, torch.Generator().manual_seed(1))
                line = {"row": row.name, "weights": _weights_label(decay, row.ema_decays[0]), "sampler": sampler,
                        "sampling_cpu_seconds": time.process_time() - clock,
                        **_scores(x, test_features, train, evaluator)}
                report["lines"].append(line)
                if grids is not None and decay == row.ema_decays[0] and sampler == row.samplers[0]:
                    line["grid"] = _save_grid(x[:GRID_SIZE], grids, row.name, f"{row.name}: {sampler}, FID "
                                              f"{line['fid']:.1f}")
    report["load_average_during"] = loads
    return report


def _save_grid(x: torch.Tensor, folder: Path, name: str, title: str) -> str:
    from ..plotting import show_images

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".png")
    show_images(x, nrow=8, title=title, figsize=(4, 4.4)).savefig(path, dpi=100, bbox_inches="tight")
    return path.name


# --------------------------------------------------------------------------- reporting

def _shares(shares: dict) -> str:
    return " · ".join(f"{100 * s:.0f}" for s in shares.values())


def format_markdown(info: dict) -> str:
    """The page: how the study ran, the table (one line per model and sampler) and the grids."""
    sizes, real, rows = info["sizes"], info["real"], {r["name"]: r for r in info["report"]["rows"]}
    loads = info["report"]["load_average_during"]
    peer = rows.get("diffusers peer", {})
    decays = sorted({d for r in rows.values() for d in r.get("ema_decays", ()) if d})
    lines = [
        "# The recipe study: lesson 02's model at equal CPU seconds",
        "",
        f"Generated by `{info['command']}` (do not edit by hand; `dlcourse recipe --help`).",
        "",
        f"- **Machine**: {info['machine']}, {info['threads']} thread(s); {info['date']}. Load average (1 min) "
        f"before {info['load_average_before'][0]:.1f}, during {min(loads, default=0):.1f}–"
        f"{max(loads, default=0):.1f}, after {info['load_average_after'][0]:.1f}. Compute is this process's CPU "
        "time, so other jobs do not count against a row.",
        f"- **Model**: lesson 02's unconditional U-Net at the `{sizes['mode']}` budget ({sizes['image_size']}×"
        f"{sizes['image_size']}, channels {tuple(sizes['channels'])}, T = {sizes['T']}, {sizes['n_images']:,} "
        f"training images) with lesson 03's optimised switches ({info['parameters']:,} parameters). Every row "
        f"trained for {info['cpu_seconds']:g} CPU seconds, in {info['slices']} interleaved slices.",
        f"- **Baseline**: today's recipe — ε-prediction, uniform weighting, scaled-linear betas, constant lr "
        f"{sizes['lr']:g}, batch {sizes['batch_size']}, EMA {EMA_DECAY:g}. Each row below it changes one thing; "
        "the baseline's other EMA decays average its own training. The course's EMA warms up, d_k = "
        "min(d, (1+k)/(10+k)), so decay d takes effect only after (10d − 1)/(1 − d) updates ("
        + ", ".join(f"{d:g}: {(10 * d - 1) / (1 - d):,.0f}" for d in decays)
        + "); before that every d is the same average.",
        "- **Peer**: " + (f"diffusers `UNet2DModel` ({peer['parameters']:,} parameters, "
                          f"`benchmark.peer_config`, diffusers {info['diffusers']}), `DDPMScheduler` with its cosine "
                          f"betas at T = {sizes['T']} (its default linear betas assume T = 1000), ε-prediction, AdamW "
                          f"lr {peer['lr']:g} constant, the same batch and EMA; sampled by diffusers' own "
                          "scheduler loops."
                          if "parameters" in peer else f"skipped: {peer.get('skipped', 'not in this run')}."),
        f"- **Scores**: N = {real['n']} samples per line, every line from the same x_T; FID against the "
        f"{real['test_images']:,} test images in the course evaluator's features (`docs/metrics.md`); "
        f"**floor at this N: {real['fid']:.2f}** (N training images vs the test set). Class shares: the "
        "evaluator's predicted class of each sample, in % (daisy · dandelion · rose · sunflower · tulip). "
        "Noise-like: samples rougher than every training image. Samplers clip x̂₀.",
        "",
        "Rows:",
        "",
        *(f"- **{r['name']}**: {r['change']}" + (f" (skipped: {r['skipped']})" if "skipped" in r else "")
          for r in rows.values()),
        "",
        "| row | weights | sampler | FID ↓ | class shares % | noise-like | train CPU s | steps | sampling CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| real images ({real['n']} training) | – | – | {real['fid']:.2f} | {_shares(real['class_shares'])} | "
        f"{real['noise_like']} | – | – | – |",
    ]
    for line in info["report"]["lines"]:
        row = rows[line["row"]]
        lines.append(f"| {line['row']} | {line['weights']} | {line['sampler']} | {line['fid']:.1f} | "
                     f"{_shares(line['class_shares'])} | {line['noise_like']} | {row['cpu_seconds']:.1f} | "
                     f"{row['steps']:,} | {line['sampling_cpu_seconds']:.1f} |")
    grids = [line for line in info["report"]["lines"] if "grid" in line]
    if grids:
        lines += ["", f"## Samples ({GRID_SIZE} per row, the row's own weights and first sampler)", ""]
        lines += [f"![{g['row']}]({info['grids']}/{g['grid']})" for g in grids]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line

@reports_errors("dlcourse recipe")
def main(argv: list[str] | None = None) -> int:
    """``dlcourse recipe [--cpu-seconds S] [--samples N] [--rows TEXT]... [--budget B] [--out FILE.md] [--json FILE]``."""
    from .. import budget
    from ..models import count_parameters
    from .results import machine

    parser = Parser(prog="dlcourse recipe", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-seconds", type=float, default=120.0, help="training CPU seconds per row (default 120)")
    parser.add_argument("--samples", type=int, default=500, help="samples per line for FID (default 500)")
    parser.add_argument("--slices", type=int, default=12, help="interleaved training turns per row (default 12)")
    parser.add_argument("--rows", action="append", default=None,
                        help="only rows whose name contains this text (repeat for several)")
    parser.add_argument("--budget", default=None, help="sizes of this budget (default: the one in force)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default=None, help="Markdown page to write (its grids go in a folder beside it)")
    parser.add_argument("--json", default="runs/recipe.json", help="JSON file to write (default runs/recipe.json)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    cpu_seconds = check_real(args.cpu_seconds, "--cpu-seconds", low=0, low_open=True)
    n_samples = check_positive_int(args.samples, "--samples")
    if n_samples < 2:
        raise fail("--samples", "at least 2 (FID needs two samples)", n_samples)
    rows = [r for r in ROWS if args.rows is None or any(text in r.name for text in args.rows)]
    if not rows:
        raise fail("--rows", f"text found in a row name (rows: {[r.name for r in ROWS]})", repr(args.rows))
    json_out = benchmark._check_out(args.json)
    md_out = None if args.out is None else benchmark._check_out(args.out)
    sizes = budget("02_ddpm", args.budget)
    torch.set_num_threads(check_positive_int(args.threads, "--threads"))
    load_before = os.getloadavg()
    grids = None if md_out is None else md_out.with_suffix("")
    report = run_study(rows, sizes, cpu_seconds=cpu_seconds, n_samples=n_samples,
                       slices=check_positive_int(args.slices, "--slices"), grids=grids,
                       progress=not args.no_progress)
    info = {"command": " ".join(["dlcourse recipe", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "threads": torch.get_num_threads(), "load_average_before": load_before,
            "load_average_after": os.getloadavg(), "cpu_seconds": cpu_seconds, "slices": args.slices,
            "sizes": asdict(sizes), "diffusers": benchmark._diffusers_version(),
            "parameters": count_parameters(_network("ours", sizes)),
            "grids": None if grids is None else grids.name, "real": report["real"], "report": report}
    page = format_markdown(info)
    print(page)
    json_out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {json_out}")
    if md_out is not None:
        md_out.write_text(page)
        print(f"wrote {md_out} and its grids in {grids}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

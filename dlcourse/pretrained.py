"""Reference models: the lessons' own models, trained at the CPU budget and shipped with the package.

A student whose training went wrong, or who has no time, still sees what a lesson is about:

    ref = dlcourse.pretrained.load("04_cfg")        # ref.model (eval mode), ref.schedule, ref.info
    x = ddim_sample(guided_eps_fn(ref.model, c, w=2.0), ref.schedule, shape)

Each reference is a folder ``model.safetensors`` + ``config.json`` (the model registry's format)
+ ``reference.json``: the schedule (scaled linear betas, T), the budget, machine and date it was
trained on, and ``check``: scores that :func:`score` recomputes from the shipped weights (the
tests do, so a reference that no longer scores what the results page says fails CI). Each
reference must also reach its floors (:class:`Reference`: an FID ceiling, a class-accuracy floor),
so that a reference replaced by a noise model fails CI too.
The notebooks write their model with :func:`save_reference`; ``dlcourse results --budget cpu
--update-references`` copies those folders here (from the cpu budget only, and only references that
reach their floors).
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from dlcourse import config
from dlcourse.data import load_flowers
from dlcourse.device import get_device
from dlcourse.files import write_atomically
from dlcourse.guidance import guided_eps_fn, one_hot
from dlcourse.metrics import class_accuracy, diversity, frechet_distance, load_evaluator
from dlcourse.models import count_parameters, load_model, save_model
from dlcourse.sampling import ddim_sample
from dlcourse.schedules import Schedule, scaled_linear_betas
from dlcourse.validation import describe, fail

__all__ = ["BUDGET", "REFERENCES", "Reference", "WEIGHTS", "available", "load", "save_reference", "score"]

WEIGHTS = Path(__file__).resolve().parent / "weights" / "reference"
BUDGET = "cpu"  # the budget every shipped reference is trained at (its lesson's sizes: config.budget(lesson, BUDGET))

# the regression check: small enough for a CPU test, fixed seeds, DDIM with x̂_0 clipping
CHECK = {"n": 100, "steps": 25, "seed": 0}

# Floors at CHECK, from the scores the shipped references recorded (reference.json: trained 2026-12-02 at batch 32,
# scored with the two-resolution evaluator; docs/results.md):
# FID at most FID_MARGIN × the recorded FID, class accuracy at least the recorded one − ACCURACY_MARGIN.
# Retraining at the cpu budget moves them a few % (lesson 04 at w = 3: FID 24.9 against 24.2); quick-budget
# models score FID 100–560 and accuracy 0.18.
FID_MARGIN = 1.25
ACCURACY_MARGIN = 0.15


@dataclass(frozen=True)
class Reference:
    """A shipped reference: its lesson, what it is, its ``kind`` ("unconditional" models are scored by FID,
    "class" models by class accuracy and FID of guided samples at the weight w stored in their
    reference.json) and the floors its :func:`score` at ``CHECK`` must reach."""

    lesson: str
    description: str
    kind: str
    max_fid: float
    min_accuracy: float | None = None

    def missed(self, scores: dict) -> list[str]:
        """The floors ``scores`` miss, one phrase each; empty when it reaches them all."""
        missed = []
        if not scores["FID"] <= self.max_fid:
            missed.append(f"FID {scores['FID']:.2f} above its ceiling {self.max_fid:.2f}")
        if self.min_accuracy is not None and not scores["accuracy"] >= self.min_accuracy:
            missed.append(f"class accuracy {scores['accuracy']:.3f} below its floor {self.min_accuracy:.3f}")
        return missed


REFERENCES: dict[str, Reference] = {
    "02_ddpm": Reference("02_ddpm", "lesson 02's TimeUNet, unconditional DDPM", "unconditional",
                         max_fid=FID_MARGIN * 57.36),
    "03_optimised": Reference("03_optimizations", "lesson 03's optimised UNet, unconditional", "unconditional",
                              max_fid=FID_MARGIN * 77.03),
    "04_cfg": Reference("04_classifier_free_guidance", "lesson 04's ConditionalUNet, 5 classes, trained for CFG",
                        "class", max_fid=FID_MARGIN * 29.35, min_accuracy=0.95 - ACCURACY_MARGIN),
}


def _check_name(name) -> str:
    if name not in REFERENCES:
        raise fail("name", f"one of {sorted(REFERENCES)}", describe(name))
    return name


def available() -> list[str]:
    """Names of the references whose weights ship with this copy of the package."""
    return [name for name in REFERENCES if (WEIGHTS / name / "reference.json").is_file()]


def _schedule(T: int):
    return Schedule(scaled_linear_betas(T))


def score(model, schedule, kind: str, *, n: int = CHECK["n"], steps: int = CHECK["steps"], seed: int = CHECK["seed"],
          w: float = 0.0, image_size: int | None = None, device=None) -> dict:
    """Sample ``n`` images (DDIM, ``steps`` steps, η = 0, x̂_0 clipped, generator seeded with
    ``seed``) and score them with the shipped evaluator against the test split:
    FID for every kind, and for ``kind="class"`` (balanced classes, guidance weight ``w``) the
    class accuracy and within-class diversity."""
    if kind not in ("unconditional", "class"):
        raise fail("kind", "'unconditional' or 'class'", describe(kind))
    size = image_size or model.config["image_size"]
    device = device or next(model.parameters()).device
    schedule = schedule.to(device)
    evaluator = load_evaluator(device)
    test = load_flowers("test", image_size=size, n=2000, progress=False)
    shape = (n, 3, size, size)
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    if kind == "class":
        labels = torch.arange(n) % len(test.classes)
        eps_fn = guided_eps_fn(model, one_hot(labels, len(test.classes)).to(device), w)
    else:
        eps_fn = model
    x = ddim_sample(eps_fn, schedule, shape, steps=steps, generator=generator, device=device, progress=False)
    x = x.clamp(-1, 1)
    out = {"FID": frechet_distance(evaluator.features(x), evaluator.features(test.images))}
    if kind == "class":
        out["accuracy"] = class_accuracy(x, labels, evaluator)
        out["diversity"] = diversity(x, labels, evaluator)
    return out


def save_reference(name: str, model, schedule, *, folder=None, w: float = 0.0, notes: dict | None = None) -> Path:
    """Save ``model`` as reference ``name`` into ``folder`` (default ``runs/reference/NAME``) with its
    schedule, the budget in force, the machine and date, and its :func:`score` at the check settings
    (guidance weight ``w`` for class models). ``notes``: extra JSON-able facts (e.g. the lesson's
    measured numbers). Returns the folder."""
    _check_name(name)
    folder = Path(folder) if folder is not None else Path("runs") / "reference" / name
    model = model.eval()
    save_model(model, folder)
    kind = REFERENCES[name].kind
    info = {
        "name": name,
        "lesson": REFERENCES[name].lesson,
        "description": REFERENCES[name].description,
        "kind": kind,
        "parameters": count_parameters(model),
        "schedule": {"betas": "scaled_linear", "T": schedule.T},
        "budget": config.mode(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", torch {torch.__version__}",
        "device": str(next(model.parameters()).device),
        "date": time.strftime("%Y-%m-%d"),
        "check": {**CHECK, "w": w, "scores": score(model, schedule, kind, w=w, **CHECK)},
        "notes": notes or {},
    }
    write_atomically(folder / "reference.json",
                     lambda p: Path(p).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n"))
    return folder


def load(name: str, device=None) -> SimpleNamespace:
    """The shipped reference ``name`` (see :data:`REFERENCES`): ``.model`` (eval mode, on ``device``,
    default :func:`dlcourse.get_device`), ``.schedule`` (on the same device) and ``.info``."""
    _check_name(name)
    folder = WEIGHTS / name
    if not (folder / "reference.json").is_file():
        raise FileNotFoundError(
            f"reference {name!r} is not shipped with this copy of dlcourse ({folder} is missing); "
            f"rebuild it with `dlcourse results --budget {BUDGET} --update-references`, or reinstall the package")
    info = json.loads((folder / "reference.json").read_text())
    device = torch.device(device) if device is not None else get_device()
    model = load_model(folder, device=device).eval()
    return SimpleNamespace(model=model, schedule=_schedule(info["schedule"]["T"]).to(device), info=info)

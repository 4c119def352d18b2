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

from dlcourse import clip as _registers_tiny_clip  # noqa: F401  (load_model of a reference's clip/)
from dlcourse import config
from dlcourse.data import load_flowers
from dlcourse.device import get_device
from dlcourse.files import write_atomically
from dlcourse.guidance import guided_eps_fn, one_hot
from dlcourse.metrics import class_accuracy, colour_accuracy, diversity, frechet_distance, load_evaluator
from dlcourse.models import TextUNet, count_parameters, load_model, save_model
from dlcourse.sampling import ddim_sample
from dlcourse.schedules import Schedule, scaled_linear_betas
from dlcourse.validation import describe, fail

__all__ = ["BUDGET", "CHECK_PROMPTS", "KINDS", "PARTS", "REFERENCES", "Reference", "WEIGHTS", "available", "load",
           "rescore", "save_reference", "score"]

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


KINDS = ("unconditional", "class", "text")
PARTS = ("vae", "clip")  # the models a reference may keep beside its denoiser, one sub-folder each

# "text" references are scored on one seen prompt per class (balanced, so chance is 1/5 for each head)
CHECK_PROMPTS = (("daisy", "white"), ("dandelion", "yellow"), ("rose", "red"), ("sunflower", "yellow"),
                 ("tulip", "purple"))


@dataclass(frozen=True)
class Reference:
    """A shipped reference: its lesson, what it is, its ``kind`` ("unconditional" models are scored by FID,
    "class" models by class accuracy and FID of guided samples at the weight w stored in their
    reference.json, "text" models by the class and petal-colour accuracy of samples of ``CHECK_PROMPTS``),
    the models it keeps beside its denoiser (``parts``, a subset of ``PARTS``) and the floors its
    :func:`score` at ``CHECK`` must reach."""

    lesson: str
    description: str
    kind: str
    max_fid: float
    min_accuracy: float | None = None
    min_colour_accuracy: float | None = None
    min_reconstruction_accuracy: float | None = None
    parts: tuple[str, ...] = ()

    def missed(self, scores: dict) -> list[str]:
        """The floors ``scores`` miss, one phrase each; empty when it reaches them all."""
        missed = []
        if not scores["FID"] <= self.max_fid:
            missed.append(f"FID {scores['FID']:.2f} above its ceiling {self.max_fid:.2f}")
        for key, floor, what in (("accuracy", self.min_accuracy, "class accuracy"),
                                 ("colour_accuracy", self.min_colour_accuracy, "petal-colour accuracy"),
                                 ("reconstruction_accuracy", self.min_reconstruction_accuracy,
                                  "class accuracy of VAE reconstructions")):
            if floor is not None and not scores[key] >= floor:
                missed.append(f"{what} {scores[key]:.3f} below its floor {floor:.3f}")
        return missed


REFERENCES: dict[str, Reference] = {
    "02_ddpm": Reference("02_ddpm", "lesson 02's TimeUNet, unconditional DDPM", "unconditional",
                         max_fid=FID_MARGIN * 57.36),
    "03_optimised": Reference("03_optimizations", "lesson 03's optimised UNet, unconditional", "unconditional",
                              max_fid=FID_MARGIN * 77.03),
    "04_cfg": Reference("04_classifier_free_guidance", "lesson 04's ConditionalUNet, 5 classes, trained for CFG",
                        "class", max_fid=FID_MARGIN * 29.35, min_accuracy=0.95 - ACCURACY_MARGIN),
    "05_text": Reference("05_clip_conditioning", "lesson 05's ConditionalUNet on TinyCLIP's pooled text embedding",
                         "text", max_fid=FID_MARGIN * 80.70, min_accuracy=0.79 - ACCURACY_MARGIN,
                         min_colour_accuracy=0.97 - ACCURACY_MARGIN, parts=("clip",)),
    "06_latent": Reference("06_latent_diffusion", "lesson 06's TextUNet on VAE latents, TinyCLIP tokens by "
                           "cross-attention", "text", max_fid=FID_MARGIN * 104.08, min_accuracy=0.51 - ACCURACY_MARGIN,
                           min_colour_accuracy=0.88 - ACCURACY_MARGIN, min_reconstruction_accuracy=0.95 - 0.05,
                           parts=("vae", "clip")),
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


def _prompt_context(model, clip, prompts: list[str]) -> torch.Tensor:
    """What ``model`` is conditioned on: TinyCLIP's per-token features for a cross-attention ``TextUNet``,
    its pooled embedding ĝ(y) for a ``ConditionalUNet``."""
    with torch.no_grad():
        return clip.encode_tokens(prompts)[0] if isinstance(model, TextUNet) else clip.encode_text(prompts)


def score(model, schedule, kind: str, *, n: int = CHECK["n"], steps: int = CHECK["steps"], seed: int = CHECK["seed"],
          w: float = 0.0, image_size: int | None = None, device=None, vae=None, latent_scale: float = 1.0,
          clip=None) -> dict:
    """Sample ``n`` images (DDIM, ``steps`` steps, η = 0, generator seeded with ``seed``; x̂_0 clipped in
    pixel space, not for latents) and score them with the shipped evaluator against the test split:
    FID for every kind; for ``kind="class"`` (balanced classes, guidance weight ``w``) the class accuracy
    and within-class diversity; for ``kind="text"`` (``clip`` encodes the prompts of ``CHECK_PROMPTS``, n/5
    samples each, weight ``w``) the class accuracy and the petal-colour accuracy. With ``vae`` the model
    denoises latents s·z: samples are decoded, x = vae.decode(z / s), and the VAE's own reconstructions
    decode(μ(x)) of n test images get their class accuracy ("reconstruction_accuracy")."""
    if kind not in KINDS:
        raise fail("kind", " or ".join(map(repr, KINDS)), describe(kind))
    if kind == "text" and clip is None:
        raise fail("clip", "the TinyCLIP whose text features condition the model (kind='text')", describe(clip))
    size = image_size or (vae.config["image_size"] if vae is not None else model.config["image_size"])
    device = device or next(model.parameters()).device
    schedule = schedule.to(device)
    evaluator = load_evaluator(device)
    test = load_flowers("test", image_size=size, n=2000, progress=False)
    shape = (n, model.config["image_channels"], model.config["image_size"], model.config["image_size"])
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    if kind == "class":
        labels = torch.arange(n) % len(test.classes)
        eps_fn = guided_eps_fn(model, one_hot(labels, len(test.classes)).to(device), w)
    elif kind == "text":
        pairs = [CHECK_PROMPTS[i % len(CHECK_PROMPTS)] for i in range(n)]
        labels = torch.tensor([test.classes.index(cls) for cls, _ in pairs])
        colours = [colour for _, colour in pairs]
        eps_fn = guided_eps_fn(model, _prompt_context(model, clip, [f"a {k} {c}" for c, k in pairs]).to(device), w)
    else:
        eps_fn = model
    x = ddim_sample(eps_fn, schedule, shape, steps=steps, generator=generator, device=device, progress=False,
                    x0_mode="clip" if vae is None else "none")
    x = _images(x, vae, latent_scale)
    out = {"FID": frechet_distance(evaluator.features(x), evaluator.features(test.images))}
    if kind in ("class", "text"):
        out["accuracy"] = class_accuracy(x, labels, evaluator)
    if kind == "class":
        out["diversity"] = diversity(x, labels, evaluator)
    if kind == "text":
        out["colour_accuracy"] = colour_accuracy(x, colours, evaluator)
    if vae is not None:
        with torch.no_grad():
            real = test.images[:n].to(device)
            out["reconstruction_accuracy"] = class_accuracy(_images(vae.encode(real)[0], vae), test.labels[:n],
                                                            evaluator)
    return out


def _images(x: torch.Tensor, vae=None, latent_scale: float = 1.0) -> torch.Tensor:
    """Images in [−1, 1] from samples x: pixels clamped, or with ``vae`` latents decoded, vae.decode(x / s)."""
    if vae is not None:
        with torch.no_grad():
            x = vae.decode(x / latent_scale)
    return x.clamp(-1, 1)


def _parts_given(name: str, given: dict) -> dict:
    """The sub-models passed to :func:`save_reference`, checked against the ones reference ``name`` keeps."""
    wanted = REFERENCES[name].parts
    for part, value in given.items():
        if (value is None) == (part in wanted):
            raise fail(part, f"{'the ' + part if part in wanted else 'None'} (reference {name!r} keeps "
                       f"{', '.join(wanted) or 'no models'} beside its denoiser)", describe(value))
    return {part: value for part, value in given.items() if value is not None}


def save_reference(name: str, model, schedule, *, folder=None, w: float = 0.0, notes: dict | None = None,
                   vae=None, latent_scale: float | None = None, clip=None) -> Path:
    """Save ``model`` as reference ``name`` into ``folder`` (default ``runs/reference/NAME``) with its
    schedule, the budget in force, the machine and date, and its :func:`score` at the check settings
    (guidance weight ``w`` for class and text models). ``vae`` (with the ``latent_scale`` s its latents were
    multiplied by) and ``clip`` go into the sub-folders ``vae/`` and ``clip/``, for references that keep them
    (``REFERENCES[name].parts``). ``notes``: extra JSON-able facts (e.g. the lesson's measured numbers).
    Returns the folder."""
    _check_name(name)
    parts = _parts_given(name, {"vae": vae, "clip": clip})
    if (vae is None) != (latent_scale is None):
        raise fail("latent_scale", "the scale s of the VAE's latents, given with vae (and only with it)",
                   describe(latent_scale))
    folder = Path(folder) if folder is not None else Path("runs") / "reference" / name
    model = model.eval()
    save_model(model, folder)
    for part, sub_model in parts.items():
        save_model(sub_model.eval(), folder / part)
    kind = REFERENCES[name].kind
    extra = {} if latent_scale is None else {"latent_scale": float(latent_scale)}
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
        "check": {**CHECK, "w": w, "scores": score(model, schedule, kind, w=w, **CHECK, **parts, **extra)},
        "notes": notes or {},
        **extra,
    }
    write_atomically(folder / "reference.json",
                     lambda p: Path(p).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n"))
    return folder


def load(name: str, device=None) -> SimpleNamespace:
    """The shipped reference ``name`` (see :data:`REFERENCES`): ``.model`` (eval mode, on ``device``,
    default :func:`dlcourse.get_device`), ``.schedule`` (on the same device) and ``.info``; for a reference
    that keeps them, ``.vae``, ``.latent_scale`` s and ``.decode(z)`` = vae.decode(z / s) clamped to [−1, 1]
    (images from the model's latents), and ``.clip``."""
    _check_name(name)
    folder = WEIGHTS / name
    if not (folder / "reference.json").is_file():
        raise FileNotFoundError(
            f"reference {name!r} is not shipped with this copy of dlcourse ({folder} is missing); "
            f"rebuild it with `dlcourse results --budget {BUDGET} --update-references`, or reinstall the package")
    info = json.loads((folder / "reference.json").read_text())
    device = torch.device(device) if device is not None else get_device()
    model = load_model(folder, device=device).eval()
    ref = SimpleNamespace(model=model, schedule=_schedule(info["schedule"]["T"]).to(device), info=info)
    for part in REFERENCES[name].parts:
        setattr(ref, part, load_model(folder / part, device=device).eval())
    if "vae" in REFERENCES[name].parts:
        ref.latent_scale = info["latent_scale"]

        ref.decode = lambda z: _images(z.to(device), ref.vae, ref.latent_scale)
    return ref


def rescore(ref: SimpleNamespace, **overrides) -> dict:
    """:func:`score` of a loaded reference at the settings its reference.json recorded (``overrides`` replace
    some, e.g. ``n=10``), with the sub-models it keeps."""
    check = {key: ref.info["check"][key] for key in ("n", "steps", "seed", "w")}
    parts = {part: getattr(ref, part) for part in PARTS if hasattr(ref, part)}
    if "vae" in parts:
        parts["latent_scale"] = ref.latent_scale
    return score(ref.model, ref.schedule, ref.info["kind"], **{**check, **overrides}, **parts)

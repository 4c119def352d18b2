"""Budgets: the one place where work is sized for the machine a lesson runs on.

Three budgets, one table. Notebooks read their sizes with ``budget("02_ddpm")`` and never
branch on the mode themselves, so they read the same under every budget.

- ``full``  — one CUDA GPU: the sizes the course is designed for (default where CUDA exists).
- ``cpu``   — a laptop without a GPU: each lesson in about 4–15 minutes on 2 cores, with pictures and
  numbers that mean something (16×16 images, small U-Nets; sized by measurement, see
  ``docs/results.md``). Default where there is no CUDA.
- ``quick`` — CI smoke runs: seconds per lesson, numbers meaningless.

Choose explicitly with ``DLCOURSE_BUDGET=quick|cpu|full``; ``DLCOURSE_QUICK=1`` (also
``true``/``yes``/``on``) is kept as a short form of ``DLCOURSE_BUDGET=quick``.

The table is one frozen dataclass per lesson (:data:`LESSONS`): each field is declared with its full,
cpu and quick values side by side, ``per_budget(full, cpu, quick, doc)``, and ``budget()`` returns an
instance holding one column. The notebooks, ``dlcourse doctor``, ``dlcourse benchmark``,
:mod:`dlcourse.pretrained` and ``assessments/train_reference.py`` all read it; nothing else holds a
lesson's widths, steps, T or learning rate.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import ClassVar

_TRUE = {"1", "true", "yes", "on"}
MODES = ("full", "cpu", "quick")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def mode_and_reason() -> tuple[str, str]:
    """The budget in force and why: ``DLCOURSE_BUDGET``, then ``DLCOURSE_QUICK``, then the hardware."""
    chosen = os.environ.get("DLCOURSE_BUDGET", "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"DLCOURSE_BUDGET: expected one of {', '.join(MODES)}, got {chosen!r} "
                             "(unset it to choose by hardware)")
        return chosen, f"DLCOURSE_BUDGET={chosen}"
    if os.environ.get("DLCOURSE_QUICK", "").strip().lower() in _TRUE:
        return "quick", "DLCOURSE_QUICK=1"
    if _cuda_available():
        return "full", "a CUDA GPU is available"
    return "cpu", "no CUDA GPU found"


def mode() -> str:
    """The budget in force: ``"full"``, ``"cpu"`` or ``"quick"`` (see :func:`mode_and_reason`)."""
    return mode_and_reason()[0]


def is_quick() -> bool:
    """True under the quick (CI) budget."""
    return mode() == "quick"


# The U-Net switches of the two models lesson 03 compares (dlcourse.models.UNet keyword arguments).
LESSON02 = {"norm": "batch", "activation": "relu", "pool": "max", "time_embedding": "mlp", "residual": False,
            "upsample": "transpose"}
OPTIMISED = {"norm": "group", "activation": "gelu", "pool": "rearrange", "time_embedding": "sinusoidal",
             "residual": True, "upsample": "nearest"}


def per_budget(full, cpu, quick, doc: str):
    """A lesson field: its values under the full, cpu and quick budgets (in :data:`MODES` order) and what it is."""
    return field(metadata={"budgets": (full, cpu, quick), "doc": doc})


def same(value, doc: str):
    """A lesson field with one value under every budget."""
    return per_budget(value, value, value, doc)


@dataclass(frozen=True)
class Training:
    """One training set-up of a lesson: ``models`` models of the class ``model`` (of ``dlcourse.models``, or
    ``TinyCLIP``), each built with ``kwargs`` and trained for ``steps`` optimizer updates of ``batch_size``
    examples. ``steps`` None: trained instead for the seconds that the lesson's training named
    ``same_seconds_as`` took (lesson 06's pixel model). ``kwargs`` may be given as a dict; it is kept as
    (name, value) pairs sorted by name, so that equal set-ups compare (and hash) equal."""

    name: str  # what the lesson calls it, unique within the lesson
    model: str
    kwargs: tuple[tuple[str, object], ...]
    batch_size: int
    steps: int | None
    models: int = 1
    same_seconds_as: str | None = None

    def __post_init__(self):
        if (self.steps is None) == (self.same_seconds_as is None):
            raise ValueError(f"Training {self.name!r}: expected steps or same_seconds_as (one of them), got "
                             f"steps={self.steps!r}, same_seconds_as={self.same_seconds_as!r}")
        object.__setattr__(self, "kwargs", tuple(sorted(dict(self.kwargs).items())))  # frozen: set once, here

    @property
    def setup(self) -> tuple:
        """(model, kwargs, batch_size): what one update costs; trainings with equal set-ups cost the same."""
        return self.model, self.kwargs, self.batch_size


@dataclass(frozen=True)
class Budget:
    """One lesson's sizes under one budget. Subclasses declare the fields with :func:`per_budget`."""

    mode: str  # the budget's name, one of MODES
    # a lesson of one training set-up: the dlcourse.models class it trains (None: see `trainings`)
    model: ClassVar[str | None] = None
    models_trained: ClassVar[int] = 1  # how many of them, each on the whole budget

    @property
    def quick(self) -> bool:
        """True under the quick (CI) budget."""
        return self.mode == "quick"

    @property
    def context_dim(self) -> int | None:
        """Size of the model's context c (None: unconditional)."""
        return None

    @property
    def trainings(self) -> tuple[Training, ...]:
        """Every model the lesson trains, in the lesson's order (``dlcourse doctor`` times them). By default
        ``models_trained`` models of the class ``model`` with the lesson's channels, image_size, T and
        context_dim (those it has), batch_size and train_steps; none when ``model`` is None. A lesson that
        trains several set-ups lists them itself."""
        if self.model is None:
            return ()
        kwargs = {"channels": self.channels, "image_size": self.image_size}
        if getattr(self, "T", None) is not None:
            kwargs["T"] = self.T
        if self.context_dim is not None:
            kwargs["context_dim"] = self.context_dim
        return (Training(self.model, self.model, kwargs, self.batch_size, self.train_steps, self.models_trained),)

    @classmethod
    def columns(cls) -> dict[str, tuple]:
        """The table as written: field name -> (full, cpu, quick)."""
        return {f.name: f.metadata["budgets"] for f in fields(cls) if "budgets" in f.metadata}


@dataclass(frozen=True)
class WelcomeBudget(Budget):
    """Lesson 00: a look at the flowers."""

    n_images: int = per_budget(64, 64, 32, "flowers drawn and shown")


@dataclass(frozen=True)
class DenoiserBudget(Budget):
    """Lesson 01: a U-Net that removes noise of one fixed level."""

    model: ClassVar[str] = "UNetDenoiser"
    n_images: int = per_budget(10_000, 4_000, 512, "training images")
    image_size: int = per_budget(32, 16, 32, "image side in pixels")
    channels: tuple[int, ...] = per_budget((64, 128, 256), (32, 64), (16, 32), "U-Net widths, one per resolution")
    train_steps: int = per_budget(3_000, 1_500, 60, "optimizer steps")
    batch_size: int = per_budget(128, 64, 32, "images per step")
    noise_level: float = same(0.5, "standard deviation σ of the added noise")


@dataclass(frozen=True)
class DDPMBudget(Budget):
    """Lesson 02: an unconditional DDPM."""

    model: ClassVar[str] = "TimeUNet"
    n_images: int = per_budget(10_000, 10_000, 512, "training images")
    image_size: int = per_budget(32, 16, 16, "image side in pixels")
    channels: tuple[int, ...] = per_budget((64, 128, 256), (32, 64), (16, 32), "U-Net widths, one per resolution")
    T: int = per_budget(1000, 200, 100, "diffusion steps")
    train_steps: int = per_budget(8_000, 6_000, 300, "optimizer steps")
    batch_size: int = per_budget(128, 32, 32, "images per step (cpu: 32, the recipe study's, docs/recipe.md)")
    lr: float = per_budget(1e-3, 2e-3, 2e-3, "peak learning rate")
    n_samples: int = per_budget(100, 100, 10, "images sampled for the grid and FID")


@dataclass(frozen=True)
class OptimisationsBudget(Budget):
    """Lesson 03: the lesson-02 U-Net (:data:`LESSON02`) against the optimised one (:data:`OPTIMISED`), DDIM, EMA."""

    model: ClassVar[str] = "UNet"
    models_trained: ClassVar[int] = 2  # the lesson-02 style and the optimised U-Net
    n_images: int = per_budget(10_000, 10_000, 256, "training images")
    image_size: int = per_budget(32, 16, 16, "image side in pixels")
    channels: tuple[int, ...] = per_budget((64, 128, 256), (32, 64), (16, 32), "U-Net widths, one per resolution")
    T: int = per_budget(1000, 200, 50, "diffusion steps")
    train_steps: int = per_budget(4_000, 3_500, 30, "optimizer steps of each of the two models")
    batch_size: int = per_budget(128, 32, 16, "images per step (cpu: 32, the recipe study's, docs/recipe.md)")
    lr: float = per_budget(1e-3, 2e-3, 1e-3, "peak learning rate")
    n_samples: int = per_budget(500, 200, 16, "images sampled per FID")
    ema_decay: float = per_budget(0.999, 0.999, 0.99, "decay of the exponential moving average of the weights")
    ddim_steps: tuple[int, ...] = per_budget((10, 20, 50, 100), (10, 25, 50), (10,),
                                             "DDIM steps S of the FID-vs-steps table (T is added as the last column)")
    sampling_steps: int = per_budget(50, 50, 10, "DDIM steps used to compare the models and EMA")
    timed_steps: int = per_budget(20, 5, 2, "timed optimizer steps per row of the speed table")


@dataclass(frozen=True)
class GuidanceBudget(Budget):
    """Lesson 04: classifier-free guidance on the flower classes."""

    model: ClassVar[str] = "ConditionalUNet"
    n_images: int = per_budget(10_000, 10_000, 512, "training images")
    image_size: int = per_budget(32, 16, 16, "image side in pixels")
    channels: tuple[int, ...] = per_budget((64, 128, 256), (32, 64), (16, 32), "U-Net widths, one per resolution")
    T: int = per_budget(1000, 200, 100, "diffusion steps")
    train_steps: int = per_budget(8_000, 6_000, 50, "optimizer steps")
    batch_size: int = per_budget(128, 32, 32, "images per step (cpu: 32, the recipe study's, docs/recipe.md)")
    lr: float = per_budget(1e-3, 2e-3, 1e-3, "peak learning rate")
    n_samples: int = per_budget(500, 200, 10,
                                "samples per guidance weight w in the trade-off sweep (balanced over the 5 classes)")
    n_test: int = per_budget(2_000, 2_000, 100, "test images that FID compares with")
    sampling_steps: int = per_budget(50, 25, 5, "DDIM steps")
    explorer_per_class: int = per_budget(4, 2, 1, "samples per (w, class) in the w-slider explorer (one batched run)")
    timing_repeats: int = per_budget(5, 3, 1, "repeats per timing of batched vs two-pass guidance (minimum reported)")

    @property
    def context_dim(self) -> int:
        """c = one_hot(class): one entry per flower class."""
        from .data import CLASSES

        return len(CLASSES)


@dataclass(frozen=True)
class CLIPBudget(Budget):
    """Lesson 05: TinyCLIP, then lesson 04's ConditionalUNet conditioned on its text embeddings."""

    model: ClassVar[str] = "ConditionalUNet"
    n_images: int = per_budget(10_000, 5_000, 512, "training images")
    n_test: int = per_budget(2_000, 1_000, 200, "test images")
    image_size: int = per_budget(32, 16, 16, "image side in pixels")
    clip_embed_dim: int = per_budget(64, 64, 32, "TinyCLIP's embedding size D")
    clip_steps: int = per_budget(3_000, 800, 40, "TinyCLIP's optimizer steps")
    clip_batch_size: int = per_budget(256, 128, 64, "TinyCLIP's batch: the N of the N×N similarity matrix")
    channels: tuple[int, ...] = per_budget((64, 128, 256), (32, 64), (16, 32), "U-Net widths, one per resolution")
    T: int = per_budget(1000, 200, 100, "diffusion steps")
    train_steps: int = per_budget(8_000, 4_000, 40, "the U-Net's optimizer steps")
    batch_size: int = per_budget(128, 32, 32, "the U-Net's images per step (cpu: 32, the recipe study's)")
    sampling_steps: int = per_budget(50, 25, 5, "DDIM steps")
    n_per_prompt: int = per_budget(100, 40, 4, "samples per prompt in the seen / held-out measurement")
    explorer_per_prompt: int = per_budget(4, 2, 1, "samples per (w, prompt) in the prompt explorer")

    @property
    def context_dim(self) -> int:
        """c = a TinyCLIP text embedding: D entries."""
        return self.clip_embed_dim


@dataclass(frozen=True)
class LatentBudget(Budget):
    """Lesson 06: a VAE at 32×32, latent against pixel diffusion, TinyCLIP's tokens through cross-attention."""

    n_images: int = per_budget(10_000, 5_000, 256, "training images")
    n_test: int = per_budget(2_000, 1_000, 100, "test images (FID, reconstruction error, editing)")
    image_size: int = per_budget(32, 32, 32, "image side in pixels")
    vae_channels: tuple[int, ...] = per_budget((64, 128), (16, 32), (8, 16), "VAE widths, one per ×½ level")
    latent_channels: int = same(4, "latent channels c of the 8×8×c latent (Stable Diffusion's 4; at the CPU "
                                   "budget c = 8 decoded as well but its latent class model reached 41.5 % class "
                                   "accuracy against 63.5 % for c = 4, docs/design.md)")
    vae_beta: float = same(1e-6, "weight β of the KL term in the VAE loss (1e-4 measured: σ ≈ 0.7, blurred decodes)")
    vae_steps: int = per_budget(6_000, 1_500, 10, "the VAE's optimizer steps")
    vae_batch_size: int = per_budget(128, 32, 16, "the VAE's images per step")
    clip_embed_dim: int = same(64, "embedding size D of lesson 05's shipped TinyCLIP (pretrained '05_text'), the "
                                   "pooled model's context")
    clip_text_width: int = same(64, "token width of lesson 05's shipped TinyCLIP: the context_dim of the "
                                    "cross-attention")
    channels: tuple[int, ...] = per_budget((128, 256), (32, 64), (16, 32), "latent U-Net widths, one per resolution")
    pixel_channels: tuple[int, ...] = per_budget((64, 128, 256), (32, 64), (8, 16), "the pixel-space U-Net's widths")
    attention_heads: int = per_budget(4, 4, 2, "heads of the self- and cross-attention blocks")
    T: int = per_budget(1000, 200, 50, "diffusion steps")
    attention_steps: int = per_budget(2_000, 400, 10, "optimizer steps of each model of the with/without attention test")
    train_steps: int = per_budget(10_000, 2_500, 20, "optimizer steps of each latent diffusion model")
    batch_size: int = per_budget(128, 64, 16, "diffusion images (latents) per step (cpu: 64; on 8×8 latents a "
                                              "step of 64 costs 1.6× one of 32 and measured 63.5 % class "
                                              "accuracy against 44 %)")
    lr: float = per_budget(1e-3, 2e-3, 2e-3, "peak learning rate of the diffusion models")
    drop_prob: float = same(0.1, "probability of dropping a sample's whole prompt (or class)")
    sampling_steps: int = per_budget(50, 25, 4, "DDIM steps")
    n_samples: int = per_budget(1_000, 200, 10, "samples per model in the latent-vs-pixel comparison")
    n_per_prompt: int = per_budget(100, 40, 4, "samples per prompt in the seen / held-out measurement")
    n_edit: int = per_budget(64, 32, 4, "images per editing measurement")
    explorer_per_class: int = per_budget(4, 2, 1, "samples per (w, class) in the latent model's w slider (one batched "
                                                  "run, decoded)")
    explorer_per_prompt: int = per_budget(4, 2, 1, "samples per (w, prompt) in the cross-attention model's prompt "
                                                   "explorer")

    @property
    def context_dim(self) -> int:
        """y = TinyCLIP's per-token features: text_width entries per token."""
        return self.clip_text_width

    @property
    def trainings(self) -> tuple[Training, ...]:
        """The lesson's eight models, in its order: the VAE; the latent U-Nets without and with self-attention;
        the latent class model, and the pixel one trained for the same seconds; the text models on lesson 05's
        TinyCLIP (loaded, not trained): its pooled embedding, and through cross-attention its token features and
        its word features."""
        from .data import CLASSES

        heads = self.attention_heads
        latent = {"image_channels": self.latent_channels, "channels": self.channels,
                  "image_size": self.image_size // 2 ** len(self.vae_channels), "T": self.T}
        vae = {"latent_channels": self.latent_channels, "channels": self.vae_channels, "image_size": self.image_size}
        pixel = {"channels": self.pixel_channels, "image_size": self.image_size, "T": self.T,
                 "context_dim": len(CLASSES)}
        cross = {**latent, "context_dim": self.context_dim, "heads": heads, "cross_attention_levels": 2,
                 "attention_heads": heads}
        n, steps = self.batch_size, self.train_steps
        return (
            Training("VAE", "VAE", vae, self.vae_batch_size, self.vae_steps),
            Training("latent U-Net, no attention", "UNet", {**latent, "attention_heads": 0}, n, self.attention_steps),
            Training(f"latent U-Net, {heads} heads", "UNet", {**latent, "attention_heads": heads}, n,
                     self.attention_steps),
            Training("latent class model", "ConditionalUNet",
                     {**latent, "context_dim": len(CLASSES), "attention_heads": heads}, n, steps),
            Training("pixel class model", "ConditionalUNet", pixel, n, None, same_seconds_as="latent class model"),
            Training("text model, pooled", "ConditionalUNet",
                     {**latent, "context_dim": self.clip_embed_dim, "attention_heads": heads}, n, steps),
            Training("text model, cross-attention", "TextUNet", cross, n, steps),
            Training("text model, cross-attention on words", "TextUNet", cross, n, steps),
        )


@dataclass(frozen=True)
class AssessmentBudget(Budget):
    """The assessment (assessments/assessment.ipynb): a ConditionalUNet on class + petal colour, and its grader."""

    model: ClassVar[str] = "ConditionalUNet"
    n_images: int = per_budget(10_000, 10_000, 512, "training images")
    image_size: int = per_budget(32, 16, 16, "image side in pixels")
    channels: tuple[int, ...] = per_budget((64, 128, 256), (32, 64), (16, 32), "U-Net widths, one per resolution")
    T: int = per_budget(1000, 200, 100, "diffusion steps")
    train_steps: int = per_budget(8_000, 6_000, 40, "optimizer steps")
    batch_size: int = per_budget(128, 32, 32, "images per step (cpu: 32, the recipe study's, docs/recipe.md)")
    lr: float = same(2e-3, "peak learning rate (AdamW)")
    ema_decay: float = same(0.999, "decay of the exponential moving average of the weights")
    drop_prob: float = same(0.1, "probability of dropping a sample's whole context c")
    n_per_pair: int = per_budget(40, 20, 8, "the grader's samples per (class, colour) pair (15 pairs)")
    sampling_steps: int = per_budget(50, 50, 25, "the grader's DDIM steps")
    n_train_features: int = per_budget(10_000, 2_000, 1_000, "training images of the grader's near-copy check")
    n_test: int = per_budget(2_000, 1_000, 300, "test images of the grader's FID")

    @property
    def context_dim(self) -> int:
        """c = [one_hot(class); one_hot(petal colour)] (dlcourse.grading.assessment.CONTEXT_DIM)."""
        from .data import CLASSES, PETAL_COLOURS

        return len(CLASSES) + len(PETAL_COLOURS)


# lesson -> its table, in course order
LESSONS: dict[str, type[Budget]] = {
    "00_welcome": WelcomeBudget,
    "01_unet_denoiser": DenoiserBudget,
    "02_ddpm": DDPMBudget,
    "03_optimizations": OptimisationsBudget,
    "04_classifier_free_guidance": GuidanceBudget,
    "05_clip_conditioning": CLIPBudget,
    "06_latent_diffusion": LatentBudget,
    "assessment": AssessmentBudget,
}


def budget(lesson: str, mode_name: str | None = None) -> Budget:
    """The sizes for ``lesson`` under ``mode_name`` (default: the budget in force): an instance of the
    lesson's :class:`Budget` class, with ``mode`` (its name) and ``quick`` (bool)."""
    if lesson not in LESSONS:
        raise ValueError(f"lesson: expected one of {sorted(LESSONS)}, got {lesson!r}")
    chosen = mode() if mode_name is None else mode_name
    if chosen not in MODES:
        raise ValueError(f"mode_name: expected one of {', '.join(MODES)} or None, got {chosen!r}")
    table = LESSONS[lesson]
    column = MODES.index(chosen)
    return table(mode=chosen, **{name: values[column] for name, values in table.columns().items()})

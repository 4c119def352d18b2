"""The graded assessment: its context encoding, its schedule, and the student's ``export``.

The assessment model is ε_θ(x_t, t, c) with c = [one_hot(class, 5); one_hot(petal colour, 6)]
(``context_dim = 11``), trained on the procedural flowers and sampled by the grader with
classifier-free guidance at the student's w. Both sides import from here, so the notebook and
the grader agree on what c means and which (class, colour) pairs exist.

A submission folder (written by :func:`export`) holds:

- the student's notebook (``assessment.ipynb``),
- ``model.safetensors`` + ``config.json`` (a registered architecture, see ``dlcourse.models``),
- ``answers.json``: ``{"w": <guidance weight>, "answers": {question: short text}}``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..data.flowers import _CLASS_PETALS, CLASSES, PETAL_COLOURS
from ..files import write_atomically
from ..guidance import one_hot
from ..models.registry import CONFIG_FILE, WEIGHTS_FILE, ReadLimits, load_model, save_model
from ..schedules import Schedule, scaled_linear_betas
from ..validation import check_real, describe, fail

__all__ = ["CONTEXT_DIM", "PAIRS", "NOTEBOOK_FILE", "ANSWERS_FILE", "W_RANGE", "MODEL_LIMITS", "flower_context",
           "assessment_schedule", "export", "check_submission"]

CONTEXT_DIM = len(CLASSES) + len(PETAL_COLOURS)
# (class index, petal-colour index) for every colour a class can take in the data: "red tulip", ...
PAIRS: tuple[tuple[int, int], ...] = tuple(
    (k, PETAL_COLOURS.index(colour)) for k, name in enumerate(CLASSES) for colour in _CLASS_PETALS[name]
)
NOTEBOOK_FILE = "assessment.ipynb"
ANSWERS_FILE = "answers.json"
W_RANGE = (-1.0, 10.0)
# what the grader (and check_submission) accepts as the student's model: a ConditionalUNet of at most
# 4 levels, 512 channels and 10 M parameters for this context and these image sizes, in a small file
MODEL_LIMITS = ReadLimits(
    header_bytes=2**20, file_bytes=64 * 2**20, architectures=("cond_unet",), max_levels=4, max_width=512,
    max_parameters=10_000_000,
    arguments={"T": range(10, 1001), "context_dim": (CONTEXT_DIM,), "image_channels": (3,), "image_size": (16, 32)},
)


def flower_context(labels: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """c = [one_hot(labels, 5); one_hot(colours, 6)]: float (N, 11)."""
    return torch.cat([one_hot(labels, len(CLASSES)), one_hot(colours, len(PETAL_COLOURS))], dim=1)


def assessment_schedule(T: int) -> Schedule:
    """The schedule the grader samples with: linear betas scaled to T steps (``scaled_linear_betas(T)``)."""
    return Schedule(scaled_linear_betas(T))


def _check_w(w) -> float:
    return check_real(w, "w", low=W_RANGE[0], high=W_RANGE[1], hint=" (the guidance weight)")


def check_submission(folder: str | os.PathLike) -> list[str]:
    """Problems that would stop the grader reading ``folder`` (empty list: ready to hand in)."""
    folder = Path(folder)
    problems = [f"{folder / name}: missing" for name in (NOTEBOOK_FILE, CONFIG_FILE, WEIGHTS_FILE, ANSWERS_FILE)
                if not (folder / name).is_file()]
    if problems:
        return problems
    try:
        load_model(folder, limits=MODEL_LIMITS)
        answers = json.loads((folder / ANSWERS_FILE).read_text(encoding="utf-8"))
        _check_w(answers.get("w"))
    except (ValueError, OSError) as error:
        problems.append(str(error))
    return problems


def export(folder: str | os.PathLike, model: torch.nn.Module, *, w: float, notebook: str | os.PathLike,
           answers: dict[str, str] | None = None) -> Path:
    """Write the submission ``folder``: ``notebook`` (your saved .ipynb), the model, and answers.json.

    ``w`` is the guidance weight the grader samples with; ``answers`` maps question ids to short text.
    Checks the folder as the grader will and raises ValueError listing every problem.
    """
    w = _check_w(w)
    notebook = Path(notebook)
    if not notebook.is_file() or notebook.suffix != ".ipynb":
        raise fail("notebook", "the path of your saved assessment notebook (.ipynb; save it first: Ctrl+S)",
                   repr(str(notebook)))
    answers = {} if answers is None else answers
    if not isinstance(answers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in answers.items()):
        raise fail("answers", "a dict {question id: short text}", describe(answers))
    folder = Path(folder)
    save_model(model, folder)
    write_atomically(folder / NOTEBOOK_FILE, lambda temp: shutil.copyfile(notebook, temp))
    text = json.dumps({"w": w, "answers": answers}, indent=2, sort_keys=True) + "\n"
    write_atomically(folder / ANSWERS_FILE, lambda temp: Path(temp).write_text(text, encoding="utf-8"))
    problems = check_submission(folder)
    if problems:
        raise ValueError(f"{folder}: not ready to hand in:\n  " + "\n  ".join(problems))
    return folder

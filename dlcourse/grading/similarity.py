"""``dlcourse gradebook similarity``: flag submissions that look alike; never changes a score.

Three signals, each a hint for a person to look at:

- *weights*: the cosine similarity of two models' weight matrices (tensors of two or more dimensions,
  which start random), estimated from a fixed random projection of each model to ``SKETCH`` numbers.
  Independently trained models land near 0; a copy, or a fine-tune of a classmate's model, near 1.
- *code*: the five exercise functions are the same after normalising names and formatting (the syntax
  tree with every identifier renamed in order of appearance; docstrings and comments dropped).
- *answers*: a written answer of at least ``MIN_ANSWER`` characters is the same after lower-casing
  and dropping punctuation and spacing.

The gradebook's ``similar_to`` column lists, per student, the others and why; ``similarity.html``
beside it lists every flagged pair.
"""
from __future__ import annotations

import ast
import hashlib
import html
import itertools
import os
import re
from pathlib import Path

import torch

from ..files import write_atomically
from ..validation import fail, is_real
from . import exercises, model as model_part, report
from .report import class_folders, student_id
from .assessment import ANSWERS_FILE, NOTEBOOK_FILE

SKETCH = 256
MIN_ANSWER = 40
_CHUNK = 65536


def weight_sketch(folder: Path) -> tuple[str, torch.Tensor] | None:
    """(architecture key, unit vector of SKETCH numbers) of the student's weights, or None when they
    cannot be read (the grader reports why)."""
    try:
        model = model_part.load_submission_model(folder)
    except Exception:  # noqa: BLE001 - an unreadable model is simply not compared
        return None
    config, state = model.config, model.state_dict()
    names = sorted(k for k, v in state.items() if v.dim() >= 2)
    key = hashlib.sha256(repr((sorted(config.items()), [(k, list(state[k].shape)) for k in names])).encode()).hexdigest()
    flat = torch.cat([state[k].double().flatten() for k in names]) if names else torch.zeros(1, dtype=torch.float64)
    sketch = torch.zeros(SKETCH, dtype=torch.float64)
    for i in range(0, flat.numel(), _CHUNK):  # the same projection for every student: seeded per chunk
        chunk = flat[i:i + _CHUNK]
        g = torch.Generator().manual_seed(i // _CHUNK)
        sketch += (torch.randn(chunk.numel(), SKETCH, generator=g).T @ chunk.float()).double()
    norm = sketch.norm()
    return (key, sketch / norm) if torch.isfinite(norm) and norm > 0 else None


class _Rename(ast.NodeTransformer):
    """Every identifier becomes v0, v1, ... in order of first appearance; docstrings go."""

    def __init__(self):
        self.names: dict[str, str] = {}

    def _name(self, name: str) -> str:
        return self.names.setdefault(name, f"v{len(self.names)}")

    def visit_Name(self, node):
        node.id = self._name(node.id)
        return node

    def visit_arg(self, node):
        node.arg = self._name(node.arg)
        node.annotation = None
        return node

    def visit_FunctionDef(self, node):
        node.name = self._name(node.name)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        node.returns = None
        self.generic_visit(node)
        return node


def code_key(folder: Path) -> str | None:
    """A hash of the normalised exercise code, or None when a cell is missing or does not parse."""
    try:
        modules = exercises.prepare(exercises.read_notebook(folder / NOTEBOOK_FILE))
        if any(isinstance(m, Exception) for m in modules.values()):
            return None
        dumps = [ast.dump(_Rename().visit(ast.parse(modules[name]))) for name in exercises.EXERCISES]
    except (exercises.SubmissionError, SyntaxError, RecursionError, MemoryError, ValueError):
        return None
    return hashlib.sha256("\n".join(dumps).encode()).hexdigest()


def answer_keys(folder: Path) -> dict[str, str]:
    """{question: normalised answer} for the answers of at least MIN_ANSWER characters."""
    try:
        answers = exercises.read_json(folder / ANSWERS_FILE, 64 * 2**10).get("answers", {})
    except (exercises.SubmissionError, AttributeError):
        return {}
    if not isinstance(answers, dict):
        return {}
    normal = {str(q): re.sub(r"[\W_]+", "", str(a).lower()) for q, a in answers.items()}
    return {q: a for q, a in normal.items() if len(a) >= MIN_ANSWER}


def similar_pairs(folders: dict[str, Path], threshold: float) -> list[tuple[str, str, str]]:
    """(id, id, why) for every pair that looks alike, ids in order."""
    sketches = {key: weight_sketch(folder) for key, folder in folders.items()}
    codes = {key: code_key(folder) for key, folder in folders.items()}
    answers = {key: answer_keys(folder) for key, folder in folders.items()}
    pairs = []
    for a, b in itertools.combinations(sorted(folders), 2):
        why = []
        sa, sb = sketches[a], sketches[b]
        if sa is not None and sb is not None and sa[0] == sb[0]:
            cosine = float(sa[1] @ sb[1])
            if cosine >= threshold:
                why.append(f"weights {cosine:.2f}")
        if codes[a] is not None and codes[a] == codes[b]:
            why.append("code")
        same = sorted(q for q in answers[a].keys() & answers[b].keys() if answers[a][q] == answers[b][q])
        if same:
            why.append("answers " + ", ".join(same)[:80])
        if why:
            pairs.append((a, b, "; ".join(why)))
    return pairs


def flag_gradebook(gradebook: str | os.PathLike, class_dir: str | os.PathLike, threshold: float = 0.9) -> list[tuple]:
    """Fill the ``similar_to`` column of ``gradebook`` from the submissions in ``class_dir`` and write
    ``similarity.html`` beside it; the scores stay as they are. Returns the flagged pairs."""

    if not is_real(threshold) or not 0 < threshold <= 1:
        raise fail("--weight-threshold", "a number in (0, 1]", repr(threshold))
    gradebook, class_dir = Path(gradebook), Path(class_dir)
    rows = report.read_gradebook(gradebook)
    if not rows:
        raise fail("GRADEBOOK", "a gradebook written by dlcourse grade", str(gradebook))
    if not class_dir.is_dir():
        raise fail("--class", "the folder of submissions that was graded", str(class_dir))
    folders = {student_id(p): p for p in class_folders(class_dir) if student_id(p) in rows and not p.is_symlink()}
    pairs = similar_pairs(folders, threshold)
    notes: dict[str, list[str]] = {key: [] for key in rows}
    for a, b, why in pairs:
        notes[a].append(f"{b} ({why})")
        notes[b].append(f"{a} ({why})")
    for key, row in rows.items():
        row["similar_to"] = "; ".join(notes[key])[:500]
    report.write_gradebook(gradebook, rows)
    cells = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(why)}</td></tr>"
                    for a, b, why in pairs)
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Similar submissions</title></head><body>"
            f"<h1>Similar submissions</h1><p>{len(pairs)} pair(s) among {len(folders)} submissions; weights "
            f"flagged at cosine ≥ {threshold:g}. A flag is a reason to look, not a finding; no score was "
            "changed.</p><table><tr><th>student</th><th>student</th><th>why</th></tr>"
            f"{cells}</table></body></html>\n")
    write_atomically(gradebook.parent / "similarity.html", lambda temp: Path(temp).write_text(page, encoding="utf-8"))
    return pairs

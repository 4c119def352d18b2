"""``dlcourse grade SUBMISSIONS_DIR --out gradebook.csv``: grade a class folder, one subfolder per student.

Per submission: check the files (status ``invalid`` with the reason when they cannot be read), run the
exercise code in the sandbox on hidden inputs (``timeout``/``crashed`` when the code misbehaves),
sample and score the model here, write ``reports/ID.html``; then the gradebook row. ``ok`` means every
part passed, ``failed`` that something was wrong. A rerun skips students already in the gradebook
unless ``--force``; the gradebook is rewritten atomically after each student.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import budget
from .assessment import ANSWERS_FILE, NOTEBOOK_FILE
from ..files import write_atomically
from . import exercises, model as model_part, report

SETTINGS_FILE = Path(__file__).resolve().parents[2] / "assessments" / "grading.json"
_SEVERITY = ("invalid", "timeout", "crashed", "failed", "ok")


@dataclass
class Settings:
    """Grading settings: thresholds, points, seeds and limits (assessments/grading.json) plus budget sizes."""

    pass_class_accuracy: float
    pass_colour_accuracy: float
    points_functions: float
    points_model: float
    hidden_seed: int
    sampling_seed: int
    time_limit_s: float
    memory_mb: int
    copy_threshold: float
    copy_fraction_limit: float
    n_per_pair: int
    sampling_steps: int
    n_train_features: int
    n_test: int
    device: str = "cpu"


def load_settings(path: str | os.PathLike | None = None, **overrides) -> Settings:
    """Settings from ``path`` (default assessments/grading.json), sizes from ``budget("assessment")``."""
    path = Path(path) if path is not None else SETTINGS_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--settings {path}: expected the grading settings JSON ({error})") from None
    values.pop("comment", None)
    sizes = budget("assessment")
    for key in ("n_per_pair", "sampling_steps", "n_train_features", "n_test"):
        values.setdefault(key, getattr(sizes, key))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except TypeError as error:
        raise ValueError(f"--settings {path}: {error} (compare with {SETTINGS_FILE})") from None


def student_id(folder: Path) -> str:
    """The folder name, printable and UTF-8 safe (undecodable bytes become \\xNN)."""
    raw = os.fsencode(folder.name)
    return raw.decode("utf-8", "backslashreplace").replace("/", "_")


def _safe_file_name(identifier: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in identifier)[:120] or "_"


def _check_folder(folder: Path, class_dir: Path) -> None:
    if folder.is_symlink():
        raise exercises.SubmissionError(f"{student_id(folder)}: the submission folder is a symbolic link "
                                        "(copy the files in; links are never followed)")
    inside = folder.resolve()
    if class_dir.resolve() not in inside.parents:
        raise exercises.SubmissionError(f"{student_id(folder)}: lies outside the class folder")
    for name in (NOTEBOOK_FILE, ANSWERS_FILE, "config.json", "model.safetensors"):
        if (folder / name).is_symlink():
            raise exercises.SubmissionError(f"{name}: is a symbolic link (hand in the file itself)")


class Grader:
    """Grades submissions with one set of settings; shares the scoring data and identical-code results."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._data: model_part.ScoringData | None = None
        self._function_cache: dict[str, exercises.FunctionPart] = {}
        self._lock = threading.Lock()

    def data(self) -> model_part.ScoringData:
        with self._lock:
            if self._data is None:
                self._data = model_part.scoring_data(self.settings.n_train_features, self.settings.n_test)
            return self._data

    def _functions(self, modules) -> exercises.FunctionPart:
        s = self.settings
        key = exercises.code_fingerprint(modules)
        with self._lock:
            cached = self._function_cache.get(key)
        if cached is not None and cached.status in ("ok", "failed"):
            return cached
        part = exercises.grade_functions(modules, seed=s.hidden_seed, time_limit=s.time_limit_s,
                                         memory_mb=s.memory_mb)
        with self._lock:
            self._function_cache[key] = part
        return part

    def grade(self, folder: Path, class_dir: Path, reports_dir: Path) -> dict:
        """Grade one submission folder; return its gradebook row (and write its HTML report).

        An unexpected error while grading it becomes that student's row (``crashed``, with the error),
        so one submission never stops the batch."""
        try:
            return self._grade(folder, class_dir, reports_dir)
        except Exception as error:  # noqa: BLE001 - recorded in the gradebook, the batch goes on
            return {"id": student_id(folder), "status": "crashed", "functions": 0.0, "model": 0.0, "total": 0.0,
                    "reason": f"the grader could not score this submission: {type(error).__name__}: "
                              f"{str(error)[:200]} (send this row to the course maintainers)"}

    def _grade(self, folder: Path, class_dir: Path, reports_dir: Path) -> dict:
        s, start = self.settings, time.monotonic()
        row = {"id": student_id(folder), "functions": 0.0, "model": 0.0, "total": 0.0}
        messages: list[str] = []
        answers: dict = {}
        grid, per_class = None, {}
        try:
            _check_folder(folder, class_dir)
            modules = exercises.prepare(exercises.read_notebook(folder / NOTEBOOK_FILE))
            network = model_part.load_submission_model(folder)
            w = model_part.read_w(folder)
            answers_json = json.loads((folder / ANSWERS_FILE).read_text(encoding="utf-8"))
            answers = answers_json.get("answers", {}) if isinstance(answers_json.get("answers"), dict) else {}
            row["w"] = w
        except exercises.SubmissionError as error:
            row.update(status="invalid", reason=str(error)[:300])
            messages.append(str(error))
        else:
            functions = self._functions(modules)
            row["functions"] = round(s.points_functions * functions.score, 2)
            messages += [r.message for r in functions.results] or [functions.reason]
            statuses = [functions.status]
            reasons = [functions.reason] if functions.reason else []
            score = model_part.score_model(network, w, n_per_pair=s.n_per_pair, steps=s.sampling_steps,
                                           seed=s.sampling_seed, data=self.data(), copy_threshold=s.copy_threshold,
                                           device=s.device)
            half = s.points_model / 2
            points = half * min(1, score.class_accuracy / s.pass_class_accuracy) \
                + half * min(1, score.colour_accuracy / s.pass_colour_accuracy)
            copies = score.copy_fraction > s.copy_fraction_limit
            passed = (score.class_accuracy >= s.pass_class_accuracy
                      and score.colour_accuracy >= s.pass_colour_accuracy and not copies)
            row.update(model=0.0 if copies else round(points, 2), class_accuracy=round(score.class_accuracy, 4),
                       colour_accuracy=round(score.colour_accuracy, 4), fid=round(score.fid, 3),
                       diversity=round(score.diversity, 3), copy_fraction=round(score.copy_fraction, 4))
            messages.append(f"model: class accuracy {score.class_accuracy:.3f} (pass ≥ {s.pass_class_accuracy}), "
                            f"colour accuracy {score.colour_accuracy:.3f} (pass ≥ {s.pass_colour_accuracy}), "
                            f"FID {score.fid:.2f}, diversity {score.diversity:.2f} at w = {w:g}")
            if copies:
                reasons.append("samples are near-copies of training images")
                messages.append(f"model: {score.copy_fraction:.0%} of the samples are near-copies of training "
                                "images (nearest neighbour in evaluator features): no model points")
            elif not passed:
                reasons.append("model below the pass thresholds")
            statuses.append("ok" if passed else "failed")
            row.update(status=min(statuses, key=_SEVERITY.index), reason="; ".join(reasons)[:300])
            grid, per_class = report.sample_grid_png(score.samples, s.n_per_pair), score.per_class
        row["total"] = round(row["functions"] + row["model"], 2)
        row["seconds"] = round(time.monotonic() - start, 1)
        page = report.student_html(row, messages, answers, grid, per_class)
        write_atomically(reports_dir / f"{_safe_file_name(row['id'])}.html",
                         lambda temp: Path(temp).write_text(page, encoding="utf-8"))
        return row


def grade_class(submissions: str | os.PathLike, out: str | os.PathLike, *, settings: Settings, workers: int = 1,
                force: bool = False, only: list[str] | None = None, progress: bool = True) -> dict[str, dict]:
    """Grade every subfolder of ``submissions`` (or those named in ``only``) into the gradebook ``out``.

    Students already in the gradebook are skipped unless ``force``; other rows are kept."""
    from tqdm.auto import tqdm

    class_dir, out = Path(submissions), Path(out)
    if not class_dir.is_dir():
        raise ValueError(f"SUBMISSIONS_DIR {class_dir}: expected a folder with one subfolder per student")
    reports_dir = out.parent / "reports"
    rows = report.read_gradebook(out)
    folders = sorted((p for p in class_dir.iterdir() if p.is_dir() or p.is_symlink()), key=lambda p: os.fsencode(p.name))
    if only:
        folders = [p for p in folders if student_id(p) in only]
    todo = folders if force else [p for p in folders if student_id(p) not in rows]
    grader = Grader(settings)
    counts = {s: 0 for s in report.STATUSES}
    lock = threading.Lock()
    bar = tqdm(total=len(todo), desc="grading", unit="submission", disable=not progress)

    def finish(row: dict) -> None:
        with lock:
            rows[row["id"]] = row
            counts[row["status"]] += 1
            report.write_gradebook(out, rows)
            bar.set_postfix({k: v for k, v in counts.items() if v})
            bar.update(1)

    if workers > 1:
        torch.set_num_threads(1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(grader.grade, folder, class_dir, reports_dir) for folder in todo]
        for future in as_completed(futures):
            finish(future.result())
    bar.close()
    report.write_gradebook(out, rows)
    if rows:
        report.histogram_png(rows, out.with_suffix(".png"))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line of ``dlcourse grade``."""
    parser = argparse.ArgumentParser(prog="dlcourse grade", description="Grade a folder of assessment submissions.")
    parser.add_argument("submissions", metavar="SUBMISSIONS_DIR", help="one subfolder per student")
    parser.add_argument("--out", default="gradebook.csv", help="gradebook CSV (reports/ and a .png beside it)")
    parser.add_argument("--workers", type=int, default=1, help="submissions graded at once (default 1)")
    parser.add_argument("--time-limit", type=float, help="seconds for a student's exercise code (settings: 60)")
    parser.add_argument("--memory-limit", type=int, help="MiB of address space for student code (settings: 4096)")
    parser.add_argument("--device", default="cpu", help="device the grader samples on (default cpu)")
    parser.add_argument("--settings", help=f"grading settings JSON (default {SETTINGS_FILE})")
    parser.add_argument("--force", action="store_true", help="regrade students already in the gradebook")
    parser.add_argument("--only", action="append", metavar="ID", help="grade only this student (repeatable)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers: expected a positive int, got {args.workers}")
    try:
        settings = load_settings(args.settings, time_limit_s=args.time_limit, memory_mb=args.memory_limit,
                                 device=args.device)
        rows = grade_class(args.submissions, args.out, settings=settings, workers=args.workers, force=args.force,
                           only=args.only)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report.summary_lines(rows)))
    print(f"gradebook: {args.out}; reports: {Path(args.out).parent / 'reports'}; "
          f"histogram: {Path(args.out).with_suffix('.png')}")
    return 0

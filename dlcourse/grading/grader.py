"""``dlcourse grade SUBMISSIONS_DIR --out gradebook.csv``: grade a class folder, one subfolder per student.

Per submission: check the files (status ``invalid`` with the reason when they cannot be read), run the
exercise code in the sandbox on hidden inputs (``timeout``/``crashed`` when the code misbehaves),
sample and score the model here under a compute cap and a time limit, write ``reports/NAME.html``
(:func:`report.report_name`); then the gradebook row. ``ok`` means every part passed, ``failed``
that something was wrong, ``error`` that the grader itself failed (the exercise points are kept).
A rerun skips students already in the gradebook unless ``--force``; the gradebook is rewritten
atomically after each student, and a journal beside it names the students being graded, so a
student whose grading stopped the grader gets an ``error`` row instead of stopping the rerun too.
``--shard K/N`` grades every N-th student; ``dlcourse gradebook merge`` joins the shards.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from .. import budget
from .assessment import ANSWERS_FILE, NOTEBOOK_FILE
from ..models.registry import CONFIG_FILE
from ..files import write_atomically
from ..validation import fail, is_int, is_real
from . import exercises, lms, model as model_part, report, sandbox, similarity
from .report import class_folders, student_id

SETTINGS_FILE = Path(__file__).resolve().parents[2] / "assessments" / "grading.json"
_SEVERITY = ("error", "invalid", "timeout", "crashed", "failed", "ok")
ANSWERS_CAP = 64 * 2**10


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
    model_time_limit_s: float
    max_model_compute: float
    n_per_pair: int
    sampling_steps: int
    n_train_features: int
    n_test: int
    device: str = "cpu"
    deadline: str | None = None
    late_penalty_per_day: float = 0.0
    late_penalty_max: float = 1.0

    def fingerprint(self) -> str:
        """Short hash of everything that decides a grade (shards are merged only when these agree)."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if k != "device"}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


_POSITIVE = ("time_limit_s", "memory_mb", "model_time_limit_s", "max_model_compute", "points_functions",
             "points_model", "n_per_pair", "sampling_steps", "n_train_features", "n_test")


def _check_settings(settings: Settings, path: Path) -> Settings:
    for key in _POSITIVE:
        value = getattr(settings, key)
        if not is_real(value) or value <= 0:
            raise fail(f"--settings {path}: {key}", "a positive number", repr(value)[:40])
    for key in ("pass_class_accuracy", "pass_colour_accuracy", "copy_threshold", "copy_fraction_limit"):
        value = getattr(settings, key)
        if not is_real(value) or not 0 < value <= 1:
            raise fail(f"--settings {path}: {key}", "a number in (0, 1]", repr(value)[:40])
    for key in ("late_penalty_per_day", "late_penalty_max"):
        value = getattr(settings, key)
        if not is_real(value) or not 0 <= value <= 1:
            raise fail(f"--settings {path}: {key}", "a fraction of the total in [0, 1]", repr(value)[:40])
    if settings.deadline is not None:
        _parse_time(settings.deadline, f"--settings {path}: deadline")
    for key in ("hidden_seed", "sampling_seed"):
        if not is_int(getattr(settings, key), 0):
            raise fail(f"--settings {path}: {key}", "an int >= 0", repr(getattr(settings, key))[:40])
    return settings


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
        return _check_settings(Settings(**values), path)
    except TypeError as error:
        raise ValueError(f"--settings {path}: {error} (compare with {SETTINGS_FILE})") from None


def _parse_time(text, what: str) -> datetime:
    """An ISO 8601 time with its UTC offset (``2027-01-15T23:59:00+00:00``); ValueError otherwise."""
    try:
        moment = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise fail(what, "an ISO 8601 time with its UTC offset, e.g. 2027-01-15T23:59:00+00:00", repr(text)[:60])
    return moment


def read_submission_times(path: str | os.PathLike) -> dict[str, datetime]:
    """{student id: submission time} from a CSV with columns ``id,submitted_at`` (e.g. from the LMS)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size > 16 * 2**20:
        raise fail("--submitted-at", "a CSV file (id,submitted_at) of at most 16 MiB", str(path))
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"id", "submitted_at"} <= set(reader.fieldnames or ()):
            raise fail(f"--submitted-at {path}", "the columns id,submitted_at", ",".join(reader.fieldnames or ())[:100])
        times = {}
        for line, row in enumerate(reader, 2):
            if row["id"] in times:
                raise fail(f"--submitted-at {path} line {line}", "one row per student", f"{row['id']!r} again")
            times[row["id"]] = _parse_time(row["submitted_at"], f"--submitted-at {path} line {line}")
    return times


def late_days(submitted: datetime, deadline: datetime) -> int:
    """Started days past the deadline (0 when on time)."""
    return max(0, math.ceil((submitted - deadline).total_seconds() / 86400))


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
    """Grades submissions with one set of settings; shares the scoring data and identical-code results.

    ``isolated=False`` runs student code without bubblewrap (:mod:`.sandbox`; only inside a container)."""

    def __init__(self, settings: Settings, isolated: bool = True, times: dict[str, datetime] | None = None):
        self.settings = settings
        self.isolated = isolated
        self.times = times or {}
        self._data: dict[int, model_part.ScoringData] = {}  # per image side
        self._function_cache: dict[str, exercises.FunctionPart] = {}
        self._lock = threading.Lock()

    def data(self, image_size: int) -> model_part.ScoringData:
        """The scoring data at ``image_size`` px, computed on first use and shared by every submission."""
        with self._lock:
            if image_size not in self._data:
                self._data[image_size] = model_part.scoring_data(self.settings.n_train_features, self.settings.n_test,
                                                                 image_size)
            return self._data[image_size]

    def _functions(self, modules) -> exercises.FunctionPart:
        s = self.settings
        key = exercises.code_fingerprint(modules)
        with self._lock:
            cached = self._function_cache.get(key)
        if cached is not None and cached.status in ("ok", "failed"):
            return cached
        part = exercises.grade_functions(modules, seed=s.hidden_seed, time_limit=s.time_limit_s,
                                         memory_mb=s.memory_mb, isolated=self.isolated)
        with self._lock:
            self._function_cache[key] = part
        return part

    def grade(self, folder: Path, class_dir: Path, reports_dir: Path) -> dict:
        """Grade one submission folder; return its gradebook row (and write its HTML report).

        An error of the grader's own while grading it becomes that student's row (``error``, with the
        exercise points already earned and the error), so one submission never stops the batch."""
        start = time.monotonic()
        work = {"row": {"id": student_id(folder), "functions": 0.0, "model": 0.0, "total": 0.0},
                "messages": [], "answers": {}, "grid": None, "per_class": {}}
        row = work["row"]
        try:
            self._grade(folder, class_dir, work)
        except sandbox.SandboxUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 - recorded in the gradebook, the batch goes on
            text = exercises.redact(f"{type(error).__name__}: {str(error)[:200]}", (str(self.settings.hidden_seed),))
            row.update(status="error", model=0.0, reason=f"the grader failed on this submission ({text}); "
                       "exercise points kept, send this row to the course maintainers")
            work["messages"].append(row["reason"])
        row["total"] = round(row["functions"] + row["model"], 2)
        if self.settings.deadline is not None:
            self._late(row, work["messages"])
        row["seconds"] = round(time.monotonic() - start, 1)
        page = report.student_html(row, work["messages"], work["answers"], work["grid"], work["per_class"])
        write_atomically(reports_dir / report.report_name(row["id"]),
                         lambda temp: Path(temp).write_text(page, encoding="utf-8"))
        return row

    def _late(self, row: dict, messages: list[str]) -> None:
        """Apply the late penalty of the settings to the total, from the student's recorded time."""
        s = self.settings
        days = late_days(self.times[row["id"]], _parse_time(s.deadline, "deadline"))
        cut = min(s.late_penalty_max, days * s.late_penalty_per_day)
        row.update(late_days=days, total=round(row["total"] * (1 - cut), 2))
        if days:
            note = f"submitted {days} day(s) late: total reduced by {cut:.0%}"
            row["reason"] = "; ".join(filter(None, [row.get("reason", ""), note]))[:300]
            messages.append(note)

    def _grade(self, folder: Path, class_dir: Path, work: dict) -> None:
        s, row, messages = self.settings, work["row"], work["messages"]
        try:
            _check_folder(folder, class_dir)
            modules = exercises.prepare(exercises.read_notebook(folder / NOTEBOOK_FILE))
            answers_json = exercises.read_json(folder / ANSWERS_FILE, ANSWERS_CAP)  # capped before any other reader
            exercises.read_json(folder / CONFIG_FILE, model_part.CONFIG_CAP)
            network = model_part.load_submission_model(folder)
            w = model_part.read_w(folder)
            answers = answers_json.get("answers") if isinstance(answers_json, dict) else None
            work["answers"] = answers if isinstance(answers, dict) else {}
            row["w"] = w
        except exercises.SubmissionError as error:
            row.update(status="invalid", reason=str(error)[:300])
            messages.append(str(error))
            return
        functions = self._functions(modules)
        row["functions"] = round(s.points_functions * functions.score, 2)
        messages += [r.message for r in functions.results] or [functions.reason]
        statuses = [functions.status]
        reasons = [functions.reason] if functions.reason else []
        row.update(status=min(statuses, key=_SEVERITY.index), reason="; ".join(reasons)[:300])
        compute = model_part.sampling_compute(network, s.sampling_steps)
        if compute > s.max_model_compute:
            reasons.append("model over the compute cap")
            messages.append(f"model: parameters × pixels × steps = {compute:.3g}, over the cap {s.max_model_compute:.3g} "
                            "of these settings: not sampled (train a smaller model)")
            row.update(status=min([*statuses, "failed"], key=_SEVERITY.index), reason="; ".join(reasons)[:300])
            return
        try:
            score = model_part.score_model(network, w, n_per_pair=s.n_per_pair, steps=s.sampling_steps,
                                           seed=s.sampling_seed, data=self.data(network.config["image_size"]),
                                           copy_threshold=s.copy_threshold,
                                           device=s.device, time_limit=s.model_time_limit_s)
        except (model_part.SamplingTimeout, model_part.UnscorableSamples) as error:
            timeout = isinstance(error, model_part.SamplingTimeout)
            reasons.append(str(error))
            messages.append(f"model: {error}: no model points" + (" (train a smaller model)" if timeout else ""))
            row.update(status=min([*statuses, "timeout" if timeout else "failed"], key=_SEVERITY.index),
                       reason="; ".join(reasons)[:300])
            return
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
        work["grid"], work["per_class"] = report.sample_grid_png(score.samples, s.n_per_pair), score.per_class


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` → (K, N) with 1 ≤ K ≤ N; ValueError otherwise."""
    k, _, n = str(text).partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise fail("--shard", "K/N with 1 <= K <= N (e.g. 2/8)", repr(text))
    return int(k), int(n)


def shard_of(folders: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """Shard K of N: every N-th folder in id order starting at the K-th (balanced within one)."""
    if shard is None:
        return folders
    k, n = shard
    return folders[k - 1::n]


def _journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".grading")


def _write_journal(path: Path, ids: set[str]) -> None:
    text = json.dumps(sorted(ids))
    write_atomically(path, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def manifest_path(out: Path) -> Path:
    """The gradebook's manifest: settings fingerprint, shard and the ids it must hold."""
    return out.with_name(out.name + ".json")


def _add_stopped_rows(rows: dict[str, dict], journal: Path) -> None:
    """An ``error`` row for every student a grader that stopped was grading (the journal), unless already graded."""
    stopped = set(json.loads(journal.read_text(encoding="utf-8"))) if journal.is_file() else set()
    for key in stopped - set(rows):
        rows[key] = {"id": key, "status": "error", "functions": 0.0, "model": 0.0, "total": 0.0,
                     "reason": "the grader stopped while grading this submission; regrade it with --force --only ID"}


def _write_manifest(out: Path, settings: Settings, shard: tuple[int, int] | None, folders: list[Path]) -> None:
    """What ``gradebook merge`` checks: the settings' fingerprint, the shard and every id it holds."""
    manifest = {"settings": settings.fingerprint(), "shard": list(shard or (1, 1)),
                "ids": [student_id(p) for p in folders]}
    write_atomically(manifest_path(out), lambda temp: Path(temp).write_text(json.dumps(manifest), encoding="utf-8"))


def _check_submission_times(settings: Settings, todo: list[Path], submitted_at: dict[str, datetime] | None) -> None:
    """With a deadline in the settings, every student to grade needs a submission time."""
    if settings.deadline is None:
        return
    missing = sorted(student_id(p) for p in todo if student_id(p) not in (submitted_at or {}))
    if missing:
        raise ValueError(f"the settings have a deadline but --submitted-at gives no time for {len(missing)} "
                         f"student(s) ({', '.join(map(repr, missing[:5]))})")


def grade_class(submissions: str | os.PathLike, out: str | os.PathLike, *, settings: Settings, workers: int = 1,
                force: bool = False, only: list[str] | None = None, progress: bool = True,
                shard: tuple[int, int] | None = None, isolated: bool = True,
                submitted_at: dict[str, datetime] | None = None) -> dict[str, dict]:
    """Grade every subfolder of ``submissions`` (or those named in ``only``; of shard ``(K, N)`` only)
    into the gradebook ``out``.

    Students already in the gradebook are skipped unless ``force``; other rows are kept. Students
    in the journal of a grader that stopped get an ``error`` row (regrade them with ``force``/``only``)."""
    from tqdm.auto import tqdm

    class_dir, out = Path(submissions), Path(out)
    if not class_dir.is_dir():
        raise ValueError(f"SUBMISSIONS_DIR {class_dir}: expected a folder with one subfolder per student")
    if isolated and sandbox.unavailable_reason() is not None:
        raise ValueError(f"no sandbox for student code: {sandbox.unavailable_reason()}. Install it, or grade "
                         "inside a container with --unsafe-no-sandbox (see assessments/README.md)")
    reports_dir, journal = out.parent / "reports", _journal_path(out)
    rows = report.read_gradebook(out)
    _add_stopped_rows(rows, journal)
    folders = shard_of(class_folders(class_dir), shard)
    _write_manifest(out, settings, shard, folders)
    if only:
        folders = [p for p in folders if student_id(p) in only]
    todo = folders if force else [p for p in folders if student_id(p) not in rows]
    _check_submission_times(settings, todo, submitted_at)
    grader = Grader(settings, isolated, submitted_at)
    counts = {s: 0 for s in report.STATUSES}
    lock = threading.Lock()
    busy: set[str] = set()
    bar = tqdm(total=len(todo), desc=f"grading ({workers} worker{'s' if workers > 1 else ''})", unit="submission",
               disable=not progress)

    def show() -> None:  # the bar's ETA is the class's; the postfix says what each worker grades now
        now = ", ".join(sorted(busy)[:workers])
        bar.set_postfix_str(" ".join([*(f"{k}={v}" for k, v in counts.items() if v), f"now: {now[:80]}"]))

    def grade(folder: Path) -> dict:
        with lock:
            busy.add(student_id(folder))
            _write_journal(journal, busy)
            show()
        return grader.grade(folder, class_dir, reports_dir)

    def finish(row: dict) -> None:
        with lock:
            rows[row["id"]] = row
            busy.discard(row["id"])
            counts[row["status"]] += 1
            report.write_gradebook(out, rows)
            _write_journal(journal, busy)
            show()
            bar.update(1)

    if workers > 1:
        torch.set_num_threads(1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(grade, folder) for folder in todo]
        for future in as_completed(futures):
            finish(future.result())
    bar.close()
    report.write_gradebook(out, rows)
    journal.unlink(missing_ok=True)
    if rows:
        report.histogram_png(rows, out.with_suffix(".png"))
    return rows


def merge_gradebooks(out: str | os.PathLike, shards: list[str | os.PathLike]) -> dict[str, dict]:
    """Join shard gradebooks (each with its manifest) into ``out``: byte-identical to grading the class
    on one machine. ValueError for mixed settings, a missing or repeated shard, a duplicate or missing student."""
    out, manifests, rows = Path(out), [], {}
    for path in map(Path, shards):
        try:
            manifest = json.loads(manifest_path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise fail(str(path), f"a gradebook written by dlcourse grade with its manifest {manifest_path(path).name}",
                       "none") from None
        manifests.append((path, manifest))
        for key, row in report.read_gradebook(path).items():
            if key in rows:
                raise ValueError(f"gradebook merge: student {key!r} is in two shards (second: {path})")
            rows[key] = row
        missing = sorted(set(manifest["ids"]) - set(rows))
        if missing:
            raise ValueError(f"gradebook merge: {path} lacks {len(missing)} of its students ({missing[:3]}): "
                             "finish that shard first")
    if len({m["settings"] for _, m in manifests}) > 1:
        raise ValueError("gradebook merge: the shards were graded with different settings")
    spans = sorted(tuple(m["shard"]) for _, m in manifests)
    n = spans[0][1] if spans else 0
    if spans != [(k, n) for k in range(1, n + 1)]:
        raise fail("gradebook merge", f"each shard K/{n} exactly once", [f"{k}/{m}" for k, m in spans])
    report.write_gradebook(out, rows)
    write_atomically(manifest_path(out), lambda temp: Path(temp).write_text(json.dumps(
        {"settings": manifests[0][1]["settings"], "shard": [1, 1], "ids": sorted(rows)}), encoding="utf-8"))
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
    parser.add_argument("--shard", metavar="K/N", help="grade only shard K of N (merge with dlcourse gradebook merge)")
    parser.add_argument("--submitted-at", metavar="CSV",
                        help="id,submitted_at (ISO 8601) per student: needed when the settings have a deadline")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run student code without bubblewrap (only inside a disposable container)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.workers > 64:
        parser.error(f"--workers: expected an int in [1, 64], got {args.workers}")
    try:
        shard = parse_shard(args.shard) if args.shard is not None else None
        settings = load_settings(args.settings, time_limit_s=args.time_limit, memory_mb=args.memory_limit,
                                 device=args.device)
        rows = grade_class(args.submissions, args.out, settings=settings, workers=args.workers, force=args.force,
                           only=args.only, shard=shard, isolated=not args.unsafe_no_sandbox,
                           submitted_at=read_submission_times(args.submitted_at) if args.submitted_at else None)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report.summary_lines(rows)))
    print(f"gradebook: {args.out}; reports: {Path(args.out).parent / 'reports'}; "
          f"histogram: {Path(args.out).with_suffix('.png')}")
    return 0


def gradebook_main(argv: list[str] | None = None) -> int:
    """Command line of ``dlcourse gradebook merge|export|similarity``."""
    parser = argparse.ArgumentParser(prog="dlcourse gradebook", description="Work with gradebooks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    merge = commands.add_parser("merge", help="join the gradebooks of dlcourse grade --shard K/N into one")
    merge.add_argument("out", metavar="OUT", help="the merged gradebook CSV")
    merge.add_argument("shards", metavar="SHARD", nargs="+", help="shard gradebooks (each with its .json manifest)")
    export = commands.add_parser("export", help="the gradebook as a Canvas or Moodle grade-import CSV")
    export.add_argument("gradebook", metavar="GRADEBOOK", help="a gradebook written by dlcourse grade")
    export.add_argument("--format", required=True, choices=sorted(lms.FORMATS), help="the LMS to import into")
    export.add_argument("--roster", required=True, help="CSV: id (the student id) and the LMS's columns (see docs)")
    export.add_argument("--out", required=True, help="the import CSV to write")
    export.add_argument("--assignment", default="Assessment", help="the grade column's name (default Assessment)")
    export.add_argument("--points-possible", type=float, default=100.0, help="the assignment's points (default 100)")
    similar = commands.add_parser("similarity", help="flag look-alike submissions (similar_to, similarity.html)")
    similar.add_argument("gradebook", metavar="GRADEBOOK", help="a gradebook written by dlcourse grade (or merge)")
    similar.add_argument("--class", dest="class_dir", required=True, help="the folder of submissions it graded")
    similar.add_argument("--weight-threshold", type=float, default=0.9,
                         help="flag weights at this cosine similarity or more (default 0.9)")
    args = parser.parse_args(argv)
    try:
        if args.command == "merge":
            print("\n".join(report.summary_lines(merge_gradebooks(args.out, args.shards))))
        elif args.command == "similarity":
            pairs = similarity.flag_gradebook(args.gradebook, args.class_dir, args.weight_threshold)
            print(f"{len(pairs)} similar pair(s): {Path(args.gradebook).parent / 'similarity.html'}")
        else:
            lms.export_gradebook(args.gradebook, args.roster, args.out, fmt=args.format, assignment=args.assignment,
                                 points=args.points_possible)
            print(f"{args.format} import file: {args.out}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0

"""``dlcourse gradebook export``: the gradebook as a Canvas or Moodle grade-import CSV, ids mapped
through a roster.

The roster is a CSV with a header row and one row per student; its ``id`` column holds the grader's
student id (the submission folder's name, as in the gradebook). Canvas needs ``name`` and
``canvas_id`` (``sis_user_id``, ``sis_login_id``, ``section`` may be empty); Moodle needs ``email``
(the import maps users by email address). Students on the roster without a row get an empty grade;
a gradebook id that is not on the roster stops the export. Text cells are protected against formulas.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from ..files import write_atomically
from ..validation import fail, is_real
from . import report

FORMATS = {"canvas": ("name", "canvas_id"), "moodle": ("email",)}
ROSTER_CAP = 16 * 2**20


def read_roster(path: str | os.PathLike, fmt: str) -> list[dict[str, str]]:
    """The roster's rows; ValueError when a column ``fmt`` needs is missing or an id repeats."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size > ROSTER_CAP:
        raise fail("--roster", f"a CSV file of at most {ROSTER_CAP} bytes", str(path))
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        needed = ("id", *FORMATS[fmt])
        missing = [c for c in needed if c not in (reader.fieldnames or ())]
        if missing:
            raise fail(f"--roster {path}", f"the columns {', '.join(needed)} for --format {fmt}",
                       f"no {', '.join(missing)} (columns: {', '.join(reader.fieldnames or ())[:200]})")
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen or not row["id"]:
            raise fail(f"--roster {path}", "one row per student id, none empty", f"{row['id']!r} again or empty")
        seen.add(row["id"])
    return rows


def export_rows(grades: dict[str, dict], roster: list[dict[str, str]], fmt: str, assignment: str,
                points: float) -> list[list[str]]:
    """The import CSV's rows (header first) for ``fmt``; ValueError for a graded id not on the roster."""
    unknown = sorted(set(grades) - {r["id"] for r in roster})
    if unknown:
        raise ValueError(f"gradebook export: {len(unknown)} graded id(s) are not on the roster "
                         f"({', '.join(map(repr, unknown[:5]))}): add them to the roster")
    total = {r["id"]: str(grades[r["id"]]["total"]) if r["id"] in grades else "" for r in roster}
    if fmt == "canvas":
        rows = [["Student", "ID", "SIS User ID", "SIS Login ID", "Section", assignment],
                ["Points Possible", "", "", "", "", f"{points:g}"]]
        rows += [[r["name"], r["canvas_id"], r.get("sis_user_id", ""), r.get("sis_login_id", ""),
                  r.get("section", ""), total[r["id"]]] for r in roster]
    else:
        rows = [["Email address", assignment]] + [[r["email"], total[r["id"]]] for r in roster]
    return [[report.protect_cell(cell) for cell in row] for row in rows]


def export_gradebook(gradebook: str | os.PathLike, roster: str | os.PathLike, out: str | os.PathLike, *,
                     fmt: str, assignment: str = "Assessment", points: float = 100) -> Path:
    """Write the ``fmt`` (canvas or moodle) grade-import CSV of ``gradebook`` to ``out``, atomically."""
    if fmt not in FORMATS:
        raise fail("--format", f"one of {', '.join(FORMATS)}", repr(fmt))
    if not assignment.strip() or len(assignment) > 200:
        raise fail("--assignment", "a non-empty name of at most 200 characters", repr(assignment[:40]))
    if not is_real(points) or points <= 0:
        raise fail("--points-possible", "a positive number", repr(points))
    grades = report.read_gradebook(Path(gradebook))
    if not grades:
        raise fail("GRADEBOOK", "a gradebook written by dlcourse grade", str(gradebook))
    rows = export_rows(grades, read_roster(roster, fmt), fmt, assignment, points)

    def write(temp: str) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)

    return write_atomically(out, write)

"""Feedback: one HTML report per student, the gradebook CSV, a summary table and a histogram of totals."""
from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .assessment import PAIRS
from ..data import CLASSES, PETAL_COLOURS
from ..files import write_atomically
from ..plotting import image_grid

COLUMNS = ("id", "status", "functions", "model", "total", "class_accuracy", "colour_accuracy", "fid",
           "diversity", "copy_fraction", "w", "late_days", "reason", "similar_to")
STATUSES = ("ok", "failed", "timeout", "crashed", "invalid", "error")
_TEXT_COLUMNS = ("id", "status", "reason", "similar_to")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "'")


def student_id(folder: Path) -> str:
    """The folder name, printable and collision-free: a backslash becomes ``\\\\``, and every byte that
    is not printable UTF-8 becomes ``\\xNN``."""
    out = []
    for ch in os.fsencode(folder.name).decode("utf-8", "surrogateescape"):
        if "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif not ch.isprintable():
            out.append("".join(f"\\x{b:02x}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def class_folders(class_dir: Path) -> list[Path]:
    """The student folders of ``class_dir`` in id order (ids are unique: :func:`student_id`)."""
    return sorted((p for p in class_dir.iterdir() if p.is_dir() or p.is_symlink()), key=student_id)


def report_name(identifier: str) -> str:
    """The report file of ``identifier``: its letters, digits and ``-_.`` (others ``_``, at most 60)
    plus 10 hex digits of its SHA-256, so two ids never share a file."""
    readable = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "_" for ch in identifier)[:60]
    return f"{readable.lstrip('.') or '_'}-{hashlib.sha256(identifier.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}.html"


def protect_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: a leading ``'`` where it would start a formula (reversible)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def unprotect_cell(text: str) -> str:
    """Undo :func:`protect_cell`."""
    return text[1:] if text.startswith("'") else text


def sample_grid_png(samples, n_per_pair: int, scale: int = 4) -> bytes:
    """PNG of the grader's samples: one row per (class, colour) pair, ``n_per_pair`` per row, upscaled."""
    grid = (image_grid(samples, nrow=n_per_pair, padding=1) * 255).round().astype(np.uint8)
    image = Image.fromarray(grid)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _rows_html(rows: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)


def student_html(row: dict, messages: list[str], answers: dict, grid_png: bytes | None, per_class: dict) -> str:
    """A self-contained HTML page: part results, messages, per-class accuracy, written answers, samples."""
    summary = _rows_html([(k, str(row.get(k, ""))) for k in (*COLUMNS, "seconds")])
    notes = "".join(f"<li>{html.escape(m)}</li>" for m in messages)
    classes = _rows_html([(k, f"{v:.2f}") for k, v in per_class.items()])
    written = _rows_html([(str(k)[:80], str(v)[:2000]) for k, v in answers.items()])
    labels = ", ".join(f"{CLASSES[k]}/{PETAL_COLOURS[c]}" for k, c in PAIRS)
    image = ("<p>Rows, top to bottom: " + html.escape(labels) + "</p><img alt='samples drawn by the grader' "
             f"src='data:image/png;base64,{base64.b64encode(grid_png).decode()}'>") if grid_png else \
        "<p>No samples: the model part did not run.</p>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(row['id'])}</title>"
            "<style>body{font-family:sans-serif;max-width:60em}th{text-align:left;padding-right:1em}"
            "img{image-rendering:pixelated}</style></head><body>"
            f"<h1>Assessment report: {html.escape(row['id'])}</h1><table>{summary}</table>"
            f"<h2>Messages</h2><ul>{notes}</ul><h2>Per-class accuracy</h2><table>{classes}</table>"
            f"<h2>Written answers</h2><table>{written}</table><h2>Samples drawn by the grader</h2>{image}"
            "</body></html>\n")


def read_gradebook(path: Path) -> dict[str, dict]:
    """{id: row} of an existing gradebook (empty when there is none); ValueError when it is not one."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: expected a gradebook with columns {','.join(COLUMNS)}, "
                             f"got {','.join(reader.fieldnames or ())[:200]}")
        rows = [{k: unprotect_cell(v) if k in _TEXT_COLUMNS else v for k, v in row.items()} for row in reader]
    return {row["id"]: row for row in rows}


def write_gradebook(path: Path, rows: dict[str, dict]) -> None:
    """Write the gradebook atomically, one row per student sorted by id."""
    def write(temp: str) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for key in sorted(rows):
                cells = {k: rows[key].get(k, "") for k in COLUMNS}
                writer.writerow({k: protect_cell(str(v)) if k in _TEXT_COLUMNS else v for k, v in cells.items()})

    write_atomically(path, write)


def summary_lines(rows: dict[str, dict]) -> list[str]:
    """Counts per status and the mean/median/min/max of totals."""
    counts = {s: sum(r["status"] == s for r in rows.values()) for s in STATUSES}
    totals = np.array([float(r["total"]) for r in rows.values()]) if rows else np.zeros(0)
    lines = [f"{len(rows)} submissions: " + ", ".join(f"{s} {n}" for s, n in counts.items())]
    if totals.size:
        lines.append(f"total: mean {totals.mean():.1f}, median {np.median(totals):.1f}, "
                     f"min {totals.min():.1f}, max {totals.max():.1f} (of 100)")
    return lines


def histogram_png(rows: dict[str, dict], path: Path) -> Path:
    """Histogram of totals (0–100, bins of 10) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    totals = [float(r["total"]) for r in rows.values()]
    figure = Figure(figsize=(5, 3), dpi=100)
    ax = figure.subplots()
    ax.hist(totals, bins=np.arange(0, 101, 10), color="tab:blue", edgecolor="white")
    ax.set_xlabel("total (of 100)")
    ax.set_ylabel("students")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"Totals of {len(totals)} submissions")
    figure.tight_layout()
    return write_atomically(path, lambda temp: figure.savefig(temp, format="png"))

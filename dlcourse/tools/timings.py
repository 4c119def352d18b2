"""``dlcourse timings``: run every solution notebook and the assessment master at a budget and write only
their wall times, one table (Markdown + JSON) — on a CUDA GPU, the course's full-mode timing:

    dlcourse timings --budget full --out runs/timings-full.md
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..config import MODES
from ..files import is_writable_dir, write_atomically
from ..validation import check_positive_int, fail
from .cli import Parser, reports_errors
from .results import ROOT, machine, run_notebook

__all__ = ["all_notebooks", "timings_table", "main"]


def all_notebooks() -> list[Path]:
    """Every solution notebook, in lesson order, and the assessment master."""
    return [*sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb")), ROOT / "assessments" / "assessment.solution.ipynb"]


def timings_table(runs: list[dict]) -> str:
    """Markdown: one row per notebook (wall time, kernel CPU time or the error), the total, and where it ran."""
    lines = ["| notebook | budget | wall time | kernel CPU time | status |", "|---|---|---|---|---|"]
    for run in runs:
        status = "ok" if "error" not in run else f"failed: {run['error']}"
        lines.append(f"| {run['notebook']} | {run['budget']} | {run['seconds'] / 60:.1f} min | "
                     f"{run['cpu_seconds'] / 60:.1f} min | {status} |")
    total = sum(run["seconds"] for run in runs)
    lines.append(f"| **total** | | {total / 60:.1f} min | | |")
    if runs:
        lines += ["", f"Machine: {runs[0]['machine']}; date {runs[0]['date']}; load average (5 min) at the end "
                  f"{runs[-1]['load_average']:.1f}."]
    return "\n".join(lines) + "\n"


@reports_errors("dlcourse timings")
def main(argv: list[str] | None = None) -> int:
    """``dlcourse timings [--budget full] [--out FILE.md] [--timeout S]``: run every solution notebook (and the
    assessment master) at a budget, write their wall times to FILE.md and FILE.json; exit 1 if one failed."""
    parser = Parser(prog="dlcourse timings", description="run every solution notebook at a budget; table of wall times")
    parser.add_argument("--budget", default="full", choices=MODES, help="budget to run the notebooks at (default full)")
    parser.add_argument("--out", default="runs/timings.md", help="Markdown table to write (and .json beside it)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell before a notebook fails")
    args = parser.parse_args(argv)
    check_positive_int(args.timeout, "--timeout")
    out = Path(args.out)
    if out.is_dir() or not is_writable_dir(out.parent):
        raise fail("--out", "a file in a folder you can write to (e.g. runs/timings.md)", repr(args.out))
    runs = []
    for path in all_notebooks():
        print(f"running {path.name} at the {args.budget} budget …", flush=True)
        run = {"notebook": path.name, "budget": args.budget, "machine": machine(), "date": time.strftime("%Y-%m-%d")}
        start = time.perf_counter()
        try:
            _, run["seconds"], run["cpu_seconds"] = run_notebook(path, args.budget, cwd=path.parent,
                                                                 timeout=args.timeout)
        except Exception as error:  # a failing notebook is reported in the table; the others still run
            run.update(seconds=time.perf_counter() - start, cpu_seconds=0.0,
                       error=" ".join(f"{type(error).__name__}: {error}".split())[:200])
        run["load_average"] = os.getloadavg()[1]
        runs.append(run)
        print(f"  {path.name}: {run['seconds'] / 60:.1f} min{' (failed)' if 'error' in run else ''}", flush=True)
        write_atomically(out, lambda p: Path(p).write_text(timings_table(runs)))  # a partial table survives a crash
        write_atomically(out.with_suffix(".json"), lambda p: Path(p).write_text(json.dumps(runs, indent=1) + "\n"))
    print(timings_table(runs), end="")
    print(f"wrote {out}")
    return 1 if any("error" in run for run in runs) else 0

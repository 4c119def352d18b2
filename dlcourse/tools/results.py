"""``dlcourse results``: run the solution notebooks at a budget and write the results page.

The page shows exactly what the lessons draw and print: every solution cell tagged ``results``
(cell metadata ``tags``) contributes its pictures (PNG, at most ``MAX_PNG_BYTES`` each) and its
printed text, under the nearest markdown heading above it. Each lesson's section says the budget,
the machine, the date and the wall time of its run. With ``--update-references`` the reference
models the notebooks saved (``dlcourse.pretrained.save_reference``) are copied into the package: only
from the references' own budget (``pretrained.BUDGET``, cpu), and only references whose recorded
scores reach their floors (``pretrained.REFERENCES``); otherwise nothing is copied.

    dlcourse results --budget cpu --update-references     # regenerates docs/results.md + docs/results/
"""
from __future__ import annotations

import base64
import io
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path

from .cli import Parser, reports_errors

__all__ = ["TAG", "MAX_PNG_BYTES", "LESSONS", "machine", "run_notebook", "harvest", "main"]

TAG = "results"
MAX_PNG_BYTES = 200_000
LESSONS = ("01_unet_denoiser", "02_ddpm", "03_optimizations", "04_classifier_free_guidance", "05_clip_conditioning",
           "06_latent_diffusion")
ROOT = Path(__file__).resolve().parents[2]


def machine() -> str:
    """The CPU (or GPU, with its CUDA version) and the torch version, for labelling measurements."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return f"{cpu}, {os.cpu_count()} cores, no GPU, torch {torch.__version__}"


def run_notebook(path: Path, budget: str, cwd: Path, timeout: int = 1800):
    """Execute the notebook at ``path`` with ``DLCOURSE_BUDGET=budget`` in ``cwd``; return (notebook, wall
    seconds, CPU seconds of the kernel process)."""
    import resource

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    previous = {k: os.environ.get(k) for k in ("DLCOURSE_BUDGET", "MPLBACKEND", "PYTHONPATH")}
    os.environ["DLCOURSE_BUDGET"] = budget
    # the kernel imports this checkout's dlcourse, whatever copy the environment has installed
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [previous["PYTHONPATH"]])])
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures become PNG outputs
    try:
        start, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel has exited and been waited for
        cpu = (after.ru_utime + after.ru_stime) - (used.ru_utime + used.ru_stime)
        return nb, time.perf_counter() - start, cpu
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _small_png(data: bytes) -> bytes:
    """Re-encode a PNG, shrinking it until it fits in MAX_PNG_BYTES."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    scale = 1.0
    while True:
        shown = image if scale == 1.0 else image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                                                        Image.LANCZOS)
        if shown.mode in ("RGBA", "P"):
            shown = shown.convert("RGBA")
        buffer = io.BytesIO()
        shown.save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= MAX_PNG_BYTES or scale < 0.2:
            return buffer.getvalue()
        scale *= 0.8


def _heading(cells, index: int) -> str:
    for cell in reversed(cells[:index]):
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return "results"


def _text(output) -> str:
    if output.get("output_type") == "stream" and output.get("name") == "stdout":
        return output.get("text", "")
    if output.get("output_type") in ("execute_result", "display_data"):
        data = output.get("data", {})
        shown_otherwise = {"image/png", "application/vnd.jupyter.widget-view+json"}  # pictures, progress bars
        if "text/plain" in data and not shown_otherwise & set(data):
            return data["text/plain"] + "\n"
    return ""


def harvest(nb, lesson: str, figures: Path, link_prefix: str) -> list[str]:
    """Markdown lines for the ``results``-tagged cells of an executed notebook; PNGs go to ``figures``."""
    lines: list[str] = []
    figures.mkdir(parents=True, exist_ok=True)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or TAG not in cell.get("metadata", {}).get("tags", []):
            continue
        lines += ["", f"### {_heading(nb.cells, index)}"]
        text = "".join(_text(o) for o in cell.get("outputs", [])).strip("\n")
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        if text:
            lines += ["", "```", text, "```"]
        pictures = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        for k, output in enumerate(pictures):
            name = f"{lesson}_{index:02d}{'' if len(pictures) == 1 else f'_{k}'}.png"
            (figures / name).write_bytes(_small_png(base64.b64decode(output["data"]["image/png"])))
            lines += ["", f"![{lesson}, cell {index}]({link_prefix}/{name})"]
    return lines


def _page(figures: Path, budget_note: str) -> str:
    """The whole page from the per-lesson fragments in ``figures`` (``LESSON.json`` + ``LESSON.md``)."""
    head = [
        "# What the course draws: measured results",
        "",
        "Generated by `dlcourse results` (do not edit by hand): each lesson's solution notebook was run",
        f"at the budget named below, and every cell tagged `{TAG}` is shown with its pictures and printed",
        "numbers. Numbers come from the course's evaluator (`docs/metrics.md`); FID is in its feature space.",
        budget_note,
        "",
        "| lesson | budget | machine | date | wall time | kernel CPU time | load average during the run |",
        "|---|---|---|---|---|---|---|",
    ]
    body = []
    for lesson in LESSONS:
        if not (figures / f"{lesson}.json").is_file():
            continue
        run = json.loads((figures / f"{lesson}.json").read_text())
        cpu = f"{run['cpu_seconds'] / 60:.1f} min" if "cpu_seconds" in run else "not recorded"
        load = f"{run['load_average']:.1f}" if "load_average" in run else "not recorded"
        head.append(f"| {lesson} | {run['budget']} | {run['machine']} | {run['date']} | {run['seconds'] / 60:.1f} min "
                    f"| {cpu} | {load} |")
        body += ["", f"## {lesson}", (figures / f"{lesson}.md").read_text().rstrip("\n")]
    return "\n".join(head + body) + "\n"


def _copy_references(source: Path) -> list[str]:
    """Copy every reference saved under ``source`` into the package, after checking them all: each must be
    trained at ``pretrained.BUDGET`` and its recorded scores must reach its floors."""
    from dlcourse.pretrained import BUDGET, REFERENCES, WEIGHTS
    from dlcourse.validation import fail

    folders = sorted(p.parent for p in source.glob("*/reference.json"))
    for folder in folders:
        info = json.loads((folder / "reference.json").read_text())
        if folder.name not in REFERENCES:
            raise fail("--update-references", f"references named one of {sorted(REFERENCES)}", repr(folder.name))
        missed = REFERENCES[folder.name].missed(info["check"]["scores"])
        missed += [f"no {part}/ beside the denoiser" for part in REFERENCES[folder.name].parts
                   if not (folder / part / "model.safetensors").is_file()]
        if info["budget"] != BUDGET:
            missed.insert(0, f"trained at the {info['budget']} budget")
        if missed:
            raise fail("--update-references", f"references trained at the {BUDGET} budget that reach their floors "
                       f"(nothing copied; rerun the lesson at --budget {BUDGET})",
                       f"{folder / 'reference.json'}: {'; '.join(missed)}")
    copied = []
    for folder in folders:
        target = WEIGHTS / folder.name
        if target.exists():
            shutil.rmtree(target)
        for part in ("", *REFERENCES[folder.name].parts):  # the denoiser, then the models kept beside it
            (target / part).mkdir(parents=True)
            for name in ("model.safetensors", "config.json"):
                shutil.copy2(folder / part / name, target / part / name)
        shutil.copy2(folder / "reference.json", target / "reference.json")
        copied.append(folder.name)
    return copied


@reports_errors("dlcourse results")
def main(argv: list[str] | None = None) -> int:
    """``dlcourse results``: run lessons at a budget; write ``OUT/results/LESSON.{md,json}`` and PNGs,
    then ``OUT/results.md`` from every lesson's fragment (so one lesson can be rerun alone)."""
    from dlcourse.config import MODES
    from dlcourse.pretrained import BUDGET
    from dlcourse.validation import fail

    parser = Parser(prog="dlcourse results", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="cpu", choices=MODES, help="budget to run the notebooks at (default cpu)")
    parser.add_argument("--lessons", nargs="+", default=list(LESSONS), metavar="LESSON",
                        help=f"which solution notebooks (default: {' '.join(LESSONS)})")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for results.md and results/ (default docs/)")
    parser.add_argument("--page-only", action="store_true",
                        help="run nothing: rebuild results.md from the lessons' saved fragments")
    parser.add_argument("--update-references", action="store_true",
                        help="copy the reference models the notebooks saved into dlcourse/weights/reference/ "
                             f"(--budget {BUDGET} only)")
    args = parser.parse_args(argv)
    if args.update_references and args.budget != BUDGET:
        raise fail("--update-references", f"--budget {BUDGET}, the budget the shipped references are trained at "
                   f"(run `dlcourse results --budget {BUDGET} --update-references`)", f"--budget {args.budget}")
    solutions = ROOT / "solutions"
    paths = {}
    for lesson in args.lessons:
        path = solutions / f"{lesson}.ipynb"
        if not path.is_file():
            parser.error(f"--lessons: no solution notebook {path}; choose from {', '.join(LESSONS)}")
        paths[lesson] = path
    out = Path(args.out)
    figures = out / "results"
    from dlcourse.files import write_atomically

    for lesson, path in ({} if args.page_only else paths).items():
        print(f"running {lesson} at the {args.budget} budget …", flush=True)
        nb, seconds, cpu_seconds = run_notebook(path, args.budget, cwd=solutions)
        for old in figures.glob(f"{lesson}_*.png"):
            old.unlink()
        lines = harvest(nb, lesson, figures, link_prefix="results")
        run = {"budget": args.budget, "machine": machine(), "date": time.strftime("%Y-%m-%d"), "seconds": seconds,
               "cpu_seconds": cpu_seconds, "load_average": os.getloadavg()[1]}  # 5-minute load: other jobs sharing the CPU
        write_atomically(figures / f"{lesson}.md", lambda p: Path(p).write_text("\n".join(lines) + "\n"))
        write_atomically(figures / f"{lesson}.json", lambda p: Path(p).write_text(json.dumps(run, indent=1) + "\n"))
        print(f"  {lesson}: {seconds / 60:.1f} min", flush=True)
    note = ("Where a number is for a GPU it is measured on that GPU; numbers not yet measured on a GPU are "
            "labelled as estimates in the lessons.")
    page = out / "results.md"
    write_atomically(page, lambda p: Path(p).write_text(_page(figures, note)))
    print(f"wrote {page}")
    if args.update_references:
        copied = _copy_references(solutions / "runs" / "reference")
        print(f"references copied into the package: {', '.join(copied) or 'none found'}")
    return 0

"""``dlcourse release OUT_DIR``: write what students get, and prove no answer is in it.

Copied (an allow-list): README.md, pyproject.toml, data/README.md, docs/, the ``dlcourse`` package,
the student notebooks ``notebooks/*.ipynb`` and the student assessment ``assessments/NAME.ipynb``.
Never copied: ``solutions/``, assessment masters (``*.solution.ipynb``), the grading settings, the
reference model, the instructor guide, tests. Before finishing, the release is scanned: every line
of every answer region of every master (longer than 12 characters, and not also written outside the
answers) must be absent from every file; a stale student notebook or a ``solution-only`` cell stops it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .authoring import ASSESSMENT_SUFFIX, SOLUTION_ONLY_TAG, build_all, code_regions, markdown_regions, pairs

ROOT = Path(__file__).resolve().parents[2]
MIN_LINE = 13
_FILES = ("README.md", "pyproject.toml", "data/README.md")
_TREES = ("docs", "dlcourse")
_SKIP = ("__pycache__", ".pyc", ".egg-info")


def _sources(nb: dict) -> list[tuple[str, str]]:
    return [(cell["cell_type"], "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"])
            for cell in nb["cells"]]


def answer_lines(root: str | os.PathLike = ROOT) -> set[str]:
    """Stripped lines (≥ 13 characters) inside the answer regions of all masters, minus those that also
    appear outside the answers (shared code such as ``return x``-style lines or repeated imports)."""
    inside, outside = set(), set()
    for master, _ in pairs(root):
        nb = json.loads(master.read_text(encoding="utf-8"))
        for cell, (kind, source) in zip(nb["cells"], _sources(nb)):
            solution_only = SOLUTION_ONLY_TAG in cell.get("metadata", {}).get("tags", [])
            if kind == "code":
                lines, answer = source.split("\n"), set()
                for begin, end in code_regions(source, str(master)):
                    answer.update(range(begin + 1, end))
                for i, line in enumerate(lines):
                    (inside if i in answer or solution_only else outside).add(line.strip())
            elif kind == "markdown":
                spans = markdown_regions(source, str(master))
                for start, stop in spans:
                    inside.update(line.strip() for line in source[start:stop].split("\n"))
                rest = source
                for start, stop in reversed(spans):
                    rest = rest[:start] + rest[stop:]
                outside.update(line.strip() for line in rest.split("\n"))
    return {line for line in inside - outside
            if len(line) >= MIN_LINE and "SOLUTION" not in line and not line.startswith("# HINT:")}


def package_lines(root: str | os.PathLike = ROOT) -> set[str]:
    """Stripped lines of the course package's own source (released on purpose: DESIGN principle 1)."""
    return {line.strip() for path in (Path(root) / "dlcourse").rglob("*.py")
            for line in path.read_text(encoding="utf-8").split("\n")}


def find_leaks(release_dir: str | os.PathLike, root: str | os.PathLike = ROOT) -> list[str]:
    """``"path: problem"`` for every answer line, master or solution-only cell found under ``release_dir``.

    The package ``dlcourse/`` holds the reference definitions students check against (DESIGN
    principle 1), so in its files only answer lines that are not in the course's own package source
    count; everywhere else every answer line counts."""
    release_dir, lines, problems = Path(release_dir), answer_lines(root), []
    in_package = lines - package_lines(root)
    for path in sorted(p for p in release_dir.rglob("*") if p.is_file() or p.is_symlink()):
        shown = path.relative_to(release_dir)
        if path.is_symlink() or path.name.endswith(ASSESSMENT_SUFFIX) or "solutions" in shown.parts:
            problems.append(f"{shown}: a master or a link, must not be released")
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # weights and images: no answer text
        if path.suffix == ".ipynb":
            nb = json.loads(text)
            if any(SOLUTION_ONLY_TAG in c.get("metadata", {}).get("tags", []) for c in nb["cells"]):
                problems.append(f"{shown}: holds a solution-only cell")
            text = "\n".join(source for _, source in _sources(nb))
        found = {line.strip() for line in text.split("\n")} & (in_package if shown.parts[0] == "dlcourse" else lines)
        problems += [f"{shown}: answer line {line!r}" for line in sorted(found)]
    return problems


def _ignore(_folder: str, names: list[str]) -> list[str]:
    return [n for n in names if any(n.endswith(s) for s in _SKIP)]


def release(out_dir: str | os.PathLike, root: str | os.PathLike = ROOT, force: bool = False) -> list[Path]:
    """Write the student release to ``out_dir`` (new or empty, or replaced with ``force``); return its files."""
    root, out_dir = Path(root), Path(out_dir)
    stale = build_all(root, check=True)
    if stale:
        raise ValueError(f"{root}: student notebooks are out of date ({'; '.join(stale)}); "
                         "run `dlcourse authoring` first")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ValueError(f"OUT_DIR {out_dir}: exists and is not empty (choose a new folder or pass --force)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name in _FILES:
            if (root / name).is_file():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / name, staging / name)
        for name in _TREES:
            if (root / name).is_dir():
                shutil.copytree(root / name, staging / name, ignore=_ignore, symlinks=True)
        for _, student in pairs(root):
            target = staging / student.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(student, target)
        leaks = find_leaks(staging, root)
        if leaks:
            raise ValueError("release stopped, answers found:\n  " + "\n  ".join(leaks[:20]))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(p for p in out_dir.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    """Command line of ``dlcourse release``."""
    parser = argparse.ArgumentParser(prog="dlcourse release", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (hand this folder to students)")
    parser.add_argument("--root", default=str(ROOT), help="course folder (default: this checkout)")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty")
    args = parser.parse_args(argv)
    try:
        files = release(args.out_dir, args.root, args.force)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files to {args.out_dir}; checked: no answer line, master or solution-only cell")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Solution notebooks -> student notebooks (the course's single source of truth).

Authors write only the master copies; this module writes what students get:

- ``solutions/NN_name.ipynb``                 -> ``notebooks/NN_name.ipynb``
- ``assessments/NAME.solution.ipynb``         -> ``assessments/NAME.ipynb``

Markup in a solution notebook:

- Code cells: the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` are
  replaced by a hint and ``raise NotImplementedError("Exercise: fill in ... —
  see the hint above")`` at the indentation of the region's code, so a region
  that is a function body leaves a valid function. ``# HINT: ...`` lines
  directly after ``# BEGIN SOLUTION`` are kept as the hint; without them a
  generic hint is written.
- Markdown cells: ``<!-- BEGIN SOLUTION -->...<!-- END SOLUTION -->`` becomes
  ``*Your answer here.*``.
- Cells tagged ``solution-only`` (cell metadata ``tags``) are left out.

Every written notebook is normalised: no outputs or execution counts, the
``python3`` kernelspec, only ``tags``/``editable``/``deletable``/``jupyter``
cell metadata, and JSON with sorted keys, 1-space indent and a trailing
newline, so regenerating is byte-identical.

Usage: ``python -m dlcourse.tools.authoring [--check | --strip]`` (or ``dlcourse authoring``).
"""
from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import re
import sys
import textwrap
from pathlib import Path

import nbformat

from ..files import write_atomically
from ..validation import fail

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
HINT = "# HINT:"
MD_BEGIN = "<!-- BEGIN SOLUTION -->"
MD_END = "<!-- END SOLUTION -->"
MD_PLACEHOLDER = "*Your answer here.*"
SOLUTION_ONLY_TAG = "solution-only"
GENERIC_HINT = "# HINT: use the explanation above; replace the next line with your code."
ASSESSMENT_SUFFIX = ".solution.ipynb"

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
KEPT_CELL_METADATA = ("tags", "editable", "deletable", "jupyter")

_BEGIN_RE = re.compile(r"^(\s*)#\s*BEGIN SOLUTION\s*$")
_END_RE = re.compile(r"^\s*#\s*END SOLUTION\s*$")
_HINT_RE = re.compile(r"^\s*#\s*HINT:")
_DEF_RE = re.compile(r"^\s*(?:async\s+)?def\s+(\w+)\s*\(")
_MD_MARKER_RE = re.compile(r"<!--\s*(BEGIN|END) SOLUTION\s*-->")
# Anything a person might have meant as a marker, in any case and spelling: no student copy may hold one.
_MARKER_LIKE_RE = re.compile(r"\b(begin|end)[\s_\-]*solutions?\b", re.IGNORECASE)
_CELL_TYPES = ("code", "markdown", "raw")


class AuthoringError(ValueError):
    """A solution notebook whose markup cannot be turned into a student notebook."""


# ----------------------------------------------------------------- code cells
def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _enclosing_function(lines: list[str], start: int, indent: str) -> str | None:
    """Name of the ``def`` that encloses line ``start`` (at ``indent``), if any."""
    level = len(indent)
    for line in reversed(lines[:start]):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        line_level = len(_indent(line))
        if line_level < level:
            match = _DEF_RE.match(line)
            if match:
                return match.group(1)
            level = line_level
            if level == 0:
                return None
    return None


def _defined_names(code_lines: list[str]) -> list[str]:
    """Names a region defines at its top level (``x = ...``, ``a, b = ...``, ``self.w = ...``, ``def f``)."""
    try:
        tree = ast.parse(textwrap.dedent("\n".join(code_lines)))
    except SyntaxError:
        return []
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
            continue
        targets = (
            node.targets if isinstance(node, ast.Assign)
            else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign))
            else []
        )
        for target in targets:
            for sub in ast.walk(target):
                # plain names (x, a, b) and attributes of a name (self.body)
                is_attribute = isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                if (isinstance(sub, ast.Name) or is_attribute) and isinstance(sub.ctx, ast.Store):
                    name = ast.unparse(sub)
                    if name not in names:
                        names.append(name)
    return names


def _what(code_lines: list[str], function: str | None) -> str:
    """Short description of the missing code for the placeholder's message."""
    names = ", ".join(f"`{n}`" for n in _defined_names(code_lines))
    if names and function:
        return f"{names} in `{function}()`"
    if names:
        return names
    if function:
        return f"`{function}()`"
    return "the missing code"


def _placeholder(region: list[str], cell_lines: list[str], begin_index: int) -> list[str]:
    """Hint comment(s) + a raising placeholder for one region (the lines between the markers)."""
    hints: list[str] = []
    for line in region:
        if not _HINT_RE.match(line):
            break
        hints.append(line.strip())
    code = [line for line in region[len(hints):] if line.strip() and not line.strip().startswith("#")]
    if code:
        indent = min((_indent(line) for line in code), key=len)
    else:
        indent = _indent(cell_lines[begin_index])
    what = _what(code, _enclosing_function(cell_lines, begin_index, indent))
    return [indent + hint for hint in (hints or [GENERIC_HINT])] + [
        f'{indent}raise NotImplementedError("Exercise: fill in {what} — see the hint above")'
    ]


def code_regions(source: str, where: str = "cell") -> list[tuple[int, int]]:
    """(begin, end) line indices of each ``# BEGIN SOLUTION``/``# END SOLUTION`` pair in ``source``.

    Raises AuthoringError naming ``where`` and the 1-based line for a nested
    BEGIN, an END without BEGIN, or a BEGIN without END.
    """
    regions: list[tuple[int, int]] = []
    begin: int | None = None
    for i, line in enumerate(source.split("\n")):
        if _BEGIN_RE.match(line):
            if begin is not None:
                raise AuthoringError(
                    f"{where}, line {i + 1}: nested '{BEGIN}' (the one on line {begin + 1} is not closed)"
                )
            begin = i
        elif _END_RE.match(line):
            if begin is None:
                raise AuthoringError(f"{where}, line {i + 1}: '{END}' without a '{BEGIN}' before it")
            regions.append((begin, i))
            begin = None
    if begin is not None:
        raise AuthoringError(f"{where}, line {begin + 1}: '{BEGIN}' without a matching '{END}'")
    return regions


def render_code(source: str, where: str = "cell") -> str:
    """The student version of one code cell's source."""
    lines = source.split("\n")
    out: list[str] = []
    previous_end = -1
    for begin, end in code_regions(source, where):
        out += lines[previous_end + 1 : begin]
        out += _placeholder(lines[begin + 1 : end], lines, begin)
        previous_end = end
    out += lines[previous_end + 1 :]
    return "\n".join(out)


# ------------------------------------------------------------- markdown cells
def markdown_regions(source: str, where: str = "cell") -> list[tuple[int, int]]:
    """(start, stop) character spans of each ``<!-- BEGIN/END SOLUTION -->`` region, markers included."""
    regions: list[tuple[int, int]] = []
    begin: re.Match | None = None
    for marker in _MD_MARKER_RE.finditer(source):
        line = source.count("\n", 0, marker.start()) + 1
        if marker.group(1) == "BEGIN":
            if begin is not None:
                raise AuthoringError(f"{where}, line {line}: nested '{MD_BEGIN}'")
            begin = marker
        else:
            if begin is None:
                raise AuthoringError(f"{where}, line {line}: '{MD_END}' without a '{MD_BEGIN}' before it")
            regions.append((begin.start(), marker.end()))
            begin = None
    if begin is not None:
        line = source.count("\n", 0, begin.start()) + 1
        raise AuthoringError(f"{where}, line {line}: '{MD_BEGIN}' without a matching '{MD_END}'")
    return regions


def render_markdown(source: str, where: str = "cell") -> str:
    """The student version of one markdown cell's source."""
    out, previous = [], 0
    for start, stop in markdown_regions(source, where):
        out += [source[previous:start], MD_PLACEHOLDER]
        previous = stop
    out.append(source[previous:])
    return "".join(out)


# ------------------------------------------------------------------ notebooks
def _is_solution_only(cell) -> bool:
    return SOLUTION_ONLY_TAG in cell.get("metadata", {}).get("tags", [])


def normalise(nb) -> nbformat.NotebookNode:
    """A copy of ``nb`` with outputs and execution counts stripped and metadata normalised."""
    if not isinstance(nb, dict) or "cells" not in nb:
        raise fail("nb", "a notebook (nbformat.NotebookNode with 'cells')", type(nb).__name__)
    nb = nbformat.from_dict(copy.deepcopy(dict(nb)))
    nb.nbformat, nb.nbformat_minor = 4, 5
    nb.metadata = nbformat.from_dict({"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}})
    seen: set[str] = set()
    for i, cell in enumerate(nb.cells):
        old = cell.get("metadata", {})
        cell.metadata = nbformat.from_dict(
            {k: old[k] for k in KEPT_CELL_METADATA if k in old and not (k == "tags" and not old[k])}
        )
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        if isinstance(cell.source, list):
            cell.source = "".join(cell.source)
        cell_id = cell.get("id")
        if not cell_id or cell_id in seen:
            cell_id = hashlib.sha1(f"{i}\n{cell.source}".encode()).hexdigest()[:8]
        cell.id = cell_id
        seen.add(cell_id)
    return nb


def marker_lines(source: str) -> list[tuple[int, str]]:
    """(1-based line, text) of each line of ``source`` that looks like a solution marker, in any case or spelling."""
    return [(i + 1, line.strip()) for i, line in enumerate(source.split("\n")) if _MARKER_LIKE_RE.search(line)]


def find_leaks(nb) -> list[str]:
    """``"cell i (type), line j: text"`` for every marker-like line or ``solution-only`` tag left in ``nb``."""
    found = []
    for index, cell in enumerate(nb["cells"]):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        for line, text in marker_lines(source):
            found.append(f"cell {index} ({cell.get('cell_type')}), line {line}: {text[:80]!r}")
        if _is_solution_only(cell):
            found.append(f"cell {index} ({cell.get('cell_type')}): tagged {SOLUTION_ONLY_TAG!r}")
    return found


def render_student(nb, name: str = "notebook") -> nbformat.NotebookNode:
    """The student version of a solution notebook (normalised; ``name`` is used in errors).

    Raises AuthoringError when the student version would still hold anything that looks
    like a solution marker (a misspelt marker, or one in the wrong cell type): its region
    would otherwise be handed out with the answer in it.
    """
    nb = normalise(nb)
    cells = []
    for index, cell in enumerate(nb.cells):
        if _is_solution_only(cell):
            continue
        where = f"{name}: cell {index}"
        if cell.cell_type == "code":
            cell.source = render_code(cell.source, where)
        elif cell.cell_type == "markdown":
            cell.source = render_markdown(cell.source, where)
        for line, text in marker_lines(cell.source):
            raise AuthoringError(
                f"{where} ({cell.cell_type}), line {line}: {text[:80]!r} looks like a solution marker but is not "
                f"one: write exactly '{BEGIN}'/'{END}' on their own lines in a code cell, or "
                f"'{MD_BEGIN}'/'{MD_END}' in a markdown cell")
        cells.append(cell)
    nb.cells = cells
    return nb


def dumps(nb) -> str:
    """Deterministic notebook JSON: sorted keys, 1-space indent, trailing newline."""
    return nbformat.writes(nb, version=4) + "\n"


def has_outputs(nb) -> bool:
    """True when any code cell holds outputs or an execution count."""
    return any(
        cell.get("outputs") or cell.get("execution_count") is not None
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
    )


def pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """(solution, student) paths: solutions/*.ipynb -> notebooks/, assessments/*.solution.ipynb -> assessments/."""
    root = Path(root)
    found = [(path, root / "notebooks" / path.name) for path in sorted((root / "solutions").glob("*.ipynb"))]
    for path in sorted((root / "assessments").glob("*" + ASSESSMENT_SUFFIX)):
        found.append((path, path.with_name(path.name[: -len(ASSESSMENT_SUFFIX)] + ".ipynb")))
    return found


def _read(path: Path, root: Path) -> nbformat.NotebookNode:
    """Read a master notebook, refusing (with its path) anything that is not a notebook."""
    shown = path.relative_to(root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise AuthoringError(f"{shown}: expected a notebook (JSON), got unreadable text: {str(error)[:120]}") from None
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        raise AuthoringError(f"{shown}: expected a notebook (a JSON object with a 'cells' list), "
                             f"got a JSON {type(data).__name__}")
    for index, cell in enumerate(cells):
        source = cell.get("source") if isinstance(cell, dict) else None
        if not (isinstance(cell, dict) and cell.get("cell_type") in _CELL_TYPES
                and (isinstance(source, str) or (isinstance(source, list) and all(isinstance(x, str) for x in source)))):
            raise AuthoringError(f"{shown}: cell {index}: expected a cell with cell_type in {list(_CELL_TYPES)} "
                                 "and a text source")
    try:
        return nbformat.reads(json.dumps(data), as_version=4)
    except Exception as error:  # nbformat raises several types for malformed notebooks
        raise AuthoringError(f"{shown}: expected a valid notebook, got: {str(error)[:120]}") from None


def _check_root(root) -> Path:
    root = Path(root)
    if not (root / "solutions").is_dir():
        raise fail("root", "a course folder containing solutions/", repr(str(root)))
    return root


def build_all(root: str | Path = ".", check: bool = False) -> list[str]:
    """Write (or with ``check=True`` only compare) every student notebook under ``root``.

    Returns one line per change: ``"wrote: notebooks/x.ipynb"`` when writing;
    when checking, ``"stale: ..."``, ``"missing: ..."``, ``"extra: ..."`` (a
    notebook in notebooks/ without a solution) and ``"unstripped: ..."`` (a
    solution with outputs). An empty list means everything is in sync.
    Every master is read and rendered before anything is written, so a bad
    master leaves all student notebooks as they were; each file is written atomically.
    """
    root = _check_root(root)
    rendered = []
    for solution_path, student_path in pairs(root):
        solution = _read(solution_path, root)
        text = dumps(render_student(solution, name=str(solution_path.relative_to(root))))
        leaks = find_leaks(json.loads(text))
        if leaks:  # render_student refuses these already; this scans the very text that is written
            raise AuthoringError(f"{student_path.relative_to(root)}: {leaks[0]} looks like a solution marker")
        rendered.append((solution_path, solution, student_path, text))
    report: list[str] = []
    for solution_path, solution, student_path, text in rendered:
        shown = str(student_path.relative_to(root))
        if check:
            if has_outputs(solution):
                report.append(f"unstripped: {solution_path.relative_to(root)} (run `dlcourse authoring --strip`)")
            if not student_path.exists():
                report.append(f"missing: {shown}")
            elif student_path.read_text(encoding="utf-8") != text:
                report.append(f"stale: {shown}")
        elif not student_path.exists() or student_path.read_text(encoding="utf-8") != text:
            _write_text(student_path, text)
            report.append(f"wrote: {shown}")
    return report + (extras(root) if check else [])


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def extras(root: str | Path = ".") -> list[str]:
    """``"extra: ..."`` for each notebook in notebooks/ that no solution generates."""
    root = Path(root)
    expected = {student for _, student in pairs(root)}
    return [
        f"extra: {path.relative_to(root)} (no solutions/{path.name}; delete it or add the solution)"
        for path in sorted((root / "notebooks").glob("*.ipynb"))
        if path not in expected
    ]


def strip_all(root: str | Path = ".") -> list[str]:
    """Strip outputs and normalise metadata of every solution notebook in place; return the changed paths.

    All masters are read first (a bad one changes nothing); each is rewritten atomically.
    """
    root = _check_root(root)
    stripped = [(path, dumps(normalise(_read(path, root)))) for path, _ in pairs(root)]
    changed = []
    for solution_path, text in stripped:
        if solution_path.read_text(encoding="utf-8") != text:
            _write_text(solution_path, text)
            changed.append(str(solution_path.relative_to(root)))
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command line: write student notebooks, or ``--check`` them, or ``--strip`` solutions."""
    parser = argparse.ArgumentParser(
        prog="dlcourse authoring",
        description="Write notebooks/ (and assessments/*.ipynb) from the solution notebooks.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything is stale, missing or extra")
    mode.add_argument("--strip", action="store_true", help="strip outputs from the solution notebooks in place")
    parser.add_argument("--root", default=".", help="course folder (default: the current directory)")
    args = parser.parse_args(argv)
    if not (Path(args.root) / "solutions").is_dir():
        print(f"error: --root: expected a course folder containing solutions/, got {args.root!r} "
              "(run from the course folder or pass --root PATH)", file=sys.stderr)
        return 2
    try:
        if args.strip:
            changed = strip_all(args.root)
            print("\n".join(f"stripped: {path}" for path in changed) or "solutions are already stripped")
            return 0
        report = build_all(args.root, check=args.check)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        if report:
            print("\n".join(report + ["run `dlcourse authoring` to regenerate the student notebooks"]))
            return 1
        print("student notebooks are in sync with the solutions")
        return 0
    print("\n".join(report) or "student notebooks are already up to date")
    for line in extras(args.root):
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

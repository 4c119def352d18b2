"""The house's one-way arrows: the student's library never imports the instructor's tools or the grader.

Walks every ``import`` / ``from … import`` statement (top level and inside functions) of every module under
``dlcourse/`` outside ``dlcourse/tools`` and ``dlcourse/grading``, resolving relative imports.
"""
from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dlcourse"
ROOMS = ("dlcourse.tools", "dlcourse.grading")
DOORS = ("dlcourse.__main__",)  # `python -m dlcourse` runs the command line; nothing imports it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, ``from . import x`` counted as ``package.x``."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if not module_name(p).startswith(ROOMS) and module_name(p) not in DOORS)


def test_the_walk_sees_relative_and_lazy_imports():
    # the walker must find imports written every way, or the test below could not fail
    benchmark = imported_modules(PACKAGE / "tools" / "benchmark.py")
    assert "dlcourse.tools.cli.Parser" in benchmark            # from .cli import Parser (top level)
    assert "dlcourse.training.TrainStep" in benchmark          # from ..training import … (inside a function)
    assert "dlcourse.metrics.CONFIG_FILE" in imported_modules(PACKAGE / "tools" / "doctor.py")  # lazy, relative
    assert "dlcourse.config" in imported_modules(PACKAGE / "__init__.py")  # from .config import … in a package
    assert len(library_modules()) > 20


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: module_name(p))
def test_library_module_never_imports_tools_or_grading(path):
    wrong = sorted(name for name in imported_modules(path) if name.startswith(ROOMS))
    assert not wrong, f"{module_name(path)} imports {wrong}: the library may not depend on tools/ or grading/"


def test_the_package_has_no_import_cycles():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    # importing oneself or one's own package is no edge: Python has begun importing it before the module
    graph = {m: {n for n in imported_modules(p) if n in modules and not f"{m}.".startswith(f"{n}.")}
             for m, p in modules.items()}
    assert "dlcourse.grading.assessment" in graph["dlcourse.grading.model"]  # the walk sees the arrows
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")

"""Hygiene of the committed notebooks: student copies in sync, no leaked answers, no outputs, structure.

The solution notebooks themselves are executed by nbval (pytest collects solutions/*.ipynb).
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from dlcourse.tools import authoring

ROOT = Path(__file__).resolve().parent.parent
PAIRS = authoring.pairs(ROOT)
SOLUTIONS = [solution for solution, _ in PAIRS]
COMMITTED = sorted(
    p for folder in ("solutions", "notebooks", "assessments") for p in (ROOT / folder).glob("*.ipynb")
)
MIN_LEAK_LENGTH = 12  # shorter lines ("return x", "x = x + 1") are too generic to call a leak
WELCOME = "00_welcome.ipynb"
MD_MARKER = re.compile(r"<!--\s*(BEGIN|END) SOLUTION\s*-->")


def ids(paths) -> list[str]:
    return [str(Path(p).relative_to(ROOT)) for p in paths]


def read(path: Path) -> nbformat.NotebookNode:
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: run `dlcourse authoring`"
    return nbformat.read(path, as_version=4)


def split_solution_text(nb) -> tuple[set[str], str]:
    """(secret lines, public text) of a solution notebook.

    Secret: the stripped lines inside solution regions and in ``solution-only`` cells (code
    comments such as hints excluded). Public: all the other text of the notebook.
    """
    secret: list[str] = []
    public: list[str] = []
    for cell in nb.cells:
        source = cell.source
        if "solution-only" in cell.metadata.get("tags", []):
            hidden, shown = [source], []
        elif cell.cell_type == "code":
            lines = source.split("\n")
            regions = authoring.code_regions(source)
            inside = {i for begin, end in regions for i in range(begin, end + 1)}
            hidden = [line for i, line in enumerate(lines) if i in inside]
            shown = [line for i, line in enumerate(lines) if i not in inside]
        elif cell.cell_type == "markdown":
            regions = authoring.markdown_regions(source)
            hidden = [source[start:stop] for start, stop in regions]
            bounds = [0] + [i for region in regions for i in region] + [len(source)]
            shown = [source[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]
        else:
            hidden, shown = [], [source]
        public += shown
        for text in hidden:
            for line in MD_MARKER.sub("", text).split("\n"):
                if not (cell.cell_type == "code" and line.strip().startswith("#")):
                    secret.append(line.strip())
    return set(secret), "\n".join(public)


def test_student_notebooks_are_in_sync_with_solutions():
    problems = authoring.build_all(ROOT, check=True)
    assert problems == [], "\n".join(problems + ["fix: run `dlcourse authoring` (and `--strip` for unstripped)"])


def leaks(solution, student) -> list[str]:
    """Answer lines (longer than MIN_LEAK_LENGTH, absent from the public text) found in the student copy."""
    secret, public = split_solution_text(solution)
    student_text = "\n".join(cell.source for cell in student.cells)
    return sorted(
        line for line in secret if len(line) > MIN_LEAK_LENGTH and line not in public and line in student_text
    )


def test_leak_detector_finds_planted_answers_and_ignores_generic_or_public_lines():
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    solution = new_notebook(cells=[
        new_code_cell("x = load()\n# BEGIN SOLUTION\n# HINT: square it\ny = (x - 1) ** 2\nreturn y\nx = load()\n# END SOLUTION"),
        new_markdown_cell("Why? <!-- BEGIN SOLUTION -->Because the mean is blurry.<!-- END SOLUTION -->"),
        new_code_cell("reference = 0.0513", metadata={"tags": ["solution-only"]}),
    ])
    clean = authoring.render_student(solution)
    assert leaks(solution, clean) == []
    planted = authoring.render_student(solution)
    planted.cells[0].source += "\ny = (x - 1) ** 2\nreturn y"
    planted.cells[1].source = "Why? Because the mean is blurry."
    planted.cells.append(new_code_cell("reference = 0.0513"))
    assert leaks(solution, planted) == ["Because the mean is blurry.", "reference = 0.0513", "y = (x - 1) ** 2"]


@pytest.mark.parametrize("solution, student", PAIRS, ids=ids(SOLUTIONS))
def test_no_solution_text_leaks_into_student_notebook(solution, student):
    leaked = leaks(read(solution), read(student))
    assert not leaked, f"{student.relative_to(ROOT)} shows solution lines: {leaked}"


@pytest.mark.parametrize("path", COMMITTED, ids=ids(COMMITTED))
def test_committed_notebook_has_no_outputs_or_execution_counts(path):
    assert not authoring.has_outputs(read(path)), (
        f"{path.relative_to(ROOT)} holds outputs: run `dlcourse authoring --strip` then `dlcourse authoring`"
    )


def _markdown_mentions(cells, pattern: str) -> bool:
    return any(c.cell_type == "markdown" and re.search(pattern, c.source, re.IGNORECASE) for c in cells)


@pytest.mark.parametrize("path", SOLUTIONS, ids=ids(SOLUTIONS))
def test_solution_notebook_opens_with_learning_goals_and_ends_with_summary(path):
    cells = [c for c in read(path).cells if "solution-only" not in c.metadata.get("tags", [])]
    assert _markdown_mentions(cells[:2], r"learning goals"), "the first two cells must state the learning goals"
    if path.name != WELCOME:
        assert _markdown_mentions(cells[-2:], r"summary"), "one of the last two cells must be a markdown summary"


@pytest.mark.parametrize("solution, student", PAIRS, ids=ids(SOLUTIONS))
def test_student_notebook_has_an_exercise(solution, student):
    if solution.name == WELCOME:
        pytest.skip("the welcome notebook is an environment check without exercises")
    text = "\n".join(cell.source for cell in read(student).cells)
    assert 'raise NotImplementedError("Exercise:' in text or authoring.MD_PLACEHOLDER in text, (
        f"{student.relative_to(ROOT)} has no exercise: mark answers in {solution.relative_to(ROOT)} "
        "with # BEGIN SOLUTION / # END SOLUTION"
    )

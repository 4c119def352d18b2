"""The solution -> student notebook pipeline (dlcourse.tools.authoring) and the CLI around it.

No answer reaches a student notebook, whatever the marker spelling or cell type; writes are all-or-nothing.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output, new_raw_cell

from dlcourse.tools import authoring, cli
from dlcourse.tools.authoring import AuthoringError, build_all, find_leaks, render_student

ROOT = Path(__file__).resolve().parent.parent
ANSWER = "answer = 6 * 7"


def compile_cell(source: str) -> None:
    """Compile a code cell as Python, ignoring IPython magics and shell lines."""
    code = "\n".join(line for line in source.split("\n") if not line.lstrip().startswith(("%", "!")))
    compile(code, "<cell>", "exec")


def notebook(*cells) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = list(cells)
    return nb


FUNCTION_CELL = """import torch

def q_sample(x0, t, noise):
    \"\"\"x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.\"\"\"
    abar = alpha_bars[t]
    # BEGIN SOLUTION
    # HINT: look up sqrt(alpha_bar) for each sample, then broadcast over C, H, W.
    # HINT: the closed form is in the cell above.
    scale = abar.sqrt()[:, None, None, None]
    return scale * x0 + (1 - abar).sqrt()[:, None, None, None] * noise
    # END SOLUTION

print(q_sample)"""


def test_function_body_region_becomes_hint_and_indented_placeholder():
    student = render_student(notebook(new_code_cell(FUNCTION_CELL)))
    source = student.cells[0].source
    assert source.split("\n") == [
        "import torch",
        "",
        "def q_sample(x0, t, noise):",
        '    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""',
        "    abar = alpha_bars[t]",
        "    # HINT: look up sqrt(alpha_bar) for each sample, then broadcast over C, H, W.",
        "    # HINT: the closed form is in the cell above.",
        '    raise NotImplementedError("Exercise: fill in `scale` in `q_sample()` — see the hint above")',
        "",
        "print(q_sample)",
    ]
    compile_cell(source)


def test_placeholder_raises_friendly_error_when_run():
    cell = "def double(x):\n    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION\n"
    source = render_student(notebook(new_code_cell(cell))).cells[0].source
    namespace: dict = {}
    exec(source, namespace)
    with pytest.raises(NotImplementedError, match=r"Exercise: fill in `double\(\)` — see the hint above"):
        namespace["double"](3)


def test_top_level_region_without_hint_gets_generic_hint_and_names_the_variable():
    cell = "x = 1\n# BEGIN SOLUTION\nloss = (x - 2) ** 2\n# END SOLUTION\nprint(loss)"
    source = render_student(notebook(new_code_cell(cell))).cells[0].source
    assert source.split("\n") == [
        "x = 1",
        authoring.GENERIC_HINT,
        'raise NotImplementedError("Exercise: fill in `loss` — see the hint above")',
        "print(loss)",
    ]


def test_nested_blocks_multiple_regions_and_magics_still_compile():
    cell = (
        "%matplotlib inline\n"
        "!echo hi\n"
        "class Net:\n"
        "    def forward(self, x):\n"
        "        for _ in range(2):\n"
        "            # BEGIN SOLUTION\n"
        "            x = x + 1\n"
        "            # END SOLUTION\n"
        "        return x\n"
        "\n"
        "    def backward(self, g):\n"
        "        # BEGIN SOLUTION\n"
        "        # HINT: the gradient of x + 1 is 1.\n"
        "        return g\n"
        "        # END SOLUTION\n"
    )
    source = render_student(notebook(new_code_cell(cell))).cells[0].source
    compile_cell(source)
    assert "            raise NotImplementedError(\"Exercise: fill in `x` in `forward()`" in source
    assert "        # HINT: the gradient of x + 1 is 1.\n        raise NotImplementedError(" in source
    assert "return g" not in source and "x = x + 1" not in source


def test_placeholder_names_attributes_set_in_init():
    cell = (
        "class Block:\n"
        "    def __init__(self, n):\n"
        "        # BEGIN SOLUTION\n"
        "        self.body, self.pool = [n] * 2, None\n"
        "        self.body[0] = 1\n"
        "        # END SOLUTION\n"
    )
    source = render_student(notebook(new_code_cell(cell))).cells[0].source
    assert "fill in `self.body`, `self.pool` in `__init__()` — see the hint above" in source
    compile_cell(source)


def test_solution_only_cells_dropped_and_other_cells_kept_in_order():
    nb = notebook(
        new_markdown_cell("# Title"),
        new_markdown_cell("Instructor: expect a loss near 0.05.", metadata={"tags": ["solution-only"]}),
        new_code_cell("print(1)", metadata={"tags": ["keep-me"]}),
    )
    student = render_student(nb)
    assert [c.source for c in student.cells] == ["# Title", "print(1)"]
    assert student.cells[1].metadata == {"tags": ["keep-me"]}
    assert len(nb.cells) == 3  # the input is not modified


def test_markdown_regions_inline_and_multiline():
    cell = (
        "**Question.** Why does one-shot denoising fail?\n\n"
        "<!-- BEGIN SOLUTION -->\nBecause the posterior mean is blurry.\n<!-- END SOLUTION -->\n\n"
        "Short answer: <!-- BEGIN SOLUTION -->the mean of many images<!-- END SOLUTION -->."
    )
    source = render_student(notebook(new_markdown_cell(cell))).cells[0].source
    assert source == (
        "**Question.** Why does one-shot denoising fail?\n\n*Your answer here.*\n\n"
        "Short answer: *Your answer here.*."
    )


@pytest.mark.parametrize(
    "source, message",
    [
        ("a = 1\n# BEGIN SOLUTION\nb = 2", r"cell 1, line 2: '# BEGIN SOLUTION' without a matching"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\nb = 2\n# END SOLUTION", r"cell 1, line 2: nested"),
        ("b = 2\n# END SOLUTION", r"cell 1, line 2: '# END SOLUTION' without"),
    ],
)
def test_unbalanced_code_markers_name_notebook_cell_and_line(source, message):
    nb = notebook(new_code_cell("ok = True"), new_code_cell(source))
    with pytest.raises(AuthoringError, match=r"solutions/07_x\.ipynb: " + message):
        render_student(nb, name="solutions/07_x.ipynb")


def test_unbalanced_markdown_marker_is_an_error():
    nb = notebook(new_markdown_cell("text\n<!-- BEGIN SOLUTION -->\nanswer"))
    with pytest.raises(AuthoringError, match=r"demo: cell 0, line 2: '<!-- BEGIN SOLUTION -->' without"):
        render_student(nb, name="demo")


def test_outputs_counts_and_metadata_are_normalised():
    cell = new_code_cell("print(1)", execution_count=3, metadata={"scrolled": True, "tags": ["t"], "editable": False})
    cell.outputs = [new_output("stream", name="stdout", text="1\n")]
    nb = notebook(cell)
    nb.metadata = {"kernelspec": {"name": "myenv", "display_name": "My env"}, "language_info": {"version": "3.9"}}
    student = render_student(nb)
    assert student.cells[0].outputs == [] and student.cells[0].execution_count is None
    assert student.cells[0].metadata == {"tags": ["t"], "editable": False}
    assert student.metadata.kernelspec.name == "python3"
    assert authoring.has_outputs(nb) and not authoring.has_outputs(student)
    nbformat.validate(student)


def test_render_student_rejects_non_notebook():
    with pytest.raises(ValueError, match=r"^nb: expected a notebook"):
        render_student("not a notebook")


@pytest.mark.parametrize("cell", [
    new_code_cell(f"## BEGIN SOLUTION\n{ANSWER}\n## END SOLUTION"),
    new_code_cell(f"# begin solution\n{ANSWER}\n# end solution"),
    new_code_cell(f"# BEGIN  SOLUTION\n{ANSWER}\n# END  SOLUTION"),
    new_code_cell(f"# BEGIN SOLUTION here\n{ANSWER}\n# END SOLUTION"),
    new_code_cell(f"# BEGIN_SOLUTION\n{ANSWER}\n# END_SOLUTION"),
    new_code_cell(f"x = 1  # BEGIN SOLUTION\n{ANSWER}\n# END SOLUTION"),
    new_code_cell(f"<!-- BEGIN SOLUTION -->\n{ANSWER}\n<!-- END SOLUTION -->"),
    new_markdown_cell(f"# BEGIN SOLUTION\n{ANSWER}\n# END SOLUTION"),
    new_markdown_cell(f"<!-- begin solution -->{ANSWER}<!-- end solution -->"),
    new_markdown_cell(f"<!--BEGIN SOLUTION-->{ANSWER}<!--END  SOLUTION -->"),
    new_raw_cell(f"# BEGIN SOLUTION\n{ANSWER}\n# END SOLUTION"),
    new_raw_cell(f"<!-- BEGIN SOLUTION -->{ANSWER}<!-- END SOLUTION -->"),
])
def test_a_marker_that_is_not_recognised_fails_the_build_with_cell_and_line(cell):
    nb = new_notebook(cells=[new_markdown_cell("intro"), cell])
    with pytest.raises(AuthoringError, match=r"^lesson: cell 1( \(\w+\))?, line \d+: "):
        render_student(nb, name="lesson")


def test_find_leaks_scans_every_cell_type_and_the_solution_only_tag():
    nb = new_notebook(cells=[
        new_code_cell("ok = 1\n# END SOLUTION"), new_markdown_cell("fine"),
        new_raw_cell("x\nBegin-Solution"), new_markdown_cell("kept", metadata={"tags": ["solution-only"]}),
    ])
    assert find_leaks(nb) == [
        "cell 0 (code), line 2: '# END SOLUTION'",
        "cell 2 (raw), line 2: 'Begin-Solution'",
        "cell 3 (markdown): tagged 'solution-only'",
    ]


@pytest.mark.parametrize("student", [student for _, student in authoring.pairs(ROOT)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_student_notebooks_hold_no_marker_in_any_cell_type(student):
    assert find_leaks(nbformat.read(student, as_version=4)) == []


def write_course(root, solutions: dict[str, nbformat.NotebookNode | str]) -> None:
    """solutions/<name> for each notebook, or for raw text (to test masters that are not notebooks)."""
    (root / "solutions").mkdir()
    for name, nb in solutions.items():
        text = nb if isinstance(nb, str) else authoring.dumps(nb)
        (root / "solutions" / name).write_text(text, encoding="utf-8")


def test_build_all_writes_then_is_byte_identical_and_check_detects_every_problem(tmp_path):
    lesson = notebook(new_markdown_cell("## Learning goals"), new_code_cell(FUNCTION_CELL))
    exam = notebook(new_code_cell("# BEGIN SOLUTION\nanswer = 42\n# END SOLUTION"))
    write_course(tmp_path, {"01_a.ipynb": lesson})
    (tmp_path / "assessments").mkdir()
    nbformat.write(exam, tmp_path / "assessments" / "exam.solution.ipynb")

    assert set(build_all(tmp_path, check=True)) == {"missing: notebooks/01_a.ipynb", "missing: assessments/exam.ipynb"}
    assert build_all(tmp_path) == ["wrote: notebooks/01_a.ipynb", "wrote: assessments/exam.ipynb"]
    first = (tmp_path / "notebooks" / "01_a.ipynb").read_bytes()
    assert first.endswith(b"}\n") and b'\n "cells": [\n  {\n' in first  # sorted keys, 1-space indent
    assert build_all(tmp_path) == [] and build_all(tmp_path, check=True) == []
    assert (tmp_path / "notebooks" / "01_a.ipynb").read_bytes() == first
    assert "answer = 42" not in (tmp_path / "assessments" / "exam.ipynb").read_text()

    lesson.cells.append(new_code_cell("print('new')"))
    nbformat.write(lesson, tmp_path / "solutions" / "01_a.ipynb")
    nbformat.write(notebook(), tmp_path / "notebooks" / "99_orphan.ipynb")
    problems = build_all(tmp_path, check=True)
    assert problems[0] == "stale: notebooks/01_a.ipynb"
    assert problems[1].startswith("extra: notebooks/99_orphan.ipynb")
    assert (tmp_path / "notebooks" / "01_a.ipynb").read_bytes() == first  # check writes nothing


def test_check_reports_unstripped_solutions_and_strip_fixes_them(tmp_path):
    cell = new_code_cell("print(1)", execution_count=1)
    cell.outputs = [new_output("stream", name="stdout", text="1\n")]
    write_course(tmp_path, {"01_a.ipynb": notebook(cell)})
    build_all(tmp_path)
    assert [p.split(" ")[0:2] for p in build_all(tmp_path, check=True)] == [["unstripped:", "solutions/01_a.ipynb"]]
    assert authoring.strip_all(tmp_path) == ["solutions/01_a.ipynb"]
    assert authoring.strip_all(tmp_path) == []
    assert build_all(tmp_path, check=True) == []


def test_build_all_rejects_folder_without_solutions(tmp_path):
    with pytest.raises(ValueError, match=r"^root: expected a course folder containing solutions/"):
        build_all(tmp_path)


GOOD = new_notebook(cells=[new_code_cell(f"# BEGIN SOLUTION\n{ANSWER}\n# END SOLUTION")])


@pytest.mark.parametrize("bad, message", [
    ("[1, 2]", "expected a notebook .*got a JSON list"),
    ('{"cells": [{"cell_type": "code"}]}', "cell 0: expected a cell"),
    ('{"cells": "x"}', "expected a notebook .*got a JSON dict"),
    ("{not json", "expected a notebook .*unreadable text"),
])
def test_a_bad_master_is_named_and_nothing_is_written(tmp_path, bad, message):
    write_course(tmp_path, {"01_good.ipynb": GOOD, "02_bad.ipynb": bad})
    with pytest.raises(AuthoringError, match=f"solutions/02_bad.ipynb: {message}"):
        build_all(tmp_path)
    assert not (tmp_path / "notebooks").exists()  # not even the good one: all or nothing
    with pytest.raises(AuthoringError, match="02_bad"):
        authoring.strip_all(tmp_path)


def test_a_leaking_master_writes_nothing(tmp_path):
    write_course(tmp_path, {"01_good.ipynb": GOOD,
                            "02_leak.ipynb": new_notebook(cells=[new_raw_cell(f"# BEGIN SOLUTION\n{ANSWER}")])})
    assert cli.main(["authoring", "--root", str(tmp_path)]) == 2
    assert not (tmp_path / "notebooks").exists()


def test_notebooks_are_written_atomically(tmp_path, monkeypatch):
    write_course(tmp_path, {"01_good.ipynb": GOOD})
    build_all(tmp_path)
    student = tmp_path / "notebooks" / "01_good.ipynb"
    before = student.read_bytes()
    (tmp_path / "solutions" / "01_good.ipynb").write_text(
        authoring.dumps(new_notebook(cells=[new_code_cell("print('changed')")])), encoding="utf-8")

    def crash_half_way(self, text, *args, **kwargs):
        with open(self, "w", encoding="utf-8") as f:
            f.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        build_all(tmp_path)
    monkeypatch.undo()
    assert student.read_bytes() == before  # the old copy, whole
    assert sorted(p.name for p in student.parent.iterdir()) == ["01_good.ipynb"]


def test_cli_authoring_check_exit_codes(tmp_path, capsys):
    write_course(tmp_path, {"01_a.ipynb": notebook(new_code_cell("x = 1"))})
    assert cli.main(["authoring", "--check", "--root", str(tmp_path)]) == 1
    assert "missing: notebooks/01_a.ipynb" in capsys.readouterr().out
    assert cli.main(["authoring", "--root", str(tmp_path)]) == 0
    assert cli.main(["authoring", "--check", "--root", str(tmp_path)]) == 0
    nbformat.write(notebook(new_code_cell("# BEGIN SOLUTION")), tmp_path / "solutions" / "02_b.ipynb")
    assert cli.main(["authoring", "--root", str(tmp_path)]) == 2
    assert "solutions/02_b.ipynb: cell 0, line 1" in capsys.readouterr().err


def test_cli_root_that_does_not_exist_names_the_path(tmp_path, capsys):
    missing = str(tmp_path / "nosuch")
    for args in ([], ["--check"], ["--strip"]):
        assert cli.main(["authoring", "--root", missing, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--root" in err and repr(missing) in err


def test_cli_table_dispatches_every_command(capsys):
    for target in (target for _, target in cli.COMMANDS.values()):
        assert callable(cli._resolve(target))
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "device" in out and "budget       quick" in out
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])

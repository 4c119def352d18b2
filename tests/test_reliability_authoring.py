"""No answer reaches a student notebook, whatever the marker spelling or cell type; writes are all-or-nothing."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_raw_cell

from dlcourse.tools import authoring, cli
from dlcourse.tools.authoring import AuthoringError, build_all, find_leaks, render_student

ROOT = Path(__file__).resolve().parent.parent
ANSWER = "answer = 6 * 7"


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


def write_course(root, **notebooks):
    (root / "solutions").mkdir()
    for name, nb in notebooks.items():
        text = nb if isinstance(nb, str) else authoring.dumps(nb)
        (root / "solutions" / f"{name}.ipynb").write_text(text, encoding="utf-8")


GOOD = new_notebook(cells=[new_code_cell(f"# BEGIN SOLUTION\n{ANSWER}\n# END SOLUTION")])


@pytest.mark.parametrize("bad, message", [
    ("[1, 2]", "expected a notebook .*got a JSON list"),
    ('{"cells": [{"cell_type": "code"}]}', "cell 0: expected a cell"),
    ('{"cells": "x"}', "expected a notebook .*got a JSON dict"),
    ("{not json", "expected a notebook .*unreadable text"),
])
def test_a_bad_master_is_named_and_nothing_is_written(tmp_path, bad, message):
    write_course(tmp_path, **{"01_good": GOOD, "02_bad": bad})
    with pytest.raises(AuthoringError, match=f"solutions/02_bad.ipynb: {message}"):
        build_all(tmp_path)
    assert not (tmp_path / "notebooks").exists()  # not even the good one: all or nothing
    with pytest.raises(AuthoringError, match="02_bad"):
        authoring.strip_all(tmp_path)


def test_a_leaking_master_writes_nothing(tmp_path):
    write_course(tmp_path, **{"01_good": GOOD,
                              "02_leak": new_notebook(cells=[new_raw_cell(f"# BEGIN SOLUTION\n{ANSWER}")])})
    assert cli.main(["authoring", "--root", str(tmp_path)]) == 2
    assert not (tmp_path / "notebooks").exists()


def test_notebooks_are_written_atomically(tmp_path, monkeypatch):
    write_course(tmp_path, **{"01_good": GOOD})
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


def test_cli_root_that_does_not_exist_names_the_path(tmp_path, capsys):
    missing = str(tmp_path / "nosuch")
    for args in ([], ["--check"], ["--strip"]):
        assert cli.main(["authoring", "--root", missing, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--root" in err and repr(missing) in err

"""``dlcourse gradebook export``: Canvas and Moodle grade-import CSVs through a roster, and its errors."""
from __future__ import annotations

import pytest

from dlcourse.grading import grader, lms, report


@pytest.fixture
def gradebook(tmp_path):
    path = tmp_path / "gradebook.csv"
    report.write_gradebook(path, {"alice": {"id": "alice", "status": "ok", "total": 100.0},
                                  "=bob": {"id": "=bob", "status": "failed", "total": 42.5}})
    return path


def _roster(tmp_path, text: str):
    path = tmp_path / "roster.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_canvas_import_file(tmp_path, gradebook):
    roster = _roster(tmp_path, "id,name,canvas_id,sis_user_id,sis_login_id,section\n"
                               "alice,Alice A,101,s1,alice@u,A\n=bob,=Bob B,102,s2,bob@u,A\ncarl,Carl C,103,,,B\n")
    out = tmp_path / "canvas.csv"
    assert grader.gradebook_main(["export", str(gradebook), "--format", "canvas", "--roster", str(roster),
                                  "--out", str(out), "--assignment", "Diffusion assessment"]) == 0
    assert out.read_text().splitlines() == [
        "Student,ID,SIS User ID,SIS Login ID,Section,Diffusion assessment",
        "Points Possible,,,,,100",
        "Alice A,101,s1,alice@u,A,100.0",
        "'=Bob B,102,s2,bob@u,A,42.5",
        "Carl C,103,,,B,",  # on the roster, no submission: no grade
    ]


def test_moodle_import_file(tmp_path, gradebook):
    roster = _roster(tmp_path, "\ufeffid,email\nalice,alice@u.edu\n=bob,bob@u.edu\n")  # Excel's BOM is fine
    out = tmp_path / "moodle.csv"
    lms.export_gradebook(gradebook, roster, out, fmt="moodle")
    assert out.read_text().splitlines() == ["Email address,Assessment", "alice@u.edu,100.0", "bob@u.edu,42.5"]


@pytest.mark.parametrize("roster_text, kwargs, phrase", [
    ("id,name\nalice,A\n", {"fmt": "canvas"}, "no canvas_id"),
    ("id,email\nalice,a@u\nalice,b@u\n", {"fmt": "moodle"}, "one row per student id"),
    ("id,email\nalice,a@u\n", {"fmt": "moodle"}, "not on the roster"),
    ("id,email\nalice,a@u\n=bob,b@u\n", {"fmt": "blackboard"}, "--format"),
    ("id,email\nalice,a@u\n=bob,b@u\n", {"fmt": "moodle", "assignment": " "}, "--assignment"),
    ("id,email\nalice,a@u\n=bob,b@u\n", {"fmt": "moodle", "points": 0}, "--points-possible"),
])
def test_export_errors_name_the_problem(tmp_path, gradebook, roster_text, kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        lms.export_gradebook(gradebook, _roster(tmp_path, roster_text), tmp_path / "out.csv", **kwargs)
    assert not (tmp_path / "out.csv").exists()


def test_export_cli_reports_errors_in_one_line(tmp_path, gradebook, capsys):
    argv = ["export", str(gradebook), "--format", "moodle", "--roster", str(tmp_path / "none.csv"), "--out",
            str(tmp_path / "o.csv")]
    assert grader.gradebook_main(argv) == 2
    assert "--roster: expected a CSV file" in capsys.readouterr().err

"""`dlcourse release`: students get notebooks, the student assessment and the package, never an answer."""
from __future__ import annotations

import json
import shutil

from dlcourse.tools.release import answer_lines, find_leaks, main, release


def test_release_holds_what_students_need_and_no_answer(repo_root, tmp_path):
    out = tmp_path / "handout"
    files = {str(p.relative_to(out)) for p in release(out, repo_root)}
    assert "assessments/assessment.ipynb" in files and "notebooks/04_classifier_free_guidance.ipynb" in files
    assert "dlcourse/grading/assessment.py" in files and "README.md" in files
    # no masters, tests, grading settings, reference model or instructor guide
    forbidden = [f for f in files if f.startswith(("solutions/", "tests/")) or f.endswith(".solution.ipynb")
                 or (f.startswith("assessments/") and f != "assessments/assessment.ipynb")]
    assert forbidden == []
    lines = answer_lines(repo_root)
    assert len(lines) > 50  # the scan has real answer lines to look for
    assert find_leaks(out, repo_root) == []


def test_the_leak_scan_finds_a_planted_answer(repo_root, tmp_path):
    out = tmp_path / "handout"
    release(out, repo_root)
    planted = sorted(answer_lines(repo_root))[0]
    path = out / "assessments" / "assessment.ipynb"
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb["cells"][-1]["source"] += "\n" + planted
    path.write_text(json.dumps(nb), encoding="utf-8")
    shutil.copy(repo_root / "assessments" / "assessment.solution.ipynb", out / "assessments")
    problems = find_leaks(out, repo_root)
    assert any("assessment.solution.ipynb" in p for p in problems)
    assert any(repr(planted) in p for p in problems)


def test_release_refuses_a_non_empty_folder(repo_root, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main([str(tmp_path), "--root", str(repo_root)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

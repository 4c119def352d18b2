"""dlcourse timings: every solution notebook and the assessment master, one row each, failures reported."""
import json

from dlcourse.tools import timings


def test_every_notebook_gets_a_row_and_a_failure_does_not_stop_the_rest(monkeypatch, tmp_path, capsys):
    ran = []

    def fake_run(path, budget, cwd, timeout):
        ran.append((path.name, budget, cwd.name))
        if path.name.startswith("02"):
            raise RuntimeError("cell 7 failed\nwith a traceback")
        return None, 90.0, 150.0

    monkeypatch.setattr(timings, "run_notebook", fake_run)
    out = tmp_path / "t.md"
    assert timings.main(["--budget", "quick", "--out", str(out)]) == 1
    notebooks = [p.name for p in timings.all_notebooks()]
    assert [name for name, _, _ in ran] == notebooks and "assessment.solution.ipynb" in notebooks
    assert {budget for _, budget, _ in ran} == {"quick"}
    assert ("assessment.solution.ipynb", "quick", "assessments") in ran
    table = out.read_text()
    assert all(f"| {name} | quick | " in table for name in notebooks)
    assert "failed: RuntimeError: cell 7 failed with a traceback" in table and "| **total** |" in table
    runs = json.loads(out.with_suffix(".json").read_text())
    assert len(runs) == len(notebooks) and runs[0]["seconds"] == 90.0


def test_bad_out_is_one_line_before_any_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(timings, "run_notebook", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    assert timings.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out: expected a file in a folder you can write to" in err and "\n" not in err

"""The grader on a real class: ids, spreadsheets, a stopped grader, its own errors, settings,
shards graded as parallel processes and merged, and (``-m hostile``) a class of hostile
submissions graded end to end in a world-writable folder that only the sandbox protects.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from dlcourse.grading import grade_class, grader, load_settings, model as model_part, report, sandbox
from dlcourse.grading.assessment import ANSWERS_FILE, NOTEBOOK_FILE
from dlcourse.models import ConditionalUNet
from test_grading import CPU_SETTINGS, Q_ARGS, REFERENCE, REFERENCE_W, _def, _master, _submission, _tiny_model, \
    _with_cell
from test_grading_hostile import HOSTILE_ONLY, WATCHED, _sandbox_uid_processes, _state

ROOT = Path(__file__).resolve().parent.parent


def _settings(**overrides):
    return load_settings(CPU_SETTINGS, time_limit_s=90, **overrides)


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


# ------------------------------------------------------------------ ids, reports, cells
def test_student_ids_are_collision_free(tmp_path):
    names = [b"dup-\xff", b"dup-\\xff", b"alice smith", b"alice_smith", b"x" * 150 + b"a", b"x" * 150 + b"b",
             b"new\nline", b"=1+2", b"caf\xc3\xa9"]
    ids = [grader.student_id(tmp_path / os.fsdecode(n)) for n in names]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "dup-\\xff" and ids[1] == "dup-\\\\xff" and ids[6] == "new\\x0aline" and ids[8] == "café"
    files = [report.report_name(i) for i in ids]
    assert len(set(files)) == len(files)
    assert all(f.endswith(".html") and "/" not in f and not f.startswith(".") and len(f) < 90 for f in files)


def test_csv_cells_are_protected_and_read_back(tmp_path):
    rows = {"=1+2": {"id": "=1+2", "status": "invalid", "total": 0.0, "reason": "=HYPERLINK(\"http://x\")"},
            "'quoted": {"id": "'quoted", "status": "failed", "total": 50.0, "w": -1.0, "reason": "-1 points"},
            "bob": {"id": "bob", "status": "ok", "total": 100.0, "reason": ""}}
    path = tmp_path / "gradebook.csv"
    report.write_gradebook(path, rows)
    cells = {line[0]: line for line in _read_rows(path)[1:]}
    assert set(cells) == {"'=1+2", "''quoted", "bob"}
    reason = report.COLUMNS.index("reason")
    assert cells["'=1+2"][reason] == "'=HYPERLINK(\"http://x\")" and cells["''quoted"][reason] == "'-1 points"
    assert cells["''quoted"][report.COLUMNS.index("w")] == "-1.0"  # numbers stay numbers
    back = report.read_gradebook(path)
    assert {k: (v["id"], v["reason"]) for k, v in back.items()} == {k: (v["id"], v["reason"]) for k, v in rows.items()}


def test_report_escapes_what_a_submission_wrote():
    row = {"id": "<img src=x onerror=alert(1)>", "status": "failed", "reason": "<b>"}
    page = report.student_html(row, ["<script>alert(1)</script>"], {"<q>": "<script>x</script>"}, None, {})
    assert "<script>" not in page and "<img src=x" not in page and "&lt;script&gt;" in page


# ------------------------------------------------------------------ options with clear errors
@pytest.mark.parametrize("key, value, phrase", [("time_limit_s", 0, "positive"), ("max_model_compute", "big", "positive"),
                                                ("pass_class_accuracy", 1.5, "(0, 1]"), ("hidden_seed", -3, "int >= 0"),
                                                ("model_time_limit_s", float("nan"), "positive")])
def test_bad_settings_are_named(tmp_path, key, value, phrase):
    values = json.loads(CPU_SETTINGS.read_text())
    values[key] = value
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=key) as error:
        load_settings(path)
    assert phrase in str(error.value)


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "a/b", "3", "-1/2", ""])
def test_bad_shards_are_refused(text):
    with pytest.raises(ValueError, match="--shard"):
        grader.parse_shard(text)


def test_cli_refuses_bad_values(tmp_path, capsys):
    (tmp_path / "class").mkdir()
    argv = [str(tmp_path / "class"), "--out", str(tmp_path / "g.csv")]
    assert grader.main(argv + ["--shard", "5/4"]) == 2
    assert "--shard: expected K/N" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        grader.main(argv + ["--workers", "0"])
    assert "--workers: expected an int in [1, 64], got 0" in capsys.readouterr().err
    assert grader.gradebook_main(["merge", str(tmp_path / "m.csv"), str(tmp_path / "missing.csv")]) == 2
    assert "manifest" in capsys.readouterr().err


def test_shards_are_balanced_and_cover_the_class(tmp_path):
    folders = [tmp_path / f"s{i:02d}" for i in range(11)]
    shards = [grader.shard_of(folders, (k, 4)) for k in range(1, 5)]
    assert sorted(p for s in shards for p in s) == folders
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_grading_fails_closed_without_a_sandbox(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "unavailable_reason", lambda: "bubblewrap (bwrap) is not installed")
    (tmp_path / "class").mkdir()
    with pytest.raises(ValueError, match="--unsafe-no-sandbox"):
        grade_class(tmp_path / "class", tmp_path / "out" / "g.csv", settings=_settings(), progress=False)


# ------------------------------------------------------------------ a stopped grader, the grader's own errors
def test_a_student_whose_grading_stopped_the_grader_gets_an_error_row(tmp_path):
    class_dir = tmp_path / "class"
    _submission(class_dir / "killer", None)  # would be invalid if graded
    _submission(class_dir / "next", None)
    out = tmp_path / "out" / "gradebook.csv"
    out.parent.mkdir()
    out.with_name(out.name + ".grading").write_text(json.dumps(["killer"]))  # what a killed grader leaves
    rows = grade_class(class_dir, out, settings=_settings(), progress=False)
    assert rows["killer"]["status"] == "error" and "stopped" in rows["killer"]["reason"]
    assert rows["next"]["status"] == "invalid" and not out.with_name(out.name + ".grading").exists()
    rows = grade_class(class_dir, out, settings=_settings(), progress=False, force=True, only=["killer"])
    assert rows["killer"]["status"] == "invalid"


def test_a_grader_failure_keeps_the_exercise_points(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("evaluator exploded at hidden seed 52817")

    monkeypatch.setattr(model_part, "score_model", broken)
    _submission(tmp_path / "class" / "alice", _master(), _tiny_model())
    rows = grade_class(tmp_path / "class", tmp_path / "out" / "g.csv", settings=_settings(), progress=False)
    row = rows["alice"]
    assert row["status"] == "error" and row["functions"] == 50 and row["total"] == 50
    assert "RuntimeError" in row["reason"] and "52817" not in row["reason"]


def test_a_model_over_the_compute_cap_is_not_sampled(tmp_path, monkeypatch):
    monkeypatch.setattr(model_part, "score_model", lambda *a, **k: pytest.fail("sampled a model over the cap"))
    _submission(tmp_path / "class" / "big", _master(), _tiny_model())
    rows = grade_class(tmp_path / "class", tmp_path / "out" / "g.csv", settings=_settings(max_model_compute=1e5),
                       progress=False)
    assert rows["big"]["status"] == "failed" and "compute cap" in rows["big"]["reason"]
    assert rows["big"]["functions"] == 50


def test_samples_that_overflow_are_unscorable_not_a_grader_error():
    loud = _tiny_model()
    with torch.no_grad():
        for p in loud.parameters():
            p.mul_(1e30)
    with pytest.raises(model_part.UnscorableSamples, match="NaN or inf"):
        model_part.score_model(loud, 1.0, n_per_pair=1, steps=2, seed=0, data=None, copy_threshold=0.2)


def test_sampling_stops_at_its_time_limit():
    with pytest.raises(model_part.SamplingTimeout, match="limit"):
        model_part.sample_model(_tiny_model(), 1.0, n_per_pair=1, steps=20, seed=0, time_limit=0)


# ------------------------------------------------------------------ shards as processes, merged
def _small_class(root: Path) -> Path:
    class_dir = root / "class"
    master, tiny = _master(), _tiny_model()
    for name in ("ann", "ben"):
        _submission(class_dir / name, master, tiny)
    for name in ("cat", "dan", "=eve", "fay"):
        _submission(class_dir / name, None)
    return class_dir


def test_shards_graded_as_processes_merge_to_the_one_machine_gradebook(tmp_path):
    class_dir = _small_class(tmp_path)
    one = tmp_path / "one" / "gradebook.csv"
    grade_class(class_dir, one, settings=_settings(), progress=False)
    shards = [tmp_path / "shards" / f"shard-{k}.csv" for k in (1, 2, 3)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-m", "dlcourse.tools.cli", "grade", str(class_dir), "--out", str(path),
                                   "--shard", f"{k}/3", "--settings", str(CPU_SETTINGS), "--time-limit", "90"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for k, path in enumerate(shards, 1)]
    outputs = [p.communicate()[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    merged = tmp_path / "merged" / "gradebook.csv"
    assert grader.gradebook_main(["merge", str(merged), *map(str, shards)]) == 0
    assert merged.read_bytes() == one.read_bytes()
    assert sorted(p.name for p in (tmp_path / "shards" / "reports").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one" / "reports").iterdir())
    with pytest.raises(ValueError, match="exactly once"):
        grader.merge_gradebooks(tmp_path / "bad.csv", shards[:2])


def _shard_book(path: Path, rows: dict, shard: tuple[int, int], ids: list[str], settings: str = "s1") -> Path:
    report.write_gradebook(path, rows)
    grader.manifest_path(path).write_text(json.dumps({"settings": settings, "shard": list(shard), "ids": ids}))
    return path


def test_merge_refuses_duplicates_missing_students_and_mixed_settings(tmp_path):
    row = lambda key: {"id": key, "status": "ok", "total": 100.0}  # noqa: E731
    a = _shard_book(tmp_path / "a.csv", {"x": row("x")}, (1, 2), ["x"])
    b = _shard_book(tmp_path / "b.csv", {"y": row("y")}, (2, 2), ["y"])
    grader.merge_gradebooks(tmp_path / "ok.csv", [a, b])
    assert [r[0] for r in _read_rows(tmp_path / "ok.csv")[1:]] == ["x", "y"]
    dup = _shard_book(tmp_path / "dup.csv", {"x": row("x")}, (2, 2), ["x"])
    with pytest.raises(ValueError, match="two shards"):
        grader.merge_gradebooks(tmp_path / "m.csv", [a, dup])
    short = _shard_book(tmp_path / "short.csv", {"y": row("y")}, (2, 2), ["y", "z"])
    with pytest.raises(ValueError, match="lacks 1"):
        grader.merge_gradebooks(tmp_path / "m.csv", [a, short])
    other = _shard_book(tmp_path / "other.csv", {"y": row("y")}, (2, 2), ["y"], settings="s2")
    with pytest.raises(ValueError, match="different settings"):
        grader.merge_gradebooks(tmp_path / "m.csv", [a, other])
    (tmp_path / "bare.csv").write_text("id\n")
    with pytest.raises(ValueError, match="manifest"):
        grader.merge_gradebooks(tmp_path / "m.csv", [a, tmp_path / "bare.csv"])
    assert not (tmp_path / "m.csv").exists()


# ------------------------------------------------------------------ the hostile class, end to end
ANSWER = "alpha_bars[t].reshape(-1, 1, 1, 1).to(x0.dtype).sqrt() * x0 + (1 - alpha_bars[t].reshape(-1, 1, 1, 1).to(x0.dtype)).sqrt() * noise"
# name -> (status, functions points or None); the class also holds the named honest students
CLASS = {
    "honest": ("ok", 50), "untrained": ("failed", 50), "ast_import_package": ("failed", 40),
    "ast_dunder_import": ("failed", 40), "ast_open_settings": ("failed", 40), "ast_getattr": ("failed", 40),
    "pickle_kill_parent": ("failed", 50), "pickle_rewrite_classmates": ("failed", 50), "pickle_escape": ("failed", 50),
    "huge_cell": ("failed", 40), "deep_expression": ("failed", 40), "deep_notebook": ("invalid", 0),
    "fifo_notebook": ("invalid", 0), "notebook_is_folder": ("invalid", 0), "symlink_notebook": ("invalid", 0),
    "huge_w": ("invalid", 0), "weights_times_1e30": ("failed", 50), "deep_answers": ("invalid", 0),
    "deep_config": ("invalid", 0), "html_answers": ("failed", 50), "=1+2": ("failed", 50),
    "=HYPERLINK(\"http:__x\")": ("invalid", 0), "alice smith": ("invalid", 0), "alice_smith": ("invalid", 0),
    "x" * 130 + "1": ("invalid", 0), "x" * 130 + "2": ("invalid", 0), "over_compute_cap": ("failed", 50),
}


def _build_hostile_class(root: Path) -> Path:
    class_dir, master, tiny = root / "class", _master(), _tiny_model()
    reference = model_part.load_submission_model(REFERENCE)
    _submission(class_dir / "honest", master, reference, w=REFERENCE_W)
    _submission(class_dir / "untrained", master, tiny)
    for name, body in (("ast_import_package", "from dlcourse.schedules import Schedule\nreturn x0"),
                       ("ast_dunder_import", "return __import__('dlcourse')"),
                       ("ast_open_settings", f"return open('{ROOT}/assessments/grading.json').read()"),
                       ("ast_getattr", "return getattr(torch, 'o' + 's').getcwd()")):
        _submission(class_dir / name, _with_cell(master, "q_sample", _def("q_sample", body, Q_ARGS)), tiny)
    victim = class_dir / "untrained" / "model.safetensors"
    for name, command in (("pickle_kill_parent", "read a b c parent rest < /proc/$PPID/stat; kill -KILL $parent; "
                                                  "kill -STOP $parent; kill -STOP 1"),
                          ("pickle_rewrite_classmates", f"rm -f {victim}; cp {REFERENCE}/model.safetensors {victim}"),
                          ("pickle_escape", f"setsid sh -c 'sleep 3; echo forged > {root}/out/gradebook.csv' &")):
        # a way past the syntax-tree check: pickle, reached as an attribute of torch, runs a shell
        payload = b"cposix\nsystem\n(S" + repr(command).encode() + b"\ntR."
        body = f"return torch.serialization.pickle.loads({payload!r}) * 0 + {ANSWER}"
        _submission(class_dir / name, _with_cell(master, "q_sample", _def("q_sample", body, Q_ARGS)), tiny)
    literal = "x = [" + "0, " * 2_400_000 + "0]\n" + ANSWER.join(("return ", ""))
    _submission(class_dir / "huge_cell", _with_cell(master, "q_sample", _def("q_sample", literal, Q_ARGS)), tiny)
    _submission(class_dir / "deep_expression", _with_cell(master, "q_sample", _def(
        "q_sample", "return " + "-" * 30_000 + "x0", Q_ARGS)), tiny)
    (_submission(class_dir / "deep_notebook", None, tiny) / NOTEBOOK_FILE).write_text("[" * 1_000_000)
    os.mkfifo(_submission(class_dir / "fifo_notebook", None, tiny) / NOTEBOOK_FILE)
    (_submission(class_dir / "notebook_is_folder", None, tiny) / NOTEBOOK_FILE).mkdir()
    (_submission(class_dir / "symlink_notebook", None, tiny) / NOTEBOOK_FILE).symlink_to(
        ROOT / "assessments" / "assessment.solution.ipynb")
    (_submission(class_dir / "huge_w", master, tiny) / ANSWERS_FILE).write_text('{"w": 1' + "0" * 400 + "}")
    loud = copy.deepcopy(tiny)
    with torch.no_grad():
        for p in loud.parameters():
            p.mul_(1e30)
    _submission(class_dir / "weights_times_1e30", master, loud)
    (_submission(class_dir / "deep_answers", master, tiny) / ANSWERS_FILE).write_text(
        '{"w": 1, "answers": ' + "[" * 20_000 + "]" * 20_000 + "}")
    (_submission(class_dir / "deep_config", master, tiny) / "config.json").write_text("[" * 30_000 + "]" * 30_000)
    folder = _submission(class_dir / "html_answers", master, tiny)
    (folder / ANSWERS_FILE).write_text(json.dumps({"w": 1.0, "answers": {"q<1>": "<script>alert(1)</script>"}}))
    _submission(class_dir / "=1+2", master, tiny)
    (class_dir / "=HYPERLINK(\"http:__x\")").symlink_to(class_dir / "honest", target_is_directory=True)
    for name in ("alice smith", "alice_smith", "x" * 130 + "1", "x" * 130 + "2"):
        _submission(class_dir / name, None)
    torch.manual_seed(0)
    _submission(class_dir / "over_compute_cap", master,
                ConditionalUNet(channels=[256], image_size=32, T=1000, context_dim=11).eval())
    return class_dir


@pytest.fixture(scope="module")
def hostile_class():
    root = Path(tempfile.mkdtemp(prefix="dlcourse-class-"))
    class_dir = _build_hostile_class(root)
    for folder, dirs, files in os.walk(root):  # world-writable: only the sandbox keeps student code off it
        os.chmod(folder, 0o777)
        for name in files:
            if not (Path(folder) / name).is_symlink():
                os.chmod(Path(folder) / name, 0o666)
    before = _state(class_dir, *WATCHED)
    out = root / "out" / "gradebook.csv"
    rows = grade_class(class_dir, out, settings=_settings(), workers=2, progress=False)
    yield {"root": root, "class_dir": class_dir, "out": out, "rows": rows, "before": before}
    sandbox.remove_tree(root)


@pytest.mark.parametrize("name", [pytest.param(n, id=n[:40], marks=HOSTILE_ONLY) for n in CLASS])
def test_hostile_class_statuses(hostile_class, name):
    row = hostile_class["rows"][name]
    status, functions = CLASS[name]
    assert (row["status"], row["functions"]) == (status, functions), row.get("reason")


@pytest.mark.hostile
@pytest.mark.skipif("'hostile' not in (config.getoption('markexpr') or '')", reason="runs with -m hostile")
def test_hostile_class_changed_nothing_outside_its_sandboxes(hostile_class):
    h = hostile_class
    assert _state(h["class_dir"], *WATCHED) == h["before"] and _sandbox_uid_processes() == []
    lines = _read_rows(h["out"])
    assert len(lines) == 1 + len(CLASS) and lines[0] == list(report.COLUMNS)
    ids = [line[0] for line in lines[1:]]
    assert "'=1+2" in ids and "'=HYPERLINK(\"http:__x\")" in ids
    assert all(not cell.startswith(("=", "+", "@")) for line in lines for cell in line)
    reports = {p.name for p in (h["out"].parent / "reports").iterdir()}
    assert reports == {report.report_name(key) for key in CLASS}
    page = (h["out"].parent / "reports" / report.report_name("html_answers")).read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "compute cap" in h["rows"]["over_compute_cap"]["reason"]
    assert "NaN or inf" in h["rows"]["weights_times_1e30"]["reason"]


# ------------------------------------------------------------------ deadlines
def _deadline_settings(tmp_path, **changes):
    values = {**json.loads(CPU_SETTINGS.read_text()), "deadline": "2027-01-15T23:59:00+00:00",
              "late_penalty_per_day": 0.1, "late_penalty_max": 0.3, **changes}
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(values))
    return load_settings(path)


def test_late_penalty_per_started_day_up_to_its_cap(tmp_path):
    times = tmp_path / "times.csv"
    times.write_text("id,submitted_at\nearly,2027-01-15T22:00:00+00:00\nhour,2027-01-16T00:59:00+00:00\n"
                     "days,2027-01-19T12:00:00+01:00\n")
    g = grader.Grader(_deadline_settings(tmp_path), times=grader.read_submission_times(times))
    rows = {key: {"id": key, "total": 80.0, "reason": ""} for key in ("early", "hour", "days")}
    for row in rows.values():
        g._late(row, [])
    assert {k: (r["late_days"], r["total"]) for k, r in rows.items()} == \
        {"early": (0, 80.0), "hour": (1, 72.0), "days": (4, 56.0)}
    assert rows["early"]["reason"] == "" and "4 day(s) late: total reduced by 30%" in rows["days"]["reason"]


def test_a_deadline_needs_every_students_time(tmp_path):
    _submission(tmp_path / "class" / "ann", None)
    with pytest.raises(ValueError, match="--submitted-at gives no time for 1 student"):
        grade_class(tmp_path / "class", tmp_path / "out" / "g.csv", settings=_deadline_settings(tmp_path),
                    progress=False, submitted_at={})
    rows = grade_class(tmp_path / "class", tmp_path / "out" / "g.csv", settings=_deadline_settings(tmp_path),
                       progress=False, submitted_at=grader.read_submission_times(_times(tmp_path, "ann,2027-02-01T00:00:00Z")))
    assert rows["ann"]["late_days"] == 17 and rows["ann"]["total"] == 0


def _times(tmp_path, *lines: str) -> Path:
    path = tmp_path / "times.csv"
    path.write_text("id,submitted_at\n" + "\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("changes, phrase", [({"deadline": "next friday"}, "deadline"),
                                             ({"deadline": "2027-01-15T23:59:00"}, "UTC offset"),
                                             ({"late_penalty_per_day": 2}, "late_penalty_per_day"),
                                             ({"late_penalty_max": -0.1}, "late_penalty_max")])
def test_bad_deadline_settings_are_named(tmp_path, changes, phrase):
    with pytest.raises(ValueError, match=phrase):
        _deadline_settings(tmp_path, **changes)


@pytest.mark.parametrize("lines, phrase", [(("ann,2027-01-01T00:00:00Z", "ann,2027-01-02T00:00:00Z"), "one row per student"),
                                           (("ann,yesterday",), "line 2"), (("ann,2027-01-01T00:00:00",), "UTC offset")])
def test_bad_submission_times_are_named(tmp_path, lines, phrase):
    with pytest.raises(ValueError, match=phrase):
        grader.read_submission_times(_times(tmp_path, *lines))


# ------------------------------------------------------------------ partial credit
def test_partial_credit_names_the_failed_kinds_of_case_and_no_hidden_value():
    from dlcourse.grading import exercises

    settings = _settings()
    modules = exercises.prepare(_master())
    modules["reverse_step"] = exercises.module_source("reverse_step", _def(  # forgets the t = 0 mask
        "reverse_step", "b = betas[t].reshape(-1, 1, 1, 1)\nab = alpha_bars[t].reshape(-1, 1, 1, 1)\n"
        "return (x_t - b / (1 - ab).sqrt() * eps_pred) / (1 - b).sqrt() + b.sqrt() * z",
        "x_t, t, eps_pred, z, betas, alpha_bars"))
    part = exercises.grade_functions(modules, seed=settings.hidden_seed, time_limit=90, memory_mb=4096)
    (result,) = [r for r in part.results if r.name == "reverse_step"]
    assert result.fraction == pytest.approx(1 / 3) and part.score == pytest.approx((4 + 1 / 3) / 5)
    assert "1 of 3 hidden cases passed" in result.message
    assert all(kind in result.message for kind in ("a float64 batch with t = 0", "a float32 batch with t = 0"))
    inputs = exercises.hidden_cases(settings.hidden_seed)["reverse_step"][0]
    assert not any(f"{v:.4f}"[:6] in result.message for v in inputs["x_t"].flatten()[:20].tolist())


def test_the_progress_bar_names_each_workers_student_and_the_counts(tmp_path, capsys):
    for name in ("ann", "ben"):  # no notebook: each is graded invalid at once
        (tmp_path / "class" / name).mkdir(parents=True)
    grade_class(tmp_path / "class", tmp_path / "out" / "g.csv", settings=_settings(), workers=2, progress=True)
    bar = capsys.readouterr().err
    assert "grading (2 workers)" in bar and "now: " in bar and "invalid=2" in bar
    assert "ann" in bar and "ben" in bar

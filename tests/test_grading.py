"""The grader on a class of fixture submissions: each gets its exact status, the batch completes,
nothing is left running or lying around, reruns resume, and two runs score the same.

The "correct" submission is the assessment master's own answers with the reference model
trained by assessments/train_reference.py (its scores are in assessments/README.md).
"""
from __future__ import annotations

import copy
import csv
import json
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch

from dlcourse.grading.assessment import CONTEXT_DIM, NOTEBOOK_FILE, ANSWERS_FILE
from dlcourse.data import load_flowers
from dlcourse.grading import grade_class, load_settings, main, model as model_part, sandbox
from dlcourse.grading.exercises import TAG_PREFIX
from dlcourse.grading.report import report_name
from dlcourse.models import ConditionalUNet, save_model

ROOT = Path(__file__).resolve().parent.parent
MASTER = ROOT / "assessments" / "assessment.solution.ipynb"
REFERENCE = ROOT / "assessments" / "reference"
REFERENCE_W = json.loads((REFERENCE / "reference.json").read_text())["w"] if (REFERENCE / "reference.json").is_file() else 2.0
# The reference model is trained at the CPU budget; it reaches class accuracy ~0.8 and colour ~0.99
# (assessments/README.md), below the GPU-budget class threshold 0.95 of grading.json, so the batch is
# graded with grading-cpu.json (class >= 0.75, colour >= 0.85), whose thresholds it honestly passes.
CPU_SETTINGS = ROOT / "assessments" / "grading-cpu.json"
NON_UTF8 = os.fsdecode(b"student-\xff")

EXPECTED = {
    "correct": "ok",
    "wrong_formulas": "failed",
    "syntax_error": "failed",
    "infinite_loop": "timeout",
    "memory_hog": "crashed",
    "os_exit": "failed",  # the syntax-tree check refuses `import os` (tests/test_grading_hostile.py runs it)
    "sys_exit": "failed",
    "fork_bomb": "failed",
    "deleted_cell": "invalid",
    "edited_cell": "invalid",
    "eq_always_true": "failed",
    "pickle_pt": "invalid",
    "pickle_safetensors": "invalid",
    "oversized_header": "invalid",
    "truncated_weights": "invalid",
    "missing_files": "invalid",
    "nan_weights": "invalid",
    "unknown_architecture": "invalid",
    "unregistered_name": "invalid",
    "absurd_config": "invalid",
    "training_images_as_samples": "failed",
    "student-\\xff": "failed",  # the id of the non-UTF-8 folder name b"student-\xff"
    "symlink_outside": "invalid",
}
# a phrase each status's reason or report must contain (the part of the reason that names the cause)
REASONS = {
    "infinite_loop": "ran past",
    "memory_hog": "memory limit",
    "os_exit": "imports os",
    "sys_exit": "imports sys",
    "deleted_cell": "guided_eps",
    "edited_cell": "no longer defines q_sample",
    "pickle_pt": "model.safetensors: missing",
    "pickle_safetensors": "header length",
    "oversized_header": "header length",
    "truncated_weights": "truncated",
    "missing_files": "missing",
    "nan_weights": "NaN",
    "unknown_architecture": "not accepted",
    "unregistered_name": "not accepted",
    "absurd_config": "channels",
    "symlink_outside": "symbolic link",
    "wrong_formulas": "q_sample",
    "syntax_error": "q_sample",
    "eq_always_true": "guided_eps",
    "fork_bomb": "q_sample",
}


class Payload:
    """Unpickling this runs Path.touch(marker): proof that a loader executed the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _master() -> dict:
    return json.loads(MASTER.read_text(encoding="utf-8"))


def _with_cell(nb: dict, name: str, source: str | None) -> dict:
    """A copy of ``nb`` whose exercise cell ``name`` holds ``source`` (None: the cell is deleted)."""
    nb = copy.deepcopy(nb)
    for i, cell in enumerate(nb["cells"]):
        if TAG_PREFIX + name in cell.get("metadata", {}).get("tags", []):
            if source is None:
                del nb["cells"][i]
            else:
                cell["source"] = source
            return nb
    raise AssertionError(f"no exercise cell {name}")


def _tiny_model() -> ConditionalUNet:
    torch.manual_seed(0)
    return ConditionalUNet(channels=[8], image_size=16, T=20, context_dim=CONTEXT_DIM).eval()


def _submission(folder: Path, nb: dict | None, model=None, w: float = 1.0, extra: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    if nb is not None:
        (folder / NOTEBOOK_FILE).write_text(json.dumps(nb), encoding="utf-8")
    if model is not None:
        save_model(model, folder)
    (folder / ANSWERS_FILE).write_text(json.dumps({"w": w, "answers": {"q": "a"}}), encoding="utf-8")
    return folder


def _def(name: str, body: str, args: str, imports: str = "") -> str:
    return f"# exercise: {name}\n{imports}\ndef {name}({args}):\n" + \
        "\n".join("    " + line for line in body.split("\n"))


Q_ARGS = "x0, t, noise, alpha_bars"


def build_class(root: Path, marker: Path) -> Path:
    """The class folder of fixture submissions (names are the keys of EXPECTED)."""
    class_dir = root / "class"
    class_dir.mkdir()
    master, tiny = _master(), _tiny_model()
    reference = model_part.load_submission_model(REFERENCE)
    _submission(class_dir / "correct", master, reference, w=REFERENCE_W)

    wrong = _with_cell(master, "q_sample", _def("q_sample", "ab = alpha_bars[t].reshape(-1, 1, 1, 1)\n"
                                                "return ab * x0 + (1 - ab) * noise", Q_ARGS))
    wrong = _with_cell(wrong, "reverse_step", _def(
        "reverse_step", "b = betas[t].reshape(-1, 1, 1, 1)\nab = alpha_bars[t].reshape(-1, 1, 1, 1)\n"
        "return (x_t - b / (1 - ab).sqrt() * eps_pred) / (1 - b).sqrt() + b.sqrt() * z",
        "x_t, t, eps_pred, z, betas, alpha_bars"))
    _submission(class_dir / "wrong_formulas", wrong, tiny)
    _submission(class_dir / "syntax_error", _with_cell(master, "q_sample", _def("q_sample", "return x0 +* noise", Q_ARGS)), tiny)
    for name, body, imports in (("infinite_loop", "while True:\n    pass", ""),
                                ("memory_hog", "block = bytearray(64 * 2**30)\nreturn x0", ""),
                                ("os_exit", "os._exit(0)", "import os"), ("fork_bomb", "while True:\n    os.fork()", "import os")):
        _submission(class_dir / name, _with_cell(master, "q_sample", _def("q_sample", body, Q_ARGS, imports)), tiny)
    _submission(class_dir / "sys_exit", _with_cell(master, "drop_context", _def(
        "drop_context", "sys.exit(0)", "c, drop_prob, generator", "import sys")), tiny)
    _submission(class_dir / "deleted_cell", _with_cell(master, "guided_eps", None), tiny)
    _submission(class_dir / "edited_cell", _with_cell(master, "q_sample", _def("q_sample_v2", "return x0", Q_ARGS)), tiny)
    _submission(class_dir / "eq_always_true", _with_cell(master, "guided_eps", _def(
        "guided_eps", "class Anything:\n    def __eq__(self, other):\n        return True\n"
        "    def __array__(self, *args, **kwargs):\n        raise RuntimeError('no')\nreturn Anything()",
        "model, x_t, t, c, w")), tiny)

    payload = pickle.dumps({"weights": Payload(marker)})
    folder = _submission(class_dir / "pickle_pt", master, None)
    (folder / "model.pt").write_bytes(payload)
    (folder / "config.json").write_text(json.dumps(tiny.config))
    folder = _submission(class_dir / "pickle_safetensors", master, None)
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "config.json").write_text(json.dumps(tiny.config))

    folder = _submission(class_dir / "oversized_header", master, tiny)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{" * 64)
    folder = _submission(class_dir / "truncated_weights", master, tiny)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    _submission(class_dir / "missing_files", master, None)

    broken = _tiny_model()
    with torch.no_grad():
        next(broken.parameters())[0] = float("nan")
    _submission(class_dir / "nan_weights", master, broken)
    for name, change in (("unknown_architecture", {"name": "unet"}), ("unregistered_name", {"name": "evil_net"}),
                         ("absurd_config", {"channels": [100_000, 100_000]})):
        folder = _submission(class_dir / name, master, tiny)
        (folder / "config.json").write_text(json.dumps({**tiny.config, **change}))

    folder = _submission(class_dir / "training_images_as_samples", master, tiny)
    train = load_flowers("train", image_size=16, n=60, progress=False).images
    torch.save(train, folder / "samples.pt")  # never read: the grader draws its own samples
    (folder / "scores.json").write_text(json.dumps({"class_accuracy": 1.0, "colour_accuracy": 1.0}))

    _submission(class_dir / NON_UTF8, master, tiny)
    outside = _submission(root / "elsewhere" / "victim", master, reference, w=REFERENCE_W)
    (class_dir / "symlink_outside").symlink_to(outside, target_is_directory=True)
    return class_dir


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a killed process waiting to be reaped by init is not alive)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _sandbox_processes() -> list[int]:
    return sandbox.processes_with_token(None)


def _leftovers() -> set[str]:
    temp = {p.name for p in Path(tempfile.gettempdir()).glob("dlcourse-grade-*")}
    cgroups = {p.name for root in sandbox.PIDS_CGROUP_ROOTS if root.is_dir() for p in root.glob("dlcourse-*")}
    return temp | cgroups


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    if not (REFERENCE / "model.safetensors").is_file():
        pytest.fail(f"{REFERENCE}: the reference model is missing (OMP_NUM_THREADS=1 PYTHONPATH=. "
                    "python assessments/train_reference.py)")
    root = tmp_path_factory.mktemp("grading")
    marker = root / "payload-ran"
    before = _leftovers()
    class_dir = build_class(root, marker)
    settings = load_settings(CPU_SETTINGS, time_limit_s=90)  # generous: CI machines are shared and slow
    out = root / "out" / "gradebook.csv"
    rows = grade_class(class_dir, out, settings=settings, workers=2, progress=False)
    yield dict(root=root, class_dir=class_dir, out=out, rows=rows, settings=settings, marker=marker,
               before=before)
    shutil.rmtree(root)


def test_every_submission_gets_its_exact_status(graded):
    rows = graded["rows"]
    assert sorted(rows) == sorted(EXPECTED)
    got = {key: rows[key]["status"] for key in EXPECTED}
    assert got == EXPECTED, {k: (rows[k]["status"], rows[k]["reason"]) for k in EXPECTED if got[k] != EXPECTED[k]}


def test_reasons_name_the_cause(graded):
    for key, phrase in REASONS.items():
        report = (graded["out"].parent / "reports" / report_name(key)).read_text(encoding="utf-8")
        assert phrase in graded["rows"][key]["reason"] or phrase in report, (key, graded["rows"][key]["reason"])


def test_correct_submission_passes_honestly(graded):
    row, s = graded["rows"]["correct"], graded["settings"]
    assert row["functions"] == s.points_functions and row["model"] == s.points_model and row["total"] == 100
    assert row["class_accuracy"] >= s.pass_class_accuracy and row["colour_accuracy"] >= s.pass_colour_accuracy
    assert row["copy_fraction"] <= s.copy_fraction_limit
    print("reference model in quick grading:", {k: row[k] for k in ("class_accuracy", "colour_accuracy", "fid",
                                                                     "diversity", "copy_fraction", "seconds")})


def test_wrong_and_hostile_answers_score_zero_on_their_exercises(graded):
    rows = graded["rows"]
    # q_sample wrong on every case; reverse_step forgets to add no noise at t = 0: right on 1 of its 3 cases
    assert rows["wrong_formulas"]["functions"] == 33.33
    assert rows["syntax_error"]["functions"] == 40
    assert rows["eq_always_true"]["functions"] == 40
    assert rows["fork_bomb"]["functions"] == 40
    assert rows["os_exit"]["functions"] == rows["sys_exit"]["functions"] == 40
    for key in ("infinite_loop", "memory_hog"):
        assert rows[key]["functions"] == 0, key
    for key, status in EXPECTED.items():
        if status == "invalid":
            assert rows[key]["total"] == 0, key


def test_supplied_samples_are_ignored_and_untrained_model_fails(graded):
    row = graded["rows"]["training_images_as_samples"]
    assert row["model"] < graded["settings"].points_model and row["class_accuracy"] < 0.95


def test_no_pickle_was_loaded_and_nothing_is_left_behind(graded):
    assert not graded["marker"].exists()
    assert _sandbox_processes() == []
    assert _leftovers() <= graded["before"]


def test_pickle_fixture_is_a_real_payload(tmp_path):
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(marker)))  # what torch.load would do with the .pt fixture
    assert marker.exists()


def test_gradebook_reports_and_histogram(graded):
    out = graded["out"]
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == sorted(EXPECTED)
    report = (out.parent / "reports" / report_name("correct")).read_text(encoding="utf-8")
    assert "data:image/png;base64," in report and "Per-class accuracy" in report
    assert (out.parent / "reports" / report_name("student-\\xff")).is_file()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_resumes_and_force_regrades_identically(graded, capsys):
    out, before = graded["out"], graded["out"].read_bytes()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out.parent / "reports").iterdir()}
    argv = [str(graded["class_dir"]), "--out", str(out), "--time-limit", "90", "--settings", str(CPU_SETTINGS)]
    assert main(argv) == 0
    assert out.read_bytes() == before
    assert {p.name: p.stat().st_mtime_ns for p in (out.parent / "reports").iterdir()} == stamps
    assert main(argv + ["--force", "--only", "correct", "--only", "wrong_formulas"]) == 0
    assert f"{len(EXPECTED)} submissions" in capsys.readouterr().out
    with open(out, newline="", encoding="utf-8") as f:
        again = {r["id"]: r for r in csv.DictReader(f)}
    assert sorted(again) == sorted(EXPECTED)  # the other students' rows are kept
    regraded = {p.name for p in (out.parent / "reports").iterdir() if p.stat().st_mtime_ns != stamps[p.name]}
    assert regraded == {report_name("correct"), report_name("wrong_formulas")}
    for key in ("correct", "wrong_formulas"):
        first = {k: str(v) for k, v in graded["rows"][key].items() if k != "seconds"}
        assert {k: again[key][k] for k in first} == first


def test_near_copies_of_training_images_are_flagged():
    data = model_part.scoring_data(300, 50)
    train = load_flowers("train", image_size=32, n=100, progress=False).images
    fresh = load_flowers("test", image_size=32, n=100, progress=False).images
    assert model_part.copy_fraction(train, data, threshold=0.2) == 1.0
    assert model_part.copy_fraction(fresh, data, threshold=0.2) < 0.25


def test_unsafe_sandbox_kills_a_process_that_escapes_its_session(tmp_path):
    (tmp_path / "escape.py").write_text("import os, sys, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n"
                                        "    time.sleep(600)\nopen(sys.argv[1] + '/child', 'w').write(str(pid))\n")
    result = sandbox.run_python("escape.py", tmp_path, time_limit=20, memory_mb=512, isolated=False)
    child = int((tmp_path / "child").read_text())
    assert result.returncode == 0 and not _alive(child)

"""dlcourse doctor: its checks report what is wrong, and its prediction table is bounded by its time budget."""
import ast
import json
from pathlib import Path

import pytest
import torch

from dlcourse.config import LESSONS, Training, budget
from dlcourse.data import CLASSES
from dlcourse.tools import doctor

LESSON_06 = Path(__file__).resolve().parents[1] / "solutions" / "06_latent_diffusion.ipynb"
MODEL_CLASSES = {"VAE", "UNet", "ConditionalUNet", "TextUNet"}  # what lesson 06 builds and trains (TinyCLIP is loaded)


def _by_name(found):
    return {c.name: c for c in found}


def test_unwritable_runs_and_cache_folders_are_problems(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a folder cannot be made under a file, whoever runs the test
    found = _by_name(doctor.checks(cache_dirs=[blocker / "cache"], runs_dir=blocker / "runs"))
    assert found["runs folder"].ok is False and "cannot write" in found["runs folder"].detail
    assert found["cache folder"].ok is False
    report = doctor.format_report(list(found.values()), [], torch.device("cpu"), "quick")
    assert "PROBLEM runs folder" in report


def test_writable_folders_and_budget_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("DLCOURSE_BUDGET", "quick")
    found = _by_name(doctor.checks(cache_dirs=[tmp_path / "cache"], runs_dir=tmp_path / "runs"))
    assert found["runs folder"].ok and found["cache folder"].ok
    assert found["budget"].detail == "quick (DLCOURSE_BUDGET=quick)"
    assert "empty" in found["dataset cache"].detail
    (tmp_path / "cache" / "flowers.npz").write_bytes(b"0" * 10)
    assert _by_name(doctor.checks(cache_dirs=[tmp_path / "cache"], runs_dir=tmp_path))["dataset cache"].ok


def test_torch_build_is_named(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert _by_name(doctor.checks())["torch build"].detail.startswith("CPU build")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "CUDA 12.4 build, but no CUDA GPU" in _by_name(doctor.checks())["torch build"].detail


def test_prediction_has_one_row_per_lesson_and_follows_the_model():
    predictions = doctor.predict(seconds=0.5, device="cpu", mode_name="quick")
    assert [p.lesson for p in predictions] == list(doctor.TRAINED_LESSONS)
    assert "06_latent_diffusion" in doctor.TRAINED_LESSONS
    for p in predictions:
        for part in p.parts:
            if part.training.steps is not None and part.seconds_per_step is not None:
                assert part.seconds == pytest.approx(part.seconds_per_step * part.training.steps * part.training.models)
        if LESSONS[p.lesson].model is not None:  # one set-up: the lesson's model at its train_steps
            (part,) = p.parts
            assert (part.training.model, part.training.steps, part.training.models) == \
                (LESSONS[p.lesson].model, budget(p.lesson, "quick").train_steps, LESSONS[p.lesson].models_trained)
    assert next(p for p in predictions if p.lesson == "03_optimizations").parts[0].updates == \
        2 * budget("03_optimizations", "quick").train_steps
    table = doctor.format_report([], predictions, torch.device("cpu"), "quick")
    assert all(p.lesson in table for p in predictions) and "total" in table


def _code(path: Path) -> ast.Module:
    cells = json.loads(path.read_text())["cells"]
    return ast.parse("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"))


def _keywords(call: ast.Call, b) -> dict:
    """The call's keyword arguments evaluated with the notebook's B (and its 5 classes); a keyword that
    reads anything else (a loop variable, a result) is ``...``."""
    def value(node):
        try:
            return eval(compile(ast.Expression(node), "notebook", "eval"), {"B": b, "classes": CLASSES, "len": len})
        except NameError:
            return ...
    return {kw.arg: value(kw.value) for kw in call.keywords}


def _calls(b, names: set[str]) -> list[tuple[str, dict]]:
    return [(node.func.id, _keywords(node, b)) for node in ast.walk(_code(LESSON_06))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names]


def _matches(call_kwargs: dict, training: Training) -> bool:
    kwargs = dict(training.kwargs)
    return set(call_kwargs) == set(kwargs) and all(v is ... or v == kwargs[k] for k, v in call_kwargs.items())


@pytest.mark.parametrize("mode_name", ["full", "cpu", "quick"])
def test_lesson_06_lists_the_models_its_notebook_builds(mode_name):
    """Each model the notebook constructs is a listed training, with the same keyword arguments (its vocabulary
    aside), and each listed training is one the notebook constructs."""
    b = budget("06_latent_diffusion", mode_name)
    trainings, calls = b.trainings, _calls(b, MODEL_CLASSES)
    # one U-Net call builds both attention-test models, one TextUNet call both cross-attention models
    assert {name for name, _ in calls} == MODEL_CLASSES and len(calls) == 6
    for name, kwargs in calls:
        assert any(t.model == name and _matches(kwargs, t) for t in trainings), (name, kwargs)
    for t in trainings:
        assert any(name == t.model and _matches(kwargs, t) for name, kwargs in calls), t
    # the notebook's `for heads in (0, B.attention_heads)`: one U-Net of each
    assert sorted(dict(t.kwargs)["attention_heads"] for t in trainings if t.model == "UNet") == [0, b.attention_heads]


def test_lesson_06_trains_each_model_for_its_budgets_steps():
    b = budget("06_latent_diffusion", "cpu")  # under cpu the (steps, batch) pairs are all different
    steps = {t.name: (t.steps, t.batch_size) for t in b.trainings}
    assert steps == {"VAE": (b.vae_steps, b.vae_batch_size),
                     "latent U-Net, no attention": (b.attention_steps, b.batch_size),
                     f"latent U-Net, {b.attention_heads} heads": (b.attention_steps, b.batch_size),
                     "latent class model": (b.train_steps, b.batch_size),
                     "pixel class model": (None, b.batch_size),
                     "text model, pooled": (b.train_steps, b.batch_size),
                     "text model, cross-attention": (b.train_steps, b.batch_size),
                     "text model, cross-attention on words": (b.train_steps, b.batch_size)}
    assert all(t.models == 1 for t in b.trainings)
    assert next(t for t in b.trainings if t.steps is None).same_seconds_as == "latent class model"
    # the notebook's train() calls: the same (steps, batch_size) pairs; the pixel model's steps are computed
    train_calls = [kwargs for _, kwargs in _calls(b, {"train"})]
    assert {(k["steps"], k["batch_size"]) for k in train_calls if k["steps"] is not ...} == \
        {pair for pair in steps.values() if pair[0] is not None}
    assert sum(k["steps"] is ... for k in train_calls) == 1


def test_prediction_of_lesson_06_is_the_sum_of_its_parts(monkeypatch):
    """With each set-up's seconds per update fixed, a lesson's time is Σ s/update × steps × models, the pixel
    model gets the latent class model's time, equal set-ups are timed once, and the report shows lesson 06."""
    timed = []

    def fake_time(setup, device, seconds):
        timed.append(setup)
        return 0.001 * len(timed)

    monkeypatch.setattr(doctor, "_time_setup", fake_time)
    predictions = {p.lesson: p for p in doctor.predict(seconds=10.0, device="cpu", mode_name="cpu")}
    assert len(timed) == len(set(timed))
    per_step = {setup: 0.001 * (i + 1) for i, setup in enumerate(timed)}
    for lesson, p in predictions.items():
        trainings = budget(lesson, "cpu").trainings
        assert [part.training for part in p.parts] == list(trainings)
        for part in p.parts:
            if part.training.steps is not None:
                assert part.seconds_per_step == per_step[part.training.setup]
                assert part.seconds == pytest.approx(per_step[part.training.setup] * part.training.steps
                                                     * part.training.models)
        assert p.seconds == pytest.approx(sum(part.seconds for part in p.parts))
    latent = {part.training.name: part for part in predictions["06_latent_diffusion"].parts}
    assert len(latent) == 8 and latent["pixel class model"].seconds == latent["latent class model"].seconds
    assert latent["pixel class model"].seconds_per_step is None and latent["pixel class model"].updates is None
    table = doctor.format_report([], list(predictions.values()), torch.device("cpu"), "cpu")
    lines = table.splitlines()
    row = next(line for line in lines if line.startswith("06_latent_diffusion "))
    lesson_06 = predictions["06_latent_diffusion"].seconds
    assert row.split()[1:3] == ["8", "models:"] and row.endswith(f"{lesson_06 / 60:.1f} min")
    assert all(any(line.startswith(f"  {name} ") for line in lines) for name in latent)
    total = sum(p.seconds for p in predictions.values())
    assert next(line for line in lines if line.startswith("total")).endswith(f"{total / 60:.1f} min")
    assert "the pixel class model trains for the seconds of the latent class model" in table


def test_every_model_of_lesson_06_is_timed():
    predictions = doctor.predict(seconds=2.0, device="cpu", mode_name="quick", lessons=["06_latent_diffusion"])
    (p,) = predictions
    assert all(part.seconds_per_step > 0 for part in p.parts if part.training.steps is not None)
    assert p.seconds > 0


def test_a_training_names_its_steps_or_the_seconds_it_lasts():
    with pytest.raises(ValueError, match="expected steps or same_seconds_as"):
        Training("x", "UNet", {}, 8, None)
    with pytest.raises(ValueError, match="expected steps or same_seconds_as"):
        Training("x", "UNet", {}, 8, 10, same_seconds_as="y")
    assert Training("a", "UNet", {"T": 5, "channels": (8,)}, 8, 1).setup == \
        Training("b", "UNet", {"channels": (8,), "T": 5}, 8, 2).setup
    orphan = Training("pixel", "UNet", {}, 8, None, same_seconds_as="latent")
    with pytest.raises(ValueError, match="lasts the seconds of 'latent', which is not an earlier training"):
        doctor._parts("06_latent_diffusion", (orphan,), {})


def test_spent_time_budget_leaves_the_rest_unmeasured():
    predictions = doctor.predict(seconds=1e-9, device="cpu", mode_name="quick")
    assert len(predictions) == len(doctor.TRAINED_LESSONS)
    parts = [part for p in predictions for part in p.parts]
    assert sum(part.seconds_per_step is not None for part in parts) <= 1  # only the first set-up, once
    assert all(p.seconds is None for p in predictions[1:])  # lesson 06 among them: a part unmeasured is unknown
    assert "not measured" in doctor.format_report([], predictions, torch.device("cpu"), "quick")


def test_command_exit_status_and_bad_option(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert doctor.main(["--no-benchmark", "--runs", str(blocker / "runs")]) == 1
    assert "PROBLEM runs folder" in capsys.readouterr().out
    assert doctor.main(["--seconds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--seconds: expected a finite real number > 0" in err and "\n" not in err

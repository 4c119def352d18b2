"""The assessment's context, pairs and export."""
from __future__ import annotations

import json

import pytest
import torch

from dlcourse.grading.assessment import CONTEXT_DIM, PAIRS, check_submission, export, flower_context
from dlcourse.data import CLASSES, PETAL_COLOURS, load_flowers
from dlcourse.models import ConditionalUNet


def test_pairs_are_exactly_those_in_the_data():
    ds = load_flowers("train", image_size=16, n=2000, progress=False)
    seen = {(CLASSES.index(a["class"]), PETAL_COLOURS.index(a["petal_colour"])) for a in ds.attributes}
    assert seen == set(PAIRS)


def test_flower_context_is_two_one_hots():
    c = flower_context(torch.tensor([4, 0]), torch.tensor([3, 0]))
    assert c.shape == (2, CONTEXT_DIM) and c.sum(dim=1).tolist() == [2.0, 2.0]
    assert c[0, 4] == 1 and c[0, 5 + 3] == 1


@pytest.fixture
def notebook(tmp_path):
    path = tmp_path / "mine.ipynb"
    path.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_export_writes_a_folder_the_grader_reads(tmp_path, notebook):
    model = ConditionalUNet(channels=[8], image_size=16, T=20, context_dim=CONTEXT_DIM)
    folder = export(tmp_path / "submission", model, w=2.0, notebook=notebook, answers={"q1": "because"})
    assert sorted(p.name for p in folder.iterdir()) == ["answers.json", "assessment.ipynb", "config.json",
                                                         "model.safetensors"]
    assert json.loads((folder / "answers.json").read_text()) == {"answers": {"q1": "because"}, "w": 2.0}
    assert check_submission(folder) == []


@pytest.mark.parametrize("w", [float("nan"), 11.0, True, "2"])
def test_export_rejects_a_bad_w(tmp_path, notebook, w):
    model = ConditionalUNet(channels=[8], image_size=16, T=20, context_dim=CONTEXT_DIM)
    with pytest.raises(ValueError, match="^w: expected a finite real number in"):
        export(tmp_path / "s", model, w=w, notebook=notebook)


def test_export_rejects_a_model_the_grader_would_refuse(tmp_path, notebook):
    model = ConditionalUNet(channels=[8], image_size=16, T=20, context_dim=5)  # class only, no colour
    with pytest.raises(ValueError, match="context_dim"):
        export(tmp_path / "s", model, w=1.0, notebook=notebook)


def test_check_submission_names_missing_files(tmp_path):
    assert all("missing" in p for p in check_submission(tmp_path)) and len(check_submission(tmp_path)) == 4


@pytest.mark.parametrize("name", ["assessment.ipynb", "assessment.solution.ipynb"])
def test_notebook_code_parses_and_the_grader_finds_every_exercise(repo_root, name):
    import ast

    from dlcourse.grading.exercises import EXERCISES, module_source, read_notebook, exercise_cells

    nb = read_notebook(repo_root / "assessments" / name)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            ast.parse("".join(cell["source"]), filename=name)  # a placeholder must leave valid code
    cells = exercise_cells(nb)
    assert sorted(cells) == sorted(EXERCISES)
    for exercise, source in cells.items():
        assert f"def {exercise}(" in module_source(exercise, source)

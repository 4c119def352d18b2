"""The results page (dlcourse.tools.results) and the shipped reference models (dlcourse.pretrained)."""
from __future__ import annotations

import base64
import io
import json

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image

from dlcourse import pretrained
from dlcourse.tools import results
from dlcourse.models import ConditionalUNet, UNet
from dlcourse.schedules import Schedule, scaled_linear_betas


def _png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)  # incompressible
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _executed_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("## 2 · Samples\nsome words"),
        nbformat.v4.new_code_cell("print('x')", metadata={"tags": ["results"]}),
        nbformat.v4.new_code_cell("print('not shown')"),
        nbformat.v4.new_markdown_cell("### The table"),
        nbformat.v4.new_code_cell("table", metadata={"tags": ["results"]}),
    ]
    big = _png(400, 400)
    assert len(big) > results.MAX_PNG_BYTES
    nb.cells[1].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="\x1b[1mFID 6.8\x1b[0m\n"),
        nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(big).decode(), "text/plain": "<Figure>"}),
    ]
    nb.cells[1].outputs.insert(0, nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": "drawing: 100%|####|"}))
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hidden\n")]
    nb.cells[4].outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "   w  accuracy\n0  1  0.81"},
                                                  execution_count=1)]
    return nb


def test_harvest_keeps_tagged_cells_text_and_small_pngs(tmp_path):
    lines = results.harvest(_executed_notebook(), "02_ddpm", tmp_path, link_prefix="results")
    page = "\n".join(lines)
    assert "### 2 · Samples" in page and "### The table" in page
    assert "FID 6.8" in page and "\x1b" not in page  # colour codes stripped
    assert "hidden" not in page and "<Figure>" not in page and "drawing" not in page  # untagged cells,
    # figure reprs and progress-bar widgets are left out
    assert "0  1  0.81" in page
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == ["02_ddpm_01.png"] and "(results/02_ddpm_01.png)" in page
    assert pngs[0].stat().st_size <= results.MAX_PNG_BYTES
    assert Image.open(pngs[0]).size[0] < 400  # shrunk to fit


def test_page_lists_each_lesson_with_budget_machine_and_time(tmp_path):
    for lesson, minutes in (("02_ddpm", 7.5), ("04_classifier_free_guidance", 9.0)):
        (tmp_path / f"{lesson}.md").write_text(f"\n### A section of {lesson}\n")
        (tmp_path / f"{lesson}.json").write_text(json.dumps(
            {"budget": "cpu", "machine": "a test CPU", "date": "2026-11-23", "seconds": 60 * minutes}))
    page = results._page(tmp_path, "note")
    assert "| 02_ddpm | cpu | a test CPU | 2026-11-23 | 7.5 min | not recorded | not recorded |" in page
    assert page.index("## 02_ddpm") < page.index("## 04_classifier_free_guidance")
    assert "## 01_unet_denoiser" not in page


def test_results_cli_rejects_an_unknown_lesson(capsys):
    with pytest.raises(SystemExit) as info:
        results.main(["--lessons", "07_nothing"])
    assert info.value.code == 2 and "--lessons: no solution notebook" in capsys.readouterr().err


def test_save_and_load_a_reference_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path / "weights")
    monkeypatch.setattr(pretrained, "CHECK", {"n": 10, "steps": 2, "seed": 0})
    torch.manual_seed(0)
    model = ConditionalUNet(channels=(8, 16), image_size=16, T=20, context_dim=5)
    schedule = Schedule(scaled_linear_betas(20))
    folder = pretrained.save_reference("04_cfg", model, schedule, folder=tmp_path / "weights" / "04_cfg", w=2.0)
    info = json.loads((folder / "reference.json").read_text())
    assert info["kind"] == "class" and info["check"]["w"] == 2.0 and info["schedule"] == {"betas": "scaled_linear", "T": 20}
    assert set(info["check"]["scores"]) == {"FID", "accuracy", "diversity"}
    assert pretrained.available() == ["04_cfg"]
    ref = pretrained.load("04_cfg", device="cpu")
    assert ref.schedule.T == 20 and torch.equal(ref.schedule.alpha_bars, schedule.alpha_bars)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 5, 19])
    with torch.no_grad():
        assert torch.equal(ref.model(x, t), model.eval()(x, t))
    again = pretrained.score(ref.model, ref.schedule, "class", n=10, steps=2, w=2.0)
    assert again == pytest.approx(info["check"]["scores"], rel=1e-5)


def test_load_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path)
    with pytest.raises(FileNotFoundError, match="dlcourse results --budget cpu --update-references"):
        pretrained.load("02_ddpm")
    with pytest.raises(ValueError, match="name: expected one of"):
        pretrained.load("05_nothing")


@pytest.mark.parametrize("name", sorted(pretrained.REFERENCES))
def test_shipped_reference_still_scores_what_it_recorded(name):
    """The weights in the package reproduce the scores measured when the results page was made."""
    if name not in pretrained.available():
        pytest.fail(f"reference {name} is not shipped: run `dlcourse results --budget cpu --update-references`")
    ref = pretrained.load(name, device="cpu")
    check = ref.info["check"]
    assert ref.info["budget"] == "cpu" and ref.info["parameters"] < 600_000  # ≤ 2 MB of float32
    scores = pretrained.score(ref.model, ref.schedule, ref.info["kind"], n=check["n"], steps=check["steps"],
                              seed=check["seed"], w=check["w"])
    for key, recorded in check["scores"].items():
        assert scores[key] == pytest.approx(recorded, rel=0.02, abs=0.02), key

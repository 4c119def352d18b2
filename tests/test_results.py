"""The results page (dlcourse.tools.results) and the shipped reference models (dlcourse.pretrained)."""
from __future__ import annotations

import base64
import dataclasses
import io
import json

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image

from dlcourse import budget, pretrained
from dlcourse.tools import results
from dlcourse.clip import TinyCLIP, Tokenizer
from dlcourse.models import VAE, ConditionalUNet, TextUNet, TimeUNet, UNet
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


def _latent_text_parts():
    """A tiny VAE (16 × 16 → 4 × 4 latents), TinyCLIP and cross-attention TextUNet for lesson 06's reference."""
    torch.manual_seed(0)
    vae = VAE(latent_channels=4, channels=(8, 8), image_size=16)
    clip = TinyCLIP(Tokenizer.from_texts(["a white daisy", "a yellow dandelion", "a red rose", "a yellow sunflower",
                                          "a purple tulip"]).vocab, embed_dim=16, image_size=16, widths=(8,),
                    text_width=16, text_layers=1, heads=2)
    model = TextUNet(image_channels=4, channels=(8, 16), image_size=4, T=20, context_dim=16, heads=2)
    return vae, clip, model


def test_a_latent_text_reference_keeps_its_vae_and_clip_and_rescores_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path / "weights")
    monkeypatch.setattr(pretrained, "CHECK", {"n": 10, "steps": 2, "seed": 0})
    monkeypatch.setenv("DLCOURSE_BUDGET", "cpu")  # the references' budget, so that it may be copied
    vae, clip, model = _latent_text_parts()
    schedule = Schedule(scaled_linear_betas(20))
    source = tmp_path / "runs"
    folder = pretrained.save_reference("06_latent", model, schedule, folder=source / "06_latent", w=3.0, vae=vae,
                                       latent_scale=1.5, clip=clip)
    info = json.loads((folder / "reference.json").read_text())
    assert info["kind"] == "text" and info["latent_scale"] == 1.5 and info["check"]["w"] == 3.0
    assert set(info["check"]["scores"]) == {"FID", "accuracy", "colour_accuracy", "reconstruction_accuracy"}
    assert all(0 <= info["check"]["scores"][k] <= 1 for k in ("accuracy", "colour_accuracy", "reconstruction_accuracy"))
    monkeypatch.setattr(pretrained, "REFERENCES", {**pretrained.REFERENCES, "06_latent": dataclasses.replace(
        pretrained.REFERENCES["06_latent"], max_fid=1e9, min_accuracy=0.0, min_colour_accuracy=0.0,
        min_reconstruction_accuracy=0.0)})
    assert results._copy_references(source) == ["06_latent"]  # the sub-folders travel with the denoiser
    ref = pretrained.load("06_latent", device="cpu")
    z, t = torch.randn(3, 4, 4, 4), torch.tensor([0, 5, 19])
    y, mask = clip.encode_tokens(["a red rose", "a tulip", "a white daisy"])
    with torch.no_grad():
        assert torch.equal(ref.model(z, t, y, token_mask=mask), model.eval()(z, t, y, token_mask=mask))
        assert torch.equal(ref.clip.encode_tokens(["a red rose"])[0], clip.encode_tokens(["a red rose"])[0])
        assert torch.equal(ref.decode(z), vae.decode(z / 1.5).clamp(-1, 1))
    assert ref.decode(z).shape == (3, 3, 16, 16) and ref.latent_scale == 1.5
    assert pretrained.rescore(ref) == pytest.approx(info["check"]["scores"], rel=1e-5)


def test_save_reference_names_the_models_a_reference_keeps(tmp_path):
    vae, clip, model = _latent_text_parts()
    schedule = Schedule(scaled_linear_betas(20))
    with pytest.raises(ValueError, match=r"vae: expected the vae \(reference '06_latent' keeps vae, clip beside"):
        pretrained.save_reference("06_latent", model, schedule, folder=tmp_path / "a", clip=clip)
    with pytest.raises(ValueError, match=r"clip: expected None \(reference '04_cfg' keeps no models beside"):
        pretrained.save_reference("04_cfg", ConditionalUNet(channels=(8, 16), image_size=16, T=20, context_dim=5),
                                  schedule, folder=tmp_path / "b", clip=clip)
    with pytest.raises(ValueError, match="latent_scale: expected the scale s of the VAE's latents"):
        pretrained.save_reference("06_latent", model, schedule, folder=tmp_path / "c", vae=vae, clip=clip)
    with pytest.raises(ValueError, match="clip: expected the TinyCLIP whose text features condition the model"):
        pretrained.score(model, schedule, "text", n=5, steps=2, vae=vae, latent_scale=1.0)
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_copying_a_latent_reference_without_its_vae_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path / "weights")
    scores = {"FID": 1.0, "accuracy": 1.0, "colour_accuracy": 1.0, "reconstruction_accuracy": 1.0}
    _saved_reference(tmp_path / "runs", "06_latent", "cpu", scores)
    (tmp_path / "runs" / "06_latent" / "clip").mkdir()
    (tmp_path / "runs" / "06_latent" / "clip" / "model.safetensors").write_text("clip")
    with pytest.raises(ValueError, match="06_latent/reference.json: no vae/ beside the denoiser"):
        results._copy_references(tmp_path / "runs")
    assert not (tmp_path / "weights").exists()


def test_load_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path)
    with pytest.raises(FileNotFoundError, match="dlcourse results --budget cpu --update-references"):
        pretrained.load("02_ddpm")
    with pytest.raises(ValueError, match="name: expected one of"):
        pretrained.load("05_nothing")


def test_update_references_is_refused_from_any_budget_but_the_references_own(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results, "run_notebook", lambda *a, **k: pytest.fail("ran a notebook before refusing"))
    for other in ("quick", "full"):
        assert results.main(["--budget", other, "--update-references", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"dlcourse results: error: --update-references: expected --budget cpu, the budget the shipped "
                       f"references are trained at (run `dlcourse results --budget cpu --update-references`), "
                       f"got --budget {other}")
    assert not any(tmp_path.iterdir())  # refused before writing anything


def _saved_reference(folder, name, budget_name, scores):
    (folder / name).mkdir(parents=True)
    for file in ("model.safetensors", "config.json"):
        (folder / name / file).write_text(f"{budget_name} {file}")
    (folder / name / "reference.json").write_text(json.dumps({"budget": budget_name, "check": {"scores": scores}}))


def test_copying_references_refuses_all_when_one_misses_its_floors_or_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path / "weights")
    _saved_reference(tmp_path / "weights", "02_ddpm", "cpu", {"FID": 65.24})  # what ships
    good = {"FID": 25.0, "accuracy": 0.9, "diversity": 10.0}
    ceiling = pretrained.REFERENCES["02_ddpm"].max_fid
    cases = [("cpu", {"FID": 177.4}, f"FID 177.40 above its ceiling {ceiling:.2f}"),  # lesson 02 at the quick budget
             ("quick", {"FID": 60.0}, "trained at the quick budget")]
    for budget_name, scores, reason in cases:
        source = tmp_path / budget_name
        _saved_reference(source, "04_cfg", "cpu", good)
        _saved_reference(source, "02_ddpm", budget_name, scores)
        with pytest.raises(ValueError, match=f"02_ddpm/reference.json: {reason}"):
            results._copy_references(source)
        assert (tmp_path / "weights" / "02_ddpm" / "config.json").read_text() == "cpu config.json"
        assert not (tmp_path / "weights" / "04_cfg").exists()  # nothing copied
    _saved_reference(tmp_path / "fine", "04_cfg", "cpu", good)
    assert results._copy_references(tmp_path / "fine") == ["04_cfg"]
    assert (tmp_path / "weights" / "04_cfg" / "model.safetensors").read_text() == "cpu model.safetensors"


def test_floors_pass_the_recorded_scores_and_fail_quick_budget_and_untrained_models():
    recorded = {name: json.loads((pretrained.WEIGHTS / name / "reference.json").read_text())["check"]["scores"]
                for name in pretrained.available()}
    assert set(recorded) == set(pretrained.REFERENCES)
    assert {name: pretrained.REFERENCES[name].missed(scores) for name, scores in recorded.items()} == \
        {name: [] for name in recorded}
    # measured at CHECK (with the 32-px-only evaluator, whose FIDs at 16 px were lower): lesson 02 trained at the
    # quick budget (EMA and raw weights), lesson 04 at the quick budget
    assert pretrained.REFERENCES["02_ddpm"].missed({"FID": 177.4}) and pretrained.REFERENCES["02_ddpm"].missed(
        {"FID": 100.4})
    assert len(pretrained.REFERENCES["04_cfg"].missed({"FID": 413.6, "accuracy": 0.18})) == 2
    b = budget("02_ddpm", pretrained.BUDGET)
    torch.manual_seed(0)
    noise = TimeUNet(channels=b.channels, image_size=b.image_size, T=b.T)
    scores = pretrained.score(noise, Schedule(scaled_linear_betas(b.T)), "unconditional", device="cpu")
    ceiling = pretrained.REFERENCES["02_ddpm"].max_fid
    assert pretrained.REFERENCES["02_ddpm"].missed(scores) == [f"FID {scores['FID']:.2f} above its ceiling {ceiling:.2f}"]


def test_every_reference_is_shipped():
    assert set(pretrained.available()) == set(pretrained.REFERENCES)


@pytest.mark.parametrize("name", sorted(pretrained.REFERENCES))
def test_shipped_reference_still_scores_what_it_recorded_and_reaches_its_floors(name):
    """The weights in the package are their lesson's model at the cpu budget, reproduce the scores measured
    when the results page was made, and reach the reference's floors."""
    if name not in pretrained.available():
        pytest.fail(f"reference {name} is not shipped: run `dlcourse results --budget cpu --update-references`")
    ref = pretrained.load(name, device="cpu")
    check = ref.info["check"]
    assert ref.info["budget"] == pretrained.BUDGET and ref.info["parameters"] < 600_000  # ≤ 2 MB of float32
    sizes = budget(pretrained.REFERENCES[name].lesson, pretrained.BUDGET)
    size = sizes.image_size // 4 if hasattr(ref, "vae") else sizes.image_size  # latents: 32 × 32 → 8 × 8
    assert (tuple(ref.model.config["channels"]), ref.model.config["image_size"], ref.schedule.T) == \
        (sizes.channels, size, sizes.T)
    assert ref.model.config.get("context_dim") == sizes.context_dim
    scores = pretrained.rescore(ref)
    assert set(scores) == set(check["scores"])
    for key, recorded in check["scores"].items():
        assert scores[key] == pytest.approx(recorded, rel=0.02, abs=0.02), key
    assert pretrained.REFERENCES[name].missed(scores) == []


@pytest.mark.parametrize("mode_name", ["full", "cpu", "quick"])
def test_lesson_06_budget_names_the_widths_of_lesson_05s_shipped_tiny_clip(mode_name):
    """Lesson 06 conditions on the shipped lesson-05 TinyCLIP at every budget: its widths are the budget's."""
    clip = pretrained.load("05_text", device="cpu").clip
    b = budget("06_latent_diffusion", mode_name)
    assert (clip.embed_dim, clip.text_width) == (b.clip_embed_dim, b.context_dim)

"""dlcourse recipe: every row trains for the same CPU seconds, with its own recipe, and is scored per sampler."""
import json
import math

import pytest

from dlcourse import losses
from dlcourse.tools import benchmark, recipe
from dlcourse.tools.recipe import BASELINE, WARMUP, Recipe, lr_at

CPU_SECONDS, SAMPLES = 0.5, 8


def _run(tmp_path, *extra):
    out, data = tmp_path / "recipe.md", tmp_path / "recipe.json"
    status = recipe.main(["--budget", "quick", "--cpu-seconds", str(CPU_SECONDS), "--samples", str(SAMPLES),
                          "--slices", "2", "--out", str(out), "--json", str(data), "--no-progress", *extra])
    assert status == 0
    return out, json.loads(data.read_text())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The whole study at the quick budget, with a spy on the loss each row trains with."""
    calls = []

    def spy(model, x0, t, schedule, noise=None, **kwargs):
        calls.append({"batch": x0.shape[0], "alpha_bar_last": float(schedule.alpha_bars[-1]), **kwargs})
        return losses.diffusion_loss(model, x0, t, schedule, noise, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recipe, "diffusion_loss", spy)
        out, info = _run(tmp_path_factory.mktemp("recipe"))
    return out.read_text(), info, calls, out


def test_every_row_trains_for_the_same_cpu_seconds(study):
    _, info, _, _ = study
    rows = info["report"]["rows"]
    assert [r["name"] for r in rows] == [r.name for r in recipe.ROWS]
    for row in rows:
        assert "skipped" not in row, row  # diffusers is part of the dev environment
        # the last step of the last slice overshoots the budget by less than one step
        assert 0 <= row["cpu_seconds"] - CPU_SECONDS <= row["longest_step_cpu_seconds"], row["name"]
        assert row["steps"] >= 1 and row["images_seen"] == row["steps"] * row["batch_size"]


def test_each_row_trained_with_its_own_recipe(study):
    _, info, calls, _ = study
    rows = {r["name"]: r for r in info["report"]["rows"]}
    base = rows["baseline"]
    assert rows["v-prediction"]["recipe"]["prediction"] == "v"
    assert rows["min-SNR-5"]["recipe"]["weighting"] == "min_snr"
    assert rows["cosine schedule"]["alpha_bar_last"] != base["alpha_bar_last"]
    assert rows["batch ×2"]["batch_size"] == 2 * base["batch_size"] == 4 * rows["batch ×0.5"]["batch_size"]
    assert base["lr_first"] == base["lr_last"] == base["lr"]
    warm = rows["warm-up + cosine lr"]
    assert warm["lr_first"] == 0 and warm["lr_last"] < warm["lr"]
    again = rows["baseline, seed 1"]
    assert again["recipe"]["seed"] == 1 and again["final_loss"] != base["final_loss"]
    cumulative = rows["cumulative"]["recipe"]
    assert (cumulative["prediction"], cumulative["weighting"], cumulative["schedule"], cumulative["lr_schedule"]) == \
        ("v", "min_snr", "cosine", "warmup_cosine")
    # the loss was really called so: each combination of the rows, and at each row's batch size
    seen = {(c["prediction"], c["weighting"]) for c in calls}
    assert seen == {("eps", "uniform"), ("v", "uniform"), ("eps", "min_snr"), ("v", "min_snr")}
    assert {c["batch"] for c in calls} == {r["batch_size"] for r in rows.values()}
    assert len({c["alpha_bar_last"] for c in calls}) == 3  # scaled linear, cosine, the peer's cosine
    peer, sizes = rows["diffusers peer"], info["sizes"]  # the closest size benchmark's peer comes in
    assert peer["parameters"] == benchmark.peer_config(info["parameters"], sizes["image_size"],
                                                       len(sizes["channels"]))[1]
    assert peer["lr"] == 1e-4 and peer["recipe"]["prediction"] == "eps"


def test_every_model_is_scored_with_each_of_its_samplers(study):
    page, info, _, _ = study
    lines = info["report"]["lines"]
    for row in recipe.ROWS:
        mine = [(line["weights"], line["sampler"]) for line in lines if line["row"] == row.name]
        assert len(mine) == len(set(mine)) == len(row.ema_decays) * len(row.samplers)
        assert {sampler for _, sampler in mine} == set(row.samplers)
    for line in lines + [info["real"]]:
        assert math.isfinite(line["fid"]) and line["fid"] >= 0
        assert sum(line["class_shares"].values()) == pytest.approx(1.0)
        assert 0 <= line["noise_like"] <= SAMPLES
    assert info["real"]["n"] == SAMPLES and info["real"]["noise_like"] == 0
    table = [line for line in page.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| row | weights | sampler | FID") and len(table) == 2 + len(lines)
    assert f"floor at this N: {info['real']['fid']:.2f}" in page and "load average" in page.lower()


def test_one_grid_per_trained_row(study):
    page, info, _, out = study
    grids = [line["grid"] for line in info["report"]["lines"] if "grid" in line]
    assert len(grids) == len(recipe.ROWS)
    for name in grids:
        assert f"]({info['grids']}/{name})" in page and (out.parent / info["grids"] / name).stat().st_size > 0


def test_the_peer_says_why_it_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setattr(benchmark, "_diffusers_version", lambda: None)
    out, info = _run(tmp_path, "--rows", "peer")
    (row,) = info["report"]["rows"]
    assert "diffusers is not installed" in row["skipped"] and info["report"]["lines"] == []
    assert "skipped: diffusers is not installed" in out.read_text()


def test_warm_up_then_cosine_decay_on_the_cpu_clock():
    warm = Recipe(lr_schedule="warmup_cosine")
    assert lr_at(BASELINE, 2e-3, 0.7) == 2e-3
    assert lr_at(warm, 2e-3, 0.0) == 0 and lr_at(warm, 2e-3, WARMUP / 2) == pytest.approx(1e-3)
    assert lr_at(warm, 2e-3, WARMUP) == pytest.approx(2e-3)
    assert lr_at(warm, 2e-3, (1 + WARMUP) / 2) == pytest.approx(1e-3) and lr_at(warm, 2e-3, 1.0) == pytest.approx(0)


@pytest.mark.parametrize("args, message", [(["--cpu-seconds", "0"], "--cpu-seconds"), (["--samples", "1"], "--samples"),
                                           (["--rows", "no such row"], "--rows")])
def test_bad_arguments_get_one_line(capsys, args, message):
    assert recipe.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlcourse recipe: error:") and message in err

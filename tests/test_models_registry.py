"""dlcourse.models.registry: load_model treats config.json and model.safetensors as untrusted (check first,
allocate after), under the library's limits and the grader's stricter ones."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from dlcourse.grading import SubmissionError
from dlcourse.grading.assessment import CONTEXT_DIM, MODEL_LIMITS
from dlcourse.grading.model import load_submission_model
from dlcourse.models import ConditionalUNet, ReadLimits, UNetDenoiser, load_model, registry, save_model
from dlcourse.models.registry import register


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    return save_model(UNetDenoiser(channels=(8, 16), image_size=16), tmp_path / "m")


def write_config(folder, config):
    (folder / "config.json").write_text(json.dumps(config))


def test_nothing_is_allocated_before_the_shapes_are_compared(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    devices = []

    @register("test_only_probe")
    class Probe(torch.nn.Module):
        def __init__(self, width=2):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(width))
            devices.append(self.weight.device.type)

    folder = save_model(Probe(2), tmp_path / "p")
    devices.clear()
    write_config(folder, {"name": "test_only_probe", "width": 20000})
    with pytest.raises(ValueError, match=r"'weight' has shape \[2\], the architecture needs \[20000\]"):
        load_model(folder)
    assert devices == ["meta"]
    write_config(folder, {"name": "test_only_probe", "width": 2})
    assert load_model(folder).weight.shape == (2,) and devices == ["meta", "meta", "cpu"]


def test_a_77_byte_config_asking_for_108_gb_is_refused_without_allocating(saved):
    write_config(saved, {"name": "unet_denoiser", "channels": [10**9], "image_size": 16})
    with pytest.raises(ValueError, match="config.json: expected an architecture of a buildable size"):
        load_model(saved)
    write_config(saved, {"name": "unet_denoiser", "channels": [20000], "image_size": 16})  # 14 GB if built
    with pytest.raises(ValueError, match="model.safetensors: expected weights matching.*needs \\[20000"):
        load_model(saved)


@pytest.mark.parametrize("config, match", [
    ({"name": ["unet_denoiser"]}, "name: expected a string"),
    ({"name": {"a": 1}}, "name: expected a string"),
    ([1, 2], "expected a JSON object"),
    ({"name": "unet_denoiser", "channels": [[[[[[[[[[8]]]]]]]]]]}, "levels of nesting"),
    ({"name": "unet_denoiser", "pad": "x" * 100_000}, "a config of at most"),
])
def test_bad_configs_get_clear_errors(saved, config, match):
    write_config(saved, config)
    with pytest.raises(ValueError, match=match):
        load_model(saved)


def test_a_deeply_nested_config_is_an_error_not_a_crash(saved):
    (saved / "config.json").write_text("[" * 30_000 + "]" * 30_000)
    with pytest.raises(ValueError, match="config.json"):
        load_model(saved)


@pytest.mark.parametrize("config", [
    {"name": "x" * 50_000}, {"name": "unet_denoiser", "y" * 50_000: 1},
])
def test_errors_quote_at_most_a_little_of_the_input(config):
    with pytest.raises(ValueError) as error:
        registry.build(config)
    assert len(str(error.value)) < 800


@pytest.mark.parametrize("tamper, match", [
    (lambda t: t.update({k: v.double() for k, v in t.items() if v.is_floating_point()}), "'dtype': 'F64'"),
    (lambda t: t.update({k: v.to(torch.int32) for k, v in t.items() if v.is_floating_point()}), "dtype I32"),
    (lambda t: next(v for v in t.values() if v.is_floating_point()).view(-1).__setitem__(0, float("nan")), "NaN or Inf"),
    (lambda t: next(v for v in t.values() if v.is_floating_point()).view(-1).__setitem__(0, float("inf")), "NaN or Inf"),
])
def test_weights_that_would_be_cast_or_are_not_finite_are_refused(saved, tamper, match):
    tensors = load_file(saved / "model.safetensors")
    tamper(tensors)
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(ValueError, match=match):
        load_model(saved)


def test_half_precision_weights_still_load(saved):
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(saved / "model.safetensors").items()}
    save_file(tensors, saved / "model.safetensors")
    assert next(load_model(saved).parameters()).dtype == torch.float32


@pytest.mark.parametrize("header_length", [2**40, 2**24 + 1])
def test_a_huge_header_length_is_refused_before_reading(saved, header_length):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(struct.pack("<Q", header_length) + data[8:])
    with pytest.raises(ValueError, match="header of at most"):
        load_model(saved)


# ------------------------------------------------------------------ one reader, two policies
# the library's limits through load_model; the grader's through its edge (SubmissionError naming files, not paths)
POLICIES = {"library": (ReadLimits(), load_model, ValueError),
            "grader": (MODEL_LIMITS, load_submission_model, SubmissionError)}


@pytest.fixture
def honest(tmp_path):
    torch.manual_seed(0)
    return save_model(ConditionalUNet(channels=[8], image_size=16, T=20, context_dim=CONTEXT_DIM), tmp_path / "m")


def change_config(folder, **change):
    write_config(folder, {**json.loads((folder / "config.json").read_text()), **change})


def change_tensors(folder, change):
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors")


def first_float(tensors):
    return next(v for v in tensors.values() if v.is_floating_point()).view(-1)


def change_entries(folder, change):
    """Apply ``change`` to the header's tensor entries (sorted by offset) and write it back before the same data."""
    path = folder / "model.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    change(sorted((v for k, v in header.items() if k != "__metadata__"), key=lambda e: e["data_offsets"]))
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])


def shift(entry, by):
    entry["data_offsets"] = [o + by for o in entry["data_offsets"]]


def write_weights(folder, change):
    path = folder / "model.safetensors"
    path.write_bytes(change(path.read_bytes()))


def grow(folder, size):
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(size)  # sparse: nothing is written, and the reader must refuse it before reading


HOSTILE = [  # (how the folder is spoiled under limits, what the refusal names: one phrase or one per policy)
    pytest.param(lambda f, limits: write_weights(f, lambda d: struct.pack("<Q", limits.header_bytes + 1) + d[8:]),
                 "header of at most", id="oversize header"),
    pytest.param(lambda f, limits: grow(f, limits.file_bytes + 1), "a file of at most", id="oversize file"),
    pytest.param(lambda f, limits: change_entries(f, lambda e: shift(e[1], -4)), "tile the data",
                 id="overlapping offsets"),
    pytest.param(lambda f, limits: change_entries(f, lambda e: shift(e[-1], 4)), "fit its shape and the file",
                 id="offsets out of range"),
    pytest.param(lambda f, limits: write_weights(f, lambda d: d + bytes(16)), "covering all",
                 id="offsets not covering"),
    pytest.param(lambda f, limits: write_weights(f, lambda d: d[: len(d) // 2]), "truncated", id="truncated file"),
    pytest.param(lambda f, limits: change_tensors(f, lambda t: t.update({k: v.double() for k, v in t.items()})),
                 "'dtype': 'F64'", id="float64"),
    pytest.param(lambda f, limits: change_tensors(f, lambda t: t.update({k: v.int() for k, v in t.items()})),
                 "dtype I32", id="int32"),
    pytest.param(lambda f, limits: change_tensors(f, lambda t: first_float(t).__setitem__(0, float("nan"))),
                 "NaN or Inf", id="NaN"),
    pytest.param(lambda f, limits: change_tensors(f, lambda t: first_float(t).__setitem__(0, float("-inf"))),
                 "NaN or Inf", id="inf"),
    pytest.param(lambda f, limits: change_config(f, name="evil_net"),
                 {"library": "one of the registered architectures", "grader": "'evil_net', which is not accepted"},
                 id="unknown architecture"),
    pytest.param(lambda f, limits: change_config(f, channels=[16]), r"has shape \[8\], the architecture needs \[16\]",
                 id="shape mismatch"),
    # 77 M parameters: the grader's cap refuses the config; the library has no cap and refuses it because
    # the weights do not hold them (nothing is allocated either way)
    pytest.param(lambda f, limits: change_config(f, channels=[512] * 4),
                 {"library": "weights matching the architecture", "grader": "at most 10,000,000 parameters"},
                 id="too many parameters"),
    pytest.param(lambda f, limits: write_config(f, [1, 2]), "expected a JSON object", id="config not an object"),
    pytest.param(lambda f, limits: (f / "config.json").write_text("[" * 30_000 + "]" * 30_000), "valid JSON",
                 id="deep JSON"),
    pytest.param(lambda f, limits: change_config(f, channels=[[[[[[[[[[8]]]]]]]]]]), "levels of nesting",
                 id="deep config"),
    pytest.param(lambda f, limits: change_config(f, pad="x" * limits.config_bytes), "a config of at most",
                 id="oversize config"),
]


@pytest.mark.parametrize("policy", POLICIES)
def test_an_honest_model_loads_the_same_under_both_policies(honest, policy):
    _, read, _ = POLICIES[policy]
    saved = load_file(honest / "model.safetensors")
    model = read(honest)
    assert not model.training and model.config == json.loads((honest / "config.json").read_text())
    state = model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], v) for k, v in saved.items())


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("spoil, names", HOSTILE)
def test_each_hostile_file_is_refused_under_both_policies(honest, policy, spoil, names):
    limits, read, error_type = POLICIES[policy]
    spoil(honest, limits)
    with pytest.raises(error_type, match=names if isinstance(names, str) else names[policy]) as error:
        read(honest)
    if policy == "grader":  # it names the student's files, never the grader's paths
        assert str(honest) not in str(error.value) and len(str(error.value)) < 300


def test_the_grader_names_a_missing_file_and_how_to_write_it(honest):
    (honest / "model.safetensors").unlink()
    with pytest.raises(SubmissionError, match=r"^model.safetensors: missing \(save the model with .*export\)"):
        load_submission_model(honest)

"""load_model treats config.json and model.safetensors as untrusted: check first, allocate after."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from dlcourse.models import UNetDenoiser, load_model, registry, save_model
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
